//! `runner.model`: building models, and the methods of a model object.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::DeviceData;
use super::options::{Opts, describe, recipe_error};
use crate::data::tokenizer::Tokenizer;
use crate::generate::{GenerateOptions, generate};
use crate::model::{Llama, TinyOptions};
use crate::pretrained;
use crate::train::perplexity::perplexity;
use crate::train::token_logprobs;

/// A model shared between the recipe and the trainers that update it, with its tokenizer.
pub(crate) struct LuaModel<B: AutodiffBackend> {
    pub model: Rc<RefCell<Llama<B>>>,
    pub tokenizer: Tokenizer,
}

impl<B: AutodiffBackend> LuaModel<B> {
    fn new(model: Llama<B>, tokenizer: Tokenizer) -> Self {
        Self {
            model: Rc::new(RefCell::new(model)),
            tokenizer,
        }
    }
}

pub(crate) fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "tiny",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.model.tiny",
                opts,
                &[
                    "layers",
                    "d_model",
                    "heads",
                    "kv_heads",
                    "vocab",
                    "ffn",
                    "tied",
                    "max_seq",
                    "rope_theta",
                    "init_std",
                    "seed",
                ],
            )?;
            let d = TinyOptions::default();
            let seed = match o.int("seed")? {
                Some(s) => s as u64,
                None => default_seed(lua)?,
            };
            let tiny = TinyOptions {
                layers: o.count("layers", 1)?.unwrap_or(d.layers),
                d_model: o.count("d_model", 1)?.unwrap_or(d.d_model),
                heads: o.count("heads", 1)?.unwrap_or(d.heads),
                kv_heads: o.count("kv_heads", 1)?.unwrap_or(d.kv_heads),
                vocab: o.count("vocab", 1)?.unwrap_or(d.vocab),
                ffn: o.count("ffn", 1)?,
                tied: o.bool("tied")?.unwrap_or(d.tied),
                max_seq: o.count("max_seq", 1)?.unwrap_or(d.max_seq),
                rope_theta: o.num("rope_theta")?.unwrap_or(d.rope_theta),
                init_std: o.num("init_std")?,
                seed,
            };
            let device = lua
                .app_data_ref::<DeviceData<B>>()
                .expect("device registered")
                .0
                .clone();
            let model = Llama::<B>::random(tiny.config(), tiny.seed, tiny.std(), &device)
                .map_err(|e| o.err(e))?;
            Ok(LuaModel::new(model, Tokenizer::Bytes))
        })?,
    )?;
    t.set(
        "load",
        // runner.model.load(name_or_path[, {quantize = {dtype = "nf4", block = 64, double = true}}])
        lua.create_function(|lua, (name, opts): (String, Option<Table>)| {
            let o = Opts::new(lua, "runner.model.load", opts, &["quantize"])?;
            let quant = match o.raw("quantize")? {
                Value::Nil => None,
                Value::Table(t) => Some(super::quant::quant_config(&Opts::new(
                    lua,
                    "runner.model.load: quantize",
                    Some(t),
                    super::quant::QUANT_OPTIONS,
                )?)?),
                other => {
                    return Err(o.err(format!(
                        "quantize must be a table such as {{dtype = \"nf4\"}}, found {}",
                        describe(&other)
                    )));
                }
            };
            let device = lua
                .app_data_ref::<DeviceData<B>>()
                .expect("device registered")
                .0
                .clone();
            super::host::note_model_input(lua, &name)?;
            let p = pretrained::load_quantized::<B>(&name, &device, quant)
                .map_err(|e| recipe_error(lua, format!("runner.model.load: {e}")))?;
            let tokenizer = p
                .tokenizer
                .map_or(Tokenizer::Bytes, |t| Tokenizer::Text(Rc::new(t)));
            Ok(LuaModel::new(p.model, tokenizer))
        })?,
    )?;
    runner.set("model", t)
}

/// `runner.seed` (from `--seed`), the default of every seed option.
pub(crate) fn default_seed(lua: &Lua) -> mlua::Result<u64> {
    let runner: Table = lua.globals().get("runner")?;
    Ok(runner.get::<Option<i64>>("seed")?.unwrap_or(0) as u64)
}

