//! `runner.data`: readers, templates, map/filter, splits and batch iterators.

use std::cell::RefCell;
use std::path::Path;

use burn::tensor::backend::AutodiffBackend;
use mlua::{
    Function, IntoLuaMulti, Lua, MetaMethod, Table, UserData, UserDataFields, UserDataMethods,
    Value,
};

use super::json_to_lua;
use super::model::{LuaModel, default_seed};
use super::options::{Opts, describe, recipe_error, runtime_error};
use crate::data::batch::Batches;
use crate::data::stream::StreamFormat;
use crate::data::tokenizer::Tokenizer;
use crate::data::{
    Batch, BatchOptions, CollateOptions, Dataset, Example, IGNORE_INDEX, Padding, ReadOptions, Row,
    Template, TextUnit,
};
use crate::progress::{Progress, ProgressSlot};

#[derive(Clone)]
pub(crate) struct LuaDataset(pub Dataset);

/// Examples drawn for one step; the trainer tokenizes them with its model's tokenizer, or a
/// collate function written in Lua has already turned them into a batch.
pub(crate) struct LuaBatch {
    pub examples: Vec<Example>,
    pub collate: CollateOptions,
    pub collated: Option<Batch>,
}

impl LuaBatch {
    /// The batch, tokenized with `tok` unless the recipe collated it itself.
    pub(crate) fn to_batch(&self, tok: &Tokenizer) -> Result<Batch, String> {
        if let Some(b) = &self.collated {
            return Ok(b.clone());
        }
        let refs: Vec<&Example> = self.examples.iter().collect();
        Batch::collate_with(&refs, &self.collate, tok).map_err(|e| e.to_string())
    }
}

/// Reader options: `skip_malformed`, `fields` (renames) and `stream` (read rows from disk as
/// batches need them instead of loading the file).
/// Field renames, (from, to).
type Renames = Vec<(String, String)>;

fn read_options(
    lua: &Lua,
    func: &'static str,
    opts: Option<Table>,
) -> mlua::Result<(ReadOptions, Renames, bool)> {
    let o = Opts::new(lua, func, opts, &["skip_malformed", "fields", "stream"])?;
    let read = ReadOptions {
        skip_malformed: o.bool("skip_malformed")?.unwrap_or(false),
    };
    let stream = o.bool("stream")?.unwrap_or(false);
    let mut fields = Vec::new();
    if let Some(t) = o.table("fields")? {
        for pair in t.pairs::<String, String>() {
            let (to, from) = pair.map_err(|_| o.err("fields must map names to names, e.g. {prompt = \"question\", response = \"answer\"}"))?;
            fields.push((to, from));
        }
        fields.sort();
    }
    Ok((read, fields, stream))
}

fn finish_read(
    lua: &Lua,
    what: &str,
    ds: Result<Dataset, crate::data::DataError>,
    fields: &[(String, String)],
) -> mlua::Result<LuaDataset> {
    let ds = ds.map_err(|e| recipe_error(lua, format!("{what}: {e}")))?;
    if ds.skipped > 0 {
        eprintln!(
            "  {what}: {}: skipped {} malformed line(s)",
            ds.source, ds.skipped
        );
    }
    let ds = if fields.is_empty() {
        ds
    } else {
        ds.rename(fields)
            .map_err(|e| recipe_error(lua, format!("{what}: {e}")))?
    };
    Ok(LuaDataset(ds))
}

