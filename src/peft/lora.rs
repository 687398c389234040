//! LoRA (Hu et al. 2021): `y = x·W + s·(x·A)·B`, with `s = alpha / r` (or `alpha / √r` for
//! rsLoRA), and DoRA (Liu et al. 2024), which rescales each output column of `W + s·A·B` to a
//! learned magnitude. The branch itself is the model's [`LoraAdapter`]; this module holds the
//! method's settings and builds the branch from them.
//!
//! Initialisations as in Hugging Face PEFT: A kaiming-uniform (a = √5) and B zero (default), A
//! normal(0, 1/r) and B zero ("gaussian"), or PiSSA: A and B from the top-r singular triplets
//! of W, which keeps only the residual. With B = 0 a fresh adapter leaves the model unchanged.

use burn::prelude::*;

use super::PeftError;
use super::targets::Targets;
use crate::model::Llama;
use crate::model::adapters::lora::LoraAdapter;
use crate::model::init::{self, HostRng};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraInit {
    /// A kaiming-uniform(a = √5), B = 0 (PEFT's `init_lora_weights=True`).
    #[serde(alias = "default")]
    Kaiming,
    /// A normal(0, 1/r), B = 0.
    Gaussian,
    /// A and B from the top-r singular triplets of W (PiSSA); W keeps the residual.
    Pissa,
}

/// Read from a recipe's `runner.peft.lora{...}` by its field names; missing fields take
/// `Default`, which is PEFT's `LoraConfig` (r 8, lora_alpha 8, dropout 0, q_proj + v_proj).
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Targets,
    /// Scale by `alpha / √r` instead of `alpha / r`.
    pub rslora: bool,
    pub init: LoraInit,
    /// Weight-decomposed LoRA: a trainable magnitude per output feature.
    pub dora: bool,
    /// Seed of the A initialisation.
    pub seed: u64,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            rank: 8,
            alpha: 8.0,
            dropout: 0.0,
            targets: Targets::names(&["q_proj", "v_proj"]),
            rslora: false,
            init: LoraInit::Kaiming,
            dora: false,
            seed: 0,
        }
    }
}

impl LoraConfig {
    pub(crate) fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }

    pub(crate) fn validate(&self) -> Result<(), PeftError> {
        if self.rank == 0 {
            return Err(PeftError::Rank(0));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(PeftError::Alpha(self.alpha));
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return Err(PeftError::Dropout(self.dropout));
        }
        self.targets.validate()
    }
}

/// A fresh adapter for a `[d_in, d_out]` weight. PiSSA also returns the residual weight that
/// replaces the base.
fn new_adapter<B: Backend>(
    weight: &Tensor<B, 2>,
    config: &LoraConfig,
    rng: &mut HostRng,
) -> (LoraAdapter<B>, Option<Tensor<B, 2>>) {
    let [d_in, d_out] = weight.dims();
    let (rank, scale, device) = (config.rank, config.scale(), weight.device());
    let (a, b, residual) = match config.init {
        LoraInit::Kaiming => {
            // kaiming_uniform_(a=√5) on a [r, d_in] weight: bound = 1/√d_in.
            let a = init::uniform_vec(rng, d_in * rank, 1.0 / (d_in as f64).sqrt());
            (
                init::tensor2::<B>(a, [d_in, rank], &device),
                Tensor::zeros([rank, d_out], &device),
                None,
            )
        }
        LoraInit::Gaussian => {
            let a = init::normal_vec(rng, d_in * rank, 1.0 / rank as f64);
            (
                init::tensor2::<B>(a, [d_in, rank], &device),
                Tensor::zeros([rank, d_out], &device),
                None,
            )
        }
        LoraInit::Pissa => {
            let (a, b) = pissa_factors(weight, rank, scale);
            let residual = weight.clone() - a.clone().matmul(b.clone()) * scale;
            (a, b, Some(residual))
        }
    };
    let mut adapter = LoraAdapter::new(a, b, scale, config.dropout);
    if config.dora {
        adapter = adapter.with_dora(residual.as_ref().unwrap_or(weight));
    }
    (adapter, residual)
}

/// PiSSA factors of a `[d_in, d_out]` weight: with `W = U·S·Vᵀ`, A = U_r·√(S_r/s) and
/// B = √(S_r/s)·V_rᵀ, so that `s·A·B` is the best rank-r approximation of W.
fn pissa_factors<B: Backend>(
    weight: &Tensor<B, 2>,
    rank: usize,
    scale: f64,
) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [d_in, d_out] = weight.dims();
    let values = weight
        .to_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .expect("f64 weight");
    let m = nalgebra::DMatrix::from_row_slice(d_in, d_out, &values);
    let svd = m.svd(true, true);
    let (u, vt) = (svd.u.expect("u"), svd.v_t.expect("v_t"));
    // nalgebra does not sort singular values; take the r largest.
    let mut order: Vec<usize> = (0..svd.singular_values.len()).collect();
    order.sort_by(|&i, &j| svd.singular_values[j].total_cmp(&svd.singular_values[i]));
    let mut a = vec![0f32; d_in * rank];
    let mut b = vec![0f32; rank * d_out];
    for (k, &idx) in order.iter().take(rank).enumerate() {
        let root = (svd.singular_values[idx] / scale).sqrt();
        for i in 0..d_in {
            a[i * rank + k] = (u[(i, idx)] * root) as f32;
        }
        for j in 0..d_out {
            b[k * d_out + j] = (vt[(idx, j)] * root) as f32;
        }
    }
    let device = weight.device();
    (
        init::tensor2(a, [d_in, rank], &device),
        init::tensor2(b, [rank, d_out], &device),
    )
}

/// Adds a LoRA (or DoRA) adapter named `name` to every targeted projection and makes it the
/// active adapter. Returns the number of parameters added. Nothing changes when a check fails.
pub fn attach<B: Backend>(
    model: &mut Llama<B>,
    name: &str,
    config: &LoraConfig,
) -> Result<usize, PeftError> {
    config.validate()?;
    let modules = config
        .targets
        .resolve(model.config.num_hidden_layers, model.config.projections())?;
    for &(i, t) in &modules {
        let lin = model.layers[i].proj(t);
        let side = lin.d_in().min(lin.d_out());
        if config.rank > side {
            return Err(PeftError::RankTooLarge {
                rank: config.rank,
                side,
                module: format!("layers.{i}.{t}"),
            });
        }
    }
    if config.init == LoraInit::Pissa
        && let Some(&(i, t)) = modules
            .iter()
            .find(|&&(i, t)| model.layers[i].proj(t).dense().is_none())
    {
        return Err(PeftError::Invalid(format!(
            "PiSSA initialisation rewrites the base weight, and layers.{i}.{t} is quantized; attach PiSSA before quantizing"
        )));
    }
    super::begin_adapter(model, name)?;
    let device = model.device.clone();
    let mut added = 0;
    for &(i, t) in &modules {
        let lin = model.layers[i].proj_mut(t);
        let mut rng = init::rng_for(config.seed, &format!("lora.layers.{i}.{t}"));
        let (adapter, residual) = new_adapter(&lin.weight.tensor(&device), config, &mut rng);
        if let (Some(w), Some(p)) = (residual, lin.dense_mut()) {
            p.value = w.detach().set_require_grad(p.trainable);
        }
        added += adapter.numel();
        lin.lora.insert(name, adapter);
    }
    super::finish_adapter(model, name, super::Method::Lora(config.clone()));
    Ok(added)
}
