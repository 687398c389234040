//! Preference pairs (a prompt, a chosen and a rejected completion) for reward models and
//! DPO: read from JSONL, rendered with the model's chat template when conversational,
//! tokenized and truncated, then collated as one batch of 2N sequences, chosen rows first.
//!
//! Modelled on Hugging Face TRL, read at v0.28.0 (the last release with `max_prompt_length`
//! and `max_completion_length`) and at main (1.10.0.dev0, July 2026):
//! - Fields `prompt`, `chosen`, `rejected` (TRL's preference type, or without `prompt` its
//!   implicit-prompt type) and the optional numeric `margin` of `RewardTrainer`.
//! - Implicit prompt, as `trl.data_utils.extract_prompt`: the longest shared prefix of
//!   characters (a space just before the first difference goes to the completions) or of
//!   messages. When one side is a prefix of the other, its last element stays in the
//!   completions, as TRL's loop leaves it.
//! - Conversations, as `apply_chat_template` for preference rows: the prompt rendered with the
//!   generation prompt, prompt+chosen and prompt+rejected rendered whole, the prompt text cut to
//!   what all three share and the completions the rest. A prompt ending with an assistant
//!   message (TRL's `continue_final_message`) is refused: the template API here cannot render it.
//! - EOS appended to text completions that do not already end with it, never to conversational
//!   ones (the template closes the turn), as `DPOTrainer._prepare_dataset`.
//! - Token ids, as main's `tokenize_fn`: the prompt alone and prompt+completion are encoded and
//!   the completion is what follows the prompt's ids (the completion encoded alone where the
//!   joint ids do not start with the prompt's, where TRL only warns).
//! - Truncation: `max_prompt_length` keeps the prompt's last tokens and
//!   `max_completion_length` the completions' first (v0.28.0 `tokenize_row`; TRL 0.29 dropped
//!   both for `max_length` alone); `max_length` cuts each prompt+completion sequence by
//!   `truncation_mode`, keeping its start or its end (main's `DataCollatorForPreference`).
//!   The default mode is main's `keep_start` (v0.28.0 defaulted to `keep_end`).
//! - Main drops rows whose prompt fills `max_length` under `keep_start`; here any pair whose
//!   chosen or rejected completion would keep no token is dropped, and counted.

use std::path::Path;

use serde_json::Value;

use super::batch::{Batch, IGNORE_INDEX, Padding};
use super::row::{DataError, ReadOptions, Row, json_row, jsonl_lines, kind};
use super::tokenizer::{ByteTokenizer, Encode, Tokenizer, TokenizerError};

/// One side of a pair: plain text, or (role, content) messages.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Turns {
    Text(String),
    Chat(Vec<(String, String)>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PreferencePair {
    pub(crate) prompt: Turns,
    pub(crate) chosen: Turns,
    pub(crate) rejected: Turns,
    /// How much better `chosen` is (RewardTrainer subtracts it inside the loss).
    pub(crate) margin: Option<f64>,
}

/// A field as text or messages; `None` when absent or null.
fn turns(row: &Row, k: &str) -> Result<Option<Turns>, String> {
    match row.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(Turns::Text(s.clone()))),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let role = m.get("role").and_then(Value::as_str);
                let content = m.get("content").and_then(Value::as_str);
                match (role, content) {
                    (Some(r), Some(c)) => Ok((r.to_string(), c.to_string())),
                    _ => Err(format!("{k}[{}] needs string 'role' and 'content'", i + 1)),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|m| Some(Turns::Chat(m))),
        Some(other) => Err(format!(
            "field '{k}' must be a string or a list of {{role, content}} messages, found {}",
            kind(other)
        )),
    }
}

/// Byte offset where the implicit prompt of two texts ends (see the module comment).
fn implicit_text_prompt_end(a: &str, b: &str) -> usize {
    let mut last_shared: Option<(usize, char)> = None;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            return match last_shared {
                Some((j, ' ')) => j,
                _ => i,
            };
        }
        last_shared = Some((i, ca));
    }
    last_shared.map_or(0, |(j, _)| j)
}

/// Number of leading messages two conversations share, keeping at least one in each.
fn implicit_chat_prompt_end(a: &[(String, String)], b: &[(String, String)]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or_else(|| a.len().min(b.len()).saturating_sub(1))
}

/// Length in bytes of the longest common prefix of two strings (on character boundaries).
fn common_prefix(a: &str, b: &str) -> usize {
    a.char_indices()
        .zip(b.chars())
        .find(|((_, x), y)| x != y)
        .map_or(a.len().min(b.len()), |((i, _), _)| i)
}

const MIXED: &str =
    "'prompt', 'chosen' and 'rejected' must all be strings or all lists of messages";

