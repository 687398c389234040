//! Datasets: rows of named fields read from JSONL, CSV or plain text, turned into
//! prompt/response examples by a template (or already in that shape).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rand::seq::SliceRandom;
use serde_json::Value;

use super::row::{
    DataError, Example, ReadOptions, Row, csv_error, json_row, jsonl_lines, rename_row,
};
use super::stream::{LineIndex, RowStep, StreamFormat, StreamedRows};
use super::template::Template;
use super::tokenizer::Tokenizer;
use crate::model::init;

#[derive(Clone, Debug)]
pub struct Dataset {
    /// The rows, in memory; empty for a streamed dataset, whose rows are in `stream`.
    pub rows: Arc<Vec<Row>>,
    pub stream: Option<StreamedRows>,
    /// Where the rows came from, for messages.
    pub source: String,
    /// Malformed lines skipped while reading (when the reader was asked to skip them).
    pub skipped: usize,
    examples: OnceLock<Arc<Vec<Example>>>,
}

/// How a plain-text file is cut into examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TextUnit {
    /// Every non-blank line.
    Line,
    /// Runs of lines separated by blank lines.
    Paragraph,
    /// The whole file as one example.
    File,
}

impl Dataset {
    pub(crate) fn from_rows(rows: Vec<Row>, source: impl Into<String>) -> Self {
        Self {
            rows: Arc::new(rows),
            stream: None,
            source: source.into(),
            skipped: 0,
            examples: OnceLock::new(),
        }
    }

    /// A JSONL or CSV file read row by row as batches need them (see `stream.rs`).
    pub fn stream(path: &Path, format: StreamFormat, opts: ReadOptions) -> Result<Self, DataError> {
        let index = LineIndex::build(path, format, opts)?;
        let skipped = index.skipped;
        let mut ds = Self::from_rows(Vec::new(), path.display().to_string());
        ds.skipped = skipped;
        ds.stream = Some(StreamedRows::new(index));
        Ok(ds)
    }

    fn streamed(&self, rows: StreamedRows, how: &str) -> Dataset {
        let mut ds = Self::from_rows(Vec::new(), format!("{} ({how})", self.source));
        ds.skipped = self.skipped;
        ds.stream = Some(rows);
        ds
    }

