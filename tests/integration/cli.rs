//! The `runner` binary end to end: recipes, exit codes, messages with file:line, CSV results.

use crate::common::{column, read_csv};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> String {
    format!("tests/fixtures/recipes/{name}")
}

/// Runs `runner ARGS --results DIR` from the repository root.
fn runner(args: &[&str], results: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .args(args)
        .arg("--results")
        .arg(results)
        .output()
        .expect("runner starts")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn quickstart_loss_falls_and_runs_are_reproducible() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let out = runner(&["recipes/quickstart.lua"], a.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = runner(&["run", "recipes/quickstart.lua"], b.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let steps_a = std::fs::read(a.path().join("quickstart/steps.csv")).unwrap();
    let steps_b = std::fs::read(b.path().join("quickstart/steps.csv")).unwrap();
    assert_eq!(
        steps_a, steps_b,
        "same seed must give byte-identical steps.csv"
    );

    let (header, rows) = read_csv(&a.path().join("quickstart/steps.csv"));
    let loss = column(&header, "loss");
    let first: f64 = rows.first().unwrap()[loss].parse().unwrap();
    let last: f64 = rows.last().unwrap()[loss].parse().unwrap();
    assert!(
        last <= 0.7 * first,
        "training loss should fall by ≥ 30%: {first} -> {last}"
    );

    let (header, rows) = read_csv(&a.path().join("quickstart/trials.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][column(&header, "status")], "ok");
    let before: f64 = rows[0][column(&header, "eval_loss_before")]
        .parse()
        .unwrap();
    let after: f64 = rows[0][column(&header, "eval_loss")].parse().unwrap();
    assert!(
        after <= 0.7 * before,
        "held-out loss should fall by ≥ 30%: {before} -> {after}"
    );
    assert_eq!(rows[0][column(&header, "trial_id")].len(), 12);
    // On the CPU the peak is the process's resident memory, and there is no device column.
    let peak: i64 = rows[0][column(&header, "peak_mem_mb")].parse().unwrap();
    assert!(
        peak > 0 && !header.iter().any(|h| h == "peak_host_mb"),
        "{header:?}"
    );
}

#[test]
fn syntax_error_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("syntax_error.lua")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tests/fixtures/recipes/syntax_error.lua:3:"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn unknown_option_exits_2_with_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("unknown_option.lua")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("tests/fixtures/recipes/unknown_option.lua:3: runner.peft.lora: unknown option 'rnak' (did you mean 'rank'?)"), "{err}");
    assert!(err.contains("stack traceback"), "{err}");
}

#[test]
fn rank_zero_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("rank_zero.lua")], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("tests/fixtures/recipes/rank_zero.lua:7: runner.peft.lora: LoRA rank must be a positive integer (got 0)"), "{err}");
    // The failing trial is still on record.
    let (header, rows) = read_csv(&dir.path().join("rank_zero/trials.csv"));
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][column(&header, "status")], "failed");
}

#[test]
fn a_failing_trial_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("one_trial_fails.lua")], dir.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("one_fails/trials.csv"));
    let (status, x, error, doubled) = (
        column(&header, "status"),
        column(&header, "x"),
        column(&header, "error"),
        column(&header, "doubled"),
    );
    let summary: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r[x].as_str(), r[status].as_str(), r[doubled].as_str()))
        .collect();
    assert_eq!(
        summary,
        vec![("1", "ok", "2"), ("2", "failed", ""), ("3", "ok", "6")]
    );
    assert!(
        rows[1][error].contains("one_trial_fails.lua:6: x = 2 is not allowed"),
        "{}",
        rows[1][error]
    );
    let (header, rows) = read_csv(&dir.path().join("one_fails/steps.csv"));
    assert_eq!(header, vec!["trial_id", "step", "value"]);
    assert_eq!(rows.len(), 2);
}

