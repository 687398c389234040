//! Figures for a sweep, each written as PNG and SVG: training curves from steps.csv, and a
//! metric against a parameter from trials.csv.
//!
//! Text is drawn with Noto Sans embedded in the binary (the `ttf-noto-sans` crate) through
//! plotters' `ab_glyph` feature, so no system fonts or fontconfig are needed.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::table::format_number;
use super::{Column, SweepResults, ordered_values, parse_num};
use crate::sweep::TrialRecord;
use crate::util::WriteStep;

/// Pixel size of the PNG (and the SVG's view box).
pub(crate) const WIDTH: u32 = 1200;
pub(crate) const HEIGHT: u32 = 720;
const FONT: &str = "sans-serif";
// Font sizes in plotters' units (the SVG gets them divided by 1.24).
const TITLE_PX: f64 = 30.0;
const DESC_PX: f64 = 24.0;
const TICK_PX: f64 = 20.0;
const LEGEND_PX: f64 = 20.0;
const VALUE_PX: f64 = 17.0;
/// Line height of wrapped category labels and of legend rows.
const LINE_PX: i32 = 22;
const LEGEND_ROW_PX: i32 = 30;
const MAX_LABEL_LINES: usize = 4;

#[derive(Clone, Debug, PartialEq)]
pub struct PlotOptions {
    /// Column for the x axis of the metric plot; default: the first numeric parameter.
    pub x: Option<String>,
    /// Metric for its y axis; default: `eval_loss`, else the first other metric.
    pub y: Option<String>,
    /// Column whose values make one series each; default: the other parameters combined.
    pub series: Option<String>,
    /// Key of steps.csv for the training curves.
    pub step_metric: String,
    /// Plot trials whose status is not `ok` too.
    pub include_failed: bool,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self {
            x: None,
            y: None,
            series: None,
            step_metric: "loss".into(),
            include_failed: false,
        }
    }
}

/// Writes `<metric>_by_step.{png,svg}` (when steps.csv logged the metric) and
/// `<y>_by_<x>.{png,svg}` (when the sweep has a parameter and a numeric metric) into
/// `out_dir`, and returns the paths written.
pub fn plot_sweep(
    results: &SweepResults,
    out_dir: &Path,
    opts: &PlotOptions,
) -> Result<Vec<PathBuf>> {
    register_font()?;
    std::fs::create_dir_all(out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))?;
    let mut written = Vec::new();
    if let Some(fig) = step_figure(results, opts) {
        written.extend(render(
            &fig,
            out_dir,
            &format!("{}_by_step", file_part(&opts.step_metric)),
        )?);
    }
    if let Some((fig, x, y)) = metric_figure(results, opts)? {
        written.extend(render(
            &fig,
            out_dir,
            &format!("{}_by_{}", file_part(&y), file_part(&x)),
        )?);
    }
    Ok(written)
}

fn register_font() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    // Bold and italic requests fall back to this one face.
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, ttf_noto_sans::REGULAR).is_ok()
    });
    if ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded Noto Sans font failed to load"))
    }
}

