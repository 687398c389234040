//! The `tokenizers` specification of a GGUF file's tokenizer (`tokenizer.ggml.*`), built as
//! transformers' GGUF loader builds it: byte-level BPE for `gpt2` vocabularies (with the split
//! pattern `tokenizer.ggml.pre` names), and for SentencePiece (`llama`) vocabularies a BPE with
//! byte fallback whose merges are recovered from the vocabulary, with the pipeline of
//! transformers' Llama tokenizer, or of its Gemma or Phi-3 variants for those architectures.

use serde_json::{Value, json};

use crate::model::load::gguf::GgufFile;

/// GGUF token types: 2 unknown, 3 control, 4 user-defined.
const UNKNOWN: u64 = 2;
const CONTROL: u64 = 3;
const USER_DEFINED: u64 = 4;

/// The split pattern of a `gpt2` vocabulary's `tokenizer.ggml.pre`, for the pre-tokenizers
/// whose pattern is not GPT-2's (the byte-level default): Llama 3's (digits three at a time)
/// and Qwen2's (one at a time), under the names llama.cpp writes, as transformers maps them.
fn split_pattern(pre: &str) -> Option<&'static str> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2),
        _ => None,
    }
}

/// The file's tokenizer as a `tokenizers` JSON specification, or a message saying why not.
pub(crate) fn spec(f: &GgufFile) -> Result<Value, String> {
    let strings = |key: &str| -> Result<Vec<String>, String> {
        let arr = f
            .meta(key)
            .and_then(|v| v.as_array())
            .ok_or_else(|| format!("missing {key}"))?;
        arr.iter()
            .map(|v| {
                v.as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("{key} holds a non-string"))
            })
            .collect()
    };
    let model = f
        .meta("tokenizer.ggml.model")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    let tokens = strings("tokenizer.ggml.tokens")?;
    let types: Vec<u64> = match f
        .meta("tokenizer.ggml.token_type")
        .and_then(|v| v.as_array())
    {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    match model {
        "gpt2" => {
            // llama.cpp's writer omits an empty merge list.
            let merges = match f.meta("tokenizer.ggml.merges") {
                Some(_) => strings("tokenizer.ggml.merges")?,
                None => Vec::new(),
            };
            Ok(byte_level(f, &tokens, &types, merges))
        }
        "llama" => {
            let scores: Vec<f64> = match f.meta("tokenizer.ggml.scores").and_then(|v| v.as_array())
            {
                Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
                None => vec![0.0; tokens.len()],
            };
            let arch = f
                .meta("general.architecture")
                .and_then(|v| v.as_str())
                .unwrap_or("");
            Ok(sentencepiece(f, arch, tokens, &types, &scores))
        }
        other => Err(format!(
            "tokenizer.ggml.model '{other}' is not supported (supported: gpt2 byte-level BPE, llama SentencePiece)"
        )),
    }
}

/// Byte-level BPE: the ByteLevel pre-tokenizer (GPT-2's pattern, or the one `tokenizer.ggml.pre`
/// names) and decoder, no normalizer, control and user-defined tokens as special added tokens.
fn byte_level(f: &GgufFile, tokens: &[String], types: &[u64], merges: Vec<String>) -> Value {
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&CONTROL) | Some(&USER_DEFINED)))
        .map(|(i, t)| added_token(i, t, true))
        .collect();
    let pre = f.meta("tokenizer.ggml.pre").and_then(|v| v.as_str());
    let pre_tokenizer = match pre.and_then(split_pattern) {
        Some(pattern) => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
        ]}),
        None => {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true})
        }
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        }
    })
}

fn added_token(id: usize, content: &str, special: bool) -> Value {
    json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": special})
}

