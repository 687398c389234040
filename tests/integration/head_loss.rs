//! The chunked head + cross-entropy gives the loss and the gradients of the plain
//! composition (full logits, log-softmax, autodiff through both), for adapters and for a
//! trainable tied head, with masked prompt positions.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::params::{Param, ParamVisitor};
use runner::model::{Llama, TinyOptions};
use runner::peft::lora::LoraConfig;
use runner::peft::{Method, Targets};
use runner::train::head_loss::{head_nll, next_token_targets, training_loss};
use runner::train::loss::causal_lm_loss;

type B = Autodiff<Flex>;

use crate::common::Perturb;

/// Every trainable parameter's gradient, flattened in visiting order.
struct Grads<'a, Bk: AutodiffBackend>(&'a Bk::Gradients, Vec<(String, Vec<f32>)>);
impl<Bk: AutodiffBackend> ParamVisitor<Bk> for Grads<'_, Bk> {
    fn visit1(&mut self, name: &str, p: &mut Param<Bk, 1>) {
        if let Some(g) = p.value.grad(self.0) {
            self.1
                .push((name.into(), g.into_data().to_vec::<f32>().unwrap()));
        }
    }
    fn visit2(&mut self, name: &str, p: &mut Param<Bk, 2>) {
        if let Some(g) = p.value.grad(self.0) {
            self.1
                .push((name.into(), g.into_data().to_vec::<f32>().unwrap()));
        }
    }
}

/// `softcap`: Gemma 2's final logit soft-capping, set on the model so that its plain forward
/// pass (the reference) caps too.
fn check(method: Method, tied: bool, softcap: Option<f64>) {
    check_on::<B>(&Default::default(), method, tied, softcap);
}

fn check_on<Bk: AutodiffBackend>(
    device: &Bk::Device,
    method: Method,
    tied: bool,
    softcap: Option<f64>,
) {
    let opts = TinyOptions {
        seed: 3,
        tied,
        ..Default::default()
    };
    let mut config = opts.config();
    config.final_logit_softcapping = softcap;
    let mut model = Llama::<Bk>::random(config, 3, opts.std(), device).unwrap();
    method.attach(&mut model, "default").unwrap();
    // Non-zero LoRA B, so that every adapter parameter has a gradient.
    model.visit(&mut Perturb(1));
    let a = Example::pair("Q: 2 plus 2?\nA:", " 4.\n");
    let b = Example::text("The quick brown fox jumps over the lazy dog.");
    let batch = Batch::collate(&[&a, &b], 64, &ByteTokenizer).unwrap();
    let ids = Tensor::<Bk, 2, Int>::from_data(
        TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]),
        device,
    );

    let reference = causal_lm_loss(model.forward(ids.clone(), None), &batch.labels);
    let ref_value = reference.clone().into_scalar().elem::<f64>();
    let mut want = Grads::<Bk>(&reference.backward(), Vec::new());
    model.visit(&mut want);

    let targets = next_token_targets(&batch.labels, batch.batch, batch.seq);
    let head = model.head().clone();
    let count = targets
        .iter()
        .filter(|&&t| t != runner::data::IGNORE_INDEX)
        .count();
    let (nll_sum, surrogate) = training_loss(
        model.hidden_states(ids.clone(), None),
        &head.value,
        head.trainable,
        &targets,
        count,
        1.0,
        softcap,
    );
    let value = nll_sum / count as f64;
    let mut got = Grads::<Bk>(&surrogate.backward(), Vec::new());
    model.visit(&mut got);

    assert!(
        (value - ref_value).abs() < 1e-5,
        "loss {value} vs {ref_value}"
    );
    assert_eq!(want.1.len(), got.1.len());
    assert!(!want.1.is_empty());
    for ((name, w), (_, g)) in want.1.iter().zip(&got.1) {
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = w
            .iter()
            .zip(g)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(
            diff < 1e-4 * scale.max(1.0),
            "{name}: gradients differ by {diff} (max |g| {scale})"
        );
    }
    // Evaluation path: the same summed loss without gradients.
    let r = head_nll(
        model.hidden_states(ids, None).inner(),
        head.value.clone().inner(),
        &targets,
        1.0,
        false,
        false,
        softcap,
    );
    assert!((r.nll_sum / r.count as f64 - ref_value).abs() < 1e-5);
}

