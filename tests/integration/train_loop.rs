//! The training loop's guarantees on the Rust core: gradient accumulation equals the whole
//! batch, clipping scales by PyTorch's rule, non-finite steps are skipped and counted, and a
//! run resumed from a checkpoint reproduces the uninterrupted one.

use burn::backend::{Autodiff, Flex};
use std::sync::Arc;

use burn::prelude::*;

use runner::data::batch::Batches;
use runner::data::{Batch, BatchOptions, ByteTokenizer, Dataset, Example};
use runner::kernels::precision::{LossScale, Precision};
use runner::model::params::{Param, ParamVisitor, Snapshot};
use runner::model::{Llama, TinyOptions};
use runner::peft::Targets;
use runner::peft::lora::LoraConfig;
use runner::train::checkpoint::{self, CheckpointError};
use runner::train::{
    AdamWConfig, Progress, Schedule, ScheduleKind, TrainError, TrainOptions, Trainer,
};

type B = Autodiff<Flex>;

fn model_with_lora(dropout: f64) -> Llama<B> {
    let opts = TinyOptions {
        seed: 3,
        ..Default::default()
    };
    let mut model = Llama::random(opts.config(), 3, opts.std(), &Default::default()).unwrap();
    let config = LoraConfig {
        rank: 4,
        alpha: 8.0,
        dropout,
        targets: Targets::names(&["q_proj", "v_proj", "down_proj"]),
        ..Default::default()
    };
    runner::peft::lora::attach(&mut model, "default", &config).unwrap();
    model
}

fn examples() -> Arc<Vec<Example>> {
    let rows = [
        ("Q: 2 plus 2?\nA:", " 4"),
        ("Q: capital of France?\nA:", " Paris"),
        ("Q: opposite of hot?\nA:", " cold"),
        ("Q: reverse abc\nA:", " cba"),
        ("Q: 10 minus 3?\nA:", " 7"),
        ("Q: first letter of dog?\nA:", " d"),
        (
            "",
            "A plain text example without a prompt, every token learned.",
        ),
        ("Q: plural of cat?\nA:", " cats"),
    ];
    Dataset::new(
        rows.iter().map(|(p, r)| Example::pair(*p, *r)).collect(),
        "test",
    )
    .examples()
    .unwrap()
}

fn collate(group: &[Example]) -> Batch {
    let refs: Vec<&Example> = group.iter().collect();
    Batch::collate(&refs, 64, &ByteTokenizer).unwrap()
}

fn trainer(options: TrainOptions, seed: u64) -> Trainer<B> {
    let schedule = Schedule {
        kind: ScheduleKind::Cosine,
        warmup: 2,
        total: Some(8),
    };
    Trainer::with_options(
        AdamWConfig {
            lr: 1e-2,
            ..Default::default()
        },
        schedule,
        options,
        seed,
    )
    .unwrap()
}

fn snapshot(model: &mut Llama<B>) -> Snapshot {
    let mut s = Snapshot::default();
    model.visit(&mut s);
    s
}

fn max_diff(a: &Snapshot, b: &Snapshot) -> f32 {
    assert_eq!(a.entries.len(), b.entries.len());
    a.entries
        .iter()
        .zip(&b.entries)
        .flat_map(|(x, y)| x.2.iter().zip(&y.2).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f32::max)
}

