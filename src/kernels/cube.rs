//! Kernels of the GPU backends, written in CubeCL: one kernel where Burn's composed ops would
//! launch several and keep their intermediates. Each runs on wgpu and CUDA under Burn's
//! fusion as a custom operation in the fusion stream (the pattern burn-vision uses), so the
//! element-wise ops around it still fuse, and under autodiff with its own backward pass.
//! Tested against the composed ops on wgpu (Mesa lavapipe in CI), values and gradients.
//!
//! RMSNorm: one cube per row sums the squares (a tree reduction in shared memory), writes
//! `1/rms` for the backward pass and the normalised, weighted row. Its backward computes
//! `dx` the same way; `dw`, a sum over rows, is left to Burn's fused reduction.

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
use cubecl::{CubeCount, CubeDim};

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
        let (y, inv_rms) = fused_forward::<R, BT>(x.primitive.clone(), w.primitive.clone(), eps);
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
        let (y, _) = fused_forward::<R, BT>(
            x.into_primitive().tensor(),
            w.into_primitive().tensor(),
            eps,
        );
        let out = Tensor::<Fused<R, BT>, 2>::from_primitive(TensorPrimitive::Float(y));
        return downcast(out).ok();
    }
    None
}

/// `fn() -> T` keeps the markers `Send + Sync` whatever the runtime types are.
type Marker<R, BT> = PhantomData<fn() -> (R, BT)>;

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
            grads.register::<Fused<R, BT>>(node.id, fused_backward::<R, BT>(x, w, inv_rms, dy));
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

/// Registers the forward kernel in the fusion stream: `(y, 1/rms)`.
fn fused_forward<R: CubeRuntime, BT: BoolElement>(
    x: Primitive<R, BT>,
    w: Primitive<R, BT>,
    eps: f64,
) -> (Primitive<R, BT>, Primitive<R, BT>) {
    let client = x.client.clone();
    let [n, d] = [x.shape[0], x.shape[1]];
    let streams = OperationStreams::with_inputs([&x, &w]);
    let y = TensorIr::uninit(client.create_empty_handle(), Shape::new([n, d]), DType::F32);
    let inv = TensorIr::uninit(client.create_empty_handle(), Shape::new([n]), DType::F32);
    let desc = CustomOpIr::new("runner_rms_norm", &[x.into_ir(), w.into_ir()], &[y, inv]);
    let op = ForwardOp::<R, BT> {
        desc: desc.clone(),
        eps: eps as f32,
        _backend: PhantomData,
    };
    let [y, inv]: [Primitive<R, BT>; 2] = client
        .register(streams, OperationIr::Custom(desc), op)
        .try_into()
        .unwrap_or_else(|_| unreachable!("two outputs were declared"));
    (y, inv)
}

/// Registers the backward kernel in the fusion stream: `dx`.
fn fused_backward<R: CubeRuntime, BT: BoolElement>(
    x: Primitive<R, BT>,
    w: Primitive<R, BT>,
    inv_rms: Primitive<R, BT>,
    dy: Primitive<R, BT>,
) -> Primitive<R, BT> {
    let client = x.client.clone();
    let [n, d] = [x.shape[0], x.shape[1]];
    let streams = OperationStreams::with_inputs([&x, &w, &inv_rms, &dy]);
    let dx = TensorIr::uninit(client.create_empty_handle(), Shape::new([n, d]), DType::F32);
    let desc = CustomOpIr::new(
        "runner_rms_norm_backward",
        &[x.into_ir(), w.into_ir(), inv_rms.into_ir(), dy.into_ir()],
        &[dx],
    );
    let op = BackwardOp::<R, BT> {
        desc: desc.clone(),
        _backend: PhantomData,
    };
    let [dx]: [Primitive<R, BT>; 1] = client
        .register(streams, OperationIr::Custom(desc), op)
        .try_into()
        .unwrap_or_else(|_| unreachable!("one output was declared"));
    dx
}

struct ForwardOp<R, BT> {
    desc: CustomOpIr,
    eps: f32,
    _backend: Marker<R, BT>,
}

impl<R: CubeRuntime, BT: BoolElement> Operation<<Cube<R, BT> as FusionBackend>::FusionRuntime>
    for ForwardOp<R, BT>
{
    fn execute(&self, handles: &mut Handles<R, BT>) {
        let ([x, w], [y, inv]) = self.desc.as_fixed();
        let (xt, wt) = (
            handles.get_float_tensor::<Cube<R, BT>>(x),
            handles.get_float_tensor::<Cube<R, BT>>(w),
        );
        let (yt, invt) = launch_forward(xt, wt, self.eps);
        handles.register_float_tensor::<Cube<R, BT>>(&y.id, yt);
        handles.register_float_tensor::<Cube<R, BT>>(&inv.id, invt);
    }
}

struct BackwardOp<R, BT> {
    desc: CustomOpIr,
    _backend: Marker<R, BT>,
}

// Debug by hand: derived, it would ask the runtime types for Debug too.
impl<R, BT> std::fmt::Debug for RmsNormBackward<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RmsNormBackward")
    }
}
impl<R, BT> std::fmt::Debug for ForwardOp<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForwardOp")
            .field("desc", &self.desc)
            .finish()
    }
}
impl<R, BT> std::fmt::Debug for BackwardOp<R, BT> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackwardOp")
            .field("desc", &self.desc)
            .finish()
    }
}

impl<R: CubeRuntime, BT: BoolElement> Operation<<Cube<R, BT> as FusionBackend>::FusionRuntime>
    for BackwardOp<R, BT>
{
    fn execute(&self, handles: &mut Handles<R, BT>) {
        let ([x, w, inv, dy], [dx]) = self.desc.as_fixed();
        let dxt = launch_backward(
            handles.get_float_tensor::<Cube<R, BT>>(x),
            handles.get_float_tensor::<Cube<R, BT>>(w),
            handles.get_float_tensor::<Cube<R, BT>>(inv),
            handles.get_float_tensor::<Cube<R, BT>>(dy),
        );
        handles.register_float_tensor::<Cube<R, BT>>(&dx.id, dxt);
    }
}

fn launch_forward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    eps: f32,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let (x, w) = (into_contiguous(x), into_contiguous(w));
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

fn launch_backward<R: CubeRuntime>(
    x: CubeTensor<R>,
    w: CubeTensor<R>,
    inv: CubeTensor<R>,
    dy: CubeTensor<R>,
) -> CubeTensor<R> {
    let (x, w, inv, dy) = (
        into_contiguous(x),
        into_contiguous(w),
        into_contiguous(inv),
        into_contiguous(dy),
    );
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
