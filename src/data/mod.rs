//! Examples, their readers, tokenization and batching.

pub mod batch;
pub mod dataset;
pub mod tokenizer;

pub use batch::{Batch, BatchOptions, IGNORE_INDEX};
pub use dataset::{Dataset, Example};
pub use tokenizer::ByteTokenizer;
