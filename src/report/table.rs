//! Pivot tables: one row per value of the row parameter(s), one column per value of the
//! column parameter, each cell aggregating the trials that share those values.

use std::fmt::Write as _;
use std::str::FromStr;

use anyhow::{Result, bail};

use super::{Column, SweepResults, ordered_values, parse_num};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Agg {
    #[default]
    Mean,
    Min,
    Max,
    /// Trials with a non-empty value.
    Count,
    /// The value of the cell's last trial in file order (text allowed).
    Last,
    /// The mean and the sample standard deviation, `m ± s` (seeds of one setting).
    MeanStd,
}

impl FromStr for Agg {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "mean" => Agg::Mean,
            "min" => Agg::Min,
            "max" => Agg::Max,
            "count" => Agg::Count,
            "last" => Agg::Last,
            "mean_std" | "mean±std" => Agg::MeanStd,
            _ => {
                bail!("unknown aggregation {s:?}; expected mean, mean_std, min, max, count or last")
            }
        })
    }
}

impl Agg {
    fn name(self) -> &'static str {
        match self {
            Agg::Mean => "mean",
            Agg::Min => "min",
            Agg::Max => "max",
            Agg::Count => "count",
            Agg::Last => "last",
            Agg::MeanStd => "mean ± sample std",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct PivotSpec {
    /// One or more columns of trials.csv whose values make the table's rows.
    pub rows: Vec<String>,
    /// The column whose values make the table's columns; `None` gives a single value column.
    pub cols: Option<String>,
    /// The column aggregated into each cell, e.g. `eval_loss`.
    pub value: String,
    pub agg: Agg,
    /// Fixed decimals for non-integer numbers; `None` means 4 significant digits.
    pub precision: Option<usize>,
    /// Count trials whose status is not `ok` too.
    pub include_failed: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum CellValue {
    Num {
        x: f64,
        integral: bool,
    },
    /// `std` is the sample std, None for one trial (which has none).
    MeanStd {
        mean: f64,
        std: Option<f64>,
    },
    Text(String),
}

#[derive(Clone, Debug, PartialEq)]
struct Cell {
    value: CellValue,
    /// Trials aggregated into this cell.
    n: usize,
}

/// A computed pivot table; render it with [`Pivot::to_markdown`] or [`Pivot::to_csv`].
#[derive(Clone, Debug, PartialEq)]
pub struct Pivot {
    row_names: Vec<String>,
    col_name: Option<String>,
    value: String,
    agg: Agg,
    precision: Option<usize>,
    row_keys: Vec<Vec<String>>,
    col_keys: Vec<String>,
    cells: Vec<Vec<Option<Cell>>>,
}

pub fn pivot(results: &SweepResults, spec: &PivotSpec) -> Result<Pivot> {
    if spec.rows.is_empty() {
        bail!(
            "a pivot needs at least one row column; available: {}",
            results.columns().join(", ")
        );
    }
    let row_cols: Vec<Column> = spec
        .rows
        .iter()
        .map(|r| results.column(r))
        .collect::<Result<_>>()?;
    let col_col = spec
        .cols
        .as_deref()
        .map(|c| results.column(c))
        .transpose()?;
    let value_col = results.column(&spec.value)?;
    let trials: Vec<_> = results.selected(spec.include_failed).collect();

    // Each row dimension is ordered on its own; rows are the combinations that occur.
    let dim_orders: Vec<Vec<String>> = row_cols
        .iter()
        .map(|&c| {
            ordered_values(
                trials
                    .iter()
                    .map(|t| results.cell(t, c))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|s| s.as_ref()),
            )
        })
        .collect();
    let rank = |dim: usize, v: &str| {
        dim_orders[dim]
            .iter()
            .position(|o| o == v)
            .unwrap_or(usize::MAX)
    };
    let mut row_keys: Vec<Vec<String>> = Vec::new();
    for t in &trials {
        let key: Vec<String> = row_cols
            .iter()
            .map(|&c| results.cell(t, c).into_owned())
            .collect();
        if key.iter().all(|k| k.is_empty()) || row_keys.contains(&key) {
            continue;
        }
        row_keys.push(key);
    }
    row_keys.sort_by_key(|k| {
        k.iter()
            .enumerate()
            .map(|(d, v)| rank(d, v))
            .collect::<Vec<_>>()
    });

    let col_keys = match col_col {
        Some(c) => ordered_values(
            trials
                .iter()
                .map(|t| results.cell(t, c))
                .collect::<Vec<_>>()
                .iter()
                .map(|s| s.as_ref()),
        ),
        None => vec![spec.value.clone()],
    };

    let mut cells = vec![vec![None; col_keys.len()]; row_keys.len()];
    for (ri, key) in row_keys.iter().enumerate() {
        for (ci, col_key) in col_keys.iter().enumerate() {
            let raw: Vec<String> = trials
                .iter()
                .filter(|t| {
                    row_cols
                        .iter()
                        .zip(key)
                        .all(|(&c, k)| results.cell(t, c) == k.as_str())
                })
                .filter(|t| col_col.is_none_or(|c| results.cell(t, c) == col_key.as_str()))
                .map(|t| results.cell(t, value_col).into_owned())
                .filter(|v| !v.is_empty())
                .collect();
            cells[ri][ci] = aggregate(&raw, spec.agg, &spec.value)?;
        }
    }
    Ok(Pivot {
        row_names: spec.rows.clone(),
        col_name: spec.cols.clone(),
        value: spec.value.clone(),
        agg: spec.agg,
        precision: spec.precision,
        row_keys,
        col_keys,
        cells,
    })
}

fn aggregate(raw: &[String], agg: Agg, value: &str) -> Result<Option<Cell>> {
    let Some(last) = raw.last() else {
        return Ok(None);
    };
    let n = raw.len();
    let integral = raw.iter().all(|s| s.trim().parse::<i64>().is_ok());
    let cell = match agg {
        Agg::Count => CellValue::Num {
            x: n as f64,
            integral: true,
        },
        Agg::Last => match parse_num(last) {
            Some(x) => CellValue::Num { x, integral },
            None => CellValue::Text(last.clone()),
        },
        Agg::Mean | Agg::Min | Agg::Max | Agg::MeanStd => {
            let mut xs = Vec::with_capacity(n);
            for s in raw {
                match parse_num(s) {
                    Some(x) => xs.push(x),
                    None => bail!(
                        "column {value:?} has non-numeric value {s:?}; use the last or count aggregation"
                    ),
                }
            }
            let mean = xs.iter().sum::<f64>() / n as f64;
            if agg == Agg::MeanStd {
                let std = (n > 1).then(|| {
                    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
                    var.sqrt()
                });
                return Ok(Some(Cell {
                    value: CellValue::MeanStd { mean, std },
                    n,
                }));
            }
            let x = match agg {
                Agg::Mean => mean,
                Agg::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
                _ => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            };
            CellValue::Num {
                x,
                integral: integral && x.fract() == 0.0,
            }
        }
    };
    Ok(Some(Cell { value: cell, n }))
}

/// Integers as integers; other numbers to `precision` decimals, or 4 significant digits
/// (scientific outside 1e-4..1e6, where fixed notation would be unreadable).
pub(crate) fn format_number(x: f64, integral: bool, precision: Option<usize>) -> String {
    if integral && x.abs() < 1e15 {
        return format!("{}", x as i64);
    }
    if let Some(p) = precision {
        return format!("{x:.p$}");
    }
    if x == 0.0 || !x.is_finite() {
        return format!("{x}");
    }
    let mag = x.abs().log10().floor() as i32;
    if !(-4..6).contains(&mag) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - mag).max(0) as usize;
    format!("{x:.decimals$}")
}

impl Pivot {
    fn cell_text(&self, cell: &Option<Cell>) -> Option<String> {
        cell.as_ref().map(|c| match &c.value {
            CellValue::Num { x, integral } => format_number(*x, *integral, self.precision),
            CellValue::MeanStd { mean, std } => format!(
                "{} ± {}",
                format_number(*mean, false, self.precision),
                std.map_or("–".into(), |s| format_number(s, false, self.precision))
            ),
            CellValue::Text(s) => s.clone(),
        })
    }

