//! A Kronecker-product update beside a projection (LoKr, as Hugging Face PEFT and LyCORIS
//! build it): `ΔW = s·(W1 ⊗ W2)` with `W1` `[l, m]` and `W2` `[k, n]`, where `d_out = l·k` and
//! `d_in = m·n`; either factor may itself be a low-rank product `A·B`. The factors are kept in
//! PEFT's layout (`lokr_w1`, `lokr_w2_a`, ...), so adapter files need no transposes.
//!
//! The forward pass never forms `ΔW`: with the input viewed as `X` `[m, n]` per token,
//! `(W1 ⊗ W2)·vec(X) = vec(W1·X·W2ᵀ)`, which costs `m·n·k + m·k·l` per token instead of
//! `d_in·d_out`.

use burn::prelude::*;
use rand::Rng;

use super::slots::Part;
use crate::model::init::HostRng;
use crate::model::params::{Param, ParamVisitor};

/// One Kronecker factor: a full matrix, or a rank-r product `a·b`.
#[derive(Clone, Debug)]
pub enum Factor<B: Backend> {
    Full(Param<B, 2>),
    LowRank(Param<B, 2>, Param<B, 2>),
}

impl<B: Backend> Factor<B> {
    pub(crate) fn matrix(&self) -> Tensor<B, 2> {
        match self {
            Self::Full(w) => w.value.clone(),
            Self::LowRank(a, b) => a.value.clone().matmul(b.value.clone()),
        }
    }

    pub(crate) fn numel(&self) -> usize {
        match self {
            Self::Full(w) => w.numel(),
            Self::LowRank(a, b) => a.numel() + b.numel(),
        }
    }

    /// PEFT's names: `{prefix}` or `{prefix}_a` and `{prefix}_b`.
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        match self {
            Self::Full(w) => v.visit2(prefix, w),
            Self::LowRank(a, b) => {
                v.visit2(&format!("{prefix}_a"), a);
                v.visit2(&format!("{prefix}_b"), b);
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct KronAdapter<B: Backend> {
    /// `[l, m]`: the output's outer and the input's outer dimension.
    pub w1: Factor<B>,
    /// `[k, n]`: the inner ones.
    pub w2: Factor<B>,
    pub scale: f64,
    /// Training only: each output feature's update is dropped with this probability (PEFT's
    /// `rank_dropout`), the kept ones rescaled by the kept fraction when `rank_dropout_scale`.
    pub rank_dropout: f64,
    pub rank_dropout_scale: bool,
    /// Training only: the whole update is skipped with this probability.
    pub module_dropout: f64,
    pub merged: bool,
}

impl<B: Backend> Part<B> for KronAdapter<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        self.w1.visit(&format!("{prefix}_w1"), v);
        self.w2.visit(&format!("{prefix}_w2"), v);
    }
}

impl<B: Backend> KronAdapter<B> {
    pub(crate) fn numel(&self) -> usize {
        self.w1.numel() + self.w2.numel()
    }

    /// The update's contribution to the output, without forming `ΔW`.
    /// # Shapes
    /// - x: `[tokens, m·n]` -> `[tokens, l·k]`
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 2>,
        mut rng: Option<&mut HostRng>,
    ) -> Option<Tensor<B, 2>> {
        if let Some(r) = rng.as_deref_mut()
            && self.module_dropout > 0.0
            && r.random::<f64>() < self.module_dropout
        {
            return None;
        }
        let (w1, w2) = (self.w1.matrix(), self.w2.matrix());
        let ([l, m], [k, n]) = (w1.dims(), w2.dims());
        let tokens = x.dims()[0];
        // X·W2ᵀ over each token's [m, n] view, then W1 from the left.
        let t = x.reshape([tokens * m, n]).matmul(w2.transpose());
        let t = t
            .reshape([tokens, m, k])
            .swap_dims(1, 2)
            .reshape([tokens * k, m]);
        let y = t
            .matmul(w1.transpose())
            .reshape([tokens, k, l])
            .swap_dims(1, 2);
        let y = y.reshape([tokens, l * k]) * self.scale;
        Some(match rng {
            Some(r) if self.rank_dropout > 0.0 => {
                let keep: Vec<f32> = (0..l * k)
                    .map(|_| f32::from(r.random::<f64>() >= self.rank_dropout))
                    .collect();
                let kept = keep.iter().sum::<f32>() / keep.len() as f32;
                let norm = if self.rank_dropout_scale && kept > 0.0 {
                    kept
                } else {
                    1.0
                };
                let keep: Vec<f32> = keep.into_iter().map(|v| v / norm).collect();
                let mask = Tensor::<B, 1>::from_data(TensorData::new(keep, [l * k]), &y.device());
                y * mask.unsqueeze()
            }
            _ => y,
        })
    }

