//! Dequantization of ggml's K-quants: super-blocks of 256 weights split into sub-blocks with
//! their own 4- to 8-bit scales (and for some types mins), themselves scaled by one or two
//! f16 super-block factors. Layouts and arithmetic are those of ggml's `block_q*_K` structs
//! and `dequantize_row_q*_K` (f32 products in the same order, so results equal gguf-py's).

use super::dequant::f16_at;

/// Weights per super-block (ggml's `QK_K`).
pub(crate) const QK_K: usize = 256;

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K and Q5_K: 6 bits
/// each, the upper two bits of the last four stored in the high bits of the first eight bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (d, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (d as f32, m as f32)
}

/// Q2_K (84 bytes): scales[16] (low nibble scale, high nibble min), qs[64] (2 bits),
/// d, dmin. x = d·scale·q − dmin·min.
pub(crate) fn q2_k(blk: &[u8], out: &mut Vec<f32>) {
    let (scales, qs) = (&blk[..16], &blk[16..80]);
    let (d, dmin) = (f16_at(blk, 80), f16_at(blk, 82));
    let mut is = 0;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let sc = scales[is];
                is += 1;
                let (dl, ml) = (d * (sc & 0x0f) as f32, dmin * (sc >> 4) as f32);
                out.extend(
                    q[part * 16..part * 16 + 16]
                        .iter()
                        .map(|&b| dl * ((b >> shift) & 3) as f32 - ml),
                );
            }
        }
    }
}

/// Q3_K (110 bytes): hmask[32] (the third bit, set = no offset), qs[64] (low 2 bits),
/// scales[12] (sixteen 6-bit scales, offset by 32), d. x = d·(scale − 32)·(q − 4·!h).
pub(crate) fn q3_k(blk: &[u8], out: &mut Vec<f32>) {
    let (hmask, qs, packed) = (&blk[..32], &blk[32..96], &blk[96..108]);
    let d_all = f16_at(blk, 108);
    // The 16 scales: low 4 bits from bytes 0..8 (low then high nibbles), high 2 bits from
    // bytes 8..12, two bits per scale.
    let mut scales = [0i8; 16];
    for (i, s) in scales.iter_mut().enumerate() {
        let low = if i < 8 {
            packed[i] & 0x0f
        } else {
            packed[i - 8] >> 4
        };
        let high = (packed[8 + i % 4] >> (2 * (i / 4))) & 3;
        *s = (low | (high << 4)) as i8 - 32;
    }
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = &qs[half * 32..half * 32 + 32];
        for shift in [0, 2, 4, 6] {
            for part in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                let range = part * 16..part * 16 + 16;
                out.extend(q[range.clone()].iter().zip(&hmask[range]).map(|(&b, &h)| {
                    let low = ((b >> shift) & 3) as i8;
                    dl * (low - if h & m != 0 { 0 } else { 4 }) as f32
                }));
            }
            m <<= 1;
        }
    }
}

/// Q4_K (144 bytes): d, dmin, scales[12] (eight 6-bit scales and mins), qs[128] (4 bits:
/// each 32 bytes hold two sub-blocks, low nibbles first). x = d·scale·q − dmin·min.
pub(crate) fn q4_k(blk: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qs) = (&blk[4..16], &blk[16..144]);
    for (chunk, q) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1, dmin * m1);
        let (d2, m2) = (d * sc2, dmin * m2);
        out.extend(q.iter().map(|&b| d1 * (b & 0x0f) as f32 - m1));
        out.extend(q.iter().map(|&b| d2 * (b >> 4) as f32 - m2));
    }
}

