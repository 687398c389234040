//! bf16 matrix products on Intel AMX (Advanced Matrix Extensions, Sapphire Rapids and later):
//! the tile unit multiplies 16×32 by 32×16 bf16 blocks into 16×16 f32 accumulators, about
//! sixteen times the multiply-adds per cycle of AVX-512 f32 FMA.
//!
//! Operands are rounded to bf16 (nearest, ties to even) while they are packed into tile
//! order; products accumulate in f32; the result is rounded to bf16 and returned as f32,
//! which is what a bf16 matmul does on any backend (`precision::matmul`).
//!
//! Tile instructions are written as inline assembly: Rust's AMX intrinsics are not stable.
//! Linux hands out the tile registers only after `arch_prctl(ARCH_REQ_XCOMP_PERM)`, asked
//! once per process. Without AMX (or with `RUNNER_AMX=0`) a CPU with AVX512_BF16 runs the
//! same packed products with `vdpbf16ps` ([`super::dpbf16`]); with neither, [`available`] is
//! false and callers take the composed path.

pub(crate) use super::host::Strided;
use std::arch::asm;
use std::sync::OnceLock;

use rayon::prelude::*;

/// Rows of A (and C) per tile, and the bf16 values of one tile row.
const TILE_ROWS: usize = 16;
const TILE_K: usize = 32;
/// A block of C computed by one pass over k: 2 × 2 tiles.
const BLOCK: usize = 32;
/// bf16 values in one packed tile (16 rows of 64 bytes).
pub(super) const TILE_VALUES: usize = TILE_ROWS * TILE_K;

/// Which instructions run the packed bf16 products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unit {
    /// AMX tiles.
    Tiles,
    /// AVX512_BF16's `vdpbf16ps` ([`super::dpbf16`]).
    DotBf16,
}

/// The unit this process runs packed bf16 products on, if any (checked once).
pub(crate) fn unit() -> Option<Unit> {
    static UNIT: OnceLock<Option<Unit>> = OnceLock::new();
    *UNIT.get_or_init(|| {
        if std::env::var("RUNNER_AMX").map_or(true, |v| v != "0")
            && cpu_has_amx_bf16()
            && request_tile_permission()
        {
            Some(Unit::Tiles)
        } else if super::dpbf16::available() {
            Some(Unit::DotBf16)
        } else {
            None
        }
    })
}

/// Whether packed bf16 products run on this machine (AMX tiles or `vdpbf16ps`).
pub(crate) fn available() -> bool {
    unit().is_some()
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7, sub-leaf 0: EDX bit 22 is AMX-BF16, bit 24 AMX-TILE.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    leaf.edx & (1 << 22) != 0 && leaf.edx & (1 << 24) != 0
}

fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// f32 to bf16 bits, rounding to nearest with ties to even; NaN stays NaN.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
    if bits & 0x7FFF_FFFF > 0x7F80_0000 {
        0x7FC0 | (bits >> 16) as u16 & 0x8000
    } else {
        rounded
    }
}

