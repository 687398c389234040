//! `runner.data.pairs`, `runner.dpo`, `runner.reward_trainer`, and the reward-model methods of
//! a model object (`model:add_score_head`, `model:reward`).

use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use burn::tensor::backend::AutodiffBackend;
use mlua::{IntoLuaMulti, Lua, MetaMethod, Table, UserData, UserDataMethods, Value};

use super::model::{LuaModel, default_seed};
use super::options::{Opts, describe, recipe_error, runtime_error};
use super::train::{
    TRAINER_KEYS, WithTrainer, add_checkpoint_methods, step_table, train_error, trainer_from_opts,
};
use crate::data::DataError;
use crate::data::batch::{BatchOptions, BatchOrder};
use crate::data::pairs::{PairBatch, PairOptions, PairSet, PreferencePair, TruncationMode};
use crate::data::row::ReadOptions;
use crate::data::tokenizer::Tokenizer;
use crate::model::Llama;
use crate::progress::{Progress, ProgressSlot};
use crate::train::dpo::{DpoConfig, DpoLoss, DpoMetrics, DpoTrainer};
use crate::train::reward::{RewardConfig, RewardMetrics, RewardTrainer, pair_rewards};
use crate::train::{StepReport, TrainError, Trainer};

/// Preference pairs (`runner.data.pairs`).
#[derive(Clone)]
pub(crate) struct LuaPairs(pub PairSet);

/// One batch of pairs, tokenized by the trainer that takes it.
pub(crate) struct LuaPairChunk(Vec<PreferencePair>);

pub(crate) fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let data: Table = runner.get("data")?;
    // runner.data.pairs(path | {paths} | {rows}, {skip_malformed = false})
    data.set(
        "pairs",
        lua.create_function(|lua, (src, opts): (Value, Option<Table>)| {
            let o = Opts::new(lua, "runner.data.pairs", opts, &["skip_malformed"])?;
            let read = ReadOptions {
                skip_malformed: o.bool("skip_malformed")?.unwrap_or(false),
            };
            let data_error =
                |e: DataError| recipe_error(lua, format!("runner.data.pairs: {e}"));
            let read_file = |path: &mlua::String| {
                let path = path.to_string_lossy();
                super::host::note_input(lua, Path::new(&path))?;
                PairSet::read_jsonl(Path::new(&path), read).map_err(data_error)
            };
            let set = match &src {
                Value::String(path) => read_file(path)?,
                // A list of paths: the files' pairs joined in order.
                Value::Table(list) if matches!(list.raw_get(1)?, Value::String(_)) => {
                    let mut sets = Vec::new();
                    for (i, v) in list.sequence_values::<Value>().enumerate() {
                        let Value::String(path) = v? else {
                            return Err(o.err(format!(
                                "entry {} of the list of paths is not a path",
                                i + 1
                            )));
                        };
                        sets.push(read_file(&path)?);
                    }
                    PairSet::concat(sets).map_err(data_error)?
                }
                Value::Table(list) => {
                    let mut rows = Vec::new();
                    for (i, v) in list.sequence_values::<Value>().enumerate() {
                        rows.push(super::data::row_from_lua(lua, "runner.data.pairs", i + 1, v?)?);
                    }
                    PairSet::from_rows(&rows, "runner.data.pairs").map_err(data_error)?
                }
                other => {
                    return Err(o.err(format!(
                        "expects a JSONL path, a list of paths or a list of {{prompt, chosen, rejected}} rows, found {}",
                        describe(other)
                    )));
                }
            };
            Ok(LuaPairs(set))
        })?,
    )?;
    Ok(())
}