impl PreferencePair {
    /// `{"prompt", "chosen", "rejected"[, "margin"]}`, as strings or message lists; without
    /// `prompt`, the prompt is what `chosen` and `rejected` share at their start.
    pub(crate) fn from_row(row: &Row) -> Result<Self, String> {
        let required = |k: &str| -> Result<Turns, String> {
            turns(row, k)?.ok_or_else(|| {
                format!(
                    "no field '{k}' (fields: {})",
                    row.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        };
        let chosen = required("chosen")?;
        let rejected = required("rejected")?;
        let margin = match row.get("margin") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_f64(),
            Some(other) => {
                return Err(format!(
                    "field 'margin' must be a number, found {}",
                    kind(other)
                ));
            }
        };
        let pair = match turns(row, "prompt")? {
            Some(prompt) => Self {
                prompt,
                chosen,
                rejected,
                margin,
            },
            None => Self::implicit(chosen, rejected, margin)?,
        };
        pair.check()?;
        Ok(pair)
    }

    fn implicit(chosen: Turns, rejected: Turns, margin: Option<f64>) -> Result<Self, String> {
        let (prompt, chosen, rejected) = match (chosen, rejected) {
            (Turns::Text(c), Turns::Text(r)) => {
                let end = implicit_text_prompt_end(&c, &r);
                (
                    Turns::Text(c[..end].to_string()),
                    Turns::Text(c[end..].to_string()),
                    Turns::Text(r[end..].to_string()),
                )
            }
            (Turns::Chat(c), Turns::Chat(r)) => {
                let end = implicit_chat_prompt_end(&c, &r);
                if end == 0 {
                    return Err("'chosen' and 'rejected' share no leading messages, so there is no prompt (give a 'prompt' field)".into());
                }
                (
                    Turns::Chat(c[..end].to_vec()),
                    Turns::Chat(c[end..].to_vec()),
                    Turns::Chat(r[end..].to_vec()),
                )
            }
            _ => return Err(MIXED.into()),
        };
        Ok(Self {
            prompt,
            chosen,
            rejected,
            margin,
        })
    }

    fn check(&self) -> Result<(), String> {
        match (&self.prompt, &self.chosen, &self.rejected) {
            (Turns::Text(_), Turns::Text(_), Turns::Text(_)) => Ok(()),
            (Turns::Chat(p), Turns::Chat(c), Turns::Chat(r)) => {
                match p.last() {
                    None => return Err("field 'prompt' has no messages".into()),
                    Some((role, _)) if role == "user" || role == "tool" => {}
                    Some((role, _)) => {
                        return Err(format!(
                            "the prompt's last message is from '{role}'; it must be from 'user' or 'tool' (continuing an assistant message is not supported)"
                        ));
                    }
                }
                if c.is_empty() || r.is_empty() {
                    return Err("'chosen' and 'rejected' need at least one message each".into());
                }
                Ok(())
            }
            _ => Err(MIXED.into()),
        }
    }
}

/// What rendering a pair needs from a tokenizer: ids, and the chat template for conversations.
pub(crate) trait ChatTemplate: Encode {
    fn render_chat(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError>;
}

fn no_chat_template() -> TokenizerError {
    TokenizerError::Template(
        "conversational pairs need a model with a chat template (a pretrained model's tokenizer)"
            .into(),
    )
}

impl ChatTemplate for Tokenizer {
    fn render_chat(
        &self,
        messages: &[(String, String)],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        match self {
            Tokenizer::Text(t) => t.apply_chat_template(messages, add_generation_prompt),
            Tokenizer::Bytes => Err(no_chat_template()),
        }
    }
}

impl ChatTemplate for ByteTokenizer {
    fn render_chat(&self, _: &[(String, String)], _: bool) -> Result<String, TokenizerError> {
        Err(no_chat_template())
    }
}

/// A pair as the texts the model sees.
#[derive(Debug, PartialEq)]
struct RenderedPair {
    prompt: String,
    chosen: String,
    rejected: String,
    /// Text completions end with EOS; a chat template ends the turn itself.
    eos: bool,
}

fn render<T: ChatTemplate + ?Sized>(
    pair: &PreferencePair,
    tok: &T,
) -> Result<RenderedPair, String> {
    match (&pair.prompt, &pair.chosen, &pair.rejected) {
        (Turns::Text(p), Turns::Text(c), Turns::Text(r)) => Ok(RenderedPair {
            prompt: p.clone(),
            chosen: c.clone(),
            rejected: r.clone(),
            eos: true,
        }),
        (Turns::Chat(p), Turns::Chat(c), Turns::Chat(r)) => {
            let err = |e: TokenizerError| e.to_string();
            let prompt = tok.render_chat(p, true).map_err(err)?;
            let whole = |completion: &[(String, String)]| {
                let mut messages = p.clone();
                messages.extend_from_slice(completion);
                tok.render_chat(&messages, false).map_err(err)
            };
            let (with_chosen, with_rejected) = (whole(c)?, whole(r)?);
            // Some templates add to the generation prompt what the whole conversation lacks
            // there; the prompt is what all three renderings share.
            let end = common_prefix(&prompt, &with_chosen);
            let end = common_prefix(&prompt[..end], &with_rejected);
            Ok(RenderedPair {
                prompt: prompt[..end].to_string(),
                chosen: with_chosen[end..].to_string(),
                rejected: with_rejected[end..].to_string(),
                eos: false,
            })
        }
        _ => Err(MIXED.into()),
    }
}

/// Which end of an over-long prompt+completion sequence `max_length` keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum TruncationMode {
    #[default]
    KeepStart,
    KeepEnd,
}

/// Lengths in tokens, as TRL's DPOConfig; `None` does not truncate.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PairOptions {
    /// The prompt keeps its last tokens, next to the completions.
    pub max_prompt_length: Option<usize>,
    /// Completions keep their first tokens.
    pub max_completion_length: Option<usize>,
    /// Each prompt+completion sequence, cut by `truncation_mode` when collated.
    pub max_length: Option<usize>,
    pub truncation_mode: TruncationMode,
}

impl Default for PairOptions {
    /// TRL's defaults (512 prompt tokens was v0.28.0's).
    fn default() -> Self {
        Self {
            max_prompt_length: Some(512),
            max_completion_length: None,
            max_length: Some(1024),
            truncation_mode: TruncationMode::KeepStart,
        }
    }
}

impl PairOptions {
    fn check(&self) -> Result<(), DataError> {
        for (name, v) in [
            ("max_prompt_length", self.max_prompt_length),
            ("max_completion_length", self.max_completion_length),
            ("max_length", self.max_length),
        ] {
            if v == Some(0) {
                return Err(DataError::Invalid(format!(
                    "{name} must be at least 1 token"
                )));
            }
        }
        Ok(())
    }

