//! Mixed precision: the float type that matrix products compute in while the weights, the
//! optimizer and every other operation stay in f32 (PyTorch's `autocast` with f32 master
//! weights).
//!
//! The trainer enters a [`Precision`] for the forward pass; [`matmul`] (used by every linear
//! layer, LoRA's factors, the quantized matmul and the output head) rounds both operands to
//! bf16 or f16, multiplies, and brings the product back to f32. The graph records the casts,
//! so the backward products run in the same type. Norms, softmax, attention scores on the
//! fused CPU kernels and the loss stay in f32, as autocast keeps them.
//!
//! f16 has five exponent bits, so small gradients underflow: [`LossScale`] multiplies the
//! loss by a factor that halves when a step overflows and doubles after a run of clean steps
//! (PyTorch's `GradScaler` rules); bf16 has f32's range and needs none.

use std::cell::Cell;

use burn::prelude::*;
use burn::tensor::{DType, FloatDType};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
    Fp16,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PrecisionError {
    #[error("unknown precision '{0}' (expected fp32, bf16 or fp16)")]
    Unknown(String),
    #[error(
        "precision {0} is not supported by this device's backend (it cannot compute in {0}); use fp32 or a device that has it"
    )]
    Unsupported(&'static str),
}

impl Precision {
    pub fn parse(s: &str) -> Result<Self, PrecisionError> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Self::Fp32),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "fp16" | "f16" | "float16" | "half" => Ok(Self::Fp16),
            _ => Err(PrecisionError::Unknown(s.into())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Fp32 => "fp32",
            Self::Bf16 => "bf16",
            Self::Fp16 => "fp16",
        }
    }

    /// The type matmuls compute in; `None` for plain f32.
    fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            Self::Fp32 => None,
            Self::Bf16 => Some(FloatDType::BF16),
            Self::Fp16 => Some(FloatDType::F16),
        }
    }

    /// Whether the loss needs scaling to keep small gradients representable (f16 only).
    pub(crate) fn needs_loss_scaling(self) -> bool {
        self == Self::Fp16
    }

    /// An error when `B` cannot compute in this type on `device`.
    pub(crate) fn check<B: Backend>(self, device: &B::Device) -> Result<(), PrecisionError> {
        let dtype = match self {
            Self::Fp32 => return Ok(()),
            Self::Bf16 => DType::BF16,
            Self::Fp16 => DType::F16,
        };
        if B::supports_dtype(device, dtype) {
            if self == Self::Bf16
                && let Some(why) = crate::kernels::bf16_slowness::<B>()
            {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| eprintln!("warning: {why}"));
            }
            Ok(())
        } else {
            Err(PrecisionError::Unsupported(self.name()))
        }
    }
}

thread_local! {
    static ACTIVE: Cell<Precision> = const { Cell::new(Precision::Fp32) };
}

/// Restores the previous precision when dropped.
#[must_use = "the precision applies until the guard is dropped"]
pub(crate) struct PrecisionGuard(Precision);

impl Drop for PrecisionGuard {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.set(self.0));
    }
}

/// Makes matmuls on this thread compute in `precision` until the guard is dropped.
pub(crate) fn enter(precision: Precision) -> PrecisionGuard {
    PrecisionGuard(ACTIVE.with(|a| a.replace(precision)))
}

/// The precision matmuls on this thread compute in now.
pub(crate) fn active() -> Precision {
    ACTIVE.with(Cell::get)
}

/// `a · b` in the active precision, returned in f32 (bf16 on the CPU's AMX tiles when it
/// has them).
pub(crate) fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    match active() {
        Precision::Fp32 => crate::kernels::matmul(a, b),
        Precision::Bf16 => crate::kernels::matmul_bf16(a, b),
        Precision::Fp16 => matmul_nd(a, b),
    }
}

/// `acc + a · b` with the product in the active precision. In f32 the product is summed into
/// acc's own buffer (on flex, when nothing else holds it); other precisions round the
/// product's inputs, so they add a separate product.
pub(crate) fn matmul_accumulate<B: Backend>(
    acc: Tensor<B, 2>,
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
) -> Tensor<B, 2> {
    match active() {
        Precision::Fp32 => crate::kernels::matmul_accumulate(acc, a, b),
        _ => acc + matmul(a, b),
    }
}

