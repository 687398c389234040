//! The Lua host: runs a recipe with a global `runner` table. Each submodule binds one API
//! table and only converts and validates values; the work happens in the Rust core.

mod adapters;
mod analysis;
mod config;
pub(crate) mod data;
mod declaration;
pub(crate) mod eval;
pub(crate) mod host;
pub(crate) mod model;
pub(crate) mod options;
pub(crate) mod peft;
mod preference;
pub(crate) mod quant;
mod rl;
pub(crate) mod sweep;
pub(crate) mod train;

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table};

use crate::backend::DeviceKind;
use crate::interrupt::Interrupted;
use host::RecipeInputs;
use options::RecipeError;
pub use sweep::{SweepHost, SweepMode, SweepSettings, SweepSummary};

/// The device every tensor of this recipe lives on.
pub(crate) struct DeviceData<B: AutodiffBackend>(pub B::Device);

#[derive(Clone, Debug)]
pub struct RecipeOptions {
    pub path: PathBuf,
    /// `--set key=value` pairs, in order (a later one wins).
    pub params: Vec<(String, String)>,
    pub seed: Option<u64>,
    pub results_dir: PathBuf,
    pub device: DeviceKind,
    /// `--trust`: the full Lua standard library (files, processes).
    pub trust: bool,
    /// Bytes the recipe's Lua values may use (`--lua-memory`).
    pub lua_memory: u64,
    pub sweeps: SweepSettings,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecipeReport {
    pub trials_run: usize,
    pub trials_failed: usize,
    /// Trials skipped because trials.csv already had them as ok.
    pub trials_reused: usize,
    /// Each sweep the recipe declared and its number of trials (before sharding).
    pub sweep_sizes: Vec<(String, usize)>,
    pub summaries: Vec<SweepSummary>,
    /// The recipe and every file it read: what `--watch` watches.
    pub files: Vec<PathBuf>,
}

/// The recipe could not run to its end: a syntax error, a bad option, an uncaught error, or
/// an interruption (Ctrl-C, `--time-limit`).
#[derive(Debug, thiserror::Error)]
#[error("{message}{}", traceback.as_ref().map(|t| format!("\n{t}")).unwrap_or_default())]
pub struct RecipeFailure {
    pub message: String,
    pub traceback: Option<String>,
    pub interrupted: Option<Interrupted>,
    /// The files read before the failure (the recipe at least), for `--watch`.
    pub files: Vec<PathBuf>,
}

/// Runs a recipe file on backend `B`.
pub fn run_recipe<B: AutodiffBackend>(
    opts: &RecipeOptions,
    device: B::Device,
) -> Result<RecipeReport, RecipeFailure> {
    let files = vec![opts.path.clone()];
    let fail = |message: String| RecipeFailure {
        message,
        traceback: None,
        interrupted: None,
        files: files.clone(),
    };
    let source = std::fs::read(&opts.path)
        .map_err(|e| fail(format!("cannot read recipe {}: {e}", opts.path.display())))?;
    let lua = host::new_lua(opts.trust, opts.lua_memory)
        .map_err(|e| fail(format!("setting up the Lua host: {e}")))?;
    lua.set_app_data(DeviceData::<B>(device));
    // Trial ids depend on the recipe text and on what the command line changes: --set values
    // and the device (the seed enters each id separately).
    let mut params: Vec<_> = opts.params.iter().collect();
    params.sort();
    let mut command = String::new();
    for (k, v) in params {
        command.push_str(&format!("\n--set {k}={v}"));
    }
    command.push_str(&format!("\n--device {}", opts.device));
    let mut host = SweepHost::new(
        opts.results_dir.clone(),
        source.clone(),
        command,
        opts.seed,
        opts.sweeps,
    );
    // '@' makes Lua name the chunk after the file: errors read `recipes/x.lua:LINE: ...`.
    host.recipe_chunk = format!("@{}", opts.path.display());
    lua.set_app_data(host);
    lua.set_app_data(RecipeInputs::default());
    lua.set_app_data(host::WriteRule {
        results: opts.results_dir.clone(),
        trust: opts.trust,
    });
    let setup = install(&lua, opts)
        .and_then(|()| register::<B>(&lua))
        .and_then(|()| host::install_require(&lua, &opts.path, opts.trust))
        .and_then(|()| host::install_interrupt_hook(&lua));
    setup.map_err(|e| fail(format!("setting up the Lua host: {e}")))?;
    let chunk = lua
        .load(&source[..])
        .set_name(format!("@{}", opts.path.display()));
    let result = {
        let _running = crate::interrupt::recipe_running();
        chunk.exec()
    };
    let mut files = files.clone();
    if let Some(inputs) = lua.app_data_ref::<RecipeInputs>() {
        files.extend(inputs.0.files().map(|p| p.to_path_buf()));
    }
    let host = lua.app_data_ref::<SweepHost>().expect("host");
    match result {
        Ok(()) => Ok(RecipeReport {
            trials_run: host.trials_run,
            trials_failed: host.trials_failed,
            trials_reused: host.trials_reused,
            sweep_sizes: host.counts.clone(),
            summaries: host.summaries.clone(),
            files,
        }),
        Err(e) => {
            let parts = error_parts(&e);
            Err(RecipeFailure {
                message: parts.message,
                traceback: parts.traceback,
                interrupted: crate::interrupt::state(),
                files,
            })
        }
    }
}

fn install(lua: &Lua, opts: &RecipeOptions) -> mlua::Result<()> {
    let runner = lua.create_table()?;
    let params = lua.create_table()?;
    for (k, v) in &opts.params {
        params.set(k.as_str(), parse_param(lua, v)?)?;
    }
    runner.set("params", params)?;
    runner.set("seed", opts.seed.unwrap_or(0))?;
    runner.set("device", opts.device.to_string())?;
    runner.set("version", env!("CARGO_PKG_VERSION"))?;
    lua.globals().set("runner", runner)
}

fn register<B: AutodiffBackend>(lua: &Lua) -> mlua::Result<()> {
    let runner: Table = lua.globals().get("runner")?;
    model::register::<B>(lua, &runner)?;
    peft::register(lua, &runner)?;
    analysis::register(lua, &runner)?;
    quant::register::<B>(lua, &runner)?;
    data::register::<B>(lua, &runner)?;
    train::register::<B>(lua, &runner)?;
    preference::register(lua, &runner)?;
    preference::register_trainers::<B>(lua, &runner)?;
    rl::register_trainers::<B>(lua, &runner)?;
    eval::register::<B>(lua, &runner)?;
    sweep::register(lua, &runner)
}

/// `--set` values: integers and floats become numbers, true/false booleans, the rest strings.
fn parse_param(lua: &Lua, v: &str) -> mlua::Result<mlua::Value> {
    if let Ok(i) = v.parse::<i64>() {
        return Ok(mlua::Value::Integer(i));
    }
    if let Ok(x) = v.parse::<f64>() {
        return Ok(mlua::Value::Number(x));
    }
    Ok(match v {
        "true" => mlua::Value::Boolean(true),
        "false" => mlua::Value::Boolean(false),
        s => mlua::Value::String(lua.create_string(s)?),
    })
}

/// An mlua error taken apart: the message a person reads first, the Lua traceback, and
/// whether it is a recipe mistake (exit code 2) rather than a failure of the work.
pub(crate) struct ErrorParts {
    pub message: String,
    pub traceback: Option<String>,
    pub is_recipe_error: bool,
    /// Training gave up on non-finite losses (the trial's status is `nonfinite`).
    pub is_nonfinite: bool,
}

pub(crate) fn error_parts(e: &mlua::Error) -> ErrorParts {
    match e {
        mlua::Error::CallbackError { traceback, cause } => {
            let mut inner = error_parts(cause);
            inner.traceback = inner.traceback.or_else(|| Some(traceback.clone()));
            inner
        }
        mlua::Error::WithContext { context, cause } => {
            let mut inner = error_parts(cause);
            inner.message = format!("{context}: {}", inner.message);
            inner
        }
        mlua::Error::ExternalError(err) => {
            let is_recipe_error = err.downcast_ref::<RecipeError>().is_some();
            let is_nonfinite = err.downcast_ref::<options::NonFiniteStop>().is_some();
            ErrorParts {
                message: err.to_string(),
                traceback: None,
                is_recipe_error,
                is_nonfinite,
            }
        }
        mlua::Error::MemoryError(_) => ErrorParts {
            message: host::memory_error_message(),
            traceback: None,
            is_recipe_error: true,
            is_nonfinite: false,
        },
        mlua::Error::SyntaxError { message, .. } => ErrorParts {
            message: format!("syntax error: {message}"),
            traceback: None,
            is_recipe_error: true,
            is_nonfinite: false,
        },
        mlua::Error::RuntimeError(msg) => {
            let (message, traceback) = match msg.split_once("\nstack traceback:") {
                Some((m, t)) => (m.to_string(), Some(format!("stack traceback:{t}"))),
                None => (msg.clone(), None),
            };
            ErrorParts {
                message,
                traceback,
                is_recipe_error: false,
                is_nonfinite: false,
            }
        }
        other => ErrorParts {
            message: other.to_string(),
            traceback: None,
            is_recipe_error: false,
            is_nonfinite: false,
        },
    }
}

/// Converts JSON (e.g. a serialised config) into Lua tables.
pub(crate) fn json_to_lua(lua: &Lua, v: &serde_json::Value) -> mlua::Result<mlua::Value> {
    use serde_json::Value as J;
    Ok(match v {
        J::Null => mlua::Value::Nil,
        J::Bool(b) => mlua::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => mlua::Value::Integer(i),
            None => mlua::Value::Number(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => mlua::Value::String(lua.create_string(s)?),
        J::Array(a) => {
            let t = lua.create_table()?;
            for item in a {
                t.push(json_to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
        J::Object(o) => {
            let t = lua.create_table()?;
            for (k, item) in o {
                t.set(k.as_str(), json_to_lua(lua, item)?)?;
            }
            mlua::Value::Table(t)
        }
    })
}
