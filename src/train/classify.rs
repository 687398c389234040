//! Classification by the next token: each prompt is scored by the model's logits for the
//! label words' tokens at the position after it, and the highest wins (accuracy of the label
//! token, as in the LoRA paper's MultiNLI figures and WARP's verbalizer). The rest of the
//! vocabulary does not compete.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::Llama;

/// Prompts scored in one forward pass.
const BATCH: usize = 16;

/// For each prompt (token ids, not empty), the index into `labels` of the label token with
/// the highest logit after it. Prompts of similar length are batched with padding on the
/// right: in a causal model a position never sees the positions after it, so each prompt's
/// last position reads exactly what it would alone, and soft prompts, prefixes and side
/// networks see each sequence as they do in generation.
pub fn classify<B: Backend>(model: &Llama<B>, prompts: &[Vec<u32>], labels: &[u32]) -> Vec<usize> {
    let model = model.detached();
    let device = model.device.clone();
    let d = model.config.hidden_size;
    let mut order: Vec<usize> = (0..prompts.len()).collect();
    order.sort_by_key(|&i| prompts[i].len());
    let mut picks = vec![0; prompts.len()];
    for chunk in order.chunks(BATCH) {
        let width = chunk.iter().map(|&i| prompts[i].len()).max().unwrap_or(1);
        let mut ids = vec![0i64; chunk.len() * width];
        let mut last = Vec::with_capacity(chunk.len());
        for (row, &i) in chunk.iter().enumerate() {
            let p = &prompts[i];
            for (t, &id) in p.iter().enumerate() {
                ids[row * width + t] = id as i64;
            }
            last.push((row * width + p.len() - 1) as i64);
        }
        let input =
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [chunk.len(), width]), &device);
        let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(last, [chunk.len()]), &device);
        let hidden = model.hidden_states(input, None).select(0, rows);
        let vocab = model.config.vocab_size;
        let logits: Vec<f32> = model
            .logits(hidden.reshape([chunk.len(), d]))
            .into_data()
            .convert::<f32>()
            .to_vec()
            .expect("f32 logits");
        for (row, &i) in chunk.iter().enumerate() {
            let row = &logits[row * vocab..(row + 1) * vocab];
            let mut best = 0;
            for (j, &l) in labels.iter().enumerate() {
                if row[l as usize] > row[labels[best] as usize] {
                    best = j;
                }
            }
            picks[i] = best;
        }
    }
    picks
}
