//! The experiment runner end to end: resumable sweeps, grid/zip/random spaces, --dry-run,
//! shards and merge, the sandbox, --time-limit, and --watch.

use crate::common::{column, fixture, read_csv, root, runner_in, text};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `runner ARGS --results RESULTS` from the repository root.
fn runner(args: &[&str], results: &Path) -> Output {
    let mut all: Vec<&str> = args.to_vec();
    let results = results.to_str().unwrap();
    all.extend(["--results", results]);
    runner_in(&root(), &all)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every trial of the resume fixture exactly once, ok, with exactly its three steps.
fn assert_each_trial_once(dir: &Path) {
    let (header, rows) = read_csv(&dir.join("trials.csv"));
    let (id, status) = (column(&header, "trial_id"), column(&header, "status"));
    let mut ids: Vec<&str> = rows.iter().map(|r| r[id].as_str()).collect();
    assert_eq!(rows.len(), 6, "{rows:?}");
    assert!(rows.iter().all(|r| r[status] == "ok"), "{rows:?}");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "a trial appears twice: {rows:?}");
    let (header, steps) = read_csv(&dir.join("steps.csv"));
    let (trial, step) = (column(&header, "trial_id"), column(&header, "step"));
    for id in ids {
        let mut s: Vec<&str> = steps
            .iter()
            .filter(|r| r[trial] == id)
            .map(|r| r[step].as_str())
            .collect();
        s.sort();
        assert_eq!(s, ["1", "2", "3"], "steps of trial {id}");
    }
}

#[test]
fn a_killed_sweep_resumes_with_every_trial_once() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        fixture("resume_sweep.lua"),
        "--set".into(),
        "pause=0.05".into(),
        "--results".into(),
        dir.path().display().to_string(),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args(&args)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A finished trial is a line of the journal at once (trials.csv follows every few
    // seconds). Kill it without warning once two trials are done and the third has started.
    let journal = dir.path().join("resume/.trials.journal");
    let finished = || {
        std::fs::read_to_string(&journal)
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    wait_until("two finished trials", Duration::from_secs(60), || {
        finished() >= 2
    });
    std::thread::sleep(Duration::from_millis(80));
    child.kill().unwrap();
    child.wait().unwrap();
    let done = finished();
    assert!(
        (2..6).contains(&done),
        "the kill should land mid-sweep: {done} trials done"
    );

    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args(&args)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err.matches("done earlier, reused").count(), done, "{err}");
    assert_each_trial_once(&dir.path().join("resume"));

    // A third run has nothing left to do; --rerun runs everything again, still once each.
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(text(&out.stderr).matches("done earlier, reused").count(), 6);
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args(&args)
        .arg("--rerun")
        .output()
        .unwrap();
    assert_eq!(text(&out.stderr).matches("done earlier, reused").count(), 0);
    assert_each_trial_once(&dir.path().join("resume"));
}

