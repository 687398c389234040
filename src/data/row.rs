//! Rows of named fields and the examples made from them, shared by the in-memory reader
//! (`dataset.rs`) and the streamed one (`stream.rs`), with the errors of reading them.

use serde_json::Value;

/// One row of a dataset: field name -> JSON value (strings from CSV and text files).
pub type Row = serde_json::Map<String, Value>;

/// One training example. Loss is computed on the response only; a plain text example has an
/// empty prompt, so every token is learned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Example {
    pub prompt: String,
    pub response: String,
    /// Append the tokenizer's end-of-sequence token to the response, so the model learns to
    /// stop (instruction data; a chat template closes the turn itself).
    pub eos: bool,
}

impl Example {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            prompt: String::new(),
            response: text.into(),
            eos: false,
        }
    }

    pub fn pair(prompt: impl Into<String>, response: impl Into<String>) -> Self {
        Self {
            prompt: prompt.into(),
            response: response.into(),
            eos: false,
        }
    }

    pub(super) fn to_row(&self) -> Row {
        let mut row = Row::new();
        if self.prompt.is_empty() && !self.eos {
            row.insert("text".into(), Value::String(self.response.clone()));
        } else {
            row.insert("prompt".into(), Value::String(self.prompt.clone()));
            row.insert("response".into(), Value::String(self.response.clone()));
            if self.eos {
                row.insert("eos".into(), Value::Bool(true));
            }
        }
        row
    }

    /// `{"text"}` or `{"prompt", "response"[, "eos"]}`; anything else needs a template.
    pub(crate) fn from_row(row: &Row) -> Result<Example, String> {
        let field = |k: &str| -> Result<Option<String>, String> {
            match row.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(format!("field '{k}' must be a string, found {other}")),
            }
        };
        let eos = match row.get("eos") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(format!("field 'eos' must be true or false, found {other}")),
        };
        if let Some(text) = field("text")? {
            return Ok(Example {
                prompt: String::new(),
                response: text,
                eos,
            });
        }
        match (field("prompt")?, field("response")?) {
            (Some(prompt), Some(response)) => Ok(Example {
                prompt,
                response,
                eos,
            }),
            _ => {
                let keys: Vec<&str> = row.keys().map(String::as_str).collect();
                Err(format!(
                    "expected a 'text' field or 'prompt' and 'response' fields, found [{}] (apply a template, e.g. :template(\"alpaca\"), or :map a function over the rows)",
                    keys.join(", ")
                ))
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    Line {
        path: String,
        line: usize,
        msg: String,
    },
    #[error("{source_name}: row {row}: {msg}")]
    Row {
        source_name: String,
        row: usize,
        msg: String,
    },
    #[error("{path}: no examples")]
    Empty { path: String },
    #[error(
        "split: eval must be a fraction in (0, 1) or a count below the dataset size {n} (got {eval})"
    )]
    Split { eval: f64, n: usize },
    #[error("{0}")]
    Invalid(String),
}

/// How readers treat lines they cannot parse.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ReadOptions {
    /// Skip and count malformed lines instead of stopping at the first.
    pub skip_malformed: bool,
}

/// One JSONL record: a JSON object, or an error naming `file:line`.
pub(crate) fn json_row(bytes: &[u8], shown: &str, line: usize) -> Result<Row, DataError> {
    let err = |msg: String| DataError::Line {
        path: shown.to_string(),
        line,
        msg,
    };
    let text = std::str::from_utf8(bytes).map_err(|_| err("not valid UTF-8".into()))?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(row)) => Ok(row),
        Ok(other) => Err(err(format!(
            "expected a JSON object, found {}",
            kind(&other)
        ))),
        Err(e) => Err(err(format!("invalid JSON: {e}"))),
    }
}

/// Calls `each` with every non-blank line of a JSONL file and its 1-based line number.
pub(crate) fn jsonl_lines(
    path: &std::path::Path,
    shown: &str,
    mut each: impl FnMut(&[u8], usize) -> Result<(), DataError>,
) -> Result<(), DataError> {
    use std::io::BufRead;
    let io = |source| DataError::Io {
        path: shown.to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = std::io::BufReader::new(file);
    let mut buf = Vec::new();
    let mut line = 0;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf).map_err(io)? == 0 {
            return Ok(());
        }
        line += 1;
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        each(&buf, line)?;
    }
}

/// A row with each `(to, from)` field renamed.
pub(crate) fn rename_row(row: &Row, pairs: &[(String, String)]) -> Result<Row, String> {
    let mut out = row.clone();
    for (to, from) in pairs {
        let v = row.get(from).cloned().ok_or_else(|| {
            format!(
                "no field '{from}' (fields: {})",
                row.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        out.remove(from);
        out.insert(to.clone(), v);
    }
    Ok(out)
}

pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn csv_error(path: &str, e: csv::Error) -> DataError {
    let line = e.position().map(|p| p.line() as usize);
    let msg = match e.kind() {
        csv::ErrorKind::UnequalLengths {
            expected_len, len, ..
        } => format!("expected {expected_len} fields (as in the header), found {len}"),
        csv::ErrorKind::Utf8 { .. } => "not valid UTF-8".to_string(),
        _ => e.to_string(),
    };
    match (line, e.into_kind()) {
        (_, csv::ErrorKind::Io(source)) => DataError::Io {
            path: path.to_string(),
            source,
        },
        (Some(line), _) => DataError::Line {
            path: path.to_string(),
            line,
            msg,
        },
        (None, _) => DataError::Invalid(format!("{path}: {msg}")),
    }
}
