//! Kernels of the GPU backends, written in CubeCL: one kernel where Burn's composed ops would
//! launch several and keep their intermediates. Each runs on wgpu and CUDA under Burn's
//! fusion as a custom operation in the fusion stream (the pattern burn-vision uses), so the
//! element-wise ops around it still fuse, and under autodiff with its own backward pass.
//! Tested against the composed ops on wgpu (Mesa lavapipe in CI), values and gradients.
//!
//! - RMSNorm: one cube per row sums the squares (a tree reduction in shared memory), writes
//!   `1/rms` for the backward pass and the normalised, weighted row. Its backward computes
//!   `dx` the same way; `dw`, a sum over rows, is left to Burn's fused reduction.
//! - SwiGLU's `silu(gate) · up`: one unit per element, forward and backward. Under autodiff
//!   it keeps only `gate` and `up` for the backward pass, where the composed ops keep the
//!   sigmoid and the SiLU as well.
//! - Rotary embedding (rotate-half layout): one unit per element, reading its partner in the
//!   other half of the head; the backward pass is the transposed rotation. It keeps no
//!   activation at all (the cos and sin tables are constants), where the composed ops build
//!   the rotated copy and keep the products' operands.
//! - Cross-entropy of a chunk of logits (the output head's loss, taken a chunk of rows at a
//!   time by `train::head_loss`): one cube per row finds the maximum, then the sum of
//!   exponentials and the argmax, then writes `scale · (softmax − onehot)`; the composed ops
//!   launch a kernel for each step and keep the exponentials.
//! - Attention's masked softmax, `softmax(scale · scores + mask)`: one cube per row; under
//!   autodiff it keeps only the probabilities, and the backward pass is one kernel too.
//!
//! The LoRA branch (`base + scale · (x·a)·b`) and the attention's products are matmuls, left
//! to CubeCL's matmul (tuned under `autotune`); the branch's scale and add are element-wise
//! ops that Burn's fusion compiles together.

use std::any::TypeId;
use std::marker::PhantomData;

use burn::backend::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime, FusionTensor};
use cubecl::{CubeCount, CubeDim, calculate_cube_count_elemwise};

use super::downcast;

/// The inner backend (f32 floats), under fusion, under autodiff.
type Cube<R, BT> = CubeBackend<R, f32, i32, BT>;
type Fused<R, BT> = Fusion<Cube<R, BT>>;
type Ad<R, BT> = Autodiff<Fused<R, BT>>;
type Handles<R, BT> =
    HandleContainer<<<Cube<R, BT> as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;
type Primitive<R, BT> = FusionTensor<<Cube<R, BT> as FusionBackend>::FusionRuntime>;

/// `$call` for each GPU runtime built in, with `R` and `BT` its runtime and bool element
/// type: the first `Some` it gives, else `None`.
macro_rules! on_gpu_runtimes {
    (|$r:ident, $bt:ident| $call:expr) => {{
        #[cfg(feature = "wgpu")]
        {
            type $r = cubecl::wgpu::WgpuRuntime;
            type $bt = u32;
            if let Some(out) = $call {
                return Some(out);
            }
        }
        #[cfg(feature = "cuda")]
        {
            type $r = cubecl::cuda::CudaRuntime;
            type $bt = u8;
            if let Some(out) = $call {
                return Some(out);
            }
        }
        None
    }};
}

/// RMSNorm through the CubeCL kernel on wgpu or CUDA with fusion, in f32; `None` on any other
/// backend or dtype.
/// # Shapes
/// - x: `[n, d]`, weight: `[d]` -> `[n, d]`
pub(crate) fn rms_norm<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 {
        return None;
    }
    on_gpu_runtimes!(|R, BT| rms_norm_on::<B, R, BT>(x, weight, eps))
}

