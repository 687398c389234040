//! The fused kernels on host slices: row-major `f32` buffers, rows split across threads with
//! rayon. Each forward has its backward beside it; `kernels::flex` wires them into Burn.
//!
//! One pass over the data per kernel instead of one allocation per composed op is where the
//! time goes on a 2-core CPU: the composed RMSNorm was 7 passes and 6 temporaries.

use rayon::prelude::*;

/// Rows per rayon task: enough work per task that scheduling stays negligible.
const MIN_ROWS: usize = 16;

/// Defines a kernel body compiled three times, for the baseline x86-64 target (SSE2: four
/// lanes), with AVX2 + FMA (eight) and with AVX-512 (sixteen), and picks one at run time by
/// what the CPU has. The crate is built for the baseline, so without this the fused kernels
/// would run 4-wide even on CPUs with 8- or 16-wide vectors. The body and everything it calls
/// must be `#[inline(always)]` for the wider code to reach it.
macro_rules! simd_kernel {
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? { body($($arg),*) }
                match simd_level() {
                    // SAFETY: the CPU has the features each variant is compiled for.
                    SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    SimdLevel::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}

/// The widest vector code [`simd_kernel`]s may run here.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SimdLevel {
    Baseline,
    Avx2,
    Avx512,
}

/// What this CPU allows, unless `RUNNER_SIMD=baseline|avx2` asks for less (to compare them).
pub(crate) fn simd_level() -> SimdLevel {
    static LEVEL: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *LEVEL.get_or_init(|| {
        let cap = match std::env::var("RUNNER_SIMD").as_deref() {
            Ok("baseline") => SimdLevel::Baseline,
            Ok("avx2") => SimdLevel::Avx2,
            _ => SimdLevel::Avx512,
        };
        detected_simd_level().min(cap)
    })
}

fn detected_simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return SimdLevel::Avx512;
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return SimdLevel::Avx2;
        }
    }
    SimdLevel::Baseline
}

/// `e^x` for `f32`, written so that the compiler vectorises loops over it (no libm call, and
/// no `mul_add`, which is a libm call without FMA in the baseline target):
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-7 Taylor polynomial for `e^r` (relative error
/// below 1e-7 on that interval), and `2^n` built from the exponent bits. Inputs below -87
/// (including the mask's -1e9) give exactly 0; inputs above 88 saturate at `f32::MAX`-ish.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // Adding 1.5·2^23 rounds to the nearest integer in the low mantissa bits (SSE2 has no
    // vector round).
    const MAGIC: f32 = 12_582_912.0;
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let mut p = 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    let scale = f32::from_bits(((t.to_bits() as i32 - MAGIC.to_bits() as i32 + 127) as u32) << 23);
    if x < -87.0 { 0.0 } else { p * scale }
}

/// `1 / (1 + e^-x)`.
#[inline(always)]
pub(crate) fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Partial sums kept per lane: a single running sum (or max) is a serial dependency that the
/// compiler must keep in order, so it stays scalar; sixteen independent ones become vector
/// operations.
const LANES: usize = 16;

