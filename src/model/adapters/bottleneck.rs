//! The bottleneck adapter: `h + up(act(down(h)))`, inserted after a sublayer. Its two
//! projections are dense (Houlsby, Pfeiffer), parameterised hypercomplex multiplications
//! (Compacter) or a set of experts (AdaMix).

use burn::prelude::*;
use burn::tensor::activation;

use rand::Rng;

use super::slots::Part;
use crate::kernels::precision;
use crate::model::init;
use crate::model::init::HostRng;
use crate::model::params::{Param, ParamVisitor};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    Relu,
    Gelu,
    #[serde(alias = "swish")]
    Silu,
    Tanh,
}

impl Activation {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "relu" => Self::Relu,
            "gelu" => Self::Gelu,
            "silu" | "swish" => Self::Silu,
            "tanh" => Self::Tanh,
            _ => return None,
        })
    }

    fn apply<B: Backend>(self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Self::Relu => activation::relu(x),
            Self::Gelu => activation::gelu(x),
            Self::Silu => activation::silu(x),
            Self::Tanh => activation::tanh(x),
        }
    }
}

/// One projection of a bottleneck adapter, `[d_in, d_out]` plus a bias.
#[derive(Clone, Debug)]
pub enum Projection<B: Backend> {
    /// A dense matrix (Houlsby, Pfeiffer).
    Dense {
        weight: Param<B, 2>,
        bias: Param<B, 1>,
    },
    /// Compacter's parameterised hypercomplex multiplication:
    /// `W = Σ_i R_i ⊗ (s_i·t_iᵀ)`, with `n` rule matrices `R_i` `[n, n]` shared by every layer
    /// (the model holds them, [`PhmRules`]) and rank-one `s_i` `[d_in/n]`, `t_i` `[d_out/n]`
    /// here, stored as rows of `s` `[n, d_in/n]` and `t` `[n, d_out/n]`.
    Phm {
        s: Param<B, 2>,
        t: Param<B, 2>,
        bias: Param<B, 1>,
    },
    /// AdaMix's experts: in training one expert, drawn at random, serves each forward pass;
    /// in evaluation their average (the merged adapter of the paper).
    Experts {
        weights: Vec<Param<B, 2>>,
        biases: Vec<Param<B, 1>>,
    },
}

/// Compacter's rule matrices, shared by every PHM projection of an adapter: `[n·n, n]`, row
/// `i·n + a` holding `R_i[a, :]`; one set for the down projections, one for the up ones.
#[derive(Clone, Debug)]
pub struct PhmRules<B: Backend> {
    pub down: Param<B, 2>,
    pub up: Param<B, 2>,
}

impl<B: Backend> Part<B> for PhmRules<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit2(&format!("{prefix}.down"), &mut self.down);
        v.visit2(&format!("{prefix}.up"), &mut self.up);
    }
}

/// What a forward pass passes to the adapters: the shared PHM rules of the active adapter and,
/// in training, the generator that routes AdaMix's experts.
pub(crate) struct AdapterContext<'a, B: Backend> {
    pub rules: Option<&'a PhmRules<B>>,
    pub rng: Option<&'a mut HostRng>,
}

impl<B: Backend> Projection<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        match self {
            Self::Dense { weight, bias } => {
                v.visit2(&format!("{prefix}.weight"), weight);
                v.visit1(&format!("{prefix}.bias"), bias);
            }
            Self::Phm { s, t, bias } => {
                v.visit2(&format!("{prefix}.phm_s"), s);
                v.visit2(&format!("{prefix}.phm_t"), t);
                v.visit1(&format!("{prefix}.bias"), bias);
            }
            Self::Experts { weights, biases } => {
                for (j, (w, b)) in weights.iter_mut().zip(biases).enumerate() {
                    v.visit2(&format!("{prefix}.experts.{j}.weight"), w);
                    v.visit1(&format!("{prefix}.experts.{j}.bias"), b);
                }
            }
        }
    }

    fn numel(&self) -> usize {
        match self {
            Self::Dense { weight, bias } => weight.numel() + bias.numel(),
            Self::Phm { s, t, bias } => s.numel() + t.numel() + bias.numel(),
            Self::Experts { weights, biases } => {
                weights.iter().map(Param::numel).sum::<usize>()
                    + biases.iter().map(Param::numel).sum::<usize>()
            }
        }
    }

    /// The matrix and bias this pass uses. `rule` is the PHM rule set `[n·n, n]`; `pick`
    /// chooses an expert in training (`None`: their average).
    fn weights(
        &self,
        rule: Option<&Param<B, 2>>,
        pick: Option<usize>,
    ) -> (Tensor<B, 2>, Tensor<B, 1>) {
        match self {
            Self::Dense { weight, bias } => (weight.value.clone(), bias.value.clone()),
            Self::Phm { s, t, bias } => {
                let rule = rule.expect("a PHM projection's adapter has rules");
                (
                    phm_matrix(&rule.value, &s.value, &t.value),
                    bias.value.clone(),
                )
            }
            Self::Experts { weights, biases } => match pick {
                Some(j) => (weights[j].value.clone(), biases[j].value.clone()),
                None => {
                    let m = weights.len() as f64;
                    let w = weights.iter().map(|w| w.value.clone()).reduce(|a, b| a + b);
                    let b = biases.iter().map(|b| b.value.clone()).reduce(|a, b| a + b);
                    (w.expect("experts") / m, b.expect("experts") / m)
                }
            },
        }
    }

    fn experts(&self) -> usize {
        match self {
            Self::Experts { weights, .. } => weights.len(),
            _ => 1,
        }
    }
}

