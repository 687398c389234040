//! DPO and reward-model training on tiny models: properties that must hold, and parity with
//! TRL on the fixtures of `scripts/make_preference_fixtures.py`.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

use super::dpo::{DpoConfig, DpoLoss, DpoTrainer};
use super::reward::{RewardConfig, RewardTrainer};
use super::{AdamWConfig, Schedule, TrainError, TrainOptions, Trainer};
use crate::data::pairs::{PairBatch, PairOptions, TokenizedPair};
use crate::model::params::{Param, ParamVisitor};
use crate::model::{Llama, TinyOptions};
use crate::peft::lora::LoraConfig;
use crate::peft::{Method, Targets};

type Ad = Autodiff<Flex>;

fn tiny() -> Llama<Ad> {
    let tiny = TinyOptions {
        vocab: 64,
        ..TinyOptions::default()
    };
    Llama::random(tiny.config(), 7, tiny.std(), &Default::default()).unwrap()
}

fn lora(model: &mut Llama<Ad>) {
    Method::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Targets::AllLinear,
        ..LoraConfig::default()
    })
    .attach(model, "default")
    .unwrap();
}

fn pairs() -> Vec<TokenizedPair> {
    (0..4)
        .map(|i| TokenizedPair {
            prompt_ids: vec![3 + i, 9, 11],
            chosen_ids: vec![20 + i, 21, 22 + i],
            rejected_ids: vec![30, 31 + i, 32, 33 + i, 34][..(2 + i as usize)].to_vec(),
            margin: None,
        })
        .collect()
}

fn batch(pairs: &[TokenizedPair]) -> PairBatch {
    let refs: Vec<_> = pairs.iter().collect();
    PairBatch::collate(&refs, &PairOptions::default())
}

fn trainer(accumulate: usize) -> Trainer<Ad> {
    Trainer::with_options(
        AdamWConfig {
            lr: 1e-2,
            ..AdamWConfig::default()
        },
        Schedule::default(),
        TrainOptions {
            accumulate,
            ..TrainOptions::default()
        },
        0,
    )
    .unwrap()
}

