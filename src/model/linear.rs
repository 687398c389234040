//! A bias-free projection, with the places adapters can occupy: LoRA/DoRA beside it, (IA)3
//! scaling of its input or output, and BitFit's added bias. Its weight is dense, or frozen and
//! quantized (QLoRA).

use std::sync::Arc;

use burn::prelude::*;

use super::adapters::ia3::Ia3Vector;
use super::adapters::kron::KronAdapter;
use super::adapters::lora::LoraAdapter;
use super::adapters::slots::Slots;
use super::init::HostRng;
use super::params::{Param, ParamVisitor};
use crate::kernels::precision;
use crate::quant::{QuantConfig, QuantError, QuantizedTensor, matmul};

/// A projection's weight.
#[derive(Clone, Debug)]
pub enum Weight<B: Backend> {
    /// Stored `[d_in, d_out]` so that `x · weight` needs no transpose
    /// (Hugging Face checkpoints hold `[out, in]`; loaders transpose).
    Dense(Param<B, 2>),
    /// Frozen, quantized in the checkpoint layout `[d_out, d_in]` (as bitsandbytes does, so the
    /// bytes are the same), on the host; shared between clones of the model.
    Quantized(Arc<QuantizedTensor>),
}

impl<B: Backend> Weight<B> {
    /// The weight as a `[d_in, d_out]` tensor: the dense parameter, or a dequantized copy
    /// (detached: quantized weights are never trained).
    pub(crate) fn tensor(&self, device: &B::Device) -> Tensor<B, 2> {
        match self {
            Self::Dense(p) => p.value.clone(),
            Self::Quantized(q) => Tensor::from_data(
                TensorData::new(q.dequantize_transposed(), [q.shape[1], q.shape[0]]),
                device,
            ),
        }
    }

    pub(crate) fn dense(&self) -> Option<&Param<B, 2>> {
        match self {
            Self::Dense(p) => Some(p),
            Self::Quantized(_) => None,
        }
    }

