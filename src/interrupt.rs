//! Stopping a run cleanly: Ctrl-C and `--time-limit`. Long loops in the core (training
//! micro-steps, evaluation batches, generated tokens) and the Lua instruction hook call
//! [`check`]; whatever was running ends with [`Interrupted`] and nothing half-written is left
//! (trials.csv is only written whole, and the interrupted trial is simply not recorded).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RUNNING: u8 = 0;
const CTRL_C: u8 = 1;
const TIME_LIMIT: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(RUNNING);
/// Milliseconds since the epoch after which the run stops; 0 = no limit.
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
/// Set by Ctrl-C only: what `--watch` waits on between runs.
static CTRL_C_SEEN: AtomicBool = AtomicBool::new(false);

/// True once Ctrl-C was pressed.
pub fn ctrl_c_flag() -> &'static AtomicBool {
    &CTRL_C_SEEN
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Interrupted {
    #[error("interrupted (Ctrl-C)")]
    CtrlC,
    #[error("time limit reached (--time-limit)")]
    TimeLimit,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Installs the Ctrl-C handler: the first Ctrl-C asks the run to stop at the next check, a
/// second one exits at once.
pub fn install_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        CTRL_C_SEEN.store(true, Ordering::SeqCst);
        if STATE.swap(CTRL_C, Ordering::SeqCst) == CTRL_C {
            eprintln!("\nsecond Ctrl-C: exiting now");
            std::process::exit(130);
        }
        eprintln!("\nCtrl-C: stopping after the current operation (press again to exit now)");
    });
}

/// Stops the run `limit` from now.
pub fn set_time_limit(limit: Duration) {
    DEADLINE_MS.store(now_ms() + limit.as_millis() as u64, Ordering::SeqCst);
}

/// What stopped the run, if anything.
pub(crate) fn state() -> Option<Interrupted> {
    match STATE.load(Ordering::Relaxed) {
        CTRL_C => return Some(Interrupted::CtrlC),
        TIME_LIMIT => return Some(Interrupted::TimeLimit),
        _ => {}
    }
    let deadline = DEADLINE_MS.load(Ordering::Relaxed);
    if deadline != 0 && now_ms() >= deadline {
        STATE.store(TIME_LIMIT, Ordering::SeqCst);
        return Some(Interrupted::TimeLimit);
    }
    None
}

/// `Err` once the run should stop.
pub(crate) fn check() -> Result<(), Interrupted> {
    match state() {
        Some(i) => Err(i),
        None => Ok(()),
    }
}

/// Parses `90`, `90s`, `15m`, `2h` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (e.g. 90s, 15m, 2h, 1h30m)");
    if let Ok(secs) = s.parse::<f64>() {
        return if secs > 0.0 && secs.is_finite() {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad())
        };
    }
    let mut total = 0.0;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match c {
            'h' => 3600.0,
            'm' => 60.0,
            's' => 1.0,
            _ => return Err(bad()),
        };
        total += num.parse::<f64>().map_err(|_| bad())? * unit;
        num.clear();
    }
    if !num.is_empty() || total <= 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0.5s").unwrap(), Duration::from_millis(500));
        for bad in ["", "0", "-3", "10x", "m", "5m3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
