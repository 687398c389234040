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
use std::mem::MaybeUninit;
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

/// The unit this process runs packed bf16 products on, if any, and whether `RUNNER_AMX=0`
/// turned the tiles off: decided once, so the warning gives the reason the choice had.
fn detected() -> (Option<Unit>, bool) {
    static DETECTED: OnceLock<(Option<Unit>, bool)> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        let amx_off = std::env::var("RUNNER_AMX").is_ok_and(|v| v == "0");
        let unit = if !amx_off && cpu_has_amx_bf16() && request_tile_permission() {
            Some(Unit::Tiles)
        } else if super::dpbf16::available() {
            Some(Unit::DotBf16)
        } else {
            None
        };
        (unit, amx_off)
    })
}

/// The unit this process runs packed bf16 products on, if any.
pub(crate) fn unit() -> Option<Unit> {
    detected().0
}

/// Whether packed bf16 products run on this machine (AMX tiles or `vdpbf16ps`).
pub(crate) fn available() -> bool {
    unit().is_some()
}

/// Why bf16 products run slower than f32 on this CPU, if they do (a warning for recipes that
/// ask for bf16).
pub(crate) fn slowness() -> Option<&'static str> {
    let (unit, amx_off) = detected();
    slowness_of(unit, cpu_is_intel(), cpu_has_amx_bf16(), amx_off)
}

/// [`slowness`] for a CPU described by its bf16 unit, vendor, AMX support and `RUNNER_AMX=0`.
fn slowness_of(
    unit: Option<Unit>,
    intel: bool,
    has_amx: bool,
    amx_off: bool,
) -> Option<&'static str> {
    match unit {
        Some(Unit::Tiles) => None,
        // On a Zen 4 the vdpbf16ps step is 1.5× faster than f32; on an Intel Xeon with AMX
        // turned off it is 1.4× slower, in runner and in PyTorch's oneDNN alike
        // (docs/performance.md).
        Some(Unit::DotBf16) if !intel => None,
        Some(Unit::DotBf16) if has_amx && amx_off => Some(
            "RUNNER_AMX=0 turns off this CPU's AMX tiles; its AVX512_BF16 products run bf16 slower than precision = \"fp32\" (unset RUNNER_AMX)",
        ),
        Some(Unit::DotBf16) if has_amx => Some(
            "this CPU has AMX, but Linux refused this process the tile registers (arch_prctl ARCH_REQ_XCOMP_PERM: a kernel before 5.16, or a sandbox that blocks it); its AVX512_BF16 products run bf16 slower than precision = \"fp32\"",
        ),
        Some(Unit::DotBf16) => Some(
            "this Intel CPU has AVX512_BF16 but no AMX: on Intel cores vdpbf16ps products measured slower than f32 ones, so bf16 runs slower than precision = \"fp32\"",
        ),
        None => Some(
            "this CPU has neither AMX nor AVX512_BF16, so bf16 products are rounded f32 arithmetic and run slower than precision = \"fp32\"",
        ),
    }
}

