//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use runner::backend::DeviceKind;

#[derive(Parser, Debug)]
#[command(
    name = "runner",
    version,
    about = "Run Lua recipes that fine-tune language models (LoRA and friends) and write sweep results to CSV.",
    long_about = None,
    args_conflicts_with_subcommands = true,
    after_help = "Exit codes: 0 all trials ok; 1 some trials failed; 2 usage, recipe or device error;\n\
                  124 stopped by --time-limit; 130 stopped by Ctrl-C.\n\
                  `runner RECIPE.lua` is short for `runner run RECIPE.lua`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a recipe (the default when a recipe path is given directly).
    Run(RunArgs),
    /// Generate text with a pretrained model.
    Generate(GenerateArgs),
    /// List the named models in the local cache.
    Models,
    /// Perplexity of a text file under a pretrained model (sliding window).
    Perplexity(PerplexityArgs),
    /// Show how a model's tokenizer splits a text (ids and tokens), or decode ids.
    Tokenize(TokenizeArgs),
    /// Estimate a run's memory: weights, adapters, gradients, optimizer states, activations.
    Mem(MemArgs),
    /// Print a sweep's results as a pivot table (Markdown or CSV): the paper-table view.
    Table(TableArgs),
    /// Draw a sweep's results (PNG and SVG): loss curves, and a metric against a parameter.
    Plot(PlotArgs),
    /// Subspace similarity φ(i, j) between the same LoRA factor of two saved adapters (the LoRA
    /// paper's Figures 3 and 4), printed as CSV and drawn as a heatmap.
    Similarity(SimilarityArgs),
    /// Write an sbatch job-array script that runs a recipe's trials as shards on Slurm.
    Slurm(SlurmArgs),
    /// Combine a sweep's shard results (`<sweep>/shards/*`) into its trials.csv and steps.csv.
    Merge(MergeArgs),
    /// Serve a live results page over a results folder: trial tables, curves, pivot tables,
    /// updated as sweeps run. Read-only; localhost unless --host says otherwise.
    Serve(ServeArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// The results folder (the one recipes write into with --results); it may not exist yet.
    #[arg(default_value = "results")]
    pub dir: PathBuf,
    /// Port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on. Anything but a loopback address lets other machines read the
    /// results (a warning says so); prefer an SSH tunnel.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
}

#[derive(Args, Debug, Clone)]
pub struct TableArgs {
    /// The sweep's results folder, e.g. results/lora_rank_sweep.
    pub dir: PathBuf,
    /// Column(s) of trials.csv that label the rows (comma-separated).
    #[arg(long, value_delimiter = ',', required = true)]
    pub rows: Vec<String>,
    /// Column whose values become the table's columns.
    #[arg(long)]
    pub cols: Option<String>,
    /// The metric in the cells.
    #[arg(long)]
    pub value: String,
    /// How trials that share a cell (e.g. several seeds) combine: mean, mean_std (mean ± sample
    /// standard deviation), min, max, count, last.
    #[arg(long, default_value = "mean")]
    pub agg: String,
    /// Decimal places of the cells.
    #[arg(long)]
    pub precision: Option<usize>,
    /// Output format: markdown or csv.
    #[arg(long, default_value = "markdown")]
    pub format: String,
}

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// The sweep's results folder, e.g. results/lora_rank_sweep.
    pub dir: PathBuf,
    /// Where the images go (default: DIR/plots).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The parameter on the x axis of the metric plot (default: the first numeric parameter).
    #[arg(long)]
    pub x: Option<String>,
    /// The metric on the y axis (default: eval_loss, else the first metric).
    #[arg(long)]
    pub y: Option<String>,
    /// The parameter that splits the metric plot into lines (default: the other parameters).
    #[arg(long)]
    pub series: Option<String>,
    /// The column of steps.csv the curves show.
    #[arg(long, default_value = "loss")]
    pub step_metric: String,
}

