//! Adapters that read the frozen backbone's per-layer outputs beside it instead of changing
//! it: Ladder Side-Tuning's side network and AttentionFusion. Neither puts a trainable
//! parameter upstream of any backbone layer, so training builds no autodiff graph through
//! the backbone: its activations are not kept for a backward pass, which is where their
//! memory saving comes from.

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};

use super::slots::Part;
use crate::model::Llama;
use crate::model::params::{Param, ParamCount, ParamVisitor};

/// Ladder Side-Tuning (Sung et al., 2022): a side network of the backbone's architecture at
/// width `d/r`. Before side layer `i` a gate mixes the down-projected output of backbone
/// layer `i` with the side network's own state, `μ_i·down_{i+1}(h_i) + (1 − μ_i)·s`,
/// `μ_i = σ(α_i / T)`; the side network starts from `down_0` of the embeddings, and its
/// output, projected back up to `d`, is added to the backbone's last hidden state before the
/// final norm and the head.
#[derive(Clone, Debug)]
pub struct LadderSide<B: Backend> {
    /// The side layers, in a model of width `d/r` (its embedding and norm are unused).
    pub side: Box<Llama<B>>,
    /// `layers + 1` projections `[d, d/r]`: of the embeddings, then of each layer's output.
    pub downs: Vec<Param<B, 2>>,
    /// `α`, `[layers]`.
    pub gates: Param<B, 1>,
    /// `[d/r, d]`, zero at first: a fresh side network changes nothing.
    pub up: Param<B, 2>,
    pub temperature: f64,
}

impl<B: Backend> Part<B> for LadderSide<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        for (i, layer) in self.side.layers.iter_mut().enumerate() {
            layer.visit(&format!("{prefix}.side.layers.{i}"), v);
        }
        for (i, d) in self.downs.iter_mut().enumerate() {
            v.visit2(&format!("{prefix}.down.{i}"), d);
        }
        v.visit1(&format!("{prefix}.gates"), &mut self.gates);
        v.visit2(&format!("{prefix}.up"), &mut self.up);
    }
}

impl<B: Backend> LadderSide<B> {
    pub(crate) fn numel(&self) -> usize {
        let mut count = ParamCount::default();
        self.clone().visit("", &mut count);
        count.total
    }

    /// The side network's input from the embeddings.
    pub(crate) fn start(&self, embedded: Tensor<B, 2>) -> Tensor<B, 2> {
        embedded.matmul(self.downs[0].value.clone())
    }

    /// The gated input of side layer `i` from backbone layer `i`'s output and the state.
    pub(crate) fn mix(
        &self,
        i: usize,
        backbone: Tensor<B, 2>,
        state: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let mu =
            sigmoid(self.gates.value.clone().narrow(0, i, 1) / self.temperature).unsqueeze::<2>();
        let down = backbone.matmul(self.downs[i + 1].value.clone());
        down * mu.clone() + state * (mu.neg() + 1.0)
    }

    /// The side network's contribution to the last hidden state.
    pub(crate) fn finish(&self, state: Tensor<B, 2>) -> Tensor<B, 2> {
        state.matmul(self.up.value.clone())
    }
}

/// AttentionFusion (Cao et al., 2022), for a decoder: each token's representations from the
/// embeddings and every layer, `h_0 … h_L`, are fused by attention with one learned task
/// query, `α_l = softmax_l(q·rms(h_l)/√d + b_l)`, `f = Σ_l α_l·h_l`, and the fused state enters
/// the head through a learned per-feature gate, `h_L + g ⊙ (f − h_L)`. `g` starts at zero, so a
/// fresh module changes nothing; `q` and `b` at zero (a plain average once `g` opens).
#[derive(Clone, Debug)]
pub struct AttentionFusion<B: Backend> {
    /// `[d]`, `[layers + 1]`, `[d]`.
    pub query: Param<B, 1>,
    pub bias: Param<B, 1>,
    pub gate: Param<B, 1>,
}

impl<B: Backend> Part<B> for AttentionFusion<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit1(&format!("{prefix}.query"), &mut self.query);
        v.visit1(&format!("{prefix}.layer_bias"), &mut self.bias);
        v.visit1(&format!("{prefix}.gate"), &mut self.gate);
    }
}

impl<B: Backend> AttentionFusion<B> {
    pub(crate) fn numel(&self) -> usize {
        self.query.numel() + self.bias.numel() + self.gate.numel()
    }

    /// # Shapes
    /// - states: `layers + 1` of `[rows, d]` (the embeddings first) -> `[rows, d]`
    pub(crate) fn fuse(&self, states: &[Tensor<B, 2>], eps: f64) -> Tensor<B, 2> {
        let d = states[0].dims()[1];
        let q = self.query.value.clone().reshape([d, 1]);
        let scores: Vec<Tensor<B, 2>> = states
            .iter()
            .map(|h| {
                let rms = (h.clone().powi_scalar(2).mean_dim(1) + eps).sqrt();
                (h.clone() / rms).matmul(q.clone()) / (d as f64).sqrt()
            })
            .collect();
        let scores = Tensor::cat(scores, 1) + self.bias.value.clone().unsqueeze();
        let alpha = softmax(scores, 1);
        let fused = states
            .iter()
            .enumerate()
            .map(|(l, h)| h.clone() * alpha.clone().narrow(1, l, 1))
            .reduce(|a, b| a + b)
            .expect("at least the embeddings");
        let last = states.last().expect("states").clone();
        last.clone() + (fused - last) * self.gate.value.clone().unsqueeze()
    }
}