#[inline(always)]
fn sum(xs: &[f32]) -> f32 {
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    let mut acc = [0f32; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let mut acc = [0f32; LANES];
    for (x, y) in ca.zip(cb) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `Σ a·b·c`.
#[inline(always)]
fn dot3(a: &[f32], b: &[f32], c: &[f32]) -> f32 {
    let (ca, cb, cc) = (
        a.chunks_exact(LANES),
        b.chunks_exact(LANES),
        c.chunks_exact(LANES),
    );
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .zip(cc.remainder())
        .map(|((x, y), z)| x * y * z)
        .sum();
    let mut acc = [0f32; LANES];
    for ((x, y), z) in ca.zip(cb).zip(cc) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i] * z[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// The largest value (NaN-free input assumed; a NaN is skipped, as in `f32::max`).
#[inline(always)]
fn max(xs: &[f32]) -> f32 {
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
    let mut acc = [f32::NEG_INFINITY; LANES];
    for c in chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(tail, |m, &x| if x > m { x } else { m })
}

simd_kernel! {
    /// In place: `row = softmax(scale · row + mask)`.
    fn softmax_row(row: &mut [f32], mask: &[f32], scale: f32) {
        for (p, &m) in row.iter_mut().zip(mask) {
            *p = *p * scale + m;
        }
        let top = max(row);
        row.iter_mut().for_each(|p| *p = exp(*p - top));
        let inv = 1.0 / sum(row);
        row.iter_mut().for_each(|p| *p *= inv);
    }
}

/// RMSNorm of each `d`-wide row: `y = x / sqrt(mean(x²) + eps) · w`. Writes the per-row
/// inverse RMS to `inv_rms` for the backward pass.
pub(crate) fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv_rms: &mut [f32]) {
    let d = w.len();
    y.par_chunks_mut(d)
        .zip(inv_rms.par_iter_mut())
        .zip(x.par_chunks(d))
        .with_min_len(MIN_ROWS)
        .for_each(|((y, inv), x)| *inv = rms_norm_row(x, w, eps, y));
}

simd_kernel! {
    /// One row of [`rms_norm`]; returns its inverse RMS.
    fn rms_norm_row(x: &[f32], w: &[f32], eps: f32, y: &mut [f32]) -> f32 {
        let r = 1.0 / (dot(x, x) / w.len() as f32 + eps).sqrt();
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
        r
    }
}

/// Gradients of [`rms_norm`]: `dx` always; `dw` (summed over rows) when asked for.
/// With `g = dy·w`: `dx = r·g − x·r³·mean(g·x)`, `dw = Σ_rows dy·x·r`.
pub(crate) fn rms_norm_backward(
    x: &[f32],
    w: &[f32],
    inv_rms: &[f32],
    dy: &[f32],
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
) {
    let d = w.len();
    dx.par_chunks_mut(d)
        .zip(x.par_chunks(d))
        .zip(dy.par_chunks(d))
        .zip(inv_rms.par_iter())
        .with_min_len(MIN_ROWS)
        .for_each(|(((dx, x), dy), &r)| rms_norm_backward_row(x, w, r, dy, dx));
    if let Some(dw) = dw {
        let partial = x
            .par_chunks(d)
            .zip(dy.par_chunks(d))
            .zip(inv_rms.par_iter())
            .with_min_len(MIN_ROWS)
            .fold(
                || vec![0f32; d],
                |mut acc, ((x, dy), &r)| {
                    add_scaled_product(&mut acc, x, dy, r);
                    acc
                },
            )
            .reduce(|| vec![0f32; d], add_partials);
        dw.copy_from_slice(&partial);
    }
}

/// Two rayon tasks' partial sums added: the `reduce` of a `fold` into per-task buffers.
pub(super) fn add_partials(mut a: Vec<f32>, b: Vec<f32>) -> Vec<f32> {
    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
    a
}

simd_kernel! {
    /// One row of [`rms_norm_backward`]'s `dx`.
    fn rms_norm_backward_row(x: &[f32], w: &[f32], r: f32, dy: &[f32], dx: &mut [f32]) {
        let c = r * r * r * dot3(x, dy, w) / w.len() as f32;
        for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
            *dx = r * dy * w - c * x;
        }
    }
}

simd_kernel! {
    /// `acc += a·b·r`.
    fn add_scaled_product(acc: &mut [f32], a: &[f32], b: &[f32], r: f32) {
        for ((acc, &a), &b) in acc.iter_mut().zip(a).zip(b) {
            *acc += b * a * r;
        }
    }
}

/// SwiGLU's product: `silu(g) · u`.
pub(crate) fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(4096)
        .zip(g.par_chunks(4096))
        .zip(u.par_chunks(4096))
        .for_each(|((o, g), u)| silu_mul_chunk(g, u, o));
}

simd_kernel! {
    fn silu_mul_chunk(g: &[f32], u: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    }
}

/// Gradients of [`silu_mul`]: `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dy·g·σ(g)`.
pub(crate) fn silu_mul_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dg.par_chunks_mut(4096)
        .zip(du.par_chunks_mut(4096))
        .zip(g.par_chunks(4096))
        .zip(u.par_chunks(4096))
        .zip(dy.par_chunks(4096))
        .for_each(|((((dg, du), g), u), dy)| silu_mul_backward_chunk(g, u, dy, dg, du));
}

simd_kernel! {
    fn silu_mul_backward_chunk(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
        for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
            let s = sigmoid(g);
            *du = dy * g * s;
            *dg = dy * u * s * (1.0 + g * (1.0 - s));
        }
    }
}