impl UserData for LuaPairs {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("len", |_, this, ()| Ok(this.0.pairs.len()));
        methods.add_meta_method(MetaMethod::Len, |_, this, ()| Ok(this.0.pairs.len()));
        methods.add_method("skipped", |_, this, ()| Ok(this.0.skipped));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!(
                "Pairs({} from {})",
                this.0.pairs.len(),
                this.0.source
            ))
        });
        // `for step, batch in pairs:batches{size = 4, steps = 100} do ... end`
        methods.add_method("batches", |lua, this, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "pairs:batches",
                opts,
                &["size", "steps", "shuffle", "seed", "skip"],
            )?;
            let opts = BatchOptions {
                size: o.count("size", 1)?.unwrap_or(4),
                steps: o.count("steps", 1)?,
                shuffle: o.bool("shuffle")?.unwrap_or(true),
                seed: match o.int("seed")? {
                    Some(s) => s as u64,
                    None => default_seed(lua)?,
                },
                skip: o.count("skip", 0)?.unwrap_or(0),
                ..BatchOptions::default()
            };
            let total = opts
                .steps
                .unwrap_or_else(|| this.0.pairs.len().div_ceil(opts.size));
            let skip = opts.skip;
            let mut progress = Progress::start(Some(total));
            progress.advance(skip);
            lua.set_app_data(ProgressSlot {
                current: Some(progress),
                step: skip,
            });
            let pairs = this.0.pairs.clone();
            let order = RefCell::new((skip, BatchOrder::new(pairs.len(), Vec::new(), opts)));
            lua.create_function(move |lua, ()| {
                let mut state = order.borrow_mut();
                match state.1.next() {
                    Some(picked) => {
                        state.0 += 1;
                        if let Some(mut slot) = lua.app_data_mut::<ProgressSlot>() {
                            slot.step = state.0;
                        }
                        let chunk =
                            LuaPairChunk(picked.iter().map(|&i| pairs[i].clone()).collect());
                        (state.0, chunk).into_lua_multi(lua)
                    }
                    None => {
                        if let Some(mut slot) = lua.app_data_mut::<ProgressSlot>()
                            && let Some(mut p) = slot.current.take()
                        {
                            p.finish();
                        }
                        Ok(mlua::MultiValue::new())
                    }
                }
            })
        });
    }
}

impl UserData for LuaPairChunk {
    fn add_fields<F: mlua::UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("size", |_, this| Ok(this.0.len()));
    }
}

/// The keys of `runner.dpo` beyond the trainer's.
const DPO_KEYS: &[&str] = &[
    "ref",
    "ref_adapter",
    "beta",
    "loss",
    "loss_weights",
    "rpo_alpha",
    "label_smoothing",
    "precompute_ref_log_probs",
    "max_length",
    "max_prompt_length",
    "max_completion_length",
    "truncation_mode",
];

/// `loss` (one name, or a list as TRL 1.16 takes it: at most one preference loss and
/// optionally `"sft"`), `loss_weights` (one per name, default 1) and `rpo_alpha` (older TRL's
/// spelling of the sft weight): the preference loss, its weight, and the sft weight.
fn dpo_losses(o: &Opts) -> mlua::Result<(DpoLoss, f64, f64)> {
    let names = o.strings("loss")?.unwrap_or_else(|| vec!["sigmoid".into()]);
    if names.is_empty() {
        return Err(o.err("loss must name at least one loss"));
    }
    let weights = match o.raw("loss_weights")? {
        mlua::Value::Nil => vec![1.0; names.len()],
        mlua::Value::Table(t) => {
            let mut out = Vec::new();
            for v in t.sequence_values::<mlua::Value>() {
                let v = v?;
                out.push(
                    super::options::number(&v)
                        .filter(|w| w.is_finite())
                        .ok_or_else(|| o.err("loss_weights must be a list of finite numbers"))?,
                );
            }
            out
        }
        _ => return Err(o.err("loss_weights must be a list of numbers, one per loss")),
    };
    if weights.len() != names.len() {
        return Err(o.err(format!(
            "loss_weights has {} entries but loss names {}",
            weights.len(),
            names.len()
        )));
    }
    let (mut preference, mut sft) = (None, None);
    for (name, w) in names.iter().zip(weights) {
        if name == "sft" {
            if sft.replace(w).is_some() {
                return Err(o.err("loss names \"sft\" twice"));
            }
            continue;
        }
        let loss = DpoLoss::parse(name).ok_or_else(|| {
            let all: Vec<&str> = DpoLoss::NAMES.iter().copied().chain(["sft"]).collect();
            let hint = crate::util::closest(name, all.iter().copied())
                .map(|c| format!(" (did you mean \"{c}\"?)"))
                .unwrap_or_default();
            o.err(format!(
                "unknown loss \"{name}\"{hint}; expected one of {}",
                all.join(", ")
            ))
        })?;
        if preference.replace((loss, w)).is_some() {
            return Err(o.err(
                "loss may name one preference loss (sigmoid, ipo, hinge or robust), plus \"sft\"",
            ));
        }
    }
    if let Some(alpha) = o.num("rpo_alpha")? {
        if sft.is_some() {
            return Err(o.err("give the sft weight once: rpo_alpha, or \"sft\" in loss"));
        }
        sft = Some(alpha);
    }
    let (loss, loss_weight) = preference.unwrap_or((DpoLoss::Sigmoid, 0.0));
    Ok((loss, loss_weight, sft.unwrap_or(0.0)))
}

