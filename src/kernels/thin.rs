//! Products with one thin side — LoRA's rank, at most [`THIN_MAX`] — on host slices:
//! the down projection `x · a`, its weight gradient `xᵀ · dh`, and the up projection added
//! into the base output. A blocked gemm packs all of the wide operand for such a product
//! and runs its microkernel mostly empty; these make one pass over the wide side instead.
//!
//! On x86-64 with AVX2 + FMA the row loops are written with intrinsics: left to itself the
//! compiler vectorized them across the long dimension, gathering the thin one lane by lane.
//! The portable loops serve other CPUs (and `RUNNER_SIMD=baseline`).

use rayon::prelude::*;

use super::host::{SimdLevel, add_partials, simd_level};

/// Widest rank these kernels take: a thin row is held in at most two 8-lane vectors.
pub(crate) const THIN_MAX: usize = 16;

/// Rows per rayon task: the per-task `[k, width]` partial sums of [`matmul_tn`] stay few.
const TASK_ROWS: usize = 128;

/// The padded width of a thin row: one 8-lane vector up to rank 8, two up to 16.
fn width(rank: usize) -> usize {
    assert!(
        (1..=THIN_MAX).contains(&rank),
        "thin rank {rank} outside 1..={THIN_MAX}"
    );
    if rank <= 8 { 8 } else { 16 }
}

/// `w` (`[k, r]`) with zero columns appended up to `width`.
fn pad_columns(w: &[f32], rank: usize, width: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len() / rank * width];
    out.chunks_exact_mut(width)
        .zip(w.chunks_exact(rank))
        .for_each(|(o, w)| o[..rank].copy_from_slice(w));
    out
}

fn avx2() -> bool {
    cfg!(target_arch = "x86_64") && simd_level() >= SimdLevel::Avx2
}

/// `out = x · w` for `x` `[n, k]` and a thin `w` (`[k, r]`): four rows of `x` at a time
/// against each row of `w`, held as one or two vectors.
pub(crate) fn matmul(x: &[f32], w: &[f32], rank: usize, out: &mut [f32]) {
    let wd = width(rank);
    assert!(w.len().is_multiple_of(rank));
    let k = w.len() / rank;
    assert!(k > 0 && x.len().is_multiple_of(k) && x.len() / k * rank == out.len());
    let w = pad_columns(w, rank, wd);
    x.par_chunks(TASK_ROWS * k)
        .zip(out.par_chunks_mut(TASK_ROWS * rank))
        .for_each(|(x, out)| {
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU has AVX2 and FMA; the lengths were checked above.
                return unsafe {
                    if wd == 8 {
                        x86::matmul_rows::<1>(x, &w, k, rank, out)
                    } else {
                        x86::matmul_rows::<2>(x, &w, k, rank, out)
                    }
                };
            }
            for (x, out) in x.chunks_exact(k).zip(out.chunks_exact_mut(rank)) {
                let mut acc = [0f32; THIN_MAX];
                for (w, &a) in w.chunks_exact(wd).zip(x) {
                    acc.iter_mut().zip(w).for_each(|(acc, &w)| *acc += a * w);
                }
                out.copy_from_slice(&acc[..rank]);
            }
        });
}

/// `xᵀ · h` (`[k, r]`) for `x` `[n, k]` and a thin `h` `[n, r]`: a thin product's weight
/// gradient. Each task sums its rows' outer products into its own `[k, width]` buffer,
/// four rows per pass over it.
pub(crate) fn matmul_tn(x: &[f32], h: &[f32], rank: usize, k: usize) -> Vec<f32> {
    let wd = width(rank);
    assert!(k > 0 && x.len().is_multiple_of(k) && x.len() / k * rank == h.len());
    let sums = x
        .par_chunks(TASK_ROWS * k)
        .zip(h.par_chunks(TASK_ROWS * rank))
        .fold(
            || vec![0f32; k * wd],
            |mut acc, (x, h)| {
                let h = pad_columns(h, rank, wd);
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    // SAFETY: the CPU has AVX2 and FMA; `x` has as many rows as `h`.
                    unsafe {
                        if wd == 8 {
                            x86::matmul_tn_rows::<1>(x, &h, k, &mut acc)
                        } else {
                            x86::matmul_tn_rows::<2>(x, &h, k, &mut acc)
                        }
                    }
                    return acc;
                }
                for (x, h) in x.chunks_exact(k).zip(h.chunks_exact(wd)) {
                    for (acc, &a) in acc.chunks_exact_mut(wd).zip(x) {
                        acc.iter_mut().zip(h).for_each(|(acc, &h)| *acc += a * h);
                    }
                }
                acc
            },
        )
        .reduce(|| vec![0f32; k * wd], add_partials);
    sums.chunks_exact(wd)
        .flat_map(|row| &row[..rank])
        .copied()
        .collect()
}