#[test]
fn accumulation_gives_the_whole_batch_update() {
    let data = examples();
    let batch = collate(&data[..6]);
    let mut whole = model_with_lora(0.0);
    let mut split = whole.clone();
    let mut t1 = trainer(TrainOptions::default(), 0);
    let mut t3 = trainer(
        TrainOptions {
            accumulate: 3,
            ..Default::default()
        },
        0,
    );
    for _ in 0..3 {
        let a = t1.step(&mut whole, &batch).unwrap();
        let b = t3.step(&mut split, &batch).unwrap();
        assert!(
            (a.loss - b.loss).abs() < 1e-6,
            "loss {} vs {}",
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm,
            "grad norm {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    let d = max_diff(&snapshot(&mut whole), &snapshot(&mut split));
    assert!(d < 1e-6, "weights differ by {d}");
    // Accumulating over more micro-batches than rows is an error, not a silent change.
    let err = trainer(
        TrainOptions {
            accumulate: 7,
            ..Default::default()
        },
        0,
    )
    .step(&mut whole, &batch)
    .unwrap_err();
    assert_eq!(
        err,
        TrainError::Accumulate {
            accumulate: 7,
            batch: 6
        }
    );
}

#[test]
fn clipping_scales_the_gradient_by_max_over_norm() {
    let batch = collate(&examples()[..4]);
    let mut model = model_with_lora(0.0);
    // The unclipped norm first, on a copy.
    let norm = trainer(TrainOptions::default(), 0)
        .step(&mut model.clone(), &batch)
        .unwrap()
        .grad_norm;
    let mut free = trainer(TrainOptions::default(), 0);
    free.step(&mut model.clone(), &batch).unwrap();
    let max = norm / 4.0;
    let mut clipped = trainer(
        TrainOptions {
            max_grad_norm: Some(max),
            ..Default::default()
        },
        0,
    );
    let report = clipped.step(&mut model, &batch).unwrap();
    assert_eq!(
        report.grad_norm, norm,
        "the report gives the norm before clipping"
    );
    // After one step the first moment is (1 - β1)·g, so the clipped run's is scaled by
    // max / (norm + 1e-6).
    let scale = max / (norm + 1e-6);
    let (a, b) = (free.optim.export_state(), clipped.optim.export_state());
    assert_eq!(a.len(), b.len());
    for ((name, ma), (_, mb)) in a.iter().zip(&b) {
        for (x, y) in ma.m.iter().zip(&mb.m) {
            assert!(
                (*x as f64 * scale - *y as f64).abs() <= 1e-6 * (x.abs() as f64).max(1e-3),
                "{name}: {x} * {scale} vs {y}"
            );
        }
    }
}

/// Sets every LoRA B matrix (`...lora.<adapter>.B`) to NaN.
struct Poison;
impl ParamVisitor<B> for Poison {
    fn visit1(&mut self, _: &str, _: &mut Param<B, 1>) {}
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        if p.trainable && name.ends_with(".B") {
            let nan = Tensor::<Flex, 2>::full(p.value.dims(), f32::NAN, &Default::default());
            *p = Param::new(Tensor::from_inner(nan), true);
        }
    }
}

#[test]
fn nonfinite_steps_are_skipped_then_training_stops() {
    let batch = collate(&examples()[..4]);
    let mut model = model_with_lora(0.0);
    model.visit(&mut Poison);
    let before = snapshot(&mut model);
    let mut t = trainer(
        TrainOptions {
            max_nonfinite: 3,
            ..Default::default()
        },
        0,
    );
    for i in 1..=2 {
        let r = t.step(&mut model, &batch).unwrap();
        assert!(r.skipped && r.loss.is_nan(), "step {i}: {r:?}");
        assert_eq!(
            (
                t.progress.skipped,
                t.progress.consecutive_nonfinite,
                t.steps()
            ),
            (i, i, 0)
        );
    }
    let err = t.step(&mut model, &batch).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFiniteLimit {
                count: 3,
                batch: 3,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("3 consecutive steps had a non-finite loss"),
        "{err}"
    );
    // Skipped steps left every weight as it was and the optimizer without state.
    let after = snapshot(&mut model);
    for (x, y) in before.entries.iter().zip(&after.entries) {
        assert!(
            x.2.iter()
                .zip(&y.2)
                .all(|(p, q)| p.to_bits() == q.to_bits()),
            "{} changed",
            x.0
        );
    }
    assert!(t.optim.export_state().is_empty());
}

#[test]
fn a_finite_step_resets_the_nonfinite_count() {
    let data = examples();
    let good = collate(&data[..4]);
    let mut model = model_with_lora(0.0);
    let mut t = trainer(
        TrainOptions {
            max_nonfinite: 2,
            ..Default::default()
        },
        0,
    );
    let mut poisoned = model.clone();
    poisoned.visit(&mut Poison);
    assert!(t.step(&mut poisoned, &good).unwrap().skipped);
    assert!(!t.step(&mut model, &good).unwrap().skipped);
    assert_eq!(
        (
            t.progress.skipped,
            t.progress.consecutive_nonfinite,
            t.steps()
        ),
        (1, 0, 1)
    );
    assert!(
        t.step(&mut poisoned, &good).unwrap().skipped,
        "one in a row is below the limit of 2"
    );
}

/// Trains `steps` batches drawn from a seeded, shuffled stream, starting at `skip`.
fn run(model: &mut Llama<B>, t: &mut Trainer<B>, skip: usize, steps: usize) -> Vec<f64> {
    let opts = BatchOptions {
        size: 4,
        max_len: 64,
        steps: Some(skip + steps),
        shuffle: true,
        seed: 5,
        skip,
        group_by_length: false,
    };
    Batches::new(examples(), opts)
        .map(|group| t.step(model, &collate(&group.unwrap())).unwrap().loss)
        .collect()
}

/// What an interrupted run left: the model trained straight through, the model that resumed
/// from the checkpoint, what loading reported, and the counters as loaded.
struct Resumed {
    straight: Llama<B>,
    resumed: Llama<B>,
    report: checkpoint::LoadReport,
    loaded: Progress,
}

/// Trains `total` steps straight through; then again, stopping after `stop` steps to save a
/// checkpoint (after `before_save` has looked at the trainer) and resuming from it with a
/// fresh model and trainer, as a new process would. Asserts the two loss curves agree.
fn interrupt_and_resume(
    options: TrainOptions,
    stop: usize,
    total: usize,
    before_save: impl FnOnce(&mut Trainer<B>),
) -> Resumed {
    let mut straight = model_with_lora(0.1);
    let mut t = trainer(options.clone(), 11);
    let expected = run(&mut straight, &mut t, 0, total);

    let dir = tempfile::tempdir().unwrap();
    let mut first = model_with_lora(0.1);
    let mut t1 = trainer(options.clone(), 11);
    let mut losses = run(&mut first, &mut t1, 0, stop);
    before_save(&mut t1);
    checkpoint::save(dir.path(), &t1, &mut first, Some("recipe-hash"), 2).unwrap();
    drop((first, t1));

    // The base model as loaded, the same adapter attached, a new trainer.
    let mut resumed = model_with_lora(0.1);
    let mut trainer = trainer(options, 11);
    let report =
        checkpoint::load(dir.path(), &mut trainer, &mut resumed, Some("recipe-hash")).unwrap();
    let loaded = trainer.progress.clone();
    losses.extend(run(
        &mut resumed,
        &mut trainer,
        loaded.batches,
        total - stop,
    ));

    assert_eq!(losses.len(), expected.len());
    for (i, (a, b)) in losses.iter().zip(&expected).enumerate() {
        assert!(
            (a - b).abs() < 1e-6,
            "step {}: resumed {a} vs uninterrupted {b}",
            i + 1
        );
    }
    Resumed {
        straight,
        resumed,
        report,
        loaded,
    }
}

#[test]
fn resuming_from_a_checkpoint_reproduces_the_uninterrupted_run() {
    // Dropout, a warmup + cosine schedule and accumulation all carry state across steps.
    let options = TrainOptions {
        accumulate: 2,
        max_grad_norm: Some(1.0),
        ..Default::default()
    };
    let Resumed {
        mut straight,
        mut resumed,
        report,
        loaded,
    } = interrupt_and_resume(options, 3, 7, |_| ());
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!((loaded.step, loaded.batches), (3, 3));
    let d = max_diff(&snapshot(&mut resumed), &snapshot(&mut straight));
    assert!(d < 1e-6, "final weights differ by {d}");
}

#[test]
fn checkpoints_are_pruned_and_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let batch = collate(&examples()[..4]);
    let mut model = model_with_lora(0.0);
    let mut t = trainer(TrainOptions::default(), 0);
    for _ in 0..4 {
        t.step(&mut model, &batch).unwrap();
        checkpoint::save(dir.path(), &t, &mut model, None, 2).unwrap();
    }
    // Saving the same step twice replaces it.
    checkpoint::save(dir.path(), &t, &mut model, None, 2).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["latest", "step-00000003", "step-00000004"]);
    assert_eq!(
        checkpoint::find(dir.path()).unwrap(),
        dir.path().join("step-00000004")
    );
    // With `latest` gone (say, a crash right after a rename), the highest step is used.
    std::fs::remove_file(dir.path().join("latest")).unwrap();
    assert_eq!(
        checkpoint::find(dir.path()).unwrap(),
        dir.path().join("step-00000004")
    );
    // A `step-N` folder runner cannot verify as its own (no state file: the user's, or one
    // from an old version killed mid-delete) is never loaded and never deleted; a hidden
    // leftover of an interrupted prune is cleaned up by the next save.
    let foreign = dir.path().join("step-00000002");
    std::fs::create_dir(&foreign).unwrap();
    std::fs::write(foreign.join("optimizer.safetensors"), b"partial").unwrap();
    std::fs::write(foreign.join("notes.txt"), b"the user's").unwrap();
    std::fs::create_dir(dir.path().join(".step-00000001.old-1-pruned")).unwrap();
    assert_eq!(
        checkpoint::find(dir.path()).unwrap(),
        dir.path().join("step-00000004")
    );
    t.step(&mut model, &batch).unwrap();
    checkpoint::save(dir.path(), &t, &mut model, None, 1).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["latest", "step-00000002", "step-00000005"]);
    assert_eq!(
        std::fs::read(foreign.join("notes.txt")).unwrap(),
        b"the user's"
    );
    // A runner checkpoint the user added a file to is theirs now: kept, and not loaded.
    std::fs::write(dir.path().join("step-00000005/mine.txt"), b"x").unwrap();
    std::fs::remove_file(dir.path().join("latest")).unwrap();
    assert!(checkpoint::find(dir.path()).is_none());
    t.step(&mut model, &batch).unwrap();
    checkpoint::save(dir.path(), &t, &mut model, None, 1).unwrap();
    assert!(dir.path().join("step-00000005/mine.txt").exists());
}