const REWARD_KEYS: &[&str] = &["center_rewards_coefficient", "max_length"];

fn keys(extra: &[&'static str]) -> Vec<&'static str> {
    TRAINER_KEYS.iter().chain(extra).copied().collect()
}

/// `max_length`, `max_prompt_length`, `max_completion_length` (a number, or `false` for no
/// limit) and `truncation_mode`, TRL's defaults otherwise.
fn pair_options(o: &Opts) -> mlua::Result<PairOptions> {
    let d = PairOptions::default();
    let limit = |key: &str, default: Option<usize>| -> mlua::Result<Option<usize>> {
        match o.raw(key)? {
            Value::Boolean(false) => Ok(None),
            Value::Nil => Ok(default),
            _ => o.count(key, 1),
        }
    };
    Ok(PairOptions {
        max_length: limit("max_length", d.max_length)?,
        max_prompt_length: limit("max_prompt_length", d.max_prompt_length)?,
        max_completion_length: limit("max_completion_length", d.max_completion_length)?,
        truncation_mode: match o.string("truncation_mode")?.as_deref() {
            None | Some("keep_start") => TruncationMode::KeepStart,
            Some("keep_end") => TruncationMode::KeepEnd,
            Some(other) => {
                return Err(o.err(format!(
                    "truncation_mode must be \"keep_start\" or \"keep_end\", got \"{other}\""
                )));
            }
        },
    })
}

/// A batch of pairs from a Lua value, tokenized and collated; `None` when every pair was
/// truncated away. Returns the number dropped too.
fn collate(
    lua: &Lua,
    what: &str,
    v: &Value,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
    drop_longer: Option<usize>,
) -> mlua::Result<(Option<PairBatch>, usize)> {
    let pairs = match v {
        Value::UserData(ud) => ud
            .borrow::<LuaPairChunk>()
            .map(|c| c.0.clone())
            .map_err(|_| recipe_error(lua, format!("{what} expects a batch of pairs")))?,
        other => {
            return Err(recipe_error(
                lua,
                format!(
                    "{what} expects a batch of pairs (from pairs:batches), found {}",
                    describe(other)
                ),
            ));
        }
    };
    let set = PairSet {
        pairs,
        source: what.to_string(),
        skipped: 0,
        parts: Vec::new(),
    };
    let mut tokenized = set
        .tokenize(tokenizer, opts)
        .map_err(|e| recipe_error(lua, format!("{what}: {e}")))?;
    let mut dropped = tokenized.truncated_away;
    if let Some(max) = drop_longer {
        dropped += tokenized.drop_longer(max);
    }
    if tokenized.pairs.is_empty() {
        return Ok((None, dropped));
    }
    let refs: Vec<_> = tokenized.pairs.iter().collect();
    Ok((Some(PairBatch::collate(&refs, opts)), dropped))
}

/// Every pair of a dataset as batches of `size`, in order.
fn eval_batches(
    lua: &Lua,
    what: &str,
    pairs: &PairSet,
    size: usize,
    tokenizer: &Tokenizer,
    opts: &PairOptions,
    drop_longer: Option<usize>,
) -> mlua::Result<(Vec<PairBatch>, usize)> {
    let mut tokenized = pairs
        .tokenize(tokenizer, opts)
        .map_err(|e| recipe_error(lua, format!("{what}: {e}")))?;
    let mut dropped = tokenized.truncated_away;
    if let Some(max) = drop_longer {
        dropped += tokenized.drop_longer(max);
    }
    let refs: Vec<_> = tokenized.pairs.iter().collect();
    Ok((
        refs.chunks(size.max(1))
            .map(|c| PairBatch::collate(c, opts))
            .collect(),
        dropped,
    ))
}

fn pairs_arg(lua: &Lua, what: &str, v: &Value) -> mlua::Result<PairSet> {
    match v {
        Value::UserData(ud) if ud.is::<LuaPairs>() => Ok(ud.borrow::<LuaPairs>()?.0.clone()),
        other => Err(recipe_error(
            lua,
            format!(
                "{what} expects pairs (runner.data.pairs), found {}",
                describe(other)
            ),
        )),
    }
}

fn note_dropped(lua: &Lua, what: &str, dropped: usize, why: &str) {
    if dropped == 0 {
        return;
    }
    let line = format!("  note: {what}: {dropped} pair(s) dropped ({why})");
    match lua.app_data_mut::<ProgressSlot>() {
        Some(slot) => slot.println(&line),
        None => eprintln!("{line}"),
    }
}

pub(crate) fn record_progress(lua: &Lua, report: &StepReport) {
    if let Some(mut slot) = lua.app_data_mut::<ProgressSlot>() {
        let step = slot.step;
        if let Some(p) = slot.current.as_mut() {
            p.record(report.loss, report.tokens);
            p.advance(step);
        }
    }
}

fn metrics_table(lua: &Lua, named: &[(&str, f64)]) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in named {
        t.set(*k, *v)?;
    }
    Ok(t)
}

pub(crate) struct LuaDpo<B: AutodiffBackend> {
    model: Rc<RefCell<Llama<B>>>,
    tokenizer: Tokenizer,
    dpo: DpoTrainer<B>,
    pair_opts: PairOptions,
}

impl<B: AutodiffBackend> WithTrainer<B> for LuaDpo<B> {
    fn model(&self) -> &Rc<RefCell<Llama<B>>> {
        &self.model
    }
    fn trainer(&self) -> &Trainer<B> {
        &self.dpo.trainer
    }
    fn trainer_mut(&mut self) -> &mut Trainer<B> {
        &mut self.dpo.trainer
    }
}

pub(crate) struct LuaReward<B: AutodiffBackend> {
    model: Rc<RefCell<Llama<B>>>,
    tokenizer: Tokenizer,
    reward: RewardTrainer<B>,
    max_length: Option<usize>,
}

impl<B: AutodiffBackend> WithTrainer<B> for LuaReward<B> {
    fn model(&self) -> &Rc<RefCell<Llama<B>>> {
        &self.model
    }
    fn trainer(&self) -> &Trainer<B> {
        &self.reward.trainer
    }
    fn trainer_mut(&mut self) -> &mut Trainer<B> {
        &mut self.reward.trainer
    }
}

/// A reward model's pairs are filtered by length, never truncated.
fn untruncated() -> PairOptions {
    PairOptions {
        max_prompt_length: None,
        max_completion_length: None,
        max_length: None,
        truncation_mode: TruncationMode::KeepStart,
    }
}

pub(crate) fn register_trainers<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    runner.set(
        "dpo",
        lua.create_function(|lua, opts: Table| {
            let allowed = keys(DPO_KEYS);
            let o = Opts::new(lua, "runner.dpo", Some(opts), &allowed)?;
            let (model, tokenizer, trainer) = trainer_from_opts::<B>(lua, &o)?;
            if trainer.options.checkpointing {
                return Err(
                    o.err("checkpointing (activation recomputation) is not supported by DPO yet")
                );
            }
            let d = DpoConfig::default();
            let (loss, loss_weight, sft_weight) = dpo_losses(&o)?;
            let config = DpoConfig {
                beta: o.num("beta")?.unwrap_or(d.beta),
                loss,
                label_smoothing: o.num("label_smoothing")?.unwrap_or(d.label_smoothing),
                loss_weight,
                sft_weight,
                cache_reference: o
                    .bool("precompute_ref_log_probs")?
                    .unwrap_or(d.cache_reference),
            };
            let reference = reference_opt(&o, &model)?;
            let pair_opts = pair_options(&o)?;
            let ref_adapter = o.string("ref_adapter")?;
            let dpo = DpoTrainer::with_reference(
                trainer,
                config,
                &model.borrow(),
                reference,
                ref_adapter.as_deref(),
            )
            .map_err(|e| o.err(e))?;
            Ok(LuaDpo {
                model,
                tokenizer,
                dpo,
                pair_opts,
            })
        })?,
    )?;
    runner.set(
        "reward_trainer",
        lua.create_function(|lua, opts: Table| {
            let allowed = keys(REWARD_KEYS);
            let o = Opts::new(lua, "runner.reward_trainer", Some(opts), &allowed)?;
            let (model, tokenizer, trainer) = trainer_from_opts::<B>(lua, &o)?;
            if trainer.options.checkpointing {
                return Err(o.err("checkpointing (activation recomputation) is not supported by the reward trainer yet"));
            }
            let config = RewardConfig {
                center_rewards_coefficient: o.num("center_rewards_coefficient")?,
            };
            let max_length = match o.raw("max_length")? {
                Value::Boolean(false) => None,
                Value::Nil => Some(1024),
                _ => o.count("max_length", 1)?,
            };
            let reward =
                RewardTrainer::new(trainer, config, &model.borrow()).map_err(|e| o.err(e))?;
            Ok(LuaReward {
                model,
                tokenizer,
                reward,
                max_length,
            })
        })?,
    )?;
    Ok(())
}

