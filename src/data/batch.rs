//! Collation: tokenize, truncate, mask the prompt, right-pad; and the batch schedule.

use rand::seq::SliceRandom;

use super::dataset::{Dataset, Example};
#[cfg(test)]
use super::tokenizer::ByteTokenizer;
use crate::model::init;
use crate::tokenizer::{Encode, TokenizerError};

/// Label of positions that carry no loss (prompt and padding), as in PyTorch.
pub const IGNORE_INDEX: i64 = -100;

/// A padded batch on the host, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<i64>,
    /// The token itself where it is learned, `IGNORE_INDEX` elsewhere. Position `t`'s label is
    /// predicted from positions `< t` (the loss shifts).
    pub labels: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
}

impl Batch {
    /// Collates examples with `tok`, truncating each to `max_len` tokens and padding to the
    /// longest. Prompt and response are tokenized separately, so the loss mask falls exactly on
    /// the response's tokens.
    pub fn collate<T: Encode + ?Sized>(examples: &[&Example], max_len: usize, tok: &T) -> Result<Batch, TokenizerError> {
        let mut rows: Vec<(Vec<i64>, Vec<i64>)> = Vec::with_capacity(examples.len());
        for ex in examples {
            let prompt = tok.encode_ids(&ex.prompt)?;
            let response = tok.encode_ids(&ex.response)?;
            let mut ids = prompt.clone();
            ids.extend(&response);
            let mut labels = vec![IGNORE_INDEX; prompt.len()];
            labels.extend(&response);
            ids.truncate(max_len);
            labels.truncate(max_len);
            rows.push((ids, labels));
        }
        let seq = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(1);
        let mut input_ids = Vec::with_capacity(rows.len() * seq);
        let mut labels = Vec::with_capacity(rows.len() * seq);
        for (ids, labs) in rows {
            let pad = seq - ids.len();
            input_ids.extend(ids);
            input_ids.extend(std::iter::repeat_n(0, pad));
            labels.extend(labs);
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
        }
        Ok(Batch { input_ids, labels, batch: examples.len(), seq })
    }

    /// `k` batches of consecutive rows (sizes differ by at most one), for gradient
    /// accumulation. `k` must be between 1 and the number of rows.
    pub fn split(&self, k: usize) -> Vec<Batch> {
        let k = k.clamp(1, self.batch.max(1));
        let (base, extra) = (self.batch / k, self.batch % k);
        let mut out = Vec::with_capacity(k);
        let mut row = 0;
        for i in 0..k {
            let n = base + usize::from(i < extra);
            let range = row * self.seq..(row + n) * self.seq;
            out.push(Batch { input_ids: self.input_ids[range.clone()].to_vec(), labels: self.labels[range].to_vec(), batch: n, seq: self.seq });
            row += n;
        }
        out
    }

    /// Tokens that carry loss after the one-position shift.
    pub fn target_tokens(&self) -> usize {
        (0..self.batch).map(|b| self.labels[b * self.seq + 1..(b + 1) * self.seq].iter().filter(|&&l| l != IGNORE_INDEX).count()).sum()
    }

    /// The largest token id, to check against the model's vocabulary before Burn sees it.
    pub fn max_token(&self) -> i64 {
        self.input_ids.iter().chain(self.labels.iter()).copied().max().unwrap_or(0)
    }
}

#[derive(Clone, Debug)]
pub struct BatchOptions {
    pub size: usize,
    pub max_len: usize,
    /// Number of batches; `None` means one pass over the data.
    pub steps: Option<usize>,
    pub shuffle: bool,
    pub seed: u64,
    /// Batches to pass over first (resuming at a checkpoint's data position): the ones that
    /// follow are exactly those an uninterrupted run would draw next.
    pub skip: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self { size: 8, max_len: 256, steps: None, shuffle: true, seed: 0, skip: 0 }
    }
}

