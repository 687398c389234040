//! Causal language-model cross-entropy with label masking.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::{Int, TensorData};

use crate::data::IGNORE_INDEX;

/// Summed negative log-likelihood of the labelled next tokens, and how many there are.
/// Position `t` predicts label `t + 1`; `IGNORE_INDEX` labels carry no loss.
///
/// # Shapes
/// - logits: `[batch, seq, vocab]`, labels: `batch * seq` row-major -> `[1]`
pub(crate) fn causal_lm_nll_sum<B: Backend>(
    logits: Tensor<B, 3>,
    labels: &[i64],
) -> (Tensor<B, 1>, usize) {
    let [b, t, v] = logits.dims();
    let device = logits.device();
    let n = b * (t - 1);
    let mut targets = Vec::with_capacity(n);
    let mut weights = Vec::with_capacity(n);
    for row in 0..b {
        for pos in 1..t {
            let l = labels[row * t + pos];
            let keep = l != IGNORE_INDEX;
            targets.push(if keep { l } else { 0 });
            weights.push(if keep { 1.0f32 } else { 0.0 });
        }
    }
    let count = weights.iter().filter(|&&w| w > 0.0).count();
    let logits = logits.narrow(1, 0, t - 1).reshape([n, v]);
    let logp = log_softmax(logits, 1);
    let idx = Tensor::<B, 2, Int>::from_data(TensorData::new(targets, [n, 1]), &device);
    let w = Tensor::<B, 2>::from_data(TensorData::new(weights, [n, 1]), &device);
    let picked = logp.gather(1, idx) * w;
    (picked.sum().neg(), count)
}

/// Mean next-token cross-entropy over the labelled positions.
pub fn causal_lm_loss<B: Backend>(logits: Tensor<B, 3>, labels: &[i64]) -> Tensor<B, 1> {
    let (sum, count) = causal_lm_nll_sum(logits, labels);
    sum / count.max(1) as f64
}
