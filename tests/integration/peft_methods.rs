//! The PEFT method suite on the Rust core: parity with Hugging Face PEFT on committed adapters
//! (scripts/make_peft_fixtures.py), save/load round trips, merge/unmerge, named adapters, and
//! trainable-parameter counts on SmolLM2-135M's shape against PEFT's own counts.

use crate::common::max_abs_diff;
use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::params::{Param, ParamVisitor, Snapshot};
use runner::model::save::save_pretrained;
use runner::model::{Llama, LlamaConfig, TinyOptions};
use runner::peft::adamix::{AdaMixConfig, Share};
use runner::peft::bottleneck::{BottleneckConfig, Placement};
use runner::peft::compacter::CompacterConfig;
use runner::peft::format::{load_adapter, save_adapter};
use runner::peft::ia3::Ia3Config;
use runner::peft::krona::{KronaConfig, KronaPlacement};
use runner::peft::late::LadderConfig;
use runner::peft::lets::LetsConfig;
use runner::peft::lokr::LokrConfig;
use runner::peft::lora::{LoraConfig, LoraInit};
use runner::peft::prompt::{PrefixConfig, PromptConfig, PromptInit};
use runner::peft::selective::BitFitConfig;
use runner::peft::warp::WarpConfig;
use runner::peft::{self, Method, PeftError, Targets};
use runner::pretrained;
use runner::train::{AdamWConfig, Schedule, Trainer};

use crate::common::Perturb;

type B = Autodiff<Flex>;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("peft/expected.json")).unwrap())
        .unwrap()
}

fn tiny_hf() -> Llama<B> {
    pretrained::load::<B>(
        fixtures().join("parity/tiny_hf").to_str().unwrap(),
        &Default::default(),
    )
    .unwrap()
    .model
}

fn ids() -> Tensor<B, 2, Int> {
    let ids: Vec<Vec<i64>> = serde_json::from_value(expected()["input_ids"].clone()).unwrap();
    let (b, t) = (ids.len(), ids[0].len());
    Tensor::from_data(
        TensorData::new(ids.into_iter().flatten().collect::<Vec<_>>(), [b, t]),
        &Default::default(),
    )
}

