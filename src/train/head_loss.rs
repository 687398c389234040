//! The output head and the next-token cross-entropy in one chunked pass that never holds the
//! `[tokens × vocab]` logits (or their log-softmax) for the whole batch: rows are taken a chunk
//! at a time, and only the rows that carry a label are computed at all (prompt and padding
//! positions of instruction data cost nothing).
//!
//! For training, the gradient with respect to the hidden states (and to the head weight when
//! it trains) is formed in the same pass, `softmax - onehot` per chunk, and handed to autodiff
//! through a surrogate `Σ hidden ⊙ G`, whose gradient is exactly G. So backward never
//! revisits the vocabulary-sized activations either.

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{IndexingUpdateOp, Int, TensorData};

use crate::data::IGNORE_INDEX;
use crate::kernels;
use crate::kernels::precision;

/// Rows per chunk: 256 × 49,152 f32 logits are 48 MiB.
const CHUNK_ROWS: usize = 256;

/// Adds one chunk's share to the gradients with respect to the hidden states (`gh`, scattered
/// to the chunk's rows) and, when `grad_head`, to the head (`gw`, which the first chunk starts).
/// # Shapes
/// - dlogits: `[n, vocab]`, head: `[vocab, d_model]`, h: the chunk's hidden rows `[n, d_model]`
fn add_chunk_grads<B: Backend>(
    gh: &mut Option<Tensor<B, 2>>,
    gw: &mut Option<Tensor<B, 2>>,
    grad_head: bool,
    row_idx: Tensor<B, 1, Int>,
    dlogits: Tensor<B, 2>,
    head: &Tensor<B, 2>,
    h: Tensor<B, 2>,
) {
    if let Some(g) = gh.take() {
        *gh = Some(g.select_assign(
            0,
            row_idx,
            precision::matmul(dlogits.clone(), head.clone()),
            IndexingUpdateOp::Add,
        ));
    }
    if grad_head {
        *gw = Some(match gw.take() {
            Some(g) => precision::matmul_accumulate(g, dlogits.transpose(), h),
            None => precision::matmul(dlogits.transpose(), h),
        });
    }
}

/// A chunk's logits `h·Wᵀ`, soft-capped when the model caps them (Gemma 2's
/// `final_logit_softcapping`), and for a capped chunk the derivative of the cap,
/// `1 − tanh²(z / c)`, that the gradient with respect to the logits is multiplied by.
fn chunk_logits<B: Backend>(
    h: Tensor<B, 2>,
    head_t: Tensor<B, 2>,
    softcap: Option<f64>,
) -> (Tensor<B, 2>, Option<Tensor<B, 2>>) {
    let z = precision::matmul(h, head_t);
    match softcap {
        None => (z, None),
        Some(cap) => {
            let capped = kernels::soft_cap(z, cap);
            let slope = (capped.clone() / cap).powi_scalar(2).neg() + 1.0;
            (capped, Some(slope))
        }
    }
}

/// The gradient with respect to the raw logits from the one with respect to the capped ones.
fn through_cap<B: Backend>(dlogits: Tensor<B, 2>, slope: Option<Tensor<B, 2>>) -> Tensor<B, 2> {
    match slope {
        Some(s) => dlogits * s,
        None => dlogits,
    }
}

/// Summed negative log-likelihood over the labelled rows, their number, and (when asked for)
/// the gradient of `nll_sum * scale` with respect to the hidden states and the head.
pub struct HeadLoss<B: Backend> {
    pub nll_sum: f64,
    pub count: usize,
    /// Labelled rows whose most likely token is the label (token accuracy); counted only
    /// when no gradient is asked for (evaluation).
    pub correct: usize,
    /// `[rows, d_model]`
    pub grad_hidden: Option<Tensor<B, 2>>,
    /// `[vocab, d_model]`
    pub grad_head: Option<Tensor<B, 2>>,
}

/// Next-token targets per row of a `[batch, seq]` batch flattened row-major: row `t` is
/// scored on label `t + 1`; the last position of each sequence and `IGNORE_INDEX` labels
/// are not scored.
pub fn next_token_targets(labels: &[i64], batch: usize, seq: usize) -> Vec<i64> {
    next_token_targets_segmented(labels, None, batch, seq)
}

