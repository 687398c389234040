//! Blockwise absmax quantization of f32 values to 4-bit (NF4, FP4, Int4) or 8-bit (Int8)
//! codes, with optional double quantization of the block constants — the storage of QLoRA's
//! frozen weights.
//!
//! NF4 and FP4 follow bitsandbytes' CPU kernel step for step so that the bytes agree:
//! scaled = clamp(x · (1 / max(absmax, 1e-38)), -1, 1) (a partial last block divides by its
//! absmax instead), the code is the bucket of `scaled` among the midpoints of the sorted code
//! values (a value on a midpoint goes to the lower code), and two codes share a byte with the
//! first in the high nibble. Double quantization subtracts the mean of the block absmax values
//! and quantizes them with bitsandbytes' 8-bit dynamic map in blocks of 256.

use rayon::prelude::*;

use super::codes;
use super::device::DeviceCopy;
use super::error::QuantError;

/// The code book of a quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantDtype {
    Nf4,
    Fp4,
    Int4,
    Int8,
}

impl QuantDtype {
    pub const ALL: [QuantDtype; 4] = [
        QuantDtype::Nf4,
        QuantDtype::Fp4,
        QuantDtype::Int4,
        QuantDtype::Int8,
    ];

    pub fn parse(s: &str) -> Result<Self, QuantError> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(Self::Nf4),
            "fp4" => Ok(Self::Fp4),
            "int4" => Ok(Self::Int4),
            "int8" => Ok(Self::Int8),
            other => Err(QuantError::UnknownDtype(other.to_string())),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Nf4 => "nf4",
            Self::Fp4 => "fp4",
            Self::Int4 => "int4",
            Self::Int8 => "int8",
        }
    }

    pub(crate) fn bits(self) -> usize {
        if self == Self::Int8 { 8 } else { 4 }
    }

    /// The value each code stands for (before scaling), indexed by code.
    pub fn code_values(self) -> Vec<f32> {
        match self {
            Self::Nf4 => codes::NF4.to_vec(),
            Self::Fp4 => codes::fp4().to_vec(),
            Self::Int4 => codes::int4().to_vec(),
            Self::Int8 => codes::int8(),
        }
    }
}

impl std::fmt::Display for QuantDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How to quantize: the code book, the block size and whether the block constants are
/// themselves quantized (double quantization).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuantConfig {
    pub dtype: QuantDtype,
    pub block: usize,
    pub double: bool,
}

impl QuantConfig {
    /// Bytes per stored weight, block constants included: 4-bit codes are half a byte, each
    /// block adds a 4-byte absmax, or with double quantization one byte plus a 4-byte scale
    /// per 256 blocks.
    pub fn bytes_per_weight(&self) -> f64 {
        let code = self.dtype.bits() as f64 / 8.0;
        let scale = if self.double {
            (1.0 + 4.0 / 256.0) / self.block as f64
        } else {
            4.0 / self.block as f64
        };
        code + scale
    }
}

impl Default for QuantConfig {
    fn default() -> Self {
        Self {
            dtype: QuantDtype::Nf4,
            block: 64,
            double: true,
        }
    }
}

/// The block size bitsandbytes uses for the quantized block constants.
pub const NESTED_BLOCK: usize = 256;

impl QuantConfig {
    /// Checks the options against a weight with rows of `row_len` values.
    pub fn validate(&self, row_len: usize) -> Result<(), QuantError> {
        self.validate_block()?;
        if !row_len.is_multiple_of(self.block) {
            return Err(QuantError::BadBlock(format!(
                "block size {} does not divide the row length {row_len} (blocks must not straddle rows)",
                self.block
            )));
        }
        Ok(())
    }

    /// Checks the block size on its own: positive, and even for 4-bit types.
    pub(crate) fn validate_block(&self) -> Result<(), QuantError> {
        if self.block == 0 {
            return Err(QuantError::BadBlock(
                "block size must be positive, got 0".into(),
            ));
        }
        if self.dtype.bits() == 4 && !self.block.is_multiple_of(2) {
            return Err(QuantError::BadBlock(format!(
                "a 4-bit block must hold an even number of values, got {}",
                self.block
            )));
        }
        Ok(())
    }
}

/// The per-block scales: plain f32, or 8-bit codes with their own scales and offset.
#[derive(Clone, Debug, PartialEq)]
pub enum BlockScales {
    Plain(Vec<f32>),
    Double {
        /// One 8-bit code per block (bitsandbytes' dynamic map).
        codes: Vec<u8>,
        /// One absmax per `NESTED_BLOCK` codes.
        nested_absmax: Vec<f32>,
        /// The mean subtracted before quantizing.
        offset: f32,
        /// The map the codes index (bitsandbytes stores it beside every tensor).
        nested_map: Vec<f32>,
    },
}

impl BlockScales {
    /// The absmax of every block, decoded (`map[code] · nested_absmax + offset` when doubly
    /// quantized, in f32 as bitsandbytes computes it).
    pub fn decode(&self) -> Vec<f32> {
        match self {
            Self::Plain(v) => v.clone(),
            Self::Double {
                codes,
                nested_absmax,
                offset,
                nested_map,
            } => dequantize_dynamic_8bit(codes, nested_absmax, nested_map, NESTED_BLOCK)
                .into_iter()
                .map(|a| a + offset)
                .collect(),
        }
    }

