//! Llama-architecture decoder: token embedding, RMSNorm, rotary embeddings (Hugging Face
//! rotate-half convention), grouped-query causal attention, SwiGLU MLP, tied or untied head.

use burn::prelude::*;
use burn::tensor::{Int, TensorData};

use super::adapters::AdapterInfo;
use super::adapters::bottleneck::{AdapterContext, Bottleneck, PhmRules};
use super::adapters::kron::KronParallel;
use super::adapters::late::{AttentionFusion, LadderSide};
use super::adapters::prompt::{IntrinsicPrompt, PrefixAdapter, Verbalizer};
use super::adapters::slots::Slots;
use super::config::{ConfigError, Family, LlamaConfig};
use super::init::{self, HostRng};
use super::linear::Linear;
use super::params::{Param, ParamCount, ParamVisitor};
use crate::kernels;

/// One of a decoder layer's projections: q, k, v, o, gate, up, down, or Phi-3's fused qkv
/// and gate_up. Names (`q_proj`, ...) are parsed where they come in (target lists, adapter
/// files, recipes) and printed by `Display`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proj {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
    /// q, k and v in one product, output columns in that order (Phi-3's `qkv_proj`).
    Qkv,
    /// gate and up in one product, gate's columns first (Phi-3's `gate_up_proj`).
    GateUp,
}

impl Proj {
    /// Every kind of projection, for parsing names.
    pub(crate) const ALL: [Proj; 9] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
        Self::Qkv,
        Self::GateUp,
    ];

    /// A layer's projections with q, k, v and gate, up separate, in the order Hugging Face
    /// names them.
    pub(crate) const SEPARATE: [Proj; 7] = [
        Self::Q,
        Self::K,
        Self::V,
        Self::O,
        Self::Gate,
        Self::Up,
        Self::Down,
    ];

    /// Phi-3's projections: q, k, v fused, and gate, up fused.
    pub(crate) const FUSED: [Proj; 4] = [Self::Qkv, Self::O, Self::GateUp, Self::Down];

    /// The Hugging Face name: `q_proj`, ..., `down_proj`.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Self::Q => "q_proj",
            Self::K => "k_proj",
            Self::V => "v_proj",
            Self::O => "o_proj",
            Self::Gate => "gate_proj",
            Self::Up => "up_proj",
            Self::Down => "down_proj",
            Self::Qkv => "qkv_proj",
            Self::GateUp => "gate_up_proj",
        }
    }

    pub(crate) fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }

    /// Whether it belongs to the MLP (else to attention).
    pub(crate) fn is_mlp(self) -> bool {
        matches!(self, Self::Gate | Self::Up | Self::Down | Self::GateUp)
    }
}

impl std::fmt::Display for Proj {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl serde::Serialize for Proj {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

/// The names of the projections LoRA and friends can target in a layer with separate
/// projections (every family but Phi-3, whose layers name theirs `qkv_proj`, `o_proj`,
/// `gate_up_proj` and `down_proj`), in the order Hugging Face names them.
pub const LINEAR_TARGETS: [&str; 7] = [
    Proj::Q.name(),
    Proj::K.name(),
    Proj::V.name(),
    Proj::O.name(),
    Proj::Gate.name(),
    Proj::Up.name(),
    Proj::Down.name(),
];

/// `(d_in, d_out)` of a projection.
pub(crate) fn projection_shape(config: &LlamaConfig, proj: Proj) -> (usize, usize) {
    let (d, ffn) = (config.hidden_size, config.intermediate_size);
    let q = config.num_attention_heads * config.head_dim();
    let kv = config.num_key_value_heads * config.head_dim();
    match proj {
        Proj::Q => (d, q),
        Proj::K | Proj::V => (d, kv),
        Proj::O => (q, d),
        Proj::Down => (ffn, d),
        Proj::Gate | Proj::Up => (d, ffn),
        Proj::Qkv => (d, q + 2 * kv),
        Proj::GateUp => (d, 2 * ffn),
    }
}

/// The Hugging Face module name of a projection: `model.layers.3.self_attn.q_proj`.
pub(crate) fn module_path(layer: usize, proj: Proj) -> String {
    let group = if proj.is_mlp() { "mlp" } else { "self_attn" };
    format!("model.layers.{layer}.{group}.{proj}")
}

#[derive(Clone, Debug)]
pub struct Block<B: Backend> {
    pub input_layernorm: Param<B, 1>,
    /// The layer's projections ([`LlamaConfig::projections`]), in Hugging Face's order.
    pub projections: Vec<(Proj, Linear<B>)>,
    /// The norm before the MLP: Hugging Face's `post_attention_layernorm` in Llama,
    /// `pre_feedforward_layernorm` in Gemma.
    pub mlp_norm: Param<B, 1>,
    /// Bottleneck adapters after the attention block (Houlsby) and after the MLP.
    pub attn_adapter: Slots<Bottleneck<B>>,
    pub mlp_adapter: Slots<Bottleneck<B>>,
    /// KronA^B_res beside the MLP block.
    pub mlp_parallel: Slots<KronParallel<B>>,
    /// LeTS's layer gate `β` (`[1]`) while layers are being selected: the layer's updates are
    /// scaled by `σ(β)`.
    pub lets_gate: Slots<Param<B, 1>>,
    /// LN tuning's trained copies of the two norm weights.
    pub input_norm_tuned: Slots<Param<B, 1>>,
    pub post_norm_tuned: Slots<Param<B, 1>>,
    /// Qwen3's RMSNorm weights over each head of q and of k, `[head_dim]`.
    pub q_norm: Option<Param<B, 1>>,
    pub k_norm: Option<Param<B, 1>>,
    /// Gemma's norms of the attention and MLP outputs, before each residual sum (Hugging
    /// Face's `post_attention_layernorm` and `post_feedforward_layernorm` there).
    pub attn_out_norm: Option<Param<B, 1>>,
    pub mlp_out_norm: Option<Param<B, 1>>,
    /// LN tuning's trained copies of those two.
    pub attn_out_norm_tuned: Slots<Param<B, 1>>,
    pub mlp_out_norm_tuned: Slots<Param<B, 1>>,
}

#[derive(Clone, Debug)]
pub struct Llama<B: Backend> {
    pub config: LlamaConfig,
    /// `[vocab, d_model]`
    pub embed_tokens: Param<B, 2>,
    pub layers: Vec<Block<B>>,
    pub norm: Param<B, 1>,
    /// `[vocab, d_model]` like the embedding; `None` when tied to it.
    pub lm_head: Option<Param<B, 2>>,
    pub device: B::Device,
    /// LN tuning's trained copy of the final norm weight.
    pub norm_tuned: Slots<Param<B, 1>>,
    /// Prompt tuning's virtual token embeddings, `[virtual, d_model]`.
    pub prompt: Slots<Param<B, 2>>,
    /// Intrinsic prompt tuning's prompts, rebuilt from an intrinsic vector.
    pub intrinsic: Slots<IntrinsicPrompt<B>>,
    /// Prefix tuning's per-layer keys and values.
    pub prefix: Slots<PrefixAdapter<B>>,
    /// Compacter's rule matrices, shared by the adapter's every layer.
    pub phm_rules: Slots<PhmRules<B>>,
    /// WARP's learned output embeddings of its label words.
    pub verbalizer: Slots<Verbalizer<B>>,
    /// Ladder Side-Tuning's side networks and AttentionFusion's modules, beside the layers.
    pub ladder: Slots<LadderSide<B>>,
    pub fusion: Slots<AttentionFusion<B>>,
    /// A sequence-classification head, `[labels, d_model]` (transformers'
    /// `LlamaForSequenceClassification.score`, no bias): a reward model's scalar head.
    pub score: Option<Param<B, 2>>,
    /// Each adapter's own trained copy of `score` (PEFT's `modules_to_save`).
    pub score_tuned: Slots<Param<B, 2>>,
    /// Attached adapters in the order they were added, and the active one.
    pub adapters: Vec<AdapterInfo>,
    pub active_adapter: Option<String>,
}

impl<B: Backend> Block<B> {
    /// The projection `proj`, if the layer has it (Phi-3's has no separate q, k, v, gate, up).
    pub(crate) fn try_proj(&self, proj: Proj) -> Option<&Linear<B>> {
        self.projections
            .iter()
            .find(|(p, _)| *p == proj)
            .map(|(_, l)| l)
    }

