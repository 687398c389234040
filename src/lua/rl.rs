//! `runner.grpo{...}`: GRPO with reward functions written in Lua; `runner.ppo{...}`: PPO
//! against a reward-model adapter of the same model or a Lua score function.
//!
//! ```lua
//! local grpo = runner.grpo{ model = m, reward_funcs = { exact, short }, reward_weights = { 1, 0.1 },
//!                           num_generations = 8, max_completion_length = 32, stop = { "\n" } }
//! local loss, info = grpo:step(prompts)   -- strings, or rows with a `prompt` field
//! ```
//! A reward function is called once per completion as `f(prompt, completion, row)` and returns
//! a number (or nil: no opinion, left out of the weighted sum as TRL's `nansum`).

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::backend::AutodiffBackend;
use mlua::{Function, Lua, Table, UserData, UserDataMethods, Value};

use super::model::default_seed;
use super::options::{Opts, describe, recipe_error};
use super::preference::{record_progress, reference_opt, score_pairs, scoring_pair};
use super::train::{
    TRAINER_KEYS, WithTrainer, add_checkpoint_methods, step_table, train_error, trainer_from_opts,
};
use crate::data::tokenizer::Tokenizer;
use crate::model::Llama;
use crate::train::rl::{
    GrpoConfig, GrpoLoss, GrpoTrainer, KlEstimator, PpoConfig, PpoTrainer, ScaleRewards,
};
use crate::train::{TrainError, Trainer};

/// The keys of `runner.grpo` beyond the trainer's.
const GRPO_KEYS: &[&str] = &[
    "reward_funcs",
    "reward_weights",
    "num_generations",
    "max_completion_length",
    "temperature",
    "top_p",
    "top_k",
    "beta",
    "epsilon",
    "epsilon_high",
    "loss_type",
    "scale_rewards",
    "stop",
    "ref",
    "ref_adapter",
    "use_bias_correction_kl",
];

pub(crate) struct LuaGrpo<B: AutodiffBackend> {
    model: Rc<RefCell<Llama<B>>>,
    tokenizer: Tokenizer,
    grpo: GrpoTrainer<B>,
    reward_funcs: Vec<Function>,
    stop: Vec<String>,
}

impl<B: AutodiffBackend> WithTrainer<B> for LuaGrpo<B> {
    fn model(&self) -> &Rc<RefCell<Llama<B>>> {
        &self.model
    }
    fn trainer(&self) -> &Trainer<B> {
        &self.grpo.trainer
    }
    fn trainer_mut(&mut self) -> &mut Trainer<B> {
        &mut self.grpo.trainer
    }
}

/// A function, or a list of functions.
fn functions(o: &Opts, key: &str) -> mlua::Result<Vec<Function>> {
    match o.raw(key)? {
        Value::Function(f) => Ok(vec![f]),
        Value::Table(t) => {
            let mut out = Vec::new();
            for v in t.sequence_values::<Value>() {
                match v? {
                    Value::Function(f) => out.push(f),
                    other => {
                        return Err(o.err(format!(
                            "{key} must be a function or a list of functions, found a list holding {}",
                            describe(&other)
                        )));
                    }
                }
            }
            if out.is_empty() {
                return Err(o.err(format!("{key} is an empty list")));
            }
            Ok(out)
        }
        Value::Nil => Err(o.err(format!(
            "missing required option '{key}' (function(prompt, completion, row) return number end)"
        ))),
        other => Err(o.err(format!(
            "{key} must be a function or a list of functions, found {}",
            describe(&other)
        ))),
    }
}

/// Numbers from a list option.
fn numbers(o: &Opts, key: &str) -> mlua::Result<Option<Vec<f64>>> {
    match o.raw(key)? {
        Value::Nil => Ok(None),
        Value::Table(t) => t
            .sequence_values::<f64>()
            .collect::<mlua::Result<Vec<f64>>>()
            .map(Some)
            .map_err(|_| o.err(format!("{key} must be a list of numbers"))),
        other => Err(o.err(format!(
            "{key} must be a list of numbers, found {}",
            describe(&other)
        ))),
    }
}