/// Softmax of each `width`-wide row of `scale · scores + mask`. The mask has `mask_rows`
/// rows, reused cyclically (row `i` of the scores takes mask row `i % mask_rows`), so one
/// `[t, total]` causal mask serves every batch row and head.
pub(crate) fn masked_softmax(
    scores: &[f32],
    mask: &[f32],
    mask_rows: usize,
    width: usize,
    scale: f32,
    out: &mut [f32],
) {
    out.par_chunks_mut(width)
        .zip(scores.par_chunks(width))
        .enumerate()
        .with_min_len(MIN_ROWS)
        .for_each(|(i, (p, s))| {
            p.copy_from_slice(s);
            softmax_row(p, &mask[(i % mask_rows) * width..][..width], scale);
        });
}

/// Gradient of [`masked_softmax`] with respect to the scores, from its output `p`:
/// `ds = scale · p · (dp − Σ dp·p)`.
pub(crate) fn masked_softmax_backward(
    p: &[f32],
    dp: &[f32],
    width: usize,
    scale: f32,
    ds: &mut [f32],
) {
    ds.par_chunks_mut(width)
        .zip(p.par_chunks(width))
        .zip(dp.par_chunks(width))
        .with_min_len(MIN_ROWS)
        .for_each(|((ds, p), dp)| {
            ds.copy_from_slice(dp);
            softmax_backward_row(ds, p, scale);
        });
}

simd_kernel! {
    /// In place, from `dp` in `ds`: `ds = scale · p · (dp − Σ dp·p)`.
    fn softmax_backward_row(ds: &mut [f32], p: &[f32], scale: f32) {
        let dot = dot(ds, p);
        for (d, &p) in ds.iter_mut().zip(p) {
            *d = scale * p * (*d - dot);
        }
    }
}

/// The shapes of one causal self-attention call: `batch × t` tokens, `heads` query heads of
/// `head_dim` sharing `kv_heads` key/value heads (grouped-query attention), scores scaled by
/// `scale`. Queries are `[batch·t, heads·head_dim]` and keys/values `[batch·t,
/// kv_heads·head_dim]`, the projections' own layouts, so no transposes are needed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AttentionShape {
    pub batch: usize,
    pub t: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
}

impl AttentionShape {
    fn q_width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn kv_width(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// Offsets of the query head `head` of batch row `b` in q, and of its key/value head in k
    /// and v.
    fn offsets(&self, b: usize, head: usize) -> (usize, usize) {
        let kv_head = head / (self.heads / self.kv_heads);
        (
            b * self.t * self.q_width() + head * self.head_dim,
            b * self.t * self.kv_width() + kv_head * self.head_dim,
        )
    }
}

/// A read-only strided matrix: element `(i, j)` is `data[offset + i·row_stride + j·col_stride]`.
#[derive(Clone, Copy)]
pub(crate) struct Strided<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rows: usize,
    pub cols: usize,
    pub row_stride: usize,
    pub col_stride: usize,
}

impl Strided<'_> {
    #[inline(always)]
    pub(super) fn at(&self, i: usize, j: usize) -> f32 {
        self.data[self.offset + i * self.row_stride + j * self.col_stride]
    }

    /// The transpose, as a view.
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    pub(super) fn covers_its_data(&self) -> bool {
        self.rows == 0
            || self.cols == 0
            || self.offset + (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride
                < self.data.len()
    }
}

/// Products at least this large (`m·n·k`) split across threads; smaller ones stay on the
/// calling thread (burn-flex's threshold).
const PARALLEL_PRODUCT: usize = 192 * 192 * 192;

/// `a · b` into a new row-major `[m, n]` buffer that gemm writes once. Burn's flex matmul
/// zero-fills its output, then copies it again into a realigned allocation: two extra passes
/// over every product (and fresh pages to fault in for the copy).
pub(crate) fn matmul_strided(a: Strided, b: Strided) -> Vec<f32> {
    let (m, n) = (a.rows, b.cols);
    if a.cols == 0 || m == 0 || n == 0 {
        assert!(a.cols == b.rows, "bad matmul operands");
        return vec![0f32; m * n];
    }
    let mut out = Vec::<f32>::with_capacity(m * n);
    // SAFETY: `out` has room for `m·n`. Without `accumulate` gemm takes alpha as zero and
    // writes every output element before it reads any (the blocked path accumulates later
    // depth blocks into what the first one wrote), so all `m·n` are set and no uninitialised
    // value is read.
    unsafe {
        gemm_into(out.as_mut_ptr(), a, b, false);
        out.set_len(m * n);
    }
    out
}

