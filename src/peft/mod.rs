//! Parameter-efficient fine-tuning methods, as named adapters on a [`Llama`].
//!
//! Each method attaches under a name and becomes the active adapter: the base is frozen and
//! only the active adapter trains. `set_active(None)` gives back the base model (an RLHF
//! reference model), `set_active(Some(name))` switches. LoRA, DoRA, (IA)3, LoKr and KronA
//! (beside projections) can be merged into the base weights and unmerged again.
//!
//! The adapter layers themselves live in `model::adapters`; this module keeps the methods'
//! settings, builds those layers from them, and records each attached adapter in the model's
//! list with its [`Method`] (see `model::adapters` for why the list stays on the model).

pub mod adamix;
pub mod bottleneck;
pub mod compacter;
pub mod format;
pub mod ia3;
pub mod intrinsic;
pub mod krona;
pub mod late;
pub mod lets;
pub mod lokr;
pub mod lora;
pub mod prompt;
pub mod selective;
pub(crate) mod targets;
pub mod warp;

use std::any::Any;
use std::sync::Arc;

use burn::prelude::*;

use crate::model::Llama;
use crate::model::adapters::{AdapterInfo, AdapterMethod};
use crate::model::params::{ParamVisitor, SetTrainable};
// For targets.rs's did-you-mean.
use crate::util::closest;

pub use targets::Targets;

/// A method with its settings: one entry of a sweep over methods.
#[derive(Clone, Debug, PartialEq)]
pub enum Method {
    Lora(lora::LoraConfig),
    Ia3(ia3::Ia3Config),
    Lokr(lokr::LokrConfig),
    Krona(krona::KronaConfig),
    Bottleneck(bottleneck::BottleneckConfig),
    Compacter(compacter::CompacterConfig),
    AdaMix(adamix::AdaMixConfig),
    Prompt(prompt::PromptConfig),
    Warp(warp::WarpConfig),
    Intrinsic(intrinsic::IntrinsicConfig),
    Ladder(late::LadderConfig),
    AttentionFusion,
    Lets(lets::LetsConfig),
    Prefix(prompt::PrefixConfig),
    BitFit(selective::BitFitConfig),
    LnTuning,
    Full,
}

impl Method {
    /// Attaches the method to `model` under `name` and returns the parameters it added
    /// (for full fine-tuning: the parameters it made trainable).
    pub fn attach<B: Backend>(&self, model: &mut Llama<B>, name: &str) -> Result<usize, PeftError> {
        match self {
            Self::Lora(c) => lora::attach(model, name, c),
            Self::Ia3(c) => ia3::attach(model, name, c),
            Self::Lokr(c) => lokr::attach(model, name, c),
            Self::Krona(c) => krona::attach(model, name, c),
            Self::Bottleneck(c) => bottleneck::attach(model, name, c),
            Self::Compacter(c) => compacter::attach(model, name, c),
            Self::AdaMix(c) => adamix::attach(model, name, c),
            Self::Prompt(c) => prompt::attach_prompt(model, name, c),
            Self::Warp(c) => warp::attach(model, name, c),
            Self::Intrinsic(c) => intrinsic::attach(model, name, c),
            Self::Ladder(c) => late::attach_ladder(model, name, c),
            Self::AttentionFusion => late::attach_fusion(model, name),
            Self::Lets(c) => lets::attach(model, name, c),
            Self::Prefix(c) => prompt::attach_prefix(model, name, c),
            Self::BitFit(c) => selective::attach_bitfit(model, name, c),
            Self::LnTuning => selective::attach_ln_tuning(model, name),
            Self::Full => selective::full(model),
        }
    }

    /// A short name for tables: lora, dora, ia3, houlsby, pfeiffer, prompt_tuning, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Lora(c) if c.dora => "dora",
            Self::Lora(_) => "lora",
            Self::Ia3(_) => "ia3",
            Self::Lokr(_) => "lokr",
            Self::Krona(c) if c.placement == krona::KronaPlacement::Ffn => "krona_bres",
            Self::Krona(_) => "krona",
            Self::Bottleneck(c) if c.placement == bottleneck::Placement::Pfeiffer => "pfeiffer",
            Self::Bottleneck(_) => "houlsby",
            Self::Compacter(c) if c.placement == bottleneck::Placement::Pfeiffer => "compacter_pp",
            Self::Compacter(_) => "compacter",
            Self::AdaMix(_) => "adamix",
            Self::Prompt(_) => "prompt_tuning",
            Self::Warp(_) => "warp",
            Self::Intrinsic(_) => "intrinsic_prompt",
            Self::Ladder(_) => "ladder",
            Self::AttentionFusion => "attention_fusion",
            Self::Lets(_) => "lets",
            Self::Prefix(_) => "prefix_tuning",
            Self::BitFit(_) => "bitfit",
            Self::LnTuning => "ln_tuning",
            Self::Full => "full",
        }
    }

    fn mergeable(&self) -> bool {
        matches!(self, Self::Lora(_) | Self::Ia3(_) | Self::Lokr(_))
            || matches!(self, Self::Krona(c) if c.placement == krona::KronaPlacement::Projections)
    }

    /// The method of an attached adapter.
    pub(crate) fn of(info: &AdapterInfo) -> &Method {
        let method: &dyn Any = &*info.method;
        method
            .downcast_ref()
            .expect("adapters are attached through peft::Method")
    }
}

