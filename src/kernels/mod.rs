//! Fused kernels for the hot element-wise chains of a Llama step: RMSNorm, SwiGLU's
//! `silu(gate)·up`, and the scaled, masked softmax of attention. Each is one custom backend
//! operation with a hand-written backward on the CPU backend (flex), with and without
//! autodiff; other backends keep the composed Burn ops until they get kernels of their own.
//!
//! The model code is generic over the backend, so the concrete backend is recognised at run
//! time ([`downcast`]). The composed versions stay here: they are the fallback and the
//! reference the fused ones are tested against.

use std::any::{Any, TypeId};

use burn::prelude::*;
use burn::tensor::activation::{silu, softmax};
use burn::tensor::{IndexingUpdateOp, Int, TensorData};

#[cfg(target_arch = "x86_64")]
pub(crate) mod amx;
#[cfg(feature = "flex")]
#[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cuda")))]
mod cube;
pub(crate) mod dpbf16;
mod flex;
pub(crate) mod host;
pub mod precision;
pub(crate) mod thin;

pub(crate) use host::{AdamWStep, AttentionShape};

/// Why bf16 products on `B` run slower than f32 would, if they do: the CPU backend on a CPU
/// with neither AMX nor AVX512_BF16, where bf16 is rounded f32 arithmetic (2.6× slower than
/// f32 for a LoRA step before `vdpbf16ps` was used), or `vdpbf16ps` on an Intel core, where its
/// products measured slower than f32 ones (docs/performance.md).
pub(crate) fn bf16_slowness<B: Backend>() -> Option<&'static str> {
    fn device_type<B: Backend>() -> TypeId {
        TypeId::of::<B::Device>()
    }
    #[cfg(feature = "flex")]
    if device_type::<B>() == device_type::<burn::backend::Flex>() {
        return amx::slowness();
    }
    None
}

/// `a` as a `T` when `A` and `T` are the same type; `a` back otherwise.
pub(crate) fn downcast<A: 'static, T: 'static>(a: A) -> Result<T, A> {
    if TypeId::of::<A>() != TypeId::of::<T>() {
        return Err(a);
    }
    let boxed: Box<dyn Any> = Box::new(a);
    match boxed.downcast::<T>() {
        Ok(t) => Ok(*t),
        Err(_) => unreachable!("the type ids are equal"),
    }
}

/// `a · b` in f32. On flex, gemm writes the product straight into a fresh buffer (Burn's own
/// flex matmul zero-fills it and copies it once more), with a backward pass that keeps only
/// what the gradients need; elsewhere Burn's matmul.
/// # Shapes
/// - a: `[m, k]`, b: `[k, n]` -> `[m, n]`
pub(crate) fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let [a, b] = match flex::matmul(a, b) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    a.matmul(b)
}

/// `acc + a · b` in f32, summed into acc's buffer on flex (no autodiff) where acc is not
/// shared; elsewhere composed.
/// # Shapes
/// - acc: `[m, n]`, a: `[m, k]`, b: `[k, n]` -> `[m, n]`
pub(crate) fn matmul_accumulate<B: Backend>(
    acc: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let [acc, a, b] = match flex::matmul_accumulate(acc, a, b) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    acc + a.matmul(b)
}

/// A bf16 matmul: `round_bf16(round_bf16(a) · round_bf16(b))` with f32 accumulation,
/// returned in f32. On flex it runs on AMX tiles when the CPU has them.
/// # Shapes
/// - a: `[m, k]`, b: `[k, n]` -> `[m, n]`
pub(crate) fn matmul_bf16<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::matmul_bf16(&a, &b) {
        return out;
    }
    matmul_bf16_composed(a, b)
}

/// `x · w` (`x · wᵀ` when `transposed`) in f32 for a right operand made on the host for this
/// one product (QLoRA's dequantized weight, `shape` row-major): gemm reads its values (or
/// their transposed view) where they are, with no backend tensor made of them. `w` is called
/// only when the product runs here. `Err(x)` unless `P` is flex's f32 primitive.
pub(crate) fn matmul_host_weight<P: 'static>(
    x: P,
    shape: [usize; 2],
    transposed: bool,
    w: impl FnOnce() -> Vec<f32>,
) -> Result<P, P> {
    #[cfg(feature = "flex")]
    return flex::matmul_host_weight(x, shape, transposed, w);
    #[cfg(not(feature = "flex"))]
    {
        let _ = (shape, transposed, w);
        Err(x)
    }
}

/// `x · w` (`x · wᵀ` when `transposed`) in bf16 on AMX tiles for a right operand made on the
/// host for this one product (QLoRA's dequantized weight, `shape` row-major): `w` is called
/// only when the product runs here, packed straight from its values and not kept. `Err(x)`
/// unless `P` is flex's f32 primitive and the CPU has AMX.
pub(crate) fn matmul_bf16_host_weight<P: 'static>(
    x: P,
    shape: [usize; 2],
    transposed: bool,
    w: impl FnOnce() -> Vec<f32>,
) -> Result<P, P> {
    #[cfg(all(feature = "flex", target_arch = "x86_64"))]
    return flex::matmul_bf16_host_weight(x, shape, transposed, w);
    #[cfg(not(all(feature = "flex", target_arch = "x86_64")))]
    {
        let _ = (shape, transposed, w);
        Err(x)
    }
}