#[derive(Args, Debug, Clone)]
pub struct SimilarityArgs {
    /// Two adapter folders (PEFT's LoRA format), e.g. two ranks or two seeds.
    pub a: PathBuf,
    pub b: PathBuf,
    /// The module, e.g. model.layers.10.self_attn.q_proj.
    #[arg(long)]
    pub module: String,
    /// Which factor: A (its right-singular vectors) or B (its left-singular vectors).
    #[arg(long, default_value = "A")]
    pub side: String,
    /// Keep only φ(i, j) with i, j up to this (the paper shows the top 8 directions of a rank-64 adapter).
    #[arg(long)]
    pub max: Option<usize>,
    /// Where to draw the heatmap (similarity.png and .svg); none drawn without it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also compute φ between Gaussian matrices of the same shapes (Figure 4's baseline).
    #[arg(long)]
    pub random: bool,
}

#[derive(Args, Debug, Clone)]
pub struct SlurmArgs {
    /// The recipe whose trials the array runs.
    #[arg(value_name = "RECIPE.lua")]
    pub recipe: PathBuf,
    /// Number of array tasks (shards); default: the largest sweep's number of trials.
    #[arg(long)]
    pub shards: Option<usize>,
    /// At most this many array tasks run at once (`--array=0-N%K`).
    #[arg(long, value_name = "K")]
    pub array_parallelism: Option<usize>,
    /// Where the script is written (default: RESULTS/.slurm/<recipe>.sbatch; task logs go beside it).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Submit the script with sbatch after writing it.
    #[arg(long)]
    pub submit: bool,
    #[command(flatten)]
    pub common: RecipeArgs,
    /// Options passed to sbatch as #SBATCH lines (after `--`), e.g. -- --partition=gpu --time=2:00:00
    #[arg(last = true, value_name = "SBATCH OPTIONS")]
    pub sbatch: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MergeArgs {
    /// The sweep's results folder, e.g. results/lora_rank_sweep.
    pub dir: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct MemArgs {
    /// A built-in shape (smollm2-135m, llama-3.2-1b, tinyllama-1.1b), a Hugging Face
    /// directory, a config.json or a .gguf file; only the configuration is read.
    pub model: String,

    /// What is trained: lora, full, or none (inference).
    #[arg(long, default_value = "lora")]
    pub method: String,

    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    pub rank: usize,

    /// LoRA targets, comma-separated projection names, or all-linear.
    #[arg(long, default_value = "q_proj,v_proj")]
    pub targets: String,

    /// Storage of the projection weights: fp32, fp16, bf16, int8, int4, fp4 or nf4.
    #[arg(long, default_value = "fp32")]
    pub dtype: String,

    /// Quantization block size.
    #[arg(long, default_value_t = 64)]
    pub block: usize,

    /// Quantize the block constants too (double quantization; on by default for 4-bit types).
    #[arg(long)]
    pub no_double: bool,

    #[arg(long, default_value_t = 4)]
    pub batch: usize,

    #[arg(long, default_value_t = 256)]
    pub seq: usize,

    /// Print one JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TokenizeArgs {
    /// A model name or a path (.gguf file or Hugging Face directory).
    pub model: String,

    /// The text to encode (or, with --decode, space-separated token ids).
    pub text: String,

    /// Wrap the text as a user message in the model's chat template first.
    #[arg(long)]
    pub chat: bool,

    /// Decode ids instead of encoding text.
    #[arg(long)]
    pub decode: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PerplexityArgs {
    /// A model name or a .gguf path.
    pub model: String,

    /// The text file to score.
    #[arg(long)]
    pub file: std::path::PathBuf,

    /// Tokens per window (default: the model's context, at most 1024).
    #[arg(long)]
    pub window: Option<usize>,

    /// How far each window advances (default: the window, i.e. no overlap).
    #[arg(long)]
    pub stride: Option<usize>,

    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,

    /// Compute device: flex, wgpu or cuda.
    #[arg(long, value_name = "DEVICE", default_value = "flex", value_parser = parse_device)]
    pub device: DeviceKind,
}

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    /// A model name (e.g. smollm2-135m-instruct, fetched into the cache if missing) or a .gguf path.
    pub model: String,

    /// The prompt.
    #[arg(long)]
    pub prompt: String,

    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,

    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,

    /// Sampling temperature; 0 is greedy decoding.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f64,

    /// Nucleus sampling: keep the smallest set of tokens whose probability reaches P.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f64,

    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Compute device: flex, wgpu or cuda.
    #[arg(long, value_name = "DEVICE", default_value = "flex", value_parser = parse_device)]
    pub device: DeviceKind,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The recipe to run, e.g. recipes/quickstart.lua.
    #[arg(value_name = "RECIPE.lua")]
    pub recipe: Option<PathBuf>,

    #[command(flatten)]
    pub common: RecipeArgs,

    /// Re-run the recipe whenever it, a module it requires or a file it reads changes;
    /// finished trials whose ids did not change are reused. Ctrl-C stops.
    #[arg(long)]
    pub watch: bool,

    /// Also serve the live results page over the results folder while the recipe runs (and
    /// after, until Ctrl-C): `--serve` listens on 127.0.0.1:8080, `--serve=PORT` or
    /// `--serve=HOST:PORT` elsewhere.
    #[arg(long, value_name = "[HOST:]PORT", num_args = 0..=1, require_equals = true,
          default_missing_value = "8080", value_parser = parse_serve_address)]
    pub serve: Option<(String, u16)>,

