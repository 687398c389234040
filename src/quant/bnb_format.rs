//! The safetensors layout transformers uses for bitsandbytes 4-bit weights: for a projection
//! `P`, `P.weight` holds the packed codes (uint8, `[n/2, 1]`), beside `P.weight.absmax`,
//! `P.weight.quant_map` and, with double quantization, `P.weight.nested_absmax` and
//! `P.weight.nested_quant_map`, plus `P.weight.quant_state.bitsandbytes__nf4` (or `__fp4`): a
//! uint8 tensor holding JSON with the block sizes, the shape and the nested offset.

use safetensors::Dtype;

use super::blockwise::NESTED_BLOCK;
use super::{BlockScales, QuantDtype, QuantError, QuantizedTensor};

/// One tensor as stored: name, dtype, shape, little-endian bytes.
pub(crate) type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// A stored tensor as read back: dtype, shape, bytes.
pub(crate) type RawView<'a> = (Dtype, Vec<usize>, &'a [u8]);

#[derive(serde::Serialize, serde::Deserialize)]
struct QuantStateJson {
    quant_type: String,
    blocksize: usize,
    dtype: String,
    shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nested_blocksize: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nested_dtype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nested_offset: Option<f32>,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_values(name: &str, view: &RawView) -> Result<Vec<f32>, QuantError> {
    if view.0 != Dtype::F32 {
        return Err(QuantError::Invalid(format!(
            "{name}: expected float32, found {:?}",
            view.0
        )));
    }
    Ok(view
        .2
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// The tensors that store `q` under `name` (the weight's name, `...q_proj.weight`).
pub(crate) fn to_tensors(name: &str, q: &QuantizedTensor) -> Result<Vec<RawTensor>, QuantError> {
    if !matches!(q.dtype, QuantDtype::Nf4 | QuantDtype::Fp4) {
        return Err(QuantError::Invalid(format!(
            "{name}: transformers' bitsandbytes 4-bit format has nf4 and fp4 only, not {}; dequantize() before saving",
            q.dtype
        )));
    }
    let n = q.numel();
    let mut out: Vec<RawTensor> = vec![(
        name.to_string(),
        Dtype::U8,
        vec![n.div_ceil(2), 1],
        q.data.clone(),
    )];
    let mut state = QuantStateJson {
        quant_type: q.dtype.name().to_string(),
        blocksize: q.block,
        dtype: "float32".into(),
        shape: q.shape.clone(),
        nested_blocksize: None,
        nested_dtype: None,
        nested_offset: None,
    };
    match &q.scales {
        BlockScales::Plain(absmax) => out.push((
            format!("{name}.absmax"),
            Dtype::F32,
            vec![absmax.len()],
            f32_bytes(absmax),
        )),
        BlockScales::Double {
            codes,
            nested_absmax,
            offset,
            nested_map,
        } => {
            out.push((
                format!("{name}.absmax"),
                Dtype::U8,
                vec![codes.len()],
                codes.clone(),
            ));
            out.push((
                format!("{name}.nested_absmax"),
                Dtype::F32,
                vec![nested_absmax.len()],
                f32_bytes(nested_absmax),
            ));
            out.push((
                format!("{name}.nested_quant_map"),
                Dtype::F32,
                vec![nested_map.len()],
                f32_bytes(nested_map),
            ));
            state.nested_blocksize = Some(NESTED_BLOCK);
            state.nested_dtype = Some("float32".into());
            state.nested_offset = Some(*offset);
        }
    }
    out.push((
        format!("{name}.quant_map"),
        Dtype::F32,
        vec![16],
        f32_bytes(&q.dtype.code_values()),
    ));
    let json = serde_json::to_vec(&state).expect("JSON");
    out.push((
        format!("{name}.quant_state.bitsandbytes__{}", q.dtype.name()),
        Dtype::U8,
        vec![json.len()],
        json,
    ));
    Ok(out)
}

/// Reads the bitsandbytes weight stored under `name`, if there is one; `get` looks tensors up
/// by name. `expected` is the `[out, in]` shape the model needs.
pub(crate) fn from_tensors<'a>(
    name: &str,
    expected: [usize; 2],
    get: impl Fn(&str) -> Option<RawView<'a>>,
) -> Result<Option<QuantizedTensor>, QuantError> {
    let Some((state_name, state_view)) = ["nf4", "fp4"].iter().find_map(|t| {
        let key = format!("{name}.quant_state.bitsandbytes__{t}");
        get(&key).map(|v| (key, v))
    }) else {
        return Ok(None);
    };
    let invalid = |msg: String| QuantError::Invalid(format!("{name}: {msg}"));
    let state: QuantStateJson = serde_json::from_slice(state_view.2)
        .map_err(|e| invalid(format!("{state_name} is not valid JSON: {e}")))?;
    let dtype = QuantDtype::parse(&state.quant_type)?;
    if state.shape != expected {
        return Err(invalid(format!(
            "quantized shape {:?}, expected {expected:?}",
            state.shape
        )));
    }
    let n = expected[0] * expected[1];
    let block = state.blocksize;
    if block == 0 || !block.is_multiple_of(2) {
        return Err(invalid(format!(
            "block size {block} is not a positive even number"
        )));
    }
    let need = |key: &str| get(key).ok_or_else(|| invalid(format!("missing tensor {key}")));
    let packed = need(name)?;
    if packed.0 != Dtype::U8 || packed.2.len() != n.div_ceil(2) {
        return Err(invalid(format!(
            "packed weight: {:?} with {} bytes, expected uint8 with {}",
            packed.0,
            packed.2.len(),
            n.div_ceil(2)
        )));
    }
    let map = f32_values(
        &format!("{name}.quant_map"),
        &need(&format!("{name}.quant_map"))?,
    )?;
    if map
        .iter()
        .map(|v| v.to_bits())
        .ne(dtype.code_values().iter().map(|v| v.to_bits()))
    {
        return Err(invalid(format!(
            "quant_map is not bitsandbytes' {dtype} table (custom code books are not supported)"
        )));
    }
    let blocks = n.div_ceil(block);
    let absmax_view = need(&format!("{name}.absmax"))?;
    let scales = match state.nested_offset {
        None => {
            let absmax = f32_values(&format!("{name}.absmax"), &absmax_view)?;
            if absmax.len() != blocks {
                return Err(invalid(format!(
                    "{} absmax values for {blocks} blocks",
                    absmax.len()
                )));
            }
            BlockScales::Plain(absmax)
        }
        Some(offset) => {
            if state.nested_blocksize != Some(NESTED_BLOCK) {
                return Err(invalid(format!(
                    "nested block size {:?}, expected {NESTED_BLOCK}",
                    state.nested_blocksize
                )));
            }
            if absmax_view.0 != Dtype::U8 || absmax_view.2.len() != blocks {
                return Err(invalid(format!(
                    "absmax codes: {:?} with {} values, expected uint8 with {blocks}",
                    absmax_view.0,
                    absmax_view.2.len()
                )));
            }
            let nested_absmax = f32_values(
                &format!("{name}.nested_absmax"),
                &need(&format!("{name}.nested_absmax"))?,
            )?;
            if nested_absmax.len() != blocks.div_ceil(NESTED_BLOCK) {
                return Err(invalid(format!(
                    "{} nested absmax values for {blocks} blocks",
                    nested_absmax.len()
                )));
            }
            let nested_map = f32_values(
                &format!("{name}.nested_quant_map"),
                &need(&format!("{name}.nested_quant_map"))?,
            )?;
            if nested_map.len() != 256 {
                return Err(invalid(format!(
                    "nested_quant_map has {} values, expected 256",
                    nested_map.len()
                )));
            }
            BlockScales::Double {
                codes: absmax_view.2.to_vec(),
                nested_absmax,
                offset,
                nested_map,
            }
        }
    };
    Ok(Some(QuantizedTensor {
        dtype,
        block,
        shape: expected.to_vec(),
        data: packed.2.to_vec(),
        scales,
        device_copy: Default::default(),
    }))
}

/// The `quantization_config` transformers writes into config.json for such a checkpoint.
pub(crate) fn quantization_config(dtype: QuantDtype, double: bool) -> serde_json::Value {
    serde_json::json!({
        "quant_method": "bitsandbytes",
        "load_in_4bit": true,
        "load_in_8bit": false,
        "bnb_4bit_quant_type": dtype.name(),
        "bnb_4bit_use_double_quant": double,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_storage": "uint8",
        "llm_int8_enable_fp32_cpu_offload": false,
        "llm_int8_has_fp16_weight": false,
        "llm_int8_skip_modules": null,
        "llm_int8_threshold": 6.0,
    })
}
