//! Sweeps across machines through a real Slurm: `runner slurm` writes the job-array script,
//! sbatch runs one shard per array task, `runner merge` combines them.
//!
//! Needs a running Slurm (`.ci/slurm_up.sh` starts a one-node cluster). Without one the test
//! says so and passes, unless RUNNER_REQUIRE_SLURM=1 (as in CI), where it fails.

use std::path::PathBuf;
use std::process::Command;

/// A controller answers and has a node that is not down or drained (a busy node is fine: sbatch
/// queues the array until it is free).
fn slurm_is_up() -> bool {
    let Ok(o) = Command::new("sinfo").args(["-h", "-o", "%T"]).output() else {
        return false;
    };
    let states = String::from_utf8_lossy(&o.stdout);
    o.status.success()
        && states
            .lines()
            .any(|s| !s.trim().is_empty() && !s.contains("down") && !s.contains("drain"))
}

#[test]
fn a_slurm_job_array_runs_every_trial_exactly_once() {
    if !slurm_is_up() {
        assert!(
            std::env::var("RUNNER_REQUIRE_SLURM").as_deref() != Ok("1"),
            "RUNNER_REQUIRE_SLURM=1 but no idle Slurm node answers (run .ci/slurm_up.sh)"
        );
        eprintln!(
            "skipped: no Slurm cluster here (run .ci/slurm_up.sh, or set RUNNER_REQUIRE_SLURM=1 to make this an error)"
        );
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().to_str().unwrap();
    let script = dir.path().join("array.sbatch");
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(&root)
        .args([
            "slurm",
            "tests/fixtures/recipes/resume_sweep.lua",
            "--shards",
            "3",
            "--array-parallelism",
            "2",
            "--results",
            results,
            "--output",
        ])
        .arg(&script)
        .args(["--", "--time=10"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("3 array task(s)") && stdout.contains("sweep 'resume': 6 trial(s)"),
        "{stdout}"
    );
    let body = std::fs::read_to_string(&script).unwrap();
    assert!(
        body.contains("#SBATCH --array=0-2%2") && body.contains("#SBATCH --time=10"),
        "{body}"
    );

    // --wait: sbatch returns when every array task has ended, with the worst exit code.
    let sbatch = Command::new("sbatch")
        .arg("--wait")
        .arg(&script)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        sbatch.status.success(),
        "sbatch: {}{}",
        String::from_utf8_lossy(&sbatch.stdout),
        String::from_utf8_lossy(&sbatch.stderr)
    );
    let sweep = dir.path().join("resume");
    for i in 0..3 {
        assert!(
            sweep.join(format!("shards/{i}-of-3/trials.csv")).is_file(),
            "shard {i} wrote no results"
        );
    }
    let merge = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(["merge"])
        .arg(&sweep)
        .output()
        .unwrap();
    assert_eq!(
        merge.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&merge.stderr)
    );

    let mut r = csv::Reader::from_path(sweep.join("trials.csv")).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(String::from).collect();
    let rows: Vec<csv::StringRecord> = r.records().map(|x| x.unwrap()).collect();
    let id = header.iter().position(|h| h == "trial_id").unwrap();
    let status = header.iter().position(|h| h == "status").unwrap();
    let mut ids: Vec<&str> = rows.iter().map(|r| &r[id]).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        (rows.len(), ids.len()),
        (6, 6),
        "every trial exactly once: {rows:?}"
    );
    assert!(rows.iter().all(|r| &r[status] == "ok"), "{rows:?}");
    let steps = std::fs::read_to_string(sweep.join("steps.csv")).unwrap();
    assert_eq!(steps.lines().count(), 1 + 6 * 3, "{steps}");
}
