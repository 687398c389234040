//! `runner.data`: datasets, splits and batch iterators.

use std::cell::RefCell;
use std::path::Path;

use mlua::{Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods, Value};

use super::model::default_seed;
use super::options::{describe, recipe_error, Opts};
use crate::data::batch::Batches;
use crate::data::{BatchOptions, Dataset, Example};

pub struct LuaDataset(pub Dataset);

/// Examples drawn for one step; the trainer tokenizes them with its model's tokenizer.
pub struct LuaBatch {
    pub examples: Vec<Example>,
    pub max_len: usize,
}

pub fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "jsonl",
        lua.create_function(|lua, path: String| {
            Dataset::read_jsonl(Path::new(&path)).map(LuaDataset).map_err(|e| recipe_error(lua, format!("runner.data.jsonl: {e}")))
        })?,
    )?;
    // runner.data.text(path) -> the file's contents, as one string (e.g. a held-out text to score).
    t.set(
        "text",
        lua.create_function(|lua, path: String| {
            std::fs::read_to_string(&path).map_err(|e| recipe_error(lua, format!("runner.data.text: cannot read {path}: {e}")))
        })?,
    )?;
    t.set(
        "examples",
        lua.create_function(|lua, list: Table| {
            let mut examples = Vec::new();
            for (i, v) in list.sequence_values::<Value>().enumerate() {
                examples.push(example_from_lua(lua, i + 1, v?)?);
            }
            if examples.is_empty() {
                return Err(recipe_error(lua, "runner.data.examples: the list is empty"));
            }
            Ok(LuaDataset(Dataset::new(examples, "runner.data.examples")))
        })?,
    )?;
    runner.set("data", t)
}

fn example_from_lua(lua: &Lua, index: usize, v: Value) -> mlua::Result<Example> {
    let bad = |what: String| recipe_error(lua, format!("runner.data.examples: item {index}: {what}"));
    match v {
        Value::String(s) => Ok(Example::text(s.to_string_lossy())),
        Value::Table(t) => {
            let o = Opts::new(lua, "runner.data.examples", Some(t), &["text", "prompt", "response"])?;
            if let Some(text) = o.string("text")? {
                return Ok(Example::text(text));
            }
            match (o.string("prompt")?, o.string("response")?) {
                (Some(prompt), Some(response)) => Ok(Example { prompt, response }),
                _ => Err(bad("expected {text = ...} or {prompt = ..., response = ...}".into())),
            }
        }
        other => Err(bad(format!("expected a string or a table, found {}", describe(&other)))),
    }
}

/// Reads `{size, max_len, steps, seed, shuffle, skip}`.
pub fn batch_options(lua: &Lua, func: &'static str, opts: Option<Table>, default_shuffle: bool) -> mlua::Result<BatchOptions> {
    let o = Opts::new(lua, func, opts, &["size", "max_len", "steps", "seed", "shuffle", "skip"])?;
    let d = BatchOptions::default();
    Ok(BatchOptions {
        size: o.count("size", 1)?.unwrap_or(d.size),
        max_len: o.count("max_len", 2)?.unwrap_or(d.max_len),
        steps: o.count("steps", 0)?,
        shuffle: o.bool("shuffle")?.unwrap_or(default_shuffle),
        skip: o.count("skip", 0)?.unwrap_or(0),
        seed: match o.int("seed")? {
            Some(s) => s as u64,
            None => default_seed(lua)?,
        },
    })
}

impl UserData for LuaDataset {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("len", |_, this, ()| Ok(this.0.len()));
        methods.add_meta_method(MetaMethod::Len, |_, this, ()| Ok(this.0.len()));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(format!("Dataset({} examples from {})", this.0.len(), this.0.source)));
        methods.add_method("split", |lua, this, opts: Option<Table>| {
            let o = Opts::new(lua, "dataset:split", opts, &["eval", "seed"])?;
            let eval = o.num("eval")?.unwrap_or(0.1);
            let seed = match o.int("seed")? {
                Some(s) => s as u64,
                None => default_seed(lua)?,
            };
            let (train, eval) = this.0.split(eval, seed).map_err(|e| o.err(e))?;
            let t = lua.create_table()?;
            t.set("train", LuaDataset(train))?;
            t.set("eval", LuaDataset(eval))?;
            Ok(t)
        });
        methods.add_method("example", |lua, this, i: i64| {
            let n = this.0.len() as i64;
            if i < 1 || i > n {
                return Err(recipe_error(lua, format!("dataset:example: index {i} is outside 1..{n}")));
            }
            let ex = &this.0.examples[(i - 1) as usize];
            let t = lua.create_table()?;
            t.set("prompt", ex.prompt.as_str())?;
            t.set("response", ex.response.as_str())?;
            Ok(t)
        });
        // `for step, batch in ds:batches{size = 8, steps = 100} do ... end`
        methods.add_method("batches", |lua, this, opts: Option<Table>| {
            let opts = batch_options(lua, "dataset:batches", opts, true)?;
            let max_len = opts.max_len;
            let iter = RefCell::new((opts.skip, Batches::new(this.0.clone(), opts)));
            lua.create_function(move |lua, ()| {
                let mut state = iter.borrow_mut();
                match state.1.next() {
                    Some(examples) => {
                        state.0 += 1;
                        (state.0, LuaBatch { examples, max_len }).into_lua_multi(lua)
                    }
                    None => Ok(mlua::MultiValue::new()),
                }
            })
        });
    }
}

use mlua::IntoLuaMulti;

impl UserData for LuaBatch {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("size", |_, this| Ok(this.examples.len()));
        fields.add_field_method_get("max_len", |_, this| Ok(this.max_len));
    }
}
