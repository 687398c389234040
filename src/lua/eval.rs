//! `runner.eval`: scoring generated answers, and early stopping.

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::data::LuaDataset;
use super::model::LuaModel;
use super::options::{Opts, describe, runtime_error};
use crate::memory::release_autodiff_graph;
use crate::train::gen_eval::{EarlyStopping, GenEvalOptions, evaluate_generation};

pub(crate) struct LuaEarlyStopping(EarlyStopping);
impl UserData for LuaEarlyStopping {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method_mut("update", |_, this, v: f64| Ok(this.0.update(v)));
        methods.add_method("best", |_, this, ()| Ok(this.0.best));
        methods.add_method("bad_evals", |_, this, ()| Ok(this.0.bad_evals));
    }
}

pub(crate) fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let eval = lua.create_table()?;
    // runner.eval.generation(model, dataset, {max_new_tokens, limit, stop, save}) ->
    // {exact_match, rouge_l, n, predictions = {{prompt, reference, prediction}, ...}}
    eval.set(
        "generation",
        lua.create_function(|lua, (model, data, opts): (Value, Value, Option<Table>)| {
            let o = Opts::new(lua, "runner.eval.generation", opts, &["max_new_tokens", "limit", "stop", "save"])?;
            let (model, tokenizer) = match &model {
                Value::UserData(ud) => ud
                    .borrow::<LuaModel<B>>()
                    .map(|m| (m.model.clone(), m.tokenizer.clone()))
                    .map_err(|_| o.err("the first argument must be a model"))?,
                other => return Err(o.err(format!("the first argument must be a model, found {}", describe(other)))),
            };
            let examples = match &data {
                Value::UserData(ud) if ud.is::<LuaDataset>() => ud.borrow::<LuaDataset>()?.0.examples().map_err(|e| o.err(e))?,
                other => return Err(o.err(format!("the second argument must be a dataset, found {}", describe(other)))),
            };
            let d = GenEvalOptions::default();
            let opts = GenEvalOptions {
                max_new_tokens: o.count("max_new_tokens", 1)?.unwrap_or(d.max_new_tokens),
                limit: o.count("limit", 1)?,
                stop: o.strings("stop")?.unwrap_or_default(),
            };
            let save = match o.string("save")? {
                Some(p) => Some(super::host::write_path(lua, "runner.eval.generation: save", &p)?),
                None => None,
            };
            super::host::dry_run_stop(lua, &model.borrow(), 1, 256, false)?;
            let device = model.borrow().device.clone();
            let result = evaluate_generation(&model.borrow(), &tokenizer, &examples, &opts, || release_autodiff_graph::<B>(&device)).map_err(|e| o.err(e))?;
            if let Some(path) = save {
                let mut lines = String::new();
                for p in &result.predictions {
                    let row = serde_json::json!({"prompt": p.prompt, "reference": p.reference, "prediction": p.prediction, "exact_match": p.exact_match, "rouge_l": p.rouge_l});
                    lines.push_str(&row.to_string());
                    lines.push('\n');
                }
                crate::model::save::write_atomic(&path, lines.as_bytes()).map_err(|e| runtime_error(lua, format!("runner.eval.generation: {e}")))?;
            }
            let t = lua.create_table()?;
            t.set("exact_match", result.exact_match)?;
            t.set("rouge_l", result.rouge_l)?;
            t.set("n", result.predictions.len())?;
            let preds = lua.create_table()?;
            for p in &result.predictions {
                let row = lua.create_table()?;
                row.set("prompt", p.prompt.as_str())?;
                row.set("reference", p.reference.as_str())?;
                row.set("prediction", p.prediction.as_str())?;
                preds.push(row)?;
            }
            t.set("predictions", preds)?;
            Ok(t)
        })?,
    )?;
    // runner.eval.early_stopping{patience = 3, min_delta = 0, mode = "min"}: s:update(v) -> stop?
    eval.set(
        "early_stopping",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.eval.early_stopping",
                opts,
                &["patience", "min_delta", "mode"],
            )?;
            let minimize = match o.string("mode")?.as_deref() {
                None | Some("min") => true,
                Some("max") => false,
                Some(other) => {
                    return Err(o.err(format!("mode must be \"min\" or \"max\", got \"{other}\"")));
                }
            };
            Ok(LuaEarlyStopping(EarlyStopping::new(
                o.count("patience", 1)?.unwrap_or(3),
                o.num("min_delta")?.unwrap_or(0.0),
                minimize,
            )))
        })?,
    )?;
    runner.set("eval", eval)?;
    Ok(())
}
