//! The fused kernels as operations of the flex backend: on `Flex` directly (evaluation,
//! generation) and on `Autodiff<Flex>` with hand-written backward passes (training).
//! Anything not `f32` returns `None` and takes the composed path.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{DType, TensorPrimitive};
use burn_flex::FlexTensor;

use super::{downcast, host};

type Ad = Autodiff<Flex>;

/// `t` in one contiguous `f32` buffer, or `None` for another dtype.
fn contiguous(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(if t.as_slice::<f32>().is_some() { t } else { t.to_contiguous() })
}

fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("made contiguous f32 by `contiguous`")
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape.to_vec()))
}

fn dims(t: &FlexTensor) -> Vec<usize> {
    t.layout().shape().to_vec()
}

/// The inner primitive of a flex float tensor.
fn plain<const D: usize>(t: Tensor<Flex, D>) -> FlexTensor {
    t.into_primitive().tensor()
}

fn wrap<B: Backend, C: Backend, const D: usize>(t: Tensor<C, D>) -> Tensor<B, D> {
    downcast::<Tensor<C, D>, Tensor<B, D>>(t).unwrap_or_else(|_| unreachable!("B is C"))
}

// ---------------------------------------------------------------- RMSNorm

fn rms_forward(x: &FlexTensor, w: &FlexTensor, eps: f64) -> (FlexTensor, FlexTensor) {
    let shape = dims(x);
    let n = shape[0];
    let (mut y, mut inv) = (vec![0f32; x.layout().num_elements()], vec![0f32; n]);
    host::rms_norm(data(x), data(w), eps as f32, &mut y, &mut inv);
    (tensor(y, &shape), tensor(inv, &[n]))
}

pub fn rms_norm<B: Backend>(x: &Tensor<B, 2>, w: &Tensor<B, 1>, eps: f64) -> Option<Tensor<B, 2>> {
    if let (Ok(x), Ok(w)) = (downcast::<_, Tensor<Ad, 2>>(x.clone()), downcast::<_, Tensor<Ad, 1>>(w.clone())) {
        let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
        let (xp, wp) = (contiguous(x.primitive)?, contiguous(w.primitive)?);
        let (y, inv) = rms_forward(&xp, &wp, eps);
        let out = match RmsNormBackward.prepare::<NoCheckpointing>([x.node, w.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((xp, wp, inv), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(out))));
    }
    if let (Ok(x), Ok(w)) = (downcast::<_, Tensor<Flex, 2>>(x.clone()), downcast::<_, Tensor<Flex, 1>>(w.clone())) {
        let (xp, wp) = (contiguous(plain(x))?, contiguous(plain(w))?);
        let (y, _) = rms_forward(&xp, &wp, eps);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(y))));
    }
    None
}

#[derive(Debug)]
struct RmsNormBackward;

impl Backward<Flex, 2> for RmsNormBackward {
    /// The input, the weight and the per-row inverse RMS.
    type State = (FlexTensor, FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, w, inv) = ops.state;
        let dy = contiguous(grads.consume::<Flex>(&ops.node)).expect("f32 gradient");
        let [px, pw] = ops.parents;
        let shape = dims(&x);
        let mut dx = vec![0f32; x.layout().num_elements()];
        let mut dw = pw.as_ref().map(|_| vec![0f32; shape[1]]);
        host::rms_norm_backward(data(&x), data(&w), data(&inv), data(&dy), &mut dx, dw.as_deref_mut());
        if let Some(node) = px {
            grads.register::<Flex>(node.id, tensor(dx, &shape));
        }
        if let (Some(node), Some(dw)) = (pw, dw) {
            grads.register::<Flex>(node.id, tensor(dw, &shape[1..]));
        }
    }
}

// ---------------------------------------------------------------- silu(gate) · up

fn silu_mul_forward(g: &FlexTensor, u: &FlexTensor) -> FlexTensor {
    let mut out = vec![0f32; g.layout().num_elements()];
    host::silu_mul(data(g), data(u), &mut out);
    tensor(out, &dims(g))
}

