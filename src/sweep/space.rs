//! The trials of a sweep: a cartesian grid, lists that change together (zip), and random
//! search with a budget and a seed. The three combine as a product, so `grid = {rank = ...}`
//! with `random = {budget = 8, space = {lr = ...}}` samples eight learning rates per rank.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::grid::{Trial, expand_grid};
use super::value::Value;

/// How random search draws one parameter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Distribution {
    /// One of these values, uniformly.
    Choice(Vec<Value>),
    /// Uniform in [min, max] (log-uniform with `log`), rounded to an integer with `int`.
    Range {
        min: f64,
        max: f64,
        log: bool,
        int: bool,
    },
}

impl Distribution {
    pub(crate) fn validate(&self, name: &str) -> Result<(), String> {
        match self {
            Distribution::Choice(v) if v.is_empty() => {
                Err(format!("random.space.{name} is an empty list"))
            }
            Distribution::Range { min, max, .. }
                if !(min.is_finite() && max.is_finite() && min <= max) =>
            {
                Err(format!(
                    "random.space.{name}: min ({min}) must be a finite number no larger than max ({max})"
                ))
            }
            Distribution::Range { min, log: true, .. } if *min <= 0.0 => Err(format!(
                "random.space.{name}: log = true needs min > 0, found {min}"
            )),
            _ => Ok(()),
        }
    }

