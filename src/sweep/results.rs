//! The CSV files a sweep writes: `trials.csv` (one row per trial) and `steps.csv` (every
//! logged row). Rows are only ever written whole: trials.csv is replaced atomically
//! (temporary file, fsync, rename) after each trial; steps.csv is appended one complete line
//! per write, and replaced atomically when a new column appears.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::value::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialStatus {
    Ok,
    Failed,
    /// Training stopped after too many consecutive non-finite losses or gradients.
    Nonfinite,
}

impl TrialStatus {
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

/// Formats one CSV record (with quoting) as a complete line.
fn csv_line<I: IntoIterator<Item = String>>(fields: I) -> io::Result<Vec<u8>> {
    let mut w = csv::WriterBuilder::new().from_writer(Vec::new());
    w.write_record(fields.into_iter().collect::<Vec<_>>()).map_err(io::Error::other)?;
    w.into_inner().map_err(|e| io::Error::other(e.to_string()))
}

/// Writes `contents` to `path` through a temporary file in the same folder, so readers see
/// either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("csv.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)
}

pub struct TrialsTable {
    path: PathBuf,
    rows: Vec<TrialRecord>,
}

impl TrialsTable {
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let table = Self { path: dir.join("trials.csv"), rows: Vec::new() };
        table.flush()?;
        Ok(table)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows(&self) -> &[TrialRecord] {
        &self.rows
    }

    pub fn record(&mut self, row: TrialRecord) -> io::Result<()> {
        self.rows.push(row);
        self.flush()
    }

    /// Columns: trial_id, the parameters, status, seconds, the metrics (sorted), error.
    fn flush(&self) -> io::Result<()> {
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
            let get = |list: &[(String, Value)], k: &str| list.iter().find(|(n, _)| n == k).map(|(_, v)| v.to_string()).unwrap_or_default();
            let mut fields = vec![r.trial_id.clone()];
            fields.extend(params.iter().map(|k| get(&r.params, k)));
            fields.push(r.status.as_str().to_string());
            fields.push(format!("{:.3}", r.seconds));
            fields.extend(metrics.iter().map(|k| get(&r.metrics, k)));
            fields.push(r.error.clone().unwrap_or_default());
            out.extend(csv_line(fields)?);
        }
        write_atomic(&self.path, &out)
    }
}

/// `steps.csv`: `trial_id` then the logged keys — `step` first when present, the rest in the
/// order they were first seen (each row's own keys sorted), so that the file is byte-for-byte
/// reproducible whatever order a Lua table iterates in.
pub struct StepsLog {
    path: PathBuf,
    columns: Vec<String>,
    rows: Vec<(String, Vec<(String, Value)>)>,
}

impl StepsLog {
    pub fn create(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let log = Self { path: dir.join("steps.csv"), columns: Vec::new(), rows: Vec::new() };
        log.rewrite()?;
        Ok(log)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn log(&mut self, trial_id: &str, mut row: Vec<(String, Value)>) -> io::Result<()> {
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

    fn line(&self, (trial, row): &(String, Vec<(String, Value)>)) -> io::Result<Vec<u8>> {
        let mut fields = vec![trial.clone()];
        for c in &self.columns {
            fields.push(row.iter().find(|(k, _)| k == c).map(|(_, v)| v.to_string()).unwrap_or_default());
        }
        csv_line(fields)
    }

    fn rewrite(&self) -> io::Result<()> {
        let mut header = vec!["trial_id".to_string()];
        header.extend(self.columns.iter().cloned());
        let mut out = csv_line(header)?;
        for r in &self.rows {
            out.extend(self.line(r)?);
        }
        write_atomic(&self.path, &out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trials_table_unions_columns_and_quotes_errors() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = TrialsTable::create(dir.path()).unwrap();
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
        assert_eq!(r.headers().unwrap(), vec!["trial_id", "rank", "status", "seconds", "loss", "error"]);
        let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
        assert_eq!(&rows[0], vec!["a", "4", "ok", "1.000", "1.5", ""]);
        assert_eq!(&rows[1], vec!["b", "8", "failed", "0.500", "", "boom, \"bad\"\nline"]);
        assert!(!dir.path().join("trials.csv.tmp").exists());
    }

    #[test]
    fn steps_log_orders_columns_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = StepsLog::create(dir.path()).unwrap();
        s.log("t1", vec![("loss".into(), Value::Num(2.0)), ("step".into(), Value::Int(1))]).unwrap();
        s.log("t1", vec![("step".into(), Value::Int(2)), ("loss".into(), Value::Num(1.0))]).unwrap();
        s.log("t1", vec![("step".into(), Value::Int(3)), ("lr".into(), Value::Num(0.1)), ("loss".into(), Value::Num(0.5))]).unwrap();
        let text = fs::read_to_string(s.path()).unwrap();
        assert_eq!(text, "trial_id,step,loss,lr\nt1,1,2,\nt1,2,1,\nt1,3,0.5,0.1\n");
    }
}