/// Calls a reward (or score) function on one completion: a finite number, or nil as NaN
/// (no opinion).
fn call_score(
    lua: &Lua,
    what: &str,
    f: &Function,
    index: usize,
    args: (&str, &str, Value),
) -> mlua::Result<f64> {
    match f.call::<Value>(args)? {
        Value::Nil => Ok(f64::NAN),
        Value::Integer(n) => Ok(n as f64),
        Value::Number(x) if x.is_finite() => Ok(x),
        other => Err(recipe_error(
            lua,
            format!(
                "{what}: the function returned {} for completion {index}; expected a finite number or nil",
                describe(&other)
            ),
        )),
    }
}

/// Whether `tokens` decode to a text that holds a stop string (generation ends there).
fn hits_stop(tokenizer: &Tokenizer, stop: &[String], tokens: &[u32]) -> bool {
    !stop.is_empty()
        && tokenizer
            .decode(tokens, true)
            .is_ok_and(|t| cut_at_stop(&t, stop).len() < t.len())
}

/// The completion's text as reward functions see it: decoded without special tokens, cut
/// at the first stop string.
fn completion_text(
    tokenizer: &Tokenizer,
    stop: &[String],
    tokens: &[u32],
) -> Result<String, TrainError> {
    let text = tokenizer
        .decode(tokens, true)
        .map_err(|e| TrainError::Invalid(e.to_string()))?;
    Ok(cut_at_stop(&text, stop).to_string())
}

/// The text up to the first stop string.
fn cut_at_stop<'a>(text: &'a str, stop: &[String]) -> &'a str {
    let end = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    &text[..end]
}

/// The keys of `runner.ppo` beyond the trainer's.
const PPO_KEYS: &[&str] = &[
    "value_adapter",
    "ref_adapter",
    "reward_adapter",
    "score",
    "num_ppo_epochs",
    "num_mini_batches",
    "cliprange",
    "cliprange_value",
    "vf_coef",
    "gamma",
    "lam",
    "kl_coef",
    "kl_estimator",
    "adaptive_kl",
    "whiten_rewards",
    "missing_eos_penalty",
    "temperature",
    "top_p",
    "top_k",
    "response_length",
    "stop",
];

/// Where PPO's scores come from.
enum ScoreSource {
    /// An adapter of the policy's own model with a score head (a reward model).
    Adapter(String),
    /// `f(prompt, completion, row)`.
    Function(Function),
}

pub(crate) struct LuaPpo<B: AutodiffBackend> {
    model: Rc<RefCell<Llama<B>>>,
    tokenizer: Tokenizer,
    ppo: PpoTrainer<B>,
    score: ScoreSource,
    stop: Vec<String>,
}

impl<B: AutodiffBackend> WithTrainer<B> for LuaPpo<B> {
    fn model(&self) -> &Rc<RefCell<Llama<B>>> {
        &self.model
    }
    fn trainer(&self) -> &Trainer<B> {
        &self.ppo.trainer
    }
    fn trainer_mut(&mut self) -> &mut Trainer<B> {
        &mut self.ppo.trainer
    }
}