    /// One prompt+completion sequence and its labels (`IGNORE_INDEX` on the prompt), cut to
    /// `max_length`.
    fn sequence(&self, prompt: &[i64], completion: &[i64]) -> (Vec<i64>, Vec<i64>) {
        let mut ids = prompt.to_vec();
        ids.extend(completion);
        let mut labels = vec![IGNORE_INDEX; prompt.len()];
        labels.extend(completion);
        if let Some(max) = self.max_length
            && ids.len() > max
        {
            match self.truncation_mode {
                TruncationMode::KeepStart => {
                    ids.truncate(max);
                    labels.truncate(max);
                }
                TruncationMode::KeepEnd => {
                    let cut = ids.len() - max;
                    ids.drain(..cut);
                    labels.drain(..cut);
                }
            }
        }
        (ids, labels)
    }
}

/// A pair as token ids, truncated by `max_prompt_length` and `max_completion_length`
/// (`max_length` applies when collated, per sequence).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenizedPair {
    pub prompt_ids: Vec<i64>,
    pub chosen_ids: Vec<i64>,
    pub rejected_ids: Vec<i64>,
    pub margin: Option<f64>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct TokenizedPairs {
    pub(crate) pairs: Vec<TokenizedPair>,
    /// Pairs dropped because a completion would have kept no token.
    pub(crate) truncated_away: usize,
}

impl TokenizedPairs {
    /// Drops the pairs whose chosen or rejected sequence is longer than `max` tokens and
    /// returns how many (a reward model's data is filtered, not truncated, as TRL's
    /// `RewardTrainer` does).
    pub(crate) fn drop_longer(&mut self, max: usize) -> usize {
        let before = self.pairs.len();
        self.pairs
            .retain(|p| p.prompt_ids.len() + p.chosen_ids.len().max(p.rejected_ids.len()) <= max);
        before - self.pairs.len()
    }
}

/// The completion's ids: those after the prompt's in the joint encoding, then EOS if asked.
fn completion_ids<T: Encode + ?Sized>(
    tok: &T,
    prompt: &str,
    prompt_ids: &[i64],
    completion: &str,
    eos: bool,
) -> Result<Vec<i64>, TokenizerError> {
    let joint = tok.encode_ids(&format!("{prompt}{completion}"))?;
    let mut ids = match joint.strip_prefix(prompt_ids) {
        Some(rest) => rest.to_vec(),
        None => tok.encode_ids(completion)?,
    };
    if eos
        && let Some(e) = tok.eos_id()
        && ids.last() != Some(&e)
    {
        ids.push(e);
    }
    Ok(ids)
}

impl TokenizedPair {
    /// `None` when a completion would keep no token.
    fn new<T: ChatTemplate + ?Sized>(
        pair: &PreferencePair,
        tok: &T,
        opts: &PairOptions,
    ) -> Result<Option<Self>, String> {
        let text = render(pair, tok)?;
        let err = |e: TokenizerError| e.to_string();
        let mut prompt_ids = tok.encode_ids(&text.prompt).map_err(err)?;
        let mut chosen_ids =
            completion_ids(tok, &text.prompt, &prompt_ids, &text.chosen, text.eos).map_err(err)?;
        let mut rejected_ids =
            completion_ids(tok, &text.prompt, &prompt_ids, &text.rejected, text.eos)
                .map_err(err)?;
        if let Some(max) = opts.max_prompt_length
            && prompt_ids.len() > max
        {
            prompt_ids.drain(..prompt_ids.len() - max);
        }
        if let Some(max) = opts.max_completion_length {
            chosen_ids.truncate(max);
            rejected_ids.truncate(max);
        }
        // Under keep_end a non-empty completion always keeps its last token.
        let prompt_fills = opts.truncation_mode == TruncationMode::KeepStart
            && opts.max_length.is_some_and(|max| prompt_ids.len() >= max);
        if chosen_ids.is_empty() || rejected_ids.is_empty() || prompt_fills {
            return Ok(None);
        }
        Ok(Some(Self {
            prompt_ids,
            chosen_ids,
            rejected_ids,
            margin: pair.margin,
        }))
    }
}

/// Pairs read from a file (or made from rows), with the count of malformed lines skipped.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PairSet {
    pub(crate) pairs: Vec<PreferencePair>,
    /// Where the pairs came from, for messages.
    pub(crate) source: String,
    /// Malformed lines skipped while reading (when the reader was asked to skip them).
    pub(crate) skipped: usize,
    /// For sets joined by [`PairSet::concat`]: each part's source and pair count, in order, so
    /// a message names the file a pair came from. Empty for a set from one source.
    pub(crate) parts: Vec<(String, usize)>,
}