fn logits(model: &Llama<B>) -> Vec<f32> {
    model
        .detached()
        .forward(ids(), None)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

fn peft_logits(key: &str) -> Vec<f32> {
    serde_json::from_value(expected()[key].clone()).unwrap()
}

#[test]
fn adapters_written_by_peft_reproduce_its_logits() {
    let base = logits(&tiny_hf());
    for name in [
        "lora",
        "lora_all_rslora",
        "dora",
        "ia3",
        "prompt",
        "prefix",
        "prefix_proj",
    ] {
        let mut model = tiny_hf();
        load_adapter(&mut model, &fixtures().join("peft").join(name), "default").unwrap();
        let got = logits(&model);
        let diff = max_abs_diff(&got, &peft_logits(name));
        eprintln!("{name}: max |Δ logits| vs PEFT = {diff:e}");
        assert!(diff < 1e-4, "{name}: {diff}");
        // The adapter really changes the model (the fixture weights are non-zero).
        assert!(
            max_abs_diff(&got, &base) > 1e-2,
            "{name} should change the logits"
        );
    }
}

fn lokr_expected() -> serde_json::Value {
    let path = fixtures().join("peft/lokr_expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// LoKr adapters PEFT wrote (scripts/make_lokr_fixtures.py): both factors low-rank, and full
/// factors split by `decompose_factor`; PEFT's logits, PEFT's merge, and the file runner
/// writes back has PEFT's keys, shapes and settings.
#[test]
fn lokr_adapters_written_by_peft_reproduce_its_logits_and_merge() {
    let expected = lokr_expected();
    let want = |key: &str| -> Vec<f32> { serde_json::from_value(expected[key].clone()).unwrap() };
    let base = logits(&tiny_hf());
    for name in ["lokr", "lokr_factor"] {
        let dir = fixtures().join("peft").join(name);
        let mut model = tiny_hf();
        load_adapter(&mut model, &dir, "default").unwrap();
        let got = logits(&model);
        let diff = max_abs_diff(&got, &want(name));
        eprintln!("{name}: max |Δ logits| vs PEFT = {diff:e}");
        assert!(diff < 1e-4, "{name}: {diff}");
        assert!(max_abs_diff(&got, &base) > 1e-2, "{name} changes nothing");

        // Saved again: the same tensors under the same names, and the same settings.
        let out = tempfile::tempdir().unwrap();
        save_adapter(&model, "default", out.path()).unwrap();
        let tensors = |d: &std::path::Path| {
            let bytes = std::fs::read(d.join("adapter_model.safetensors")).unwrap();
            let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
            let mut v: Vec<(String, Vec<usize>, Vec<u8>)> = st
                .tensors()
                .into_iter()
                .map(|(k, t)| (k, t.shape().to_vec(), t.data().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(tensors(out.path()), tensors(&dir), "{name}: tensors");
        let config = |d: &std::path::Path| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(d.join("adapter_config.json")).unwrap())
                .unwrap()
        };
        let (ours, theirs) = (config(out.path()), config(&dir));
        for key in [
            "peft_type",
            "r",
            "alpha",
            "decompose_both",
            "decompose_factor",
            "init_weights",
        ] {
            match (ours[key].as_f64(), theirs[key].as_f64()) {
                // PEFT writes alpha 4 where runner writes 4.0.
                (Some(a), Some(b)) => assert_eq!(a, b, "{name}: {key}"),
                _ => assert_eq!(ours[key], theirs[key], "{name}: {key}"),
            }
        }
    }
    let mut model = tiny_hf();
    load_adapter(&mut model, &fixtures().join("peft/lokr"), "default").unwrap();
    peft::merge_and_unload(&mut model).unwrap();
    let diff = max_abs_diff(&logits(&model), &want("lokr_merged"));
    assert!(diff < 1e-4, "merged: {diff}");
}

#[test]
fn merged_lora_matches_peft_merge_and_saves_a_loadable_checkpoint() {
    let mut model = tiny_hf();
    load_adapter(&mut model, &fixtures().join("peft/lora"), "default").unwrap();
    peft::merge_and_unload(&mut model).unwrap();
    assert!(model.adapters.is_empty());
    let merged = logits(&model);
    let diff = max_abs_diff(&merged, &peft_logits("lora_merged"));
    assert!(diff < 1e-4, "{diff}");
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(&model, dir.path()).unwrap();
    // Same tensor names as the checkpoint transformers wrote.
    let names = |p: PathBuf| {
        let bytes = std::fs::read(p).unwrap();
        let mut n: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .names()
            .into_iter()
            .map(String::from)
            .collect();
        n.sort();
        n
    };
    assert_eq!(
        names(dir.path().join("model.safetensors")),
        names(fixtures().join("parity/tiny_hf/model.safetensors"))
    );
    let reloaded = pretrained::load::<B>(dir.path().to_str().unwrap(), &Default::default())
        .unwrap()
        .model;
    assert_eq!(logits(&reloaded), merged);
}

/// A two-row batch: a question with its answer, and a plain sentence.
fn qa_batch() -> Batch {
    let a = Example::pair("Q: 2 plus 2?\nA:", " 4.\n");
    Batch::collate(
        &[&a, &Example::text("The quick brown fox.")],
        32,
        &ByteTokenizer,
    )
    .unwrap()
}

/// AdamW at 1e-2, a constant schedule.
fn trainer() -> Trainer<B> {
    Trainer::<B>::new(
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        Schedule::default(),
        0,
    )
    .unwrap()
}

fn all_methods() -> Vec<Method> {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..Default::default()
    };
    vec![
        Method::Lora(lora.clone()),
        Method::Lora(LoraConfig {
            dora: true,
            targets: Targets::AllLinear,
            ..lora.clone()
        }),
        Method::Lora(LoraConfig {
            init: LoraInit::Gaussian,
            rslora: true,
            targets: Targets::Pattern(r".*\.(q|o)_proj".into()),
            ..lora.clone()
        }),
        Method::Ia3(Ia3Config::default()),
        Method::Lokr(LokrConfig {
            rank: 2,
            alpha: 4.0,
            decompose_both: true,
            targets: Targets::AllLinear,
            ..Default::default()
        }),
        Method::Bottleneck(BottleneckConfig {
            reduction_factor: 4,
            ..Default::default()
        }),
        Method::Bottleneck(BottleneckConfig {
            placement: Placement::Pfeiffer,
            reduction_factor: 8,
            ..Default::default()
        }),
        Method::Prompt(PromptConfig {
            num_virtual_tokens: 4,
            ..Default::default()
        }),
        Method::Prompt(PromptConfig {
            num_virtual_tokens: 5,
            init: PromptInit::Tokens(vec![3, 9]),
            ..Default::default()
        }),
        Method::Prefix(PrefixConfig {
            num_virtual_tokens: 3,
            ..Default::default()
        }),
        Method::Prefix(PrefixConfig {
            num_virtual_tokens: 3,
            projection: Some(16),
            seed: 0,
        }),
        Method::BitFit(BitFitConfig::default()),
        Method::LnTuning,
    ]
    .into_iter()
    .chain(additive_methods())
    .collect()
}

/// KronA, Compacter, AdaMix and WARP on the tiny model (hidden 32).
fn additive_methods() -> Vec<Method> {
    vec![
        Method::Krona(KronaConfig {
            targets: Targets::AllLinear,
            scale: 2.0,
            ..Default::default()
        }),
        Method::Krona(KronaConfig {
            placement: KronaPlacement::Ffn,
            ..Default::default()
        }),
        Method::Compacter(CompacterConfig {
            reduction_factor: 2,
            ..Default::default()
        }),
        Method::Compacter(CompacterConfig {
            placement: Placement::Pfeiffer,
            reduction_factor: 4,
            ..Default::default()
        }),
        Method::AdaMix(AdaMixConfig {
            reduction_factor: 4,
            ..Default::default()
        }),
        Method::AdaMix(AdaMixConfig {
            placement: Placement::Pfeiffer,
            reduction_factor: 4,
            experts: 2,
            share: Share::None,
            consistency: 0.0,
            ..Default::default()
        }),
        Method::Warp(WarpConfig {
            prompt: PromptConfig {
                num_virtual_tokens: 3,
                ..Default::default()
            },
            labels: vec![3, 7],
            label_words: Vec::new(),
        }),
        Method::Ladder(LadderConfig {
            reduction_factor: 2,
            ..Default::default()
        }),
        Method::AttentionFusion,
        Method::Lets(LetsConfig {
            budget: 1,
            ..Default::default()
        }),
    ]
}

#[test]
fn fresh_adapters_are_no_ops_except_soft_prompts() {
    let base = logits(&tiny_hf());
    for method in all_methods() {
        let mut model = tiny_hf();
        method.attach(&mut model, "default").unwrap();
        let diff = max_abs_diff(&logits(&model), &base);
        if matches!(method, Method::Compacter(_)) {
            // Compacter starts near the identity: its rules are drawn at a scale of 1e-4.
            assert!(
                diff > 0.0 && diff < 1e-3,
                "{}: a fresh Compacter moved the logits by {diff}",
                method.kind()
            );
        } else if matches!(
            method,
            Method::Prompt(_) | Method::Prefix(_) | Method::Warp(_)
        ) {
            assert!(
                diff > 1e-3,
                "{}: soft prompts change the outputs",
                method.kind()
            );
        } else {
            assert!(
                diff < 1e-5,
                "{}: a fresh adapter changed the logits by {diff}",
                method.kind()
            );
        }
        // Disabling the adapter gives the base model back exactly.
        peft::set_active(&mut model, None).unwrap();
        assert_eq!(logits(&model), base, "{}", method.kind());
    }
}

#[test]
fn pissa_moves_the_top_singular_directions_into_the_adapter() {
    let mut model = tiny_hf();
    let base = logits(&model);
    let w_before = model.layers[0]
        .linear("q_proj")
        .unwrap()
        .dense()
        .unwrap()
        .value
        .clone()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let config = LoraConfig {
        rank: 4,
        alpha: 4.0,
        init: LoraInit::Pissa,
        ..Default::default()
    };
    Method::Lora(config).attach(&mut model, "default").unwrap();
    assert!(max_abs_diff(&logits(&model), &base) < 1e-4);
    let w_after = model.layers[0]
        .linear("q_proj")
        .unwrap()
        .dense()
        .unwrap()
        .value
        .clone()
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    // The residual keeps less of the weight than the original: the top-4 directions moved out.
    assert!(
        norm(&w_after) < 0.9 * norm(&w_before),
        "{} vs {}",
        norm(&w_after),
        norm(&w_before)
    );
}

#[test]
fn every_method_saves_and_loads_with_identical_logits() {
    for method in all_methods() {
        let mut model = tiny_hf();
        method.attach(&mut model, "default").unwrap();
        model.visit(&mut Perturb(7));
        let want = logits(&model);
        let dir = tempfile::tempdir().unwrap();
        save_adapter(&model, "default", dir.path()).unwrap();
        let mut fresh = tiny_hf();
        let base = logits(&fresh);
        load_adapter(&mut fresh, dir.path(), "loaded").unwrap();
        let got = logits(&fresh);
        let diff = max_abs_diff(&got, &want);
        assert!(diff < 1e-5, "{}: {diff}", method.kind());
        assert!(
            max_abs_diff(&got, &base) > 1e-3,
            "{}: the loaded adapter must not be a no-op",
            method.kind()
        );
    }
}

#[test]
fn merge_then_unmerge_restores_the_weights() {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Targets::AllLinear,
        ..Default::default()
    };
    for method in [
        Method::Lora(lora.clone()),
        Method::Lora(LoraConfig { dora: true, ..lora }),
        Method::Ia3(Ia3Config::default()),
        Method::Lokr(LokrConfig {
            rank: 2,
            decompose_both: true,
            targets: Targets::AllLinear,
            ..Default::default()
        }),
        Method::Krona(KronaConfig {
            targets: Targets::AllLinear,
            ..Default::default()
        }),
    ] {
        let mut model = tiny_hf();
        method.attach(&mut model, "default").unwrap();
        model.visit(&mut Perturb(3));
        let mut before = Snapshot::default();
        model.visit(&mut before);
        let unmerged = logits(&model);
        peft::merge(&mut model).unwrap();
        let merged = logits(&model);
        let diff = max_abs_diff(&merged, &unmerged);
        assert!(
            diff < 1e-4,
            "{}: merged vs unmerged logits {diff}",
            method.kind()
        );
        assert_eq!(
            peft::merge(&mut model),
            Err(PeftError::AlreadyMerged("default".into()))
        );
        peft::unmerge(&mut model).unwrap();
        let mut after = Snapshot::default();
        model.visit(&mut after);
        let mut changed_by_merge = 0;
        for ((name, _, x), (_, _, y)) in before.entries.iter().zip(&after.entries) {
            let d = max_abs_diff(x, y);
            assert!(
                d < 1e-6,
                "{}: {name} differs by {d} after unmerge",
                method.kind()
            );
            changed_by_merge += 1;
        }
        assert!(changed_by_merge > 0);
        assert!(max_abs_diff(&logits(&model), &unmerged) < 1e-5);
    }
}

#[test]
fn named_adapters_switch_and_disable() {
    let mut model = tiny_hf();
    let base = logits(&model);
    load_adapter(&mut model, &fixtures().join("peft/lora"), "lora").unwrap();
    load_adapter(&mut model, &fixtures().join("peft/ia3"), "ia3").unwrap();
    assert_eq!(model.active_adapter.as_deref(), Some("ia3"));
    assert!(max_abs_diff(&logits(&model), &peft_logits("ia3")) < 1e-4);
    peft::set_active(&mut model, Some("lora")).unwrap();
    assert!(max_abs_diff(&logits(&model), &peft_logits("lora")) < 1e-4);
    // Only the active adapter trains.
    let c = model.param_count();
    assert_eq!(c.trainable, 2 * (4 * 32 + 32 * 4) + 2 * (4 * 32 + 16 * 4));
    peft::set_active(&mut model, None).unwrap();
    assert_eq!(logits(&model), base);
    assert_eq!(model.param_count().trainable, 0);
    let err = peft::set_active(&mut model, Some("lroa")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "no adapter named 'lroa' (attached: lora, ia3)"
    );
    assert_eq!(
        Method::LnTuning.attach(&mut model, "lora"),
        Err(PeftError::AdapterExists("lora".into()))
    );
    peft::remove(&mut model, "lora").unwrap();
    assert_eq!(model.adapters.len(), 1);
    assert_eq!(logits(&model), base);
}

#[test]
fn each_method_trains_only_its_own_parameters() {
    let batch = qa_batch();
    let tiny = |seed| {
        let opts = TinyOptions {
            seed,
            ..Default::default()
        };
        Llama::<B>::random(opts.config(), seed, opts.std(), &Default::default()).unwrap()
    };
    for method in all_methods().into_iter().chain([Method::Full]) {
        let mut model = tiny(5);
        method.attach(&mut model, "default").unwrap();
        let mut before = Snapshot::default();
        model.visit(&mut before);
        let trainable: Vec<bool> = {
            struct Flags(Vec<bool>);
            impl<Bk: Backend> ParamVisitor<Bk> for Flags {
                fn visit1(&mut self, _: &str, p: &mut Param<Bk, 1>) {
                    self.0.push(p.trainable)
                }
                fn visit2(&mut self, _: &str, p: &mut Param<Bk, 2>) {
                    self.0.push(p.trainable)
                }
            }
            let mut f = Flags(Vec::new());
            model.visit(&mut f);
            f.0
        };
        let mut trainer = trainer();
        let first = trainer.step(&mut model, &batch).unwrap().loss;
        let mut last = first;
        for _ in 0..5 {
            last = trainer.step(&mut model, &batch).unwrap().loss;
        }
        assert!(last < first, "{}: loss {first} -> {last}", method.kind());
        let mut after = Snapshot::default();
        model.visit(&mut after);
        let mut experts_trained = 0;
        for (((name, _, x), (_, _, y)), t) in
            before.entries.iter().zip(&after.entries).zip(&trainable)
        {
            if *t && name.contains(".experts.") {
                // AdaMix routes each pass through one expert drawn at random: in six steps an
                // expert may never be drawn, and then it has no gradient.
                experts_trained += usize::from(x != y);
            } else if *t {
                assert_ne!(x, y, "{}: {name} should train", method.kind());
            } else {
                assert_eq!(x, y, "{}: {name} is frozen", method.kind());
            }
        }
        if matches!(method, Method::AdaMix(_)) {
            assert!(experts_trained > 0, "no AdaMix expert trained");
        }
    }
}

#[test]
fn bad_adapter_files_are_clear_errors_and_change_nothing() {
    let src = fixtures().join("peft/lora");
    let dir = tempfile::tempdir().unwrap();
    let copy = |config: &str| {
        std::fs::write(dir.path().join("adapter_config.json"), config).unwrap();
        std::fs::copy(
            src.join("adapter_model.safetensors"),
            dir.path().join("adapter_model.safetensors"),
        )
        .unwrap();
    };
    let config = std::fs::read_to_string(src.join("adapter_config.json")).unwrap();
    let try_load = || {
        let mut model = tiny_hf();
        let err = load_adapter(&mut model, dir.path(), "default")
            .unwrap_err()
            .to_string();
        assert!(
            model.adapters.is_empty() && model.param_count().trainable == model.param_count().total,
            "model changed"
        );
        err
    };
    copy(&config.replace("\"r\": 4", "\"r\": 2"));
    let e = try_load();
    assert!(
        e.contains("adapter_model.safetensors")
            && e.contains("lora_A.weight has shape [4, 32], expected [2, 32]"),
        "{e}"
    );
    copy(&config.replace("\"v_proj\"", "\"k_proj\""));
    let e = try_load();
    assert!(
        e.contains("missing tensor base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"),
        "{e}"
    );
    copy(&config.replace("\"LORA\"", "\"LOHA\""));
    let e = try_load();
    assert!(
        e.contains("adapter_config.json: peft_type LOHA is not supported"),
        "{e}"
    );
    copy("{ not json");
    assert!(try_load().contains("adapter_config.json: invalid JSON"));
    copy(&config);
    std::fs::write(dir.path().join("adapter_model.safetensors"), b"truncated").unwrap();
    assert!(try_load().contains("not a safetensors file"));
}

#[test]
fn bad_method_options_are_clear_errors() {
    let mut model = tiny_hf();
    let lora = |targets| {
        Method::Lora(LoraConfig {
            targets,
            ..Default::default()
        })
    };
    let e = lora(Targets::names(&["q_prj"]))
        .attach(&mut model, "a")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("unknown target module 'q_prj' (did you mean 'q_proj'?)"),
        "{e}"
    );
    let e = lora(Targets::Pattern("model\\.layers\\.9\\..*".into()))
        .attach(&mut model, "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("matches no module"), "{e}");
    let e = lora(Targets::Pattern("(".into()))
        .attach(&mut model, "a")
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a valid regular expression"), "{e}");
    assert_eq!(
        Method::LnTuning.attach(&mut model, "bad name"),
        Err(PeftError::AdapterName("bad name".into()))
    );
    let e = Method::Bottleneck(BottleneckConfig {
        reduction_factor: 0,
        ..Default::default()
    })
    .attach(&mut model, "a")
    .unwrap_err();
    assert!(
        e.to_string().contains("reduction_factor must be in 1..=32"),
        "{e}"
    );
    for (method, want) in [
        (
            Method::Compacter(CompacterConfig {
                reduction_factor: 5,
                ..Default::default()
            }),
            "phm_dim 4 must divide the hidden size 32 and the bottleneck width 6",
        ),
        (
            Method::Ladder(LadderConfig {
                reduction_factor: 3,
                ..Default::default()
            }),
            "reduction_factor 3 must divide the hidden size 32",
        ),
        (
            Method::Lets(LetsConfig {
                budget: 3,
                ..Default::default()
            }),
            "budget must be in 1..=2 layers (got 3)",
        ),
        (
            Method::Warp(WarpConfig {
                prompt: PromptConfig::default(),
                labels: vec![5, 5],
                label_words: Vec::new(),
            }),
            "two labels have the same first token",
        ),
        (
            Method::Intrinsic(Default::default()),
            "intrinsic prompt tuning needs subspace = DIR",
        ),
    ] {
        let e = method.attach(&mut model, "a").unwrap_err().to_string();
        assert!(e.contains(want), "{}: {e}", method.kind());
    }
    Method::Prompt(PromptConfig::default())
        .attach(&mut model, "p")
        .unwrap();
    assert_eq!(
        peft::merge(&mut model),
        Err(PeftError::NotMergeable("prompt_tuning"))
    );
    assert!(
        Method::Full
            .attach(&mut model, "x")
            .unwrap_err()
            .to_string()
            .contains("adapter 'p' is attached")
    );
    assert!(model.adapters.len() == 1, "failed attaches add nothing");
}

/// PEFT's `get_nb_trainable_parameters()` on SmolLM2-135M's configuration
/// (tests/fixtures/peft/smollm2_counts.json) against runner's counts on a model of that shape.
#[test]
fn trainable_counts_match_peft_on_smollm2_shape() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("peft/smollm2_counts.json")).unwrap(),
    )
    .unwrap();
    let config = LlamaConfig::smollm2_135m();
    type F = Flex;
    let base = Llama::<F>::random(config, 0, 0.02, &Default::default()).unwrap();
    let lora = |rank, targets, dora| {
        Method::Lora(LoraConfig {
            rank,
            alpha: 16.0,
            targets,
            dora,
            ..Default::default()
        })
    };
    let cases = [
        (
            "lora_qv_r8",
            lora(8, Targets::names(&["q_proj", "v_proj"]), false),
        ),
        ("lora_all_r8", lora(8, Targets::AllLinear, false)),
        (
            "dora_qv_r8",
            lora(8, Targets::names(&["q_proj", "v_proj"]), true),
        ),
        ("ia3", Method::Ia3(Ia3Config::default())),
        ("prompt_20", Method::Prompt(PromptConfig::default())),
        ("prefix_20", Method::Prefix(PrefixConfig::default())),
        ("ln_tuning", Method::LnTuning),
        ("full", Method::Full),
    ];
    for (key, method) in cases {
        let mut model = base.clone();
        method.attach(&mut model, "default").unwrap();
        let c = model.param_count();
        let want = &counts[key];
        eprintln!(
            "{key}: runner {} / {} — PEFT {} / {}",
            c.trainable, c.total, want["trainable"], want["total"]
        );
        assert_eq!(
            c.trainable as u64,
            want["trainable"].as_u64().unwrap(),
            "{key} trainable"
        );
        assert_eq!(
            c.total as u64,
            want["total"].as_u64().unwrap(),
            "{key} total"
        );
    }
    let lokr_counts = &lokr_expected()["smollm2_counts"];
    let lokr = |rank, alpha, targets, decompose_both, decompose_factor| {
        Method::Lokr(LokrConfig {
            rank,
            alpha,
            targets,
            decompose_both,
            decompose_factor,
            ..Default::default()
        })
    };
    let qv = || Targets::names(&["q_proj", "v_proj"]);
    for (key, method) in [
        ("lokr_qv_r8", lokr(8, 8.0, qv(), false, -1)),
        ("lokr_all_r8", lokr(8, 8.0, Targets::AllLinear, false, -1)),
        (
            "lokr_all_r4_both",
            lokr(4, 8.0, Targets::AllLinear, true, -1),
        ),
        ("lokr_qv_r16_factor8", lokr(16, 8.0, qv(), false, 8)),
    ] {
        let mut model = base.clone();
        method.attach(&mut model, "default").unwrap();
        let c = model.param_count();
        eprintln!(
            "{key}: runner {} — PEFT {}",
            c.trainable, lokr_counts[key]["trainable"]
        );
        assert_eq!(
            c.trainable as u64,
            lokr_counts[key]["trainable"].as_u64().unwrap(),
            "{key}"
        );
        assert_eq!(
            c.total as u64,
            lokr_counts[key]["total"].as_u64().unwrap(),
            "{key}"
        );
    }
    assert_eq!(counts["lora_qv_r8"]["trainable"], 460_800);
    assert_eq!(counts["lora_all_r8"]["trainable"], 2_442_240);
}

