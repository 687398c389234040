mod cli;

use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, GenerateArgs, PerplexityArgs, RunArgs, TokenizeArgs};
use runner::backend::{DeviceKind, WithBackend, dispatch};
use runner::interrupt::Interrupted;
use runner::lua::{
    RecipeFailure, RecipeOptions, RecipeReport, SweepMode, SweepSettings, SweepSummary, run_recipe,
};

/// Exit codes: 0 all good, 1 some trials failed, 2 usage, recipe or device error, 124 the
/// time limit stopped the run, 130 Ctrl-C stopped it.
const EXIT_TRIALS_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_TIME_LIMIT: u8 = 124;
const EXIT_CTRL_C: u8 = 130;

struct RunRecipe(RecipeOptions);

impl WithBackend for RunRecipe {
    type Output = Result<RecipeReport, RecipeFailure>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        run_recipe::<B>(&self.0, device)
    }
}

struct Generate(GenerateArgs);

impl WithBackend for Generate {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        use anyhow::Context;
        let a = self.0;
        let p = runner::pretrained::load::<B>(&a.model, &device)
            .with_context(|| format!("loading {}", a.model))?;
        let tokenizer = p
            .tokenizer
            .as_ref()
            .with_context(|| format!("{} has no tokenizer (tokenizer.json)", p.source))?;
        let text = if a.chat {
            tokenizer.apply_chat_template(&[("user".into(), a.prompt.clone())], true)?
        } else {
            a.prompt.clone()
        };
        let prompt = tokenizer.encode(&text)?;
        let opts = runner::generate::GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            stop: tokenizer.eos.into_iter().collect(),
            ..Default::default()
        };
        let ids = runner::generate::generate(&p.model, &prompt, &opts)?;
        Ok(tokenizer.decode(&ids, true)?)
    }
}

struct Perplexity(PerplexityArgs);

impl WithBackend for Perplexity {
    type Output = anyhow::Result<String>;
    fn run<B: AutodiffBackend>(self, device: B::Device, _kind: DeviceKind) -> Self::Output {
        use anyhow::Context;
        let a = self.0;
        let text = std::fs::read_to_string(&a.file)
            .with_context(|| format!("reading {}", a.file.display()))?;
        let p = runner::pretrained::load::<B>(&a.model, &device)
            .with_context(|| format!("loading {}", a.model))?;
        let tokenizer = p
            .tokenizer
            .as_ref()
            .with_context(|| format!("{} has no tokenizer (tokenizer.json)", p.source))?;
        let ids = tokenizer.encode(&text)?;
        let window = a
            .window
            .unwrap_or(p.model.config.max_position_embeddings.min(1024));
        let stride = a.stride.unwrap_or(window);
        let r = runner::train::perplexity(&p.model, &ids, window, stride)
            .with_context(|| format!("scoring {}", a.file.display()))?;
        Ok(if a.json {
            serde_json::json!({"model": p.source, "file": a.file, "perplexity": r.perplexity, "nll": r.nll, "tokens": r.tokens, "window": window, "stride": stride}).to_string()
        } else {
            format!(
                "perplexity {:.4} (mean NLL {:.4} nats over {} tokens; window {window}, stride {stride})",
                r.perplexity, r.nll, r.tokens
            )
        })
    }
}

/// Tokenizing needs no tensors: the tokenizer alone is read.
fn tokenize(a: &TokenizeArgs) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = runner::hub::resolve(&a.model)?;
    let tok = if path.is_dir() {
        runner::data::tokenizer::TextTokenizer::from_hf_dir(&path)?
    } else {
        let file = runner::model::load::GgufFile::open(&path)?;
        runner::data::tokenizer::TextTokenizer::from_gguf(&file)?
    };
    if a.decode {
        let ids: Vec<u32> = a
            .text
            .split_whitespace()
            .map(|s| {
                s.parse::<u32>()
                    .with_context(|| format!("'{s}' is not a token id"))
            })
            .collect::<Result<_, _>>()?;
        return Ok(tok.decode(&ids, false)?);
    }
    let text = if a.chat {
        tok.apply_chat_template(&[("user".into(), a.text.clone())], true)?
    } else {
        a.text.clone()
    };
    let ids = tok.encode(&text)?;
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| format!("{i}\t{:?}", tok.decode(&[i], false).unwrap_or_default()))
        .collect();
    Ok(format!("{} tokens\n{}", ids.len(), pieces.join("\n")))
}

