//! `runner.optim` and `runner.trainer`.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::data::{LuaBatch, LuaDataset, batch_options};
use super::model::{LuaModel, default_seed};
use super::options::{Opts, describe, nonfinite_error, recipe_error, runtime_error};
use super::sweep::SweepHost;
use crate::data::batch::Batches;
use crate::data::tokenizer::Tokenizer;
use crate::data::{Batch, Example};
use crate::kernels::precision::Precision;
use crate::memory::release_autodiff_graph;
use crate::model::Llama;
use crate::progress::ProgressSlot;
use crate::train::checkpoint;
use crate::train::optim::default_no_decay;
use crate::train::trainer::evaluate_with;
use crate::train::{
    AdamWConfig, Schedule, ScheduleKind, StepReport, TrainError, TrainOptions, Trainer,
};

pub(crate) struct LuaAdamW(pub AdamWConfig);
impl UserData for LuaAdamW {}

pub(crate) struct LuaTrainer<B: AutodiffBackend> {
    model: Rc<RefCell<Llama<B>>>,
    tokenizer: Tokenizer,
    trainer: Trainer<B>,
}

pub(crate) fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let optim = lua.create_table()?;
    optim.set(
        "adamw",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.optim.adamw",
                opts,
                &["lr", "betas", "eps", "weight_decay", "offload", "no_decay"],
            )?;
            let d = AdamWConfig::default();
            let (beta1, beta2) = match o.table("betas")? {
                None => (d.beta1, d.beta2),
                Some(t) => {
                    let pair: Vec<f64> = t
                        .sequence_values::<f64>()
                        .collect::<mlua::Result<_>>()
                        .map_err(|_| o.err("betas must be two numbers, e.g. {0.9, 0.999}"))?;
                    match pair[..] {
                        [b1, b2] => (b1, b2),
                        _ => {
                            return Err(
                                o.err(format!("betas must be two numbers, found {}", pair.len()))
                            );
                        }
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
                no_decay: o.strings("no_decay")?.unwrap_or_else(default_no_decay),
            };
            config.validate().map_err(|e| o.err(e))?;
            Ok(LuaAdamW(config))
        })?,
    )?;
    runner.set("optim", optim)?;
    runner.set(
        "trainer",
        lua.create_function(|lua, opts: Table| {
            let o = Opts::new(lua, "runner.trainer", Some(opts), TRAINER_KEYS)?;
            let (model, tokenizer, trainer) = trainer_from_opts::<B>(lua, &o)?;
            Ok(LuaTrainer {
                model,
                tokenizer,
                trainer,
            })
        })?,
    )
}

/// The options every trainer takes (`runner.trainer`, `runner.dpo`, `runner.reward_trainer`).
pub(crate) const TRAINER_KEYS: &[&str] = &[
    "model",
    "optim",
    "schedule",
    "warmup",
    "total_steps",
    "seed",
    "accumulate",
    "max_grad_norm",
    "max_nonfinite",
    "checkpointing",
    "precision",
];

/// The model (shared with the recipe's model object), its tokenizer and a trainer.
pub(crate) type TrainerParts<B> = (Rc<RefCell<Llama<B>>>, Tokenizer, Trainer<B>);

