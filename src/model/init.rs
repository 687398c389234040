//! Seeded random initialisation done on the host, so that a seed gives the same weights on
//! every backend (flex, wgpu, cuda) and in every run.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The one random-number generator type used for weights and dropout masks.
pub(crate) type HostRng = ChaCha8Rng;

pub fn rng(seed: u64) -> HostRng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Derives an independent stream from a seed and a label (e.g. a parameter name).
pub fn rng_for(seed: u64, label: &str) -> HostRng {
    // FNV-1a of the label, mixed with the seed: stable across platforms and releases.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in label.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h.rotate_left(17))
}

/// Normal(0, std) samples by Box-Muller.
pub fn normal_vec(rng: &mut HostRng, n: usize, std: f64) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random::<f64>();
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((std * r * t.cos()) as f32);
        out.push((std * r * t.sin()) as f32);
    }
    out.truncate(n);
    out
}

/// Uniform(-bound, bound) samples.
pub(crate) fn uniform_vec(rng: &mut HostRng, n: usize, bound: f64) -> Vec<f32> {
    (0..n)
        .map(|_| ((rng.random::<f64>() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

pub fn tensor2<B: Backend>(
    values: Vec<f32>,
    shape: [usize; 2],
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(values, shape), device)
}

pub fn tensor1<B: Backend>(values: Vec<f32>, device: &B::Device) -> Tensor<B, 1> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}
