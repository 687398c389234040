//! Dequantization on the compute device. A GPU backend can keep a tensor's packed codes and
//! block scales resident on the device (about 0.56 bytes a parameter at 4 bits) and expand
//! one weight per product there, instead of receiving a host-dequantized f32 copy for every
//! product (425 MB per SmolLM2 forward pass, and again in the backward pass). QLoRA's
//! products do so on CUDA (see `matmul::dequantizes_on_device`).

use std::any::Any;
use std::sync::{Arc, Mutex};

use burn::prelude::*;
use burn::tensor::ElementConversion;

use super::QuantizedTensor;

/// A tensor's codes and scales on one device, built on first use (see [`ResidentCodes`]).
#[derive(Default)]
pub struct DeviceCopy(Mutex<Option<Arc<dyn Any + Send + Sync>>>);

/// A clone starts without a device copy: it may be headed for another device.
impl Clone for DeviceCopy {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl std::fmt::Debug for DeviceCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resident = self.0.lock().map(|c| c.is_some()).unwrap_or(false);
        f.write_str(if resident {
            "DeviceCopy(resident)"
        } else {
            "DeviceCopy(none)"
        })
    }
}

/// A cache, not part of the tensor's value.
impl PartialEq for DeviceCopy {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// On `device`: the packed bytes as little-endian 32-bit words, where each code sits in a
/// word, the decoded absmax of every block and the dtype's code values.
struct ResidentCodes<B: Backend> {
    device: B::Device,
    words: Tensor<B, 1, Int>,
    /// [`NIBBLE_SHIFTS`] or [`BYTE_SHIFTS`].
    shifts: Tensor<B, 1, Int>,
    absmax: Tensor<B, 1>,
    table: Tensor<B, 1>,
}

/// Where each code sits in a little-endian word, in storage order. Four-bit codes: each
/// byte's high nibble comes first (bitsandbytes' order). Eight-bit codes: one a byte.
const NIBBLE_SHIFTS: [i32; 8] = [4, 0, 12, 8, 20, 16, 28, 24];
const BYTE_SHIFTS: [i32; 4] = [0, 8, 16, 24];

impl QuantizedTensor {
    /// The dequantized tensor (`shape`, f32) computed on `device` from codes kept there: the
    /// same values as [`QuantizedTensor::dequantize`], bit for bit (one f32 product per
    /// value). `None` when the layout does not fit whole words and blocks (a partial last
    /// block, or a byte count not a multiple of 4); the caller dequantizes on the host then.
    pub fn dequantize_on<B: Backend>(&self, device: &B::Device) -> Option<Tensor<B, 2>> {
        let [rows, cols] = self.shape[..] else {
            return None;
        };
        let resident = self.resident::<B>(device)?;
        let mask = (1i32 << self.dtype.bits()) - 1;
        let [words] = resident.words.dims();
        let [per_word] = resident.shifts.dims();
        // [words, 1] >> [1, codes per word]: every code of every word in storage order.
        let codes = resident
            .words
            .clone()
            .reshape([words, 1])
            .bitwise_right_shift(resident.shifts.clone().reshape([1, per_word]))
            .bitwise_and_scalar(mask.elem());
        let n = self.numel();
        let codes = codes.reshape([n]);
        let blocks = n / self.block;
        let values = resident
            .table
            .clone()
            .select(0, codes)
            .reshape([blocks, self.block]);
        Some((values * resident.absmax.clone().reshape([blocks, 1])).reshape([rows, cols]))
    }

    fn resident<B: Backend>(&self, device: &B::Device) -> Option<Arc<ResidentCodes<B>>> {
        let n = self.numel();
        if !n.is_multiple_of(self.block) || !self.data.len().is_multiple_of(4) {
            return None;
        }
        let mut slot = self.device_copy.0.lock().ok()?;
        if let Some(r) = slot
            .clone()
            .and_then(|any| any.downcast::<ResidentCodes<B>>().ok())
            .filter(|r| &r.device == device)
        {
            return Some(r);
        }
        let words: Vec<i32> = self
            .data
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let absmax = self.scales.decode();
        let table = self.dtype.code_values();
        let shifts = if self.dtype.bits() == 4 {
            NIBBLE_SHIFTS.to_vec()
        } else {
            BYTE_SHIFTS.to_vec()
        };
        let r = Arc::new(ResidentCodes::<B> {
            device: device.clone(),
            words: Tensor::from_data(TensorData::new(words, [self.data.len() / 4]), device),
            shifts: Tensor::from_data(TensorData::new(shifts.clone(), [shifts.len()]), device),
            absmax: Tensor::from_data(TensorData::new(absmax, [n / self.block]), device),
            table: Tensor::from_data(TensorData::new(table.clone(), [table.len()]), device),
        });
        *slot = Some(r.clone());
        Some(r)
    }
}

#[cfg(all(test, feature = "flex"))]
mod tests {
    use super::*;
    use crate::quant::{QuantConfig, QuantDtype};
    use burn::backend::Flex;

    /// Every dtype, with and without double quantization: the device's values are the host's.
    #[test]
    fn device_dequantization_equals_the_hosts() {
        let (rows, cols) = (24, 128);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                ((i * 7919) % 1013) as f32 / 1013.0 - 0.5 + if i % 97 == 0 { 3.0 } else { 0.0 }
            })
            .collect();
        for dtype in [
            QuantDtype::Nf4,
            QuantDtype::Fp4,
            QuantDtype::Int4,
            QuantDtype::Int8,
        ] {
            for double in [false, true] {
                let q = QuantizedTensor::quantize(
                    &values,
                    &[rows, cols],
                    QuantConfig {
                        dtype,
                        block: 64,
                        double,
                    },
                )
                .unwrap();
                let on_device = q
                    .dequantize_on::<Flex>(&Default::default())
                    .expect("whole words and blocks");
                assert_eq!(
                    on_device.into_data().to_vec::<f32>().unwrap(),
                    q.dequantize(),
                    "{dtype} double={double}"
                );
            }
        }
    }

    #[test]
    fn a_partial_last_block_is_left_to_the_host() {
        let values = vec![0.25f32; 3 * 40];
        let q = QuantizedTensor::quantize(
            &values,
            &[3, 40],
            QuantConfig {
                dtype: QuantDtype::Nf4,
                block: 64,
                double: false,
            },
        )
        .unwrap();
        assert!(q.dequantize_on::<Flex>(&Default::default()).is_none());
    }
}