fn rms_norm_on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B>() == TypeId::of::<Ad<R, BT>>() {
        let x: Tensor<Ad<R, BT>, 2> = downcast(x.clone()).ok()?;
        let w: Tensor<Ad<R, BT>, 1> = downcast(weight.clone()).ok()?;
        let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
        let [y, inv_rms] = rms_norm_forward::<R, BT>(x.primitive.clone(), w.primitive.clone(), eps);
        let out = match RmsNormBackward::<R, BT>(PhantomData)
            .prepare::<NoCheckpointing>([x.node.clone(), w.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((x.primitive, w.primitive, inv_rms), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        let out = Tensor::<Ad<R, BT>, 2>::from_primitive(TensorPrimitive::Float(out));
        return downcast(out).ok();
    }
    if TypeId::of::<B>() == TypeId::of::<Fused<R, BT>>() {
        let x: Tensor<Fused<R, BT>, 2> = downcast(x.clone()).ok()?;
        let w: Tensor<Fused<R, BT>, 1> = downcast(weight.clone()).ok()?;
        let [y, _] = rms_norm_forward::<R, BT>(
            x.into_primitive().tensor(),
            w.into_primitive().tensor(),
            eps,
        );
        let out = Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(y));
        return downcast(out).ok();
    }
    None
}

/// SwiGLU's `silu(gate) · up` through the CubeCL kernels on wgpu or CUDA with fusion, in f32;
/// `None` on any other backend or dtype.
/// # Shapes
/// - gate, up: `[n, f]` -> `[n, f]`
pub(crate) fn silu_mul<B: Backend>(gate: &Tensor<B, 2>, up: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if gate.dtype() != DType::F32 || up.dtype() != DType::F32 || gate.dims() != up.dims() {
        return None;
    }
    on_gpu_runtimes!(|R, BT| silu_mul_on::<B, R, BT>(gate, up))
}

fn silu_mul_on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    gate: &Tensor<B, 2>,
    up: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    if TypeId::of::<B>() == TypeId::of::<Ad<R, BT>>() {
        let g: Tensor<Ad<R, BT>, 2> = downcast(gate.clone()).ok()?;
        let u: Tensor<Ad<R, BT>, 2> = downcast(up.clone()).ok()?;
        let (g, u) = (g.into_primitive().tensor(), u.into_primitive().tensor());
        let shape = g.primitive.shape.clone();
        let [y] = register::<R, BT, 1>(
            Launch::SiluMul,
            vec![g.primitive.clone(), u.primitive.clone()],
            [shape],
        );
        let out = match SiluMulBackward::<R, BT>(PhantomData)
            .prepare::<NoCheckpointing>([g.node.clone(), u.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((g.primitive, u.primitive), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        let out = Tensor::<Ad<R, BT>, 2>::from_primitive(TensorPrimitive::Float(out));
        return downcast(out).ok();
    }
    if TypeId::of::<B>() == TypeId::of::<Fused<R, BT>>() {
        let g: Tensor<Fused<R, BT>, 2> = downcast(gate.clone()).ok()?;
        let u: Tensor<Fused<R, BT>, 2> = downcast(up.clone()).ok()?;
        let shape = Shape::new(g.dims());
        let [y] = register::<R, BT, 1>(
            Launch::SiluMul,
            vec![g.into_primitive().tensor(), u.into_primitive().tensor()],
            [shape],
        );
        let out = Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(y));
        return downcast(out).ok();
    }
    None
}

struct SiluMulBackward<R, BT>(Marker<R, BT>);

impl<R: CubeRuntime, BT: BoolElement> Backward<Fused<R, BT>, 2> for SiluMulBackward<R, BT> {
    /// `gate` and `up`: the sigmoid is recomputed, not kept.
    type State = (Primitive<R, BT>, Primitive<R, BT>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (gate, up) = ops.state;
        let dy = grads.consume::<Fused<R, BT>>(&ops.node);
        let shape = gate.shape.clone();
        let [dgate, dup] = register::<R, BT, 2>(
            Launch::SiluMulBackward,
            vec![gate, up, dy],
            [shape.clone(), shape],
        );
        let [pgate, pup] = ops.parents;
        if let Some(node) = pgate {
            grads.register::<Fused<R, BT>>(node.id, dgate);
        }
        if let Some(node) = pup {
            grads.register::<Fused<R, BT>>(node.id, dup);
        }
    }
}

/// Rotary embedding through the CubeCL kernel on wgpu or CUDA with fusion, in f32, when the
/// cos and sin tables need no gradient; `None` otherwise.
/// # Shapes
/// - y: `[n, heads * head_dim]`, cos, sin: `[n, head_dim]` -> `[n, heads * head_dim]`
pub(crate) fn rope<B: Backend>(
    y: &Tensor<B, 2>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    // Shapes are checked by `kernels::rope`.
    if [y.dtype(), cos.dtype(), sin.dtype()] != [DType::F32; 3] {
        return None;
    }
    on_gpu_runtimes!(|R, BT| rope_on::<B, R, BT>(y, cos, sin))
}

fn rope_on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    y: &Tensor<B, 2>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let head_dim = cos.dims()[1] as u32;
    let launch = Launch::Rope {
        head_dim,
        transposed: false,
    };
    if TypeId::of::<B>() == TypeId::of::<Ad<R, BT>>() {
        let y: Tensor<Ad<R, BT>, 2> = downcast(y.clone()).ok()?;
        let cos: Tensor<Ad<R, BT>, 2> = downcast(cos.clone()).ok()?;
        let sin: Tensor<Ad<R, BT>, 2> = downcast(sin.clone()).ok()?;
        let (y, cos, sin) = (
            y.into_primitive().tensor(),
            cos.into_primitive().tensor(),
            sin.into_primitive().tensor(),
        );
        if cos.is_tracked() || sin.is_tracked() {
            return None;
        }
        let shape = y.primitive.shape.clone();
        let [out] = register::<R, BT, 1>(
            launch,
            vec![y.primitive, cos.primitive.clone(), sin.primitive.clone()],
            [shape],
        );
        let out = match RopeBackward::<R, BT>(PhantomData)
            .prepare::<NoCheckpointing>([y.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((cos.primitive, sin.primitive, head_dim), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        let out = Tensor::<Ad<R, BT>, 2>::from_primitive(TensorPrimitive::Float(out));
        return downcast(out).ok();
    }
    if TypeId::of::<B>() == TypeId::of::<Fused<R, BT>>() {
        let shape = Shape::new(y.dims());
        let prim = |t: &Tensor<B, 2>| -> Option<Primitive<R, BT>> {
            let t: Tensor<Fused<R, BT>, 2> = downcast(t.clone()).ok()?;
            Some(t.into_primitive().tensor())
        };
        let [out] = register::<R, BT, 1>(launch, vec![prim(y)?, prim(cos)?, prim(sin)?], [shape]);
        let out = Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(out));
        return downcast(out).ok();
    }
    None
}

struct RopeBackward<R, BT>(Marker<R, BT>);

impl<R: CubeRuntime, BT: BoolElement> Backward<Fused<R, BT>, 1> for RopeBackward<R, BT> {
    /// The cos and sin tables and the head width.
    type State = (Primitive<R, BT>, Primitive<R, BT>, u32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin, head_dim) = ops.state;
        let dout = grads.consume::<Fused<R, BT>>(&ops.node);
        let [py] = ops.parents;
        if let Some(node) = py {
            let shape = dout.shape.clone();
            let launch = Launch::Rope {
                head_dim,
                transposed: true,
            };
            let [dy] = register::<R, BT, 1>(launch, vec![dout, cos, sin], [shape]);
            grads.register::<Fused<R, BT>>(node.id, dy);
        }
    }
}

/// Cross-entropy of a chunk of logits through the CubeCL kernel on wgpu or CUDA with fusion,
/// in f32 and without autodiff (the caller forms the gradient from `dlogits`); `None`
/// elsewhere. One pass per row for the maximum, one for the sum and the argmax, one for the
/// gradient, where the composed ops launch a kernel for each and keep the exponentials.
/// # Shapes
/// - logits: `[rows, vocab]`, targets: `rows`
pub(crate) fn cross_entropy<B: Backend>(
    logits: &Tensor<B, 2>,
    targets: &[usize],
    scale: f64,
    grad: bool,
) -> Option<super::CrossEntropy<B>> {
    // Ids travel as f32, exact below 2^24.
    if logits.dtype() != DType::F32 || logits.dims()[1] > 1 << 24 {
        return None;
    }
    on_gpu_runtimes!(|R, BT| cross_entropy_on::<B, R, BT>(logits, targets, scale, grad))
}

fn cross_entropy_on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    logits: &Tensor<B, 2>,
    targets: &[usize],
    scale: f64,
    grad: bool,
) -> Option<super::CrossEntropy<B>> {
    if TypeId::of::<B>() != TypeId::of::<Fused<R, BT>>() {
        return None;
    }
    let z: Tensor<Fused<R, BT>, 2> = downcast(logits.clone()).ok()?;
    let [n, vocab] = z.dims();
    let ids: Vec<f32> = targets.iter().map(|&t| t as f32).collect();
    let t = Tensor::<Fused<R, BT>, 1>::from_data(TensorData::new(ids, [n]), &z.device());
    let launch = Launch::CrossEntropy {
        scale: scale as f32,
        grad,
    };
    let inputs = vec![z.into_primitive().tensor(), t.into_primitive().tensor()];
    let per_row = || Shape::new([n]);
    let (nll, correct, dlogits) = if grad {
        let [nll, correct, d] = register::<R, BT, 3>(
            launch,
            inputs,
            [per_row(), per_row(), Shape::new([n, vocab])],
        );
        (nll, correct, Some(d))
    } else {
        let [nll, correct] = register::<R, BT, 2>(launch, inputs, [per_row(), per_row()]);
        (nll, correct, None)
    };
    let rows = |p| Tensor::<Fused<R, BT>, 1>::from_primitive(TensorPrimitive::Float(p));
    let dlogits = match dlogits {
        Some(d) => Some(
            downcast(Tensor::<Fused<R, BT>, 2>::from_primitive(
                TensorPrimitive::Float(d),
            ))
            .ok()?,
        ),
        None => None,
    };
    Some(super::CrossEntropy {
        nll: downcast(rows(nll).sum()).ok()?,
        correct: downcast(rows(correct).sum().int()).ok()?,
        dlogits,
    })
}

/// Softmax over each row of `scale · scores + mask` through the CubeCL kernels on wgpu or
/// CUDA with fusion, in f32, when the mask needs no gradient; `None` otherwise. Under
/// autodiff it keeps only the probabilities for the backward pass.
/// # Shapes
/// - scores: `[rows, width]`, mask: `[rows / k, width]` -> `[rows, width]`
pub(crate) fn masked_softmax<B: Backend>(
    scores: &Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    scale: f64,
) -> Option<Tensor<B, 2>> {
    let ([rows, width], [mask_rows, mask_width]) = (scores.dims(), mask.dims());
    let f32s = scores.dtype() == DType::F32 && mask.dtype() == DType::F32;
    if !f32s || mask_width != width || mask_rows == 0 || rows % mask_rows != 0 {
        return None;
    }
    on_gpu_runtimes!(|R, BT| masked_softmax_on::<B, R, BT>(scores, mask, scale))
}

fn masked_softmax_on<B: Backend, R: CubeRuntime, BT: BoolElement>(
    scores: &Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    scale: f64,
) -> Option<Tensor<B, 2>> {
    let scale = scale as f32;
    let shape = Shape::new(scores.dims());
    if TypeId::of::<B>() == TypeId::of::<Ad<R, BT>>() {
        let s: Tensor<Ad<R, BT>, 2> = downcast(scores.clone()).ok()?;
        let m: Tensor<Ad<R, BT>, 2> = downcast(mask.clone()).ok()?;
        let (s, m) = (s.into_primitive().tensor(), m.into_primitive().tensor());
        if m.is_tracked() {
            return None;
        }
        let [p] = register::<R, BT, 1>(
            Launch::MaskedSoftmax { scale },
            vec![s.primitive, m.primitive],
            [shape],
        );
        let out = match MaskedSoftmaxBackward::<R, BT>(PhantomData)
            .prepare::<NoCheckpointing>([s.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((p.clone(), scale), p),
            OpsKind::UnTracked(prep) => prep.finish(p),
        };
        let out = Tensor::<Ad<R, BT>, 2>::from_primitive(TensorPrimitive::Float(out));
        return downcast(out).ok();
    }
    if TypeId::of::<B>() == TypeId::of::<Fused<R, BT>>() {
        let prim = |t: &Tensor<B, 2>| -> Option<Primitive<R, BT>> {
            let t: Tensor<Fused<R, BT>, 2> = downcast(t.clone()).ok()?;
            Some(t.into_primitive().tensor())
        };
        let launch = Launch::MaskedSoftmax { scale };
        let [p] = register::<R, BT, 1>(launch, vec![prim(scores)?, prim(mask)?], [shape]);
        let out = Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(p));
        return downcast(out).ok();
    }
    None
}

struct MaskedSoftmaxBackward<R, BT>(Marker<R, BT>);

impl<R: CubeRuntime, BT: BoolElement> Backward<Fused<R, BT>, 1> for MaskedSoftmaxBackward<R, BT> {
    /// The probabilities and the scale.
    type State = (Primitive<R, BT>, f32);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (probs, scale) = ops.state;
        let dprobs = grads.consume::<Fused<R, BT>>(&ops.node);
        let [ps] = ops.parents;
        if let Some(node) = ps {
            let shape = probs.shape.clone();
            let launch = Launch::MaskedSoftmaxBackward { scale };
            let [ds] = register::<R, BT, 1>(launch, vec![probs, dprobs], [shape]);
            grads.register::<Fused<R, BT>>(node.id, ds);
        }
    }
}

