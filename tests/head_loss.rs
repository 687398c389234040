//! The chunked head + cross-entropy gives the loss and the gradients of the plain
//! composition (full logits, log-softmax, autodiff through both), for adapters and for a
//! trainable tied head, with masked prompt positions.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::params::{Param, ParamVisitor};
use runner::model::{Llama, TinyOptions};
use runner::peft::lora::LoraConfig;
use runner::peft::{Method, Targets};
use runner::train::head_loss::{head_nll, next_token_targets, training_loss};
use runner::train::loss::causal_lm_loss;

type B = Autodiff<Flex>;

mod common;
use common::Perturb;

/// Every trainable parameter's gradient, flattened in visiting order.
struct Grads<'a>(&'a <B as burn::tensor::backend::AutodiffBackend>::Gradients, Vec<(String, Vec<f32>)>);
impl ParamVisitor<B> for Grads<'_> {
    fn visit1(&mut self, name: &str, p: &mut Param<B, 1>) {
        if let Some(g) = p.value.grad(self.0) {
            self.1.push((name.into(), g.into_data().to_vec::<f32>().unwrap()));
        }
    }
    fn visit2(&mut self, name: &str, p: &mut Param<B, 2>) {
        if let Some(g) = p.value.grad(self.0) {
            self.1.push((name.into(), g.into_data().to_vec::<f32>().unwrap()));
        }
    }
}

fn check(method: Method, tied: bool) {
    let opts = TinyOptions { seed: 3, tied, ..Default::default() };
    let mut model = Llama::<B>::random(opts.config(), 3, opts.std(), &Default::default()).unwrap();
    method.attach(&mut model, "default").unwrap();
    // Non-zero LoRA B, so that every adapter parameter has a gradient.
    model.visit(&mut Perturb(1));
    let a = Example::pair("Q: 2 plus 2?\nA:", " 4.\n");
    let b = Example::text("The quick brown fox jumps over the lazy dog.");
    let batch = Batch::collate(&[&a, &b], 64, &ByteTokenizer).unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]), &Default::default());

    let reference = causal_lm_loss(model.forward(ids.clone(), None), &batch.labels);
    let ref_value = reference.clone().into_scalar() as f64;
    let mut want = Grads(&reference.backward(), Vec::new());
    model.visit(&mut want);

    let targets = next_token_targets(&batch.labels, batch.batch, batch.seq);
    let head = model.head().clone();
    let count = targets.iter().filter(|&&t| t != runner::data::IGNORE_INDEX).count();
    let (nll_sum, surrogate) = training_loss(model.hidden_states(ids.clone(), None), &head.value, head.trainable, &targets, count, 1.0);
    let value = nll_sum / count as f64;
    let mut got = Grads(&surrogate.backward(), Vec::new());
    model.visit(&mut got);

    assert!((value - ref_value).abs() < 1e-5, "loss {value} vs {ref_value}");
    assert_eq!(want.1.len(), got.1.len());
    assert!(!want.1.is_empty());
    for ((name, w), (_, g)) in want.1.iter().zip(&got.1) {
        let scale = w.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-3);
        let diff = w.iter().zip(g).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(diff < 1e-4 * scale.max(1.0), "{name}: gradients differ by {diff} (max |g| {scale})");
    }
    // Evaluation path: the same summed loss without gradients.
    let r = head_nll(model.hidden_states(ids, None).inner(), head.value.clone().inner(), &targets, 1.0, false, false);
    assert!((r.nll_sum / r.count as f64 - ref_value).abs() < 1e-5);
}

#[test]
fn lora_gradients_match_the_plain_composition() {
    check(Method::Lora(LoraConfig { rank: 4, alpha: 8.0, targets: Targets::AllLinear, ..Default::default() }), true);
}

#[test]
fn full_fine_tuning_gradients_match_with_tied_and_untied_heads() {
    check(Method::Full, true);
    check(Method::Full, false);
}

#[test]
fn prompt_tuning_gradients_match() {
    check(Method::Prompt(Default::default()), true);
}
