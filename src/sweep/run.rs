//! Running the trials of one sweep, whatever a trial does: the caller hands in a closure
//! per trial, and this does the rest — one writer per results folder, resuming (a trial
//! already ok is reused unless `rerun`, or runs again when a file it read changed or a file
//! it wrote and returned is gone), moving rows of trials the sweep no longer has to
//! `archive/`, each trial's peak memory, and trials.csv, steps.csv and `.inputs.json`.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Instant;

use super::fingerprint::unchanged;
use super::grid::{Trial, trial_id};
use super::journal::{self, Journal};
use super::results::{StepRow, StepsLog, TrialRecord, TrialStatus, TrialsTable, WriterLock};
use super::space::shard;
use super::value::Value;
use crate::util::write_atomic;

/// One sweep as this run sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub name: String,
    /// Where its results go: `<results>/<name>/`, or `<results>/<name>/shards/I-of-N/`.
    pub dir: PathBuf,
    /// Every trial of the sweep, in order.
    pub trials: Vec<Trial>,
    /// The id of each trial, aligned with `trials`.
    pub ids: Vec<String>,
    /// Indices into `trials` of those this run does: all of them, or one shard's.
    pub mine: Vec<usize>,
    /// Run trials even when trials.csv has them as ok.
    pub rerun: bool,
    /// The run's seed (part of each trial id).
    pub seed: Option<u64>,
}

impl Sweep {
    /// The sweep `name` under `results_dir`, its trial ids made from `hash` (what every id
    /// of the sweep starts from) and `seed`; `shard_of` (index, count) keeps every count-th
    /// trial from index on, with results in `shards/I-of-N/`.
    pub fn new(
        results_dir: &Path,
        name: &str,
        hash: &str,
        seed: Option<u64>,
        trials: Vec<Trial>,
        shard_of: Option<(usize, usize)>,
        rerun: bool,
    ) -> Self {
        let ids = trials
            .iter()
            .map(|t| trial_id(hash, name, seed, t))
            .collect();
        let mine = match shard_of {
            Some((i, n)) => shard(&trials, i, n).into_iter().map(|(k, _)| k).collect(),
            None => (0..trials.len()).collect(),
        };
        let sweep_dir = results_dir.join(name);
        let dir = match shard_of {
            Some((i, n)) => sweep_dir.join("shards").join(format!("{i}-of-{n}")),
            None => sweep_dir,
        };
        Self {
            name: name.to_string(),
            dir,
            trials,
            ids,
            mine,
            rerun,
            seed,
        }
    }

    /// "sweep 'x': 4 trial(s), 2 in this shard -> results/x/shards/0-of-2"
    fn headline(&self) -> String {
        format!(
            "sweep '{}': {} trial(s){} -> {}",
            self.name,
            self.trials.len(),
            if self.mine.len() < self.trials.len() {
                format!(", {} in this shard", self.mine.len())
            } else {
                String::new()
            },
            self.dir.display()
        )
    }
}

/// Where a running trial's logged rows go: its sweep's steps.csv.
#[derive(Clone)]
pub struct TrialLog {
    trial_id: String,
    steps: Rc<RefCell<StepsLog>>,
}

impl TrialLog {
    pub fn trial_id(&self) -> &str {
        &self.trial_id
    }

    /// Appends one row (written at once).
    pub fn log(&self, row: StepRow) -> io::Result<()> {
        self.steps.borrow_mut().log(&self.trial_id, row)
    }

    /// The trial resumed from a checkpoint at `step`: see [`StepsLog::resumed_from`].
    pub fn resumed_from(&self, step: usize) -> io::Result<()> {
        self.steps.borrow_mut().resumed_from(&self.trial_id, step)
    }
}

/// What the closure gets for one trial.
pub struct TrialRun<'a> {
    pub trial: &'a Trial,
    pub id: &'a str,
    /// The trial's own folder, `<sweep dir>/<id>/` (not created).
    pub dir: PathBuf,
    pub log: TrialLog,
}

