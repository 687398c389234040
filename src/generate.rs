//! Text generation with a KV cache: greedy, or temperature + top-p sampling from a seeded RNG.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use rand::Rng;

use crate::model::Llama;
use crate::model::init;
use crate::model::llama::KvCache;

#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 means greedy decoding.
    pub temperature: f64,
    pub top_p: f64,
    /// Sample among the `top_k` most likely tokens only; 0 keeps them all.
    pub top_k: usize,
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
            top_k: 0,
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
    #[error(
        "a prompt of {len} tokens leaves no room under the model's max_position_embeddings ({max})"
    )]
    TooLong { len: usize, max: usize },
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
    let mut out = generate_batch(model, &[prompt.to_vec()], opts, |_, _| false)?;
    Ok(out.pop().unwrap_or_default())
}

/// The new tokens that follow each prompt, generated together with one KV cache: shorter
/// prompts are padded on the left (padding is never attended to, and positions count from
/// each prompt's first token), so at temperature 0 every row gets the tokens it would get
/// alone. Row `i` samples from its own stream (seed + i), so a row's draws do not depend on
/// the other rows. A row ends at a `stop` token (kept) or when `done(i, tokens)` says so
/// (stop strings); finished rows ride along until every row is done.
pub fn generate_batch<B: Backend>(
    model: &Llama<B>,
    prompts: &[Vec<u32>],
    opts: &GenerateOptions,
    mut done: impl FnMut(usize, &[u32]) -> bool,
) -> Result<Vec<Vec<u32>>, GenerateError> {
    let _working = crate::interrupt::working();
    let vocab = model.config.vocab_size;
    for prompt in prompts {
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if let Some(&id) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(GenerateError::TokenOutOfRange { id, vocab });
        }
    }
    if !(opts.temperature >= 0.0 && opts.top_p > 0.0 && opts.top_p <= 1.0) {
        return Err(GenerateError::Sampling {
            temperature: opts.temperature,
            top_p: opts.top_p,
        });
    }
    let rows = prompts.len();
    let mut out = vec![Vec::new(); rows];
    if rows == 0 {
        return Ok(out);
    }
    let model = model.detached();
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let left_pad: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let mut cache = if left_pad.iter().any(|&p| p > 0) {
        KvCache::with_left_padding(&model.config, left_pad.clone())
    } else {
        KvCache::new(&model.config)
    };
    let mut rngs: Vec<_> = (0..rows)
        .map(|i| init::rng_for(opts.seed.wrapping_add(i as u64), "generate"))
        .collect();
    // Padding columns hold token 0; the mask keeps them out of every row's attention.
    let mut input: Vec<i64> = Vec::with_capacity(rows * longest);
    for (prompt, &pad) in prompts.iter().zip(&left_pad) {
        input.extend(std::iter::repeat_n(0, pad));
        input.extend(prompt.iter().map(|&i| i as i64));
    }
    // Positions past the model's table are not generated: the last one ends every row.
    let max = model.config.max_position_embeddings;
    if longest >= max {
        return Err(GenerateError::TooLong { len: longest, max });
    }
    let mut width = longest;
    let mut finished = vec![false; rows];
    for _ in 0..opts.max_new_tokens.min(max - longest) {
        crate::interrupt::check()?;
        let ids =
            Tensor::<B, 2, Int>::from_data(TensorData::new(input, [rows, width]), &model.device);
        let logits = model
            .forward_cached_last(ids, &mut cache)
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .expect("f32 logits");
        input = Vec::with_capacity(rows);
        for (i, row) in logits.chunks(vocab).enumerate() {
            if finished[i] {
                input.push(out[i].last().copied().unwrap_or(0) as i64);
                continue;
            }
            let next = pick(row, opts, &mut rngs[i]);
            out[i].push(next);
            input.push(next as i64);
            finished[i] = opts.stop.contains(&next) || done(i, &out[i]);
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        width = 1;
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
    probs.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal));
    // As transformers' processors: temperature, then top-k, then top-p on what is left.
    if opts.top_k > 0 {
        probs.truncate(opts.top_k);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
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