    /// `s·(W1 ⊗ W2)` in the model's `[d_in, d_out]` weight layout.
    pub(crate) fn delta(&self) -> Tensor<B, 2> {
        let (w1, w2) = (self.w1.matrix(), self.w2.matrix());
        let ([l, m], [k, n]) = (w1.dims(), w2.dims());
        let kron = w1.reshape([l, 1, m, 1]) * w2.reshape([1, k, 1, n]);
        kron.reshape([l * k, m * n]).transpose() * self.scale
    }

    pub(crate) fn merge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        self.merged = true;
        weight + self.delta().detach()
    }

    pub(crate) fn unmerge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        if !std::mem::take(&mut self.merged) {
            return weight;
        }
        weight - self.delta().detach()
    }
}

/// KronA^B_res (Edalati et al.): a Kronecker adapter beside the MLP block, reading the MLP's
/// input `h` and adding `s·h·(A ⊗ B) + γ·h` to its output, with a learned residual scale `γ`
/// (`[1]`).
#[derive(Clone, Debug)]
pub struct KronParallel<B: Backend> {
    pub kron: KronAdapter<B>,
    pub residual: Param<B, 1>,
}

impl<B: Backend> Part<B> for KronParallel<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        self.kron.visit(prefix, v);
        v.visit1(&format!("{prefix}_residual"), &mut self.residual);
    }
}

impl<B: Backend> KronParallel<B> {
    /// # Shapes
    /// - h: `[tokens, d]` -> `[tokens, d]`
    pub(crate) fn forward(&self, h: Tensor<B, 2>, rng: Option<&mut HostRng>) -> Tensor<B, 2> {
        let residual = h.clone() * self.residual.value.clone().unsqueeze();
        match self.kron.forward(h, rng) {
            Some(y) => y + residual,
            None => residual,
        }
    }

    pub(crate) fn numel(&self) -> usize {
        self.kron.numel() + self.residual.numel()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::init;

    type B = burn::backend::Flex;

    fn param(rows: usize, cols: usize, seed: u64) -> Param<B, 2> {
        let v = init::normal_vec(&mut init::rng(seed), rows * cols, 1.0);
        Param::new(init::tensor2(v, [rows, cols], &Default::default()), true)
    }

    #[test]
    fn forward_equals_the_formed_kronecker_product() {
        // d_out = 3·4, d_in = 2·5; W2 a rank-2 product.
        let adapter = KronAdapter::<B> {
            w1: Factor::Full(param(3, 2, 1)),
            w2: Factor::LowRank(param(4, 2, 2), param(2, 5, 3)),
            scale: 0.5,
            rank_dropout: 0.0,
            rank_dropout_scale: false,
            module_dropout: 0.0,
            merged: false,
        };
        let x = param(6, 10, 4).value;
        let fast = adapter.forward(x.clone(), None).unwrap();
        let formed = x.matmul(adapter.delta());
        let diff = (fast - formed).abs().max().into_scalar();
        assert!(diff < 1e-5, "{diff}");
        // The formed product is numpy's kron: entry (c·k + d, a·n + b) = w1[c,a]·w2[d,b].
        let d = adapter
            .delta()
            .transpose()
            .to_data()
            .to_vec::<f32>()
            .unwrap();
        let w1 = adapter.w1.matrix().to_data().to_vec::<f32>().unwrap();
        let w2 = adapter.w2.matrix().to_data().to_vec::<f32>().unwrap();
        let (c, a, dd, b) = (2, 1, 3, 4);
        let want = 0.5 * w1[c * 2 + a] * w2[dd * 5 + b];
        assert!((d[(c * 4 + dd) * 10 + a * 5 + b] - want).abs() < 1e-6);
    }
}