/// `y = scale · h · b`, or `y += scale · h · b` with `accumulate`, for a thin `h` (`[n, r]`)
/// and `b` (`[r, d]`): LoRA's up projection added into the base output (and the input
/// gradient through the down projection) in one pass over `y`. Composed, it is a product
/// with `k = r` (a poor shape for a blocked kernel), a scaling and an addition, each a full
/// `[n, d]` temporary.
pub(crate) fn low_rank_product(
    y: &mut [f32],
    h: &[f32],
    b: &[f32],
    rank: usize,
    scale: f32,
    accumulate: bool,
) {
    width(rank);
    assert!(b.len().is_multiple_of(rank));
    let d = b.len() / rank;
    assert!(d > 0 && h.len() * d == y.len() * rank);
    y.par_chunks_mut(16 * d)
        .zip(h.par_chunks(16 * rank))
        .for_each(|(y, h)| {
            #[cfg(target_arch = "x86_64")]
            if avx2() {
                // SAFETY: the CPU has AVX2 and FMA; the lengths were checked above.
                return unsafe { x86::low_rank_rows(y, h, b, rank, d, scale, accumulate) };
            }
            for (y, h) in y.chunks_exact_mut(d).zip(h.chunks_exact(rank)) {
                if !accumulate {
                    y.fill(0.0);
                }
                for (&h, b) in h.iter().zip(b.chunks_exact(d)) {
                    let c = scale * h;
                    y.iter_mut().zip(b).for_each(|(y, &b)| *y += c * b);
                }
            }
        });
}

