//! Soft prompts. Prompt tuning (Lester et al. 2021) prepends learned embeddings to the input;
//! prefix tuning (Li & Liang 2021) prepends learned keys and values to every attention layer,
//! optionally produced by a two-layer MLP (the reparameterisation). Layouts follow Hugging
//! Face PEFT, so adapters move between the two: the prefix table is
//! `[virtual, layers · 2 · kv_heads · head_dim]` with layer l's keys at block 2l and values at
//! block 2l + 1.

use burn::prelude::*;
use burn::tensor::TensorData;

use super::PeftError;
use crate::model::Llama;
use crate::model::adapters::prompt::{PrefixAdapter, PrefixMlp};
use crate::model::adapters::slots::Part;
use crate::model::init;
use crate::model::params::Param;

#[derive(Clone, Debug, PartialEq)]
pub enum PromptInit {
    /// normal(0, 1), PEFT's "RANDOM" (an `nn.Embedding`'s default).
    Random,
    /// Rows of the vocabulary embedding picked at random ("SAMPLE_VOCAB").
    SampleVocab,
    /// The embeddings of these token ids, repeated or cut to length ("TEXT").
    Tokens(Vec<u32>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct PromptConfig {
    pub num_virtual_tokens: usize,
    pub init: PromptInit,
    /// The text the token ids came from, for adapter_config.json.
    pub init_text: Option<String>,
    pub seed: u64,
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            init: PromptInit::Random,
            init_text: None,
            seed: 0,
        }
    }
}

impl PrefixConfig {
    pub(crate) fn validate(&self) -> Result<(), PeftError> {
        check_virtual(self.num_virtual_tokens)?;
        if self.projection == Some(0) {
            return Err(PeftError::Invalid("projection must be at least 1".into()));
        }
        Ok(())
    }
}

fn check_virtual(n: usize) -> Result<(), PeftError> {
    if n == 0 {
        return Err(PeftError::Invalid(
            "num_virtual_tokens must be at least 1".into(),
        ));
    }
    Ok(())
}

pub(crate) fn attach_prompt<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &PromptConfig,
) -> Result<usize, PeftError> {
    let table = prompt_table(model, config)?;
    let added = table.dims().iter().product();
    super::begin_adapter(model, name)?;
    model.prompt.insert(name, Param::new(table, true));
    super::finish_adapter(model, name, super::Method::Prompt(config.clone()));
    Ok(added)
}

/// A fresh `[virtual, d_model]` table of virtual token embeddings, initialised as `config`
/// says.
pub(crate) fn prompt_table<B: Backend>(
    model: &Llama<B>,
    config: &PromptConfig,
) -> Result<Tensor<B, 2>, PeftError> {
    let n = config.num_virtual_tokens;
    check_virtual(n)?;
    let (vocab, d) = (model.config.vocab_size, model.config.hidden_size);
    let mut rng = init::rng_for(config.seed, "prompt_tuning");
    let table = match &config.init {
        PromptInit::Random => init::tensor2::<B>(
            init::normal_vec(&mut rng, n * d, 1.0),
            [n, d],
            &model.device,
        ),
        PromptInit::SampleVocab | PromptInit::Tokens(_) => {
            let ids: Vec<i64> = match &config.init {
                PromptInit::Tokens(t) if t.is_empty() => {
                    return Err(PeftError::Invalid(
                        "the prompt-tuning init text has no tokens".into(),
                    ));
                }
                PromptInit::Tokens(t) => {
                    if let Some(bad) = t.iter().find(|&&id| id as usize >= vocab) {
                        return Err(PeftError::Invalid(format!(
                            "init token id {bad} is outside the vocabulary ({vocab})"
                        )));
                    }
                    t.iter().cycle().take(n).map(|&i| i as i64).collect()
                }
                _ => (0..n)
                    .map(|_| rand::Rng::random_range(&mut rng, 0..vocab as i64))
                    .collect(),
            };
            let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(ids, [n]), &model.device);
            let rows = model.embed_tokens.value.clone().detach().select(0, ids);
            // PEFT reads the rows through the model's input embedding: Gemma 3's scales them
            // (and the model then leaves virtual tokens unscaled); Gemma 2's does not.
            match model.config.embed_scale() {
                Some(s) if model.config.family == crate::model::config::Family::Gemma3 => rows * s,
                _ => rows,
            }
        }
    };
    Ok(table)
}

#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrefixConfig {
    pub num_virtual_tokens: usize,
    /// Width of the reparameterisation MLP's hidden layer; `None`: a plain table.
    pub projection: Option<usize>,
    pub seed: u64,
}

impl Default for PrefixConfig {
    fn default() -> Self {
        Self {
            num_virtual_tokens: 20,
            projection: None,
            seed: 0,
        }
    }
}

pub(crate) fn attach_prefix<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &PrefixConfig,
) -> Result<usize, PeftError> {
    let n = config.num_virtual_tokens;
    check_virtual(n)?;
    let c = &model.config;
    let kv = c.num_key_value_heads * c.head_dim();
    let width = c.num_hidden_layers * 2 * kv;
    let device = model.device.clone();
    let mut rng = init::rng_for(config.seed, "prefix_tuning");
    let adapter = match config.projection {
        None => PrefixAdapter {
            embedding: Param::new(
                init::tensor2(
                    init::normal_vec(&mut rng, n * width, 1.0),
                    [n, width],
                    &device,
                ),
                true,
            ),
            mlp: None,
        },
        Some(0) => {
            return Err(PeftError::Invalid(
                "the prefix projection's hidden size must be at least 1".into(),
            ));
        }
        Some(h) => {
            // nn.Linear's default initialisation: weights and biases uniform(±1/√fan_in).
            let linear = |rng: &mut init::HostRng, fan_in: usize, fan_out: usize| {
                let bound = 1.0 / (fan_in as f64).sqrt();
                let w = init::tensor2::<B>(
                    init::uniform_vec(rng, fan_in * fan_out, bound),
                    [fan_in, fan_out],
                    &device,
                );
                let b = init::tensor1::<B>(init::uniform_vec(rng, fan_out, bound), &device);
                (Param::new(w, true), Param::new(b, true))
            };
            let embedding = Param::new(
                init::tensor2(init::normal_vec(&mut rng, n * kv, 1.0), [n, kv], &device),
                true,
            );
            let (w1, b1) = linear(&mut rng, kv, h);
            let (w2, b2) = linear(&mut rng, h, width);
            PrefixAdapter {
                embedding,
                mlp: Some(PrefixMlp { w1, b1, w2, b2 }),
            }
        }
    };
    super::begin_adapter(model, name)?;
    let mut count = crate::model::params::ParamCount::default();
    let mut a = adapter;
    a.visit("", &mut count);
    model.prefix.insert(name, a);
    super::finish_adapter(model, name, super::Method::Prefix(config.clone()));
    Ok(count.total)
}
