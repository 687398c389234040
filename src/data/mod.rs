//! Examples, their readers, tokenization and batching.

pub mod batch;
pub(crate) mod dataset;
pub(crate) mod gguf_tokenizer;
pub mod pairs;
pub(crate) mod row;
pub mod stream;
pub(crate) mod template;
pub mod tokenizer;

pub use batch::{Batch, BatchOptions, CollateOptions, IGNORE_INDEX, Padding};
pub use dataset::{Dataset, ExampleSource, TextUnit};
pub use row::{DataError, Example, ReadOptions, Row};
pub use template::Template;
pub use tokenizer::ByteTokenizer;