    pub fn quantized(&self) -> Option<&Arc<QuantizedTensor>> {
        match self {
            Self::Dense(_) => None,
            Self::Quantized(q) => Some(q),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Linear<B: Backend> {
    pub weight: Weight<B>,
    pub lora: Slots<LoraAdapter<B>>,
    pub ia3: Slots<Ia3Vector<B>>,
    /// LoKr's Kronecker-product updates.
    pub kron: Slots<KronAdapter<B>>,
    /// BitFit biases, `[d_out]`.
    pub bias: Slots<Param<B, 1>>,
    /// LeTS's task-specific full update `ΔW` `[d_in, d_out]` (the shared weight stays as it is).
    pub delta: Slots<Param<B, 2>>,
    /// The checkpoint's own bias, `[d_out]` (Qwen2's q, k and v; Llama's `attention_bias`).
    pub base_bias: Option<Param<B, 1>>,
}

impl<B: Backend> Linear<B> {
    pub(crate) fn new(weight: Tensor<B, 2>, trainable: bool) -> Self {
        Self::with_weight(Weight::Dense(Param::new(weight, trainable)))
    }

    pub(crate) fn with_weight(weight: Weight<B>) -> Self {
        Self {
            weight,
            lora: Slots::default(),
            ia3: Slots::default(),
            kron: Slots::default(),
            bias: Slots::default(),
            delta: Slots::default(),
            base_bias: None,
        }
    }

    pub(crate) fn d_in(&self) -> usize {
        match &self.weight {
            Weight::Dense(p) => p.value.dims()[0],
            Weight::Quantized(q) => q.shape[1],
        }
    }

    pub(crate) fn d_out(&self) -> usize {
        match &self.weight {
            Weight::Dense(p) => p.value.dims()[1],
            Weight::Quantized(q) => q.shape[0],
        }
    }

    /// The dense weight parameter; `None` when it is quantized.
    pub fn dense(&self) -> Option<&Param<B, 2>> {
        self.weight.dense()
    }

    pub(crate) fn dense_mut(&mut self) -> Option<&mut Param<B, 2>> {
        match &mut self.weight {
            Weight::Dense(p) => Some(p),
            Weight::Quantized(_) => None,
        }
    }

    /// Replaces a dense weight by its quantized form (frozen from then on). Rows of the
    /// `[d_out, d_in]` layout must split into whole blocks.
    pub(crate) fn quantize(&mut self, config: QuantConfig) -> Result<(), QuantError> {
        let Weight::Dense(p) = &self.weight else {
            return Ok(());
        };
        config.validate(self.d_in())?;
        let [d_in, d_out] = p.value.dims();
        let values = p
            .value
            .clone()
            .transpose()
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| QuantError::Invalid(format!("{e:?}")))?;
        let q = QuantizedTensor::quantize(&values, &[d_out, d_in], config)?;
        self.weight = Weight::Quantized(Arc::new(q));
        Ok(())
    }

    /// Replaces a quantized weight by its dequantized values (a frozen dense weight).
    pub(crate) fn dequantize(&mut self, device: &B::Device) {
        if let Weight::Quantized(_) = &self.weight {
            self.weight = Weight::Dense(Param::new(self.weight.tensor(device), false));
        }
    }

    /// # Shapes
    /// - x: `[n, d_in]` -> `[n, d_out]`
    ///
    /// `rng` is `Some` in training (LoRA dropout is drawn from it) and `None` in evaluation;
    /// `gate` (`[1]`) scales LeTS's update while its layers are being selected.
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 2>,
        rng: Option<&mut HostRng>,
        gate: Option<Tensor<B, 1>>,
    ) -> Tensor<B, 2> {
        let delta = self.delta.active().map(|dw| {
            let y = precision::matmul(x.clone(), dw.value.clone());
            match gate {
                Some(g) => y * g.unsqueeze(),
                None => y,
            }
        });
        let ia3 = self.ia3.active().filter(|v| !v.merged);
        let x = match ia3 {
            Some(v) if v.on_input => x * v.vector.value.clone().unsqueeze(),
            _ => x,
        };
        let base = match &self.weight {
            Weight::Dense(p) => precision::matmul(x.clone(), p.value.clone()),
            Weight::Quantized(q) => matmul::quantized_matmul(x.clone(), q),
        };
        let base = match &self.base_bias {
            Some(b) => base + b.value.clone().unsqueeze(),
            None => base,
        };
        let mut out = match self.lora.active().filter(|l| l.merged.is_none()) {
            Some(lora) => lora.apply(x, base, &self.weight, rng),
            None => match self.kron.active().filter(|k| !k.merged) {
                Some(kron) => match kron.forward(x, rng) {
                    Some(delta) => base + delta,
                    None => base,
                },
                None => base,
            },
        };
        if let Some(b) = self.bias.active() {
            out = out + b.value.clone().unsqueeze();
        }
        if let Some(d) = delta {
            out = out + d;
        }
        match ia3 {
            Some(v) if !v.on_input => out * v.vector.value.clone().unsqueeze(),
            _ => out,
        }
    }

    pub(crate) fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        match &mut self.weight {
            Weight::Dense(p) => v.visit2(&format!("{prefix}.weight"), p),
            Weight::Quantized(q) => v.visit_quantized(&format!("{prefix}.weight"), q),
        }
        if let Some(b) = &mut self.base_bias {
            v.visit1(&format!("{prefix}.bias"), b);
        }
        self.lora.visit(prefix, "lora", v);
        self.ia3.visit(prefix, "ia3_l", v);
        self.kron.visit(prefix, "lokr", v);
        self.bias.visit(prefix, "bias", v);
        self.delta.visit(prefix, "lets_delta", v);
    }

    pub(crate) fn activate(&mut self, name: Option<&str>) {
        self.lora.activate(name);
        self.ia3.activate(name);
        self.kron.activate(name);
        self.bias.activate(name);
        self.delta.activate(name);
    }

    pub(crate) fn remove_adapter(&mut self, name: &str) {
        self.lora.remove(name);
        self.ia3.remove(name);
        self.kron.remove(name);
        self.bias.remove(name);
        self.delta.remove(name);
    }
}
