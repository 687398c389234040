mod cli;

use std::process::ExitCode;

use burn::tensor::backend::AutodiffBackend;
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, GenerateArgs, PerplexityArgs, TokenizeArgs};
use runner::backend::{dispatch, DeviceKind, WithBackend};
use runner::lua::{run_recipe, RecipeFailure, RecipeOptions, RecipeReport};

/// Exit codes: 0 all good, 1 some trials failed, 2 usage, recipe or device error.
const EXIT_TRIALS_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

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
        let p = runner::pretrained::load::<B>(&a.model, &device).with_context(|| format!("loading {}", a.model))?;
        let tokenizer = p.tokenizer.as_ref().with_context(|| format!("{} has no tokenizer (tokenizer.json)", p.source))?;
        let text = if a.chat { tokenizer.apply_chat_template(&[("user".into(), a.prompt.clone())], true)? } else { a.prompt.clone() };
        let prompt = tokenizer.encode(&text)?;
        let opts = runner::generate::GenerateOptions {
            max_new_tokens: a.max_new_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
            seed: a.seed,
            stop: tokenizer.eos.into_iter().collect(),
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
        let text = std::fs::read_to_string(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
        let p = runner::pretrained::load::<B>(&a.model, &device).with_context(|| format!("loading {}", a.model))?;
        let tokenizer = p.tokenizer.as_ref().with_context(|| format!("{} has no tokenizer (tokenizer.json)", p.source))?;
        let ids = tokenizer.encode(&text)?;
        let window = a.window.unwrap_or(p.model.config.max_position_embeddings.min(1024));
        let stride = a.stride.unwrap_or(window);
        let r = runner::train::perplexity(&p.model, &ids, window, stride).with_context(|| format!("scoring {}", a.file.display()))?;
        Ok(if a.json {
            serde_json::json!({"model": p.source, "file": a.file, "perplexity": r.perplexity, "nll": r.nll, "tokens": r.tokens, "window": window, "stride": stride}).to_string()
        } else {
            format!("perplexity {:.4} (mean NLL {:.4} nats over {} tokens; window {window}, stride {stride})", r.perplexity, r.nll, r.tokens)
        })
    }
}

/// Tokenizing needs no tensors: the tokenizer alone is read.
fn tokenize(a: &TokenizeArgs) -> anyhow::Result<String> {
    use anyhow::Context;
    let path = runner::hub::resolve(&a.model)?;
    let tok = if path.is_dir() {
        runner::tokenizer::TextTokenizer::from_hf_dir(&path)?
    } else {
        let file = runner::model::load::GgufFile::open(&path)?;
        runner::tokenizer::TextTokenizer::from_gguf(&file)?
    };
    if a.decode {
        let ids: Vec<u32> = a.text.split_whitespace().map(|s| s.parse::<u32>().with_context(|| format!("'{s}' is not a token id"))).collect::<Result<_, _>>()?;
        return Ok(tok.decode(&ids, false)?);
    }
    let text = if a.chat { tok.apply_chat_template(&[("user".into(), a.text.clone())], true)? } else { a.text.clone() };
    let ids = tok.encode(&text)?;
    let pieces: Vec<String> = ids.iter().map(|&i| format!("{i}\t{:?}", tok.decode(&[i], false).unwrap_or_default())).collect();
    Ok(format!("{} tokens\n{}", ids.len(), pieces.join("\n")))
}

/// `runner mem`: the memory estimate of a run, from the model's shape.
fn mem(a: &cli::MemArgs) -> anyhow::Result<String> {
    use runner::footprint::{estimate, model_shape, report, Precision, RunShape, Training};
    let (name, config) = model_shape(&a.model)?;
    let targets: Vec<String> = a.targets.split(',').map(|t| t.trim().to_string()).collect();
    let method = if a.method == "qlora" { "lora" } else { a.method.as_str() };
    let training = Training::parse(method, a.rank, &targets).map_err(anyhow::Error::msg)?;
    let dtype = if a.method == "qlora" && a.dtype == "fp32" { "nf4" } else { a.dtype.as_str() };
    let precision = Precision::parse(dtype, a.block, !a.no_double)?;
    let run = RunShape { config, training, precision, batch: a.batch, seq: a.seq };
    run.validate()?;
    if a.json {
        let f = estimate(&run);
        return Ok(serde_json::json!({"model": name, "run": run, "estimate": f, "total": f.total()}).to_string());
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
fn print_result<W: WithBackend<Output = anyhow::Result<String>>>(device: DeviceKind, work: W) -> ExitCode {
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
    runner::memory::tune_allocator();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => args,
        Some(Command::Generate(args)) => return print_result(args.device, Generate(args)),
        Some(Command::Perplexity(args)) => return print_result(args.device, Perplexity(args)),
        Some(Command::Tokenize(args)) => return print_text(tokenize(&args)),
        Some(Command::Mem(args)) => return print_text(mem(&args)),
        Some(Command::Models) => {
            let models = runner::hub::cached_models();
            println!("cache: {}", runner::hub::cache_dir().display());
            for (name, path, bytes) in &models {
                println!("{name}\t{:.1} MB\t{}", *bytes as f64 / 1e6, path.display());
            }
            if models.is_empty() {
                println!("(no cached models; known: {})", runner::hub::KNOWN_MODELS.iter().map(|m| m.name).collect::<Vec<_>>().join(", "));
            }
            return ExitCode::SUCCESS;
        }
        None => cli.run,
    };
    let Some(recipe) = args.recipe.clone() else {
        let _ = Cli::command().print_help();
        eprintln!("\nerror: no recipe given (try `runner recipes/quickstart.lua`)");
        return ExitCode::from(EXIT_USAGE);
    };
    if let Err(e) = std::fs::metadata(&recipe) {
        eprintln!("error: cannot read recipe {}: {e}", recipe.display());
        return ExitCode::from(EXIT_USAGE);
    }
    let opts = RecipeOptions { path: recipe, params: args.set, seed: args.seed, results_dir: args.results, device: args.device };
    match dispatch(args.device, RunRecipe(opts)) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Err(failure)) => {
            eprintln!("error: {failure}");
            ExitCode::from(EXIT_USAGE)
        }
        Ok(Ok(report)) if report.trials_failed > 0 => {
            eprintln!("{} of {} trial(s) failed", report.trials_failed, report.trials_run);
            ExitCode::from(EXIT_TRIALS_FAILED)
        }
        Ok(Ok(_)) => ExitCode::SUCCESS,
    }
}