fn file_part(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// What to draw, independent of the backend.

enum XAxis {
    Linear,
    /// Linear, with ticks at the data's own x values (a sweep's few settings).
    Values(Vec<f64>),
    /// Points hold log_base(x); ticks sit at the data's own x values (few of them) or at
    /// powers of the base.
    Log {
        base: f64,
        xs: Vec<f64>,
    },
    /// Points hold the category index.
    Categories(Vec<String>),
}

struct Series {
    label: Option<String>,
    points: Vec<(f64, f64)>,
    color: RGBColor,
    dashed: bool,
}

impl Series {
    /// The `i`th series of the palette.
    fn nth(i: usize, label: Option<String>, points: Vec<(f64, f64)>) -> Self {
        Self {
            label,
            points,
            color: PALETTE[i % PALETTE.len()],
            dashed: (i / PALETTE.len()) % 2 == 1,
        }
    }
}

struct Figure {
    title: String,
    x_desc: String,
    y_desc: String,
    x: XAxis,
    series: Vec<Series>,
}

fn step_figure(results: &SweepResults, opts: &PlotOptions) -> Option<Figure> {
    let key = results
        .step_keys
        .iter()
        .position(|k| *k == opts.step_metric)?;
    let trials: Vec<&TrialRecord> = results
        .selected(opts.include_failed)
        .filter(|t| {
            results
                .steps
                .iter()
                .any(|s| s.trial_id == t.trial_id && s.values[key].is_some())
        })
        .collect();
    let orders: Vec<Vec<String>> = (0..results.params.len())
        .map(|i| {
            let cells: Vec<_> = trials
                .iter()
                .map(|t| results.cell(t, Column::Param(i)))
                .collect();
            ordered_values(cells.iter().map(|c| c.as_ref()))
        })
        .collect();
    let rank = |i: usize, t: &TrialRecord| {
        let cell = results.cell(t, Column::Param(i));
        orders[i]
            .iter()
            .position(|o| *o == cell)
            .unwrap_or(usize::MAX)
    };

    // Too many curves for distinct colours: one hue per combination of the other parameters,
    // faded by the x parameter (light = small), e.g. colour by targets, shade by rank.
    let shade_by = default_x(results, &trials)
        .and_then(|x| results.params.iter().position(|p| *p == x))
        .filter(|_| results.params.len() >= 2 && trials.len() > PALETTE.len());
    let hue_key = |t: &TrialRecord| -> Vec<usize> {
        (0..results.params.len())
            .filter(|&i| Some(i) != shade_by)
            .map(|i| rank(i, t))
            .collect()
    };
    let mut hues: Vec<Vec<usize>> = trials.iter().map(|t| hue_key(t)).collect();
    hues.sort();
    hues.dedup();

    // Legend in hue-then-shade order, or in parameter order (numeric ascending where
    // numeric); either way not in run order.
    let mut ordered: Vec<(Vec<usize>, &TrialRecord)> = trials
        .iter()
        .map(|t| match shade_by {
            Some(x) => ([hue_key(t), vec![rank(x, t)]].concat(), *t),
            None => ((0..results.params.len()).map(|p| rank(p, t)).collect(), *t),
        })
        .collect();
    ordered.sort_by(|a, b| a.0.cmp(&b.0));
    let series: Vec<Series> = ordered
        .into_iter()
        .enumerate()
        .map(|(i, (_, t))| {
            let points = results
                .steps
                .iter()
                .filter(|s| s.trial_id == t.trial_id)
                .filter_map(|s| s.values[key].filter(|v| v.is_finite()).map(|v| (s.step, v)))
                .collect();
            let mut series = Series::nth(i, Some(results.param_label(t)), points);
            if let Some(x) = shade_by {
                let h = hues.iter().position(|k| *k == hue_key(t)).unwrap();
                let n = (orders[x].len().max(2) - 1) as f64;
                series.color = shade(PALETTE[h % PALETTE.len()], rank(x, t) as f64 / n);
                series.dashed = (h / PALETTE.len()) % 2 == 1;
            }
            series
        })
        .filter(|s| !s.points.is_empty())
        .collect();
    if series.is_empty() {
        return None;
    }
    Some(Figure {
        title: format!("{}: {} by step", results.name, opts.step_metric),
        x_desc: "step".into(),
        y_desc: opts.step_metric.clone(),
        x: XAxis::Linear,
        series,
    })
}

/// How many distinct non-empty values `col` takes, and whether they are all numbers.
fn profile(results: &SweepResults, trials: &[&TrialRecord], col: Column) -> (usize, bool) {
    let vals = ordered_values(
        trials
            .iter()
            .map(|t| results.cell(t, col))
            .collect::<Vec<_>>()
            .iter()
            .map(|v| v.as_ref()),
    );
    (
        vals.len(),
        !vals.is_empty() && vals.iter().all(|v| parse_num(v).is_some()),
    )
}

/// The first numeric parameter, else the first parameter; one that varies is preferred,
/// since a constant x makes an empty plot.
fn default_x(results: &SweepResults, trials: &[&TrialRecord]) -> Option<String> {
    let prof: Vec<(usize, bool)> = (0..results.params.len())
        .map(|i| profile(results, trials, Column::Param(i)))
        .collect();
    let pick = |want: &dyn Fn(&(usize, bool)) -> bool| prof.iter().position(want);
    pick(&|p| p.1 && p.0 > 1)
        .or_else(|| pick(&|p| p.0 > 1))
        .or_else(|| pick(&|p| p.1))
        .or((!prof.is_empty()).then_some(0))
        .map(|i| results.params[i].clone())
}

/// The y axis of the metric figure when none is named: `eval_loss`, else the first numeric
/// metric besides the bookkeeping ones, preferring one that varies.
fn default_y(results: &SweepResults, trials: &[&TrialRecord]) -> Option<String> {
    if results.metrics.iter().any(|m| m == "eval_loss") {
        return Some("eval_loss".into());
    }
    let candidates: Vec<(usize, (usize, bool))> = (0..results.metrics.len())
        .filter(|&i| !["seconds", "peak_mem_mb"].contains(&results.metrics[i].as_str()))
        .map(|i| (i, profile(results, trials, Column::Metric(i))))
        .filter(|(_, (_, numeric))| *numeric)
        .collect();
    candidates
        .iter()
        .find(|(_, (n, _))| *n > 1)
        .or(candidates.first())
        .map(|(i, _)| results.metrics[*i].clone())
}

/// The parameter and metric `runner plot` puts on the metric figure's x and y axes when none
/// are named (the live page starts from the same view).
pub fn default_axes(results: &SweepResults) -> (Option<String>, Option<String>) {
    let trials: Vec<&TrialRecord> = results.selected(false).collect();
    (default_x(results, &trials), default_y(results, &trials))
}

/// The metric-against-parameter figure with the x and y column names it used.
fn metric_figure(
    results: &SweepResults,
    opts: &PlotOptions,
) -> Result<Option<(Figure, String, String)>> {
    let trials: Vec<&TrialRecord> = results.selected(opts.include_failed).collect();
    let x = match &opts.x {
        Some(x) => x.clone(),
        None => match default_x(results, &trials) {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    let y = match opts.y.clone().or_else(|| default_y(results, &trials)) {
        Some(y) => y,
        None => return Ok(None),
    };
    let x_col = results.column(&x)?;
    let y_col = results.column(&y)?;
    let series_cols: Vec<Column> = match &opts.series {
        Some(s) => vec![results.column(s)?],
        // Parameters that never change would only label every series the same.
        None => (0..results.params.len())
            .map(Column::Param)
            .filter(|&c| c != x_col && profile(results, &trials, c).0 > 1)
            .collect(),
    };
    let series_label = |t: &TrialRecord| -> String {
        series_cols
            .iter()
            .map(|&c| format!("{}={}", results.column_name(c), results.cell(t, c)))
            .collect::<Vec<_>>()
            .join(" ")
    };

    // (series label, x cell, y) for every trial with both values.
    let rows: Vec<(String, String, f64)> = trials
        .iter()
        .filter_map(|t| {
            let xv = results.cell(t, x_col);
            let yv = parse_num(&results.cell(t, y_col)).filter(|v| v.is_finite())?;
            (!xv.is_empty()).then(|| (series_label(t), xv.into_owned(), yv))
        })
        .collect();
    if rows.is_empty() {
        return Ok(None);
    }
    let x_values = ordered_values(rows.iter().map(|r| r.1.as_str()));
    let numeric_x = x_values.iter().all(|v| parse_num(v).is_some());
    let xs: Vec<f64> = x_values.iter().filter_map(|v| parse_num(v)).collect();
    // Ticks at the swept values unless they are many or crowded (e.g. 1, 2, 100).
    let crowded = xs.len() > 12
        || xs
            .windows(2)
            .any(|w| (w[1] - w[0]) * 15.0 < xs[xs.len() - 1] - xs[0]);
    let axis = if !numeric_x {
        XAxis::Categories(x_values.clone())
    } else if is_log2_axis(&xs) {
        XAxis::Log {
            base: 2.0,
            xs: xs.clone(),
        }
    } else if xs[0] > 0.0 && xs[xs.len() - 1] / xs[0] >= 100.0 {
        // E.g. learning rates 1e-4 .. 1e-2.
        XAxis::Log {
            base: 10.0,
            xs: xs.clone(),
        }
    } else if crowded {
        XAxis::Linear
    } else {
        XAxis::Values(xs.clone())
    };
    let position = |xv: &str| -> f64 {
        match &axis {
            XAxis::Categories(c) => c.iter().position(|v| v == xv).unwrap() as f64,
            XAxis::Log { base, .. } => parse_num(xv).unwrap().log(*base),
            XAxis::Linear | XAxis::Values(_) => parse_num(xv).unwrap(),
        }
    };

    // Series in the order of their columns' values (numeric ascending where numeric),
    // not in the order trials happened to run; one unlabelled series without series columns.
    let col_orders: Vec<Vec<String>> = series_cols
        .iter()
        .map(|&c| {
            ordered_values(
                trials
                    .iter()
                    .map(|t| results.cell(t, c))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(|v| v.as_ref()),
            )
        })
        .collect();
    let mut keyed: Vec<(Vec<usize>, String)> = Vec::new();
    for t in &trials {
        let label = series_label(t);
        if !keyed.iter().any(|(_, l)| *l == label) {
            let ranks = series_cols
                .iter()
                .zip(&col_orders)
                .map(|(&c, o)| {
                    o.iter()
                        .position(|v| *v == results.cell(t, c))
                        .unwrap_or(usize::MAX)
                })
                .collect();
            keyed.push((ranks, label));
        }
    }
    keyed.sort();
    let labels: Vec<String> = keyed
        .into_iter()
        .map(|(_, l)| l)
        .filter(|l| rows.iter().any(|r| r.0 == *l))
        .collect();
    let series = labels
        .iter()
        .map(|label| {
            // Several trials at one x (seeds, or parameters outside the series) are averaged.
            let points: Vec<(f64, f64)> = x_values
                .iter()
                .filter_map(|xv| {
                    let ys: Vec<f64> = rows
                        .iter()
                        .filter(|r| &r.0 == label && &r.1 == xv)
                        .map(|r| r.2)
                        .collect();
                    (!ys.is_empty())
                        .then(|| (position(xv), ys.iter().sum::<f64>() / ys.len() as f64))
                })
                .collect();
            ((!series_cols.is_empty()).then(|| label.clone()), points)
        })
        .enumerate()
        .map(|(i, (label, points))| Series::nth(i, label, points))
        .collect::<Vec<_>>();
    let fig = Figure {
        title: format!("{}: {y} by {x}", results.name),
        x_desc: x.clone(),
        y_desc: y.clone(),
        x: axis,
        series,
    };
    Ok(Some((fig, x, y)))
}

/// Powers of two spanning at least 8x read better evenly spaced.
fn is_log2_axis(xs: &[f64]) -> bool {
    let pow2 = xs
        .iter()
        .all(|&x| x > 0.0 && (x.log2() - x.log2().round()).abs() < 1e-9);
    let (lo, hi) = xs.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    });
    pow2 && xs.len() >= 3 && hi / lo >= 8.0
}

// ---------------------------------------------------------------------------------------
// Drawing.

/// matplotlib's tab10: distinct, print-friendly, familiar to readers of ML papers.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const GRID: RGBColor = RGBColor(225, 225, 225);

/// `c` from faded (t = 0) through itself (t = 0.6) to darkened (t = 1).
fn shade(c: RGBColor, t: f64) -> RGBColor {
    let (toward, amount) = if t < 0.6 {
        (255.0, 0.7 * (0.6 - t) / 0.6)
    } else {
        (0.0, 0.35 * (t - 0.6) / 0.4)
    };
    let mix = |v: u8| (v as f64 * (1.0 - amount) + toward * amount).round() as u8;
    RGBColor(mix(c.0), mix(c.1), mix(c.2))
}

pub(crate) fn font(size: f64) -> TextStyle<'static> {
    (FONT, size).into_font().color(&BLACK)
}