    /// Row `i` (0-based): borrowed from memory, or read now from a streamed file.
    pub(crate) fn row(&self, i: usize) -> Result<std::borrow::Cow<'_, Row>, DataError> {
        match &self.stream {
            Some(s) => s.row(i).map(std::borrow::Cow::Owned),
            None => Ok(std::borrow::Cow::Borrowed(&self.rows[i])),
        }
    }

    /// The same rows, all in memory (for Lua's map and filter, which see every row).
    pub(crate) fn in_memory(&self) -> Result<Dataset, DataError> {
        let Some(s) = &self.stream else {
            return Ok(self.clone());
        };
        let rows = (0..s.len())
            .map(|i| s.row(i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ds = Self::from_rows(rows, self.source.clone());
        ds.skipped = self.skipped;
        Ok(ds)
    }

    /// Where batches take their examples from: memory, or the streamed file.
    pub fn example_source(&self) -> Result<ExampleSource, DataError> {
        match &self.stream {
            Some(s) => Ok(ExampleSource::Streamed(s.clone())),
            None => Ok(ExampleSource::Memory(self.examples()?)),
        }
    }

    pub fn new(examples: Vec<Example>, source: impl Into<String>) -> Self {
        let rows = examples.iter().map(Example::to_row).collect();
        let ds = Self::from_rows(rows, source);
        let _ = ds.examples.set(Arc::new(examples));
        ds
    }

    pub(crate) fn len(&self) -> usize {
        self.stream.as_ref().map_or(self.rows.len(), |s| s.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows as examples (converted once); an error names the first row that is not one.
    pub fn examples(&self) -> Result<Arc<Vec<Example>>, DataError> {
        if let Some(e) = self.examples.get() {
            return Ok(e.clone());
        }
        if let Some(s) = &self.stream {
            // Every example at once (an evaluation set): read them all.
            let out = Arc::new(
                (0..s.len())
                    .map(|i| s.example(i))
                    .collect::<Result<Vec<_>, _>>()?,
            );
            let _ = self.examples.set(out.clone());
            return Ok(out);
        }
        let mut out = Vec::with_capacity(self.rows.len());
        for (i, row) in self.rows.iter().enumerate() {
            out.push(Example::from_row(row).map_err(|msg| DataError::Row {
                source_name: self.source.clone(),
                row: i + 1,
                msg,
            })?);
        }
        let out = Arc::new(out);
        let _ = self.examples.set(out.clone());
        Ok(out)
    }

    /// Reads one JSON object per line. Blank lines are skipped; a malformed line is an error
    /// naming `file:line`, or skipped and counted with `skip_malformed`.
    pub fn read_jsonl(path: &Path, opts: ReadOptions) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let mut rows = Vec::new();
        let mut skipped = 0;
        jsonl_lines(path, &shown, |bytes, line| {
            match json_row(bytes, &shown, line) {
                Ok(row) => rows.push(row),
                Err(_) if opts.skip_malformed => skipped += 1,
                Err(e) => return Err(e),
            }
            Ok(())
        })?;
        Self::finish(rows, shown, skipped)
    }

    /// Reads a CSV file with a header row; every field is a string. A row with the wrong
    /// number of fields is an error naming `file:line` (or skipped, as for JSONL).
    pub(crate) fn read_csv(path: &Path, opts: ReadOptions) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let mut reader = csv::ReaderBuilder::new()
            .flexible(false)
            .from_path(path)
            .map_err(|e| csv_error(&shown, e))?;
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| csv_error(&shown, e))?
            .iter()
            .map(String::from)
            .collect();
        if header.is_empty() {
            return Err(DataError::Empty { path: shown });
        }
        let mut rows = Vec::new();
        let mut skipped = 0;
        for record in reader.records() {
            match record {
                Ok(r) => rows.push(
                    header
                        .iter()
                        .cloned()
                        .zip(r.iter().map(|f| Value::String(f.to_string())))
                        .collect(),
                ),
                Err(e) if opts.skip_malformed && !matches!(e.kind(), csv::ErrorKind::Io(_)) => {
                    skipped += 1
                }
                Err(e) => return Err(csv_error(&shown, e)),
            }
        }
        Self::finish(rows, shown, skipped)
    }

    /// Reads a plain-text file into `{"text": ...}` rows, by line, paragraph or whole file.
    pub(crate) fn read_text(path: &Path, unit: TextUnit) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: shown.clone(),
            source,
        })?;
        let pieces: Vec<String> = match unit {
            TextUnit::Line => text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(String::from)
                .collect(),
            TextUnit::Paragraph => {
                let mut out = Vec::new();
                let mut cur: Vec<&str> = Vec::new();
                for line in text.lines().chain(std::iter::once("")) {
                    if line.trim().is_empty() {
                        if !cur.is_empty() {
                            out.push(cur.join("\n"));
                            cur.clear();
                        }
                    } else {
                        cur.push(line);
                    }
                }
                out
            }
            TextUnit::File if text.trim().is_empty() => Vec::new(),
            TextUnit::File => vec![text],
        };
        let rows = pieces
            .into_iter()
            .map(|t| Row::from_iter([("text".to_string(), Value::String(t))]))
            .collect();
        Self::finish(rows, shown, 0)
    }

    fn finish(rows: Vec<Row>, source: String, skipped: usize) -> Result<Self, DataError> {
        if rows.is_empty() {
            return Err(DataError::Empty { path: source });
        }
        let mut ds = Self::from_rows(rows, source);
        ds.skipped = skipped;
        Ok(ds)
    }

    /// Renames fields: each `(to, from)` pair makes `from`'s value available as `to`.
    pub(crate) fn rename(&self, pairs: &[(String, String)]) -> Result<Dataset, DataError> {
        if let Some(s) = &self.stream {
            // Checked on the first row now; the others as they are read.
            let ds = self.streamed(s.with_step(RowStep::Rename(pairs.to_vec())), "fields");
            ds.row(0)?;
            return Ok(ds);
        }
        let mut rows = Vec::with_capacity(self.len());
        for (i, row) in self.rows.iter().enumerate() {
            rows.push(rename_row(row, pairs).map_err(|msg| DataError::Row {
                source_name: self.source.clone(),
                row: i + 1,
                msg,
            })?);
        }
        Ok(self.derived(rows, "fields"))
    }

    /// Applies `template` to every row (as it is read, when streamed); an error names the row.
    pub fn template(
        &self,
        template: &Template,
        tokenizer: Option<&Tokenizer>,
    ) -> Result<Dataset, DataError> {
        let how = match template {
            Template::Alpaca { .. } => "alpaca",
            Template::Chat { .. } => "chat",
            Template::Text { .. } => "text",
        };
        if let Some(s) = &self.stream {
            let ds = self.streamed(
                s.with_step(RowStep::Template(template.clone(), tokenizer.cloned())),
                how,
            );
            ds.row(0)?;
            return Ok(ds);
        }
        let mut rows = Vec::with_capacity(self.len());
        for (i, row) in self.rows.iter().enumerate() {
            rows.push(
                template
                    .apply(row, tokenizer)
                    .map_err(|msg| DataError::Row {
                        source_name: self.source.clone(),
                        row: i + 1,
                        msg,
                    })?,
            );
        }
        Ok(self.derived(rows, how))
    }

    /// A dataset of new rows computed from this one's (templates, maps, filters).
    pub(crate) fn derived(&self, rows: Vec<Row>, how: &str) -> Dataset {
        let mut ds = Dataset::from_rows(rows, format!("{} ({how})", self.source));
        ds.skipped = self.skipped;
        ds
    }

    /// Deterministic shuffle by `seed`, then the first `eval` rows (a fraction in (0, 1)
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
        if let Some(s) = &self.stream {
            return Ok((
                self.streamed(s.select(&order[n_eval..]), "train"),
                self.streamed(s.select(&order[..n_eval]), "eval"),
            ));
        }
        let pick = |idx: &[usize]| {
            idx.iter()
                .map(|&i| self.rows[i].clone())
                .collect::<Vec<_>>()
        };
        Ok((
            Dataset::from_rows(pick(&order[n_eval..]), format!("{} (train)", self.source)),
            Dataset::from_rows(pick(&order[..n_eval]), format!("{} (eval)", self.source)),
        ))
    }
}

