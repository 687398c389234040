//! `runner.sweep` and `runner.log`: run the trials of a sweep (grid, zip, random search),
//! skip those already done, and write trials.csv and steps.csv.

use std::path::{Path, PathBuf};

use mlua::{Function, Lua, Table, Value as LuaValue};

use super::host::RecipeInputs;
use super::options::{DryRunStop, Opts, describe, recipe_error, runtime_error};
use super::{ErrorParts, error_parts};
use crate::sweep::grid::Trial;
use crate::sweep::run::{
    DryRunCells, FailureKind, Sweep, SweepError, SweepRow, TrialCounts, TrialFailure, TrialLog,
    TrialOutcome, TrialRun, display_row,
};
use crate::sweep::space::{Distribution, RandomSearch, SweepSpace};
use crate::sweep::{TrialRecord, Value};
use crate::util::sha256_hex;

/// What `runner.sweep` does with its trials.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SweepMode {
    /// Run them (skipping those already done).
    #[default]
    Run,
    /// Print the trial table; each trial stops at its first heavy operation.
    DryRun,
    /// Only count them (for `runner slurm`).
    Count,
}

/// How this run treats sweeps: from the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepSettings {
    pub mode: SweepMode,
    /// `--shard I/N`: run every N-th trial starting at I, into `<sweep>/shards/I-of-N/`.
    pub shard: Option<(usize, usize)>,
    /// `--rerun`: run trials even when trials.csv has them as ok.
    pub rerun: bool,
}

/// One finished sweep, for the summary `--watch` keeps on screen.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepSummary {
    pub name: String,
    pub dir: PathBuf,
    pub rows: Vec<TrialRecord>,
}

/// What the sweep machinery keeps between calls from the recipe.
pub struct SweepHost {
    pub results_dir: PathBuf,
    /// Hash of the recipe text and what the command line changes (checkpoints record it).
    pub recipe_hash: String,
    /// The recipe text and its chunk name (`@path`), and what the command line adds to a
    /// trial's identity.
    recipe_source: Vec<u8>,
    pub recipe_chunk: String,
    command_identity: String,
    pub seed: Option<u64>,
    pub mode: SweepMode,
    settings: SweepSettings,
    pub trials_run: usize,
    pub trials_failed: usize,
    pub trials_reused: usize,
    /// (sweep, trials) for each sweep the recipe declared (all of them, before sharding).
    pub counts: Vec<(String, usize)>,
    pub summaries: Vec<SweepSummary>,
    sweeps_seen: Vec<String>,
    /// Where the running trial's `runner.log` rows go.
    pub(crate) current: Option<TrialLog>,
    /// `results/<sweep>/<trial-id>/` of the running trial.
    current_dir: Option<PathBuf>,
    /// Files first read by the running trial, with their fingerprints.
    trial_inputs: Option<Vec<(PathBuf, String)>>,
}

impl SweepHost {
    pub(crate) fn new(
        results_dir: PathBuf,
        recipe_source: Vec<u8>,
        command_identity: String,
        seed: Option<u64>,
        settings: SweepSettings,
    ) -> Self {
        let mut identity = recipe_source.clone();
        identity.extend(command_identity.as_bytes());
        Self {
            results_dir,
            recipe_hash: sha256_hex(&identity),
            recipe_source,
            recipe_chunk: String::new(),
            command_identity,
            seed,
            mode: settings.mode,
            settings,
            trials_run: 0,
            trials_failed: 0,
            trials_reused: 0,
            counts: Vec::new(),
            summaries: Vec::new(),
            sweeps_seen: Vec::new(),
            current: None,
            current_dir: None,
            trial_inputs: None,
        }
    }

    pub(crate) fn in_trial(&self) -> bool {
        self.trial_inputs.is_some()
    }

    /// A file read while a trial runs belongs to that trial's inputs.
    pub(crate) fn note_trial_input(&mut self, path: &Path, fingerprint: String) {
        if let Some(list) = self.trial_inputs.as_mut() {
            let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
            if !list.iter().any(|(p, _)| *p == path) {
                list.push((path, fingerprint));
            }
        }
    }