    fn n_range(&self) -> (usize, usize) {
        let ns = self.cells.iter().flatten().flatten().map(|c| c.n);
        (ns.clone().min().unwrap_or(0), ns.max().unwrap_or(0))
    }

    /// The line under the Markdown table: what the columns and cells are, and how many
    /// trials were aggregated when that is more than one.
    fn note(&self) -> Option<String> {
        let (lo, hi) = self.n_range();
        let n = if lo == hi {
            format!("n = {hi}")
        } else {
            format!("n = {lo}–{hi}")
        };
        let how = match self.agg {
            Agg::Mean | Agg::Min | Agg::Max | Agg::MeanStd if hi > 1 => {
                Some(format!("{} of {n} trials per cell", self.agg.name()))
            }
            Agg::Last if hi > 1 => Some(format!("last of {n} trials per cell")),
            Agg::Count => Some("count of trials per cell".to_string()),
            _ => None,
        };
        match (&self.col_name, how) {
            (Some(c), Some(h)) => Some(format!("Columns: {c}. Cells: {}, {h}.", self.value)),
            (Some(c), None) => Some(format!("Columns: {c}. Cells: {}.", self.value)),
            (None, Some(h)) => Some(format!("{}: {h}.", self.value)),
            (None, None) => None,
        }
    }

