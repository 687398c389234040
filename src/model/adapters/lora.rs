//! The LoRA branch (Hu et al. 2021): `y = x·W + s·(x·A)·B`, and DoRA (Liu et al. 2024), which
//! rescales each output column of `W + s·A·B` to a learned magnitude. The dense update `A·B`
//! is formed only for DoRA's norm and for merging.

use burn::prelude::*;
use burn::tensor::TensorData;
use rand::Rng;

use super::slots::Part;
use crate::kernels;
use crate::kernels::precision;
use crate::model::init::HostRng;
use crate::model::linear::Weight;
use crate::model::params::{Param, ParamVisitor};

/// What merging changed in the base weight, so that unmerging can undo it.
#[derive(Clone, Debug)]
pub enum Merged<B: Backend> {
    Lora,
    /// DoRA merged as `W ← (W + s·A·B) · factor` per output column.
    Dora {
        factor: Tensor<B, 1>,
    },
}

#[derive(Clone, Debug)]
pub struct LoraAdapter<B: Backend> {
    /// `[d_in, r]` (PEFT's `lora_A.weight` transposed)
    pub a: Param<B, 2>,
    /// `[r, d_out]` (PEFT's `lora_B.weight` transposed)
    pub b: Param<B, 2>,
    /// DoRA's magnitude `[d_out]` (PEFT's `lora_magnitude_vector`).
    pub magnitude: Option<Param<B, 1>>,
    pub scale: f64,
    pub dropout: f64,
    pub merged: Option<Merged<B>>,
}

impl<B: Backend> Part<B> for LoraAdapter<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.A"), &mut self.a);
        v.visit2(&format!("{prefix}.B"), &mut self.b);
        if let Some(m) = &mut self.magnitude {
            v.visit1(&format!("{prefix}.magnitude"), m);
        }
    }
}

impl<B: Backend> LoraAdapter<B> {
    /// A trainable LoRA branch from its initial factors: `a` `[d_in, r]`, `b` `[r, d_out]`,
    /// scaled by `scale`, with inverted dropout `dropout` on its input in training.
    pub(crate) fn new(a: Tensor<B, 2>, b: Tensor<B, 2>, scale: f64, dropout: f64) -> Self {
        Self {
            a: Param::new(a, true),
            b: Param::new(b, true),
            magnitude: None,
            scale,
            dropout,
            merged: None,
        }
    }

    /// Makes it a DoRA branch over the base weight `base` (`[d_in, d_out]`): the trainable
    /// magnitude starts at the column norms of `base + s·A·B`.
    pub(crate) fn with_dora(mut self, base: &Tensor<B, 2>) -> Self {
        let (a, b) = (self.a.value.clone(), self.b.value.clone());
        self.magnitude = Some(Param::new(
            column_norms(base.clone() + a.matmul(b) * self.scale),
            true,
        ));
        self
    }

    /// Parameters in the branch.
    pub(crate) fn numel(&self) -> usize {
        self.a.numel() + self.b.numel() + self.magnitude.as_ref().map_or(0, |m| m.numel())
    }

    /// The layer's output with this adapter, given the base output `x·W` and the weight W.
    /// # Shapes
    /// - x: `[n, d_in]`, base: `[n, d_out]`, weight: `[d_in, d_out]` -> `[n, d_out]`
    pub(crate) fn apply(
        &self,
        x: Tensor<B, 2>,
        base: Tensor<B, 2>,
        weight: &Weight<B>,
        rng: Option<&mut HostRng>,
    ) -> Tensor<B, 2> {
        let x_device = x.device();
        let dropped = match rng {
            Some(rng) if self.dropout > 0.0 => {
                Some(x.clone() * dropout_mask::<B>(x.dims(), self.dropout, rng, &x.device()))
            }
            _ => None,
        };
        let xd = dropped.clone().unwrap_or(x);
        let Some(m) = &self.magnitude else {
            return kernels::lora_branch(
                xd,
                base,
                self.a.value.clone(),
                self.b.value.clone(),
                self.scale,
            );
        };
        let update = precision::matmul(
            precision::matmul(xd, self.a.value.clone()),
            self.b.value.clone(),
        ) * self.scale;
        // DoRA: out = x·W + (f - 1)·(x'·W) + f·s·x'·A·B with f = m / ‖W + s·A·B‖ (norm detached).
        let weight = weight.tensor(&x_device);
        let factor = (m.value.clone() / self.dense_norms(&weight)).unsqueeze::<2>();
        let xw_dropped = match dropped {
            Some(xd) => precision::matmul(xd, weight.clone()),
            None => base.clone(),
        };
        base + xw_dropped * (factor.clone() - 1.0) + update * factor
    }

    /// `s·A·B`, `[d_in, d_out]`.
    pub(crate) fn delta(&self) -> Tensor<B, 2> {
        self.a.value.clone().matmul(self.b.value.clone()) * self.scale
    }

    /// Column norms of `W + s·A·B`, detached (DoRA treats the norm as a constant).
    fn dense_norms(&self, weight: &Tensor<B, 2>) -> Tensor<B, 1> {
        column_norms((weight.clone() + self.delta()).detach())
    }

    /// Merges into `weight` and returns the new weight.
    pub(crate) fn merge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        let merged = weight.clone() + self.delta();
        match &self.magnitude {
            None => {
                self.merged = Some(Merged::Lora);
                merged
            }
            Some(m) => {
                let factor = m.value.clone().detach() / column_norms(merged.clone());
                self.merged = Some(Merged::Dora {
                    factor: factor.clone(),
                });
                merged * factor.unsqueeze::<2>()
            }
        }
    }

    /// Undoes `merge`.
    pub(crate) fn unmerge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        match self.merged.take() {
            None => weight,
            Some(Merged::Lora) => weight - self.delta(),
            Some(Merged::Dora { factor }) => weight / factor.unsqueeze::<2>() - self.delta(),
        }
    }
}

/// ‖W[:, j]‖ for each output column j of a `[d_in, d_out]` weight.
fn column_norms<B: Backend>(w: Tensor<B, 2>) -> Tensor<B, 1> {
    let d_out = w.dims()[1];
    w.square().sum_dim(0).sqrt().reshape([d_out])
}

/// Inverted-dropout mask (kept entries scaled by 1/(1-p)), drawn on the host so that a seed
/// gives the same masks on every backend.
pub(crate) fn dropout_mask<B: Backend>(
    shape: [usize; 2],
    p: f64,
    rng: &mut HostRng,
    device: &B::Device,
) -> Tensor<B, 2> {
    let keep = (1.0 / (1.0 - p)) as f32;
    let values: Vec<f32> = (0..shape[0] * shape[1])
        .map(|_| if rng.random::<f64>() < p { 0.0 } else { keep })
        .collect();
    Tensor::from_data(TensorData::new(values, shape), device)
}