fn ppo_from_opts<B: AutodiffBackend>(lua: &Lua, opts: Table) -> mlua::Result<LuaPpo<B>> {
    let allowed: Vec<&str> = TRAINER_KEYS.iter().chain(PPO_KEYS).copied().collect();
    let o = Opts::new(lua, "runner.ppo", Some(opts), &allowed)?;
    let (model, tokenizer, trainer) = trainer_from_opts::<B>(lua, &o)?;
    if trainer.options.checkpointing {
        return Err(o.err("checkpointing (activation recomputation) is not supported by PPO yet"));
    }
    let score = match (o.string("reward_adapter")?, o.raw("score")?) {
        (Some(name), Value::Nil) => {
            let m = model.borrow();
            crate::peft::find(&m, &name).map_err(|e| o.err(format!("reward_adapter: {e}")))?;
            let mut probe = m.detached();
            probe.activate_slots(Some(&name));
            if probe.score_head().is_none() {
                return Err(o.err(format!(
                    "reward_adapter '{name}' has no score head (load a reward model's adapter)"
                )));
            }
            ScoreSource::Adapter(name)
        }
        (None, Value::Function(f)) => ScoreSource::Function(f),
        (Some(_), Value::Function(_)) => {
            return Err(o.err("give either reward_adapter or score, not both"));
        }
        (None, Value::Nil) => {
            return Err(o.err(
                "PPO needs scores: reward_adapter = <an adapter with a score head> or score = function(prompt, completion, row) ... end",
            ));
        }
        (_, other) => {
            return Err(o.err(format!(
                "score must be a function, found {}",
                describe(&other)
            )));
        }
    };
    let d = PpoConfig::default();
    let adaptive_kl = match o.raw("adaptive_kl")? {
        Value::Nil | Value::Boolean(false) => None,
        Value::Boolean(true) => Some((6.0, 10000.0)),
        Value::Table(t) => {
            let a = Opts::new(
                lua,
                "runner.ppo adaptive_kl",
                Some(t),
                &["target", "horizon"],
            )?;
            Some((
                a.num("target")?.unwrap_or(6.0),
                a.num("horizon")?.unwrap_or(10000.0),
            ))
        }
        other => {
            return Err(o.err(format!(
                "adaptive_kl must be true or {{target =, horizon =}}, found {}",
                describe(&other)
            )));
        }
    };
    let config = PpoConfig {
        num_ppo_epochs: o.count("num_ppo_epochs", 1)?.unwrap_or(d.num_ppo_epochs),
        num_mini_batches: o
            .count("num_mini_batches", 1)?
            .unwrap_or(d.num_mini_batches),
        cliprange: o.num("cliprange")?.unwrap_or(d.cliprange),
        cliprange_value: o.num("cliprange_value")?.unwrap_or(d.cliprange_value),
        vf_coef: o.num("vf_coef")?.unwrap_or(d.vf_coef),
        gamma: o.num("gamma")?.unwrap_or(d.gamma),
        lam: o.num("lam")?.unwrap_or(d.lam),
        kl_coef: o.num("kl_coef")?.unwrap_or(d.kl_coef),
        kl_estimator: o
            .choice("kl_estimator", &KlEstimator::NAMES, KlEstimator::parse)?
            .unwrap_or(d.kl_estimator),
        adaptive_kl,
        whiten_rewards: o.bool("whiten_rewards")?.unwrap_or(d.whiten_rewards),
        missing_eos_penalty: o.num("missing_eos_penalty")?,
        temperature: o.num("temperature")?.unwrap_or(d.temperature),
        top_p: o.num("top_p")?.unwrap_or(d.top_p),
        top_k: o.count("top_k", 0)?.unwrap_or(d.top_k),
        response_length: o.count("response_length", 1)?.unwrap_or(d.response_length),
        eos: tokenizer.eos().into_iter().collect(),
        seed: match o.int("seed")? {
            Some(s) => s as u64,
            None => default_seed(lua)?,
        },
    };
    let value = o.string("value_adapter")?;
    let value = o.required("value_adapter", value)?;
    let ref_adapter = o.string("ref_adapter")?;
    let ppo = PpoTrainer::new(
        trainer,
        config,
        &model.borrow(),
        &value,
        ref_adapter.as_deref(),
    )
    .map_err(|e| o.err(e))?;
    if let ScoreSource::Adapter(name) = &score
        && (name == &ppo.policy || name == &ppo.value)
    {
        return Err(o.err(format!("reward_adapter '{name}' is the policy or the value adapter; the reward model needs its own")));
    }
    Ok(LuaPpo {
        model,
        tokenizer,
        ppo,
        score,
        stop: o.strings("stop")?.unwrap_or_default(),
    })
}

