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

/// The first block whose scale is not finite, as (block index, scale): ggml refuses such
/// data (`ggml_validate_row_data`), and dequantizing it would spread NaN through the model.
pub(crate) fn first_bad_block(ty: GgmlType, raw: &[u8]) -> Option<(usize, f32)> {
    let (_, block_bytes) = ty.block();
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return None;
    }
    raw.chunks_exact(block_bytes)
        .enumerate()
        .find_map(|(i, blk)| {
            kquant::super_scales(ty, blk)
                .into_iter()
                .find(|s| !s.is_finite())
                .map(|s| (i, s))
        })
}

fn f16_at(b: &[u8], i: usize) -> f32 {
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
        GgmlType::Q2K => raw.chunks_exact(84).for_each(|b| kquant::q2_k(b, &mut out)),
        GgmlType::Q3K => raw
            .chunks_exact(110)
            .for_each(|b| kquant::q3_k(b, &mut out)),
        GgmlType::Q4K => raw
            .chunks_exact(144)
            .for_each(|b| kquant::q4_k(b, &mut out)),
        GgmlType::Q5K => raw
            .chunks_exact(176)
            .for_each(|b| kquant::q5_k(b, &mut out)),
        GgmlType::Q6K => raw
            .chunks_exact(210)
            .for_each(|b| kquant::q6_k(b, &mut out)),
        GgmlType::Q8K => raw
            .chunks_exact(292)
            .for_each(|b| kquant::q8_k(b, &mut out)),
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
