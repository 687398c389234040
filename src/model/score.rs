//! The sequence-classification head of a reward model: transformers'
//! `LlamaForSequenceClassification` with one label, a `score` projection (no bias) read at each
//! sequence's last token.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use super::init::{self, HostRng};
use super::llama::Llama;
use super::params::Param;

/// transformers initialises a new `score` like every Linear: normal(0, initializer_range).
const SCORE_INIT_STD: f64 = 0.02;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScoreError {
    #[error(
        "the model has no score head (model:add_score_head() adds one, or load a reward model)"
    )]
    NoHead,
    #[error(
        "add the score head before attaching a method, so that each adapter gets its own trained copy of it (adapter '{0}' is attached)"
    )]
    AdaptersAttached(String),
    #[error("the model already has a score head")]
    Exists,
    #[error("sequence {row} has length {len}, outside 1..={seq}")]
    Length { row: usize, len: usize, seq: usize },
}

impl<B: Backend> Llama<B> {
    /// Adds a freshly initialised one-label score head (trainable until a method is attached;
    /// each method attached later trains its own copy).
    pub fn add_score_head(&mut self, seed: u64) -> Result<(), ScoreError> {
        if self.score.is_some() {
            return Err(ScoreError::Exists);
        }
        if let Some(a) = self.adapters.first() {
            return Err(ScoreError::AdaptersAttached(a.name.clone()));
        }
        let d = self.config.hidden_size;
        let mut rng = init::rng_for(seed, "score");
        let w = init::tensor2(
            init::normal_vec(&mut rng, d, SCORE_INIT_STD),
            [1, d],
            &self.device,
        );
        self.score = Some(Param::new(w, true));
        Ok(())
    }

    /// The head in use: the active adapter's copy, else the base one.
    pub(crate) fn score_head(&self) -> Option<&Param<B, 2>> {
        self.score_tuned.active().or(self.score.as_ref())
    }

    /// One scalar score per sequence, read at its last token (`lengths[i] - 1`; the rows are
    /// right-padded, so this is transformers' last non-padding token).
    /// # Shapes
    /// - input_ids: `[batch, seq]`, lengths: `batch` -> `[batch]`
    pub fn scores(
        &self,
        input_ids: Tensor<B, 2, Int>,
        lengths: &[usize],
        rng: Option<&mut HostRng>,
    ) -> Result<Tensor<B, 1>, ScoreError> {
        let head = self.score_head().ok_or(ScoreError::NoHead)?.value.clone();
        let [b, t] = input_ids.dims();
        let rows = last_token_rows(lengths, t)?;
        let hidden = self.hidden_states(input_ids, rng);
        let last = hidden.select(
            0,
            Tensor::from_data(TensorData::new(rows, [b]), &self.device),
        );
        Ok(last.matmul(head.transpose()).reshape([b]))
    }

    /// The score head applied at every position (a value model's per-token values).
    /// # Shapes
    /// - hidden: `[rows, d_model]` (from [`Llama::hidden_states`]) -> `[rows]`
    pub fn token_scores(&self, hidden: Tensor<B, 2>) -> Result<Tensor<B, 1>, ScoreError> {
        let head = self.score_head().ok_or(ScoreError::NoHead)?.value.clone();
        let [rows, _] = hidden.dims();
        Ok(hidden.matmul(head.transpose()).reshape([rows]))
    }
}

/// Row of each sequence's last token in the `[batch * seq]` flattening.
fn last_token_rows(lengths: &[usize], seq: usize) -> Result<Vec<i64>, ScoreError> {
    lengths
        .iter()
        .enumerate()
        .map(|(row, &len)| {
            if len == 0 || len > seq {
                return Err(ScoreError::Length { row, len, seq });
            }
            Ok((row * seq + len - 1) as i64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_tokens_are_found_per_row_and_bad_lengths_refused() {
        assert_eq!(last_token_rows(&[3, 1, 5], 5).unwrap(), vec![2, 5, 14]);
        assert_eq!(
            last_token_rows(&[0], 4),
            Err(ScoreError::Length {
                row: 0,
                len: 0,
                seq: 4
            })
        );
        assert!(last_token_rows(&[5], 4).is_err());
    }
}