/// `[y, 1/rms]` for `x` `[n, d]` and the weight `[d]`, registered in the fusion stream.
fn rms_norm_forward<R: CubeRuntime, BT: BoolElement>(
    x: Primitive<R, BT>,
    w: Primitive<R, BT>,
    eps: f64,
) -> [Primitive<R, BT>; 2] {
    let [n, d] = [x.shape[0], x.shape[1]];
    register::<R, BT, 2>(
        Launch::RmsNorm { eps: eps as f32 },
        vec![x, w],
        [Shape::new([n, d]), Shape::new([n])],
    )
}

/// `fn() -> T` keeps the markers `Send + Sync` whatever the runtime types are.
type Marker<R, BT> = PhantomData<fn() -> (R, BT)>;

/// `Debug` by name for the backward passes' marker types (derived, it would ask the runtime
/// types for `Debug` too).
macro_rules! debug_by_name {
    ($($name:ident),*) => {$(
        impl<R, BT> std::fmt::Debug for $name<R, BT> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(stringify!($name))
            }
        }
    )*};
}

debug_by_name!(
    SiluMulBackward,
    RopeBackward,
    RmsNormBackward,
    MaskedSoftmaxBackward
);

struct RmsNormBackward<R, BT>(Marker<R, BT>);

impl<R: CubeRuntime, BT: BoolElement> Backward<Fused<R, BT>, 2> for RmsNormBackward<R, BT> {
    /// `x`, the weight and each row's `1/rms`.
    type State = (Primitive<R, BT>, Primitive<R, BT>, Primitive<R, BT>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, inv_rms) = ops.state;
        let dy = grads.consume::<Fused<R, BT>>(&ops.node);
        let [px, pw] = ops.parents;
        if let Some(node) = pw {
            // dw = Σ_rows dy · x / rms.
            let t2 = |p: Primitive<R, BT>| {
                Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(p))
            };
            let inv =
                Tensor::<Fused<R, BT>, 1>::from_primitive(TensorPrimitive::Float(inv_rms.clone()));
            let dw = (t2(dy.clone()) * t2(x.clone()) * inv.unsqueeze_dim::<2>(1))
                .sum_dim(0)
                .flatten::<1>(0, 1);
            grads.register::<Fused<R, BT>>(node.id, dw.into_primitive().tensor());
        }
        if let Some(node) = px {
            let shape = x.shape.clone();
            let [dx] =
                register::<R, BT, 1>(Launch::RmsNormBackward, vec![x, w, inv_rms, dy], [shape]);
            grads.register::<Fused<R, BT>>(node.id, dx);
        }
    }
}