#[test]
fn soft_prompts_and_adapters_work_with_the_kv_cache() {
    let methods = [
        Method::Prompt(PromptConfig {
            num_virtual_tokens: 4,
            ..Default::default()
        }),
        Method::Prefix(PrefixConfig {
            num_virtual_tokens: 3,
            projection: Some(8),
            seed: 0,
        }),
        Method::Lora(LoraConfig {
            rank: 2,
            alpha: 4.0,
            dora: true,
            ..Default::default()
        }),
        Method::Bottleneck(BottleneckConfig::default()),
    ]
    .into_iter()
    .chain(additive_methods());
    for method in methods {
        let mut model = tiny_hf();
        method.attach(&mut model, "default").unwrap();
        model.visit(&mut Perturb(11));
        let model = model.detached();
        let full = model
            .forward(ids(), None)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let mut cache = runner::model::llama::KvCache::new(&model.config);
        let first = model.forward_cached(ids().narrow(1, 0, 6), &mut cache);
        let rest = model.forward_cached(ids().narrow(1, 6, 4), &mut cache);
        let cached = Tensor::cat(vec![first, rest], 1)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let diff = max_abs_diff(&cached, &full);
        assert!(
            diff < 1e-4,
            "{}: cached decoding differs by {diff}",
            method.kind()
        );
    }
}

