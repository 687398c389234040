//! The CSV files a sweep writes: `trials.csv` (one row per trial) and `steps.csv` (every
//! logged row). Rows are only ever written whole: trials.csv is replaced atomically
//! (temporary file, fsync, rename) when the journal is compacted into it (see
//! [`super::journal`]); steps.csv is appended one complete line per write, and replaced
//! atomically when a new column appears.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::value::Value;
use crate::util::write_atomic;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialStatus {
    Ok,
    Failed,
    /// Training stopped after too many consecutive non-finite losses or gradients.
    Nonfinite,
}

impl TrialStatus {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        [TrialStatus::Ok, TrialStatus::Failed, TrialStatus::Nonfinite]
            .into_iter()
            .find(|t| t.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TrialStatus::Ok => "ok",
            TrialStatus::Failed => "failed",
            TrialStatus::Nonfinite => "nonfinite",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct TrialRecord {
    pub trial_id: String,
    pub params: Vec<(String, Value)>,
    pub metrics: Vec<(String, Value)>,
    pub status: TrialStatus,
    pub seconds: f64,
    pub error: Option<String>,
}

/// Where a trials.csv header keeps each part of a row: the parameters between `trial_id` and
/// `status`, then `seconds`, the metrics, and `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TrialColumns {
    pub status: usize,
    pub seconds: usize,
    /// The error column, or the header's length when the file has none.
    pub error: usize,
}

impl TrialColumns {
    /// One row of trials.csv as a record: empty cells are left out, `value` reads the others;
    /// an unknown status counts as failed.
    pub(crate) fn record(
        &self,
        header: &[String],
        cells: &[&str],
        value: impl Fn(&str) -> Value,
    ) -> TrialRecord {
        let field = |i: usize| cells.get(i).copied().unwrap_or("");
        let pairs = |range: std::ops::Range<usize>| -> Vec<(String, Value)> {
            range
                .filter(|&i| !field(i).is_empty())
                .map(|i| (header[i].clone(), value(field(i))))
                .collect()
        };
        TrialRecord {
            trial_id: field(0).to_string(),
            params: pairs(1..self.status),
            metrics: pairs(self.seconds + 1..self.error),
            status: TrialStatus::parse(field(self.status)).unwrap_or(TrialStatus::Failed),
            seconds: field(self.seconds).parse().unwrap_or(0.0),
            error: Some(field(self.error))
                .filter(|e| !e.is_empty())
                .map(str::to_string),
        }
    }
}

/// Formats one CSV record (with quoting) as a complete line.
fn csv_line<I: IntoIterator<Item = String>>(fields: I) -> io::Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_record(fields.into_iter().collect::<Vec<_>>())
        .map_err(io::Error::other)?;
    w.into_inner().map_err(|e| io::Error::other(e.to_string()))
}

/// The header and records of a CSV file. A file that does not end in a newline lost the end
/// of its last record (a crash mid-write): that record is dropped and `true` returned.
pub(crate) fn read_records(path: &Path) -> io::Result<(Vec<String>, Vec<csv::StringRecord>, bool)> {
    let bytes = fs::read(path)?;
    let truncated = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let mut r = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(&bytes[..]);
    let bad = |e: csv::Error| io::Error::other(format!("{}: {e}", path.display()));
    let header: Vec<String> = r
        .headers()
        .map_err(bad)?
        .iter()
        .map(str::to_string)
        .collect();
    let mut records = Vec::new();
    for rec in r.records() {
        match rec {
            Ok(rec) => records.push(rec),
            // An unterminated quote can only be the cut-off last record.
            Err(_) if truncated => break,
            Err(e) => return Err(bad(e)),
        }
    }
    if truncated {
        records.pop();
    }
    Ok((header, records, truncated))
}

