//! Reading option tables from Lua: unknown keys are errors that suggest the closest valid key,
//! and every value is type-checked with a message naming the function, the key and the
//! recipe line.

use mlua::{Lua, Table, Value};

use crate::util::closest;

/// A recipe mistake (bad option, bad value). It stops the run with exit code 2, even inside a
/// trial, because every trial of the recipe would hit it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct RecipeError(pub String);

/// `recipe.lua:LINE` of the innermost Lua frame calling into Rust, if any.
pub(crate) fn lua_location(lua: &Lua) -> Option<String> {
    for level in 1..32 {
        let found = lua.inspect_stack(level, |d| {
            let src = d.source();
            let line = d.current_line();
            match (src.what, src.short_src, line) {
                ("Lua" | "main", Some(file), Some(line)) => Some(format!("{file}:{line}")),
                _ => None,
            }
        });
        match found {
            None => return None,
            Some(Some(loc)) => return Some(loc),
            Some(None) => continue,
        }
    }
    None
}

/// A recipe error, prefixed with the recipe location that caused it.
pub(crate) fn recipe_error(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    let msg = match lua_location(lua) {
        Some(loc) => format!("{loc}: {msg}"),
        None => msg.to_string(),
    };
    mlua::Error::external(RecipeError(msg))
}

/// A failure that is not the recipe's fault (a non-finite loss, an I/O error): it fails the
/// trial it happens in, with the recipe location.
pub(crate) fn runtime_error(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    match lua_location(lua) {
        Some(loc) => mlua::Error::RuntimeError(format!("{loc}: {msg}")),
        None => mlua::Error::RuntimeError(msg.to_string()),
    }
}

/// A dry run stops each trial at its first heavy operation with what it would train.
#[derive(Debug, thiserror::Error)]
#[error("dry run: stopped before the first step")]
pub(crate) struct DryRunStop {
    pub trainable: u64,
    pub total: u64,
    pub estimate_bytes: u64,
    pub batch: usize,
    pub seq: usize,
}

/// Training stopped after too many non-finite steps: the trial ends with status `nonfinite`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct NonFiniteStop(pub String);

/// A [`NonFiniteStop`], prefixed with the recipe location.
pub(crate) fn nonfinite_error(lua: &Lua, msg: impl std::fmt::Display) -> mlua::Error {
    let msg = match lua_location(lua) {
        Some(loc) => format!("{loc}: {msg}"),
        None => msg.to_string(),
    };
    mlua::Error::external(NonFiniteStop(msg))
}

pub(crate) struct Opts<'a> {
    lua: &'a Lua,
    func: &'static str,
    table: Table,
}