/// Each new method's trainable count against its paper's formula, on the tiny model (hidden
/// 32, MLP 64, 2 layers; q, k, v, o are 32->32, 32->16, 32->16, 32->32).
#[test]
fn additive_methods_count_their_papers_parameters() {
    let (d, layers) = (32usize, 2usize);
    let count = |method: Method| {
        let mut model = tiny_hf();
        let added = method.attach(&mut model, "default").unwrap();
        assert_eq!(added, model.param_count().trainable, "{}", method.kind());
        added
    };
    // KronA: A [a1, a2] and B [b1, b2] with a1·b1 = d_out and a2·b2 = d_in, the factors
    // nearest √d: 32 = 4·8 and 16 = 4·4. q (32->32): 4·4 + 8·8; v (32->16): 4·4 + 4·8.
    assert_eq!(
        count(Method::Krona(KronaConfig::default())),
        layers * ((4 * 4 + 8 * 8) + (4 * 4 + 4 * 8))
    );
    // KronA^B_res: one d->d Kronecker pair and the residual scale per layer.
    assert_eq!(
        count(Method::Krona(KronaConfig {
            placement: KronaPlacement::Ffn,
            ..Default::default()
        })),
        layers * (4 * 4 + 8 * 8 + 1)
    );
    // Compacter: per PHM layer d_in -> d_out, n·(d_in/n + d_out/n) = d_in + d_out for the
    // rank-one factors plus d_out bias; rules 2·n³ for the whole model.
    let (n, m) = (4usize, 8usize);
    let phm_adapter = (d + m + m) + (m + d + d);
    assert_eq!(
        count(Method::Compacter(CompacterConfig {
            reduction_factor: 4,
            ..Default::default()
        })),
        layers * 2 * phm_adapter + 2 * n * n * n
    );
    assert_eq!(
        count(Method::Compacter(CompacterConfig {
            placement: Placement::Pfeiffer,
            reduction_factor: 4,
            ..Default::default()
        })),
        layers * phm_adapter + 2 * n * n * n
    );
    // AdaMix: M down experts (d·m + m each) and one shared up projection (m·d + d).
    let experts = 4;
    assert_eq!(
        count(Method::AdaMix(AdaMixConfig {
            reduction_factor: 4,
            ..Default::default()
        })),
        layers * 2 * (experts * (d * m + m) + (m * d + d))
    );
    // WARP: the prompt and one output embedding per label.
    assert_eq!(
        count(Method::Warp(WarpConfig {
            prompt: PromptConfig {
                num_virtual_tokens: 5,
                ..Default::default()
            },
            labels: vec![3, 7, 11],
            label_words: Vec::new(),
        })),
        5 * d + 3 * d
    );
    // Ladder Side-Tuning at r = 2: side layers of width 16 with 4 heads of 4 (2 KV heads),
    // MLP 32; downs from the embeddings and each layer, 32 -> 16; a gate per layer; up 16 -> 32.
    let (ds, fs) = (16, 32);
    let side_layer = ds * ds + 2 * ds * 8 + ds * ds + 3 * ds * fs + 2 * ds;
    assert_eq!(
        count(Method::Ladder(LadderConfig {
            reduction_factor: 2,
            ..Default::default()
        })),
        layers * side_layer + (layers + 1) * d * ds + layers + ds * d
    );
    // AttentionFusion: the query, one bias per representation (embeddings and each layer), the gate.
    assert_eq!(count(Method::AttentionFusion), d + (layers + 1) + d);
    // LeTS while selecting: a full update of every projection of every layer, and a gate each.
    let layer_weights = d * d + 2 * d * 16 + d * d + 3 * d * 64;
    assert_eq!(
        count(Method::Lets(LetsConfig {
            budget: 1,
            ..Default::default()
        })),
        layers * (layer_weights + 1)
    );
}

