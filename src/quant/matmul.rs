//! `x · Wᵀ` for a frozen quantized weight `W` (`[out, in]`, as checkpoints store it), the
//! matmul QLoRA trains adapters through.
//!
//! The weight is dequantized for this one call and dropped afterwards, so at most one layer's
//! weight is ever dense. Under autodiff the backward pass dequantizes it again instead of
//! keeping it alive until then (a plain matmul would hold every layer's dense weight for the
//! whole step, which is the memory quantization is meant to save). Gradients flow to `x` only.

use std::any::{Any, TypeId};
use std::sync::Arc;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use super::QuantizedTensor;
use crate::kernels;
use crate::kernels::precision::{self, Precision};

/// # Shapes
/// - x: `[n, in]`, weight: `[out, in]` -> `[n, out]`
pub(crate) fn quantized_matmul<B: Backend>(
    x: Tensor<B, 2>,
    weight: &Arc<QuantizedTensor>,
) -> Tensor<B, 2> {
    #[cfg(feature = "flex")]
    let x = match on_autodiff::<B, burn::backend::Flex>(x, weight) {
        Ok(out) => return out,
        Err(x) => x,
    };
    #[cfg(feature = "wgpu")]
    let x = match on_autodiff::<B, burn::backend::Wgpu>(x, weight) {
        Ok(out) => return out,
        Err(x) => x,
    };
    #[cfg(feature = "cuda")]
    let x = match on_autodiff::<B, burn::backend::Cuda>(x, weight) {
        Ok(out) => return out,
        Err(x) => x,
    };
    // Not under autodiff (evaluation on an inner backend): nothing to keep for a backward pass.
    let device = x.device();
    Tensor::from_primitive(TensorPrimitive::Float(times_weight::<B>(
        x.into_primitive().tensor(),
        weight,
        true,
        &device,
    )))
}

/// `x · Wᵀ` (`transposed`) or `x · W` with the weight dequantized for this one product: on
/// flex straight from the dequantized values (gemm in f32; AMX tiles in bf16 when the CPU has
/// them); on CUDA on the device, from codes kept there; otherwise as a dense tensor
/// dequantized on the host. The last two go through [`precision::matmul_primitive`].
fn times_weight<I: Backend>(
    x: I::FloatTensorPrimitive,
    weight: &QuantizedTensor,
    transposed: bool,
    device: &I::Device,
) -> I::FloatTensorPrimitive {
    let [out_features, in_features] = [weight.shape[0], weight.shape[1]];
    let host_product = match precision::active() {
        Precision::Fp32 => {
            kernels::matmul_host_weight(x, [out_features, in_features], transposed, || {
                weight.dequantize()
            })
        }
        Precision::Bf16 => {
            kernels::matmul_bf16_host_weight(x, [out_features, in_features], transposed, || {
                weight.dequantize()
            })
        }
        Precision::Fp16 => Err(x),
    };
    let x = match host_product {
        Ok(y) => return y,
        Err(x) => x,
    };
    if dequantizes_on_device::<I>()
        && let Some(w) = weight.dequantize_on::<I>(device)
    {
        let w = w.into_primitive().tensor();
        return precision::matmul_primitive::<I>(
            x,
            if transposed { I::float_transpose(w) } else { w },
        );
    }
    let dense = if transposed {
        // A contiguous `[in, out]` matrix: a transposed view of `[out, in]` measured 35 MiB
        // more peak memory on a SmolLM2 step (4 × 256) for the same speed.
        I::float_from_data(
            TensorData::new(weight.dequantize_transposed(), [in_features, out_features]),
            device,
        )
    } else {
        I::float_from_data(
            TensorData::new(weight.dequantize(), [out_features, in_features]),
            device,
        )
    };
    precision::matmul_primitive::<I>(x, dense)
}

/// Whether `I` keeps the codes on its device and dequantizes there: CUDA, where the other
/// way would dequantize every weight on the host and copy it over PCIe twice a step. Not
/// flex (it reads the host's values in place) and not wgpu: on Mesa lavapipe, the only wgpu
/// device measured, expanding a 1536 × 576 NF4 weight took 150–180 ms on the "device"
/// against 18 ms on the host, upload included.
fn dequantizes_on_device<I: Backend>() -> bool {
    #[cfg(feature = "cuda")]
    if TypeId::of::<I>() == TypeId::of::<burn::backend::Cuda>() {
        return true;
    }
    false
}

