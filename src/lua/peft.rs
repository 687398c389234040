//! `runner.peft`: method specifications to attach with `model:attach(method[, name])`.
//! Every method is one constructor, so a sweep over methods is `runner.peft[p.method]{...}`.

use mlua::{Lua, Table, UserData, Value};

use super::model::default_seed;
use super::options::Opts;
use crate::peft::bottleneck::{Activation, BottleneckConfig, Placement};
use crate::peft::ia3::Ia3Config;
use crate::peft::lora::{LoraConfig, LoraInit};
use crate::peft::prompt::{PrefixConfig, PromptConfig, PromptInit};
use crate::peft::selective::BitFitConfig;
use crate::peft::{Method, PeftError, Targets};

/// A validated method, ready for `model:attach`. Prompt tuning initialised from a text keeps
/// the text here; the model's tokenizer turns it into ids when attaching.
pub struct LuaMethod {
    pub method: Method,
    pub init_text: Option<String>,
}

impl UserData for LuaMethod {
    fn add_methods<M: mlua::UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("kind", |_, this, ()| Ok(this.method.kind()));
        methods.add_meta_method("__tostring", |_, this, ()| {
            Ok(format!("runner.peft.{}", this.method.kind()))
        });
    }
}

fn method(method: Method) -> LuaMethod {
    LuaMethod {
        method,
        init_text: None,
    }
}

/// `targets`: a list of module names, "all-linear", or a regular expression over module
/// names such as `model.layers.0.self_attn.q_proj`.
fn targets(o: &Opts, default: Targets) -> mlua::Result<Targets> {
    let t = match o.raw("targets")? {
        Value::Nil => default,
        Value::String(s) if s.to_string_lossy() == "all-linear" => Targets::AllLinear,
        Value::String(s) => Targets::Pattern(s.to_string_lossy()),
        _ => match o.strings("targets")? {
            Some(list) if list.len() == 1 && list[0] == "all-linear" => Targets::AllLinear,
            Some(list) => Targets::Names(list),
            None => default,
        },
    };
    t.validate().map_err(|e| o.err(e))?;
    Ok(t)
}

fn seed(lua: &Lua, o: &Opts) -> mlua::Result<u64> {
    match o.int("seed")? {
        Some(s) => Ok(s as u64),
        None => default_seed(lua),
    }
}

fn lora(lua: &Lua, opts: Option<Table>, func: &'static str, dora: bool) -> mlua::Result<LuaMethod> {
    let o = Opts::new(
        lua,
        func,
        opts,
        &[
            "rank", "alpha", "dropout", "targets", "rslora", "init", "dora", "seed",
        ],
    )?;
    let rank = o.int("rank")?.unwrap_or(8);
    if rank < 1 {
        return Err(o.err(PeftError::Rank(rank)));
    }
    let init = match o.string("init")? {
        None => LoraInit::Kaiming,
        Some(s) => LoraInit::parse(&s).ok_or_else(|| {
            o.err(format!(
                "init must be \"kaiming\", \"gaussian\" or \"pissa\" (got \"{s}\")"
            ))
        })?,
    };
    // Hugging Face PEFT's defaults: r = 8, lora_alpha = 8, dropout 0, q_proj + v_proj for Llama.
    let config = LoraConfig {
        rank: rank as usize,
        alpha: o.num("alpha")?.unwrap_or(8.0),
        dropout: o.num("dropout")?.unwrap_or(0.0),
        targets: targets(&o, Targets::names(&["q_proj", "v_proj"]))?,
        rslora: o.bool("rslora")?.unwrap_or(false),
        init,
        dora: o.bool("dora")?.unwrap_or(dora),
        seed: seed(lua, &o)?,
    };
    config.validate().map_err(|e| o.err(e))?;
    Ok(method(Method::Lora(config)))
}