/// `dst += a · b`, `dst` row-major `[m, n]`: a gradient summed over chunks in place instead
/// of a new product and an addition per chunk.
pub(crate) fn matmul_accumulate(dst: &mut [f32], a: Strided, b: Strided) {
    assert_eq!(dst.len(), a.rows * b.cols, "bad matmul destination");
    if a.cols > 0 && !dst.is_empty() {
        // SAFETY: `dst` holds the `m·n` output.
        unsafe { gemm_into(dst.as_mut_ptr(), a, b, true) };
    }
}

/// `dst (+)= a · b` through gemm, threaded past [`PARALLEL_PRODUCT`].
///
/// # Safety
/// `dst` must point to `a.rows · b.cols` writable floats, initialised if `accumulate`.
unsafe fn gemm_into(dst: *mut f32, a: Strided, b: Strided, accumulate: bool) {
    assert!(
        a.cols == b.rows && a.covers_its_data() && b.covers_its_data(),
        "bad matmul operands"
    );
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let parallelism = if m * n * k >= PARALLEL_PRODUCT {
        gemm::Parallelism::Rayon(0)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the operands cover the matrices their strides describe (checked above); the
    // caller vouches for `dst`.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst,
            n,
            accumulate,
            a.data.as_ptr().add(a.offset),
            a.row_stride,
            a.col_stride,
            b.data.as_ptr().add(b.offset),
            b.row_stride,
            b.col_stride,
            parallelism,
        );
    }
}

/// A raw pointer that rayon tasks may share: each task writes a region no other task touches.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

/// `dst = (read_dst ? dst : 0) + lhs · rhs` on strided matrices (`*_rs` row stride, `*_cs`
/// column stride), single-threaded: the callers parallelise over heads.
///
/// # Safety
/// The pointers must cover the `m × k`, `k × n` and `m × n` matrices their strides describe.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
) {
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            dst,
            dst_rs,
            read_dst,
            lhs,
            lhs_rs,
            lhs_cs,
            rhs,
            rhs_rs,
            rhs_cs,
            gemm::Parallelism::None,
        )
    }
}

/// The one call into gemm: [`matmul`] with the threading chosen by the caller.
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    read_dst: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    parallelism: gemm::Parallelism,
) {
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            read_dst,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Causal (masked) grouped-query attention: `out = softmax(scale · q·kᵀ + mask) · v` per head.
/// The mask has `mask_rows` rows of width `t`, cycled over the score rows ordered (batch,
/// head, query position). Writes the probabilities, `[batch, heads, t, t]`, to `probs` for the
/// backward pass.
///
/// Query rows go in blocks of [`QUERY_BLOCK`], each against only the keys up to the last one
/// its mask lets through: past it every probability is exactly 0 (the mask's -1e9 underflows
/// `exp`), so a causal mask costs half the products of a full one and changes nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &[f32],
    mask_rows: usize,
    s: AttentionShape,
    out: &mut [f32],
    probs: &mut [f32],
) {
    let (t, hd) = (s.t, s.head_dim);
    assert!(
        q.len() == s.batch * t * s.q_width()
            && k.len() == s.batch * t * s.kv_width()
            && v.len() == k.len()
    );
    assert!(
        out.len() == q.len()
            && probs.len() == s.batch * s.heads * t * t
            && mask.len() == mask_rows * t
    );
    let (qw, kvw) = (s.q_width(), s.kv_width());
    let out_ptr = Shared(out.as_mut_ptr());
    probs.par_chunks_mut(t * t).enumerate().for_each(|(bh, p)| {
        // Binds the whole `Shared` (which is Send), not just its raw-pointer field.
        #[allow(clippy::redundant_locals)]
        let out_ptr = out_ptr;
        let (b, head) = (bh / s.heads, bh % s.heads);
        let (qo, kvo) = s.offsets(b, head);
        let mask_row = |i: usize| &mask[((bh * t + i) % mask_rows) * t..][..t];
        for i0 in (0..t).step_by(QUERY_BLOCK) {
            let rows = QUERY_BLOCK.min(t - i0);
            let keys = (i0..i0 + rows)
                .map(|i| keys_seen(mask_row(i)))
                .max()
                .unwrap_or(t);
            let block = &mut p[i0 * t..(i0 + rows) * t];
            // SAFETY: every slice above holds the strided matrices read here (asserted
            // lengths); this task alone writes head `head` of batch row `b` in `out`.
            unsafe {
                matmul(
                    rows,
                    keys,
                    hd,
                    block.as_mut_ptr(),
                    t,
                    false,
                    q.as_ptr().add(qo + i0 * qw),
                    qw,
                    1,
                    k.as_ptr().add(kvo),
                    1,
                    kvw,
                );
            }
            for (r, row) in block.chunks_mut(t).enumerate() {
                let (seen, unseen) = row.split_at_mut(keys);
                softmax_row(seen, &mask_row(i0 + r)[..keys], s.scale);
                unseen.fill(0.0);
            }
            unsafe {
                matmul(
                    rows,
                    hd,
                    keys,
                    out_ptr.0.add(qo + i0 * qw),
                    qw,
                    false,
                    block.as_ptr(),
                    t,
                    1,
                    v.as_ptr().add(kvo),
                    kvw,
                    1,
                );
            }
        }
    });
}

