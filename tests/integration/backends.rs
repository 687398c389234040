//! The same tiny model, forward and backward, on flex and on wgpu (Mesa lavapipe in CI) or
//! CUDA (on a machine with an NVIDIA GPU: `cargo test --release --features cuda --test
//! backends -- --ignored`; `scripts/device_check.sh` runs them on a GPU machine): logits and
//! LoRA gradients agree within 1e-4 (wgpu), or within TF32 rounding (CUDA). The device-memory
//! and quantized-weight checks run on both GPU backends the same way.
#![cfg(any(feature = "wgpu", feature = "cuda"))]

use crate::common::max_abs_diff;
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::model::{Llama, TinyOptions, init};
use runner::peft::Targets;
use runner::peft::lora::{LoraConfig, attach};
use runner::train::loss::causal_lm_loss;

/// Logits, loss and the gradients of every LoRA A and B, flattened, computed on backend `B`.
fn forward_backward<B: AutodiffBackend>(device: &B::Device) -> (Vec<f32>, f32, Vec<f32>) {
    let opts = TinyOptions::default();
    let mut model = Llama::<B>::random(opts.config(), 5, opts.std(), device).unwrap();
    let targets = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    attach(
        &mut model,
        "default",
        &LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: Targets::AllLinear,
            ..Default::default()
        },
    )
    .unwrap();
    for (i, layer) in model.layers.iter_mut().enumerate() {
        for t in targets {
            let ad = layer.linear_mut(t).unwrap().lora.active_mut().unwrap();
            let [r, out] = ad.b.value.dims();
            let mut rng = init::rng_for(11, &format!("{i}.{t}"));
            ad.b.value =
                init::tensor2::<B>(init::normal_vec(&mut rng, r * out, 0.1), [r, out], device)
                    .require_grad();
        }
    }
    let a = Example::pair("Q: opposite of hot?\nA:", " cold.\n");
    let b = Example::text("Grouped-query attention with rotary embeddings.");
    let batch = Batch::collate(&[&a, &b], 64, &ByteTokenizer).unwrap();
    let ids = Tensor::<B, 2, Int>::from_data(
        TensorData::new(batch.input_ids.clone(), [batch.batch, batch.seq]),
        device,
    );
    let logits = model.forward(ids, None);
    let logits_host = logits
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap();
    let loss = causal_lm_loss(logits, &batch.labels);
    let loss_host = loss
        .clone()
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .unwrap()[0];
    let grads = loss.backward();
    let mut g = Vec::new();
    for layer in &model.layers {
        for t in targets {
            let ad = layer.linear(t).unwrap().lora.active().unwrap();
            for p in [&ad.a, &ad.b] {
                g.extend(
                    p.value
                        .grad(&grads)
                        .unwrap()
                        .into_data()
                        .convert::<f32>()
                        .to_vec::<f32>()
                        .unwrap(),
                );
            }
        }
    }
    (logits_host, loss_host, g)
}