fn cpu_is_intel() -> bool {
    // CPUID leaf 0: the vendor string in EBX, EDX, ECX.
    let leaf = std::arch::x86_64::__cpuid(0);
    let vendor: Vec<u8> = [leaf.ebx, leaf.edx, leaf.ecx]
        .iter()
        .flat_map(|r| r.to_le_bytes())
        .collect();
    vendor == b"GenuineIntel"
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

/// The mask of the first `n` (at most 16) of 16 lanes.
#[inline(always)]
fn first_lanes(n: usize) -> std::arch::x86_64::__mmask16 {
    ((1u32 << n) - 1) as std::arch::x86_64::__mmask16
}

/// The mask of the columns of `cols` that the `q`-th group of 16 lanes holds.
#[inline(always)]
fn block_lanes(cols: usize, q: usize) -> std::arch::x86_64::__mmask16 {
    first_lanes(cols.saturating_sub(q * 16).min(16))
}

/// [`to_bf16`] on 16 lanes: each f32 rounded to nearest even bf16, NaN to a quiet NaN of the
/// same sign, left in the high half of its 32-bit lane (the low half zero), so the lanes read
/// as f32 are `from_bf16(to_bf16(x))`.
#[target_feature(enable = "avx512f")]
#[inline]
fn round_lanes(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    let bits = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(bits), _mm512_set1_epi32(1));
    let rounded = _mm512_and_si512(
        _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), lsb),
        _mm512_set1_epi32(0xFFFF_0000u32 as i32),
    );
    let nan = _mm512_cmpgt_epi32_mask(
        _mm512_and_si512(bits, _mm512_set1_epi32(0x7FFF_FFFF)),
        _mm512_set1_epi32(0x7F80_0000),
    );
    let quiet = _mm512_and_si512(
        _mm512_or_si512(bits, _mm512_set1_epi32(0x7FC0_0000)),
        _mm512_set1_epi32(0xFFC0_0000u32 as i32),
    );
    _mm512_mask_mov_epi32(rounded, nan, quiet)
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

/// `round_bf16(round_bf16(a) · round_bf16(b))`, `[a.rows, b.cols]` row-major, on packed operands,
/// on this process's unit. Panics when there is none or the shapes do not chain.
pub(crate) fn matmul_packed(a: &PackedA, b: &PackedB) -> Vec<f32> {
    let unit = unit().expect("no bf16 matrix unit (AMX or AVX512_BF16)");
    matmul_packed_on(unit, a, b)
}

/// [`matmul_packed`] on a given unit, which this CPU must have.
fn matmul_packed_on(unit: Unit, a: &PackedA, b: &PackedB) -> Vec<f32> {
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
/// How many rows ahead the thin kernel prefetches.
const PREFETCH_ROWS: usize = 8;

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
    let masks: [__mmask16; 3] = std::array::from_fn(|q| block_lanes(cols, q));
    let mut sums = [[_mm512_setzero_ps(); 3]; RANK_GROUP];
    for i in 0..v.rows {
        let row = v
            .data
            .as_ptr()
            .wrapping_add(v.offset + i * v.row_stride + first);
        // Rows are a page or more apart, out of reach of the hardware prefetcher: ask for
        // the row PREFETCH_ROWS ahead (a prefetch never faults, so past the end is harmless).
        let ahead = row.wrapping_add(PREFETCH_ROWS * v.row_stride);
        for line in 0..3 {
            _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 16).cast());
        }
        let x: [__m512; 3] = std::array::from_fn(|q| {
            _mm512_castsi512_ps(round_lanes(unsafe {
                _mm512_maskz_loadu_ps(masks[q], row.wrapping_add(q * 16))
            }))
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
    c: &mut [MaybeUninit<f32>],
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
        // SAFETY: both units imply AVX-512F; `c` holds `rows` rows of `n`, and the block's
        // columns nb·32 .. nb·32 + cols are within them.
        unsafe { store_rounded(&acc, rows, cols, c[nb * BLOCK..].as_mut_ptr().cast(), n) };
    }
}

/// Rows `0..rows`, columns `0..cols` of the 32 × 32 block `acc`, rounded to bf16, into
/// `dst` (row stride `n`).
///
/// # Safety
/// AVX-512F; `dst` is valid for `rows` rows of `cols` floats at row stride `n`.
#[target_feature(enable = "avx512f")]
unsafe fn store_rounded(
    acc: &[f32; BLOCK * BLOCK],
    rows: usize,
    cols: usize,
    dst: *mut f32,
    n: usize,
) {
    use std::arch::x86_64::*;
    let masks: [__mmask16; 2] = std::array::from_fn(|h| block_lanes(cols, h));
    for r in 0..rows {
        for (h, &mask) in masks.iter().enumerate() {
            // SAFETY: 16 floats of the block's row r.
            let x = unsafe { _mm512_loadu_ps(acc[r * BLOCK + h * 16..].as_ptr()) };
            // SAFETY: the mask keeps the store within the row's `cols` columns.
            unsafe {
                _mm512_mask_storeu_ps(
                    dst.add(r * n + h * 16),
                    mask,
                    _mm512_castsi512_ps(round_lanes(x)),
                )
            };
        }
    }
}

