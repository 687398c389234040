//! Finding the intrinsic subspace of intrinsic prompt tuning (Qin et al., 2021): an
//! auto-encoder over the flattened soft prompts of several tasks, a linear encoder
//! `[virtual·d] → [dim]` and a two-layer tanh decoder back, trained with AdamW on the mean
//! squared reconstruction error. The paper adds the source tasks' own losses of the
//! reconstructed prompts to this objective; runner fits the reconstruction only, from the
//! prompts alone (the source tasks' data need not be at hand), and records the error.

use std::collections::HashMap;

use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

use super::optim::{AdamW, AdamWConfig};
use crate::model::init;
use crate::model::params::{Param, ParamVisitor};
use crate::peft::PeftError;
use crate::peft::intrinsic::Subspace;

/// `runner.peft.fit_intrinsic_subspace{...}`'s settings.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubspaceConfig {
    pub dim: usize,
    pub hidden: usize,
    pub steps: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for SubspaceConfig {
    fn default() -> Self {
        Self {
            dim: 5,
            hidden: 256,
            steps: 2000,
            lr: 1e-3,
            seed: 0,
        }
    }
}

struct AutoEncoder<B: Backend> {
    enc_w: Param<B, 2>,
    enc_b: Param<B, 1>,
    w1: Param<B, 2>,
    b1: Param<B, 1>,
    w2: Param<B, 2>,
    b2: Param<B, 1>,
}

impl<B: Backend> AutoEncoder<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, v: &mut V) {
        v.visit2("encoder.weight", &mut self.enc_w);
        v.visit1("encoder.bias", &mut self.enc_b);
        v.visit2("decoder.w1", &mut self.w1);
        v.visit1("decoder.b1", &mut self.b1);
        v.visit2("decoder.w2", &mut self.w2);
        v.visit1("decoder.b2", &mut self.b2);
    }

    fn encode(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        x.matmul(self.enc_w.value.clone()) + self.enc_b.value.clone().unsqueeze()
    }

    fn decode(&self, z: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = (z.matmul(self.w1.value.clone()) + self.b1.value.clone().unsqueeze()).tanh();
        h.matmul(self.w2.value.clone()) + self.b2.value.clone().unsqueeze()
    }
}

/// Fits the subspace to `prompts` (each `[virtual, d_model]`, row-major) and returns it with
/// the reconstruction error (mean squared, per entry) after each step.
pub fn fit_subspace<B: AutodiffBackend>(
    prompts: &[Vec<f32>],
    shape: [usize; 2],
    config: &SubspaceConfig,
    device: &B::Device,
) -> Result<(Subspace, Vec<f64>), PeftError> {
    let [n, d] = shape;
    let flat = n * d;
    if prompts.len() < 2 {
        return Err(PeftError::Invalid(format!(
            "a subspace needs the prompts of at least two tasks (got {})",
            prompts.len()
        )));
    }
    if config.dim == 0 || config.hidden == 0 || config.steps == 0 {
        return Err(PeftError::Invalid(
            "dim, hidden and steps must be at least 1".into(),
        ));
    }
    let t = prompts.len();
    let x = init::tensor2::<B>(prompts.concat(), [t, flat], device);
    let mut rng = init::rng_for(config.seed, "intrinsic_subspace");
    // nn.Linear's default initialisation: uniform(±1/√fan_in) for weights and biases.
    let mut linear = |fan_in: usize, fan_out: usize| {
        let bound = 1.0 / (fan_in as f64).sqrt();
        let w = init::tensor2::<B>(
            init::uniform_vec(&mut rng, fan_in * fan_out, bound),
            [fan_in, fan_out],
            device,
        );
        let b = init::tensor1::<B>(init::uniform_vec(&mut rng, fan_out, bound), device);
        (Param::new(w, true), Param::new(b, true))
    };
    let (enc_w, enc_b) = linear(flat, config.dim);
    let (w1, b1) = linear(config.dim, config.hidden);
    let (w2, b2) = linear(config.hidden, flat);
    let mut ae = AutoEncoder {
        enc_w,
        enc_b,
        w1,
        b1,
        w2,
        b2,
    };
    let mut optim = AdamW::<B>::new(AdamWConfig {
        lr: config.lr,
        weight_decay: 0.0,
        ..Default::default()
    })
    .map_err(|e| PeftError::Invalid(e.to_string()))?;
    let mut losses = Vec::with_capacity(config.steps);
    for _ in 0..config.steps {
        let recon = ae.decode(ae.encode(x.clone()));
        let loss = (recon - x.clone()).powi_scalar(2).mean();
        losses.push(loss.clone().into_scalar().elem::<f64>());
        let grads = loss.backward();
        optim.update(config.lr, &grads, |u| ae.visit(u));
    }
    let codes = ae.encode(x).detach();
    let mean_code = codes.mean_dim(0);
    let host = |t: Tensor<B, 2>| -> (Vec<usize>, Vec<f32>) {
        (
            t.dims().to_vec(),
            t.into_data().convert::<f32>().to_vec().expect("f32"),
        )
    };
    let host1 = |t: Tensor<B, 1>| -> (Vec<usize>, Vec<f32>) {
        (
            t.dims().to_vec(),
            t.into_data().convert::<f32>().to_vec().expect("f32"),
        )
    };
    let mut tensors = HashMap::new();
    tensors.insert("encoder.weight".into(), host(ae.enc_w.value.clone()));
    tensors.insert("encoder.bias".into(), host1(ae.enc_b.value.clone()));
    tensors.insert("decoder.w1".into(), host(ae.w1.value.clone()));
    tensors.insert("decoder.b1".into(), host1(ae.b1.value.clone()));
    tensors.insert("decoder.w2".into(), host(ae.w2.value.clone()));
    tensors.insert("decoder.b2".into(), host1(ae.b2.value.clone()));
    tensors.insert("mean_code".into(), host(mean_code));
    Ok((
        Subspace {
            tensors,
            dim: config.dim,
            hidden: config.hidden,
            num_virtual_tokens: n,
            d_model: d,
        },
        losses,
    ))
}