impl<B: AutodiffBackend> UserData for LuaModel<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("clone", |_, this, ()| {
            Ok(LuaModel::new(
                this.model.borrow().clone(),
                this.tokenizer.clone(),
            ))
        });
        methods.add_method("encode", |lua, this, text: String| {
            this.tokenizer
                .encode(&text)
                .map_err(|e| recipe_error(lua, format!("model:encode: {e}")))
        });
        methods.add_method(
            "decode",
            |lua, this, (ids, skip): (Vec<u32>, Option<bool>)| {
                this.tokenizer
                    .decode(&ids, skip.unwrap_or(false))
                    .map_err(|e| recipe_error(lua, format!("model:decode: {e}")))
            },
        );
        // model:chat{ {role = "user", content = "..."}, ... } or model:chat("text"): the chat template applied.
        methods.add_method(
            "chat",
            |lua, this, (messages, add_prompt): (Value, Option<bool>)| {
                let Tokenizer::Text(tok) = &this.tokenizer else {
                    return Err(recipe_error(
                        lua,
                        "model:chat: this model has no chat template (byte-level tiny model)",
                    ));
                };
                let messages = chat_messages(lua, messages)?;
                tok.apply_chat_template(&messages, add_prompt.unwrap_or(true))
                    .map_err(|e| recipe_error(lua, format!("model:chat: {e}")))
            },
        );
        methods.add_method("special_tokens", |lua, this, ()| {
            let t = lua.create_table()?;
            if let Tokenizer::Text(tok) = &this.tokenizer {
                t.set("bos", tok.bos)?;
                t.set("eos", tok.eos)?;
            }
            Ok(t)
        });
        methods.add_method(
            "generate",
            |lua, this, (prompt, opts): (String, Option<Table>)| {
                let o = Opts::new(
                    lua,
                    "model:generate",
                    opts,
                    &[
                        "max_new_tokens",
                        "temperature",
                        "top_p",
                        "top_k",
                        "seed",
                        "chat",
                    ],
                )?;
                let d = GenerateOptions::default();
                let text = if o.bool("chat")?.unwrap_or(false) {
                    let Tokenizer::Text(tok) = &this.tokenizer else {
                        return Err(o.err("chat = true needs a model with a chat template"));
                    };
                    tok.apply_chat_template(&[("user".into(), prompt)], true)
                        .map_err(|e| o.err(e))?
                } else {
                    prompt
                };
                let opts = GenerateOptions {
                    max_new_tokens: o.count("max_new_tokens", 0)?.unwrap_or(d.max_new_tokens),
                    temperature: o.num("temperature")?.unwrap_or(d.temperature),
                    top_p: o.num("top_p")?.unwrap_or(d.top_p),
                    top_k: o.count("top_k", 0)?.unwrap_or(d.top_k),
                    seed: match o.int("seed")? {
                        Some(s) => s as u64,
                        None => default_seed(lua)?,
                    },
                    stop: this.tokenizer.eos().into_iter().collect(),
                };
                let ids = this.tokenizer.encode(&text).map_err(|e| o.err(e))?;
                super::host::dry_run_stop(
                    lua,
                    &this.model.borrow(),
                    1,
                    ids.len() + opts.max_new_tokens,
                    false,
                )?;
                let out = generate(&this.model.borrow(), &ids, &opts).map_err(|e| o.err(e))?;
                crate::memory::release_autodiff_graph::<B>(&this.model.borrow().device);
                this.tokenizer.decode(&out, true).map_err(|e| o.err(e))
            },
        );
        // Log-probability of each token given the ones before it (n - 1 values).
        methods.add_method("logprobs", |lua, this, ids: Vec<u32>| {
            let out = token_logprobs(&this.model.borrow(), &ids)
                .map_err(|e| recipe_error(lua, format!("model:logprobs: {e}")));
            crate::memory::release_autodiff_graph::<B>(&this.model.borrow().device);
            out
        });
        // model:classify(prompts, labels) -> for each prompt, the 1-based index of the label
        // word (each one token) that the model ranks highest as the next token.
        methods.add_method(
            "classify",
            |lua, this, (prompts, labels): (Vec<String>, Vec<String>)| {
                let err = |m: String| recipe_error(lua, format!("model:classify: {m}"));
                let mut label_ids = Vec::new();
                for word in &labels {
                    match this
                        .tokenizer
                        .encode(word)
                        .map_err(|e| err(e.to_string()))?[..]
                    {
                        [id] => label_ids.push(id),
                        ref ids => {
                            return Err(err(format!(
                                "label {word:?} is {} tokens; each label must be one token",
                                ids.len()
                            )));
                        }
                    }
                }
                if label_ids.len() < 2 {
                    return Err(err("give at least two labels".into()));
                }
                let mut ids = Vec::with_capacity(prompts.len());
                for (i, p) in prompts.iter().enumerate() {
                    let t = this.tokenizer.encode(p).map_err(|e| err(e.to_string()))?;
                    if t.is_empty() {
                        return Err(err(format!("prompt {} is empty", i + 1)));
                    }
                    ids.push(t);
                }
                let longest = ids.iter().map(Vec::len).max().unwrap_or(0);
                super::host::dry_run_stop(lua, &this.model.borrow(), 1, longest, false)?;
                let picks =
                    crate::train::classify::classify(&this.model.borrow(), &ids, &label_ids);
                crate::memory::release_autodiff_graph::<B>(&this.model.borrow().device);
                Ok(picks.into_iter().map(|j| j + 1).collect::<Vec<_>>())
            },
        );
        methods.add_method(
            "perplexity",
            |lua, this, (text, opts): (String, Option<Table>)| {
                let o = Opts::new(lua, "model:perplexity", opts, &["window", "stride"])?;
                let model = this.model.borrow();
                let window = o
                    .count("window", 2)?
                    .unwrap_or(model.config.max_position_embeddings.min(1024));
                let stride = o.count("stride", 1)?.unwrap_or(window);
                let ids = this.tokenizer.encode(&text).map_err(|e| o.err(e))?;
                super::host::dry_run_stop(lua, &model, 1, window, false)?;
                let r = perplexity(&model, &ids, window, stride).map_err(|e| o.err(e));
                crate::memory::release_autodiff_graph::<B>(&model.device);
                let r = r?;
                let t = lua.create_table()?;
                t.set("perplexity", r.perplexity)?;
                t.set("nll", r.nll)?;
                t.set("tokens", r.tokens)?;
                Ok((r.perplexity, t))
            },
        );
        super::adapters::add_methods(methods);
        super::quant::add_methods(methods);
        super::preference::add_model_methods(methods);
        methods.add_method("trainable_params", |_, this, ()| {
            Ok(this.model.borrow().param_count().trainable)
        });
        methods.add_method("total_params", |_, this, ()| {
            Ok(this.model.borrow().param_count().total)
        });
        methods.add_method("config", |lua, this, ()| {
            let value =
                serde_json::to_value(&this.model.borrow().config).map_err(mlua::Error::external)?;
            super::json_to_lua(lua, &value)
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            let m = this.model.borrow();
            let c = m.param_count();
            Ok(format!(
                "Llama(layers={}, d_model={}, heads={}/{}, vocab={}, params={}, trainable={})",
                m.config.num_hidden_layers,
                m.config.hidden_size,
                m.config.num_attention_heads,
                m.config.num_key_value_heads,
                m.config.vocab_size,
                c.total,
                c.trainable
            ))
        });
    }
}

/// A list of {role=, content=} tables, or one string as a user message.
fn chat_messages(lua: &Lua, v: Value) -> mlua::Result<Vec<(String, String)>> {
    match v {
        Value::String(s) => Ok(vec![("user".into(), s.to_string_lossy())]),
        Value::Table(list) => {
            let mut out = Vec::new();
            for item in list.sequence_values::<Table>() {
                let o = Opts::new(lua, "model:chat", Some(item?), &["role", "content"])?;
                out.push((
                    o.required("role", o.string("role")?)?,
                    o.required("content", o.string("content")?)?,
                ));
            }
            Ok(out)
        }
        other => Err(recipe_error(
            lua,
            format!(
                "model:chat expects a string or a list of {{role=, content=}}, found {}",
                describe(&other)
            ),
        )),
    }
}
