//! The sweep engine (`runner::sweep::run`) without Lua: a closure per trial, and the engine's
//! resume, rerun, archive, failure kinds, interruption, shards and lock.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use runner::sweep::fingerprint::fingerprint;
use runner::sweep::results::WriterLock;
use runner::sweep::run::{
    DryRunCells, FailureKind, Sweep, SweepError, SweepRow, TrialCounts, TrialOutcome, TrialRun,
};
use runner::sweep::{StepsLog, TrialRecord, TrialStatus, TrialsTable, Value, expand_grid};

fn ranks(values: &[i64]) -> Vec<runner::sweep::Trial> {
    expand_grid(&[(
        "rank".to_string(),
        values.iter().map(|&r| Value::Int(r)).collect(),
    )])
}

fn sweep(results: &Path, values: &[i64]) -> Sweep {
    Sweep::new(results, "toy", "hash", Some(7), ranks(values), None, false)
}

fn rank_of(run: &TrialRun<'_>) -> i64 {
    match run.trial.params[0].1 {
        Value::Int(r) => r,
        ref other => panic!("rank {other:?}"),
    }
}

/// A trial that logs one step and returns `loss = rank / 2`.
fn good_trial(run: TrialRun<'_>) -> TrialOutcome<String> {
    let rank = rank_of(&run);
    run.log
        .log(vec![
            ("step".into(), Value::Int(1)),
            ("loss".into(), Value::Num(rank as f64)),
        ])
        .unwrap();
    TrialOutcome::ok(vec![("loss".into(), Value::Num(rank as f64 / 2.0))])
}

/// Runs `sweep` with `trial`, counting the calls.
fn run_counting(
    sweep: &Sweep,
    trial: impl Fn(TrialRun<'_>) -> TrialOutcome<String>,
) -> (
    Result<Vec<SweepRow>, SweepError<String>>,
    TrialCounts,
    usize,
) {
    let calls = Cell::new(0);
    let mut counts = TrialCounts::default();
    let rows = sweep.run(
        &mut counts,
        || {},
        |run| {
            calls.set(calls.get() + 1);
            trial(run)
        },
    );
    (rows, counts, calls.get())
}

/// A row as trials.csv keeps it: id, status and the loss as written (the seconds are rounded
/// there).
fn brief(r: &TrialRecord) -> (String, TrialStatus, Option<String>) {
    let loss = r.metrics.iter().find(|(k, _)| k == "loss");
    (
        r.trial_id.clone(),
        r.status,
        loss.map(|(_, v)| v.to_string()),
    )
}

fn table(dir: &Path) -> Vec<(String, TrialStatus, Option<String>)> {
    TrialsTable::open_read_only(dir)
        .unwrap()
        .rows()
        .iter()
        .map(|r| (r.trial_id.clone(), r.status, r.error.clone()))
        .collect()
}

fn step_ids(dir: &Path) -> Vec<String> {
    StepsLog::open(dir)
        .unwrap()
        .rows()
        .iter()
        .map(|(id, _)| id.clone())
        .collect()
}

#[test]
fn runs_each_trial_and_writes_its_rows_and_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1, 2]);
    assert_eq!(s.dir, tmp.path().join("toy"));
    assert_eq!(s.mine, [0, 1]);
    let (rows, counts, calls) = run_counting(&s, good_trial);
    let rows = rows.unwrap();
    assert_eq!(calls, 2);
    assert_eq!(
        counts,
        TrialCounts {
            run: 2,
            failed: 0,
            reused: 0
        }
    );
    assert_eq!(rows.len(), 2);
    for (row, (id, rank)) in rows.iter().zip(s.ids.iter().zip([1.0, 2.0])) {
        assert!(!row.reused);
        assert_eq!(&row.record.trial_id, id);
        assert_eq!(row.record.status, TrialStatus::Ok);
        assert_eq!(
            row.record.metrics[0],
            ("loss".into(), Value::Num(rank / 2.0))
        );
        if runner::memory::peak_rss_bytes().is_some() {
            assert!(
                row.record.metrics.iter().any(|(k, _)| k == "peak_mem_mb"),
                "{:?}",
                row.record.metrics
            );
        }
    }
    let written = TrialsTable::open_read_only(&s.dir).unwrap();
    assert_eq!(
        written.rows().iter().map(brief).collect::<Vec<_>>(),
        rows.iter().map(|r| brief(&r.record)).collect::<Vec<_>>()
    );
    assert_eq!(step_ids(&s.dir), s.ids);
    assert!(s.dir.join(".inputs.json").is_file());
}

