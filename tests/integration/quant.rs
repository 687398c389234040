//! Blockwise quantization against bitsandbytes' own output (tests/fixtures/quant, made by
//! scripts/make_quant_fixtures.py): packed bytes, absmax values, double-quantized constants
//! and dequantized values must all be bit-identical.

use runner::quant::blockwise::{NESTED_BLOCK, dequantize_dynamic_8bit, quantize_dynamic_8bit};
use runner::quant::{BlockScales, QuantConfig, QuantDtype, QuantizedTensor, codes};
use safetensors::SafeTensors;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/quant/blockwise.safetensors"
);

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    let t = st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}"));
    t.data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn u8s(st: &SafeTensors, name: &str) -> Vec<u8> {
    st.tensor(name)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .data()
        .to_vec()
}

/// Asserts bit equality, naming the first difference rather than printing both vectors.
fn assert_same_bits(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
        let n = (0..got.len())
            .filter(|&i| got[i].to_bits() != want[i].to_bits())
            .count();
        panic!(
            "{what}: {n} of {} differ; first at {i}: {} vs {}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
        let n = (0..got.len()).filter(|&i| got[i] != want[i]).count();
        panic!(
            "{what}: {n} of {} differ; first at {i}: {} vs {}",
            got.len(),
            got[i],
            want[i]
        );
    }
}

#[derive(serde::Deserialize)]
struct Case {
    name: String,
    quant_type: String,
    block: usize,
    double: bool,
    shape: Vec<usize>,
}

#[test]
fn dynamic_map_matches_bitsandbytes() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_same_bits(
        &codes::dynamic_map(),
        &f32s(&st, "dynamic_map"),
        "dynamic map",
    );
    assert_same_bits(
        &QuantDtype::Nf4.code_values(),
        &f32s(&st, "nf4_b64.quant_map"),
        "nf4 map",
    );
    assert_same_bits(
        &QuantDtype::Fp4.code_values(),
        &f32s(&st, "fp4_b64.quant_map"),
        "fp4 map",
    );
}

#[test]
fn four_bit_codes_and_constants_match_bitsandbytes() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
    let cases: Vec<Case> =
        serde_json::from_str(&meta.metadata().as_ref().unwrap()["cases"]).unwrap();
    assert_eq!(cases.len(), 6);
    for case in cases {
        let n = &case.name;
        let config = QuantConfig {
            dtype: QuantDtype::parse(&case.quant_type).unwrap(),
            block: case.block,
            double: case.double,
        };
        let input = f32s(&st, &format!("{n}.input"));
        let q = QuantizedTensor::quantize(&input, &case.shape, config).unwrap();
        assert_same_bytes(
            &q.data,
            &u8s(&st, &format!("{n}.packed")),
            &format!("{n}: packed codes"),
        );
        match &q.scales {
            BlockScales::Plain(absmax) => {
                assert!(!case.double);
                assert_same_bits(
                    absmax,
                    &f32s(&st, &format!("{n}.absmax")),
                    &format!("{n}: absmax"),
                );
            }
            BlockScales::Double {
                codes,
                nested_absmax,
                offset,
                nested_map,
            } => {
                assert!(case.double);
                assert_eq!(
                    offset.to_bits(),
                    f32s(&st, &format!("{n}.offset"))[0].to_bits(),
                    "{n}: offset"
                );
                assert_same_bits(
                    nested_absmax,
                    &f32s(&st, &format!("{n}.nested_absmax")),
                    &format!("{n}: nested absmax"),
                );
                assert_same_bytes(
                    codes,
                    &u8s(&st, &format!("{n}.absmax_codes")),
                    &format!("{n}: absmax codes"),
                );
                assert_same_bits(
                    nested_map,
                    &f32s(&st, &format!("{n}.nested_quant_map")),
                    &format!("{n}: nested map"),
                );
            }
        }
        let deq = q.dequantize();
        assert_same_bits(
            &deq,
            &f32s(&st, &format!("{n}.dequant")),
            &format!("{n}: dequantized values"),
        );
    }
}

#[test]
fn eight_bit_dynamic_quantizer_matches_bitsandbytes() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let map = f32s(&st, "dyn8.quant_map");
    let (codes, absmax) = quantize_dynamic_8bit(&f32s(&st, "dyn8.input"), &map, NESTED_BLOCK);
    assert_same_bytes(&codes, &u8s(&st, "dyn8.codes"), "8-bit codes");
    assert_same_bits(&absmax, &f32s(&st, "dyn8.absmax"), "8-bit absmax");
    let deq = dequantize_dynamic_8bit(&codes, &absmax, &map, NESTED_BLOCK);
    assert_same_bits(&deq, &f32s(&st, "dyn8.dequant"), "8-bit dequantized");
}