fn lora_all_linear() -> Method {
    Method::Lora(LoraConfig {
        rank: 4,
        alpha: 8.0,
        targets: Targets::AllLinear,
        ..Default::default()
    })
}

#[test]
fn lora_gradients_match_the_plain_composition() {
    check(lora_all_linear(), true, None);
}

/// On wgpu the chunked head runs runner's CubeCL cross-entropy kernel (under fusion), and
/// attention its masked-softmax kernel: the loss and every gradient still match the plain
/// composition there, with adapters and with a trainable untied head.
#[cfg(feature = "wgpu")]
#[test]
fn the_chunked_head_matches_on_wgpu() {
    let device = burn::backend::wgpu::WgpuDevice::DefaultDevice;
    check_on::<Autodiff<burn::backend::Wgpu>>(&device, lora_all_linear(), true, None);
    check_on::<Autodiff<burn::backend::Wgpu>>(&device, Method::Full, false, None);
}

#[test]
fn full_fine_tuning_gradients_match_with_tied_and_untied_heads() {
    check(Method::Full, true, None);
    check(Method::Full, false, None);
}

#[test]
fn prompt_tuning_gradients_match() {
    check(Method::Prompt(Default::default()), true, None);
}

#[test]
fn soft_capped_logits_give_the_loss_and_gradients_of_the_plain_composition() {
    // A cap of 1.5 bites: the tiny model's raw logits reach beyond it.
    let opts = TinyOptions {
        seed: 3,
        tied: false,
        ..Default::default()
    };
    let raw = Llama::<B>::random(opts.config(), 3, opts.std(), &Default::default()).unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new((0..32i64).map(|i| i * 7 % 256).collect::<Vec<_>>(), [1, 32]),
        &Default::default(),
    );
    let max = raw.forward(ids, None).abs().max().into_scalar();
    assert!(max > 3.0, "raw logits reach {max}");
    check(Method::Full, false, Some(1.5));
    check(lora_all_linear(), true, Some(1.5));
}

/// More rows than one chunk (and a masked row): the head's gradient is summed over chunks,
/// and matches autodiff through the full logits.
#[test]
fn head_gradients_summed_over_chunks_match_the_full_logits() {
    let (rows, d, vocab) = (600, 16, 50);
    let dist = burn::tensor::Distribution::Uniform(-1.0, 1.0);
    let hidden = Tensor::<Flex, 2>::random([rows, d], dist, &Default::default());
    let head = Tensor::<Flex, 2>::random([vocab, d], dist, &Default::default());
    let mut targets: Vec<i64> = (0..rows as i64).map(|r| (r * 7) % vocab as i64).collect();
    targets[5] = runner::data::IGNORE_INDEX;
    let scale = 1.0 / (rows - 1) as f64;
    let r = head_nll(
        hidden.clone(),
        head.clone(),
        &targets,
        scale,
        true,
        true,
        None,
    );

    let (h, w) = (
        Tensor::<B, 2>::from_inner(hidden).require_grad(),
        Tensor::<B, 2>::from_inner(head).require_grad(),
    );
    let logp = burn::tensor::activation::log_softmax(h.clone().matmul(w.clone().transpose()), 1);
    let picked: Vec<f32> = targets
        .iter()
        .map(|&t| {
            if t == runner::data::IGNORE_INDEX {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    let index: Vec<i64> = targets.iter().map(|&t| t.max(0)).collect();
    let index =
        Tensor::<B, 2, Int>::from_data(TensorData::new(index, [rows, 1]), &Default::default());
    let mask = Tensor::<B, 2>::from_data(TensorData::new(picked, [rows, 1]), &Default::default());
    let nll = -(logp.gather(1, index) * mask).sum();
    let expected_nll = nll.clone().into_scalar() as f64;
    let grads = (nll * scale).backward();
    assert!(
        (r.nll_sum - expected_nll).abs() < 1e-3 * expected_nll.abs(),
        "{} vs {expected_nll}",
        r.nll_sum
    );
    for (got, want) in [
        (r.grad_head.unwrap(), w.grad(&grads).unwrap()),
        (r.grad_hidden.unwrap(), h.grad(&grads).unwrap()),
    ] {
        let (got, want) = (
            got.into_data().to_vec::<f32>().unwrap(),
            want.into_data().to_vec::<f32>().unwrap(),
        );
        let diff = got
            .iter()
            .zip(&want)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }
}
