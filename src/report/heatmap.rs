//! A heatmap of a matrix with values in [0, 1] (the LoRA paper's subspace-similarity figures),
//! written as PNG and SVG like the other plots.

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use plotters::coord::Shift;
use plotters::prelude::*;

use super::plot::{Picture, font, render};

pub struct Heatmap {
    pub title: String,
    /// `values[i][j]`: row `i` drawn from the top, column `j` from the left.
    pub values: Vec<Vec<f64>>,
    pub row_label: String,
    pub col_label: String,
}

/// Viridis through five of its stops, for `t` in [0, 1].
fn viridis(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 5] = [
        (0x44, 0x01, 0x54),
        (0x3b, 0x52, 0x8b),
        (0x21, 0x91, 0x8c),
        (0x5e, 0xc9, 0x62),
        (0xfd, 0xe7, 0x25),
    ];
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (STOPS.len() - 1) as f64;
    let k = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - k as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[k], STOPS[k + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// A tick label for whole numbers only (cell indices).
fn whole(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round() as i64)
    } else {
        String::new()
    }
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing the heatmap: {e}")
}

impl Picture for Heatmap {
    fn draw_on<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        root.fill(&WHITE).map_err(err)?;
        let body = root.titled(&self.title, font(30.0)).map_err(err)?;
        let (main, bar) = body.split_horizontally(body.dim_in_pixel().0 as i32 - 170);
        let rows = self.values.len();
        let cols = self.values.first().map_or(0, Vec::len);
        if rows == 0 || cols == 0 {
            return Err(anyhow!("the heatmap has no values"));
        }
        let mut chart = ChartBuilder::on(&main)
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(70)
            // Cell k (from 1) spans k ± 0.5, so the ticks at whole numbers sit at cell centres.
            .build_cartesian_2d(0.5..cols as f64 + 0.5, rows as f64 + 0.5..0.5)
            .map_err(err)?;
        let ticks = |n: usize| n.clamp(1, 16);
        chart
            .configure_mesh()
            .disable_mesh()
            .x_desc(&self.col_label)
            .y_desc(&self.row_label)
            .axis_desc_style(font(24.0))
            .label_style(font(18.0))
            .x_labels(ticks(cols))
            .y_labels(ticks(rows))
            .x_label_formatter(&whole)
            .y_label_formatter(&whole)
            .draw()
            .map_err(err)?;
        chart
            .draw_series(self.values.iter().enumerate().flat_map(|(i, row)| {
                row.iter().enumerate().map(move |(j, &v)| {
                    Rectangle::new(
                        [
                            (j as f64 + 0.5, i as f64 + 0.5),
                            (j as f64 + 1.5, i as f64 + 1.5),
                        ],
                        viridis(v).filled(),
                    )
                })
            }))
            .map_err(err)?;
        // The colour bar, 0 at the bottom and 1 at the top.
        let mut scale = ChartBuilder::on(&bar)
            .margin_top(20)
            .margin_bottom(80)
            .margin_right(70)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)
            .map_err(err)?;
        scale
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style(font(18.0))
            .y_labels(6)
            .draw()
            .map_err(err)?;
        let steps = 100;
        scale
            .draw_series((0..steps).map(|k| {
                let (lo, hi) = (k as f64 / steps as f64, (k + 1) as f64 / steps as f64);
                Rectangle::new([(0.0, lo), (1.0, hi)], viridis((lo + hi) / 2.0).filled())
            }))
            .map_err(err)?;
        Ok(())
    }
}

/// Draws `map` as `{stem}.png` and `{stem}.svg` in `out_dir`.
pub fn write_heatmap(map: &Heatmap, out_dir: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow!("cannot create {}: {e}", out_dir.display()))?;
    render(map, out_dir, stem)
}