#[inline(always)]
pub(crate) fn from_bf16(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// `round_bf16(round_bf16(a) · round_bf16(b))`, `[a.rows, b.cols]` row-major. Panics when
/// AMX is not [`available`] or the shapes do not chain.
#[cfg(test)]
pub(crate) fn matmul(a: Strided, b: Strided) -> Vec<f32> {
    matmul_packed(&PackedA::new(a), &PackedB::new(b))
}

/// The left-hand operand in tile order, bf16 (one input feeding several products, as the
/// hidden states feed q, k and v, is packed once).
pub(crate) struct PackedA {
    values: Vec<u16>,
    m: usize,
    k: usize,
}

impl PackedA {
    pub(crate) fn new(a: Strided) -> Self {
        assert!(a.covers_its_data(), "bad operand");
        let k_tiles = a.cols.div_ceil(TILE_K).max(1);
        Self {
            values: pack_rows(a, k_tiles),
            m: a.rows,
            k: a.cols,
        }
    }
}

/// The right-hand operand in tile order, bf16: packed once, it serves any number of
/// products (a frozen weight across steps).
pub(crate) struct PackedB {
    values: Vec<u16>,
    k: usize,
    n: usize,
}

impl PackedB {
    pub(crate) fn new(b: Strided) -> Self {
        assert!(b.covers_its_data(), "bad operand");
        let k_tiles = b.rows.div_ceil(TILE_K).max(1);
        Self {
            values: pack_columns(b, k_tiles),
            k: b.rows,
            n: b.cols,
        }
    }
}

/// [`matmul`] on packed operands.
pub(crate) fn matmul_packed(a: &PackedA, b: &PackedB) -> Vec<f32> {
    let unit = unit().expect("no bf16 matrix unit (AMX or AVX512_BF16)");
    assert!(a.k == b.k, "the operands do not chain");
    let (m, k, n) = (a.m, a.k, b.n);
    if m == 0 || n == 0 {
        return vec![0f32; m * n];
    }
    // Every element is written exactly once below, so the output is not zeroed first.
    let mut out = Vec::with_capacity(m * n);
    let k_tiles = k.div_ceil(TILE_K).max(1);
    let packed_a = &a.values;
    let panel = k_tiles * 2 * TILE_VALUES;
    // Column groups whose packed B stays in L2 while every row block passes over it (B
    // streamed from L3 instead runs the tiles at under a quarter of their speed).
    let group = (B_GROUP_BYTES / (panel * 2)).max(1);
    let n_blocks = n.div_ceil(BLOCK);
    for first in (0..n_blocks).step_by(group) {
        let blocks = first..n_blocks.min(first + group);
        out.spare_capacity_mut()[..m * n]
            .par_chunks_mut(BLOCK * n)
            .enumerate()
            .for_each(|(mb, c)| {
                row_block(
                    unit,
                    &packed_a[mb * panel..][..panel],
                    &b.values,
                    k_tiles,
                    n,
                    blocks.clone(),
                    c,
                )
            });
    }
    // SAFETY: the column groups cover every column block and `row_block` writes every row
    // and column of its block, so all `m · n` elements are initialised.
    unsafe { out.set_len(m * n) };
    out
}

/// The widest thin side [`thin_transposed_matmul`] takes (LoRA ranks up to 16).
pub(crate) const THIN_MAX: usize = 16;

/// `round_bf16(round_bf16(u)ᵀ · round_bf16(v))` with f32 accumulation, `[u.cols, v.cols]`
/// row-major, for a thin `u` (`[t, r]`, r ≤ [`THIN_MAX`]) against a tall `v` (`[t, n]`, rows
/// of contiguous values): the weight gradient of a low-rank factor (LoRA's `hᵀ·dy` and
/// `dhᵀ·x`). Tiles would first pack the whole tall operand; this reads it once, rounding on
/// the fly, on AVX-512. `None` for other shapes and layouts or without AVX-512.
pub(crate) fn thin_transposed_matmul(u: Strided, v: Strided) -> Option<Vec<f32>> {
    let (t, r, n) = (u.rows, u.cols, v.cols);
    if v.rows != t
        || r == 0
        || r > THIN_MAX
        || v.col_stride != 1
        || !v.covers_its_data()
        || !u.covers_its_data()
        || !std::arch::is_x86_feature_detected!("avx512f")
    {
        return None;
    }
    // u rounded, each row padded to whole groups of RANK_GROUP (zeros add nothing).
    let groups = r.div_ceil(RANK_GROUP);
    let width = groups * RANK_GROUP;
    let mut thin = vec![0f32; t * width];
    for i in 0..t {
        for k in 0..r {
            thin[i * width + k] = from_bf16(to_bf16(u.at(i, k)));
        }
    }
    let column_groups: Vec<(usize, Vec<f32>)> = (0..n.div_ceil(THIN_COLUMNS))
        .into_par_iter()
        .map(|g| {
            let (first, cols) = (g * THIN_COLUMNS, THIN_COLUMNS.min(n - g * THIN_COLUMNS));
            let mut acc = vec![0f32; width * THIN_COLUMNS];
            for group in 0..groups {
                // SAFETY: AVX-512 was detected above; `v` covers rows 0..t of columns
                // first..first + cols, `thin` holds t rows of `width`, and `acc` the group's
                // RANK_GROUP rows of THIN_COLUMNS.
                unsafe {
                    thin_kernel(
                        &thin,
                        width,
                        group * RANK_GROUP,
                        v,
                        first,
                        cols,
                        &mut acc[group * RANK_GROUP * THIN_COLUMNS..][..RANK_GROUP * THIN_COLUMNS],
                    )
                };
            }
            (first, acc)
        })
        .collect();
    let mut out = vec![0f32; r * n];
    for (first, acc) in column_groups {
        let cols = THIN_COLUMNS.min(n - first);
        for k in 0..r {
            for (o, a) in out[k * n + first..][..cols]
                .iter_mut()
                .zip(&acc[k * THIN_COLUMNS..][..cols])
            {
                *o = from_bf16(to_bf16(*a));
            }
        }
    }
    Some(out)
}

/// Thin rows accumulated together (8 × 3 vectors of accumulators stay in registers).
const RANK_GROUP: usize = 8;
/// Columns of `v` per task: three 16-lane vectors.
const THIN_COLUMNS: usize = 48;

/// `acc[k][j] += Σ_i thin[i][first_rank + k] · round_bf16(v[i][first + j])` for the group's
/// RANK_GROUP ranks and `cols` ≤ THIN_COLUMNS columns.
#[target_feature(enable = "avx512f")]
unsafe fn thin_kernel(
    thin: &[f32],
    width: usize,
    first_rank: usize,
    v: Strided,
    first: usize,
    cols: usize,
    acc: &mut [f32],
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; 3] = std::array::from_fn(|q| {
        let lanes = cols.saturating_sub(q * 16).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    });
    let mut sums = [[_mm512_setzero_ps(); 3]; RANK_GROUP];
    let (round_bias, low_bit, keep_high, abs_mask, infinity) = (
        _mm512_set1_epi32(0x7FFF),
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(0xFFFF_0000u32 as i32),
        _mm512_set1_epi32(0x7FFF_FFFF),
        _mm512_set1_epi32(0x7F80_0000),
    );
    // Round to nearest even bf16 as `to_bf16` does, NaN to a quiet NaN of the same sign.
    let round = |x: __m512| -> __m512 {
        let bits = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), low_bit);
        let rounded = _mm512_and_si512(
            _mm512_add_epi32(_mm512_add_epi32(bits, round_bias), lsb),
            keep_high,
        );
        let nan = _mm512_cmpgt_epi32_mask(_mm512_and_si512(bits, abs_mask), infinity);
        let quiet = _mm512_and_si512(
            _mm512_or_si512(bits, _mm512_set1_epi32(0x7FC0_0000)),
            _mm512_set1_epi32(0xFFC0_0000u32 as i32),
        );
        _mm512_castsi512_ps(_mm512_mask_mov_epi32(rounded, nan, quiet))
    };
    for i in 0..v.rows {
        let row = v
            .data
            .as_ptr()
            .wrapping_add(v.offset + i * v.row_stride + first);
        let x: [__m512; 3] = std::array::from_fn(|q| {
            round(unsafe { _mm512_maskz_loadu_ps(masks[q], row.wrapping_add(q * 16)) })
        });
        let t = &thin[i * width + first_rank..][..RANK_GROUP];
        for k in 0..RANK_GROUP {
            let u = _mm512_set1_ps(t[k]);
            for q in 0..3 {
                sums[k][q] = _mm512_fmadd_ps(u, x[q], sums[k][q]);
            }
        }
    }
    for k in 0..RANK_GROUP {
        for q in 0..3 {
            let dst = &mut acc[k * THIN_COLUMNS + q * 16..][..16];
            unsafe {
                _mm512_storeu_ps(
                    dst.as_mut_ptr(),
                    _mm512_add_ps(_mm512_loadu_ps(dst.as_ptr()), sums[k][q]),
                )
            };
        }
    }
}

