//! LoRA on the Rust core (no Lua): a fresh adapter is a no-op, training touches only the
//! adapter, gradients match finite differences, parameter counts match PEFT's.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::data::ByteTokenizer;
use runner::data::{Batch, Example};
use runner::model::init;
use runner::model::params::Snapshot;
use runner::model::{Llama, TinyOptions};
use runner::peft::lora::LoraConfig;
use runner::peft::{PeftError, Targets};
use runner::train::loss::causal_lm_loss;
use runner::train::{AdamWConfig, Schedule, Trainer};

type B = Autodiff<Flex>;

fn tiny(seed: u64) -> Llama<B> {
    let opts = TinyOptions {
        seed,
        ..Default::default()
    };
    Llama::random(opts.config(), seed, opts.std(), &Default::default()).unwrap()
}

fn lora(rank: usize, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        targets: Targets::names(targets),
        ..Default::default()
    }
}

fn attach(model: &mut Llama<B>, config: &LoraConfig) -> Result<usize, PeftError> {
    runner::peft::lora::attach(model, "default", config)
}

fn batch() -> Batch {
    let a = Example::pair("Q: 2 plus 2?\nA:", " 4.\n");
    let b = Example::text("The quick brown fox jumps.");
    Batch::collate(&[&a, &b], 64, &ByteTokenizer).unwrap()
}

fn ids(batch: &Batch) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]),
        &Default::default(),
    )
}

fn logits(model: &Llama<B>, batch: &Batch) -> Vec<f32> {
    model
        .detached()
        .forward(ids(batch), None)
        .into_data()
        .to_vec::<f32>()
        .unwrap()
}

const ALL: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

#[test]
fn fresh_adapter_leaves_logits_identical() {
    let b = batch();
    let mut model = tiny(1);
    let before = logits(&model, &b);
    attach(&mut model, &lora(4, &ALL)).unwrap();
    let after = logits(&model, &b);
    assert_eq!(before.len(), after.len());
    let max = before
        .iter()
        .zip(&after)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0f32, f32::max);
    assert_eq!(max, 0.0, "a B = 0 adapter must not change the logits");
}

#[test]
fn training_changes_only_the_adapter() {
    let b = batch();
    let mut model = tiny(2);
    attach(&mut model, &lora(4, &["q_proj", "v_proj"])).unwrap();
    let mut before = Snapshot::default();
    model.visit(&mut before);
    let mut trainer = Trainer::<B>::new(
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        Schedule::default(),
        0,
    )
    .unwrap();
    for _ in 0..3 {
        trainer.step(&mut model, &b).unwrap();
    }
    let mut after = Snapshot::default();
    model.visit(&mut after);
    assert_eq!(before.entries.len(), after.entries.len());
    let mut changed = 0;
    for ((name, _, x), (_, _, y)) in before.entries.iter().zip(&after.entries) {
        let is_adapter = name.contains(".lora[default]");
        if is_adapter {
            assert_ne!(x, y, "{name} should have been trained");
            changed += 1;
        } else {
            assert_eq!(x, y, "{name} is frozen and must not change");
        }
    }
    assert_eq!(changed, 2 * 2 * 2, "2 layers × (q, v) × (A, B)");
}