/// [`matmul`] for batched products of any rank, always through Burn's own ops.
pub(crate) fn matmul_nd<B: Backend, const D: usize>(
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Tensor<B, D> {
    match active().compute_dtype() {
        None => a.matmul(b),
        Some(dtype) => a.cast(dtype).matmul(b.cast(dtype)).cast(FloatDType::F32),
    }
}

/// The same rounding on a backend's primitives, for custom autodiff operations (the
/// quantized matmul) that do their own backward pass.
pub(crate) fn matmul_primitive<B: Backend>(
    a: B::FloatTensorPrimitive,
    b: B::FloatTensorPrimitive,
) -> B::FloatTensorPrimitive {
    match active().compute_dtype() {
        None => B::float_matmul(a, b),
        Some(dtype) => B::float_cast(
            B::float_matmul(B::float_cast(a, dtype), B::float_cast(b, dtype)),
            FloatDType::F32,
        ),
    }
}

/// Dynamic loss scaling for f16 (the rules of PyTorch's `GradScaler`): the loss, and so every
/// gradient, is multiplied by `scale`; a step whose gradients overflow is skipped and halves
/// it; `GROWTH_INTERVAL` clean steps in a row double it.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScale {
    pub scale: f64,
    /// Clean steps since the scale last changed.
    pub clean_steps: usize,
}

impl Default for LossScale {
    fn default() -> Self {
        Self {
            scale: Self::INITIAL,
            clean_steps: 0,
        }
    }
}

impl LossScale {
    pub(crate) const INITIAL: f64 = 65536.0;
    pub(crate) const GROWTH_INTERVAL: usize = 2000;
    /// Below this the scale stops shrinking: an overflow then is the model's own, not f16's.
    pub const MIN: f64 = 1.0;

    /// Records a step; `overflowed` when its gradients were not finite.
    pub(crate) fn update(&mut self, overflowed: bool) {
        if overflowed {
            self.scale = (self.scale * 0.5).max(Self::MIN);
            self.clean_steps = 0;
        } else {
            self.clean_steps += 1;
            if self.clean_steps >= Self::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
        }
    }

    /// Whether the scale can still shrink (an overflow is then f16's, not a diverging run).
    pub(crate) fn can_back_off(&self) -> bool {
        self.scale > Self::MIN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        assert_eq!(Precision::parse("BF16").unwrap(), Precision::Bf16);
        assert_eq!(Precision::parse("half").unwrap(), Precision::Fp16);
        assert_eq!(Precision::parse("fp32").unwrap(), Precision::Fp32);
        assert_eq!(
            Precision::parse("fp8").unwrap_err().to_string(),
            "unknown precision 'fp8' (expected fp32, bf16 or fp16)"
        );
    }

    #[test]
    fn the_guard_scopes_the_precision() {
        assert_eq!(active(), Precision::Fp32);
        {
            let _outer = enter(Precision::Bf16);
            {
                let _inner = enter(Precision::Fp16);
                assert_eq!(active(), Precision::Fp16);
            }
            assert_eq!(active(), Precision::Bf16);
        }
        assert_eq!(active(), Precision::Fp32);
    }

    #[test]
    fn matmul_rounds_operands_to_the_active_type() {
        let device = Default::default();
        // Two rows, each times 1: 1 + 2⁻¹⁰ is exact in f16 and f32 but rounds to 1 in bf16
        // (7 fraction bits); 1 + 2⁻¹² is exact only in f32.
        let (x, y) = (1.0 + 2f32.powi(-10), 1.0 + 2f32.powi(-12));
        let a = Tensor::<Flex, 2>::from_data(TensorData::new(vec![x, y], [2, 1]), &device);
        let b = Tensor::<Flex, 2>::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device);
        let run = |p| {
            let _g = enter(p);
            let out = matmul(a.clone(), b.clone());
            assert_eq!(out.dtype(), DType::F32);
            out.into_data().to_vec::<f32>().unwrap()
        };
        assert_eq!(run(Precision::Fp32), vec![x, y]);
        assert_eq!(run(Precision::Fp16), vec![x, 1.0]);
        assert_eq!(run(Precision::Bf16), vec![1.0, 1.0]);
    }

    #[test]
    fn loss_scale_backs_off_on_overflow_and_grows_after_clean_steps() {
        let mut s = LossScale::default();
        s.update(true);
        assert_eq!(s.scale, LossScale::INITIAL / 2.0);
        for _ in 0..LossScale::GROWTH_INTERVAL - 1 {
            s.update(false);
        }
        assert_eq!(s.scale, LossScale::INITIAL / 2.0);
        s.update(false);
        assert_eq!((s.scale, s.clean_steps), (LossScale::INITIAL, 0));
        let mut low = LossScale {
            scale: 1.5,
            clean_steps: 0,
        };
        low.update(true);
        assert_eq!(low.scale, LossScale::MIN);
        assert!(!low.can_back_off());
    }
}