/// The most rows one launch takes: cubes are counted in one dimension.
const MAX_ROWS: usize = 65_535;

/// One cube per row of width `d`, of a power of two from 32 to 256 units (about the row's
/// width), over `n` rows in launches of at most [`MAX_ROWS`]: each launch's first row and
/// cube count, the cube size, and the units for the kernel's shared memory.
fn per_row(n: usize, d: usize) -> (Vec<(u32, CubeCount)>, CubeDim, u32) {
    let units = d.next_power_of_two().clamp(32, 256) as u32;
    let blocks = (0..n)
        .step_by(MAX_ROWS)
        .map(|first| {
            let rows = (n - first).min(MAX_ROWS) as u32;
            (first as u32, CubeCount::Static(rows, 1, 1))
        })
        .collect();
    (blocks, CubeDim::new_1d(units), units)
}

/// A kernel launch on the inner backend's tensors: what one custom operation runs.
#[derive(Clone, Copy, Debug)]
enum Launch {
    /// `[x, w]` -> `[y, 1/rms]`.
    RmsNorm { eps: f32 },
    /// `[x, w, 1/rms, dy]` -> `[dx]`.
    RmsNormBackward,
    /// `[gate, up]` -> `[silu(gate) · up]`.
    SiluMul,
    /// `[gate, up, dy]` -> `[dgate, dup]`.
    SiluMulBackward,
    /// `[y, cos, sin]` -> `[rotated y]`; with `transposed`, the backward pass's rotation.
    Rope { head_dim: u32, transposed: bool },
    /// `[logits, targets]` -> `[nll per row, 1 or 0 per row]`, and with `grad` `[dlogits]`.
    CrossEntropy { scale: f32, grad: bool },
    /// `[scores, mask]` -> `[probs]`.
    MaskedSoftmax { scale: f32 },
    /// `[probs, dprobs]` -> `[dscores]`.
    MaskedSoftmaxBackward { scale: f32 },
}

impl Launch {
    fn name(self) -> &'static str {
        match self {
            Launch::RmsNorm { .. } => "runner_rms_norm",
            Launch::RmsNormBackward => "runner_rms_norm_backward",
            Launch::SiluMul => "runner_silu_mul",
            Launch::SiluMulBackward => "runner_silu_mul_backward",
            Launch::Rope { .. } => "runner_rope",
            Launch::CrossEntropy { .. } => "runner_cross_entropy",
            Launch::MaskedSoftmax { .. } => "runner_masked_softmax",
            Launch::MaskedSoftmaxBackward { .. } => "runner_masked_softmax_backward",
        }
    }

    fn run<R: CubeRuntime>(self, inputs: Vec<CubeTensor<R>>) -> Vec<CubeTensor<R>> {
        let mut inputs = inputs.into_iter().map(into_contiguous);
        let mut next = || inputs.next().expect("the operation declared this input");
        match self {
            Launch::RmsNorm { eps } => {
                let (x, w) = (next(), next());
                let (y, inv) = launch_rms_norm(x, w, eps);
                vec![y, inv]
            }
            Launch::RmsNormBackward => {
                let (x, w, inv, dy) = (next(), next(), next(), next());
                vec![launch_rms_norm_backward(x, w, inv, dy)]
            }
            Launch::SiluMul => {
                let (gate, up) = (next(), next());
                vec![launch_silu_mul(gate, up)]
            }
            Launch::SiluMulBackward => {
                let (gate, up, dy) = (next(), next(), next());
                let (dgate, dup) = launch_silu_mul_backward(gate, up, dy);
                vec![dgate, dup]
            }
            Launch::Rope {
                head_dim,
                transposed,
            } => {
                let (y, cos, sin) = (next(), next(), next());
                vec![launch_rope(y, cos, sin, head_dim, transposed)]
            }
            Launch::CrossEntropy { scale, grad } => {
                let (logits, targets) = (next(), next());
                launch_cross_entropy(logits, targets, scale, grad)
            }
            Launch::MaskedSoftmax { scale } => {
                let (scores, mask) = (next(), next());
                vec![launch_masked_softmax(scores, mask, scale, false)]
            }
            Launch::MaskedSoftmaxBackward { scale } => {
                let (probs, dprobs) = (next(), next());
                vec![launch_masked_softmax(probs, dprobs, scale, true)]
            }
        }
    }
}

/// Registers `launch` in the fusion stream over `inputs`, with f32 outputs of these shapes.
/// It runs when the stream reaches it; the ops before and after it fuse as usual.
fn register<R: CubeRuntime, BT: BoolElement, const O: usize>(
    launch: Launch,
    inputs: Vec<Primitive<R, BT>>,
    shapes: [Shape; O],
) -> [Primitive<R, BT>; O] {
    let client = inputs[0].client.clone();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let outputs = shapes.map(|s| TensorIr::uninit(client.create_empty_handle(), s, DType::F32));
    let inputs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(launch.name(), &inputs, &outputs);
    let op = CustomOp::<R, BT> {
        desc: desc.clone(),
        launch,
        _backend: PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .try_into()
        .unwrap_or_else(|_| unreachable!("{O} outputs were declared"))
}

struct CustomOp<R, BT> {
    desc: CustomOpIr,
    launch: Launch,
    _backend: Marker<R, BT>,
}

// Debug by hand: derived, it would ask the runtime types for Debug too.
impl<R, BT> std::fmt::Debug for CustomOp<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomOp")
            .field("desc", &self.desc)
            .field("launch", &self.launch)
            .finish()
    }
}

impl<R: CubeRuntime, BT: BoolElement> Operation<<Cube<R, BT> as FusionBackend>::FusionRuntime>
    for CustomOp<R, BT>
{
    fn execute(&self, handles: &mut Handles<R, BT>) {
        let inputs = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<Cube<R, BT>>(t))
            .collect();
        let outputs = self.launch.run::<R>(inputs);
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<Cube<R, BT>>(&ir.id, t);
        }
    }
}

fn launch_rms_norm<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    eps: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let [n, d] = [x.meta.shape()[0], x.meta.shape()[1]];
    let (client, device) = (x.client.clone(), x.device.clone());
    let y = empty_device::<R, f32>(client.clone(), device.clone(), Shape::new([n, d]));
    let inv = empty_device::<R, f32>(client.clone(), device, Shape::new([n]));
    let (blocks, dim, units) = per_row(n, d);
    for (first_row, count) in blocks {
        kernels::rms_norm_forward_kernel::launch::<R>(
            &client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            w.clone().into_tensor_arg(),
            y.clone().into_tensor_arg(),
            inv.clone().into_tensor_arg(),
            first_row,
            eps,
            1.0 / d as f32,
            units,
            DType::F32.into(),
        );
    }
    (y, inv)
}

