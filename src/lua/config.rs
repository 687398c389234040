//! Config structs read straight from Lua option tables through serde, so each config is
//! described once: its fields are the option keys, its `Default` gives the defaults. The keys
//! come from the struct's `Deserialize` derive (see [`field_names`]) and are checked by
//! [`Opts`] (unknown keys get a did-you-mean hint and the recipe's `file:line`); values are
//! type-checked here with the same messages `Opts`'s getters give.
//!
//! A config opts in with `#[derive(Deserialize)] #[serde(default, deny_unknown_fields)]`;
//! missing keys take the struct's `Default`.

use std::fmt;

use mlua::{Lua, Table, Value};
use serde::de::{
    self, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};

use super::options::{Opts, describe, integer, number};

/// Reads `T` from an option table of `func` (e.g. `runner.peft.lora`). `fill` supplies values
/// for keys the recipe left out whose default is not the struct's (the recipe's seed);
/// `exclude` removes keys that this constructor fixes itself.
pub(crate) fn from_table<T: DeserializeOwned>(
    lua: &Lua,
    func: &'static str,
    table: Option<Table>,
    fill: &[(&str, Value)],
    exclude: &[&str],
) -> mlua::Result<T> {
    let keys: Vec<&str> = field_names::<T>()
        .iter()
        .copied()
        .filter(|k| !exclude.contains(k))
        .collect();
    let o = Opts::new(lua, func, table, &keys)?;
    let mut entries = Vec::new();
    for key in &keys {
        let value = match o.raw(key)? {
            Value::Nil => match fill.iter().find(|(k, _)| k == key) {
                Some((_, v)) => v.clone(),
                None => continue,
            },
            v => v,
        };
        entries.push((*key, value));
    }
    T::deserialize(TableDe { entries }).map_err(|e| o.err(e.0))
}

/// The field names of a struct deriving `Deserialize`, in declaration order: serde's derive
/// passes them to `deserialize_struct`, where a probe deserializer catches them.
pub(crate) fn field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    match T::deserialize(FieldProbe) {
        Err(Probe(fields)) => fields,
        Ok(_) => &[],
    }
}

/// A message for the recipe author (prefixed with the function and `file:line` by the caller).
#[derive(Debug)]
struct DeError(String);

impl fmt::Display for DeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DeError {}

impl de::Error for DeError {
    fn custom<M: fmt::Display>(msg: M) -> Self {
        DeError(msg.to_string())
    }
}

/// The present keys of one option table, in field order.
struct TableDe<'k> {
    entries: Vec<(&'k str, Value)>,
}

impl<'de> de::Deserializer<'de> for TableDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_map(Entries {
            entries: self.entries.into_iter(),
            value: None,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct Entries<'k> {
    entries: std::vec::IntoIter<(&'k str, Value)>,
    value: Option<ValueDe>,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(ValueDe {
            key: key.to_string(),
            value,
        });
        seed.deserialize(key.into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let value = self.value.take().expect("a key before its value");
        let key = value.key.clone();
        // Messages from a type's own visitor do not name the key; ours start with it.
        seed.deserialize(value).map_err(|e| {
            if e.0.starts_with(&key) {
                e
            } else {
                DeError(format!("{key}: {}", e.0))
            }
        })
    }
}

/// One option's value, named by its key (`targets`, or `targets[2]` inside a list).
struct ValueDe {
    key: String,
    value: Value,
}

impl ValueDe {
    fn wrong(&self, want: &str) -> DeError {
        DeError(format!(
            "{} must be {want}, found {}",
            self.key,
            describe(&self.value)
        ))
    }

    fn integer(&self) -> Result<i64, DeError> {
        integer(&self.value).ok_or_else(|| self.wrong("an integer"))
    }

    fn unsigned(&self) -> Result<u64, DeError> {
        let i = self.integer()?;
        u64::try_from(i)
            .map_err(|_| DeError(format!("{} must be an integer ≥ 0 (got {i})", self.key)))
    }

    fn number(&self) -> Result<f64, DeError> {
        number(&self.value).ok_or_else(|| self.wrong("a number"))
    }

    fn string(&self, want: &str) -> Result<String, DeError> {
        match &self.value {
            Value::String(s) => Ok(s.to_string_lossy()),
            _ => Err(self.wrong(want)),
        }
    }
}

impl<'de> de::Deserializer<'de> for ValueDe {
    type Error = DeError;

    /// For values whose type serde leaves open (an untagged enum such as `Targets`).
    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match &self.value {
            Value::Nil => visitor.visit_unit(),
            Value::Boolean(b) => visitor.visit_bool(*b),
            Value::Integer(i) => visitor.visit_i64(*i),
            Value::Number(x) => visitor.visit_f64(*x),
            Value::String(s) => visitor.visit_string(s.to_string_lossy()),
            Value::Table(_) => self.deserialize_seq(visitor),
            _ => Err(self.wrong("a number, string, boolean or list")),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Boolean(b) => visitor.visit_bool(b),
            _ => Err(self.wrong("true or false")),
        }
    }

    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_i64(self.integer()?)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_i64(visitor)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_u64(self.unsigned()?)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_u64(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_f64(self.number()?)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_string(self.string("a string")?)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_string(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        match self.value {
            Value::Nil => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let Value::Table(t) = &self.value else {
            return Err(self.wrong("a list"));
        };
        let mut items = Vec::new();
        for (i, v) in t.sequence_values::<Value>().enumerate() {
            let value = v.map_err(|e| DeError(e.to_string()))?;
            items.push(ValueDe {
                key: format!("{}[{}]", self.key, i + 1),
                value,
            });
        }
        visitor.visit_seq(Items(items.into_iter()))
    }

    /// Unit variants named by strings, with the valid names in the message.
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let quoted: Vec<String> = variants.iter().map(|v| format!("\"{v}\"")).collect();
        let choices = match quoted.split_last() {
            Some((last, [])) => last.clone(),
            Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
            None => String::new(),
        };
        let s = self.string(&choices)?;
        // Any failure of a unit variant is an unknown name (serde's aliases are accepted too).
        let key = self.key;
        visitor
            .visit_enum(UnitVariant(s.clone()))
            .map_err(|_| DeError(format!("{key} must be {choices} (got \"{s}\")")))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        i8 i16 u8 u16 char bytes byte_buf unit unit_struct tuple tuple_struct map struct
        identifier ignored_any
    }
}

struct Items(std::vec::IntoIter<ValueDe>);

impl<'de> SeqAccess<'de> for Items {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        self.0.next().map(|v| seed.deserialize(v)).transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct UnitVariant(String);

impl<'de> EnumAccess<'de> for UnitVariant {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let name: de::value::StringDeserializer<DeError> = self.0.clone().into_deserializer();
        Ok((seed.deserialize(name)?, self))
    }
}

impl<'de> VariantAccess<'de> for UnitVariant {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _: T) -> Result<T::Value, DeError> {
        Err(DeError(format!("'{}' needs a value", self.0)))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _: usize, _: V) -> Result<V::Value, DeError> {
        Err(DeError(format!("'{}' needs values", self.0)))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, DeError> {
        Err(DeError(format!("'{}' needs fields", self.0)))
    }
}

/// Answers every request with an error carrying the struct's field names, if it was asked
/// for a struct.
struct FieldProbe;

#[derive(Debug)]
struct Probe(&'static [&'static str]);

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fields: {:?}", self.0)
    }
}