/// How a trial that did not produce metrics ends.
#[derive(Debug)]
pub enum FailureKind<E> {
    /// It raised an error: recorded as failed.
    Failed,
    /// Training gave up on non-finite values: recorded as nonfinite.
    Nonfinite,
    /// It returned something that is not metrics: recorded as failed, with no line on stderr
    /// (the row's error says why).
    Invalid,
    /// A mistake in the recipe, which every remaining trial would repeat: recorded as
    /// failed, and the sweep ends with `E`.
    Abort(E),
    /// Stopped from outside (Ctrl-C, a time limit): not recorded, so it runs again next
    /// time, and the sweep ends with `E`.
    Interrupted(E),
}

#[derive(Debug)]
pub struct TrialFailure<E> {
    pub kind: FailureKind<E>,
    pub message: String,
    /// Printed under the message (e.g. a Lua traceback).
    pub traceback: Option<String>,
}

/// What one trial gave.
#[derive(Debug)]
pub struct TrialOutcome<E> {
    pub result: Result<Vec<(String, Value)>, TrialFailure<E>>,
    /// Files the trial itself read, with their fingerprints: it runs again when one changes.
    pub inputs: Vec<(PathBuf, String)>,
}

impl<E> TrialOutcome<E> {
    pub fn ok(metrics: Vec<(String, Value)>) -> Self {
        Self {
            result: Ok(metrics),
            inputs: Vec::new(),
        }
    }

    pub fn failed(kind: FailureKind<E>, message: impl Into<String>) -> Self {
        Self {
            result: Err(TrialFailure {
                kind,
                message: message.into(),
                traceback: None,
            }),
            inputs: Vec::new(),
        }
    }
}

/// Trials run, failed and reused, counted as they happen (also when the sweep stops early).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrialCounts {
    pub run: usize,
    pub failed: usize,
    pub reused: usize,
}

/// One trial of this run's share and its row.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    pub record: TrialRecord,
    /// Taken from an earlier run instead of run now.
    pub reused: bool,
}

#[derive(Debug)]
pub enum SweepError<E> {
    /// Reading or writing the results files.
    Results(io::Error),
    /// A trial's [`FailureKind::Abort`] or [`FailureKind::Interrupted`].
    Stopped(E),
}

/// Which files each trial read itself (`.inputs.json`), to re-run a trial whose data changed.
type TrialInputs = BTreeMap<String, Vec<(PathBuf, String)>>;

