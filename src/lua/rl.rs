//! `runner.grpo{...}`: GRPO with reward functions written in Lua.
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
use super::preference::{record_progress, reference_opt};
use super::train::{
    TRAINER_KEYS, WithTrainer, add_checkpoint_methods, step_table, train_error, trainer_from_opts,
};
use crate::data::tokenizer::Tokenizer;
use crate::model::Llama;
use crate::train::rl::{GrpoConfig, GrpoLoss, GrpoTrainer, ScaleRewards};
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

pub(crate) fn register_trainers<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
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
fn prompts_arg(lua: &Lua, what: &str, v: &Value) -> mlua::Result<Vec<(String, Value)>> {
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

impl<B: AutodiffBackend> UserData for LuaGrpo<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // :step(prompts) -> loss, {loss, grad_norm, lr, ..., reward, reward_std, kl, ...,
        // completions = {texts}}
        methods.add_method_mut("step", |lua, this, prompts: Value| {
            const WHAT: &str = "grpo:step";
            let prompts = prompts_arg(lua, WHAT, &prompts)?;
            let mut ids = Vec::with_capacity(prompts.len());
            for (text, _) in &prompts {
                ids.push(this.tokenizer.encode(text).map_err(|e| recipe_error(lua, format!("{WHAT}: {e}")))?);
            }
            let g = this.grpo.config.num_generations;
            let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
            let model = this.model.clone();
            super::host::dry_run_stop(
                lua,
                &model.borrow(),
                prompts.len() * g,
                longest + this.grpo.config.objective.max_completion_length,
                true,
            )?;
            let tokenizer = this.tokenizer.clone();
            let stop = this.stop.clone();
            let funcs = this.reward_funcs.clone();
            let texts = std::cell::RefCell::new(Vec::new());
            let mut lua_error = None;
            let result = this.grpo.step(
                &mut model.borrow_mut(),
                &ids,
                |_, tokens| {
                    !stop.is_empty()
                        && tokenizer
                            .decode(tokens, true)
                            .is_ok_and(|t| cut_at_stop(&t, &stop).len() < t.len())
                },
                |batch| {
                    let mut rows = Vec::with_capacity(batch.len());
                    for (i, c) in batch.completions.iter().enumerate() {
                        let text = tokenizer.decode(c, true).map_err(|e| TrainError::Invalid(e.to_string()))?;
                        let text = cut_at_stop(&text, &stop).to_string();
                        let (prompt, row) = &prompts[i / g];
                        let mut scores = Vec::with_capacity(funcs.len());
                        for (k, f) in funcs.iter().enumerate() {
                            let v = match f.call::<Value>((prompt.as_str(), text.as_str(), row.clone())) {
                                Ok(Value::Nil) => f64::NAN,
                                Ok(Value::Integer(n)) => n as f64,
                                Ok(Value::Number(x)) if x.is_finite() => x,
                                Ok(other) => {
                                    let msg = format!(
                                        "reward function {} returned {} for completion {}; expected a finite number or nil",
                                        k + 1,
                                        describe(&other),
                                        i + 1
                                    );
                                    lua_error = Some(recipe_error(lua, format!("{WHAT}: {msg}")));
                                    return Err(TrainError::Invalid(msg));
                                }
                                Err(e) => {
                                    lua_error = Some(e);
                                    return Err(TrainError::Invalid("a reward function failed".into()));
                                }
                            };
                            scores.push(v);
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