pub(crate) fn register_trainers<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    runner.set(
        "ppo",
        lua.create_function(|lua, opts: Table| ppo_from_opts::<B>(lua, opts))?,
    )?;
    runner.set(
        "grpo",
        lua.create_function(|lua, opts: Table| {
            let allowed: Vec<&str> = TRAINER_KEYS.iter().chain(GRPO_KEYS).copied().collect();
            let o = Opts::new(lua, "runner.grpo", Some(opts), &allowed)?;
            let (model, tokenizer, trainer) = trainer_from_opts::<B>(lua, &o)?;
            if trainer.options.checkpointing {
                return Err(
                    o.err("checkpointing (activation recomputation) is not supported by GRPO yet")
                );
            }
            let reward_funcs = functions(&o, "reward_funcs")?;
            let d = GrpoConfig::default();
            let epsilon = o.num("epsilon")?.unwrap_or(d.objective.epsilon_low);
            let mut objective = d.objective;
            objective.epsilon_low = epsilon;
            objective.epsilon_high = o.num("epsilon_high")?.unwrap_or(epsilon);
            objective.beta = o.num("beta")?.unwrap_or(d.objective.beta);
            objective.bias_correction_kl = o
                .bool("use_bias_correction_kl")?
                .unwrap_or(d.objective.bias_correction_kl);
            objective.max_completion_length = o
                .count("max_completion_length", 1)?
                .unwrap_or(d.objective.max_completion_length);
            if let Some(loss) = o.choice("loss_type", &GrpoLoss::NAMES, GrpoLoss::parse)? {
                objective.loss = loss;
            }
            let config = GrpoConfig {
                num_generations: o.count("num_generations", 2)?.unwrap_or(d.num_generations),
                objective,
                scale_rewards: o
                    .choice("scale_rewards", &ScaleRewards::NAMES, ScaleRewards::parse)?
                    .unwrap_or(d.scale_rewards),
                temperature: o.num("temperature")?.unwrap_or(d.temperature),
                top_p: o.num("top_p")?.unwrap_or(d.top_p),
                top_k: o.count("top_k", 0)?.unwrap_or(d.top_k),
                reward_weights: numbers(&o, "reward_weights")?,
                eos: tokenizer.eos().into_iter().collect(),
                seed: match o.int("seed")? {
                    Some(s) => s as u64,
                    None => default_seed(lua)?,
                },
            };
            if let Some(w) = &config.reward_weights
                && w.len() != reward_funcs.len()
            {
                return Err(o.err(format!(
                    "reward_weights has {} weights for {} reward functions",
                    w.len(),
                    reward_funcs.len()
                )));
            }
            let reference = reference_opt(&o, &model)?;
            let ref_adapter = o.string("ref_adapter")?;
            let grpo = GrpoTrainer::new(
                trainer,
                config,
                &model.borrow(),
                reference,
                ref_adapter.as_deref(),
            )
            .map_err(|e| o.err(e))?;
            Ok(LuaGrpo {
                model,
                tokenizer,
                grpo,
                reward_funcs,
                stop: o.strings("stop")?.unwrap_or_default(),
            })
        })?,
    )?;
    Ok(())
}

