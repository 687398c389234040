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

/// The most rows one launch takes: cubes are counted in one dimension.
const MAX_ROWS: usize = 65_535;

/// RMSNorm through the CubeCL kernel on wgpu or CUDA with fusion, in f32; `None` on any other
/// backend or dtype.
/// # Shapes
/// - x: `[n, d]`, weight: `[d]` -> `[n, d]`
pub(crate) fn rms_norm<B: Backend>(
    x: &Tensor<B, 2>,
    weight: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    if x.dtype() != DType::F32 || weight.dtype() != DType::F32 || x.dims()[0] > MAX_ROWS {
        return None;
    }
    #[cfg(feature = "wgpu")]
    if let Some(y) = rms_norm_on::<B, cubecl::wgpu::WgpuRuntime, u32>(x, weight, eps) {
        return Some(y);
    }
    #[cfg(feature = "cuda")]
    if let Some(y) = rms_norm_on::<B, cubecl::cuda::CudaRuntime, u8>(x, weight, eps) {
        return Some(y);
    }
    None
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
    #[cfg(feature = "wgpu")]
    if let Some(y) = silu_mul_on::<B, cubecl::wgpu::WgpuRuntime, u32>(gate, up) {
        return Some(y);
    }
    #[cfg(feature = "cuda")]
    if let Some(y) = silu_mul_on::<B, cubecl::cuda::CudaRuntime, u8>(gate, up) {
        return Some(y);
    }
    None
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

impl<R, BT> std::fmt::Debug for SiluMulBackward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiluMulBackward")
    }
}

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
    let ([n, width], [rows, hd]) = (y.dims(), cos.dims());
    let f32s = [y.dtype(), cos.dtype(), sin.dtype()] == [DType::F32; 3];
    if !f32s || rows != n || sin.dims() != cos.dims() || hd % 2 != 0 || width % hd != 0 {
        return None;
    }
    #[cfg(feature = "wgpu")]
    if let Some(out) = rope_on::<B, cubecl::wgpu::WgpuRuntime, u32>(y, cos, sin) {
        return Some(out);
    }
    #[cfg(feature = "cuda")]
    if let Some(out) = rope_on::<B, cubecl::cuda::CudaRuntime, u8>(y, cos, sin) {
        return Some(out);
    }
    None
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

impl<R, BT> std::fmt::Debug for RopeBackward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RopeBackward")
    }
}

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

struct RmsNormBackward<R, BT>(Marker<R, BT>);

impl<R, BT> std::fmt::Debug for RmsNormBackward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RmsNormBackward")
    }
}

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

/// One cube per row of width `d`, of a power of two from 32 to 256 units (about the row's
/// width): the launch's cube count and size, and the units for the kernel's shared memory.
fn per_row(n: usize, d: usize) -> (CubeCount, CubeDim, u32) {
    let units = d.next_power_of_two().clamp(32, 256) as u32;
    (
        CubeCount::Static(n as u32, 1, 1),
        CubeDim::new_1d(units),
        units,
    )
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
}

impl Launch {
    fn name(self) -> &'static str {
        match self {
            Launch::RmsNorm { .. } => "runner_rms_norm",
            Launch::RmsNormBackward => "runner_rms_norm_backward",
            Launch::SiluMul => "runner_silu_mul",
            Launch::SiluMulBackward => "runner_silu_mul_backward",
            Launch::Rope { .. } => "runner_rope",
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
    let (count, dim, units) = per_row(n, d);
    kernels::rms_norm_forward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        w.into_tensor_arg(),
        y.clone().into_tensor_arg(),
        inv.clone().into_tensor_arg(),
        eps,
        1.0 / d as f32,
        units,
        DType::F32.into(),
    );
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
    let (count, dim, units) = per_row(n, d);
    kernels::rms_norm_backward_kernel::launch::<R>(
        &client,
        count,
        dim,
        x.into_tensor_arg(),
        w.into_tensor_arg(),
        inv.into_tensor_arg(),
        dy.into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        1.0 / d as f32,
        units,
        DType::F32.into(),
    );
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

/// The kernels, apart: CubeCL's prelude names `Tensor` and `Float` too.
mod kernels {
    use cubecl::prelude::*;

    /// The sum over `units` units of each one's `partial`, in shared memory; every unit gets it.
    #[cube]
    fn cube_sum<F: Float>(partial: F, #[comptime] units: u32) -> F {
        let unit = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<F>::new(units as usize);
        shared[unit] = partial;
        sync_cube();
        // Runtime values (UNIT_POS_X, CUBE_DIM_X): CubeCL only mutates those.
        let mut half = CUBE_DIM_X as usize / 2;
        while half > 0 {
            if unit < half {
                shared[unit] = shared[unit] + shared[unit + half];
            }
            sync_cube();
            half /= 2;
        }
        shared[0]
    }

    /// One cube per row: `y = x / rms(x) · w` and `1/rms(x)`, `rms(x) = sqrt(mean(x²) + eps)`.
    #[cube(launch)]
    pub(super) fn rms_norm_forward_kernel<F: Float>(
        x: &Tensor<F>,
        weight: &Tensor<F>,
        y: &mut Tensor<F>,
        inv_rms: &mut Tensor<F>,
        eps: f32,
        inv_d: f32,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS_X as usize;
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
        inv_d: f32,
        #[comptime] units: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = CUBE_POS_X as usize;
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
