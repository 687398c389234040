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
use std::any::TypeId;

use super::{downcast, host, thin};

type Ad = Autodiff<Flex>;

/// `t` in one contiguous `f32` buffer, or `None` for another dtype.
fn contiguous(t: FlexTensor) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    Some(if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    })
}

fn data(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>()
        .expect("made contiguous f32 by `contiguous`")
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

/// `t`'s autodiff primitive (node and flex value), for ops that test `B == Ad` up front.
fn ad_primitive<B: Backend, const D: usize>(
    t: Tensor<B, D>,
) -> <Ad as burn::tensor::backend::BackendTypes>::FloatTensorPrimitive {
    downcast::<_, Tensor<Ad, D>>(t)
        .unwrap_or_else(|_| unreachable!("B is Ad"))
        .into_primitive()
        .tensor()
}

/// `t`'s flex primitive, for ops that test `B == Flex` up front.
fn flex_primitive<B: Backend, const D: usize>(t: Tensor<B, D>) -> FlexTensor {
    plain(downcast::<_, Tensor<Flex, D>>(t).unwrap_or_else(|_| unreachable!("B is Flex")))
}

// ---------------------------------------------------------------- RMSNorm

fn rms_forward(x: &FlexTensor, w: &FlexTensor, eps: f64) -> (FlexTensor, FlexTensor) {
    let shape = dims(x);
    let n = shape[0];
    let (mut y, mut inv) = (vec![0f32; x.layout().num_elements()], vec![0f32; n]);
    host::rms_norm(data(x), data(w), eps as f32, &mut y, &mut inv);
    (tensor(y, &shape), tensor(inv, &[n]))
}

pub(crate) fn rms_norm<B: Backend>(
    x: &Tensor<B, 2>,
    w: &Tensor<B, 1>,
    eps: f64,
) -> Option<Tensor<B, 2>> {
    if let (Ok(x), Ok(w)) = (
        downcast::<_, Tensor<Ad, 2>>(x.clone()),
        downcast::<_, Tensor<Ad, 1>>(w.clone()),
    ) {
        let (x, w) = (x.into_primitive().tensor(), w.into_primitive().tensor());
        let (xp, wp) = (contiguous(x.primitive)?, contiguous(w.primitive)?);
        let (y, inv) = rms_forward(&xp, &wp, eps);
        let out = match RmsNormBackward
            .prepare::<NoCheckpointing>([x.node, w.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xp, wp, inv), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    if let (Ok(x), Ok(w)) = (
        downcast::<_, Tensor<Flex, 2>>(x.clone()),
        downcast::<_, Tensor<Flex, 1>>(w.clone()),
    ) {
        let (xp, wp) = (contiguous(plain(x))?, contiguous(plain(w))?);
        let (y, _) = rms_forward(&xp, &wp, eps);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(
            TensorPrimitive::Float(y),
        )));
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
        host::rms_norm_backward(
            data(&x),
            data(&w),
            data(&inv),
            data(&dy),
            &mut dx,
            dw.as_deref_mut(),
        );
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

pub(crate) fn silu_mul<B: Backend>(g: &Tensor<B, 2>, u: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    if let (Ok(g), Ok(u)) = (
        downcast::<_, Tensor<Ad, 2>>(g.clone()),
        downcast::<_, Tensor<Ad, 2>>(u.clone()),
    ) {
        let (g, u) = (g.into_primitive().tensor(), u.into_primitive().tensor());
        let (gp, up) = (contiguous(g.primitive)?, contiguous(u.primitive)?);
        let y = silu_mul_forward(&gp, &up);
        let out = match SiluMulBackward
            .prepare::<NoCheckpointing>([g.node, u.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((gp, up), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    if let (Ok(g), Ok(u)) = (
        downcast::<_, Tensor<Flex, 2>>(g.clone()),
        downcast::<_, Tensor<Flex, 2>>(u.clone()),
    ) {
        let y = silu_mul_forward(&contiguous(plain(g))?, &contiguous(plain(u))?);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(
            TensorPrimitive::Float(y),
        )));
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
    host::masked_softmax(
        data(s),
        data(mask),
        mask_rows,
        shape[1],
        scale as f32,
        &mut out,
    );
    tensor(out, &shape)
}

pub(crate) fn masked_softmax<B: Backend>(
    scores: &Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    scale: f64,
) -> Option<Tensor<B, 2>> {
    let [rows, width] = scores.dims();
    let [mask_rows, mask_width] = mask.dims();
    if mask_width != width || mask_rows == 0 || rows % mask_rows != 0 {
        return None;
    }
    if let (Ok(s), Ok(m)) = (
        downcast::<_, Tensor<Ad, 2>>(scores.clone()),
        downcast::<_, Tensor<Ad, 2>>(mask.clone()),
    ) {
        let s = s.into_primitive().tensor();
        let mp = contiguous(m.into_primitive().tensor().primitive)?;
        let sp = contiguous(s.primitive)?;
        let p = softmax_forward(&sp, &mp, scale);
        let out = match MaskedSoftmaxBackward
            .prepare::<NoCheckpointing>([s.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((p.clone(), scale), p),
            OpsKind::UnTracked(prep) => prep.finish(p),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    if let (Ok(s), Ok(m)) = (
        downcast::<_, Tensor<Flex, 2>>(scores.clone()),
        downcast::<_, Tensor<Flex, 2>>(mask.clone()),
    ) {
        let p = softmax_forward(&contiguous(plain(s))?, &contiguous(plain(m))?, scale);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(
            TensorPrimitive::Float(p),
        )));
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

// ---------------------------------------------------------------- causal attention

fn attention_forward(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    mask: &FlexTensor,
    s: host::AttentionShape,
) -> (FlexTensor, FlexTensor) {
    let shape = dims(q);
    let mut out = vec![0f32; q.layout().num_elements()];
    let mut probs = vec![0f32; s.batch * s.heads * s.t * s.t];
    host::attention(
        data(q),
        data(k),
        data(v),
        data(mask),
        dims(mask)[0],
        s,
        &mut out,
        &mut probs,
    );
    (
        tensor(out, &shape),
        tensor(probs, &[s.batch * s.heads * s.t, s.t]),
    )
}

pub(crate) fn attention<B: Backend>(
    q: &Tensor<B, 2>,
    k: &Tensor<B, 2>,
    v: &Tensor<B, 2>,
    mask: &Tensor<B, 2>,
    s: host::AttentionShape,
) -> Option<Tensor<B, 2>> {
    let (tokens, width) = (s.batch * s.t, s.head_dim);
    let [mask_rows, mask_width] = mask.dims();
    let shapes_fit = q.dims() == [tokens, s.heads * width]
        && k.dims() == [tokens, s.kv_heads * width]
        && v.dims() == k.dims()
        && s.kv_heads > 0
        && s.heads.is_multiple_of(s.kv_heads)
        && mask_width == s.t
        && mask_rows > 0
        && (s.batch * s.heads * s.t).is_multiple_of(mask_rows);
    if !shapes_fit {
        return None;
    }
    let cast = |t: &Tensor<B, 2>| {
        downcast::<_, Tensor<Ad, 2>>(t.clone())
            .ok()
            .map(|t| t.into_primitive().tensor())
    };
    if let (Some(q), Some(k), Some(v), Some(m)) = (cast(q), cast(k), cast(v), cast(mask)) {
        let (qp, kp, vp, mp) = (
            contiguous(q.primitive)?,
            contiguous(k.primitive)?,
            contiguous(v.primitive)?,
            contiguous(m.primitive)?,
        );
        let (out, probs) = attention_forward(&qp, &kp, &vp, &mp, s);
        let out = match AttentionBackward
            .prepare::<NoCheckpointing>([q.node, k.node, v.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((qp, kp, vp, probs, s), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    let cast = |t: &Tensor<B, 2>| {
        downcast::<_, Tensor<Flex, 2>>(t.clone())
            .ok()
            .and_then(|t| contiguous(plain(t)))
    };
    if let (Some(q), Some(k), Some(v), Some(m)) = (cast(q), cast(k), cast(v), cast(mask)) {
        let (out, _) = attention_forward(&q, &k, &v, &m, s);
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    None
}

#[derive(Debug)]
struct AttentionBackward;

impl Backward<Flex, 3> for AttentionBackward {
    /// Queries, keys, values, the attention probabilities and the shapes.
    type State = (
        FlexTensor,
        FlexTensor,
        FlexTensor,
        FlexTensor,
        host::AttentionShape,
    );

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (q, k, v, probs, s) = ops.state;
        let d_out = contiguous(grads.consume::<Flex>(&ops.node)).expect("f32 gradient");
        let (mut dq, mut dk, mut dv) = (
            vec![0f32; q.layout().num_elements()],
            vec![0f32; k.layout().num_elements()],
            vec![0f32; v.layout().num_elements()],
        );
        host::attention_backward(
            data(&q),
            data(&k),
            data(&v),
            data(&probs),
            data(&d_out),
            s,
            &mut dq,
            &mut dk,
            &mut dv,
        );
        let [pq, pk, pv] = ops.parents;
        for (parent, grad, like) in [(pq, dq, &q), (pk, dk, &k), (pv, dv, &v)] {
            if let Some(node) = parent {
                grads.register::<Flex>(node.id, tensor(grad, &dims(like)));
            }
        }
    }
}

// ---------------------------------------------------------------- base + scale · (x · a) · b

/// `t`'s values, writable: in place when nothing else holds its buffer, else a copy.
fn values_mut(t: &mut FlexTensor) -> &mut [f32] {
    let n = t.layout().num_elements();
    let start = t
        .layout()
        .contiguous_offsets()
        .map_or(0, |(start, _)| start);
    &mut t.storage_mut::<f32>()[start..start + n]
}

/// The forward pass: `h = x · a`, then `base += scale · h · b` in base's own buffer.
fn lora_branch_forward(
    x: &FlexTensor,
    mut base: FlexTensor,
    a: &FlexTensor,
    b: &FlexTensor,
    scale: f64,
) -> (FlexTensor, FlexTensor) {
    let (n, rank) = (dims(x)[0], dims(a)[1]);
    let mut h = vec![0f32; n * rank];
    thin::matmul(data(x), data(a), rank, &mut h);
    thin::low_rank_product(values_mut(&mut base), &h, data(b), rank, scale as f32, true);
    (base, tensor(h, &[n, rank]))
}

/// All four inputs as contiguous f32 flex tensors of matching shapes, or `None`.
fn lora_branch_operands(
    x: FlexTensor,
    base: FlexTensor,
    a: FlexTensor,
    b: FlexTensor,
) -> Option<[FlexTensor; 4]> {
    let ([n, k], [n2, d], [k2, r], [r2, d2]) = (dims2(&x)?, dims2(&base)?, dims2(&a)?, dims2(&b)?);
    if n != n2 || k != k2 || r != r2 || d != d2 || r > thin::THIN_MAX || n == 0 || k == 0 || d == 0
    {
        return None;
    }
    Some([
        contiguous(x)?,
        contiguous(base)?,
        contiguous(a)?,
        contiguous(b)?,
    ])
}

fn dims2(t: &FlexTensor) -> Option<[usize; 2]> {
    dims(t).try_into().ok()
}

/// On flex in f32: `base + scale · (x · a) · b` written over `base`'s buffer, with its own
/// backward pass. The inputs back on any other backend, dtype or shape.
#[allow(clippy::type_complexity)]
pub(crate) fn lora_branch<B: Backend>(
    x: Tensor<B, 2>,
    base: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    scale: f64,
) -> Result<Tensor<B, 2>, [Tensor<B, 2>; 4]> {
    if TypeId::of::<B>() == TypeId::of::<Ad>() {
        let (xs, bases, as_, bs) = (
            ad_primitive(x.clone()),
            ad_primitive(base.clone()),
            ad_primitive(a.clone()),
            ad_primitive(b.clone()),
        );
        let nodes = [
            xs.node.clone(),
            bases.node.clone(),
            as_.node.clone(),
            bs.node.clone(),
        ];
        let Some([xp, basep, ap, bp]) = lora_branch_operands(
            xs.primitive.clone(),
            bases.primitive.clone(),
            as_.primitive.clone(),
            bs.primitive.clone(),
        ) else {
            return Err([x, base, a, b]);
        };
        // Only `basep` may hold base's buffer now, so the forward writes into it in place.
        drop((x, base, a, b, xs, bases, as_, bs));
        let (y, h) = lora_branch_forward(&xp, basep, &ap, &bp, scale);
        let out = match LoraBranchBackward
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xp, h, ap, bp, scale), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Ok(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    if TypeId::of::<B>() == TypeId::of::<Flex>() {
        let Some([xp, basep, ap, bp]) = lora_branch_operands(
            flex_primitive(x.clone()),
            flex_primitive(base.clone()),
            flex_primitive(a.clone()),
            flex_primitive(b.clone()),
        ) else {
            return Err([x, base, a, b]);
        };
        drop((x, base, a, b));
        let (y, _) = lora_branch_forward(&xp, basep, &ap, &bp, scale);
        return Ok(wrap(Tensor::<Flex, 2>::from_primitive(
            TensorPrimitive::Float(y),
        )));
    }
    Err([x, base, a, b])
}

#[derive(Debug)]
struct LoraBranchBackward;

impl Backward<Flex, 4> for LoraBranchBackward {
    /// `x`, `h = x · a`, `a`, `b` and the scale.
    type State = (FlexTensor, FlexTensor, FlexTensor, FlexTensor, f64);

    fn backward(self, ops: Ops<Self::State, 4>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (x, h, a, b, scale) = ops.state;
        let dy = contiguous(grads.consume::<Flex>(&ops.node)).expect("f32 gradient");
        let ([n, k], [rank, d]) = (dims2(&x).expect("2-d"), dims2(&b).expect("2-d"));
        let s = scale as f32;
        let [px, pbase, pa, pb] = ops.parents;
        if let Some(node) = pb {
            // dB = s · hᵀ · dy, summed as (dyᵀ · h)ᵀ.
            let mut db = thin::transpose(&thin::matmul_tn(data(&dy), data(&h), rank, d), d, rank);
            db.iter_mut().for_each(|g| *g *= s);
            grads.register::<Flex>(node.id, tensor(db, &[rank, d]));
        }
        if px.is_some() || pa.is_some() {
            // dh = s · dy · bᵀ; then dA = xᵀ · dh and dx = dh · aᵀ.
            let mut dh = vec![0f32; n * rank];
            thin::matmul(
                data(&dy),
                &thin::transpose(data(&b), rank, d),
                rank,
                &mut dh,
            );
            dh.iter_mut().for_each(|g| *g *= s);
            if let Some(node) = pa {
                grads.register::<Flex>(
                    node.id,
                    tensor(thin::matmul_tn(data(&x), &dh, rank, k), &[k, rank]),
                );
            }
            if let Some(node) = px {
                let mut dx = vec![0f32; n * k];
                thin::low_rank_product(
                    &mut dx,
                    &dh,
                    &thin::transpose(data(&a), k, rank),
                    rank,
                    1.0,
                    false,
                );
                grads.register::<Flex>(node.id, tensor(dx, &[n, k]));
            }
        }
        if let Some(node) = pbase {
            grads.register::<Flex>(node.id, dy);
        }
    }
}

// ---------------------------------------------------------------- rotary embedding

fn rope_apply(y: FlexTensor, cos: &FlexTensor, sin: &FlexTensor, inverse: bool) -> FlexTensor {
    let shape = dims(&y);
    let mut values = data(&y).to_vec();
    host::rope(&mut values, data(cos), data(sin), dims(cos)[1], inverse);
    tensor(values, &shape)
}

/// Shapes are checked by `kernels::rope`.
pub(crate) fn rope<B: Backend>(
    y: &Tensor<B, 2>,
    cos: &Tensor<B, 2>,
    sin: &Tensor<B, 2>,
) -> Option<Tensor<B, 2>> {
    let cast = |t: &Tensor<B, 2>| {
        downcast::<_, Tensor<Ad, 2>>(t.clone())
            .ok()
            .map(|t| t.into_primitive().tensor())
    };
    if let (Some(y), Some(c), Some(s)) = (cast(y), cast(cos), cast(sin)) {
        let (yp, cp, sp) = (
            contiguous(y.primitive)?,
            contiguous(c.primitive)?,
            contiguous(s.primitive)?,
        );
        let out = rope_apply(yp, &cp, &sp, false);
        let out = match RopeBackward
            .prepare::<NoCheckpointing>([y.node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((cp, sp), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        };
        return Some(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    let cast = |t: &Tensor<B, 2>| {
        downcast::<_, Tensor<Flex, 2>>(t.clone())
            .ok()
            .and_then(|t| contiguous(plain(t)))
    };
    if let (Some(y), Some(c), Some(s)) = (cast(y), cast(cos), cast(sin)) {
        return Some(wrap(Tensor::<Flex, 2>::from_primitive(
            TensorPrimitive::Float(rope_apply(y, &c, &s, false)),
        )));
    }
    None
}

#[derive(Debug)]
struct RopeBackward;

impl Backward<Flex, 1> for RopeBackward {
    /// The cos and sin tables.
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (cos, sin) = ops.state;
        let dy = contiguous(grads.consume::<Flex>(&ops.node)).expect("f32 gradient");
        let [py] = ops.parents;
        if let Some(node) = py {
            grads.register::<Flex>(node.id, rope_apply(dy, &cos, &sin, true));
        }
    }
}

// ---------------------------------------------------------------- cross-entropy

/// On `Flex`: the summed NLL, the argmax hits and, with `grad`, the logits' gradient written
/// over the logits' own buffer. Hands the logits back on any other backend or dtype.
#[allow(clippy::type_complexity)]
pub(crate) fn cross_entropy<B: Backend>(
    logits: Tensor<B, 2>,
    targets: &[usize],
    scale: f64,
    grad: bool,
) -> Result<(f64, usize, Option<Tensor<B, 2>>), Tensor<B, 2>> {
    let logits = downcast::<_, Tensor<Flex, 2>>(logits)?;
    let [rows, vocab] = logits.dims();
    if targets.len() != rows || targets.iter().any(|&t| t >= vocab) {
        return Err(wrap(logits));
    }
    let Some(mut t) = contiguous(plain(logits.clone())) else {
        return Err(wrap(logits));
    };
    drop(logits);
    let start = t
        .layout()
        .contiguous_offsets()
        .map_or(0, |(start, _)| start);
    // Unique after the matmul that made it, so this writes in place rather than copying.
    let values = &mut t.storage_mut::<f32>()[start..start + rows * vocab];
    let (nll, correct) = host::cross_entropy(values, vocab, targets, scale as f32, grad);
    let dlogits = grad.then(|| wrap(Tensor::<Flex, 2>::from_primitive(TensorPrimitive::Float(t))));
    Ok((nll, correct, dlogits))
}

// ---------------------------------------------------------------- AdamW

/// On `Flex`: the new weights and moments, updated in place where nothing else holds them;
/// the inputs back on any other backend or dtype.
#[allow(clippy::type_complexity)]
pub(crate) fn adamw<B: Backend>(
    w: Tensor<B, 1>,
    g: &Tensor<B, 1>,
    m: Tensor<B, 1>,
    v: Tensor<B, 1>,
    s: host::AdamWStep,
) -> Result<[Tensor<B, 1>; 3], [Tensor<B, 1>; 3]> {
    let cast = |t: &Tensor<B, 1>| {
        downcast::<_, Tensor<Flex, 1>>(t.clone())
            .ok()
            .and_then(|t| contiguous(plain(t)))
    };
    let (Some(mut wp), Some(gp), Some(mut mp), Some(mut vp)) =
        (cast(&w), cast(g), cast(&m), cast(&v))
    else {
        return Err([w, m, v]);
    };
    // Dropped so that the buffers are unique again and are written in place (copy-on-write
    // otherwise, e.g. when a snapshot still shares the weights).
    drop((w, m, v));
    let n = wp.layout().num_elements();
    let start = |t: &FlexTensor| t.layout().contiguous_offsets().map_or(0, |o| o.0);
    let (wo, mo, vo) = (start(&wp), start(&mp), start(&vp));
    let ws = &mut wp.storage_mut::<f32>()[wo..wo + n];
    host::adamw(
        ws,
        data(&gp),
        &mut mp.storage_mut::<f32>()[mo..mo + n],
        &mut vp.storage_mut::<f32>()[vo..vo + n],
        s,
    );
    let back =
        |t: FlexTensor| wrap::<B, Flex, 1>(Tensor::from_primitive(TensorPrimitive::Float(t)));
    Ok([back(wp), back(mp), back(vp)])
}

/// On `Flex` in f32: `Σ x²` read in place; `None` on any other backend or dtype.
pub(crate) fn sum_squares<B: Backend>(x: &Tensor<B, 1>) -> Option<f64> {
    let t = contiguous(plain(downcast::<_, Tensor<Flex, 1>>(x.clone()).ok()?))?;
    Some(host::sum_squares(data(&t)))
}

// ---------------------------------------------------------------- f32 matmul

/// `t` as a strided f32 matrix, or `None` for another dtype or rank, or a negative stride.
fn strided(t: &FlexTensor) -> Option<host::Strided<'_>> {
    let layout = t.layout();
    let (shape, strides) = (layout.shape(), layout.strides());
    if t.dtype() != DType::F32 || shape.num_dims() != 2 || strides.iter().any(|&s| s < 0) {
        return None;
    }
    Some(host::Strided {
        data: t.storage::<f32>(),
        offset: layout.start_offset(),
        rows: shape[0],
        cols: shape[1],
        row_stride: strides[0] as usize,
        col_stride: strides[1] as usize,
    })
}

/// A gradient as one that [`strided`] reads: flex's own when it already is, else made contiguous.
fn strided_gradient(dy: FlexTensor) -> FlexTensor {
    if strided(&dy).is_some() {
        dy
    } else {
        contiguous(dy).expect("f32 gradient")
    }
}

/// `a · b` as a new flex tensor through [`host::matmul_strided`], or `None` unless both are
/// strided f32 matrices that chain.
fn product(a: host::Strided, b: host::Strided) -> Option<FlexTensor> {
    (a.cols == b.rows).then(|| tensor(host::matmul_strided(a, b), &[a.rows, b.cols]))
}

/// On flex in f32: `a · b` through [`host::matmul_strided`] (transposed views included), with
/// its own backward pass that keeps only what the gradients need (no input for a frozen
/// weight). The inputs back on any other backend or dtype.
pub(crate) fn matmul<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, [Tensor<B, 2>; 2]> {
    if TypeId::of::<B>() == TypeId::of::<Ad>() {
        let (at, bt) = (ad_primitive(a.clone()), ad_primitive(b.clone()));
        let Some(y) = strided(&at.primitive)
            .zip(strided(&bt.primitive))
            .and_then(|(sa, sb)| product(sa, sb))
        else {
            return Err([a, b]);
        };
        let (a_tracked, b_tracked) = (at.is_tracked(), bt.is_tracked());
        let out = match MatmulBackward
            .prepare::<NoCheckpointing>([at.node.clone(), bt.node.clone()])
            .compute_bound()
            .stateful()
        {
            // a's gradient needs b, and b's needs a.
            OpsKind::Tracked(prep) => prep.finish(
                (
                    b_tracked.then(|| at.primitive.clone()),
                    a_tracked.then(|| bt.primitive.clone()),
                ),
                y,
            ),
            OpsKind::UnTracked(prep) => prep.finish(y),
        };
        return Ok(wrap(Tensor::<Ad, 2>::from_primitive(
            TensorPrimitive::Float(out),
        )));
    }
    if TypeId::of::<B>() == TypeId::of::<Flex>() {
        let (ap, bp) = (flex_primitive(a.clone()), flex_primitive(b.clone()));
        return match strided(&ap)
            .zip(strided(&bp))
            .and_then(|(sa, sb)| product(sa, sb))
        {
            Some(y) => Ok(wrap(Tensor::<Flex, 2>::from_primitive(
                TensorPrimitive::Float(y),
            ))),
            None => Err([a, b]),
        };
    }
    Err([a, b])
}

/// On `Flex` in f32: `acc + a · b`, summed into acc's own buffer when nothing else holds it.
/// The inputs back on any other backend (autodiff included) or dtype.
pub(crate) fn matmul_accumulate<B: Backend>(
    acc: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
) -> Result<Tensor<B, 2>, [Tensor<B, 2>; 3]> {
    if TypeId::of::<B>() != TypeId::of::<Flex>() {
        return Err([acc, a, b]);
    }
    let (ap, bp) = (flex_primitive(a.clone()), flex_primitive(b.clone()));
    let (Some(sa), Some(sb), Some(mut out)) = (
        strided(&ap),
        strided(&bp),
        contiguous(flex_primitive(acc.clone())),
    ) else {
        return Err([acc, a, b]);
    };
    if sa.cols != sb.rows || dims(&out) != [sa.rows, sb.cols] {
        return Err([acc, a, b]);
    }
    drop(acc);
    host::matmul_accumulate(values_mut(&mut out), sa, sb);
    Ok(wrap(Tensor::<Flex, 2>::from_primitive(
        TensorPrimitive::Float(out),
    )))
}

#[derive(Debug)]
struct MatmulBackward;

impl Backward<Flex, 2> for MatmulBackward {
    /// `a` when b is tracked, `b` when a is.
    type State = (Option<FlexTensor>, Option<FlexTensor>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let dy = strided_gradient(grads.consume::<Flex>(&ops.node));
        let sdy = strided(&dy).expect("f32 gradient");
        let [pa, pb] = ops.parents;
        if let (Some(node), Some(b)) = (pa, &b) {
            let sb = strided(b).expect("f32 operand");
            grads.register::<Flex>(node.id, product(sdy, sb.t()).expect("dy chains with bᵀ"));
        }
        if let (Some(node), Some(a)) = (pb, &a) {
            let sa = strided(a).expect("f32 operand");
            grads.register::<Flex>(node.id, product(sa.t(), sdy).expect("aᵀ chains with dy"));
        }
    }
}

// ---------------------------------------------------------------- bf16 matmul on AMX

/// Packed bf16 forms of operands, keyed by their buffer's address and their view. Each entry
/// holds a clone of its source tensor: the buffer can then be neither freed (so its address
/// identifies it) nor written in place (flex copies shared buffers on write). Entries whose
/// source nobody else holds any more are dropped on the next insertion; `capacity` bounds
/// the rest, oldest first.
#[cfg(target_arch = "x86_64")]
struct PackCache<T> {
    entries: Vec<(FlexTensor, [usize; 6], std::sync::Arc<T>)>,
    capacity: Option<usize>,
}

#[cfg(target_arch = "x86_64")]
impl<T> PackCache<T> {
    const fn new(capacity: Option<usize>) -> Self {
        Self {
            entries: Vec::new(),
            capacity,
        }
    }

    fn get_or_pack(
        cache: &std::sync::Mutex<Self>,
        source: &FlexTensor,
        view: host::Strided,
        pack: impl FnOnce(host::Strided) -> T,
    ) -> std::sync::Arc<T> {
        let key = [
            view.data.as_ptr() as usize,
            view.offset,
            view.rows,
            view.cols,
            view.row_stride,
            view.col_stride,
        ];
        let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, _, packed)) = cache.entries.iter().find(|(_, k, _)| *k == key) {
            return packed.clone();
        }
        cache.entries.retain(|(source, _, _)| !source.is_unique());
        if cache.capacity.is_some_and(|c| cache.entries.len() >= c) {
            cache.entries.remove(0);
        }
        let packed = std::sync::Arc::new(pack(view));
        cache.entries.push((source.clone(), key, packed.clone()));
        packed
    }
}

/// Frozen right-hand operands (weights): rounded and reordered once rather than in every
/// step's forward and backward passes.
#[cfg(target_arch = "x86_64")]
static PACKED_WEIGHTS: std::sync::Mutex<PackCache<super::amx::PackedB>> =
    std::sync::Mutex::new(PackCache::new(None));

/// The last few left-hand operands, so that an input feeding several products (the hidden
/// states into q, k and v, or into a projection and its LoRA factor) is packed once.
#[cfg(target_arch = "x86_64")]
static PACKED_INPUTS: std::sync::Mutex<PackCache<super::amx::PackedA>> =
    std::sync::Mutex::new(PackCache::new(Some(4)));

#[cfg(target_arch = "x86_64")]
fn packed_weight(t: &FlexTensor, view: host::Strided) -> std::sync::Arc<super::amx::PackedB> {
    PackCache::get_or_pack(&PACKED_WEIGHTS, t, view, super::amx::PackedB::new)
}

#[cfg(target_arch = "x86_64")]
fn packed_input(t: &FlexTensor, view: host::Strided) -> std::sync::Arc<super::amx::PackedA> {
    PackCache::get_or_pack(&PACKED_INPUTS, t, view, super::amx::PackedA::new)
}

/// `a · b` on AMX; `b` is packed through the weight cache when `b_is_frozen`, `a` through
/// the input cache.
#[cfg(target_arch = "x86_64")]
fn amx_matmul(a: &FlexTensor, b: &FlexTensor, b_is_frozen: bool) -> Option<FlexTensor> {
    use super::amx;
    let (sa, sb) = (strided(a)?, strided(b)?);
    if sa.cols != sb.rows {
        return None;
    }
    let pa = packed_input(a, sa);
    let out = if b_is_frozen {
        amx::matmul_packed(&pa, &packed_weight(b, sb))
    } else {
        amx::matmul_packed(&pa, &amx::PackedB::new(sb))
    };
    Some(tensor(out, &[sa.rows, sb.cols]))
}

/// The transpose of a 2-D flex tensor, as a view.
#[cfg(target_arch = "x86_64")]
fn transposed(t: &FlexTensor) -> FlexTensor {
    t.clone().with_layout(t.layout().transpose(0, 1))
}

/// A bf16 matmul on AMX tiles; `None` without AMX (or off x86-64), for other dtypes and
/// backends. Operands keep their layout (transposed views are read in place).
pub(crate) fn matmul_bf16<B: Backend>(a: &Tensor<B, 2>, b: &Tensor<B, 2>) -> Option<Tensor<B, 2>> {
    #[cfg(target_arch = "x86_64")]
    {
        if !super::amx::available() {
            return None;
        }
        if let (Ok(a), Ok(b)) = (
            downcast::<_, Tensor<Ad, 2>>(a.clone()),
            downcast::<_, Tensor<Ad, 2>>(b.clone()),
        ) {
            let (a, b) = (a.into_primitive().tensor(), b.into_primitive().tensor());
            // A weight that does not train (LoRA's base) is packed once and kept.
            let y = amx_matmul(&a.primitive, &b.primitive, b.node.requirement.is_none())?;
            let out = match MatmulBf16Backward
                .prepare::<NoCheckpointing>([a.node, b.node])
                .compute_bound()
                .stateful()
            {
                OpsKind::Tracked(prep) => prep.finish((a.primitive, b.primitive), y),
                OpsKind::UnTracked(prep) => prep.finish(y),
            };
            return Some(wrap(Tensor::<Ad, 2>::from_primitive(
                TensorPrimitive::Float(out),
            )));
        }
        if let (Ok(a), Ok(b)) = (
            downcast::<_, Tensor<Flex, 2>>(a.clone()),
            downcast::<_, Tensor<Flex, 2>>(b.clone()),
        ) {
            // Without autodiff (evaluation, the output head's chunks) the right operand is
            // a weight.
            let y = amx_matmul(&plain(a), &plain(b), true)?;
            return Some(wrap(Tensor::<Flex, 2>::from_primitive(
                TensorPrimitive::Float(y),
            )));
        }
    }
    let _ = (a, b);
    None
}

/// `aᵀ·dy` in bf16 when one side is thin (a low-rank factor's gradient: LoRA's `hᵀ·dy` for
/// B, `xᵀ·dh` for A) without packing the tall operand into tiles; `None` otherwise.
#[cfg(target_arch = "x86_64")]
fn thin_weight_gradient(a: &FlexTensor, dy: &FlexTensor) -> Option<FlexTensor> {
    use super::amx::{THIN_MAX, thin_transposed_matmul};
    let (sa, sd) = (strided(a)?, strided(dy)?);
    if sa.cols <= THIN_MAX {
        return Some(tensor(thin_transposed_matmul(sa, sd)?, &[sa.cols, sd.cols]));
    }
    if sd.cols <= THIN_MAX {
        // (dyᵀ·a)ᵀ: the result is as small as the thin side, so the transpose costs nothing.
        let t = thin_transposed_matmul(sd, sa)?;
        return Some(tensor(
            thin::transpose(&t, sd.cols, sa.cols),
            &[sa.cols, sd.cols],
        ));
    }
    None
}

/// `x · W` (`x · Wᵀ` when `transposed`) for a weight `w()` made on the host for this one
/// product (`shape` row-major), computed by `product` from views of both: `Err(x)` unless `P`
/// is flex's f32 primitive whose columns chain with the weight, and then `w` is never called.
fn host_weight_product<P: 'static>(
    x: P,
    shape: [usize; 2],
    transposed: bool,
    w: impl FnOnce() -> Vec<f32>,
    product: impl FnOnce(&FlexTensor, host::Strided, host::Strided) -> Vec<f32>,
) -> Result<P, P> {
    let back = |t: FlexTensor| {
        downcast::<FlexTensor, P>(t).unwrap_or_else(|_| unreachable!("P is FlexTensor"))
    };
    let x = downcast::<P, FlexTensor>(x)?;
    let Some(sx) = strided(&x) else {
        return Err(back(x));
    };
    let [rows, cols] = shape;
    if sx.cols != if transposed { cols } else { rows } {
        return Err(back(x));
    }
    let values = w();
    let view = host::Strided {
        data: &values,
        offset: 0,
        rows,
        cols,
        row_stride: cols,
        col_stride: 1,
    };
    let view = if transposed { view.t() } else { view };
    let y = product(&x, sx, view);
    Ok(back(tensor(y, &[sx.rows, view.cols])))
}

/// See `kernels::matmul_host_weight`.
pub(crate) fn matmul_host_weight<P: 'static>(
    x: P,
    shape: [usize; 2],
    transposed: bool,
    w: impl FnOnce() -> Vec<f32>,
) -> Result<P, P> {
    // gemm reads the transposed view in place: no transposed copy of the weight is made.
    host_weight_product(x, shape, transposed, w, |_, sx, view| {
        host::matmul_strided(sx, view)
    })
}

/// See `kernels::matmul_bf16_host_weight`.
#[cfg(target_arch = "x86_64")]
pub(crate) fn matmul_bf16_host_weight<P: 'static>(
    x: P,
    shape: [usize; 2],
    transposed: bool,
    w: impl FnOnce() -> Vec<f32>,
) -> Result<P, P> {
    if !super::amx::available() {
        return Err(x);
    }
    // The input goes through the input cache: q, k and v of a quantized layer share it.
    host_weight_product(x, shape, transposed, w, |x, sx, view| {
        super::amx::matmul_packed(&packed_input(x, sx), &super::amx::PackedB::new(view))
    })
}

#[derive(Debug)]
struct MatmulBf16Backward;

#[cfg(target_arch = "x86_64")]
impl Backward<Flex, 2> for MatmulBf16Backward {
    /// Both operands, as they were (views share the buffers).
    type State = (FlexTensor, FlexTensor);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let (a, b) = ops.state;
        let dy = strided_gradient(grads.consume::<Flex>(&ops.node));
        let [pa, pb] = ops.parents;
        // d(a·b) = dy·bᵀ for a and aᵀ·dy for b, both bf16 products as in the forward pass; a
        // frozen b's transpose goes through the weight cache.
        if let Some(node) = pa {
            let da = amx_matmul(&dy, &transposed(&b), pb.is_none()).expect("f32 operands");
            grads.register::<Flex>(node.id, da);
        }
        if let Some(node) = pb {
            let db = thin_weight_gradient(&a, &dy)
                .unwrap_or_else(|| amx_matmul(&transposed(&a), &dy, false).expect("f32 operands"));
            grads.register::<Flex>(node.id, db);
        }
    }
}