pub fn silu_mul<B: Backend>(g: &Tensor<B, 2>, u: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if let (Ok(g), Ok(u)) = (downcast::<_, Tensor<Ad, 2>>(g.clone()), downcast::<_, Tensor<Ad, 2>>(u.clone())) {
        let (g, u) = (g.into_primitive().tensor(), u.into_primitive().tensor());
        let (gp, up) = (contiguous(g.primitive)?, contiguous(u.primitive)?);
        let y = silu_mul_forward(&gp, &up);
        let out = match SiluMulBackward.prepare::<NoCheckpointing>([g.node, u.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((gp, up), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(out))));
    }
    if let (Ok(g), Ok(u)) = (downcast::<_, Tensor<Flex, 2>>(g.clone()), downcast::<_, Tensor<Flex, 2>>(u.clone())) {
        let y = silu_mul_forward(&contiguous(plain(g))?, &contiguous(plain(u))?);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(y))));
    }
    None
}

#[derive(Debug)]
struct SiluMulBackward;

impl Backward<Flex, 2> for SiluMulBackward {
    /// The gate and the up projection.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (g, u) = ops.state;
        let dy = contiguous(grads.consume::<Flex>(&ops.node)).expect("f32 gradient");
        let shape = dims(&g);
        let n = g.layout().num_elements();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        host::silu_mul_backward(data(&g), data(&u), data(&dy), &mut dg, &mut du);
        let [pg, pu] = ops.parents;
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, tensor(dg, &shape));
        }
        if let Some(node) = pu {
            grads.register::<Flex>(node.id, tensor(du, &shape));
        }
    }
}

// ---------------------------------------------------------------- masked softmax

fn softmax_forward(s: &FlexTensor, mask: &FlexTensor, scale: f64) -> FlexTensor {
    let shape = dims(s);
    let mask_rows = dims(mask)[0];
    let mut out = vec![0f32; s.layout().num_elements()];
    host::masked_softmax(data(s), data(mask), mask_rows, shape[1], scale as f32, &mut out);
    tensor(out, &shape)
}

pub fn masked_softmax<B: Backend>(scores: &Tensor<B, 2>, mask: &Tensor<B, 2>, scale: f64) -> Option<Tensor<B, 2>> {
    let [rows, width] = scores.dims();
    let [mask_rows, mask_width] = mask.dims();
    if mask_width != width || mask_rows == 0 || rows % mask_rows != 0 {
        return None;
    }
    if let (Ok(s), Ok(m)) = (downcast::<_, Tensor<Ad, 2>>(scores.clone()), downcast::<_, Tensor<Ad, 2>>(mask.clone())) {
        let s = s.into_primitive().tensor();
        let mp = contiguous(m.into_primitive().tensor().primitive)?;
        let sp = contiguous(s.primitive)?;
        let p = softmax_forward(&sp, &mp, scale);
        let out = match MaskedSoftmaxBackward.prepare::<NoCheckpointing>([s.node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((p.clone(), scale), p),
            OpsKind::UnTracked(prep) => prep.finish(p),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(TensorPrimitive::Float(out))));
    }
    if let (Ok(s), Ok(m)) = (downcast::<_, Tensor<Flex, 2>>(scores.clone()), downcast::<_, Tensor<Flex, 2>>(mask.clone())) {
        let p = softmax_forward(&contiguous(plain(s))?, &contiguous(plain(m))?, scale);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(p))));
    }
    None
}

#[derive(Debug)]
struct MaskedSoftmaxBackward;

impl Backward<Flex, 1> for MaskedSoftmaxBackward {
    /// The softmax output and the scale.
    type State = (FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (p, scale) = ops.state;
        let dp = contiguous(grads.consume::<Flex>(&ops.node)).expect("f32 gradient");
        let [ps] = ops.parents;
        if let Some(node) = ps {
            let shape = dims(&p);
            let mut ds = vec![0f32; p.layout().num_elements()];
            host::masked_softmax_backward(data(&p), data(&dp), shape[1], scale as f32, &mut ds);
            grads.register::<Flex>(node.id, tensor(ds, &shape));
        }
    }
}
