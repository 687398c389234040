//! `runner.peft`: method specifications to attach to a model.

use mlua::{Lua, Table, UserData};

use super::model::default_seed;
use super::options::Opts;
use crate::model::llama::LINEAR_TARGETS;
use crate::peft::lora::{LoraConfig, LoraError};

/// A validated LoRA configuration, ready for `model:attach`.
pub struct LuaLora(pub LoraConfig);

impl UserData for LuaLora {}

pub fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "lora",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(lua, "runner.peft.lora", opts, &["rank", "alpha", "dropout", "targets", "rslora", "seed"])?;
            // Hugging Face PEFT's defaults: r = 8, lora_alpha = 8, dropout 0, q_proj + v_proj for Llama.
            let d = LoraConfig::default();
            let rank = o.int("rank")?.unwrap_or(8);
            if rank < 1 {
                return Err(o.err(LoraError::Rank(rank)));
            }
            let targets = match o.strings("targets")? {
                Some(list) if list.len() == 1 && list[0] == "all-linear" => LINEAR_TARGETS.iter().map(|s| s.to_string()).collect(),
                Some(list) => list,
                None => d.targets,
            };
            let config = LoraConfig {
                rank: rank as usize,
                alpha: o.num("alpha")?.unwrap_or(8.0),
                dropout: o.num("dropout")?.unwrap_or(d.dropout),
                targets,
                rslora: o.bool("rslora")?.unwrap_or(false),
                seed: match o.int("seed")? {
                    Some(s) => s as u64,
                    None => default_seed(lua)?,
                },
            };
            config.validate().map_err(|e| o.err(e))?;
            Ok(LuaLora(config))
        })?,
    )?;
    runner.set("peft", t)
}
