//! AdamW follows PyTorch's algorithm: decoupled decay, bias correction, eps outside the sqrt.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::params::{Param, ParamVisitor, Snapshot};
use runner::model::{Llama, TinyOptions};
use runner::train::{AdamW, AdamWConfig, Schedule, Trainer};

type B = Autodiff<Flex>;

/// Walks a single parameter, as a model would.
struct One<'a>(&'a mut Param<B, 1>);

#[test]
fn first_steps_match_pytorch_adamw() {
    // Loss = sum(c · w): the gradient is c at every step.
    let device = Default::default();
    let c = [0.5f32, -2.0, 1e-3];
    let w0 = [1.0f32, -1.0, 0.25];
    let cfg = AdamWConfig {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
        offload: false,
        ..Default::default()
    };
    let mut opt = AdamW::<B>::new(cfg.clone()).unwrap();
    let mut p = Param::new(Tensor::<B, 1>::from_floats(w0, &device), true);
    // Reference: PyTorch's AdamW written out in f64.
    let (mut w, mut m, mut v) = (w0.map(f64::from), [0.0f64; 3], [0.0f64; 3]);
    for t in 1..=3 {
        let loss = (p.value.clone() * Tensor::<B, 1>::from_floats(c, &device)).sum();
        let grads = loss.backward();
        opt.update(cfg.lr, &grads, |u| One(&mut p).walk(u));
        for i in 0..3 {
            let g = c[i] as f64;
            w[i] *= 1.0 - cfg.lr * cfg.weight_decay;
            m[i] = cfg.beta1 * m[i] + (1.0 - cfg.beta1) * g;
            v[i] = cfg.beta2 * v[i] + (1.0 - cfg.beta2) * g * g;
            let bc1 = 1.0 - cfg.beta1.powi(t);
            let bc2 = 1.0 - cfg.beta2.powi(t);
            w[i] -= cfg.lr / bc1 * m[i] / ((v[i]).sqrt() / bc2.sqrt() + cfg.eps);
        }
        let got = p.value.to_data().to_vec::<f32>().unwrap();
        for i in 0..3 {
            assert!(
                (got[i] as f64 - w[i]).abs() < 1e-6,
                "step {t} [{i}]: {} vs {}",
                got[i],
                w[i]
            );
        }
    }
}

#[test]
fn first_step_moves_each_weight_by_lr_whatever_the_gradient_size() {
    // Bias-corrected Adam's first update is lr · g/|g|: the signature of eps outside the sqrt
    // and of correct bias correction (a missing correction would move by lr · 0.1/0.0316).
    let device = Default::default();
    let cfg = AdamWConfig {
        lr: 0.01,
        weight_decay: 0.0,
        ..Default::default()
    };
    let mut opt = AdamW::<B>::new(cfg.clone()).unwrap();
    let mut p = Param::new(Tensor::<B, 1>::from_floats([0.0f32, 0.0], &device), true);
    let loss = (p.value.clone() * Tensor::<B, 1>::from_floats([1e3f32, -1e-3], &device)).sum();
    let grads = loss.backward();
    opt.update(cfg.lr, &grads, |u| One(&mut p).walk(u));
    let got = p.value.to_data().to_vec::<f32>().unwrap();
    assert!(
        (got[0] + 0.01).abs() < 1e-6 && (got[1] - 0.01).abs() < 1e-6,
        "{got:?}"
    );
}

impl One<'_> {
    fn walk<V: ParamVisitor<B>>(&mut self, v: &mut V) {
        v.visit1("w", self.0);
    }
}

#[test]
fn defaults_are_pytorchs() {
    let d = AdamWConfig::default();
    assert_eq!(
        (d.beta1, d.beta2, d.eps, d.weight_decay),
        (0.9, 0.999, 1e-8, 0.01)
    );
    assert!(
        AdamWConfig {
            lr: -1.0,
            ..d.clone()
        }
        .validate()
        .is_err()
    );
    assert!(AdamWConfig { beta2: 1.0, ..d }.validate().is_err());
}