/// Something drawn the same way on the SVG and the PNG backend.
pub(crate) trait Picture {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static;
}

impl Picture for Figure {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        draw(root, self)
    }
}

/// Writes `{stem}.png` and `{stem}.svg` into `out_dir` (each atomically).
pub(crate) fn render(fig: &impl Picture, out_dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    register_font()?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        fig.draw_on(&root)?;
        root.present()
            .map_err(|e| anyhow!("drawing {stem}.svg: {e}"))?;
    }
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        fig.draw_on(&root)?;
        root.present()
            .map_err(|e| anyhow!("drawing {stem}.png: {e}"))?;
    }
    let mut png_bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut png_bytes, WIDTH, HEIGHT);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&rgb)?;
    }
    let png_path = out_dir.join(format!("{stem}.png"));
    let svg_path = out_dir.join(format!("{stem}.svg"));
    write_atomic(&png_path, &png_bytes)?;
    write_atomic(&svg_path, svg.as_bytes())?;
    Ok(vec![png_path, svg_path])
}

/// [`crate::util::write_atomic`] (a crash never leaves half a plot), with this module's
/// messages.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::util::write_atomic(path, bytes).map_err(|e| match e.step {
        WriteStep::Create => {
            let dir = path.parent().unwrap_or(Path::new("."));
            anyhow::Error::new(e.source).context(format!(
                "cannot create a temporary file in {}",
                dir.display()
            ))
        }
        WriteStep::Write => {
            anyhow::Error::new(e.source).context(format!("cannot write {}", path.display()))
        }
        WriteStep::Rename => anyhow!("cannot write {}: {}", path.display(), e.source),
    })
}

