//! Reading a finished sweep's `trials.csv` / `steps.csv` back for reporting: pivot tables
//! (`table`) and figures (`plot`).

pub mod heatmap;
pub mod plot;
pub mod table;

use std::borrow::Cow;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::sweep::results::TrialColumns;
use crate::sweep::{TrialRecord, TrialStatus, Value};

/// One row of `steps.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRow {
    pub trial_id: String,
    /// The `step` cell; when the file has no step column (or the cell is empty), the row's
    /// 1-based position among that trial's rows.
    pub step: f64,
    /// Aligned with [`SweepResults::step_keys`]; `None` when not logged in this row.
    pub values: Vec<Option<f64>>,
}

/// A column of `trials.csv`, resolved by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    TrialId,
    Status,
    Seconds,
    Param(usize),
    Metric(usize),
    Error,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SweepResults {
    /// The folder's name, e.g. `lora_rank_sweep`.
    pub name: String,
    /// The parameter columns of trials.csv, in file order.
    pub params: Vec<String>,
    /// The metric columns of trials.csv, in file order.
    pub metrics: Vec<String>,
    pub trials: Vec<TrialRecord>,
    /// Logged keys of `steps.csv` other than `trial_id` and `step`.
    pub step_keys: Vec<String>,
    pub steps: Vec<StepRow>,
}

impl SweepResults {
    /// Reads `dir`'s trials.csv and steps.csv, with the trials of a running sweep's journal
    /// laid over trials.csv (which it lags by a few seconds), so a running sweep reads as it is.
    pub fn load(dir: &Path) -> Result<Self> {
        let trials_path = dir.join("trials.csv");
        let journaled = crate::sweep::results::journaled_trials(dir)
            .with_context(|| format!("cannot read the journal in {}", dir.display()))?;
        let (mut params, mut metrics, mut trials) = if trials_path.is_file() {
            read_trials(&trials_path)?
        } else if !journaled.is_empty() {
            (Vec::new(), Vec::new(), Vec::new())
        } else {
            bail!("no trials.csv in {}; run the recipe first", dir.display());
        };
        for record in journaled {
            let text = |list: Vec<(String, Value)>, names: &mut Vec<String>| {
                list.into_iter()
                    .map(|(k, v)| {
                        if !names.contains(&k) {
                            names.push(k.clone());
                        }
                        (k, cell_value(&v.to_string()))
                    })
                    .collect()
            };
            let record = TrialRecord {
                params: text(record.params, &mut params),
                metrics: text(record.metrics, &mut metrics),
                ..record
            };
            match trials.iter().position(|t| t.trial_id == record.trial_id) {
                Some(i) => trials[i] = record,
                None => trials.push(record),
            }
        }

        let (step_keys, steps) = load_steps(&dir.join("steps.csv"))?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| dir.display().to_string());
        Ok(Self {
            name,
            params,
            metrics,
            trials,
            step_keys,
            steps,
        })
    }

    pub(crate) fn columns(&self) -> Vec<String> {
        let mut out = vec!["trial_id".to_string()];
        out.extend(self.params.iter().cloned());
        out.extend(["status".to_string(), "seconds".to_string()]);
        out.extend(self.metrics.iter().cloned());
        out.push("error".to_string());
        out
    }

    /// Resolves a column by name; the error lists the available columns.
    pub(crate) fn column(&self, name: &str) -> Result<Column> {
        let found = match name {
            "trial_id" => Some(Column::TrialId),
            "status" => Some(Column::Status),
            "seconds" => Some(Column::Seconds),
            "error" => Some(Column::Error),
            _ => (self
                .params
                .iter()
                .position(|p| p == name)
                .map(Column::Param))
            .or_else(|| {
                self.metrics
                    .iter()
                    .position(|m| m == name)
                    .map(Column::Metric)
            }),
        };
        found.with_context(|| {
            format!(
                "unknown column {name:?} in sweep {}; available: {}",
                self.name,
                self.columns().join(", ")
            )
        })
    }

    pub(crate) fn column_name(&self, col: Column) -> &str {
        match col {
            Column::TrialId => "trial_id",
            Column::Status => "status",
            Column::Seconds => "seconds",
            Column::Param(i) => &self.params[i],
            Column::Metric(i) => &self.metrics[i],
            Column::Error => "error",
        }
    }

    /// The cell of `col` for `trial`, as the file has it; empty when missing.
    pub(crate) fn cell<'a>(&self, trial: &'a TrialRecord, col: Column) -> Cow<'a, str> {
        let named = |list: &'a [(String, Value)], name: &str| match list
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
        {
            Some(Value::Str(s)) => Cow::Borrowed(s.as_str()),
            Some(v) => Cow::Owned(v.to_string()),
            None => Cow::Borrowed(""),
        };
        match col {
            Column::TrialId => Cow::Borrowed(&trial.trial_id),
            Column::Status => Cow::Borrowed(trial.status.as_str()),
            Column::Seconds => Cow::Owned(format!("{}", trial.seconds)),
            Column::Param(i) => named(&trial.params, &self.params[i]),
            Column::Metric(i) => named(&trial.metrics, &self.metrics[i]),
            Column::Error => Cow::Borrowed(trial.error.as_deref().unwrap_or("")),
        }
    }

    /// Metric `i` of `trial` as a number; `None` when missing or not a number.
    pub fn metric(&self, trial: &TrialRecord, i: usize) -> Option<f64> {
        parse_num(&self.cell(trial, Column::Metric(i)))
    }

    /// The trials that count: status `ok` unless `include_failed`.
    pub(crate) fn selected(&self, include_failed: bool) -> impl Iterator<Item = &TrialRecord> {
        self.trials
            .iter()
            .filter(move |t| include_failed || t.status == TrialStatus::Ok)
    }

    /// "rank=4 targets=qv": how legends and tables name a trial.
    pub(crate) fn param_label(&self, trial: &TrialRecord) -> String {
        let parts: Vec<String> = self
            .params
            .iter()
            .enumerate()
            .map(|(i, k)| format!("{k}={}", self.cell(trial, Column::Param(i))))
            .collect();
        if parts.is_empty() {
            trial.trial_id.clone()
        } else {
            parts.join(" ")
        }
    }
}

