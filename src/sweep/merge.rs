//! `runner merge`: combine the results of a sweep's shards (`<sweep>/shards/I-of-N/`, one per
//! machine or Slurm array task) into the sweep's own trials.csv and steps.csv.

use std::collections::{BTreeSet, HashMap};
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
    /// What looks incomplete but can be right (a shard missing from its set, shard sets of
    /// different sizes): printed, the merge goes ahead.
    pub warnings: Vec<String>,
}

/// A row's metrics without the memory it measured, which differs between two runs of the
/// same trial.
fn results_of(r: &super::TrialRecord) -> Vec<&(String, super::Value)> {
    let mut m: Vec<_> = r
        .metrics
        .iter()
        .filter(|(k, _)| !k.starts_with("peak_"))
        .collect();
    m.sort_by(|a, b| a.0.cmp(&b.0));
    m
}

/// `I-of-N` as a shard folder names it: `Some((i, n))` with `i < n`.
fn shard_of(name: &str) -> Option<(usize, usize)> {
    let (i, n) = name.split_once("-of-")?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(i) || !digits(n) {
        return None;
    }
    let (i, n) = (i.parse().ok()?, n.parse().ok()?);
    (i < n).then_some((i, n))
}

/// Refuses folders that cannot be shards, and warns when a set of shards is incomplete.
fn check_shard_names(shards: &[PathBuf]) -> io::Result<Vec<String>> {
    let mut sets: HashMap<usize, BTreeSet<usize>> = HashMap::new();
    for dir in shards {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        let Some((i, n)) = shard_of(&name) else {
            return Err(io::Error::other(format!(
                "{} is not a shard folder: shards are named I-of-N with 0 <= I < N (as \
                 --shard I/N writes them); move it out of shards/",
                dir.display()
            )));
        };
        sets.entry(n).or_default().insert(i);
    }
    let mut warnings = Vec::new();
    let mut sizes: Vec<usize> = sets.keys().copied().collect();
    sizes.sort();
    if sizes.len() > 1 {
        warnings.push(format!(
            "shards of different splits ({}): fine if the sweep was re-split, but check that \
             they come from the same recipe",
            sizes
                .iter()
                .map(|n| format!("N={n}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for n in sizes {
        let missing: Vec<String> = (0..n)
            .filter(|i| !sets[&n].contains(i))
            .map(|i| format!("{i}-of-{n}"))
            .collect();
        if !missing.is_empty() {
            warnings.push(format!(
                "shard(s) {} missing: the merged results lack their trials (run them, then \
                 merge again)",
                missing.join(", ")
            ));
        }
    }
    Ok(warnings)
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
    let warnings = check_shard_names(&shards)?;
    let _lock = WriterLock::acquire(sweep_dir)?;
    let mut table = TrialsTable::open(sweep_dir)?;
    let mut steps = StepsLog::open(sweep_dir)?;
    let mut report = MergeReport {
        shards: shards.clone(),
        warnings,
        ..Default::default()
    };
    // The parameter names every shard must share with the sweep: a shard of another version
    // of the recipe has other columns, and its trials do not belong here.
    let param_names = |r: &super::TrialRecord| -> Vec<String> {
        let mut names: Vec<String> = r.params.iter().map(|(k, _)| k.clone()).collect();
        names.sort();
        names
    };
    let mut expected: Option<(Vec<String>, PathBuf)> = table
        .rows()
        .first()
        .map(|r| (param_names(r), sweep_dir.join("trials.csv")));
    // Where each taken ok row came from, to name both files when two disagree.
    let mut ok_from: HashMap<String, PathBuf> = HashMap::new();
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
            let names = param_names(row);
            match &expected {
                Some((want, first)) if *want != names => {
                    return Err(io::Error::other(format!(
                        "{} has parameters ({}) that {} does not ({}): a shard of another \
                         version of the recipe? Nothing was merged",
                        dir.join("trials.csv").display(),
                        names.join(", "),
                        first.display(),
                        want.join(", ")
                    )));
                }
                Some(_) => {}
                None => expected = Some((names, dir.join("trials.csv"))),
            }
            if let Some(old) = table.find(&row.trial_id)
                && old.status == TrialStatus::Ok
                && row.status == TrialStatus::Ok
                && results_of(old) != results_of(row)
            {
                let other = ok_from
                    .get(&row.trial_id)
                    .cloned()
                    .unwrap_or_else(|| sweep_dir.join("trials.csv"));
                return Err(io::Error::other(format!(
                    "trial {} is ok in both {} and {} with different metrics; runner cannot \
                     tell which is right (remove one, or run it again with --rerun). Nothing \
                     was merged",
                    row.trial_id,
                    other.display(),
                    dir.join("trials.csv").display()
                )));
            }
            if row.status == TrialStatus::Ok {
                ok_from.insert(row.trial_id.clone(), dir.join("trials.csv"));
            }
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

    fn shard(sweep: &Path, name: &str, rows: &[(&str, &str, i64)]) {
        let d = sweep.join("shards").join(name);
        let mut t = TrialsTable::open(&d).unwrap();
        for (id, param, loss) in rows {
            t.record(TrialRecord {
                trial_id: (*id).into(),
                params: vec![((*param).into(), Value::Int(1))],
                metrics: vec![
                    ("loss".into(), Value::Int(*loss)),
                    ("peak_mem_mb".into(), Value::Int(100 + loss)),
                ],
                status: TrialStatus::Ok,
                seconds: 1.0,
                error: None,
            })
            .unwrap();
        }
    }

    #[test]
    fn what_cannot_be_right_is_refused_and_what_is_incomplete_is_said() {
        // Folders that are not shards.
        for bad in ["abc", "5-of-3", "1-of-", "-1-of-2"] {
            let dir = tempfile::tempdir().unwrap();
            shard(dir.path(), "0-of-2", &[("a", "rank", 1)]);
            shard(dir.path(), bad, &[("b", "rank", 1)]);
            let err = merge(dir.path()).unwrap_err().to_string();
            assert!(err.contains("is not a shard folder"), "{bad}: {err}");
            assert!(!dir.path().join("trials.csv").exists(), "{bad}");
        }
        // A shard of another version of the recipe (other parameters).
        let dir = tempfile::tempdir().unwrap();
        shard(dir.path(), "0-of-2", &[("a", "rank", 1)]);
        shard(dir.path(), "1-of-2", &[("b", "alpha", 1)]);
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another version of the recipe"), "{err}");
        assert!(TrialsTable::open(dir.path()).unwrap().rows().is_empty());
        // One trial ok twice with different metrics; the same metrics (and another peak
        // memory) are one trial run twice, and merge.
        let dir = tempfile::tempdir().unwrap();
        shard(dir.path(), "0-of-2", &[("a", "rank", 1)]);
        shard(dir.path(), "1-of-2", &[("a", "rank", 2)]);
        let err = merge(dir.path()).unwrap_err().to_string();
        assert!(err.contains("trial a is ok in both"), "{err}");
        assert!(err.contains("0-of-2") && err.contains("1-of-2"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        shard(dir.path(), "0-of-2", &[("a", "rank", 1), ("b", "rank", 3)]);
        shard(dir.path(), "1-of-2", &[("a", "rank", 1)]);
        let r = merge(dir.path()).unwrap();
        assert_eq!((r.trials, r.warnings.len()), (2, 0), "{:?}", r.warnings);
        // A missing shard is merged with a warning naming it.
        let dir = tempfile::tempdir().unwrap();
        shard(dir.path(), "0-of-3", &[("a", "rank", 1)]);
        shard(dir.path(), "2-of-3", &[("c", "rank", 1)]);
        let r = merge(dir.path()).unwrap();
        assert_eq!(r.trials, 2);
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(r.warnings[0].contains("1-of-3 missing"), "{:?}", r.warnings);
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