/// Query rows per block of [`attention`] and its backward pass.
const QUERY_BLOCK: usize = 64;

/// Mask values at or below this make a key's probability exactly 0 (the model's is -1e9).
const MASKED: f32 = -1e8;

/// Keys a query row attends to: up to the last one its mask lets through, or all of them
/// when it lets none through (the softmax is then uniform, as the composed ops give).
fn keys_seen(mask_row: &[f32]) -> usize {
    mask_row
        .iter()
        .rposition(|&m| m > MASKED)
        .map_or(mask_row.len(), |j| j + 1)
}

/// Gradients of [`attention`] with respect to q, k and v, from the saved probabilities and
/// the output gradient `d_out`. Tasks run per (batch row, key/value head), so the query heads
/// that share a key/value head add into its gradients one after another. Each block of query
/// rows stops at its last non-zero probability: the keys past it add exactly nothing.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    d_out: &[f32],
    s: AttentionShape,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let (t, hd) = (s.t, s.head_dim);
    let rep = s.heads / s.kv_heads;
    assert!(
        q.len() == s.batch * t * s.q_width()
            && k.len() == s.batch * t * s.kv_width()
            && v.len() == k.len()
    );
    assert!(
        d_out.len() == q.len()
            && dq.len() == q.len()
            && dk.len() == k.len()
            && dv.len() == k.len()
            && probs.len() == s.batch * s.heads * t * t
    );
    let (qw, kvw) = (s.q_width(), s.kv_width());
    let (dq_ptr, dk_ptr, dv_ptr) = (
        Shared(dq.as_mut_ptr()),
        Shared(dk.as_mut_ptr()),
        Shared(dv.as_mut_ptr()),
    );
    (0..s.batch * s.kv_heads).into_par_iter().for_each(|g| {
        let (dq_ptr, dk_ptr, dv_ptr) = (dq_ptr, dk_ptr, dv_ptr);
        let (b, kv_head) = (g / s.kv_heads, g % s.kv_heads);
        let kvo = s.offsets(b, kv_head * rep).1;
        // SAFETY (all blocks below): lengths asserted above; this task alone writes query
        // heads kv_head·rep.. of batch row b in dq and key/value head kv_head of b in dk, dv.
        unsafe {
            for r in 0..t {
                std::slice::from_raw_parts_mut(dk_ptr.0.add(kvo + r * kvw), hd).fill(0.0);
                std::slice::from_raw_parts_mut(dv_ptr.0.add(kvo + r * kvw), hd).fill(0.0);
            }
        }
        let mut ds = vec![0f32; QUERY_BLOCK * t];
        for head in kv_head * rep..(kv_head + 1) * rep {
            let qo = s.offsets(b, head).0;
            let p_head = &probs[(b * s.heads + head) * t * t..][..t * t];
            for i0 in (0..t).step_by(QUERY_BLOCK) {
                let rows = QUERY_BLOCK.min(t - i0);
                let p = &p_head[i0 * t..(i0 + rows) * t];
                let keys = p
                    .chunks(t)
                    .map(|row| row.iter().rposition(|&x| x != 0.0).map_or(0, |j| j + 1))
                    .max()
                    .unwrap_or(0)
                    .max(1);
                let d_o = unsafe { d_out.as_ptr().add(qo + i0 * qw) };
                unsafe {
                    // dv += pᵀ · d_out
                    matmul(
                        keys,
                        hd,
                        rows,
                        dv_ptr.0.add(kvo),
                        kvw,
                        true,
                        p.as_ptr(),
                        1,
                        t,
                        d_o,
                        qw,
                        1,
                    );
                    // dp = d_out · vᵀ
                    matmul(
                        rows,
                        keys,
                        hd,
                        ds.as_mut_ptr(),
                        t,
                        false,
                        d_o,
                        qw,
                        1,
                        v.as_ptr().add(kvo),
                        1,
                        kvw,
                    );
                }
                // ds = scale · p ⊙ (dp − rowsum(dp ⊙ p))
                for (ds, p) in ds.chunks_mut(t).zip(p.chunks(t)) {
                    softmax_backward_row(&mut ds[..keys], &p[..keys], s.scale);
                }
                unsafe {
                    // dq = ds · k
                    matmul(
                        rows,
                        hd,
                        keys,
                        dq_ptr.0.add(qo + i0 * qw),
                        qw,
                        false,
                        ds.as_ptr(),
                        t,
                        1,
                        k.as_ptr().add(kvo),
                        kvw,
                        1,
                    );
                    // dk += dsᵀ · q
                    matmul(
                        keys,
                        hd,
                        rows,
                        dk_ptr.0.add(kvo),
                        kvw,
                        true,
                        ds.as_ptr(),
                        1,
                        t,
                        q.as_ptr().add(qo + i0 * qw),
                        qw,
                        1,
                    );
                }
            }
        }
    });
}

