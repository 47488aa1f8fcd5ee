//! Text to documents: multi-document YAML (and JSON) parsed into JSON values plus a
//! span index that maps every field path to the line and column it came from.
//!
//! The span index is what lets a validation error found much later (for example in
//! `spec.ingress[0].from[1].ipBlock.except[0]`) point at the exact place in the file.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

/// A position in a source file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// Field path (`spec.ingress[0].from[1]`, `""` for the document root) to position.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpanIndex {
    spans: BTreeMap<String, Pos>,
}

impl SpanIndex {
    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let mut p = path;
        loop {
            if let Some(pos) = self.spans.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent_path(p);
        }
    }

    /// Number of recorded paths.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// True when no path has a position (JSON fallback parsing).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// The parent of a field path: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``.
pub(crate) fn parent_path(path: &str) -> &str {
    if path.ends_with(']')
        && let Some(i) = path.rfind('[')
    {
        return &path[..i];
    }
    match path.rfind('.') {
        Some(i) => &path[..i],
        None => "",
    }
}

/// Appends a map key to a field path.
pub(crate) fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Appends a list index to a field path.
pub(crate) fn index_path(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// One parsed document of a source.
#[derive(Debug, Clone)]
pub struct Document {
    /// 0-based index of the document within its file (empty documents are not counted).
    pub index: usize,
    /// The document as a JSON value.
    pub value: Value,
    /// Where each field path came from.
    pub spans: SpanIndex,
}

/// A source that could not be parsed at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// What the parser said.
    pub message: String,
    /// Where, when the parser knows.
    pub pos: Option<Pos>,
}

/// Parses YAML (one or more documents) or JSON (one or more concatenated values).
///
/// YAML is tried first because JSON is (almost always) YAML and the YAML parser records
/// positions for every node; a JSON text that the YAML parser rejects (for example because
/// of tab indentation) is parsed again as plain JSON, without per-field positions.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, ParseError> {
    // YAML 1.2 core schema for booleans: `y`, `n`, `yes`, `on` stay strings (namespaces
    // named `y` are common in NetworkPolicy tests); `0755` stays a string.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.budget = Some(budget_for(text.len()));
    match serde_saphyr::from_multiple_with_options::<Spanned<Node>>(text, options) {
        Ok(nodes) => Ok(nodes
            .into_iter()
            .enumerate()
            .map(|(index, node)| {
                let mut spans = BTreeMap::new();
                let value = flatten(node, String::new(), &mut spans);
                Document {
                    index,
                    value,
                    spans: SpanIndex { spans },
                }
            })
            .collect()),
        Err(yaml_err) => {
            let trimmed = text.trim_start();
            if (trimmed.starts_with('{') || trimmed.starts_with('['))
                && let Ok(docs) = parse_json_stream(text)
            {
                return Ok(docs);
            }
            let pos = yaml_err.location().and_then(|l| {
                let (line, column) = (
                    u32::try_from(l.line()).ok()?,
                    u32::try_from(l.column()).ok()?,
                );
                (line > 0).then_some(Pos { line, column })
            });
            Err(ParseError {
                message: first_line(&yaml_err.to_string()),
                pos,
            })
        }
    }
}

/// The parser's resource budget for an input of `len` bytes.
///
/// serde-saphyr's defaults cap a stream at 1,024 documents, 250,000 nodes, 1,000,000
/// events and 64 MiB of scalars: a cluster dump of a few thousand Pods breaches them. Every
/// document, node and scalar byte takes at least one byte of input (and a node at most two
/// events), so limits proportional to the input keep the work linear in its size; the
/// alias, anchor and depth limits, which stop expansion bombs, stay at their defaults.
fn budget_for(len: usize) -> serde_saphyr::Budget {
    let mut b = serde_saphyr::Budget::default();
    b.max_documents = b.max_documents.max(len);
    b.max_nodes = b.max_nodes.max(len);
    b.max_events = b.max_events.max(len.saturating_mul(2));
    b.max_total_scalar_bytes = b.max_total_scalar_bytes.max(len);
    b
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn parse_json_stream(text: &str) -> Result<Vec<Document>, ParseError> {
    let mut out = Vec::new();
    for (index, v) in serde_json::Deserializer::from_str(text)
        .into_iter::<Value>()
        .enumerate()
    {
        let value = v.map_err(|e| ParseError {
            message: e.to_string(),
            pos: Some(Pos {
                line: u32::try_from(e.line()).unwrap_or(u32::MAX),
                column: u32::try_from(e.column()).unwrap_or(u32::MAX),
            }),
        })?;
        out.push(Document {
            index,
            value,
            spans: SpanIndex::default(),
        });
    }
    Ok(out)
}

/// A YAML node with spans on every child, deserialized straight from serde-saphyr.
#[derive(Debug)]
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Node>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(k) = map.next_key::<Spanned<Node>>()? {
            let v = map.next_value::<Spanned<Node>>()?;
            entries.push((k, v));
        }
        Ok(Node::Map(entries))
    }
}