    /// The hash every trial id of a sweep starts from: the recipe text without the part that
    /// declares the sweep's values (the `runner.sweep{...}` call except its trial function,
    /// see [`super::declaration`], so adding a rank to the grid keeps the other trials' ids),
    /// the command line's --set and --device, and the fingerprints of every file read so far.
    /// `declaration` is the call's line and the trial function's first line, when both are
    /// in the recipe itself.
    fn sweep_hash(&self, declaration: Option<(usize, Option<usize>)>, inputs: &str) -> String {
        let text = String::from_utf8_lossy(&self.recipe_source);
        let text = match declaration {
            Some((call, def)) => super::declaration::mask_sweep_declaration(&text, call)
                // Read by lines when the call cannot be read: from the call to the line
                // before the trial function.
                .unwrap_or_else(|| match def {
                    Some(def) if def > call => mask_lines(&text, call, def - 1),
                    _ => text.into_owned(),
                }),
            None => text.into_owned(),
        };
        let mut masked = String::with_capacity(text.len() + 1);
        for line in text.split('\n') {
            masked.push_str(line);
            masked.push('\n');
        }
        sha256_hex(format!("{masked}{}\ninputs:\n{inputs}", self.command_identity).as_bytes())
    }
}

/// `text` with the contents of lines `first..=last` (1-based) removed, their breaks kept.
fn mask_lines(text: &str, first: usize, last: usize) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if !(first..=last).contains(&(i + 1)) {
            out.push_str(line);
        }
    }
    out
}

