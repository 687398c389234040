//! The holes a hostile user found, each closed: limits recipe code cannot bypass, the Lua
//! memory cap, `require` confined to the recipe's folder, writes confined to the results
//! folder, and no panics on broken pipes or huge durations.

use crate::common::{fixture, root, runner_in, text};
use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Each loop the instruction hook cannot reach (or whose stop it swallows) still ends at
/// --time-limit + 1 s, with the time limit's exit code.
#[test]
fn loops_that_dodge_the_hook_still_stop_at_the_time_limit() {
    for how in ["coroutine", "pcall", "gc", "pattern"] {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().display().to_string();
        let started = Instant::now();
        let out = runner_in(
            &root(),
            &[
                &fixture("runaway_bypass.lua"),
                "--set",
                &format!("how={how}"),
                "--time-limit",
                "1s",
                "--results",
                &results,
            ],
        );
        let took = started.elapsed();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(124), "{how}: {err}");
        assert!(err.contains("time limit reached"), "{how}: {err}");
        // 1 s limit + 1 s grace, plus process start and the watchdog's poll on a machine
        // busy with the other tests.
        assert!(took < Duration::from_millis(3_500), "{how} took {took:?}");
        assert!(took >= Duration::from_secs(1), "{how} took {took:?}");
    }
}

#[test]
fn the_lua_memory_cap_stops_a_growing_table_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().display().to_string();
    let out = runner_in(
        &root(),
        &[
            &fixture("lua_memory.lua"),
            "--lua-memory",
            "64M",
            "--results",
            &results,
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    // The loop's lines: the hook saw one of them last.
    assert!(
        ["4", "5", "6"].iter().any(|l| err.contains(&format!(
            "tests/fixtures/recipes/lua_memory.lua:{l}: the recipe's Lua values"
        ))),
        "{err}"
    );
    assert!(err.contains("memory limit of 64 MiB"), "{err}");
    assert!(err.contains("--lua-memory"), "{err}");
}

/// A recipe folder with a module inside, one outside, and a symlink pointing out.
fn recipe_tree() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let inner = dir.path().join("recipes");
    std::fs::create_dir_all(inner.join("lib")).unwrap();
    std::fs::write(inner.join("lib/helper.lua"), "return { x = 41 }\n").unwrap();
    std::fs::write(dir.path().join("outside.lua"), "return { x = 7 }\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside.lua"), inner.join("link.lua")).unwrap();
    dir
}

fn run_require(dir: &Path, module: &str, trust: bool) -> Output {
    let recipe = dir.join("recipes/r.lua");
    std::fs::write(&recipe, format!("print(require({module:?}).x + 1)\n")).unwrap();
    let mut args = vec!["recipes/r.lua", "--results", "results"];
    if trust {
        args.push("--trust");
    }
    runner_in(dir, &args)
}

#[test]
fn require_stays_inside_the_recipe_folder_unless_trusted() {
    let dir = recipe_tree();
    let out = run_require(dir.path(), "lib.helper", false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "42\n");

    let outside = dir.path().join("outside").display().to_string();
    for (module, says) in [
        (outside.as_str(), "a module name is dot-separated names"),
        ("..outside", "a module name is dot-separated names"),
        ("link", "outside the recipe's folder"),
    ] {
        let out = run_require(dir.path(), module, false);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{module}: {err}");
        assert!(err.contains("recipes/r.lua:1: require"), "{module}: {err}");
        assert!(
            err.contains(says) && err.contains("--trust"),
            "{module}: {err}"
        );
    }
    // With --trust the symlink is followed.
    let out = run_require(dir.path(), "link", true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "8\n");
}

/// Reads the first line of `runner ARGS` and closes the pipe: runner must end without a panic
/// (killed by SIGPIPE like any Unix filter, never exit 101).
fn first_line_then_close(args: &[&str]) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    let _ = stdout.read(&mut first).unwrap();
    drop(stdout);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{args:?}: {err}");
    assert_ne!(status.code(), Some(101), "{args:?}: {err}");
}

#[test]
fn a_closed_pipe_ends_output_without_a_panic() {
    // A table long enough to fill the pipe after the reader has gone.
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("trial_id,status,x,y\n");
    for i in 0..50_000 {
        csv.push_str(&format!("t{i},ok,{i},{}\n", i * 2));
    }
    std::fs::write(dir.path().join("trials.csv"), csv).unwrap();
    first_line_then_close(&[
        "table",
        dir.path().to_str().unwrap(),
        "--rows",
        "x",
        "--value",
        "y",
    ]);
}