fn pos_of(n: &Spanned<Node>) -> Option<Pos> {
    let l = n.referenced;
    let line = u32::try_from(l.line()).ok()?;
    let column = u32::try_from(l.column()).ok()?;
    (line > 0).then_some(Pos { line, column })
}

fn key_string(n: &Node) -> String {
    match n {
        Node::Null => "null".to_string(),
        Node::Bool(b) => b.to_string(),
        Node::Int(i) => i.to_string(),
        Node::UInt(u) => u.to_string(),
        Node::Float(f) => f.to_string(),
        Node::Str(s) => s.clone(),
        Node::Seq(_) | Node::Map(_) => "<complex key>".to_string(),
    }
}

fn flatten(node: Spanned<Node>, path: String, spans: &mut BTreeMap<String, Pos>) -> Value {
    if let Some(pos) = pos_of(&node) {
        spans.insert(path.clone(), pos);
    }
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::from(i),
        Node::UInt(u) => Value::from(u),
        Node::Float(f) => serde_json::Number::from_f64(f)
            .map(Value::Number)
            .unwrap_or_else(|| Value::String(f.to_string())),
        Node::Str(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| flatten(item, index_path(&path, i), spans))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = key_string(&k.value);
                let child = child_path(&path, &key);
                let value = flatten(v, child, spans);
                map.insert(key, value);
            }
            Value::Object(map)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_point_at_values() {
        let text = "a: 1\nb:\n  c:\n    - x\n    - y: 2\n---\nz: yes\n";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["b"]["c"][1]["y"], 2);
        let pos = docs[0].spans.locate("b.c[1].y").unwrap();
        assert_eq!(pos.line, 5);
        let pos = docs[0].spans.locate("b.c[0]").unwrap();
        assert_eq!((pos.line, pos.column), (4, 7));
        // Missing leaf falls back to the nearest ancestor.
        assert_eq!(docs[0].spans.locate("b.c[1].nope").unwrap().line, 5);
        assert_eq!(docs[1].spans.locate("z").unwrap().line, 7);
        assert_eq!(docs[1].value["z"], "yes");
    }

    #[test]
    fn json_with_tabs_falls_back_to_json() {
        let text = "{\n\t\"a\": [1, 2]\n}\n{\"b\": 1}";
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].value["a"][1], 2);
    }

    #[test]
    fn malformed_yaml_has_position() {
        let err = parse_documents("a: [1, 2\nb: c\n").unwrap_err();
        assert!(err.pos.is_some(), "{err:?}");
    }

    #[test]
    fn large_streams_are_not_over_budget() {
        // See: #2 (a 1,025-document file was rejected as "budget breached").
        let doc = "kind: Pod\nmetadata: {name: a, labels: {app: a}}\n---\n";
        let docs = parse_documents(&doc.repeat(1100)).unwrap();
        assert_eq!(docs.len(), 1100);
        // Over 250,000 nodes in one document: a `kubectl get -o yaml` of a few thousand Pods.
        let list = format!(
            "items:\n{}",
            "- [1, 2, 3, 4, 5, 6, 7, 8, 9]\n".repeat(26_000)
        );
        assert_eq!(parse_documents(&list).unwrap().len(), 1);
    }

    #[test]
    fn alias_bombs_stay_over_budget() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
            ));
        }
        let err = parse_documents(&text).unwrap_err();
        assert!(err.message.contains("budget breached"), "{err:?}");
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), "a.b");
        assert_eq!(parent_path("a.b"), "a");
        assert_eq!(parent_path("a"), "");
        assert_eq!(parent_path("items[0]"), "items");
    }
}