pub(crate) fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    // runner.data.jsonl(path, {skip_malformed = false, fields = {prompt = "question", ...}})
    t.set(
        "jsonl",
        lua.create_function(|lua, (path, opts): (String, Option<Table>)| {
            let (read, fields, stream) = read_options(lua, "runner.data.jsonl", opts)?;
            super::host::note_input(lua, Path::new(&path))?;
            let ds = if stream {
                Dataset::stream(Path::new(&path), StreamFormat::Jsonl, read)
            } else {
                Dataset::read_jsonl(Path::new(&path), read)
            };
            finish_read(lua, "runner.data.jsonl", ds, &fields)
        })?,
    )?;
    t.set(
        "csv",
        lua.create_function(|lua, (path, opts): (String, Option<Table>)| {
            let (read, fields, stream) = read_options(lua, "runner.data.csv", opts)?;
            super::host::note_input(lua, Path::new(&path))?;
            let ds = if stream {
                Dataset::stream(Path::new(&path), StreamFormat::Csv, read)
            } else {
                Dataset::read_csv(Path::new(&path), read)
            };
            finish_read(lua, "runner.data.csv", ds, &fields)
        })?,
    )?;
    // runner.data.plaintext(path, {by = "line" | "paragraph" | "file"}): {text = ...} rows.
    t.set(
        "plaintext",
        lua.create_function(|lua, (path, opts): (String, Option<Table>)| {
            let o = Opts::new(lua, "runner.data.plaintext", opts, &["by"])?;
            let unit = match o.string("by")?.as_deref() {
                None | Some("line") => TextUnit::Line,
                Some("paragraph") => TextUnit::Paragraph,
                Some("file") => TextUnit::File,
                Some(other) => {
                    return Err(o.err(format!(
                        "by must be \"line\", \"paragraph\" or \"file\", got \"{other}\""
                    )));
                }
            };
            super::host::note_input(lua, Path::new(&path))?;
            finish_read(
                lua,
                "runner.data.plaintext",
                Dataset::read_text(Path::new(&path), unit),
                &[],
            )
        })?,
    )?;
    // runner.data.text(path) -> the file's contents, as one string (e.g. a held-out text to score).
    t.set(
        "text",
        lua.create_function(|lua, path: String| {
            super::host::note_input(lua, Path::new(&path))?;
            std::fs::read_to_string(&path).map_err(|e| {
                recipe_error(lua, format!("runner.data.text: cannot read {path}: {e}"))
            })
        })?,
    )?;
    t.set(
        "examples",
        lua.create_function(|lua, list: Table| {
            let mut rows = Vec::new();
            for (i, v) in list.sequence_values::<Value>().enumerate() {
                rows.push(row_from_lua(lua, "runner.data.examples", i + 1, v?)?);
            }
            if rows.is_empty() {
                return Err(recipe_error(lua, "runner.data.examples: the list is empty"));
            }
            Ok(LuaDataset(Dataset::from_rows(rows, "runner.data.examples")))
        })?,
    )?;
    runner.set("data", t)?;
    lua.set_app_data(TokenizerOf(tokenizer_of::<B>));
    Ok(())
}

/// Reads a model's tokenizer from a Lua value, for `:template("chat", {model = m})`; stored
/// as app data because dataset methods do not know the backend type.
struct TokenizerOf(fn(&Value) -> Option<Tokenizer>);

fn tokenizer_of<B: AutodiffBackend>(v: &Value) -> Option<Tokenizer> {
    match v {
        Value::UserData(ud) => ud.borrow::<LuaModel<B>>().ok().map(|m| m.tokenizer.clone()),
        _ => None,
    }
}

fn model_tokenizer(lua: &Lua, v: &Value) -> Option<Tokenizer> {
    let f = lua.app_data_ref::<TokenizerOf>()?.0;
    f(v)
}

/// A Lua value converted to JSON (rows from `map` and `runner.data.examples`).
fn lua_to_json(v: &Value, depth: usize) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    if depth > 32 {
        return Err("nested too deeply".into());
    }
    Ok(match v {
        Value::Nil => J::Null,
        Value::Boolean(b) => J::Bool(*b),
        Value::Integer(i) => J::from(*i),
        Value::Number(x) => serde_json::Number::from_f64(*x)
            .map(J::Number)
            .ok_or_else(|| format!("{x} is not a finite number"))?,
        Value::String(s) => J::String(s.to_string_lossy()),
        Value::Table(t) => {
            let n = t.raw_len();
            if n > 0 {
                let mut out = Vec::with_capacity(n);
                for item in t.sequence_values::<Value>() {
                    out.push(lua_to_json(&item.map_err(|e| e.to_string())?, depth + 1)?);
                }
                J::Array(out)
            } else {
                let mut out = serde_json::Map::new();
                for pair in t.pairs::<Value, Value>() {
                    let (k, item) = pair.map_err(|e| e.to_string())?;
                    let Value::String(k) = k else {
                        return Err(format!(
                            "table keys must be field names, found {}",
                            describe(&k)
                        ));
                    };
                    out.insert(k.to_string_lossy(), lua_to_json(&item, depth + 1)?);
                }
                J::Object(out)
            }
        }
        other => return Err(format!("cannot store {} in a dataset row", describe(other))),
    })
}

/// A string (plain text) or a table of fields.
pub(crate) fn row_from_lua(lua: &Lua, what: &str, index: usize, v: Value) -> mlua::Result<Row> {
    let bad = |msg: String| recipe_error(lua, format!("{what}: item {index}: {msg}"));
    match v {
        Value::String(s) => Ok(Row::from_iter([(
            "text".to_string(),
            serde_json::Value::String(s.to_string_lossy()),
        )])),
        Value::Table(_) => match lua_to_json(&v, 0).map_err(bad)? {
            serde_json::Value::Object(row) => Ok(row),
            _ => Err(bad(
                "expected a table of fields such as {prompt = ..., response = ...}".into(),
            )),
        },
        other => Err(bad(format!(
            "expected a string or a table, found {}",
            describe(&other)
        ))),
    }
}