/// The `ref` option of the trainers that compare with a reference model: a model object
/// other than the policy, or nil.
pub(crate) fn reference_opt<B: AutodiffBackend>(
    o: &Opts,
    policy: &Rc<RefCell<Llama<B>>>,
) -> mlua::Result<Option<Llama<B>>> {
    match o.raw("ref")? {
        Value::Nil => Ok(None),
        Value::UserData(ud) => {
            let m = ud
                .borrow::<LuaModel<B>>()
                .map_err(|_| o.err("ref must be a model (runner.model.*)"))?;
            if Rc::ptr_eq(&m.model, policy) {
                return Err(o.err(
                    "ref is the policy itself; leave ref out to use the policy with adapters disabled",
                ));
            }
            let r = m.model.borrow().clone();
            Ok(Some(r))
        }
        other => Err(o.err(format!(
            "ref must be a model (runner.model.*), found {}",
            describe(&other)
        ))),
    }
}

fn eval_size(lua: &Lua, what: &'static str, opts: Option<Table>) -> mlua::Result<usize> {
    let o = Opts::new(lua, what, opts, &["size"])?;
    Ok(o.count("size", 1)?.unwrap_or(8))
}

/// Metrics by TRL's names, in TRL's order.
type Named = Vec<(&'static str, f64)>;

/// What `dpo` and `reward_trainer` objects share in Lua: `:step`, `:evaluate`, checkpoints
/// and counters; they differ in how pairs are cut and in what they compute.
trait PairTrainer<B: AutodiffBackend>: WithTrainer<B> + UserData + 'static {
    const STEP: &'static str;
    const EVALUATE: &'static str;
    /// Why a pair can be dropped while tokenizing, for the note.
    const DROPPED: &'static str;
    fn tokenizer(&self) -> &Tokenizer;
    fn pair_options(&self) -> PairOptions;
    fn drop_longer(&self) -> Option<usize>;
    /// The step's report and its metrics by TRL's names.
    fn run_step(
        &mut self,
        model: &mut Llama<B>,
        batch: &PairBatch,
    ) -> Result<(StepReport, Named), TrainError>;
    /// The value `:evaluate` returns first, the metrics, and the number of pairs.
    fn run_evaluate(
        &mut self,
        model: &Llama<B>,
        batches: Vec<PairBatch>,
    ) -> Result<(f64, Named, usize), TrainError>;
}

