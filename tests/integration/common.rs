//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::*;

use runner::model::init;
use runner::model::params::{Param, ParamVisitor};

/// Sets every trainable parameter to deterministic non-trivial values, as training would.
pub struct Perturb(pub u64);
impl<Bk: Backend> ParamVisitor<Bk> for Perturb {
    fn visit1(&mut self, _: &str, p: &mut Param<Bk, 1>) {
        if p.trainable {
            self.0 += 1;
            let noise = init::normal_vec(&mut init::rng(self.0), p.numel(), 0.1);
            let t = p.value.clone().detach() + init::tensor1::<Bk>(noise, &p.value.device());
            *p = Param::new(t, true);
        }
    }
    fn visit2(&mut self, _: &str, p: &mut Param<Bk, 2>) {
        if p.trainable {
            self.0 += 1;
            let dims = p.value.dims();
            let noise = init::normal_vec(&mut init::rng(self.0), p.numel(), 0.1);
            let t = p.value.clone().detach() + init::tensor2::<Bk>(noise, dims, &p.value.device());
            *p = Param::new(t, true);
        }
    }
}

/// Runs test `name` (its path inside this binary, e.g. `streaming::a_test`) alone in a fresh
/// process of this test binary and fails if it fails there. For tests that measure
/// process-wide state (peak resident memory, the device-memory peak), which the other tests
/// running on parallel threads of one binary would disturb. Returns true inside that process,
/// where the caller runs its body; false in the caller's own process, where it returns.
pub fn in_own_process(name: &str) -> bool {
    const CHILD: &str = "RUNNER_TEST_IN_OWN_PROCESS";
    if std::env::var_os(CHILD).is_some() {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--include-ignored", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("running the test binary again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in its own process:\n{stdout}\n{stderr}"
    );
    eprint!("{stderr}");
    false
}

/// The header and rows of a CSV results file.
pub fn read_csv(path: &Path) -> (Vec<String>, Vec<Vec<String>>) {
    let mut r = csv::Reader::from_path(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header = r.headers().unwrap().iter().map(String::from).collect();
    let rows = r
        .records()
        .map(|x| x.unwrap().iter().map(String::from).collect())
        .collect();
    (header, rows)
}

/// The position of column `name` in `header`.
pub fn column(header: &[String], name: &str) -> usize {
    header
        .iter()
        .position(|h| h == name)
        .unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

/// The repository root, where the recipes and fixtures are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A recipe of `tests/fixtures/recipes/`, relative to the root.
pub fn fixture(name: &str) -> String {
    format!("tests/fixtures/recipes/{name}")
}

/// Runs the runner binary with `args` in `dir`.
pub fn runner_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(dir)
        .args(args)
        .output()
        .expect("runner starts")
}

/// Bytes of a process's output as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The largest |a − b| over two equally long slices (logits against a reference).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
