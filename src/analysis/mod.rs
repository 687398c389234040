//! Analyses of trained adapters (as opposed to `report`, which reads sweep results).

pub mod subspace;