/// Rotary position embedding in the rotate-half layout, in place: every `head_dim` slice of a
/// row of `y` is rotated by that row's angles (`cos`, `sin`: one `head_dim` row per row of
/// `y`). With `inverse`, applies the transpose instead (the backward pass).
pub(crate) fn rope(y: &mut [f32], cos: &[f32], sin: &[f32], head_dim: usize, inverse: bool) {
    let rows = cos.len() / head_dim;
    if rows == 0 {
        return;
    }
    let width = y.len() / rows;
    y.par_chunks_mut(width)
        .zip(cos.par_chunks(head_dim))
        .zip(sin.par_chunks(head_dim))
        .with_min_len(MIN_ROWS)
        .for_each(|((row, c), s)| rope_row(row, c, s, inverse));
}

simd_kernel! {
    /// One row of [`rope`]: every `head_dim` (= `cos.len()`) slice of `row` rotated.
    fn rope_row(row: &mut [f32], c: &[f32], s: &[f32], inverse: bool) {
        let half = c.len() / 2;
        let (c1, c2) = c.split_at(half);
        let (s1, s2) = s.split_at(half);
        for head in row.chunks_mut(c.len()) {
            let (x1, x2) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                if inverse {
                    x1[j] = a * c1[j] + b * s2[j];
                    x2[j] = b * c2[j] - a * s1[j];
                } else {
                    x1[j] = a * c1[j] - b * s1[j];
                    x2[j] = b * c2[j] + a * s2[j];
                }
            }
        }
    }
}