fn bottleneck(
    lua: &Lua,
    opts: Option<Table>,
    func: &'static str,
    placement: Option<Placement>,
) -> mlua::Result<LuaMethod> {
    let mut keys = vec!["reduction_factor", "activation", "seed"];
    if placement.is_none() {
        keys.push("placement");
    }
    let o = Opts::new(lua, func, opts, &keys)?;
    let placement = match placement {
        Some(p) => p,
        None => match o.string("placement")?.as_deref() {
            None | Some("houlsby") => Placement::Houlsby,
            Some("pfeiffer") => Placement::Pfeiffer,
            Some(other) => {
                return Err(o.err(format!(
                    "placement must be \"houlsby\" or \"pfeiffer\" (got \"{other}\")"
                )));
            }
        },
    };
    let d = BottleneckConfig::default();
    let activation = match o.string("activation")? {
        None => d.activation,
        Some(s) => Activation::parse(&s).ok_or_else(|| {
            o.err(format!(
                "activation must be relu, gelu, silu or tanh (got \"{s}\")"
            ))
        })?,
    };
    Ok(method(Method::Bottleneck(BottleneckConfig {
        placement,
        reduction_factor: o
            .count("reduction_factor", 1)?
            .unwrap_or(d.reduction_factor),
        activation,
        seed: seed(lua, &o)?,
    })))
}

pub fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "lora",
        lua.create_function(|lua, opts: Option<Table>| lora(lua, opts, "runner.peft.lora", false))?,
    )?;
    t.set(
        "dora",
        lua.create_function(|lua, opts: Option<Table>| lora(lua, opts, "runner.peft.dora", true))?,
    )?;
    t.set(
        "ia3",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(lua, "runner.peft.ia3", opts, &["targets", "feedforward"])?;
            let d = Ia3Config::default();
            let feedforward = match o.strings("feedforward")? {
                Some(list) => Targets::Names(list),
                None => d.feedforward,
            };
            Ok(method(Method::Ia3(Ia3Config {
                targets: targets(&o, d.targets)?,
                feedforward,
            })))
        })?,
    )?;
    t.set(
        "bottleneck",
        lua.create_function(|lua, opts: Option<Table>| {
            bottleneck(lua, opts, "runner.peft.bottleneck", None)
        })?,
    )?;
    t.set(
        "houlsby",
        lua.create_function(|lua, opts: Option<Table>| {
            bottleneck(lua, opts, "runner.peft.houlsby", Some(Placement::Houlsby))
        })?,
    )?;
    t.set(
        "pfeiffer",
        lua.create_function(|lua, opts: Option<Table>| {
            bottleneck(lua, opts, "runner.peft.pfeiffer", Some(Placement::Pfeiffer))
        })?,
    )?;
    t.set(
        "prompt_tuning",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.peft.prompt_tuning",
                opts,
                &["num_virtual_tokens", "init", "text", "seed"],
            )?;
            let text = o.string("text")?;
            let init = match (o.string("init")?.as_deref(), &text) {
                (None | Some("text"), Some(_)) => PromptInit::Tokens(Vec::new()),
                (Some("text"), None) => return Err(o.err("init = \"text\" needs text = \"...\"")),
                (None | Some("random"), None) => PromptInit::Random,
                (Some("sample_vocab"), None) => PromptInit::SampleVocab,
                (Some(other), _) => {
                    return Err(o.err(format!(
                        "init must be \"random\", \"sample_vocab\" or \"text\" (got \"{other}\")"
                    )));
                }
            };
            let config = PromptConfig {
                num_virtual_tokens: o.count("num_virtual_tokens", 1)?.unwrap_or(20),
                init,
                init_text: text.clone(),
                seed: seed(lua, &o)?,
            };
            Ok(LuaMethod {
                method: Method::Prompt(config),
                init_text: text,
            })
        })?,
    )?;
    t.set(
        "prefix_tuning",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.peft.prefix_tuning",
                opts,
                &["num_virtual_tokens", "projection", "seed"],
            )?;
            Ok(method(Method::Prefix(PrefixConfig {
                num_virtual_tokens: o.count("num_virtual_tokens", 1)?.unwrap_or(20),
                projection: o.count("projection", 1)?,
                seed: seed(lua, &o)?,
            })))
        })?,
    )?;
    t.set(
        "bitfit",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(lua, "runner.peft.bitfit", opts, &["targets"])?;
            Ok(method(Method::BitFit(BitFitConfig {
                targets: targets(&o, Targets::AllLinear)?,
            })))
        })?,
    )?;
    t.set(
        "ln_tuning",
        lua.create_function(|lua, opts: Option<Table>| {
            Opts::new(lua, "runner.peft.ln_tuning", opts, &[])?;
            Ok(method(Method::LnTuning))
        })?,
    )?;
    t.set(
        "full",
        lua.create_function(|lua, opts: Option<Table>| {
            Opts::new(lua, "runner.peft.full", opts, &[])?;
            Ok(method(Method::Full))
        })?,
    )?;
    runner.set("peft", t)
}
