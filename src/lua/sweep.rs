//! `runner.sweep` and `runner.log`: run a grid of trials, write trials.csv and steps.csv.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use mlua::{Function, Lua, Table, Value as LuaValue};

use super::options::{describe, recipe_error, runtime_error, Opts};
use super::{error_parts, ErrorParts};
use crate::sweep::grid::{expand_grid, trial_id};
use crate::sweep::{StepsLog, TrialRecord, TrialStatus, TrialsTable, Value};

/// What the sweep machinery keeps between calls from the recipe.
pub struct SweepHost {
    pub results_dir: PathBuf,
    pub recipe_hash: String,
    pub seed: Option<u64>,
    pub trials_run: usize,
    pub trials_failed: usize,
    sweeps_seen: Vec<String>,
    current: Option<(String, Rc<RefCell<StepsLog>>)>,
    /// `results/<sweep>/<trial-id>/` of the running trial.
    current_dir: Option<PathBuf>,
}

impl SweepHost {
    pub fn new(results_dir: PathBuf, recipe_hash: String, seed: Option<u64>) -> Self {
        Self { results_dir, recipe_hash, seed, trials_run: 0, trials_failed: 0, sweeps_seen: Vec::new(), current: None, current_dir: None }
    }
}

pub fn scalar_from_lua(v: &LuaValue) -> Option<Value> {
    match v {
        LuaValue::Integer(i) => Some(Value::Int(*i)),
        LuaValue::Number(x) => Some(Value::Num(*x)),
        LuaValue::String(s) => Some(Value::Str(s.to_string_lossy())),
        LuaValue::Boolean(b) => Some(Value::Bool(*b)),
        _ => None,
    }
}

fn scalar_to_lua(lua: &Lua, v: &Value) -> mlua::Result<LuaValue> {
    Ok(match v {
        Value::Int(i) => LuaValue::Integer(*i),
        Value::Num(x) => LuaValue::Number(*x),
        Value::Str(s) => LuaValue::String(lua.create_string(s)?),
        Value::Bool(b) => LuaValue::Boolean(*b),
    })
}