/// The examples batches draw from.
#[derive(Clone, Debug)]
pub enum ExampleSource {
    Memory(Arc<Vec<Example>>),
    Streamed(StreamedRows),
}

impl From<Arc<Vec<Example>>> for ExampleSource {
    fn from(v: Arc<Vec<Example>>) -> Self {
        ExampleSource::Memory(v)
    }
}

impl ExampleSource {
    pub(crate) fn len(&self) -> usize {
        match self {
            ExampleSource::Memory(v) => v.len(),
            ExampleSource::Streamed(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, i: usize) -> Result<Example, DataError> {
        match self {
            ExampleSource::Memory(v) => Ok(v[i].clone()),
            ExampleSource::Streamed(s) => s.example(i),
        }
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

    #[test]
    fn malformed_line_names_file_and_line_or_is_skipped_and_counted() {
        let f = file("{\"text\": \"ok\"}\n\n{\"text\": \"broken\n[1, 2]\n{\"text\": \"fine\"}\n");
        let err = Dataset::read_jsonl(f.path(), ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("{}:3: invalid JSON", f.path().display())),
            "{err}"
        );
        let ds = Dataset::read_jsonl(
            f.path(),
            ReadOptions {
                skip_malformed: true,
            },
        )
        .unwrap();
        assert_eq!((ds.len(), ds.skipped), (2, 2));
        assert_eq!(ds.examples().unwrap()[1], Example::text("fine"));
    }

    #[test]
    fn rows_without_example_fields_ask_for_a_template() {
        let f = file("{\"question\": \"q\", \"answer\": \"a\"}\n");
        let ds = Dataset::read_jsonl(f.path(), ReadOptions::default()).unwrap();
        let err = ds.examples().unwrap_err().to_string();
        assert!(
            err.contains("row 1: expected a 'text' field")
                && err.contains("answer, question")
                && err.contains(":template"),
            "{err}"
        );
        let renamed = ds
            .rename(&[
                ("prompt".into(), "question".into()),
                ("response".into(), "answer".into()),
            ])
            .unwrap();
        assert_eq!(renamed.examples().unwrap()[0], Example::pair("q", "a"));
        assert!(
            ds.rename(&[("prompt".into(), "nope".into())])
                .unwrap_err()
                .to_string()
                .contains("no field 'nope'")
        );
    }

    #[test]
    fn csv_and_text_readers() {
        let f = file("prompt,response\n\"Say \"\"hi\"\"\",hi\nx,y,z\n");
        let err = Dataset::read_csv(f.path(), ReadOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(":3: expected 2 fields (as in the header), found 3"),
            "{err}"
        );
        let ds = Dataset::read_csv(
            f.path(),
            ReadOptions {
                skip_malformed: true,
            },
        )
        .unwrap();
        assert_eq!((ds.len(), ds.skipped), (1, 1));
        assert_eq!(ds.examples().unwrap()[0], Example::pair("Say \"hi\"", "hi"));

        let t = file("first line\nsecond\n\n\nthird para\ncontinues\n");
        assert_eq!(
            Dataset::read_text(t.path(), TextUnit::Line).unwrap().len(),
            4
        );
        let paras = Dataset::read_text(t.path(), TextUnit::Paragraph).unwrap();
        assert_eq!(
            paras.examples().unwrap()[1],
            Example::text("third para\ncontinues")
        );
        assert_eq!(
            Dataset::read_text(t.path(), TextUnit::File).unwrap().len(),
            1
        );
        assert!(Dataset::read_text(file("\n \n").path(), TextUnit::Line).is_err());
    }

    #[test]
    fn split_is_deterministic_and_disjoint() {
        let ds = Dataset::new(
            (0..20).map(|i| Example::text(format!("{i}"))).collect(),
            "mem",
        );
        let (tr, ev) = ds.split(0.25, 7).unwrap();
        let (tr2, ev2) = ds.split(0.25, 7).unwrap();
        assert_eq!((tr.len(), ev.len()), (15, 5));
        assert_eq!(ev.rows, ev2.rows);
        assert_eq!(tr.rows, tr2.rows);
        assert!(ev.rows.iter().all(|e| !tr.rows.contains(e)));
        assert!(ds.split(1.5, 0).is_err());
        assert!(ds.split(20.0, 0).is_err());
    }
}