/// Packed B that one pass over the row blocks reads: half of a 2 MiB L2.
const B_GROUP_BYTES: usize = 1 << 19;

/// Rows `c` (up to 32 of the output, `n` wide), column blocks `blocks`, from their A panel
/// and packed B.
#[inline(never)]
fn row_block(
    unit: Unit,
    a_panel: &[u16],
    packed_b: &[u16],
    k_tiles: usize,
    n: usize,
    blocks: std::ops::Range<usize>,
    c: &mut [std::mem::MaybeUninit<f32>],
) {
    let rows = c.len() / n;
    let mut acc = [0f32; BLOCK * BLOCK];
    let _tiles = (unit == Unit::Tiles).then(TileConfig::load);
    for nb in blocks {
        let b_panel = &packed_b[nb * k_tiles * 2 * TILE_VALUES..][..k_tiles * 2 * TILE_VALUES];
        let (a, b, out) = (a_panel.as_ptr(), b_panel.as_ptr(), acc.as_mut_ptr());
        // SAFETY: both panels hold `k_tiles` pairs of tiles and `acc` one 32 × 32 block;
        // for tiles the configuration is loaded on this thread, and `vdpbf16ps` was
        // detected when the unit was chosen.
        match unit {
            Unit::Tiles => unsafe { block_kernel(a, b, k_tiles, out) },
            Unit::DotBf16 => unsafe { super::dpbf16::block_kernel(a, b, k_tiles, out) },
        }
        let cols = BLOCK.min(n - nb * BLOCK);
        for r in 0..rows {
            let dst = &mut c[r * n + nb * BLOCK..][..cols];
            for (d, s) in dst.iter_mut().zip(&acc[r * BLOCK..][..cols]) {
                d.write(from_bf16(to_bf16(*s)));
            }
        }
    }
}