/// LeTS: the penalty, heavier on lower layers, closes their gates first; selecting keeps
/// the budget's layers with the outputs unchanged, and only their updates train afterwards.
#[test]
fn lets_selects_the_layers_it_tunes() {
    let batch = qa_batch();
    let mut model = tiny_hf();
    let config = LetsConfig {
        budget: 1,
        penalty: 5.0,
        ..Default::default()
    };
    Method::Lets(config).attach(&mut model, "default").unwrap();
    let mut trainer = trainer();
    for _ in 0..8 {
        trainer.step(&mut model, &batch).unwrap();
    }
    let gates = peft::lets::gates(&model);
    assert_eq!(gates.len(), 2);
    assert!(gates[0] < gates[1] && gates[1] < 0.5, "{gates:?}");
    // Selection drops layer 0's update; with it zeroed first, the kept layer's update (its
    // gate folded in) leaves the outputs as they were.
    for (_, lin) in &mut model.layers[0].projections {
        let dw = &mut lin.delta.0[0].inner;
        dw.value = dw.value.zeros_like().require_grad();
    }
    let before = logits(&model);
    let selected = peft::lets::select(&mut model).unwrap();
    assert_eq!(selected, vec![1]);
    let diff = max_abs_diff(&logits(&model), &before);
    assert!(diff < 1e-5, "selecting moved the logits by {diff}");
    assert_eq!(model.param_count().trainable, d_layer_weights());
    assert!(peft::lets::gates(&model).is_empty());
    let e = peft::lets::select(&mut model).unwrap_err().to_string();
    assert!(e.contains("already selected layers [1]"), "{e}");
    // The selection is saved with the adapter.
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, "default", dir.path()).unwrap();
    let mut fresh = tiny_hf();
    load_adapter(&mut fresh, dir.path(), "default").unwrap();
    assert_eq!(logits(&fresh), logits(&model));
    assert_eq!(fresh.param_count().trainable, d_layer_weights());
}