impl<'a> Opts<'a> {
    /// Checks that `table` only has keys from `allowed`.
    pub(crate) fn new(
        lua: &'a Lua,
        func: &'static str,
        table: Option<Table>,
        allowed: &[&str],
    ) -> mlua::Result<Self> {
        let table = match table {
            Some(t) => t,
            None => lua.create_table()?,
        };
        for pair in table.pairs::<Value, Value>() {
            let (key, _) = pair?;
            let Value::String(key) = key else {
                return Err(recipe_error(
                    lua,
                    format!(
                        "{func}: option keys must be names, found {}",
                        describe(&key)
                    ),
                ));
            };
            let key = key.to_string_lossy();
            if !allowed.contains(&key.as_str()) {
                let hint = closest(&key, allowed.iter().copied())
                    .map(|c| format!(" (did you mean '{c}'?)"))
                    .unwrap_or_default();
                return Err(recipe_error(
                    lua,
                    format!(
                        "{func}: unknown option '{key}'{hint}; valid options: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(Self { lua, func, table })
    }

    fn value(&self, key: &str) -> mlua::Result<Value> {
        self.table.raw_get(key)
    }

    pub(crate) fn err(&self, msg: impl std::fmt::Display) -> mlua::Error {
        recipe_error(self.lua, format!("{}: {msg}", self.func))
    }

    fn wrong(&self, key: &str, want: &str, got: &Value) -> mlua::Error {
        self.err(format!("{key} must be {want}, found {}", describe(got)))
    }

    pub(crate) fn int(&self, key: &str) -> mlua::Result<Option<i64>> {
        match self.value(key)? {
            Value::Nil => Ok(None),
            other => integer(&other)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "an integer", &other)),
        }
    }

    /// A non-negative integer, or `min` and above.
    pub(crate) fn count(&self, key: &str, min: i64) -> mlua::Result<Option<usize>> {
        match self.int(key)? {
            None => Ok(None),
            Some(i) if i >= min => Ok(Some(i as usize)),
            Some(i) => Err(self.err(format!("{key} must be an integer ≥ {min} (got {i})"))),
        }
    }

    pub(crate) fn num(&self, key: &str) -> mlua::Result<Option<f64>> {
        match self.value(key)? {
            Value::Nil => Ok(None),
            other => number(&other)
                .map(Some)
                .ok_or_else(|| self.wrong(key, "a number", &other)),
        }
    }

    pub(crate) fn string(&self, key: &str) -> mlua::Result<Option<String>> {
        match self.value(key)? {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(s.to_string_lossy())),
            other => Err(self.wrong(key, "a string", &other)),
        }
    }

    pub(crate) fn bool(&self, key: &str) -> mlua::Result<Option<bool>> {
        match self.value(key)? {
            Value::Nil => Ok(None),
            Value::Boolean(b) => Ok(Some(b)),
            other => Err(self.wrong(key, "true or false", &other)),
        }
    }

    /// A list of strings, or one string.
    pub(crate) fn strings(&self, key: &str) -> mlua::Result<Option<Vec<String>>> {
        match self.value(key)? {
            Value::Nil => Ok(None),
            Value::String(s) => Ok(Some(vec![s.to_string_lossy()])),
            Value::Table(t) => {
                let mut out = Vec::new();
                for v in t.sequence_values::<Value>() {
                    match v? {
                        Value::String(s) => out.push(s.to_string_lossy()),
                        other => return Err(self.wrong(key, "a list of strings", &other)),
                    }
                }
                Ok(Some(out))
            }
            other => Err(self.wrong(key, "a list of strings", &other)),
        }
    }

    /// One of `names`, parsed by `parse`; an unknown name is an error with a did-you-mean hint.
    pub(crate) fn choice<T>(
        &self,
        key: &str,
        names: &[&str],
        parse: impl Fn(&str) -> Option<T>,
    ) -> mlua::Result<Option<T>> {
        let Some(name) = self.string(key)? else {
            return Ok(None);
        };
        parse(&name).map(Some).ok_or_else(|| {
            let hint = closest(&name, names.iter().copied())
                .map(|c| format!(" (did you mean \"{c}\"?)"))
                .unwrap_or_default();
            self.err(format!(
                "unknown {key} \"{name}\"{hint}; expected one of {}",
                names.join(", ")
            ))
        })
    }

    pub(crate) fn table(&self, key: &str) -> mlua::Result<Option<Table>> {
        match self.value(key)? {
            Value::Nil => Ok(None),
            Value::Table(t) => Ok(Some(t)),
            other => Err(self.wrong(key, "a table", &other)),
        }
    }

    pub(crate) fn required<T>(&self, key: &str, v: Option<T>) -> mlua::Result<T> {
        v.ok_or_else(|| self.err(format!("missing required option '{key}'")))
    }

    pub(crate) fn raw(&self, key: &str) -> mlua::Result<Value> {
        self.value(key)
    }
}

/// An integer option's value: a Lua integer, or a float with no fractional part.
pub(crate) fn integer(v: &Value) -> Option<i64> {
    match *v {
        Value::Integer(i) => Some(i),
        Value::Number(x) if x.fract() == 0.0 && x.is_finite() => Some(x as i64),
        _ => None,
    }
}

/// A number option's value: a Lua integer or float.
pub(crate) fn number(v: &Value) -> Option<f64> {
    match *v {
        Value::Integer(i) => Some(i as f64),
        Value::Number(x) => Some(x),
        _ => None,
    }
}

/// A short description of a Lua value for messages.
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(x) => x.to_string(),
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        other => other.type_name().to_string(),
    }
}
