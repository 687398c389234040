//! `runner merge`: combine the results of a sweep's shards (`<sweep>/shards/I-of-N/`, one per
//! machine or Slurm array task) into the sweep's own trials.csv and steps.csv.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::results::{StepRow, StepsLog, TrialStatus, TrialsTable, WriterLock};

#[derive(Debug, Default, PartialEq)]
pub struct MergeReport {
    pub shards: Vec<PathBuf>,
    /// Trial rows taken from the shards (new or replacing a worse row).
    pub taken: usize,
    /// Rows not taken because the sweep already had the trial with status ok.
    pub kept: usize,
    /// Trials in the merged trials.csv.
    pub trials: usize,
}

/// The shard folders of a sweep, in name order.
pub(crate) fn shard_dirs(sweep_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let root = sweep_dir.join("shards");
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("trials.csv").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}

/// Merges every shard into `sweep_dir`. A trial that appears more than once (a shard run
/// twice, or a merge repeated) ends up exactly once: an ok row wins over a failed one, and
/// between equals the later shard wins. Its steps come from the same place as its row.
pub fn merge(sweep_dir: &Path) -> io::Result<MergeReport> {
    let shards = shard_dirs(sweep_dir)?;
    if shards.is_empty() {
        return Err(io::Error::other(format!(
            "no shard results under {}/shards (run the recipe with --shard I/N, or `runner slurm`, first)",
            sweep_dir.display()
        )));
    }
    let _lock = WriterLock::acquire(sweep_dir)?;
    let mut table = TrialsTable::open(sweep_dir)?;
    let mut steps = StepsLog::open(sweep_dir)?;
    let mut report = MergeReport {
        shards: shards.clone(),
        ..Default::default()
    };
    // Each taken trial's step rows, in the order it was last taken (a trial taken again
    // moves to the end, its earlier rows replaced); `slot` finds a trial's entry.
    let mut taken: Vec<Option<(String, Vec<StepRow>)>> = Vec::new();
    let mut slot: HashMap<String, usize> = HashMap::new();
    for dir in &shards {
        let _shard_lock = WriterLock::acquire(dir)?;
        let from = TrialsTable::open(dir)?;
        let from_steps = StepsLog::open(dir)?;
        let mut steps_of: HashMap<&str, Vec<StepRow>> = HashMap::new();
        for (id, row) in from_steps.rows() {
            steps_of.entry(id.as_str()).or_default().push(row.clone());
        }
        for row in from.rows() {
            let keep_existing = table
                .find(&row.trial_id)
                .is_some_and(|old| old.status == TrialStatus::Ok && row.status != TrialStatus::Ok);
            if keep_existing {
                report.kept += 1;
                continue;
            }
            if let Some(earlier) = slot.insert(row.trial_id.clone(), taken.len()) {
                taken[earlier] = None;
            }
            taken.push(Some((
                row.trial_id.clone(),
                steps_of.remove(row.trial_id.as_str()).unwrap_or_default(),
            )));
            table.upsert(row.clone());
            report.taken += 1;
        }
    }
    // Each file is written once, at the end: one rewrite per trial made a merge quadratic
    // in the number of trials. Steps first, so that a crash between the two leaves a table
    // that a repeated merge completes.
    steps.retain(|id| !slot.contains_key(id));
    for (id, rows) in taken.into_iter().flatten() {
        steps.append(&id, rows);
    }
    steps.rewrite()?;
    table.flush()?;
    report.trials = table.rows().len();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{TrialRecord, Value};

    fn rec(id: &str, status: TrialStatus) -> TrialRecord {
        TrialRecord {
            trial_id: id.into(),
            params: vec![("rank".into(), Value::Int(1))],
            metrics: vec![],
            status,
            seconds: 1.0,
            error: None,
        }
    }

    #[test]
    fn merging_twice_keeps_every_trial_once() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = dir.path();
        for (shard, ids) in [("0-of-2", ["a", "c"]), ("1-of-2", ["b", "d"])] {
            let d = sweep.join("shards").join(shard);
            let mut t = TrialsTable::open(&d).unwrap();
            let mut s = StepsLog::open(&d).unwrap();
            for id in ids {
                let status = if id == "d" {
                    TrialStatus::Failed
                } else {
                    TrialStatus::Ok
                };
                t.record(rec(id, status)).unwrap();
                s.log(id, vec![("step".into(), Value::Int(1))]).unwrap();
            }
        }
        let r = merge(sweep).unwrap();
        assert_eq!((r.taken, r.trials), (4, 4));
        let again = merge(sweep).unwrap();
        assert_eq!(again.trials, 4);
        let steps = fs::read_to_string(sweep.join("steps.csv")).unwrap();
        assert_eq!(steps.lines().count(), 5, "{steps}");
        // A failed duplicate does not replace an ok row.
        let d = sweep.join("shards").join("2-of-3");
        TrialsTable::open(&d)
            .unwrap()
            .record(rec("a", TrialStatus::Failed))
            .unwrap();
        let r = merge(sweep).unwrap();
        assert_eq!(r.kept, 1);
        assert_eq!(
            TrialsTable::open(sweep).unwrap().find("a").unwrap().status,
            TrialStatus::Ok
        );
        assert!(
            merge(&dir.path().join("nothing"))
                .unwrap_err()
                .to_string()
                .contains("no shard results")
        );
    }

    #[test]
    fn a_trial_in_two_shards_keeps_the_later_rows_and_steps_only() {
        let dir = tempfile::tempdir().unwrap();
        let sweep = dir.path();
        // "a" failed in the first shard and was run again in the second; "b" only in the first.
        for (shard, base, rows) in [
            (
                "0-of-2",
                10.0,
                vec![("a", TrialStatus::Failed, 2), ("b", TrialStatus::Ok, 1)],
            ),
            ("1-of-2", 20.0, vec![("a", TrialStatus::Ok, 3)]),
        ] {
            let d = sweep.join("shards").join(shard);
            let mut t = TrialsTable::open(&d).unwrap();
            let mut s = StepsLog::open(&d).unwrap();
            for (id, status, n) in rows {
                t.record(rec(id, status)).unwrap();
                for step in 1..=n {
                    s.log(
                        id,
                        vec![
                            ("step".into(), Value::Int(step)),
                            ("loss".into(), Value::Num(base + step as f64)),
                        ],
                    )
                    .unwrap();
                }
            }
        }
        let r = merge(sweep).unwrap();
        assert_eq!((r.taken, r.kept, r.trials), (3, 0, 2));
        let table = TrialsTable::open(sweep).unwrap();
        assert_eq!(
            table
                .rows()
                .iter()
                .map(|r| (r.trial_id.as_str(), r.status))
                .collect::<Vec<_>>(),
            [("a", TrialStatus::Ok), ("b", TrialStatus::Ok)]
        );
        let steps = fs::read_to_string(sweep.join("steps.csv")).unwrap();
        assert_eq!(
            steps,
            "trial_id,step,loss\nb,1,11\na,1,21\na,2,22\na,3,23\n"
        );
        // Merging again changes nothing.
        merge(sweep).unwrap();
        assert_eq!(fs::read_to_string(sweep.join("steps.csv")).unwrap(), steps);
    }
}
