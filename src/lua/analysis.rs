//! `runner.analysis`: analyses of saved adapters.

use std::path::PathBuf;

use mlua::{Lua, Table};

use super::options::Opts;
use crate::analysis::subspace::{Side, adapter_similarity};

pub(crate) fn register(lua: &Lua, runner: &Table) -> mlua::Result<()> {
    let t = lua.create_table()?;
    // runner.analysis.subspace_similarity(a_dir, b_dir, {module=, side="A", baseline=false})
    // -> phi (phi[i][j], i and j from 1), and the Gaussian baseline's when asked.
    t.set(
        "subspace_similarity",
        lua.create_function(|lua, (a, b, opts): (String, String, Option<Table>)| {
            let o = Opts::new(
                lua,
                "runner.analysis.subspace_similarity",
                opts,
                &["module", "side", "baseline"],
            )?;
            let module = o
                .string("module")?
                .ok_or_else(|| o.err("module = \"model.layers.N.self_attn.q_proj\" is required"))?;
            let side = match o.string("side")? {
                None => Side::A,
                Some(s) => Side::parse(&s)
                    .ok_or_else(|| o.err(format!("side must be \"A\" or \"B\" (got \"{s}\")")))?,
            };
            let baseline = o.bool("baseline")?.unwrap_or(false);
            let s = adapter_similarity(
                &PathBuf::from(&a),
                &PathBuf::from(&b),
                &module,
                side,
                baseline,
            )
            .map_err(|e| o.err(e))?;
            let random = match s.random {
                Some(r) => mlua::Value::Table(
                    lua.create_sequence_from(
                        r.into_iter()
                            .map(|row| lua.create_sequence_from(row))
                            .collect::<mlua::Result<Vec<_>>>()?,
                    )?,
                ),
                None => mlua::Value::Nil,
            };
            let phi = lua.create_sequence_from(
                s.phi
                    .into_iter()
                    .map(|row| lua.create_sequence_from(row))
                    .collect::<mlua::Result<Vec<_>>>()?,
            )?;
            Ok((phi, random))
        })?,
    )?;
    runner.set("analysis", t)
}
