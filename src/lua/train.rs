//! `runner.optim` and `runner.trainer`.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::data::{batch_options, LuaBatch, LuaDataset};
use super::model::{default_seed, LuaModel};
use super::options::{describe, recipe_error, runtime_error, Opts};
use crate::data::batch::Batches;
use crate::data::{Batch, Example};
use crate::tokenizer::Tokenizer;
use crate::model::Llama;
use crate::train::{evaluate, AdamWConfig, Schedule, ScheduleKind, TrainError, Trainer};

pub struct LuaAdamW(pub AdamWConfig);
impl UserData for LuaAdamW {}

pub struct LuaTrainer<B: AutodiffBackend> {
    model: Rc<RefCell<Llama<B>>>,
    tokenizer: Tokenizer,
    trainer: Trainer<B>,
}

pub fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let optim = lua.create_table()?;
    optim.set(
        "adamw",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(lua, "runner.optim.adamw", opts, &["lr", "betas", "eps", "weight_decay", "offload"])?;
            let d = AdamWConfig::default();
            let (beta1, beta2) = match o.table("betas")? {
                None => (d.beta1, d.beta2),
                Some(t) => {
                    let pair: Vec<f64> = t.sequence_values::<f64>().collect::<mlua::Result<_>>().map_err(|_| o.err("betas must be two numbers, e.g. {0.9, 0.999}"))?;
                    match pair[..] {
                        [b1, b2] => (b1, b2),
                        _ => return Err(o.err(format!("betas must be two numbers, found {}", pair.len()))),
                    }
                }
            };
            let config = AdamWConfig {
                lr: o.num("lr")?.unwrap_or(d.lr),
                beta1,
                beta2,
                eps: o.num("eps")?.unwrap_or(d.eps),
                weight_decay: o.num("weight_decay")?.unwrap_or(d.weight_decay),
                offload: o.bool("offload")?.unwrap_or(d.offload),
            };
            config.validate().map_err(|e| o.err(e))?;
            Ok(LuaAdamW(config))
        })?,
    )?;
    runner.set("optim", optim)?;
    runner.set(
        "trainer",
        lua.create_function(|lua, opts: Table| {
            let o = Opts::new(lua, "runner.trainer", Some(opts), &["model", "optim", "schedule", "warmup", "total_steps", "seed"])?;
            let (model, tokenizer) = match o.raw("model")? {
                Value::UserData(ud) => ud
                    .borrow::<LuaModel<B>>()
                    .map(|m| (m.model.clone(), m.tokenizer.clone()))
                    .map_err(|_| o.err("model must be a model (runner.model.*)"))?,
                other => return Err(o.err(format!("model must be a model (runner.model.*), found {}", describe(&other)))),
            };
            let optim = match o.raw("optim")? {
                Value::Nil => AdamWConfig::default(),
                Value::UserData(ud) => ud.borrow::<LuaAdamW>().map(|a| a.0.clone()).map_err(|_| o.err("optim must be runner.optim.adamw{...}"))?,
                other => return Err(o.err(format!("optim must be runner.optim.adamw{{...}}, found {}", describe(&other)))),
            };
            let kind = match o.string("schedule")?.as_deref() {
                None | Some("constant") => ScheduleKind::Constant,
                Some("linear") => ScheduleKind::Linear,
                Some("cosine") => ScheduleKind::Cosine,
                Some(other) => return Err(o.err(format!("unknown schedule '{other}' (expected constant, linear or cosine)"))),
            };
            let schedule = Schedule { kind, warmup: o.count("warmup", 0)?.unwrap_or(0), total: o.count("total_steps", 1)? };
            let seed = match o.int("seed")? {
                Some(s) => s as u64,
                None => default_seed(lua)?,
            };
            let trainer = Trainer::new(optim, schedule, seed).map_err(|e| o.err(e))?;
            Ok(LuaTrainer { model, tokenizer, trainer })
        })?,
    )
}

fn train_error(lua: &Lua, what: &str, e: TrainError) -> mlua::Error {
    match e {
        // Numerical trouble fails the trial; everything else is a recipe mistake.
        TrainError::NonFinite { .. } => runtime_error(lua, format!("{what}: {e}")),
        _ => recipe_error(lua, format!("{what}: {e}")),
    }
}

impl<B: AutodiffBackend> UserData for LuaTrainer<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("step", |lua, this, batch: Value| {
            let batch = as_batch(lua, "trainer:step", &batch, &this.tokenizer)?;
            let mut model = this.model.borrow_mut();
            this.trainer.step(&mut model, &batch).map_err(|e| train_error(lua, "trainer:step", e))
        });
        // Returns the mean loss, and a table {loss, perplexity, tokens}.
        methods.add_method("evaluate", |lua, this, (data, opts): (Value, Option<Table>)| {
            let model = this.model.borrow();
            let result = match &data {
                Value::UserData(ud) if ud.is::<LuaDataset>() => {
                    let ds = ud.borrow::<LuaDataset>()?.0.clone();
                    let opts = batch_options(lua, "trainer:evaluate", opts, false)?;
                    let max_len = opts.max_len;
                    let mut batches = Vec::new();
                    for group in Batches::new(ds, crate::data::BatchOptions { steps: None, ..opts }) {
                        let refs: Vec<&Example> = group.iter().collect();
                        batches.push(Batch::collate(&refs, max_len, &this.tokenizer).map_err(|e| recipe_error(lua, format!("trainer:evaluate: {e}")))?);
                    }
                    evaluate(&model, batches)
                }
                Value::Table(list) => {
                    let mut batches = Vec::new();
                    for v in list.sequence_values::<Value>() {
                        batches.push(as_batch(lua, "trainer:evaluate", &v?, &this.tokenizer)?);
                    }
                    evaluate(&model, batches)
                }
                other => {
                    return Err(recipe_error(lua, format!("trainer:evaluate expects a dataset or a list of batches, found {}", describe(other))));
                }
            }
            .map_err(|e| train_error(lua, "trainer:evaluate", e))?;
            let t = lua.create_table()?;
            t.set("loss", result.loss)?;
            t.set("perplexity", result.perplexity)?;
            t.set("tokens", result.tokens)?;
            Ok((result.loss, t))
        });
        methods.add_method("steps", |_, this, ()| Ok(this.trainer.step));
        methods.add_method("lr", |_, this, ()| Ok(this.trainer.lr()));
    }
}

/// Tokenizes a batch's examples with the model's tokenizer.
fn as_batch(lua: &Lua, what: &str, v: &Value, tokenizer: &Tokenizer) -> mlua::Result<Batch> {
    match v {
        Value::UserData(ud) => {
            let b = ud.borrow::<LuaBatch>().map_err(|_| recipe_error(lua, format!("{what} expects a batch")))?;
            let refs: Vec<&Example> = b.examples.iter().collect();
            Batch::collate(&refs, b.max_len, tokenizer).map_err(|e| recipe_error(lua, format!("{what}: {e}")))
        }
        other => Err(recipe_error(lua, format!("{what} expects a batch (from dataset:batches), found {}", describe(other)))),
    }
}