/// `Σ_i R_i ⊗ (s_i·t_iᵀ)`, `[n·p, n·q]` for `s` `[n, p]` and `t` `[n, q]`.
pub(crate) fn phm_matrix<B: Backend>(
    rules: &Tensor<B, 2>,
    s: &Tensor<B, 2>,
    t: &Tensor<B, 2>,
) -> Tensor<B, 2> {
    let ([n, p], [_, q]) = (s.dims(), t.dims());
    let rules = rules.clone().reshape([n, n, 1, n, 1]);
    let b = s.clone().reshape([n, 1, p, 1, 1]) * t.clone().reshape([n, 1, 1, 1, q]);
    let b = b.reshape([n, 1, p, 1, q]);
    (rules * b).sum_dim(0).reshape([n * p, n * q])
}

/// A bottleneck adapter after a sublayer: `h + up(act(down(h)))`.
#[derive(Clone, Debug)]
pub struct Bottleneck<B: Backend> {
    /// `[d, m]` and `[m, d]`.
    pub down: Projection<B>,
    pub up: Projection<B>,
    pub activation: Activation,
}

impl<B: Backend> Part<B> for Bottleneck<B> {
    fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        self.down.visit(&format!("{prefix}.down"), v);
        self.up.visit(&format!("{prefix}.up"), v);
    }
}

impl<B: Backend> Bottleneck<B> {
    /// A fresh adapter of width `d` with an `m`-wide bottleneck, drawn from `rng`: the down
    /// projection Kaiming-uniform, the up projection zero, so it starts as the identity (the
    /// "mam" initialisation of adapter libraries).
    pub(crate) fn new(
        d: usize,
        m: usize,
        activation: Activation,
        rng: &mut init::HostRng,
        device: &B::Device,
    ) -> Self {
        let (down, up) = dense_pair(d, m, rng, device);
        Self {
            down,
            up,
            activation,
        }
    }

    /// # Shapes
    /// - h: `[n, d]` -> `[n, d]`
    pub(crate) fn forward(&self, h: Tensor<B, 2>, ctx: &mut AdapterContext<'_, B>) -> Tensor<B, 2> {
        let rules = ctx.rules;
        let mut pick = |p: &Projection<B>| {
            let n = p.experts();
            ctx.rng
                .as_deref_mut()
                .filter(|_| n > 1)
                .map(|r| r.random_range(0..n))
        };
        let (down_pick, up_pick) = (pick(&self.down), pick(&self.up));
        let (w, b) = self.down.weights(rules.map(|r| &r.down), down_pick);
        let z = precision::matmul(h.clone(), w) + b.unsqueeze();
        let z = self.activation.apply(z);
        let (w, b) = self.up.weights(rules.map(|r| &r.up), up_pick);
        h + precision::matmul(z, w) + b.unsqueeze()
    }

    pub(crate) fn numel(&self) -> usize {
        self.down.numel() + self.up.numel()
    }
}

/// A dense down projection (Kaiming-uniform, bias too) and a zero up projection.
pub(crate) fn dense_pair<B: Backend>(
    d: usize,
    m: usize,
    rng: &mut init::HostRng,
    device: &B::Device,
) -> (Projection<B>, Projection<B>) {
    let bound = 1.0 / (d as f64).sqrt();
    let down = init::tensor2::<B>(init::uniform_vec(rng, d * m, bound), [d, m], device);
    let down_bias = init::tensor1::<B>(init::uniform_vec(rng, m, bound), device);
    (
        Projection::Dense {
            weight: Param::new(down, true),
            bias: Param::new(down_bias, true),
        },
        Projection::Dense {
            weight: Param::new(Tensor::zeros([m, d], device), true),
            bias: Param::new(Tensor::zeros([d], device), true),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    type B = burn::backend::Flex;

    #[test]
    fn phm_matrix_is_the_sum_of_kronecker_products() {
        let dev = Default::default();
        let (n, p, q) = (2, 3, 2);
        let mut rng = init::rng(5);
        let rules_v = init::normal_vec(&mut rng, n * n * n, 1.0);
        let s_v = init::normal_vec(&mut rng, n * p, 1.0);
        let t_v = init::normal_vec(&mut rng, n * q, 1.0);
        let w = phm_matrix::<B>(
            &init::tensor2(rules_v.clone(), [n * n, n], &dev),
            &init::tensor2(s_v.clone(), [n, p], &dev),
            &init::tensor2(t_v.clone(), [n, q], &dev),
        )
        .to_data()
        .to_vec::<f32>()
        .unwrap();
        // Entry (a·p + x, c·q + y) = Σ_i R_i[a, c]·s_i[x]·t_i[y].
        for a in 0..n {
            for c in 0..n {
                for x in 0..p {
                    for y in 0..q {
                        let want: f32 = (0..n)
                            .map(|i| rules_v[(i * n + a) * n + c] * s_v[i * p + x] * t_v[i * q + y])
                            .sum();
                        let got = w[(a * p + x) * (n * q) + c * q + y];
                        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
                    }
                }
            }
        }
    }
}