#[test]
fn a_second_run_reuses_ok_trials_and_rerun_runs_them_again() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1, 2]);
    let first = run_counting(&s, good_trial).0.unwrap();

    let (rows, counts, calls) = run_counting(&s, good_trial);
    let rows = rows.unwrap();
    assert_eq!(calls, 0, "done trials are not run again");
    assert_eq!(counts.reused, 2);
    assert_eq!(counts.run, 0);
    assert!(rows.iter().all(|r| r.reused));
    assert_eq!(
        rows.iter().map(|r| brief(&r.record)).collect::<Vec<_>>(),
        first.iter().map(|r| brief(&r.record)).collect::<Vec<_>>()
    );

    let mut again = s.clone();
    again.rerun = true;
    let (rows, counts, calls) = run_counting(&again, good_trial);
    assert_eq!(calls, 2);
    assert_eq!(counts.run, 2);
    assert!(rows.unwrap().iter().all(|r| !r.reused));
    // The earlier attempts' step rows are replaced, not doubled.
    assert_eq!(step_ids(&s.dir), s.ids);
}

/// [`good_trial`], where only the rank-2 trial reads `data` (and records its fingerprint).
fn rank_two_reads(data: &Path) -> impl Fn(TrialRun<'_>) -> TrialOutcome<String> + Copy + '_ {
    move |run| {
        let reads = rank_of(&run) == 2;
        let mut out = good_trial(run);
        if reads {
            out.inputs = vec![(data.to_path_buf(), fingerprint(data).unwrap())];
        }
        out
    }
}

/// A two-trial sweep under `dir` run once, its rank-2 trial having read `data.txt` ("one").
fn ran_once_with_an_input(dir: &Path) -> (Sweep, PathBuf) {
    let data = dir.join("data.txt");
    std::fs::write(&data, "one").unwrap();
    let s = sweep(&dir.join("results"), &[1, 2]);
    run_counting(&s, rank_two_reads(&data)).0.unwrap();
    (s, data)
}

#[test]
fn a_trial_runs_again_when_a_file_it_read_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, data) = ran_once_with_an_input(tmp.path());
    let reading = rank_two_reads(&data);
    let (_, counts, calls) = run_counting(&s, reading);
    assert_eq!((calls, counts.reused), (0, 2), "nothing changed");
    std::fs::write(&data, "two").unwrap();
    let (rows, counts, calls) = run_counting(&s, reading);
    assert_eq!((calls, counts.reused, counts.run), (1, 1, 1));
    let rows = rows.unwrap();
    assert!(rows[0].reused && !rows[1].reused);
}

#[test]
fn rows_of_trials_no_longer_in_the_sweep_move_to_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let all = sweep(tmp.path(), &[1, 2, 3]);
    run_counting(&all, good_trial).0.unwrap();
    // The same sweep again archives nothing.
    run_counting(&all, good_trial).0.unwrap();
    assert!(!all.dir.join("archive").exists());

    let fewer = sweep(tmp.path(), &[1, 2]);
    assert_eq!(fewer.ids[..], all.ids[..2]);
    let (rows, counts, calls) = run_counting(&fewer, good_trial);
    assert_eq!(rows.unwrap().len(), 2);
    assert_eq!((calls, counts.reused), (0, 2));
    let kept: Vec<String> = table(&fewer.dir).into_iter().map(|r| r.0).collect();
    assert_eq!(kept, fewer.ids);
    assert_eq!(step_ids(&fewer.dir), fewer.ids);
    let archive = fewer.dir.join("archive");
    let archived: Vec<String> = table(&archive).into_iter().map(|r| r.0).collect();
    assert_eq!(archived, all.ids[2..]);
    assert_eq!(step_ids(&archive), all.ids[2..]);
}

#[test]
fn failed_nonfinite_and_invalid_trials_are_recorded_with_their_message() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1, 2, 3, 4]);
    let failing = |run: TrialRun<'_>| match rank_of(&run) {
        1 => TrialOutcome::failed(FailureKind::Failed, "boom"),
        2 => TrialOutcome::failed(FailureKind::Nonfinite, "loss is NaN"),
        3 => TrialOutcome::failed(FailureKind::Invalid, "not metrics"),
        _ => good_trial(run),
    };
    let (rows, counts, calls) = run_counting(&s, failing);
    assert_eq!(rows.unwrap().len(), 4);
    assert_eq!(calls, 4);
    assert_eq!(
        counts,
        TrialCounts {
            run: 4,
            failed: 3,
            reused: 0
        }
    );
    let status = |i: usize, st, msg: Option<&str>| (s.ids[i].clone(), st, msg.map(String::from));
    assert_eq!(
        table(&s.dir),
        [
            status(0, TrialStatus::Failed, Some("boom")),
            status(1, TrialStatus::Nonfinite, Some("loss is NaN")),
            status(2, TrialStatus::Failed, Some("not metrics")),
            status(3, TrialStatus::Ok, None),
        ]
    );
    // Trials that did not end ok run again; the ok one is reused.
    let (_, counts, calls) = run_counting(&s, good_trial);
    assert_eq!((calls, counts.reused), (3, 1));
    assert!(table(&s.dir).iter().all(|r| r.1 == TrialStatus::Ok));
}

