//! Text to documents: multi-document YAML (and JSON) parsed into JSON values plus a
//! span index that maps every field path to the line and column it came from.
//!
//! The span index is what lets a validation error found much later (for example in
//! `spec.ingress[0].from[1].ipBlock.except[0]`) point at the exact place in the file.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use serde_saphyr::Spanned;

mod subset;

/// A position in a source file, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// Field path (`spec.ingress[0].from[1]`, `""` for the document root) to position.
///
/// Positions are only read when a diagnostic is made, so [`parse_documents`] does not
/// compute them up front: the index keeps the file's text and, on the first lookup in any
/// document of that file, parses it again with positions (once per file). Lookups give the
/// same answers either way.
#[derive(Debug, Clone, Default)]
pub struct SpanIndex {
    spans: Spans,
}

#[derive(Debug, Clone, Default)]
enum Spans {
    /// No positions (JSON fallback parsing, objects not from a file).
    #[default]
    None,
    /// Computed.
    Map(BTreeMap<String, Pos>),
    /// Document `doc` of a file whose positions are computed on first use.
    Lazy { file: Arc<LazyFile>, doc: usize },
}

/// A file's text and, once asked for, the span index of each of its documents.
#[derive(Debug)]
struct LazyFile {
    text: Box<str>,
    docs: OnceLock<Vec<BTreeMap<String, Pos>>>,
}

impl SpanIndex {
    fn map(&self) -> Option<&BTreeMap<String, Pos>> {
        match &self.spans {
            Spans::None => None,
            Spans::Map(m) => Some(m),
            Spans::Lazy { file, doc } => file
                .docs
                .get_or_init(|| match parse_spanned(&file.text) {
                    Ok(docs) => docs.into_iter().map(|d| d.spans.into_map()).collect(),
                    // The text parsed without positions; it parses with them too. Should
                    // it not, diagnostics go without a position rather than fail.
                    Err(_) => Vec::new(),
                })
                .get(*doc),
        }
    }

    fn into_map(self) -> BTreeMap<String, Pos> {
        match self.spans {
            Spans::Map(m) => m,
            other => SpanIndex { spans: other }
                .map()
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// Position of `path`, or of its nearest ancestor that has one.
    pub fn locate(&self, path: &str) -> Option<Pos> {
        let spans = self.map()?;
        let mut p = path;
        loop {
            if let Some(pos) = spans.get(p) {
                return Some(*pos);
            }
            if p.is_empty() {
                return None;
            }
            p = parent_path(p);
        }
    }

    /// Whether the scalar at exactly `path` is quoted in the source (`"yes"` or `'yes'`),
    /// when the text and the position are known.
    pub fn is_quoted(&self, path: &str) -> Option<bool> {
        let Spans::Lazy { file, .. } = &self.spans else {
            return None;
        };
        let pos = self.map()?.get(path)?;
        let line = file
            .text
            .split('\n')
            .nth((pos.line as usize).checked_sub(1)?)?;
        let c = line.chars().nth((pos.column as usize).checked_sub(1)?)?;
        Some(c == '"' || c == '\'')
    }

    /// Number of recorded paths.
    pub fn len(&self) -> usize {
        self.map().map_or(0, BTreeMap::len)
    }

    /// True when no path has a position (JSON fallback parsing).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl PartialEq for SpanIndex {
    fn eq(&self, other: &Self) -> bool {
        self.map().filter(|m| !m.is_empty()) == other.map().filter(|m| !m.is_empty())
    }
}

impl Eq for SpanIndex {}

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
/// A text that starts with `{` or `[` is JSON, as for kubectl: it must be valid JSON (no
/// trailing commas, no comments). Everything is then read with the YAML parser (JSON is
/// YAML), whose span index gives positions; where the YAML reading of a JSON text differs
/// or fails (tab indentation, for example), the JSON values are used without positions.
///
/// Values are read without positions, which is a third of the parsing work; the span
/// index of each document computes them when a diagnostic first asks (see [`SpanIndex`]).
/// A text that does not parse goes through [`parse_spanned`], so errors carry positions.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, ParseError> {
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    let json_docs = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        Some(parse_json_stream(text)?)
    } else {
        None
    };
    let parsed = match json_docs {
        None => subset_parse(text).or_else(|| parse_halves(text)),
        Some(_) => None,
    };
    let parsed = match parsed {
        Some(values) => Ok(values),
        None => serde_saphyr::from_multiple_with_options::<Plain>(text, yaml_options(text.len())),
    };
    match parsed {
        Ok(values) => {
            if let Some(j) = json_docs
                && (j.len() != values.len() || j.iter().zip(&values).any(|(a, b)| a.value != b.0))
            {
                return Ok(j);
            }
            let file = Arc::new(LazyFile {
                text: text.into(),
                docs: OnceLock::new(),
            });
            Ok(values
                .into_iter()
                .enumerate()
                .map(|(index, Plain(value))| Document {
                    index,
                    value,
                    spans: SpanIndex {
                        spans: Spans::Lazy {
                            file: file.clone(),
                            doc: index,
                        },
                    },
                })
                .collect())
        }
        Err(_) => match json_docs {
            Some(j) => Ok(j),
            None => parse_spanned(text),
        },
    }
}