fn launch_rms_norm_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    inv: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> CubeTensor<R> {
    let [n, d] = [x.meta.shape()[0], x.meta.shape()[1]];
    let (client, device) = (x.client.clone(), x.device.clone());
    let dx = empty_device::<R, f32>(client.clone(), device, Shape::new([n, d]));
    let (blocks, dim, units) = per_row(n, d);
    for (first_row, count) in blocks {
        kernels::rms_norm_backward_kernel::launch::<R>(
            &client,
            count,
            dim,
            x.clone().into_tensor_arg(),
            w.clone().into_tensor_arg(),
            inv.clone().into_tensor_arg(),
            dy.clone().into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            first_row,
            1.0 / d as f32,
            units,
            DType::F32.into(),
        );
    }
    dx
}

/// One unit per element.
fn per_element<R: CubeRuntime>(t: &CubeTensor<R>) -> (CubeCount, CubeDim) {
    let n = t.meta.shape().num_elements();
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

fn launch_silu_mul<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let (client, device) = (gate.client.clone(), gate.device.clone());
    let y = empty_device::<R, f32>(client.clone(), device, gate.meta.shape().clone());
    let (count, dim) = per_element(&gate);
    kernels::silu_mul_kernel::launch::<R>(
        &client,
        count,
        dim,
        gate.into_tensor_arg(),
        up.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        DType::F32.into(),
    );
    y
}

fn launch_silu_mul_backward<R: CubeRuntime>(
    gate: CubeTensor<R>,
    up: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (client, device) = (gate.client.clone(), gate.device.clone());
    let shape = gate.meta.shape().clone();
    let dgate = empty_device::<R, f32>(client.clone(), device.clone(), shape.clone());
    let dup = empty_device::<R, f32>(client.clone(), device, shape);
    let (count, dim) = per_element(&gate);
    kernels::silu_mul_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        gate.into_tensor_arg(),
        up.into_tensor_arg(),
        dy.into_tensor_arg(),
        dgate.clone().into_tensor_arg(),
        dup.clone().into_tensor_arg(),
        DType::F32.into(),
    );
    (dgate, dup)
}

fn launch_rope<R: CubeRuntime>(
    y: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    head_dim: u32,
    transposed: bool,
) -> CubeTensor<R> {
    let (client, device) = (y.client.clone(), y.device.clone());
    let out = empty_device::<R, f32>(client.clone(), device, y.meta.shape().clone());
    let (count, dim) = per_element(&y);
    kernels::rope_kernel::launch::<R>(
        &client,
        count,
        dim,
        y.into_tensor_arg(),
        cos.into_tensor_arg(),
        sin.into_tensor_arg(),
        out.clone().into_tensor_arg(),
        head_dim,
        transposed,
        DType::F32.into(),
    );
    out
}

/// `[nll, correct]` per row, and `[dlogits]` with `grad`.
fn launch_cross_entropy<R: CubeRuntime>(
    logits: CubeTensor<R>,
    targets: CubeTensor<R>,
    scale: f32,
    grad: bool,
) -> Vec<CubeTensor<R>> {
    let [n, vocab] = [logits.meta.shape()[0], logits.meta.shape()[1]];
    let (client, device) = (logits.client.clone(), logits.device.clone());
    let empty = |shape: Shape| empty_device::<R, f32>(client.clone(), device.clone(), shape);
    let (nll, correct) = (empty(Shape::new([n])), empty(Shape::new([n])));
    // Without `grad` the kernel writes no gradient; it still takes a tensor there.
    let dlogits = empty(Shape::new(if grad { [n, vocab] } else { [1, 1] }));
    let (blocks, dim, units) = per_row(n, vocab);
    for (first_row, count) in blocks {
        kernels::cross_entropy_kernel::launch::<R>(
            &client,
            count,
            dim,
            logits.clone().into_tensor_arg(),
            targets.clone().into_tensor_arg(),
            nll.clone().into_tensor_arg(),
            correct.clone().into_tensor_arg(),
            dlogits.clone().into_tensor_arg(),
            first_row,
            scale,
            units,
            grad,
            DType::F32.into(),
        );
    }
    if grad {
        vec![nll, correct, dlogits]
    } else {
        vec![nll, correct]
    }
}

/// The masked softmax (`[scores, mask]` -> probs) or its backward pass (`[probs, dprobs]`
/// -> dscores): one cube per row, the same arguments.
fn launch_masked_softmax<R: CubeRuntime>(
    a: CubeTensor<R>,
    b: CubeTensor<R>,
    scale: f32,
    backward: bool,
) -> CubeTensor<R> {
    let [n, width] = [a.meta.shape()[0], a.meta.shape()[1]];
    let (client, device) = (a.client.clone(), a.device.clone());
    let out = empty_device::<R, f32>(client.clone(), device, Shape::new([n, width]));
    let (blocks, dim, units) = per_row(n, width);
    let launch = if backward {
        kernels::masked_softmax_backward_kernel::launch::<R>
    } else {
        kernels::masked_softmax_kernel::launch::<R>
    };
    for (first_row, count) in blocks {
        launch(
            &client,
            count,
            dim,
            a.clone().into_tensor_arg(),
            b.clone().into_tensor_arg(),
            out.clone().into_tensor_arg(),
            first_row,
            scale,
            units,
            DType::F32.into(),
        );
    }
    out
}

/// The kernels, apart: CubeCL's prelude names `Tensor` and `Float` too.
mod kernels {
    use cubecl::prelude::*;