    /// Bytes these scales take in memory (the shared nested map is counted once per tensor, as
    /// bitsandbytes stores it).
    pub(crate) fn bytes(&self) -> usize {
        match self {
            Self::Plain(v) => 4 * v.len(),
            Self::Double {
                codes,
                nested_absmax,
                nested_map,
                ..
            } => codes.len() + 4 * nested_absmax.len() + 4 + 4 * nested_map.len(),
        }
    }
}

/// A quantized tensor: packed codes, block scales and the logical shape (row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedTensor {
    pub dtype: QuantDtype,
    pub block: usize,
    pub shape: Vec<usize>,
    /// 4-bit: two codes per byte, the first in the high nibble; 8-bit: one code per byte.
    pub data: Vec<u8>,
    pub scales: BlockScales,
    /// The codes and scales kept on a GPU backend's device (see [`super::device`]).
    pub device_copy: DeviceCopy,
}

impl QuantizedTensor {
    /// Quantizes row-major `values` of `shape`. The block size must be positive (and even for
    /// 4-bit types); rows need not align with blocks here (bitsandbytes quantizes the flattened
    /// tensor), but `QuantConfig::validate` asks it of model weights.
    pub fn quantize(
        values: &[f32],
        shape: &[usize],
        config: QuantConfig,
    ) -> Result<Self, QuantError> {
        let n: usize = shape.iter().product();
        if n != values.len() {
            return Err(QuantError::Shape(format!(
                "{} values for shape {shape:?}",
                values.len()
            )));
        }
        config.validate_block()?;
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite(i));
        }
        let book = CodeBook::new(config.dtype);
        let block = config.block;
        let full = n / block * block;
        let mut absmax: Vec<f32> = values
            .chunks(block)
            .map(|c| c.iter().fold(0.0f32, |m, v| m.max(v.abs())))
            .collect();
        let mut codes = vec![0u8; n];
        codes
            .par_chunks_mut(block)
            .zip(values.par_chunks(block))
            .zip(absmax.par_iter())
            .for_each(|((out, x), &am)| {
                if x.len() == block {
                    let inv = 1.0f32 / am.max(1e-38);
                    for (o, v) in out.iter_mut().zip(x) {
                        *o = book.encode((v * inv).clamp(-1.0, 1.0));
                    }
                } else {
                    let am = am.max(1e-38);
                    for (o, v) in out.iter_mut().zip(x) {
                        *o = book.encode((v / am).clamp(-1.0, 1.0));
                    }
                }
            });
        // bitsandbytes stores the clamped absmax for a partial last block only.
        if full < n {
            let last = absmax.len() - 1;
            absmax[last] = absmax[last].max(1e-38);
        }
        let data = if config.dtype.bits() == 4 {
            let pad = book.encode(0.0);
            codes
                .chunks(2)
                .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(pad))
                .collect()
        } else {
            codes
        };
        let scales = if config.double {
            double_quantize(&absmax)
        } else {
            BlockScales::Plain(absmax)
        };
        Ok(Self {
            dtype: config.dtype,
            block,
            shape: shape.to_vec(),
            data,
            scales,
            device_copy: DeviceCopy::default(),
        })
    }

    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub(crate) fn config(&self) -> QuantConfig {
        QuantConfig {
            dtype: self.dtype,
            block: self.block,
            double: matches!(self.scales, BlockScales::Double { .. }),
        }
    }

    /// The f32 values, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.numel()];
        self.dequantize_into(&mut out);
        out
    }

    /// Writes the f32 values into `out` (length `numel`), in parallel over blocks.
    pub fn dequantize_into(&self, out: &mut [f32]) {
        let values = self.dtype.code_values();
        let absmax = self.scales.decode();
        let block = self.block;
        if self.dtype.bits() == 4 {
            // `block` is even, so every block starts on a byte boundary.
            out.par_chunks_mut(block)
                .zip(absmax.par_iter())
                .enumerate()
                .for_each(|(b, (o, &am))| {
                    let bytes = &self.data[b * block / 2..];
                    for (i, v) in o.iter_mut().enumerate() {
                        let byte = bytes[i / 2];
                        let code = if i % 2 == 0 { byte >> 4 } else { byte & 0x0f };
                        *v = values[code as usize] * am;
                    }
                });
        } else {
            out.par_chunks_mut(block)
                .zip(self.data.par_chunks(block))
                .zip(absmax.par_iter())
                .for_each(|((o, c), &am)| {
                    for (v, &code) in o.iter_mut().zip(c) {
                        *v = values[code as usize] * am;
                    }
                });
        }
    }

    /// The f32 values of a 2-D tensor, transposed (`[cols, rows]`, row-major): dequantized in
    /// order (sequential reads of the packed codes), then transposed in tiles.
    pub fn dequantize_transposed(&self) -> Vec<f32> {
        let (rows, cols) = (self.shape[0], self.shape[1]);
        let dense = self.dequantize();
        let mut out = vec![0.0f32; dense.len()];
        // Tiles of 32 output rows keep both sides' cache lines in use.
        const TILE: usize = 32;
        out.par_chunks_mut(TILE * rows)
            .enumerate()
            .for_each(|(t, chunk)| {
                let c0 = t * TILE;
                for r in 0..rows {
                    let src = &dense[r * cols + c0..r * cols + c0 + chunk.len() / rows];
                    for (dc, v) in src.iter().enumerate() {
                        chunk[dc * rows + r] = *v;
                    }
                }
            });
        out
    }

    /// Bytes of storage: packed codes plus block scales.
    pub fn bytes(&self) -> usize {
        self.data.len() + self.scales.bytes()
    }
}