/// The documents of a text in the plain subset of YAML ([`subset`]), read without the
/// full parser; `None` when the text leaves the subset.
fn subset_parse(text: &str) -> Option<Vec<Plain>> {
    subset::parse(text).map(|docs| docs.into_iter().map(Plain).collect())
}

/// Calls `each` with the value of every document of a YAML text in the plain subset
/// ([`subset`]), one document at a time, in order; `None` when the text leaves the subset
/// (possibly after some calls: the caller then parses the text with
/// [`parse_documents`]). A text that starts with `{` or `[` is JSON and left to
/// [`parse_documents`]. The values are those [`parse_documents`] gives. See: #14
pub(crate) fn subset_documents(text: &str, each: &mut dyn FnMut(Value)) -> Option<()> {
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if trimmed.starts_with(['{', '[']) {
        return None;
    }
    subset::for_each(text, each)
}

/// How many documents [`subset_documents`] gives for `text` when it reads it.
pub(crate) fn subset_document_count(text: &str) -> usize {
    subset::count_documents(text)
}

/// Where to cut a YAML stream of at least [`PARALLEL_PARSE_BYTES`] into two streams to
/// read on two threads: the first document start marker after the middle.
pub(crate) fn parallel_cut(text: &str) -> Option<usize> {
    if text.len() < PARALLEL_PARSE_BYTES {
        return None;
    }
    document_start_after(text, text.len() / 2)
}

/// A file's text, shared by the span indexes of its documents, which compute their
/// positions from it on first use (see [`SpanIndex`]).
#[derive(Debug, Clone)]
pub(crate) struct SpanFile(Arc<LazyFile>);

impl SpanFile {
    pub(crate) fn new(text: &str) -> Self {
        SpanFile(Arc::new(LazyFile {
            text: text.into(),
            docs: OnceLock::new(),
        }))
    }

    /// The span index of document `doc` (0-based, empty documents not counted).
    pub(crate) fn spans(&self, doc: usize) -> SpanIndex {
        SpanIndex {
            spans: Spans::Lazy {
                file: self.0.clone(),
                doc,
            },
        }
    }
}

/// Texts from this size on are parsed in two halves on two threads ([`parse_halves`]).
pub const PARALLEL_PARSE_BYTES: usize = 128 * 1024;