/// A table of name → scalar, e.g. a trial's metrics or a logged row.
fn scalar_table(t: &Table, what: &str) -> Result<Vec<(String, Value)>, String> {
    let mut out = Vec::new();
    for pair in t.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair.map_err(|e| e.to_string())?;
        let LuaValue::String(k) = k else {
            return Err(format!("{what}: keys must be names, found {}", describe(&k)));
        };
        let k = k.to_string_lossy();
        let v = scalar_from_lua(&v).ok_or_else(|| format!("{what}: '{k}' must be a number, string or boolean, found {}", describe(&v)))?;
        out.push((k, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn display_row(row: &[(String, Value)]) -> String {
    row.iter()
        .map(|(k, v)| match v {
            Value::Num(x) => format!("{k}={x:.4}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A log line, printed above the progress bar when one is showing.
fn print_line(lua: &Lua, line: &str) {
    match lua.app_data_ref::<crate::progress::ProgressSlot>() {
        Some(slot) => slot.println(line),
        None => eprintln!("{line}"),
    }
}

pub fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    runner.set(
        "log",
        lua.create_function(|lua, row: LuaValue| {
            let LuaValue::Table(row) = row else {
                return Err(recipe_error(lua, format!("runner.log expects a table such as {{step = 1, loss = 2.5}}, found {}", describe(&row))));
            };
            let row = scalar_table(&row, "runner.log").map_err(|e| recipe_error(lua, e))?;
            let current = lua.app_data_ref::<SweepHost>().and_then(|h| h.current.clone());
            match current {
                Some((id, steps)) => {
                    print_line(lua, &format!("  [{id}] {}", display_row(&row)));
                    steps.borrow_mut().log(&id, row).map_err(|e| runtime_error(lua, format!("runner.log: writing steps.csv: {e}")))?;
                }
                None => print_line(lua, &format!("  {}", display_row(&row))),
            }
            Ok(())
        })?,
    )?;
    // runner.trial_dir(): the running trial's own folder (created), for adapters and checkpoints.
    runner.set(
        "trial_dir",
        lua.create_function(|lua, ()| {
            let dir = lua.app_data_ref::<SweepHost>().and_then(|h| h.current_dir.clone());
            let Some(dir) = dir else {
                return Err(recipe_error(lua, "runner.trial_dir() is only available inside a sweep trial"));
            };
            std::fs::create_dir_all(&dir).map_err(|e| runtime_error(lua, format!("runner.trial_dir: creating {}: {e}", dir.display())))?;
            Ok(dir.to_string_lossy().into_owned())
        })?,
    )?;
    runner.set("sweep", lua.create_function(run_sweep)?)
}

fn run_sweep(lua: &Lua, opts: LuaValue) -> mlua::Result<Table> {
    let LuaValue::Table(opts) = opts else {
        return Err(recipe_error(lua, format!("runner.sweep expects a table {{name = ..., grid = ..., trial = ...}}, found {}", describe(&opts))));
    };
    let o = Opts::new(lua, "runner.sweep", Some(opts), &["name", "grid", "trial"])?;
    let name = o.required("name", o.string("name")?)?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)) || name.starts_with('.') {
        return Err(o.err(format!("name '{name}' must be letters, digits, '_', '-' or '.' (it names a folder under the results directory)")));
    }
    let trial_fn: Function = match o.raw("trial")? {
        LuaValue::Function(f) => f,
        other => return Err(o.err(format!("trial must be a function(p) ... end, found {}", describe(&other)))),
    };
    let mut grid = Vec::new();
    if let Some(g) = o.table("grid")? {
        for pair in g.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair?;
            let LuaValue::String(k) = k else {
                return Err(o.err(format!("grid keys must be parameter names, found {}", describe(&k))));
            };
            let k = k.to_string_lossy();
            let values = match &v {
                LuaValue::Table(list) => {
                    let mut values = Vec::new();
                    for item in list.sequence_values::<LuaValue>() {
                        let item = item?;
                        values.push(scalar_from_lua(&item).ok_or_else(|| o.err(format!("grid.{k}: values must be numbers, strings or booleans, found {}", describe(&item))))?);
                    }
                    if values.is_empty() {
                        return Err(o.err(format!("grid.{k} is an empty list")));
                    }
                    values
                }
                other => vec![scalar_from_lua(other).ok_or_else(|| o.err(format!("grid.{k} must be a list of values, found {}", describe(other))))?],
            };
            grid.push((k, values));
        }
    }
    let (dir, recipe_hash, seed) = {
        let mut host = lua.app_data_mut::<SweepHost>().expect("sweep host registered");
        if host.sweeps_seen.contains(&name) {
            return Err(o.err(format!("a sweep named '{name}' already ran in this recipe; give each sweep its own name")));
        }
        host.sweeps_seen.push(name.clone());
        (host.results_dir.join(&name), host.recipe_hash.clone(), host.seed)
    };
    let io = |e: std::io::Error| runtime_error(lua, format!("runner.sweep '{name}': writing results to {}: {e}", dir.display()));
    let mut table = TrialsTable::create(&dir).map_err(io)?;
    let steps = Rc::new(RefCell::new(StepsLog::create(&dir).map_err(io)?));
    let trials = expand_grid(&grid);
    let results = lua.create_table()?;
    eprintln!("sweep '{name}': {} trial(s) -> {}", trials.len(), dir.display());
    for (i, trial) in trials.iter().enumerate() {
        let id = trial_id(&recipe_hash, &name, seed, trial);
        eprintln!("trial {}/{} [{id}] {}", i + 1, trials.len(), display_row(&trial.params));
        let params = lua.create_table()?;
        for (k, v) in &trial.params {
            params.set(k.as_str(), scalar_to_lua(lua, v)?)?;
        }
        if !trial.params.iter().any(|(k, _)| k == "seed") {
            params.set("seed", seed.unwrap_or(0))?;
        }
        {
            let mut host = lua.app_data_mut::<SweepHost>().expect("host");
            host.current = Some((id.clone(), steps.clone()));
            host.current_dir = Some(dir.join(&id));
        }
        // Free what earlier trials left for Lua's garbage collector (models, optimizer
        // states) before this one starts, so memory does not pile up across a sweep and the
        // peak below is this trial's own.
        lua.gc_collect()?;
        lua.gc_collect()?;
        crate::memory::reset_peak();
        let started = Instant::now();
        let outcome = trial_fn.call::<LuaValue>(params);
        let seconds = started.elapsed().as_secs_f64();
        // A loop left early (early stopping, an error) leaves its progress bar behind.
        if let Some(mut slot) = lua.remove_app_data::<crate::progress::ProgressSlot>()
            && let Some(mut p) = slot.current.take()
        {
            p.finish();
        }
        let peak_mem_mb = crate::memory::peak_rss_bytes().map(|b| (b as f64 / (1 << 20) as f64).round());
        {
            let mut host = lua.app_data_mut::<SweepHost>().expect("host");
            host.current = None;
            host.current_dir = None;
        }
        let mut nonfinite = false;
        let (mut metrics, failure, abort) = match outcome {
            Ok(LuaValue::Nil) => (Vec::new(), None, None),
            Ok(LuaValue::Table(t)) => match scalar_table(&t, "trial result") {
                Ok(m) => (m, None, None),
                Err(msg) => (Vec::new(), Some(msg), None),
            },
            Ok(other) => (Vec::new(), Some(format!("a trial must return a table of metrics or nil, returned {}", describe(&other))), None),
            Err(e) => {
                let ErrorParts { message, traceback, is_recipe_error, is_nonfinite } = error_parts(&e);
                nonfinite = is_nonfinite;
                eprintln!("  trial [{id}] {}: {message}", if nonfinite { "stopped" } else { "failed" });
                if let Some(tb) = &traceback {
                    eprintln!("  {}", tb.replace('\n', "\n  "));
                }
                (Vec::new(), Some(message), is_recipe_error.then_some(e))
            }
        };
        let status = match (&failure, nonfinite) {
            (None, _) => TrialStatus::Ok,
            (Some(_), true) => TrialStatus::Nonfinite,
            (Some(_), false) => TrialStatus::Failed,
        };
        if let Some(mb) = peak_mem_mb.filter(|_| !metrics.iter().any(|(k, _)| k == "peak_mem_mb")) {
            // Peak resident memory of the process during the trial (weights included).
            metrics.push(("peak_mem_mb".into(), Value::Int(mb as i64)));
        }
        if failure.is_none() {
            eprintln!("  ok in {seconds:.1}s {}", display_row(&metrics));
        }
        let row = lua.create_table()?;
        row.set("trial_id", id.as_str())?;
        row.set("status", status.as_str())?;
        row.set("seconds", seconds)?;
        for (k, v) in trial.params.iter().chain(metrics.iter()) {
            row.set(k.as_str(), scalar_to_lua(lua, v)?)?;
        }
        if let Some(msg) = &failure {
            row.set("error", msg.as_str())?;
        }
        results.push(row)?;
        table
            .record(TrialRecord { trial_id: id, params: trial.params.clone(), metrics, status, seconds, error: failure })
            .map_err(io)?;
        {
            let mut host = lua.app_data_mut::<SweepHost>().expect("host");
            host.trials_run += 1;
            if status != TrialStatus::Ok {
                host.trials_failed += 1;
            }
        }
        if let Some(e) = abort {
            // A recipe mistake would fail every remaining trial the same way: stop here.
            return Err(e);
        }
    }
    Ok(results)
}