pub(crate) fn matmul_bf16_composed<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    use burn::tensor::FloatDType;
    a.cast(FloatDType::BF16)
        .matmul(b.cast(FloatDType::BF16))
        .cast(FloatDType::F32)
}

/// RMSNorm of each row.
/// # Shapes
/// - x: `[n, d]`, weight: `[d]` -> `[n, d]`
pub(crate) fn rms_norm<B: Backend>(
    x: Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::rms_norm(&x, weight, eps) {
        return out;
    }
    #[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cuda")))]
    if let Some(out) = cube::rms_norm(&x, weight, eps) {
        return out;
    }
    rms_norm_composed(x, weight, eps)
}

/// `silu(gate) · up`, SwiGLU's product.
/// # Shapes
/// - gate, up: `[n, f]` -> `[n, f]`
pub(crate) fn silu_mul<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::silu_mul(&gate, &up) {
        return out;
    }
    #[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cuda")))]
    if let Some(out) = cube::silu_mul(&gate, &up) {
        return out;
    }
    silu_mul_composed(gate, up)
}

/// `base + scale · (x · a) · b`: a LoRA branch added to its layer's base output
/// `base = x · W`. On flex in f32, for ranks up to [`thin::THIN_MAX`], the down projection
/// runs as one pass over `x`'s rows, the up projection is added into base's own buffer, and
/// the backward pass is hand-written; otherwise composed (other precisions round the
/// products' inputs, see [`precision::matmul`]).
/// # Shapes
/// - x: `[n, k]`, base: `[n, d]`, a: `[k, r]`, b: `[r, d]` -> `[n, d]`
pub(crate) fn lora_branch<B: Backend>(
    x: Tensor<B, 2>,
    base: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let [x, base, a, b] = if precision::active() == precision::Precision::Fp32 {
        match flex::lora_branch(x, base, a, b, scale) {
            Ok(out) => return out,
            Err(inputs) => inputs,
        }
    } else {
        [x, base, a, b]
    };
    lora_branch_composed(x, base, a, b, scale)
}

pub(crate) fn lora_branch_composed<B: Backend>(
    x: Tensor<B, 2>,
    base: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, 2> {
    base + precision::matmul(precision::matmul(x, a), b) * scale
}

/// Softmax over each row of `scale · scores + mask`; `mask` is a constant (no gradient) whose
/// rows repeat over the scores' rows (one `[t, width]` mask serves every head).
/// # Shapes
/// - scores: `[rows, width]`, mask: `[rows / k, width]` -> `[rows, width]`
pub(crate) fn masked_softmax<B: Backend>(
    scores: Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::masked_softmax(&scores, mask, scale) {
        return out;
    }
    #[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cuda")))]
    if let Some(out) = cube::masked_softmax(&scores, mask, scale) {
        return out;
    }
    masked_softmax_composed(scores, mask, scale)
}

/// Causal grouped-query self-attention over `batch × t` tokens, without a KV cache:
/// `softmax(scale · q·kᵀ + mask) · v` per head, the mask's rows cycled over (batch, head,
/// position) as in [`masked_softmax`].
/// # Shapes
/// - q: `[batch * t, heads * head_dim]`, k, v: `[batch * t, kv_heads * head_dim]`
/// - mask: `[batch * heads * t / k, t]` -> `[batch * t, heads * head_dim]`
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    shape: AttentionShape,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::attention(&q, &k, &v, mask, shape) {
        return out;
    }
    attention_composed(q, k, v, mask, shape)
}

pub(crate) fn attention_composed<B: Backend>(
    q: Tensor<B, 2>,
    k: Tensor<B, 2>,
    v: Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    s: AttentionShape,
) -> Tensor<B, 2> {
    let AttentionShape {
        batch: b,
        t,
        heads: h,
        kv_heads: kvh,
        head_dim: hd,
        scale,
    } = s;
    let heads = |y: Tensor<B, 2>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
    // The query heads that share a key/value head are stacked along the rows of one matmul,
    // so keys and values are never repeated; score rows come out ordered (batch, head, t).
    let rep = h / kvh;
    let q = heads(q, h).reshape([b, kvh, rep * t, hd]);
    let (k, v) = (heads(k, kvh), heads(v, kvh));
    let scores = precision::matmul_nd(q, k.swap_dims(2, 3)).reshape([b * h * t, t]);
    let probs = masked_softmax(scores, mask, scale as f64).reshape([b, kvh, rep * t, t]);
    precision::matmul_nd(probs, v)
        .reshape([b, h, t, hd])
        .swap_dims(1, 2)
        .reshape([b * t, h * hd])
}

