//! Logits parity with transformers on committed fixtures (scripts/make_parity_fixtures.py):
//! a tiny random Llama (GQA, untied head) as a safetensors directory, and the same weights
//! as a GGUF file in six ggml types with llama.cpp's q/k layout, each loaded by transformers.

use crate::common::max_abs_diff;
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::pretrained;

type B = Flex;

fn fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
        .unwrap()
}

fn logits_of(model_path: &std::path::Path, want_key: &str) -> f32 {
    let exp = expected();
    let (ids, want) = ids_and_logits(&exp, want_key);
    logit_diff(model_path, ids, &want).0
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
    std::fs::copy(
        fixtures().join("tiny_hf/model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let config = std::fs::read_to_string(fixtures().join("tiny_hf/config.json")).unwrap();
    let load = || {
        pretrained::load::<B>(dir.path().to_str().unwrap(), &Default::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"llama\"", "\"gpt2\""),
    )
    .unwrap();
    assert!(
        load().contains("config.json: model_type 'gpt2' is not supported"),
        "{}",
        load()
    );
    std::fs::write(
        dir.path().join("config.json"),
        config.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    let msg = load();
    assert!(
        msg.contains("model.layers.0.mlp.gate_proj.weight") && msg.contains("[65, 32]"),
        "{msg}"
    );
    // A missing tensor.
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    {
        let src = std::fs::read(fixtures().join("tiny_hf/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&src).unwrap();
        let views: Vec<(String, safetensors::tensor::TensorView)> = st
            .tensors()
            .into_iter()
            .filter(|(n, _)| n != "model.norm.weight")
            .collect();
        std::fs::write(
            dir.path().join("model.safetensors"),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    let msg = load();
    assert!(msg.contains("missing tensor 'model.norm.weight'"), "{msg}");
    // A truncated safetensors file.
    std::fs::write(dir.path().join("config.json"), &config).unwrap();
    let bytes = std::fs::read(fixtures().join("tiny_hf/model.safetensors")).unwrap();
    std::fs::write(
        dir.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .unwrap();
    let msg = load();
    assert!(
        msg.contains("model.safetensors: invalid safetensors file"),
        "{msg}"
    );
}

/// Rewrites the f32 fixture: every tensor through `convert` into files of `dtype`, split into
/// `shards` files (with an index when more than one).
fn rewrite_fixture(
    dir: &std::path::Path,
    dtype: safetensors::Dtype,
    shards: usize,
    round: impl Fn(f32) -> Vec<u8>,
) {
    let src = std::fs::read(fixtures().join("tiny_hf/model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&src).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (k, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = if shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{shards:05}.safetensors", k + 1)
        };
        let mut buffers = Vec::new();
        for name in chunk {
            let view = st.tensor(name).unwrap();
            let bytes: Vec<u8> = view
                .data()
                .chunks_exact(4)
                .flat_map(|c| round(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                .collect();
            buffers.push((name.clone(), view.shape().to_vec(), bytes));
            weight_map.insert(name.clone(), serde_json::Value::String(file.clone()));
        }
        let views: Vec<(String, safetensors::tensor::TensorView)> = buffers
            .iter()
            .map(|(n, shape, b)| {
                (
                    n.clone(),
                    safetensors::tensor::TensorView::new(dtype, shape.clone(), b).unwrap(),
                )
            })
            .collect();
        std::fs::write(
            dir.join(&file),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    if shards > 1 {
        let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
        std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    }
    std::fs::copy(
        fixtures().join("tiny_hf/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
}

fn logits_at(dir: &std::path::Path) -> Vec<f32> {
    let exp = expected();
    let ids: Vec<Vec<i64>> = serde_json::from_value(exp["input_ids"].clone()).unwrap();
    let p = pretrained::load::<B>(dir.to_str().unwrap(), &Default::default()).unwrap();
    let (b, t) = (ids.len(), ids[0].len());
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(ids.into_iter().flatten().collect::<Vec<_>>(), [b, t]),
        &Default::default(),
    );
    p.model
        .forward(input, None)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn f16_bf16_and_sharded_checkpoints_load_exactly() {
    use half::{bf16, f16};
    use safetensors::Dtype;
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| {
        let d = tmp.path().join(name);
        std::fs::create_dir(&d).unwrap();
        d
    };
    // A half-precision file must give exactly the model of its values widened to f32.
    for (label, dtype) in [("f16", Dtype::F16), ("bf16", Dtype::BF16)] {
        let half_dir = dir(label);
        let wide_dir = dir(&format!("{label}_as_f32"));
        let narrow = move |x: f32| -> (Vec<u8>, f32) {
            match dtype {
                Dtype::F16 => (
                    f16::from_f32(x).to_le_bytes().to_vec(),
                    f16::from_f32(x).to_f32(),
                ),
                _ => (
                    bf16::from_f32(x).to_le_bytes().to_vec(),
                    bf16::from_f32(x).to_f32(),
                ),
            }
        };
        rewrite_fixture(&half_dir, dtype, 1, move |x| narrow(x).0);
        rewrite_fixture(&wide_dir, Dtype::F32, 1, move |x| {
            narrow(x).1.to_le_bytes().to_vec()
        });
        assert_eq!(logits_at(&half_dir), logits_at(&wide_dir), "{label}");
    }
    // Three shards with an index load the same model as one file.
    let sharded = dir("sharded");
    rewrite_fixture(&sharded, Dtype::F32, 3, |x| x.to_le_bytes().to_vec());
    assert!(sharded.join("model-00003-of-00003.safetensors").exists());
    assert_eq!(logits_at(&sharded), logits_at(&fixtures().join("tiny_hf")));
}

#[test]
fn corrupted_safetensors_never_panic() {
    use rand::{Rng, SeedableRng};
    let good = std::fs::read(fixtures().join("tiny_hf/model.safetensors")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("tiny_hf/config.json"),
        tmp.path().join("config.json"),
    )
    .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    // The header (JSON) is where a parser can go wrong: corrupt bytes there, or truncate anywhere.
    let header_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize + 8;
    for round in 0..300 {
        let mut bytes = good.clone();
        match rng.random_range(0..3) {
            0 => {
                let at = rng.random_range(0..header_len);
                bytes[at] = rng.random();
            }
            1 => bytes.truncate(rng.random_range(0..bytes.len())),
            _ => {
                let big = [u64::MAX, 1 << 40, 7][rng.random_range(0..3)];
                bytes[..8].copy_from_slice(&big.to_le_bytes());
            }
        }
        std::fs::write(tmp.path().join("model.safetensors"), &bytes).unwrap();
        let path = tmp.path().to_str().unwrap().to_string();
        let result = std::panic::catch_unwind(|| {
            pretrained::load::<B>(&path, &Default::default()).map(|_| ())
        });
        assert!(result.is_ok(), "round {round}: loading panicked");
    }
}

/// The largest |Δ| between the logits of the model at `path` on `ids` and `want`, with the
/// loaded model for further checks.
fn logit_diff(
    path: &std::path::Path,
    ids: Vec<Vec<i64>>,
    want: &[f32],
) -> (f32, pretrained::Pretrained<B>) {
    let p = pretrained::load::<B>(path.to_str().unwrap(), &Default::default()).unwrap();
    let diff = max_abs_diff(&forward_flat(&p.model, ids), want);
    (diff, p)
}

fn kquant_fixtures() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kquant")
}

fn json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A fixture's input ids and the logits stored under `key`.
fn ids_and_logits(exp: &serde_json::Value, key: &str) -> (Vec<Vec<i64>>, Vec<f32>) {
    (
        serde_json::from_value(exp["input_ids"].clone()).unwrap(),
        serde_json::from_value(exp[key].clone()).unwrap(),
    )
}

#[test]
fn gguf_k_quants_match_transformers_gguf_loader() {
    // Q2_K, Q3_K, Q4_K, Q5_K and Q6_K tensors (scripts/make_kquant_fixtures.py).
    let exp = json(&kquant_fixtures().join("kquant_expected.json"));
    let (ids, want) = ids_and_logits(&exp, "logits");
    let (diff, _) = logit_diff(&kquant_fixtures().join("tiny_kquant.gguf"), ids, &want);
    let scale = want.iter().fold(0.0f32, |m, x| m.max(x.abs()));
    eprintln!("max |Δ logits| vs transformers (K-quant GGUF): {diff:e} (largest logit {scale})");
    assert!(diff < 1e-4 * scale.max(1.0), "{diff}");
}

#[test]
fn gguf_rope_freqs_match_transformers_llama3_scaling() {
    // The Llama 3.1 fixture as llama.cpp's converter writes it: rope_freqs.weight, with and
    // without the scaling's metadata.
    let exp = json(&fixtures().join("llama3_expected.json"));
    let (ids, want) = ids_and_logits(&exp, "logits");
    for (file, recognised) in [
        ("llama3_freqs_meta.gguf", true),
        ("llama3_freqs.gguf", false),
    ] {
        let (diff, p) = logit_diff(&kquant_fixtures().join(file), ids.clone(), &want);
        eprintln!("{file}: max |Δ logits| vs transformers (llama3 rope): {diff:e}");
        assert!(diff < 1e-4, "{file}: {diff}");
        let c = &p.model.config;
        let out = tempfile::tempdir().unwrap();
        let saved = runner::model::save::save_pretrained(&p.model, out.path());
        if recognised {
            // The metadata names the scaling: the config holds it as transformers does.
            let s = c.rope_scaling.as_ref().expect("llama3 scaling recognised");
            assert_eq!((s.factor, s.original_max_position_embeddings), (8.0, 16));
            assert!(c.rope_freq_factors.is_none());
            saved.unwrap();
        } else {
            // Without it (the converter writes none) the divisors are used as they are, and
            // a transformers config cannot hold them.
            assert!(c.rope_scaling.is_none() && c.rope_freq_factors.is_some());
            let err = saved.unwrap_err().to_string();
            assert!(err.contains("rope frequency factors"), "{err}");
        }
    }
}

#[test]
fn llama3_rope_scaling_matches_transformers() {
    let exp = json(&fixtures().join("llama3_expected.json"));
    let (ids, want) = ids_and_logits(&exp, "logits");
    let (diff, p) = logit_diff(&fixtures().join("tiny_llama3_hf"), ids, &want);
    assert!(p.model.config.rope_scaling.is_some());
    eprintln!("max |Δ logits| vs transformers (llama3 rope): {diff:e}");
    assert!(diff < 1e-4, "{diff}");
}

#[test]
fn tokenizer_json_matches_transformers() {
    let tok =
        runner::data::tokenizer::TextTokenizer::from_hf_dir(&fixtures().join("tiny_hf")).unwrap();
    assert_eq!(
        (tok.bos, tok.eos),
        (tok.token_to_id("<s>"), tok.token_to_id("</s>"))
    );
    assert!(tok.bos.is_some());
    let cases: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("tiny_tokens.json")).unwrap(),
    )
    .unwrap();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids, want, "{text:?}");
        assert_eq!(
            tok.decode(&ids, true).unwrap(),
            case["decoded"].as_str().unwrap()
        );
    }
}

#[test]
fn mistral_sliding_window_matches_transformers_in_logits_and_cached_generation() {
    // scripts/make_mistral_fixtures.py: window 5, sequences of 14 tokens, and a greedy
    // continuation whose KV cache runs past the window.
    let exp = json(&fixtures().join("mistral_expected.json"));
    let (ids, want) = ids_and_logits(&exp, "logits");
    let (diff, p) = logit_diff(&fixtures().join("tiny_mistral_hf"), ids.clone(), &want);
    eprintln!("max |Δ logits| vs transformers (Mistral, sliding window 5): {diff:e}");
    assert_eq!(p.model.config.sliding_window, Some(5));
    assert!(diff < 1e-4, "{diff}");
    assert_greedy_continuation(&p.model, &exp);
    // Saved, it is a Mistral checkpoint again (transformers' Llama would drop the window).
    let out = tempfile::tempdir().unwrap();
    runner::model::save::save_pretrained(&p.model, out.path()).unwrap();
    let saved = json(&out.path().join("config.json"));
    assert_eq!(saved["model_type"], "mistral");
    assert_eq!(saved["sliding_window"], 5);
    assert!(logit_diff(out.path(), ids, &want).0 < 1e-4);
}

#[test]
fn qwen2_and_qwen3_match_transformers_and_peft() {
    // scripts/make_qwen_fixtures.py: Qwen2 (biases on q, k, v; tied head) and Qwen3 (q/k
    // norms per head; head_dim 16 with hidden 32 and 4 heads), each with a PEFT LoRA adapter.
    let exp = json(&fixtures().join("qwen_expected.json"));
    for family in ["qwen2", "qwen3"] {
        let e = &exp[family];
        let ids = || serde_json::from_value::<Vec<Vec<i64>>>(e["input_ids"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(e["logits"].clone()).unwrap();
        let dir = fixtures().join(format!("tiny_{family}_hf"));
        let (diff, p) = logit_diff(&dir, ids(), &want);
        eprintln!("{family}: max |Δ logits| vs transformers: {diff:e}");
        assert!(diff < 1e-4, "{family}: {diff}");
        let saved = check_lora_against_peft(&p.model, e, family);
        assert_eq!(saved["model_type"], family);
    }
}

/// Greedy decoding through the KV cache from the fixture's `prompt` gives its `greedy` tokens
/// (transformers', generated past the model's sliding window).
fn assert_greedy_continuation(model: &runner::model::Llama<B>, e: &serde_json::Value) {
    let prompt: Vec<u32> = serde_json::from_value(e["prompt"].clone()).unwrap();
    let greedy: Vec<u32> = serde_json::from_value(e["greedy"].clone()).unwrap();
    let opts = runner::generate::GenerateOptions {
        max_new_tokens: greedy.len(),
        ..Default::default()
    };
    assert_eq!(
        runner::generate::generate(model, &prompt, &opts).unwrap(),
        greedy
    );
}

/// LoRA r=4 on the default targets trains PEFT's count (`lora_r4_trainable` of the family's
/// fixture `e`); PEFT's adapter `tiny_<family>_lora` loads with PEFT's logits; merged and
/// saved, the model reloads with those logits. Returns the saved config.json.
fn check_lora_against_peft(
    model: &runner::model::Llama<B>,
    e: &serde_json::Value,
    family: &str,
) -> serde_json::Value {
    let ids = || serde_json::from_value::<Vec<Vec<i64>>>(e["input_ids"].clone()).unwrap();
    let mut with_lora = model.clone();
    let config = runner::peft::lora::LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    runner::peft::lora::attach(&mut with_lora, "default", &config).unwrap();
    assert_eq!(
        with_lora.param_count().trainable as u64,
        e["lora_r4_trainable"].as_u64().unwrap(),
        "{family}"
    );
    let mut adapted = model.clone();
    let lora_dir = fixtures().join(format!("tiny_{family}_lora"));
    runner::peft::format::load_adapter(&mut adapted, &lora_dir, "default").unwrap();
    let want: Vec<f32> = serde_json::from_value(e["lora_logits"].clone()).unwrap();
    let diff = max_abs_diff(&forward_flat(&adapted, ids()), &want);
    eprintln!("{family}: max |Δ logits| vs PEFT with the adapter: {diff:e}");
    assert!(diff < 1e-4, "{family} adapter: {diff}");
    let out = tempfile::tempdir().unwrap();
    runner::peft::merge_and_unload(&mut adapted).unwrap();
    runner::model::save::save_pretrained(&adapted, out.path()).unwrap();
    assert!(
        logit_diff(out.path(), ids(), &want).0 < 1e-4,
        "{family} saved"
    );
    json(&out.path().join("config.json"))
}

fn forward_flat(model: &runner::model::Llama<B>, ids: Vec<Vec<i64>>) -> Vec<f32> {
    let (b, t) = (ids.len(), ids[0].len());
    let flat: Vec<i64> = ids.into_iter().flatten().collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(flat, [b, t]), &Default::default());
    model
        .forward(input, None)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

#[test]
fn gemma2_and_gemma3_match_transformers_peft_and_cached_generation() {
    // scripts/make_gemma_fixtures.py: GeGLU, `1 + w` norms, four norms per layer, √d embedding
    // scale, query_pre_attn_scalar, sliding-window layers beside full ones (window 4 on 14
    // tokens); Gemma 2 with soft-capped scores and logits, Gemma 3 with q/k norms, a local
    // rope base and linear rope scaling on its full layers.
    let exp = json(&fixtures().join("gemma_expected.json"));
    for (family, model_type) in [("gemma2", "gemma2"), ("gemma3", "gemma3_text")] {
        let e = &exp[family];
        let ids = || serde_json::from_value::<Vec<Vec<i64>>>(e["input_ids"].clone()).unwrap();
        let want: Vec<f32> = serde_json::from_value(e["logits"].clone()).unwrap();
        let dir = fixtures().join(format!("tiny_{family}_hf"));
        let (diff, p) = logit_diff(&dir, ids(), &want);
        eprintln!("{family}: max |Δ logits| vs transformers: {diff:e}");
        assert!(diff < 1e-4, "{family}: {diff}");
        // Greedy decoding with the KV cache, past the window, gives transformers' tokens.
        assert_greedy_continuation(&p.model, e);
        // LN tuning trains Gemma's four norms a layer and the final one, as PEFT's does, and
        // starts from the model's own values (unchanged logits).
        let mut ln = p.model.clone();
        runner::peft::Method::LnTuning
            .attach(&mut ln, "ln")
            .unwrap();
        let c = &ln.config;
        assert_eq!(
            ln.param_count().trainable,
            (4 * c.num_hidden_layers + 1) * c.hidden_size
        );
        let base = forward_flat(&p.model, ids());
        assert!(max_abs_diff(&forward_flat(&ln, ids()), &base) < 1e-6);
        let saved = check_lora_against_peft(&p.model, e, family);
        assert_eq!(saved["model_type"], model_type);
        // transformers' config refuses a float here.
        assert_eq!(saved["query_pre_attn_scalar"], 24);
    }
}

#[test]
fn qwen_and_gemma_gguf_files_match_transformers() {
    // scripts/make_gguf_family_fixtures.py: llama.cpp's layout for each family (q/k rows not
    // permuted, Gemma's norms stored as 1 + w, Qwen2's q/k/v biases, Qwen3's and Gemma 3's q/k
    // norms), F32/F16/BF16/Q8_0/Q4_0/Q4_1 tensors; the reference is transformers on the
    // dequantized weights, which its own GGUF loader reproduces where it can read the file.
    let exp = json(&fixtures().join("gguf_families_expected.json"));
    for (arch, model_type) in [
        ("qwen2", "qwen2"),
        ("qwen3", "qwen3"),
        ("gemma2", "gemma2"),
        ("gemma3", "gemma3_text"),
    ] {
        let (ids, want) = ids_and_logits(&exp[arch], "logits");
        let (diff, p) = logit_diff(&fixtures().join(format!("tiny_{arch}.gguf")), ids, &want);
        eprintln!("{arch}: max |Δ logits| vs transformers on the dequantized weights: {diff:e}");
        assert!(diff < 1e-4, "{arch}: {diff}");
        assert_eq!(p.model.config.family.model_type(), model_type);
    }
}

#[test]
fn qwen_sliding_windows_apply_from_max_window_layers() {
    // scripts/make_qwen_fixtures.py: use_sliding_window with max_window_layers 1, window 4 on
    // 14 tokens, and a config without layer_types (as transformers 4 wrote it).
    let exp = json(&fixtures().join("qwen_window_expected.json"));
    let (ids, want) = ids_and_logits(&exp, "logits");
    let (diff, p) = logit_diff(&fixtures().join("tiny_qwen2_window_hf"), ids, &want);
    eprintln!("max |Δ logits| vs transformers (Qwen2, windows from layer 1): {diff:e}");
    let c = &p.model.config;
    assert_eq!(
        (0..3).map(|i| c.is_sliding(i)).collect::<Vec<_>>(),
        [false, true, true]
    );
    assert!(diff < 1e-4, "{diff}");
    // Saved, the windows stay where they were.
    let out = tempfile::tempdir().unwrap();
    runner::model::save::save_pretrained(&p.model, out.path()).unwrap();
    let saved = json(&out.path().join("config.json"));
    assert_eq!(saved["use_sliding_window"], true);
    assert_eq!(saved["max_window_layers"], 1);
    let (ids, _) = ids_and_logits(&exp, "logits");
    assert!(logit_diff(out.path(), ids, &want).0 < 1e-4);
}

#[test]
fn phi3_fused_projections_match_transformers_peft_and_gguf() {
    // scripts/make_phi3_fixtures.py: qkv_proj and gate_up_proj, a window of 4 on every layer,
    // a PEFT LoRA adapter on both fused projections, and the model as llama.cpp's GGUF.
    let exp = json(&fixtures().join("phi3_expected.json"));
    let (ids, want) = ids_and_logits(&exp, "logits");
    let (diff, p) = logit_diff(&fixtures().join("tiny_phi3_hf"), ids.clone(), &want);
    eprintln!("phi3: max |Δ logits| vs transformers: {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    let (gguf_diff, _) = logit_diff(&fixtures().join("tiny_phi3.gguf"), ids.clone(), &want);
    eprintln!("phi3 GGUF: max |Δ logits| vs transformers: {gguf_diff:e}");
    assert!(gguf_diff < 1e-4, "{gguf_diff}");
    // LoRA on the fused projections trains PEFT's count: one A per fused projection.
    let lora = |targets: &[&str]| runner::peft::lora::LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: runner::peft::Targets::names(targets),
        ..Default::default()
    };
    let mut model = p.model.clone();
    runner::peft::lora::attach(&mut model, "default", &lora(&["qkv_proj", "gate_up_proj"]))
        .unwrap();
    assert_eq!(
        model.param_count().trainable as u64,
        exp["lora_r4_trainable"].as_u64().unwrap()
    );
    // Llama's names are not Phi-3's: the error says which are.
    let err = runner::peft::lora::attach(&mut p.model.clone(), "x", &lora(&["q_proj"]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("qkv_proj, o_proj, gate_up_proj, down_proj"),
        "{err}"
    );
    // PEFT's adapter loads with PEFT's logits; merged and saved, a Phi-3 checkpoint again.
    let mut adapted = p.model.clone();
    runner::peft::format::load_adapter(&mut adapted, &fixtures().join("tiny_phi3_lora"), "default")
        .unwrap();
    let want: Vec<f32> = serde_json::from_value(exp["lora_logits"].clone()).unwrap();
    let diff = max_abs_diff(&forward_flat(&adapted, ids.clone()), &want);
    eprintln!("phi3: max |Δ logits| vs PEFT with the adapter: {diff:e}");
    assert!(diff < 1e-4, "{diff}");
    let out = tempfile::tempdir().unwrap();
    runner::peft::merge_and_unload(&mut adapted).unwrap();
    runner::model::save::save_pretrained(&adapted, out.path()).unwrap();
    let saved = json(&out.path().join("config.json"));
    assert_eq!(saved["model_type"], "phi3");
    assert_eq!(saved["sliding_window"], 4);
    assert!(logit_diff(out.path(), ids, &want).0 < 1e-4);
}
