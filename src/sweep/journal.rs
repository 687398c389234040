//! The sweep's journal, `.trials.journal`: one line appended per finished trial, so that
//! recording a trial costs the same at the 100,000th trial as at the first (rewriting
//! trials.csv after every trial made a sweep quadratic). trials.csv stays the file people and
//! tools read; the journal is compacted into it (with `.inputs.json`) every few seconds, when
//! a run ends, and when the next run starts. A line is `<length> <checksum> <json>`: a line
//! cut short by a crash, or damaged, fails its guard and is left out (the trial runs again),
//! never half-read.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::results::{TrialRecord, TrialStatus};
use super::value::Value;
use crate::util::sha256_hex;

const NAME: &str = ".trials.journal";

/// How often the journal reaches the disk itself (fsync), at most: a process killed between
/// two syncs loses nothing (the kernel holds the lines); a machine that loses power loses the
/// last second's trials, which run again.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// One finished trial: its row of trials.csv and the files it read.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Entry {
    pub record: TrialRecord,
    pub inputs: Vec<(PathBuf, String)>,
}

/// The JSON of a line: values as the text trials.csv holds, so that a replayed row equals
/// the row read back from trials.csv.
#[derive(Serialize, Deserialize)]
struct Line {
    trial_id: String,
    params: Vec<(String, String)>,
    metrics: Vec<(String, String)>,
    status: String,
    seconds: f64,
    error: Option<String>,
    inputs: Vec<(PathBuf, String)>,
}

pub(crate) struct Journal {
    file: File,
    last_sync: Instant,
}

impl Journal {
    /// Opens `dir`'s journal for appending (created when missing).
    pub(crate) fn open(dir: &Path) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(NAME))?;
        Ok(Self {
            file,
            last_sync: Instant::now(),
        })
    }

    /// Appends one trial as one write of one whole line.
    pub(crate) fn append(&mut self, entry: &Entry) -> io::Result<()> {
        let text = |list: &[(String, Value)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect()
        };
        let r = &entry.record;
        let json = serde_json::to_string(&Line {
            trial_id: r.trial_id.clone(),
            params: text(&r.params),
            metrics: text(&r.metrics),
            status: r.status.as_str().to_string(),
            seconds: r.seconds,
            error: r.error.clone(),
            inputs: entry.inputs.clone(),
        })
        .map_err(io::Error::other)?;
        let line = format!("{} {} {json}\n", json.len(), checksum(&json));
        self.file.write_all(line.as_bytes())?;
        if self.last_sync.elapsed() >= SYNC_EVERY {
            self.file.sync_data()?;
            self.last_sync = Instant::now();
        }
        Ok(())
    }
}

fn checksum(json: &str) -> String {
    sha256_hex(json.as_bytes())[..16].to_string()
}

/// The entries of `dir`'s journal, in order; lines that fail their guard are left out (a
/// damaged one before the end is reported on stderr). Empty when there is no journal.
pub(crate) fn read(dir: &Path) -> io::Result<Vec<Entry>> {
    let path = dir.join(NAME);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut out = Vec::new();
    for (i, raw) in lines.iter().enumerate() {
        match parse(raw) {
            Some(entry) => out.push(entry),
            // The last line of a killed run may be cut short: expected, and silent.
            None if i + 1 == lines.len() && !raw.ends_with('\n') => {}
            None => eprintln!(
                "warning: {}:{}: a damaged journal line was left out (that trial runs again)",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(out)
}

fn parse(raw: &str) -> Option<Entry> {
    let line = raw.strip_suffix('\n')?;
    let (len, rest) = line.split_once(' ')?;
    let (sum, json) = rest.split_once(' ')?;
    if json.len() != len.parse::<usize>().ok()? || checksum(json) != sum {
        return None;
    }
    let l: Line = serde_json::from_str(json).ok()?;
    let values = |list: Vec<(String, String)>| -> Vec<(String, Value)> {
        list.into_iter()
            .map(|(k, v)| (k, Value::parse_text(&v)))
            .collect()
    };
    Some(Entry {
        record: TrialRecord {
            trial_id: l.trial_id,
            params: values(l.params),
            metrics: values(l.metrics),
            status: TrialStatus::parse(&l.status)?,
            seconds: l.seconds,
            error: l.error,
        },
        inputs: l.inputs,
    })
}

/// Empties `dir`'s journal once its entries are in trials.csv and `.inputs.json`.
pub(crate) fn clear(dir: &Path) -> io::Result<()> {
    match fs::remove_file(dir.join(NAME)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, loss: f64) -> Entry {
        Entry {
            record: TrialRecord {
                trial_id: id.into(),
                params: vec![
                    ("rank".into(), Value::Int(4)),
                    ("name".into(), Value::Str("a,\"b\"\nc".into())),
                ],
                metrics: vec![("loss".into(), Value::Num(loss))],
                status: TrialStatus::Ok,
                seconds: 1.25,
                error: None,
            },
            inputs: vec![(PathBuf::from("data/x.jsonl"), "abc".into())],
        }
    }

    #[test]
    fn entries_round_trip_and_a_cut_or_damaged_line_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(dir.path()).unwrap();
        for (id, loss) in [("a", 0.5), ("b", 0.25), ("c", 2.5)] {
            j.append(&entry(id, loss)).unwrap();
        }
        let got = read(dir.path()).unwrap();
        assert_eq!(
            got,
            vec![entry("a", 0.5), entry("b", 0.25), entry("c", 2.5)]
        );

        let path = dir.path().join(NAME);
        let text = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // A flipped character in the middle line, and the last line cut short.
        let damaged = lines[1].replacen("0.25", "0.35", 1);
        let cut = &lines[2][..lines[2].len() / 2];
        fs::write(&path, format!("{}\n{damaged}\n{cut}", lines[0])).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![entry("a", 0.5)]);
        clear(dir.path()).unwrap();
        assert!(read(dir.path()).unwrap().is_empty());
        clear(dir.path()).unwrap();
    }
}
