//! What can go wrong when quantizing or reading quantized weights.

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("unsupported quantization dtype '{0}' (expected nf4, fp4, int4 or int8)")]
    UnknownDtype(String),
    #[error("bad quantization block: {0}")]
    BadBlock(String),
    #[error("value {0} is not finite; cannot quantize NaN or infinity")]
    NonFinite(usize),
    #[error("shape mismatch: {0}")]
    Shape(String),
    #[error("{0}")]
    Invalid(String),
}