    /// `lin` (one of this layer's projections) applied to `x`, with LeTS's gate.
    pub(crate) fn run(
        &self,
        lin: &Linear<B>,
        x: Tensor<B, 2>,
        rng: Option<&mut HostRng>,
    ) -> Tensor<B, 2> {
        let gate = self
            .lets_gate
            .active()
            .map(|g| burn::tensor::activation::sigmoid(g.value.clone()));
        lin.forward(x, rng, gate)
    }

    /// The projection `proj`, which callers take from the layer's own list.
    pub(crate) fn proj(&self, proj: Proj) -> &Linear<B> {
        self.try_proj(proj)
            .unwrap_or_else(|| panic!("the layer has no {proj} (see LlamaConfig::projections)"))
    }

    fn try_proj_mut(&mut self, proj: Proj) -> Option<&mut Linear<B>> {
        self.projections
            .iter_mut()
            .find(|(p, _)| *p == proj)
            .map(|(_, l)| l)
    }

    pub(crate) fn proj_mut(&mut self, proj: Proj) -> &mut Linear<B> {
        self.try_proj_mut(proj)
            .unwrap_or_else(|| panic!("the layer has no {proj} (see LlamaConfig::projections)"))
    }

    /// The kinds of projection the layer has.
    pub(crate) fn kinds(&self) -> impl Iterator<Item = Proj> + '_ {
        self.projections.iter().map(|(p, _)| *p)
    }

    /// The projection named `name` (`q_proj`, ...), if there is one.
    pub fn linear(&self, name: &str) -> Option<&Linear<B>> {
        Proj::parse(name).and_then(|p| self.try_proj(p))
    }

    pub fn linear_mut(&mut self, name: &str) -> Option<&mut Linear<B>> {
        Proj::parse(name).and_then(|p| self.try_proj_mut(p))
    }

    /// The block with an empty set of adapters and the projections `kinds`.
    pub(crate) fn new<E>(
        input_layernorm: Param<B, 1>,
        mlp_norm: Param<B, 1>,
        kinds: &[Proj],
        mut linears: impl FnMut(Proj) -> Result<Linear<B>, E>,
    ) -> Result<Self, E> {
        Ok(Self {
            input_layernorm,
            projections: kinds
                .iter()
                .map(|&p| Ok((p, linears(p)?)))
                .collect::<Result<_, E>>()?,
            mlp_norm,
            attn_adapter: Slots::default(),
            mlp_adapter: Slots::default(),
            mlp_parallel: Slots::default(),
            lets_gate: Slots::default(),
            input_norm_tuned: Slots::default(),
            post_norm_tuned: Slots::default(),
            q_norm: None,
            k_norm: None,
            attn_out_norm: None,
            mlp_out_norm: None,
            attn_out_norm_tuned: Slots::default(),
            mlp_out_norm_tuned: Slots::default(),
        })
    }

