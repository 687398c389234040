//! Examples, their readers, tokenization and batching.

pub mod batch;
pub mod dataset;
pub mod row;
pub mod stream;
pub mod template;
pub mod tokenizer;

pub use batch::{Batch, BatchOptions, CollateOptions, IGNORE_INDEX, Padding};
pub use dataset::{Dataset, ExampleSource, TextUnit};
pub use row::{DataError, Example, ReadOptions, Row};
pub use template::Template;
pub use tokenizer::ByteTokenizer;