#[test]
fn lora_gradients_match_finite_differences() {
    let b = batch();
    let mut model = tiny(3);
    attach(&mut model, &lora(2, &["q_proj", "v_proj", "down_proj"])).unwrap();
    // Non-zero B, so that A has a gradient too.
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for t in ["q_proj", "v_proj", "down_proj"] {
            let ad = layer.linear_mut(t).unwrap().lora.active_mut().unwrap();
            let [r, out] = ad.b.value.dims();
            let mut rng = init::rng_for(9, &format!("{i}{t}"));
            ad.b.value = init::tensor2::<B>(
                init::normal_vec(&mut rng, r * out, 0.5),
                [r, out],
                &Default::default(),
            )
            .require_grad();
        }
    }
    let loss_of = |m: &Llama<B>| -> f64 {
        let l = causal_lm_loss(m.detached().forward(ids(&b), None), &b.labels);
        l.into_scalar() as f64
    };
    let loss = causal_lm_loss(model.forward(ids(&b), None), &b.labels);
    let grads = loss.backward();
    let eps = 1e-2f32;
    let mut checked = 0;
    for (layer, target) in [(0, "q_proj"), (1, "v_proj"), (1, "down_proj")] {
        for which in ["A", "B"] {
            let ad = model.layers[layer]
                .linear(target)
                .unwrap()
                .lora
                .active()
                .unwrap();
            let p = if which == "A" { &ad.a } else { &ad.b };
            let analytic = p
                .value
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f32>()
                .unwrap();
            let values = p.value.to_data().to_vec::<f32>().unwrap();
            let dims = p.value.dims();
            // The three entries with the largest gradient: where a wrong backward shows most.
            let mut order: Vec<usize> = (0..analytic.len()).collect();
            order.sort_by(|&i, &j| analytic[j].abs().partial_cmp(&analytic[i].abs()).unwrap());
            for &k in order.iter().take(3) {
                let shifted = |delta: f32| {
                    let mut v = values.clone();
                    v[k] += delta;
                    let mut m = model.clone();
                    let ad = m.layers[layer]
                        .linear_mut(target)
                        .unwrap()
                        .lora
                        .active_mut()
                        .unwrap();
                    let p = if which == "A" { &mut ad.a } else { &mut ad.b };
                    p.value = init::tensor2::<B>(v, dims, &Default::default());
                    loss_of(&m)
                };
                let numeric = (shifted(eps) - shifted(-eps)) / (2.0 * eps as f64);
                let a = analytic[k] as f64;
                let tol = 2e-3 + 2e-2 * a.abs();
                assert!(
                    (numeric - a).abs() < tol,
                    "layer {layer} {target} lora_{which}[{k}]: autodiff {a}, finite difference {numeric}"
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 18);
}

#[test]
fn invalid_configs_are_rejected_without_changing_the_model() {
    let mut model = tiny(4);
    assert_eq!(
        attach(&mut model, &lora(0, &["q_proj"])),
        Err(PeftError::Rank(0))
    );
    let err = attach(&mut model, &lora(4, &["q_prj"]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("did you mean 'q_proj'"), "{err}");
    let err = attach(&mut model, &lora(65, &["q_proj"])).unwrap_err();
    assert!(
        matches!(err, PeftError::RankTooLarge { rank: 65, .. }),
        "{err}"
    );
    assert_eq!(
        model.param_count().trainable,
        model.param_count().total,
        "failed attaches must not freeze the model"
    );
    attach(&mut model, &lora(4, &["q_proj"])).unwrap();
    assert_eq!(
        attach(&mut model, &lora(4, &["v_proj", "q_proj"])),
        Err(PeftError::AdapterExists("default".into()))
    );
    // A second named adapter becomes the active one: only it trains.
    runner::peft::lora::attach(&mut model, "second", &lora(4, &["v_proj"])).unwrap();
    // Two layers × v: 64→32 (2 of 4 heads for keys/values), rank 4.
    assert_eq!(model.param_count().trainable, 2 * (64 * 4 + 4 * 32));
}

#[test]
fn dropout_is_seeded_and_only_active_in_training() {
    let b = batch();
    let run = |dropout: f64, seed: u64| {
        let mut model = tiny(6);
        attach(
            &mut model,
            &LoraConfig {
                dropout,
                ..lora(4, &["q_proj", "v_proj"])
            },
        )
        .unwrap();
        let mut trainer = Trainer::<B>::new(
            AdamWConfig {
                lr: 1e-2,
                ..Default::default()
            },
            Schedule::default(),
            seed,
        )
        .unwrap();
        let losses: Vec<f64> = (0..3)
            .map(|_| trainer.step(&mut model, &b).unwrap().loss)
            .collect();
        let eval = runner::train::evaluate(&model, vec![b.clone()])
            .unwrap()
            .loss;
        let eval_again = runner::train::evaluate(&model, vec![b.clone()])
            .unwrap()
            .loss;
        assert_eq!(eval, eval_again, "evaluation must not draw dropout masks");
        losses
    };
    let with = run(0.5, 1);
    assert_eq!(with, run(0.5, 1), "same seed, same dropout masks");
    assert_ne!(with, run(0.5, 2), "another seed draws other masks");
    let without = run(0.0, 1);
    // B = 0 at the first step, so dropout on the adapter's input cannot change that loss.
    assert_eq!(with[0], without[0]);
    assert_ne!(with[1..], without[1..]);
}

#[test]
fn untied_head_has_its_own_weights() {
    let tied = TinyOptions::default();
    let untied = TinyOptions {
        tied: false,
        ..Default::default()
    };
    let mt = Llama::<B>::random(tied.config(), 0, tied.std(), &Default::default()).unwrap();
    let mut mu = Llama::<B>::random(untied.config(), 0, untied.std(), &Default::default()).unwrap();
    assert!(mt.lm_head.is_none() && mu.lm_head.is_some());
    assert_eq!(mu.param_count().total, mt.param_count().total + 256 * 64);
    let b = batch();
    let before = logits(&mu, &b);
    attach(&mut mu, &lora(2, &ALL)).unwrap();
    assert_eq!(before, logits(&mu, &b));
    assert!(before.iter().all(|x| x.is_finite()));
}

/// Evaluation copies must not record an autodiff graph: Burn's `detach` keeps `require_grad`,
/// and a recorded but never back-propagated graph kept every activation alive (a SmolLM2
/// perplexity pass leaked about 3 GB).
#[test]
fn detached_models_build_no_graph() {
    let model = tiny(5);
    assert!(model.param_count().trainable > 0);
    let b = batch();
    let grads = model.forward(ids(&b), None).sum().backward();
    assert!(
        model.embed_tokens.value.grad(&grads).is_some(),
        "the trainable model records a graph"
    );
    let detached = model.detached();
    let grads = detached.forward(ids(&b), None).sum().backward();
    assert!(
        detached.embed_tokens.value.grad(&grads).is_none(),
        "its evaluation copy does not"
    );
    assert!(
        detached.layers[0]
            .linear("q_proj")
            .unwrap()
            .dense()
            .unwrap()
            .value
            .grad(&grads)
            .is_none()
    );
}