#[test]
fn a_recipe_error_records_the_trial_and_stops_the_sweep() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1, 2, 3]);
    let (rows, counts, calls) = run_counting(&s, |run| match rank_of(&run) {
        2 => TrialOutcome::failed(FailureKind::Abort("bad option".to_string()), "bad option"),
        _ => good_trial(run),
    });
    match rows {
        Err(SweepError::Stopped(e)) => assert_eq!(e, "bad option"),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 2, "the third trial does not run");
    assert_eq!((counts.run, counts.failed), (2, 1));
    let written = table(&s.dir);
    assert_eq!(written.len(), 2);
    assert_eq!(written[1].1, TrialStatus::Failed);
}

#[test]
fn an_interrupted_trial_is_not_recorded_and_runs_again_next_time() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1, 2, 3]);
    let (rows, counts, calls) = run_counting(&s, |run| match rank_of(&run) {
        2 => {
            run.log.log(vec![("step".into(), Value::Int(1))]).unwrap();
            TrialOutcome::failed(FailureKind::Interrupted("ctrl-c".to_string()), "ctrl-c")
        }
        _ => good_trial(run),
    });
    assert!(matches!(rows, Err(SweepError::Stopped(ref e)) if e == "ctrl-c"));
    assert_eq!(calls, 2);
    assert_eq!((counts.run, counts.failed), (1, 0));
    assert_eq!(
        table(&s.dir).into_iter().map(|r| r.0).collect::<Vec<_>>(),
        [s.ids[0].clone()]
    );
    // Its logged step stays until it runs again, and then appears once.
    assert_eq!(step_ids(&s.dir), s.ids[..2]);
    let (rows, counts, calls) = run_counting(&s, good_trial);
    assert_eq!(rows.unwrap().len(), 3);
    assert_eq!((calls, counts.reused), (2, 1));
    assert_eq!(step_ids(&s.dir), s.ids);
}

#[test]
fn a_shard_runs_its_share_into_its_own_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let whole = sweep(tmp.path(), &[1, 2, 3, 4]);
    let s = Sweep::new(
        tmp.path(),
        "toy",
        "hash",
        Some(7),
        ranks(&[1, 2, 3, 4]),
        Some((1, 2)),
        false,
    );
    assert_eq!(s.ids, whole.ids, "ids do not depend on the shard");
    assert_eq!(s.mine, [1, 3]);
    assert_eq!(s.dir, tmp.path().join("toy").join("shards").join("1-of-2"));
    let ran = std::cell::RefCell::new(Vec::new());
    let (rows, _, _) = run_counting(&s, |run| {
        ran.borrow_mut().push(rank_of(&run));
        good_trial(run)
    });
    assert_eq!(rows.unwrap().len(), 2);
    assert_eq!(*ran.borrow(), [2, 4]);
    assert!(!whole.dir.join("trials.csv").exists());
}