/// A in tile order: for each block of 32 rows, for each 32-wide slice of k, two tiles (rows
/// 0–15 and 16–31) of 16 rows × 32 bf16. Rows and k past the end are zero.
fn pack_rows(a: Strided, k_tiles: usize) -> Vec<u16> {
    pack(a, k_tiles, Order::Rows)
}

/// B in tile order, pairs of k interleaved (the layout `tdpbf16ps` reads): for each block of
/// 32 columns, for each 32-deep slice of k, two tiles (columns 0–15 and 16–31) whose row
/// `p` holds `(b[2p][c], b[2p+1][c])` for 16 columns `c`. Past the end is zero.
fn pack_columns(b: Strided, k_tiles: usize) -> Vec<u16> {
    pack(b.t(), k_tiles, Order::PairedColumns)
}

/// Where a value goes within its tile: the tile's lines are A's rows or B's columns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Order {
    /// Line `l` is tile row `l`: 32 values of k.
    Rows,
    /// Tile row `p` interleaves k = 2p and 2p + 1 across the 16 lines.
    PairedColumns,
}

impl Order {
    #[inline(always)]
    fn slot(self, line: usize, kk: usize) -> usize {
        match self {
            Order::Rows => line * TILE_K + kk,
            Order::PairedColumns => (kk / 2) * 2 * TILE_ROWS + 2 * line + kk % 2,
        }
    }
}

/// Packs `x` (`[lines, k]`: A's rows, or B's columns) a block of 32 lines at a time, each
/// tile holding 16 lines × 32 of k.
fn pack(x: Strided, k_tiles: usize, order: Order) -> Vec<u16> {
    let blocks = x.rows.div_ceil(BLOCK);
    let len = blocks * k_tiles * 2 * TILE_VALUES;
    // Not zeroed first (a calloc of a reused block is a memset as long as the pack): every
    // tile is written whole below.
    let mut packed = Vec::with_capacity(len);
    packed.spare_capacity_mut()[..len]
        .par_chunks_mut(k_tiles * 2 * TILE_VALUES)
        .enumerate()
        .for_each(|(block, panel)| pack_panel(x, block, panel, order));
    // SAFETY: `pack_panel` writes every value of every tile of its panel.
    unsafe { packed.set_len(len) };
    packed
}