    pub fn to_markdown(&self) -> String {
        let esc = |s: &str| s.replace('|', "\\|").replace('\n', " ");
        let mut header: Vec<String> = self.row_names.iter().map(|s| esc(s)).collect();
        header.extend(self.col_keys.iter().map(|s| esc(s)));
        let mut align: Vec<&str> = (0..self.row_names.len())
            .map(|d| {
                if self.row_keys.iter().all(|k| parse_num(&k[d]).is_some()) {
                    "---:"
                } else {
                    "---"
                }
            })
            .collect();
        align.extend(self.col_keys.iter().map(|_| "---:"));
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let _ = writeln!(out, "|{}|", align.join("|"));
        for (key, row) in self.row_keys.iter().zip(&self.cells) {
            let mut cells: Vec<String> = key
                .iter()
                .map(|s| if s.is_empty() { "–".into() } else { esc(s) })
                .collect();
            cells.extend(row.iter().map(|c| {
                self.cell_text(c)
                    .map(|s| esc(&s))
                    .unwrap_or_else(|| "–".into())
            }));
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        if let Some(note) = self.note() {
            let _ = write!(out, "\n{note}\n");
        }
        out
    }

    /// The same table as CSV (missing cells empty, numbers formatted as in Markdown).
    pub fn to_csv(&self) -> String {
        let mut w = csv::Writer::from_writer(Vec::new());
        let mut header = self.row_names.clone();
        header.extend(self.col_keys.iter().cloned());
        w.write_record(&header).expect("writing to memory");
        for (key, row) in self.row_keys.iter().zip(&self.cells) {
            let mut rec = key.clone();
            rec.extend(row.iter().map(|c| self.cell_text(c).unwrap_or_default()));
            w.write_record(&rec).expect("writing to memory");
        }
        String::from_utf8(w.into_inner().expect("writing to memory")).expect("CSV of UTF-8 strings")
    }

    /// The same table for the live page: `header`, `rows` of cell texts (`null` where no trial
    /// falls), the number of row-label columns, the note and the Markdown.
    pub fn to_json(&self) -> serde_json::Value {
        let mut header = self.row_names.clone();
        header.extend(self.col_keys.iter().cloned());
        let rows: Vec<Vec<Option<String>>> = self
            .row_keys
            .iter()
            .zip(&self.cells)
            .map(|(key, row)| {
                key.iter()
                    .map(|k| Some(k.clone()))
                    .chain(row.iter().map(|c| self.cell_text(c)))
                    .collect()
            })
            .collect();
        serde_json::json!({
            "header": header,
            "label_columns": self.row_names.len(),
            "rows": rows,
            "note": self.note(),
            "markdown": self.to_markdown(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{TRIALS, fixture};
    use super::*;

    fn load() -> (tempfile::TempDir, SweepResults) {
        let (tmp, dir) = fixture(TRIALS, None);
        let r = SweepResults::load(&dir).unwrap();
        (tmp, r)
    }

    fn spec(rows: &[&str], cols: Option<&str>, value: &str) -> PivotSpec {
        PivotSpec {
            rows: rows.iter().map(|s| s.to_string()).collect(),
            cols: cols.map(str::to_string),
            value: value.into(),
            ..Default::default()
        }
    }

    #[test]
    fn pivot_markdown_exact_with_mean_of_n() {
        let (_tmp, r) = load();
        let md = pivot(&r, &spec(&["rank"], Some("targets"), "eval_loss"))
            .unwrap()
            .to_markdown();
        // rank is numeric so ascending; targets in first-seen order; a6 failed so is left out;
        // rank=4 targets=qv holds a1 and a5: (3.5 + 3.25) / 2.
        let expected = "\
| rank | qv | all |
|---:|---:|---:|
| 1 | 3.800 | 2.900 |
| 4 | 3.375 | 2.500 |

Columns: targets. Cells: eval_loss, mean of n = 1–2 trials per cell.
";
        assert_eq!(md, expected);
    }

    #[test]
    fn mean_and_sample_std_per_cell() {
        let (_tmp, r) = load();
        let s = PivotSpec {
            agg: Agg::MeanStd,
            precision: Some(3),
            ..spec(&["rank"], Some("targets"), "eval_loss")
        };
        let md = pivot(&r, &s).unwrap().to_markdown();
        // rank=4 targets=qv: 3.5 and 3.25, mean 3.375, sample std 0.25/√2 = 0.177; one trial
        // has no sample std.
        assert!(md.contains("| 4 | 3.375 ± 0.177 | 2.500 ± – |"), "{md}");
        assert!(
            md.contains("mean ± sample std of n = 1–2 trials per cell"),
            "{md}"
        );
        assert_eq!("mean_std".parse::<Agg>().unwrap(), Agg::MeanStd);
    }

    #[test]
    fn pivot_single_value_column_and_csv() {
        let (_tmp, r) = load();
        let p = pivot(&r, &spec(&["targets", "rank"], None, "peak_mem_mb")).unwrap();
        let expected = "\
| targets | rank | peak_mem_mb |
|---|---:|---:|
| qv | 1 | 31 |
| qv | 4 | 31 |
| all | 1 | 41 |
| all | 4 | 40 |

peak_mem_mb: mean of n = 1–2 trials per cell.
";
        assert_eq!(p.to_markdown(), expected);
        assert_eq!(
            p.to_csv(),
            "targets,rank,peak_mem_mb\nqv,1,31\nqv,4,31\nall,1,41\nall,4,40\n"
        );
    }

    #[test]
    fn missing_cells_failed_trials_and_other_aggs() {
        let (_tmp, r) = load();
        let mut s = spec(&["rank"], Some("status"), "eval_loss");
        s.include_failed = true;
        s.agg = Agg::Count;
        let p = pivot(&r, &s).unwrap();
        // The failed trial has no eval_loss, so its cell is missing.
        assert!(
            p.to_markdown().contains("| 1 | 2 | – |"),
            "{}",
            p.to_markdown()
        );
        assert_eq!(p.to_csv().lines().nth(1), Some("1,2,"));
        let mut s = spec(&["rank"], None, "eval_loss");
        s.agg = Agg::Min;
        s.precision = Some(2);
        assert_eq!(
            pivot(&r, &s).unwrap().to_csv(),
            "rank,eval_loss\n1,2.90\n4,2.50\n"
        );
    }

    #[test]
    fn unknown_column_lists_available() {
        let (_tmp, r) = load();
        let err = pivot(&r, &spec(&["rnak"], None, "eval_loss"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown column \"rnak\" in sweep toy; available: trial_id, rank, targets, status, seconds, eval_loss, peak_mem_mb, error"
        );
        assert!(pivot(&r, &spec(&["rank"], Some("x"), "eval_loss")).is_err());
        assert!(pivot(&r, &spec(&["rank"], None, "y")).is_err());
    }

    #[test]
    fn number_formatting() {
        assert_eq!(format_number(3.814046491656387, false, None), "3.814");
        assert_eq!(format_number(45.3335098883533, false, None), "45.33");
        assert_eq!(format_number(0.00005, false, None), "5.000e-5");
        assert_eq!(format_number(0.001, false, None), "0.001000");
        assert_eq!(format_number(134515008.0, true, None), "134515008");
        assert_eq!(format_number(2.0, false, Some(1)), "2.0");
    }
}
