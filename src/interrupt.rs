//! Stopping a run cleanly: Ctrl-C and `--time-limit`. Long loops in the core (training
//! micro-steps, evaluation batches, generated tokens) and the Lua instruction hook call
//! [`check`]; whatever was running ends with [`Interrupted`] and nothing half-written is left
//! (trials.csv is only written whole, and the interrupted trial is simply not recorded).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const RUNNING: u8 = 0;
const CTRL_C: u8 = 1;
const TIME_LIMIT: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(RUNNING);
/// Milliseconds since the epoch after which the run stops; 0 = no limit.
static DEADLINE_MS: AtomicU64 = AtomicU64::new(0);
/// Set by Ctrl-C only: what `--watch` waits on between runs.
static CTRL_C_SEEN: AtomicBool = AtomicBool::new(false);
/// How many recipes are running (the watchdog only acts while one is).
static RECIPES: AtomicUsize = AtomicUsize::new(0);
/// How many core operations that check for interruption are in progress.
static WORKING: AtomicUsize = AtomicUsize::new(0);

/// How long recipe code may keep running after an interruption before the watchdog ends the
/// process: time enough for an error to unwind, too short for a loop to matter.
pub const GRACE: Duration = Duration::from_secs(1);

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

/// Marks a recipe as running for as long as the guard lives: the watchdog then ends the
/// process when recipe code ignores an interruption (see [`start_watchdog`]).
pub fn recipe_running() -> RecipeRunning {
    RECIPES.fetch_add(1, Ordering::SeqCst);
    RecipeRunning(())
}

pub struct RecipeRunning(());

impl Drop for RecipeRunning {
    fn drop(&mut self) {
        RECIPES.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Marks a core operation that calls [`check`] in its own loop (a training step, an evaluation,
/// generation, an atomic save): the watchdog leaves it to stop at its next check.
pub(crate) fn working() -> Working {
    WORKING.fetch_add(1, Ordering::SeqCst);
    Working(())
}

pub(crate) struct Working(());

impl Drop for Working {
    fn drop(&mut self) {
        WORKING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the thread that makes Ctrl-C and `--time-limit` final. The Lua hook stops ordinary
/// loops, but some recipe code never reaches it or ignores it: a `pcall` that swallows the
/// stop and loops again, a finaliser (Lua runs `__gc` without hooks), a pattern match inside
/// C. Once a recipe has been interrupted and has spent [`GRACE`] outside the core's own
/// checked loops, the watchdog prints why and exits: 124 for the time limit, 130 for Ctrl-C.
/// Nothing is half-written by this: results are only ever written whole (write, then rename).
pub fn start_watchdog() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::spawn(|| {
        let mut idle_since: Option<Instant> = None;
        loop {
            std::thread::sleep(Duration::from_millis(50));
            let interrupted = if RECIPES.load(Ordering::SeqCst) > 0 {
                state()
            } else {
                None
            };
            let Some(why) = interrupted else {
                idle_since = None;
                continue;
            };
            if WORKING.load(Ordering::SeqCst) > 0 {
                idle_since = None;
                continue;
            }
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= GRACE {
                eprintln!(
                    "\nerror: {why}, and the recipe did not stop within {} s (a loop that \
                     swallows errors with pcall, a __gc finaliser or a long pattern match); \
                     exiting. Finished trials are kept.",
                    GRACE.as_secs()
                );
                std::process::exit(why.exit_code());
            }
        }
    });
}

impl Interrupted {
    /// The process exit code: 124 like timeout(1) for the time limit, 130 for Ctrl-C.
    pub fn exit_code(self) -> i32 {
        match self {
            Interrupted::CtrlC => 130,
            Interrupted::TimeLimit => 124,
        }
    }
}

/// Parses `90`, `90s`, `15m`, `2h` or `1h30m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration (e.g. 90s, 15m, 2h, 1h30m)");
    // A year is longer than any run; larger values would overflow a deadline.
    const MAX_SECS: f64 = 366.0 * 24.0 * 3600.0;
    let checked = |secs: f64| {
        if secs > MAX_SECS {
            Err(format!(
                "'{s}' is longer than a year; give a shorter --time-limit"
            ))
        } else if secs > 0.0 && secs.is_finite() {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(bad())
        }
    };
    if let Ok(secs) = s.parse::<f64>() {
        return checked(secs);
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
    if !num.is_empty() {
        return Err(bad());
    }
    checked(total)
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
        // Values that would overflow a Duration or the deadline are errors, not panics.
        for huge in [
            "18446744073709551615s",
            "18446744073709551615",
            "1e300",
            "9999999999h",
        ] {
            let err = parse_duration(huge).unwrap_err();
            assert!(err.contains("longer than a year"), "{huge}: {err}");
        }
    }
}
