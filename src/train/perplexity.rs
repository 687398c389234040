//! Perplexity of a token sequence with a sliding window, as the usual tools compute it
//! (Hugging Face's "perplexity of fixed-length models"): windows of `window` tokens advance by
//! `stride`; each window scores only the tokens not scored by the previous one, with the rest
//! of the window as context.

use burn::prelude::*;
use burn::tensor::{ElementConversion, Int, TensorData};

use super::loss::causal_lm_nll_sum;
use crate::data::IGNORE_INDEX;
use crate::model::Llama;

#[derive(Clone, Debug, PartialEq)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub nll: f64,
    /// Tokens scored (every token but the first).
    pub tokens: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PerplexityError {
    #[error("need at least 2 tokens to score (got {0})")]
    TooShort(usize),
    #[error("window must be ≥ 2 and stride in 1..=window (got window {window}, stride {stride})")]
    Window { window: usize, stride: usize },
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
}

pub fn perplexity<B: Backend>(
    model: &Llama<B>,
    ids: &[u32],
    window: usize,
    stride: usize,
) -> Result<Perplexity, PerplexityError> {
    let _working = crate::interrupt::working();
    if ids.len() < 2 {
        return Err(PerplexityError::TooShort(ids.len()));
    }
    if window < 2 || stride == 0 || stride > window {
        return Err(PerplexityError::Window { window, stride });
    }
    let vocab = model.config.vocab_size;
    if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(PerplexityError::TokenOutOfRange { id, vocab });
    }
    let model = model.detached();
    let (mut total, mut count) = (0.0f64, 0usize);
    // `scored` = tokens whose prediction has been counted (token 0 is never predicted).
    let mut scored = 1;
    let mut begin = 0;
    while scored < ids.len() {
        crate::interrupt::check()?;
        let end = (begin + window).min(ids.len());
        let chunk: Vec<i64> = ids[begin..end].iter().map(|&i| i as i64).collect();
        // Score positions begin+k for k ≥ 1 whose index is ≥ `scored`.
        let labels: Vec<i64> = chunk
            .iter()
            .enumerate()
            .map(|(k, &t)| {
                if begin + k >= scored && k >= 1 {
                    t
                } else {
                    IGNORE_INDEX
                }
            })
            .collect();
        let n = chunk.len();
        let input = Tensor::<B, 2, Int>::from_data(TensorData::new(chunk, [1, n]), &model.device);
        let (sum, c) = causal_lm_nll_sum(model.forward(input, None), &labels);
        total += sum.into_scalar().elem::<f64>();
        count += c;
        scored = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let nll = total / count.max(1) as f64;
    Ok(Perplexity {
        perplexity: nll.exp(),
        nll,
        tokens: count,
    })
}

/// `log p(ids[i] | ids[..i])` for i in 1..n, in one forward pass.
pub fn token_logprobs<B: Backend>(
    model: &Llama<B>,
    ids: &[u32],
) -> Result<Vec<f64>, PerplexityError> {
    if ids.len() < 2 {
        return Err(PerplexityError::TooShort(ids.len()));
    }
    let vocab = model.config.vocab_size;
    if let Some(&id) = ids.iter().find(|&&i| i as usize >= vocab) {
        return Err(PerplexityError::TokenOutOfRange { id, vocab });
    }
    let model = model.detached();
    let n = ids.len();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
        &model.device,
    );
    let logits = model
        .forward(input, None)
        .reshape([n, vocab])
        .narrow(0, 0, n - 1);
    let logp = burn::tensor::activation::log_softmax(logits, 1);
    let next = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            ids[1..].iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [n - 1, 1],
        ),
        &model.device,
    );
    let picked = logp
        .gather(1, next)
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("f32");
    Ok(picked.into_iter().map(f64::from).collect())
}
