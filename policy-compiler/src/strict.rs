//! Strict typing: a `serde_json::Value` deserializer that reports the fields the target
//! type does not know, with the names it does know.
//!
//! k8s-openapi types skip unknown fields silently (their visitors read them as
//! `IgnoredAny`), so a typo such as `podSelector: {matchLabel: {app: x}}` would read as an
//! empty selector: every Pod. [`deserialize`] reads a value into any `Deserialize` type
//! exactly as `serde_json` would, and records every skipped field with its path and the
//! fields of the struct it sits in (the `FIELDS` serde passes to `deserialize_struct`),
//! so the loader can reject it like `kubectl --validate=strict` and suggest the nearest
//! known name. It is generic over the type: every kind typed through it is checked.
//!
//! Paths are built only for skipped fields (a parent-linked segment list on the stack),
//! so the common case costs what `serde_json`'s own `Value` deserializer costs.

use std::cell::RefCell;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use crate::source::{child_path, index_path};

/// A field the target type does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownField {
    /// Full field path, e.g. `spec.ingress[0].from[0].podSelector.matchLabel`.
    pub path: String,
    /// The field's name (the last segment of `path`).
    pub name: String,
    /// The names the struct holding it knows.
    pub known: &'static [&'static str],
}

impl UnknownField {
    /// The known name closest to this one, when close enough to be a typo (same name in
    /// another case, or at most two edits; one for names of up to five characters).
    pub fn suggestion(&self) -> Option<&'static str> {
        nearest(&self.name, self.known.iter().copied())
    }
}

/// The candidate closest to `name`, when close enough to be a typo of it.
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_ascii_lowercase();
    let max = if name.chars().count() <= 5 { 1 } else { 2 };
    candidates
        .into_iter()
        .filter(|c| *c != name)
        .map(|c| {
            let d = if c.to_ascii_lowercase() == lower {
                0
            } else {
                strsim::osa_distance(&lower, &c.to_ascii_lowercase())
            };
            (d, c)
        })
        .filter(|(d, _)| *d <= max)
        .min()
        .map(|(_, c)| c)
}

/// Deserializes `value` as `T` (errors carry their field path, as with
/// `serde_path_to_error`), returning the unknown fields met, in document order.
pub fn deserialize<'de, T: de::Deserialize<'de>>(
    value: &'de Value,
) -> (
    Result<T, serde_path_to_error::Error<serde_json::Error>>,
    Vec<UnknownField>,
) {
    let rec = RefCell::new(Vec::new());
    let de = ValueDe {
        value,
        path: &Seg::Root,
        parent: None,
        rec: &rec,
    };
    // The path of an error is tracked only when there is one: most objects read without,
    // and tracking every field's path costs on every one. Reading again gives the
    // same error and the same unknown fields. See: #14
    if let Ok(t) = T::deserialize(de) {
        return (Ok(t), rec.into_inner());
    }
    let rec = RefCell::new(Vec::new());
    let de = ValueDe {
        value,
        path: &Seg::Root,
        parent: None,
        rec: &rec,
    };
    let result = serde_path_to_error::deserialize(de);
    (result, rec.into_inner())
}

/// A field path as a parent-linked list on the stack.
enum Seg<'a> {
    Root,
    Key(&'a Seg<'a>, &'a str),
    Index(&'a Seg<'a>, usize),
}

impl Seg<'_> {
    fn render(&self) -> String {
        match self {
            Seg::Root => String::new(),
            Seg::Key(p, k) => child_path(&p.render(), k),
            Seg::Index(p, i) => index_path(&p.render(), *i),
        }
    }
}

type Rec = RefCell<Vec<UnknownField>>;

struct ValueDe<'de, 'a> {
    value: &'de Value,
    path: &'a Seg<'a>,
    /// Fields of the struct this value is a field of.
    parent: Option<&'static [&'static str]>,
    rec: &'a Rec,
}

impl<'de> Deserializer<'de> for ValueDe<'de, '_> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.any(visitor, None)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.any(visitor, Some(fields))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        if let (Some(known), Seg::Key(_, name)) = (self.parent, self.path) {
            self.rec.borrow_mut().push(UnknownField {
                path: self.path.render(),
                name: (*name).to_string(),
                known,
            });
        }
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier
    }
}

