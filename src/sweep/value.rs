//! The scalar values that sweep parameters, metrics and logged rows hold.

use std::fmt;

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Num(f64),
    Str(String),
    Bool(bool),
}

impl fmt::Display for Value {
    /// The text written to CSV: integers without a decimal point, floats in their shortest
    /// round-trip form, so the same numbers always give the same bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(i) => write!(f, "{i}"),
            Value::Num(x) => write!(f, "{x}"),
            Value::Str(s) => f.write_str(s),
            Value::Bool(b) => write!(f, "{b}"),
        }
    }
}

impl Value {
    /// A value read back from CSV: integers, then floats, then booleans, else text.
    pub(crate) fn parse_text(s: &str) -> Value {
        if let Ok(i) = s.parse::<i64>() {
            return Value::Int(i);
        }
        if let Ok(x) = s.parse::<f64>() {
            return Value::Num(x);
        }
        match s {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::Str(s.to_string()),
        }
    }

    /// Canonical form for hashing: the type is part of it, so `1` and `"1"` differ.
    pub(crate) fn canonical(&self) -> String {
        match self {
            Value::Int(i) => format!("i:{i}"),
            Value::Num(x) => format!("n:{x:?}"),
            Value::Str(s) => format!("s:{s:?}"),
            Value::Bool(b) => format!("b:{b}"),
        }
    }
}