#[test]
fn a_huge_time_limit_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner_in(
        &root(),
        &[
            &fixture("runaway.lua"),
            "--time-limit",
            "18446744073709551615s",
            "--results",
            dir.path().to_str().unwrap(),
        ],
    );
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("longer than a year"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// trials.csv without the columns that measure the run (time, memory), which differ between
/// any two runs.
fn trials_without_timings(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let keep: Vec<usize> = (0..header.len())
        .filter(|&i| !["seconds", "peak_mem_mb"].contains(&header[i]))
        .collect();
    let pick = |line: &str| {
        let fields: Vec<&str> = line.split(',').collect();
        keep.iter()
            .map(|&i| fields[i])
            .collect::<Vec<_>>()
            .join(",")
    };
    std::iter::once(pick(&header.join(",")))
        .chain(lines.map(pick))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A sweep whose trials checkpoint and resume, killed without warning at seeded random
/// moments and run again until it finishes, ends with the trials and the steps of a run that
/// was never killed: no trial twice, no step row lost or repeated.
#[test]
fn a_sweep_killed_at_random_moments_ends_as_if_never_killed() {
    let run = |results: &Path| -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_runner"));
        cmd.current_dir(root()).args([
            &fixture("resume_checkpoints.lua"),
            "--set",
            "pause=0.05",
            "--results",
            results.to_str().unwrap(),
        ]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        cmd
    };
    let whole = tempfile::tempdir().unwrap();
    assert!(run(whole.path()).status().unwrap().success());

    let killed = tempfile::tempdir().unwrap();
    let mut state: u64 = 0x5eed_2026;
    let mut kills = 0;
    let mut finished = false;
    for _ in 0..60 {
        // A 64-bit LCG (Knuth's MMIX constants): seeded, so a failure reproduces.
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = Duration::from_millis(40 + (state >> 33) % 400);
        let mut child = run(killed.path()).spawn().unwrap();
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            finished = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
    }
    if !finished {
        // A loaded machine can be too slow for any run to end within the delays; the last
        // run then goes on to the end unkilled, which is what a user does.
        assert!(run(killed.path()).status().unwrap().success());
    }
    assert!(
        kills >= 3,
        "only {kills} kills landed: the test proves little"
    );
    let (a, b) = (whole.path().join("ckpt"), killed.path().join("ckpt"));
    assert_eq!(
        std::fs::read_to_string(a.join("steps.csv")).unwrap(),
        std::fs::read_to_string(b.join("steps.csv")).unwrap(),
        "steps.csv after {kills} kills"
    );
    assert_eq!(
        trials_without_timings(&a.join("trials.csv")),
        trials_without_timings(&b.join("trials.csv")),
        "trials.csv after {kills} kills"
    );
}

/// runner's API writes under the results folder only, unless --trust: `..`, an absolute path
/// elsewhere and a symlink out of the folder are refused, and nothing is written there.
#[test]
fn the_api_writes_only_under_the_results_folder_unless_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(dir.path().join("results")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.path().join("results/link")).unwrap();
    let recipe = dir.path().join("w.lua");
    let save = |call: &str, target: &str, trust: bool| {
        std::fs::write(
            &recipe,
            format!(
                "local model = runner.model.tiny{{ layers = 1, d_model = 32, heads = 2, kv_heads = 1, vocab = 256 }}\n\
                 model:attach(runner.peft.lora{{ rank = 2 }})\n\
                 local trainer = runner.trainer{{ model = model }}\n\
                 local target = {target:?}\n\
                 {call}\n\
                 print('wrote')\n"
            ),
        )
        .unwrap();
        let mut args = vec!["w.lua", "--results", "results"];
        if trust {
            args.push("--trust");
        }
        runner_in(dir.path(), &args)
    };
    let absolute = outside.join("a").display().to_string();
    for call in [
        "model:save_adapter(target)",
        "model:save_pretrained(target)",
        "trainer:save(target)",
    ] {
        for target in [
            "results/../outside/a",
            absolute.as_str(),
            "results/link/a",
            "results",
        ] {
            let out = save(call, target, false);
            let err = text(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{call} {target}: {err}");
            assert!(
                err.contains("w.lua:5:") && err.contains("is outside the results folder"),
                "{call} {target}: {err}"
            );
            assert!(err.contains("--trust"), "{err}");
        }
        assert!(!outside.exists(), "{call} wrote outside");
        let out = save(call, "results/inside/a", false);
        assert_eq!(out.status.code(), Some(0), "{call}: {}", text(&out.stderr));
        assert!(dir.path().join("results/inside/a").is_dir(), "{call}");
        let out = save(call, "results/../outside/a", true);
        assert_eq!(out.status.code(), Some(0), "{call}: {}", text(&out.stderr));
        assert!(outside.join("a").is_dir(), "{call}");
        std::fs::remove_dir_all(&outside).unwrap();
        std::fs::remove_dir_all(dir.path().join("results/inside")).unwrap();
    }
}

/// Model sizes no machine holds are refused before anything is allocated, with exit 2: from
/// `runner.model.tiny`, and from a Hugging Face config through `model.load`, `generate` and
/// `perplexity`.
#[test]
fn absurd_model_sizes_are_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let run = |recipe: &str| {
        std::fs::write(dir.path().join("m.lua"), recipe).unwrap();
        runner_in(dir.path(), &["m.lua", "--results", "results"])
    };
    let refused = |out: Output, what: &str| {
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(
            err.contains("for its weights alone") && err.contains("memory this machine has"),
            "{what}: {err}"
        );
        assert_eq!(
            err.matches("for its weights alone").count(),
            1,
            "{what}: {err}"
        );
    };
    for opts in [
        "layers = 1e9",
        "d_model = 1e6, heads = 1, kv_heads = 1",
        "vocab = 1e11",
    ] {
        let started = Instant::now();
        refused(run(&format!("runner.model.tiny{{ {opts} }}\n")), opts);
        assert!(started.elapsed() < Duration::from_secs(10), "{opts}");
    }
    let out = run("runner.model.tiny{}:save_pretrained('results/hf')\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let config = dir.path().join("results/hf/config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    json["num_hidden_layers"] = serde_json::json!(1_000_000_000u64);
    std::fs::write(&config, json.to_string()).unwrap();
    refused(run("runner.model.load('results/hf')\n"), "model.load");
    std::fs::write(dir.path().join("t.txt"), "some text to score").unwrap();
    refused(
        runner_in(dir.path(), &["generate", "results/hf", "--prompt", "hi"]),
        "generate",
    );
    refused(
        runner_in(dir.path(), &["perplexity", "results/hf", "--file", "t.txt"]),
        "perplexity",
    );
}

/// A data file that is missing is a recipe mistake, as the docs say: every trial would hit
/// it, so the sweep stops with exit 2 after recording the trial that hit it.
#[test]
fn a_missing_data_file_inside_a_trial_stops_the_sweep_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("md.lua"),
        "runner.sweep{\n  name = \"md\",\n  grid = { x = { 1, 2 } },\n  trial = function(p)\n    runner.data.jsonl(\"no/such/file.jsonl\")\n    return { y = p.x }\n  end,\n}\n",
    )
    .unwrap();
    let out = runner_in(dir.path(), &["md.lua", "--results", "results"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("md.lua:5: runner.data.jsonl: cannot read no/such/file.jsonl"),
        "{err}"
    );
    let trials = std::fs::read_to_string(dir.path().join("results/md/trials.csv")).unwrap();
    assert_eq!(
        trials.lines().count(),
        2,
        "one trial recorded, then stop: {trials}"
    );
    assert!(trials.contains(",failed,"), "{trials}");
}

/// A sequence longer than the model's positions is refused, not trained past its rotary
/// table (generation's limit is tested in generate.rs).
#[test]
fn sequences_past_max_seq_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = |max_len: usize| {
        format!(
            "local model = runner.model.tiny{{ max_seq = 16 }}\n\
             model:attach(runner.peft.lora{{ rank = 2 }})\n\
             local trainer = runner.trainer{{ model = model }}\n\
             local data = runner.data.examples{{ string.rep('abc ', 20) }}\n\
             for _, batch in data:batches{{ size = 1, max_len = {max_len}, steps = 1 }} do trainer:step(batch) end\n"
        )
    };
    std::fs::write(dir.path().join("s.lua"), recipe(64)).unwrap();
    let out = runner_in(dir.path(), &["s.lua", "--results", "results"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("s.lua:5: trainer:step: a sequence of 64 tokens is longer than the model's max_position_embeddings (16)"),
        "{err}"
    );
    std::fs::write(dir.path().join("s.lua"), recipe(16)).unwrap();
    let out = runner_in(dir.path(), &["s.lua", "--results", "results"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// A tokenizer that drops a whole text (no vocabulary for it, no unknown token) says so.
#[test]
fn a_tokenizer_that_drops_a_text_warns() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tokenizer.json"),
        r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,"pre_tokenizer":null,"post_processor":null,"decoder":null,"model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,"vocab":{"a":0,"b":1},"merges":[]}}"#,
    )
    .unwrap();
    let tk = dir.path().to_str().unwrap();
    let out = runner_in(dir.path(), &["tokenize", tk, "xyz"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("turned a non-empty text into no tokens (\"xyz\")"),
        "{}",
        text(&out.stderr)
    );
    let out = runner_in(dir.path(), &["tokenize", tk, "ab"]);
    assert_eq!(text(&out.stderr), "");
}

/// Trial ids do not depend on how the sweep call is laid out: with the whole header on one
/// line, adding a grid value keeps the other trials' ids (they are reused, not rerun).
#[test]
fn a_one_line_sweep_header_keeps_ids_when_a_grid_value_is_added() {
    let dir = tempfile::tempdir().unwrap();
    let run = |ranks: &str| {
        std::fs::write(
            dir.path().join("one.lua"),
            format!(
                "runner.sweep{{ name = \"m\", grid = {{ rank = {{ {ranks} }} }}, trial = function(p)\n  return {{ y = p.rank * 2 }}\nend }}\n"
            ),
        )
        .unwrap();
        let out = runner_in(dir.path(), &["one.lua", "--results", "results"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    run("1, 2");
    let err = run("1, 2, 4");
    assert_eq!(err.matches("done earlier, reused").count(), 2, "{err}");
    let trials = std::fs::read_to_string(dir.path().join("results/m/trials.csv")).unwrap();
    assert_eq!(trials.lines().count(), 4, "{trials}");
    assert!(!dir.path().join("results/m/archive").exists());
}
