//! Incremental decoding with the KV cache gives the logits of a full forward pass; sampling
//! is seeded; perplexity and log-probabilities agree with the training loss.

use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use runner::data::{Batch, ByteTokenizer, Example};
use runner::generate::{GenerateError, GenerateOptions, generate};
use runner::model::llama::KvCache;
use runner::model::{Llama, TinyOptions};
use runner::train::loss::causal_lm_loss;
use runner::train::{perplexity, token_logprobs};

type B = Autodiff<Flex>;

fn tiny() -> Llama<B> {
    let o = TinyOptions {
        seed: 3,
        ..Default::default()
    };
    Llama::random(o.config(), 3, o.std(), &Default::default()).unwrap()
}

fn ids_tensor(ids: &[u32]) -> Tensor<B, 2, Int> {
    Tensor::from_data(
        TensorData::new(
            ids.iter().map(|&i| i as i64).collect::<Vec<_>>(),
            [1, ids.len()],
        ),
        &Default::default(),
    )
}

#[test]
fn kv_cache_matches_full_forward() {
    let model = tiny().detached();
    let ids: Vec<u32> = "cached decoding!".bytes().map(u32::from).collect();
    let full = model
        .forward(ids_tensor(&ids), None)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let mut cache = KvCache::new(&model.config);
    let mut incremental = model
        .forward_cached(ids_tensor(&ids[..6]), &mut cache)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    for i in 6..ids.len() {
        incremental.extend(
            model
                .forward_cached(ids_tensor(&ids[i..i + 1]), &mut cache)
                .into_data()
                .to_vec::<f32>()
                .unwrap(),
        );
    }
    assert_eq!(cache.len, ids.len());
    let max = full
        .iter()
        .zip(&incremental)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(max < 1e-4, "cached and full logits differ by {max}");
}

#[test]
fn greedy_is_deterministic_and_sampling_is_seeded() {
    let model = tiny();
    let prompt: Vec<u32> = "abc".bytes().map(u32::from).collect();
    let greedy = GenerateOptions {
        max_new_tokens: 8,
        ..Default::default()
    };
    let a = generate(&model, &prompt, &greedy).unwrap();
    assert_eq!(a.len(), 8);
    assert_eq!(a, generate(&model, &prompt, &greedy).unwrap());
    // Greedy equals the argmax of a full forward pass at each step.
    let mut seq = prompt.clone();
    for &tok in &a {
        let logits = model
            .detached()
            .forward(ids_tensor(&seq), None)
            .into_data()
            .to_vec::<f32>()
            .unwrap();
        let last = &logits[(seq.len() - 1) * 256..];
        let argmax = last
            .iter()
            .enumerate()
            .max_by(|x, y| x.1.partial_cmp(y.1).unwrap())
            .unwrap()
            .0 as u32;
        assert_eq!(tok, argmax);
        seq.push(tok);
    }
    let sample = |seed| {
        generate(
            &model,
            &prompt,
            &GenerateOptions {
                max_new_tokens: 16,
                temperature: 1.5,
                top_p: 0.95,
                seed,
                ..Default::default()
            },
        )
        .unwrap()
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
    assert_eq!(
        generate(&model, &[], &greedy),
        Err(GenerateError::EmptyPrompt)
    );
    assert!(matches!(
        generate(&model, &[300], &greedy),
        Err(GenerateError::TokenOutOfRange { id: 300, .. })
    ));
}

#[test]
fn perplexity_and_logprobs_agree_with_the_loss() {
    let model = tiny();
    let text = "The quick brown fox jumps over the lazy dog.";
    let ids: Vec<u32> = text.bytes().map(u32::from).collect();
    let batch = Batch::collate(&[&Example::text(text)], 128, &ByteTokenizer).unwrap();
    let input = Tensor::<B, 2, Int>::from_data(
        TensorData::new(batch.input_ids.clone(), [1, batch.seq]),
        &Default::default(),
    );
    let loss =
        causal_lm_loss(model.detached().forward(input, None), &batch.labels).into_scalar() as f64;
    let whole = perplexity(&model, &ids, 1024, 1024).unwrap();
    assert_eq!(whole.tokens, ids.len() - 1);
    assert!((whole.nll - loss).abs() < 1e-5, "{} vs {loss}", whole.nll);
    let lp = token_logprobs(&model, &ids).unwrap();
    let mean = -lp.iter().sum::<f64>() / lp.len() as f64;
    assert!((mean - loss).abs() < 1e-5);
    // With windows, every token is still scored exactly once; more context can only change the value.
    let windowed = perplexity(&model, &ids, 16, 8).unwrap();
    assert_eq!(windowed.tokens, ids.len() - 1);
    let disjoint = perplexity(&model, &ids, 16, 16).unwrap();
    assert_eq!(disjoint.tokens, ids.len() - 1 - (ids.len() - 1) / 16);
}

/// Generation never goes past the model's positions: a prompt that fills them is refused, and
/// a shorter one gets only the positions left.
#[test]
fn generation_stops_at_max_position_embeddings() {
    let o = TinyOptions {
        seed: 3,
        max_seq: 16,
        ..Default::default()
    };
    let model = Llama::<B>::random(o.config(), 3, o.std(), &Default::default()).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 50,
        stop: vec![],
        ..Default::default()
    };
    let out = generate(&model, &[104, 101, 108, 108, 111], &opts).unwrap();
    assert_eq!(out.len(), 11);
    let err = generate(&model, &[7; 16], &opts).unwrap_err();
    assert!(
        matches!(err, GenerateError::TooLong { len: 16, max: 16 }),
        "{err}"
    );
}