/// A code book prepared for encoding: the midpoints between consecutive sorted values, and
/// the code of each sorted position.
struct CodeBook {
    midpoints: Vec<f32>,
    code_of_sorted: Vec<u8>,
}

impl CodeBook {
    fn new(dtype: QuantDtype) -> Self {
        let values = dtype.code_values();
        let mut order: Vec<usize> = (0..values.len()).collect();
        // Stable, so that FP4's +0 (code 0) sorts before its -0 (code 8), as in bitsandbytes.
        order.sort_by(|&a, &b| values[a].partial_cmp(&values[b]).expect("finite codes"));
        let midpoints = order
            .windows(2)
            .map(|w| (values[w[0]] + values[w[1]]) / 2.0)
            .collect();
        Self {
            midpoints,
            code_of_sorted: order.into_iter().map(|i| i as u8).collect(),
        }
    }

    /// The code of the nearest value; a value exactly on a midpoint takes the lower code.
    fn encode(&self, x: f32) -> u8 {
        self.code_of_sorted[self.midpoints.partition_point(|&m| m < x)]
    }
}

/// Double quantization of block absmax values: subtract their mean, then quantize blockwise
/// (256) with bitsandbytes' dynamic 8-bit map.
fn double_quantize(absmax: &[f32]) -> BlockScales {
    let offset = mean_f32(absmax);
    let centred: Vec<f32> = absmax.iter().map(|a| a - offset).collect();
    let map = codes::dynamic_map();
    let (codes, nested_absmax) = quantize_dynamic_8bit(&centred, &map, NESTED_BLOCK);
    BlockScales::Double {
        codes,
        nested_absmax,
        offset,
        nested_map: map,
    }
}

/// The mean as bitsandbytes gets it from PyTorch on the CPU: an f32 sum in PyTorch's
/// summation order, divided by the count in f32. The order matters for the last bit of the
/// offset, which every dequantized weight depends on.
fn mean_f32(v: &[f32]) -> f32 {
    super::torch_sum::sum_f32(v) / v.len() as f32
}

/// Resolution of the lookup table the 8-bit quantizer reads codes from.
const LUT_SIZE: usize = 65_536;

/// bitsandbytes' CPU 8-bit blockwise quantizer: per block, absmax (a block of zeros gets code
/// 0 everywhere); each value times 1/absmax, clamped to [-1, 1], read through a table of
/// `LUT_SIZE` evenly spaced points that holds, for each point, the code of the first
/// midpoint not below it. The table makes it a close but not exact nearest-value search;
/// following it step for step gives bitsandbytes' codes. `map` must be sorted.
pub fn quantize_dynamic_8bit(values: &[f32], map: &[f32], block: usize) -> (Vec<u8>, Vec<f32>) {
    let lut = nearest_code_table(map);
    let last = (LUT_SIZE - 1) as f32;
    let mut codes = Vec::with_capacity(values.len());
    let mut absmax = Vec::with_capacity(values.len().div_ceil(block));
    for chunk in values.chunks(block) {
        let am = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        absmax.push(am);
        if am == 0.0 {
            codes.extend(std::iter::repeat_n(0u8, chunk.len()));
            continue;
        }
        let inv = 1.0f32 / am;
        for &v in chunk {
            let normed = (v * inv).clamp(-1.0, 1.0);
            let slot = ((normed + 1.0) * 0.5 * last + 0.5) as usize;
            codes.push(lut[slot.min(LUT_SIZE - 1)]);
        }
    }
    (codes, absmax)
}

/// For each of `LUT_SIZE` points evenly spaced over [-1, 1], the index of the first code
/// whose upper midpoint is not below the point.
fn nearest_code_table(map: &[f32]) -> Vec<u8> {
    let midpoints: Vec<f32> = map.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
    let mut code = 0usize;
    (0..LUT_SIZE)
        .map(|i| {
            let point = -1.0f32 + (2.0 * i as f32) / (LUT_SIZE - 1) as f32;
            while code < midpoints.len() && midpoints[code] < point {
                code += 1;
            }
            code as u8
        })
        .collect()
}

/// Dequantizes codes of `quantize_dynamic_8bit`.
pub fn dequantize_dynamic_8bit(
    codes: &[u8],
    absmax: &[f32],
    map: &[f32],
    block: usize,
) -> Vec<f32> {
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| map[c as usize] * absmax[i / block])
        .collect()
}
