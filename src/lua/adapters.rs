//! The adapter methods of a model object: attach, switch, merge, save and load.

use std::path::PathBuf;

use burn::tensor::backend::AutodiffBackend;
use mlua::{UserDataMethods, Value};

use super::model::LuaModel;
use super::options::{describe, recipe_error};
use super::peft::LuaMethod;
use crate::model::save::save_pretrained;
use crate::peft::format::{load_adapter, save_adapter};
use crate::peft::prompt::PromptInit;
use crate::peft::{self, DEFAULT_ADAPTER, Method};

pub(crate) fn add_methods<B: AutodiffBackend, M: UserDataMethods<LuaModel<B>>>(methods: &mut M) {
    // model:attach(method[, name]) -> parameters added; the new adapter becomes the active one.
    methods.add_method(
        "attach",
        |lua, this, (method, name): (Value, Option<String>)| {
            let spec = match &method {
                Value::UserData(ud) => ud.borrow::<LuaMethod>().ok(),
                _ => None,
            };
            let Some(spec) = spec else {
                return Err(recipe_error(
                    lua,
                    format!(
                        "model:attach expects a method such as runner.peft.lora{{...}}, found {}",
                        describe(&method)
                    ),
                ));
            };
            let mut method = spec.method.clone();
            let prompt = match &mut method {
                Method::Prompt(c) => Some(c),
                Method::Warp(w) => Some(&mut w.prompt),
                _ => None,
            };
            if let (Some(c), Some(text)) = (prompt, &spec.init_text) {
                let ids = this.tokenizer.encode(text).map_err(|e| {
                    recipe_error(lua, format!("model:attach: prompt-tuning text: {e}"))
                })?;
                c.init = PromptInit::Tokens(ids);
            }
            if let Method::Warp(w) = &mut method {
                // Each label word must be one token: its row of the head is the verbalizer.
                w.labels.clear();
                for word in &w.label_words {
                    let ids = this.tokenizer.encode(word).map_err(|e| {
                        recipe_error(lua, format!("model:attach: WARP label {word:?}: {e}"))
                    })?;
                    match ids[..] {
                        [id] => w.labels.push(id),
                        _ => {
                            return Err(recipe_error(
                                lua,
                                format!(
                                    "model:attach: WARP label {word:?} is {} tokens ({ids:?}); each label must be one token of the model's vocabulary (a leading space often helps: \" {}\")",
                                    ids.len(),
                                    word.trim()
                                ),
                            ));
                        }
                    }
                }
            }
            let name = name.unwrap_or_else(|| DEFAULT_ADAPTER.to_string());
            method
                .attach(&mut this.model.borrow_mut(), &name)
                .map_err(|e| recipe_error(lua, format!("model:attach: {e}")))
        },
    );
    // model:set_adapter(name) switches; model:set_adapter(nil) or model:disable_adapters() gives the base model.
    methods.add_method("set_adapter", |lua, this, name: Option<String>| {
        peft::set_active(&mut this.model.borrow_mut(), name.as_deref())
            .map_err(|e| recipe_error(lua, format!("model:set_adapter: {e}")))
    });
    methods.add_method("disable_adapters", |_, this, ()| {
        peft::set_active(&mut this.model.borrow_mut(), None).expect("disabling cannot fail");
        Ok(())
    });
    methods.add_method("active_adapter", |_, this, ()| {
        Ok(this.model.borrow().active_adapter.clone())
    });
    methods.add_method("adapters", |lua, this, ()| {
        let list = lua.create_table()?;
        for a in &this.model.borrow().adapters {
            let t = lua.create_table()?;
            t.set("name", a.name.clone())?;
            t.set("method", Method::of(a).kind())?;
            t.set("merged", a.merged)?;
            list.push(t)?;
        }
        Ok(list)
    });
    methods.add_method("remove_adapter", |lua, this, name: String| {
        peft::remove(&mut this.model.borrow_mut(), &name)
            .map_err(|e| recipe_error(lua, format!("model:remove_adapter: {e}")))
    });
    // model:lets_select() -> the layers a LeTS adapter keeps (0-based), after its search.
    methods.add_method("lets_select", |lua, this, ()| {
        peft::lets::select(&mut this.model.borrow_mut())
            .map_err(|e| recipe_error(lua, format!("model:lets_select: {e}")))
    });
    // model:lets_gates() -> each layer's gate σ(β) while a LeTS adapter searches.
    methods.add_method("lets_gates", |_, this, ()| {
        Ok(peft::lets::gates(&this.model.borrow()))
    });
    methods.add_method("merge", |lua, this, ()| {
        peft::merge(&mut this.model.borrow_mut())
            .map_err(|e| recipe_error(lua, format!("model:merge: {e}")))
    });
    methods.add_method("unmerge", |lua, this, ()| {
        peft::unmerge(&mut this.model.borrow_mut())
            .map_err(|e| recipe_error(lua, format!("model:unmerge: {e}")))
    });
    methods.add_method("merge_and_unload", |lua, this, ()| {
        peft::merge_and_unload(&mut this.model.borrow_mut())
            .map_err(|e| recipe_error(lua, format!("model:merge_and_unload: {e}")))
    });
    // model:save_adapter(dir[, name]): PEFT's adapter_config.json + adapter_model.safetensors.
    methods.add_method(
        "save_adapter",
        |lua, this, (dir, name): (String, Option<String>)| {
            let model = this.model.borrow();
            let name = name
                .or_else(|| model.active_adapter.clone())
                .ok_or_else(|| {
                    recipe_error(lua, "model:save_adapter: no adapter is active; name one")
                })?;
            let dir = super::host::write_path(lua, "model:save_adapter", &dir)?;
            save_adapter(&model, &name, &dir)
                .map_err(|e| recipe_error(lua, format!("model:save_adapter: {e}")))
        },
    );
    methods.add_method(
        "load_adapter",
        |lua, this, (dir, name): (String, Option<String>)| {
            let name = name.unwrap_or_else(|| DEFAULT_ADAPTER.to_string());
            load_adapter(&mut this.model.borrow_mut(), &PathBuf::from(dir), &name)
                .map_err(|e| recipe_error(lua, format!("model:load_adapter: {e}")))
        },
    );
    // model:save_pretrained(dir): a transformers checkpoint; the active adapter is merged into a copy.
    methods.add_method("save_pretrained", |lua, this, dir: String| {
        let dir = super::host::write_path(lua, "model:save_pretrained", &dir)?;
        let mut model = this.model.borrow().clone();
        if model.active_adapter.is_some() {
            peft::merge_and_unload(&mut model)
                .map_err(|e| recipe_error(lua, format!("model:save_pretrained: {e}")))?;
        } else {
            for name in model
                .adapters
                .iter()
                .map(|a| a.name.clone())
                .collect::<Vec<_>>()
            {
                peft::remove(&mut model, &name).expect("attached");
            }
        }
        save_pretrained(&model, &dir)
            .map_err(|e| recipe_error(lua, format!("model:save_pretrained: {e}")))
    });
}