/// A SentencePiece vocabulary as BPE with byte fallback. GGUF stores no merges for it, so they
/// are recovered from the vocabulary: every split of a token into two tokens, best first by
/// the token's score (Gemma: by its position, since its scores do not follow its merge
/// order). Llama's pipeline puts a `▁` before the text (`tokenizer.ggml.add_space_prefix`,
/// default on) and turns spaces into `▁` in its Metaspace pre-tokenizer; Phi-3's does both
/// in its normalizer; Gemma's replaces spaces only, and stores runs of spaces as spaces.
fn sentencepiece(
    f: &GgufFile,
    arch: &str,
    mut tokens: Vec<String>,
    types: &[u64],
    scores: &[f64],
) -> Value {
    let gemma = matches!(arch, "gemma" | "gemma2" | "gemma3");
    if gemma {
        for t in &mut tokens {
            if t.contains(' ') && t.trim().is_empty() {
                *t = "\u{2581}".repeat(t.chars().count());
            }
        }
    }
    let mut vocab: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t, i);
    }
    // Score per token, in first-appearance order with the last value (a Python dict built
    // from the list).
    let mut order: Vec<&str> = Vec::new();
    let mut score_of: std::collections::HashMap<&str, f64> = std::collections::HashMap::new();
    for (i, t) in tokens.iter().enumerate() {
        let s = if gemma {
            -(i as f64)
        } else {
            scores.get(i).copied().unwrap_or(0.0)
        };
        if score_of.insert(t, s).is_none() {
            order.push(t);
        }
    }
    let merges = recover_merges(&order, &score_of, &vocab);
    let unk = tokens
        .iter()
        .zip(types)
        .find(|(_, t)| **t == UNKNOWN)
        .map(|(s, _)| s.clone())
        .unwrap_or_else(|| "<unk>".into());
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match types.get(i) {
            Some(&CONTROL) => added.push(added_token(i, t, true)),
            Some(&USER_DEFINED) => added.push(added_token(i, t, false)),
            _ => {}
        }
    }
    let vocab_json: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let prefix = f
        .meta("tokenizer.ggml.add_space_prefix")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let replace_space =
        json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
    let mut decoder = vec![
        json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    let (normalizer, pre_tokenizer) = if gemma {
        (
            replace_space,
            json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
        )
    } else {
        if prefix {
            decoder.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
        }
        if arch == "phi3" {
            (
                json!({"type": "Sequence", "normalizers": [
                    {"type": "Prepend", "prepend": "\u{2581}"}, replace_space]}),
                Value::Null,
            )
        } else {
            let scheme = if prefix { "first" } else { "never" };
            (
                Value::Null,
                json!({"type": "Metaspace", "replacement": "\u{2581}", "prepend_scheme": scheme, "split": false}),
            )
        }
    };
    json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoder},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_json, "merges": merges,
        }
    })
}

/// Every split of a token into two vocabulary tokens, ordered best first by the whole token's
/// score, then by the pieces' lengths (longer first); a token's own splits by the pieces' ids.
/// transformers' `generate_merges`, whose order decides which merges BPE applies first.
fn recover_merges(
    order: &[&str],
    score_of: &std::collections::HashMap<&str, f64>,
    vocab: &std::collections::HashMap<&str, usize>,
) -> Vec<[String; 2]> {
    let mut merges: Vec<(&str, &str, f64)> = Vec::new();
    for &token in order {
        let score = score_of[token];
        let mut local: Vec<(&str, &str, f64)> = token
            .char_indices()
            .skip(1)
            .map(|(at, _)| token.split_at(at))
            .filter(|(l, r)| vocab.contains_key(l) && vocab.contains_key(r))
            .map(|(l, r)| (l, r, score))
            .collect();
        local.sort_by_key(|(l, r, _)| (vocab[l], vocab[r]));
        merges.extend(local);
    }
    // Python's stable `sorted(..., reverse=True)`: descending keys, ties in their first order.
    merges.sort_by(|a, b| {
        let key = |m: &(&str, &str, f64)| (m.2, m.0.chars().count(), m.1.chars().count());
        let (ka, kb) = (key(a), key(b));
        kb.0.total_cmp(&ka.0)
            .then(kb.1.cmp(&ka.1))
            .then(kb.2.cmp(&ka.2))
    });
    merges
        .into_iter()
        .map(|(l, r, _)| [l.to_string(), r.to_string()])
        .collect()
}