/// A cell of trials.csv as a value that writes back as the same text, so tables and legends
/// show what the file says (`0.30` and `1e-4` stay as written, as text).
fn cell_value(s: &str) -> Value {
    match Value::parse_text(s) {
        v if v.to_string() == s => v,
        _ => Value::Str(s.to_string()),
    }
}

/// The parameter names, metric names and rows of a trials.csv.
fn read_trials(path: &Path) -> Result<(Vec<String>, Vec<String>, Vec<TrialRecord>)> {
    let (header, rows) = read_csv(path, false)?;
    let pos = |name: &str| header.iter().position(|h| h == name);
    let file = path.display();
    let (Some(0), Some(status_at), Some(seconds_at)) =
        (pos("trial_id"), pos("status"), pos("seconds"))
    else {
        bail!("{file}:1: header must start with trial_id and contain status and seconds columns");
    };
    if seconds_at != status_at + 1 {
        bail!("{file}:1: expected seconds right after status");
    }
    let error_at = pos("error").filter(|&i| i == header.len() - 1);
    let metrics_end = error_at.unwrap_or(header.len());
    let params = header[1..status_at].to_vec();
    let metrics = header[seconds_at + 1..metrics_end].to_vec();

    let columns = TrialColumns {
        status: status_at,
        seconds: seconds_at,
        error: metrics_end,
    };
    let mut trials = Vec::with_capacity(rows.len());
    for (line, cells) in rows {
        let seconds = cells[seconds_at].as_str();
        if !seconds.is_empty() {
            seconds
                .parse::<f64>()
                .with_context(|| format!("{file}:{line}: seconds {seconds:?} is not a number"))?;
        }
        let cells: Vec<&str> = cells.iter().map(String::as_str).collect();
        trials.push(columns.record(&header, &cells, cell_value));
    }
    Ok((params, metrics, trials))
}

pub(crate) fn parse_num(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok()
}

/// Distinct non-empty values in order of first appearance, or numeric ascending when every
/// value is a number — the order tables and plots use for categories.
pub(crate) fn ordered_values<'a, I: IntoIterator<Item = &'a str>>(values: I) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in values {
        if !v.is_empty() && !out.iter().any(|o| o == v) {
            out.push(v.to_string());
        }
    }
    if !out.is_empty() && out.iter().all(|v| parse_num(v).is_some()) {
        out.sort_by(|a, b| parse_num(a).unwrap().total_cmp(&parse_num(b).unwrap()));
    }
    out
}