impl<'de> ValueDe<'de, '_> {
    fn any<V: Visitor<'de>>(
        self,
        visitor: V,
        fields: Option<&'static [&'static str]>,
    ) -> Result<V::Value, serde_json::Error> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_borrowed_str(s),
            Value::Array(items) => visitor.visit_seq(SeqDe {
                iter: items.iter().enumerate(),
                path: self.path,
                rec: self.rec,
                len: items.len(),
            }),
            Value::Object(map) => visitor.visit_map(MapDe {
                iter: map.iter(),
                pending: None,
                path: self.path,
                fields,
                rec: self.rec,
            }),
        }
    }
}

struct SeqDe<'de, 'a> {
    iter: std::iter::Enumerate<std::slice::Iter<'de, Value>>,
    path: &'a Seg<'a>,
    rec: &'a Rec,
    len: usize,
}

impl<'de> SeqAccess<'de> for SeqDe<'de, '_> {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let Some((i, value)) = self.iter.next() else {
            return Ok(None);
        };
        let path = Seg::Index(self.path, i);
        seed.deserialize(ValueDe {
            value,
            path: &path,
            parent: None,
            rec: self.rec,
        })
        .map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.len)
    }
}

struct MapDe<'de, 'a> {
    iter: serde_json::map::Iter<'de>,
    pending: Option<(&'de str, &'de Value)>,
    path: &'a Seg<'a>,
    fields: Option<&'static [&'static str]>,
    rec: &'a Rec,
}

impl<'de> MapAccess<'de> for MapDe<'de, '_> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((k, v)) = self.iter.next() else {
            return Ok(None);
        };
        self.pending = Some((k.as_str(), v));
        let key = BorrowedStrDeserializer::<'de, serde_json::Error>::new(k.as_str());
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((k, value)) = self.pending.take() else {
            return Err(de::Error::custom("value without a key"));
        };
        let path = Seg::Key(self.path, k);
        seed.deserialize(ValueDe {
            value,
            path: &path,
            parent: self.fields,
            rec: self.rec,
        })
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;

    #[test]
    fn unknown_fields_are_reported_with_known_names() {
        let v = serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x", "lables": {"a": "b"}},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabel": {"app": "x"}}}]}]},
        });
        let (r, unknown) = deserialize::<NetworkPolicy>(&v);
        let p = r.unwrap();
        let paths: Vec<_> = unknown.iter().map(|u| u.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "metadata.lables",
                "spec.ingress[0].from[0].podSelector.matchLabel"
            ]
        );
        assert_eq!(unknown[0].suggestion(), Some("labels"));
        assert_eq!(unknown[1].suggestion(), Some("matchLabels"));
        // The object reads as serde_json reads it.
        let plain: NetworkPolicy = serde_json::from_value(v).unwrap();
        assert_eq!(p, plain);
    }

    #[test]
    fn same_values_and_errors_as_serde_json() {
        let ok = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "a", "labels": {"x": "1"}, "annotations": {"k": "v"}},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}],
                     "resources": {"limits": {"cpu": "1"}}}], "hostNetwork": true},
            "status": {"podIPs": [{"ip": "10.0.0.1"}], "phase": "Running"},
        });
        let (r, unknown) = deserialize::<Pod>(&ok);
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(r.unwrap(), serde_json::from_value::<Pod>(ok).unwrap());

        let bad = serde_json::json!({"spec": {"containers": [{"name": "c", "ports": [{"containerPort": "eighty"}]}]}});
        let (r, _) = deserialize::<Pod>(&bad);
        let e = r.unwrap_err();
        assert_eq!(
            e.path().to_string(),
            "spec.containers[0].ports[0].containerPort"
        );
        let want = serde_json::from_value::<Pod>(bad).unwrap_err().to_string();
        assert_eq!(e.into_inner().to_string(), want);
    }

    #[test]
    fn nearest_needs_a_close_name() {
        let known = ["matchLabels", "matchExpressions"];
        assert_eq!(nearest("matchlabels", known), Some("matchLabels"));
        assert_eq!(nearest("matchLabel", known), Some("matchLabels"));
        assert_eq!(nearest("selector", known), None);
        assert_eq!(nearest("Pods", ["Pod", "Node"]), Some("Pod"));
        assert_eq!(nearest("Role", ["Pod", "Node"]), None);
    }
}