#[test]
fn full_fine_tuning_lowers_the_loss_and_is_deterministic() {
    let (a, wa) = full_fine_tune(false);
    let (b, wb) = full_fine_tune(false);
    assert_eq!(a, b, "same seed, same losses");
    assert_eq!(wa, wb, "same seed, same weights");
    assert!(a[14] < 0.5 * a[0], "loss should fall: {a:?}");
}

/// Moments kept in host memory between steps give bit-identical training.
#[test]
fn offloaded_moments_train_identically() {
    let (a, wa) = full_fine_tune(false);
    let (b, wb) = full_fine_tune(true);
    assert_eq!(a, b);
    assert_eq!(wa, wb);
}

type Weights = Vec<(String, Vec<usize>, Vec<f32>)>;

fn full_fine_tune(offload: bool) -> (Vec<f64>, Weights) {
    let opts = TinyOptions {
        layers: 1,
        d_model: 32,
        heads: 2,
        kv_heads: 1,
        ..Default::default()
    };
    let mut model = Llama::<B>::random(opts.config(), 0, opts.std(), &Default::default()).unwrap();
    let ex = Example::text("abcabcabcabcabcabcabcabc");
    let batch = Batch::collate(&[&ex], 32, &ByteTokenizer).unwrap();
    let mut trainer = Trainer::<B>::new(
        AdamWConfig {
            lr: 1e-2,
            offload,
            ..Default::default()
        },
        Schedule::default(),
        0,
    )
    .unwrap();
    let losses: Vec<f64> = (0..15)
        .map(|_| trainer.step(&mut model, &batch).unwrap().loss)
        .collect();
    let mut snap = Snapshot::default();
    model.visit(&mut snap);
    (losses, snap.entries)
}

/// Walks two parameters under the given names.
struct Two<'a>(&'a str, &'a mut Param<B, 1>, &'a str, &'a mut Param<B, 1>);

impl Two<'_> {
    fn walk<V: ParamVisitor<B>>(&mut self, v: &mut V) {
        v.visit1(self.0, self.1);
        v.visit1(self.2, self.3);
    }
}

#[test]
fn norms_and_biases_are_not_decayed() {
    // A zero gradient leaves only the decay: w · (1 - lr · wd) for decayed parameters.
    let device = Default::default();
    let cfg = AdamWConfig {
        lr: 0.1,
        weight_decay: 0.5,
        ..Default::default()
    };
    let mut opt = AdamW::<B>::new(cfg.clone()).unwrap();
    let mut norm = Param::new(Tensor::<B, 1>::from_floats([2.0f32, -1.0], &device), true);
    let mut proj = Param::new(Tensor::<B, 1>::from_floats([2.0f32, -1.0], &device), true);
    let loss = (norm.value.clone() * 0.0).sum() + (proj.value.clone() * 0.0).sum();
    let grads = loss.backward();
    opt.update(cfg.lr, &grads, |u| {
        Two(
            "layers.0.input_layernorm",
            &mut norm,
            "layers.0.mlp.up_proj.bias_extra",
            &mut proj,
        )
        .walk(u)
    });
    assert_eq!(norm.value.to_data().to_vec::<f32>().unwrap(), [2.0, -1.0]);
    // "bias" matches by substring too: biases are exempt.
    assert_eq!(proj.value.to_data().to_vec::<f32>().unwrap(), [2.0, -1.0]);
    let mut w = Param::new(Tensor::<B, 1>::from_floats([2.0f32, -1.0], &device), true);
    let mut opt = AdamW::<B>::new(cfg.clone()).unwrap();
    let grads = (w.value.clone() * 0.0).sum().backward();
    opt.update(cfg.lr, &grads, |u| One(&mut w).walk(u));
    let got = w.value.to_data().to_vec::<f32>().unwrap();
    assert!(
        (got[0] - 1.9).abs() < 1e-6 && (got[1] + 0.95).abs() < 1e-6,
        "{got:?}"
    );
}
