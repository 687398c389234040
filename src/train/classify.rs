//! Classification by the next token: each prompt is scored by the model's logits for the
//! label words' tokens at the position after it, and the highest wins (accuracy of the label
//! token, as in the LoRA paper's MultiNLI figures and WARP's verbalizer). The rest of the
//! vocabulary does not compete.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::model::Llama;
use crate::model::llama::KvCache;

/// For each prompt (token ids, not empty), the index into `labels` of the label token with
/// the highest logit after it. One prompt at a time, so that every adapter (soft prompts and
/// prefixes, side networks) sees the sequence as it does in generation.
pub fn classify<B: Backend>(model: &Llama<B>, prompts: &[Vec<u32>], labels: &[u32]) -> Vec<usize> {
    let model = model.detached();
    let device = model.device.clone();
    prompts
        .iter()
        .map(|ids| {
            let n = ids.len();
            let input = Tensor::<B, 2, Int>::from_data(
                TensorData::new(ids.iter().map(|&i| i as i64).collect(), [1, n]),
                &device,
            );
            let mut cache = KvCache::new(&model.config);
            let logits: Vec<f32> = model
                .forward_cached_last(input, &mut cache)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 logits");
            let mut best = 0;
            for (j, &l) in labels.iter().enumerate() {
                if logits[l as usize] > logits[labels[best] as usize] {
                    best = j;
                }
            }
            best
        })
        .collect()
}