    /// The sum (or with `max`, the maximum) over `units` units of each one's `partial`, in
    /// shared memory; every unit gets it.
    #[cube]
    fn cube_reduce<F: Float>(partial: F, #[comptime] units: u32, #[comptime] max: bool) -> F {
        let unit = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<F>::new(units as usize);
        shared[unit] = partial;
        sync_cube();
        // Runtime values (UNIT_POS_X, CUBE_DIM_X): CubeCL only mutates those.
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                if max {
                    shared[unit] = F::max(shared[unit], shared[unit + half]);
                } else {
                    shared[unit] = shared[unit] + shared[unit + half];
                }
            }
            sync_cube();
            half /= 2;
        }
        let out = shared[0];
        // Every unit has read the result before the memory can be written again.
        sync_cube();
        out
    }

    #[cube]
    fn cube_sum<F: Float>(partial: F, #[comptime] units: u32) -> F {
        cube_reduce::<F>(partial, units, false)
    }

    #[cube]
    fn cube_max<F: Float>(partial: F, #[comptime] units: u32) -> F {
        cube_reduce::<F>(partial, units, true)
    }

    /// One cube per row: `y = x / rms(x) · w` and `1/rms(x)`, `rms(x) = sqrt(mean(x²) + eps)`.
    #[cube(launch)]
    pub(super) fn rms_norm_forward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        y: &mut Tensor<F>,
        inv_rms: &mut Tensor<F>,
        first_row: u32,
        eps: f32,
        inv_d: f32,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (first_row + CUBE_POS_X) as usize;
        let unit = UNIT_POS_X as usize;
        let step = units as usize;
        let d = x.shape(1);
        let base = row * d;
        let mut partial = F::new(0.0);
        let mut c = UNIT_POS_X as usize;
        while c < d {
            let v = x[base + c];
            partial += v * v;
            c += step;
        }
        let total = cube_sum::<F>(partial, units);
        let inv = F::new(1.0) / F::sqrt(total * F::cast_from(inv_d) + F::cast_from(eps));
        if unit == 0 {
            inv_rms[row] = inv;
        }
        let mut c = UNIT_POS_X as usize;
        while c < d {
            y[base + c] = x[base + c] * inv * weight[c];
            c += step;
        }
    }

    /// One cube per row: `dx = r·(dy ⊙ w) − r³/d · x · Σ(dy ⊙ w ⊙ x)` with `r = 1/rms(x)`.
    #[cube(launch)]
    pub(super) fn rms_norm_backward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        inv_rms: &Tensor<F>,
        dy: &Tensor<F>,
        dx: &mut Tensor<F>,
        first_row: u32,
        inv_d: f32,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (first_row + CUBE_POS_X) as usize;
        let step = units as usize;
        let d = x.shape(1);
        let base = row * d;
        let mut partial = F::new(0.0);
        let mut c = UNIT_POS_X as usize;
        while c < d {
            partial += dy[base + c] * weight[c] * x[base + c];
            c += step;
        }
        let total = cube_sum::<F>(partial, units);
        let r = inv_rms[row];
        let k = r * r * r * total * F::cast_from(inv_d);
        let mut c = UNIT_POS_X as usize;
        while c < d {
            dx[base + c] = r * dy[base + c] * weight[c] - k * x[base + c];
            c += step;
        }
    }

    /// One cube per row of `logits` `[n, vocab]` and its target (an id, held as a float):
    /// the row's NLL `logsumexp(z) − z[target]`, 1 where the most likely id (the lowest on
    /// ties, as torch.argmax) is the target and 0 elsewhere, and with `grad`,
    /// `dlogits = scale · (softmax(z) − onehot(target))`.
    #[cube(launch)]
    pub(super) fn cross_entropy_kernel<F: Float>(
        logits: &Tensor<F>,
        targets: &Tensor<F>,
        nll: &mut Tensor<F>,
        correct: &mut Tensor<F>,
        dlogits: &mut Tensor<F>,
        first_row: u32,
        scale: f32,
        #[comptime] units: u32,
        #[comptime] grad: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (first_row + CUBE_POS_X) as usize;
        let step = units as usize;
        let vocab = logits.shape(1);
        let base = row * vocab;
        let mut partial = F::min_value();
        let mut c = UNIT_POS_X as usize;
        while c < vocab {
            partial = F::max(partial, logits[base + c]);
            c += step;
        }
        let top = cube_max::<F>(partial, units);
        // The sum of exponentials, and the lowest id holding the maximum as the maximum of
        // minus the ids (ids below 2^24 are exact in f32).
        let mut sum = F::new(0.0);
        let mut first = F::min_value();
        let mut c = UNIT_POS_X as usize;
        while c < vocab {
            let z = logits[base + c];
            sum += F::exp(z - top);
            if z == top {
                first = F::max(first, F::new(0.0) - F::cast_from(c as u32));
            }
            c += step;
        }
        let total = cube_sum::<F>(sum, units);
        let lowest = F::new(0.0) - cube_max::<F>(first, units);
        let target = targets[row];
        let t = u32::cast_from(target) as usize;
        if UNIT_POS_X == 0 {
            nll[row] = F::ln(total) + top - logits[base + t];
            correct[row] = F::new(0.0);
            if lowest == target {
                correct[row] = F::new(1.0);
            }
        }
        if grad {
            let s = F::cast_from(scale);
            let inv = s / total;
            let mut c = UNIT_POS_X as usize;
            while c < vocab {
                let mut g = F::exp(logits[base + c] - top) * inv;
                if c == t {
                    g -= s;
                }
                dlogits[base + c] = g;
                c += step;
            }
        }
    }

    /// One cube per row of `scores` `[rows, width]`: `softmax(scale · scores + mask)` along
    /// the row, with mask row `row mod mask_rows`.
    #[cube(launch)]
    pub(super) fn masked_softmax_kernel<F: Float>(
        scores: &Tensor<F>,
        mask: &Tensor<F>,
        probs: &mut Tensor<F>,
        first_row: u32,
        scale: f32,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (first_row + CUBE_POS_X) as usize;
        let step = units as usize;
        let width = scores.shape(1);
        let base = row * width;
        let masked = (row % mask.shape(0)) * width;
        let s = F::cast_from(scale);
        let mut partial = F::min_value();
        let mut c = UNIT_POS_X as usize;
        while c < width {
            partial = F::max(partial, scores[base + c] * s + mask[masked + c]);
            c += step;
        }
        let top = cube_max::<F>(partial, units);
        let mut sum = F::new(0.0);
        let mut c = UNIT_POS_X as usize;
        while c < width {
            sum += F::exp(scores[base + c] * s + mask[masked + c] - top);
            c += step;
        }
        let inv = F::new(1.0) / cube_sum::<F>(sum, units);
        let mut c = UNIT_POS_X as usize;
        while c < width {
            probs[base + c] = F::exp(scores[base + c] * s + mask[masked + c] - top) * inv;
            c += step;
        }
    }

    /// One cube per row: `dscores = scale · p ⊙ (dp − Σ p ⊙ dp)`.
    #[cube(launch)]
    pub(super) fn masked_softmax_backward_kernel<F: Float>(
        probs: &Tensor<F>,
        dprobs: &Tensor<F>,
        dscores: &mut Tensor<F>,
        first_row: u32,
        scale: f32,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = (first_row + CUBE_POS_X) as usize;
        let step = units as usize;
        let width = probs.shape(1);
        let base = row * width;
        let mut partial = F::new(0.0);
        let mut c = UNIT_POS_X as usize;
        while c < width {
            partial += probs[base + c] * dprobs[base + c];
            c += step;
        }
        let dot = cube_sum::<F>(partial, units);
        let s = F::cast_from(scale);
        let mut c = UNIT_POS_X as usize;
        while c < width {
            dscores[base + c] = s * probs[base + c] * (dprobs[base + c] - dot);
            c += step;
        }
    }

    /// `σ(g)`, the logistic sigmoid.
    #[cube]
    fn sigmoid<F: Float>(g: F) -> F {
        F::new(1.0) / (F::new(1.0) + F::exp(F::new(0.0) - g))
    }

    /// One unit per element: `y = g·σ(g)·u`.
    #[cube(launch)]
    pub(super) fn silu_mul_kernel<F: Float>(
        gate: &Tensor<F>,
        up: &Tensor<F>,
        y: &mut Tensor<F>,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < y.len() {
            let g = gate[i];
            y[i] = g * sigmoid::<F>(g) * up[i];
        }
    }

    /// One unit per element: `du = dy·g·σ(g)`, `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`.
    #[cube(launch)]
    pub(super) fn silu_mul_backward_kernel<F: Float>(
        gate: &Tensor<F>,
        up: &Tensor<F>,
        dy: &Tensor<F>,
        dgate: &mut Tensor<F>,
        dup: &mut Tensor<F>,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < dgate.len() {
            let g = gate[i];
            let d = dy[i];
            let s = sigmoid::<F>(g);
            dup[i] = d * g * s;
            dgate[i] = d * up[i] * s * (F::new(1.0) + g * (F::new(1.0) - s));
        }
    }

    /// One unit per element of `y` `[n, heads · head_dim]`: `y·cos + rotate_half(y)·sin`,
    /// where `rotate_half` takes `−y[j + half]` for the first half of a head and
    /// `y[j − half]` for the second. `transposed` gives its adjoint for the backward pass:
    /// `g·cos + (g[j + half]·sin[j + half]` in the first half, `−g[j − half]·sin[j − half]`
    /// in the second).
    #[cube(launch)]
    pub(super) fn rope_kernel<F: Float>(
        y: &Tensor<F>,
        cos: &Tensor<F>,
        sin: &Tensor<F>,
        out: &mut Tensor<F>,
        head_dim: u32,
        #[comptime] transposed: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let i = ABSOLUTE_POS;
        if i < out.len() {
            let hd = head_dim as usize;
            let half = hd / 2;
            let width = y.shape(1);
            let row = i / width;
            let j = (i % width) % hd;
            let table = row * hd;
            // The partner in the other half of the head, and where its sine is read.
            let mut partner = i + half;
            let mut at = table + j;
            let mut sign = F::new(-1.0);
            if j >= half {
                partner = i - half;
                sign = F::new(1.0);
            }
            if transposed {
                sign = F::new(0.0) - sign;
                at = table + j + half;
                if j >= half {
                    at = table + j - half;
                }
            }
            out[i] = y[i] * cos[table + j] + sign * y[partner] * sin[at];
        }
    }
}