/// Row-major `[rows, cols]` → `[cols, rows]`: a LoRA's small factors, and weights stored in
/// PyTorch's `[out, in]` layout.
pub(crate) fn transpose(x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(x.len(), rows * cols);
    let mut out = vec![0f32; x.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = x[r * cols + c];
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// `V` vectors of 8 lanes: a thin row padded to `8 · V`.
    type Row<const V: usize> = [__m256; V];

    #[inline(always)]
    unsafe fn load<const V: usize>(p: *const f32) -> Row<V> {
        let mut row = [unsafe { _mm256_setzero_ps() }; V];
        for (v, r) in row.iter_mut().enumerate() {
            // SAFETY: the caller guarantees `8 · V` readable floats at `p`.
            *r = unsafe { _mm256_loadu_ps(p.add(8 * v)) };
        }
        row
    }

    #[inline(always)]
    unsafe fn store<const V: usize>(row: &Row<V>, p: *mut f32) {
        for (v, r) in row.iter().enumerate() {
            // SAFETY: the caller guarantees `8 · V` writable floats at `p`.
            unsafe { _mm256_storeu_ps(p.add(8 * v), *r) };
        }
    }

    /// `acc += a · w`, lane by lane.
    #[inline(always)]
    fn fma<const V: usize>(acc: &mut Row<V>, a: __m256, w: &Row<V>) {
        for (acc, w) in acc.iter_mut().zip(w) {
            // SAFETY: only reached from `avx2,fma` functions below.
            *acc = unsafe { _mm256_fmadd_ps(a, *w, *acc) };
        }
    }

    /// The first `out.len()` lanes of `row` into `out`.
    #[inline(always)]
    unsafe fn store_first<const V: usize>(row: &Row<V>, out: &mut [f32]) {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 ≥ 8 · V floats.
        unsafe { store(row, lanes.as_mut_ptr()) };
        out.copy_from_slice(&lanes[..out.len()]);
    }

    /// Rows of `out = x · w`; `w` is `[k, 8 · V]`, `x` `[n, k]`, `out` `[n, rank]`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn matmul_rows<const V: usize>(
        x: &[f32],
        w: &[f32],
        k: usize,
        rank: usize,
        out: &mut [f32],
    ) {
        let n = out.len() / rank;
        assert!(x.len() == n * k && w.len() == k * 8 * V && rank <= 8 * V);
        let (xp, wp) = (x.as_ptr(), w.as_ptr());
        let mut i = 0;
        while i + 4 <= n {
            let mut acc = [[_mm256_setzero_ps(); V]; 4];
            for kk in 0..k {
                // SAFETY: kk < k and rows i..i+4 < n, within the lengths asserted above.
                unsafe {
                    let wr = load::<V>(wp.add(kk * 8 * V));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        fma(acc, _mm256_broadcast_ss(&*xp.add((i + r) * k + kk)), &wr);
                    }
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                // SAFETY: `rank ≤ 8 · V`.
                unsafe { store_first(acc, &mut out[(i + r) * rank..(i + r + 1) * rank]) };
            }
            i += 4;
        }
        for i in i..n {
            let mut acc = [_mm256_setzero_ps(); V];
            for kk in 0..k {
                // SAFETY: as above, for one row.
                unsafe {
                    fma(
                        &mut acc,
                        _mm256_broadcast_ss(&*xp.add(i * k + kk)),
                        &load::<V>(wp.add(kk * 8 * V)),
                    )
                };
            }
            // SAFETY: `rank ≤ 8 · V`.
            unsafe { store_first(&acc, &mut out[i * rank..(i + 1) * rank]) };
        }
    }

    /// `acc += xᵀ · h` over rows; `h` is `[n, 8 · V]`, `x` `[n, k]`, `acc` `[k, 8 · V]`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn matmul_tn_rows<const V: usize>(
        x: &[f32],
        h: &[f32],
        k: usize,
        acc: &mut [f32],
    ) {
        let n = h.len() / (8 * V);
        assert!(x.len() == n * k && acc.len() == k * 8 * V);
        let (xp, hp, ap) = (x.as_ptr(), h.as_ptr(), acc.as_mut_ptr());
        let mut i = 0;
        while i + 4 <= n {
            // SAFETY: rows i..i+4 < n of `h`, and kk < k rows of `acc`.
            unsafe {
                let row = |r: usize| hp.add((i + r) * 8 * V);
                let hs = [
                    load::<V>(row(0)),
                    load::<V>(row(1)),
                    load::<V>(row(2)),
                    load::<V>(row(3)),
                ];
                for kk in 0..k {
                    let a = ap.add(kk * 8 * V);
                    let mut sum = load::<V>(a);
                    for (r, h) in hs.iter().enumerate() {
                        fma(&mut sum, _mm256_broadcast_ss(&*xp.add((i + r) * k + kk)), h);
                    }
                    store(&sum, a);
                }
            }
            i += 4;
        }
        for i in i..n {
            // SAFETY: as above, for one row.
            unsafe {
                let h = load::<V>(hp.add(i * 8 * V));
                for kk in 0..k {
                    let a = ap.add(kk * 8 * V);
                    let mut sum = load::<V>(a);
                    fma(&mut sum, _mm256_broadcast_ss(&*xp.add(i * k + kk)), &h);
                    store(&sum, a);
                }
            }
        }
    }

    /// Rows of `y (+)= scale · h · b`: four rows by sixteen columns in registers at a time,
    /// each row of `b` read once per four rows; leftover columns and rows one by one.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn low_rank_rows(
        y: &mut [f32],
        h: &[f32],
        b: &[f32],
        rank: usize,
        d: usize,
        scale: f32,
        accumulate: bool,
    ) {
        let n = y.len() / d;
        assert!(y.len() == n * d && h.len() == n * rank && b.len() == rank * d);
        let (yp, bp) = (y.as_mut_ptr(), b.as_ptr());
        let full = d / 16 * 16;
        let mut i = 0;
        while i < n {
            let rows = (n - i).min(4);
            // The scaled thin rows, zero past the last row so that every block is four rows.
            let mut c = [[0f32; super::THIN_MAX]; 4];
            for r in 0..rows {
                for j in 0..rank {
                    c[r][j] = scale * h[(i + r) * rank + j];
                }
            }
            for col in (0..full).step_by(16) {
                // SAFETY: rows i..i+rows < n, columns col..col+16 ≤ d; rows past `rows` are
                // neither read nor written.
                unsafe {
                    let mut acc = [[_mm256_setzero_ps(); 2]; 4];
                    if accumulate {
                        for (r, acc) in acc.iter_mut().enumerate().take(rows) {
                            *acc = load::<2>(yp.add((i + r) * d + col));
                        }
                    }
                    for j in 0..rank {
                        let bj = load::<2>(bp.add(j * d + col));
                        for (acc, c) in acc.iter_mut().zip(&c) {
                            fma(acc, _mm256_set1_ps(c[j]), &bj);
                        }
                    }
                    for (r, acc) in acc.iter().enumerate().take(rows) {
                        store(acc, yp.add((i + r) * d + col));
                    }
                }
            }
            for (r, c) in c.iter().enumerate().take(rows) {
                for col in full..d {
                    let sum: f32 = (0..rank).map(|j| c[j] * b[j * d + col]).sum();
                    // SAFETY: row i + r < n, col < d; `y` is only reached through `yp` here.
                    let y = unsafe { &mut *yp.add((i + r) * d + col) };
                    *y = if accumulate { *y + sum } else { sum };
                }
            }
            i += rows;
        }
    }
}
