//! `runner.model`: building models, and the methods of a model object.

use std::cell::RefCell;
use std::rc::Rc;

use burn::tensor::backend::AutodiffBackend;
use mlua::{Lua, Table, UserData, UserDataMethods, Value};

use super::options::{describe, recipe_error, Opts};
use super::peft::LuaLora;
use super::DeviceData;
use crate::model::{Llama, TinyOptions};
use crate::peft::lora;

/// A model shared between the recipe and the trainers that update it.
pub struct LuaModel<B: AutodiffBackend>(pub Rc<RefCell<Llama<B>>>);

pub fn register<B: AutodiffBackend>(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    t.set(
        "tiny",
        lua.create_function(|lua, opts: Option<Table>| {
            let o = Opts::new(
                lua,
                "runner.model.tiny",
                opts,
                &["layers", "d_model", "heads", "kv_heads", "vocab", "ffn", "tied", "max_seq", "rope_theta", "init_std", "seed"],
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
            let device = lua.app_data_ref::<DeviceData<B>>().expect("device registered").0.clone();
            let model = Llama::<B>::random(tiny.config(), tiny.seed, tiny.std(), &device).map_err(|e| o.err(e))?;
            Ok(LuaModel(Rc::new(RefCell::new(model))))
        })?,
    )?;
    runner.set("model", t)
}

/// `runner.seed` (from `--seed`), the default of every seed option.
pub fn default_seed(lua: &Lua) -> mlua::Result<u64> {
    let runner: Table = lua.globals().get("runner")?;
    Ok(runner.get::<Option<i64>>("seed")?.unwrap_or(0) as u64)
}

impl<B: AutodiffBackend> UserData for LuaModel<B> {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("clone", |_, this, ()| Ok(LuaModel(Rc::new(RefCell::new(this.0.borrow().clone())))));
        methods.add_method("attach", |lua, this, method: Value| {
            let Value::UserData(ud) = &method else {
                return Err(recipe_error(lua, format!("model:attach expects a method such as runner.peft.lora{{...}}, found {}", describe(&method))));
            };
            let Ok(spec) = ud.borrow::<LuaLora>() else {
                return Err(recipe_error(lua, "model:attach expects a method such as runner.peft.lora{...}"));
            };
            let added = lora::attach(&mut this.0.borrow_mut(), &spec.0).map_err(|e| recipe_error(lua, format!("model:attach: {e}")))?;
            Ok(added)
        });
        methods.add_method("trainable_params", |_, this, ()| Ok(this.0.borrow().param_count().trainable));
        methods.add_method("total_params", |_, this, ()| Ok(this.0.borrow().param_count().total));
        methods.add_method("config", |lua, this, ()| {
            let value = serde_json::to_value(&this.0.borrow().config).map_err(mlua::Error::external)?;
            super::json_to_lua(lua, &value)
        });
        methods.add_meta_method("__tostring", |_, this, ()| {
            let m = this.0.borrow();
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
