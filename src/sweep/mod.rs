//! Sweeps: grid expansion, trial ids, running the trials, and the CSV results they write.

pub mod fingerprint;
pub(crate) mod grid;
mod journal;
pub mod merge;
pub mod results;
pub mod run;
pub(crate) mod space;
pub(crate) mod value;

pub use grid::{Trial, expand_grid, trial_id};
pub use results::{StepsLog, TrialRecord, TrialStatus, TrialsTable};
pub use value::Value;