pub(crate) fn scalar_from_lua(v: &LuaValue) -> Option<Value> {
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
            return Err(format!(
                "{what}: keys must be names, found {}",
                describe(&k)
            ));
        };
        let k = k.to_string_lossy();
        let v = scalar_from_lua(&v).ok_or_else(|| {
            format!(
                "{what}: '{k}' must be a number, string or boolean, found {}",
                describe(&v)
            )
        })?;
        out.push((k, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A log line, printed above the progress bar when one is showing.
fn print_line(lua: &Lua, line: &str) {
    match lua.app_data_ref::<crate::progress::ProgressSlot>() {
        Some(slot) => slot.println(line),
        None => eprintln!("{line}"),
    }
}

pub(crate) fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    runner.set(
        "log",
        lua.create_function(|lua, row: LuaValue| {
            let LuaValue::Table(row) = row else {
                return Err(recipe_error(
                    lua,
                    format!(
                        "runner.log expects a table such as {{step = 1, loss = 2.5}}, found {}",
                        describe(&row)
                    ),
                ));
            };
            let row = scalar_table(&row, "runner.log").map_err(|e| recipe_error(lua, e))?;
            if row.iter().any(|(k, _)| k == "trial_id") {
                return Err(recipe_error(
                    lua,
                    "runner.log: 'trial_id' is steps.csv's own column; log it under another name",
                ));
            }
            let current = lua
                .app_data_ref::<SweepHost>()
                .and_then(|h| h.current.clone());
            match current {
                Some(log) => {
                    print_line(
                        lua,
                        &format!("  [{}] {}", log.trial_id(), display_row(&row)),
                    );
                    log.log(row).map_err(|e| {
                        runtime_error(lua, format!("runner.log: writing steps.csv: {e}"))
                    })?;
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
            let dir = lua
                .app_data_ref::<SweepHost>()
                .and_then(|h| h.current_dir.clone());
            let Some(dir) = dir else {
                return Err(recipe_error(
                    lua,
                    "runner.trial_dir() is only available inside a sweep trial",
                ));
            };
            std::fs::create_dir_all(&dir).map_err(|e| {
                runtime_error(
                    lua,
                    format!("runner.trial_dir: creating {}: {e}", dir.display()),
                )
            })?;
            Ok(dir.to_string_lossy().into_owned())
        })?,
    )?;
    // runner.results_dir(): the results folder (--results), where runner's API may write.
    runner.set(
        "results_dir",
        lua.create_function(|lua, ()| {
            Ok(lua
                .app_data_ref::<super::host::WriteRule>()
                .map(|r| r.results.to_string_lossy().into_owned()))
        })?,
    )?;
    runner.set("sweep", lua.create_function(run_sweep)?)
}

/// A list of scalars (or one scalar) for `what`.
fn value_list(o: &Opts, what: &str, v: &LuaValue) -> mlua::Result<Vec<Value>> {
    match v {
        LuaValue::Table(list) => {
            let mut values = Vec::new();
            for item in list.sequence_values::<LuaValue>() {
                let item = item?;
                values.push(scalar_from_lua(&item).ok_or_else(|| {
                    o.err(format!(
                        "{what}: values must be numbers, strings or booleans, found {}",
                        describe(&item)
                    ))
                })?);
            }
            if values.is_empty() {
                return Err(o.err(format!("{what} is an empty list")));
            }
            Ok(values)
        }
        other => Ok(vec![scalar_from_lua(other).ok_or_else(|| {
            o.err(format!(
                "{what} must be a list of values, found {}",
                describe(other)
            ))
        })?]),
    }
}

/// `name = {values...}` pairs of a grid or zip table.
fn named_lists(o: &Opts, field: &str) -> mlua::Result<Vec<(String, Vec<Value>)>> {
    let mut out = Vec::new();
    if let Some(g) = o.table(field)? {
        for pair in g.pairs::<LuaValue, LuaValue>() {
            let (k, v) = pair?;
            let LuaValue::String(k) = k else {
                return Err(o.err(format!(
                    "{field} keys must be parameter names, found {}",
                    describe(&k)
                )));
            };
            let k = k.to_string_lossy();
            out.push((k.clone(), value_list(o, &format!("{field}.{k}"), &v)?));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `random = {budget = 8, seed = 0, space = {lr = {min = 1e-4, max = 1e-2, log = true}, rank = {4, 8}}}`
fn random_search(lua: &Lua, o: &Opts) -> mlua::Result<Option<RandomSearch>> {
    let Some(t) = o.table("random")? else {
        return Ok(None);
    };
    let r = Opts::new(
        lua,
        "runner.sweep: random",
        Some(t),
        &["budget", "seed", "space"],
    )?;
    let budget = r.required("budget", r.count("budget", 1)?)?;
    let seed = r.int("seed")?.unwrap_or(0) as u64;
    let space_table = r.required("space", r.table("space")?)?;
    let mut space = Vec::new();
    for pair in space_table.pairs::<LuaValue, LuaValue>() {
        let (k, v) = pair?;
        let LuaValue::String(k) = k else {
            return Err(r.err(format!(
                "space keys must be parameter names, found {}",
                describe(&k)
            )));
        };
        let k = k.to_string_lossy();
        let range = match &v {
            LuaValue::Table(t) => t.contains_key("min")? || t.contains_key("max")?,
            _ => false,
        };
        let dist = if range {
            let LuaValue::Table(t) = v else {
                unreachable!()
            };
            let d = Opts::new(
                lua,
                "runner.sweep: random.space",
                Some(t),
                &["min", "max", "log", "int"],
            )?;
            Distribution::Range {
                min: d.required("min", d.num("min")?)?,
                max: d.required("max", d.num("max")?)?,
                log: d.bool("log")?.unwrap_or(false),
                int: d.bool("int")?.unwrap_or(false),
            }
        } else {
            Distribution::Choice(value_list(o, &format!("random.space.{k}"), &v)?)
        };
        space.push((k, dist));
    }
    space.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(RandomSearch {
        budget,
        seed,
        space,
    }))
}

fn params_table(lua: &Lua, trial: &Trial, seed: Option<u64>) -> mlua::Result<Table> {
    let params = lua.create_table()?;
    for (k, v) in &trial.params {
        params.set(k.as_str(), scalar_to_lua(lua, v)?)?;
    }
    if !trial.params.iter().any(|(k, _)| k == "seed") {
        params.set("seed", seed.unwrap_or(0))?;
    }
    Ok(params)
}

/// A row of the table `runner.sweep` returns.
fn result_row(lua: &Lua, r: &TrialRecord, reused: bool) -> mlua::Result<Table> {
    let row = lua.create_table()?;
    row.set("trial_id", r.trial_id.as_str())?;
    row.set("status", r.status.as_str())?;
    row.set("seconds", r.seconds)?;
    for (k, v) in r.params.iter().chain(r.metrics.iter()) {
        row.set(k.as_str(), scalar_to_lua(lua, v)?)?;
    }
    if let Some(msg) = &r.error {
        row.set("error", msg.as_str())?;
    }
    if reused {
        row.set("reused", true)?;
    }
    Ok(row)
}

/// Runs the trial function with the host set up for the trial whose folder is `dir`; returns
/// its outcome and the files it read.
fn call_trial(
    lua: &Lua,
    trial_fn: &Function,
    params: Table,
    dir: PathBuf,
    log: Option<TrialLog>,
) -> (mlua::Result<LuaValue>, Vec<(PathBuf, String)>) {
    {
        let mut host = lua.app_data_mut::<SweepHost>().expect("host");
        host.current = log;
        host.current_dir = Some(dir);
        host.trial_inputs = Some(Vec::new());
    }
    let outcome = trial_fn.call::<LuaValue>(params);
    // A loop left early (early stopping, an error) leaves its progress bar behind.
    if let Some(mut slot) = lua.remove_app_data::<crate::progress::ProgressSlot>()
        && let Some(mut p) = slot.current.take()
    {
        p.finish();
    }
    let mut host = lua.app_data_mut::<SweepHost>().expect("host");
    host.current = None;
    host.current_dir = None;
    let inputs = host.trial_inputs.take().unwrap_or_default();
    (outcome, inputs)
}

/// Frees what earlier trials left for Lua's garbage collector (models, optimizer states)
/// before the next one starts, so memory does not pile up across a sweep and the peak the
/// engine measures is that trial's own. A full collection costs time in proportion to the
/// Lua heap, which grows with a sweep's results, so it runs only when the process has grown
/// since the last one: after trials that built nothing big (a sweep of thousands of small
/// trials) it would make the sweep quadratic for nothing.
fn free_earlier_trials(lua: &Lua) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static AFTER_LAST: AtomicU64 = AtomicU64::new(0);
    const GROWTH: u64 = 16 << 20;
    let rss = crate::memory::current_rss_bytes();
    if let Some(now) = rss
        && now < AFTER_LAST.load(Ordering::Relaxed) + GROWTH
    {
        return;
    }
    let _ = lua.gc_collect();
    let _ = lua.gc_collect();
    if let Some(after) = crate::memory::current_rss_bytes() {
        AFTER_LAST.store(after, Ordering::Relaxed);
    }
}

/// One trial of `runner.sweep` for the engine: the trial function's result as metrics, or
/// its error as a failure of the matching kind.
fn run_trial(
    lua: &Lua,
    trial_fn: &Function,
    seed: Option<u64>,
    run: TrialRun<'_>,
) -> TrialOutcome<mlua::Error> {
    let params = match params_table(lua, run.trial, seed) {
        Ok(p) => p,
        // Only Lua running out of memory: stop the sweep, as a recipe error would.
        Err(e) => {
            let message = error_parts(&e).message;
            return TrialOutcome::failed(FailureKind::Abort(e), message);
        }
    };
    let (outcome, inputs) = call_trial(lua, trial_fn, params, run.dir, Some(run.log));
    let invalid = |message| TrialFailure {
        kind: FailureKind::Invalid,
        message,
        traceback: None,
    };
    let result = match outcome {
        Ok(LuaValue::Nil) => Ok(Vec::new()),
        Ok(LuaValue::Table(t)) => scalar_table(&t, "trial result")
            .and_then(|m| {
                crate::sweep::results::check_metric_names(&run.trial.params, &m).map(|()| m)
            })
            .map_err(invalid),
        Ok(other) => Err(invalid(format!(
            "a trial must return a table of metrics or nil, returned {}",
            describe(&other)
        ))),
        Err(e) => Err(trial_failure(e)),
    };
    TrialOutcome { result, inputs }
}

/// A trial's error: an interruption stops the sweep unrecorded, a recipe mistake stops it
/// after recording the trial, a non-finite stop is its own status, the rest fail the trial.
fn trial_failure(e: mlua::Error) -> TrialFailure<mlua::Error> {
    let ErrorParts {
        message,
        traceback,
        is_recipe_error,
        is_nonfinite,
    } = error_parts(&e);
    let kind = if crate::interrupt::state().is_some() {
        FailureKind::Interrupted(e)
    } else if is_nonfinite {
        FailureKind::Nonfinite
    } else if is_recipe_error {
        FailureKind::Abort(e)
    } else {
        FailureKind::Failed
    };
    TrialFailure {
        kind,
        message,
        traceback,
    }
}

fn run_sweep(lua: &Lua, opts: LuaValue) -> mlua::Result<Table> {
    let LuaValue::Table(opts) = opts else {
        return Err(recipe_error(
            lua,
            format!(
                "runner.sweep expects a table {{name = ..., grid = ..., trial = ...}}, found {}",
                describe(&opts)
            ),
        ));
    };
    let call_line = super::options::lua_location(lua)
        .and_then(|l| l.rsplit(':').next().and_then(|n| n.parse::<usize>().ok()));
    let o = Opts::new(
        lua,
        "runner.sweep",
        Some(opts),
        &["name", "grid", "zip", "random", "trial"],
    )?;
    let name = o.required("name", o.string("name")?)?;
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        || name.starts_with('.')
    {
        return Err(o.err(format!("name '{name}' must be letters, digits, '_', '-' or '.' (it names a folder under the results directory)")));
    }
    let trial_fn: Function = match o.raw("trial")? {
        LuaValue::Function(f) => f,
        other => {
            return Err(o.err(format!(
                "trial must be a function(p) ... end, found {}",
                describe(&other)
            )));
        }
    };
    let space = SweepSpace {
        grid: named_lists(&o, "grid")?,
        zip: named_lists(&o, "zip")?,
        random: random_search(lua, &o)?,
    };
    space.validate().map_err(|e| o.err(e))?;
    let trials = space.trials();

    // The call's values (name, grid...) are part of each trial's parameters: leave them out
    // of the hash.
    let info = trial_fn.info();
    // Only when both are in the recipe itself (not in a required module).
    let recipe_chunk = lua
        .app_data_ref::<SweepHost>()
        .expect("host")
        .recipe_chunk
        .clone();
    let declaration = match (call_line, info.source.as_deref()) {
        (Some(call), Some(src))
            if src == recipe_chunk && lua_location_source(lua).as_deref() == Some(src) =>
        {
            Some((call, info.line_defined))
        }
        _ => None,
    };
    let inputs = lua
        .app_data_ref::<RecipeInputs>()
        .map(|i| i.0.describe())
        .unwrap_or_default();
    let (hash, seed, settings, results_dir) = {
        let mut host = lua
            .app_data_mut::<SweepHost>()
            .expect("sweep host registered");
        if host.sweeps_seen.contains(&name) {
            return Err(o.err(format!(
                "a sweep named '{name}' already ran in this recipe; give each sweep its own name"
            )));
        }
        host.sweeps_seen.push(name.clone());
        host.counts.push((name.clone(), trials.len()));
        (
            host.sweep_hash(declaration, &inputs),
            host.seed,
            host.settings,
            host.results_dir.clone(),
        )
    };
    let sweep = Sweep::new(
        &results_dir,
        &name,
        &hash,
        seed,
        trials,
        settings.shard,
        settings.rerun,
    );
    let results = lua.create_table()?;
    match settings.mode {
        SweepMode::Count => Ok(results),
        SweepMode::DryRun => {
            for row in dry_run(lua, &sweep, &trial_fn)? {
                results.push(result_row(lua, &row.record, row.reused)?)?;
            }
            Ok(results)
        }
        SweepMode::Run => {
            run_trials(lua, &sweep, &trial_fn, &results)?;
            Ok(results)
        }
    }
}

/// The chunk name of the innermost Lua function calling into Rust (e.g. `@recipes/x.lua`).
fn lua_location_source(lua: &Lua) -> Option<String> {
    for level in 1..32 {
        match lua.inspect_stack(level, |d| d.source().source.map(|s| s.into_owned())) {
            None => return None,
            Some(Some(src)) if src.starts_with('@') => return Some(src),
            Some(_) => continue,
        }
    }
    None
}

fn run_trials(lua: &Lua, sweep: &Sweep, trial_fn: &Function, results: &Table) -> mlua::Result<()> {
    let mut counts = TrialCounts::default();
    let outcome = sweep.run(
        &mut counts,
        || free_earlier_trials(lua),
        |run| run_trial(lua, trial_fn, sweep.seed, run),
    );
    {
        let mut host = lua.app_data_mut::<SweepHost>().expect("host");
        host.trials_run += counts.run;
        host.trials_failed += counts.failed;
        host.trials_reused += counts.reused;
    }
    let rows = outcome.map_err(|e| match e {
        SweepError::Results(e) => runtime_error(
            lua,
            format!(
                "runner.sweep '{}': results in {}: {e}",
                sweep.name,
                sweep.dir.display()
            ),
        ),
        SweepError::Stopped(e) => e,
    })?;
    for row in &rows {
        results.push(result_row(lua, &row.record, row.reused)?)?;
    }
    lua.app_data_mut::<SweepHost>()
        .expect("host")
        .summaries
        .push(SweepSummary {
            name: sweep.name.clone(),
            dir: sweep.dir.clone(),
            rows: rows.into_iter().map(|r| r.record).collect(),
        });
    Ok(())
}

/// `--dry-run`: the trial table, with what each trial trains and the memory it would need;
/// returns the rows of the trials an earlier run finished.
fn dry_run(lua: &Lua, sweep: &Sweep, trial_fn: &Function) -> mlua::Result<Vec<SweepRow>> {
    sweep.dry_run(|trial, _id, dir| {
        let params = params_table(lua, trial, sweep.seed)?;
        free_earlier_trials(lua);
        crate::memory::reset_peak();
        let (outcome, _) = call_trial(lua, trial_fn, params, dir, None);
        let (trainable, memory) = match &outcome {
            Err(e) => match dry_stop(e) {
                Some(s) => (
                    format!(
                        "{} ({:.2}%)",
                        s.trainable,
                        100.0 * s.trainable as f64 / s.total.max(1) as f64
                    ),
                    format!(
                        "{:.0} MB at {}x{}",
                        s.estimate_bytes as f64 / (1u64 << 20) as f64,
                        s.batch,
                        s.seq
                    ),
                ),
                None if crate::interrupt::state().is_some() => return Err(e.clone()),
                None => ("-".into(), format!("error: {}", error_parts(e).message)),
            },
            Ok(_) => ("-".into(), "- (no training step)".into()),
        };
        Ok(DryRunCells { trainable, memory })
    })
}

fn dry_stop(e: &mlua::Error) -> Option<&DryRunStop> {
    match e {
        mlua::Error::CallbackError { cause, .. } | mlua::Error::WithContext { cause, .. } => {
            dry_stop(cause)
        }
        mlua::Error::ExternalError(err) => err.downcast_ref::<DryRunStop>(),
        _ => None,
    }
}