/// Rotary position embedding (rotate-half layout) of a projection's output, per token.
/// # Shapes
/// - y: `[n, heads * head_dim]`, cos, sin: `[n, head_dim]` -> `[n, heads * head_dim]`
pub(crate) fn rope<B: Backend>(
    y: Tensor<B, 2>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Tensor<B, 2> {
    // The kernels' shape contract: a table row per row of `y`, whole heads of even width.
    let ([rows, width], [table_rows, hd]) = (y.dims(), cos.dims());
    let kernel_shapes =
        rows == table_rows && sin.dims() == cos.dims() && hd > 0 && hd % 2 == 0 && width % hd == 0;
    #[cfg(feature = "flex")]
    if kernel_shapes && let Some(out) = flex::rope(&y, cos, sin) {
        return out;
    }
    #[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cuda")))]
    if kernel_shapes && let Some(out) = cube::rope(&y, cos, sin) {
        return out;
    }
    let _ = kernel_shapes;
    rope_composed(y, cos, sin)
}

pub(crate) fn rope_composed<B: Backend>(
    y: Tensor<B, 2>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Tensor<B, 2> {
    let ([n, width], [_, hd]) = (y.dims(), cos.dims());
    let (heads, half) = (width / hd, hd / 2);
    let x = y.reshape([n, heads, hd]);
    let rotated = Tensor::cat(
        vec![
            x.clone().narrow(2, half, half).neg(),
            x.clone().narrow(2, 0, half),
        ],
        2,
    );
    (x * cos.clone().unsqueeze_dim::<3>(1) + rotated * sin.clone().unsqueeze_dim::<3>(1))
        .reshape([n, width])
}

/// Cross-entropy of a chunk of logits against `targets` (each below the vocabulary size).
pub(crate) struct CrossEntropy<B: Backend> {
    /// `[1]`: the summed negative log-likelihood.
    pub nll: Tensor<B, 1>,
    /// `[1]`: rows whose most likely token (lowest id on ties) is the target.
    pub correct: Tensor<B, 1, Int>,
    /// `[rows, vocab]`: `scale · (softmax − onehot(target))`, the gradient of `scale · nll`,
    /// when asked for.
    pub dlogits: Option<Tensor<B, 2>>,
}

/// # Shapes
/// - logits: `[rows, vocab]`, targets: `rows`
///
/// On flex one pass per row, reusing the logits' buffer for the gradient; on wgpu and CUDA
/// with fusion one CubeCL kernel; elsewhere composed.
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    scale: f64,
    grad: bool,
) -> CrossEntropy<B> {
    #[cfg(feature = "flex")]
    let logits = match flex::cross_entropy(logits, targets, scale, grad) {
        Ok((nll, correct, dlogits)) => {
            let device = Default::default();
            return CrossEntropy {
                nll: Tensor::from_data(TensorData::new(vec![nll as f32], [1]), &device),
                correct: Tensor::from_data(TensorData::new(vec![correct as i64], [1]), &device),
                dlogits,
            };
        }
        Err(logits) => logits,
    };
    #[cfg(all(feature = "fusion", any(feature = "wgpu", feature = "cuda")))]
    if let Some(out) = cube::cross_entropy(&logits, targets, scale, grad) {
        return out;
    }
    cross_entropy_composed(logits, targets, scale, grad)
}

pub(crate) fn cross_entropy_composed<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    scale: f64,
    grad: bool,
) -> CrossEntropy<B> {
    let device = logits.device();
    let n = targets.len();
    let target_idx = Tensor::<B, 2, Int>::from_data(
        TensorData::new(
            targets.iter().map(|&t| t as i64).collect::<Vec<_>>(),
            [n, 1],
        ),
        &device,
    );
    let max = logits.clone().max_dim(1);
    let e = (logits.clone() - max.clone()).exp();
    let sum = e.clone().sum_dim(1);
    let lse = sum.clone().log() + max;
    // Ties go to the lowest id, as torch.argmax does.
    let correct = logits
        .clone()
        .argmax(1)
        .equal(target_idx.clone())
        .int()
        .sum();
    let nll = (lse - logits.gather(1, target_idx.clone())).sum();
    let dlogits = grad.then(|| {
        let probs = e * (sum.recip() * scale);
        probs.scatter(
            1,
            target_idx,
            Tensor::full([n, 1], -scale, &device),
            IndexingUpdateOp::Add,
        )
    });
    CrossEntropy {
        nll,
        correct,
        dlogits,
    }
}

/// One AdamW step of a flat parameter: the new weights, first and second moments.
/// # Shapes
/// - w, g, m, v: `[n]` -> three `[n]`
pub(crate) fn adamw<B: Backend>(
    w: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    s: AdamWStep,
) -> [Tensor<B, 1>; 3] {
    #[cfg(feature = "flex")]
    let [w, m, v] = match flex::adamw(w, &g, m, v, s) {
        Ok(out) => return out,
        Err(inputs) => inputs,
    };
    adamw_composed(w, g, m, v, s)
}

pub(crate) fn adamw_composed<B: Backend>(
    w: Tensor<B, 1>,
    g: Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    s: AdamWStep,
) -> [Tensor<B, 1>; 3] {
    let g = if s.grad_scale == 1.0 {
        g
    } else {
        g * s.grad_scale
    };
    let m = m * s.beta1 + g.clone() * s.one_minus_beta1;
    let v = v * s.beta2 + g.square() * s.one_minus_beta2;
    let denom = v.clone().sqrt() / s.sqrt_bias_correction2 + s.eps;
    let w = w * s.decay - m.clone() / denom * s.step_size;
    [w, m, v]
}

/// `Σ x²` of a flat tensor, in f64 (a gradient's squared L2 norm) without a squared copy.
pub(crate) fn sum_squares<B: Backend>(x: &Tensor<B, 1>) -> f64 {
    #[cfg(feature = "flex")]
    if let Some(s) = flex::sum_squares(x) {
        return s;
    }
    sum_squares_composed(x)
}

pub(crate) fn sum_squares_composed<B: Backend>(x: &Tensor<B, 1>) -> f64 {
    x.clone().square().sum().into_scalar().elem::<f64>()
}