/// Every trainable parameter's values, by name.
fn trainable(model: &Llama<Ad>) -> Vec<(String, Vec<f32>)> {
    struct Collect(Vec<(String, Vec<f32>)>);
    impl ParamVisitor<Ad> for Collect {
        fn visit1(&mut self, n: &str, p: &mut Param<Ad, 1>) {
            if p.trainable {
                self.0.push((n.into(), p.value.to_data().to_vec().unwrap()));
            }
        }
        fn visit2(&mut self, n: &str, p: &mut Param<Ad, 2>) {
            if p.trainable {
                self.0.push((n.into(), p.value.to_data().to_vec().unwrap()));
            }
        }
    }
    let mut c = Collect(Vec::new());
    model.clone().visit(&mut c);
    c.0
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|((_, x), (_, y))| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn a_fresh_adapter_is_its_own_reference_and_accumulation_changes_nothing() {
    let data = pairs();
    let mut updated = Vec::new();
    for k in [1, 2, 4] {
        let mut model = tiny();
        lora(&mut model);
        let mut dpo = DpoTrainer::new(trainer(k), DpoConfig::default(), &model, None).unwrap();
        let r = dpo.step(&mut model, &batch(&data)).unwrap();
        // LoRA's B starts at zero: policy = reference, δ = 0 for every pair (up to the
        // rounding of the adapter's fused path against the plain one).
        assert!((r.metrics.loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert!(r.metrics.rewards_margins.abs() < 1e-6, "{r:?}");
        assert!(r.step.grad_norm > 0.0 && !r.step.skipped);
        updated.push(trainable(&model));
    }
    let (d1, d2) = (
        max_diff(&updated[0], &updated[1]),
        max_diff(&updated[0], &updated[2]),
    );
    assert!(d1 < 1e-6 && d2 < 1e-6, "{d1} {d2}");
}

#[test]
fn the_sft_term_adds_the_chosen_nll_and_accumulation_changes_nothing() {
    let data = pairs();
    let mut updated = Vec::new();
    for k in [1, 2, 4] {
        let mut model = tiny();
        lora(&mut model);
        let config = DpoConfig {
            sft_weight: 0.7,
            ..DpoConfig::default()
        };
        let mut dpo = DpoTrainer::new(trainer(k), config, &model, None).unwrap();
        let r = dpo.step(&mut model, &batch(&data)).unwrap();
        let m = &r.metrics;
        // The chosen NLL per token is that of the fresh adapter's (= the base model's) chosen
        // completions: positive, and added with its weight to DPO's ln 2.
        assert!(m.nll_loss > 0.1, "{m:?}");
        let want = std::f64::consts::LN_2 + 0.7 * m.nll_loss;
        assert!((m.loss - want).abs() < 1e-6, "{} vs {want}", m.loss);
        updated.push(trainable(&model));
    }
    let (d1, d2) = (
        max_diff(&updated[0], &updated[1]),
        max_diff(&updated[0], &updated[2]),
    );
    assert!(d1 < 1e-6 && d2 < 1e-6, "{d1} {d2}");
}

#[test]
fn dpo_training_raises_the_chosen_over_the_rejected() {
    let data = pairs();
    let mut model = tiny();
    lora(&mut model);
    let config = DpoConfig {
        beta: 0.5,
        ..DpoConfig::default()
    };
    let mut dpo = DpoTrainer::new(trainer(1), config, &model, None).unwrap();
    let first = dpo.step(&mut model, &batch(&data)).unwrap();
    let mut last = first.clone();
    for _ in 0..20 {
        last = dpo.step(&mut model, &batch(&data)).unwrap();
    }
    assert!(last.metrics.loss < 0.5 * first.metrics.loss, "{last:?}");
    assert_eq!(last.metrics.rewards_accuracies, 1.0);
    let eval = dpo.evaluate(&model, [batch(&data)]).unwrap();
    assert!(eval.rewards_margins > 0.0);
}

#[test]
fn full_fine_tuning_uses_a_frozen_snapshot_as_reference() {
    let data = pairs();
    let mut model = tiny();
    Method::Full.attach(&mut model, "full").unwrap();
    let mut dpo = DpoTrainer::new(trainer(1), DpoConfig::default(), &model, None).unwrap();
    let first = dpo.step(&mut model, &batch(&data)).unwrap();
    assert!((first.metrics.loss - std::f64::consts::LN_2).abs() < 1e-6);
    let second = dpo.step(&mut model, &batch(&data)).unwrap();
    // The policy moved; the reference did not.
    assert!(second.metrics.rewards_margins > 0.0, "{second:?}");
}

#[test]
fn trainers_refuse_a_model_with_nothing_to_train() {
    let mut model = tiny();
    lora(&mut model);
    crate::peft::set_active(&mut model, None).unwrap();
    assert_eq!(
        DpoTrainer::new(trainer(1), DpoConfig::default(), &model, None).err(),
        Some(TrainError::NothingToTrain)
    );
    let mut rm = tiny();
    rm.add_score_head(1).unwrap();
    lora(&mut rm);
    crate::peft::set_active(&mut rm, None).unwrap();
    assert_eq!(
        RewardTrainer::new(trainer(1), RewardConfig::default(), &rm).err(),
        Some(TrainError::NothingToTrain)
    );
    let plain = tiny();
    assert!(matches!(
        RewardTrainer::new(trainer(1), RewardConfig::default(), &plain),
        Err(TrainError::Invalid(m)) if m.contains("no score head")
    ));
    let bad = DpoConfig {
        loss: DpoLoss::Hinge,
        label_smoothing: 0.1,
        ..DpoConfig::default()
    };
    let mut model = tiny();
    lora(&mut model);
    assert!(DpoTrainer::new(trainer(1), bad, &model, None).is_err());
}

#[test]
fn reward_training_separates_the_pairs_and_accumulation_changes_nothing() {
    let data = pairs();
    let config = RewardConfig {
        center_rewards_coefficient: Some(0.01),
    };
    let mut rm = tiny();
    rm.add_score_head(1).unwrap();
    lora(&mut rm);
    // Two micro-batches' gradients add up to the whole batch's. (Compared on the gradients:
    // AdamW's first update, g/(|g| + ε), would magnify the rounding of near-zero entries.)
    let whole = batch(&data);
    let (_, full) = super::reward::loss_and_gradients(&config, &mut rm.clone(), &whole).unwrap();
    let mut split = super::GradMap::default();
    for micro in whole.split(2) {
        super::reward::micro_step(&config, &mut rm.clone(), &micro, 4, 1.0, None, &mut split)
            .unwrap();
    }
    assert_eq!(full.grads.len(), split.grads.len());
    for (name, g) in &full.grads {
        let (a, b): (Vec<f32>, Vec<f32>) = (
            g.to_data().to_vec().unwrap(),
            split.grads[name].to_data().to_vec().unwrap(),
        );
        let scale = a.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-12);
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / scale)
            .fold(0.0, f32::max);
        assert!(worst < 1e-4, "{name}: {worst}");
    }
    let mut rt = RewardTrainer::new(trainer(2), config, &rm).unwrap();
    let first = rt.step(&mut rm, &whole).unwrap();
    let mut last = first.clone();
    for _ in 0..20 {
        last = rt.step(&mut rm, &whole).unwrap();
    }
    assert!(last.metrics.loss < first.metrics.loss, "{first:?} {last:?}");
    assert_eq!(last.metrics.accuracy, 1.0);
}

// Parity with TRL 1.16 / transformers 5.25 / PEFT 0.21 on the fixtures of
// scripts/make_preference_fixtures.py.

fn fixture(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/preference")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn root(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn ids(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f64>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().unwrap()),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// A PEFT adapter-file key as runner's parameter name and whether PEFT's layout is the
/// transpose of runner's (`[out, in]` against `[in, out]`).
fn runner_name(peft_key: &str) -> (String, bool) {
    let key = peft_key.trim_start_matches("base_model.model.");
    if key == "score.weight" {
        return ("score.modules_to_save[default]".into(), false);
    }
    let key = key.trim_start_matches("model.");
    for (part, factor) in [(".lora_A.weight", "A"), (".lora_B.weight", "B")] {
        if let Some(module) = key.strip_suffix(part) {
            return (format!("{module}.lora[default].{factor}"), true);
        }
    }
    panic!("unexpected key {peft_key}")
}

/// Compares TRL's gradients with runner's, relative to the largest entry of each tensor.
fn assert_grads_match(expected: &serde_json::Value, grads: &super::GradMap<Ad>, tol: f64) {
    let expected = expected.as_object().unwrap();
    assert_eq!(
        expected.len(),
        grads.grads.len(),
        "{:?}",
        grads.grads.keys()
    );
    for (key, value) in expected {
        let (name, transposed) = runner_name(key);
        let shape: Vec<usize> = {
            let rows = value.as_array().unwrap();
            vec![rows.len(), rows[0].as_array().unwrap().len()]
        };
        let want = floats(value);
        let want = if transposed {
            crate::kernels::thin::transpose(
                &want.iter().map(|&x| x as f32).collect::<Vec<_>>(),
                shape[0],
                shape[1],
            )
            .into_iter()
            .map(f64::from)
            .collect()
        } else {
            want
        };
        let got: Vec<f32> = grads
            .grads
            .get(&name)
            .unwrap_or_else(|| panic!("no gradient for {name}: {:?}", grads.grads.keys()))
            .to_data()
            .to_vec()
            .unwrap();
        let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-12);
        let worst = want
            .iter()
            .zip(&got)
            .map(|(w, g)| (w - f64::from(*g)).abs() / scale)
            .fold(0.0, f64::max);
        assert!(worst < tol, "{key}: relative difference {worst}");
    }
}

fn close(what: &str, got: f64, want: f64, tol: f64) {
    assert!(
        (got - want).abs() <= tol * want.abs().max(1.0),
        "{what}: runner {got}, TRL {want}"
    );
}

#[test]
fn dpo_losses_metrics_and_gradients_match_trl() {
    let f = fixture("dpo.json");
    let device = Default::default();
    let base = crate::model::load::load_llama_hf_dir::<Ad>(
        &root("tests/fixtures/parity/tiny_hf"),
        &device,
    )
    .unwrap();
    let pairs: Vec<TokenizedPair> = f["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| TokenizedPair {
            prompt_ids: ids(&p["prompt_ids"]),
            chosen_ids: ids(&p["chosen_ids"]),
            rejected_ids: ids(&p["rejected_ids"]),
            margin: None,
        })
        .collect();
    let batch = batch(&pairs);
    for (case, c) in f["cases"].as_object().unwrap() {
        let mut model = base.clone();
        crate::peft::format::load_adapter(&mut model, &root("tests/fixtures/peft/lora"), "default")
            .unwrap();
        let config = DpoConfig {
            beta: c["beta"].as_f64().unwrap(),
            loss: DpoLoss::parse(c["loss_type"].as_str().unwrap()).unwrap(),
            label_smoothing: c["label_smoothing"].as_f64().unwrap(),
            sft_weight: c["sft_weight"].as_f64().unwrap_or(0.0),
            ..DpoConfig::default()
        };
        let mut dpo = DpoTrainer::new(trainer(1), config, &model, None).unwrap();
        let (m, grads) = super::dpo::loss_and_gradients(&mut dpo, &mut model, &batch).unwrap();
        close(
            &format!("{case} loss"),
            m.loss,
            c["loss"].as_f64().unwrap(),
            1e-5,
        );
        for (name, value) in m.named().iter().skip(1) {
            // TRL 1.16 does not log nll_loss; the script recomputes it by hand.
            let want = match *name {
                "nll_loss" => c["nll_loss"].as_f64().unwrap(),
                _ => c["metrics"][*name].as_f64().unwrap(),
            };
            close(&format!("{case} {name}"), *value, want, 1e-5);
        }
        assert_grads_match(&c["grads"], &grads, 1e-4);
    }
}