/// Cross-entropy of each `vocab`-wide row of logits against its target, in place: returns
/// the summed negative log-likelihood and how many rows' most likely token (lowest id on
/// ties, as `torch.argmax`) is the target. With `grad`, each row is overwritten by
/// `scale · (softmax − onehot(target))`, the gradient of `scale · nll`; without, the rows are
/// left as scratch. Every target must be below `vocab`.
pub(crate) fn cross_entropy(
    logits: &mut [f32],
    vocab: usize,
    targets: &[usize],
    scale: f32,
    grad: bool,
) -> (f64, usize) {
    logits
        .par_chunks_mut(vocab)
        .zip(targets.par_iter())
        .map(|(row, &target)| cross_entropy_row(row, target, scale, grad))
        .reduce(|| (0.0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
}

simd_kernel! {
    /// One row of [`cross_entropy`]: its negative log-likelihood and whether its argmax is
    /// the target.
    fn cross_entropy_row(row: &mut [f32], target: usize, scale: f32, grad: bool) -> (f64, usize) {
        let top = max(row);
        let arg = row.iter().position(|&x| x == top).unwrap_or(0);
        let picked = row[target];
        row.iter_mut().for_each(|x| *x = exp(*x - top));
        let total = sum(row);
        let nll = (total.ln() + top - picked) as f64;
        if grad {
            let k = scale / total;
            row.iter_mut().for_each(|x| *x *= k);
            row[target] -= scale;
        }
        (nll, usize::from(arg == target))
    }
}

/// One AdamW step's constants (PyTorch's `torch.optim.AdamW` update), derived in f64.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AdamWStep {
    pub(super) beta1: f32,
    pub(super) one_minus_beta1: f32,
    pub(super) beta2: f32,
    pub(super) one_minus_beta2: f32,
    /// `1 − lr·weight_decay`.
    pub(super) decay: f32,
    /// `√(1 − β₂ᵗ)`.
    pub(super) sqrt_bias_correction2: f32,
    /// `lr / (1 − β₁ᵗ)`.
    pub(super) step_size: f32,
    pub(super) eps: f32,
    /// What each gradient is multiplied by first (clipping, loss-scale removal): folded into
    /// the update so that a scaled gradient is never a whole-tensor temporary.
    pub(super) grad_scale: f32,
}

impl AdamWStep {
    /// The constants of step `t` (counted from 1).
    pub(crate) fn new(
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        t: i32,
    ) -> Self {
        Self {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            decay: (1.0 - lr * weight_decay) as f32,
            sqrt_bias_correction2: (1.0 - beta2.powi(t)).sqrt() as f32,
            step_size: (lr / (1.0 - beta1.powi(t))) as f32,
            eps: eps as f32,
            grad_scale: 1.0,
        }
    }

    /// The same step on gradients multiplied by `scale` first.
    pub(crate) fn with_grad_scale(self, scale: f64) -> Self {
        Self {
            grad_scale: scale as f32,
            ..self
        }
    }
}

/// AdamW on flat buffers, in place: the weights `w` and the moments `m`, `v`, in one pass
/// instead of a dozen whole-tensor temporaries.
pub(crate) fn adamw(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
    const CHUNK: usize = 1 << 14;
    w.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((w, g), m), v)| adamw_chunk(w, g, m, v, s));
}

simd_kernel! {
    fn adamw_chunk(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamWStep) {
        for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * s.grad_scale;
            *m = *m * s.beta1 + g * s.one_minus_beta1;
            *v = *v * s.beta2 + g * g * s.one_minus_beta2;
            let denom = v.sqrt() / s.sqrt_bias_correction2 + s.eps;
            *w = *w * s.decay - *m / denom * s.step_size;
        }
    }
}

/// `Σ x²` in f64: f32 sums over [`LANES`] lanes within chunks of 16 Ki values (exact enough
/// for a gradient norm, and vectorised), the chunks' sums added in f64, in parallel.
pub(crate) fn sum_squares(xs: &[f32]) -> f64 {
    const CHUNK: usize = 1 << 14;
    xs.par_chunks(CHUNK)
        .map(|c| sum_squares_chunk(c) as f64)
        .sum()
}