/// The model (shared with the recipe's model object), its tokenizer and a trainer built from
/// the [`TRAINER_KEYS`] options of `o`.
pub(crate) fn trainer_from_opts<B: AutodiffBackend>(
    lua: &Lua,
    o: &Opts,
) -> mlua::Result<TrainerParts<B>> {
    let (model, tokenizer) = match o.raw("model")? {
        Value::UserData(ud) => ud
            .borrow::<LuaModel<B>>()
            .map(|m| (m.model.clone(), m.tokenizer.clone()))
            .map_err(|_| o.err("model must be a model (runner.model.*)"))?,
        other => {
            return Err(o.err(format!(
                "model must be a model (runner.model.*), found {}",
                describe(&other)
            )));
        }
    };
    let optim = match o.raw("optim")? {
        Value::Nil => AdamWConfig::default(),
        Value::UserData(ud) => ud
            .borrow::<LuaAdamW>()
            .map(|a| a.0.clone())
            .map_err(|_| o.err("optim must be runner.optim.adamw{...}"))?,
        other => {
            return Err(o.err(format!(
                "optim must be runner.optim.adamw{{...}}, found {}",
                describe(&other)
            )));
        }
    };
    let kind = match o.string("schedule")?.as_deref() {
        None | Some("constant") => ScheduleKind::Constant,
        Some("linear") => ScheduleKind::Linear,
        Some("cosine") => ScheduleKind::Cosine,
        Some(other) => {
            return Err(o.err(format!(
                "unknown schedule '{other}' (expected constant, linear or cosine)"
            )));
        }
    };
    let schedule = Schedule {
        kind,
        warmup: o.count("warmup", 0)?.unwrap_or(0),
        total: o.count("total_steps", 1)?,
    };
    let seed = match o.int("seed")? {
        Some(s) => s as u64,
        None => default_seed(lua)?,
    };
    let d = TrainOptions::default();
    let options = TrainOptions {
        accumulate: o.count("accumulate", 1)?.unwrap_or(d.accumulate),
        max_grad_norm: o.num("max_grad_norm")?,
        max_nonfinite: o.count("max_nonfinite", 1)?.unwrap_or(d.max_nonfinite),
        checkpointing: o.bool("checkpointing")?.unwrap_or(d.checkpointing),
        precision: match o.string("precision")? {
            Some(p) => Precision::parse(&p).map_err(|e| o.err(e))?,
            None => d.precision,
        },
    };
    options
        .precision
        .check::<B>(&model.borrow().device)
        .map_err(|e| o.err(e))?;
    let trainer = Trainer::with_options(optim, schedule, options, seed).map_err(|e| o.err(e))?;
    Ok((model, tokenizer, trainer))
}

pub(crate) fn train_error(lua: &Lua, what: &str, e: TrainError) -> mlua::Error {
    match e {
        // Numerical trouble fails the trial; everything else is a recipe mistake.
        TrainError::NonFiniteLimit { .. } => nonfinite_error(lua, format!("{what}: {e}")),
        _ => recipe_error(lua, format!("{what}: {e}")),
    }
}

