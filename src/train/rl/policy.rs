//! The training pass every policy-gradient objective shares: recompute the completions'
//! per-token log-probs with a graph, let the objective turn them into `d loss / d logp` per
//! token, and back-propagate exactly that through a surrogate (the loss itself is formed on
//! the host from the log-probs, [`super::math`]).

use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::backend::AutodiffBackend;

use super::rollout::Completions;
use crate::memory;
use crate::model::Llama;
use crate::train::GradMap;
use crate::train::head_loss::token_logps;

/// Runs the policy over `batch` (dropout off, as TRL's RL trainers run it), hands the
/// per-token log-probs to `objective`, which returns the loss and `d loss / d logp` per token
/// (already times the loss scale), and adds the resulting gradients to `grads`. Returns the
/// loss and the log-probs. A non-finite loss adds nothing.
pub(crate) fn backward_through_logps<B: AutodiffBackend, T>(
    model: &mut Llama<B>,
    batch: &Completions,
    temperature: f64,
    grads: &mut GradMap<B>,
    objective: impl FnOnce(&[Vec<f64>]) -> (f64, Vec<Vec<f64>>, T),
) -> (f64, Vec<Vec<f64>>, T) {
    let (ids, targets, width) = batch.training_rows();
    let rows = batch.len();
    let input = Tensor::from_data(TensorData::new(ids, [rows, width]), &model.device);
    let hidden = model.hidden_states(input, None);
    let head = model.head().clone();
    let first = token_logps(
        hidden.clone().inner(),
        head.value.clone().inner(),
        &targets,
        temperature,
        None,
        !head.trainable,
        false,
        model.config.final_logit_softcapping,
    );
    let logps = batch.per_completion(&first.logps, width);
    let (loss, dlogp, extra) = objective(&logps);
    memory::sample_device::<B>(&model.device);
    if !loss.is_finite() {
        return (loss, logps, extra);
    }
    // Each completion token's weight, at the position that predicts it.
    let mut weights = vec![0.0; rows * width];
    for (r, (p, d)) in batch.prompts.iter().zip(&dlogp).enumerate() {
        let start = r * width + p.len() - 1;
        weights[start..start + d.len()].copy_from_slice(d);
    }
    let (grad_hidden, grad_head) = if head.trainable {
        let second = token_logps(
            hidden.clone().inner(),
            head.value.clone().inner(),
            &targets,
            temperature,
            Some(&weights),
            true,
            true,
            model.config.final_logit_softcapping,
        );
        (second.grad_hidden.expect("asked for"), second.grad_head)
    } else {
        // The gradient of one token's log-prob is linear in its weight: scale the rows.
        let per_row: Vec<f32> = weights.iter().map(|&w| w as f32).collect();
        let scale = Tensor::<B::InnerBackend, 2>::from_data(
            TensorData::new(per_row, [rows * width, 1]),
            &hidden.device(),
        );
        (first.grad_hidden.expect("asked for") * scale, None)
    };
    let mut surrogate = (hidden * Tensor::from_inner(grad_hidden)).sum();
    if let Some(gw) = grad_head {
        surrogate = surrogate + (head.value.clone() * Tensor::from_inner(gw)).sum();
    }
    let g = surrogate.backward();
    grads.accumulate(&g, |c| model.visit(c));
    memory::sample_device::<B>(&model.device);
    (loss, logps, extra)
}