impl<B: AutodiffBackend> PairTrainer<B> for LuaDpo<B> {
    const STEP: &'static str = "dpo:step";
    const EVALUATE: &'static str = "dpo:evaluate";
    const DROPPED: &'static str = "a completion would be truncated to nothing";
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn pair_options(&self) -> PairOptions {
        self.pair_opts
    }
    fn drop_longer(&self) -> Option<usize> {
        None
    }
    fn run_step(
        &mut self,
        model: &mut Llama<B>,
        batch: &PairBatch,
    ) -> Result<(StepReport, Named), TrainError> {
        let r = self.dpo.step(model, batch)?;
        Ok((r.step, r.metrics.named().to_vec()))
    }
    fn run_evaluate(
        &mut self,
        model: &Llama<B>,
        batches: Vec<PairBatch>,
    ) -> Result<(f64, Named, usize), TrainError> {
        let m: DpoMetrics = self.dpo.evaluate(model, batches)?;
        Ok((m.loss, m.named().to_vec(), m.pairs))
    }
}

impl<B: AutodiffBackend> PairTrainer<B> for LuaReward<B> {
    const STEP: &'static str = "reward_trainer:step";
    const EVALUATE: &'static str = "reward_trainer:evaluate";
    const DROPPED: &'static str = "longer than max_length";
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn pair_options(&self) -> PairOptions {
        untruncated()
    }
    fn drop_longer(&self) -> Option<usize> {
        self.max_length
    }
    fn run_step(
        &mut self,
        model: &mut Llama<B>,
        batch: &PairBatch,
    ) -> Result<(StepReport, Named), TrainError> {
        let r = self.reward.step(model, batch)?;
        Ok((r.step, r.metrics.named().to_vec()))
    }
    fn run_evaluate(
        &mut self,
        model: &Llama<B>,
        batches: Vec<PairBatch>,
    ) -> Result<(f64, Named, usize), TrainError> {
        let m: RewardMetrics = self.reward.evaluate(model, batches)?;
        Ok((m.accuracy, m.named().to_vec(), m.pairs))
    }
}