#[test]
fn set_values_reach_the_recipe_typed() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(
        &[
            &fixture("params.lua"),
            "--set",
            "n=3",
            "--set",
            "lr=2e-4",
            "--set",
            "flag=true",
            "--set",
            "name=abc",
            "--seed",
            "7",
        ],
        dir.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("params/trials.csv"));
    let get = |k: &str| rows[0][column(&header, k)].clone();
    assert_eq!(get("n_type"), "integer");
    assert_eq!(get("n"), "3");
    assert_eq!(get("lr_type"), "float");
    assert_eq!(get("flag_type"), "boolean");
    assert_eq!(get("name"), "abc");
    assert_eq!(get("seed"), "7");
    // A trial id covers the --set values: the same recipe with another value is another trial.
    let id = get("trial_id");
    let again = tempfile::tempdir().unwrap();
    let out = runner(
        &[
            &fixture("params.lua"),
            "--set",
            "n=4",
            "--set",
            "lr=2e-4",
            "--set",
            "flag=true",
            "--set",
            "name=abc",
            "--seed",
            "7",
        ],
        again.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&again.path().join("params/trials.csv"));
    assert_ne!(rows[0][column(&header, "trial_id")], id);
}

#[test]
fn malformed_jsonl_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("bad.jsonl");
    std::fs::write(&data, "{\"text\": \"fine\"}\n{\"text\": oops}\n").unwrap();
    let set = format!("data={}", data.display());
    let out = runner(&[&fixture("bad_data.lua"), "--set", &set], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("bad_data.lua:2: runner.data.jsonl:"), "{err}");
    assert!(
        err.contains(&format!("{}:2: invalid JSON", data.display())),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&["recipes/quickstart.lua", "--device", "tpu"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown device 'tpu'"),
        "{}",
        stderr(&out)
    );
    let out = runner(&["no/such/recipe.lua"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("cannot read recipe no/such/recipe.lua"),
        "{}",
        stderr(&out)
    );
    let out = runner(&["recipes/quickstart.lua", "--set", "novalue"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_documents_every_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--set", "--device", "--results", "--seed", "Exit codes"] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
}

#[cfg(feature = "cuda")]
#[test]
fn cuda_without_a_gpu_exits_2_with_a_clear_message() {
    if Path::new("/dev/nvidia0").exists() {
        eprintln!("a GPU is present: nothing to check");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&["recipes/quickstart.lua", "--device", "cuda"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("error: device cuda is not usable on this machine"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_killed_run_leaves_only_whole_rows() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
        .current_dir(root())
        .arg(fixture("many_logs.lua"))
        .arg("--results")
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let steps = dir.path().join("many_logs/steps.csv");
    // Wait until rows are being written, then kill without warning.
    for _ in 0..200 {
        if std::fs::metadata(&steps)
            .map(|m| m.len() > 50_000)
            .unwrap_or(false)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&steps).unwrap();
    assert!(
        text.len() > 50_000,
        "the run should have written rows before the kill"
    );
    assert!(text.ends_with('\n'), "a partial last line was left");
    let (header, rows) = read_csv(&steps);
    assert_eq!(header, vec!["trial_id", "step", "loss", "note"]);
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.len(), 4);
        assert_eq!(r[1], (i + 1).to_string());
        assert_eq!(r[3], "row, with \"quotes\"");
    }
}

#[test]
fn pretrained_model_api_from_lua() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("model_api.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("model_api/trials.csv"));
    let get = |k: &str| rows[0][column(&header, k)].clone();
    assert_eq!(get("status"), "ok", "{}", get("error"));
    assert_eq!(get("vocab"), "128");
    // 2 layers of (q 32·32, k 32·16, v 32·16, o 32·32, MLP 3·32·64, 2 norms of 32) + embed, head, norm.
    assert_eq!(
        get("total"),
        (2 * (1024 + 512 + 512 + 1024 + 3 * 2048 + 64) + 2 * 128 * 32 + 32).to_string()
    );
    // Windows of 8 advancing by 4 score every token but the first exactly once.
    let n: usize = get("n_tokens").parse().unwrap();
    assert_eq!(get("scored"), (n - 1).to_string());
    let ppl: f64 = get("perplexity").parse().unwrap();
    assert!(ppl.is_finite() && ppl > 1.0);
    assert!(get("generated_len").parse::<usize>().is_ok());
}

#[test]
fn missing_model_is_a_recipe_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("load.lua");
    std::fs::write(&recipe, "local m = runner.model.load(\"no-such-model\")\n").unwrap();
    let out = runner(&[recipe.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "load.lua:1: runner.model.load: 'no-such-model' is neither a file, a known model name"
        ),
        "{}",
        stderr(&out)
    );
}

#[test]
fn preference_api_from_lua() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("preference_api.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("preference_api/trials.csv"));
    let get = |k: &str| rows[0][column(&header, k)].clone();
    assert_eq!(get("status"), "ok", "{}", get("error"));
    assert!(get("reward_accuracy").parse::<f64>().unwrap() >= 0.9);
    // TRL's metric names reach steps.csv as they are.
    let (header, steps) = read_csv(&dir.path().join("preference_api/steps.csv"));
    let margins = column(&header, "rewards/margins");
    assert_eq!(steps.len(), 40);
    let last: f64 = steps[39][margins].parse().unwrap();
    assert!(last > 0.0, "{last}");
}

#[test]
fn rl_api_from_lua() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("rl_api.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("rl_api/trials.csv"));
    let get = |k: &str| {
        rows[0][column(&header, k)]
            .parse::<f64>()
            .unwrap_or(f64::NAN)
    };
    assert!(get("grpo_end") > get("grpo_start") + 0.4, "{rows:?}");
    assert!(get("ppo_end") > get("ppo_start") + 0.4, "{rows:?}");
    // TRL's metric names reach steps.csv as they are.
    let (header, steps) = read_csv(&dir.path().join("rl_api/steps.csv"));
    let kl = column(&header, "objective/kl");
    assert_eq!(steps.len(), 80);
    let first: f64 = steps[40][kl].parse().unwrap();
    assert_eq!(first, 0.0, "PPO's first iteration: policy = reference");
}

#[test]
fn adapter_api_from_lua() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("adapters_api.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("adapters_api/trials.csv"));
    let get = |k: &str| rows[0][column(&header, k)].clone();
    assert_eq!(get("status"), "ok", "{}", get("error"));
    assert_eq!(get("adapters"), "2");
    // tiny_hf: d 32, q/o 32→32, k/v 32→16, MLP 32↔64, 2 layers.
    assert_eq!(
        get("lora"),
        (2 * 2 * ((32 + 32) * 2 + (32 + 16) * 2 + (32 + 64) * 3)).to_string()
    );
    assert_eq!(
        get("dora"),
        (2 * (2 * (32 + 32) + 32 + 2 * (32 + 16) + 16)).to_string()
    );
    assert_eq!(get("ia3"), (2 * (16 + 16 + 64)).to_string());
    assert_eq!(
        get("houlsby"),
        (2 * 2 * (32 * 8 + 8 + 8 * 32 + 32)).to_string()
    );
    assert_eq!(
        get("pfeiffer"),
        (2 * (32 * 8 + 8 + 8 * 32 + 32)).to_string()
    );
    assert_eq!(get("prompt_tuning"), (4 * 32).to_string());
    assert_eq!(
        get("prefix_tuning"),
        (2 * 16 + 16 * 8 + 8 + 8 * 2 * 2 * 16 + 2 * 2 * 16).to_string()
    );
    assert_eq!(
        get("bitfit"),
        (2 * (32 + 16 + 16 + 32 + 64 + 64 + 32)).to_string()
    );
    assert_eq!(get("ln_tuning"), (2 * 2 * 32 + 32).to_string());
    assert_eq!(get("full"), get("total"));
    let peak: f64 = get("peak_mem_mb").parse().unwrap();
    assert!(peak > 1.0, "peak memory is recorded: {peak}");
    let trial = get("trial_id");
    assert!(
        dir.path()
            .join("adapters_api")
            .join(&trial)
            .join("lora/adapter_config.json")
            .exists()
    );
}

#[test]
fn bad_method_options_name_the_recipe_line() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("m.lua");
    std::fs::write(
        &recipe,
        "local m = runner.model.tiny{}\nm:attach(runner.peft.houlsby{ reduction_factr = 4 })\n",
    )
    .unwrap();
    let out = runner(&[recipe.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("m.lua:2: runner.peft.houlsby: unknown option 'reduction_factr' (did you mean 'reduction_factor'?)"), "{}", stderr(&out));
    std::fs::write(&recipe, "local m = runner.model.tiny{}\nm:attach(runner.peft.lora{ targets = [[model\\.layers\\.7\\..*]] })\n").unwrap();
    let out = runner(&[recipe.to_str().unwrap()], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("m.lua:2: model:attach: target pattern"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn quantization_api_from_lua() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("quant_api.lua")], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("quant_api/trials.csv"));
    let get = |k: &str| rows[0][column(&header, k)].clone();
    assert_eq!(get("status"), "ok", "{}", get("error"));
    assert_eq!(
        get("quantized_params"),
        (2 * 64 * 64 + 2 * 32 * 64 + 3 * 128 * 64).to_string()
    );
    // Half a byte per code, plus per tensor the block codes, nested scales and the 1 KiB nested
    // map bitsandbytes stores beside every weight: heavy on this tiny model, 0.002 B on SmolLM2.
    let bpp: f64 = get("bytes_per_param").parse().unwrap();
    let blocks: [usize; 7] = [64, 32, 32, 64, 128, 128, 128];
    let expected = (36864.0 / 2.0
        + blocks
            .iter()
            .map(|b| (b + 4 + 4 + 1024) as f64)
            .sum::<f64>())
        / 36864.0;
    assert!((bpp - expected).abs() < 1e-9, "{bpp} vs {expected}");
    assert!(
        get("err_dtype").contains("quant_api.lua:")
            && get("err_dtype").contains("model:quantize: unsupported quantization dtype 'int3'"),
        "{}",
        get("err_dtype")
    );
    assert!(
        get("err_block").contains("block size must be positive, got 0"),
        "{}",
        get("err_block")
    );
    assert!(get("err_row").contains("layers.0.q_proj: bad quantization block: block size 48 does not divide the row length 64"), "{}", get("err_row"));
    assert!(
        get("err_option").contains(
            "model:quantize: unknown option 'blocksize'; valid options: dtype, block, double"
        ),
        "{}",
        get("err_option")
    );
    assert!(
        get("err_merge").contains("base weight is quantized"),
        "{}",
        get("err_merge")
    );
    assert!(
        get("err_load").contains("runner.model.load:")
            && get("err_load").contains(
                "q_proj: bad quantization block: block size 48 does not divide the row length 64"
            ),
        "{}",
        get("err_load")
    );
    let w = |k: &str| get(k).parse::<f64>().unwrap();
    // SmolLM2: 106.2M projection weights at 0.516 B instead of 4 B, 28.4M other weights in f32.
    assert!(
        (w("mem_fp32_weights") - 513.1).abs() < 0.5,
        "{}",
        w("mem_fp32_weights")
    );
    assert!(
        (w("mem_nf4_weights") - 160.4).abs() < 0.5,
        "{}",
        w("mem_nf4_weights")
    );
    assert!(w("mem_obj_weights") < 0.1 && w("mem_obj_weights") > 0.0);
}

#[test]
fn mem_prints_the_breakdown_and_the_precision_table() {
    let mem = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("mem")
            .args(args)
            .output()
            .expect("runner starts")
    };
    let out = mem(&["llama-3.2-1b", "--method", "lora", "--dtype", "nf4"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Llama-3.2-1B: 1235.8M parameters",
        "| weights |",
        "| activations |",
        "| fp32 | 4.000 | 4.94 GB | 19.77 GB |",
        "| bf16 | 2.000 | 2.47 GB |",
        "| int8 | 1.062 |",
        "| nf4+dq | 0.516 | 638 MB |",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let out = mem(&["smollm2-135m", "--dtype", "nf4", "--block", "100"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("block size 100 does not divide the row length 576"),
        "{}",
        stderr(&out)
    );
    let out = mem(&["smollm2-135m", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["estimate"]["params"], 134_515_008);
}

/// The same recipe on wgpu (Mesa lavapipe in CI): the quantized matmul's custom autodiff op
/// is picked for `Autodiff<Wgpu>` too, gives bitsandbytes' outputs and trains. The trial's
/// peak memory is the device's, with the host's beside it.
#[test]
fn quantization_api_runs_on_wgpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("quant_api.lua"), "--device", "wgpu"], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (header, rows) = read_csv(&dir.path().join("quant_api/trials.csv"));
    assert_eq!(
        rows[0][column(&header, "status")],
        "ok",
        "{}",
        rows[0][column(&header, "error")]
    );
    let mb = |name: &str| rows[0][column(&header, name)].parse::<i64>().unwrap();
    // The tiny model's device memory is a few MB; the process holds far more on the host.
    assert!(
        (0..64).contains(&mb("peak_mem_mb")) && mb("peak_host_mb") > mb("peak_mem_mb"),
        "device {} MB, host {} MB",
        mb("peak_mem_mb"),
        mb("peak_host_mb")
    );
}

#[test]
fn data_and_training_loop_api_from_lua() {
    let dir = tempfile::tempdir().unwrap();
    let out = runner(&[&fixture("data_api.lua")], dir.path());
    let err = stderr(&out);
    // The diverging trial fails (exit 1); the other passes every check in the recipe.
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("data_api.lua:") && err.contains("consecutive steps had a non-finite loss"),
        "{err}"
    );
    assert!(
        err.contains("warning: step skipped: non-finite loss or gradient"),
        "{err}"
    );
    let (header, rows) = read_csv(&dir.path().join("data_api/trials.csv"));
    let (case, status) = (column(&header, "case"), column(&header, "status"));
    let statuses: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r[case].as_str(), r[status].as_str()))
        .collect();
    assert_eq!(
        statuses,
        [("train", "ok"), ("diverge", "nonfinite")],
        "{err}"
    );
}

/// Polls for `path` for up to 60 s.
fn wait_for(path: &Path) {
    let start = std::time::Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed().as_secs() < 60,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn a_process_killed_while_saving_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("ckpt");
    let set_dir = format!("dir={}", ckpt.display());
    let mut last_step = 0u64;
    // Kill at varied moments: saves take most of each step, so most kills land inside one.
    for (i, delay_ms) in [0u64, 7, 23, 41, 66, 95, 130, 3, 17, 52].iter().enumerate() {
        let mut child = Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(root())
            .args([
                &fixture("checkpoint_loop.lua"),
                "--set",
                &set_dir,
                "--results",
            ])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("runner starts");
        if i == 0 {
            wait_for(&ckpt.join("latest"));
        }
        std::thread::sleep(std::time::Duration::from_millis(150 + delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let out = runner(
            &[
                &fixture("checkpoint_loop.lua"),
                "--set",
                &set_dir,
                "--set",
                "check=true",
            ],
            dir.path(),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert_eq!(
            out.status.code(),
            Some(0),
            "after kill {i}: {}{text}",
            stderr(&out)
        );
        let step: u64 = text
            .trim()
            .strip_prefix("loaded step ")
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{text}"));
        // Each run resumes where the last checkpoint left off, so steps only grow.
        assert!(
            step >= last_step,
            "after kill {i}: step {step} < {last_step}"
        );
        last_step = step;
    }
    assert!(
        last_step >= 5,
        "the loop should have made progress across restarts (step {last_step})"
    );
    // No leftovers beyond `latest`, the kept checkpoints and at most one interrupted save.
    let names: Vec<String> = std::fs::read_dir(&ckpt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().filter(|n| n.starts_with("step-")).count() <= 3,
        "{names:?}"
    );
}

#[test]
fn hub_ids_load_from_the_hugging_face_cache_offline() {
    // A cache laid out as huggingface_hub writes it, holding the tiny fixture model.
    let cache = tempfile::tempdir().unwrap();
    let repo = cache.path().join("models--tiny-org--tiny-llama");
    let snap = repo.join("snapshots/0123abc");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abc\n").unwrap();
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        let blob = repo.join("blobs").join(f);
        std::fs::copy(root().join("tests/fixtures/parity/tiny_hf").join(f), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snap.join(f)).unwrap();
    }
    let work = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .current_dir(work.path())
            .env("HF_HUB_CACHE", cache.path())
            .args(args)
            .output()
            .expect("runner starts")
    };
    let out = run(&["tokenize", "tiny-org/tiny-llama", "hello world"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let recipe = work.path().join("load.lua");
    std::fs::write(
        &recipe,
        "local m = runner.model.load('tiny-org/tiny-llama')\nassert(m:total_params() > 0)\nprint('vocab', m:config().vocab_size)\n",
    )
    .unwrap();
    let out = run(&[recipe.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("vocab\t128"));
    let out = run(&["models"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tiny-org/tiny-llama"));
    // A model that is not there: the folder looked in and the command that fetches it.
    let out = run(&["tokenize", "tiny-org/absent", "hello"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("models--tiny-org--absent") && err.contains("hf download tiny-org/absent"),
        "{err}"
    );
}

/// `runner similarity` between two saved LoRA adapters: an adapter against itself is 1 on the
/// diagonal, the heatmaps are written, and a module that is not there is named in the error.
#[test]
fn similarity_compares_two_saved_adapters() {
    use burn::backend::{Autodiff, Flex};
    use runner::model::{Llama, TinyOptions};
    use runner::peft::lora::LoraConfig;
    use runner::peft::{Method, Targets};
    type B = Autodiff<Flex>;
    let dir = tempfile::tempdir().unwrap();
    let save = |seed: u64, rank: usize, name: &str| {
        let opts = TinyOptions::default();
        let mut model =
            Llama::<B>::random(opts.config(), 0, opts.std(), &Default::default()).unwrap();
        Method::Lora(LoraConfig {
            rank,
            alpha: rank as f64,
            targets: Targets::AllLinear,
            seed,
            ..Default::default()
        })
        .attach(&mut model, "default")
        .unwrap();
        let path = dir.path().join(name);
        runner::peft::format::save_adapter(&model, "default", &path).unwrap();
        path
    };
    let (r4, r8) = (save(1, 4, "r4"), save(2, 8, "r8"));
    let run = |a: &Path, b: &Path, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_runner"))
            .arg("similarity")
            .arg(a)
            .arg(b)
            .args(extra)
            .output()
            .expect("runner starts")
    };
    let out_dir = dir.path().join("plots");
    let out = run(
        &r4,
        &r4,
        &[
            "--module",
            "model.layers.0.self_attn.q_proj",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let rows: Vec<Vec<f64>> = text
        .lines()
        .skip(1)
        .take(4)
        .map(|l| l.split(',').skip(1).map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 4);
    for (i, row) in rows.iter().enumerate() {
        assert!((row[i] - 1.0).abs() < 1e-5, "{text}");
    }
    assert!(out_dir.join("similarity.png").is_file());
    // Rank 4 against rank 8: 4 rows of 8, and the Gaussian baseline after them.
    let out = run(
        &r4,
        &r8,
        &[
            "--module",
            "model.layers.1.mlp.up_proj",
            "--side",
            "B",
            "--random",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.starts_with("i,1,2,3,4,5,6,7,8\n"), "{text}");
    assert!(
        text.contains("# the same between Gaussian matrices"),
        "{text}"
    );
    let out = run(&r4, &r8, &["--module", "model.layers.9.self_attn.q_proj"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(
            "no LoRA factor base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"
        ),
        "{}",
        stderr(&out)
    );
}
