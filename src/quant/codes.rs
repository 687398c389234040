//! Code books: the values a quantized code stands for, before scaling by its block's absmax.
//!
//! NF4 and FP4 are bitsandbytes' 4-bit data types; Int4 and Int8 are symmetric integer grids
//! (code `i` stands for `(i - 8) / 7` and `(i - 128) / 127`); the 8-bit "dynamic" map is the
//! one bitsandbytes uses to quantize the block constants in double quantization.

/// bitsandbytes' NF4 values (quantiles of N(0, 1) scaled to [-1, 1]), in code order,
/// written with the digits bitsandbytes publishes (more than an f32 holds).
#[allow(clippy::excessive_precision)]
pub(crate) const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 (E2M1 without infinities) magnitudes in bitsandbytes' code order, in twelfths;
/// codes 8..15 are the same values negated (code 8, "-0", is +0.0 in bitsandbytes' table).
const FP4_TWELFTHS: [f32; 8] = [0.0, 0.0625, 8.0, 12.0, 4.0, 6.0, 2.0, 3.0];

pub(crate) fn fp4() -> [f32; 16] {
    let mut v = [0.0f32; 16];
    for (i, t) in FP4_TWELFTHS.iter().enumerate() {
        v[i] = t / 12.0;
        v[i + 8] = if *t == 0.0 { 0.0 } else { -t / 12.0 };
    }
    v
}

/// Symmetric signed 4-bit grid: code `i` stands for `(i - 8) / 7`; code 0 (-8/7) is never produced.
pub(crate) fn int4() -> [f32; 16] {
    std::array::from_fn(|i| (i as f32 - 8.0) / 7.0)
}

/// Symmetric signed 8-bit grid: code `i` stands for `(i - 128) / 127`; code 0 is never produced.
pub(crate) fn int8() -> Vec<f32> {
    (0..256).map(|i| (i as f32 - 128.0) / 127.0).collect()
}

/// `steps` evenly spaced f32 values from `start` to `end`, computed the way PyTorch's
/// vectorized CPU `linspace` does (the first half counts up from `start`, the second half down
/// from `end`, each a fused multiply-add), so that the dynamic map below has the same bits as
/// bitsandbytes'.
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - i - 1) as f32, end)
            }
        })
        .collect()
}

/// bitsandbytes' signed dynamic 8-bit map (7 exponent levels, the fraction bits shrinking as
/// the exponent grows; Dettmers, "8-Bit Approximations for Parallelism in Deep Learning"):
/// 256 sorted values from about -0.993 to 1.0.
pub fn dynamic_map() -> Vec<f32> {
    let mut values: Vec<f64> = Vec::with_capacity(256);
    for i in 0..7 {
        let bounds = linspace_f32(0.1, 1.0, (1 << i) + 1);
        // bitsandbytes scales an f32 tensor by a Python float: the product is rounded to f32.
        let scale = 10f64.powi(i - 6) as f32;
        for w in bounds.windows(2) {
            let v = f64::from(scale * ((w[0] + w[1]) / 2.0));
            values.push(v);
            values.push(-v);
        }
    }
    values.push(0.0);
    values.push(1.0);
    values.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
    values.into_iter().map(|v| v as f32).collect()
}