/// A YAML stream of at least [`PARALLEL_PARSE_BYTES`] parsed as two streams on two
/// threads, cut at a document start marker (`---` at the start of a line) near the middle:
/// the same values as one parse of the whole text, or `None` (the caller then parses the
/// whole text as before, so errors and their positions are unchanged).
///
/// A `---` at the start of a line always starts a document (YAML forbids it inside
/// scalars and flow collections: there, the half that holds the opening fails and the
/// whole text is parsed instead). What could make the halves differ from the whole is
/// left to the whole parse: directives (`%` lines, which apply to the next document),
/// document end markers (`...`), anchors and aliases (`&`, `*`: the alias budget is
/// per stream) and merge keys (`<<`). Every other budget counts units of at least one
/// input byte, so neither half nor the whole can breach it. See: #14
fn parse_halves(text: &str) -> Option<Vec<Plain>> {
    if text.len() < PARALLEL_PARSE_BYTES
        || text.contains(['&', '*'])
        || text.contains("<<")
        || text.trim_start_matches('\u{feff}').starts_with(['%', '.'])
        || text.contains("\n%")
        || text.contains("\n...")
    {
        return None;
    }
    let cut = document_start_after(text, text.len() / 2)?;
    let (a, b) = text.split_at(cut);
    let parse = |t: &str| {
        serde_saphyr::from_multiple_with_options::<Plain>(t, yaml_options(text.len())).ok()
    };
    let (va, vb) = std::thread::scope(|s| {
        let h = s.spawn(|| parse(b));
        let va = parse(a);
        // The parser returns errors, it does not panic; a panic is a bug, passed on.
        let vb = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (va, vb)
    });
    let mut values = va?;
    values.extend(vb?);
    Some(values)
}

/// The byte offset of the first line at or after `from` that is a document start marker:
/// `---` followed by a space, a tab, a line break or the end of the text.
fn document_start_after(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut i = from;
    while i < bytes.len() {
        // The start of the next line.
        let nl = bytes[i..].iter().position(|&c| c == b'\n')?;
        i += nl + 1;
        if bytes[i..].starts_with(b"---")
            && bytes
                .get(i + 3)
                .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\r' | b'\n'))
        {
            return Some(i);
        }
    }
    None
}

fn yaml_options(len: usize) -> serde_saphyr::Options {
    // YAML 1.2 core schema for booleans: `y`, `n`, `yes`, `on` stay strings (namespaces
    // named `y` are common in NetworkPolicy tests); `0755` stays a string.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.budget = Some(budget_for(len));
    options
}

/// Nesting depth the positioned reading accepts. Its recursion takes far more stack per
/// level than the plain one (about 30 KiB in a debug build): at the parser's default of
/// 64, a valid 60-deep JSON overflowed a 2 MiB thread stack (a test thread, a tokio
/// worker). Kubernetes objects nest about 15 deep; deeper documents still load, and
/// their diagnostics go without positions. See: #11
const SPANNED_MAX_DEPTH: usize = 40;

fn spanned_options(len: usize) -> serde_saphyr::Options {
    let mut options = yaml_options(len);
    if let Some(b) = options.budget.as_mut() {
        b.max_depth = b.max_depth.min(SPANNED_MAX_DEPTH);
    }
    options
}

