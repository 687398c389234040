//! QLoRA on the Rust core: transformers + bitsandbytes 4-bit checkpoints load with the same
//! logits and bytes (fixtures from scripts/make_quant_fixtures.py), runner's own 4-bit
//! checkpoints round-trip exactly, and adapters train through frozen quantized weights with
//! the same gradients as through the dequantized dense weights.

use crate::common::max_abs_diff;
use std::sync::Arc;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::linear::Weight;
use runner::model::llama::LINEAR_TARGETS;
use runner::model::load::load_llama_hf_dir;
use runner::model::params::Snapshot;
use runner::model::quantize::{dequantize_model, quantize_model};
use runner::model::{Llama, TinyOptions};
use runner::peft::Targets;
use runner::peft::lora::LoraConfig;
use runner::quant::{QuantConfig, QuantDtype, QuantizedTensor};
use runner::train::{AdamWConfig, Schedule, Trainer};
use safetensors::SafeTensors;

type B = Autodiff<Flex>;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn f32s(st: &SafeTensors, name: &str) -> Vec<f32> {
    st.tensor(name)
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn expected_logits(name: &str) -> (Tensor<B, 2, Int>, Vec<f32>) {
    let bytes = std::fs::read(fixtures().join("quant/expected.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids_view = st.tensor("input_ids").unwrap();
    let ids: Vec<i64> = ids_view
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    let shape = [ids_view.shape()[0], ids_view.shape()[1]];
    (
        Tensor::from_data(TensorData::new(ids, shape), &Default::default()),
        f32s(&st, &format!("{name}.logits")),
    )
}

fn logits(model: &Llama<B>, ids: Tensor<B, 2, Int>) -> Vec<f32> {
    model
        .detached()
        .forward(ids, None)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn quantized(model: &Llama<B>, layer: usize, proj: &str) -> Arc<QuantizedTensor> {
    model.layers[layer]
        .linear(proj)
        .unwrap()
        .weight
        .quantized()
        .expect("quantized weight")
        .clone()
}

#[test]
fn bitsandbytes_checkpoints_load_with_transformers_logits() {
    for name in ["tiny_bnb_nf4", "tiny_bnb_fp4"] {
        let model =
            load_llama_hf_dir::<B>(&fixtures().join("quant").join(name), &Default::default())
                .unwrap();
        assert!(
            model.layers[0].linear("q_proj").unwrap().dense().is_none(),
            "{name}: projections stay quantized"
        );
        let (ids, want) = expected_logits(name);
        let diff = max_abs_diff(&logits(&model, ids), &want);
        eprintln!("{name}: max |Δ logits| vs transformers + bitsandbytes: {diff:e}");
        assert!(diff < 1e-4, "{name}: {diff}");
    }
}

/// Quantizing the f32 checkpoint in runner gives exactly the bytes transformers + bitsandbytes
/// stored for the same weights.
#[test]
fn runner_quantizes_a_checkpoint_to_the_same_bytes_as_bitsandbytes() {
    let dev = Default::default();
    let bnb = load_llama_hf_dir::<B>(&fixtures().join("quant/tiny_bnb_nf4"), &dev).unwrap();
    let mut ours = load_llama_hf_dir::<B>(&fixtures().join("quant/tiny_bf16_hf"), &dev).unwrap();
    let summary = quantize_model(
        &mut ours,
        QuantConfig {
            dtype: QuantDtype::Nf4,
            block: 64,
            double: true,
        },
    )
    .unwrap();
    assert_eq!(
        summary.quantized_params,
        2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64
    );
    for layer in 0..1 {
        for t in LINEAR_TARGETS {
            assert_eq!(
                *quantized(&ours, layer, t),
                *quantized(&bnb, layer, t),
                "layers.{layer}.{t}"
            );
        }
    }
}

#[test]
fn saved_4bit_checkpoint_loads_back_identically() {
    let dev = Default::default();
    for config in [
        QuantConfig {
            dtype: QuantDtype::Nf4,
            block: 32,
            double: true,
        },
        QuantConfig {
            dtype: QuantDtype::Fp4,
            block: 64,
            double: false,
        },
    ] {
        let mut model =
            load_llama_hf_dir::<B>(&fixtures().join("quant/tiny_bf16_hf"), &dev).unwrap();
        quantize_model(&mut model, config).unwrap();
        let dir = tempfile::tempdir().unwrap();
        runner::model::save::save_pretrained(&model, dir.path()).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            cfg["quantization_config"]["bnb_4bit_quant_type"],
            config.dtype.name()
        );
        assert_eq!(
            cfg["quantization_config"]["bnb_4bit_use_double_quant"],
            config.double
        );
        let back = load_llama_hf_dir::<B>(dir.path(), &dev).unwrap();
        for layer in 0..1 {
            for t in LINEAR_TARGETS {
                let (a, b) = (quantized(&model, layer, t), quantized(&back, layer, t));
                assert_eq!(*a, *b, "{config:?} layers.{layer}.{t}");
                assert_eq!(a.dequantize(), b.dequantize());
            }
        }
        let (ids, _) = expected_logits("tiny_bnb_nf4");
        assert_eq!(logits(&model, ids.clone()), logits(&back, ids));
    }
}

#[test]
fn int_types_are_refused_by_the_bitsandbytes_writer() {
    let mut model =
        load_llama_hf_dir::<B>(&fixtures().join("quant/tiny_bf16_hf"), &Default::default())
            .unwrap();
    quantize_model(
        &mut model,
        QuantConfig {
            dtype: QuantDtype::Int8,
            block: 32,
            double: false,
        },
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = runner::model::save::save_pretrained(&model, dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("nf4 and fp4 only, not int8"), "{e}");
    assert!(
        !dir.path().join("model.safetensors").exists(),
        "nothing half-written"
    );
}

fn tiny() -> Llama<B> {
    let opts = TinyOptions {
        seed: 3,
        ..Default::default()
    };
    Llama::random(opts.config(), 3, opts.std(), &Default::default()).unwrap()
}

fn batch() -> Batch {
    let a = Example::pair("Q: 2 plus 2?\nA:", " 4.\n");
    let b = Example::text("The quick brown fox jumps over the lazy dog.");
    Batch::collate(&[&a, &b], 64, &ByteTokenizer).unwrap()
}

fn lora() -> LoraConfig {
    LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Targets::names(&LINEAR_TARGETS),
        ..Default::default()
    }
}

/// The custom backward of the quantized matmul (dequantize again, multiply) gives the same
/// adapter gradients, hence the same training, as a dense frozen copy of the dequantized
/// weights; and the quantized weights stay untouched.
#[test]
fn adapters_train_through_quantized_weights_like_through_dense_ones() {
    // The tiny model's MLP is 176 wide, so blocks of 16 keep rows whole.
    let config = QuantConfig {
        dtype: QuantDtype::Nf4,
        block: 16,
        double: true,
    };
    let mut q = tiny();
    quantize_model(&mut q, config).unwrap();
    let mut dense = q.clone();
    dequantize_model(&mut dense);
    assert!(matches!(
        dense.layers[1].linear("v_proj").unwrap().weight,
        Weight::Dense(_)
    ));
    let before = quantized(&q, 1, "v_proj");
    let b = batch();
    let mut losses = Vec::new();
    for model in [&mut q, &mut dense] {
        runner::peft::lora::attach(model, "default", &lora()).unwrap();
        let mut trainer = Trainer::<B>::new(
            AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
            Schedule::default(),
            0,
        )
        .unwrap();
        losses.push(
            (0..4)
                .map(|_| trainer.step(model, &b).unwrap().loss)
                .collect::<Vec<f64>>(),
        );
    }
    eprintln!("quantized {:?}\ndense     {:?}", losses[0], losses[1]);
    for (a, b) in losses[0].iter().zip(&losses[1]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert!(
        losses[0][3] < losses[0][0] - 0.05,
        "loss falls: {:?}",
        losses[0]
    );
    let (mut sq, mut sd) = (Snapshot::default(), Snapshot::default());
    q.visit(&mut sq);
    dense.visit(&mut sd);
    let a = sq.get("layers.1.self_attn.v_proj.lora[default].A").unwrap();
    let d = sd.get("layers.1.self_attn.v_proj.lora[default].A").unwrap();
    assert!(max_abs_diff(a, d) < 1e-5);
    assert!(
        Arc::ptr_eq(&before, &quantized(&q, 1, "v_proj")),
        "the frozen 4-bit weight is never rewritten"
    );
    let count = q.param_count();
    assert_eq!(
        count.total,
        dense.param_count().total,
        "quantized weights still count as parameters"
    );
}

#[test]
fn bad_quantization_and_merges_are_clear_errors() {
    let mut model = tiny();
    let e = quantize_model(
        &mut model,
        QuantConfig {
            block: 64,
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("layers.0.down_proj")
            && e.contains("block size 64 does not divide the row length 176"),
        "{e}"
    );
    assert!(
        model
            .layers
            .iter()
            .all(|l| l.linear("q_proj").unwrap().dense().is_some()),
        "a failed quantize changes nothing"
    );
    quantize_model(
        &mut model,
        QuantConfig {
            block: 16,
            ..Default::default()
        },
    )
    .unwrap();
    let e = quantize_model(
        &mut model,
        QuantConfig {
            dtype: QuantDtype::Int8,
            block: 16,
            double: false,
        },
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        e,
        "the model is already quantized (nf4, block 16); dequantize() it first"
    );
    runner::peft::lora::attach(&mut model, "default", &lora()).unwrap();
    let e = runner::peft::merge(&mut model).unwrap_err().to_string();
    assert!(
        e.contains("base weight is quantized; dequantize the model first"),
        "{e}"
    );
    let pissa = LoraConfig {
        init: runner::peft::lora::LoraInit::Pissa,
        ..lora()
    };
    let e = runner::peft::lora::attach(&mut model, "p", &pissa)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attach PiSSA before quantizing"), "{e}");
}

/// A truncated or inconsistent 4-bit checkpoint is an error naming the tensor.
#[test]
fn broken_4bit_checkpoints_are_clear_errors() {
    let src = fixtures().join("quant/tiny_bnb_nf4");
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter(|(n, _)| n != "model.layers.0.mlp.up_proj.weight.nested_absmax")
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    runner::model::save::write_safetensors_raw(&dir.path().join("model.safetensors"), &tensors)
        .unwrap();
    let e = load_llama_hf_dir::<B>(dir.path(), &Default::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.layers.0.mlp.up_proj.weight: missing tensor model.layers.0.mlp.up_proj.weight.nested_absmax"), "{e}");
}

/// Loading reads each tensor through a map of the checkpoint file; the pages read are given
/// back as soon as the tensor is converted, so a checkpoint does not sit in resident memory
/// (and in the measured peak) beside the model built from it. A 7B-shaped checkpoint loaded
/// into NF4 depends on this to fit: its bf16 file alone is 13 GB.
#[test]
fn a_checkpoint_does_not_stay_resident_while_it_loads() {
    if !crate::common::in_own_process("qlora::a_checkpoint_does_not_stay_resident_while_it_loads") {
        return;
    }
    let config = runner::model::LlamaConfig {
        hidden_size: 256,
        intermediate_size: 1024,
        num_hidden_layers: 16,
        num_attention_heads: 4,
        num_key_value_heads: 4,
        vocab_size: 512,
        tie_word_embeddings: false,
        ..runner::model::LlamaConfig::smollm2_135m()
    };
    let dir = tempfile::tempdir().unwrap();
    {
        let model = Llama::<Flex>::random(config, 0, 0.02, &Default::default()).unwrap();
        runner::model::save::save_pretrained(&model, dir.path()).unwrap();
    }
    let file = std::fs::metadata(dir.path().join("model.safetensors"))
        .unwrap()
        .len();
    assert!(file > 60 << 20, "{file}");
    runner::memory::reset_peak();
    let before = runner::memory::peak_rss_bytes().unwrap();
    let model = load_llama_hf_dir::<Flex>(dir.path(), &Default::default()).unwrap();
    let growth = runner::memory::peak_rss_bytes().unwrap() - before;
    eprintln!(
        "checkpoint {:.1} MB, peak growth while loading {:.1} MB",
        file as f64 / 1e6,
        growth as f64 / 1e6
    );
    // The model's own f32 weights are the file's size; the file's pages kept mapped would
    // double that.
    assert!(
        (growth as f64) < 1.5 * file as f64,
        "peak grew by {growth} bytes loading a {file}-byte checkpoint"
    );
    assert_eq!(model.config.num_hidden_layers, 16);
}
