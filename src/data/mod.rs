//! Examples, their readers, tokenization and batching.

pub mod batch;
pub(crate) mod dataset;
// Reward-model and DPO trainers (and the Lua binding) are to use it; only tests do yet.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) mod pairs;
pub(crate) mod row;
pub mod stream;
pub(crate) mod template;
pub mod tokenizer;

pub use batch::{Batch, BatchOptions, CollateOptions, IGNORE_INDEX, Padding};
pub use dataset::{Dataset, ExampleSource, TextUnit};
pub use row::{DataError, Example, ReadOptions, Row};
pub use template::Template;
pub use tokenizer::ByteTokenizer;