/// A in tile order: for each block of 32 rows, for each 32-wide slice of k, two tiles (rows
/// 0–15 and 16–31) of 16 rows × 32 bf16. Rows and k past the end are zero.
fn pack_rows(a: Strided, k_tiles: usize) -> Vec<u16> {
    pack(a, k_tiles, |r, kk| r * TILE_K + kk)
}

/// B in tile order, pairs of k interleaved (the layout `tdpbf16ps` reads): for each block of
/// 32 columns, for each 32-deep slice of k, two tiles (columns 0–15 and 16–31) whose row
/// `p` holds `(b[2p][c], b[2p+1][c])` for 16 columns `c`. Past the end is zero.
fn pack_columns(b: Strided, k_tiles: usize) -> Vec<u16> {
    pack(b.t(), k_tiles, |c, kk| {
        (kk / 2) * 2 * TILE_ROWS + 2 * c + kk % 2
    })
}

/// Packs `x` (`[lines, k]`: A's rows, or B's columns) a block of 32 lines at a time, each
/// tile holding 16 lines × 32 of k; `slot(line, kk)` places a value within its tile.
fn pack(x: Strided, k_tiles: usize, slot: impl Fn(usize, usize) -> usize + Sync) -> Vec<u16> {
    let blocks = x.rows.div_ceil(BLOCK);
    let mut packed = vec![0u16; blocks * k_tiles * 2 * TILE_VALUES];
    packed
        .par_chunks_mut(k_tiles * 2 * TILE_VALUES)
        .enumerate()
        .for_each(|(block, panel)| pack_panel(x, block, panel, &slot));
    packed
}

#[inline(never)]
fn pack_panel(x: Strided, block: usize, panel: &mut [u16], slot: &impl Fn(usize, usize) -> usize) {
    for (t, tile) in panel.chunks_exact_mut(TILE_VALUES).enumerate() {
        let (kt, half) = (t / 2, t % 2);
        let l0 = block * BLOCK + half * TILE_ROWS;
        let k0 = kt * TILE_K;
        let lines = TILE_ROWS.min(x.rows.saturating_sub(l0));
        let depth = TILE_K.min(x.cols.saturating_sub(k0));
        if lines == 0 || depth == 0 {
            continue;
        }
        if x.col_stride == 1 {
            // Each line is contiguous in k.
            for l in 0..lines {
                let src = &x.data[x.offset + (l0 + l) * x.row_stride + k0..][..depth];
                for (kk, v) in src.iter().enumerate() {
                    tile[slot(l, kk)] = to_bf16(*v);
                }
            }
        } else if x.row_stride == 1 {
            // A transposed view: each slice of k is contiguous across lines.
            for kk in 0..depth {
                let src = &x.data[x.offset + (k0 + kk) * x.col_stride + l0..][..lines];
                for (l, v) in src.iter().enumerate() {
                    tile[slot(l, kk)] = to_bf16(*v);
                }
            }
        } else {
            for l in 0..lines {
                for kk in 0..depth {
                    tile[slot(l, kk)] = to_bf16(x.at(l0 + l, k0 + kk));
                }
            }
        }
    }
}

/// The tile shapes every kernel call uses: tmm0–3 accumulate 16 × 16 f32, tmm4–5 hold A
/// (16 × 32 bf16), tmm6–7 hold B (16 pairs × 16 columns). Loaded on construction, released
/// on drop (so the thread's tile state is not saved on every context switch afterwards).
struct TileConfig;