/// Yields groups of examples (collated later, with the tokenizer of the model that trains on
/// them): with `steps`, as many as asked, reshuffling at every pass over the data; without,
/// one pass (the last group may be smaller).
pub struct Batches {
    data: Dataset,
    opts: BatchOptions,
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
    produced: usize,
}

impl Batches {
    pub fn new(data: Dataset, opts: BatchOptions) -> Self {
        let skip = opts.skip;
        let mut it = Self { order: (0..data.len()).collect(), data, opts, cursor: 0, epoch: 0, produced: 0 };
        it.reorder();
        for _ in 0..skip {
            if it.next_indices().is_none() {
                break;
            }
        }
        it
    }

    /// Batches produced so far, skipped ones included.
    pub fn produced(&self) -> usize {
        self.produced
    }

    fn reorder(&mut self) {
        self.order = (0..self.data.len()).collect();
        if self.opts.shuffle {
            self.order.shuffle(&mut init::rng_for(self.opts.seed, &format!("epoch{}", self.epoch)));
        }
    }
}

impl Iterator for Batches {
    type Item = Vec<Example>;

    fn next(&mut self) -> Option<Vec<Example>> {
        let picked = self.next_indices()?;
        Some(picked.iter().map(|&i| self.data.examples[i].clone()).collect())
    }
}

impl Batches {
    fn next_indices(&mut self) -> Option<Vec<usize>> {
        let n = self.data.len();
        if n == 0 || self.opts.size == 0 {
            return None;
        }
        match self.opts.steps {
            Some(steps) if self.produced >= steps => return None,
            None if self.cursor >= n => return None,
            _ => {}
        }
        let mut picked = Vec::with_capacity(self.opts.size);
        while picked.len() < self.opts.size {
            if self.cursor >= n {
                if self.opts.steps.is_none() {
                    break;
                }
                self.epoch += 1;
                self.cursor = 0;
                self.reorder();
            }
            picked.push(self.order[self.cursor]);
            self.cursor += 1;
        }
        self.produced += 1;
        Some(picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_is_masked_and_padding_ignored() {
        let a = Example { prompt: "ab".into(), response: "cd".into() };
        let b = Example::text("xyz12");
        let batch = Batch::collate(&[&a, &b], 16, &ByteTokenizer).unwrap();
        assert_eq!(batch.seq, 5);
        assert_eq!(&batch.labels[..5], &[IGNORE_INDEX, IGNORE_INDEX, 99, 100, IGNORE_INDEX]);
        assert_eq!(&batch.input_ids[..5], &[97, 98, 99, 100, 0]);
        assert_eq!(&batch.labels[5..], &[120, 121, 122, 49, 50]);
        // "cd" (both after position 0) + "yz12" (4 after the shift).
        assert_eq!(batch.target_tokens(), 6);
    }

    #[test]
    fn steps_cycle_through_epochs_deterministically() {
        let ds = Dataset::new((0..5).map(|i| Example::text(format!("{i}"))).collect(), "mem");
        let opts = BatchOptions { size: 2, max_len: 8, steps: Some(7), shuffle: true, seed: 3, ..Default::default() };
        let a: Vec<Vec<Example>> = Batches::new(ds.clone(), opts.clone()).collect();
        let b: Vec<Vec<Example>> = Batches::new(ds.clone(), opts).collect();
        assert_eq!(a.len(), 7);
        assert!(a.iter().all(|x| x.len() == 2));
        assert_eq!(a, b);
        // Within one pass over the data, no example repeats.
        let first_pass: Vec<&Example> = a.iter().flatten().take(5).collect();
        assert!(ds.examples.iter().all(|e| first_pass.contains(&e)));
        let one_pass: Vec<Vec<Example>> = Batches::new(ds, BatchOptions { size: 2, steps: None, ..Default::default() }).collect();
        assert_eq!(one_pass.iter().map(|b| b.len()).collect::<Vec<_>>(), vec![2, 2, 1]);
    }
}
