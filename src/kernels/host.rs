//! The fused kernels on host slices: row-major `f32` buffers, rows split across threads with
//! rayon. Each forward has its backward beside it; `kernels::flex` wires them into Burn.
//!
//! One pass over the data per kernel instead of one allocation per composed op is where the
//! time goes on a 2-core CPU: the composed RMSNorm was 7 passes and 6 temporaries.

use rayon::prelude::*;

/// Rows per rayon task: enough work per task that scheduling stays negligible.
const MIN_ROWS: usize = 16;

/// `e^x` for `f32`, written so that the compiler vectorises loops over it (no libm call, and
/// no `mul_add`, which is a libm call without FMA in the baseline target):
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`, a degree-7 Taylor polynomial for `e^r` (relative error
/// below 1e-7 on that interval), and `2^n` built from the exponent bits. Inputs below -87
/// (including the mask's -1e9) give exactly 0; inputs above 88 saturate at `f32::MAX`-ish.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
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
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// RMSNorm of each `d`-wide row: `y = x / sqrt(mean(x²) + eps) · w`. Writes the per-row
/// inverse RMS to `inv_rms` for the backward pass.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, y: &mut [f32], inv_rms: &mut [f32]) {
    let d = w.len();
    y.par_chunks_mut(d).zip(inv_rms.par_iter_mut()).zip(x.par_chunks(d)).with_min_len(MIN_ROWS).for_each(|((y, inv), x)| {
        let ss: f32 = x.iter().map(|v| v * v).sum();
        let r = 1.0 / (ss / d as f32 + eps).sqrt();
        *inv = r;
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = x * r * w;
        }
    });
}

/// Gradients of [`rms_norm`]: `dx` always; `dw` (summed over rows) when asked for.
/// With `g = dy·w`: `dx = r·g − x·r³·mean(g·x)`, `dw = Σ_rows dy·x·r`.
pub fn rms_norm_backward(x: &[f32], w: &[f32], inv_rms: &[f32], dy: &[f32], dx: &mut [f32], dw: Option<&mut [f32]>) {
    let d = w.len();
    dx.par_chunks_mut(d).zip(x.par_chunks(d)).zip(dy.par_chunks(d)).zip(inv_rms.par_iter()).with_min_len(MIN_ROWS).for_each(|(((dx, x), dy), &r)| {
        let dot: f32 = x.iter().zip(dy).zip(w).map(|((x, dy), w)| dy * w * x).sum();
        let c = r * r * r * dot / d as f32;
        for (((dx, &x), &dy), &w) in dx.iter_mut().zip(x).zip(dy).zip(w) {
            *dx = r * dy * w - c * x;
        }
    });
    if let Some(dw) = dw {
        let partial = x
            .par_chunks(d)
            .zip(dy.par_chunks(d))
            .zip(inv_rms.par_iter())
            .with_min_len(MIN_ROWS)
            .fold(
                || vec![0f32; d],
                |mut acc, ((x, dy), &r)| {
                    for ((a, &x), &dy) in acc.iter_mut().zip(x).zip(dy) {
                        *a += dy * x * r;
                    }
                    acc
                },
            )
            .reduce(
                || vec![0f32; d],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(a, b)| *a += b);
                    a
                },
            );
        dw.copy_from_slice(&partial);
    }
}

/// SwiGLU's product: `silu(g) · u`.
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    out.par_chunks_mut(4096).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).for_each(|((o, g), u)| {
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g * sigmoid(g) * u;
        }
    });
}

/// Gradients of [`silu_mul`]: `dg = dy·u·σ(g)·(1 + g·(1 − σ(g)))`, `du = dy·g·σ(g)`.
pub fn silu_mul_backward(g: &[f32], u: &[f32], dy: &[f32], dg: &mut [f32], du: &mut [f32]) {
    dg.par_chunks_mut(4096).zip(du.par_chunks_mut(4096)).zip(g.par_chunks(4096)).zip(u.par_chunks(4096)).zip(dy.par_chunks(4096)).for_each(
        |((((dg, du), g), u), dy)| {
            for ((((dg, du), &g), &u), &dy) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(dy) {
                let s = sigmoid(g);
                *du = dy * g * s;
                *dg = dy * u * s * (1.0 + g * (1.0 - s));
            }
        },
    );
}

/// Softmax of each `width`-wide row of `scale · scores + mask`. The mask has `mask_rows`
/// rows, reused cyclically (row `i` of the scores takes mask row `i % mask_rows`), so one
/// `[t, total]` causal mask serves every batch row and head.
pub fn masked_softmax(scores: &[f32], mask: &[f32], mask_rows: usize, width: usize, scale: f32, out: &mut [f32]) {
    out.par_chunks_mut(width).zip(scores.par_chunks(width)).enumerate().with_min_len(MIN_ROWS).for_each(|(i, (p, s))| {
        let m = &mask[(i % mask_rows) * width..][..width];
        let mut max = f32::NEG_INFINITY;
        for ((p, &s), &m) in p.iter_mut().zip(s).zip(m) {
            *p = s * scale + m;
            max = max.max(*p);
        }
        let mut sum = 0.0;
        for p in p.iter_mut() {
            *p = exp(*p - max);
            sum += *p;
        }
        let inv = 1.0 / sum;
        p.iter_mut().for_each(|p| *p *= inv);
    });
}

/// Gradient of [`masked_softmax`] with respect to the scores, from its output `p`:
/// `ds = scale · p · (dp − Σ dp·p)`.
pub fn masked_softmax_backward(p: &[f32], dp: &[f32], width: usize, scale: f32, ds: &mut [f32]) {
    ds.par_chunks_mut(width).zip(p.par_chunks(width)).zip(dp.par_chunks(width)).with_min_len(MIN_ROWS).for_each(|((ds, p), dp)| {
        let dot: f32 = p.iter().zip(dp).map(|(p, dp)| p * dp).sum();
        for ((ds, &p), &dp) in ds.iter_mut().zip(p).zip(dp) {
            *ds = scale * p * (dp - dot);
        }
    });
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
        (0..n).map(|i| (((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8) as f32 / 16_777_216.0) * 2.0 - 1.0).collect()
    }

    #[test]
    fn rms_norm_backward_matches_finite_differences() {
        let (n, d, eps) = (3, 8, 1e-5);
        let (x, w, dy) = (values(n * d, 1), values(d, 2), values(n * d, 3));
        let loss = |x: &[f32], w: &[f32]| {
            let (mut y, mut inv) = (vec![0.0; n * d], vec![0.0; n]);
            rms_norm(x, w, eps, &mut y, &mut inv);
            y.iter().zip(&dy).map(|(y, g)| (*y as f64) * (*g as f64)).sum::<f64>()
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
        let (g, u, dy) = (values(n, 4).iter().map(|v| v * 4.0).collect::<Vec<_>>(), values(n, 5), values(n, 6));
        let loss = |g: &[f32], u: &[f32]| {
            let mut o = vec![0.0; n];
            silu_mul(g, u, &mut o);
            o.iter().zip(&dy).map(|(o, d)| (*o as f64) * (*d as f64)).sum::<f64>()
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
        let (s, dp) = (values(rows * width, 7).iter().map(|v| v * 5.0).collect::<Vec<_>>(), values(rows * width, 8));
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
            p.iter().zip(&dp).map(|(p, d)| (*p as f64) * (*d as f64)).sum::<f64>()
        };
        let mut ds = vec![0.0; rows * width];
        masked_softmax_backward(&p, &dp, width, scale, &mut ds);
        close(&ds, &numeric_grad(&s, loss), 2e-3);
    }
}
