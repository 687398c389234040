//! Rollouts: sampled completions of a batch of prompts (batched generation with the KV
//! cache), with the per-token log-probs the policy and the reference give them, recomputed
//! in one forward pass each as TRL does (logits divided by the sampling temperature).

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::data::IGNORE_INDEX;
use crate::generate::{GenerateError, GenerateOptions, generate_batch};
use crate::model::Llama;
use crate::train::TrainError;
use crate::train::head_loss::token_logps;

/// Prompts and their completions, as token ids.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Completions {
    pub prompts: Vec<Vec<u32>>,
    pub completions: Vec<Vec<u32>>,
    /// Whether each completion ended at EOS or a stop string rather than at the length limit.
    pub ended: Vec<bool>,
}

impl Completions {
    pub fn len(&self) -> usize {
        self.completions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.completions.is_empty()
    }

    /// Completion tokens over all rows.
    pub fn tokens(&self) -> usize {
        self.completions.iter().map(Vec::len).sum()
    }

    /// The rows `range` of the batch.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            prompts: self.prompts[range.clone()].to_vec(),
            completions: self.completions[range.clone()].to_vec(),
            ended: self.ended[range].to_vec(),
        }
    }

    /// Prompt + completion per row, padded on the right to one width (padding sits after
    /// every real token, so the causal mask keeps it out and positions need no shift), and the
    /// next-token target of every position that predicts a completion token.
    /// # Shapes
    /// -> ids and targets `[rows * width]`, row-major
    pub fn training_rows(&self) -> (Vec<i64>, Vec<i64>, usize) {
        let width = self
            .prompts
            .iter()
            .zip(&self.completions)
            .map(|(p, c)| p.len() + c.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let rows = self.len();
        let mut ids = vec![0i64; rows * width];
        let mut targets = vec![IGNORE_INDEX; rows * width];
        for (r, (p, c)) in self.prompts.iter().zip(&self.completions).enumerate() {
            let row = &mut ids[r * width..(r + 1) * width];
            for (slot, &id) in row.iter_mut().zip(p.iter().chain(c)) {
                *slot = id as i64;
            }
            // Position t predicts token t + 1: the completion's tokens are predicted from
            // positions p.len() − 1 onwards.
            for (j, &id) in c.iter().enumerate() {
                targets[r * width + p.len() + j - 1] = id as i64;
            }
        }
        (ids, targets, width)
    }

    /// Splits per-position values (`[rows * width]`, as `training_rows` lays them out) into
    /// each completion's tokens.
    pub fn per_completion(&self, values: &[f64], width: usize) -> Vec<Vec<f64>> {
        self.prompts
            .iter()
            .zip(&self.completions)
            .enumerate()
            .map(|(r, (p, c))| {
                let start = r * width + p.len() - 1;
                values[start..start + c.len()].to_vec()
            })
            .collect()
    }
}

/// The seed of rollout number `step`: each step samples afresh, and a run is reproducible.
pub(crate) fn rollout_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_add(step.wrapping_mul(1_000_003))
}

/// Samples one completion per prompt (prompts repeat for a group) with `opts` (temperature,
/// top-p, top-k, `max_new_tokens` as the length limit, the EOS tokens as `stop`).
/// `stop(i, tokens)` ends row `i` early (stop strings, checked on the decoded text by the
/// caller).
pub fn sample<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    stop: impl FnMut(usize, &[u32]) -> bool,
) -> Result<Completions, TrainError> {
    let mut stopped = vec![false; prompts.len()];
    let mut stop = stop;
    let completions = generate_batch(model, prompts, opts, |i, tokens| {
        stopped[i] = stop(i, tokens);
        stopped[i]
    })
    .map_err(|e| match e {
        GenerateError::Interrupted(i) => TrainError::Interrupted(i),
        other => TrainError::Invalid(other.to_string()),
    })?;
    let ended = completions
        .iter()
        .zip(&stopped)
        .map(|(c, &s)| s || c.last().is_some_and(|t| opts.stop.contains(t)))
        .collect();
    Ok(Completions {
        prompts: prompts.to_vec(),
        completions,
        ended,
    })
}

/// The per-token log-probs `model` gives each completion at `temperature`, without a graph.
pub fn completion_logps<B: Backend>(
    model: &Llama<B>,
    batch: &Completions,
    temperature: f64,
) -> Vec<Vec<f64>> {
    if batch.is_empty() {
        return Vec::new();
    }
    let model = model.detached();
    let (ids, targets, width) = batch.training_rows();
    let input = Tensor::from_data(TensorData::new(ids, [batch.len(), width]), &model.device);
    let hidden = model.hidden_states(input, None);
    let r = token_logps(
        hidden,
        model.head().value.clone(),
        &targets,
        temperature,
        None,
        false,
        false,
        model.config.final_logit_softcapping,
    );
    batch.per_completion(&r.logps, width)
}