#[test]
fn a_checkpoint_for_other_adapters_is_refused_without_touching_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let batch = collate(&examples()[..4]);
    let mut model = model_with_lora(0.0);
    let mut t = trainer(TrainOptions::default(), 0);
    t.step(&mut model, &batch).unwrap();
    checkpoint::save(dir.path(), &t, &mut model, Some("a"), 2).unwrap();

    let opts = TinyOptions {
        seed: 3,
        ..Default::default()
    };
    let mut other = Llama::<B>::random(opts.config(), 3, opts.std(), &Default::default()).unwrap();
    let config = LoraConfig {
        rank: 8,
        alpha: 8.0,
        targets: Targets::names(&["q_proj", "v_proj", "down_proj"]),
        ..Default::default()
    };
    runner::peft::lora::attach(&mut other, "default", &config).unwrap();
    let before = snapshot(&mut other);
    let mut t2 = trainer(TrainOptions::default(), 0);
    let err = checkpoint::load(dir.path(), &mut t2, &mut other, Some("a")).unwrap_err();
    assert!(matches!(err, CheckpointError::Mismatch { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("is [64, 8] in the model but [64, 4] in the checkpoint")
            && msg.contains("attach the same adapters"),
        "{msg}"
    );
    assert_eq!(max_diff(&before, &snapshot(&mut other)), 0.0);
    assert_eq!(t2.steps(), 0);

    // A different recipe is allowed, with a warning.
    let mut same = model_with_lora(0.0);
    let report = checkpoint::load(
        dir.path(),
        &mut trainer(TrainOptions::default(), 0),
        &mut same,
        Some("b"),
    )
    .unwrap();
    assert_eq!(
        report.warnings,
        ["the recipe changed since this checkpoint was saved"]
    );

    // A truncated file is a clear error.
    let ckpt = checkpoint::find(dir.path()).unwrap();
    let weights = ckpt.join("trainable.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let err = checkpoint::load(
        dir.path(),
        &mut trainer(TrainOptions::default(), 0),
        &mut model_with_lora(0.0),
        None,
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("trainable.safetensors: not a safetensors file"),
        "{err}"
    );
}

/// Losses and final weights of 3 steps with and without activation checkpointing.
fn with_and_without_checkpointing(mut model: Llama<B>) {
    let data = examples();
    let batch = collate(&data[..4]);
    let mut plain = model.clone();
    let mut t1 = trainer(
        TrainOptions {
            accumulate: 2,
            ..Default::default()
        },
        7,
    );
    let mut t2 = trainer(
        TrainOptions {
            accumulate: 2,
            checkpointing: true,
            ..Default::default()
        },
        7,
    );
    for step in 0..3 {
        let a = t1.step(&mut plain, &batch).unwrap();
        let b = t2.step(&mut model, &batch).unwrap();
        assert!(
            (a.loss - b.loss).abs() < 1e-6,
            "step {step}: loss {} vs {}",
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() < 1e-5 * a.grad_norm.max(1.0),
            "step {step}: grad norm {} vs {}",
            a.grad_norm,
            b.grad_norm
        );
    }
    let d = max_diff(&snapshot(&mut plain), &snapshot(&mut model));
    assert!(d < 1e-5, "weights differ by {d}");
}

#[test]
fn checkpointing_gives_the_same_training_with_dropout() {
    with_and_without_checkpointing(model_with_lora(0.1));
}

fn tiny_with(method: runner::peft::Method) -> Llama<B> {
    let opts = TinyOptions {
        seed: 3,
        ..Default::default()
    };
    let mut model = Llama::<B>::random(opts.config(), 3, opts.std(), &Default::default()).unwrap();
    method.attach(&mut model, "default").unwrap();
    model
}

#[test]
fn checkpointing_gives_the_same_training_with_a_trained_embedding() {
    use runner::peft::prompt::{PromptConfig, PromptInit};
    use runner::train::trainer::checkpointable;
    // Full fine-tuning with a tied embedding: the embedding's gradient comes from the head and
    // from the first layer's input, and both must reach it.
    let full = tiny_with(runner::peft::Method::Full);
    assert!(checkpointable(&full) && full.config.tie_word_embeddings);
    with_and_without_checkpointing(full);
    let prompt = tiny_with(runner::peft::Method::Prompt(PromptConfig {
        num_virtual_tokens: 4,
        init: PromptInit::Random,
        ..Default::default()
    }));
    assert!(checkpointable(&prompt));
    with_and_without_checkpointing(prompt);
}

#[test]
fn checkpointing_falls_back_for_prefix_tuning() {
    let prefix = tiny_with(runner::peft::Method::Prefix(Default::default()));
    assert!(!runner::train::trainer::checkpointable(&prefix));
    // The fallback trains exactly as the plain pass.
    with_and_without_checkpointing(prefix);
}

/// Losses and gradient norms of `steps` updates on one batch in `precision`.
fn curve(mut model: Llama<B>, precision: Precision, steps: usize) -> Vec<(f64, f64)> {
    let batch = collate(&examples()[..6]);
    let mut t = trainer(
        TrainOptions {
            precision,
            ..Default::default()
        },
        0,
    );
    t.schedule = Schedule::default();
    (0..steps)
        .map(|_| {
            let r = t.step(&mut model, &batch).unwrap();
            assert!(!r.skipped, "{precision:?}: {r:?}");
            (r.loss, r.grad_norm)
        })
        .collect()
}

/// bf16 and f16 round the matmuls' operands, so the loss moves off f32's by a little, but the
/// run tracks the f32 one: f16's reported gradient norm has the loss scale divided out.
fn mixed_precision_tracks_fp32(model: Llama<B>) {
    let reference = curve(model.clone(), Precision::Fp32, 5);
    assert!(
        reference[4].0 < reference[0].0 * 0.9,
        "f32 trains: {reference:?}"
    );
    for (precision, tolerance) in [(Precision::Bf16, 2e-3), (Precision::Fp16, 5e-4)] {
        let got = curve(model.clone(), precision, 5);
        let (l0, g0) = (got[0].0, got[0].1);
        let (r0, rg0) = reference[0];
        assert!(
            l0 != r0,
            "{precision:?}: the loss is f32's exactly, so nothing ran in lower precision"
        );
        assert!(
            (l0 - r0).abs() < tolerance * r0,
            "{precision:?}: first loss {l0} vs f32 {r0}"
        );
        assert!(
            (g0 - rg0).abs() < 10.0 * tolerance * rg0,
            "{precision:?}: gradient norm {g0} vs f32 {rg0}"
        );
        assert!(got[4].0 < l0 * 0.9, "{precision:?} trains: {got:?}");
        assert!(
            (got[4].0 - reference[4].0).abs() < 0.05 * reference[4].0,
            "{precision:?}: last loss {} vs f32 {}",
            got[4].0,
            reference[4].0
        );
    }
}

#[test]
fn mixed_precision_tracks_fp32_for_lora() {
    mixed_precision_tracks_fp32(model_with_lora(0.0));
}

#[test]
fn mixed_precision_tracks_fp32_for_qlora_and_full_fine_tuning() {
    // The quantized matmul's own backward rounds in the precision its forward ran in.
    let mut qlora = model_with_lora(0.0);
    runner::model::quantize::quantize_model(
        &mut qlora,
        runner::quant::QuantConfig {
            block: 16,
            ..Default::default()
        },
    )
    .unwrap();
    mixed_precision_tracks_fp32(qlora);
    mixed_precision_tracks_fp32(tiny_with(runner::peft::Method::Full));
}

#[test]
fn f16_overflow_lowers_the_loss_scale_without_counting_as_divergence() {
    let batch = collate(&examples()[..4]);
    let mut model = model_with_lora(0.0);
    let before = snapshot(&mut model);
    let mut t = trainer(
        TrainOptions {
            precision: Precision::Fp16,
            max_nonfinite: 2,
            ..Default::default()
        },
        0,
    );
    // Gradients times 2¹²⁰ overflow f16 (largest finite value 65504).
    t.progress.loss_scale = Some(LossScale {
        scale: 2f64.powi(120),
        clean_steps: 7,
    });
    for i in 1..=4 {
        let r = t.step(&mut model, &batch).unwrap();
        assert!(r.skipped && r.loss.is_finite(), "step {i}: {r:?}");
        assert_eq!(r.loss_scale, Some(2f64.powi(120 - i)));
        assert_eq!(
            (
                t.progress.skipped,
                t.progress.consecutive_nonfinite,
                t.steps()
            ),
            (i as usize, 0, 0)
        );
    }
    let d = max_diff(&before, &snapshot(&mut model));
    assert_eq!(d, 0.0, "skipped steps changed the weights");
    // At the floor an overflow is the model's own and counts towards the limit.
    t.progress.loss_scale = Some(LossScale {
        scale: LossScale::MIN,
        clean_steps: 0,
    });
    model.visit(&mut Poison);
    assert!(t.step(&mut model, &batch).unwrap().skipped);
    assert!(matches!(
        t.step(&mut model, &batch).unwrap_err(),
        TrainError::NonFiniteLimit { count: 2, .. }
    ));
}

#[test]
fn f16_resume_restores_the_loss_scale() {
    let options = TrainOptions {
        precision: Precision::Fp16,
        ..Default::default()
    };
    let mut saved = None;
    let resumed = interrupt_and_resume(options, 2, 4, |t| {
        t.progress.loss_scale.as_mut().unwrap().clean_steps = 1234;
        saved = t.progress.loss_scale;
    });
    assert!(saved.is_some());
    assert_eq!(resumed.loaded.loss_scale, saved);
}
