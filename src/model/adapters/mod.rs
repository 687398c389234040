//! The adapter layers a model can carry, built from plain values (shapes, ranks, scales,
//! initial tensors): LoRA/DoRA branches, (IA)3 vectors, Kronecker updates, bottleneck adapters
//! (dense, PHM, experts), prefix tables, WARP's verbalizer, intrinsic prompts, the side
//! network and fusion module that read every layer, and the [`Slots`](slots::Slots) that
//! hold them by adapter name. BitFit biases, LN-tuning
//! norms and prompt-tuning embeddings are plain parameters in slots.
//!
//! Which method made an adapter, with which settings, is the business of `peft`, which builds
//! these layers from its configs and puts them into the model. The model still keeps the list
//! of attached adapters ([`AdapterInfo`]), because every copy of a model must carry its own
//! list alongside its layers (clones for a reference model, copies that a failed load
//! discards). The method in each entry is a trait object: the trait ([`AdapterMethod`]) is
//! defined here and implemented by `peft::Method`, so the model can name an adapter's kind
//! while only peft, which downcasts to its own type, sees the settings. This keeps the
//! `Llama` API as it was (no wrapper type around the model) with no import from `model` into
//! `peft`.

pub(crate) mod bottleneck;
pub(crate) mod ia3;
pub(crate) mod kron;
pub(crate) mod late;
pub(crate) mod lora;
pub(crate) mod prompt;
pub(crate) mod slots;

use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

/// The method (and its settings) behind an attached adapter, as the layer above defines it.
pub trait AdapterMethod: Any + Debug + Send + Sync {
    /// A short name for tables: lora, dora, ia3, houlsby, ...
    fn kind(&self) -> &'static str;
}

/// An adapter attached to a model.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    pub name: String,
    pub method: Arc<dyn AdapterMethod>,
    /// Whether the adapter has been added into the base weights.
    pub merged: bool,
}
