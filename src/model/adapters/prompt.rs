//! The prefix table: learned keys and values put before every attention layer's own, stored
//! directly or produced by a two-layer MLP (the reparameterisation). The table is
//! `[virtual, layers · 2 · kv_heads · head_dim]` with layer l's keys at block 2l and values at
//! block 2l + 1 (Hugging Face PEFT's layout). Prompt tuning's virtual token embeddings need
//! no type of their own: they are a `[virtual, d_model]` parameter.

use burn::prelude::*;
use burn::tensor::IndexingUpdateOp;

use super::slots::Part;
use crate::model::params::{Param, ParamVisitor};

/// The reparameterisation `tanh(e·W1 + b1)·W2 + b2`.
#[derive(Clone, Debug)]
pub struct PrefixMlp<B: Backend> {
    pub w1: Param<B, 2>,
    pub b1: Param<B, 1>,
    pub w2: Param<B, 2>,
    pub b2: Param<B, 1>,
}

#[derive(Clone, Debug)]
pub struct PrefixAdapter<B: Backend> {
    /// `[virtual, layers·2·kv_dim]`, or `[virtual, kv_dim]` fed through `mlp`.
    pub embedding: Param<B, 2>,
    pub mlp: Option<PrefixMlp<B>>,
}

impl<B: Backend> Part<B> for PrefixAdapter<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.embedding"), &mut self.embedding);
        if let Some(m) = &mut self.mlp {
            v.visit2(&format!("{prefix}.transform.0.weight"), &mut m.w1);
            v.visit1(&format!("{prefix}.transform.0.bias"), &mut m.b1);
            v.visit2(&format!("{prefix}.transform.2.weight"), &mut m.w2);
            v.visit1(&format!("{prefix}.transform.2.bias"), &mut m.b2);
        }
    }
}

impl<B: Backend> PrefixAdapter<B> {
    /// The key/value table, `[virtual, layers·2·kv_dim]`.
    pub(crate) fn table(&self) -> Tensor<B, 2> {
        match &self.mlp {
            None => self.embedding.value.clone(),
            Some(m) => {
                let h = (self.embedding.value.clone().matmul(m.w1.value.clone())
                    + m.b1.value.clone().unsqueeze())
                .tanh();
                h.matmul(m.w2.value.clone()) + m.b2.value.clone().unsqueeze()
            }
        }
    }

    /// Keys and values of `layer`, expanded to the batch.
    /// # Shapes
    /// -> `([batch, kv_heads, virtual, head_dim], same)`
    pub(crate) fn layer_kv(
        table: &Tensor<B, 2>,
        layer: usize,
        batch: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let n = table.dims()[0];
        let kv = kv_heads * head_dim;
        let part = |block: usize| {
            table
                .clone()
                .narrow(1, block * kv, kv)
                .reshape([1, n, kv_heads, head_dim])
                .swap_dims(1, 2)
                .expand([batch, kv_heads, n, head_dim])
        };
        (part(2 * layer), part(2 * layer + 1))
    }
}

/// WARP's verbalizer: learned output embeddings `rows` `[labels, d_model]` that replace the
/// head's rows of the label words `ids`.
#[derive(Clone, Debug)]
pub struct Verbalizer<B: Backend> {
    pub ids: Vec<u32>,
    pub rows: Param<B, 2>,
}

impl<B: Backend> Part<B> for Verbalizer<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(prefix, &mut self.rows);
    }
}

impl<B: Backend> Verbalizer<B> {
    /// `head` with the label words' rows replaced: `rows − head[ids]` (the old rows held
    /// constant) added at those rows, so the gradient reaches `rows` and nothing else, and
    /// no vocabulary-sized temporary is built beside the copy of the head.
    /// # Shapes
    /// - head: `[vocab, d_model]` -> `[vocab, d_model]`
    pub(crate) fn apply(&self, head: Tensor<B, 2>) -> Tensor<B, 2> {
        let ids = Tensor::<B, 1, Int>::from_data(
            TensorData::new(
                self.ids.iter().map(|&i| i as i64).collect(),
                [self.ids.len()],
            ),
            &head.device(),
        );
        let old = head.clone().detach().select(0, ids.clone());
        head.select_assign(0, ids, self.rows.value.clone() - old, IndexingUpdateOp::Add)
    }
}

/// Intrinsic prompt tuning's prompt: `[virtual, d_model]` rebuilt from an intrinsic vector
/// `z` `[1, dim]` by a frozen two-layer decoder, `tanh(z·W1 + b1)·W2 + b2`.
#[derive(Clone, Debug)]
pub struct IntrinsicPrompt<B: Backend> {
    pub z: Param<B, 2>,
    /// `[dim, hidden]`, `[hidden]`, `[hidden, virtual·d_model]`, `[virtual·d_model]`.
    pub w1: Param<B, 2>,
    pub b1: Param<B, 1>,
    pub w2: Param<B, 2>,
    pub b2: Param<B, 1>,
    pub virtual_tokens: usize,
}

impl<B: Backend> Part<B> for IntrinsicPrompt<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.z"), &mut self.z);
        v.visit2(&format!("{prefix}.decoder.w1"), &mut self.w1);
        v.visit1(&format!("{prefix}.decoder.b1"), &mut self.b1);
        v.visit2(&format!("{prefix}.decoder.w2"), &mut self.w2);
        v.visit1(&format!("{prefix}.decoder.b2"), &mut self.b2);
    }

    fn visit_trainable<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.z"), &mut self.z);
    }
}

impl<B: Backend> IntrinsicPrompt<B> {
    /// The virtual token embeddings, `[virtual, d_model]`.
    pub(crate) fn table(&self) -> Tensor<B, 2> {
        let h = (self.z.value.clone().matmul(self.w1.value.clone())
            + self.b1.value.clone().unsqueeze())
        .tanh();
        let flat = h.matmul(self.w2.value.clone()) + self.b2.value.clone().unsqueeze();
        let d = flat.dims()[1] / self.virtual_tokens;
        flat.reshape([self.virtual_tokens, d])
    }
}
