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

#[cfg(feature = "flex")]
mod flex;
pub mod host;

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

/// RMSNorm of each row.
/// # Shapes
/// - x: `[n, d]`, weight: `[d]` -> `[n, d]`
pub fn rms_norm<B: Backend>(x: Tensor<B, 2>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::rms_norm(&x, weight, eps) {
        return out;
    }
    rms_norm_composed(x, weight, eps)
}

/// `silu(gate) · up`, SwiGLU's product.
/// # Shapes
/// - gate, up: `[n, f]` -> `[n, f]`
pub fn silu_mul<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::silu_mul(&gate, &up) {
        return out;
    }
    silu_mul_composed(gate, up)
}

/// Softmax over each row of `scale · scores + mask`; `mask` is a constant (no gradient) whose
/// rows repeat over the scores' rows (one `[t, width]` mask serves every head).
/// # Shapes
/// - scores: `[rows, width]`, mask: `[rows / k, width]` -> `[rows, width]`
pub fn masked_softmax<B: Backend>(scores: Tensor<B, 2>, mask: &Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    if let Some(out) = flex::masked_softmax(&scores, mask, scale) {
        return out;
    }
    masked_softmax_composed(scores, mask, scale)
}

pub fn rms_norm_composed<B: Backend>(x: Tensor<B, 2>, weight: &Tensor<B, 1>, eps: f64) -> Tensor<B, 2> {
    let inv_rms = (x.clone().square().mean_dim(1) + eps).sqrt().recip();
    x * inv_rms * weight.clone().unsqueeze::<2>()
}

pub fn silu_mul_composed<B: Backend>(gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(gate) * up
}

pub fn masked_softmax_composed<B: Backend>(scores: Tensor<B, 2>, mask: &Tensor<B, 2>, scale: f64) -> Tensor<B, 2> {
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
        Tensor::random(shape, Distribution::Uniform(-scale, scale), &Default::default())
    }

    fn assert_close<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>, tol: f32) {
        let (a, b) = (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
        assert_eq!(a.len(), b.len());
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0f32, f32::max);
        assert!(worst < tol, "worst difference {worst}");
    }

    /// Runs `f` fused and composed on the same tracked inputs, with a random weighting of the
    /// output as the loss; compares the outputs and every input's gradient.
    fn check_against_composed(inputs: Vec<Tensor<Flex, 2>>, f: impl Fn(&[Tensor<Ad, 2>], bool) -> Tensor<Ad, 2>) {
        let run = |fused: bool| {
            let xs: Vec<Tensor<Ad, 2>> = inputs.iter().map(|x| Tensor::from_inner(x.clone()).require_grad()).collect();
            let y = f(&xs, fused);
            let weights = Tensor::<Flex, 2>::random(y.dims(), Distribution::Uniform(-1.0, 1.0), &Default::default());
            (y, xs, weights)
        };
        let (y_fused, xs_fused, weights) = run(true);
        let (y_composed, xs_composed, _) = run(false);
        let g_fused = (y_fused.clone() * Tensor::from_inner(weights.clone())).sum().backward();
        let g_composed = (y_composed.clone() * Tensor::from_inner(weights)).sum().backward();
        assert_close(y_fused.inner(), y_composed.inner(), 1e-5);
        for (a, b) in xs_fused.iter().zip(&xs_composed) {
            assert_close(a.grad(&g_fused).expect("fused gradient"), b.grad(&g_composed).expect("composed gradient"), 1e-5);
        }
    }

    #[test]
    fn fused_rms_norm_matches_the_composed_ops_in_values_and_gradients() {
        for (n, d) in [(1, 8), (7, 64), (33, 576)] {
            let x = random::<Flex, 2>([n, d], 3.0);
            let w = random::<Flex, 2>([1, d], 1.5);
            check_against_composed(vec![x, w], |xs, fused| {
                let w = xs[1].clone().reshape([d]);
                if fused { rms_norm(xs[0].clone(), &w, 1e-5) } else { rms_norm_composed(xs[0].clone(), &w, 1e-5) }
            });
        }
        // A frozen weight (LoRA's case) and the plain backend (evaluation).
        let x = random::<Flex, 2>([5, 16], 2.0);
        let w = random::<Flex, 1>([16], 1.0);
        assert_close(rms_norm(x.clone(), &w, 1e-6), rms_norm_composed(x.clone(), &w, 1e-6), 1e-6);
        let xa = Tensor::<Ad, 2>::from_inner(x).require_grad();
        let grads = rms_norm(xa.clone(), &Tensor::from_inner(w), 1e-6).sum().backward();
        assert!(xa.grad(&grads).is_some());
    }

    #[test]
    fn fused_silu_mul_matches_the_composed_ops_in_values_and_gradients() {
        for (n, f) in [(1, 3), (9, 1536), (64, 100)] {
            check_against_composed(vec![random([n, f], 8.0), random([n, f], 2.0)], |xs, fused| {
                if fused { silu_mul(xs[0].clone(), xs[1].clone()) } else { silu_mul_composed(xs[0].clone(), xs[1].clone()) }
            });
        }
        let (g, u) = (random::<Flex, 2>([4, 40], 6.0), random::<Flex, 2>([4, 40], 1.0));
        assert_close(silu_mul(g.clone(), u.clone()), silu_mul_composed(g, u), 1e-6);
    }

    #[test]
    fn fused_masked_softmax_matches_the_composed_ops_in_values_and_gradients() {
        // A causal mask with the model's -1e9, one row per score row and cycled over heads.
        let causal = |t: usize| {
            let v: Vec<f32> = (0..t * t).map(|k| if k % t <= k / t { 0.0 } else { -1e9 }).collect();
            Tensor::<Flex, 2>::from_data(TensorData::new(v, [t, t]), &Default::default())
        };
        for (heads, t) in [(1, 1), (3, 17), (9, 64)] {
            let mask = causal(t);
            for mask in [mask.clone(), mask.repeat_dim(0, heads)] {
                check_against_composed(vec![random([heads * t, t], 6.0)], |xs, fused| {
                    let mask = Tensor::<Ad, 2>::from_inner(mask.clone());
                    if fused { masked_softmax(xs[0].clone(), &mask, 0.125) } else { masked_softmax_composed(xs[0].clone(), &mask, 0.125) }
                });
            }
        }
        let (s, mask) = (random::<Flex, 2>([12, 6], 4.0), causal(6));
        assert_close(masked_softmax(s.clone(), &mask, 0.5), masked_softmax_composed(s, &mask, 0.5), 1e-6);
    }

    #[test]
    fn a_non_contiguous_input_takes_the_fused_path_correctly() {
        let x = random::<Flex, 2>([16, 8], 2.0);
        let w = random::<Flex, 1>([16], 1.0);
        let xt = x.swap_dims(0, 1);
        assert_close(rms_norm(xt.clone(), &w, 1e-5), rms_norm_composed(xt, &w, 1e-5), 1e-6);
    }
}
