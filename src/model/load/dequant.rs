//! ggml tensor types and their dequantization to f32 (F32, F16, BF16, Q8_0, Q4_0, Q4_1, and
//! the K-quants Q2_K to Q8_K of [`super::kquant`]).

use half::{bf16, f16};

use super::kquant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    BF16,
}

impl GgmlType {
    pub(crate) fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            3 => Self::Q4_1,
            8 => Self::Q8_0,
            10 => Self::Q2K,
            11 => Self::Q3K,
            12 => Self::Q4K,
            13 => Self::Q5K,
            14 => Self::Q6K,
            15 => Self::Q8K,
            30 => Self::BF16,
            _ => return None,
        })
    }

    /// (elements per block, bytes per block)
    pub(crate) fn block(self) -> (usize, usize) {
        match self {
            Self::F32 => (1, 4),
            Self::F16 | Self::BF16 => (1, 2),
            Self::Q4_0 => (32, 18),
            Self::Q4_1 => (32, 20),
            Self::Q8_0 => (32, 34),
            Self::Q2K => (kquant::QK_K, 84),
            Self::Q3K => (kquant::QK_K, 110),
            Self::Q4K => (kquant::QK_K, 144),
            Self::Q5K => (kquant::QK_K, 176),
            Self::Q6K => (kquant::QK_K, 210),
            Self::Q8K => (kquant::QK_K, 292),
        }
    }

    /// ggml's name for the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q8_0 => "Q8_0",
            Self::Q2K => "Q2_K",
            Self::Q3K => "Q3_K",
            Self::Q4K => "Q4_K",
            Self::Q5K => "Q5_K",
            Self::Q6K => "Q6_K",
            Self::Q8K => "Q8_K",
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A block's scales that ggml checks (`d`, and `dmin` or `m` where the type has one; 0
/// stands in for a missing one and for the float types, which have none).
fn block_scales(ty: GgmlType, blk: &[u8]) -> [f32; 2] {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => [0.0; 2],
        Q4_0 | Q8_0 => [f16_at(blk, 0), 0.0],
        Q4_1 | Q4K | Q5K => [f16_at(blk, 0), f16_at(blk, 2)],
        Q2K => [f16_at(blk, 80), f16_at(blk, 82)],
        Q3K => [f16_at(blk, 108), 0.0],
        Q6K => [f16_at(blk, 208), 0.0],
        Q8K => [f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]), 0.0],
    }
}

/// The first block whose scale is not finite, as (block index, scale): ggml refuses such
/// data (`ggml_validate_row_data`), and dequantizing it would spread NaN through the model.
pub(crate) fn first_bad_block(ty: GgmlType, raw: &[u8]) -> Option<(usize, f32)> {
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return None;
    }
    raw.chunks_exact(ty.block().1)
        .enumerate()
        .find_map(|(i, blk)| {
            block_scales(ty, blk)
                .into_iter()
                .find(|s| !s.is_finite())
                .map(|s| (i, s))
        })
}

pub(super) fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// `raw` holds exactly `numel / block * block_bytes` bytes (checked by the reader).
pub(crate) fn dequantize(ty: GgmlType, raw: &[u8], numel: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(numel);
    match ty {
        GgmlType::F32 => out.extend(
            raw.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::BF16 => out.extend(
            raw.chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            // d: f16, qs: 32 × i8; x = d · q
            for blk in raw.chunks_exact(34) {
                let d = f16_at(blk, 0);
                out.extend(blk[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            // d: f16, qs: 16 bytes; low nibbles are elements 0..16, high nibbles 16..32; x = d · (q - 8)
            for blk in raw.chunks_exact(18) {
                let d = f16_at(blk, 0);
                let qs = &blk[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            // d: f16, m: f16, qs: 16 bytes; same nibble order as Q4_0; x = d · q + m
            for blk in raw.chunks_exact(20) {
                let (d, m) = (f16_at(blk, 0), f16_at(blk, 2));
                let qs = &blk[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q2K
        | GgmlType::Q3K
        | GgmlType::Q4K
        | GgmlType::Q5K
        | GgmlType::Q6K
        | GgmlType::Q8K => {
            let block: fn(&[u8], &mut Vec<f32>) = match ty {
                GgmlType::Q2K => kquant::q2_k,
                GgmlType::Q3K => kquant::q3_k,
                GgmlType::Q4K => kquant::q4_k,
                GgmlType::Q5K => kquant::q5_k,
                GgmlType::Q6K => kquant::q6_k,
                _ => kquant::q8_k,
            };
            raw.chunks_exact(ty.block().1)
                .for_each(|b| block(b, &mut out));
        }
    }
    debug_assert_eq!(out.len(), numel);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_block_layout() {
        let mut blk = Vec::new();
        blk.extend(f16::from_f32(0.5).to_le_bytes());
        blk.extend(f16::from_f32(-1.0).to_le_bytes());
        // Byte j holds element j (low nibble) and element j + 16 (high nibble).
        blk.extend((0..16u8).map(|j| (15 - j) << 4 | j));
        let x = dequantize(GgmlType::Q4_1, &blk, 32);
        assert_eq!(x[0], -1.0);
        assert_eq!(x[3], 0.5 * 3.0 - 1.0);
        assert_eq!(x[16], 0.5 * 15.0 - 1.0);
        assert_eq!(x[31], -1.0);
    }

    #[test]
    fn q8_0_and_q4_0() {
        let mut blk = Vec::new();
        blk.extend(f16::from_f32(0.25).to_le_bytes());
        blk.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let x = dequantize(GgmlType::Q8_0, &blk, 32);
        assert_eq!(x[0], -4.0);
        assert_eq!(x[31], 15.0 * 0.25);
        let mut blk = Vec::new();
        blk.extend(f16::from_f32(2.0).to_le_bytes());
        blk.extend([0x8fu8; 16]);
        let x = dequantize(GgmlType::Q4_0, &blk, 32);
        assert_eq!((x[0], x[16]), (14.0, 0.0));
    }
}