/// About `target` round ticks (1, 2 or 5 times a power of ten) covering lo..hi.
fn nice_ticks(lo: f64, hi: f64, target: usize) -> (Vec<f64>, f64) {
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    ((first..=last).map(|i| i as f64 * step).collect(), step)
}

fn tick_label(v: f64, step: f64) -> String {
    if v.abs() >= 1e6 || (step < 1e-4 && v != 0.0) {
        return format_number(v, false, None);
    }
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    format!("{v:.decimals$}")
}

fn padded(lo: f64, hi: f64, frac: f64) -> (f64, f64) {
    if hi > lo {
        let pad = (hi - lo) * frac;
        (lo - pad, hi + pad)
    } else {
        let pad = if lo == 0.0 { 1.0 } else { lo.abs() * 0.1 };
        (lo - pad, hi + pad)
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

fn draw<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, fig: &Figure) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let body = root.titled(&fig.title, font(TITLE_PX)).map_err(err)?;

    // The legend sits outside the axes, on the right, so it never hides data.
    let labels: Vec<&str> = fig
        .series
        .iter()
        .filter_map(|s| s.label.as_deref())
        .collect();
    let legend_font = font(LEGEND_PX);
    let max_text_w = WIDTH * 2 / 5;
    let legend_w = labels
        .iter()
        .map(|l| {
            root.estimate_text_size(l, &legend_font)
                .map(|(w, _)| w)
                .unwrap_or(0)
                .min(max_text_w)
        })
        .max()
        .map(|w| w + 84)
        .unwrap_or(0);
    let (plot_area, legend_area) = body.split_horizontally(WIDTH - legend_w);

    if fig.series.iter().all(|s| s.points.is_empty()) {
        return Ok(());
    }
    let ys = fig.series.iter().flat_map(|s| s.points.iter().map(|p| p.1));
    let (y_min, y_max) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let bars = matches!(fig.x, XAxis::Categories(_));
    // Bars start from zero so their lengths compare; lines zoom in on the data.
    let (y0, y1) = if bars && y_min >= 0.0 {
        (0.0, y_max * 1.12)
    } else {
        padded(y_min, y_max, 0.06)
    };
    let (y_ticks, y_step) = nice_ticks(y0, y1, 8);

    let (x0, x1, x_ticks, x_step) = match &fig.x {
        XAxis::Categories(c) => (
            -0.5,
            c.len() as f64 - 0.5,
            (0..c.len()).map(|i| i as f64).collect(),
            1.0,
        ),
        XAxis::Log { base, xs } => {
            let l: Vec<f64> = xs.iter().map(|x| x.log(*base)).collect();
            let (lo, hi) = padded(l[0], l[l.len() - 1], 0.05);
            let ticks = if l.len() <= 12 {
                l
            } else {
                (lo.ceil() as i64..=hi.floor() as i64)
                    .map(|k| k as f64)
                    .collect()
            };
            (lo, hi, ticks, 1.0)
        }
        XAxis::Linear => {
            let xs = fig.series.iter().flat_map(|s| s.points.iter().map(|p| p.0));
            let (lo, hi) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
                (a.min(x), b.max(x))
            });
            let (lo, hi) = padded(lo, hi, 0.03);
            let (t, s) = nice_ticks(lo, hi, 10);
            (lo, hi, t, s)
        }
        XAxis::Values(xs) => {
            let (lo, hi) = padded(xs[0], xs[xs.len() - 1], 0.05);
            (lo, hi, xs.clone(), 1.0)
        }
    };

    // Category names that do not fit their slot wrap at '_', '-' or ' '.
    let tick_font = font(TICK_PX);
    let plot_w = (WIDTH - legend_w) as f64 - 110.0;
    let cat_lines: Vec<Vec<String>> = match &fig.x {
        XAxis::Categories(c) => {
            let slot = plot_w / c.len() as f64 - 8.0;
            c.iter()
                .map(|s| {
                    wrap_label(s, slot, |t| {
                        root.estimate_text_size(t, &tick_font)
                            .map(|(w, _)| w as f64)
                            .unwrap_or(0.0)
                    })
                })
                .collect()
        }
        _ => Vec::new(),
    };
    let max_lines = cat_lines
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .min(MAX_LABEL_LINES) as u32;

    let mut chart = ChartBuilder::on(&plot_area)
        .margin_left(12)
        .margin_right(24)
        .margin_top(12)
        .margin_bottom(8)
        .x_label_area_size(44 + LINE_PX as u32 * max_lines)
        .y_label_area_size(86)
        .build_cartesian_2d(
            Axis {
                lo: x0,
                hi: x1,
                ticks: x_ticks,
            },
            Axis {
                lo: y0,
                hi: y1,
                ticks: y_ticks,
            },
        )
        .map_err(err)?;
    let x_fmt = |v: &f64| match &fig.x {
        XAxis::Categories(_) => String::new(),
        // The swept value itself where the tick is one, so 0.0003 does not print as 0.00029999.
        XAxis::Log { base, xs } => {
            let x = base.powf(*v);
            let x = xs
                .iter()
                .copied()
                .find(|d| ((d - x) / d).abs() < 1e-9)
                .unwrap_or(x);
            if x.fract() == 0.0 {
                format_number(x, true, None)
            } else {
                format!("{x}")
            }
        }
        XAxis::Linear => tick_label(*v, x_step),
        // Shortest round-trip form: the value as the CSV had it.
        XAxis::Values(_) => format!("{v}"),
    };
    let y_fmt = |v: &f64| tick_label(*v, y_step);
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(TRANSPARENT)
        .bold_line_style(GRID)
        .axis_style(BLACK.stroke_width(1))
        .x_desc(fig.x_desc.as_str())
        .y_desc(fig.y_desc.as_str())
        .axis_desc_style(font(DESC_PX))
        .label_style(tick_font.clone())
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt);
    if bars {
        mesh.disable_x_mesh();
    }
    mesh.draw().map_err(err)?;

    if let XAxis::Categories(_) = fig.x {
        let (_, y_axis) = chart.backend_coord(&(0.0, y0));
        let style = tick_font.pos(Pos::new(HPos::Center, VPos::Top));
        for (i, lines) in cat_lines.iter().enumerate() {
            let (x, _) = chart.backend_coord(&(i as f64, y0));
            for (j, line) in lines.iter().take(MAX_LABEL_LINES).enumerate() {
                root.draw_text(line, &style, (x, y_axis + 10 + LINE_PX * j as i32))
                    .map_err(err)?;
            }
        }
        draw_bars(&mut chart, fig)?;
    } else {
        for s in &fig.series {
            let style = s.color.stroke_width(3);
            if s.dashed {
                chart
                    .draw_series(DashedLineSeries::new(s.points.clone(), 10, 6, style))
                    .map_err(err)?;
            } else {
                chart
                    .draw_series(LineSeries::new(s.points.clone(), style))
                    .map_err(err)?;
            }
            // Markers only where points are sparse enough to tell apart.
            if s.points.len() <= 20 {
                chart
                    .draw_series(
                        s.points
                            .iter()
                            .map(|&p| Circle::new(p, 5, s.color.filled())),
                    )
                    .map_err(err)?;
            }
        }
    }

    if !labels.is_empty() {
        draw_legend(&legend_area, fig, bars, max_text_w)?;
    }
    Ok(())
}