fn row_to_lua(lua: &Lua, row: &Row) -> mlua::Result<Table> {
    match json_to_lua(lua, &serde_json::Value::Object(row.clone()))? {
        Value::Table(t) => Ok(t),
        _ => lua.create_table(),
    }
}

/// Reads `{size, max_len, steps, seed, shuffle, skip, group_by_length}`; with `collation`, also
/// `{padding, pack, collate}`.
pub(crate) fn batch_options(
    lua: &Lua,
    func: &'static str,
    opts: Option<Table>,
    default_shuffle: bool,
) -> mlua::Result<BatchOptions> {
    Ok(batch_and_collate_options(lua, func, opts, default_shuffle, false)?.0)
}

type Collation = (BatchOptions, CollateOptions, Option<Function>);

fn batch_and_collate_options(
    lua: &Lua,
    func: &'static str,
    opts: Option<Table>,
    default_shuffle: bool,
    collation: bool,
) -> mlua::Result<Collation> {
    let mut keys = vec![
        "size",
        "max_len",
        "steps",
        "seed",
        "shuffle",
        "skip",
        "group_by_length",
    ];
    if collation {
        keys.extend(["padding", "pack", "collate"]);
    }
    let o = Opts::new(lua, func, opts, &keys)?;
    let d = BatchOptions::default();
    let batch = BatchOptions {
        size: o.count("size", 1)?.unwrap_or(d.size),
        max_len: o.count("max_len", 2)?.unwrap_or(d.max_len),
        steps: o.count("steps", 0)?,
        shuffle: o.bool("shuffle")?.unwrap_or(default_shuffle),
        seed: match o.int("seed")? {
            Some(s) => s as u64,
            None => default_seed(lua)?,
        },
        skip: o.count("skip", 0)?.unwrap_or(0),
        group_by_length: o.bool("group_by_length")?.unwrap_or(false),
    };
    let mut collate = CollateOptions::new(batch.max_len);
    let mut collate_fn = None;
    if collation {
        collate.padding = match o.string("padding")?.as_deref() {
            None | Some("right") => Padding::Right,
            Some("left") => Padding::Left,
            Some(other) => {
                return Err(o.err(format!(
                    "padding must be \"right\" or \"left\", got \"{other}\""
                )));
            }
        };
        collate.pack = o.bool("pack")?.unwrap_or(false);
        collate_fn = match o.raw("collate")? {
            Value::Nil => None,
            Value::Function(f) => Some(f),
            other => return Err(o.err(format!("collate must be a function(examples) returning {{input_ids = ..., labels = ...}}, found {}", describe(&other)))),
        };
        if collate_fn.is_some() && collate.pack {
            return Err(o.err(
                "pack and collate cannot be combined (a collate function lays out its own rows)",
            ));
        }
    }
    Ok((batch, collate, collate_fn))
}

