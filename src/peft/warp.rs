//! WARP (Hambardzumyan et al., 2021): word-level adversarial reprogramming. Learned prompt
//! embeddings go before the input, and each class's label word gets a learned output
//! embedding (the verbalizer) that replaces that word's row of the output head. The paper
//! puts the prompts around a masked-LM's `[MASK]` and scores only the label words there; for
//! a decoder runner prepends the prompts (as prompt tuning does) and trains next-token
//! prediction of the label word, so the verbalizer rows compete with the whole vocabulary
//! rather than only among themselves (the paper's softmax over the classes). The verbalizer
//! starts from the label words' own head rows, so only the prompts change a fresh adapter's
//! outputs.

use burn::prelude::*;

use super::PeftError;
use super::prompt::{PromptConfig, prompt_table};
use crate::model::Llama;
use crate::model::adapters::prompt::Verbalizer;
use crate::model::params::Param;

/// `runner.peft.warp{labels = {...}, num_virtual_tokens = 8, ...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct WarpConfig {
    pub prompt: PromptConfig,
    /// The label words' token ids, one per class.
    pub labels: Vec<u32>,
    /// The label words as written, for adapter_config.json.
    pub label_words: Vec<String>,
}

pub(crate) fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &WarpConfig,
) -> Result<usize, PeftError> {
    let vocab = model.config.vocab_size;
    if config.labels.is_empty() {
        return Err(PeftError::Invalid(
            "WARP needs at least one label word".into(),
        ));
    }
    if let Some(bad) = config.labels.iter().find(|&&id| id as usize >= vocab) {
        return Err(PeftError::Invalid(format!(
            "label token id {bad} is outside the vocabulary ({vocab})"
        )));
    }
    let mut seen = config.labels.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != config.labels.len() {
        return Err(PeftError::Invalid(format!(
            "two labels have the same first token ({:?}): give each class a word of its own",
            config.labels
        )));
    }
    let table = prompt_table(model, &config.prompt)?;
    let head = model.head().value.detach();
    let ids = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            config.labels.iter().map(|&i| i as i64).collect(),
            [config.labels.len()],
        ),
        &model.device,
    );
    let rows = head.select(0, ids);
    let added = table.dims().iter().product::<usize>() + rows.dims().iter().product::<usize>();
    super::begin_adapter(model, name)?;
    model.prompt.insert(name, Param::new(table, true));
    model.verbalizer.insert(
        name,
        Verbalizer {
            ids: config.labels.clone(),
            rows: Param::new(rows, true),
        },
    );
    super::finish_adapter(model, name, super::Method::Warp(config.clone()));
    Ok(added)
}