/// A linear f64 axis whose ticks are exactly the ones given: plotters' own `WithKeyPoints`
/// over f64 cannot take label formatters, and its automatic ticks ignore categories.
struct Axis {
    lo: f64,
    hi: f64,
    ticks: Vec<f64>,
}

impl Ranged for Axis {
    type FormatOption = plotters::coord::ranged1d::DefaultFormatting;
    type ValueType = f64;

    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        limit.0 + (t * (limit.1 - limit.0) as f64).round() as i32
    }

    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        // No light (minor) grid lines: a paper figure wants few lines.
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

type Chart<'a, DB> = ChartContext<'a, DB, Cartesian2d<Axis, Axis>>;

/// Grouped bars: each category's 0.8-wide slot is shared by the series; a single series
/// gets its values printed on top.
fn draw_bars<DB: DrawingBackend>(chart: &mut Chart<'_, DB>, fig: &Figure) -> Result<()> {
    let k = fig.series.len().max(1) as f64;
    let width = 0.8 / k;
    for (j, s) in fig.series.iter().enumerate() {
        let style = s.color.filled();
        chart
            .draw_series(s.points.iter().map(|&(x, y)| {
                let left = x - 0.4 + j as f64 * width;
                Rectangle::new(
                    [
                        (left + 0.01, 0.0f64.min(y)),
                        (left + width - 0.01, y.max(0.0)),
                    ],
                    style,
                )
            }))
            .map_err(err)?;
        if fig.series.len() == 1 {
            let style = font(VALUE_PX).pos(Pos::new(HPos::Center, VPos::Bottom));
            chart
                .draw_series(s.points.iter().map(|&(x, y)| {
                    EmptyElement::at((x, y))
                        + Text::new(
                            format_number(y, y.fract() == 0.0, Some(value_decimals(y))),
                            (0, -4),
                            style.clone(),
                        )
                }))
                .map_err(err)?;
        }
    }
    Ok(())
}