impl std::error::Error for Probe {}

impl de::Error for Probe {
    fn custom<M: fmt::Display>(_: M) -> Self {
        Probe(&[])
    }
}

impl<'de> de::Deserializer<'de> for FieldProbe {
    type Error = Probe;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Probe> {
        Err(Probe(&[]))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Probe> {
        Err(Probe(fields))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 u8 u16 u32 u64 f32 f64 char str string bytes byte_buf option unit
        unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "lowercase")]
    enum Shape {
        Round,
        Square,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Example {
        rank: usize,
        alpha: f64,
        names: Vec<String>,
        shape: Shape,
        extra: Option<usize>,
        flag: bool,
    }

    impl Default for Example {
        fn default() -> Self {
            Self {
                rank: 8,
                alpha: 8.0,
                names: vec!["q".into()],
                shape: Shape::Round,
                extra: None,
                flag: false,
            }
        }
    }

    fn read(src: &str) -> Result<Example, String> {
        let lua = Lua::new();
        let t: Option<Table> = lua.load(src).eval().unwrap();
        from_table::<Example>(&lua, "f", t, &[], &[]).map_err(|e| e.to_string())
    }

    #[test]
    fn field_names_come_from_the_struct_in_order() {
        assert_eq!(
            field_names::<Example>(),
            ["rank", "alpha", "names", "shape", "extra", "flag"]
        );
    }

    #[test]
    fn missing_keys_take_the_struct_defaults() {
        assert_eq!(read("return {}").unwrap(), Example::default());
        assert_eq!(read("return nil").unwrap(), Example::default());
    }

    #[test]
    fn given_keys_are_read_with_their_types() {
        let e = read(
            "return {rank = 4, alpha = 3, names = {'a', 'b'}, shape = 'square', extra = 2.0, flag = true}",
        )
        .unwrap();
        assert_eq!(
            e,
            Example {
                rank: 4,
                alpha: 3.0,
                names: vec!["a".into(), "b".into()],
                shape: Shape::Square,
                extra: Some(2),
                flag: true,
            }
        );
    }

    #[test]
    fn mistakes_are_named_with_the_key() {
        let err = read("return {rnak = 4}").unwrap_err();
        assert!(
            err.contains("f: unknown option 'rnak' (did you mean 'rank'?)"),
            "{err}"
        );
        let err = read("return {alpha = 'x'}").unwrap_err();
        assert!(
            err.contains("f: alpha must be a number, found \"x\""),
            "{err}"
        );
        let err = read("return {rank = -1}").unwrap_err();
        assert!(
            err.contains("rank must be an integer ≥ 0 (got -1)"),
            "{err}"
        );
        let err = read("return {rank = 1.5}").unwrap_err();
        assert!(err.contains("rank must be an integer, found 1.5"), "{err}");
        let err = read("return {names = {'a', 3}}").unwrap_err();
        assert!(err.contains("names[2] must be a string, found 3"), "{err}");
        let err = read("return {shape = 'oval'}").unwrap_err();
        assert!(
            err.contains("shape must be \"round\" or \"square\" (got \"oval\")"),
            "{err}"
        );
        let err = read("return {flag = 1}").unwrap_err();
        assert!(err.contains("flag must be true or false, found 1"), "{err}");
    }

    #[test]
    fn fill_and_exclude() {
        let lua = Lua::new();
        let e: Example =
            from_table(&lua, "f", None, &[("rank", Value::Integer(2))], &["shape"]).unwrap();
        assert_eq!(e.rank, 2);
        let t: Table = lua.load("return {shape = 'square'}").eval().unwrap();
        let err = from_table::<Example>(&lua, "f", Some(t), &[], &["shape"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown option 'shape'"), "{err}");
    }
}
