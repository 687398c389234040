//! Cartesian grid expansion and content-addressed trial ids.

use sha2::{Digest, Sha256};

use super::value::Value;
use crate::util::hex;

/// One point of a sweep: parameter names (sorted) and their values.
#[derive(Clone, Debug, PartialEq)]
pub struct Trial {
    pub params: Vec<(String, Value)>,
}

/// The cartesian product of the grid's value lists. Keys are sorted by name so that the
/// order of a Lua table never changes the trial order; the last key varies fastest.
/// An empty grid is one trial with no parameters.
pub fn expand_grid(grid: &[(String, Vec<Value>)]) -> Vec<Trial> {
    let mut axes: Vec<&(String, Vec<Value>)> = grid.iter().collect();
    axes.sort_by(|a, b| a.0.cmp(&b.0));
    let mut trials = vec![Trial { params: Vec::new() }];
    for (name, values) in axes {
        trials = trials
            .into_iter()
            .flat_map(|t| {
                values.iter().map(move |v| {
                    let mut params = t.params.clone();
                    params.push((name.clone(), v.clone()));
                    Trial { params }
                })
            })
            .collect();
    }
    trials
}

/// A short hash of what determines a trial's result: the recipe's content, the sweep name,
/// the global seed and the resolved parameters.
pub fn trial_id(recipe_hash: &str, sweep: &str, seed: Option<u64>, trial: &Trial) -> String {
    let mut h = Sha256::new();
    h.update(format!(
        "recipe={recipe_hash}\nsweep={sweep:?}\nseed={seed:?}\n"
    ));
    for (k, v) in &trial.params {
        h.update(format!("{k:?}={}\n", v.canonical()));
    }
    hex(&h.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_cartesian_and_sorted() {
        let grid = vec![
            (
                "targets".to_string(),
                vec![Value::Str("qv".into()), Value::Str("all".into())],
            ),
            (
                "rank".to_string(),
                vec![Value::Int(1), Value::Int(2), Value::Int(4)],
            ),
        ];
        let trials = expand_grid(&grid);
        assert_eq!(trials.len(), 6);
        assert_eq!(
            trials[0].params,
            vec![
                ("rank".into(), Value::Int(1)),
                ("targets".into(), Value::Str("qv".into()))
            ]
        );
        assert_eq!(trials[1].params[1].1, Value::Str("all".into()));
        assert_eq!(expand_grid(&[]).len(), 1);
        assert_eq!(expand_grid(&[("x".into(), vec![])]).len(), 0);
    }

    #[test]
    fn ids_depend_on_everything_that_matters() {
        let t = |v| Trial {
            params: vec![("rank".into(), v)],
        };
        let a = trial_id("h", "s", Some(0), &t(Value::Int(8)));
        assert_eq!(a.len(), 12);
        assert_eq!(a, trial_id("h", "s", Some(0), &t(Value::Int(8))));
        assert_ne!(a, trial_id("h2", "s", Some(0), &t(Value::Int(8))));
        assert_ne!(a, trial_id("h", "s", Some(1), &t(Value::Int(8))));
        assert_ne!(a, trial_id("h", "s", Some(0), &t(Value::Str("8".into()))));
    }
}
