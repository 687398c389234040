//! The recipe's sandbox and what the host tracks about it: which standard library a recipe
//! gets, `require` of modules beside the recipe, the files it reads (for trial ids and
//! `--watch`), the instruction hook that stops runaway loops, and the dry-run stop.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::backend::Backend;
use mlua::{HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

use super::options::{DryRunStop, lua_location, recipe_error};
use super::sweep::{SweepHost, SweepMode};
use crate::footprint::{self, RunShape, Training, WeightStorage};
use crate::model::Llama;
use crate::sweep::fingerprint::Inputs;

/// The files a recipe has read: the recipe, required modules, data and models.
#[derive(Default)]
pub(crate) struct RecipeInputs(pub Inputs);

/// A new Lua state for a recipe. Without `trust` it has Lua's safe libraries only: of `io`
/// only `io.write` (to stdout); no `os.execute`, `os.remove`, `os.exit`..., no `dofile` or
/// `loadfile`, no C modules; `load` accepts source text only. Files are read through
/// runner's own API. With `trust` the full standard library is there (still without `debug`).
///
/// The recipe's own values may use `memory_limit` bytes; past that an allocation fails with a
/// Lua memory error, reported by [`memory_error_message`].
pub(crate) fn new_lua(trust: bool, memory_limit: u64) -> mlua::Result<Lua> {
    let libs = if trust {
        StdLib::ALL_SAFE
    } else {
        StdLib::COROUTINE
            | StdLib::TABLE
            | StdLib::STRING
            | StdLib::UTF8
            | StdLib::MATH
            | StdLib::OS
    };
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    lua.set_memory_limit(usize::try_from(memory_limit).unwrap_or(usize::MAX))?;
    MEMORY_LIMIT.store(memory_limit, Ordering::Relaxed);
    *LAST_LINE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if !trust {
        let g = lua.globals();
        let refuse = |name: String| {
            lua.create_function(move |lua, _: mlua::MultiValue| -> mlua::Result<()> {
                Err(recipe_error(lua, format!("{name} is not available to recipes (they run sandboxed); read files through runner's API, or pass --trust to allow it")))
            })
        };
        let os: Table = g.get("os")?;
        for name in [
            "execute",
            "exit",
            "remove",
            "rename",
            "tmpname",
            "setlocale",
        ] {
            os.set(name, refuse(format!("os.{name}"))?)?;
        }
        g.set("dofile", refuse("dofile".into())?)?;
        g.set("loadfile", refuse("loadfile".into())?)?;
        // `io.write` prints to stdout; every other field is refused by name, so `io.open(...)`
        // explains the rule instead of failing with "attempt to index a nil value".
        let io = lua.create_table()?;
        io.set(
            "write",
            lua.create_function(|_, args: mlua::MultiValue| {
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                for v in args {
                    match v {
                        Value::String(s) => out.write_all(&s.as_bytes())?,
                        Value::Integer(i) => write!(out, "{i}")?,
                        Value::Number(x) => write!(out, "{x}")?,
                        _ => {}
                    }
                }
                // Lua's io.write returns the file for chaining; there is no file here.
                Ok(())
            })?,
        )?;
        let meta = lua.create_table()?;
        meta.set(
            "__index",
            lua.create_function(|lua, (_, key): (Value, String)| -> mlua::Result<()> {
                Err(recipe_error(lua, format!("io.{key} is not available to recipes (they run sandboxed); read files through runner's API, or pass --trust to allow it")))
            })?,
        )?;
        io.set_metatable(Some(meta))?;
        g.set("io", io)?;
        // Source text only: precompiled chunks can break the VM's memory safety.
        lua.load(r#"local raw = load; load = function(chunk, name, mode, ...) return raw(chunk, name, "t", ...) end"#).exec()?;
    }
    Ok(lua)
}

/// `require "name"`: `name.lua` (dots are folders) or `name/init.lua` beside the recipe,
/// loaded once, named by its path in errors, and recorded as an input of the recipe. Without
/// `--trust` a name is dot-separated plain names and the file must lie inside the recipe's
/// folder tree once symlinks are resolved; with `--trust`, names not found there fall back to
/// Lua's own `require`.
pub(crate) fn install_require(lua: &Lua, recipe: &Path, trust: bool) -> mlua::Result<()> {
    let dir = recipe.parent().map(Path::to_path_buf).unwrap_or_default();
    let loaded = lua.create_table()?;
    let fallback: Option<mlua::Function> = if trust {
        lua.globals().get("require")?
    } else {
        None
    };
    let require = lua.create_function(move |lua, name: String| {
        if let Some(v) = loaded.raw_get::<Option<Value>>(name.as_str())? {
            return Ok(v);
        }
        let plain = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        if !trust && !name.split('.').all(plain) {
            return Err(recipe_error(
                lua,
                format!(
                    "require '{name}': a module name is dot-separated names of letters, digits, \
                     '_' or '-' (a module beside the recipe, or in a folder under it); pass \
                     --trust to load modules from elsewhere"
                ),
            ));
        }
        let rel = name.replace('.', "/");
        let candidates = [
            dir.join(format!("{rel}.lua")),
            dir.join(&rel).join("init.lua"),
        ];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            if let Some(f) = &fallback {
                return f.call::<Value>(name.as_str());
            }
            let tried: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(recipe_error(
                lua,
                format!(
                    "module '{name}' not found (looked for {})",
                    tried.join(" and ")
                ),
            ));
        };
        if !trust {
            confine(path, &dir).map_err(|e| recipe_error(lua, format!("require '{name}': {e}")))?;
        }
        let source = std::fs::read(path).map_err(|e| {
            recipe_error(
                lua,
                format!("require '{name}': reading {}: {e}", path.display()),
            )
        })?;
        note_input(lua, path)?;
        let value: Value = lua
            .load(&source[..])
            .set_name(format!("@{}", path.display()))
            .call(name.as_str())?;
        // Like Lua's require: a module that returns nothing is recorded as `true`.
        let value = if value.is_nil() {
            Value::Boolean(true)
        } else {
            value
        };
        loaded.raw_set(name.as_str(), value.clone())?;
        Ok(value)
    })?;
    lua.globals().set("require", require)
}

/// `Err` unless `path`, with symlinks resolved, lies inside `dir`'s tree.
fn confine(path: &Path, dir: &Path) -> Result<(), String> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let real =
        |p: &Path| std::fs::canonicalize(p).map_err(|e| format!("resolving {}: {e}", p.display()));
    let (real_path, real_dir) = (real(path)?, real(dir)?);
    if real_path.starts_with(&real_dir) {
        Ok(())
    } else {
        Err(format!(
            "{} resolves to {}, outside the recipe's folder {}; pass --trust to allow it",
            path.display(),
            real_path.display(),
            real_dir.display()
        ))
    }
}

