//! The (IA)3 vector (Liu et al. 2022): a learned vector that rescales a projection's input or
//! output. It starts at one, so a fresh vector is a no-op.

use burn::prelude::*;

use super::slots::Part;
use crate::model::params::{Param, ParamVisitor};

#[derive(Clone, Debug)]
pub struct Ia3Vector<B: Backend> {
    /// `[d_in]` when `on_input`, else `[d_out]`.
    pub vector: Param<B, 1>,
    pub on_input: bool,
    pub merged: bool,
}

impl<B: Backend> Part<B> for Ia3Vector<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit1(prefix, &mut self.vector);
    }
}

impl<B: Backend> Ia3Vector<B> {
    /// A trainable vector of `n` ones, rescaling the input (`on_input`) or the output.
    pub(crate) fn ones(n: usize, on_input: bool, device: &B::Device) -> Self {
        Self {
            vector: Param::new(Tensor::ones([n], device), true),
            on_input,
            merged: false,
        }
    }

    /// The vector shaped to broadcast over a `[d_in, d_out]` weight: a column or a row.
    fn weight_factor(&self) -> Tensor<B, 2> {
        let v = self.vector.value.clone();
        if self.on_input {
            v.unsqueeze_dim::<2>(1)
        } else {
            v.unsqueeze::<2>()
        }
    }

    pub(crate) fn merge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        self.merged = true;
        weight * self.weight_factor()
    }

    pub(crate) fn unmerge(&mut self, weight: Tensor<B, 2>) -> Tensor<B, 2> {
        if !std::mem::take(&mut self.merged) {
            return weight;
        }
        weight / self.weight_factor()
    }
}