/// Calls a recipe's collate function and checks what it returns.
fn collate_in_lua(lua: &Lua, f: &Function, examples: &[Example]) -> mlua::Result<Batch> {
    let list = lua.create_table()?;
    for ex in examples {
        let t = lua.create_table()?;
        t.set("prompt", ex.prompt.as_str())?;
        t.set("response", ex.response.as_str())?;
        list.push(t)?;
    }
    let bad = |msg: String| recipe_error(lua, format!("collate function: {msg}"));
    let out: Value = f.call(list)?;
    let Value::Table(out) = out else {
        return Err(bad(format!(
            "must return {{input_ids = {{...}}, labels = {{...}}}}, returned {}",
            describe(&out)
        )));
    };
    let rows = |key: &str| -> mlua::Result<Option<Vec<Vec<i64>>>> {
        match out.get::<Value>(key)? {
            Value::Nil => Ok(None),
            Value::Table(t) => {
                let mut rows = Vec::new();
                for r in t.sequence_values::<Value>() {
                    match r? {
                        Value::Table(r) => rows.push(
                            r.sequence_values::<i64>()
                                .collect::<mlua::Result<Vec<i64>>>()
                                .map_err(|_| bad(format!("{key} must hold lists of integers")))?,
                        ),
                        other => {
                            return Err(bad(format!(
                                "{key} must be a list of rows, found {} in it",
                                describe(&other)
                            )));
                        }
                    }
                }
                Ok(Some(rows))
            }
            other => Err(bad(format!(
                "{key} must be a list of rows, found {}",
                describe(&other)
            ))),
        }
    };
    let ids = rows("input_ids")?.ok_or_else(|| bad("the result has no input_ids".into()))?;
    let labels = rows("labels")?.unwrap_or_else(|| ids.clone());
    let segments = rows("segments")?;
    let seq = ids.first().map_or(0, Vec::len);
    if ids.is_empty() || seq == 0 {
        return Err(bad("input_ids is empty".into()));
    }
    let rect = |r: &Vec<Vec<i64>>| r.len() == ids.len() && r.iter().all(|x| x.len() == seq);
    if !rect(&ids) || !rect(&labels) || segments.as_ref().is_some_and(|s| !rect(s)) {
        return Err(bad(format!(
            "input_ids, labels (and segments) must all be {} rows of {seq} tokens",
            ids.len()
        )));
    }
    if labels.iter().flatten().any(|&l| l < 0 && l != IGNORE_INDEX) {
        return Err(bad(format!(
            "labels must be token ids or {IGNORE_INDEX} (ignored)"
        )));
    }
    let segments = match segments {
        Some(s) => Some(
            s.into_iter()
                .flatten()
                .map(|x| {
                    u32::try_from(x).map_err(|_| bad(format!("segment ids must be ≥ 0, found {x}")))
                })
                .collect::<mlua::Result<Vec<u32>>>()?,
        ),
        None => None,
    };
    Ok(Batch {
        batch: ids.len(),
        seq,
        input_ids: ids.into_iter().flatten().collect(),
        labels: labels.into_iter().flatten().collect(),
        segments,
    })
}