/// As [`next_token_targets`], and with segments a row is not scored on the next token when
/// that token starts another segment (packed examples, padding).
pub(crate) fn next_token_targets_segmented(
    labels: &[i64],
    segments: Option<&[u32]>,
    batch: usize,
    seq: usize,
) -> Vec<i64> {
    let mut targets = vec![IGNORE_INDEX; batch * seq];
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            let i = b * seq + t;
            if segments.is_none_or(|s| s[i] == s[i + 1]) {
                targets[i] = labels[i + 1];
            }
        }
    }
    targets
}

/// # Shapes
/// - hidden: `[rows, d_model]`, head: `[vocab, d_model]`, targets: `rows`
///
/// `scale` multiplies the gradients (1 / count for a mean loss); `softcap` is the model's
/// final logit soft-capping.
pub fn head_nll<B: Backend>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    targets: &[i64],
    scale: f64,
    grad_hidden: bool,
    grad_head: bool,
    softcap: Option<f64>,
) -> HeadLoss<B> {
    let [rows, d] = hidden.dims();
    let device = hidden.device();
    let scored: Vec<usize> = (0..rows).filter(|&r| targets[r] != IGNORE_INDEX).collect();
    let count = scored.len();
    let mut out = HeadLoss {
        nll_sum: 0.0,
        count,
        correct: 0,
        grad_hidden: None,
        grad_head: None,
    };
    if count == 0 {
        out.grad_hidden = grad_hidden.then(|| Tensor::zeros([rows, d], &device));
        out.grad_head = grad_head.then(|| Tensor::zeros(head.dims(), &device));
        return out;
    }
    // A transposed view; each chunk multiplies by it (materialising it measured no faster).
    let head_t = head.clone().transpose();
    let mut gh = grad_hidden.then(|| Tensor::<B, 2>::zeros([rows, d], &device));
    // The head's gradient starts as the first chunk's product and sums the others into it.
    let mut gw: Option<Tensor<B, 2>> = None;
    let mut nll = Vec::new();
    let mut correct = Vec::new();
    let evaluating = !grad_hidden && !grad_head;
    let want_grad = grad_hidden || grad_head;
    for chunk in scored.chunks(CHUNK_ROWS) {
        let n = chunk.len();
        let row_idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(chunk.iter().map(|&r| r as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let chunk_targets: Vec<usize> = chunk.iter().map(|&r| targets[r] as usize).collect();
        let h = hidden.clone().select(0, row_idx.clone());
        let (z, slope) = chunk_logits(h.clone(), head_t.clone(), softcap);
        let ce = kernels::cross_entropy(z, &chunk_targets, scale, want_grad);
        nll.push(ce.nll);
        if evaluating {
            correct.push(ce.correct);
        }
        let Some(dlogits) = ce.dlogits else { continue };
        let dlogits = through_cap(dlogits, slope);
        add_chunk_grads(&mut gh, &mut gw, grad_head, row_idx, dlogits, &head, h);
    }
    out.nll_sum = Tensor::cat(nll, 0).sum().into_scalar().elem::<f64>();
    if !correct.is_empty() {
        out.correct = Tensor::cat(correct, 0).sum().into_scalar().elem::<i64>() as usize;
    }
    out.grad_hidden = gh;
    out.grad_head = gw;
    out
}

/// The next-token loss of a training batch (summed NLL over its labelled tokens) and the
/// surrogate scalar whose backward pass gives every parameter its gradient of
/// `nll_sum / normalizer`. The normalizer is the batch's own token count for a mean loss, or
/// the whole batch's when this is one micro-batch of several (gradient accumulation). The
/// gradients are multiplied by `loss_scale` (f16 loss scaling; 1 otherwise).
pub fn training_loss<B: AutodiffBackend>(
    hidden: Tensor<B, 2>,
    head: &Tensor<B, 2>,
    head_trainable: bool,
    targets: &[i64],
    normalizer: usize,
    loss_scale: f64,
    softcap: Option<f64>,
) -> (f64, Tensor<B, 1>) {
    let normalizer = normalizer.max(1);
    let r = head_nll(
        hidden.clone().inner(),
        head.clone().inner(),
        targets,
        loss_scale / normalizer as f64,
        true,
        head_trainable,
        softcap,
    );
    let mut surrogate = (hidden * Tensor::from_inner(r.grad_hidden.expect("asked for"))).sum();
    if let Some(gw) = r.grad_head {
        surrogate = surrogate + (head.clone() * Tensor::from_inner(gw)).sum();
    }
    (r.nll_sum, surrogate)
}

/// Per-sequence sums over the labelled rows of a `[batch, seq]` batch (flattened row-major):
/// the negative log-likelihood, the number of labelled rows, and the sum of every logit of
/// those rows (for a mean-logit metric); with gradients when asked for.
pub struct SequenceNll<B: Backend> {
    pub nll: Vec<f64>,
    pub tokens: Vec<usize>,
    pub logit_sums: Vec<f64>,
    /// `[rows, d_model]`: the gradient of `Σ_s weight_s · nll_s`.
    pub grad_hidden: Option<Tensor<B, 2>>,
    /// `[vocab, d_model]`
    pub grad_head: Option<Tensor<B, 2>>,
}

/// The head's summed NLL per sequence (log-probs of the labelled tokens are `-nll`), in
/// chunks that never cross a sequence, so each chunk's gradient takes its sequence's weight
/// (`weights[s]`, 1 when `None`) in the one pass: what a preference loss needs, whose
/// gradient with respect to each sequence's log-prob differs per sequence.
/// # Shapes
/// - hidden: `[batch * seq, d_model]`, head: `[vocab, d_model]`, targets: `batch * seq`
#[allow(clippy::too_many_arguments)]
pub fn sequence_nll<B: Backend>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    targets: &[i64],
    seq: usize,
    weights: Option<&[f64]>,
    grad_hidden: bool,
    grad_head: bool,
    softcap: Option<f64>,
) -> SequenceNll<B> {
    let [rows, d] = hidden.dims();
    let device = hidden.device();
    let sequences = rows / seq.max(1);
    let head_t = head.clone().transpose();
    let mut gh = grad_hidden.then(|| Tensor::<B, 2>::zeros([rows, d], &device));
    let mut gw: Option<Tensor<B, 2>> = None;
    let mut out = SequenceNll {
        nll: vec![0.0; sequences],
        tokens: vec![0; sequences],
        logit_sums: vec![0.0; sequences],
        grad_hidden: None,
        grad_head: None,
    };
    let want_grad = grad_hidden || grad_head;
    // Σ_v logits[r, v] = hidden[r] · Σ_v head[v]: the logit sums without the logits.
    let head_colsum = head.clone().sum_dim(0).reshape([d, 1]);
    for s in 0..sequences {
        let scored: Vec<usize> = (s * seq..(s + 1) * seq)
            .filter(|&r| targets[r] != IGNORE_INDEX)
            .collect();
        out.tokens[s] = scored.len();
        let weight = weights.map_or(1.0, |w| w[s]);
        for chunk in scored.chunks(CHUNK_ROWS) {
            let n = chunk.len();
            let row_idx = Tensor::<B, 1, Int>::from_data(
                TensorData::new(chunk.iter().map(|&r| r as i64).collect::<Vec<_>>(), [n]),
                &device,
            );
            let chunk_targets: Vec<usize> = chunk.iter().map(|&r| targets[r] as usize).collect();
            let h = hidden.clone().select(0, row_idx.clone());
            let (z, slope) = chunk_logits(h.clone(), head_t.clone(), softcap);
            // Capped logits do not sum through the head's column sums.
            let logit_sum = match softcap {
                Some(_) => z.clone().sum(),
                None => h.clone().matmul(head_colsum.clone()).sum(),
            };
            let ce = kernels::cross_entropy(z, &chunk_targets, weight, want_grad);
            out.nll[s] += ce.nll.into_scalar().elem::<f64>();
            out.logit_sums[s] += logit_sum.into_scalar().elem::<f64>();
            let Some(dlogits) = ce.dlogits else { continue };
            let dlogits = through_cap(dlogits, slope);
            add_chunk_grads(&mut gh, &mut gw, grad_head, row_idx, dlogits, &head, h);
        }
    }
    out.grad_hidden = gh;
    out.grad_head = if grad_head {
        Some(gw.unwrap_or_else(|| Tensor::zeros(head.dims(), &device)))
    } else {
        None
    };
    out
}

/// Per-token log-probabilities of the labelled rows, at a sampling temperature, and the
/// gradient of `Σ_r weight_r · logp_r`: what a policy-gradient loss needs, whose gradient with
/// respect to each token's log-prob differs per token (PPO's clipped ratio, GRPO's advantage).
pub struct TokenLogps<B: Backend> {
    /// One per row; 0 for rows without a target.
    pub logps: Vec<f64>,
    /// `[rows, d_model]`
    pub grad_hidden: Option<Tensor<B, 2>>,
    /// `[vocab, d_model]`
    pub grad_head: Option<Tensor<B, 2>>,
}

/// Log-probs `log softmax(h·Wᵀ / temperature)[target]` of the rows with a target (as TRL
/// scores completions: logits divided by the sampling temperature), in chunks of at most
/// [`CHUNK_ROWS`] rows. The gradient with respect to the logits of row r is
/// `weight_r · (onehot − softmax) / temperature` (weights 1 when `None`). With `softcap`, the
/// logits are capped before the temperature divides them, as transformers' Gemma 2 returns
/// capped logits to the sampler.
/// # Shapes
/// - hidden: `[rows, d_model]`, head: `[vocab, d_model]`, targets: `rows`
#[allow(clippy::too_many_arguments)]
pub fn token_logps<B: Backend>(
    hidden: Tensor<B, 2>,
    head: Tensor<B, 2>,
    targets: &[i64],
    temperature: f64,
    weights: Option<&[f64]>,
    grad_hidden: bool,
    grad_head: bool,
    softcap: Option<f64>,
) -> TokenLogps<B> {
    let [rows, d] = hidden.dims();
    let device = hidden.device();
    let scored: Vec<usize> = (0..rows).filter(|&r| targets[r] != IGNORE_INDEX).collect();
    let head_t = head.clone().transpose();
    let mut gh = grad_hidden.then(|| Tensor::<B, 2>::zeros([rows, d], &device));
    let mut gw: Option<Tensor<B, 2>> = None;
    let mut logps = vec![0.0; rows];
    let inv_t = 1.0 / temperature;
    for chunk in scored.chunks(CHUNK_ROWS) {
        let n = chunk.len();
        let row_idx = Tensor::<B, 1, Int>::from_data(
            TensorData::new(chunk.iter().map(|&r| r as i64).collect::<Vec<_>>(), [n]),
            &device,
        );
        let target_idx = Tensor::<B, 2, Int>::from_data(
            TensorData::new(
                chunk.iter().map(|&r| targets[r]).collect::<Vec<_>>(),
                [n, 1],
            ),
            &device,
        );
        let h = hidden.clone().select(0, row_idx.clone());
        let (z, slope) = chunk_logits(h.clone(), head_t.clone(), softcap);
        let z = z * inv_t;
        let max = z.clone().max_dim(1);
        let e = (z.clone() - max.clone()).exp();
        let sum = e.clone().sum_dim(1);
        let picked = z.gather(1, target_idx.clone()) - sum.clone().log() - max;
        let values = picked
            .into_data()
            .convert::<f64>()
            .to_vec::<f64>()
            .expect("f64");
        for (&r, v) in chunk.iter().zip(values) {
            logps[r] = v;
        }
        if !(grad_hidden || grad_head) {
            continue;
        }
        // d(w·logp)/dz = w·(onehot − softmax)/T, here as −(w/T)·(softmax − onehot).
        let scale: Vec<f32> = chunk
            .iter()
            .map(|&r| (-weights.map_or(1.0, |w| w[r]) * inv_t) as f32)
            .collect();
        let scale = Tensor::<B, 2>::from_data(TensorData::new(scale, [n, 1]), &device);
        let dlogits = (e * sum.recip()).scatter(
            1,
            target_idx,
            Tensor::full([n, 1], -1.0, &device),
            IndexingUpdateOp::Add,
        ) * scale;
        let dlogits = through_cap(dlogits, slope);
        add_chunk_grads(&mut gh, &mut gw, grad_head, row_idx, dlogits, &head, h);
    }
    TokenLogps {
        logps,
        grad_hidden: gh,
        grad_head: if grad_head {
            Some(gw.unwrap_or_else(|| Tensor::zeros(head.dims(), &device)))
        } else {
            None
        },
    }
}