#[inline(never)]
fn pack_panel(x: Strided, block: usize, panel: &mut [MaybeUninit<u16>], order: Order) {
    let simd = std::arch::is_x86_feature_detected!("avx512f");
    for (t, tile) in panel.chunks_exact_mut(TILE_VALUES).enumerate() {
        let (kt, half) = (t / 2, t % 2);
        let l0 = block * BLOCK + half * TILE_ROWS;
        let k0 = kt * TILE_K;
        let lines = TILE_ROWS.min(x.rows.saturating_sub(l0));
        let depth = TILE_K.min(x.cols.saturating_sub(k0));
        if lines < TILE_ROWS || depth < TILE_K {
            // A ragged tile: zeros where nothing lands.
            tile.fill(MaybeUninit::new(0));
        }
        if lines == 0 || depth == 0 {
            continue;
        }
        let tile_ptr = tile.as_mut_ptr().cast::<u16>();
        if simd && order == Order::Rows && x.col_stride == 1 {
            for l in 0..lines {
                let src = &x.data[x.offset + (l0 + l) * x.row_stride + k0..][..depth];
                // SAFETY: AVX-512F was detected; the tile row holds TILE_K values.
                unsafe { round_into(src, tile_ptr.add(l * TILE_K)) };
            }
        } else if simd && order == Order::PairedColumns && x.row_stride == 1 {
            for p in 0..depth.div_ceil(2) {
                let row = |kk: usize| {
                    (kk < depth)
                        .then(|| &x.data[x.offset + (k0 + kk) * x.col_stride + l0..][..lines])
                };
                // SAFETY: AVX-512F was detected; tile row p holds 2 · TILE_ROWS values.
                unsafe {
                    interleave_into(row(2 * p), row(2 * p + 1), tile_ptr.add(p * 2 * TILE_ROWS))
                };
            }
        } else if x.col_stride == 1 {
            // Each line is contiguous in k.
            for l in 0..lines {
                let src = &x.data[x.offset + (l0 + l) * x.row_stride + k0..][..depth];
                for (kk, v) in src.iter().enumerate() {
                    tile[order.slot(l, kk)].write(to_bf16(*v));
                }
            }
        } else if x.row_stride == 1 {
            // A transposed view: each slice of k is contiguous across lines.
            for kk in 0..depth {
                let src = &x.data[x.offset + (k0 + kk) * x.col_stride + l0..][..lines];
                for (l, v) in src.iter().enumerate() {
                    tile[order.slot(l, kk)].write(to_bf16(*v));
                }
            }
        } else {
            for l in 0..lines {
                for kk in 0..depth {
                    tile[order.slot(l, kk)].write(to_bf16(x.at(l0 + l, k0 + kk)));
                }
            }
        }
    }
}

/// `src` (at most 32 values) rounded to bf16 into `dst[..src.len()]`.
///
/// # Safety
/// AVX-512F; `dst` is valid for `src.len()` writes.
#[target_feature(enable = "avx512f")]
unsafe fn round_into(src: &[f32], dst: *mut u16) {
    use std::arch::x86_64::*;
    for (h, chunk) in src.chunks(16).enumerate() {
        let mask = first_lanes(chunk.len());
        // SAFETY: the mask keeps the load within `chunk` and the store within `dst`.
        unsafe {
            let x = _mm512_maskz_loadu_ps(mask, chunk.as_ptr());
            let bits = _mm512_srli_epi32::<16>(round_lanes(x));
            _mm512_mask_cvtepi32_storeu_epi16(dst.add(h * 16).cast(), mask, bits);
        }
    }
}