fn value_decimals(y: f64) -> usize {
    if y.abs() >= 100.0 {
        0
    } else if y.abs() >= 10.0 {
        1
    } else {
        3
    }
}

fn draw_legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    fig: &Figure,
    bars: bool,
    max_text_w: u32,
) -> Result<()> {
    // Long legends shrink (rows and text together) to fit the figure's height.
    let n = fig
        .series
        .iter()
        .filter(|s| s.label.is_some())
        .count()
        .max(1) as i32;
    let row = LEGEND_ROW_PX.min((HEIGHT as i32 - 100) / n).max(12);
    let size = LEGEND_PX * row as f64 / LEGEND_ROW_PX as f64;
    let style = font(size).pos(Pos::new(HPos::Left, VPos::Center));
    let fits = |t: &str| {
        area.estimate_text_size(t, &style)
            .map(|(w, _)| w <= max_text_w)
            .unwrap_or(true)
    };
    for (i, s) in fig.series.iter().filter(|s| s.label.is_some()).enumerate() {
        let Some(label) = &s.label else { continue };
        let y = 30 + row * i as i32;
        if bars {
            area.draw(&Rectangle::new(
                [(8, y - row / 4), (32, y + row / 4)],
                s.color.filled(),
            ))
            .map_err(err)?;
        } else if s.dashed {
            for x in [6, 20] {
                area.draw(&PathElement::new(
                    vec![(x, y), (x + 10, y)],
                    s.color.stroke_width(3),
                ))
                .map_err(err)?;
            }
        } else {
            area.draw(&PathElement::new(
                vec![(4, y), (36, y)],
                s.color.stroke_width(3),
            ))
            .map_err(err)?;
            if s.points.len() <= 20 {
                area.draw(&Circle::new((20, y), 5, s.color.filled()))
                    .map_err(err)?;
            }
        }
        // A label wider than the legend's share of the figure is cut with an ellipsis.
        let mut text = label.clone();
        while !fits(&text) && text.chars().count() > 2 {
            text.pop();
            text.pop();
            text.push('…');
        }
        area.draw_text(&text, &style, (44, y)).map_err(err)?;
    }
    Ok(())
}