impl PairSet {
    /// One pair per JSONL line. Blank lines are skipped; a line that is not a pair is an error
    /// naming `file:line`, or skipped and counted with `skip_malformed`.
    pub(crate) fn read_jsonl(path: &Path, opts: ReadOptions) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let mut pairs = Vec::new();
        let mut skipped = 0;
        jsonl_lines(path, &shown, |bytes, line| {
            let pair = json_row(bytes, &shown, line).and_then(|row| {
                PreferencePair::from_row(&row).map_err(|msg| DataError::Line {
                    path: shown.clone(),
                    line,
                    msg,
                })
            });
            match pair {
                Ok(p) => pairs.push(p),
                Err(_) if opts.skip_malformed => skipped += 1,
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        Self::finish(pairs, shown, skipped)
    }

    /// Pairs from rows already read (a dataset's); an error names the row.
    pub(crate) fn from_rows(rows: &[Row], source: impl Into<String>) -> Result<Self, DataError> {
        let source = source.into();
        let pairs = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                PreferencePair::from_row(row).map_err(|msg| DataError::Row {
                    source_name: source.clone(),
                    row: i + 1,
                    msg,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::finish(pairs, source, 0)
    }

    fn finish(
        pairs: Vec<PreferencePair>,
        source: String,
        skipped: usize,
    ) -> Result<Self, DataError> {
        if pairs.is_empty() {
            return Err(DataError::Empty { path: source });
        }
        // A batch's margins are all there or all absent.
        let with_margin = pairs.iter().filter(|p| p.margin.is_some()).count();
        if with_margin != 0 && with_margin != pairs.len() {
            return Err(DataError::Invalid(format!(
                "{source}: {with_margin} of {} pairs have a 'margin'; give it on every pair or none",
                pairs.len()
            )));
        }
        Ok(Self {
            pairs,
            source,
            skipped,
            parts: Vec::new(),
        })
    }

    /// Several sets as one, in order (`runner.data.pairs{"a.jsonl", "b.jsonl"}`, as
    /// `datasets.concatenate_datasets` joins TRL's inputs). Margins must still be on every pair
    /// or on none.
    pub(crate) fn concat(sets: Vec<PairSet>) -> Result<Self, DataError> {
        let source = sets
            .iter()
            .map(|s| s.source.as_str())
            .collect::<Vec<_>>()
            .join(" + ");
        let skipped = sets.iter().map(|s| s.skipped).sum();
        let mut parts = Vec::new();
        let mut pairs = Vec::new();
        for set in sets {
            if set.parts.is_empty() {
                parts.push((set.source, set.pairs.len()));
            } else {
                parts.extend(set.parts);
            }
            pairs.extend(set.pairs);
        }
        let mut joined = Self::finish(pairs, source, skipped)?;
        joined.parts = parts;
        Ok(joined)
    }

    /// The source and 1-based row of pair `i`.
    fn origin(&self, i: usize) -> (String, usize) {
        let mut first = 0;
        for (source, n) in &self.parts {
            if i < first + n {
                return (source.clone(), i - first + 1);
            }
            first += n;
        }
        (self.source.clone(), i + 1)
    }

    /// Every pair rendered, tokenized and truncated; pairs left without a completion token are
    /// dropped and counted.
    pub(crate) fn tokenize<T: ChatTemplate + ?Sized>(
        &self,
        tok: &T,
        opts: &PairOptions,
    ) -> Result<TokenizedPairs, DataError> {
        opts.check()?;
        let mut pairs = Vec::with_capacity(self.pairs.len());
        let mut truncated_away = 0;
        for (i, pair) in self.pairs.iter().enumerate() {
            match TokenizedPair::new(pair, tok, opts).map_err(|msg| {
                let (source_name, row) = self.origin(i);
                DataError::Row {
                    source_name,
                    row,
                    msg,
                }
            })? {
                Some(p) => pairs.push(p),
                None => truncated_away += 1,
            }
        }
        Ok(TokenizedPairs {
            pairs,
            truncated_away,
        })
    }
}

/// N pairs as 2N right-padded rows: the N prompt+chosen sequences, then the N
/// prompt+rejected ones. Labels hold completion tokens and `IGNORE_INDEX` on prompt and
/// padding, so summed log-probs cover the completions only.
#[derive(Clone, Debug, PartialEq)]
pub struct PairBatch {
    pub batch: Batch,
    /// One per pair, when the pairs have margins.
    pub margins: Option<Vec<f64>>,
}

impl PairBatch {
    pub fn collate(pairs: &[&TokenizedPair], opts: &PairOptions) -> PairBatch {
        let rows = pairs
            .iter()
            .map(|p| opts.sequence(&p.prompt_ids, &p.chosen_ids))
            .chain(
                pairs
                    .iter()
                    .map(|p| opts.sequence(&p.prompt_ids, &p.rejected_ids)),
            )
            .collect();
        PairBatch {
            batch: Batch::pad(rows, Padding::Right),
            margins: pairs.iter().map(|p| p.margin).collect(),
        }
    }

    pub fn pairs(&self) -> usize {
        self.batch.batch / 2
    }

    /// `k` batches of consecutive pairs (sizes differ by at most one), each with its chosen
    /// rows first, for gradient accumulation. `k` must be between 1 and the number of pairs.
    pub(crate) fn split(&self, k: usize) -> Vec<PairBatch> {
        let n = self.pairs();
        let k = k.clamp(1, n.max(1));
        let seq = self.batch.seq;
        let (base, extra) = (n / k, n % k);
        let mut out = Vec::with_capacity(k);
        let mut first = 0;
        for i in 0..k {
            let m = base + usize::from(i < extra);
            let rows = (first..first + m).chain(n + first..n + first + m);
            let (mut ids, mut labels) = (Vec::new(), Vec::new());
            for r in rows {
                ids.extend_from_slice(&self.batch.input_ids[r * seq..(r + 1) * seq]);
                labels.extend_from_slice(&self.batch.labels[r * seq..(r + 1) * seq]);
            }
            out.push(PairBatch {
                batch: Batch {
                    input_ids: ids,
                    labels,
                    batch: 2 * m,
                    seq,
                    segments: None,
                },
                margins: self.margins.as_ref().map(|v| v[first..first + m].to_vec()),
            });
            first += m;
        }
        out
    }

    /// Each row's length without its right padding: completions end every sequence, so the
    /// last labelled token is the last token.
    pub(crate) fn lengths(&self) -> Vec<usize> {
        let seq = self.batch.seq;
        (0..self.batch.batch)
            .map(|r| {
                let labels = &self.batch.labels[r * seq..(r + 1) * seq];
                labels
                    .iter()
                    .rposition(|&l| l != IGNORE_INDEX)
                    .map_or(0, |i| i + 1)
            })
            .collect()
    }

    /// 1 on completion tokens, 0 on prompt and padding, row-major like the ids.
    #[cfg(test)]
    fn completion_mask(&self) -> Vec<u8> {
        self.batch
            .labels
            .iter()
            .map(|&l| u8::from(l != IGNORE_INDEX))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn row(json: &str) -> Row {
        serde_json::from_str(json).unwrap()
    }

    fn text(s: &str) -> Turns {
        Turns::Text(s.into())
    }

    fn msgs(m: &[(&str, &str)]) -> Turns {
        Turns::Chat(
            m.iter()
                .map(|(r, c)| (r.to_string(), c.to_string()))
                .collect(),
        )
    }

    /// Bytes plus an EOS id (256) and a ChatML-style template, so no model is needed.
    struct ChatBytes;

    const EOS: i64 = 256;

    impl Encode for ChatBytes {
        fn encode_ids(&self, text: &str) -> Result<Vec<i64>, TokenizerError> {
            Ok(ByteTokenizer.encode(text))
        }
        fn eos_id(&self) -> Option<i64> {
            Some(EOS)
        }
    }

    impl ChatTemplate for ChatBytes {
        fn render_chat(
            &self,
            messages: &[(String, String)],
            add_generation_prompt: bool,
        ) -> Result<String, TokenizerError> {
            let mut out: String = messages
                .iter()
                .map(|(r, c)| format!("<|{r}|>{c}<|end|>"))
                .collect();
            if add_generation_prompt {
                out.push_str("<|assistant|>");
            }
            Ok(out)
        }
    }

    fn bytes(s: &str) -> Vec<i64> {
        ByteTokenizer.encode(s)
    }

    fn no_limits() -> PairOptions {
        PairOptions {
            max_prompt_length: None,
            max_completion_length: None,
            max_length: None,
            truncation_mode: TruncationMode::KeepStart,
        }
    }

    fn tokenize_one(pair: PreferencePair, opts: &PairOptions) -> TokenizedPairs {
        PairSet::finish(vec![pair], "mem".into(), 0)
            .unwrap()
            .tokenize(&ByteTokenizer, opts)
            .unwrap()
    }

    fn text_pair(prompt: &str, chosen: &str, rejected: &str) -> PreferencePair {
        PreferencePair {
            prompt: text(prompt),
            chosen: text(chosen),
            rejected: text(rejected),
            margin: None,
        }
    }

    #[test]
    fn plain_text_pairs_get_eos_on_completions() {
        let f = file(
            "{\"prompt\": \"2+2=\", \"chosen\": \"4\", \"rejected\": \"5\", \"margin\": 1.5}\n",
        );
        let set = PairSet::read_jsonl(f.path(), ReadOptions::default()).unwrap();
        assert_eq!(
            set.pairs,
            vec![PreferencePair {
                margin: Some(1.5),
                ..text_pair("2+2=", "4", "5")
            }]
        );
        let t = set.tokenize(&ChatBytes, &PairOptions::default()).unwrap();
        assert_eq!(t.truncated_away, 0);
        assert_eq!(t.pairs[0].prompt_ids, bytes("2+2="));
        assert_eq!(t.pairs[0].chosen_ids, vec![i64::from(b'4'), EOS]);
        assert_eq!(t.pairs[0].rejected_ids, vec![i64::from(b'5'), EOS]);
        // Without an EOS id (bytes) nothing is appended.
        let t = set
            .tokenize(&ByteTokenizer, &PairOptions::default())
            .unwrap();
        assert_eq!(t.pairs[0].chosen_ids, bytes("4"));
    }

    #[test]
    fn conversational_pairs_render_the_prompt_with_the_generation_prompt() {
        let r = row(r#"{"prompt": [{"role": "user", "content": "Sky?"}],
                "chosen": [{"role": "assistant", "content": "Blue"}],
                "rejected": [{"role": "assistant", "content": "Green"}]}"#);
        let pair = PreferencePair::from_row(&r).unwrap();
        assert_eq!(pair.prompt, msgs(&[("user", "Sky?")]));
        let rendered = render(&pair, &ChatBytes).unwrap();
        assert_eq!(
            rendered,
            RenderedPair {
                prompt: "<|user|>Sky?<|end|><|assistant|>".into(),
                chosen: "Blue<|end|>".into(),
                rejected: "Green<|end|>".into(),
                eos: false,
            }
        );
        // The template closes the turn: no EOS id is appended.
        let set = PairSet::from_rows(&[r], "mem").unwrap();
        let t = set.tokenize(&ChatBytes, &PairOptions::default()).unwrap();
        assert_eq!(t.pairs[0].chosen_ids, bytes("Blue<|end|>"));
        assert_eq!(
            t.pairs[0].prompt_ids,
            bytes("<|user|>Sky?<|end|><|assistant|>")
        );
        // Without a chat template the row is an error naming it.
        let err = set
            .tokenize(&Tokenizer::Bytes, &PairOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "mem: row 1: chat template: conversational pairs need a model with a chat template"
            ),
            "{err}"
        );
        // A prompt must end with the user's (or a tool's) message.
        let err = PreferencePair::from_row(&row(
            r#"{"prompt": [{"role": "system", "content": "s"}], "chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}"#,
        ))
        .unwrap_err();
        assert!(err.contains("last message is from 'system'"), "{err}");
        let err = PreferencePair::from_row(&row(
            r#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "a"}], "rejected": "b"}"#,
        ))
        .unwrap_err();
        assert_eq!(err, MIXED);
    }

    #[test]
    fn implicit_prompt_is_the_shared_start_of_texts() {
        let pair = PreferencePair::from_row(&row(
            r#"{"chosen": "The sky is blue.", "rejected": "The sky is green."}"#,
        ))
        .unwrap();
        // The space before the first difference goes to the completions, as TRL does.
        assert_eq!(pair, text_pair("The sky is", " blue.", " green."));
        let p = PreferencePair::from_row(&row(r#"{"chosen": "ab", "rejected": "abc"}"#)).unwrap();
        assert_eq!(p, text_pair("a", "b", "bc"));
        let p = PreferencePair::from_row(&row(r#"{"chosen": "yes", "rejected": "no"}"#)).unwrap();
        assert_eq!(p, text_pair("", "yes", "no"));
        // Offsets are on characters, not bytes.
        let p = PreferencePair::from_row(&row(r#"{"chosen": "é1", "rejected": "é2"}"#)).unwrap();
        assert_eq!(p, text_pair("é", "1", "2"));
    }

    #[test]
    fn implicit_prompt_is_the_shared_leading_messages() {
        let pair = PreferencePair::from_row(&row(
            r#"{"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue"}],
                "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green"}]}"#,
        ))
        .unwrap();
        assert_eq!(
            pair.prompt,
            msgs(&[("user", "Hi"), ("assistant", "Hello"), ("user", "Sky?")])
        );
        assert_eq!(pair.chosen, msgs(&[("assistant", "Blue")]));
        assert_eq!(pair.rejected, msgs(&[("assistant", "Green")]));
        let err = PreferencePair::from_row(&row(
            r#"{"chosen": [{"role": "user", "content": "a"}], "rejected": [{"role": "user", "content": "b"}]}"#,
        ))
        .unwrap_err();
        assert!(err.contains("share no leading messages"), "{err}");
    }

    #[test]
    fn malformed_rows_name_file_and_line_or_are_skipped_and_counted() {
        let f = file(concat!(
            "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
            "\n",
            "{\"prompt\": \"p\", \"chosen\": \"a\"}\n",
            "{\"prompt\": \"p\", \"chosen\": 5, \"rejected\": \"b\"}\n",
            "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\", \"margin\": \"x\"}\n",
            "{\"prompt\": \"p\", \"chosen\": [{\"role\": \"assistant\"}], \"rejected\": \"b\"}\n",
            "not json\n",
            "{\"prompt\": \"q\", \"chosen\": \"c\", \"rejected\": \"d\"}\n",
        ));
        let err = PairSet::read_jsonl(f.path(), ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}:3: no field 'rejected' (fields: chosen, prompt)",
                f.path().display()
            )
        );
        let set = PairSet::read_jsonl(
            f.path(),
            ReadOptions {
                skip_malformed: true,
            },
        )
        .unwrap();
        assert_eq!(set.skipped, 5);
        assert_eq!(
            set.pairs,
            vec![text_pair("p", "a", "b"), text_pair("q", "c", "d")]
        );

        let first_error = |row_text: &str| PreferencePair::from_row(&row(row_text)).unwrap_err();
        assert_eq!(
            first_error(r#"{"prompt": "p", "chosen": 5, "rejected": "b"}"#),
            "field 'chosen' must be a string or a list of {role, content} messages, found a number"
        );
        assert_eq!(
            first_error(r#"{"prompt": "p", "chosen": "a", "rejected": "b", "margin": "x"}"#),
            "field 'margin' must be a number, found a string"
        );
        assert_eq!(
            first_error(r#"{"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "b"}"#),
            "chosen[1] needs string 'role' and 'content'"
        );
        // Margins on some pairs only would leave batches without one.
        let err = PairSet::from_rows(
            &[
                row(r#"{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1}"#),
                row(r#"{"prompt": "p", "chosen": "a", "rejected": "b"}"#),
            ],
            "mem",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("1 of 2 pairs have a 'margin'"),
            "{err}"
        );
    }

    #[test]
    fn joined_sets_keep_order_and_name_each_pairs_own_file() {
        let a = file(concat!(
            "{\"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
            "{\"prompt\": \"q\", \"chosen\": \"c\", \"rejected\": \"d\"}\n",
        ));
        let b = file(concat!(
            "{\"prompt\": \"r\", \"chosen\": \"e\", \"rejected\": \"f\"}\n",
            "{\"prompt\": [{\"role\": \"user\", \"content\": \"s\"}], ",
            "\"chosen\": [{\"role\": \"assistant\", \"content\": \"g\"}], ",
            "\"rejected\": [{\"role\": \"assistant\", \"content\": \"h\"}]}\n",
        ));
        let read = |f: &tempfile::NamedTempFile| {
            PairSet::read_jsonl(f.path(), ReadOptions::default()).unwrap()
        };
        let joined = PairSet::concat(vec![read(&a), read(&b)]).unwrap();
        assert_eq!(joined.pairs.len(), 4);
        assert_eq!(joined.pairs[..2], read(&a).pairs[..]);
        assert_eq!(joined.pairs[2], text_pair("r", "e", "f"));
        assert_eq!(
            joined.source,
            format!("{} + {}", a.path().display(), b.path().display())
        );
        // The conversational pair cannot render without a chat template: the message names
        // its own file and row, not the fourth row of the joined set.
        let err = joined
            .tokenize(&ByteTokenizer, &PairOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("{}: row 2: ", b.path().display())),
            "{err}"
        );
        // Joining joined sets keeps the parts; margins on some parts only are refused.
        let again = PairSet::concat(vec![read(&a), joined]).unwrap();
        assert_eq!(again.origin(3), (a.path().display().to_string(), 2));
        assert_eq!(again.origin(5), (b.path().display().to_string(), 2));
        let with_margin = PairSet::from_rows(
            &[row(
                r#"{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1}"#,
            )],
            "mem",
        )
        .unwrap();
        let err = PairSet::concat(vec![with_margin, read(&a)]).unwrap_err();
        assert!(
            err.to_string().contains("1 of 3 pairs have a 'margin'"),
            "{err}"
        );
    }

    #[test]
    fn max_length_keeps_the_start_or_the_end_at_the_boundaries() {
        // Prompt 4 tokens, chosen 3, rejected 2 (bytes: no EOS).
        let pair = text_pair("abcd", "XYZ", "uv");
        let collate = |opts: &PairOptions| {
            let t = tokenize_one(pair.clone(), opts);
            if t.pairs.is_empty() {
                return None;
            }
            let b = PairBatch::collate(&[&t.pairs[0]], opts).batch;
            let rows: Vec<(Vec<i64>, Vec<i64>)> = (0..2)
                .map(|r| {
                    let span = r * b.seq..(r + 1) * b.seq;
                    (b.input_ids[span.clone()].to_vec(), b.labels[span].to_vec())
                })
                .collect();
            Some(rows)
        };
        let with = |max_length: usize, truncation_mode| PairOptions {
            max_length: Some(max_length),
            truncation_mode,
            ..no_limits()
        };
        let ig = IGNORE_INDEX;
        let x = |s: &str| bytes(s);
        // Exactly fits: nothing cut.
        let rows = collate(&with(7, TruncationMode::KeepStart)).unwrap();
        assert_eq!(rows[0].0, x("abcdXYZ"));
        assert_eq!(rows[1].0, [x("abcduv"), vec![0]].concat());
        // One short: the chosen completion loses its last token.
        let rows = collate(&with(6, TruncationMode::KeepStart)).unwrap();
        assert_eq!(rows[0].0, x("abcdXY"));
        assert_eq!(rows[0].1, [vec![ig; 4], x("XY")].concat());
        assert_eq!(rows[1].0, x("abcduv"));
        // One completion token left each.
        let rows = collate(&with(5, TruncationMode::KeepStart)).unwrap();
        assert_eq!(
            (rows[0].0.clone(), rows[1].0.clone()),
            (x("abcdX"), x("abcdu"))
        );
        // The prompt fills max_length: no completion token would be left, so it is dropped.
        let t = tokenize_one(pair.clone(), &with(4, TruncationMode::KeepStart));
        assert_eq!((t.pairs.len(), t.truncated_away), (0, 1));
        assert!(collate(&with(4, TruncationMode::KeepStart)).is_none());
        // keep_end cuts the prompt's start, per sequence, and keeps the completions whole.
        let rows = collate(&with(4, TruncationMode::KeepEnd)).unwrap();
        assert_eq!(rows[0].0, x("dXYZ"));
        assert_eq!(rows[0].1, [vec![ig], x("XYZ")].concat());
        assert_eq!(rows[1].0, x("cduv"));
        assert_eq!(rows[1].1, [vec![ig; 2], x("uv")].concat());
        // Shorter than a completion: keep_end keeps the completion's end.
        let rows = collate(&with(2, TruncationMode::KeepEnd)).unwrap();
        assert_eq!((rows[0].1.clone(), rows[1].1.clone()), (x("YZ"), x("uv")));
        assert!(
            PairSet::finish(vec![pair], "mem".into(), 0)
                .unwrap()
                .tokenize(&ByteTokenizer, &with(0, TruncationMode::KeepEnd))
                .unwrap_err()
                .to_string()
                .contains("max_length must be at least 1 token")
        );
    }

    #[test]
    fn an_overlong_prompt_keeps_its_end_so_completions_survive() {
        let opts = PairOptions {
            max_prompt_length: Some(3),
            max_completion_length: Some(2),
            max_length: Some(5),
            truncation_mode: TruncationMode::KeepStart,
        };
        let t = tokenize_one(text_pair("0123456789", "abc", "de"), &opts);
        assert_eq!(t.truncated_away, 0);
        let p = &t.pairs[0];
        assert_eq!(
            (
                p.prompt_ids.clone(),
                p.chosen_ids.clone(),
                p.rejected_ids.clone()
            ),
            (bytes("789"), bytes("ab"), bytes("de"))
        );
        let b = PairBatch::collate(&[p], &opts).batch;
        assert_eq!(b.input_ids, [bytes("789ab"), bytes("789de")].concat());
    }

    #[test]
    fn a_completion_truncated_to_nothing_is_skipped_and_counted() {
        let set = PairSet::finish(
            vec![
                text_pair("p", "", "x"),
                text_pair("p", "ok", "fine"),
                text_pair("p", "y", ""),
            ],
            "mem".into(),
            0,
        )
        .unwrap();
        let t = set.tokenize(&ByteTokenizer, &no_limits()).unwrap();
        assert_eq!(t.truncated_away, 2);
        assert_eq!(t.pairs.len(), 1);
        assert_eq!(t.pairs[0].chosen_ids, bytes("ok"));
        // With an EOS id an empty text completion is the EOS alone, which is kept.
        let t = set.tokenize(&ChatBytes, &no_limits()).unwrap();
        assert_eq!((t.pairs.len(), t.truncated_away), (3, 0));
        assert_eq!(t.pairs[0].chosen_ids, vec![EOS]);
    }

    #[test]
    fn collation_puts_chosen_rows_first_and_masks_all_but_completions() {
        let set = PairSet::finish(
            vec![
                PreferencePair {
                    margin: Some(1.0),
                    ..text_pair("abc", "de", "f")
                },
                PreferencePair {
                    margin: Some(0.5),
                    ..text_pair("gh", "i", "jk")
                },
            ],
            "mem".into(),
            0,
        )
        .unwrap();
        let opts = no_limits();
        let t = set.tokenize(&ByteTokenizer, &opts).unwrap();
        let refs: Vec<&TokenizedPair> = t.pairs.iter().collect();
        let b = PairBatch::collate(&refs, &opts);
        assert_eq!((b.batch.batch, b.batch.seq, b.pairs()), (4, 5, 2));
        assert_eq!(b.batch.segments, None);
        let x = |s: &str| bytes(s);
        assert_eq!(
            b.batch.input_ids,
            [
                x("abcde"),
                [x("ghi"), vec![0, 0]].concat(),
                [x("abcf"), vec![0]].concat(),
                [x("ghjk"), vec![0]].concat(),
            ]
            .concat()
        );
        assert_eq!(
            b.completion_mask(),
            vec![
                0, 0, 0, 1, 1, //
                0, 0, 1, 0, 0, //
                0, 0, 0, 1, 0, //
                0, 0, 1, 1, 0, //
            ]
        );
        let ig = IGNORE_INDEX;
        assert_eq!(
            &b.batch.labels[..5],
            &[ig, ig, ig, i64::from(b'd'), i64::from(b'e')]
        );
        assert_eq!(b.margins, Some(vec![1.0, 0.5]));
    }
}