/// The prompts of a step: strings, or rows with a `prompt` string (the row goes to the
/// reward functions as their third argument).
fn prompts_arg(lua: &Lua, what: &str, v: &Value) -> mlua::Result<Vec<StepPrompt>> {
    let Value::Table(list) = v else {
        return Err(recipe_error(
            lua,
            format!(
                "{what}: expects a list of prompts (strings or rows with a prompt field), found {}",
                describe(v)
            ),
        ));
    };
    let mut out = Vec::new();
    for (i, item) in list.sequence_values::<Value>().enumerate() {
        let item = item?;
        let text = match &item {
            Value::String(s) => s.to_string_lossy(),
            Value::Table(row) => match row.get::<Value>("prompt")? {
                Value::String(s) => s.to_string_lossy(),
                other => {
                    return Err(recipe_error(
                        lua,
                        format!(
                            "{what}: prompt {} has no prompt string (found {})",
                            i + 1,
                            describe(&other)
                        ),
                    ));
                }
            },
            other => {
                return Err(recipe_error(
                    lua,
                    format!(
                        "{what}: prompt {} must be a string or a row, found {}",
                        i + 1,
                        describe(other)
                    ),
                ));
            }
        };
        out.push((text, item));
    }
    if out.is_empty() {
        return Err(recipe_error(lua, format!("{what}: no prompts")));
    }
    Ok(out)
}

/// A prompt's text and the value it came from (a string, or a row for the reward functions).
type StepPrompt = (String, Value);

/// A step's prompts (see [`prompts_arg`]) and their token ids; in a dry run, stops after
/// checking that `copies` completions of each, `new_tokens` long, fit in memory.
fn step_prompts<B: AutodiffBackend>(
    lua: &Lua,
    what: &str,
    prompts: &Value,
    tokenizer: &Tokenizer,
    model: &Llama<B>,
    copies: usize,
    new_tokens: usize,
) -> mlua::Result<(Vec<StepPrompt>, Vec<Vec<u32>>)> {
    let prompts = prompts_arg(lua, what, prompts)?;
    let mut ids = Vec::with_capacity(prompts.len());
    for (text, _) in &prompts {
        ids.push(
            tokenizer
                .encode(text)
                .map_err(|e| recipe_error(lua, format!("{what}: {e}")))?,
        );
    }
    let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
    super::host::dry_run_stop(
        lua,
        model,
        prompts.len() * copies,
        longest + new_tokens,
        true,
    )?;
    Ok((prompts, ids))
}

impl<B: AutodiffBackend> UserData for LuaGrpo<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // :step(prompts) -> loss, {loss, grad_norm, lr, ..., reward, reward_std, kl, ...,
        // completions = {texts}}
        methods.add_method_mut("step", |lua, this, prompts: Value| {
            const WHAT: &str = "grpo:step";
            let g = this.grpo.config.num_generations;
            let model = this.model.clone();
            let (prompts, ids) = step_prompts(
                lua,
                WHAT,
                &prompts,
                &this.tokenizer,
                &model.borrow(),
                g,
                this.grpo.config.objective.max_completion_length,
            )?;
            let tokenizer = this.tokenizer.clone();
            let stop = this.stop.clone();
            let funcs = this.reward_funcs.clone();
            let texts = std::cell::RefCell::new(Vec::new());
            let mut lua_error = None;
            let result = this.grpo.step(
                &mut model.borrow_mut(),
                &ids,
                |_, tokens| hits_stop(&tokenizer, &stop, tokens),
                |batch| {
                    let mut rows = Vec::with_capacity(batch.len());
                    for (i, c) in batch.completions.iter().enumerate() {
                        let text = completion_text(&tokenizer, &stop, c)?;
                        let (prompt, row) = &prompts[i / g];
                        let mut scores = Vec::with_capacity(funcs.len());
                        for f in &funcs {
                            match call_score(lua, WHAT, f, i + 1, (prompt, &text, row.clone())) {
                                Ok(v) => scores.push(v),
                                Err(e) => {
                                    lua_error = Some(e);
                                    return Err(TrainError::Invalid(
                                        "a reward function failed".into(),
                                    ));
                                }
                            }
                        }
                        texts.borrow_mut().push(text);
                        rows.push(scores);
                    }
                    Ok(rows)
                },
            );
            crate::memory::release_autodiff_graph::<B>(&model.borrow().device);
            if let Some(e) = lua_error {
                return Err(e);
            }
            let report = result.map_err(|e| train_error(lua, WHAT, e))?;
            record_progress(lua, &report.step);
            let t = step_table(lua, &report.step)?;
            for (k, v) in report.metrics.named() {
                t.set(k, v)?;
            }
            t.set("completions", lua.create_sequence_from(texts.into_inner())?)?;
            t.set("rewards", lua.create_sequence_from(report.rewards)?)?;
            Ok((report.step.loss, t))
        });
        add_checkpoint_methods(methods);
        methods.add_method("steps", |_, this, ()| Ok(this.grpo.trainer.steps()));
    }
}