/// Q5_K (176 bytes): d, dmin, scales[12] as Q4_K, qh[32] (the fifth bit), qs[128].
pub(crate) fn q5_k(blk: &[u8], out: &mut Vec<f32>) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let (scales, qh, qs) = (&blk[4..16], &blk[16..48], &blk[48..176]);
    for (chunk, ql) in qs.chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1, dmin * m1);
        let (d2, m2) = (d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * chunk), 2u8 << (2 * chunk));
        let high = |h: u8, u: u8| if h & u != 0 { 16 } else { 0 };
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&b, &h)| d1 * ((b & 0x0f) + high(h, u1)) as f32 - m1),
        );
        out.extend(
            ql.iter()
                .zip(qh)
                .map(|(&b, &h)| d2 * ((b >> 4) + high(h, u2)) as f32 - m2),
        );
    }
}

/// Q6_K (210 bytes): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (i8), d.
/// x = d·scale·(q − 32).
pub(crate) fn q6_k(blk: &[u8], out: &mut Vec<f32>) {
    let d = f16_at(blk, 208);
    let start = out.len();
    out.resize(start + QK_K, 0.0);
    let y = &mut out[start..];
    for n in 0..2 {
        let ql = &blk[n * 64..n * 64 + 64];
        let qh = &blk[128 + n * 32..128 + n * 32 + 32];
        let sc = &blk[192 + n * 8..192 + n * 8 + 8];
        let y = &mut y[n * 128..n * 128 + 128];
        for l in 0..32 {
            let is = l / 16;
            let q = |low: u8, shift: u8| (low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32;
            let q1 = q(ql[l] & 0x0f, 0);
            let q2 = q(ql[l + 32] & 0x0f, 2);
            let q3 = q(ql[l] >> 4, 4);
            let q4 = q(ql[l + 32] >> 4, 6);
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

/// Q8_K (292 bytes): d (f32), qs[256] (i8), bsums[16] (i16, sums for dot products; unused
/// here). x = d·q.
pub(crate) fn q8_k(blk: &[u8], out: &mut Vec<f32>) {
    let d = f32::from_le_bytes([blk[0], blk[1], blk[2], blk[3]]);
    out.extend(blk[4..260].iter().map(|&q| d * (q as i8) as f32));
}

#[cfg(test)]
mod tests {
    use super::super::dequant::{GgmlType, dequantize};
    use super::super::gguf::tests::parse_bytes;

    fn fixture(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/kquant")
            .join(name)
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn every_k_quant_dequantizes_as_gguf_py_does() {
        // Three random super-blocks per type (scripts/make_kquant_fixtures.py): every bit of
        // every field is exercised, and the f32 arithmetic is ggml's, so values are equal.
        let blocks: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("blocks.json")).unwrap())
                .unwrap();
        let types = blocks.as_object().unwrap();
        assert_eq!(types.len(), 6);
        for (name, b) in types {
            let ty = GgmlType::from_id(b["type_id"].as_u64().unwrap() as u32).unwrap();
            assert_eq!(ty.name(), name);
            let raw = unhex(b["hex"].as_str().unwrap());
            let want: Vec<f32> = b["values"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect();
            assert_eq!(raw.len(), want.len() / ty.block().0 * ty.block().1);
            let got = dequantize(ty, &raw, want.len());
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / b.abs().max(1e-6))
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-6, "{name}: relative error {worst}");
        }
    }

    #[test]
    fn a_block_with_a_corrupt_scale_is_an_error_naming_the_tensor() {
        let path = fixture("tiny_kquant.gguf");
        let mut bytes = std::fs::read(&path).unwrap();
        let f = parse_bytes(&bytes).unwrap();
        let t = f.tensor("blk.0.attn_k.weight").unwrap().clone();
        assert_eq!(t.dtype, GgmlType::Q3K);
        assert!(f.dequantize(&t).is_ok());
        // Block 2's d (the f16 at byte 108 of a Q3_K block) becomes NaN.
        let at = t.offset as usize + 2 * 110 + 108;
        bytes[at..at + 2].copy_from_slice(&half::f16::NAN.to_le_bytes());
        let f = parse_bytes(&bytes).unwrap();
        let err = f
            .dequantize(f.tensor(&t.name).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("blk.0.attn_k.weight")
                && err.contains("Q3_K block 2")
                && err.contains("NaN"),
            "{err}"
        );
    }
}