/// Runs the custom autodiff op when `B` is `Autodiff<I>`; hands `x` back otherwise. The model
/// code is generic over any backend, so the concrete autodiff type is recognised at run time.
fn on_autodiff<B: Backend, I: Backend>(
    x: Tensor<B, 2>,
    weight: &Arc<QuantizedTensor>,
) -> Result<Tensor<B, 2>, Tensor<B, 2>> {
    if TypeId::of::<B>() != TypeId::of::<Autodiff<I>>() {
        return Err(x);
    }
    let x: Box<dyn Any> = Box::new(x);
    let x = *x
        .downcast::<Tensor<Autodiff<I>, 2>>()
        .expect("B is Autodiff<I>");
    let out: Box<dyn Any> = Box::new(autodiff_quantized_matmul::<I>(x, weight));
    Ok(*out.downcast::<Tensor<B, 2>>().expect("B is Autodiff<I>"))
}

#[derive(Debug)]
struct QuantizedMatmulBackward;

impl<I: Backend> Backward<I, 1> for QuantizedMatmulBackward {
    /// The weight, its device, and the precision the forward product ran in.
    type State = (Arc<QuantizedTensor>, I::Device, Precision);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let (weight, device, in_precision) = ops.state;
        let _precision = precision::enter(in_precision);
        // d(x·Wᵀ)/dx applied to the output gradient: grad · W.
        unary::<I, _>(ops.parents, ops.node, grads, |grad| {
            times_weight::<I>(grad, &weight, false, &device)
        });
    }
}

fn autodiff_quantized_matmul<I: Backend>(
    x: Tensor<Autodiff<I>, 2>,
    weight: &Arc<QuantizedTensor>,
) -> Tensor<Autodiff<I>, 2> {
    let x = x.into_primitive().tensor();
    let device = I::float_device(&x.primitive);
    let forward = |x: I::FloatTensorPrimitive| times_weight::<I>(x, weight, true, &device);
    let out = match QuantizedMatmulBackward
        .prepare::<NoCheckpointing>([x.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => prep.finish(
            (weight.clone(), device.clone(), precision::active()),
            forward(x.primitive),
        ),
        OpsKind::UnTracked(prep) => prep.finish(forward(x.primitive)),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::quant::QuantConfig;
    use burn::backend::Flex;
    use burn::tensor::Distribution;

    type Ad = Autodiff<Flex>;

    fn max_relative_difference(a: Tensor<Flex, 2>, b: Tensor<Flex, 2>) -> f32 {
        let (a, b) = (
            a.into_data().to_vec::<f32>().unwrap(),
            b.into_data().to_vec::<f32>().unwrap(),
        );
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max)
    }

    /// The quantized product against the same product on the dequantized weight through
    /// `precision::matmul` (values and the input's gradient under autodiff, and the plain
    /// backend's values), in `precision`.
    fn check_against_dense(precision: Precision, tol: f32) {
        let _precision = precision::enter(precision);
        let device = Default::default();
        let (out_features, in_features) = (48, 64);
        let values = Tensor::<Flex, 2>::random(
            [out_features, in_features],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        )
        .into_data()
        .to_vec::<f32>()
        .unwrap();
        let weight = Arc::new(
            QuantizedTensor::quantize(
                &values,
                &[out_features, in_features],
                QuantConfig {
                    block: 16,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let dense = Tensor::<Flex, 2>::from_data(
            TensorData::new(weight.dequantize(), [out_features, in_features]),
            &device,
        );
        let x =
            Tensor::<Flex, 2>::random([10, in_features], Distribution::Uniform(-2.0, 2.0), &device);
        let mix = Tensor::<Flex, 2>::random(
            [10, out_features],
            Distribution::Uniform(-1.0, 1.0),
            &device,
        );

        let xq = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
        let yq = quantized_matmul(xq.clone(), &weight);
        let gq = (yq.clone() * Tensor::from_inner(mix.clone()))
            .sum()
            .backward();
        let xd = Tensor::<Ad, 2>::from_inner(x.clone()).require_grad();
        let yd = precision::matmul(xd.clone(), Tensor::from_inner(dense.clone().transpose()));
        let gd = (yd.clone() * Tensor::from_inner(mix)).sum().backward();

        let worst = max_relative_difference(yq.inner(), yd.clone().inner());
        assert!(worst < tol, "{precision:?} values: {worst}");
        let worst = max_relative_difference(xq.grad(&gq).unwrap(), xd.grad(&gd).unwrap());
        assert!(worst < tol, "{precision:?} gradient: {worst}");
        let worst = max_relative_difference(quantized_matmul(x, &weight), yd.inner());
        assert!(worst < tol, "{precision:?} without autodiff: {worst}");
    }

    #[test]
    fn matches_the_dense_product_in_f32() {
        check_against_dense(Precision::Fp32, 1e-5);
    }

    #[test]
    fn matches_the_dense_product_in_bf16_and_f16() {
        // Within a bf16 unit or so: the rounding is the same (AMX or Burn's casts), the
        // summation order not.
        check_against_dense(Precision::Bf16, 1e-2);
        check_against_dense(Precision::Fp16, 2e-3);
    }
}