#[test]
fn a_cut_last_line_is_repaired_on_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("resume_sweep.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let steps = dir.path().join("resume/steps.csv");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&steps)
        .unwrap();
    f.write_all(b"deadbeef0000,4,0.2").unwrap();
    drop(f);
    let out = runner(&[&fixture("resume_sweep.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let body = std::fs::read_to_string(&steps).unwrap();
    assert!(body.ends_with('\n') && !body.contains("deadbeef"), "{body}");
    assert_each_trial_once(&dir.path().join("resume"));
}

#[test]
fn grid_zip_and_random_search_combine() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("spaces.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (header, rows) = read_csv(&dir.path().join("spaces/trials.csv"));
    assert_eq!(rows.len(), 2 * 2 * 3);
    let (ratio, lr, seen) = (
        column(&header, "ratio"),
        column(&header, "lr"),
        column(&header, "lr_seen"),
    );
    let mut lrs: Vec<f64> = Vec::new();
    for r in &rows {
        assert_eq!(r[ratio], "2", "zip keeps alpha = 2 rank: {r:?}");
        assert_eq!(r[lr], r[seen]);
        let x: f64 = r[lr].parse().unwrap();
        assert!((1e-4..=1e-2).contains(&x), "{x}");
        if !lrs.contains(&x) {
            lrs.push(x);
        }
    }
    assert_eq!(lrs.len(), 3, "three random draws: {lrs:?}");
    // The same seed draws the same values: a second run reuses every trial.
    let out = runner(&[&fixture("spaces.lua")], dir.path());
    assert_eq!(
        text(&out.stderr).matches("done earlier, reused").count(),
        12,
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dry_run_prints_the_trial_table_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let out = runner(&[&fixture("dry_run.lua"), "--dry-run"], &results);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}{stdout}", text(&out.stderr));
    // Rank 2 and 8 on q and v of two layers (d 64, key/value width 32): 2·r·(64+64 + 64+32).
    assert!(
        stdout.contains("rank=2") && stdout.contains("896 ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("rank=8") && stdout.contains("3584 ("),
        "{stdout}"
    );
    assert!(stdout.contains("MB at 2x"), "{stdout}");
    assert_eq!(stdout.matches("to run").count(), 2, "{stdout}");
    assert!(!results.exists(), "a dry run must not write results");
}

#[test]
fn a_dry_run_goes_past_a_stage_that_already_ran() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results");
    let recipe = fixture("staged_dry_run.lua");
    // Nothing has run: the first stage returns no rows, so the recipe stops after it.
    let out = runner(&[&recipe, "--dry-run"], &results);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}{stdout}", text(&out.stderr));
    assert!(stdout.contains("stage1 rows: 0"), "{stdout}");
    assert!(!stdout.contains("stage2"), "{stdout}");
    assert!(!results.exists(), "a dry run must not write results");

    let out = runner(&[&recipe], &results);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // Now the first stage's finished row comes back, and the second stage's table shows what
    // it would train on top of the first stage's adapter (rank 8 on q and v: 3,584).
    let out = runner(&[&recipe, "--dry-run"], &results);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}{stdout}", text(&out.stderr));
    assert!(stdout.contains("stage1 rows: 1"), "{stdout}");
    assert!(stdout.contains("done (reused)"), "{stdout}");
    let stage2 = &stdout[stdout.find("sweep 'stage2'").expect(&stdout)..];
    assert!(
        stage2.contains("3584 (") && stage2.contains("done (reused)"),
        "{stdout}"
    );
}

#[test]
fn shards_merge_into_every_trial_once() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..4 {
        let shard = format!("{i}/4");
        let out = runner(
            &[&fixture("resume_sweep.lua"), "--shard", &shard],
            dir.path(),
        );
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
    let sweep = dir.path().join("resume");
    let (_, rows) = read_csv(&sweep.join("shards/1-of-4/trials.csv"));
    assert_eq!(rows.len(), 2, "trials 1 and 5 of 6");
    for _ in 0..2 {
        let out = runner_in(&root(), &["merge", sweep.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("6 trial(s)"),
            "{}",
            text(&out.stdout)
        );
    }
    assert_each_trial_once(&sweep);
    let out = runner(
        &[&fixture("resume_sweep.lua"), "--shard", "4/4"],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("expected I/N"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn os_execute_is_refused_without_trust() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("sandbox.lua")], dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "tests/fixtures/recipes/sandbox.lua:3: os.execute is not available to recipes"
        ),
        "{err}"
    );
    assert!(err.contains("--trust"), "{err}");
    assert_eq!(text(&out.stdout), "before\n");
    let out = runner(&[&fixture("sandbox.lua"), "--trust"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("os.execute returned\ttrue"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_runaway_loop_stops_at_the_time_limit_and_is_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = runner(&[&fixture("runaway.lua"), "--time-limit", "2s"], dir.path());
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The line of the loop: its condition or its body, wherever the hook fired.
    assert!(
        ["7", "8"].iter().any(|l| err.contains(&format!(
            "tests/fixtures/recipes/runaway.lua:{l}: time limit reached"
        ))),
        "{err}"
    );
    let (header, rows) = read_csv(&dir.path().join("runaway/trials.csv"));
    assert_eq!(
        rows.len(),
        1,
        "only the finished trial is recorded: {rows:?}"
    );
    assert_eq!(rows[0][column(&header, "forever")], "false");
}

#[test]
fn trials_the_recipe_no_longer_has_move_to_the_archive_with_their_steps() {
    let dir = tempfile::tempdir().unwrap();
    // The grid on its own lines above the trial function: editing it keeps the other trials' ids.
    let recipe = |xs: &str| {
        format!(
            "runner.sweep{{\n  name = \"s\",\n  grid = {{ x = {{ {xs} }} }},\n  trial = function(p)\n    for s = 1, 2 do runner.log{{ step = s, loss = p.x * s }} end\n    return {{ y = p.x }}\n  end,\n}}\n"
        )
    };
    let path = dir.path().join("sweep.lua");
    let run = |xs: &str| {
        std::fs::write(&path, recipe(xs)).unwrap();
        let out = runner_in(dir.path(), &["sweep.lua", "--results", "results"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    run("1, 2, 3, 4");
    // Two grid values dropped: their rows and steps leave the sweep for archive/, the rest stay.
    let err = run("1, 2");
    assert!(
        err.contains("2 trial(s) of an earlier version of the recipe moved to"),
        "{err}"
    );
    assert_eq!(err.matches("done earlier, reused").count(), 2, "{err}");
    let sweep = dir.path().join("results/s");
    let xs = |file: &str, col: &str| {
        let (header, rows) = read_csv(&sweep.join(file));
        let c = column(&header, col);
        rows.iter().map(|r| r[c].clone()).collect::<Vec<_>>()
    };
    assert_eq!(xs("trials.csv", "x"), ["1", "2"]);
    assert_eq!(xs("archive/trials.csv", "x"), ["3", "4"]);
    assert_eq!(xs("steps.csv", "loss"), ["1", "2", "2", "4"]);
    assert_eq!(xs("archive/steps.csv", "loss"), ["3", "6", "4", "8"]);
}

fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.matches(needle).count())
        .unwrap_or(0)
}

/// Saves like vim and many IDEs: write a new file, then rename it over the old one.
fn rename_save(path: &Path, contents: &str) {
    let tmp = path.with_extension("lua.swp-new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Watched {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Watched {
    fn runs(&self) -> usize {
        count_in(&self.stderr, "watch: waiting")
    }

    fn wait_for_runs(&self, n: usize) {
        wait_until(
            &format!("run {n} of the watched recipe"),
            Duration::from_secs(60),
            || self.runs() >= n,
        );
        // Give a second, unwanted re-run the chance to show up.
        std::thread::sleep(Duration::from_millis(1200));
        assert_eq!(
            self.runs(),
            n,
            "{}",
            std::fs::read_to_string(&self.stderr).unwrap()
        );
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const WATCHED: &str = r#"local lib = require "lib"
runner.sweep{
  name = "w",
  grid = { x = { 1, 2 } },
  trial = function(p) return { y = lib.f(p.x) } end,
}
"#;

#[test]
fn watch_reruns_once_per_save_and_keeps_results_through_a_syntax_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("w.lua");
    std::fs::write(&recipe, WATCHED).unwrap();
    std::fs::write(
        dir.path().join("lib.lua"),
        "return { f = function(x) return 2 * x end }\n",
    )
    .unwrap();
    let (stdout, stderr) = (dir.path().join("out.txt"), dir.path().join("err.txt"));
    let child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(dir.path())
        .args(["--watch", "w.lua", "--results", "res"])
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let w = Watched {
        child,
        stdout,
        stderr,
    };
    let trials = dir.path().join("res/w/trials.csv");
    w.wait_for_runs(1);
    assert_eq!(read_csv(&trials).1.len(), 2);

    // A rename-style save that adds a grid value: exactly one re-run, which reuses both
    // finished trials.
    rename_save(&recipe, &WATCHED.replace("{ 1, 2 }", "{ 1, 2, 3 }"));
    w.wait_for_runs(2);
    assert_eq!(count_in(&w.stderr, "done earlier, reused"), 2);
    let (header, rows) = read_csv(&trials);
    assert_eq!(rows.len(), 3);

    // A required module is watched too; changing it changes every trial id.
    std::fs::write(
        dir.path().join("lib.lua"),
        "return { f = function(x) return 3 * x end }\n",
    )
    .unwrap();
    w.wait_for_runs(3);
    let (_, rows_after) = read_csv(&trials);
    let y = column(&header, "y");
    assert_eq!(
        rows_after.iter().map(|r| r[y].as_str()).collect::<Vec<_>>(),
        ["3", "6", "9"]
    );

    // A syntax error: the error with file:line, the last good results stay on screen and on disk.
    rename_save(&recipe, "local lib = require \"lib\"\nlocal x = = 1\n");
    w.wait_for_runs(4);
    let err = std::fs::read_to_string(&w.stderr).unwrap();
    assert!(
        err.contains("w.lua:2:") && err.contains("syntax error"),
        "{err}"
    );
    assert!(err.contains("watch: w.lua changed"), "{err}");
    let out = std::fs::read_to_string(&w.stdout).unwrap();
    assert!(out.contains("last good results"), "{out}");
    assert_eq!(read_csv(&trials).1, rows_after);

    // Ctrl-C ends the watch cleanly.
    let mut w = w;
    unsafe { libc::kill(w.child.id() as i32, libc::SIGINT) };
    let start = Instant::now();
    let status = loop {
        if let Some(s) = w.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "--watch did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        std::fs::read_to_string(&w.stderr)
            .unwrap()
            .contains("watch: stopped")
    );
}