/// Two rows of k (at most 16 lines each; the second may be past the end) rounded to bf16
/// and interleaved: `dst[2l] = even[l]`, `dst[2l + 1] = odd[l]`.
///
/// # Safety
/// AVX-512F; `dst` is valid for `2 · even.len()` writes.
#[target_feature(enable = "avx512f")]
unsafe fn interleave_into(even: Option<&[f32]>, odd: Option<&[f32]>, dst: *mut u16) {
    use std::arch::x86_64::*;
    let lines = even.map_or(0, <[f32]>::len);
    let mask = first_lanes(lines);
    let load = |row: Option<&[f32]>| match row {
        // SAFETY: the mask keeps the load within the row's `lines` values.
        Some(r) => round_lanes(unsafe { _mm512_maskz_loadu_ps(mask, r.as_ptr()) }),
        None => _mm512_setzero_si512(),
    };
    // Little-endian: k even in each 32-bit word's low half, k odd in its high half.
    let words = _mm512_or_si512(_mm512_srli_epi32::<16>(load(even)), load(odd));
    // SAFETY: `lines` words are 2 · lines values of `dst`.
    unsafe { _mm512_mask_storeu_epi32(dst.cast(), mask, words) };
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

    #[test]
    fn the_bf16_warning_names_the_cause() {
        let (tiles, dot) = (Some(Unit::Tiles), Some(Unit::DotBf16));
        assert_eq!(slowness_of(tiles, true, true, false), None);
        assert_eq!(
            slowness_of(dot, false, false, false),
            None,
            "AMD: vdpbf16ps is fast"
        );
        let says = |unit, intel, amx, off, what: &str| {
            let why = slowness_of(unit, intel, amx, off).unwrap();
            assert!(why.contains(what), "{why:?} should say {what:?}");
        };
        says(dot, true, true, true, "RUNNER_AMX=0 turns off");
        says(
            dot,
            true,
            true,
            false,
            "Linux refused this process the tile registers",
        );
        says(dot, true, false, false, "has AVX512_BF16 but no AMX");
        says(None, false, false, false, "neither AMX nor AVX512_BF16");
    }

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

    /// What packing must produce: every value through `to_bf16` into its slot, zeros elsewhere.
    fn pack_reference(x: Strided, k_tiles: usize, order: Order) -> Vec<u16> {
        let blocks = x.rows.div_ceil(BLOCK);
        let mut packed = vec![0u16; blocks * k_tiles * 2 * TILE_VALUES];
        for line in 0..x.rows {
            for k in 0..x.cols {
                let (block, half, l) = (line / BLOCK, line % BLOCK / TILE_ROWS, line % TILE_ROWS);
                let tile = (block * k_tiles + k / TILE_K) * 2 + half;
                packed[tile * TILE_VALUES + order.slot(l, k % TILE_K)] = to_bf16(x.at(line, k));
            }
        }
        packed
    }

    #[test]
    fn packing_rounds_every_value_into_its_slot_bit_for_bit() {
        // Ties, NaN of both signs, infinities, zeros of both signs among ordinary values.
        let mut v = values(100 * 100, 3);
        let special = [
            1.0 + 2f32.powi(-8),
            1.0 + 3.0 * 2f32.powi(-8),
            f32::NAN,
            -f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -0.0,
            f32::from_bits(0x7F80_0001),
        ];
        for (i, s) in special.iter().enumerate() {
            v[i * 97] = *s;
        }
        for &(lines, k) in &[(1, 1), (16, 32), (33, 70), (64, 64), (17, 31), (70, 90)] {
            let row_major = Strided {
                data: &v,
                offset: 5,
                rows: lines,
                cols: k,
                row_stride: k + 1,
                col_stride: 1,
            };
            let transposed = Strided {
                data: &v,
                offset: 2,
                rows: k,
                cols: lines,
                row_stride: lines + 3,
                col_stride: 1,
            }
            .t();
            for x in [row_major, transposed] {
                let k_tiles = x.cols.div_ceil(TILE_K).max(1);
                for order in [Order::Rows, Order::PairedColumns] {
                    assert_eq!(
                        pack(x, k_tiles, order),
                        pack_reference(x, k_tiles, order),
                        "{lines} x {k}, {order:?}, row stride {}",
                        x.row_stride
                    );
                }
            }
        }
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

    /// Every unit this CPU has, whichever one the process chose: a CPU with AMX tests the
    /// `vdpbf16ps` kernel too.
    fn units() -> Vec<Unit> {
        let mut units = Vec::new();
        if unit() == Some(Unit::Tiles) {
            units.push(Unit::Tiles);
        }
        if super::super::dpbf16::available() {
            units.push(Unit::DotBf16);
        }
        units
    }

    #[test]
    fn matches_the_bf16_reference_on_ragged_and_transposed_shapes() {
        let units = units();
        if units.is_empty() {
            eprintln!(
                "no bf16 matrix unit (AMX or AVX512_BF16) on this machine: the packed kernels are not exercised"
            );
            return;
        }
        eprintln!("packed bf16 products tested on {units:?}");
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
                let want = reference(a, b);
                let (pa, pb) = (PackedA::new(a), PackedB::new(b));
                for &unit in &units {
                    let got = matmul_packed_on(unit, &pa, &pb);
                    for (idx, (g, w)) in got.iter().zip(&want).enumerate() {
                        // The result is rounded to bf16: within one bf16 unit (2⁻⁸ relative).
                        assert!(
                            (g - w).abs() <= w.abs() * 2f32.powi(-8) + 1e-6,
                            "{unit:?} {m}x{k}x{n} ta={ta} tb={tb} [{idx}]: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
