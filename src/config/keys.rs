//! Every key `tagbridge.hcl` accepts, read from the parser itself.
//!
//! `docs/configuration.md` must name every key the parser accepts and no
//! other (`tests/docs.rs` holds it to that). A second, hand-written list
//! would drift from `raw` exactly as the documentation can, so the list
//! comes from serde: the derive hands each struct's complete field list to
//! `Deserializer::deserialize_struct`. [`Walker`] is a deserializer that
//! records those lists and feeds every field a placeholder of its type,
//! walking into the nested blocks, so it reads the shape of
//! [`RawConfig`] exactly as the parser sees it.

use std::cell::RefCell;

use serde::de::value::{Error, SeqDeserializer, StrDeserializer};
use serde::de::{
    self, Deserialize as _, DeserializeSeed, IntoDeserializer as _, MapAccess, Visitor,
};

use super::raw::RawConfig;

/// Every key the parser accepts, as `(block, key)`, sorted. `block` is the
/// path of the block that holds the key: `""` for the top level, `"tls"`,
/// `"service.rollout"`; a label (a service's or a notify target's name) is
/// not part of it. A field that is itself a block (`tls`, `service`,
/// `service.tags`) is not a key: its keys are listed under its path.
///
/// # Panics
///
/// Only if `raw` gains a field of a shape the walker cannot feed (it
/// feeds strings, numbers, booleans, lists, labelled blocks and blocks):
/// the message names it.
pub fn accepted_keys() -> Vec<(String, &'static str)> {
    let seen = RefCell::new(Vec::new());
    RawConfig::deserialize(Walker {
        path: String::new(),
        seen: &seen,
    })
    .unwrap_or_else(|e| panic!("config::keys cannot walk raw::RawConfig: {e}"));
    let blocks = seen.into_inner();
    let mut keys: Vec<(String, &'static str)> = blocks
        .iter()
        .flat_map(|(path, fields)| fields.iter().map(move |f| (path, *f)))
        .filter(|(path, f)| !blocks.iter().any(|(p, _)| *p == join(path, f)))
        .map(|(path, f)| (path.clone(), f))
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// Blocks seen so far: each block's path and its fields, as serde gave them.
type Seen = RefCell<Vec<(String, &'static [&'static str])>>;

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// A deserializer that answers every request with a placeholder of the
/// asked type and records each struct's fields under `path`.
struct Walker<'a> {
    path: String,
    seen: &'a Seen,
}

impl<'de> de::Deserializer<'de> for Walker<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom(format_args!(
            "a field under {:?} has a shape the walker does not feed",
            self.path
        )))
    }

    fn deserialize_bool<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_bool(false)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }

    fn deserialize_i32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }

    fn deserialize_i64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_i64(0)
    }

    fn deserialize_u8<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }

    fn deserialize_u32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }

    fn deserialize_u64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_u64(0)
    }

    fn deserialize_f32<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(0.0)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_f64(0.0)
    }

    fn deserialize_str<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }

    fn deserialize_string<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_str("")
    }

    fn deserialize_option<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_some(self)
    }

    /// A list: empty (its items are values, never blocks).
    fn deserialize_seq<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_seq(SeqDeserializer::<_, Error>::new(std::iter::empty::<()>()))
    }

    /// Labelled blocks (`service "web" { … }`): one, whose label is not
    /// part of the path.
    fn deserialize_map<V: Visitor<'de>>(self, v: V) -> Result<V::Value, Error> {
        v.visit_map(Labelled {
            walker: Some(self),
            label_given: false,
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        v: V,
    ) -> Result<V::Value, Error> {
        self.seen.borrow_mut().push((self.path.clone(), fields));
        v.visit_map(Fields {
            path: self.path,
            seen: self.seen,
            fields: fields.iter(),
            current: "",
        })
    }

    serde::forward_to_deserialize_any! {
        i128 u128 char bytes byte_buf unit unit_struct newtype_struct tuple
        tuple_struct enum identifier ignored_any
    }
}

/// A block's fields, each given once, each value walked under its path.
struct Fields<'a> {
    path: String,
    seen: &'a Seen,
    fields: std::slice::Iter<'static, &'static str>,
    current: &'static str,
}

impl<'de> MapAccess<'de> for Fields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some(field) = self.fields.next() else {
            return Ok(None);
        };
        self.current = field;
        let key: StrDeserializer<'_, Error> = field.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        seed.deserialize(Walker {
            path: join(&self.path, self.current),
            seen: self.seen,
        })
    }
}

/// One labelled block under the walker's path.
struct Labelled<'a> {
    walker: Option<Walker<'a>>,
    label_given: bool,
}

impl<'de> MapAccess<'de> for Labelled<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        if self.label_given {
            return Ok(None);
        }
        self.label_given = true;
        let label: StrDeserializer<'_, Error> = "label".into_deserializer();
        seed.deserialize(label).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let walker = self
            .walker
            .take()
            .ok_or_else(|| de::Error::custom("a labelled block's value asked twice"))?;
        seed.deserialize(walker)
    }
}