impl AdapterMethod for Method {
    fn kind(&self) -> &'static str {
        Method::kind(self)
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum PeftError {
    #[error("LoRA rank must be a positive integer (got {0})")]
    Rank(i64),
    #[error("LoRA alpha must be a positive finite number (got {0})")]
    Alpha(f64),
    #[error("LoRA dropout must be in [0, 1) (got {0})")]
    Dropout(f64),
    #[error("at least one target module is needed")]
    NoTargets,
    #[error("unknown target module '{name}'{hint}; valid targets: {valid}")]
    UnknownTarget {
        name: String,
        hint: String,
        valid: String,
    },
    #[error("target pattern is not a valid regular expression: {0}")]
    BadPattern(String),
    #[error(
        "target pattern '{0}' matches no module (module names look like model.layers.0.self_attn.q_proj)"
    )]
    NoMatch(String),
    #[error("LoRA rank {rank} exceeds the smaller side ({side}) of {module}")]
    RankTooLarge {
        rank: usize,
        side: usize,
        module: String,
    },
    #[error("an adapter named '{0}' is already attached")]
    AdapterExists(String),
    #[error("adapter names use letters, digits, '_' and '-' (got '{0}')")]
    AdapterName(String),
    #[error("no adapter named '{name}' (attached: {known})")]
    UnknownAdapter { name: String, known: String },
    #[error("no adapter is active")]
    NoActiveAdapter,
    #[error(
        "{0} adapters cannot be merged into the base weights (LoRA, DoRA, LoKr, KronA and (IA)3 can)"
    )]
    NotMergeable(&'static str),
    #[error("adapter '{0}' is already merged")]
    AlreadyMerged(String),
    #[error("adapter '{0}' is not merged")]
    NotMerged(String),
    #[error("{0}")]
    Invalid(String),
}

/// The default adapter name, as in PEFT.
pub(crate) const DEFAULT_ADAPTER: &str = "default";

/// Checks that `name` can be attached (called before anything changes).
fn begin_adapter<B: Backend>(model: &Llama<B>, name: &str) -> Result<(), PeftError> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(PeftError::AdapterName(name.to_string()));
    }
    if model.adapters.iter().any(|a| a.name == name) {
        return Err(PeftError::AdapterExists(name.to_string()));
    }
    Ok(())
}

/// Records the new adapter and makes it the active one.
fn finish_adapter<B: Backend>(model: &mut Llama<B>, name: &str, method: Method) {
    // A reward model's head trains with every method, as its own copy per adapter (PEFT puts
    // `score` in `modules_to_save` for sequence classification).
    if let Some(score) = &model.score {
        let copy = crate::model::params::Param::new(score.value.clone().detach(), true);
        model.score_tuned.insert(name, copy);
    }
    model.adapters.push(AdapterInfo {
        name: name.to_string(),
        method: Arc::new(method),
        merged: false,
    });
    set_active(model, Some(name)).expect("just attached");
}

/// Makes `name` the active adapter (only it trains; the base is frozen), or with `None`
/// disables every adapter so that the model computes the base model's outputs.
pub fn set_active<B: Backend>(model: &mut Llama<B>, name: Option<&str>) -> Result<(), PeftError> {
    if let Some(n) = name {
        find(model, n)?;
    }
    model.visit(&mut SetTrainable(false));
    model.activate_slots(name);
    model.active_adapter = name.map(String::from);
    Ok(())
}

/// Marks adapter `name`'s parameters trainable besides the active adapter's, without
/// activating it: PPO updates its policy and value adapters in one optimizer step.
/// `set_active` undoes it.
pub fn also_train<B: Backend>(model: &mut Llama<B>, name: &str) -> Result<(), PeftError> {
    find(model, name)?;
    struct Mark(String);
    impl<B: Backend> ParamVisitor<B> for Mark {
        fn visit1(&mut self, n: &str, p: &mut crate::model::params::Param<B, 1>) {
            if n.contains(&self.0) {
                p.trainable = true;
            }
        }
        fn visit2(&mut self, n: &str, p: &mut crate::model::params::Param<B, 2>) {
            if n.contains(&self.0) {
                p.trainable = true;
            }
        }
    }
    model.visit(&mut Mark(format!("[{name}]")));
    Ok(())
}