/// Where runner's own API may write: under the results folder, anywhere with `--trust`.
pub(crate) struct WriteRule {
    pub results: PathBuf,
    pub trust: bool,
}

/// The path runner's API writes `path` to, or a recipe error when it lies outside the
/// results folder (`..`, an absolute path elsewhere, or a symlink out of it) and the recipe
/// is not trusted. Relative paths are relative to the working folder, as everywhere else
/// (`runner.trial_dir()` returns such a path).
pub(crate) fn write_path(lua: &Lua, what: &str, path: &str) -> mlua::Result<PathBuf> {
    let wanted = PathBuf::from(path);
    let Some(rule) = lua.app_data_ref::<WriteRule>() else {
        return Ok(wanted);
    };
    if rule.trust {
        return Ok(wanted);
    }
    let inside = |p: &Path, root: &Path| {
        let (p, root) = (lexical_absolute(p), lexical_absolute(root));
        p.starts_with(&root) && p != root
    };
    // The path as written, then with symlinks resolved as far as the path exists.
    let mut ok = inside(&wanted, &rule.results);
    if ok && let Ok(results) = std::fs::canonicalize(&rule.results) {
        let mut existing = lexical_absolute(&wanted);
        let mut rest = Vec::new();
        // symlink_metadata: a dangling link is something that exists (and leads out).
        while std::fs::symlink_metadata(&existing).is_err() {
            match (existing.file_name(), existing.parent()) {
                (Some(name), Some(parent)) => {
                    rest.push(name.to_os_string());
                    existing = parent.to_path_buf();
                }
                _ => break,
            }
        }
        ok = match std::fs::canonicalize(&existing) {
            Ok(mut real) => {
                real.extend(rest.iter().rev());
                real.starts_with(&results) && real != results
            }
            // A link that leads nowhere: its target is not known to be inside.
            Err(_) => false,
        };
    }
    if ok {
        Ok(wanted)
    } else {
        Err(recipe_error(
            lua,
            format!(
                "{what}: {path} is outside the results folder {}; recipes write only under it \
                 (runner.trial_dir() is a trial's own folder) unless --trust is given",
                rule.results.display()
            ),
        ))
    }
}

