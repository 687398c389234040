//! The JSON the live page reads: the sweep list, one sweep's trials, training curves and
//! pivot tables, built from the report module's results types so the page shows what
//! `runner table` and `runner plot` show.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::folder::ResultsFolder;
use crate::report::table::{PivotSpec, pivot};
use crate::report::{SweepResults, plot};
use crate::sweep::{TrialRecord, TrialStatus};

/// Curves sent when the page names no trials: the most recent ones.
const MAX_DEFAULT_CURVES: usize = 50;

/// Every sweep with its trial counts, or the error that stops it from being read.
pub(crate) fn sweep_list(folder: &ResultsFolder) -> Json {
    let sweeps: Vec<Json> = folder
        .sweeps()
        .into_iter()
        .map(|name| match folder.results(&name) {
            Ok(loaded) => match loaded.as_ref() {
                Ok(r) => {
                    let count = |s: TrialStatus| r.trials.iter().filter(|t| t.status == s).count();
                    json!({
                        "name": name,
                        "trials": r.trials.len(),
                        "ok": count(TrialStatus::Ok),
                        "failed": r.trials.len() - count(TrialStatus::Ok),
                    })
                }
                Err(e) => json!({ "name": name, "error": e }),
            },
            // Deleted between the listing and the read.
            Err(_) => json!({ "name": name, "error": "no longer there" }),
        })
        .collect();
    json!({ "root": folder.root().display().to_string(), "sweeps": sweeps })
}

/// One sweep: its columns, every trial with its cells as trials.csv writes them, the logged
/// step keys, and the axes `runner plot` would choose.
pub(crate) fn sweep(r: &SweepResults) -> Json {
    let cells = |list: &[(String, crate::sweep::Value)]| -> serde_json::Map<String, Json> {
        list.iter()
            .map(|(k, v)| (k.clone(), Json::String(v.to_string())))
            .collect()
    };
    let trials: Vec<Json> = r
        .trials
        .iter()
        .map(|t: &TrialRecord| {
            json!({
                "trial_id": t.trial_id,
                "status": t.status.as_str(),
                "seconds": t.seconds,
                "params": cells(&t.params),
                "metrics": cells(&t.metrics),
                "error": t.error,
            })
        })
        .collect();
    let (x, y) = plot::default_axes(r);
    json!({
        "name": r.name,
        "params": r.params,
        "metrics": r.metrics,
        "step_keys": r.step_keys,
        "trials": trials,
        "plot": { "x": x, "y": y },
    })
}

/// The `key` column of steps.csv for the named trials (all trials' latest ones when `trials` is
/// `None`): per trial its steps and values, rows where the key was not logged left out.
pub(crate) fn curves(
    r: &SweepResults,
    key: &str,
    trials: Option<&[String]>,
) -> Result<Json, String> {
    let Some(k) = r.step_keys.iter().position(|s| s == key) else {
        return Err(format!(
            "steps.csv of {} has no column {key:?}; it has: {}",
            r.name,
            r.step_keys.join(", ")
        ));
    };
    let ids: Vec<&str> = match trials {
        Some(ids) => ids.iter().map(String::as_str).collect(),
        None => {
            let all: Vec<&str> = r.trials.iter().map(|t| t.trial_id.as_str()).collect();
            all[all.len().saturating_sub(MAX_DEFAULT_CURVES)..].to_vec()
        }
    };
    let mut by_trial: HashMap<&str, (Vec<f64>, Vec<f64>)> = ids
        .iter()
        .map(|id| (*id, (Vec::new(), Vec::new())))
        .collect();
    for row in &r.steps {
        if let (Some(series), Some(v)) = (by_trial.get_mut(row.trial_id.as_str()), row.values[k])
            && v.is_finite()
        {
            series.0.push(row.step);
            series.1.push(v);
        }
    }
    let series: Vec<Json> = ids
        .iter()
        .map(|id| {
            let (steps, values) = by_trial.remove(id).unwrap_or_default();
            json!({ "trial_id": id, "steps": steps, "values": values })
        })
        .collect();
    Ok(json!({ "key": key, "series": series }))
}