fn add_pair_trainer_methods<B, T, M>(methods: &mut M)
where
    B: AutodiffBackend,
    T: PairTrainer<B>,
    M: UserDataMethods<T>,
{
    // :step(batch) -> loss, {loss, grad_norm, lr, ..., and the metrics by TRL's names}
    methods.add_method_mut("step", |lua, this, batch: Value| {
        let opts = this.pair_options();
        let (batch, dropped) = collate(
            lua,
            T::STEP,
            &batch,
            this.tokenizer(),
            &opts,
            this.drop_longer(),
        )?;
        note_dropped(lua, T::STEP, dropped, T::DROPPED);
        let Some(batch) = batch else {
            return Err(recipe_error(
                lua,
                format!(
                    "{}: every pair of the batch was dropped ({})",
                    T::STEP,
                    T::DROPPED
                ),
            ));
        };
        let model = this.model().clone();
        super::host::dry_run_stop(
            lua,
            &model.borrow(),
            batch.batch.batch,
            batch.batch.seq,
            true,
        )?;
        let (report, metrics) = this
            .run_step(&mut model.borrow_mut(), &batch)
            .map_err(|e| train_error(lua, T::STEP, e))?;
        record_progress(lua, &report);
        let t = step_table(lua, &report)?;
        for (k, v) in metrics.iter().skip(1) {
            t.set(*k, *v)?;
        }
        Ok((report.loss, t))
    });
    // :evaluate(pairs, {size = 8}) -> the headline value (DPO: loss; reward: accuracy), the
    // metrics table with `pairs`
    methods.add_method_mut(
        "evaluate",
        |lua, this, (data, opts): (Value, Option<Table>)| {
            let pairs = pairs_arg(lua, T::EVALUATE, &data)?;
            let size = eval_size(lua, T::EVALUATE, opts)?;
            let cut = this.pair_options();
            let (batches, dropped) = eval_batches(
                lua,
                T::EVALUATE,
                &pairs,
                size,
                this.tokenizer(),
                &cut,
                this.drop_longer(),
            )?;
            note_dropped(lua, T::EVALUATE, dropped, T::DROPPED);
            let model = this.model().clone();
            super::host::dry_run_stop(lua, &model.borrow(), 2 * size, 256, false)?;
            let (headline, metrics, n) = this
                .run_evaluate(&model.borrow(), batches)
                .map_err(|e| train_error(lua, T::EVALUATE, e))?;
            let t = metrics_table(lua, &metrics)?;
            t.set("pairs", n)?;
            Ok((headline, t))
        },
    );
    add_checkpoint_methods(methods);
    methods.add_method("steps", |_, this, ()| Ok(this.trainer().steps()));
    methods.add_method("batches_seen", |_, this, ()| {
        Ok(this.trainer().progress.batches)
    });
}

impl<B: AutodiffBackend> UserData for LuaDpo<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_pair_trainer_methods(methods);
    }
}