/// A record's 1-based line number and its cells.
type Record = (u64, Vec<String>);

/// Header plus records; every record must have the header's width, so a torn or
/// hand-edited row is reported by file and line. With `live_tail`, a last line without its
/// newline is a row being appended right now (steps.csv of a running sweep) and is left out.
fn read_csv(path: &Path, live_tail: bool) -> Result<(Vec<String>, Vec<Record>)> {
    let file = path.display();
    let mut bytes = std::fs::read(path).with_context(|| format!("cannot open {file}"))?;
    if live_tail && !bytes.ends_with(b"\n") {
        let whole = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        bytes.truncate(whole);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .from_reader(&bytes[..]);
    let header: Vec<String> = reader
        .headers()
        .with_context(|| format!("{file}:1: cannot read header"))?
        .iter()
        .map(str::to_string)
        .collect();
    let mut rows = Vec::new();
    for record in reader.records() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            anyhow::anyhow!("{file}:{line}: {e}")
        })?;
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        if record.len() != header.len() {
            bail!(
                "{file}:{line}: {} fields, but the header has {}",
                record.len(),
                header.len()
            );
        }
        rows.push((line, record.iter().map(str::to_string).collect()));
    }
    Ok((header, rows))
}

fn load_steps(path: &Path) -> Result<(Vec<String>, Vec<StepRow>)> {
    if !path.is_file() {
        return Ok((Vec::new(), Vec::new()));
    }
    let file = path.display();
    let (header, rows) = read_csv(path, true)?;
    if header.is_empty() {
        // Created, its header not yet written.
        return Ok((Vec::new(), Vec::new()));
    }
    if header.first().map(String::as_str) != Some("trial_id") {
        bail!("{file}:1: header must start with trial_id");
    }
    let step_at = header.iter().position(|h| h == "step");
    let keys: Vec<(usize, String)> = header
        .iter()
        .enumerate()
        .skip(1)
        .filter(|(i, _)| Some(*i) != step_at)
        .map(|(i, h)| (i, h.clone()))
        .collect();
    let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut steps = Vec::with_capacity(rows.len());
    for (line, cells) in rows {
        let ordinal = seen.entry(cells[0].clone()).or_insert(0);
        *ordinal += 1;
        let step = match step_at.map(|i| cells[i].as_str()) {
            None | Some("") => *ordinal as f64,
            Some(s) => parse_num(s)
                .with_context(|| format!("{file}:{line}: step {s:?} is not a number"))?,
        };
        let values = keys.iter().map(|(i, _)| parse_num(&cells[*i])).collect();
        steps.push(StepRow {
            trial_id: cells[0].clone(),
            step,
            values,
        });
    }
    Ok((keys.into_iter().map(|(_, k)| k).collect(), steps))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const TRIALS: &str = "\
trial_id,rank,targets,status,seconds,eval_loss,peak_mem_mb,error
a1,4,qv,ok,3.0,3.5,30,
a2,1,qv,ok,3.1,3.8,31,
a3,4,all,ok,3.2,2.5,40,
a4,1,all,ok,3.3,2.9,41,
a5,4,qv,ok,3.0,3.25,32,
a6,1,all,failed,0.5,,,\"boom, bang\"
";
    pub(crate) const STEPS: &str = "\
trial_id,step,loss,lr
a1,10,4.0,0.1
a1,20,3.6,
a2,10,4.2,0.1
a2,20,3.9,
a3,10,3.0,0.1
a3,20,2.6,
a4,10,3.3,0.1
a4,20,3.0,
a5,10,3.9,0.1
a5,20,3.3,
";

    /// A sweep folder in a temporary directory, named `toy`.
    pub(crate) fn fixture(
        trials: &str,
        steps: Option<&str>,
    ) -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("toy");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("trials.csv"), trials).unwrap();
        if let Some(s) = steps {
            std::fs::write(dir.join("steps.csv"), s).unwrap();
        }
        (tmp, dir)
    }

    #[test]
    fn loads_params_metrics_and_steps() {
        let (_tmp, dir) = fixture(TRIALS, Some(STEPS));
        let r = SweepResults::load(&dir).unwrap();
        assert_eq!(r.name, "toy");
        assert_eq!(r.params, ["rank", "targets"]);
        assert_eq!(r.metrics, ["eval_loss", "peak_mem_mb"]);
        assert_eq!(r.trials.len(), 6);
        assert_eq!(
            [r.metric(&r.trials[0], 0), r.metric(&r.trials[0], 1)],
            [Some(3.5), Some(30.0)]
        );
        assert_eq!(r.trials[5].error.as_deref(), Some("boom, bang"));
        assert_eq!(r.selected(false).count(), 5);
        assert_eq!(r.step_keys, ["loss", "lr"]);
        assert_eq!(r.steps[1].step, 20.0);
        assert_eq!(r.steps[1].values, [Some(3.6), None]);
        assert_eq!(r.param_label(&r.trials[0]), "rank=4 targets=qv");
    }

    #[test]
    fn missing_trials_csv_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        let err = SweepResults::load(tmp.path()).unwrap_err().to_string();
        assert!(err.starts_with("no trials.csv in "), "{err}");
        assert!(err.ends_with("; run the recipe first"), "{err}");
    }

    #[test]
    fn malformed_line_names_file_and_line() {
        let (_tmp, dir) = fixture(
            "trial_id,rank,status,seconds,eval_loss,error\nx,1,ok,1.0,2.0,\ny,2,ok\n",
            None,
        );
        let err = SweepResults::load(&dir).unwrap_err().to_string();
        assert!(err.contains("trials.csv:3:"), "{err}");
        let (_tmp, dir) = fixture(TRIALS, Some("trial_id,step,loss\na1,x,1.0\n"));
        let err = SweepResults::load(&dir).unwrap_err().to_string();
        assert!(err.contains("steps.csv:2:"), "{err}");
    }

    /// A journal line as the sweep writes it: `<length> <checksum> <json>`.
    fn journal_line(trial: &str, params: &[(&str, &str)], metrics: &[(&str, &str)]) -> String {
        let json = serde_json::json!({
            "trial_id": trial, "params": params, "metrics": metrics, "status": "ok",
            "seconds": 1.5, "error": null, "inputs": [],
        })
        .to_string();
        let sum = &crate::util::sha256_hex(json.as_bytes())[..16];
        format!("{} {sum} {json}\n", json.len())
    }

    #[test]
    fn a_running_sweeps_journal_is_laid_over_trials_csv() {
        let (_tmp, dir) = fixture(TRIALS, Some(STEPS));
        let journal = [
            journal_line(
                "a6",
                &[("rank", "1"), ("targets", "all")],
                &[("eval_loss", "2.75")],
            ),
            journal_line("a7", &[("rank", "8"), ("targets", "qv")], &[("acc", "0.5")]),
        ]
        .concat();
        std::fs::write(dir.join(".trials.journal"), journal).unwrap();
        let r = SweepResults::load(&dir).unwrap();
        assert_eq!(r.trials.len(), 7);
        assert_eq!(r.trials[5].status, TrialStatus::Ok);
        assert_eq!(r.cell(&r.trials[5], Column::Metric(0)), "2.75");
        assert_eq!(r.metrics, ["eval_loss", "peak_mem_mb", "acc"]);
        assert_eq!(r.cell(&r.trials[6], r.column("acc").unwrap()), "0.5");

        // The first trials of a sweep are in the journal before trials.csv exists.
        std::fs::remove_file(dir.join("trials.csv")).unwrap();
        let r = SweepResults::load(&dir).unwrap();
        assert_eq!(r.params, ["rank", "targets"]);
        assert_eq!(r.trials.len(), 2);
    }

    #[test]
    fn a_steps_line_being_written_is_left_out() {
        let (_tmp, dir) = fixture(TRIALS, Some(&format!("{STEPS}a5,30,3.")));
        let r = SweepResults::load(&dir).unwrap();
        assert_eq!(r.steps.len(), 10);
        let (_tmp, dir) = fixture(TRIALS, Some("trial_id,st"));
        assert!(SweepResults::load(&dir).unwrap().steps.is_empty());
    }

    #[test]
    fn value_order_is_first_seen_unless_all_numeric() {
        assert_eq!(
            ordered_values(["qv", "all", "qv", "", "attn"]),
            ["qv", "all", "attn"]
        );
        assert_eq!(ordered_values(["16", "2", "4", "2"]), ["2", "4", "16"]);
    }
}