/// A pivot table as `runner table` computes it, from the page's query.
pub(crate) fn table(r: &SweepResults, query: &HashMap<String, String>) -> Result<Json, String> {
    let get = |k: &str| query.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let spec = PivotSpec {
        rows: get("rows")
            .map(|s| s.split(',').map(|p| p.trim().to_string()).collect())
            .unwrap_or_default(),
        cols: get("cols").map(str::to_string),
        value: get("value")
            .ok_or("a table needs a value column")?
            .to_string(),
        agg: get("agg")
            .unwrap_or("mean")
            .parse()
            .map_err(|e| format!("{e:#}"))?,
        precision: match get("precision") {
            Some(p) => Some(
                p.parse()
                    .map_err(|_| format!("precision {p:?} is not a whole number"))?,
            ),
            None => None,
        },
        include_failed: get("failed") == Some("1"),
    };
    pivot(r, &spec)
        .map(|p| p.to_json())
        .map_err(|e| format!("{e:#}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::tests::{STEPS, TRIALS, fixture};

    fn load() -> (tempfile::TempDir, SweepResults) {
        let (tmp, dir) = fixture(TRIALS, Some(STEPS));
        let r = SweepResults::load(&dir).unwrap();
        (tmp, r)
    }

    #[test]
    fn sweep_cells_are_the_files_text() {
        let (_tmp, r) = load();
        let j = sweep(&r);
        assert_eq!(j["params"], json!(["rank", "targets"]));
        assert_eq!(j["metrics"], json!(["eval_loss", "peak_mem_mb"]));
        assert_eq!(j["step_keys"], json!(["loss", "lr"]));
        let t = &j["trials"][4];
        assert_eq!(t["trial_id"], "a5");
        assert_eq!(t["metrics"]["eval_loss"], "3.25");
        assert_eq!(t["params"]["targets"], "qv");
        assert_eq!(j["trials"][5]["error"], "boom, bang");
        assert_eq!(j["trials"][5]["status"], "failed");
        assert_eq!(j["plot"], json!({ "x": "rank", "y": "eval_loss" }));
    }

    #[test]
    fn curves_follow_steps_csv() {
        let (_tmp, r) = load();
        let ids = vec!["a3".to_string(), "a6".to_string()];
        let j = curves(&r, "loss", Some(&ids)).unwrap();
        assert_eq!(j["series"][0]["steps"], json!([10.0, 20.0]));
        assert_eq!(j["series"][0]["values"], json!([3.0, 2.6]));
        // A trial that logged nothing has an empty curve, not an error.
        assert_eq!(j["series"][1]["values"], json!([]));
        // lr was logged on the first step only.
        let lr = curves(&r, "lr", None).unwrap();
        assert_eq!(lr["series"].as_array().unwrap().len(), 6);
        assert_eq!(lr["series"][0]["steps"], json!([10.0]));
        let err = curves(&r, "acc", None).unwrap_err();
        assert!(err.contains("loss, lr"), "{err}");
    }

    #[test]
    fn table_matches_runner_table() {
        let (_tmp, r) = load();
        let q: HashMap<String, String> = [
            ("rows", "rank"),
            ("cols", "targets"),
            ("value", "eval_loss"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let j = table(&r, &q).unwrap();
        let spec = PivotSpec {
            rows: vec!["rank".into()],
            cols: Some("targets".into()),
            value: "eval_loss".into(),
            ..PivotSpec::default()
        };
        assert_eq!(j["markdown"], pivot(&r, &spec).unwrap().to_markdown());
        assert_eq!(j["header"], json!(["rank", "qv", "all"]));
        assert_eq!(j["rows"][1], json!(["4", "3.375", "2.500"]));
        let mut bad = q.clone();
        bad.insert("agg".into(), "median".into());
        assert!(table(&r, &bad).unwrap_err().contains("unknown aggregation"));
        bad.insert("value".into(), "nope".into());
        bad.remove("agg");
        assert!(table(&r, &bad).unwrap_err().contains("unknown column"));
    }
}
