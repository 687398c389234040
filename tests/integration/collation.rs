//! Packing and left padding change the layout of a batch, never what the model computes for
//! each example: attention never crosses from one packed example into another, positions
//! restart with each example, and masked padding is invisible.

use burn::backend::{Autodiff, Flex};

use runner::data::{Batch, ByteTokenizer, CollateOptions, Example, Padding};
use runner::model::{Llama, TinyOptions};
use runner::train::{evaluate, input_tensor};

type B = Autodiff<Flex>;

fn model() -> Llama<B> {
    let opts = TinyOptions {
        seed: 9,
        ..Default::default()
    };
    Llama::random(opts.config(), 9, opts.std(), &Default::default())
        .unwrap()
        .detached()
}

/// Hidden states `[tokens, d]` of each row of `batch` as host vectors.
fn hidden(model: &Llama<B>, batch: &Batch) -> Vec<Vec<f32>> {
    let h = model.hidden_states_segmented(
        input_tensor(batch, &model.device),
        batch.segments.as_deref(),
        None,
    );
    let d = h.dims()[1];
    let v = h.into_data().to_vec::<f32>().unwrap();
    v.chunks(d).map(|c| c.to_vec()).collect()
}

fn close(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn examples() -> Vec<Example> {
    [
        "The cat sat.",
        "Q: 2+2?\nA: 4",
        "ab",
        "A longer example that fills most of a row.",
    ]
    .iter()
    .map(|t| Example::text(*t))
    .collect()
}

#[test]
fn packed_examples_compute_exactly_what_they_compute_alone() {
    let model = model();
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let packed = Batch::collate_with(
        &refs,
        &CollateOptions {
            pack: true,
            ..CollateOptions::new(48)
        },
        &ByteTokenizer,
    )
    .unwrap();
    assert!(
        packed.batch < ex.len(),
        "packing should share rows ({} rows)",
        packed.batch
    );
    let states = hidden(&model, &packed);
    // Find each example in the packed rows by its segment and compare with it alone.
    let segments = packed.segments.clone().unwrap();
    let mut found = 0;
    for e in &ex {
        let alone = Batch::collate(&[e], 48, &ByteTokenizer).unwrap();
        let alone_states = hidden(&model, &alone);
        let ids = &alone.input_ids;
        let start = (0..packed.batch * packed.seq)
            .find(|&p| {
                (p % packed.seq == 0 || segments[p - 1] != segments[p])
                    && segments[p] != 0
                    && packed.input_ids[p..].starts_with(ids)
            })
            .expect("example present in the packed batch");
        for (k, row) in alone_states.iter().enumerate() {
            let d = close(row, &states[start + k]);
            assert!(
                d < 1e-5,
                "{:?} token {k}: packed differs from alone by {d}",
                e.response
            );
        }
        found += 1;
    }
    assert_eq!(found, ex.len());
}

#[test]
fn packed_and_padded_batches_have_the_same_loss() {
    let model = model();
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let padded = Batch::collate(&refs, 48, &ByteTokenizer).unwrap();
    let packed = Batch::collate_with(
        &refs,
        &CollateOptions {
            pack: true,
            ..CollateOptions::new(48)
        },
        &ByteTokenizer,
    )
    .unwrap();
    let a = evaluate(&model, vec![padded]).unwrap();
    let b = evaluate(&model, vec![packed]).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert!(
        (a.loss - b.loss).abs() < 1e-5,
        "padded {} vs packed {}",
        a.loss,
        b.loss
    );
}

#[test]
fn left_padding_is_invisible() {
    let model = model();
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let left = Batch::collate_with(
        &refs,
        &CollateOptions {
            padding: Padding::Left,
            ..CollateOptions::new(48)
        },
        &ByteTokenizer,
    )
    .unwrap();
    let right = Batch::collate(&refs, 48, &ByteTokenizer).unwrap();
    let (l, r) = (hidden(&model, &left), hidden(&model, &right));
    for (row, e) in ex.iter().enumerate() {
        let n = e.response.len();
        let seq = left.seq;
        for k in 0..n {
            let d = close(&l[row * seq + seq - n + k], &r[row * seq + k]);
            assert!(d < 1e-5, "row {row} token {k}: left-padded differs by {d}");
        }
    }
    let (a, b) = (
        evaluate(&model, vec![left]).unwrap(),
        evaluate(&model, vec![right]).unwrap(),
    );
    assert!((a.loss - b.loss).abs() < 1e-5, "{} vs {}", a.loss, b.loss);
}

#[test]
fn without_segments_packing_would_leak() {
    // The check above can fail: the same packed row without its segments lets later
    // examples attend to earlier ones and changes their states.
    let model = model();
    let ex = examples();
    let refs: Vec<&Example> = ex.iter().collect();
    let packed = Batch::collate_with(
        &refs,
        &CollateOptions {
            pack: true,
            ..CollateOptions::new(48)
        },
        &ByteTokenizer,
    )
    .unwrap();
    let leaky = Batch {
        segments: None,
        ..packed.clone()
    };
    let (a, b) = (hidden(&model, &packed), hidden(&model, &leaky));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| close(x, y))
        .fold(0.0, f32::max);
    assert!(worst > 1e-2, "segments made no difference ({worst})");
}

#[test]
fn token_accuracy_counts_argmax_hits_on_labelled_tokens() {
    let model = model();
    let ex = [
        Example::pair("Q: 2+2?\nA:", " 4"),
        Example::text("abcabcabc"),
    ];
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = Batch::collate(&refs, 48, &ByteTokenizer).unwrap();
    let logits = model.forward(input_tensor(&batch, &model.device), None);
    let vocab = logits.dims()[2];
    let logits = logits.into_data().to_vec::<f32>().unwrap();
    let (mut hits, mut total) = (0, 0);
    for b in 0..batch.batch {
        for t in 0..batch.seq - 1 {
            let label = batch.labels[b * batch.seq + t + 1];
            if label < 0 {
                continue;
            }
            let row = &logits[(b * batch.seq + t) * vocab..(b * batch.seq + t + 1) * vocab];
            let argmax = row
                .iter()
                .enumerate()
                .fold(
                    (0, f32::NEG_INFINITY),
                    |m, (i, &x)| if x > m.1 { (i, x) } else { m },
                )
                .0;
            hits += usize::from(argmax as i64 == label);
            total += 1;
        }
    }
    let r = evaluate(&model, vec![batch]).unwrap();
    assert_eq!(r.tokens, total);
    assert!(
        (r.accuracy - hits as f64 / total as f64).abs() < 1e-12,
        "{} vs {hits}/{total}",
        r.accuracy
    );
}