impl<B: AutodiffBackend> UserData for LuaTrainer<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // Returns the loss and a table {loss, grad_norm, lr, tokens, target_tokens, skipped}.
        methods.add_method_mut("step", |lua, this, batch: Value| {
            let batch = as_batch(lua, "trainer:step", &batch, &this.tokenizer)?;
            super::host::dry_run_stop(lua, &this.model.borrow(), batch.batch, batch.seq, true)?;
            let mut model = this.model.borrow_mut();
            let report = this.trainer.step(&mut model, &batch).map_err(|e| train_error(lua, "trainer:step", e))?;
            if let Some(mut slot) = lua.app_data_mut::<ProgressSlot>() {
                match (report.skipped, report.loss_scale) {
                    (true, Some(scale)) if report.loss.is_finite() && this.trainer.progress.consecutive_nonfinite == 0 => {
                        slot.println(&format!("  note: step skipped: f16 gradients overflowed; loss scale lowered to {scale}"))
                    }
                    (true, _) => slot.println(&format!("  warning: step skipped: non-finite loss or gradient (loss {}); {} in a row", report.loss, this.trainer.progress.consecutive_nonfinite)),
                    _ => {}
                }
                let step = slot.step;
                if let Some(p) = slot.current.as_mut() {
                    p.record(report.loss, report.tokens);
                    p.advance(step);
                }
            }
            let info = step_table(lua, &report)?;
            Ok((report.loss, info))
        });
        add_checkpoint_methods(methods);
        methods.add_method("batches_seen", |_, this, ()| {
            Ok(this.trainer.progress.batches)
        });
        methods.add_method("skipped", |_, this, ()| Ok(this.trainer.progress.skipped));
        // Returns the mean loss, and a table {loss, perplexity, tokens}.
        methods.add_method(
            "evaluate",
            |lua, this, (data, opts): (Value, Option<Table>)| {
                let model = this.model.borrow();
                super::host::dry_run_stop(lua, &model, 1, 256, false)?;
                let result = match &data {
                    Value::UserData(ud) if ud.is::<LuaDataset>() => {
                        let ds = ud.borrow::<LuaDataset>()?.0.clone();
                        let opts = batch_options(lua, "trainer:evaluate", opts, false)?;
                        let max_len = opts.max_len;
                        let examples = ds
                            .example_source()
                            .map_err(|e| recipe_error(lua, format!("trainer:evaluate: {e}")))?;
                        let mut batches = Vec::new();
                        for group in Batches::new(
                            examples,
                            crate::data::BatchOptions {
                                steps: None,
                                ..opts
                            },
                        ) {
                            let group = group
                                .map_err(|e| recipe_error(lua, format!("trainer:evaluate: {e}")))?;
                            let refs: Vec<&Example> = group.iter().collect();
                            batches.push(Batch::collate(&refs, max_len, &this.tokenizer).map_err(
                                |e| recipe_error(lua, format!("trainer:evaluate: {e}")),
                            )?);
                        }
                        evaluate_with(&model, batches, || {
                            release_autodiff_graph::<B>(&model.device)
                        })
                    }
                    Value::Table(list) => {
                        let mut batches = Vec::new();
                        for v in list.sequence_values::<Value>() {
                            batches.push(as_batch(lua, "trainer:evaluate", &v?, &this.tokenizer)?);
                        }
                        evaluate_with(&model, batches, || {
                            release_autodiff_graph::<B>(&model.device)
                        })
                    }
                    other => {
                        return Err(recipe_error(
                            lua,
                            format!(
                                "trainer:evaluate expects a dataset or a list of batches, found {}",
                                describe(other)
                            ),
                        ));
                    }
                }
                .map_err(|e| train_error(lua, "trainer:evaluate", e))?;
                let t = lua.create_table()?;
                t.set("loss", result.loss)?;
                t.set("perplexity", result.perplexity)?;
                t.set("tokens", result.tokens)?;
                t.set("accuracy", result.accuracy)?;
                Ok((result.loss, t))
            },
        );
        methods.add_method("steps", |_, this, ()| Ok(this.trainer.steps()));
        methods.add_method("lr", |_, this, ()| Ok(this.trainer.lr()));
    }
}

pub(crate) fn step_table(lua: &Lua, r: &StepReport) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("loss", r.loss)?;
    t.set("grad_norm", r.grad_norm)?;
    t.set("lr", r.lr)?;
    t.set("tokens", r.tokens)?;
    t.set("target_tokens", r.target_tokens)?;
    t.set("skipped", r.skipped)?;
    if let Some(scale) = r.loss_scale {
        t.set("loss_scale", scale)?;
    }
    Ok(t)
}

fn recipe_hash(lua: &Lua) -> Option<String> {
    lua.app_data_ref::<SweepHost>()
        .map(|h| h.recipe_hash.clone())
}

/// A recipe object that owns a [`Trainer`] over a shared model: it gets `:save`, `:load` and
/// `:resume` for checkpoints.
pub(crate) trait WithTrainer<B: AutodiffBackend> {
    fn model(&self) -> &Rc<RefCell<Llama<B>>>;
    fn trainer(&self) -> &Trainer<B>;
    fn trainer_mut(&mut self) -> &mut Trainer<B>;
}

impl<B: AutodiffBackend> WithTrainer<B> for LuaTrainer<B> {
    fn model(&self) -> &Rc<RefCell<Llama<B>>> {
        &self.model
    }
    fn trainer(&self) -> &Trainer<B> {
        &self.trainer
    }
    fn trainer_mut(&mut self) -> &mut Trainer<B> {
        &mut self.trainer
    }
}

