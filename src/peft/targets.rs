//! Which projections a method adapts: a list of names matched as Hugging Face PEFT matches
//! them (the full module name, or its dotted suffix: "q_proj", "self_attn.q_proj",
//! "model.layers.0.self_attn.q_proj"), a regular expression that must match a whole module
//! name, or "all-linear" (every projection, not the output head).

use super::PeftError;
use crate::model::llama::{Proj, module_path};

#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    Names(Vec<String>),
    Pattern(String),
    AllLinear,
}

impl Targets {
    pub fn names(names: &[&str]) -> Self {
        Self::Names(names.iter().map(|s| s.to_string()).collect())
    }

    pub(crate) fn validate(&self) -> Result<(), PeftError> {
        match self {
            Self::Names(list) if list.is_empty() => Err(PeftError::NoTargets),
            Self::Pattern(p) => regex::Regex::new(p)
                .map(|_| ())
                .map_err(|e| PeftError::BadPattern(e.to_string())),
            _ => Ok(()),
        }
    }

    /// The `(layer, projection)` pairs selected in a model of `layers` blocks whose layers have
    /// the projections `kinds`, in model order.
    pub(crate) fn resolve(
        &self,
        layers: usize,
        kinds: &[Proj],
    ) -> Result<Vec<(usize, Proj)>, PeftError> {
        self.validate()?;
        let all = (0..layers).flat_map(|i| kinds.iter().map(move |&t| (i, t)));
        match self {
            Self::AllLinear => Ok(all.collect()),
            Self::Pattern(p) => {
                let re = regex::Regex::new(&format!("^(?:{p})$"))
                    .map_err(|e| PeftError::BadPattern(e.to_string()))?;
                let picked: Vec<_> = all
                    .filter(|&(i, t)| re.is_match(&module_path(i, t)))
                    .collect();
                if picked.is_empty() {
                    return Err(PeftError::NoMatch(p.clone()));
                }
                Ok(picked)
            }
            Self::Names(names) => {
                let matches = |name: &str, i: usize, t: Proj| {
                    let path = module_path(i, t);
                    path == name || path.ends_with(&format!(".{name}"))
                };
                for name in names {
                    if !(0..layers).any(|i| kinds.iter().any(|&t| matches(name, i, t))) {
                        let valid: Vec<&str> = kinds.iter().map(|t| t.name()).collect();
                        let hint = super::closest(name, valid.iter().copied())
                            .map(|c| format!(" (did you mean '{c}'?)"))
                            .unwrap_or_default();
                        return Err(PeftError::UnknownTarget {
                            name: name.clone(),
                            hint,
                            valid: valid.join(", "),
                        });
                    }
                }
                Ok(all
                    .filter(|&(i, t)| names.iter().any(|n| matches(n, i, t)))
                    .collect())
            }
        }
    }

    /// As a recipe writes them: "all-linear", a pattern, or a list of names (`{"all-linear"}`
    /// counts as "all-linear"). A single string is a regular expression over module names.
    fn from_recipe(one: Option<String>, many: Option<Vec<String>>) -> Self {
        match (one, many) {
            (Some(s), _) if s == "all-linear" => Self::AllLinear,
            (Some(s), _) => Self::Pattern(s),
            (None, Some(list)) if list.len() == 1 && list[0] == "all-linear" => Self::AllLinear,
            (None, list) => Self::Names(list.unwrap_or_default()),
        }
    }

    /// The names PEFT's adapter_config.json lists for these targets, in a model whose layers
    /// have the projections `kinds`.
    pub(crate) fn to_json(&self, kinds: &[Proj]) -> serde_json::Value {
        match self {
            Self::Names(list) => serde_json::json!(list),
            Self::Pattern(p) => serde_json::json!(p),
            Self::AllLinear => {
                serde_json::json!(kinds.iter().map(|t| t.name()).collect::<Vec<_>>())
            }
        }
    }

    /// PEFT's `target_modules`: a list of names, or a string that is a regular expression
    /// (or "all-linear").
    pub(crate) fn from_json(v: &serde_json::Value) -> Option<Self> {
        match v {
            serde_json::Value::String(s) if s == "all-linear" => Some(Self::AllLinear),
            serde_json::Value::String(s) => Some(Self::Pattern(s.clone())),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .map(Self::Names),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for Targets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TargetsVisitor;
        impl<'de> serde::de::Visitor<'de> for TargetsVisitor {
            type Value = Targets;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"all-linear\", a pattern, or a list of module names")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Targets, E> {
                Ok(Targets::from_recipe(Some(s.to_string()), None))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Targets, A::Error> {
                let mut names = Vec::new();
                while let Some(name) = seq.next_element::<String>()? {
                    names.push(name);
                }
                Ok(Targets::from_recipe(None, Some(names)))
            }
        }
        d.deserialize_any(TargetsVisitor)
    }
}