pub(crate) fn find<B: Backend>(model: &Llama<B>, name: &str) -> Result<usize, PeftError> {
    model
        .adapters
        .iter()
        .position(|a| a.name == name)
        .ok_or_else(|| PeftError::UnknownAdapter {
            name: name.to_string(),
            known: if model.adapters.is_empty() {
                "none".into()
            } else {
                model
                    .adapters
                    .iter()
                    .map(|a| a.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        })
}

/// The method of the active adapter, if one is active.
pub fn active_method<B: Backend>(model: &Llama<B>) -> Option<&Method> {
    let name = model.active_adapter.as_deref()?;
    model
        .adapters
        .iter()
        .find(|a| a.name == name)
        .map(Method::of)
}

fn active_index<B: Backend>(model: &Llama<B>) -> Result<usize, PeftError> {
    let name = model
        .active_adapter
        .clone()
        .ok_or(PeftError::NoActiveAdapter)?;
    find(model, &name)
}

/// Adds the active adapter into the base weights (`W ← W + s·A·B` for LoRA; the rescaled
/// `W + s·A·B` for DoRA; a row or column scaling for (IA)3). The outputs do not change.
pub fn merge<B: Backend>(model: &mut Llama<B>) -> Result<(), PeftError> {
    let idx = active_index(model)?;
    let info = &model.adapters[idx];
    let method = Method::of(info);
    if !method.mergeable() {
        return Err(PeftError::NotMergeable(method.kind()));
    }
    if info.merged {
        return Err(PeftError::AlreadyMerged(info.name.clone()));
    }
    let name = info.name.clone();
    refuse_quantized(model, &name)?;
    rewrite_weights(model, &name, true);
    model.adapters[idx].merged = true;
    Ok(())
}

/// Undoes [`merge`] for the active adapter.
pub fn unmerge<B: Backend>(model: &mut Llama<B>) -> Result<(), PeftError> {
    let idx = active_index(model)?;
    if !model.adapters[idx].merged {
        return Err(PeftError::NotMerged(model.adapters[idx].name.clone()));
    }
    let name = model.adapters[idx].name.clone();
    rewrite_weights(model, &name, false);
    model.adapters[idx].merged = false;
    Ok(())
}

/// Merging needs dense base weights: a merged 4-bit weight would be requantized and the
/// adapter's update rounded away, and unmerging could not restore it.
fn refuse_quantized<B: Backend>(model: &Llama<B>, name: &str) -> Result<(), PeftError> {
    for (i, layer) in model.layers.iter().enumerate() {
        for (t, lin) in &layer.projections {
            let carries = lin.lora.get(name).is_some()
                || lin.ia3.get(name).is_some()
                || lin.kron.get(name).is_some();
            if carries && lin.dense().is_none() {
                return Err(PeftError::Invalid(format!(
                    "cannot merge adapter '{name}' into layers.{i}.{t}: its base weight is quantized; dequantize the model first (model:dequantize())"
                )));
            }
        }
    }
    Ok(())
}

/// Merges (`merge`) or unmerges adapter `name` into the weight of every projection that
/// carries it (LoRA/DoRA, (IA)3, or a Kronecker update: LoKr, KronA).
fn rewrite_weights<B: Backend>(model: &mut Llama<B>, name: &str, merge: bool) {
    for layer in &mut model.layers {
        for (_, lin) in &mut layer.projections {
            let Some(weight) = lin.dense_mut() else {
                continue;
            };
            let w = weight.value.clone().detach();
            let w = if let Some(a) = lin.lora.get_mut(name) {
                if merge { a.merge(w) } else { a.unmerge(w) }
            } else if let Some(v) = lin.ia3.get_mut(name) {
                if merge { v.merge(w) } else { v.unmerge(w) }
            } else if let Some(k) = lin.kron.get_mut(name) {
                if merge { k.merge(w) } else { k.unmerge(w) }
            } else {
                continue;
            };
            let weight = lin.dense_mut().expect("checked dense above");
            weight.value = w.detach().set_require_grad(weight.trainable);
        }
    }
}

/// Merges the active adapter and removes every adapter: a plain model again (PEFT's
/// `merge_and_unload`), ready to save as a full checkpoint or to fine-tune fully.
pub fn merge_and_unload<B: Backend>(model: &mut Llama<B>) -> Result<(), PeftError> {
    let idx = active_index(model)?;
    if !model.adapters[idx].merged {
        merge(model)?;
    }
    let names: Vec<String> = model.adapters.iter().map(|a| a.name.clone()).collect();
    for n in names {
        model.remove_adapter_parts(&n);
    }
    model.adapters.clear();
    set_active(model, None)
}

/// Removes one adapter (unmerging it first if it was merged).
pub fn remove<B: Backend>(model: &mut Llama<B>, name: &str) -> Result<(), PeftError> {
    let idx = find(model, name)?;
    let was_active = model.active_adapter.as_deref() == Some(name);
    if model.adapters[idx].merged {
        let previous = model.active_adapter.clone();
        model.active_adapter = Some(name.to_string());
        unmerge(model)?;
        model.active_adapter = previous;
    }
    model.remove_adapter_parts(name);
    model.adapters.remove(idx);
    if was_active {
        set_active(model, None)?;
    }
    Ok(())
}
