//! bf16 matrix products on CPUs with AVX512_BF16 but no AMX (AMD Zen 4 and 5, Intel Cooper
//! Lake): `vdpbf16ps` multiplies 16 pairs of bf16 and adds them into 16 f32 lanes, twice the
//! multiply-adds of an f32 FMA of the same width.
//!
//! The kernel reads the operands exactly as [`super::amx`] packs them for its tiles: A's
//! tiles hold rows of 32 bf16, so a pair `(a[i][2p], a[i][2p+1])` is one 32-bit word to
//! broadcast; B's tiles hold pairs of k interleaved across 16 columns, which is one
//! `vdpbf16ps` operand. So the packing, the packed-weight cache and the bf16 rounding of the
//! result are shared, and only the 32 × 32 block kernel differs.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::amx::TILE_VALUES;
/// Rows of the block computed together: 8 rows × 2 vectors of 16 columns = 16 accumulators.
const ROWS: usize = 8;

/// Whether this CPU has `vdpbf16ps` (and `RUNNER_BF16_DOT` is not `0`), checked once.
pub(crate) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        std::env::var("RUNNER_BF16_DOT").map_or(true, |v| v != "0")
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    })
}

/// 32 bf16 values, as `vdpbf16ps` takes them.
#[inline(always)]
fn bf16x32(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit vectors of plain bits.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// One 32 × 32 block of C over all of k, `acc` row-major with a row stride of 32 floats:
/// the same result as the AMX block kernel, from the same packed panels.
///
/// # Safety
/// The CPU has AVX-512F and AVX512_BF16 ([`available`]); `a` and `b` hold `k_tiles` pairs
/// of packed tiles and `acc` 1024 floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn block_kernel(a: *const u16, b: *const u16, k_tiles: usize, acc: *mut f32) {
    for group in 0..32 / ROWS {
        // Rows 0–15 are in A's first tile of each pair, 16–31 in its second.
        let (half, first) = (group * ROWS / 16, group * ROWS % 16);
        let mut c = [[_mm512_setzero_ps(); 2]; ROWS];
        for kt in 0..k_tiles {
            // SAFETY (all pointer arithmetic below): within the k_tiles pairs of tiles.
            let a_tile = unsafe { a.add((2 * kt + half) * TILE_VALUES + first * 32) };
            let b_tile = unsafe { b.add(2 * kt * TILE_VALUES) };
            for p in 0..16 {
                let (b0, b1) = unsafe {
                    (
                        bf16x32(_mm512_loadu_si512(b_tile.add(p * 32).cast())),
                        bf16x32(_mm512_loadu_si512(b_tile.add(TILE_VALUES + p * 32).cast())),
                    )
                };
                for (r, row) in c.iter_mut().enumerate() {
                    let pair = unsafe { a_tile.add(r * 32 + 2 * p).cast::<i32>().read_unaligned() };
                    let a = bf16x32(_mm512_set1_epi32(pair));
                    row[0] = _mm512_dpbf16_ps(row[0], a, b0);
                    row[1] = _mm512_dpbf16_ps(row[1], a, b1);
                }
            }
        }
        for (r, row) in c.iter().enumerate() {
            let dst = unsafe { acc.add((half * 16 + first + r) * 32) };
            unsafe {
                _mm512_storeu_ps(dst, row[0]);
                _mm512_storeu_ps(dst.add(16), row[1]);
            }
        }
    }
}