/// One tiny-model layer's projection weights (hidden 32, MLP 64, k and v 16 wide).
fn d_layer_weights() -> usize {
    let d = 32;
    d * d + 2 * d * 16 + d * d + 3 * d * 64
}

/// A dense PHM weight is Σ R_i ⊗ B_i; the rules are one set per adapter, shared by every
/// layer: changing one rule entry changes every layer's adapter output.
#[test]
fn compacter_rules_are_shared_across_layers() {
    let mut model = tiny_hf();
    Method::Compacter(CompacterConfig {
        reduction_factor: 4,
        ..Default::default()
    })
    .attach(&mut model, "default")
    .unwrap();
    let mut names = Vec::new();
    struct Names<'a>(&'a mut Vec<String>);
    impl<Bk: Backend> ParamVisitor<Bk> for Names<'_> {
        fn visit1(&mut self, n: &str, p: &mut Param<Bk, 1>) {
            if p.trainable {
                self.0.push(n.to_string())
            }
        }
        fn visit2(&mut self, n: &str, p: &mut Param<Bk, 2>) {
            if p.trainable {
                self.0.push(n.to_string())
            }
        }
    }
    model.visit(&mut Names(&mut names));
    let rules: Vec<&String> = names.iter().filter(|n| n.contains("phm_rules")).collect();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert!(
        names
            .iter()
            .any(|n| n == "layers.1.mlp.adapter[default].up.phm_t"),
        "{names:?}"
    );
}

