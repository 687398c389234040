//! Quantization of frozen weights: NF4 / FP4 / Int4 / Int8 blockwise codes with optional
//! double quantization (bit-compatible with bitsandbytes for NF4 and FP4), and the matmul
//! that trains adapters through them.

pub mod blockwise;
pub mod bnb_format;
pub mod codes;
pub mod device;
pub mod error;
pub mod matmul;
pub mod torch_sum;

pub use blockwise::{BlockScales, QuantConfig, QuantDtype, QuantizedTensor};
pub use error::QuantError;