/// `tol`: the largest |Δ| allowed in logits and gradients.
fn compare<B: AutodiffBackend>(device: &B::Device, tol: f32) {
    let (l1, loss1, g1) = forward_backward::<Autodiff<Flex>>(&Default::default());
    let (l2, loss2, g2) = forward_backward::<B>(device);
    assert!(
        g1.iter().any(|&x| x != 0.0),
        "gradients must not be trivially zero"
    );
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

/// Full fine-tuning steps of the tiny model, AdamW's moments on the device or offloaded to
/// the host; returns the parameter count.
fn train_a_few_steps<B: AutodiffBackend>(device: &B::Device, offload: bool) -> usize {
    use runner::train::{AdamWConfig, Schedule, Trainer};
    let opts = TinyOptions::default();
    let mut model = Llama::<B>::random(opts.config(), 5, opts.std(), device).unwrap();
    let a = Example::text("Device memory is sampled by the trainer.");
    let batch = Batch::collate(&[&a, &a], 32, &ByteTokenizer).unwrap();
    let mut trainer = Trainer::<B>::new(
        AdamWConfig {
            offload,
            ..Default::default()
        },
        Schedule::default(),
        0,
    )
    .unwrap();
    for _ in 0..2 {
        trainer.step(&mut model, &batch).unwrap();
    }
    model.param_count().total
}

/// A GPU run measures device memory; a CPU run leaves it to the process's RSS. Offloading
/// AdamW's moments takes their 8 bytes a parameter off the device's peak.
fn training_records_its_peak_device_memory<B: AutodiffBackend>(device: &B::Device) {
    runner::memory::reset_peak();
    train_a_few_steps::<Autodiff<Flex>>(&Default::default(), false);
    assert_eq!(
        runner::memory::peak_device_bytes(),
        None,
        "flex has no device memory to sample"
    );

    let params = train_a_few_steps::<B>(device, false);
    let peak = runner::memory::peak_device_bytes().expect("a GPU step samples device memory");
    // Full fine-tuning with AdamW holds weights, gradients and two moments (16 bytes a
    // parameter) at least until the update, all of them on the device.
    let floor = 16 * params as u64;
    eprintln!("{params} parameters; device peak {peak} bytes (floor {floor})");
    assert!(
        peak >= floor,
        "device peak {peak} below the {floor} bytes of weights, gradients and moments"
    );
    assert!(
        peak < 50 * floor,
        "device peak {peak} is implausibly large for {params} parameters"
    );
    let now = runner::memory::device_memory::<B>(device).expect("the device reports its memory");
    assert!(now.reserved >= now.in_use);

    runner::memory::reset_peak();
    train_a_few_steps::<B>(device, true);
    let offloaded = runner::memory::peak_device_bytes().unwrap();
    eprintln!(
        "offloaded moments: device peak {offloaded} bytes ({} less)",
        peak as i64 - offloaded as i64
    );
    // Half the moments' bytes, as margin for what the pool rounds.
    assert!(
        offloaded + 4 * params as u64 <= peak,
        "offloading saved only {} of about {} bytes",
        peak as i64 - offloaded as i64,
        8 * params
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn training_on_wgpu_records_its_peak_device_memory() {
    // The device-memory peak is process-wide; sweeps in other tests reset it.
    if !crate::common::in_own_process("backends::training_on_wgpu_records_its_peak_device_memory") {
        return;
    }
    training_records_its_peak_device_memory::<Autodiff<burn::backend::Wgpu>>(
        &burn::backend::wgpu::WgpuDevice::DefaultDevice,
    );
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU; run with --ignored where there is one"]
fn training_on_cuda_records_its_peak_device_memory() {
    // The device-memory peak is process-wide; sweeps in other tests reset it.
    if !crate::common::in_own_process("backends::training_on_cuda_records_its_peak_device_memory") {
        return;
    }
    training_records_its_peak_device_memory::<Autodiff<burn::backend::Cuda>>(&Default::default());
}

/// Quantized codes kept on a GPU backend's device dequantize there to the host's values
/// exactly (CUDA's QLoRA products use this; wgpu's take host-dequantized weights), and a
/// quantized model's logits on the device agree with flex's within `tol`.
fn quantized_weights_dequantize_on_the_device_as_on_the_host<B: AutodiffBackend>(
    device: &B::Device,
    tol: f32,
) {
    use runner::quant::{QuantConfig, QuantDtype, QuantizedTensor};
    let (rows, cols) = (48, 192);
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5)
        .collect();
    for dtype in [
        QuantDtype::Nf4,
        QuantDtype::Fp4,
        QuantDtype::Int4,
        QuantDtype::Int8,
    ] {
        let q = QuantizedTensor::quantize(
            &values,
            &[rows, cols],
            QuantConfig {
                dtype,
                block: 64,
                double: true,
            },
        )
        .unwrap();
        let on_device = q
            .dequantize_on::<B>(device)
            .expect("whole words and blocks");
        assert_eq!(
            on_device.into_data().to_vec::<f32>().unwrap(),
            q.dequantize(),
            "{dtype}"
        );
    }

    /// The base logits of the tiny model quantized to NF4 (block 16), on backend `C`.
    fn quantized_logits<C: AutodiffBackend>(device: &C::Device) -> Vec<f32> {
        let opts = TinyOptions::default();
        let mut model = Llama::<C>::random(opts.config(), 5, opts.std(), device).unwrap();
        runner::model::quantize::quantize_model(
            &mut model,
            QuantConfig {
                block: 16,
                ..Default::default()
            },
        )
        .unwrap();
        let ids = Tensor::<C, 2, Int>::from_data(
            TensorData::new(
                (0..24i64).map(|i| (i * 37) % 256).collect::<Vec<_>>(),
                [2, 12],
            ),
            device,
        );
        model
            .forward(ids, None)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap()
    }
    let d = max_abs_diff(
        &quantized_logits::<Autodiff<Flex>>(&Default::default()),
        &quantized_logits::<B>(device),
    );
    eprintln!("QLoRA base logits, flex against the device: max |Δ| {d:e}");
    assert!(d < tol, "logits differ by {d}");
}

#[cfg(feature = "wgpu")]
#[test]
fn quantized_weights_dequantize_on_wgpu_as_on_the_host() {
    quantized_weights_dequantize_on_the_device_as_on_the_host::<Autodiff<burn::backend::Wgpu>>(
        &burn::backend::wgpu::WgpuDevice::DefaultDevice,
        1e-4,
    );
}

#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs an NVIDIA GPU; run with --ignored where there is one"]
fn quantized_weights_dequantize_on_cuda_as_on_the_host() {
    // TF32 products, as in flex_and_cuda_agree.
    quantized_weights_dequantize_on_the_device_as_on_the_host::<Autodiff<burn::backend::Cuda>>(
        &Default::default(),
        2e-2,
    );
}
