//! Online reinforcement learning from sampled completions: rollouts, the formulas of PPO and
//! GRPO as TRL computes them, and the PPO and GRPO trainers.

pub mod grpo;
pub mod math;
pub(crate) mod policy;
pub mod ppo;
pub mod rollout;
#[cfg(all(test, feature = "flex"))]
mod tests;

pub use grpo::{GrpoConfig, GrpoMetrics, GrpoReport, GrpoTrainer};
pub use math::{GrpoLoss, GrpoObjective, KlEstimator, ScaleRewards};
pub use ppo::{PpoConfig, PpoMetrics, PpoReport, PpoTrainer};
pub use rollout::Completions;
