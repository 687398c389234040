//! The same tiny model, forward and backward, on flex and on wgpu (Mesa lavapipe in CI) or
//! CUDA (on a machine with an NVIDIA GPU: `cargo test --release --features cuda --test
//! backends -- --ignored`): logits and LoRA gradients agree within 1e-4 (wgpu), or within
//! TF32 rounding (CUDA).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::{init, Llama, TinyOptions};
use runner::peft::lora::{attach, LoraConfig};
use runner::peft::Targets;
use runner::train::loss::causal_lm_loss;

/// Logits, loss and the gradients of every LoRA A and B, flattened, computed on backend `B`.
fn forward_backward<B: AutodiffBackend>(device: &B::Device) -> (Vec<f32>, f32, Vec<f32>) {
    let opts = TinyOptions::default();
    let mut model = Llama::<B>::random(opts.config(), 5, opts.std(), device).unwrap();
    let targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    attach(&mut model, "default", &LoraConfig { rank: 4, alpha: 8.0, targets: Targets::AllLinear, ..Default::default() }).unwrap();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for t in targets {
            let ad = layer.linear_mut(t).unwrap().lora.active_mut().unwrap();
            let [r, out] = ad.b.value.dims();
            let mut rng = init::rng_for(11, &format!("{i}.{t}"));
            ad.b.value = init::tensor2::<B>(init::normal_vec(&mut rng, r * out, 0.1), [r, out], device).require_grad();
        }
    }
    let a = Example::pair("Q: opposite of hot?\nA:", " cold.\n");
    let b = Example::text("Grouped-query attention with rotary embeddings.");
    let batch = Batch::collate(&[&a, &b], 64, &ByteTokenizer).unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]), device);
    let logits = model.forward(ids, None);
    let logits_host = logits.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap();
    let loss = causal_lm_loss(logits, &batch.labels);
    let loss_host = loss.clone().into_data().convert::<f32>().to_vec::<f32>().unwrap()[0];
    let grads = loss.backward();
    let mut g = Vec::new();
    for layer in &model.layers {
        for t in targets {
            let ad = layer.linear(t).unwrap().lora.active().unwrap();
            for p in [&ad.a, &ad.b] {
                g.extend(p.value.grad(&grads).unwrap().into_data().convert::<f32>().to_vec::<f32>().unwrap());
            }
        }
    }
    (logits_host, loss_host, g)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `tol`: the largest |Δ| allowed in logits and gradients.
fn compare<B: AutodiffBackend>(device: &B::Device, tol: f32) {
    let (l1, loss1, g1) = forward_backward::<Autodiff<Flex>>(&Default::default());
    let (l2, loss2, g2) = forward_backward::<B>(device);
    assert!(g1.iter().any(|&x| x != 0.0), "gradients must not be trivially zero");
    let dl = max_abs_diff(&l1, &l2);
    let dg = max_abs_diff(&g1, &g2);
    eprintln!("max |Δ| logits {dl:e}, gradients {dg:e}, loss {loss1} vs {loss2}");
    assert!(dl < tol, "logits differ by {dl}");
    assert!(dg < tol, "gradients differ by {dg}");
    assert!((loss1 - loss2).abs() < tol);
}

#[cfg(feature = "wgpu")]
#[test]
fn flex_and_wgpu_agree() {
    compare::<Autodiff<burn::backend::Wgpu>>(&burn::backend::wgpu::WgpuDevice::DefaultDevice, 1e-4);
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU; run with --ignored where there is one"]
fn flex_and_cuda_agree() {
    // CUDA's f32 matmuls use TF32 tensor cores (10-bit mantissa): on an H200 the logits
    // differed from flex by 9.3e-3 (loss 5.78986 vs 5.78975) and the gradients by 2.4e-4.
    compare::<Autodiff<burn::backend::Cuda>>(&Default::default(), 2e-2);
}
