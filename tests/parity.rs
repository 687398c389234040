//! Logits parity with transformers on committed fixtures (scripts/make_parity_fixtures.py):
//! a tiny random Llama (GQA, untied head) as a safetensors directory, and the same weights
//! as a GGUF file in six ggml types with llama.cpp's q/k layout, each loaded by transformers.

use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::pretrained;

type B = Flex;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap()
}

fn logits_of(model_path: &std::path::Path, want_key: &str) -> f32 {
    let exp = expected();
    let ids: Vec<Vec<i64>> = serde_json::from_value(exp["input_ids"].clone()).unwrap();
    let want: Vec<f32> = serde_json::from_value(exp[want_key].clone()).unwrap();
    let p = pretrained::load::<B>(model_path.to_str().unwrap(), &Default::default()).unwrap();
    let (b, t) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.into_iter().flatten().collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, t]), &Default::default());
    let got = p.model.forward(input, None).into_data().to_vec::<f32>().unwrap();
    assert_eq!(got.len(), want.len());
    got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn safetensors_directory_matches_transformers() {
    let diff = logits_of(&fixtures().join("tiny_hf"), "hf_logits");
    eprintln!("max |Δ logits| vs transformers (safetensors): {diff:e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn gguf_matches_transformers_gguf_loader() {
    // Q8_0, Q4_1, Q4_0, F16, BF16 and F32 tensors; q/k rows in llama.cpp's interleaved order.
    let diff = logits_of(&fixtures().join("tiny.gguf"), "gguf_logits");
    eprintln!("max |Δ logits| vs transformers (GGUF): {diff:e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn hf_config_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(fixtures().join("tiny_hf/model.safetensors"), dir.path().join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(fixtures().join("tiny_hf/config.json")).unwrap();
    let load = || pretrained::load::<B>(dir.path().to_str().unwrap(), &Default::default()).err().map(|e| e.to_string()).unwrap_or_default();
    std::fs::write(dir.path().join("config.json"), config.replace("\"llama\"", "\"gpt2\"")).unwrap();
    assert!(load().contains("config.json: model_type 'gpt2' is not supported"), "{}", load());
    std::fs::write(dir.path().join("config.json"), config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65")).unwrap();
    let msg = load();
    assert!(msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[65, 32]"), "{msg}");
    // A truncated safetensors file.
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    let bytes = std::fs::read(fixtures().join("tiny_hf/model.safetensors")).unwrap();
    std::fs::write(dir.path().join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let msg = load();
    assert!(msg.contains("model.safetensors: invalid safetensors file"), "{msg}");
}
