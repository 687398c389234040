//! Quantization of frozen weights: NF4 / FP4 / Int4 / Int8 blockwise codes with optional
//! double quantization (bit-compatible with bitsandbytes for NF4 and FP4), and the matmul
//! that trains adapters through them.

pub mod blockwise;
pub(crate) mod bnb_format;
pub mod codes;
pub(crate) mod device;
pub(crate) mod error;
pub(crate) mod matmul;
pub mod torch_sum;

pub use blockwise::{BlockScales, QuantConfig, QuantDtype, QuantizedTensor};
pub(crate) use error::QuantError;
