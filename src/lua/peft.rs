//! `runner.peft`: method specifications to attach with `model:attach(method[, name])`.
//! Every method is one constructor, so a sweep over methods is `runner.peft[p.method]{...}`.

use mlua::{Lua, Table, UserData, Value};

use super::config::from_table;
use super::model::default_seed;
use super::options::{Opts, recipe_error};
use crate::peft::adamix::AdaMixConfig;
use crate::peft::bottleneck::{BottleneckConfig, Placement};
use crate::peft::compacter::CompacterConfig;
use crate::peft::format::read_prompt_table;
use crate::peft::ia3::Ia3Config;
use crate::peft::intrinsic::{IntrinsicConfig, IntrinsicInit};
use crate::peft::krona::KronaConfig;
use crate::peft::late::LadderConfig;
use crate::peft::lets::LetsConfig;
use crate::peft::lokr::LokrConfig;
use crate::peft::lora::LoraConfig;
use crate::peft::prompt::{PrefixConfig, PromptConfig, PromptInit};
use crate::peft::selective::BitFitConfig;
use crate::peft::warp::WarpConfig;
use crate::peft::{Method, Targets};
use crate::train::intrinsic::{SubspaceConfig, fit_subspace};

/// A validated method, ready for `model:attach`. Prompt tuning initialised from a text keeps
/// the text here; the model's tokenizer turns it into ids when attaching.
pub(crate) struct LuaMethod {
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

/// Prompt tuning's options (WARP's prompts take them too).
fn prompt_config(lua: &Lua, o: &Opts) -> mlua::Result<PromptConfig> {
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
    Ok(PromptConfig {
        num_virtual_tokens: o
            .count("num_virtual_tokens", 1)?
            .unwrap_or(PromptConfig::default().num_virtual_tokens),
        init,
        init_text: text,
        seed: match o.int("seed")? {
            Some(s) => s as u64,
            None => default_seed(lua)?,
        },
    })
}

fn method(method: Method) -> LuaMethod {
    LuaMethod {
        method,
        init_text: None,
    }
}

/// `seed` defaults to the recipe's seed (`--seed`, or `runner.seed`), not the config's 0.
fn seed_fill(lua: &Lua) -> mlua::Result<(&'static str, Value)> {
    Ok(("seed", Value::Integer(default_seed(lua)? as i64)))
}

fn lora(lua: &Lua, opts: Option<Table>, func: &'static str, dora: bool) -> mlua::Result<LuaMethod> {
    let fill = [seed_fill(lua)?, ("dora", Value::Boolean(dora))];
    let config: LoraConfig = from_table(lua, func, opts, &fill, &[])?;
    config
        .validate()
        .map_err(|e| recipe_error(lua, format!("{func}: {e}")))?;
    Ok(method(Method::Lora(config)))
}

fn bottleneck(
    lua: &Lua,
    opts: Option<Table>,
    func: &'static str,
    placement: Option<Placement>,
) -> mlua::Result<LuaMethod> {
    // houlsby{} and pfeiffer{} fix the placement: it is not one of their options.
    let exclude: &[&str] = if placement.is_some() {
        &["placement"]
    } else {
        &[]
    };
    let mut config: BottleneckConfig = from_table(lua, func, opts, &[seed_fill(lua)?], exclude)?;
    if let Some(p) = placement {
        config.placement = p;
    }
    Ok(method(Method::Bottleneck(config)))
}

/// Compacter (Houlsby placement) and Compacter++ (Pfeiffer): the placement is fixed by the name.
fn compacter(
    lua: &Lua,
    opts: Option<Table>,
    func: &'static str,
    placement: Placement,
) -> mlua::Result<LuaMethod> {
    let mut config: CompacterConfig =
        from_table(lua, func, opts, &[seed_fill(lua)?], &["placement"])?;
    config.placement = placement;
    Ok(method(Method::Compacter(config)))
}

/// A config whose only checks are its targets'.
fn checked_targets(lua: &Lua, func: &str, targets: &[&Targets]) -> mlua::Result<()> {
    for t in targets {
        t.validate()
            .map_err(|e| recipe_error(lua, format!("{func}: {e}")))?;
    }
    Ok(())
}

pub(crate) fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
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
            let func = "runner.peft.ia3";
            let config: Ia3Config = from_table(lua, func, opts, &[], &[])?;
            checked_targets(lua, func, &[&config.targets, &config.feedforward])?;
            Ok(method(Method::Ia3(config)))
        })?,
    )?;
    t.set(
        "lokr",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.lokr";
            let config: LokrConfig = from_table(lua, func, opts, &[seed_fill(lua)?], &[])?;
            config
                .validate()
                .map_err(|e| recipe_error(lua, format!("{func}: {e}")))?;
            Ok(method(Method::Lokr(config)))
        })?,
    )?;
    t.set(
        "krona",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.krona";
            let config: KronaConfig = from_table(lua, func, opts, &[seed_fill(lua)?], &[])?;
            config
                .validate()
                .map_err(|e| recipe_error(lua, format!("{func}: {e}")))?;
            Ok(method(Method::Krona(config)))
        })?,
    )?;
    t.set(
        "compacter",
        lua.create_function(|lua, opts: Option<Table>| {
            compacter(lua, opts, "runner.peft.compacter", Placement::Houlsby)
        })?,
    )?;
    t.set(
        "compacter_pp",
        lua.create_function(|lua, opts: Option<Table>| {
            compacter(lua, opts, "runner.peft.compacter_pp", Placement::Pfeiffer)
        })?,
    )?;
    t.set(
        "adamix",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.adamix";
            let config: AdaMixConfig = from_table(lua, func, opts, &[seed_fill(lua)?], &[])?;
            config
                .validate()
                .map_err(|e| recipe_error(lua, format!("{func}: {e}")))?;
            Ok(method(Method::AdaMix(config)))
        })?,
    )?;
    t.set(
        "intrinsic_prompt",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(lua, "runner.peft.intrinsic_prompt", opts, &["subspace", "init"])?;
            let subspace = o
                .string("subspace")?
                .ok_or_else(|| o.err("subspace = DIR is required (a folder written by runner.peft.fit_intrinsic_subspace)"))?;
            let init = match o.string("init")?.as_deref() {
                None | Some("mean") => IntrinsicInit::Mean,
                Some("zero") => IntrinsicInit::Zero,
                Some(other) => {
                    return Err(o.err(format!("init must be \"mean\" or \"zero\" (got \"{other}\")")));
                }
            };
            Ok(method(Method::Intrinsic(IntrinsicConfig {
                subspace: Some(std::path::PathBuf::from(subspace)),
                init,
                ..Default::default()
            })))
        })?,
    )?;
    // runner.peft.fit_intrinsic_subspace{prompts = {dir, ...}, out = DIR, dim = 5, ...}
    // -> {loss = final reconstruction error, losses = {...}}
    t.set(
        "fit_intrinsic_subspace",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.fit_intrinsic_subspace";
            let o = Opts::new(lua, func, opts.clone(), &["prompts", "out", "dim", "hidden", "steps", "lr", "seed"])?;
            let dirs = o
                .strings("prompts")?
                .ok_or_else(|| o.err("prompts = {DIR, ...} is required: prompt-tuning adapters of several tasks"))?;
            let out = o.string("out")?.ok_or_else(|| o.err("out = DIR is required"))?;
            let out = super::host::write_path(lua, func, &out)?;
            // The numeric settings go through the config struct's own checks.
            let rest = lua.create_table()?;
            for k in ["dim", "hidden", "steps", "lr", "seed"] {
                rest.set(k, o.raw(k)?)?;
            }
            let rest = Some(rest);
            let config: SubspaceConfig = from_table(lua, func, rest, &[seed_fill(lua)?], &[])?;
            let mut prompts = Vec::new();
            let mut shape: Option<Vec<usize>> = None;
            for dir in &dirs {
                let path = std::path::PathBuf::from(dir);
                let (s, v) = read_prompt_table(&path).map_err(|e| o.err(e))?;
                if let Some(first) = &shape
                    && *first != s
                {
                    return Err(o.err(format!(
                        "{dir}: its prompt is {s:?}, but the first one's is {first:?}: every prompt needs the same shape"
                    )));
                }
                shape = Some(s);
                prompts.push(v);
            }
            let shape = shape.ok_or_else(|| o.err("prompts is empty"))?;
            type Cpu = burn::backend::Autodiff<burn::backend::Flex>;
            let (subspace, losses) =
                fit_subspace::<Cpu>(&prompts, [shape[0], shape[1]], &config, &Default::default())
                    .map_err(|e| o.err(e))?;
            let last = *losses.last().expect("at least one step");
            subspace
                .write(&out, serde_json::json!({"sources": dirs, "reconstruction_mse": last, "steps": config.steps, "lr": config.lr}))
                .map_err(|e| o.err(e))?;
            let result = lua.create_table()?;
            result.set("loss", last)?;
            result.set("losses", losses)?;
            Ok(result)
        })?,
    )?;
    t.set(
        "ladder",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.ladder";
            let config: LadderConfig = from_table(lua, func, opts, &[seed_fill(lua)?], &[])?;
            Ok(method(Method::Ladder(config)))
        })?,
    )?;
    t.set(
        "attention_fusion",
        lua.create_function(|lua, opts: Option<Table>| {
            Opts::new(lua, "runner.peft.attention_fusion", opts, &[])?;
            Ok(method(Method::AttentionFusion))
        })?,
    )?;
    t.set(
        "lets",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.lets";
            let config: LetsConfig = from_table(lua, func, opts, &[], &["selected"])?;
            Ok(method(Method::Lets(config)))
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
            let config = prompt_config(lua, &o)?;
            Ok(LuaMethod {
                init_text: config.init_text.clone(),
                method: Method::Prompt(config),
            })
        })?,
    )?;
    t.set(
        "warp",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.peft.warp",
                opts,
                &["labels", "num_virtual_tokens", "init", "text", "seed"],
            )?;
            let label_words = o
                .strings("labels")?
                .ok_or_else(|| o.err("labels = {...} is required: one label word per class"))?;
            let mut prompt = prompt_config(lua, &o)?;
            if o.raw("num_virtual_tokens")?.is_nil() {
                prompt.num_virtual_tokens = 8;
            }
            Ok(LuaMethod {
                init_text: prompt.init_text.clone(),
                method: Method::Warp(WarpConfig {
                    prompt,
                    labels: Vec::new(),
                    label_words,
                }),
            })
        })?,
    )?;
    t.set(
        "prefix_tuning",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.prefix_tuning";
            let config: PrefixConfig = from_table(lua, func, opts, &[seed_fill(lua)?], &[])?;
            config
                .validate()
                .map_err(|e| recipe_error(lua, format!("{func}: {e}")))?;
            Ok(method(Method::Prefix(config)))
        })?,
    )?;
    t.set(
        "bitfit",
        lua.create_function(|lua, opts: Option<Table>| {
            let func = "runner.peft.bitfit";
            let config: BitFitConfig = from_table(lua, func, opts, &[], &[])?;
            checked_targets(lua, func, &[&config.targets])?;
            Ok(method(Method::BitFit(config)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peft::bottleneck::BottleneckConfig;
    use crate::peft::prompt::PrefixConfig;
    use crate::peft::selective::BitFitConfig;

    /// `runner.peft` alone, with `runner.seed` set as `--seed 7` would.
    fn lua() -> Lua {
        let lua = Lua::new();
        let runner = lua.create_table().unwrap();
        runner.set("seed", 7).unwrap();
        register(&lua, &runner).unwrap();
        lua.globals().set("runner", runner).unwrap();
        lua
    }

    fn method_of(lua: &Lua, code: &str) -> Result<Method, String> {
        let ud: mlua::AnyUserData = lua.load(code).eval().map_err(|e| e.to_string())?;
        let m = ud.borrow::<LuaMethod>().unwrap();
        Ok(m.method.clone())
    }

    #[test]
    fn lua_defaults_are_the_config_defaults() {
        let lua = lua();
        let seeded = 7;
        assert_eq!(
            method_of(&lua, "return runner.peft.lora{}").unwrap(),
            Method::Lora(LoraConfig {
                seed: seeded,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.dora{}").unwrap(),
            Method::Lora(LoraConfig {
                seed: seeded,
                dora: true,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.ia3{}").unwrap(),
            Method::Ia3(Ia3Config::default())
        );
        assert_eq!(
            method_of(
                &lua,
                "return runner.peft.lokr{decompose_both = true, init = 'lycoris'}"
            )
            .unwrap(),
            Method::Lokr(LokrConfig {
                seed: seeded,
                decompose_both: true,
                init: crate::peft::lokr::LokrInit::Lycoris,
                ..Default::default()
            })
        );
        let err = method_of(&lua, "return runner.peft.lokr{rank_dropout = 1.5}").unwrap_err();
        assert!(
            err.to_string().contains("rank_dropout must be in [0, 1)"),
            "{err}"
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.bottleneck{}").unwrap(),
            Method::Bottleneck(BottleneckConfig {
                seed: seeded,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.pfeiffer{}").unwrap(),
            Method::Bottleneck(BottleneckConfig {
                seed: seeded,
                placement: Placement::Pfeiffer,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.prefix_tuning{}").unwrap(),
            Method::Prefix(PrefixConfig {
                seed: seeded,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.bitfit{}").unwrap(),
            Method::BitFit(BitFitConfig::default())
        );
        let Method::Prompt(p) = method_of(&lua, "return runner.peft.prompt_tuning{}").unwrap()
        else {
            panic!("prompt tuning")
        };
        assert_eq!(
            p.num_virtual_tokens,
            PromptConfig::default().num_virtual_tokens
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.krona{}").unwrap(),
            Method::Krona(KronaConfig {
                seed: seeded,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(
                &lua,
                "return runner.peft.compacter_pp{reduction_factor = 24}"
            )
            .unwrap(),
            Method::Compacter(CompacterConfig {
                seed: seeded,
                placement: Placement::Pfeiffer,
                reduction_factor: 24,
                ..Default::default()
            })
        );
        assert_eq!(
            method_of(&lua, "return runner.peft.adamix{}").unwrap(),
            Method::AdaMix(AdaMixConfig {
                seed: seeded,
                ..Default::default()
            })
        );
        let Method::Warp(w) =
            method_of(&lua, "return runner.peft.warp{labels = {' yes', ' no'}}").unwrap()
        else {
            panic!("warp")
        };
        assert_eq!(w.label_words, [" yes", " no"]);
        assert_eq!(w.prompt.num_virtual_tokens, 8);
    }

    #[test]
    fn new_method_options_are_checked() {
        let lua = lua();
        for (code, want) in [
            ("return runner.peft.warp{}", "labels = {...} is required"),
            (
                "return runner.peft.compacter{placement = 'pfeiffer'}",
                "placement",
            ),
            (
                "return runner.peft.krona{scale = -1}",
                "KronA scale must be a positive",
            ),
            ("return runner.peft.krona{placement = 'mlp'}", "placement"),
            (
                "return runner.peft.adamix{experts = 0}",
                "at least one expert",
            ),
            ("return runner.peft.adamix{share = 'left'}", "share"),
        ] {
            let e = method_of(&lua, code).unwrap_err();
            assert!(e.contains(want), "{code}: {e}");
        }
    }

    /// PEFT's `LoraConfig`: r 8, lora_alpha 8, dropout 0, q_proj and v_proj.
    #[test]
    fn lora_defaults_are_pefts() {
        let d = LoraConfig::default();
        assert_eq!((d.rank, d.alpha, d.dropout), (8, 8.0, 0.0));
        assert_eq!(d.targets, Targets::names(&["q_proj", "v_proj"]));
    }

    #[test]
    fn options_are_read_and_checked() {
        let lua = lua();
        let m = method_of(
            &lua,
            "return runner.peft.lora{rank = 4, alpha = 16, targets = 'all-linear', init = 'gaussian', seed = 3}",
        )
        .unwrap();
        let Method::Lora(c) = m else { panic!() };
        assert_eq!(
            (c.rank, c.alpha, c.targets, c.init, c.seed),
            (
                4,
                16.0,
                Targets::AllLinear,
                crate::peft::lora::LoraInit::Gaussian,
                3
            )
        );
        let Method::Lora(c) = method_of(
            &lua,
            "return runner.peft.lora{init = 'default', targets = {'q_proj'}}",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(c.targets, Targets::names(&["q_proj"]));
        let Method::Bottleneck(b) =
            method_of(&lua, "return runner.peft.houlsby{activation = 'swish'}").unwrap()
        else {
            panic!()
        };
        assert_eq!(b.activation, crate::peft::bottleneck::Activation::Silu);
        for (code, want) in [
            (
                "return runner.peft.lora{rnak = 4}",
                "runner.peft.lora: unknown option 'rnak' (did you mean 'rank'?)",
            ),
            (
                "return runner.peft.lora{rank = 0}",
                "runner.peft.lora: LoRA rank must be a positive integer (got 0)",
            ),
            (
                "return runner.peft.lora{init = 'xavier'}",
                "runner.peft.lora: init must be \"default\", \"kaiming\", \"gaussian\" or \"pissa\" (got \"xavier\")",
            ),
            (
                "return runner.peft.lora{targets = 3}",
                "runner.peft.lora: targets: invalid type: integer `3`, expected \"all-linear\", a pattern, or a list of module names",
            ),
            (
                "return runner.peft.houlsby{placement = 'pfeiffer'}",
                "runner.peft.houlsby: unknown option 'placement'",
            ),
            (
                "return runner.peft.bottleneck{activation = 'elu'}",
                "activation must be \"relu\", \"gelu\", \"silu\", \"swish\" or \"tanh\" (got \"elu\")",
            ),
            (
                "return runner.peft.prefix_tuning{num_virtual_tokens = 0}",
                "num_virtual_tokens must be at least 1",
            ),
            ("return runner.peft.ia3{targets = {}}", "runner.peft.ia3: "),
        ] {
            let err = method_of(&lua, code).unwrap_err();
            assert!(err.contains(want), "{code}: {err}");
        }
    }
}