    fn sample(&self, rng: &mut ChaCha8Rng) -> Value {
        match self {
            Distribution::Choice(values) => values[rng.random_range(0..values.len())].clone(),
            Distribution::Range { min, max, log, int } => {
                let u: f64 = rng.random();
                let x = if *log {
                    (min.ln() + u * (max.ln() - min.ln())).exp()
                } else {
                    min + u * (max - min)
                };
                if *int {
                    Value::Int(x.round().clamp(min.ceil(), max.floor()) as i64)
                } else {
                    // Eight significant digits: short in CSV, and still a distinct value per draw.
                    Value::Num(format!("{x:.7e}").parse().unwrap_or(x))
                }
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RandomSearch {
    pub budget: usize,
    pub seed: u64,
    /// Parameter name → distribution, sorted by name so the draws do not depend on table order.
    pub space: Vec<(String, Distribution)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct SweepSpace {
    pub grid: Vec<(String, Vec<Value>)>,
    /// Lists of equal length whose i-th values form one point.
    pub zip: Vec<(String, Vec<Value>)>,
    pub random: Option<RandomSearch>,
}

impl SweepSpace {
    pub(crate) fn validate(&self) -> Result<(), String> {
        let mut names: Vec<&str> = Vec::new();
        let random_names = self
            .random
            .iter()
            .flat_map(|r| r.space.iter().map(|(k, _)| k));
        for name in self
            .grid
            .iter()
            .map(|(k, _)| k)
            .chain(self.zip.iter().map(|(k, _)| k))
            .chain(random_names)
        {
            if names.contains(&name.as_str()) {
                return Err(format!(
                    "parameter '{name}' appears in more than one of grid, zip and random"
                ));
            }
            names.push(name);
        }
        if let Some((first, values)) = self.zip.first()
            && let Some((other, o)) = self.zip.iter().find(|(_, v)| v.len() != values.len())
        {
            return Err(format!(
                "zip lists must have the same length: {first} has {}, {other} has {}",
                values.len(),
                o.len()
            ));
        }
        if let Some(r) = &self.random {
            if r.budget == 0 {
                return Err("random.budget must be at least 1".into());
            }
            for (name, d) in &r.space {
                d.validate(name)?;
            }
        }
        Ok(())
    }

    /// Every trial, in a fixed order: grid points (last name fastest), each with every zip row,
    /// each with every random draw. Repeated points (random choices can repeat) appear once.
    pub(crate) fn trials(&self) -> Vec<Trial> {
        let mut trials = expand_grid(&self.grid);
        if let Some((_, first)) = self.zip.first() {
            let rows: Vec<Vec<(String, Value)>> = (0..first.len())
                .map(|i| {
                    self.zip
                        .iter()
                        .map(|(k, v)| (k.clone(), v[i].clone()))
                        .collect()
                })
                .collect();
            trials = product(trials, &rows);
        }
        if let Some(r) = &self.random {
            let mut rng = ChaCha8Rng::seed_from_u64(r.seed);
            let mut space = r.space.clone();
            space.sort_by(|a, b| a.0.cmp(&b.0));
            let draws: Vec<Vec<(String, Value)>> = (0..r.budget)
                .map(|_| {
                    space
                        .iter()
                        .map(|(k, d)| (k.clone(), d.sample(&mut rng)))
                        .collect()
                })
                .collect();
            trials = product(trials, &draws);
        }
        // Duplicates (a value listed twice) run once; a set keeps this linear.
        let mut seen = std::collections::HashSet::with_capacity(trials.len());
        let mut unique: Vec<Trial> = Vec::with_capacity(trials.len());
        for t in trials {
            if seen.insert(format!("{:?}", t.params)) {
                unique.push(t);
            }
        }
        unique
    }
}

/// Each trial extended by each row; parameters stay sorted by name.
fn product(trials: Vec<Trial>, rows: &[Vec<(String, Value)>]) -> Vec<Trial> {
    trials
        .into_iter()
        .flat_map(|t| {
            rows.iter().map(move |row| {
                let mut params = t.params.clone();
                params.extend(row.iter().cloned());
                params.sort_by(|a, b| a.0.cmp(&b.0));
                Trial { params }
            })
        })
        .collect()
}

/// The trials of shard `index` of `count`: every `count`-th trial, starting at `index`, so
/// shards get equal shares whatever the trials' order.
pub(crate) fn shard<T: Clone>(trials: &[T], index: usize, count: usize) -> Vec<(usize, T)> {
    trials
        .iter()
        .cloned()
        .enumerate()
        .filter(|(i, _)| i % count == index)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ints(v: &[i64]) -> Vec<Value> {
        v.iter().map(|&i| Value::Int(i)).collect()
    }

    #[test]
    fn zip_moves_together_and_multiplies_the_grid() {
        let s = SweepSpace {
            grid: vec![(
                "method".into(),
                vec![Value::Str("lora".into()), Value::Str("dora".into())],
            )],
            zip: vec![
                ("rank".into(), ints(&[4, 8])),
                ("alpha".into(), ints(&[8, 16])),
            ],
            random: None,
        };
        s.validate().unwrap();
        let t = s.trials();
        assert_eq!(t.len(), 4);
        for trial in &t {
            let get = |k: &str| trial.params.iter().find(|(n, _)| n == k).unwrap().1.clone();
            let (Value::Int(r), Value::Int(a)) = (get("rank"), get("alpha")) else {
                panic!()
            };
            assert_eq!(a, 2 * r);
            let names: Vec<&str> = trial.params.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(names, ["alpha", "method", "rank"]);
        }
    }

    #[test]
    fn random_search_is_seeded_bounded_and_deduplicated() {
        let space = |seed| SweepSpace {
            random: Some(RandomSearch {
                budget: 20,
                seed,
                space: vec![
                    (
                        "lr".into(),
                        Distribution::Range {
                            min: 1e-4,
                            max: 1e-2,
                            log: true,
                            int: false,
                        },
                    ),
                    ("rank".into(), Distribution::Choice(ints(&[4, 8]))),
                    (
                        "layers".into(),
                        Distribution::Range {
                            min: 1.0,
                            max: 3.0,
                            log: false,
                            int: true,
                        },
                    ),
                ],
            }),
            ..Default::default()
        };
        let a = space(1).trials();
        assert_eq!(a, space(1).trials());
        assert_ne!(a, space(2).trials());
        assert_eq!(a.len(), 20);
        for t in &a {
            for (k, v) in &t.params {
                match (k.as_str(), v) {
                    ("lr", Value::Num(x)) => assert!((1e-4..=1e-2).contains(x), "{x}"),
                    ("rank", Value::Int(r)) => assert!([4, 8].contains(r)),
                    ("layers", Value::Int(l)) => assert!((1..=3).contains(l)),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        // Only two distinct points exist: twenty draws collapse to two trials.
        let small = SweepSpace {
            random: Some(RandomSearch {
                budget: 20,
                seed: 0,
                space: vec![("rank".into(), Distribution::Choice(ints(&[4, 8])))],
            }),
            ..Default::default()
        };
        assert_eq!(small.trials().len(), 2);
    }

    #[test]
    fn bad_spaces_are_explained() {
        let zip = SweepSpace {
            zip: vec![("a".into(), ints(&[1, 2])), ("b".into(), ints(&[1]))],
            ..Default::default()
        };
        assert!(zip.validate().unwrap_err().contains("same length"));
        let twice = SweepSpace {
            grid: vec![("a".into(), ints(&[1]))],
            zip: vec![("a".into(), ints(&[1]))],
            ..Default::default()
        };
        assert!(twice.validate().unwrap_err().contains("more than one"));
        let log = Distribution::Range {
            min: 0.0,
            max: 1.0,
            log: true,
            int: false,
        };
        assert!(log.validate("lr").unwrap_err().contains("min > 0"));
    }

    #[test]
    fn shards_partition_the_trials() {
        let trials: Vec<usize> = (0..10).collect();
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|i| shard(&trials, i, 3))
            .map(|(_, t)| t)
            .collect();
        seen.sort();
        assert_eq!(seen, trials);
        assert_eq!(
            shard(&trials, 1, 3)
                .iter()
                .map(|(i, _)| *i)
                .collect::<Vec<_>>(),
            vec![1, 4, 7]
        );
    }
}
