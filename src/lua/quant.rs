//! Quantization from Lua: `model:quantize{...}`, `model:dequantize()`, `model:quantization()`,
//! and the memory estimate `runner.mem{...}`.

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table, UserDataMethods, Value};

use super::model::LuaModel;
use super::options::Opts;
use crate::footprint::{self, RunShape, Training, WeightStorage};
use crate::model::quantize::{dequantize_model, model_quant_config, quantize_model};
use crate::quant::{QuantConfig, QuantDtype};

/// The options of `model:quantize{...}` and of `runner.model.load(name, {quantize = {...}})`.
pub(crate) const QUANT_OPTIONS: &[&str] = &["dtype", "block", "double"];

/// `{dtype = "nf4", block = 64, double = true}` (those are the defaults).
/// Options left out take `QuantConfig::default()` (NF4, block 64, double quantization).
pub(crate) fn quant_config(o: &Opts) -> mlua::Result<QuantConfig> {
    let d = QuantConfig::default();
    let dtype = match o.string("dtype")? {
        Some(s) => QuantDtype::parse(&s).map_err(|e| o.err(e))?,
        None => d.dtype,
    };
    let block = match o.int("block")? {
        Some(b) if b <= 0 => {
            return Err(o.err(format!(
                "bad quantization block: block size must be positive, got {b}"
            )));
        }
        Some(b) => b as usize,
        None => d.block,
    };
    Ok(QuantConfig {
        dtype,
        block,
        double: o.bool("double")?.unwrap_or(d.double),
    })
}

pub(crate) fn add_methods<B: AutodiffBackend, M: UserDataMethods<LuaModel<B>>>(methods: &mut M) {
    // model:quantize{dtype = "nf4", block = 64, double = true} -> {quantized_params, bytes, bytes_per_param, dense_bytes}
    methods.add_method("quantize", |lua, this, opts: Option<Table>| {
        let o = Opts::new(lua, "model:quantize", opts, QUANT_OPTIONS)?;
        let config = quant_config(&o)?;
        let s = quantize_model(&mut this.model.borrow_mut(), config).map_err(|e| o.err(e))?;
        let t = lua.create_table()?;
        t.set("quantized_params", s.quantized_params)?;
        t.set("bytes", s.quantized_bytes)?;
        t.set("dense_bytes", s.dense_bytes)?;
        t.set("bytes_per_param", s.bytes_per_param())?;
        Ok(t)
    });
    methods.add_method("dequantize", |_, this, ()| {
        dequantize_model(&mut this.model.borrow_mut());
        Ok(())
    });
    // model:quantization() -> {dtype, block, double} or nil
    methods.add_method("quantization", |lua, this, ()| {
        match model_quant_config(&this.model.borrow()) {
            None => Ok(Value::Nil),
            Some(q) => {
                let t = lua.create_table()?;
                t.set("dtype", q.dtype.name())?;
                t.set("block", q.block)?;
                t.set("double", q.double)?;
                Ok(Value::Table(t))
            }
        }
    });
}

pub(crate) fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    // runner.mem{model = m or "smollm2-135m", method = "lora", rank = 8, targets = {...} | "all-linear",
    //            dtype = "nf4", block = 64, double = true, batch = 4, seq = 256} -> MB by component
    let mem = lua.create_function(|lua, opts: Table| {
        let o = Opts::new(
            lua,
            "runner.mem",
            Some(opts),
            &[
                "model", "method", "rank", "targets", "dtype", "block", "double", "batch", "seq",
            ],
        )?;
        let model = o.raw("model")?;
        let (config, model_quant) = match &model {
            Value::UserData(ud) => match ud.borrow::<LuaModel<B>>() {
                Ok(m) => {
                    let m = m.model.borrow();
                    (m.config.clone(), model_quant_config(&m))
                }
                Err(_) => return Err(o.err("model must be a model object or a model name/path")),
            },
            Value::String(s) => (
                footprint::model_shape(&s.to_string_lossy())
                    .map_err(|e| o.err(e))?
                    .1,
                None,
            ),
            _ => {
                return Err(o.err(
                    "model is required: a model object or a name/path such as \"smollm2-135m\"",
                ));
            }
        };
        let targets = o
            .strings("targets")?
            .unwrap_or_else(|| vec!["q_proj".to_string(), "v_proj".to_string()]);
        let method = o.string("method")?.unwrap_or_else(|| "lora".into());
        let training = Training::parse(&method, o.count("rank", 1)?.unwrap_or(8), &targets)
            .map_err(|e| o.err(e))?;
        let precision = match (o.string("dtype")?, model_quant) {
            (Some(d), _) => WeightStorage::parse(
                &d,
                o.count("block", 1)?.unwrap_or(64),
                o.bool("double")?.unwrap_or(true),
            )
            .map_err(|e| o.err(e))?,
            (None, Some(q)) => WeightStorage::Quant(q),
            (None, None) => WeightStorage::F32,
        };
        let run = RunShape {
            config,
            training,
            precision,
            batch: o.count("batch", 1)?.unwrap_or(4),
            seq: o.count("seq", 1)?.unwrap_or(256),
        };
        run.validate().map_err(|e| o.err(e))?;
        let f = footprint::estimate(&run);
        let mb = |b: u64| b as f64 / (1u64 << 20) as f64;
        let t = lua.create_table()?;
        for (name, bytes) in f.components() {
            t.set(format!("{name}_mb"), mb(bytes))?;
        }
        t.set("params", f.params)?;
        t.set("trainable", f.trainable)?;
        Ok(t)
    })?;
    runner.set("mem", mem)
}