impl UserData for LuaDataset {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("len", |_, this, ()| Ok(this.0.len()));
        methods.add_method("skipped", |_, this, ()| Ok(this.0.skipped));
        methods.add_meta_method(MetaMethod::Len, |_, this, ()| Ok(this.0.len()));
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| {
            Ok(format!(
                "Dataset({} rows from {})",
                this.0.len(),
                this.0.source
            ))
        });
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
        // dataset:example(i) -> the row's fields (prompt/response for example rows).
        methods.add_method("example", |lua, this, i: i64| {
            let n = this.0.len() as i64;
            if i < 1 || i > n {
                return Err(recipe_error(
                    lua,
                    format!("dataset:example: index {i} is outside 1..{n}"),
                ));
            }
            let row = this
                .0
                .row((i - 1) as usize)
                .map_err(|e| runtime_error(lua, format!("dataset:example: {e}")))?;
            row_to_lua(lua, &row)
        });
        // dataset:template("alpaca" | "chat" | "text" | function(row) ... end, opts)
        methods.add_method("template", |lua, this, (which, opts): (Value, Option<Table>)| {
            let template = match &which {
                Value::Function(f) => return map_rows(lua, &this.0, f, "dataset:template", "template").map(LuaDataset),
                Value::String(s) => s.to_string_lossy(),
                other => return Err(recipe_error(lua, format!("dataset:template expects \"alpaca\", \"chat\", \"text\" or a function, found {}", describe(other)))),
            };
            let (template, tokenizer) = match template.as_str() {
                "alpaca" => {
                    let o = Opts::new(lua, "dataset:template", opts, &["instruction", "input", "output"])?;
                    let d = Template::alpaca();
                    let Template::Alpaca { instruction, input, output } = d else { unreachable!() };
                    let t = Template::Alpaca {
                        instruction: o.string("instruction")?.unwrap_or(instruction),
                        input: o.string("input")?.unwrap_or(input),
                        output: o.string("output")?.unwrap_or(output),
                    };
                    (t, None)
                }
                "text" => {
                    let o = Opts::new(lua, "dataset:template", opts, &["field"])?;
                    (Template::Text { field: o.string("field")?.unwrap_or_else(|| "text".into()) }, None)
                }
                "chat" => {
                    let o = Opts::new(lua, "dataset:template", opts, &["model", "messages"])?;
                    let tok = model_tokenizer(lua, &o.raw("model")?).ok_or_else(|| o.err("the chat template needs model = <a loaded model> (its tokenizer's chat template is used)"))?;
                    (Template::Chat { messages: o.string("messages")?.unwrap_or_else(|| "messages".into()) }, Some(tok))
                }
                other => {
                    let hint = crate::util::closest(other, ["alpaca", "chat", "text"]).map(|c| format!(" (did you mean \"{c}\"?)")).unwrap_or_default();
                    return Err(recipe_error(lua, format!("dataset:template: unknown template \"{other}\"{hint}; expected \"alpaca\", \"chat\", \"text\" or a function")));
                }
            };
            let ds = this.0.template(&template, tokenizer.as_ref()).map_err(|e| recipe_error(lua, format!("dataset:template: {e}")))?;
            Ok(LuaDataset(ds))
        });
        // dataset:map(function(row) return new_row end)
        methods.add_method("map", |lua, this, f: Function| {
            map_rows(lua, &this.0, &f, "dataset:map", "map").map(LuaDataset)
        });
        // dataset:filter(function(row) return keep end)
        methods.add_method("filter", |lua, this, f: Function| {
            let mut rows = Vec::new();
            // Lua sees every row: a streamed dataset is read into memory first.
            let ds = this
                .0
                .in_memory()
                .map_err(|e| runtime_error(lua, format!("dataset:filter: {e}")))?;
            for row in ds.rows.iter() {
                let keep: Value = f.call(row_to_lua(lua, row)?)?;
                if !matches!(keep, Value::Nil | Value::Boolean(false)) {
                    rows.push(row.clone());
                }
            }
            if rows.is_empty() {
                return Err(recipe_error(
                    lua,
                    format!("dataset:filter: no rows of {} are left", this.0.source),
                ));
            }
            Ok(LuaDataset(this.0.derived(rows, "filter")))
        });
        // `for step, batch in ds:batches{size = 8, steps = 100} do ... end`
        methods.add_method("batches", |lua, this, opts: Option<Table>| {
            let (opts, collate, collate_fn) =
                batch_and_collate_options(lua, "dataset:batches", opts, true, true)?;
            let examples = this
                .0
                .example_source()
                .map_err(|e| recipe_error(lua, format!("dataset:batches: {e}")))?;
            let total = opts
                .steps
                .unwrap_or_else(|| examples.len().div_ceil(opts.size.max(1)));
            let mut progress = Progress::start(Some(total));
            progress.advance(opts.skip);
            lua.set_app_data(ProgressSlot {
                current: Some(progress),
                step: opts.skip,
            });
            let iter = RefCell::new((opts.skip, Batches::new(examples, opts)));
            lua.create_function(move |lua, ()| {
                let mut state = iter.borrow_mut();
                match state.1.next() {
                    Some(Err(e)) => Err(runtime_error(lua, format!("dataset:batches: {e}"))),
                    Some(Ok(examples)) => {
                        state.0 += 1;
                        if let Some(mut slot) = lua.app_data_mut::<ProgressSlot>() {
                            slot.step = state.0;
                        }
                        let collated = match &collate_fn {
                            Some(f) => Some(collate_in_lua(lua, f, &examples)?),
                            None => None,
                        };
                        (
                            state.0,
                            LuaBatch {
                                examples,
                                collate,
                                collated,
                            },
                        )
                            .into_lua_multi(lua)
                    }
                    None => {
                        if let Some(mut slot) = lua.app_data_mut::<ProgressSlot>()
                            && let Some(mut p) = slot.current.take()
                        {
                            p.finish();
                        }
                        Ok(mlua::MultiValue::new())
                    }
                }
            })
        });
    }
}

fn map_rows(lua: &Lua, ds: &Dataset, f: &Function, what: &str, how: &str) -> mlua::Result<Dataset> {
    // Lua sees every row: a streamed dataset is read into memory first.
    let ds = &ds
        .in_memory()
        .map_err(|e| runtime_error(lua, format!("{what}: {e}")))?;
    let mut rows = Vec::with_capacity(ds.len());
    for (i, row) in ds.rows.iter().enumerate() {
        let out: Value = f.call(row_to_lua(lua, row)?)?;
        if out.is_nil() {
            return Err(recipe_error(
                lua,
                format!(
                    "{what}: the function returned nil for row {} (use :filter to drop rows)",
                    i + 1
                ),
            ));
        }
        rows.push(row_from_lua(lua, what, i + 1, out)?);
    }
    Ok(ds.derived(rows, how))
}

impl UserData for LuaBatch {
    fn add_fields<F: UserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("size", |_, this| Ok(this.examples.len()));
        fields.add_field_method_get("max_len", |_, this| Ok(this.collate.max_len));
    }
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        // batch:examples() -> the list of {prompt, response} it holds.
        methods.add_method("examples", |lua, this, ()| {
            let list = lua.create_table()?;
            for ex in &this.examples {
                let t = lua.create_table()?;
                t.set("prompt", ex.prompt.as_str())?;
                t.set("response", ex.response.as_str())?;
                list.push(t)?;
            }
            Ok(list)
        });
    }
}