    /// Print each sweep's trial table (parameters, trainable parameters, estimated memory)
    /// without training: each trial stops at its first training step.
    #[arg(long)]
    pub dry_run: bool,

    /// Run trials again even when trials.csv has them as ok.
    #[arg(long)]
    pub rerun: bool,

    /// Run only shard I of N (0-based): trials I, I+N, I+2N... into RESULTS/<sweep>/shards/I-of-N.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<(usize, usize)>,

    /// Stop after this long (e.g. 90s, 30m, 2h): the running trial stops at its next step and is
    /// not recorded; the sweep resumes from there next time. Exit code 124.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub time_limit: Option<std::time::Duration>,
}

/// What every way of running a recipe shares (`runner RECIPE`, `runner slurm RECIPE`).
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Set a recipe parameter, read in the recipe as runner.params.KEY. Numbers become numbers,
    /// true/false booleans, anything else a string. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,

    /// Compute device: flex (CPU, default), wgpu (Vulkan/Metal; needs the `wgpu` feature) or
    /// cuda (NVIDIA; needs the `cuda` feature).
    #[arg(long, value_name = "DEVICE", default_value = "flex", value_parser = parse_device)]
    pub device: DeviceKind,

    /// Folder that sweeps write into: RESULTS/<sweep name>/trials.csv and steps.csv.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub results: PathBuf,

    /// Global seed, read in the recipe as runner.seed and the default of every seed option
    /// (model init, LoRA init, data order, dropout). Default 0.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Give the recipe the full Lua standard library (io, os.execute, ...). Without it, recipes
    /// read and write files only through runner's API.
    #[arg(long)]
    pub trust: bool,

    /// Memory the recipe's own Lua values (tables, strings) may use, e.g. 512M or 4G; a recipe
    /// that needs more stops with an error at its line. Model weights and data loaded through
    /// runner's API do not count.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = parse_size)]
    pub lua_memory: u64,
}

/// Parses `4G`, `512M`, `64K` or a number of bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("'{s}' is not a size (e.g. 512M, 4G)");
    let t = s.trim();
    let (num, unit) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&t[..i], t[i..].to_ascii_uppercase()),
        None => (t, String::new()),
    };
    let scale: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return Err(bad()),
    };
    let n: f64 = num.trim().parse().map_err(|_| bad())?;
    let bytes = n * scale as f64;
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(bad());
    }
    Ok(bytes as u64)
}

/// `8080` (on 127.0.0.1) or `HOST:PORT`.
fn parse_serve_address(s: &str) -> Result<(String, u16), String> {
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p),
        None => ("127.0.0.1".to_string(), s),
    };
    let port = port
        .parse()
        .map_err(|_| format!("'{s}' is not a port or HOST:PORT (e.g. 8080, 0.0.0.0:8080)"))?;
    Ok((host, port))
}

fn parse_shard(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("'{s}' is not a shard: expected I/N with 0 <= I < N, e.g. 0/4");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    runner::interrupt::parse_duration(s)
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))?;
    let k = k.trim();
    let ok = !k.is_empty()
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !k.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(format!(
            "'{k}' is not a valid parameter name (letters, digits and '_', not starting with a digit)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse()
}