#[test]
fn reward_model_scores_loss_and_gradients_match_transformers_and_trl() {
    let f = fixture("reward.json");
    let device = Default::default();
    let base = crate::model::load::load_llama_hf_dir::<Ad>(
        &root("tests/fixtures/preference/tiny_reward_hf"),
        &device,
    )
    .unwrap();
    assert!(base.score.is_some());
    let sequences: Vec<Vec<i64>> = f["sequences"].as_array().unwrap().iter().map(ids).collect();
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let seq = *lengths.iter().max().unwrap();
    let input: Vec<i64> = sequences
        .iter()
        .flat_map(|s| {
            s.iter()
                .copied()
                .chain(std::iter::repeat_n(0, seq - s.len()))
        })
        .collect();
    let input = || {
        Tensor::<Ad, 2, Int>::from_data(
            burn::tensor::TensorData::new(input.clone(), [sequences.len(), seq]),
            &device,
        )
    };
    let scores = |m: &Llama<Ad>| -> Vec<f32> {
        m.scores(input(), &lengths, None)
            .unwrap()
            .to_data()
            .to_vec()
            .unwrap()
    };
    let check = |what: &str, got: &[f32], want: &serde_json::Value| {
        for (g, w) in got.iter().zip(floats(want)) {
            assert!(
                (f64::from(*g) - w).abs() < 1e-4,
                "{what}: {got:?} vs {want}"
            );
        }
    };
    check("base", &scores(&base), &f["rewards_base"]["right"]);
    let mut with_lora = base.clone();
    crate::peft::format::load_adapter(
        &mut with_lora,
        &root("tests/fixtures/preference/reward_lora"),
        "default",
    )
    .unwrap();
    let lora_scores = scores(&with_lora);
    check("lora", &lora_scores, &f["rewards_lora"]["right"]);

    // Saved by runner, the adapter has PEFT's keys and gives the same scores again.
    let dir = tempfile::tempdir().unwrap();
    crate::peft::format::save_adapter(&with_lora, "default", dir.path()).unwrap();
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(saved["task_type"], "SEQ_CLS");
    assert_eq!(saved["modules_to_save"], serde_json::json!(["score"]));
    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let mut keys: Vec<String> = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .into_iter()
        .map(String::from)
        .collect();
    keys.sort();
    let mut peft_keys: Vec<String> = f["adapter_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_string())
        .collect();
    peft_keys.sort();
    assert_eq!(keys, peft_keys);
    let mut reloaded = base.clone();
    crate::peft::format::load_adapter(&mut reloaded, dir.path(), "default").unwrap();
    assert_eq!(scores(&reloaded), lora_scores);

    // A causal-LM adapter (an SFT policy, no head in its file) loads beside it and keeps the
    // base head's copy; a SEQ_CLS adapter whose file lacks the head is refused.
    let causal = root("tests/fixtures/peft/lora");
    let mut beside = reloaded.clone();
    crate::peft::format::load_adapter(&mut beside, &causal, "policy").unwrap();
    let head = |m: &Llama<Ad>| {
        m.score_head()
            .unwrap()
            .value
            .to_data()
            .to_vec::<f32>()
            .unwrap()
    };
    assert_eq!(head(&beside), head(&base));
    let no_head = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(causal.join(file), no_head.path().join(file)).unwrap();
    }
    let cfg = std::fs::read_to_string(no_head.path().join("adapter_config.json")).unwrap();
    std::fs::write(
        no_head.path().join("adapter_config.json"),
        cfg.replace("\"CAUSAL_LM\"", "\"SEQ_CLS\""),
    )
    .unwrap();
    let e = crate::peft::format::load_adapter(&mut beside, no_head.path(), "rm").unwrap_err();
    assert!(
        e.to_string()
            .contains("missing tensor base_model.model.score.weight"),
        "{e}"
    );

    // A reward model saved whole loads as one, with the same scores.
    let full = tempfile::tempdir().unwrap();
    crate::model::save::save_pretrained(&base, full.path()).unwrap();
    let config = std::fs::read_to_string(full.path().join("config.json")).unwrap();
    assert!(config.contains("LlamaForSequenceClassification"));
    let again = crate::model::load::load_llama_hf_dir::<Ad>(full.path(), &device).unwrap();
    assert_eq!(scores(&again), scores(&base));

    // TRL's RewardTrainer on two pairs (chosen = sequences 0, 1; rejected = 2, 3).
    let tokenized: Vec<TokenizedPair> = (0..2)
        .map(|i| TokenizedPair {
            prompt_ids: Vec::new(),
            chosen_ids: sequences[i].clone(),
            rejected_ids: sequences[i + 2].clone(),
            margin: None,
        })
        .collect();
    for (case, c) in f["cases"].as_object().unwrap() {
        let mut pairs = tokenized.clone();
        if let Some(m) = c["margins"].as_array() {
            for (p, m) in pairs.iter_mut().zip(m) {
                p.margin = m.as_f64();
            }
        }
        let config = RewardConfig {
            center_rewards_coefficient: c["center_rewards_coefficient"].as_f64(),
        };
        let mut model = with_lora.clone();
        let (m, grads) =
            super::reward::loss_and_gradients(&config, &mut model, &batch(&pairs)).unwrap();
        close(
            &format!("{case} loss"),
            m.loss,
            c["loss"].as_f64().unwrap(),
            1e-5,
        );
        for (name, value) in m.named().iter().skip(1) {
            // TRL 1.16 does not log nll_loss; the script recomputes it by hand.
            let want = match *name {
                "nll_loss" => c["nll_loss"].as_f64().unwrap(),
                _ => c["metrics"][*name].as_f64().unwrap(),
            };
            close(&format!("{case} {name}"), *value, want, 1e-5);
        }
        assert_grads_match(&c["grads"], &grads, 1e-4);
    }
}