simd_kernel! {
    fn sum_squares_chunk(xs: &[f32]) -> f32 {
        dot(xs, xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "at {i}: {x} vs {y}");
        }
    }

    #[test]
    fn exp_matches_std_over_the_whole_range() {
        let mut worst = 0f32;
        let mut x = -87.0f32;
        while x < 88.0 {
            let (a, b) = (exp(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp(-1e9), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    /// Central differences of a scalar function of `x`, for checking hand-written backwards.
    fn numeric_grad(x: &[f32], f: impl Fn(&[f32]) -> f64) -> Vec<f32> {
        let mut x = x.to_vec();
        (0..x.len())
            .map(|i| {
                let h = 1e-2f32;
                let v = x[i];
                x[i] = v + h;
                let up = f(&x);
                x[i] = v - h;
                let down = f(&x);
                x[i] = v;
                ((up - down) / (2.0 * h as f64)) as f32
            })
            .collect()
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32
                    / 16_777_216.0)
                    * 2.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn cross_entropy_gives_the_loss_the_argmax_and_the_gradient() {
        let (vocab, scale) = (7, 0.25);
        let rows = [
            values(vocab, 9)
                .iter()
                .map(|v| v * 6.0)
                .collect::<Vec<f32>>(),
            vec![1.0, 3.0, 3.0, 0.0, -2.0, 1.0, 0.5],
        ];
        for (row, target) in rows.iter().zip([4usize, 2]) {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
            let lse = row
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
                + max;
            let mut grad = row.clone();
            let (nll, correct) = cross_entropy(&mut grad, vocab, &[target], scale, true);
            assert!((nll - (lse - row[target] as f64)).abs() < 1e-5, "{nll}");
            // Ties go to the lowest id: row 2's maximum 3.0 sits at ids 1 and 2.
            let argmax = row
                .iter()
                .enumerate()
                .fold(0, |a, (j, &x)| if x > row[a] { j } else { a });
            assert_eq!(correct, usize::from(argmax == target));
            for (j, g) in grad.iter().enumerate() {
                let expected = scale as f64
                    * (((row[j] as f64) - lse).exp() - f64::from(u8::from(j == target)));
                assert!(
                    (*g as f64 - expected).abs() < 1e-6,
                    "{j}: {g} vs {expected}"
                );
            }
        }
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let (n, d, eps) = (3, 8, 1e-5);
        let (x, w, dy) = (values(n * d, 1), values(d, 2), values(n * d, 3));
        let loss = |x: &[f32], w: &[f32]| {
            let (mut y, mut inv) = (vec![0.0; n * d], vec![0.0; n]);
            rms_norm(x, w, eps, &mut y, &mut inv);
            y.iter()
                .zip(&dy)
                .map(|(y, g)| (*y as f64) * (*g as f64))
                .sum::<f64>()
        };
        let (mut y, mut inv) = (vec![0.0; n * d], vec![0.0; n]);
        rms_norm(&x, &w, eps, &mut y, &mut inv);
        let (mut dx, mut dw) = (vec![0.0; n * d], vec![0.0; d]);
        rms_norm_backward(&x, &w, &inv, &dy, &mut dx, Some(&mut dw));
        close(&dx, &numeric_grad(&x, |x| loss(x, &w)), 2e-3);
        close(&dw, &numeric_grad(&w, |w| loss(&x, w)), 2e-3);
    }

    #[test]
    fn silu_mul_backward_matches_finite_differences() {
        let n = 40;
        let (g, u, dy) = (
            values(n, 4).iter().map(|v| v * 4.0).collect::<Vec<_>>(),
            values(n, 5),
            values(n, 6),
        );
        let loss = |g: &[f32], u: &[f32]| {
            let mut o = vec![0.0; n];
            silu_mul(g, u, &mut o);
            o.iter()
                .zip(&dy)
                .map(|(o, d)| (*o as f64) * (*d as f64))
                .sum::<f64>()
        };
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        silu_mul_backward(&g, &u, &dy, &mut dg, &mut du);
        close(&dg, &numeric_grad(&g, |g| loss(g, &u)), 2e-3);
        close(&du, &numeric_grad(&u, |u| loss(&g, u)), 2e-3);
    }

    #[test]
    fn masked_softmax_is_a_distribution_that_respects_the_mask_and_its_backward_is_right() {
        let (rows, width, scale) = (6, 5, 0.7);
        // Two mask rows, cycled: the second hides the last two columns.
        let mut mask = vec![0f32; 2 * width];
        mask[width + 3] = -1e9;
        mask[width + 4] = -1e9;
        let (s, dp) = (
            values(rows * width, 7)
                .iter()
                .map(|v| v * 5.0)
                .collect::<Vec<_>>(),
            values(rows * width, 8),
        );
        let mut p = vec![0.0; rows * width];
        masked_softmax(&s, &mask, 2, width, scale, &mut p);
        for (i, row) in p.chunks(width).enumerate() {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            if i % 2 == 1 {
                assert_eq!((row[3], row[4]), (0.0, 0.0));
            }
        }
        let loss = |s: &[f32]| {
            let mut p = vec![0.0; rows * width];
            masked_softmax(s, &mask, 2, width, scale, &mut p);
            p.iter()
                .zip(&dp)
                .map(|(p, d)| (*p as f64) * (*d as f64))
                .sum::<f64>()
        };
        let mut ds = vec![0.0; rows * width];
        masked_softmax_backward(&p, &dp, width, scale, &mut ds);
        close(&ds, &numeric_grad(&s, loss), 2e-3);
    }
}