#[test]
fn float_sums_follow_pytorch_order() {
    let bytes = std::fs::read(FIXTURE).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for n in [1, 5, 7, 8, 13, 40, 300, 3000] {
        let got = runner::quant::torch_sum::sum_f32(&f32s(&st, &format!("sum{n}.input")));
        assert_eq!(
            got.to_bits(),
            f32s(&st, &format!("sum{n}.value"))[0].to_bits(),
            "sum of {n}"
        );
    }
}

/// Symmetric integer grids: every value lands within half a step of where it was, the block's
/// absmax is represented exactly, and zeros stay zero.
#[test]
fn integer_grids_round_to_the_nearest_step() {
    let values: Vec<f32> = (0..4096)
        .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    for (dtype, steps) in [(QuantDtype::Int4, 7.0f32), (QuantDtype::Int8, 127.0)] {
        for double in [false, true] {
            let q = QuantizedTensor::quantize(
                &values,
                &[64, 64],
                QuantConfig {
                    dtype,
                    block: 64,
                    double,
                },
            )
            .unwrap();
            let deq = q.dequantize();
            let absmax = q.scales.decode();
            for (i, (x, y)) in values.iter().zip(&deq).enumerate() {
                let am = absmax[i / 64];
                // Double quantization perturbs the scale itself, by at most 1% here.
                let tol = am / steps / 2.0 * 1.0001 + if double { x.abs() * 0.01 } else { 0.0 };
                assert!(
                    (x - y).abs() <= tol,
                    "{dtype} double={double}: {x} -> {y} (absmax {am})"
                );
            }
        }
        let zeros = QuantizedTensor::quantize(
            &[0.0; 64],
            &[64],
            QuantConfig {
                dtype,
                block: 64,
                double: false,
            },
        )
        .unwrap();
        assert!(zeros.dequantize().iter().all(|v| *v == 0.0));
    }
}

#[test]
fn transposed_dequantization_is_the_transpose() {
    let (rows, cols) = (70, 96);
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
        .collect();
    let q = QuantizedTensor::quantize(
        &values,
        &[rows, cols],
        QuantConfig {
            block: 32,
            ..Default::default()
        },
    )
    .unwrap();
    let (d, t) = (q.dequantize(), q.dequantize_transposed());
    for r in 0..rows {
        for c in 0..cols {
            assert_eq!(d[r * cols + c].to_bits(), t[c * rows + r].to_bits());
        }
    }
}

#[test]
fn storage_is_packed() {
    let values: Vec<f32> = (0..576 * 576)
        .map(|i| ((i * 31) % 997) as f32 / 997.0 - 0.5)
        .collect();
    let shape = [576, 576];
    let nf4 = QuantizedTensor::quantize(&values, &shape, QuantConfig::default()).unwrap();
    assert_eq!(nf4.data.len(), values.len() / 2);
    let per_param = nf4.bytes() as f64 / values.len() as f64;
    // 0.5 for the codes + 1/64 for the 8-bit block codes + the nested constants and map.
    assert!(per_param > 0.515 && per_param < 0.52, "{per_param}");
    let plain = QuantizedTensor::quantize(
        &values,
        &shape,
        QuantConfig {
            double: false,
            ..QuantConfig::default()
        },
    )
    .unwrap();
    assert!((plain.bytes() as f64 / values.len() as f64 - (0.5 + 4.0 / 64.0)).abs() < 1e-9);
    let int8 = QuantizedTensor::quantize(
        &values,
        &shape,
        QuantConfig {
            dtype: QuantDtype::Int8,
            block: 64,
            double: false,
        },
    )
    .unwrap();
    assert_eq!(int8.data.len(), values.len());
}

#[test]
fn bad_options_are_clear_errors() {
    let v = vec![1.0f32; 128];
    let err = |c: QuantConfig| {
        QuantizedTensor::quantize(&v, &[2, 64], c)
            .unwrap_err()
            .to_string()
    };
    assert_eq!(
        err(QuantConfig {
            block: 0,
            ..Default::default()
        }),
        "bad quantization block: block size must be positive, got 0"
    );
    assert!(
        err(QuantConfig {
            block: 33,
            ..Default::default()
        })
        .contains("even number of values, got 33")
    );
    let e = QuantConfig {
        block: 48,
        ..Default::default()
    }
    .validate(64)
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "bad quantization block: block size 48 does not divide the row length 64 (blocks must not straddle rows)"
    );
    assert_eq!(
        QuantDtype::parse("int3").unwrap_err().to_string(),
        "unsupported quantization dtype 'int3' (expected nf4, fp4, int4 or int8)"
    );
    let mut nan = v.clone();
    nan[5] = f32::NAN;
    let e = QuantizedTensor::quantize(&nan, &[2, 64], QuantConfig::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("value 5 is not finite"), "{e}");
}