/// The trials of `dir`'s journal, in order: the finished trials of a running sweep that are
/// not yet compacted into trials.csv (it lags by a few seconds). Readers that show a sweep
/// while it runs lay these over trials.csv.
pub fn journaled_trials(dir: &Path) -> io::Result<Vec<TrialRecord>> {
    Ok(super::journal::read(dir)?
        .into_iter()
        .map(|e| e.record)
        .collect())
}

/// Holds `dir/.lock` for as long as it lives: one writer per results folder, so two runs of
/// the same sweep cannot interleave rows.
pub struct WriterLock(#[allow(dead_code)] File);

impl WriterLock {
    pub fn acquire(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(Self(f)),
            Err(fs::TryLockError::WouldBlock) => Err(io::Error::other(format!(
                "another runner is writing {} (it holds {}); wait for it to finish, or give this run its own --results folder",
                dir.display(),
                path.display()
            ))),
            Err(fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

pub struct TrialsTable {
    path: PathBuf,
    rows: Vec<TrialRecord>,
    /// Row index by trial id.
    index: HashMap<String, usize>,
}

impl TrialsTable {
    /// Opens `dir/trials.csv`, keeping the rows already there (a sweep resumes) and the
    /// trials its journal holds, or starts an empty one. A partial last line (a crash while
    /// writing, or a copy cut short) is dropped and the file rewritten whole, as it is when
    /// the journal had rows (the journal itself is cleared by the sweep, which also keeps
    /// the inputs it holds).
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let (table, repaired) = Self::load(dir)?;
        if repaired || !table.path.exists() {
            table.flush()?;
        }
        Ok(table)
    }

    /// The table as it is on disk (trials.csv and the journal), changing nothing (for
    /// `--dry-run`).
    pub fn open_read_only(dir: &Path) -> io::Result<Self> {
        Ok(Self::load(dir)?.0)
    }

    fn load(dir: &Path) -> io::Result<(Self, bool)> {
        let path = dir.join("trials.csv");
        let mut rows = Vec::new();
        let mut repaired = false;
        if path.exists() {
            let (header, records, cut) = read_records(&path)?;
            repaired = cut;
            let col = |name: &str| header.iter().position(|h| h == name);
            let (Some(status_col), Some(seconds_col)) = (col("status"), col("seconds")) else {
                return Err(io::Error::other(format!(
                    "{} has no status and seconds columns; it was not written by runner",
                    path.display()
                )));
            };
            let columns = TrialColumns {
                status: status_col,
                seconds: seconds_col,
                error: col("error").unwrap_or(header.len()),
            };
            for rec in records {
                let cells: Vec<&str> = rec.iter().collect();
                rows.push(columns.record(&header, &cells, Value::parse_text));
            }
        }
        let mut table = Self {
            path,
            rows,
            index: HashMap::new(),
        };
        table.reindex();
        let journal = super::journal::read(dir)?;
        let journaled = !journal.is_empty();
        for entry in journal {
            table.upsert(entry.record);
        }
        Ok((table, repaired || journaled))
    }

    fn reindex(&mut self) {
        self.index = self
            .rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.trial_id.clone(), i))
            .collect();
    }

    /// The recorded row of a trial.
    pub(crate) fn find(&self, trial_id: &str) -> Option<&TrialRecord> {
        self.index.get(trial_id).map(|&i| &self.rows[i])
    }

    /// Removes the rows `keep` rejects and returns them (written at once).
    pub(crate) fn take_unless(
        &mut self,
        keep: impl Fn(&TrialRecord) -> bool,
    ) -> io::Result<Vec<TrialRecord>> {
        let (kept, taken): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rows)
            .into_iter()
            .partition(|r| keep(r));
        self.rows = kept;
        self.reindex();
        if !taken.is_empty() {
            self.flush()?;
        }
        Ok(taken)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows(&self) -> &[TrialRecord] {
        &self.rows
    }

    /// Records a trial, replacing an earlier row of the same id (a failed trial run again),
    /// so no id ever appears twice.
    #[cfg(test)]
    pub(crate) fn record(&mut self, row: TrialRecord) -> io::Result<()> {
        self.upsert(row);
        self.flush()
    }

    /// [`record`](Self::record) in memory only, for many rows at once; [`flush`](Self::flush) writes them.
    pub(crate) fn upsert(&mut self, row: TrialRecord) {
        match self.index.get(&row.trial_id) {
            Some(&i) => self.rows[i] = row,
            None => {
                self.index.insert(row.trial_id.clone(), self.rows.len());
                self.rows.push(row);
            }
        }
    }

    /// Writes the whole table, atomically. Columns: trial_id, the parameters, status,
    /// seconds, the metrics (sorted), error.
    pub(crate) fn flush(&self) -> io::Result<()> {
        let mut params: Vec<String> = Vec::new();
        let mut metrics: Vec<String> = Vec::new();
        for r in &self.rows {
            for (k, _) in &r.params {
                if !params.contains(k) {
                    params.push(k.clone());
                }
            }
            for (k, _) in &r.metrics {
                if !metrics.contains(k) && !params.contains(k) {
                    metrics.push(k.clone());
                }
            }
        }
        metrics.sort();
        let mut header = vec!["trial_id".to_string()];
        header.extend(params.iter().cloned());
        header.extend(["status".to_string(), "seconds".to_string()]);
        header.extend(metrics.iter().cloned());
        header.push("error".to_string());
        let mut out = csv_line(header)?;
        for r in &self.rows {
            let get = |list: &[(String, Value)], k: &str| {
                list.iter()
                    .find(|(n, _)| n == k)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default()
            };
            let mut fields = vec![r.trial_id.clone()];
            fields.extend(params.iter().map(|k| get(&r.params, k)));
            fields.push(r.status.as_str().to_string());
            fields.push(format!("{:.3}", r.seconds));
            fields.extend(metrics.iter().map(|k| get(&r.metrics, k)));
            fields.push(r.error.clone().unwrap_or_default());
            out.extend(csv_line(fields)?);
        }
        write_atomic(&self.path, &out).map_err(io::Error::from)
    }
}

/// One logged row of a trial's steps: its keys and values.
pub(crate) type StepRow = Vec<(String, Value)>;

/// The columns trials.csv writes itself; a metric of the same name would duplicate them.
pub(crate) const TRIAL_COLUMNS: [&str; 4] = ["trial_id", "status", "seconds", "error"];

/// `Err` naming the first metric that would collide with a column of trials.csv: one it
/// writes itself, or a parameter of the trial.
pub(crate) fn check_metric_names(
    params: &[(String, Value)],
    metrics: &[(String, Value)],
) -> Result<(), String> {
    for (name, _) in metrics {
        if TRIAL_COLUMNS.contains(&name.as_str()) {
            return Err(format!(
                "a trial cannot return a metric named '{name}': trials.csv writes that column \
                 itself ({}); rename it",
                TRIAL_COLUMNS.join(", ")
            ));
        }
        if params.iter().any(|(p, _)| p == name) {
            return Err(format!(
                "a trial cannot return a metric named '{name}': it is a parameter of the \
                 sweep, and trials.csv has one column per name; rename it"
            ));
        }
    }
    Ok(())
}

/// `steps.csv`: `trial_id` then the logged keys — `step` first when present, the rest in the
/// order they were first seen (each row's own keys sorted), so that the file is byte-for-byte
/// reproducible whatever order a Lua table iterates in.
pub struct StepsLog {
    path: PathBuf,
    columns: Vec<String>,
    rows: Vec<(String, StepRow)>,
    /// The trials that have rows, so that asking costs nothing however long the log.
    with_rows: HashSet<String>,
    /// A trial running again whose earlier attempt's rows are still in the file, undecided:
    /// kept up to the step it resumes from (see [`resumed_from`](Self::resumed_from)), or
    /// dropped once it logs without resuming, or ends.
    provisional: Option<String>,
}

impl StepsLog {
    /// Opens `dir/steps.csv`, keeping its rows; a partial last line is dropped.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let path = dir.join("steps.csv");
        let mut log = Self {
            path,
            columns: Vec::new(),
            rows: Vec::new(),
            with_rows: HashSet::new(),
            provisional: None,
        };
        let mut repaired = false;
        if log.path.exists() {
            let (header, records, cut) = read_records(&log.path)?;
            repaired = cut;
            log.columns = header.iter().skip(1).cloned().collect();
            for rec in records {
                let row = header
                    .iter()
                    .enumerate()
                    .skip(1)
                    .filter_map(|(i, h)| {
                        rec.get(i)
                            .filter(|v| !v.is_empty())
                            .map(|v| (h.clone(), Value::parse_text(v)))
                    })
                    .collect();
                log.rows.push((rec.get(0).unwrap_or("").to_string(), row));
            }
            log.with_rows = log.rows.iter().map(|(id, _)| id.clone()).collect();
        }
        if repaired || !log.path.exists() {
            log.rewrite()?;
        }
        Ok(log)
    }

    /// Removes the rows of the trials `keep` rejects (e.g. a trial about to run again, whose
    /// earlier attempt was interrupted) and returns them.
    pub(crate) fn take_unless(
        &mut self,
        keep: impl Fn(&str) -> bool,
    ) -> io::Result<Vec<(String, StepRow)>> {
        let taken = self.retain(keep);
        if !taken.is_empty() {
            self.rewrite()?;
        }
        Ok(taken)
    }

    /// [`take_unless`](Self::take_unless) in memory only; [`rewrite`](Self::rewrite) writes.
    pub(crate) fn retain(&mut self, keep: impl Fn(&str) -> bool) -> Vec<(String, StepRow)> {
        let (kept, taken): (Vec<_>, Vec<_>) = std::mem::take(&mut self.rows)
            .into_iter()
            .partition(|(id, _)| keep(id));
        self.rows = kept;
        for (id, _) in &taken {
            self.with_rows.remove(id);
        }
        taken
    }

    /// A trial starts (again): rows an earlier, unrecorded attempt logged stay until the trial
    /// shows whether it resumes from a checkpoint.
    pub(crate) fn begin_trial(&mut self, trial_id: &str) {
        self.provisional = self
            .with_rows
            .contains(trial_id)
            .then(|| trial_id.to_string());
    }

    /// The trial resumed from a checkpoint at `step`: its earlier attempt's rows are kept up
    /// to the first one logged past that step, so its loss curve stays whole; the rest go
    /// (the trial logs them again).
    pub(crate) fn resumed_from(&mut self, trial_id: &str, step: usize) -> io::Result<()> {
        if self.provisional.as_deref() != Some(trial_id) {
            return Ok(());
        }
        self.provisional = None;
        let past = |row: &StepRow| {
            row.iter().any(|(k, v)| {
                k == "step"
                    && match v {
                        Value::Int(i) => *i > step as i64,
                        Value::Num(x) => *x > step as f64,
                        _ => false,
                    }
            })
        };
        let Some(cut) = self
            .rows
            .iter()
            .position(|(id, row)| id == trial_id && past(row))
        else {
            return Ok(());
        };
        let mut index = 0;
        self.rows.retain(|(id, _)| {
            index += 1;
            index <= cut || id != trial_id
        });
        self.rewrite()
    }

    /// Drops an earlier attempt's rows that are still undecided (the trial started over).
    pub(crate) fn settle(&mut self, trial_id: &str) -> io::Result<()> {
        if self.provisional.as_deref() != Some(trial_id) {
            return Ok(());
        }
        self.provisional = None;
        self.take_unless(|t| t != trial_id).map(|_| ())
    }

    /// Adds many rows of one trial at once (one rewrite).
    pub fn extend(
        &mut self,
        trial_id: &str,
        rows: impl IntoIterator<Item = StepRow>,
    ) -> io::Result<()> {
        self.append(trial_id, rows);
        self.rewrite()
    }

    /// [`extend`](Self::extend) in memory only; [`rewrite`](Self::rewrite) writes.
    pub(crate) fn append(&mut self, trial_id: &str, rows: impl IntoIterator<Item = StepRow>) {
        for row in rows {
            for (k, _) in &row {
                if !self.columns.contains(k) {
                    self.columns.push(k.clone());
                }
            }
            self.with_rows.insert(trial_id.to_string());
            self.rows.push((trial_id.to_string(), row));
        }
    }

    /// Every row, as (trial id, logged values).
    pub fn rows(&self) -> &[(String, StepRow)] {
        &self.rows
    }

    /// The rows logged by one trial.
    pub fn rows_of<'a>(&'a self, trial_id: &'a str) -> impl Iterator<Item = &'a StepRow> + 'a {
        self.rows
            .iter()
            .filter(move |(id, _)| id == trial_id)
            .map(|(_, r)| r)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn log(&mut self, trial_id: &str, mut row: StepRow) -> io::Result<()> {
        self.settle(trial_id)?;
        row.sort_by(|a, b| (a.0 != "step", &a.0).cmp(&(b.0 != "step", &b.0)));
        let mut grew = false;
        for (k, _) in &row {
            if !self.columns.contains(k) {
                self.columns.push(k.clone());
                grew = true;
            }
        }
        if grew {
            let mut columns = std::mem::take(&mut self.columns);
            columns.sort_by_key(|c| (c != "step", self.first_seen(c)));
            self.columns = columns;
        }
        self.with_rows.insert(trial_id.to_string());
        self.rows.push((trial_id.to_string(), row));
        if grew {
            self.rewrite()
        } else {
            let line = self.line(self.rows.last().expect("just pushed"))?;
            let mut f = OpenOptions::new().append(true).open(&self.path)?;
            // One write of one complete line: a crash leaves whole rows only.
            f.write_all(&line)?;
            f.flush()
        }
    }

    fn first_seen(&self, key: &str) -> usize {
        let mut i = 0;
        for (_, row) in &self.rows {
            for (k, _) in row {
                if k == key {
                    return i;
                }
                i += 1;
            }
        }
        usize::MAX
    }

    fn line(&self, (trial, row): &(String, StepRow)) -> io::Result<Vec<u8>> {
        let mut fields = vec![trial.clone()];
        for c in &self.columns {
            fields.push(
                row.iter()
                    .find(|(k, _)| k == c)
                    .map(|(_, v)| v.to_string())
                    .unwrap_or_default(),
            );
        }
        csv_line(fields)
    }

    /// Writes the whole log, atomically.
    pub(crate) fn rewrite(&self) -> io::Result<()> {
        let mut header = vec!["trial_id".to_string()];
        header.extend(self.columns.iter().cloned());
        let mut out = csv_line(header)?;
        for r in &self.rows {
            out.extend(self.line(r)?);
        }
        write_atomic(&self.path, &out).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_table_unions_columns_and_quotes_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TrialsTable::open(dir.path()).unwrap();
        t.record(TrialRecord {
            trial_id: "a".into(),
            params: vec![("rank".into(), Value::Int(4))],
            metrics: vec![("loss".into(), Value::Num(1.5))],
            status: TrialStatus::Ok,
            seconds: 1.0,
            error: None,
        })
        .unwrap();
        t.record(TrialRecord {
            trial_id: "b".into(),
            params: vec![("rank".into(), Value::Int(8))],
            metrics: vec![],
            status: TrialStatus::Failed,
            seconds: 0.5,
            error: Some("boom, \"bad\"\nline".into()),
        })
        .unwrap();
        let text = fs::read_to_string(t.path()).unwrap();
        let mut r = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            r.headers().unwrap(),
            vec!["trial_id", "rank", "status", "seconds", "loss", "error"]
        );
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(&rows[0], vec!["a", "4", "ok", "1.000", "1.5", ""]);
        assert_eq!(
            &rows[1],
            vec!["b", "8", "failed", "0.500", "", "boom, \"bad\"\nline"]
        );
        assert!(!dir.path().join("trials.csv.tmp").exists());
    }

    #[test]
    fn steps_log_orders_columns_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StepsLog::open(dir.path()).unwrap();
        s.log(
            "t1",
            vec![
                ("loss".into(), Value::Num(2.0)),
                ("step".into(), Value::Int(1)),
            ],
        )
        .unwrap();
        s.log(
            "t1",
            vec![
                ("step".into(), Value::Int(2)),
                ("loss".into(), Value::Num(1.0)),
            ],
        )
        .unwrap();
        s.log(
            "t1",
            vec![
                ("step".into(), Value::Int(3)),
                ("lr".into(), Value::Num(0.1)),
                ("loss".into(), Value::Num(0.5)),
            ],
        )
        .unwrap();
        let text = fs::read_to_string(s.path()).unwrap();
        assert_eq!(
            text,
            "trial_id,step,loss,lr\nt1,1,2,\nt1,2,1,\nt1,3,0.5,0.1\n"
        );
    }

    #[test]
    fn tables_resume_replace_by_id_and_repair_a_cut_line() {
        let dir = tempfile::tempdir().unwrap();
        let rec = |id: &str, status, loss: f64| TrialRecord {
            trial_id: id.into(),
            params: vec![
                ("rank".into(), Value::Int(4)),
                ("method".into(), Value::Str("lora".into())),
            ],
            metrics: vec![("loss".into(), Value::Num(loss))],
            status,
            seconds: 1.0,
            error: None,
        };
        {
            let mut t = TrialsTable::open(dir.path()).unwrap();
            t.record(rec("a", TrialStatus::Ok, 1.5)).unwrap();
            t.record(rec("b", TrialStatus::Failed, 2.5)).unwrap();
        }
        let mut t = TrialsTable::open(dir.path()).unwrap();
        assert_eq!(t.rows().len(), 2);
        assert_eq!(t.find("a").unwrap(), &rec("a", TrialStatus::Ok, 1.5));
        t.record(rec("b", TrialStatus::Ok, 0.5)).unwrap();
        let t = TrialsTable::open(dir.path()).unwrap();
        assert_eq!(
            t.rows()
                .iter()
                .map(|r| (r.trial_id.as_str(), r.status))
                .collect::<Vec<_>>(),
            vec![("a", TrialStatus::Ok), ("b", TrialStatus::Ok)]
        );

        let mut s = StepsLog::open(dir.path()).unwrap();
        s.log(
            "a",
            vec![
                ("step".into(), Value::Int(1)),
                ("loss".into(), Value::Num(2.0)),
            ],
        )
        .unwrap();
        s.log(
            "b",
            vec![
                ("step".into(), Value::Int(1)),
                ("loss".into(), Value::Num(3.0)),
            ],
        )
        .unwrap();
        drop(s);
        // A crash in the middle of appending a row.
        let path = dir.path().join("steps.csv");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"b,2,2.").unwrap();
        drop(f);
        let mut s = StepsLog::open(dir.path()).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "trial_id,step,loss\na,1,2\nb,1,3\n"
        );
        let taken = s.take_unless(|id| id != "b").unwrap();
        assert_eq!(taken.len(), 1);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "trial_id,step,loss\na,1,2\n"
        );
        assert_eq!(s.rows_of("a").count(), 1);
    }

    #[test]
    fn one_writer_per_results_folder() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path()).unwrap();
        let err = WriterLock::acquire(dir.path()).err().unwrap().to_string();
        assert!(err.contains("another runner is writing"), "{err}");
        drop(first);
        WriterLock::acquire(dir.path()).unwrap();
    }
}
