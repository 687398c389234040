//! Scoring generated answers: greedy generation for each example's prompt, compared with its
//! reference response by exact match (SQuAD normalisation) and ROUGE-L.

use burn::prelude::*;

use super::metrics::{exact_match, rouge_l};
use crate::data::Example;
use crate::data::tokenizer::{Tokenizer, TokenizerError};
use crate::generate::{GenerateError, GenerateOptions, generate};
use crate::model::Llama;

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GenEvalOptions {
    pub max_new_tokens: usize,
    /// Score at most this many examples (the first ones, in order).
    pub limit: Option<usize>,
    /// The prediction ends before the first of these strings (besides the EOS token).
    pub stop: Vec<String>,
}

impl Default for GenEvalOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            limit: None,
            stop: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Prediction {
    pub prompt: String,
    pub reference: String,
    pub prediction: String,
    pub exact_match: bool,
    pub rouge_l: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct GenEvalResult {
    /// Fraction of exact matches.
    pub exact_match: f64,
    /// Mean ROUGE-L F-measure.
    pub rouge_l: f64,
    pub predictions: Vec<Prediction>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum GenEvalError {
    #[error("no examples to score")]
    Empty,
    #[error("example {index}: {source}")]
    Tokenizer {
        index: usize,
        source: TokenizerError,
    },
    #[error("example {index}: {source}")]
    Generate { index: usize, source: GenerateError },
}

/// The generated text, cut at the first stop string.
fn cut(text: &str, stop: &[String]) -> String {
    let end = stop
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min()
        .unwrap_or(text.len());
    text[..end].trim().to_string()
}

/// Scores every example (up to `opts.limit`); `after_each` runs after each generation (the
/// Lua layer releases the autodiff graph's leftovers there).
pub(crate) fn evaluate_generation<B: Backend>(
    model: &Llama<B>,
    tok: &Tokenizer,
    examples: &[Example],
    opts: &GenEvalOptions,
    mut after_each: impl FnMut(),
) -> Result<GenEvalResult, GenEvalError> {
    let n = opts.limit.map_or(examples.len(), |l| l.min(examples.len()));
    if n == 0 {
        return Err(GenEvalError::Empty);
    }
    let model = model.detached();
    let generation = GenerateOptions {
        max_new_tokens: opts.max_new_tokens,
        stop: tok.eos().into_iter().collect(),
        ..Default::default()
    };
    let mut predictions = Vec::with_capacity(n);
    for (index, ex) in examples[..n].iter().enumerate() {
        let prompt = tok
            .encode(&ex.prompt)
            .map_err(|source| GenEvalError::Tokenizer {
                index: index + 1,
                source,
            })?;
        let out =
            generate(&model, &prompt, &generation).map_err(|source| GenEvalError::Generate {
                index: index + 1,
                source,
            })?;
        let text = tok
            .decode(&out, true)
            .map_err(|source| GenEvalError::Tokenizer {
                index: index + 1,
                source,
            })?;
        after_each();
        let prediction = cut(&text, &opts.stop);
        let reference = ex.response.trim().to_string();
        predictions.push(Prediction {
            exact_match: exact_match(&reference, &prediction),
            rouge_l: rouge_l(&reference, &prediction).fmeasure,
            prompt: ex.prompt.clone(),
            reference,
            prediction,
        });
    }
    let count = predictions.len() as f64;
    Ok(GenEvalResult {
        exact_match: predictions.iter().filter(|p| p.exact_match).count() as f64 / count,
        rouge_l: predictions.iter().map(|p| p.rouge_l).sum::<f64>() / count,
        predictions,
    })
}

/// Stops training when a metric has not improved by `min_delta` for `patience` evaluations.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct EarlyStopping {
    pub patience: usize,
    pub min_delta: f64,
    /// Lower is better (a loss) or higher is better (an accuracy).
    pub minimize: bool,
    pub best: Option<f64>,
    pub bad_evals: usize,
}

impl EarlyStopping {
    pub(crate) fn new(patience: usize, min_delta: f64, minimize: bool) -> Self {
        Self {
            patience: patience.max(1),
            min_delta: min_delta.abs(),
            minimize,
            best: None,
            bad_evals: 0,
        }
    }

    /// Records one evaluation; true when training should stop. A non-finite value never
    /// counts as an improvement.
    pub(crate) fn update(&mut self, value: f64) -> bool {
        let improved = value.is_finite()
            && match self.best {
                None => true,
                Some(best) if self.minimize => value < best - self.min_delta,
                Some(best) => value > best + self.min_delta,
            };
        if improved {
            self.best = Some(value);
            self.bad_evals = 0;
        } else {
            self.bad_evals += 1;
        }
        self.bad_evals >= self.patience
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_stopping_counts_evaluations_without_improvement() {
        let mut s = EarlyStopping::new(2, 0.01, true);
        assert!(!s.update(2.0));
        assert!(!s.update(1.5));
        assert!(!s.update(1.495), "within min_delta: one bad evaluation");
        assert!(
            s.update(f64::NAN),
            "NaN is not an improvement: the second bad one stops"
        );
        assert_eq!(s.best, Some(1.5));
        let mut up = EarlyStopping::new(1, 0.0, false);
        assert!(!up.update(0.2));
        assert!(!up.update(0.3));
        assert!(up.update(0.3));
    }

    #[test]
    fn predictions_are_cut_at_stop_strings() {
        assert_eq!(cut(" Paris\nQ: next", &["\n".into()]), "Paris");
        assert_eq!(cut("abc", &[]), "abc");
        assert_eq!(cut("x###y\nz", &["\n".into(), "###".into()]), "x");
    }
}
