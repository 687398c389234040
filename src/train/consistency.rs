//! AdaMix's consistency regularisation: each micro-batch runs through the model twice, each
//! pass routing through experts drawn at random, and the loss is the mean of the two passes'
//! next-token cross-entropies plus `λ` times the symmetric KL between their distributions,
//! `½·Σ_v (p₁ − p₂)(log p₁ − log p₂)` per labelled token. Both sums are normalised like the
//! plain loss (by the step's labelled tokens). The logits of the labelled rows are formed
//! here, two `[labelled, vocab]` tensors per micro-batch, as the KL needs every probability.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;

use super::head_loss::next_token_targets_segmented;
use super::trainer::input_tensor;
use crate::data::{Batch, IGNORE_INDEX};
use crate::model::Llama;
use crate::model::init::HostRng;

/// λ when the active adapter is AdaMix with a consistency term.
pub(crate) fn weight<B: Backend>(model: &Llama<B>) -> Option<f64> {
    match crate::peft::active_method(model) {
        Some(crate::peft::Method::AdaMix(c)) if c.consistency > 0.0 => Some(c.consistency),
        _ => None,
    }
}

/// The two passes' summed next-token NLL of the first pass (for the reported loss) and the
/// surrogate to differentiate: `(CE₁ + CE₂)/2 + λ·symKL`, times `loss_scale / normalizer`.
pub(crate) fn consistency_loss<B: AutodiffBackend>(
    model: &Llama<B>,
    micro: &Batch,
    lambda: f64,
    normalizer: usize,
    loss_scale: f64,
    rng: &mut HostRng,
) -> (f64, Tensor<B, 1>) {
    let device = model.device.clone();
    let targets = next_token_targets_segmented(
        &micro.labels,
        micro.segments.as_deref(),
        micro.batch,
        micro.seq,
    );
    let rows: Vec<i64> = (0..targets.len())
        .filter(|&r| targets[r] != IGNORE_INDEX)
        .map(|r| r as i64)
        .collect();
    let k = rows.len();
    let labels: Vec<i64> = rows.iter().map(|&r| targets[r as usize]).collect();
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(rows, [k]), &device);
    let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [k, 1]), &device);
    let mut pass = || {
        let hidden = model.hidden_states_segmented(
            input_tensor(micro, &device),
            micro.segments.as_deref(),
            Some(&mut *rng),
        );
        log_softmax(model.logits(hidden.select(0, rows.clone())), 1)
    };
    let (logp1, logp2) = (pass(), pass());
    let nll1 = logp1.clone().gather(1, labels.clone()).sum().neg();
    let nll2 = logp2.clone().gather(1, labels).sum().neg();
    let kl = ((logp1.clone().exp() - logp2.clone().exp()) * (logp1 - logp2)).sum() * 0.5;
    let reported = nll1.clone().into_scalar().elem::<f64>();
    let loss = (nll1 + nll2) * 0.5 + kl * lambda;
    (reported, loss * (loss_scale / normalizer.max(1) as f64))
}