#[repr(C, align(64))]
struct TileConfigBytes {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn load() -> Self {
        let mut cfg = TileConfigBytes {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = 64;
            cfg.rows[t] = TILE_ROWS as u8;
        }
        // SAFETY: AMX is available (checked by the caller) and the configuration is valid.
        unsafe {
            asm!("ldtilecfg [{cfg}]", cfg = in(reg) &cfg as *const TileConfigBytes, options(nostack, readonly))
        };
        TileConfig
    }
}

impl Drop for TileConfig {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `load` on this thread.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// One 32 × 32 block of C over all of k: `acc = Σ A tiles · B tiles`, stored row-major
/// (row stride 32 floats).
///
/// # Safety
/// `a` and `b` hold `k_tiles` pairs of packed tiles, `acc` 1024 floats, and [`TileConfig`]
/// is loaded on this thread.
unsafe fn block_kernel(a: *const u16, b: *const u16, k_tiles: usize, acc: *mut f32) {
    const TILE_BYTES: usize = TILE_VALUES * 2;
    unsafe {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "2:",
            "tileloadd tmm4, [{a} + {stride}*1]",
            "tileloadd tmm6, [{b} + {stride}*1]",
            "tileloadd tmm5, [{a} + {stride}*1 + {tile}]",
            "tileloadd tmm7, [{b} + {stride}*1 + {tile}]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a}, {pair}",
            "add {b}, {pair}",
            "dec {n}",
            "jnz 2b",
            // Row stride of acc: 32 floats; tiles at columns 0 and 16, rows 0 and 16.
            "tilestored [{c} + {cstride}*1], tmm0",
            "tilestored [{c} + {cstride}*1 + 64], tmm1",
            "tilestored [{c} + {cstride}*1 + 2048], tmm2",
            "tilestored [{c} + {cstride}*1 + 2112], tmm3",
            a = inout(reg) a => _,
            b = inout(reg) b => _,
            n = inout(reg) k_tiles => _,
            c = in(reg) acc,
            stride = in(reg) 64usize,
            cstride = in(reg) BLOCK * 4,
            tile = const TILE_BYTES,
            pair = const 2 * TILE_BYTES,
            options(nostack),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(a: Strided, b: Strided) -> Vec<f32> {
        let mut out = vec![0f32; a.rows * b.cols];
        for i in 0..a.rows {
            for j in 0..b.cols {
                let s: f64 = (0..a.cols)
                    .map(|k| {
                        from_bf16(to_bf16(a.at(i, k))) as f64
                            * from_bf16(to_bf16(b.at(k, j))) as f64
                    })
                    .sum();
                out[i * b.cols + j] = s as f32;
            }
        }
        out
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                    / (1u32 << 24) as f32)
                    * 2.0
                    - 1.0
            })
            .collect()
    }

    #[test]
    fn thin_products_match_the_bf16_reference() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512 on this machine: the thin kernel is not exercised");
            return;
        }
        // Ranks below, at and above one group of 8; widths ragged against 16 and 48 lanes.
        for &(t, r, n) in &[
            (1, 1, 1),
            (37, 8, 50),
            (300, 3, 576),
            (129, 12, 97),
            (64, 16, 48),
            (1030, 8, 1536),
        ] {
            let (uv, vv) = (values(t * r + 3, 5), values(t * n + 7, 6));
            // An offset and a row stride wider than the row, as a slice of a larger buffer.
            let u = Strided {
                data: &uv,
                offset: 3,
                rows: t,
                cols: r,
                row_stride: r,
                col_stride: 1,
            };
            let v = Strided {
                data: &vv,
                offset: 7,
                rows: t,
                cols: n - 1,
                row_stride: n,
                col_stride: 1,
            };
            let got = thin_transposed_matmul(u, v).expect("a thin product");
            let want = reference(u.t(), v);
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                // The output is rounded to bf16: within one bf16 unit of the exact sum.
                assert!(
                    (g - w).abs() <= w.abs() * 2f32.powi(-7) + 1e-6,
                    "t={t} r={r} n={n} at {i}: {g} vs {w}"
                );
            }
        }
        // A transposed view of u works (it is read element by element); v must have rows of
        // contiguous values, and the thin side be at most THIN_MAX wide.
        let vv = values(40 * 30, 1);
        let v = Strided {
            data: &vv,
            offset: 0,
            rows: 40,
            cols: 30,
            row_stride: 30,
            col_stride: 1,
        };
        let uv = values(40 * 4, 2);
        let u = Strided {
            data: &uv,
            offset: 0,
            rows: 4,
            cols: 40,
            row_stride: 40,
            col_stride: 1,
        }
        .t();
        let columns = Strided {
            data: &vv,
            offset: 0,
            rows: 30,
            cols: 40,
            row_stride: 40,
            col_stride: 1,
        }
        .t();
        assert!(
            thin_transposed_matmul(u, Strided { cols: 4, ..columns }).is_none(),
            "v's rows are not contiguous"
        );
        assert!(
            thin_transposed_matmul(v, v).is_none(),
            "30 is wider than THIN_MAX"
        );
        let want = reference(u.t(), v);
        let got = thin_transposed_matmul(u, v).unwrap();
        assert!(
            got.iter()
                .zip(&want)
                .all(|(g, w)| (g - w).abs() <= w.abs() * 2f32.powi(-7) + 1e-6)
        );
        // NaN stays NaN; 1 + 2⁻¹⁰ rounds to 1 in both operands.
        let one = [1.0 + 2f32.powi(-10)];
        let s = Strided {
            data: &one,
            offset: 0,
            rows: 1,
            cols: 1,
            row_stride: 1,
            col_stride: 1,
        };
        assert_eq!(thin_transposed_matmul(s, s).unwrap(), vec![1.0]);
        let nan = [f32::NAN];
        let s = Strided {
            data: &nan,
            offset: 0,
            rows: 1,
            cols: 1,
            row_stride: 1,
            col_stride: 1,
        };
        assert!(thin_transposed_matmul(s, s).unwrap()[0].is_nan());
    }

    #[test]
    fn bf16_rounding_is_nearest_even() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2⁻⁸ is halfway between 1 and 1 + 2⁻⁷: ties go to the even one, 1.
        assert_eq!(from_bf16(to_bf16(1.0 + 2f32.powi(-8))), 1.0);
        assert_eq!(
            from_bf16(to_bf16(1.0 + 3.0 * 2f32.powi(-8))),
            1.0 + 2f32.powi(-6)
        );
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
        assert_eq!(from_bf16(to_bf16(f32::INFINITY)), f32::INFINITY);
        assert_eq!(from_bf16(to_bf16(-0.0)).to_bits(), (-0.0f32).to_bits());
        for x in values(1000, 7) {
            assert_eq!(to_bf16(x), half::bf16::from_f32(x).to_bits(), "{x}");
        }
    }

    #[test]
    fn matches_the_bf16_reference_on_ragged_and_transposed_shapes() {
        if !available() {
            eprintln!(
                "no bf16 matrix unit (AMX or AVX512_BF16) on this machine: the packed kernels are not exercised"
            );
            return;
        }
        for &(m, k, n) in &[
            (1, 1, 1),
            (33, 70, 17),
            (64, 32, 64),
            (100, 576, 40),
            (5, 8, 600),
            (40, 576, 1000),
        ] {
            let (av, bv) = (values(m * k, 1), values(k * n, 2));
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                // The same logical matrices, stored row-major or transposed.
                let a = if ta {
                    Strided {
                        data: &av,
                        offset: 0,
                        rows: k,
                        cols: m,
                        row_stride: m,
                        col_stride: 1,
                    }
                    .t()
                } else {
                    Strided {
                        data: &av,
                        offset: 0,
                        rows: m,
                        cols: k,
                        row_stride: k,
                        col_stride: 1,
                    }
                };
                let b = if tb {
                    Strided {
                        data: &bv,
                        offset: 0,
                        rows: n,
                        cols: k,
                        row_stride: k,
                        col_stride: 1,
                    }
                    .t()
                } else {
                    Strided {
                        data: &bv,
                        offset: 0,
                        rows: k,
                        cols: n,
                        row_stride: n,
                        col_stride: 1,
                    }
                };
                let got = matmul(a, b);
                let want = reference(a, b);
                for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                    // The result is rounded to bf16: within one bf16 unit (2⁻⁸ relative).
                    assert!(
                        (g - w).abs() <= w.abs() * 2f32.powi(-8) + 1e-6,
                        "{m}x{k}x{n} ta={ta} tb={tb} [{idx}]: {g} vs {w}"
                    );
                }
            }
        }
    }
}