impl<B: AutodiffBackend> UserData for LuaReward<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        add_pair_trainer_methods(methods);
    }
}

/// The score of each pair's chosen side (text, untruncated, tokenized as reward-model
/// training does), eight at a time.
pub(crate) fn score_pairs<B: burn::prelude::Backend>(
    model: &Llama<B>,
    tokenizer: &Tokenizer,
    pairs: Vec<PreferencePair>,
) -> Result<Vec<f64>, String> {
    let n = pairs.len();
    let set = PairSet {
        pairs,
        source: "scores".into(),
        skipped: 0,
        parts: Vec::new(),
    };
    let opts = untruncated();
    let tokenized = set.tokenize(tokenizer, &opts).map_err(|e| e.to_string())?;
    if tokenized.pairs.len() != n {
        return Err(format!(
            "{} of {n} texts could not be scored (empty after tokenization)",
            n - tokenized.pairs.len()
        ));
    }
    let mut out = Vec::with_capacity(tokenized.pairs.len());
    for chunk in tokenized.pairs.chunks(8) {
        let refs: Vec<_> = chunk.iter().collect();
        let batch = PairBatch::collate(&refs, &opts);
        let rewards = pair_rewards(model, &batch).map_err(|e| e.to_string())?;
        out.extend_from_slice(&rewards[..chunk.len()]);
    }
    Ok(out)
}

/// A prompt and completion scored by a reward model: the completion is the chosen side of a
/// pair whose rejected side is the same text.
pub(crate) fn scoring_pair(prompt: &str, completion: &str) -> PreferencePair {
    PreferencePair {
        prompt: crate::data::pairs::Turns::Text(prompt.to_string()),
        chosen: crate::data::pairs::Turns::Text(completion.to_string()),
        rejected: crate::data::pairs::Turns::Text(completion.to_string()),
        margin: None,
    }
}

/// `model:add_score_head{seed = }` and `model:reward(items)`.
pub(crate) fn add_model_methods<B: AutodiffBackend, M: UserDataMethods<LuaModel<B>>>(
    methods: &mut M,
) {
    methods.add_method("add_score_head", |lua, this, opts: Option<Table>| {
        let o = Opts::new(lua, "model:add_score_head", opts, &["seed"])?;
        let seed = match o.int("seed")? {
            Some(s) => s as u64,
            None => default_seed(lua)?,
        };
        this.model
            .borrow_mut()
            .add_score_head(seed)
            .map_err(|e| o.err(e))
    });
    methods.add_method("has_score_head", |_, this, ()| {
        Ok(this.model.borrow().score_head().is_some())
    });
    // model:reward(items) -> one score per item: a text (scored whole), or a
    // {prompt, completion} / {prompt, chosen} table.
    methods.add_method("reward", |lua, this, items: Table| {
        let mut pairs = Vec::new();
        for (i, v) in items.sequence_values::<Value>().enumerate() {
            let (prompt, completion) = match v? {
                Value::String(s) => (String::new(), s.to_string_lossy()),
                Value::Table(t) => {
                    let prompt: Option<String> = t.get("prompt")?;
                    let completion: Option<String> = t.get("completion")?;
                    let completion = match completion {
                        Some(c) => Some(c),
                        None => t.get::<Option<String>>("chosen")?,
                    };
                    match completion {
                        Some(c) => (prompt.unwrap_or_default(), c),
                        None => {
                            return Err(recipe_error(lua, format!("model:reward: item {} needs a 'completion' (and optionally a 'prompt')", i + 1)));
                        }
                    }
                }
                other => {
                    return Err(recipe_error(lua, format!("model:reward: item {} must be a text or a {{prompt, completion}} table, found {}", i + 1, describe(&other))));
                }
            };
            if completion.is_empty() {
                return Err(recipe_error(lua, format!("model:reward: item {} is empty", i + 1)));
            }
            pairs.push(scoring_pair(&prompt, &completion));
        }
        if pairs.is_empty() {
            return Err(recipe_error(lua, "model:reward: the list is empty"));
        }
        let model = this.model.borrow().detached();
        let rewards = score_pairs(&model, &this.tokenizer, pairs)
            .map_err(|e| runtime_error(lua, format!("model:reward: {e}")))?;
        let out = lua.create_sequence_from(rewards)?;
        Ok(out)
    });
}