fn read_trial_inputs(dir: &Path) -> TrialInputs {
    std::fs::read(dir.join(".inputs.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn write_trial_inputs(dir: &Path, inputs: &TrialInputs) -> io::Result<()> {
    write_atomic(
        &dir.join(".inputs.json"),
        &serde_json::to_vec_pretty(inputs).map_err(io::Error::other)?,
    )
    .map_err(io::Error::from)
}

/// The trial's peak memory, weights included: `peak_mem_mb` is the process's resident memory
/// on the CPU, or the device memory in use on a GPU, where the host's peak follows as
/// `peak_host_mb` (an offloaded optimizer's moments live there).
fn peak_memory_mb() -> Vec<(&'static str, i64)> {
    let mb = |b: u64| (b as f64 / (1 << 20) as f64).round() as i64;
    let host = crate::memory::peak_rss_bytes().map(mb);
    match crate::memory::peak_device_bytes() {
        Some(device) => [("peak_mem_mb", Some(mb(device))), ("peak_host_mb", host)]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect(),
        None => host.map(|h| ("peak_mem_mb", h)).into_iter().collect(),
    }
}

/// `rank=4 lr=0.0010`: parameters or metrics on one line.
pub(crate) fn display_row(row: &[(String, Value)]) -> String {
    row.iter()
        .map(|(k, v)| match v {
            Value::Num(x) => format!("{k}={x:.4}"),
            other => format!("{k}={other}"),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Moves the rows of trials the sweep no longer has (an edited trial function, a removed grid
/// value) to `archive/`, so trials.csv describes the current sweep only.
fn archive_stale(
    sweep: &Sweep,
    table: &mut TrialsTable,
    steps: &mut StepsLog,
    trial_inputs: &mut TrialInputs,
) -> io::Result<()> {
    let ids: HashSet<&String> = sweep.ids.iter().collect();
    let stale: Vec<TrialRecord> = table
        .rows()
        .iter()
        .filter(|r| !ids.contains(&r.trial_id))
        .cloned()
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let stale_ids: HashSet<&str> = stale.iter().map(|r| r.trial_id.as_str()).collect();
    let archive = sweep.dir.join("archive");
    let mut old = TrialsTable::open(&archive)?;
    let mut old_steps = StepsLog::open(&archive)?;
    // Taken out in memory here; the files change below, the archive's first.
    let mut moved: HashMap<String, Vec<_>> = HashMap::new();
    for (id, row) in steps.retain(|id| !stale_ids.contains(id)) {
        moved.entry(id).or_default().push(row);
    }
    for r in &stale {
        old.upsert(r.clone());
        old_steps.append(&r.trial_id, moved.remove(&r.trial_id).unwrap_or_default());
        trial_inputs.remove(&r.trial_id);
    }
    // The archive is written whole before the rows leave the sweep's own files, so that a
    // crash in between leaves them in both places, never in neither.
    old_steps.rewrite()?;
    old.flush()?;
    steps.rewrite()?;
    table.take_unless(|r| ids.contains(&r.trial_id))?;
    eprintln!(
        "sweep '{}': {} trial(s) of an earlier version of the recipe moved to {}",
        sweep.name,
        stale.len(),
        archive.display()
    );
    Ok(())
}

/// The row of a trial that ran for `seconds` and gave `result`, with its peak memory among
/// the metrics, and the error to end the sweep with after recording it (a recipe mistake).
/// An interrupted trial gives `Err`: it is not recorded.
fn trial_record<E>(
    trial: &Trial,
    id: &str,
    result: Result<Vec<(String, Value)>, TrialFailure<E>>,
    seconds: f64,
) -> Result<(TrialRecord, Option<E>), E> {
    let peak_mem_mb = peak_memory_mb();
    let (mut metrics, status, error, abort) = match result {
        Ok(metrics) => (metrics, TrialStatus::Ok, None, None),
        Err(TrialFailure {
            kind,
            message,
            traceback,
        }) => {
            let (status, abort, raised) = match kind {
                FailureKind::Interrupted(e) => {
                    // Stopped from outside: not recorded, so it runs again next time.
                    eprintln!("  trial [{id}] stopped: {message}");
                    return Err(e);
                }
                FailureKind::Invalid => (TrialStatus::Failed, None, false),
                FailureKind::Failed => (TrialStatus::Failed, None, true),
                FailureKind::Nonfinite => (TrialStatus::Nonfinite, None, true),
                FailureKind::Abort(e) => (TrialStatus::Failed, Some(e), true),
            };
            if raised {
                let verb = if status == TrialStatus::Nonfinite {
                    "stopped"
                } else {
                    "failed"
                };
                eprintln!("  trial [{id}] {verb}: {message}");
                if let Some(tb) = &traceback {
                    eprintln!("  {}", tb.replace('\n', "\n  "));
                }
            }
            (Vec::new(), status, Some(message), abort)
        }
    };
    for (name, mb) in peak_mem_mb {
        if !metrics.iter().any(|(k, _)| k == name) {
            metrics.push((name.into(), Value::Int(mb)));
        }
    }
    if error.is_none() {
        eprintln!("  ok in {seconds:.1}s {}", display_row(&metrics));
    }
    let record = TrialRecord {
        trial_id: id.to_string(),
        params: trial.params.clone(),
        metrics,
        status,
        seconds,
        error,
    };
    Ok((record, abort))
}

/// What a run does with a trial, given what an earlier run left of it in trials.csv.
#[derive(Debug)]
enum Earlier<'a> {
    /// Not there: it runs.
    Absent,
    /// Finished ok, `--rerun` is off, and no file it read has changed: reused.
    Reused(&'a TrialRecord),
    /// Finished ok, but `--rerun` asks for it again.
    Rerun,
    /// Finished ok, but a file it read has changed since: it runs again.
    InputsChanged,
    /// Finished ok, but a path it returned inside its own folder is gone (results are often
    /// committed without the large files a trial wrote, such as an adapter a later stage
    /// loads): it runs again.
    OutputMissing(String),
    /// Failed or non-finite earlier: it runs again.
    Again(TrialStatus),
}

impl Sweep {
    /// The one reuse decision, for a real run and for `--dry-run` alike.
    fn earlier<'a>(&self, table: &'a TrialsTable, inputs: &TrialInputs, id: &str) -> Earlier<'a> {
        match table.find(id) {
            None => Earlier::Absent,
            Some(r) if r.status != TrialStatus::Ok => Earlier::Again(r.status),
            Some(_) if self.rerun => Earlier::Rerun,
            Some(_) if !inputs.get(id).is_none_or(|files| unchanged(files)) => {
                Earlier::InputsChanged
            }
            Some(r) => match missing_output(&self.dir.join(id), r) {
                Some(path) => Earlier::OutputMissing(path),
                None => Earlier::Reused(r),
            },
        }
    }

    /// Runs this run's share of the trials through `run_trial`, skipping those done earlier,
    /// and records each in trials.csv; `before_trial` runs before each trial's memory peak is
    /// reset (to free what earlier trials left). Returns the rows of this run's share in
    /// order; `counts` grows as trials end, also when the sweep stops early.
    pub fn run<E>(
        &self,
        counts: &mut TrialCounts,
        mut before_trial: impl FnMut(),
        mut run_trial: impl FnMut(TrialRun<'_>) -> TrialOutcome<E>,
    ) -> Result<Vec<SweepRow>, SweepError<E>> {
        let dir = &self.dir;
        let io = SweepError::Results;
        let _lock = WriterLock::acquire(dir).map_err(io)?;
        // trials.csv with what the journal of an interrupted run holds, compacted.
        let mut table = TrialsTable::open(dir).map_err(io)?;
        let mut trial_inputs = read_trial_inputs(dir);
        let journaled = journal::read(dir).map_err(io)?;
        if !journaled.is_empty() {
            for entry in journaled {
                trial_inputs.insert(entry.record.trial_id, entry.inputs);
            }
            write_trial_inputs(dir, &trial_inputs).map_err(io)?;
            journal::clear(dir).map_err(io)?;
        }
        let steps = Rc::new(RefCell::new(StepsLog::open(dir).map_err(io)?));
        archive_stale(self, &mut table, &mut steps.borrow_mut(), &mut trial_inputs).map_err(io)?;
        eprintln!("{}", self.headline());
        let mut books = Books {
            journal: Journal::open(dir).map_err(io)?,
            compacted: Instant::now(),
            table,
            trial_inputs,
        };
        let mut rows = Vec::with_capacity(self.mine.len());
        let result = self.run_each(
            counts,
            &mut books,
            &steps,
            &mut rows,
            &mut before_trial,
            &mut run_trial,
        );
        // However the run ends, the journal goes into trials.csv and .inputs.json.
        let compacted = books.compact(dir).map_err(io);
        result.and(compacted)?;
        Ok(rows)
    }

    fn run_each<E>(
        &self,
        counts: &mut TrialCounts,
        books: &mut Books,
        steps: &Rc<RefCell<StepsLog>>,
        rows: &mut Vec<SweepRow>,
        before_trial: &mut impl FnMut(),
        run_trial: &mut impl FnMut(TrialRun<'_>) -> TrialOutcome<E>,
    ) -> Result<(), SweepError<E>> {
        let dir = &self.dir;
        let io = SweepError::Results;
        for (k, &index) in self.mine.iter().enumerate() {
            let trial = &self.trials[index];
            let id = &self.ids[index];
            let label = format!(
                "trial {}/{} [{id}] {}",
                k + 1,
                self.mine.len(),
                display_row(&trial.params)
            );
            match self.earlier(&books.table, &books.trial_inputs, id) {
                Earlier::Reused(done) => {
                    eprintln!("{label}: done earlier, reused");
                    rows.push(SweepRow {
                        record: done.clone(),
                        reused: true,
                    });
                    counts.reused += 1;
                    continue;
                }
                Earlier::InputsChanged => {
                    eprintln!("{label}: a file it read changed; running it again")
                }
                Earlier::OutputMissing(path) => {
                    eprintln!("{label}: {path}, which it wrote, is gone; running it again")
                }
                Earlier::Absent | Earlier::Again(_) | Earlier::Rerun => eprintln!("{label}"),
            }
            // Rows an interrupted or failed earlier attempt logged: kept up to the checkpoint
            // the trial resumes from, else dropped (they would appear twice).
            steps.borrow_mut().begin_trial(id);
            before_trial();
            crate::memory::reset_peak();
            let started = Instant::now();
            let outcome = run_trial(TrialRun {
                trial,
                id,
                dir: dir.join(id),
                log: TrialLog {
                    trial_id: id.clone(),
                    steps: steps.clone(),
                },
            });
            let seconds = started.elapsed().as_secs_f64();
            steps.borrow_mut().settle(id).map_err(io)?;
            let (record, abort) =
                trial_record(trial, id, outcome.result, seconds).map_err(SweepError::Stopped)?;
            let status = record.status;
            rows.push(SweepRow {
                record: record.clone(),
                reused: false,
            });
            // The trial's own inputs, stored with paths relative to the working folder where
            // possible (results are often committed).
            let cwd = std::env::current_dir().unwrap_or_default();
            let inputs: Vec<_> = outcome
                .inputs
                .into_iter()
                .map(|(p, f)| (p.strip_prefix(&cwd).map(Path::to_path_buf).unwrap_or(p), f))
                .collect();
            books.record(dir, record, inputs).map_err(io)?;
            counts.run += 1;
            if status != TrialStatus::Ok {
                counts.failed += 1;
            }
            if let Some(e) = abort {
                // A recipe mistake would fail every remaining trial the same way: stop here.
                return Err(SweepError::Stopped(e));
            }
        }
        Ok(())
    }
}

/// The first result of `record` that names a path inside the trial's folder `trial_dir` (as
/// given, or made absolute) where nothing exists any more.
fn missing_output(trial_dir: &Path, record: &TrialRecord) -> Option<String> {
    let absolute = std::path::absolute(trial_dir).ok();
    record.metrics.iter().find_map(|(_, value)| match value {
        Value::Str(s) => {
            let path = Path::new(s);
            let inside = path.starts_with(trial_dir)
                || absolute.as_ref().is_some_and(|a| path.starts_with(a));
            (inside && !path.exists()).then(|| s.clone())
        }
        _ => None,
    })
}

/// How stale trials.csv may get while a sweep runs (the journal has every trial at once).
const COMPACT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// What a running sweep keeps of its trials: the table and inputs in memory, and the journal
/// that has each trial on disk the moment it ends.
struct Books {
    table: TrialsTable,
    trial_inputs: TrialInputs,
    journal: Journal,
    compacted: Instant,
}

impl Books {
    /// Records a finished trial: one journal line (the same cost at every trial); trials.csv
    /// and `.inputs.json` follow every few seconds, and when the run ends.
    fn record(
        &mut self,
        dir: &Path,
        record: TrialRecord,
        inputs: Vec<(PathBuf, String)>,
    ) -> io::Result<()> {
        self.journal.append(&journal::Entry {
            record: record.clone(),
            inputs: inputs.clone(),
        })?;
        self.trial_inputs.insert(record.trial_id.clone(), inputs);
        self.table.upsert(record);
        if self.compacted.elapsed() >= COMPACT_EVERY {
            self.compact(dir)?;
            self.journal = Journal::open(dir)?;
            self.compacted = Instant::now();
        }
        Ok(())
    }

    /// Writes the journal's trials into trials.csv and `.inputs.json` (each replaced whole),
    /// then empties it. A crash in between leaves trials in both places, which replays
    /// harmlessly.
    fn compact(&self, dir: &Path) -> io::Result<()> {
        self.table.flush()?;
        write_trial_inputs(dir, &self.trial_inputs)?;
        journal::clear(dir)
    }
}

/// What `--dry-run` shows of a trial besides its number, id, parameters and state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DryRunCells {
    /// Trainable parameters, e.g. `1024 (0.52%)`.
    pub trainable: String,
    /// The memory a training step would need, or why there is no estimate.
    pub memory: String,
}

impl Sweep {
    /// `--dry-run`: prints the trial table of this run's share, with what `describe` says of
    /// each trial (given the trial, its id and its folder) and whether it would run or be
    /// reused. Writes nothing. Returns the rows of the trials that finished in an earlier run,
    /// as a real run would reuse them, so a recipe whose later stages read an earlier stage's
    /// results can be dry-run past that stage.
    pub fn dry_run<E>(
        &self,
        mut describe: impl FnMut(&Trial, &str, PathBuf) -> Result<DryRunCells, E>,
    ) -> Result<Vec<SweepRow>, E> {
        // What a real run would start from: trials.csv and `.inputs.json`, with the journal
        // of an interrupted run on top, read without writing anything.
        let mut done = TrialsTable::open_read_only(&self.dir).ok();
        let mut inputs = read_trial_inputs(&self.dir);
        if let (Some(table), Ok(journaled)) = (done.as_mut(), journal::read(&self.dir)) {
            for entry in journaled {
                inputs.insert(entry.record.trial_id.clone(), entry.inputs);
                table.upsert(entry.record);
            }
        }
        println!("{}", self.headline());
        let mut lines = vec![vec![
            "#".to_string(),
            "trial_id".into(),
            "parameters".into(),
            "trainable".into(),
            "est. memory".into(),
            "state".into(),
        ]];
        let mut finished = Vec::new();
        for &index in &self.mine {
            let trial = &self.trials[index];
            let id = &self.ids[index];
            let DryRunCells { trainable, memory } = describe(trial, id, self.dir.join(id))?;
            let earlier = done
                .as_ref()
                .map_or(Earlier::Absent, |t| self.earlier(t, &inputs, id));
            let state = match earlier {
                Earlier::Reused(r) => {
                    finished.push(SweepRow {
                        record: r.clone(),
                        reused: true,
                    });
                    "done (reused)".to_string()
                }
                Earlier::Rerun => "ok (runs again: --rerun)".to_string(),
                Earlier::InputsChanged => "ok (runs again: a file it read changed)".to_string(),
                Earlier::OutputMissing(path) => format!("ok (runs again: {path} is gone)"),
                Earlier::Again(status) => format!("{} (runs again)", status.as_str()),
                Earlier::Absent => "to run".to_string(),
            };
            lines.push(vec![
                (index + 1).to_string(),
                id.clone(),
                display_row(&trial.params),
                trainable,
                memory,
                state,
            ]);
        }
        let widths: Vec<usize> = (0..lines[0].len())
            .map(|c| {
                lines
                    .iter()
                    .map(|l| l[c].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for l in &lines {
            let cells: Vec<String> = l
                .iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            println!("  {}", cells.join("  ").trim_end());
        }
        Ok(finished)
    }
}
