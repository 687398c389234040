//! Collation (tokenize, truncate, mask the prompt, pad or pack) and the batch schedule.

use rand::seq::SliceRandom;

#[cfg(test)]
use super::dataset::Dataset;
use super::dataset::ExampleSource;
use super::row::{DataError, Example};
#[cfg(test)]
use super::tokenizer::ByteTokenizer;
use super::tokenizer::{Encode, TokenizerError};
use crate::model::init;

/// Label of positions that carry no loss (prompt and padding), as in PyTorch.
pub const IGNORE_INDEX: i64 = -100;

/// Token id used for padding (its positions carry no loss and, with segments, no attention).
pub(crate) const PAD_ID: i64 = 0;

/// A padded batch on the host, row-major `[batch, seq]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<i64>,
    /// The token itself where it is learned, `IGNORE_INDEX` elsewhere. Position `t`'s label is
    /// predicted from positions `< t` (the loss shifts).
    pub labels: Vec<i64>,
    pub batch: usize,
    pub seq: usize,
    /// Which sequence each token belongs to, per row (0 = padding). Attention stays inside a
    /// segment and positions restart at 0 with each one. `None` means one sequence per row
    /// from position 0, right-padded (padding needs no mask then: nothing attends forward).
    pub segments: Option<Vec<u32>>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Padding {
    #[default]
    Right,
    /// Padding first (the layout generation wants); masked through segments.
    Left,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CollateOptions {
    /// Tokens per example after truncation (and per row when packing).
    pub max_len: usize,
    pub padding: Padding,
    /// Pack the examples into as few rows of `max_len` as they fit in (first-fit
    /// decreasing), each keeping its own attention and positions.
    pub pack: bool,
}

impl CollateOptions {
    pub fn new(max_len: usize) -> Self {
        Self {
            max_len,
            padding: Padding::Right,
            pack: false,
        }
    }
}

/// One example's tokens and labels, truncated.
fn tokenize<T: Encode + ?Sized>(
    ex: &Example,
    max_len: usize,
    tok: &T,
) -> Result<(Vec<i64>, Vec<i64>), TokenizerError> {
    let prompt = tok.encode_ids(&ex.prompt)?;
    let mut response = tok.encode_ids(&ex.response)?;
    if ex.eos
        && let Some(eos) = tok.eos_id()
    {
        response.push(eos);
    }
    let mut ids = prompt.clone();
    ids.extend(&response);
    let mut labels = vec![IGNORE_INDEX; prompt.len()];
    labels.extend(&response);
    ids.truncate(max_len);
    labels.truncate(max_len);
    Ok((ids, labels))
}

impl Batch {
    /// Collates examples with `tok`, truncating each to `max_len` tokens and right-padding to
    /// the longest. Prompt and response are tokenized separately, so the loss mask falls
    /// exactly on the response's tokens.
    pub fn collate<T: Encode + ?Sized>(
        examples: &[&Example],
        max_len: usize,
        tok: &T,
    ) -> Result<Batch, TokenizerError> {
        Self::collate_with(examples, &CollateOptions::new(max_len), tok)
    }

    pub fn collate_with<T: Encode + ?Sized>(
        examples: &[&Example],
        opts: &CollateOptions,
        tok: &T,
    ) -> Result<Batch, TokenizerError> {
        let mut rows = Vec::with_capacity(examples.len());
        for ex in examples {
            rows.push(tokenize(ex, opts.max_len.max(1), tok)?);
        }
        Ok(if opts.pack {
            Self::pack(rows, opts.max_len.max(1))
        } else {
            Self::pad(rows, opts.padding)
        })
    }

    pub(super) fn pad(rows: Vec<(Vec<i64>, Vec<i64>)>, padding: Padding) -> Batch {
        let seq = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(1);
        let n = rows.len();
        let mut input_ids = Vec::with_capacity(n * seq);
        let mut labels = Vec::with_capacity(n * seq);
        let mut segments = Vec::with_capacity(n * seq);
        for (ids, labs) in rows {
            let pad = seq - ids.len();
            let real = ids.len();
            if padding == Padding::Left {
                input_ids.extend(std::iter::repeat_n(PAD_ID, pad));
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
                segments.extend(std::iter::repeat_n(0, pad));
            }
            input_ids.extend(ids);
            labels.extend(labs);
            segments.extend(std::iter::repeat_n(1, real));
            if padding == Padding::Right {
                input_ids.extend(std::iter::repeat_n(PAD_ID, pad));
                labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
                segments.extend(std::iter::repeat_n(0, pad));
            }
        }
        let segments = (padding == Padding::Left).then_some(segments);
        Batch {
            input_ids,
            labels,
            batch: n,
            seq,
            segments,
        }
    }

    fn pack(rows: Vec<(Vec<i64>, Vec<i64>)>, max_len: usize) -> Batch {
        // First-fit decreasing; ties keep the examples' order.
        let mut order: Vec<usize> = (0..rows.len()).filter(|&i| !rows[i].0.is_empty()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(rows[i].0.len()));
        let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
        for i in order {
            let len = rows[i].0.len();
            match bins.iter_mut().find(|b| b.0 + len <= max_len) {
                Some(bin) => {
                    bin.0 += len;
                    bin.1.push(i);
                }
                None => bins.push((len, vec![i])),
            }
        }
        let seq = bins.iter().map(|b| b.0).max().unwrap_or(0).max(1);
        let mut input_ids = Vec::with_capacity(bins.len() * seq);
        let mut labels = Vec::with_capacity(bins.len() * seq);
        let mut segments = Vec::with_capacity(bins.len() * seq);
        for (used, members) in &bins {
            for (k, &i) in members.iter().enumerate() {
                let (ids, labs) = &rows[i];
                input_ids.extend(ids);
                // An example's first token is never predicted from the one before it.
                labels.push(if k == 0 { labs[0] } else { IGNORE_INDEX });
                labels.extend(&labs[1..]);
                segments.extend(std::iter::repeat_n(k as u32 + 1, ids.len()));
            }
            let pad = seq - used;
            input_ids.extend(std::iter::repeat_n(PAD_ID, pad));
            labels.extend(std::iter::repeat_n(IGNORE_INDEX, pad));
            segments.extend(std::iter::repeat_n(0, pad));
        }
        Batch {
            input_ids,
            labels,
            batch: bins.len(),
            seq,
            segments: Some(segments),
        }
    }

    /// `k` batches of consecutive rows (sizes differ by at most one), for gradient
    /// accumulation. `k` must be between 1 and the number of rows.
    pub(crate) fn split(&self, k: usize) -> Vec<Batch> {
        let k = k.clamp(1, self.batch.max(1));
        let (base, extra) = (self.batch / k, self.batch % k);
        let mut out = Vec::with_capacity(k);
        let mut row = 0;
        for i in 0..k {
            let n = base + usize::from(i < extra);
            let range = row * self.seq..(row + n) * self.seq;
            out.push(Batch {
                input_ids: self.input_ids[range.clone()].to_vec(),
                labels: self.labels[range.clone()].to_vec(),
                batch: n,
                seq: self.seq,
                segments: self.segments.as_ref().map(|s| s[range].to_vec()),
            });
            row += n;
        }
        out
    }

    /// Tokens that carry loss after the one-position shift.
    /// A token whose segment differs from the one before it starts a sequence and is never
    /// predicted (from padding or from another example).
    pub(crate) fn target_tokens(&self) -> usize {
        self.target_tokens_in_rows(0..self.batch)
    }

    /// [`Batch::target_tokens`] of rows `rows` only (a preference batch's chosen half).
    pub(crate) fn target_tokens_in_rows(&self, rows: std::ops::Range<usize>) -> usize {
        let mut n = 0;
        for b in rows {
            for t in 1..self.seq {
                let i = b * self.seq + t;
                if self.labels[i] != IGNORE_INDEX
                    && self.segments.as_ref().is_none_or(|s| s[i] == s[i - 1])
                {
                    n += 1;
                }
            }
        }
        n
    }

    /// The largest token id, to check against the model's vocabulary before Burn sees it.
    pub(crate) fn max_token(&self) -> i64 {
        self.input_ids
            .iter()
            .chain(self.labels.iter())
            .copied()
            .max()
            .unwrap_or(0)
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
    /// Batch examples of similar length together (fewer padding tokens): after shuffling,
    /// windows of 50 batches are sorted by length (Hugging Face's `group_by_length`).
    pub group_by_length: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self {
            size: 8,
            max_len: 256,
            steps: None,
            shuffle: true,
            seed: 0,
            skip: 0,
            group_by_length: false,
        }
    }
}

/// Yields groups of examples (collated later, with the tokenizer of the model that trains on
/// them): with `steps`, as many as asked, reshuffling at every pass over the data; without,
/// one pass (the last group may be smaller).
pub struct Batches {
    data: ExampleSource,
    /// An error met while measuring the examples, returned by the first `next`.
    failed: Option<DataError>,
    order: BatchOrder,
}

impl Batches {
    pub fn new(data: impl Into<ExampleSource>, opts: BatchOptions) -> Self {
        let data = data.into();
        let mut failed = None;
        let mut lengths = Vec::new();
        if opts.group_by_length {
            for i in 0..data.len() {
                match data.get(i) {
                    Ok(e) => lengths.push(e.prompt.len() + e.response.len()),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
        }
        let order = BatchOrder::new(data.len(), lengths, opts);
        Self {
            data,
            failed,
            order,
        }
    }

    /// Batches produced so far, skipped ones included.
    pub fn produced(&self) -> usize {
        self.order.produced
    }
}

impl Iterator for Batches {
    /// A group of examples, or the error reading one of them (a streamed file).
    type Item = Result<Vec<Example>, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.failed.take() {
            self.order.opts.steps = Some(0);
            return Some(Err(e));
        }
        let picked = self.order.next()?;
        Some(picked.iter().map(|&i| self.data.get(i)).collect())
    }
}

/// Which items each batch takes, by index: the order (shuffled per pass, grouped by length
/// when asked) shared by every kind of data that is batched.
pub(crate) struct BatchOrder {
    n: usize,
    /// Each item's length, for `group_by_length` (empty when not grouping).
    lengths: Vec<usize>,
    opts: BatchOptions,
    order: Vec<usize>,
    cursor: usize,
    epoch: u64,
    produced: usize,
}

impl BatchOrder {
    /// Over `n` items, the first `opts.skip` batches already passed over.
    pub(crate) fn new(n: usize, lengths: Vec<usize>, opts: BatchOptions) -> Self {
        let skip = opts.skip;
        let mut it = Self {
            n,
            lengths,
            opts,
            order: Vec::new(),
            cursor: 0,
            epoch: 0,
            produced: 0,
        };
        it.reorder();
        for _ in 0..skip {
            if it.next().is_none() {
                break;
            }
        }
        it
    }

    fn reorder(&mut self) {
        self.order = (0..self.n).collect();
        if self.opts.shuffle {
            self.order.shuffle(&mut init::rng_for(
                self.opts.seed,
                &format!("epoch{}", self.epoch),
            ));
        }
        if self.opts.group_by_length && self.lengths.len() == self.n {
            let len = |i: &usize| self.lengths[*i];
            for window in self.order.chunks_mut(self.opts.size.max(1) * 50) {
                window.sort_by_key(|i| std::cmp::Reverse(len(i)));
            }
        }
    }
}

impl Iterator for BatchOrder {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        let n = self.n;
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
        let a = Example::pair("ab", "cd");
        let b = Example::text("xyz12");
        let batch = Batch::collate(&[&a, &b], 16, &ByteTokenizer).unwrap();
        assert_eq!(batch.seq, 5);
        assert_eq!(
            &batch.labels[..5],
            &[IGNORE_INDEX, IGNORE_INDEX, 99, 100, IGNORE_INDEX]
        );
        assert_eq!(&batch.input_ids[..5], &[97, 98, 99, 100, 0]);
        assert_eq!(&batch.labels[5..], &[120, 121, 122, 49, 50]);
        // "cd" (both after position 0) + "yz12" (4 after the shift).
        assert_eq!(batch.target_tokens(), 6);
        assert_eq!(batch.segments, None);
    }

    #[test]
    fn left_padding_marks_padding_as_segment_zero() {
        let a = Example::pair("ab", "cd");
        let b = Example::text("x");
        let batch = Batch::collate_with(
            &[&a, &b],
            &CollateOptions {
                padding: Padding::Left,
                ..CollateOptions::new(16)
            },
            &ByteTokenizer,
        )
        .unwrap();
        assert_eq!(&batch.input_ids[4..], &[0, 0, 0, 120]);
        assert_eq!(
            &batch.labels[4..],
            &[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 120]
        );
        assert_eq!(
            batch.segments.as_deref(),
            Some(&[1, 1, 1, 1, 0, 0, 0, 1][..])
        );
    }

    #[test]
    fn packing_fills_rows_and_never_learns_across_examples() {
        let ex: Vec<Example> = ["aaaa", "bbb", "cc", "dddddd", "e"]
            .iter()
            .map(|t| Example::text(*t))
            .collect();
        let refs: Vec<&Example> = ex.iter().collect();
        let batch = Batch::collate_with(
            &refs,
            &CollateOptions {
                pack: true,
                ..CollateOptions::new(8)
            },
            &ByteTokenizer,
        )
        .unwrap();
        // 16 tokens in rows of 8: first-fit decreasing gives "dddddd"+"cc", "aaaa"+"bbb"+"e".
        assert_eq!((batch.batch, batch.seq), (2, 8));
        assert_eq!(
            batch.input_ids,
            b"ddddddccaaaabbbe"
                .iter()
                .map(|&c| c as i64)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            batch.segments.as_deref(),
            Some(&[1, 1, 1, 1, 1, 1, 2, 2, 1, 1, 1, 1, 2, 2, 2, 3][..])
        );
        // The first token of every packed example carries no label: it would be "predicted"
        // from the previous example's last token.
        for (t, seg) in batch.segments.as_ref().unwrap().iter().enumerate() {
            let starts = t % 8 != 0 && batch.segments.as_ref().unwrap()[t - 1] != *seg;
            if starts {
                assert_eq!(batch.labels[t], IGNORE_INDEX, "position {t}");
            }
        }
        // Same learned tokens as the padded batch: 5 + 2 + 1 + 3 + 1 + 0... each example
        // learns all but its first token.
        let padded = Batch::collate(&refs, 8, &ByteTokenizer).unwrap();
        assert_eq!(batch.target_tokens(), padded.target_tokens());
    }

    #[test]
    fn eos_is_appended_when_the_example_asks() {
        struct WithEos;
        impl Encode for WithEos {
            fn encode_ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
                Ok(ByteTokenizer.encode(text))
            }
            fn eos_id(&self) -> Option<i64> {
                Some(255)
            }
        }
        let ex = Example {
            eos: true,
            ..Example::pair("q", "a")
        };
        let batch = Batch::collate(&[&ex], 16, &WithEos).unwrap();
        assert_eq!(batch.input_ids, [113, 97, 255]);
        assert_eq!(batch.labels, [IGNORE_INDEX, 97, 255]);
    }

    #[test]
    fn steps_cycle_through_epochs_deterministically() {
        let ds = Dataset::new(
            (0..5).map(|i| Example::text(format!("{i}"))).collect(),
            "mem",
        )
        .examples()
        .unwrap();
        let opts = BatchOptions {
            size: 2,
            max_len: 8,
            steps: Some(7),
            shuffle: true,
            seed: 3,
            ..Default::default()
        };
        let a: Vec<Vec<Example>> = Batches::new(ds.clone(), opts.clone())
            .collect::<Result<_, _>>()
            .unwrap();
        let b: Vec<Vec<Example>> = Batches::new(ds.clone(), opts.clone())
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(a.len(), 7);
        assert!(a.iter().all(|x| x.len() == 2));
        assert_eq!(a, b);
        // Within one pass over the data, no example repeats.
        let first_pass: Vec<&Example> = a.iter().flatten().take(5).collect();
        assert!(ds.iter().all(|e| first_pass.contains(&e)));
        // Skipping k batches continues exactly where an uninterrupted run would be.
        let resumed: Vec<Vec<Example>> = Batches::new(ds.clone(), BatchOptions { skip: 4, ..opts })
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(resumed, a[4..]);
        let one_pass: Vec<Vec<Example>> = Batches::new(
            ds,
            BatchOptions {
                size: 2,
                steps: None,
                ..Default::default()
            },
        )
        .collect::<Result<_, _>>()
        .unwrap();
        assert_eq!(
            one_pass.iter().map(|b| b.len()).collect::<Vec<_>>(),
            vec![2, 2, 1]
        );
    }

    #[test]
    fn grouping_by_length_puts_similar_lengths_together() {
        let ds = Dataset::new(
            (0..40)
                .map(|i| Example::text("x".repeat(1 + (i * 7) % 40)))
                .collect(),
            "mem",
        )
        .examples()
        .unwrap();
        let opts = BatchOptions {
            size: 4,
            steps: None,
            group_by_length: true,
            ..Default::default()
        };
        let spread = |b: &Vec<Example>| {
            b.iter().map(|e| e.response.len()).max().unwrap()
                - b.iter().map(|e| e.response.len()).min().unwrap()
        };
        let grouped: usize = Batches::new(ds.clone(), opts.clone())
            .map(|b| spread(&b.unwrap()))
            .sum();
        let plain: usize = Batches::new(
            ds,
            BatchOptions {
                group_by_length: false,
                ..opts
            },
        )
        .map(|b| spread(&b.unwrap()))
        .sum();
        assert!(
            grouped * 3 < plain,
            "grouped spread {grouped} vs shuffled {plain}"
        );
    }
}