/// `runner mem`: the memory estimate of a run, from the model's shape.
fn mem(a: &cli::MemArgs) -> anyhow::Result<String> {
    use runner::footprint::{RunShape, Training, WeightStorage, estimate, model_shape, report};
    let (name, config) = model_shape(&a.model)?;
    let targets: Vec<String> = a.targets.split(',').map(|t| t.trim().to_string()).collect();
    let method = if a.method == "qlora" {
        "lora"
    } else {
        a.method.as_str()
    };
    let training = Training::parse(method, a.rank, &targets).map_err(anyhow::Error::msg)?;
    let dtype = if a.method == "qlora" && a.dtype == "fp32" {
        "nf4"
    } else {
        a.dtype.as_str()
    };
    let precision = WeightStorage::parse(dtype, a.block, !a.no_double)?;
    let run = RunShape {
        config,
        training,
        precision,
        batch: a.batch,
        seq: a.seq,
    };
    run.validate()?;
    if a.json {
        let f = estimate(&run);
        return Ok(
            serde_json::json!({"model": name, "run": run, "estimate": f, "total": f.total()})
                .to_string(),
        );
    }
    Ok(report(&name, &run))
}

/// Prints a subcommand's text, or its error (exit code 2).
fn print_text(result: anyhow::Result<String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Runs a subcommand that prints one result.
fn print_result<W: WithBackend<Output = anyhow::Result<String>>>(
    device: DeviceKind,
    work: W,
) -> ExitCode {
    match dispatch(device, work) {
        Ok(Ok(text)) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Ok(Err(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn main() -> ExitCode {
    // Output piped into `head` ends runner quietly, as it ends `cat`, instead of a panic in
    // println! (Rust ignores SIGPIPE by default).
    // SAFETY: setting a signal's disposition before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    runner::memory::tune_allocator();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        Some(Command::Generate(args)) => return print_result(args.device, Generate(args)),
        Some(Command::Perplexity(args)) => return print_result(args.device, Perplexity(args)),
        Some(Command::Tokenize(args)) => return print_text(tokenize(&args)),
        Some(Command::Mem(args)) => return print_text(mem(&args)),
        Some(Command::Table(args)) => return print_text(table(&args)),
        Some(Command::Plot(args)) => return print_text(plot(&args)),
        Some(Command::Similarity(args)) => return print_text(similarity(&args)),
        Some(Command::Slurm(args)) => return print_text(slurm(&args)),
        Some(Command::Merge(args)) => return print_text(merge(&args)),
        Some(Command::Serve(args)) => return serve(&args),
        Some(Command::Models) => {
            let models = runner::hub::cached_models();
            println!("cache: {}", runner::hub::cache_dir().display());
            for (name, path, bytes) in &models {
                println!("{name}\t{:.1} MB\t{}", *bytes as f64 / 1e6, path.display());
            }
            if models.is_empty() {
                println!(
                    "(no cached models; known: {})",
                    runner::hub::KNOWN_MODELS
                        .iter()
                        .map(|m| m.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            let hf_root = runner::hf_cache::root();
            let hf = runner::hf_cache::cached_models(&hf_root);
            println!("Hugging Face cache: {}", hf_root.display());
            for (id, path) in &hf {
                println!("{id}	{}", path.display());
            }
            if hf.is_empty() {
                println!("(no models)");
            }
            return ExitCode::SUCCESS;
        }
        None => cli.run,
    };
    run(args)
}

fn recipe_options(
    recipe: std::path::PathBuf,
    common: &cli::RecipeArgs,
    sweeps: SweepSettings,
) -> RecipeOptions {
    RecipeOptions {
        path: recipe,
        params: common.set.clone(),
        seed: common.seed,
        results_dir: common.results.clone(),
        device: common.device,
        trust: common.trust,
        lua_memory: common.lua_memory,
        sweeps,
    }
}

fn run(args: RunArgs) -> ExitCode {
    let Some(recipe) = args.recipe.clone() else {
        let _ = Cli::command().print_help();
        eprintln!("\nerror: no recipe given (try `runner recipes/quickstart.lua`)");
        return ExitCode::from(EXIT_USAGE);
    };
    if let Err(e) = std::fs::metadata(&recipe) {
        eprintln!("error: cannot read recipe {}: {e}", recipe.display());
        return ExitCode::from(EXIT_USAGE);
    }
    runner::interrupt::install_ctrl_c();
    runner::interrupt::start_watchdog();
    if let Some(limit) = args.time_limit {
        runner::interrupt::set_time_limit(limit);
    }
    let mode = if args.dry_run {
        SweepMode::DryRun
    } else {
        SweepMode::Run
    };
    let opts = recipe_options(
        recipe,
        &args.common,
        SweepSettings {
            mode,
            shard: args.shard,
            rerun: args.rerun,
        },
    );
    let serving = match &args.serve {
        Some((host, port)) => match start_server(&opts.results_dir, host, *port) {
            Ok(url) => Some(url),
            Err(code) => return code,
        },
        None => None,
    };
    if args.watch {
        return watch(opts);
    }
    let (code, _, _) = run_once(&opts);
    if let Some(url) = serving {
        let stop = runner::interrupt::ctrl_c_flag();
        if !stop.load(std::sync::atomic::Ordering::SeqCst) {
            eprintln!("run finished; still serving the results at {url} (Ctrl-C stops)");
        }
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    code
}

/// `--serve`: the results page on a thread of its own for as long as the process runs.
fn start_server(dir: &std::path::Path, host: &str, port: u16) -> Result<String, ExitCode> {
    let server = runner::serve::Server::bind(dir, host, port).map_err(|e| {
        eprintln!("error: {e:#}");
        ExitCode::from(EXIT_USAGE)
    })?;
    let url = server.url();
    eprintln!("serving the results in {} at {url}", dir.display());
    std::thread::Builder::new()
        .name("serve".into())
        .spawn(move || {
            if let Err(e) = server.run(runner::interrupt::ctrl_c_flag()) {
                eprintln!("error: the results page stopped: {e:#}");
            }
        })
        .expect("starting a thread");
    Ok(url)
}

/// `runner serve`: the live results page until Ctrl-C.
fn serve(a: &cli::ServeArgs) -> ExitCode {
    runner::interrupt::install_ctrl_c();
    let server = match runner::serve::Server::bind(&a.dir, &a.host, a.port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if !a.dir.is_dir() {
        eprintln!(
            "note: {} does not exist yet; sweeps appear on the page as they start",
            a.dir.display()
        );
    }
    println!(
        "serving the results in {} at {} (Ctrl-C stops)",
        a.dir.display(),
        server.url()
    );
    match server.run(runner::interrupt::ctrl_c_flag()) {
        Ok(()) => {
            eprintln!("serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the recipe once; returns the exit code and what `--watch` needs (the files it read,
/// and its results when it succeeded).
fn run_once(opts: &RecipeOptions) -> (ExitCode, Option<RecipeReport>, Vec<std::path::PathBuf>) {
    match dispatch(opts.device, RunRecipe(opts.clone())) {
        Err(e) => {
            eprintln!("error: {e}");
            (ExitCode::from(EXIT_USAGE), None, vec![opts.path.clone()])
        }
        Ok(Err(failure)) => {
            let code = match failure.interrupted {
                Some(Interrupted::CtrlC) => EXIT_CTRL_C,
                Some(Interrupted::TimeLimit) => EXIT_TIME_LIMIT,
                None => EXIT_USAGE,
            };
            if failure.interrupted.is_some() {
                eprintln!(
                    "stopped: {}; finished trials are saved and a new run resumes after them",
                    failure.message
                );
            } else {
                eprintln!("error: {failure}");
            }
            let files = failure.files.clone();
            (ExitCode::from(code), None, files)
        }
        Ok(Ok(report)) => {
            if report.trials_reused > 0 {
                eprintln!(
                    "{} trial(s) reused from earlier runs (--rerun runs them again)",
                    report.trials_reused
                );
            }
            let code = if report.trials_failed > 0 {
                eprintln!(
                    "{} of {} trial(s) failed",
                    report.trials_failed, report.trials_run
                );
                ExitCode::from(EXIT_TRIALS_FAILED)
            } else {
                ExitCode::SUCCESS
            };
            let files = report.files.clone();
            (code, Some(report), files)
        }
    }
}

/// A compact table of each sweep's trials, the view `--watch` keeps on screen.
fn print_summaries(summaries: &[SweepSummary]) {
    for s in summaries {
        let ok = s
            .rows
            .iter()
            .filter(|r| r.status == runner::sweep::TrialStatus::Ok)
            .count();
        println!(
            "sweep '{}': {ok}/{} ok ({})",
            s.name,
            s.rows.len(),
            s.dir.join("trials.csv").display()
        );
        for r in &s.rows {
            let cells: Vec<String> = r
                .params
                .iter()
                .chain(r.metrics.iter())
                .map(|(k, v)| match v {
                    runner::sweep::Value::Num(x) => format!("{k}={x:.4}"),
                    other => format!("{k}={other}"),
                })
                .collect();
            println!(
                "  {} {:<9} {}",
                r.trial_id,
                r.status.as_str(),
                cells.join(" ")
            );
        }
    }
}

/// `--watch`: run, then wait for a change to any file the recipe read, and run again.
fn watch(opts: RecipeOptions) -> ExitCode {
    use std::sync::atomic::Ordering;
    let stop = runner::interrupt::ctrl_c_flag();
    let mut watcher = match runner::watch::FileWatcher::new() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: cannot watch files: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Watch the recipe before the first run, so an edit made while it runs is not missed.
    if let Err(e) = watcher.watch_files(std::slice::from_ref(&opts.path)) {
        eprintln!("error: {e:#}");
        return ExitCode::from(EXIT_USAGE);
    }
    let mut last_good: Option<Vec<SweepSummary>> = None;
    loop {
        let (_, report, files) = run_once(&opts);
        if stop.load(Ordering::SeqCst) {
            eprintln!("watch: stopped");
            return ExitCode::from(EXIT_CTRL_C);
        }
        match report {
            Some(report) => {
                print_summaries(&report.summaries);
                last_good = Some(report.summaries);
            }
            None => {
                if let Some(good) = &last_good {
                    println!("last good results (kept on disk):");
                    print_summaries(good);
                }
            }
        }
        if let Err(e) = watcher.watch_files(&files) {
            eprintln!("error: {e:#}");
            return ExitCode::from(EXIT_USAGE);
        }
        eprintln!(
            "watch: waiting for changes to {} file(s) (Ctrl-C stops)",
            files.len()
        );
        match watcher.wait_for_change(std::time::Duration::from_millis(300), stop) {
            Ok(Some(changed)) => {
                let names: Vec<String> = changed.iter().map(|p| p.display().to_string()).collect();
                eprintln!("watch: {} changed; running again", names.join(", "));
            }
            Ok(None) => {
                eprintln!("watch: stopped");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                eprintln!("error: watching files: {e:#}");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
}

/// `runner slurm`: count the trials (the recipe runs without calling them), then write the
/// array script.
fn slurm(a: &cli::SlurmArgs) -> anyhow::Result<String> {
    use anyhow::Context;
    let c = &a.common;
    let opts = recipe_options(
        a.recipe.clone(),
        c,
        SweepSettings {
            mode: SweepMode::Count,
            ..Default::default()
        },
    );
    let report = dispatch(c.device, RunRecipe(opts))?.map_err(|f| anyhow::anyhow!("{f}"))?;
    let largest = report
        .sweep_sizes
        .iter()
        .map(|(_, n)| *n)
        .max()
        .unwrap_or(0);
    let tasks = a.shards.unwrap_or(largest);
    let cwd = std::env::current_dir().context("the current folder")?;
    let results = cwd.join(&c.results);
    let stem = a
        .recipe
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "recipe".into());
    let mut args = vec![
        a.recipe.display().to_string(),
        "--results".into(),
        c.results.display().to_string(),
        "--device".into(),
        c.device.to_string(),
    ];
    for (k, v) in &c.set {
        args.extend(["--set".to_string(), format!("{k}={v}")]);
    }
    if let Some(seed) = c.seed {
        args.extend(["--seed".to_string(), seed.to_string()]);
    }
    if c.trust {
        args.push("--trust".into());
    }
    let job = runner::slurm::ArrayJob {
        name: format!("runner-{stem}"),
        tasks,
        parallelism: a.array_parallelism,
        workdir: cwd.clone(),
        exe: std::env::current_exe().context("locating the runner binary")?,
        args,
        log_dir: results.join(".slurm"),
        sbatch_options: a.sbatch.clone(),
    };
    job.validate().map_err(anyhow::Error::msg)?;
    let path = a
        .output
        .clone()
        .unwrap_or_else(|| c.results.join(".slurm").join(format!("{stem}.sbatch")));
    std::fs::create_dir_all(&job.log_dir)
        .with_context(|| format!("creating {}", job.log_dir.display()))?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    runner::model::save::write_atomic(&path, job.script().as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    let mut out = format!("wrote {} ({tasks} array task(s)", path.display());
    for (name, n) in &report.sweep_sizes {
        out.push_str(&format!("; sweep '{name}': {n} trial(s)"));
    }
    out.push(')');
    if a.submit {
        let o = std::process::Command::new("sbatch")
            .arg(&path)
            .output()
            .context("running sbatch (is Slurm installed?)")?;
        anyhow::ensure!(
            o.status.success(),
            "sbatch failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
        out.push_str(&format!("\n{}", String::from_utf8_lossy(&o.stdout).trim()));
    } else {
        out.push_str(&format!("\nsubmit it with: sbatch {}", path.display()));
    }
    for (name, _) in &report.sweep_sizes {
        out.push_str(&format!(
            "\nwhen it has finished: runner merge {}",
            c.results.join(name).display()
        ));
    }
    Ok(out)
}

fn merge(a: &cli::MergeArgs) -> anyhow::Result<String> {
    let r = runner::sweep::merge::merge(&a.dir)?;
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
    Ok(format!(
        "merged {} shard(s) into {}: {} trial(s) ({} row(s) taken, {} kept because the sweep already had them ok)",
        r.shards.len(),
        a.dir.join("trials.csv").display(),
        r.trials,
        r.taken,
        r.kept
    ))
}

fn table(a: &cli::TableArgs) -> anyhow::Result<String> {
    use runner::report::table::{PivotSpec, pivot};
    let results = runner::report::SweepResults::load(&a.dir)?;
    let spec = PivotSpec {
        rows: a.rows.clone(),
        cols: a.cols.clone(),
        value: a.value.clone(),
        agg: a.agg.parse()?,
        precision: a.precision,
        include_failed: false,
    };
    let p = pivot(&results, &spec)?;
    match a.format.as_str() {
        "markdown" | "md" => Ok(p.to_markdown().trim_end().to_string()),
        "csv" => Ok(p.to_csv().trim_end().to_string()),
        other => anyhow::bail!("unknown format '{other}' (markdown or csv)"),
    }
}

fn similarity(a: &cli::SimilarityArgs) -> anyhow::Result<String> {
    use runner::analysis::subspace::{Side, adapter_similarity};
    use runner::report::heatmap::{Heatmap, write_heatmap};
    let side = Side::parse(&a.side)
        .ok_or_else(|| anyhow::anyhow!("--side must be A or B (got {})", a.side))?;
    let s =
        adapter_similarity(&a.a, &a.b, &a.module, side, a.random).map_err(anyhow::Error::msg)?;
    let cut = |m: Vec<Vec<f64>>| -> Vec<Vec<f64>> {
        let n = a.max.unwrap_or(usize::MAX);
        m.into_iter()
            .take(n)
            .map(|row| row.into_iter().take(n).collect())
            .collect()
    };
    let phi = cut(s.phi);
    let random = s.random.map(cut);
    let csv = |m: &[Vec<f64>]| {
        let cols = m.first().map_or(0, Vec::len);
        let mut out = format!(
            "i,{}\n",
            (1..=cols)
                .map(|j| j.to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        for (i, row) in m.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|v| format!("{v:.6}")).collect();
            out.push_str(&format!("{},{}\n", i + 1, cells.join(",")));
        }
        out
    };
    let mut text = csv(&phi);
    if let Some(r) = &random {
        text.push_str("\n# the same between Gaussian matrices of these shapes\n");
        text.push_str(&csv(r));
    }
    if let Some(out) = &a.out {
        // The last two parts of the path: a trial's `<id>/adapter` says which trial.
        let name = |p: &std::path::Path| {
            let parts: Vec<String> = p
                .components()
                .rev()
                .take(2)
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            parts.into_iter().rev().collect::<Vec<_>>().join("/")
        };
        let mut maps = vec![(
            "similarity",
            phi,
            format!("{} vs {}", name(&a.a), name(&a.b)),
        )];
        if let Some(r) = random {
            maps.push((
                "similarity_random",
                r,
                "Gaussian matrices of the same shapes".into(),
            ));
        }
        for (stem, values, what) in maps {
            let map = Heatmap {
                title: format!("φ(i, j), {} of {}: {what}", a.side.to_uppercase(), a.module),
                values,
                row_label: format!("i (directions of {})", name(&a.a)),
                col_label: format!("j (directions of {})", name(&a.b)),
            };
            for f in write_heatmap(&map, out, stem)? {
                text.push_str(&format!("wrote {}\n", f.display()));
            }
        }
    }
    Ok(text.trim_end().to_string())
}

fn plot(a: &cli::PlotArgs) -> anyhow::Result<String> {
    use runner::report::plot::{PlotOptions, plot_sweep};
    let results = runner::report::SweepResults::load(&a.dir)?;
    let out = a.out.clone().unwrap_or_else(|| a.dir.join("plots"));
    let opts = PlotOptions {
        x: a.x.clone(),
        y: a.y.clone(),
        series: a.series.clone(),
        step_metric: a.step_metric.clone(),
        include_failed: false,
    };
    let files = plot_sweep(&results, &out, &opts)?;
    anyhow::ensure!(
        !files.is_empty(),
        "nothing to plot in {}: no logged '{}' in steps.csv and no numeric metric in trials.csv",
        a.dir.display(),
        a.step_metric
    );
    Ok(files
        .iter()
        .map(|f| format!("wrote {}", f.display()))
        .collect::<Vec<_>>()
        .join("\n"))
}
