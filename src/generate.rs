//! Text generation with a KV cache: greedy, or temperature + top-p sampling from a seeded RNG.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use rand::Rng;

use crate::model::Llama;
use crate::model::init;
use crate::model::llama::KvCache;

#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops after any of these tokens (it is included in the output).
    pub stop: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("temperature must be ≥ 0 and top_p in (0, 1] (got {temperature}, {top_p})")]
    Sampling { temperature: f64, top_p: f64 },
    #[error(transparent)]
    Interrupted(#[from] crate::interrupt::Interrupted),
}

/// The new tokens that follow `prompt`.
pub fn generate<B: Backend>(
    model: &Llama<B>,
    prompt: &[u32],
    opts: &GenerateOptions,
) -> Result<Vec<u32>, GenerateError> {
    if prompt.is_empty() {
        return Err(GenerateError::EmptyPrompt);
    }
    let vocab = model.config.vocab_size;
    if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
        return Err(GenerateError::TokenOutOfRange { id, vocab });
    }
    if !(opts.temperature >= 0.0 && opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(GenerateError::Sampling {
            temperature: opts.temperature,
            top_p: opts.top_p,
        });
    }
    let model = model.detached();
    let mut cache = KvCache::new(&model.config);
    let mut rng = init::rng_for(opts.seed, "generate");
    let mut input: Vec<i64> = prompt.iter().map(|&i| i as i64).collect();
    let mut out = Vec::new();
    for _ in 0..opts.max_new_tokens {
        crate::interrupt::check()?;
        let n = input.len();
        let ids = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, n]), &model.device);
        let logits = model
            .forward_cached(ids, &mut cache)
            .narrow(1, n - 1, 1)
            .reshape([vocab]);
        let logits = logits
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 logits");
        let next = pick(&logits, opts, &mut rng);
        out.push(next);
        if opts.stop.contains(&next) {
            break;
        }
        input = vec![next as i64];
    }
    Ok(out)
}

fn pick(logits: &[f32], opts: &GenerateOptions, rng: &mut init::HostRng) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
                if x > best.1 { (i, x) } else { best }
            })
            .0 as u32
    };
    if opts.temperature == 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &x)| (i, ((x as f64 - max) / opts.temperature).exp()))
        .collect();
    let total: f64 = probs.iter().map(|p| p.1).sum();
    probs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    // Nucleus: the smallest prefix whose mass reaches top_p.
    let mut kept = 0.0;
    let mut cut = probs.len();
    for (i, p) in probs.iter().enumerate() {
        kept += p.1 / total;
        if kept >= opts.top_p {
            cut = i + 1;
            break;
        }
    }
    let probs = &probs[..cut];
    let mass: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.random::<f64>() * mass;
    for p in probs {
        u -= p.1;
        if u <= 0.0 {
            return p.0 as u32;
        }
    }
    probs.last().map_or_else(argmax, |p| p.0 as u32)
}