/// Splits `label` at '_', '-' or ' ' into lines no wider than `max_w` where it can.
fn wrap_label(label: &str, max_w: f64, width: impl Fn(&str) -> f64) -> Vec<String> {
    if width(label) <= max_w {
        return vec![label.to_string()];
    }
    let mut lines: Vec<String> = Vec::new();
    let mut cur = String::new();
    for (i, part) in label.split_inclusive(['_', '-', ' ']).enumerate() {
        let candidate = format!("{cur}{part}");
        if i > 0 && width(candidate.trim_end_matches(' ')) > max_w {
            lines.push(std::mem::take(&mut cur));
            cur = part.to_string();
        } else {
            cur = candidate;
        }
    }
    lines.push(cur);
    lines
        .into_iter()
        .map(|l| l.trim_end_matches(' ').to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{STEPS, TRIALS, fixture};
    use super::*;

    /// Decodes a PNG, checks its size and that it is not one flat colour.
    fn check_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(
            (info.width, info.height),
            (WIDTH, HEIGHT),
            "{}",
            path.display()
        );
        let px = &buf[..info.buffer_size()];
        let first = &px[..3];
        assert!(
            px.chunks(3).any(|p| p != first),
            "{} is a flat colour",
            path.display()
        );
    }

    fn svg(path: &Path) -> String {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.starts_with("<svg"), "{}", path.display());
        text
    }

    #[test]
    fn writes_curves_and_metric_plot_as_png_and_svg() {
        let (_tmp, dir) = fixture(TRIALS, Some(STEPS));
        let r = SweepResults::load(&dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        let files = plot_sweep(&r, out.path(), &PlotOptions::default()).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "loss_by_step.png",
                "loss_by_step.svg",
                "eval_loss_by_rank.png",
                "eval_loss_by_rank.svg"
            ]
        );
        for f in &files {
            assert!(std::fs::metadata(f).unwrap().len() > 0);
        }
        check_png(&files[0]);
        check_png(&files[2]);
        let curves = svg(&files[1]);
        for label in [
            "rank=1 targets=qv",
            "rank=4 targets=qv",
            "rank=4 targets=all",
            "toy: loss by step",
        ] {
            assert!(curves.contains(label), "missing {label:?}");
        }
        // The failed trial a6 has no curve.
        assert!(!curves.contains("rank=1 targets=all rank"));
        let metric = svg(&files[3]);
        for label in ["targets=qv", "targets=all", "toy: eval_loss by rank"] {
            assert!(metric.contains(label), "missing {label:?}");
        }
        // Only the plots remain: the temporary files were renamed.
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 4);
    }

    #[test]
    fn categorical_x_and_missing_step_metric() {
        let trials = "\
trial_id,method,status,seconds,eval_loss,peak_mem_mb,error
m1,lora,ok,1.0,0.37,100,
m2,prefix_tuning,ok,1.0,2.2,120,
m3,full,ok,1.0,0.30,300,
";
        let (_tmp, dir) = fixture(trials, Some("trial_id,step,loss\nm1,1,1.0\nm1,2,0.5\n"));
        let r = SweepResults::load(&dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        let opts = PlotOptions {
            step_metric: "grad_norm".into(),
            ..Default::default()
        };
        let files = plot_sweep(&r, out.path(), &opts).unwrap();
        assert_eq!(
            files,
            [
                out.path().join("eval_loss_by_method.png"),
                out.path().join("eval_loss_by_method.svg")
            ]
        );
        check_png(&files[0]);
        let text = svg(&files[1]);
        for label in ["lora", "prefix_tuning", "full"] {
            assert!(
                text.contains(&format!("\n{label}\n</text>")),
                "missing {label:?}"
            );
        }
        let opts = PlotOptions {
            y: Some("peak_mem_mb".into()),
            x: Some("method".into()),
            ..Default::default()
        };
        let files = plot_sweep(&r, out.path(), &opts).unwrap();
        assert!(
            files
                .iter()
                .any(|f| f.ends_with("peak_mem_mb_by_method.svg"))
        );
    }

    #[test]
    fn grouped_bars_and_log_ticks() {
        let (_tmp, dir) = fixture(TRIALS, None);
        let r = SweepResults::load(&dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        let opts = PlotOptions {
            x: Some("targets".into()),
            series: Some("rank".into()),
            ..Default::default()
        };
        let files = plot_sweep(&r, out.path(), &opts).unwrap();
        check_png(&files[0]);
        let text = svg(&files[1]);
        for label in ["rank=1", "rank=4", "qv", "all"] {
            assert!(
                text.contains(&format!("\n{label}\n</text>")),
                "missing {label:?}"
            );
        }

        let trials = "trial_id,rank,status,seconds,eval_loss,error\na,1,ok,1,3.0,\nb,2,ok,1,2.5,\nc,16,ok,1,2.0,\n";
        let (_tmp, dir) = fixture(trials, None);
        let r = SweepResults::load(&dir).unwrap();
        let files = plot_sweep(&r, out.path(), &PlotOptions::default()).unwrap();
        let text = svg(&files[1]);
        for tick in ["1", "2", "16"] {
            assert!(
                text.contains(&format!("\n{tick}\n</text>")),
                "missing tick {tick:?}"
            );
        }
        assert!(
            !text.contains("\n4\n</text>"),
            "ticks only at the swept values"
        );

        // Learning rates spanning 100x get a log10 axis labelled with the values as written.
        let trials = "trial_id,lr,status,seconds,eval_loss,error\na,0.0001,ok,1,3.0,\nb,0.0003,ok,1,2.5,\nc,0.01,ok,1,2.0,\n";
        let (_tmp, dir) = fixture(trials, None);
        let r = SweepResults::load(&dir).unwrap();
        let text = svg(&plot_sweep(&r, out.path(), &PlotOptions::default()).unwrap()[1]);
        for tick in ["0.0001", "0.0003", "0.01"] {
            assert!(
                text.contains(&format!("\n{tick}\n</text>")),
                "missing tick {tick:?}"
            );
        }
    }

    #[test]
    fn unknown_columns_are_errors() {
        let (_tmp, dir) = fixture(TRIALS, None);
        let r = SweepResults::load(&dir).unwrap();
        let out = tempfile::tempdir().unwrap();
        let opts = PlotOptions {
            x: Some("rnak".into()),
            ..Default::default()
        };
        let e = plot_sweep(&r, out.path(), &opts).unwrap_err().to_string();
        assert!(
            e.contains("unknown column \"rnak\"") && e.contains("available: trial_id, rank"),
            "{e}"
        );
    }

    #[test]
    fn helpers() {
        assert!(is_log2_axis(&[1.0, 2.0, 4.0, 8.0, 16.0]));
        assert!(!is_log2_axis(&[2.0, 4.0, 8.0]));
        assert!(!is_log2_axis(&[1.0, 3.0, 16.0]));
        assert_eq!(
            nice_ticks(0.0, 1.0, 5).0,
            [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        let w = |s: &str| s.len() as f64;
        assert_eq!(wrap_label("prefix_tuning", 8.0, w), ["prefix_", "tuning"]);
        assert_eq!(wrap_label("lora", 8.0, w), ["lora"]);
    }
}