#[test]
fn a_held_lock_stops_the_run_before_any_trial() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1]);
    let _held = WriterLock::acquire(&s.dir).unwrap();
    let (rows, _, calls) = run_counting(&s, good_trial);
    match rows {
        Err(SweepError::Results(e)) => {
            assert!(e.to_string().contains("another runner is writing"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(calls, 0);
}

#[test]
fn a_dry_run_asks_each_trial_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(tmp.path(), &[1, 2]);
    let asked: std::cell::RefCell<Vec<(String, PathBuf)>> = Default::default();
    let finished = s
        .dry_run(|_, id, dir| {
            asked.borrow_mut().push((id.to_string(), dir));
            Ok::<_, String>(DryRunCells {
                trainable: "1".into(),
                memory: "-".into(),
            })
        })
        .unwrap();
    assert!(finished.is_empty(), "nothing has run yet");
    let expected: Vec<(String, PathBuf)> = s
        .ids
        .iter()
        .map(|id| (id.clone(), s.dir.join(id)))
        .collect();
    assert_eq!(*asked.borrow(), expected);
    assert!(!s.dir.exists());
    let err = s.dry_run(|_, _, _| Err::<DryRunCells, _>("stop".to_string()));
    assert_eq!(err.map(|_| ()), Err("stop".to_string()));
}

#[test]
fn a_dry_run_returns_the_rows_an_earlier_run_finished() {
    let tmp = tempfile::tempdir().unwrap();
    // Rank 2 fails; ranks 1 and 3 finish.
    let (rows, _, _) = run_counting(&sweep(tmp.path(), &[1, 2, 3]), |run| {
        if rank_of(&run) == 2 {
            TrialOutcome::failed(FailureKind::Failed, "boom")
        } else {
            good_trial(run)
        }
    });
    assert_eq!(rows.unwrap().len(), 3);
    // A later dry run over ranks 1, 2 and 4: only rank 1's row is finished and in this sweep.
    let s = sweep(tmp.path(), &[1, 2, 4]);
    let finished = dry_rows(&s);
    assert_eq!(finished.len(), 1);
    assert!(finished[0].reused);
    assert_eq!(finished[0].record.trial_id, s.ids[0]);
    let loss = finished[0].record.metrics.iter().find(|(k, _)| k == "loss");
    assert_eq!(loss, Some(&("loss".to_string(), Value::Num(0.5))));
}

/// A dry run that shows nothing but returns the rows.
fn dry_rows(s: &Sweep) -> Vec<SweepRow> {
    s.dry_run(|_, _, _| {
        Ok::<_, String>(DryRunCells {
            trainable: "-".into(),
            memory: "-".into(),
        })
    })
    .unwrap()
}

#[test]
fn a_dry_run_reuses_exactly_what_a_real_run_would() {
    let tmp = tempfile::tempdir().unwrap();
    let (s, data) = ran_once_with_an_input(tmp.path());
    let reading = rank_two_reads(&data);
    assert_eq!(dry_rows(&s).len(), 2, "both finished, nothing changed");

    // --rerun runs both again, so a dry run under it returns no row.
    let mut again = s.clone();
    again.rerun = true;
    assert!(dry_rows(&again).is_empty());

    // After the file changes only rank 1 is reused, by the dry run as by the real run.
    std::fs::write(&data, "two").unwrap();
    let dry: Vec<String> = dry_rows(&s)
        .into_iter()
        .map(|r| r.record.trial_id)
        .collect();
    assert_eq!(dry, s.ids[..1]);
    let (rows, counts, _) = run_counting(&s, reading);
    let reused: Vec<String> = rows
        .unwrap()
        .into_iter()
        .filter(|r| r.reused)
        .map(|r| r.record.trial_id)
        .collect();
    assert_eq!((reused, counts.run), (dry, 1));
}

#[test]
fn a_trial_runs_again_when_a_file_it_wrote_and_returned_is_gone() {
    let tmp = tempfile::tempdir().unwrap();
    let s = sweep(&tmp.path().join("results"), &[1, 2]);
    // Each trial writes a file in its own folder and returns its path, as an SFT stage returns
    // its adapter; it also returns a path outside its folder that never existed, which is not
    // its own output and so does not make it run again.
    let writing = |run: TrialRun<'_>| {
        std::fs::create_dir_all(&run.dir).unwrap();
        let file = run.dir.join("adapter.bin");
        std::fs::write(&file, "weights").unwrap();
        let mut out = good_trial(run);
        if let Ok(metrics) = &mut out.result {
            metrics.push(("adapter".into(), Value::Str(file.display().to_string())));
            metrics.push(("elsewhere".into(), Value::Str("not/a/file".into())));
        }
        out
    };
    run_counting(&s, writing).0.unwrap();
    assert_eq!(dry_rows(&s).len(), 2, "both files are there");

    std::fs::remove_file(s.dir.join(&s.ids[1]).join("adapter.bin")).unwrap();
    let dry: Vec<String> = dry_rows(&s)
        .into_iter()
        .map(|r| r.record.trial_id)
        .collect();
    assert_eq!(
        dry,
        s.ids[..1],
        "the dry run reruns only the trial whose file is gone"
    );
    let (rows, counts, calls) = run_counting(&s, writing);
    assert_eq!((calls, counts.reused, counts.run), (1, 1, 1));
    assert!(!rows.unwrap()[1].reused);
    assert!(s.dir.join(&s.ids[1]).join("adapter.bin").exists());
    assert_eq!(dry_rows(&s).len(), 2, "written again, so reused again");
}