#[cfg(all(test, feature = "wgpu"))]
mod tests {
    use super::*;
    use burn::backend::Wgpu;
    use burn::backend::wgpu::WgpuDevice;
    use burn::tensor::Distribution;

    type W = Autodiff<Wgpu>;

    fn values<const D: usize>(t: Tensor<Wgpu, D>) -> Vec<f32> {
        t.into_data().to_vec::<f32>().unwrap()
    }

    fn assert_close(a: Vec<f32>, b: Vec<f32>, tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0f32, f32::max);
        assert!(worst < tol, "{what}: worst difference {worst}");
    }

    /// SwiGLU's kernels against `silu(gate) · up` composed, on wgpu: the output and both
    /// gradients; sizes that do not fill the last cube.
    #[test]
    fn cube_silu_mul_matches_the_composed_ops_in_values_and_gradients() {
        let device = WgpuDevice::DefaultDevice;
        for (n, f) in [(1, 1), (7, 100), (33, 1536)] {
            let rand =
                |lo, hi| Tensor::<Wgpu, 2>::random([n, f], Distribution::Uniform(lo, hi), &device);
            let (gate, up, mix) = (rand(-6.0, 6.0), rand(-2.0, 2.0), rand(-1.0, 1.0));
            let run = |kernel: bool| {
                let g = Tensor::<W, 2>::from_inner(gate.clone()).require_grad();
                let u = Tensor::<W, 2>::from_inner(up.clone()).require_grad();
                let y = if kernel {
                    silu_mul(&g, &u).expect("the kernel runs on wgpu in f32")
                } else {
                    super::super::silu_mul_composed(g.clone(), u.clone())
                };
                let grads = (y.clone() * Tensor::from_inner(mix.clone()))
                    .sum()
                    .backward();
                (
                    values(y.inner()),
                    values(g.grad(&grads).unwrap()),
                    values(u.grad(&grads).unwrap()),
                )
            };
            let (y, dg, du) = run(true);
            let (y0, dg0, du0) = run(false);
            let what = format!("[{n}, {f}]");
            assert_close(y, y0, 1e-5, &format!("{what} output"));
            assert_close(dg, dg0, 1e-5, &format!("{what} dgate"));
            assert_close(du, du0, 1e-5, &format!("{what} dup"));
        }
    }

    /// The rotary kernel against the composed rotate-half on wgpu: the output and the
    /// gradient of `y` (the tables are constants); two heads, widths 2 and 64, and tables whose
    /// halves differ, so a kernel that assumed duplicated halves would fail.
    #[test]
    fn cube_rope_matches_the_composed_ops_in_values_and_gradients() {
        let device = WgpuDevice::DefaultDevice;
        for (n, heads, hd) in [(1, 1, 2), (5, 2, 64), (9, 3, 8)] {
            let rand = |shape: [usize; 2]| {
                Tensor::<Wgpu, 2>::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
            };
            let (y, cos, sin) = (rand([n, heads * hd]), rand([n, hd]), rand([n, hd]));
            let mix = rand([n, heads * hd]);
            let run = |kernel: bool| {
                let ya = Tensor::<W, 2>::from_inner(y.clone()).require_grad();
                let (c, s) = (
                    Tensor::<W, 2>::from_inner(cos.clone()),
                    Tensor::<W, 2>::from_inner(sin.clone()),
                );
                let out = if kernel {
                    rope(&ya, &c, &s).expect("the kernel runs on wgpu in f32")
                } else {
                    super::super::rope_composed(ya.clone(), &c, &s)
                };
                let grads = (out.clone() * Tensor::from_inner(mix.clone()))
                    .sum()
                    .backward();
                (values(out.inner()), values(ya.grad(&grads).unwrap()))
            };
            let (out, dy) = run(true);
            let (out0, dy0) = run(false);
            let what = format!("[{n}, {heads} × {hd}]");
            assert_close(out, out0, 1e-5, &format!("{what} output"));
            assert_close(dy, dy0, 1e-5, &format!("{what} dy"));
        }
        // Tracked tables take the composed path, which gives them gradients.
        let t = Tensor::<W, 2>::from_inner(Tensor::<Wgpu, 2>::ones([2, 4], &device));
        assert!(rope(&t, &t.clone().require_grad(), &t).is_none());
    }

    /// The cross-entropy kernel against the composed ops on wgpu: the summed NLL, the count
    /// of right argmaxes and the gradient; vocabularies below, at and above one cube's units,
    /// SmolLM2's 49,152, and rows of equal logits (the argmax must be the lowest id).
    #[test]
    fn cube_cross_entropy_matches_the_composed_ops() {
        let device = WgpuDevice::DefaultDevice;
        for (n, vocab) in [(1, 1), (3, 100), (5, 256), (4, 1000), (2, 49_152)] {
            let logits =
                Tensor::<Wgpu, 2>::random([n, vocab], Distribution::Uniform(-8.0, 8.0), &device);
            let targets: Vec<usize> = (0..n).map(|i| (i * 37 + 5) % vocab).collect();
            for grad in [false, true] {
                let what = format!("[{n}, {vocab}] grad {grad}");
                let kernel = cross_entropy(&logits, &targets, 0.25, grad).expect("runs on wgpu");
                let composed =
                    super::super::cross_entropy_composed(logits.clone(), &targets, 0.25, grad);
                assert_close(
                    values(kernel.nll),
                    values(composed.nll),
                    1e-5,
                    &format!("{what} nll"),
                );
                let count = |c: Tensor<Wgpu, 1, Int>| c.into_scalar().elem::<i64>();
                assert_eq!(
                    count(kernel.correct),
                    count(composed.correct),
                    "{what} correct"
                );
                match (kernel.dlogits, composed.dlogits) {
                    (Some(a), Some(b)) => assert_close(values(a), values(b), 1e-6, &what),
                    (None, None) => assert!(!grad, "{what}: no gradient"),
                    _ => panic!("{what}: the gradient is there in one path only"),
                }
            }
        }
        // Ties: every id of a row of zeros is the argmax, and the lowest wins.
        let zeros = Tensor::<Wgpu, 2>::zeros([3, 300], &device);
        let ce = cross_entropy(&zeros, &[0, 1, 299], 1.0, false).expect("runs on wgpu");
        assert_eq!(ce.correct.into_scalar().elem::<i64>(), 1);
        let nll = values(ce.nll)[0];
        assert!((nll - 3.0 * (300f32).ln()).abs() < 1e-4, "nll {nll}");
    }

    /// The masked softmax kernels against the composed ops on wgpu: the probabilities and
    /// the gradient of the scores, with a causal mask of `-1e9` cycled over the rows (as
    /// attention uses it) and widths below, at and above one cube's units.
    #[test]
    fn cube_masked_softmax_matches_the_composed_ops_in_values_and_gradients() {
        let device = WgpuDevice::DefaultDevice;
        for (rows, width, mask_rows) in [(1, 1, 1), (6, 7, 2), (12, 300, 4), (9, 256, 9)] {
            let scores =
                Tensor::<Wgpu, 2>::random([rows, width], Distribution::Uniform(-4.0, 4.0), &device);
            let mix =
                Tensor::<Wgpu, 2>::random([rows, width], Distribution::Uniform(-1.0, 1.0), &device);
            let mask: Vec<f32> = (0..mask_rows * width)
                .map(|k| if k % width <= k / width { 0.0 } else { -1e9 })
                .collect();
            let mask =
                Tensor::<Wgpu, 2>::from_data(TensorData::new(mask, [mask_rows, width]), &device);
            let run = |kernel: bool| {
                let s = Tensor::<W, 2>::from_inner(scores.clone()).require_grad();
                let m = Tensor::<W, 2>::from_inner(mask.clone());
                let p = if kernel {
                    masked_softmax(&s, &m, 0.3).expect("the kernel runs on wgpu in f32")
                } else {
                    super::super::masked_softmax_composed(s.clone(), &m, 0.3)
                };
                let grads = (p.clone() * Tensor::from_inner(mix.clone()))
                    .sum()
                    .backward();
                (values(p.inner()), values(s.grad(&grads).unwrap()))
            };
            let (p, ds) = run(true);
            let (p0, ds0) = run(false);
            let what = format!("[{rows}, {width}] over {mask_rows} mask rows");
            assert_close(p, p0, 1e-6, &format!("{what} probs"));
            assert_close(ds, ds0, 1e-6, &format!("{what} dscores"));
        }
        // Without autodiff too, and a tracked mask takes the composed path.
        let s = Tensor::<Wgpu, 2>::random([4, 5], Distribution::Uniform(-1.0, 1.0), &device);
        let m = Tensor::<Wgpu, 2>::zeros([2, 5], &device);
        let p = masked_softmax(&s, &m, 1.0).expect("runs on wgpu");
        assert_close(
            values(p),
            values(super::super::masked_softmax_composed(s.clone(), &m, 1.0)),
            1e-6,
            "plain",
        );
        let tracked = Tensor::<W, 2>::from_inner(m).require_grad();
        assert!(masked_softmax(&Tensor::<W, 2>::from_inner(s), &tracked, 1.0).is_none());
    }

    /// The kernel against Burn's composed ops on wgpu: the output, and the gradients of `x`
    /// and of the weight under a random weighting of the output. Widths below, at and above
    /// one cube's units (32–256), not multiples of them, and a single row.
    #[test]
    fn cube_rms_norm_matches_the_composed_ops_in_values_and_gradients() {
        let device = WgpuDevice::DefaultDevice;
        for (n, d) in [(1, 1), (7, 100), (5, 600), (33, 576), (3, 256)] {
            let x = Tensor::<Wgpu, 2>::random([n, d], Distribution::Uniform(-2.0, 2.0), &device);
            let w = Tensor::<Wgpu, 1>::random([d], Distribution::Uniform(0.5, 1.5), &device);
            let mix = Tensor::<Wgpu, 2>::random([n, d], Distribution::Uniform(-1.0, 1.0), &device);
            let run = |kernel: bool| {
                let xa = Tensor::<W, 2>::from_inner(x.clone()).require_grad();
                let wa = Tensor::<W, 1>::from_inner(w.clone()).require_grad();
                let y = if kernel {
                    rms_norm(&xa, &wa, 1e-5).expect("the kernel runs on wgpu in f32")
                } else {
                    super::super::rms_norm_composed(xa.clone(), &wa, 1e-5)
                };
                let grads = (y.clone() * Tensor::from_inner(mix.clone()))
                    .sum()
                    .backward();
                (
                    values(y.inner()),
                    values(xa.grad(&grads).unwrap()),
                    values(wa.grad(&grads).unwrap()),
                )
            };
            let (y, dx, dw) = run(true);
            let (y0, dx0, dw0) = run(false);
            let what = format!("[{n}, {d}]");
            assert_close(y, y0, 1e-5, &format!("{what} output"));
            assert_close(dx, dx0, 1e-4, &format!("{what} dx"));
            assert_close(dw, dw0, 1e-4, &format!("{what} dw"));
        }
    }
}
