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
    after_help = "Exit codes: 0 all trials ok; 1 some trials failed; 2 usage, recipe or device error.\n\
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
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("expected KEY=VALUE, got '{s}'"))?;
    let k = k.trim();
    let ok = !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !k.starts_with(|c: char| c.is_ascii_digit());
    if !ok {
        return Err(format!("'{k}' is not a valid parameter name (letters, digits and '_', not starting with a digit)"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    s.parse()
}