/// `p` made absolute against the working folder, with `.` and `..` removed by their names.
fn lexical_absolute(p: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Records a file the recipe reads (for trial ids and `--watch`).
pub(crate) fn note_input(lua: &Lua, path: &Path) -> mlua::Result<()> {
    let fingerprint = match lua.app_data_mut::<RecipeInputs>() {
        Some(mut inputs) => inputs.0.note(path),
        None => return Ok(()),
    };
    let fingerprint =
        fingerprint.map_err(|e| recipe_error(lua, format!("reading {}: {e}", path.display())))?;
    if let Some(mut host) = lua.app_data_mut::<SweepHost>() {
        host.note_trial_input(path, fingerprint);
    }
    Ok(())
}

/// Records a model given by name or path (a cached name resolves to its file).
pub(crate) fn note_model_input(lua: &Lua, name_or_path: &str) -> mlua::Result<()> {
    let path = match crate::hub::resolve(name_or_path) {
        Ok(p) => p,
        Err(_) => PathBuf::from(name_or_path),
    };
    if path.exists() {
        note_input(lua, &path)
    } else {
        Ok(())
    }
}

/// The recipe line the instruction hook saw last, for errors that carry no position (a Lua
/// memory error is raised inside the allocator, where no line is known).
static LAST_LINE: Mutex<Option<String>> = Mutex::new(None);
/// The `--lua-memory` limit of the running recipe, in bytes.
static MEMORY_LIMIT: AtomicU64 = AtomicU64::new(0);

/// The message of a Lua memory error: the limit, and the line the recipe was last seen at.
pub(crate) fn memory_error_message() -> String {
    let near = LAST_LINE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .map(|l| format!("{l}: "))
        .unwrap_or_default();
    let mib = MEMORY_LIMIT.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64;
    format!(
        "{near}the recipe's Lua values (tables, strings) reached the memory limit of {mib:.0} MiB; \
         a loop that keeps growing a string or table? (raise the limit with --lua-memory)"
    )
}

/// Checks Ctrl-C and `--time-limit` every 10,000 Lua instructions, in every coroutine (a hook
/// set on the main thread alone would not reach `coroutine.wrap`), so even `while true do end`
/// stops; and notes the line it is at, for errors that have none. Loops the hook cannot reach
/// are the watchdog's (`interrupt::start_watchdog`).
pub(crate) fn install_interrupt_hook(lua: &Lua) -> mlua::Result<()> {
    lua.set_global_hook(
        HookTriggers::new().every_nth_instruction(10_000),
        |lua, debug| {
            let here = match (debug.source().short_src, debug.current_line()) {
                (Some(file), Some(line)) => Some(format!("{file}:{line}")),
                _ => None,
            };
            if here.is_some() {
                *LAST_LINE.lock().unwrap_or_else(|e| e.into_inner()) = here.clone();
            }
            match crate::interrupt::state() {
                None => Ok(VmState::Continue),
                Some(i) => {
                    let at = here
                        .or_else(|| lua_location(lua))
                        .map(|l| format!("{l}: "))
                        .unwrap_or_default();
                    Err(mlua::Error::external(InterruptedAt(format!("{at}{i}"), i)))
                }
            }
        },
    )
}

/// An interruption with the recipe line it happened at.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct InterruptedAt(pub String, pub crate::interrupt::Interrupted);

/// In a dry run, the first heavy operation of a trial (a training step, an evaluation,
/// generation) stops the trial here and reports what it would train and need: trainable
/// parameters, and the memory estimate for a step of `batch` × `seq` tokens.
pub(crate) fn dry_run_stop<B: Backend>(
    lua: &Lua,
    model: &Llama<B>,
    batch: usize,
    seq: usize,
    training_step: bool,
) -> mlua::Result<()> {
    let dry = lua
        .app_data_ref::<SweepHost>()
        .is_some_and(|h| h.mode == SweepMode::DryRun && h.in_trial());
    if !dry {
        return Ok(());
    }
    let count = model.param_count();
    let (trainable, total) = (count.trainable as u64, count.total as u64);
    let training = if !training_step || trainable == 0 {
        Training::Inference
    } else if trainable == total {
        Training::Full
    } else {
        Training::Adapters { trainable }
    };
    let precision = crate::model::quantize::model_quant_config(model)
        .map(WeightStorage::Quant)
        .unwrap_or(WeightStorage::F32);
    let run = RunShape {
        config: model.config.clone(),
        training,
        precision,
        batch,
        seq,
    };
    let estimate = footprint::estimate(&run).total();
    Err(mlua::Error::external(DryRunStop {
        trainable,
        total,
        estimate_bytes: estimate,
        batch,
        seq,
    }))
}