/// WARP's verbalizer replaces exactly its label words' rows of the output head.
#[test]
fn warp_replaces_only_its_label_rows() {
    let mut model = tiny_hf();
    let head_before = model.head().value.into_data().to_vec::<f32>().unwrap();
    Method::Warp(WarpConfig {
        prompt: PromptConfig {
            num_virtual_tokens: 2,
            ..Default::default()
        },
        labels: vec![3, 7],
        label_words: Vec::new(),
    })
    .attach(&mut model, "default")
    .unwrap();
    // A fresh verbalizer is the label words' own rows.
    assert_eq!(
        model.head().value.into_data().to_vec::<f32>().unwrap(),
        head_before
    );
    model.visit(&mut Perturb(5));
    let head = model.head().value.into_data().to_vec::<f32>().unwrap();
    let d = 32;
    for row in 0..head.len() / d {
        let same = head[row * d..(row + 1) * d] == head_before[row * d..(row + 1) * d];
        assert_eq!(same, row != 3 && row != 7, "row {row}");
    }
}

/// Intrinsic prompt tuning: a subspace fitted to three tasks' prompts reconstructs them, an
/// intrinsic prompt at a source prompt's code gives that prompt's logits, only the intrinsic
/// vector trains, and the adapter (decoder included) saves and loads without the subspace.
#[test]
fn intrinsic_prompts_rebuild_their_sources_and_train_only_the_vector() {
    use runner::model::init;
    use runner::peft::intrinsic::IntrinsicConfig;
    use runner::train::intrinsic::{SubspaceConfig, fit_subspace};
    let (n, d, dim) = (4usize, 32usize, 3usize);
    let prompts: Vec<Vec<f32>> = (0..3)
        .map(|s| init::normal_vec(&mut init::rng(100 + s), n * d, 0.5))
        .collect();
    let config = SubspaceConfig {
        dim,
        hidden: 32,
        steps: 1500,
        lr: 3e-3,
        seed: 0,
    };
    let (subspace, losses) =
        fit_subspace::<B>(&prompts, [n, d], &config, &Default::default()).unwrap();
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(
        last < first / 100.0,
        "reconstruction error {first} -> {last}"
    );
    let dir = tempfile::tempdir().unwrap();
    subspace.write(dir.path(), serde_json::json!({})).unwrap();

    // The source prompt itself, as a prompt-tuning adapter.
    let mut plain = tiny_hf();
    Method::Prompt(PromptConfig {
        num_virtual_tokens: n,
        ..Default::default()
    })
    .attach(&mut plain, "default")
    .unwrap();
    plain.prompt.0[0].inner.value = init::tensor2(prompts[1].clone(), [n, d], &Default::default());

    let mut model = tiny_hf();
    let added = Method::Intrinsic(IntrinsicConfig {
        subspace: Some(dir.path().to_path_buf()),
        ..Default::default()
    })
    .attach(&mut model, "default")
    .unwrap();
    assert_eq!((added, model.param_count().trainable), (dim, dim));
    // z = the encoder's code of source prompt 1.
    let (_, enc_w) = &subspace.tensors["encoder.weight"];
    let (_, enc_b) = &subspace.tensors["encoder.bias"];
    let code: Vec<f32> = (0..dim)
        .map(|j| {
            enc_b[j]
                + (0..n * d)
                    .map(|i| prompts[1][i] * enc_w[i * dim + j])
                    .sum::<f32>()
        })
        .collect();
    let z = &mut model.intrinsic.0[0].inner.z;
    z.value = init::tensor2(code, [1, dim], &Default::default()).require_grad();
    let diff = max_abs_diff(&logits(&model), &logits(&plain));
    assert!(diff < 2e-2, "the rebuilt prompt's logits differ by {diff}");
    assert!(max_abs_diff(&logits(&model), &logits(&tiny_hf())) > 1e-2);

    // Saved with its decoder; loads into a fresh model with no subspace at hand.
    let saved = tempfile::tempdir().unwrap();
    save_adapter(&model, "default", saved.path()).unwrap();
    drop(dir);
    let mut fresh = tiny_hf();
    load_adapter(&mut fresh, saved.path(), "ipt").unwrap();
    assert_eq!(logits(&fresh), logits(&model));
    assert_eq!(fresh.param_count().trainable, dim);
}