impl<B: AutodiffBackend> UserData for LuaPpo<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // :step(prompts) -> loss, {loss, grad_norm, lr, ..., objective/kl, objective/scores,
        // ..., completions = {texts}, scores = {numbers}}
        methods.add_method_mut("step", |lua, this, prompts: Value| {
            const WHAT: &str = "ppo:step";
            let model = this.model.clone();
            let (prompts, ids) = step_prompts(
                lua,
                WHAT,
                &prompts,
                &this.tokenizer,
                &model.borrow(),
                1,
                this.ppo.config.response_length,
            )?;
            let tokenizer = this.tokenizer.clone();
            let stop = this.stop.clone();
            let texts = RefCell::new(Vec::new());
            let mut lua_error = None;
            let score = &this.score;
            let result = this.ppo.step(
                &mut model.borrow_mut(),
                &ids,
                |_, tokens| hits_stop(&tokenizer, &stop, tokens),
                |policy, batch| {
                    let mut out = Vec::with_capacity(batch.len());
                    for c in &batch.completions {
                        texts.borrow_mut().push(completion_text(&tokenizer, &stop, c)?);
                    }
                    let texts = texts.borrow();
                    match score {
                        ScoreSource::Adapter(name) => {
                            let mut rm = policy.detached();
                            rm.activate_slots(Some(name));
                            let pairs = texts
                                .iter()
                                .enumerate()
                                .map(|(i, t)| scoring_pair(&prompts[i].0, t))
                                .collect();
                            out = score_pairs(&rm, &tokenizer, pairs).map_err(TrainError::Invalid)?;
                        }
                        ScoreSource::Function(f) => {
                            for (i, t) in texts.iter().enumerate() {
                                let (prompt, row) = &prompts[i];
                                match call_score(lua, WHAT, f, i + 1, (prompt, t, row.clone())) {
                                    Ok(v) if v.is_nan() => {
                                        lua_error = Some(recipe_error(lua, format!("{WHAT}: the score function returned nil for completion {}", i + 1)));
                                        return Err(TrainError::Invalid("no score".into()));
                                    }
                                    Ok(v) => out.push(v),
                                    Err(e) => {
                                        lua_error = Some(e);
                                        return Err(TrainError::Invalid("the score function failed".into()));
                                    }
                                }
                            }
                        }
                    }
                    Ok(out)
                },
            );
            crate::memory::release_autodiff_graph::<B>(&model.borrow().device);
            if let Some(e) = lua_error {
                return Err(e);
            }
            let report = result.map_err(|e| train_error(lua, WHAT, e))?;
            record_progress(lua, &report.step);
            let t = step_table(lua, &report.step)?;
            for (k, v) in report.metrics.named() {
                t.set(k, v)?;
            }
            t.set("completions", lua.create_sequence_from(texts.into_inner())?)?;
            t.set("scores", lua.create_sequence_from(report.scores)?)?;
            Ok((report.step.loss, t))
        });
        methods.add_method("kl_coef", |_, this, ()| Ok(this.ppo.kl_coef()));
        add_checkpoint_methods(methods);
        methods.add_method("steps", |_, this, ()| Ok(this.ppo.trainer.steps()));
    }
}