pub(crate) fn rms_norm_composed<B: Backend>(
    x: Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Tensor<B, 2> {
    let inv_rms = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    x * inv_rms * weight.clone().unsqueeze::<2>()
}

pub(crate) fn silu_mul_composed<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(gate) * up
}

/// GeGLU's `gelu(gate) · up` with GELU's tanh approximation (PyTorch's
/// `gelu(approximate="tanh")`, Gemma's `gelu_pytorch_tanh`). Composed ops on every backend.
pub(crate) fn gelu_tanh_mul<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (gate.clone() + gate.clone().powi_scalar(3) * 0.044715) * k;
    gate * (inner.tanh() + 1.0) * 0.5 * up
}

/// Soft-capping, `cap · tanh(x / cap)`: values stay within ±cap (Gemma 2's logits and
/// attention scores).
pub(crate) fn soft_cap<B: Backend, const D: usize>(x: Tensor<B, D>, cap: f64) -> Tensor<B, D> {
    (x / cap).tanh() * cap
}

/// [`masked_softmax`] of soft-capped scores: `softmax(cap · tanh(scale · scores / cap) + mask)`,
/// as transformers' Gemma 2 attention orders them. Composed ops.
/// # Shapes
/// - scores: `[rows, width]`, mask: `[rows / k, width]` -> `[rows, width]`
pub(crate) fn soft_capped_masked_softmax<B: Backend>(
    scores: Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    scale: f64,
    cap: f64,
) -> Tensor<B, 2> {
    let repeats = scores.dims()[0] / mask.dims()[0];
    softmax(
        soft_cap(scores * scale, cap) + mask.clone().repeat_dim(0, repeats),
        1,
    )
}

