//! Streaming datasets: a JSONL or CSV file indexed by the byte offset of each record, its rows
//! parsed only when a batch asks for them. The index costs 16 bytes per row, so a file larger
//! than memory can be trained on. Renaming fields and templates are applied row by row as
//! the rows are read; a selection of rows (a split) is a list of indices.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::row::{DataError, Example, ReadOptions, Row, csv_error, json_row, rename_row};
use super::template::Template;
use super::tokenizer::Tokenizer;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamFormat {
    Jsonl,
    Csv,
}

/// Where one record sits in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    offset: u64,
    len: u32,
    /// 1-based line number, for messages.
    line: u32,
}

/// The records of a file, by position.
pub struct LineIndex {
    path: PathBuf,
    shown: String,
    format: StreamFormat,
    header: Vec<String>,
    spans: Vec<Span>,
    file: File,
    /// Malformed records skipped while indexing.
    pub skipped: usize,
}

impl std::fmt::Debug for LineIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LineIndex({}, {} rows)", self.shown, self.spans.len())
    }
}

impl LineIndex {
    /// Reads the file once, checking every record (a malformed one is an error naming
    /// `file:line`, or skipped and counted with `skip_malformed`) and keeping only where it is.
    pub(crate) fn build(
        path: &Path,
        format: StreamFormat,
        opts: ReadOptions,
    ) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let io = |source| DataError::Io {
            path: shown.clone(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let mut spans = Vec::new();
        let mut skipped = 0;
        let mut header = Vec::new();
        match format {
            StreamFormat::Jsonl => {
                let mut reader = BufReader::new(File::open(path).map_err(io)?);
                let mut buf = Vec::new();
                let (mut offset, mut line) = (0u64, 0u32);
                loop {
                    buf.clear();
                    let n = reader.read_until(b'\n', &mut buf).map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    line += 1;
                    let span = Span {
                        offset,
                        len: n as u32,
                        line,
                    };
                    offset += n as u64;
                    if buf.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match json_row(&buf, &shown, line as usize) {
                        Ok(_) => spans.push(span),
                        Err(_) if opts.skip_malformed => skipped += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            StreamFormat::Csv => {
                let mut reader = csv::ReaderBuilder::new()
                    .flexible(false)
                    .from_path(path)
                    .map_err(|e| csv_error(&shown, e))?;
                header = reader
                    .headers()
                    .map_err(|e| csv_error(&shown, e))?
                    .iter()
                    .map(String::from)
                    .collect();
                let mut record = csv::ByteRecord::new();
                loop {
                    let start = reader.position().clone();
                    match reader.read_byte_record(&mut record) {
                        Ok(false) => break,
                        Ok(true) => {
                            let end = reader.position().byte();
                            // Records must be valid UTF-8 to become rows.
                            if let Err(e) = csv::StringRecord::from_byte_record(record.clone()) {
                                if opts.skip_malformed {
                                    skipped += 1;
                                    continue;
                                }
                                return Err(DataError::Line {
                                    path: shown.clone(),
                                    line: start.line() as usize,
                                    msg: format!("not valid UTF-8 ({e})"),
                                });
                            }
                            spans.push(Span {
                                offset: start.byte(),
                                len: (end - start.byte()) as u32,
                                line: start.line() as u32,
                            });
                        }
                        Err(e)
                            if opts.skip_malformed
                                && !matches!(e.kind(), csv::ErrorKind::Io(_)) =>
                        {
                            skipped += 1
                        }
                        Err(e) => return Err(csv_error(&shown, e)),
                    }
                }
            }
        }
        if spans.is_empty() {
            return Err(DataError::Empty { path: shown });
        }
        Ok(Self {
            path: path.to_path_buf(),
            shown,
            format,
            header,
            spans,
            file,
            skipped,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record `i` (0-based), read and parsed now. The file changing under a running job
    /// shows up here as an error naming the line.
    pub(crate) fn row(&self, i: usize) -> Result<Row, DataError> {
        let span = self.spans[i];
        let mut buf = vec![0u8; span.len as usize];
        self.file
            .read_exact_at(&mut buf, span.offset)
            .map_err(|source| match source.kind() {
                std::io::ErrorKind::UnexpectedEof => DataError::Line {
                    path: self.shown.clone(),
                    line: span.line as usize,
                    msg: "the file changed since it was indexed (it is shorter now)".into(),
                },
                _ => DataError::Io {
                    path: self.shown.clone(),
                    source,
                },
            })?;
        match self.format {
            StreamFormat::Jsonl => json_row(&buf, &self.shown, span.line as usize),
            StreamFormat::Csv => {
                let mut r = csv::ReaderBuilder::new()
                    .has_headers(false)
                    .from_reader(&buf[..]);
                let mut record = csv::StringRecord::new();
                let changed = || DataError::Line {
                    path: self.shown.clone(),
                    line: span.line as usize,
                    msg: "the file changed since it was indexed".into(),
                };
                match r.read_record(&mut record) {
                    Ok(true) if record.len() == self.header.len() => Ok(self
                        .header
                        .iter()
                        .cloned()
                        .zip(record.iter().map(|f| Value::String(f.to_string())))
                        .collect()),
                    Ok(_) => Err(changed()),
                    Err(e) => Err(csv_error(&self.shown, e)),
                }
            }
        }
    }
}

/// A step applied to each row as it is read.
#[derive(Clone)]
pub enum RowStep {
    /// `(to, from)` pairs, as `Dataset::rename`.
    Rename(Vec<(String, String)>),
    Template(Template, Option<Tokenizer>),
}

/// The rows of a streamed dataset: an index, optionally a selection of its rows, and the
/// steps that turn a record into a row.
#[derive(Clone)]
pub struct StreamedRows {
    pub index: Arc<LineIndex>,
    pub select: Option<Arc<Vec<u32>>>,
    pub steps: Vec<RowStep>,
}

impl std::fmt::Debug for StreamedRows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "StreamedRows({:?}, {} rows, {} steps)",
            self.index,
            self.len(),
            self.steps.len()
        )
    }
}

impl StreamedRows {
    pub(crate) fn new(index: LineIndex) -> Self {
        Self {
            index: Arc::new(index),
            select: None,
            steps: Vec::new(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.select.as_ref().map_or(self.index.len(), |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i` of this view (0-based), with every step applied.
    pub(crate) fn row(&self, i: usize) -> Result<Row, DataError> {
        let at = self.select.as_ref().map_or(i, |s| s[i] as usize);
        let mut row = self.index.row(at)?;
        let line = self.index.spans[at].line as usize;
        let err = |msg: String| DataError::Line {
            path: self.index.shown.clone(),
            line,
            msg,
        };
        for step in &self.steps {
            row = match step {
                RowStep::Rename(pairs) => rename_row(&row, pairs).map_err(err)?,
                RowStep::Template(t, tok) => t.apply(&row, tok.as_ref()).map_err(err)?,
            };
        }
        Ok(row)
    }

    pub(crate) fn example(&self, i: usize) -> Result<Example, DataError> {
        let row = self.row(i)?;
        let at = self.select.as_ref().map_or(i, |s| s[i] as usize);
        Example::from_row(&row).map_err(|msg| DataError::Line {
            path: self.index.shown.clone(),
            line: self.index.spans[at].line as usize,
            msg,
        })
    }

    /// The same rows with one more step.
    pub(crate) fn with_step(&self, step: RowStep) -> Self {
        let mut s = self.clone();
        s.steps.push(step);
        s
    }

    /// The rows at these positions of this view.
    pub(crate) fn select(&self, positions: &[usize]) -> Self {
        let picked: Vec<u32> = positions
            .iter()
            .map(|&i| self.select.as_ref().map_or(i as u32, |s| s[i]))
            .collect();
        Self {
            index: self.index.clone(),
            select: Some(Arc::new(picked)),
            steps: self.steps.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batch::Batches;
    use crate::data::{BatchOptions, Dataset, ExampleSource};

    fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn rows(ds: &Dataset) -> Vec<Row> {
        (0..ds.len())
            .map(|i| ds.row(i).unwrap().into_owned())
            .collect()
    }

    const JSONL: &str = "{\"q\": \"one\", \"a\": \"1\"}\n\n{\"q\": \"two\", \"a\": \"2\"}\r\n{\"q\": \"three\", \"a\": \"3\"}\n{\"q\": \"four\", \"a\": \"4\"}";

    #[test]
    fn streamed_rows_equal_the_loaded_ones() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "a.jsonl", JSONL);
        let eager = Dataset::read_jsonl(&p, ReadOptions::default()).unwrap();
        let lazy = Dataset::stream(&p, StreamFormat::Jsonl, ReadOptions::default()).unwrap();
        assert!(lazy.rows.is_empty() && lazy.stream.is_some());
        assert_eq!(lazy.len(), 4);
        assert_eq!(rows(&lazy), rows(&eager));

        // Quoted fields across lines, as the csv reader sees them.
        let c = write(
            &dir,
            "a.csv",
            "q,a\none,\"1\nand more\"\ntwo,2\n\"th,ree\",3\n",
        );
        let eager = Dataset::read_csv(&c, ReadOptions::default()).unwrap();
        let lazy = Dataset::stream(&c, StreamFormat::Csv, ReadOptions::default()).unwrap();
        assert_eq!(lazy.len(), 3);
        assert_eq!(rows(&lazy), rows(&eager));
    }

    #[test]
    fn malformed_records_are_named_or_skipped_while_indexing() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(&dir, "bad.jsonl", "{\"q\": 1}\n[1, 2]\n{\"q\": 2}\n{oops\n");
        let err = Dataset::stream(&p, StreamFormat::Jsonl, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("bad.jsonl:2: expected a JSON object, found an array"),
            "{err}"
        );
        let ds = Dataset::stream(
            &p,
            StreamFormat::Jsonl,
            ReadOptions {
                skip_malformed: true,
            },
        )
        .unwrap();
        assert_eq!((ds.len(), ds.skipped), (2, 2));
        let c = write(&dir, "bad.csv", "q,a\n1,2\n3\n4,5\n");
        let err = Dataset::stream(&c, StreamFormat::Csv, ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.csv:3: expected 2 fields"), "{err}");
        // A row changed on disk after indexing is an error naming its line, not a panic.
        let p = write(&dir, "moving.jsonl", "{\"q\": \"a\"}\n{\"q\": \"b\"}\n");
        let ds = Dataset::stream(&p, StreamFormat::Jsonl, ReadOptions::default()).unwrap();
        std::fs::write(&p, "{\"q\": \"a\"}\n{\"q\": ").unwrap();
        let err = ds.row(1).unwrap_err().to_string();
        assert!(err.contains("moving.jsonl:2:"), "{err}");
    }

    #[test]
    fn renames_templates_splits_and_batches_match_the_loaded_dataset() {
        let dir = tempfile::tempdir().unwrap();
        let text: String = (0..40)
            .map(|i| {
                format!(
                    "{{\"q\": \"question {i} {}\", \"a\": \"answer {i}\"}}\n",
                    "x".repeat(i % 7)
                )
            })
            .collect();
        let p = write(&dir, "qa.jsonl", &text);
        let fields = [
            ("instruction".to_string(), "q".to_string()),
            ("output".to_string(), "a".to_string()),
        ];
        let prepare = |ds: Dataset| {
            ds.rename(&fields)
                .unwrap()
                .template(&Template::alpaca(), None)
                .unwrap()
                .split(0.25, 3)
                .unwrap()
        };
        let (train_e, eval_e) = prepare(Dataset::read_jsonl(&p, ReadOptions::default()).unwrap());
        let (train_s, eval_s) =
            prepare(Dataset::stream(&p, StreamFormat::Jsonl, ReadOptions::default()).unwrap());
        assert!(train_s.stream.is_some() && eval_s.stream.is_some());
        assert_eq!(rows(&train_s), rows(&train_e));
        assert_eq!(eval_s.examples().unwrap(), eval_e.examples().unwrap());
        for group_by_length in [false, true] {
            let opts = BatchOptions {
                size: 4,
                steps: Some(12),
                seed: 5,
                group_by_length,
                skip: 2,
                ..Default::default()
            };
            let a: Vec<_> = Batches::new(train_e.example_source().unwrap(), opts.clone())
                .collect::<Result<_, _>>()
                .unwrap();
            let source = train_s.example_source().unwrap();
            assert!(matches!(source, ExampleSource::Streamed(_)));
            let b: Vec<_> = Batches::new(source, opts)
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(a, b);
        }
        // A template that does not fit is an error at once, naming the first row's line.
        let err = Dataset::stream(&p, StreamFormat::Jsonl, ReadOptions::default())
            .unwrap()
            .template(&Template::alpaca(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("qa.jsonl:1:"), "{err}");
    }
}