pub(crate) fn add_checkpoint_methods<B, T, M>(methods: &mut M)
where
    B: AutodiffBackend,
    T: WithTrainer<B> + UserData + 'static,
    M: UserDataMethods<T>,
{
    // trainer:save(dir, {keep = 2}) -> the checkpoint's folder.
    methods.add_method("save", |lua, this, (dir, opts): (String, Option<Table>)| {
        let o = Opts::new(lua, "trainer:save", opts, &["keep"])?;
        let keep = o.count("keep", 1)?.unwrap_or(2);
        let dir = super::host::write_path(lua, "trainer:save", &dir)?;
        let hash = recipe_hash(lua);
        let mut model = this.model().borrow_mut();
        let path = checkpoint::save(&dir, this.trainer(), &mut model, hash.as_deref(), keep)
            .map_err(|e| runtime_error(lua, format!("trainer:save: {e}")))?;
        Ok(path.to_string_lossy().into_owned())
    });
    // trainer:load(dir) -> the step it resumes from; an error when there is no checkpoint.
    methods.add_method_mut("load", |lua, this, dir: String| {
        load_checkpoint(lua, this, &dir, false)
    });
    // trainer:resume(dir) -> like load, but starts from step 0 when dir has no checkpoint yet.
    methods.add_method_mut("resume", |lua, this, dir: String| {
        load_checkpoint(lua, this, &dir, true)
    });
}

fn load_checkpoint<B: AutodiffBackend, T: WithTrainer<B>>(
    lua: &Lua,
    this: &mut T,
    dir: &str,
    optional: bool,
) -> mlua::Result<usize> {
    let what = if optional {
        "trainer:resume"
    } else {
        "trainer:load"
    };
    let root = std::path::Path::new(dir);
    if optional && checkpoint::find(root).is_none() {
        return Ok(0);
    }
    let hash = recipe_hash(lua);
    let model = this.model().clone();
    let mut model = model.borrow_mut();
    let report = checkpoint::load(root, this.trainer_mut(), &mut model, hash.as_deref()).map_err(
        |e| match e {
            checkpoint::CheckpointError::Mismatch { .. }
            | checkpoint::CheckpointError::NotFound(_) => recipe_error(lua, format!("{what}: {e}")),
            _ => runtime_error(lua, format!("{what}: {e}")),
        },
    )?;
    for w in &report.warnings {
        eprintln!("  warning: {what}: {}: {w}", report.path.display());
    }
    eprintln!(
        "  resumed from {} (step {}, {} batches seen)",
        report.path.display(),
        report.state.progress.step,
        report.state.progress.batches
    );
    let step = this.trainer().steps();
    // The trial's rows up to this step, from an earlier attempt, stay in steps.csv.
    let log = lua
        .app_data_ref::<super::sweep::SweepHost>()
        .and_then(|h| h.current.clone());
    if let Some(log) = log {
        log.resumed_from(step)
            .map_err(|e| runtime_error(lua, format!("{what}: writing steps.csv: {e}")))?;
    }
    Ok(step)
}

/// Tokenizes a batch's examples with the model's tokenizer.
fn as_batch(lua: &Lua, what: &str, v: &Value, tokenizer: &Tokenizer) -> mlua::Result<Batch> {
    match v {
        Value::UserData(ud) => {
            let b = ud
                .borrow::<LuaBatch>()
                .map_err(|_| recipe_error(lua, format!("{what} expects a batch")))?;
            b.to_batch(tokenizer)
                .map_err(|e| recipe_error(lua, format!("{what}: {e}")))
        }
        other => Err(recipe_error(
            lua,
            format!(
                "{what} expects a batch (from dataset:batches), found {}",
                describe(other)
            ),
        )),
    }
}