pub(crate) fn masked_softmax_composed<B: Backend>(
    scores: Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    scale: f64,
) -> Tensor<B, 2> {
    let repeats = scores.dims()[0] / mask.dims()[0];
    softmax(scores * scale + mask.clone().repeat_dim(0, repeats), 1)
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::Distribution;

    type Ad = Autodiff<Flex>;

    fn random<B: Backend, const D: usize>(shape: [usize; D], scale: f64) -> Tensor<B, D> {
        Tensor::random(
            shape,
            Distribution::Uniform(-scale, scale),
            &Default::default(),
        )
    }

    fn assert_close<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>, tol: f32) {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max);
        assert!(worst < tol, "worst difference {worst}");
    }

    /// Runs `f` fused and composed on the same tracked inputs, with a random weighting of the
    /// output as the loss; compares the outputs and every input's gradient.
    fn check_against_composed(
        inputs: Vec<Tensor<Flex, 2>>,
        f: impl Fn(&[Tensor<Ad, 2>], bool) -> Tensor<Ad, 2>,
    ) {
        check_against_composed_within(inputs, 1e-5, f)
    }

    fn check_against_composed_within(
        inputs: Vec<Tensor<Flex, 2>>,
        tol: f32,
        f: impl Fn(&[Tensor<Ad, 2>], bool) -> Tensor<Ad, 2>,
    ) {
        let run = |fused: bool| {
            let xs: Vec<Tensor<Ad, 2>> = inputs
                .iter()
                .map(|x| Tensor::from_inner(x.clone()).require_grad())
                .collect();
            let y = f(&xs, fused);
            let weights = Tensor::<Flex, 2>::random(
                y.dims(),
                Distribution::Uniform(-1.0, 1.0),
                &Default::default(),
            );
            (y, xs, weights)
        };
        let (y_fused, xs_fused, weights) = run(true);
        let (y_composed, xs_composed, _) = run(false);
        let g_fused = (y_fused.clone() * Tensor::from_inner(weights.clone()))
            .sum()
            .backward();
        let g_composed = (y_composed.clone() * Tensor::from_inner(weights))
            .sum()
            .backward();
        assert_close(y_fused.inner(), y_composed.inner(), tol);
        for (a, b) in xs_fused.iter().zip(&xs_composed) {
            assert_close(
                a.grad(&g_fused).expect("fused gradient"),
                b.grad(&g_composed).expect("composed gradient"),
                tol,
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_bf16_matmul_matches_the_composed_ops_in_values_and_gradients() {
        if !amx::available() {
            eprintln!(
                "no bf16 matrix unit (AMX or AVX512_BF16) on this machine: the packed kernels are not exercised"
            );
            return;
        }
        // Both operands tracked, a transposed view as the weight (the output head's case), and
        // results within a bf16 unit or so: the rounding is the same, the summation order not.
        // (300, 8, 70) and (300, 96, 8): a thin side (LoRA's rank), whose weight gradient
        // skips the tiles.
        for (m, k, n) in [
            (1, 3, 2),
            (40, 576, 70),
            (256, 64, 1000),
            (300, 8, 70),
            (300, 96, 8),
        ] {
            check_against_composed_within(
                vec![random([m, k], 1.0), random([k, n], 1.0)],
                1e-2,
                |xs, fused| {
                    if fused {
                        matmul_bf16(xs[0].clone(), xs[1].clone())
                    } else {
                        matmul_bf16_composed(xs[0].clone(), xs[1].clone())
                    }
                },
            );
            check_against_composed_within(
                vec![random([m, k], 1.0), random([n, k], 1.0)],
                1e-2,
                |xs, fused| {
                    let w = xs[1].clone().transpose();
                    if fused {
                        matmul_bf16(xs[0].clone(), w)
                    } else {
                        matmul_bf16_composed(xs[0].clone(), w)
                    }
                },
            );
        }
        // A frozen weight is packed once and reused: the same result as when it trains, and a
        // weight changed afterwards (here in place, as flex does for a buffer it holds alone)
        // is not served from the stale packing.
        let x = random::<Flex, 2>([8, 64], 1.0);
        let w = random::<Flex, 2>([64, 40], 1.0);
        let tracked = matmul_bf16(
            Tensor::<Ad, 2>::from_inner(x.clone()),
            Tensor::from_inner(w.clone()).require_grad(),
        )
        .inner();
        for _ in 0..2 {
            let frozen = matmul_bf16(
                Tensor::<Ad, 2>::from_inner(x.clone()),
                Tensor::from_inner(w.clone()),
            )
            .inner();
            assert_close(frozen, tracked.clone(), 1e-7);
            assert_close(matmul_bf16(x.clone(), w.clone()), tracked.clone(), 1e-7);
        }
        let changed = w + 1.0;
        assert_close(
            matmul_bf16(x.clone(), changed.clone()),
            matmul_bf16_composed(x.clone(), changed),
            1e-2,
        );
        // Rounding really happens: 1 + 2⁻¹⁰ is 1 in bf16.
        let x = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0 + 2f32.powi(-10)], [1, 1]),
            &Default::default(),
        );
        assert_eq!(
            matmul_bf16(x.clone(), x)
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            vec![1.0]
        );
    }

    #[test]
    fn f32_product_with_a_host_weight_matches_burns_matmul() {
        // QLoRA's two products: x · Wᵀ forward and dy · W backward, W `[out, in]` on the host;
        // one below gemm's parallel threshold and one above it.
        for (n, out_features, in_features) in [(37, 70, 96), (300, 200, 160)] {
            let w = random::<Flex, 2>([out_features, in_features], 1.0);
            let values = || w.clone().into_data().to_vec::<f32>().unwrap();
            for (x, transposed, dense) in [
                (
                    random::<Flex, 2>([n, in_features], 1.0),
                    true,
                    w.clone().transpose(),
                ),
                (random::<Flex, 2>([n, out_features], 1.0), false, w.clone()),
            ] {
                let y = matmul_host_weight(
                    x.clone().into_primitive().tensor(),
                    [out_features, in_features],
                    transposed,
                    values,
                )
                .unwrap_or_else(|_| panic!("flex f32 input (transposed = {transposed})"));
                let y = Tensor::<Flex, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y));
                assert_close(y, x.matmul(dense), 1e-5);
            }
            // A strided (transposed) input is read in place too.
            let xt = random::<Flex, 2>([in_features, n], 1.0).transpose();
            let y = matmul_host_weight(
                xt.clone().into_primitive().tensor(),
                [out_features, in_features],
                true,
                values,
            )
            .unwrap_or_else(|_| panic!("a transposed view is strided"));
            assert_close(
                Tensor::<Flex, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y)),
                xt.matmul(w.clone().transpose()),
                1e-5,
            );
        }
        // An input that does not chain with the weight is handed back, the weight never made.
        let x = random::<Flex, 2>([5, 7], 1.0).into_primitive().tensor();
        assert!(matmul_host_weight(x, [6, 8], true, || unreachable!("not asked for")).is_err());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn amx_product_with_a_host_weight_matches_the_composed_ops() {
        if !amx::available() {
            eprintln!(
                "no bf16 matrix unit (AMX or AVX512_BF16) on this machine: the packed kernels are not exercised"
            );
            return;
        }
        // QLoRA's two products: x · Wᵀ forward and dy · W backward, W `[out, in]` on the host.
        let (n, out_features, in_features) = (37, 70, 96);
        let w = random::<Flex, 2>([out_features, in_features], 1.0);
        let values = || w.clone().into_data().to_vec::<f32>().unwrap();
        for (x, transposed, dense) in [
            (
                random::<Flex, 2>([n, in_features], 1.0),
                true,
                w.clone().transpose(),
            ),
            (random::<Flex, 2>([n, out_features], 1.0), false, w.clone()),
        ] {
            let y = matmul_bf16_host_weight(
                x.clone().into_primitive().tensor(),
                [out_features, in_features],
                transposed,
                values,
            )
            .unwrap_or_else(|_| panic!("AMX takes a flex f32 input (transposed = {transposed})"));
            let y = Tensor::<Flex, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y));
            assert_close(y, matmul_bf16_composed(x, dense), 1e-2);
        }
        // An input that does not chain with the weight is handed back, the weight never made.
        let x = random::<Flex, 2>([n, out_features], 1.0)
            .into_primitive()
            .tensor();
        assert!(
            matmul_bf16_host_weight(x, [out_features, in_features], true, || unreachable!(
                "not asked for"
            ))
            .is_err()
        );
        // Rounding really happens: 1 + 2⁻¹⁰ is 1 in bf16.
        let one = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![1.0 + 2f32.powi(-10)], [1, 1]),
            &Default::default(),
        );
        let y = matmul_bf16_host_weight(one.into_primitive().tensor(), [1, 1], false, || {
            vec![1.0 + 2f32.powi(-10)]
        })
        .ok()
        .unwrap();
        assert_eq!(
            Tensor::<Flex, 2>::from_primitive(burn::tensor::TensorPrimitive::Float(y))
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
            vec![1.0]
        );
    }

    #[test]
    fn fused_rms_norm_matches_the_composed_ops_in_values_and_gradients() {
        for (n, d) in [(1, 8), (7, 64), (33, 576)] {
            let x = random::<Flex, 2>([n, d], 3.0);
            let w = random::<Flex, 2>([1, d], 1.5);
            check_against_composed(vec![x, w], |xs, fused| {
                let w = xs[1].clone().reshape([d]);
                if fused {
                    rms_norm(xs[0].clone(), &w, 1e-5)
                } else {
                    rms_norm_composed(xs[0].clone(), &w, 1e-5)
                }
            });
        }
        // A frozen weight (LoRA's case) and the plain backend (evaluation).
        let x = random::<Flex, 2>([5, 16], 2.0);
        let w = random::<Flex, 1>([16], 1.0);
        assert_close(
            rms_norm(x.clone(), &w, 1e-6),
            rms_norm_composed(x.clone(), &w, 1e-6),
            1e-6,
        );
        let xa = Tensor::<Ad, 2>::from_inner(x).require_grad();
        let grads = rms_norm(xa.clone(), &Tensor::from_inner(w), 1e-6)
            .sum()
            .backward();
        assert!(xa.grad(&grads).is_some());
    }

    #[test]
    fn fused_silu_mul_matches_the_composed_ops_in_values_and_gradients() {
        for (n, f) in [(1, 3), (9, 1536), (64, 100)] {
            check_against_composed(
                vec![random([n, f], 8.0), random([n, f], 2.0)],
                |xs, fused| {
                    if fused {
                        silu_mul(xs[0].clone(), xs[1].clone())
                    } else {
                        silu_mul_composed(xs[0].clone(), xs[1].clone())
                    }
                },
            );
        }
        let (g, u) = (
            random::<Flex, 2>([4, 40], 6.0),
            random::<Flex, 2>([4, 40], 1.0),
        );
        assert_close(
            silu_mul(g.clone(), u.clone()),
            silu_mul_composed(g, u),
            1e-6,
        );
    }

    #[test]
    fn fused_masked_softmax_matches_the_composed_ops_in_values_and_gradients() {
        // A causal mask with the model's -1e9, one row per score row and cycled over heads.
        let causal = |t: usize| {
            let v: Vec<f32> = (0..t * t)
                .map(|k| if k % t <= k / t { 0.0 } else { -1e9 })
                .collect();
            Tensor::<Flex, 2>::from_data(TensorData::new(v, [t, t]), &Default::default())
        };
        for (heads, t) in [(1, 1), (3, 17), (9, 64)] {
            let mask = causal(t);
            for mask in [mask.clone(), mask.repeat_dim(0, heads)] {
                check_against_composed(vec![random([heads * t, t], 6.0)], |xs, fused| {
                    let mask = Tensor::<Ad, 2>::from_inner(mask.clone());
                    if fused {
                        masked_softmax(xs[0].clone(), &mask, 0.125)
                    } else {
                        masked_softmax_composed(xs[0].clone(), &mask, 0.125)
                    }
                });
            }
        }
        let (s, mask) = (random::<Flex, 2>([12, 6], 4.0), causal(6));
        assert_close(
            masked_softmax(s.clone(), &mask, 0.5),
            masked_softmax_composed(s, &mask, 0.5),
            1e-6,
        );
    }

    #[test]
    fn fused_attention_matches_the_composed_ops_in_values_and_gradients() {
        // (batch, t, heads, kv_heads, head_dim): grouped-query, multi-head, one token.
        for (batch, t, heads, kv_heads, hd) in [
            (2, 5, 6, 2, 4),
            (1, 9, 3, 3, 8),
            (3, 1, 2, 1, 4),
            (2, 33, 9, 3, 16),
            (2, 150, 4, 2, 8),
        ] {
            let shape = AttentionShape {
                batch,
                t,
                heads,
                kv_heads,
                head_dim: hd,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            // A causal mask, and for the first batch row a split into two packed segments.
            let mut rows = Vec::new();
            for b in 0..batch {
                for _ in 0..heads {
                    for i in 0..t {
                        for j in 0..t {
                            let same_segment = b > 0 || (i < t / 2) == (j < t / 2);
                            rows.push(if j <= i && same_segment { 0.0 } else { -1e9 });
                        }
                    }
                }
            }
            let mask = Tensor::<Flex, 2>::from_data(
                TensorData::new(rows, [batch * heads * t, t]),
                &Default::default(),
            );
            let inputs = vec![
                random([batch * t, heads * hd], 2.0),
                random([batch * t, kv_heads * hd], 2.0),
                random([batch * t, kv_heads * hd], 2.0),
            ];
            check_against_composed(inputs.clone(), |xs, fused| {
                let mask = Tensor::<Ad, 2>::from_inner(mask.clone());
                let (q, k, v) = (xs[0].clone(), xs[1].clone(), xs[2].clone());
                if fused {
                    attention(q, k, v, &mask, shape)
                } else {
                    attention_composed(q, k, v, &mask, shape)
                }
            });
            let [q, k, v] = [0, 1, 2].map(|i| inputs[i].clone());
            assert_close(
                attention(q.clone(), k.clone(), v.clone(), &mask, shape),
                attention_composed(q, k, v, &mask, shape),
                1e-5,
            );
        }
    }

    #[test]
    fn fused_rope_matches_the_composed_ops_in_values_and_gradients() {
        for (n, heads, hd) in [(1, 1, 2), (7, 3, 8), (20, 9, 64)] {
            let angles: Vec<f32> = (0..n * hd)
                .map(|i| (i / hd) as f32 * 0.37 + (i % hd) as f32 * 0.11)
                .collect();
            let table = |f: fn(f32) -> f32| {
                Tensor::<Flex, 2>::from_data(
                    TensorData::new(angles.iter().map(|a| f(*a)).collect::<Vec<_>>(), [n, hd]),
                    &Default::default(),
                )
            };
            let (cos, sin) = (table(f32::cos), table(f32::sin));
            check_against_composed(vec![random([n, heads * hd], 2.0)], |xs, fused| {
                let (c, s) = (
                    Tensor::<Ad, 2>::from_inner(cos.clone()),
                    Tensor::<Ad, 2>::from_inner(sin.clone()),
                );
                if fused {
                    rope(xs[0].clone(), &c, &s)
                } else {
                    rope_composed(xs[0].clone(), &c, &s)
                }
            });
            let y = random::<Flex, 2>([n, heads * hd], 1.0);
            assert_close(
                rope(y.clone(), &cos, &sin),
                rope_composed(y, &cos, &sin),
                1e-6,
            );
        }
    }

    #[test]
    fn fused_cross_entropy_matches_the_composed_ops() {
        for (rows, vocab) in [(1, 5), (13, 300), (64, 4099)] {
            let logits = random::<Flex, 2>([rows, vocab], 8.0);
            let targets: Vec<usize> = (0..rows).map(|r| (r * 7919) % vocab).collect();
            for grad in [false, true] {
                let fused = cross_entropy(logits.clone(), &targets, 0.3, grad);
                let composed = cross_entropy_composed(logits.clone(), &targets, 0.3, grad);
                assert_close(fused.nll, composed.nll, 1e-5);
                assert_eq!(fused.correct.into_scalar(), composed.correct.into_scalar());
                match (fused.dlogits, composed.dlogits) {
                    (Some(a), Some(b)) => assert_close(a, b, 1e-6),
                    (None, None) => assert!(!grad),
                    _ => panic!("gradient asked for: {grad}"),
                }
            }
        }
        // A row whose maximum is its target counts as correct.
        let logits = Tensor::<Flex, 2>::from_data(
            TensorData::new(vec![0.0, 5.0, 1.0, 2.0, 0.0, 1.0], [2, 3]),
            &Default::default(),
        );
        assert_eq!(
            cross_entropy(logits, &[1, 2], 1.0, false)
                .correct
                .into_scalar(),
            1
        );
    }

    #[test]
    fn fused_adamw_matches_the_composed_ops() {
        for (n, t, wd) in [(1, 1, 0.0), (1000, 3, 0.01), (40_000, 10, 0.1)] {
            let step = AdamWStep::new(2e-3, 0.9, 0.999, 1e-8, wd, t);
            let [w, g, m] = [
                random::<Flex, 1>([n], 1.0),
                random([n], 0.1),
                random([n], 0.01),
            ];
            let v = random::<Flex, 1>([n], 1e-4).abs();
            let fused = adamw(w.clone(), g.clone(), m.clone(), v.clone(), step);
            let composed = adamw_composed(w.clone(), g.clone(), m.clone(), v.clone(), step);
            for (a, b) in fused.into_iter().zip(composed) {
                assert_close(a, b, 1e-6);
            }
            // A gradient scale (clipping) is the same update as on the scaled gradient, fused
            // or composed.
            let scaled = adamw(
                w.clone(),
                g.clone(),
                m.clone(),
                v.clone(),
                step.with_grad_scale(0.37),
            );
            let composed = adamw_composed(
                w.clone(),
                g.clone(),
                m.clone(),
                v.clone(),
                step.with_grad_scale(0.37),
            );
            let reference = adamw_composed(w, g * 0.37, m, v, step);
            for ((a, b), r) in scaled.into_iter().zip(composed).zip(reference) {
                assert_close(a, r.clone(), 1e-6);
                assert_close(b, r, 1e-6);
            }
        }
    }

    #[test]
    fn fused_sum_of_squares_matches_the_composed_ops() {
        // Empty, one value, under a chunk, and several chunks with a remainder.
        for n in [0, 1, 1000, 3 * (1 << 14) + 17] {
            let x = random::<Flex, 1>([n], 1.0);
            let (fused, composed) = (sum_squares(&x), sum_squares_composed(&x));
            assert!(
                (fused - composed).abs() <= 1e-5 * composed.max(1.0),
                "n = {n}: {fused} vs {composed}"
            );
        }
        let x = Tensor::<Flex, 1>::from_data(
            TensorData::new(vec![3.0f32, -4.0], [2]),
            &Default::default(),
        );
        assert_eq!(sum_squares(&x), 25.0);
    }

    #[test]
    fn a_non_contiguous_input_takes_the_fused_path_correctly() {
        let x = random::<Flex, 2>([16, 8], 2.0);
        let w = random::<Flex, 1>([16], 1.0);
        let xt = x.swap_dims(0, 1);
        assert_close(
            rms_norm(xt.clone(), &w, 1e-5),
            rms_norm_composed(xt, &w, 1e-5),
            1e-6,
        );
    }

    #[test]
    fn fused_matmul_matches_burns_matmul_in_values_and_gradients() {
        // Small (one thread) and past the parallel threshold; plain and transposed operands.
        for (m, k, n) in [(1, 1, 1), (37, 20, 70), (256, 130, 257)] {
            for (ta, tb) in [(false, false), (false, true), (true, false)] {
                let a = if ta {
                    random([k, m], 1.0)
                } else {
                    random([m, k], 1.0)
                };
                let b = if tb {
                    random([n, k], 1.0)
                } else {
                    random([k, n], 1.0)
                };
                check_against_composed_within(vec![a, b], 1e-5, |t, fused| {
                    let a = if ta {
                        t[0].clone().transpose()
                    } else {
                        t[0].clone()
                    };
                    let b = if tb {
                        t[1].clone().transpose()
                    } else {
                        t[1].clone()
                    };
                    if fused { matmul(a, b) } else { a.matmul(b) }
                });
            }
        }
        // A frozen weight (no gradient, so the input is not kept): the input's gradient still
        // matches; and without autodiff.
        let (x, w) = (
            random::<Flex, 2>([40, 64], 1.0),
            random::<Flex, 2>([64, 30], 1.0),
        );
        let grad_of_x = |fused: bool| {
            let xt = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
            let y = if fused {
                matmul(xt.clone(), Tensor::from_inner(w.clone()))
            } else {
                xt.clone().matmul(Tensor::from_inner(w.clone()))
            };
            let grads = (y.clone() * y).sum().backward();
            xt.grad(&grads).expect("x's gradient")
        };
        assert_close(grad_of_x(true), grad_of_x(false), 1e-5);
        assert_close(
            matmul(x.clone(), w.clone()),
            x.clone().matmul(w.clone()),
            1e-5,
        );
        // Summed into a unique accumulator in place, and into a copy of a shared one (which is
        // left as it was); a transposed left operand, as for the head's gradient.
        let acc = random::<Flex, 2>([40, 30], 1.0);
        let expected = acc.clone() + x.clone().matmul(w.clone());
        assert_close(
            matmul_accumulate(acc.clone() * 1.0, x.clone(), w.clone()),
            expected.clone(),
            1e-5,
        );
        let before = acc.clone().into_data();
        assert_close(
            matmul_accumulate(acc.clone(), x.clone(), w.clone()),
            expected,
            1e-5,
        );
        assert_eq!(acc.clone().into_data(), before);
        let xt = random::<Flex, 2>([64, 40], 1.0);
        assert_close(
            matmul_accumulate(acc.clone(), xt.clone().transpose(), w.clone()),
            acc + xt.transpose().matmul(w),
            1e-5,
        );
    }

    #[test]
    fn fused_lora_branch_matches_the_composed_ops_in_values_and_gradients() {
        // Rows and columns off the kernels' blocks (4 rows, 16 columns); ranks 1 to THIN_MAX.
        for (n, k, r, d) in [
            (1, 1, 1, 1),
            (37, 20, 8, 70),
            (300, 64, 16, 257),
            (64, 5, 3, 33),
            (9, 576, 8, 192),
        ] {
            let inputs = vec![
                random([n, k], 1.0),
                random([n, d], 1.0),
                random([k, r], 0.5),
                random([r, d], 0.5),
            ];
            // The base as given (its buffer shared, so written in a copy) and as a fresh
            // product (written in place). A's gradient chains two reductions (over d, then
            // over n) whose order differs from gemm's: a few f32 units on sums of 10⁴ terms.
            for fresh_base in [false, true] {
                check_against_composed_within(inputs.clone(), 1e-4, |t, fused| {
                    let (x, a, b) = (t[0].clone(), t[2].clone(), t[3].clone());
                    let base = if fresh_base {
                        t[1].clone() * 2.0
                    } else {
                        t[1].clone()
                    };
                    if fused {
                        lora_branch(x, base, a, b, 1.7)
                    } else {
                        lora_branch_composed(x, base, a, b, 1.7)
                    }
                });
            }
            // Without autodiff (evaluation), and leaving the caller's base untouched.
            let [x, base, a, b]: [Tensor<Flex, 2>; 4] = inputs.try_into().unwrap();
            let before = base.clone().into_data();
            let fused = lora_branch(x.clone(), base.clone(), a.clone(), b.clone(), 1.7);
            assert_close(
                fused,
                lora_branch_composed(x, base.clone(), a, b, 1.7),
                1e-5,
            );
            assert_eq!(base.into_data(), before);
        }
    }

    /// The fused kernels' bodies are compiled once per vector width and this process runs
    /// only the widest its CPU has; the narrower ones are checked by running the `fused_`
    /// tests again in a child process capped by `RUNNER_SIMD`.
    #[test]
    fn every_narrower_simd_level_passes_the_fused_kernel_tests() {
        if std::env::var_os("RUNNER_SIMD").is_some() {
            return;
        }
        let levels = [
            (host::SimdLevel::Baseline, "baseline"),
            (host::SimdLevel::Avx2, "avx2"),
        ];
        for (level, name) in levels
            .into_iter()
            .filter(|(level, _)| *level < host::simd_level())
        {
            let exe = std::env::current_exe().expect("the test binary's path");
            let out = std::process::Command::new(exe)
                .args(["kernels::tests::fused_", "--test-threads=2"])
                .env("RUNNER_SIMD", name)
                .output()
                .expect("the test binary runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "fused kernels at {level:?}:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // A filter that matched nothing would pass too.
            assert!(
                stdout.contains("test result: ok.") && !stdout.contains("ok. 0 passed"),
                "fused kernels at {level:?} ran: {stdout}"
            );
        }
    }
}