/// [`parse_documents`] with every position computed up front.
pub fn parse_spanned(text: &str) -> Result<Vec<Document>, ParseError> {
    // JSON text: the JSON reading decides validity first, as in `parse_documents` (and
    // its depth limit stops deep nesting before the YAML reader recurses into it).
    let trimmed = text.trim_start_matches(['\u{feff}', ' ', '\t', '\r', '\n']);
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json_stream(text)?;
    }
    match serde_saphyr::from_multiple_with_options::<Spanned<Node>>(
        text,
        spanned_options(text.len()),
    ) {
        Ok(nodes) => Ok(nodes
            .into_iter()
            .enumerate()
            .map(|(index, node)| {
                let mut spans = BTreeMap::new();
                let value = flatten(node, String::new(), &mut spans);
                Document {
                    index,
                    value,
                    spans: SpanIndex {
                        spans: Spans::Map(spans),
                    },
                }
            })
            .collect()),
        Err(yaml_err) => {
            let trimmed = text.trim_start();
            // JSON text: the JSON reading decides, as in `parse_documents`.
            if trimmed.starts_with('{') || trimmed.starts_with('[') {
                return parse_json_stream(text);
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

/// The parser's first message line, without its own `error: line N column M:` prefix (the
/// position is reported separately).
/// The parser's message without position prefix, source snippet or hints meant for
/// programmers using the library (`, set DuplicateKeyPolicy in Options if acceptable`).
pub fn first_line(s: &str) -> String {
    let line = s.lines().next().unwrap_or("").trim();
    let line = line.strip_prefix("error:").unwrap_or(line).trim_start();
    let msg = match line.strip_prefix("line ").and_then(|r| r.split_once(": ")) {
        Some((pos, rest)) if pos.contains("column") => rest,
        _ => line,
    };
    match msg.split_once(", set ") {
        Some((m, hint)) if hint.contains("Options") => m.to_string(),
        _ => msg.to_string(),
    }
}

/// A serde-saphyr error as a message ([`first_line`]) and a position.
pub fn yaml_error(e: &serde_saphyr::Error) -> (String, Option<Pos>) {
    let pos = e.location().and_then(|l| {
        let (line, column) = (
            u32::try_from(l.line()).ok()?,
            u32::try_from(l.column()).ok()?,
        );
        (line > 0).then_some(Pos { line, column })
    });
    (first_line(&e.to_string()), pos)
}

fn parse_json_stream(text: &str) -> Result<Vec<Document>, ParseError> {
    let mut out = Vec::new();
    for (index, v) in serde_json::Deserializer::from_str(text.trim_start_matches('\u{feff}'))
        .into_iter::<Plain>()
        .enumerate()
    {
        let Plain(value) = v.map_err(|e| ParseError {
            // The position is reported separately.
            message: {
                let m = e.to_string();
                let at = format!(" at line {} column {}", e.line(), e.column());
                m.strip_suffix(&at).map_or(m.clone(), str::to_string)
            },
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

/// A document read as [`Node`] and converted by [`flatten`], without the positions: the
/// visitors accept the same input and build the same value.
struct Plain(Value);

impl<'de> Deserialize<'de> for Plain {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(PlainVisitor).map(Plain)
    }
}

struct PlainVisitor;

impl<'de> Visitor<'de> for PlainVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Plain::deserialize(d).map(|p| p.0)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(float_value(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Plain(item)) = seq.next_element::<Plain>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(PlainKey(k)) = map.next_key::<PlainKey>()? {
            let Plain(v) = map.next_value::<Plain>()?;
            // JSON duplicate keys are refused like YAML's (serde_json would keep the last
            // value silently). See: #11
            if out.contains_key(&k) {
                return Err(de::Error::custom(format!("duplicate mapping key: {k}")));
            }
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

/// A mapping key, spelled as [`key_string`] spells a [`Node`].
struct PlainKey(String);

impl<'de> Deserialize<'de> for PlainKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(KeyVisitor).map(PlainKey)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<String, E> {
        Ok("null".into())
    }
    fn visit_none<E: de::Error>(self) -> Result<String, E> {
        Ok("null".into())
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        PlainKey::deserialize(d).map(|k| k.0)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        while seq.next_element::<Plain>()?.is_some() {}
        Ok("<complex key>".into())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        while map.next_key::<PlainKey>()?.is_some() {
            map.next_value::<Plain>()?;
        }
        Ok("<complex key>".into())
    }
}

fn float_value(f: f64) -> Value {
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .unwrap_or_else(|| Value::String(f.to_string()))
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
        Node::Float(f) => float_value(f),
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

    fn assert_same_as_spanned(name: &str, text: &str) {
        let fast = parse_documents(text);
        let spanned = parse_spanned(text);
        match (fast, spanned) {
            (Ok(fast), Ok(spanned)) => {
                assert_eq!(fast.len(), spanned.len(), "{name}");
                for (f, s) in fast.iter().zip(&spanned) {
                    assert_eq!(f.index, s.index, "{name}");
                    assert_eq!(f.value, s.value, "{name} document {}", f.index);
                    assert_eq!(f.spans, s.spans, "{name} document {}", f.index);
                    assert_eq!(f.spans.len(), s.spans.len(), "{name}");
                }
            }
            (Err(f), Err(s)) => assert_eq!(f, s, "{name}"),
            // Strict JSON refuses what YAML's flow style accepts (a trailing comma).
            (Err(_), Ok(_)) if text.trim_start().starts_with(['{', '[']) => {}
            (f, s) => panic!("{name}: {f:?} vs {s:?}"),
        }
    }

    #[test]
    fn lazy_spans_equal_eager_spans() {
        // See: #2 (positions are computed on first use, not while loading).
        let edge = "a: &x {b: [1, -2, 3.5, 1e3, 0x1f, 0o17, 0755, 99999999999999999999999]}\nc: *x\nd: {<<: *x, e: ~}\n1: int key\n2.0: float key\ntrue: bool key\nnull: null key\n? [k, l]\n: complex\n? {m: n}\n: complex map\nyes: y\non: off\nq: '0755'\nr: !!str 12\ns: |\n  block\n  text\nt: >-\n  folded\n---\n---\n# comment only\n---\n- [flow, {x: 1}]\n- ''\n- \"\\u00e9\"\n";
        assert_same_as_spanned("edge", edge);
        assert_eq!(parse_documents(edge).unwrap().len(), 2);
        assert_same_as_spanned(
            "json",
            "{\"a\": [1, 2.5, null, true], \"b\": {\"c\": \"d\"}}\n{\"e\": 1}",
        );
        assert_same_as_spanned("tabs", "{\n\t\"a\": [1, 2]\n}\n{\"b\": 1}");
        assert_same_as_spanned("malformed", "a: [1, 2\nb: c\n");
        assert_same_as_spanned("inf", "a: .inf\n");
        assert_same_as_spanned("duplicate", "a: 1\na: 2\n");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
        let mut dirs = vec![root];
        let mut n = 0;
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "json") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    assert_same_as_spanned(&p.display().to_string(), &text);
                    n += 1;
                }
            }
        }
        assert!(n > 100, "{n} testdata files");
    }

    #[test]
    fn quoted_scalars_are_told_apart() {
        let text = "a: yes\nb: \"yes\"\nc: 'on'\nd:\n  - \"x\"\n  - y\n";
        let docs = parse_documents(text).unwrap();
        let s = &docs[0].spans;
        assert_eq!(s.is_quoted("a"), Some(false));
        assert_eq!(s.is_quoted("b"), Some(true));
        assert_eq!(s.is_quoted("c"), Some(true));
        assert_eq!(s.is_quoted("d[0]"), Some(true));
        assert_eq!(s.is_quoted("d[1]"), Some(false));
        assert_eq!(s.is_quoted("nope"), None);
    }

    #[test]
    fn json_duplicate_keys_are_rejected_like_yaml() {
        // See: #11 (JSON kept the last value silently while YAML refused).
        for text in [
            "{\"a\": 1, \"a\": 2}",
            "{\"a\": {\"b\": 1, \"c\": [{\"d\": 1, \"d\": 1}]}}",
            "a: 1\na: 2\n",
        ] {
            let err = parse_documents(text).unwrap_err();
            assert!(
                err.message.starts_with("duplicate mapping key"),
                "{text}: {err:?}"
            );
            assert!(err.pos.is_some(), "{text}");
        }
    }

    #[test]
    fn deep_nesting_never_overflows_a_small_stack() {
        // See: #11 (a valid 60-deep JSON overflowed a 2 MiB stack while positions were
        // computed). Threads of 2 MiB: test threads, tokio workers.
        let run = || {
            for depth in [1, 20, 39, 40, 41, 60, 63, 64, 65, 127, 128, 129, 5000] {
                let json = format!("{}1{}", "{\"a\": ".repeat(depth), "}".repeat(depth));
                let flow = format!("a: {}1{}", "[".repeat(depth), "]".repeat(depth));
                let block: String = (0..depth.min(200))
                    .map(|i| format!("{}a{i}:\n", " ".repeat(i)))
                    .collect();
                for text in [json, flow, block] {
                    if let Ok(docs) = parse_documents(&text) {
                        for d in &docs {
                            let _ = d.spans.locate("a");
                        }
                    }
                    let _ = parse_spanned(&text);
                }
            }
        };
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(run)
            .unwrap()
            .join()
            .unwrap();
    }

    fn whole(text: &str) -> Result<Vec<Value>, String> {
        serde_saphyr::from_multiple_with_options::<Plain>(text, yaml_options(text.len()))
            .map(|v| v.into_iter().map(|p| p.0).collect())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn halves_parse_like_the_whole_text() {
        // See: #14 (a large stream is parsed in two halves on two threads).
        let generated = crate::synth::generate(&crate::synth::SynthParams::scaled(1000, 1));
        let tricky = "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  a: |\n    ---\n    text\n  b: \"x --- y\"\n  c: '---'\n# ---\n  d: >\n    folded\n\n---\n---\n# empty documents are not counted\n--- {kind: Pod, metadata: {name: p}}\n---\n";
        for text in [generated, tricky.repeat(4000)] {
            assert!(text.len() >= PARALLEL_PARSE_BYTES);
            let halves = parse_halves(&text).expect("cut and parsed in halves");
            let halves: Vec<Value> = halves.into_iter().map(|p| p.0).collect();
            assert_eq!(Ok(halves), whole(&text));
            let docs = parse_documents(&text).unwrap();
            for (i, d) in docs.iter().enumerate() {
                assert_eq!(d.index, i);
            }
        }
    }

    #[test]
    fn halves_leave_hard_cases_to_the_whole_parse() {
        // See: #14. A `---` line inside a quoted scalar: the whole text is an error, and
        // `parse_documents` gives the whole parse's error (the halves are not used).
        let doc = "a: 1\n---\n";
        let n = PARALLEL_PARSE_BYTES / doc.len() / 2 + 1;
        let broken = format!(
            "{}b: \"open\n---\nclose\"\n---\n{}",
            doc.repeat(n),
            doc.repeat(n)
        );
        assert!(parse_halves(&broken).is_none());
        assert!(whole(&broken).is_err());
        assert_eq!(
            parse_documents(&broken).unwrap_err(),
            parse_spanned(&broken).unwrap_err()
        );
        // Anchors, directives and end markers: the whole parse.
        for special in ["x: &a 1\ny: *a\n", "%YAML 1.2\n---\nx: 1\n", "x: 1\n...\n"] {
            let text = format!("{}{special}---\n{}", doc.repeat(n), doc.repeat(n));
            assert!(parse_halves(&text).is_none(), "{special}");
            match whole(&text) {
                Ok(v) => assert_eq!(parse_documents(&text).unwrap().len(), v.len()),
                Err(_) => assert!(parse_documents(&text).is_err()),
            }
        }
        // No document marker after the middle: one parse.
        let one = format!("items:\n{}", "- a\n".repeat(PARALLEL_PARSE_BYTES / 4));
        assert!(parse_halves(&one).is_none());
        assert_eq!(parse_documents(&one).unwrap().len(), 1);
    }

    #[test]
    fn parent_paths() {
        assert_eq!(parent_path("a.b[2]"), "a.b");
        assert_eq!(parent_path("a.b"), "a");
        assert_eq!(parent_path("a"), "");
        assert_eq!(parent_path("items[0]"), "items");
    }
}
