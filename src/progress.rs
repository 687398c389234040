//! Training progress: a bar with step, loss, tokens/s and ETA on a terminal; plain log lines
//! (about ten per loop) when stderr is a file or a pipe.

use std::io::IsTerminal;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The progress of the loop that is running, shared by the batch iterator (which knows the
/// step), the trainer (loss and tokens) and `runner.log` (lines printed above the bar).
#[derive(Default)]
pub(crate) struct ProgressSlot {
    pub current: Option<Progress>,
    /// The step the batch iterator handed out last.
    pub step: usize,
}

impl ProgressSlot {
    pub(crate) fn println(&self, line: &str) {
        match &self.current {
            Some(p) => p.println(line),
            None => eprintln!("{line}"),
        }
    }
}

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    total: Option<usize>,
    started: Instant,
    step: usize,
    tokens: usize,
    loss: Option<f64>,
    /// Plain mode prints every `every` steps.
    every: usize,
}

impl Progress {
    /// A bar when stderr is a terminal (and `RUNNER_PROGRESS` is not `plain`), else plain lines.
    pub(crate) fn start(total: Option<usize>) -> Self {
        let terminal = std::io::stderr().is_terminal()
            && std::env::var("RUNNER_PROGRESS").map_or(true, |v| v != "plain");
        Self::with_mode(total, terminal)
    }

    pub(crate) fn with_mode(total: Option<usize>, terminal: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = match total {
                Some(n) => {
                    ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr())
                }
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let template = if total.is_some() {
                "  {bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]"
            } else {
                "  {spinner} step {pos} {msg} [{elapsed_precise}]"
            };
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar
        });
        let every = total.map_or(10, |n| (n / 10).max(1));
        Self {
            bar,
            total,
            started: Instant::now(),
            step: 0,
            tokens: 0,
            loss: None,
            every,
        }
    }

    /// One training step finished (called by the trainer).
    pub(crate) fn record(&mut self, loss: f64, tokens: usize) {
        self.loss = Some(loss);
        self.tokens += tokens;
    }

    fn tokens_per_second(&self) -> f64 {
        let s = self.started.elapsed().as_secs_f64();
        if s > 0.0 { self.tokens as f64 / s } else { 0.0 }
    }

    fn message(&self) -> String {
        let loss = self.loss.map_or("-".to_string(), |l| format!("{l:.4}"));
        format!("loss {loss} {:.0} tok/s", self.tokens_per_second())
    }

    /// The loop moved to `step` (called by the batch iterator).
    pub(crate) fn advance(&mut self, step: usize) {
        self.step = step;
        match &self.bar {
            Some(bar) => {
                bar.set_position(step as u64);
                bar.set_message(self.message());
            }
            None => {
                if step.is_multiple_of(self.every) && self.loss.is_some() {
                    eprintln!("{}", self.plain_line());
                }
            }
        }
    }

    pub(crate) fn plain_line(&self) -> String {
        let elapsed = self.started.elapsed().as_secs_f64();
        let of = self.total.map_or(String::new(), |n| format!("/{n}"));
        let eta = match self.total {
            Some(n) if self.step > 0 && n >= self.step => format!(
                " eta {}",
                duration((n - self.step) as f64 * elapsed / self.step as f64)
            ),
            _ => String::new(),
        };
        format!(
            "  progress: step {}{of} {} elapsed {}{eta}",
            self.step,
            self.message(),
            duration(elapsed)
        )
    }

    /// Prints a line without tearing the bar.
    pub(crate) fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        } else if !self.step.is_multiple_of(self.every) && self.loss.is_some() {
            eprintln!("{}", self.plain_line());
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m{:02}s", s / 3600, s / 60 % 60, s % 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_carry_step_loss_rate_and_eta() {
        let mut p = Progress::with_mode(Some(40), false);
        p.record(2.5, 1000);
        p.advance(4);
        let line = p.plain_line();
        assert!(
            line.starts_with("  progress: step 4/40 loss 2.5000 ")
                && line.contains(" tok/s elapsed ")
                && line.contains(" eta "),
            "{line}"
        );
        assert_eq!(duration(3725.0), "1h02m05s");
        assert_eq!(duration(75.0), "1m15s");
    }
}