    pub(crate) fn visit<V: ParamVisitor<B>>(&mut self, prefix: &str, v: &mut V) {
        v.visit1(
            &format!("{prefix}.input_layernorm.weight"),
            &mut self.input_layernorm,
        );
        self.input_norm_tuned
            .visit(&format!("{prefix}.input_layernorm"), "ln_tuning", v);
        for (proj, linear) in self.projections.iter_mut().filter(|(p, _)| !p.is_mlp()) {
            linear.visit(&format!("{prefix}.self_attn.{proj}"), v);
        }
        if let Some(w) = &mut self.q_norm {
            v.visit1(&format!("{prefix}.self_attn.q_norm.weight"), w);
        }
        if let Some(w) = &mut self.k_norm {
            v.visit1(&format!("{prefix}.self_attn.k_norm.weight"), w);
        }
        self.attn_adapter
            .visit(&format!("{prefix}.self_attn"), "adapter", v);
        // Hugging Face's names: Gemma's layers have four norms, Llama's two.
        let mlp_norm = if self.attn_out_norm.is_some() {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        if let Some(w) = &mut self.attn_out_norm {
            v.visit1(&format!("{prefix}.post_attention_layernorm.weight"), w);
        }
        self.attn_out_norm_tuned.visit(
            &format!("{prefix}.post_attention_layernorm"),
            "ln_tuning",
            v,
        );
        v.visit1(&format!("{prefix}.{mlp_norm}.weight"), &mut self.mlp_norm);
        self.post_norm_tuned
            .visit(&format!("{prefix}.{mlp_norm}"), "ln_tuning", v);
        for (proj, linear) in self.projections.iter_mut().filter(|(p, _)| p.is_mlp()) {
            linear.visit(&format!("{prefix}.mlp.{proj}"), v);
        }
        self.mlp_adapter
            .visit(&format!("{prefix}.mlp"), "adapter", v);
        self.mlp_parallel
            .visit(&format!("{prefix}.mlp"), "krona", v);
        self.lets_gate.visit(prefix, "lets_gate", v);
        if let Some(w) = &mut self.mlp_out_norm {
            v.visit1(&format!("{prefix}.post_feedforward_layernorm.weight"), w);
        }
        self.mlp_out_norm_tuned.visit(
            &format!("{prefix}.post_feedforward_layernorm"),
            "ln_tuning",
            v,
        );
    }

    fn activate(&mut self, name: Option<&str>) {
        for (_, linear) in &mut self.projections {
            linear.activate(name);
        }
        self.attn_adapter.activate(name);
        self.mlp_adapter.activate(name);
        self.mlp_parallel.activate(name);
        self.lets_gate.activate(name);
        self.input_norm_tuned.activate(name);
        self.post_norm_tuned.activate(name);
        self.attn_out_norm_tuned.activate(name);
        self.mlp_out_norm_tuned.activate(name);
    }

    fn remove_adapter(&mut self, name: &str) {
        for (_, linear) in &mut self.projections {
            linear.remove_adapter(name);
        }
        self.attn_adapter.remove(name);
        self.mlp_adapter.remove(name);
        self.mlp_parallel.remove(name);
        self.lets_gate.remove(name);
        self.input_norm_tuned.remove(name);
        self.post_norm_tuned.remove(name);
        self.attn_out_norm_tuned.remove(name);
        self.mlp_out_norm_tuned.remove(name);
    }
}

impl<B: Backend> Llama<B> {
    /// A randomly initialised model: normal(0, `std`) weights (Hugging Face's Llama uses
    /// 0.02), unit norms. Every parameter is trainable until a method is attached.
    pub fn random(
        config: LlamaConfig,
        seed: u64,
        std: f64,
        device: &B::Device,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        config.check_fits(4.0)?;
        let (d, vocab) = (config.hidden_size, config.vocab_size);
        let mat = |name: &str, rows: usize, cols: usize| -> Tensor<B, 2> {
            let mut rng = init::rng_for(seed, name);
            init::tensor2(
                init::normal_vec(&mut rng, rows * cols, std),
                [rows, cols],
                device,
            )
        };
        let lin = |name: &str, d_in: usize, d_out: usize| Linear::new(mat(name, d_in, d_out), true);
        let ones = |n: usize| Param::new(Tensor::<B, 1>::ones([n], device), true);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                Block::new(ones(d), ones(d), config.projections(), |proj| {
                    let (d_in, d_out) = projection_shape(&config, proj);
                    Ok::<_, std::convert::Infallible>(lin(
                        &format!("layers.{i}.{proj}"),
                        d_in,
                        d_out,
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|e| match e {});
        let lm_head =
            (!config.tie_word_embeddings).then(|| Param::new(mat("lm_head", vocab, d), true));
        Ok(Self::from_parts(
            config,
            Param::new(mat("embed_tokens", vocab, d), true),
            layers,
            ones(d),
            lm_head,
            device,
        ))
    }

    /// A model from its weights, without adapters.
    pub(crate) fn from_parts(
        config: LlamaConfig,
        embed_tokens: Param<B, 2>,
        layers: Vec<Block<B>>,
        norm: Param<B, 1>,
        lm_head: Option<Param<B, 2>>,
        device: &B::Device,
    ) -> Self {
        Self {
            config,
            embed_tokens,
            layers,
            norm,
            lm_head,
            device: device.clone(),
            norm_tuned: Slots::default(),
            prompt: Slots::default(),
            intrinsic: Slots::default(),
            prefix: Slots::default(),
            phm_rules: Slots::default(),
            verbalizer: Slots::default(),
            ladder: Slots::default(),
            fusion: Slots::default(),
            score: None,
            score_tuned: Slots::default(),
            adapters: Vec::new(),
            active_adapter: None,
        }
    }

    /// Sets the active flag of every adapter part (see `peft::set_active`).
    pub(crate) fn activate_slots(&mut self, name: Option<&str>) {
        for layer in &mut self.layers {
            layer.activate(name);
        }
        self.norm_tuned.activate(name);
        self.prompt.activate(name);
        self.intrinsic.activate(name);
        self.prefix.activate(name);
        self.phm_rules.activate(name);
        self.verbalizer.activate(name);
        self.ladder.activate(name);
        self.fusion.activate(name);
        self.score_tuned.activate(name);
    }

    pub(crate) fn remove_adapter_parts(&mut self, name: &str) {
        for layer in &mut self.layers {
            layer.remove_adapter(name);
        }
        self.norm_tuned.remove(name);
        self.prompt.remove(name);
        self.intrinsic.remove(name);
        self.prefix.remove(name);
        self.phm_rules.remove(name);
        self.verbalizer.remove(name);
        self.ladder.remove(name);
        self.fusion.remove(name);
        self.score_tuned.remove(name);
    }

    /// Visits every parameter in a fixed order with its Hugging Face-style name.
    pub fn visit<V: ParamVisitor<B>>(&mut self, v: &mut V) {
        v.visit2("embed_tokens.weight", &mut self.embed_tokens);
        for (i, layer) in self.layers.iter_mut().enumerate() {
            layer.visit(&format!("layers.{i}"), v);
        }
        v.visit1("norm.weight", &mut self.norm);
        self.norm_tuned.visit("norm", "ln_tuning", v);
        if let Some(head) = &mut self.lm_head {
            v.visit2("lm_head.weight", head);
        }
        self.prompt.visit("prompt", "embeddings", v);
        self.intrinsic.visit("prompt", "intrinsic", v);
        self.prefix.visit("prefix", "encoder", v);
        self.phm_rules.visit("compacter", "phm_rules", v);
        self.verbalizer.visit("lm_head", "verbalizer", v);
        self.ladder.visit("ladder", "lst", v);
        self.fusion.visit("fusion", "attention_fusion", v);
        if let Some(score) = &mut self.score {
            v.visit2("score.weight", score);
        }
        self.score_tuned.visit("score", "modules_to_save", v);
    }

    /// The output head, `[vocab, d_model]`: its own weight, or the embedding when tied; with
    /// an active WARP adapter, its label words' rows replaced by the learned ones (trainable
    /// then, through those rows).
    pub fn head(&self) -> Param<B, 2> {
        let head = self.lm_head.as_ref().unwrap_or(&self.embed_tokens).clone();
        match self.verbalizer.active() {
            // Not `Param::new`, which would detach it from the rows it is computed from.
            Some(v) => Param {
                value: v.apply(head.value),
                trainable: true,
            },
            None => head,
        }
    }

    pub fn param_count(&self) -> ParamCount {
        let mut count = ParamCount::default();
        // Visiting needs `&mut`; counting on a cheap clone (tensors are reference-counted) keeps this `&self`.
        self.clone().visit(&mut count);
        count
    }

    /// A copy whose parameters are detached from autodiff: evaluation builds no graph.
    pub fn detached(&self) -> Self {
        // Burn's `detach` keeps a tensor's `require_grad`, so a detached trainable parameter
        // would still make every op it touches record a graph (and keep its activations alive:
        // about 3 GB per SmolLM2 perplexity pass, never freed). Untracked copies build none.
        struct Detach;
        impl<B: Backend> ParamVisitor<B> for Detach {
            fn visit1(&mut self, _: &str, p: &mut Param<B, 1>) {
                p.value = p.value.clone().detach().set_require_grad(false);
            }
            fn visit2(&mut self, _: &str, p: &mut Param<B, 2>) {
                p.value = p.value.clone().detach().set_require_grad(false);
            }
        }
        let mut m = self.clone();
        m.visit(&mut Detach);
        m
    }

    /// # Shapes
    /// - input_ids: `[batch, seq]` -> logits `[batch, seq, vocab]`
    ///
    /// Token ids must be below `vocab_size` (the data layer checks this before calling).
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>, rng: Option<&mut HostRng>) -> Tensor<B, 3> {
        let [b, t] = input_ids.dims();
        let hidden = self.hidden_states(input_ids, rng);
        self.logits(hidden).reshape([b, t, self.config.vocab_size])
    }

    /// The head applied to final hidden states, with Gemma 2's soft-capping.
    /// # Shapes
    /// - hidden: `[rows, d_model]` -> `[rows, vocab]`
    pub fn logits(&self, hidden: Tensor<B, 2>) -> Tensor<B, 2> {
        let logits = kernels::matmul(hidden, self.head().value.transpose());
        match self.config.final_logit_softcapping {
            Some(cap) => kernels::soft_cap(logits, cap),
            None => logits,
        }
    }

    /// The final normalised hidden states, `[batch * seq, d_model]`.
    pub fn hidden_states(
        &self,
        input_ids: Tensor<B, 2, Int>,
        rng: Option<&mut HostRng>,
    ) -> Tensor<B, 2> {
        self.hidden_states_cached(input_ids, None, rng, None)
    }

    /// Hidden states of rows that hold several sequences (packing) or padding that must not
    /// be attended to (left padding): `segments[b * seq + t]` names token t's sequence, tokens
    /// attend only within their own, and positions restart at 0 with each one.
    pub fn hidden_states_segmented(
        &self,
        input_ids: Tensor<B, 2, Int>,
        segments: Option<&[u32]>,
        rng: Option<&mut HostRng>,
    ) -> Tensor<B, 2> {
        self.hidden_states_cached(input_ids, segments, rng, None)
    }

    /// Logits of new tokens that continue the sequence held in `cache` (generation).
    /// # Shapes
    /// - input_ids: `[batch, new]` -> logits `[batch, new, vocab]`
    pub fn forward_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 3> {
        let [b, t] = input_ids.dims();
        let hidden = self.hidden_states_cached(input_ids, None, None, Some(cache));
        self.logits(hidden).reshape([b, t, self.config.vocab_size])
    }

    /// Logits of the last new token of each row only (generation: the head is applied to
    /// one row per sequence, never to every prompt position).
    /// # Shapes
    /// - input_ids: `[batch, new]` -> logits `[batch, vocab]`
    pub fn forward_cached_last(
        &self,
        input_ids: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Tensor<B, 2> {
        let [b, t] = input_ids.dims();
        let d = self.config.hidden_size;
        let hidden = self
            .hidden_states_cached(input_ids, None, None, Some(cache))
            .reshape([b, t, d])
            .narrow(1, t - 1, 1)
            .reshape([b, d]);
        self.logits(hidden)
    }

    /// The hidden states of the new tokens. On a fresh sequence (no cache, or an empty one)
    /// an active prompt-tuning adapter prepends its virtual tokens and an active prefix
    /// adapter seeds every layer's keys and values; both are dropped from the output.
    fn hidden_states_cached(
        &self,
        input_ids: Tensor<B, 2, Int>,
        segments: Option<&[u32]>,
        mut rng: Option<&mut HostRng>,
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 2> {
        let [b, t] = input_ids.dims();
        let fresh = cache.as_ref().is_none_or(|c| c.len == 0);
        let mut own_cache = None;
        let mut cache = match (cache, fresh.then(|| self.prefix.active()).flatten()) {
            (cache, Some(prefix)) => {
                let c = match cache {
                    Some(c) => c,
                    None => own_cache.insert(KvCache::new(&self.config)),
                };
                let table = prefix.table();
                let (kvh, hd) = (self.config.num_key_value_heads, self.config.head_dim());
                for (i, slot) in c.layers.iter_mut().enumerate() {
                    *slot = Some(PrefixAdapter::layer_kv(&table, i, b, kvh, hd));
                }
                c.len = table.dims()[0];
                Some(c)
            }
            (cache, None) => cache,
        };
        let start = cache.as_ref().map_or(0, |c| c.len);
        let (mut x, virtual_tokens) = self.embed(input_ids, fresh);
        let padding = match cache.as_deref_mut() {
            Some(c) if !c.left_pad.is_empty() => {
                if fresh {
                    c.pad_begin = start + virtual_tokens;
                }
                Some(Padding {
                    left: c.left_pad.clone(),
                    begin: c.pad_begin,
                })
            }
            _ => None,
        };
        let plan = self.plan(b, t, start, virtual_tokens, segments, padding.as_ref());
        let ladder = self.ladder.active();
        let fusion = self.fusion.active();
        // The side network's own plan (its heads are narrower) and cache.
        let side_plan = ladder.map(|l| l.side.plan(b, t, start, 0, segments, padding.as_ref()));
        // Taken out of the main cache for the pass, and put back after it.
        let mut side_cache = match (ladder, cache.as_deref_mut()) {
            (Some(l), Some(c)) => Some(c.side.take().unwrap_or_else(|| {
                Box::new(KvCache {
                    left_pad: c.left_pad.clone(),
                    pad_begin: c.pad_begin,
                    len: c.len,
                    ..KvCache::new(&l.side.config)
                })
            })),
            _ => None,
        };
        let mut side = ladder.map(|l| l.start(x.clone()));
        let mut states = fusion.map(|_| vec![x.clone()]);
        for i in 0..self.layers.len() {
            let kv = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = self.block(i, x, &plan, rng.as_deref_mut(), kv);
            if let (Some(l), Some(s), Some(p)) = (ladder, side.take(), &side_plan) {
                let kv = side_cache.as_deref_mut().map(|c| &mut c.layers[i]);
                let input = l.mix(i, x.clone(), s);
                side = Some(l.side.block(i, input, p, rng.as_deref_mut(), kv));
            }
            if let Some(states) = &mut states {
                states.push(x.clone());
            }
        }
        if let (Some(l), Some(s)) = (ladder, side) {
            x = x + l.finish(s);
        }
        if let (Some(f), Some(states)) = (fusion, &states) {
            x = f.fuse(states, self.config.rms_norm_eps);
        }
        if let Some(c) = cache {
            c.len += plan.t_all;
            if let Some(mut side) = side_cache {
                side.len += plan.t_all;
                c.side = Some(side);
            }
        }
        self.finish(x, &plan)
    }

    /// The active adapter's virtual token embeddings, `[virtual, d_model]`: prompt tuning's
    /// (and WARP's) table, or intrinsic prompt tuning's rebuilt prompt.
    pub(crate) fn virtual_prompt(&self) -> Option<Tensor<B, 2>> {
        match self.prompt.active() {
            Some(p) => Some(p.value.clone()),
            None => self.intrinsic.active().map(IntrinsicPrompt::table),
        }
    }

    /// The embedded input, `[batch * (virtual + seq), d_model]`, with an active prompt-tuning
    /// adapter's virtual tokens first on a fresh sequence; and the number of virtual tokens.
    fn embed(&self, input_ids: Tensor<B, 2, Int>, fresh: bool) -> (Tensor<B, 2>, usize) {
        let [b, t] = input_ids.dims();
        let ids = input_ids.reshape([b * t]);
        let mut x = self.embed_tokens.value.clone().select(0, ids);
        let d = self.config.hidden_size;
        // Gemma scales embeddings by √d: Gemma 2 every input row (virtual tokens too, as
        // transformers scales `inputs_embeds`), Gemma 3 in the token lookup only.
        let scale = self.config.embed_scale();
        let scale_inputs = self.config.family == Family::Gemma2;
        if let Some(s) = scale.filter(|_| !scale_inputs) {
            x = x * s;
        }
        let (x, n) = match fresh.then(|| self.virtual_prompt()).flatten() {
            Some(prompt) => {
                let n = prompt.dims()[0];
                let prompts = prompt.unsqueeze::<3>().expand([b, n, d]);
                (
                    Tensor::cat(vec![prompts, x.reshape([b, t, d])], 1).reshape([b * (n + t), d]),
                    n,
                )
            }
            None => (x, 0),
        };
        match scale.filter(|_| scale_inputs) {
            Some(s) => (x * s, n),
            None => (x, n),
        }
    }

    fn plan(
        &self,
        b: usize,
        t: usize,
        start: usize,
        virtual_tokens: usize,
        segments: Option<&[u32]>,
        padding: Option<&Padding>,
    ) -> Plan<B> {
        let t_all = t + virtual_tokens;
        let layout = Layout {
            batch: b,
            t,
            start,
            virtual_tokens,
            segments,
            padding,
        };
        let c = &self.config;
        let (positions, rows, heads) = (layout.positions(), b * t_all, c.num_attention_heads);
        let layers = 0..c.num_hidden_layers;
        let rope = Rope::new(c, &positions, rows, false, &self.device);
        let full = layers.clone().any(|i| !c.is_sliding(i)).then(|| Attend {
            rope: rope.clone(),
            mask: layout.mask::<B>(heads, None, &self.device),
        });
        let sliding = layers.into_iter().any(|i| c.is_sliding(i)).then(|| Attend {
            rope: match c.rope_local_theta {
                Some(_) => Rope::new(c, &positions, rows, true, &self.device),
                None => rope,
            },
            mask: layout.mask::<B>(heads, c.sliding_window, &self.device),
        });
        Plan {
            b,
            t,
            t_all,
            virtual_tokens,
            full,
            sliding,
        }
    }

    /// Decoder layer `i`.
    fn block(
        &self,
        i: usize,
        x: Tensor<B, 2>,
        plan: &Plan<B>,
        mut rng: Option<&mut HostRng>,
        kv: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 2> {
        let eps = self.config.rms_norm_eps;
        let layer = &self.layers[i];
        let attend = plan.attend(&self.config, i);
        let h = kernels::rms_norm(
            x.clone(),
            layer
                .input_norm_tuned
                .active()
                .unwrap_or(&layer.input_layernorm)
                .value(),
            eps,
        );
        let mut attn = self.attention(
            layer,
            h,
            plan.b,
            plan.t_all,
            &attend.rope,
            &attend.mask,
            rng.as_deref_mut(),
            kv,
        );
        // Gemma normalises each sub-block's output before the residual sum.
        let out_norm =
            |y: Tensor<B, 2>, w: &Option<Param<B, 1>>, tuned: &Slots<Param<B, 1>>| match tuned
                .active()
                .or(w.as_ref())
            {
                Some(w) => kernels::rms_norm(y, w.value(), eps),
                None => y,
            };
        attn = out_norm(attn, &layer.attn_out_norm, &layer.attn_out_norm_tuned);
        if let Some(adapter) = layer.attn_adapter.active() {
            let mut ctx = AdapterContext {
                rules: self.phm_rules.active(),
                rng: rng.as_deref_mut(),
            };
            attn = adapter.forward(attn, &mut ctx);
        }
        let x = x + attn;
        let h = kernels::rms_norm(
            x.clone(),
            layer
                .post_norm_tuned
                .active()
                .unwrap_or(&layer.mlp_norm)
                .value(),
            eps,
        );
        let parallel = layer
            .mlp_parallel
            .active()
            .map(|k| k.forward(h.clone(), rng.as_deref_mut()));
        let (gate, up) = match layer.try_proj(Proj::GateUp) {
            Some(gate_up) => {
                let y = layer.run(gate_up, h, rng.as_deref_mut());
                let ffn = self.config.intermediate_size;
                (y.clone().narrow(1, 0, ffn), y.narrow(1, ffn, ffn))
            }
            None => (
                layer.run(layer.proj(Proj::Gate), h.clone(), rng.as_deref_mut()),
                layer.run(layer.proj(Proj::Up), h, rng.as_deref_mut()),
            ),
        };
        let act = if self.config.family.is_gemma() {
            kernels::gelu_tanh_mul(gate, up)
        } else {
            kernels::silu_mul(gate, up)
        };
        let mut mlp = layer.run(layer.proj(Proj::Down), act, rng.as_deref_mut());
        if let Some(p) = parallel {
            mlp = mlp + p;
        }
        mlp = out_norm(mlp, &layer.mlp_out_norm, &layer.mlp_out_norm_tuned);
        if let Some(adapter) = layer.mlp_adapter.active() {
            let mut ctx = AdapterContext {
                rules: self.phm_rules.active(),
                rng,
            };
            mlp = adapter.forward(mlp, &mut ctx);
        }
        x + mlp
    }

    /// The final norm, without the virtual tokens.
    fn finish(&self, x: Tensor<B, 2>, plan: &Plan<B>) -> Tensor<B, 2> {
        let out = kernels::rms_norm(
            x,
            self.norm_tuned.active().unwrap_or(&self.norm).value(),
            self.config.rms_norm_eps,
        );
        if plan.virtual_tokens == 0 {
            return out;
        }
        let d = self.config.hidden_size;
        out.reshape([plan.b, plan.t_all, d])
            .narrow(1, plan.virtual_tokens, plan.t)
            .reshape([plan.b * plan.t, d])
    }

    /// A training forward pass in stages, for activation checkpointing: the stages can be run
    /// without a graph first and recomputed one at a time with one. Prefix tuning seeds every
    /// layer's keys and values from one table, so it is not staged (`None`).
    pub(crate) fn staged(
        &self,
        input_ids: Tensor<B, 2, Int>,
        segments: Option<&[u32]>,
    ) -> Option<Staged<B>> {
        if !self.stageable() {
            return None;
        }
        let [b, t] = input_ids.dims();
        let virtual_tokens = self.virtual_prompt().map_or(0, |p| p.dims()[0]);
        let plan = self.plan(b, t, 0, virtual_tokens, segments, None);
        Some(Staged { input_ids, plan })
    }

    /// Whether [`Llama::staged`] covers the active adapter: not prefix tuning, which feeds
    /// every layer from one table, nor the adapters that read every layer's output (Ladder
    /// Side-Tuning, AttentionFusion), which build no graph through the layers anyway.
    pub fn stageable(&self) -> bool {
        self.prefix.active().is_none()
            && self.ladder.active().is_none()
            && self.fusion.active().is_none()
    }

    /// Stage 0: the embedded input (with virtual tokens).
    pub(crate) fn stage_embed(&self, s: &Staged<B>) -> Tensor<B, 2> {
        self.embed(s.input_ids.clone(), true).0
    }

    /// Stage `i + 1`: decoder layer `i`.
    pub(crate) fn stage_block(
        &self,
        s: &Staged<B>,
        i: usize,
        x: Tensor<B, 2>,
        rng: Option<&mut HostRng>,
    ) -> Tensor<B, 2> {
        self.block(i, x, &s.plan, rng, None)
    }

    /// The last stage: final norm, virtual tokens dropped; the hidden states of `hidden_states`.
    pub(crate) fn stage_finish(&self, s: &Staged<B>, x: Tensor<B, 2>) -> Tensor<B, 2> {
        self.finish(x, &s.plan)
    }

    /// # Shapes
    /// - x: `[batch * seq, d_model]` -> `[batch * seq, d_model]`
    ///
    /// With `kv`, keys and values of earlier positions come from it and the new ones are added.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        layer: &Block<B>,
        x: Tensor<B, 2>,
        b: usize,
        t: usize,
        rope: &Rope<B>,
        mask: &Tensor<B, 2>,
        mut rng: Option<&mut HostRng>,
        kv: Option<&mut Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    ) -> Tensor<B, 2> {
        let hd = self.config.head_dim();
        let (h, kvh) = (
            self.config.num_attention_heads,
            self.config.num_key_value_heads,
        );
        let scale = self.config.attention_scale();
        // Rotary embeddings on the projection's own (contiguous) layout, before heads move;
        // Qwen3 and Gemma 3 first normalise each head of q and k.
        let eps = self.config.rms_norm_eps;
        let per_head = |y: Tensor<B, 2>, norm: &Option<Param<B, 1>>, heads: usize| match norm {
            Some(w) => {
                let n = y.dims()[0];
                kernels::rms_norm(y.reshape([n * heads, hd]), w.value(), eps)
                    .reshape([n, heads * hd])
            }
            None => y,
        };
        let (q, k, v) = match layer.try_proj(Proj::Qkv) {
            Some(qkv) => {
                let y = layer.run(qkv, x, rng.as_deref_mut());
                let (qw, kw) = (h * hd, kvh * hd);
                (
                    y.clone().narrow(1, 0, qw),
                    y.clone().narrow(1, qw, kw),
                    y.narrow(1, qw + kw, kw),
                )
            }
            None => (
                layer.run(layer.proj(Proj::Q), x.clone(), rng.as_deref_mut()),
                layer.run(layer.proj(Proj::K), x.clone(), rng.as_deref_mut()),
                layer.run(layer.proj(Proj::V), x, rng.as_deref_mut()),
            ),
        };
        let q = rope.apply(per_head(q, &layer.q_norm, h));
        let k = rope.apply(per_head(k, &layer.k_norm, kvh));
        let softcap = self.config.attn_logit_softcapping;
        if kv.is_none() && softcap.is_none() {
            let shape = kernels::AttentionShape {
                batch: b,
                t,
                heads: h,
                kv_heads: kvh,
                head_dim: hd,
                scale: scale as f32,
            };
            let out = kernels::attention(q, k, v, mask, shape);
            return layer.run(layer.proj(Proj::O), out, rng);
        }
        // With a cache (generation, prefix tuning): keys and values of earlier positions
        // first. Soft-capped scores (Gemma 2) take this composed path too.
        let heads = |y: Tensor<B, 2>, n: usize| y.reshape([b, t, n, hd]).swap_dims(1, 2);
        let (q, mut k, mut v) = (heads(q, h), heads(k, kvh), heads(v, kvh));
        if let Some(slot) = kv {
            if let Some((k_past, v_past)) = slot.take() {
                k = Tensor::cat(vec![k_past, k], 2);
                v = Tensor::cat(vec![v_past, v], 2);
            }
            *slot = Some((k.clone(), v.clone()));
        }
        let total = k.dims()[2];
        // Grouped-query attention without repeating keys and values: the query heads that
        // share a key/value head are stacked along the rows of one matmul. Rows are (b, head, t).
        let rep = h / kvh;
        let q = q.reshape([b, kvh, rep * t, hd]);
        let scores = q.matmul(k.swap_dims(2, 3)).reshape([b * h * t, total]);
        let probs = match softcap {
            Some(cap) => kernels::soft_capped_masked_softmax(scores, mask, scale, cap),
            None => kernels::masked_softmax(scores, mask, scale),
        }
        .reshape([b, kvh, rep * t, total]);
        let out = probs.matmul(v).reshape([b, h, t, hd]);
        let out = out.swap_dims(1, 2).reshape([b * t, h * hd]);
        layer.run(layer.proj(Proj::O), out, rng)
    }
}

/// What every layer of one forward pass shares: shapes, and the rotary tables and mask of
/// the full-attention layers and of the sliding-window ones (each built when a layer uses it).
struct Plan<B: Backend> {
    b: usize,
    t: usize,
    t_all: usize,
    virtual_tokens: usize,
    full: Option<Attend<B>>,
    sliding: Option<Attend<B>>,
}

/// A layer's rotary tables and attention mask.
struct Attend<B: Backend> {
    rope: Rope<B>,
    mask: Tensor<B, 2>,
}

impl<B: Backend> Plan<B> {
    fn attend(&self, config: &LlamaConfig, layer: usize) -> &Attend<B> {
        let attend = if config.is_sliding(layer) {
            &self.sliding
        } else {
            &self.full
        };
        attend
            .as_ref()
            .expect("the plan holds every layer type of the model")
    }
}

/// A forward pass split into stages (see [`Llama::staged`]).
pub(crate) struct Staged<B: Backend> {
    input_ids: Tensor<B, 2, Int>,
    plan: Plan<B>,
}

/// Keys and values of the positions seen so far, per layer, for incremental decoding.
/// # Shapes
/// - each layer: `([batch, kv_heads, len, head_dim], same)`
pub struct KvCache<B: Backend> {
    pub layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    pub len: usize,
    /// Left padding of each batch row (batched generation), empty when none.
    left_pad: Vec<usize>,
    /// The column where each row's padding starts, set by the first pass: after a prefix
    /// adapter's positions and prompt tuning's virtual tokens.
    pad_begin: usize,
    /// A Ladder Side-Tuning side network's own keys and values.
    side: Option<Box<KvCache<B>>>,
}

impl<B: Backend> KvCache<B> {
    pub fn new(config: &LlamaConfig) -> Self {
        Self {
            layers: vec![None; config.num_hidden_layers],
            len: 0,
            left_pad: Vec::new(),
            pad_begin: 0,
            side: None,
        }
    }

    /// A cache for a batch whose row `b` starts with `left_pad[b]` padding tokens: they are
    /// never attended to, and positions count from each row's first real token (as
    /// transformers derives `position_ids` from the attention mask).
    pub fn with_left_padding(config: &LlamaConfig, left_pad: Vec<usize>) -> Self {
        Self {
            left_pad,
            ..Self::new(config)
        }
    }
}

/// Where each token sits: `batch` rows of `start` cached positions (a prefix or earlier
/// tokens), then `virtual_tokens` prompt-tuning tokens, then `t` new tokens, optionally
/// split into segments.
struct Layout<'a> {
    batch: usize,
    t: usize,
    start: usize,
    virtual_tokens: usize,
    segments: Option<&'a [u32]>,
    padding: Option<&'a Padding>,
}

/// Left padding of a batch: row `b` has `left[b]` padding columns from column `begin`.
struct Padding {
    left: Vec<usize>,
    begin: usize,
}

impl Padding {
    fn masks(&self, row: usize, column: usize) -> bool {
        (self.begin..self.begin + self.left[row]).contains(&column)
    }

    /// A column's position: real tokens count as if the padding were not there; padding
    /// columns take position 0 (they are never attended to).
    fn position(&self, row: usize, column: usize) -> usize {
        let pad = self.left[row];
        if column < self.begin {
            column
        } else if column < self.begin + pad {
            0
        } else {
            column - pad
        }
    }
}

impl Layout<'_> {
    fn t_all(&self) -> usize {
        self.virtual_tokens + self.t
    }

    /// Position of every token, row-major `[batch, t_all]`: cached and virtual tokens count
    /// from 0; with segments, each segment's tokens count from where the virtual ones end.
    fn positions(&self) -> Vec<usize> {
        let (v, t) = (self.virtual_tokens, self.t);
        let mut out = Vec::with_capacity(self.batch * self.t_all());
        for b in 0..self.batch {
            if let Some(p) = self.padding {
                out.extend((0..v + t).map(|i| p.position(b, self.start + i)));
                continue;
            }
            out.extend((0..v).map(|i| self.start + i));
            match self.segments {
                None => out.extend((0..t).map(|i| self.start + v + i)),
                Some(seg) => {
                    let row = &seg[b * t..(b + 1) * t];
                    let mut pos = 0;
                    for i in 0..t {
                        pos = if i > 0 && row[i] == row[i - 1] {
                            pos + 1
                        } else {
                            0
                        };
                        out.push(self.start + v + pos);
                    }
                }
            }
        }
        out
    }

    /// Additive mask, `-1e9` where a token may not attend: later positions always, and with a
    /// sliding window of `w` the columns `w` or more before it; with segments, also other segments' tokens (the cached and virtual positions are shared by
    /// all); with left padding, the row's padding columns. Each batch row's block is repeated for its `heads` score blocks; without segments
    /// the one shared block is returned and the kernels repeat it.
    /// # Shapes
    /// -> `[batch * heads * t_all, start + t_all]`, or `[t_all, start + t_all]` without segments
    ///    or padding
    ///
    /// The window counts columns (cache positions), as transformers does.
    fn mask<B: Backend>(
        &self,
        heads: usize,
        window: Option<usize>,
        device: &B::Device,
    ) -> Tensor<B, 2> {
        let (t_all, start, v) = (self.t_all(), self.start, self.virtual_tokens);
        let total = start + t_all;
        let block = |b: usize| -> Vec<f32> {
            let mut out = Vec::with_capacity(t_all * total);
            for i in 0..t_all {
                for j in 0..total {
                    let causal = j <= start + i && window.is_none_or(|w| start + i < j + w);
                    let same = match self.segments {
                        Some(seg) if i >= v && j >= start + v => {
                            seg[b * self.t + i - v] == seg[b * self.t + j - start - v]
                        }
                        _ => true,
                    };
                    let padded = self.padding.is_some_and(|p| p.masks(b, j));
                    out.push(if causal && same && !padded { 0.0 } else { -1e9 });
                }
            }
            out
        };
        // Without segments every (batch row, head) has the same mask: one block, which the
        // attention kernels cycle over the score rows.
        if self.segments.is_none() && self.padding.is_none() {
            return Tensor::from_data(TensorData::new(block(0), [t_all, total]), device);
        }
        let mut values = Vec::with_capacity(self.batch * heads * t_all * total);
        for b in 0..self.batch {
            let one = block(b);
            for _ in 0..heads {
                values.extend_from_slice(&one);
            }
        }
        Tensor::from_data(
            TensorData::new(values, [self.batch * heads * t_all, total]),
            device,
        )
    }
}

/// Rotary position embedding in the rotate-half layout: the first half of each head pairs
/// with the second half (Hugging Face), not interleaved pairs (Burn's built-in). One cos/sin
/// row per token, shared by every head ([`kernels::rope`]).
#[derive(Clone)]
struct Rope<B: Backend> {
    /// `[batch * t, head_dim]`.
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
}

impl<B: Backend> Rope<B> {
    /// Tables for `rows` tokens (row-major over batch and sequence) at `positions`.
    /// `local`: the tables of Gemma 3's sliding-window layers (their own base, no scaling).
    fn new(
        config: &LlamaConfig,
        positions: &[usize],
        rows: usize,
        local: bool,
        device: &B::Device,
    ) -> Self {
        let hd = config.head_dim();
        let half = hd / 2;
        let inv_freq: Vec<f64> = (0..hd)
            .map(|i| config.rope_inv_freq(i % half, local))
            .collect();
        let mut cos = Vec::with_capacity(rows * hd);
        let mut sin = Vec::with_capacity(rows * hd);
        for &pos in &positions[..rows] {
            for f in &inv_freq {
                let angle = pos as f64 * f;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        Self {
            cos: Tensor::from_data(TensorData::new(cos, [rows, hd]), device),
            sin: Tensor::from_data(TensorData::new(sin, [rows, hd]), device),
        }
    }

    /// # Shapes
    /// - y: `[batch * t, heads * hd]` (a projection's output) -> same
    fn apply(&self, y: Tensor<B, 2>) -> Tensor<B, 2> {
        kernels::rope(y, &self.cos, &self.sin)
    }
}
