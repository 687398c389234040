//! In-memory datasets of prompt/response examples, read from JSONL or built in code.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use rand::seq::SliceRandom;

use crate::model::init;

/// One training example. Loss is computed on the response only; a plain text example has an
/// empty prompt, so every token is learned.
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub response: String,
}

impl Example {
    pub fn text(text: impl Into<String>) -> Self {
        Self { prompt: String::new(), response: text.into() }
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub examples: Arc<Vec<Example>>,
    /// Where the examples came from, for messages.
    pub source: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {msg}")]
    Line { path: String, line: usize, msg: String },
    #[error("{path}: no examples")]
    Empty { path: String },
    #[error("split: eval must be a fraction in (0, 1) or a count below the dataset size {n} (got {eval})")]
    Split { eval: f64, n: usize },
}

impl Dataset {
    pub fn new(examples: Vec<Example>, source: impl Into<String>) -> Self {
        Self { examples: Arc::new(examples), source: source.into() }
    }

    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Reads one JSON object per line: `{"text": ...}` or `{"prompt": ..., "response": ...}`.
    /// Blank lines are skipped; anything else is an error naming `file:line`.
    pub fn read_jsonl(path: &Path) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let io = |source| DataError::Io { path: shown.clone(), source };
        let file = std::fs::File::open(path).map_err(io)?;
        let mut examples = Vec::new();
        for (i, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(io)?;
            if line.trim().is_empty() {
                continue;
            }
            let err = |msg: String| DataError::Line { path: shown.clone(), line: i + 1, msg };
            let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| err(format!("invalid JSON: {e}")))?;
            examples.push(example_from_json(&value).map_err(err)?);
        }
        if examples.is_empty() {
            return Err(DataError::Empty { path: shown });
        }
        Ok(Self::new(examples, shown))
    }

    /// Deterministic shuffle by `seed`, then the first `eval` examples (a fraction in (0, 1)
    /// or a count ≥ 1) form the eval set and the rest the train set.
    pub fn split(&self, eval: f64, seed: u64) -> Result<(Dataset, Dataset), DataError> {
        let n = self.len();
        let n_eval = if eval > 0.0 && eval < 1.0 {
            ((n as f64 * eval).round() as usize).max(1)
        } else if eval >= 1.0 && eval.fract() == 0.0 {
            eval as usize
        } else {
            return Err(DataError::Split { eval, n });
        };
        if n_eval >= n {
            return Err(DataError::Split { eval, n });
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut init::rng_for(seed, "split"));
        let pick = |idx: &[usize]| idx.iter().map(|&i| self.examples[i].clone()).collect::<Vec<_>>();
        Ok((
            Dataset::new(pick(&order[n_eval..]), format!("{} (train)", self.source)),
            Dataset::new(pick(&order[..n_eval]), format!("{} (eval)", self.source)),
        ))
    }
}

fn example_from_json(value: &serde_json::Value) -> Result<Example, String> {
    let obj = value.as_object().ok_or("expected a JSON object")?;
    let field = |k: &str| -> Result<Option<String>, String> {
        match obj.get(k) {
            None => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(format!("field '{k}' must be a string, found {other}")),
        }
    };
    if let Some(text) = field("text")? {
        return Ok(Example::text(text));
    }
    match (field("prompt")?, field("response")?) {
        (Some(prompt), Some(response)) => Ok(Example { prompt, response }),
        _ => {
            let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
            Err(format!("expected a 'text' field or 'prompt' and 'response' fields, found keys [{}]", keys.join(", ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn malformed_line_names_file_and_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, r#"{{"text": "ok"}}"#).unwrap();
        writeln!(f).unwrap();
        writeln!(f, r#"{{"text": "broken"#).unwrap();
        let err = Dataset::read_jsonl(f.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("{}:3: invalid JSON", f.path().display())), "{err}");
    }

    #[test]
    fn wrong_fields_are_named() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, r#"{{"question": "q", "answer": "a"}}"#).unwrap();
        let err = Dataset::read_jsonl(f.path()).unwrap_err().to_string();
        assert!(err.contains(":1: expected a 'text' field") && err.contains("answer, question"), "{err}");
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let ds = Dataset::new((0..20).map(|i| Example::text(format!("{i}"))).collect(), "mem");
        let (tr, ev) = ds.split(0.25, 7).unwrap();
        let (tr2, ev2) = ds.split(0.25, 7).unwrap();
        assert_eq!((tr.len(), ev.len()), (15, 5));
        assert_eq!(ev.examples, ev2.examples);
        assert_eq!(tr.examples, tr2.examples);
        assert!(ev.examples.iter().all(|e| !tr.examples.contains(e)));
        assert!(ds.split(1.5, 0).is_err());
        assert!(ds.split(20.0, 0).is_err());
    }
}
