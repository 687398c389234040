//! Examples, their readers, tokenization and batching.

pub mod batch;
pub mod dataset;
pub mod stream;
pub mod template;
pub mod tokenizer;

pub use batch::{Batch, BatchOptions, CollateOptions, IGNORE_INDEX, Padding};
pub use dataset::{DataError, Dataset, Example, ExampleSource, ReadOptions, Row, TextUnit};
pub use template::Template;
pub use tokenizer::ByteTokenizer;