/// AdaMix's consistency term is a symmetric KL between two routes: with one expert both routes
/// are the same network, the term and its gradient vanish, and a step equals the plain step;
/// with four experts it changes the update.
#[test]
fn adamix_consistency_vanishes_when_routes_agree() {
    let batch = qa_batch();
    let after_steps = |experts: usize, consistency: f64| {
        let mut model = tiny_hf();
        Method::AdaMix(AdaMixConfig {
            reduction_factor: 4,
            experts,
            consistency,
            ..Default::default()
        })
        .attach(&mut model, "default")
        .unwrap();
        let mut trainer = trainer();
        let losses: Vec<f64> = (0..3)
            .map(|_| trainer.step(&mut model, &batch).unwrap().loss)
            .collect();
        (losses, logits(&model))
    };
    let (plain_losses, plain) = after_steps(1, 0.0);
    let (losses, with_term) = after_steps(1, 1.0);
    for (a, b) in plain_losses.iter().zip(&losses) {
        assert!((a - b).abs() < 1e-5, "{plain_losses:?} vs {losses:?}");
    }
    let diff = max_abs_diff(&plain, &with_term);
    assert!(
        diff < 1e-4,
        "one expert: the consistency term changed the model by {diff}"
    );
    let (_, routed_plain) = after_steps(4, 0.0);
    let (_, routed_term) = after_steps(4, 1.0);
    assert!(max_abs_diff(&routed_plain, &routed_term) > 1e-4);
}

/// `classify` picks, for each prompt, the label whose token has the highest next-token logit.
#[test]
fn classify_ranks_the_label_tokens_after_each_prompt() {
    let mut model = tiny_hf();
    Method::Warp(WarpConfig {
        prompt: PromptConfig {
            num_virtual_tokens: 2,
            ..Default::default()
        },
        labels: vec![3, 7, 11],
        label_words: Vec::new(),
    })
    .attach(&mut model, "default")
    .unwrap();
    model.visit(&mut Perturb(9));
    // Enough prompts of different lengths to fill more than one padded batch.
    let prompts: Vec<Vec<u32>> = (0..21u32)
        .map(|i| {
            (0..1 + (i * 7) % 9)
                .map(|t| (i * 5 + t * 3) % 20 + 1)
                .collect()
        })
        .collect();
    let labels = [3u32, 7, 11];
    let picks = runner::train::classify::classify(&model, &prompts, &labels);
    for (p, pick) in prompts.iter().zip(&picks) {
        let ids = Tensor::<B, 2, Int>::from_data(
            TensorData::new(p.iter().map(|&i| i as i64).collect(), [1, p.len()]),
            &Default::default(),
        );
        let vocab = model.config.vocab_size;
        let all = model
            .forward(ids, None)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let last = &all[(p.len() - 1) * vocab..];
        let want = (0..3)
            .max_by(|&a, &b| last[labels[a] as usize].total_cmp(&last[labels[b] as usize]))
            .unwrap();
        assert_eq!(*pick, want, "{p:?}");
    }
}
