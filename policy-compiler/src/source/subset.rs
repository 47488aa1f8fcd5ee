//! A fast reader for the plain subset of YAML that generated and hand-written Kubernetes
//! manifests use: block mappings and sequences, plain scalars, quoted scalars without
//! escapes, one-line flow collections of scalars, comments and `---` separators.
//!
//! It gives exactly the values the full parser gives, or `None`: on anything outside the
//! subset (anchors, tags, block scalars, escapes, multi-line scalars, tabs, non-ASCII text,
//! numbers other than plain decimal integers, duplicate keys, ...) it stops and the
//! caller parses the text with serde-saphyr as before, so every error message and
//! position is the full parser's. The subset never decides that a text is invalid.
//!
//! Scalars resolve as the full parser does with netpol's options (YAML 1.2 core schema,
//! [`super::yaml_options`]): `null`, `~` and an empty value are null, `true`/`false` (three
//! spellings each) are booleans, decimal integers without a leading zero are numbers;
//! a scalar that could be any other number (a float, a radix, `inf`, `nan`) is left to the
//! full parser; everything else is a string. `tests::subset_agrees_with_the_full_parser`
//! compares both readers on every testdata file, generated clusters and edge cases.
//! See: #14

use serde_json::{Map, Value};

/// Deepest nesting read here (the full parser's depth budget is larger).
const MAX_DEPTH: usize = 40;

/// One content line: its indentation and its text (trailing spaces removed).
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

/// The documents of `text`, or `None` when the text leaves the subset.
pub(super) fn parse(text: &str) -> Option<Vec<Value>> {
    let mut docs = Vec::new();
    for_each(text, &mut |v| docs.push(v))?;
    Some(docs)
}

/// Calls `each` with every document of `text` in order (empty documents are not
/// counted), reading one document at a time; `None` when the text leaves the subset,
/// which may be after `each` was called for the documents before.
pub(super) fn for_each(text: &str, each: &mut dyn FnMut(Value)) -> Option<()> {
    let bytes = text.as_bytes();
    // Tabs, carriage returns, control characters and non-ASCII text: the full parser.
    if bytes.iter().any(|&b| b >= 0x7f || (b < 0x20 && b != b'\n')) {
        return None;
    }
    let mut lines: Vec<Line<'_>> = Vec::new();
    for raw in text.split('\n') {
        let Some(line) = content_line(raw)? else {
            continue;
        };
        if line.indent == 0 && line.text == "---" {
            document(&mut lines, each)?;
            continue;
        }
        lines.push(line);
    }
    document(&mut lines, each)
}

/// A line's content, `Some(None)` for a blank or comment line, `None` for a line the
/// subset does not read at all (`--- x`, `...`, directives).
fn content_line(raw: &str) -> Option<Option<Line<'_>>> {
    let body = raw.trim_end_matches(' ');
    let content = body.trim_start_matches(' ');
    if content.is_empty() || content.starts_with('#') {
        return Some(None);
    }
    let indent = body.len() - content.len();
    if indent == 0
        && ((content.starts_with("---") && content != "---")
            || content.starts_with("...")
            || content.starts_with('%'))
    {
        return None;
    }
    Some(Some(Line {
        indent,
        text: content,
    }))
}

/// How many documents [`for_each`] would give for `text` if it reads it: documents
/// with at least one content line.
pub(super) fn count_documents(text: &str) -> usize {
    let mut n = 0;
    let mut content = false;
    for raw in text.split('\n') {
        match content_line(raw) {
            Some(Some(line)) if line.indent == 0 && line.text == "---" => {
                n += usize::from(content);
                content = false;
            }
            Some(None) => {}
            _ => content = true,
        }
    }
    n + usize::from(content)
}

/// Reads one document's lines (an empty document is not counted) and clears them.
fn document(lines: &mut Vec<Line<'_>>, each: &mut dyn FnMut(Value)) -> Option<()> {
    if lines.is_empty() {
        return Some(());
    }
    let mut r = Reader { lines, at: 0 };
    let first = r.lines[0];
    if !is_seq_item(first.text) && key_of(first.text).is_none() {
        // A scalar or flow document: the full parser.
        return None;
    }
    let value = r.node(first.indent, 0)?;
    if r.at != r.lines.len() {
        return None;
    }
    each(value);
    lines.clear();
    Some(())
}

struct Reader<'l, 'a> {
    lines: &'l mut Vec<Line<'a>>,
    at: usize,
}

impl<'a> Reader<'_, 'a> {
    fn peek(&self) -> Option<Line<'a>> {
        self.lines.get(self.at).copied()
    }

    /// The block node (mapping or sequence) starting at the current line, at `indent`.
    fn node(&mut self, indent: usize, depth: usize) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        let line = self.peek()?;
        if is_seq_item(line.text) {
            self.sequence(indent, depth)
        } else {
            self.mapping(indent, depth)
        }
    }

    fn mapping(&mut self, indent: usize, depth: usize) -> Option<Value> {
        let mut map = Map::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let (key, rest) = key_of(line.text)?;
            self.at += 1;
            let value = if rest.is_empty() {
                match self.peek() {
                    Some(next) if next.indent > indent => self.node(next.indent, depth + 1)?,
                    // A sequence at the key's own indentation is the key's value.
                    Some(next) if next.indent == indent && is_seq_item(next.text) => {
                        self.sequence(indent, depth + 1)?
                    }
                    _ => Value::Null,
                }
            } else {
                scalar_or_flow(rest)?
            };
            if map.insert(key.to_string(), value).is_some() {
                // Duplicate key: the full parser's error.
                return None;
            }
        }
        Some(Value::Object(map))
    }

    fn sequence(&mut self, indent: usize, depth: usize) -> Option<Value> {
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent || (line.indent == indent && !is_seq_item(line.text)) {
                break;
            }
            if line.indent > indent {
                return None;
            }
            let after = &line.text[1..];
            let rest = after.trim_start_matches(' ');
            if rest.is_empty() {
                self.at += 1;
                items.push(match self.peek() {
                    Some(next) if next.indent > indent => self.node(next.indent, depth + 1)?,
                    _ => Value::Null,
                });
            } else if is_seq_item(rest) {
                // `- - x`: the full parser.
                return None;
            } else if key_of(rest).is_some() {
                // `- key: value`: a mapping whose first line shares the dash's line.
                let inner = indent + 1 + (after.len() - rest.len());
                self.lines[self.at] = Line {
                    indent: inner,
                    text: rest,
                };
                items.push(self.mapping(inner, depth + 1)?);
            } else {
                self.at += 1;
                items.push(scalar_or_flow(rest)?);
            }
        }
        Some(Value::Array(items))
    }
}

fn is_seq_item(text: &str) -> bool {
    text == "-" || text.starts_with("- ")
}

/// `key:` or `key: rest` with a plain key of letters, digits and `._/-` that reads as a
/// string, or `None`.
fn key_of(text: &str) -> Option<(&str, &str)> {
    let b = text.as_bytes();
    if !b.first()?.is_ascii_alphabetic() && b[0] != b'_' {
        return None;
    }
    let end = b
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-')))?;
    if b[end] != b':' || !matches!(b.get(end + 1), None | Some(b' ')) {
        return None;
    }
    let key = &text[..end];
    // `true`, `null`, `inf`...: keys that do not read as themselves.
    if !matches!(plain(key)?, Value::String(_)) {
        return None;
    }
    let rest = text[end + 1..].trim_start_matches(' ');
    let rest = if rest.starts_with('#') { "" } else { rest };
    Some((key, rest))
}

/// A value on a key's or a dash's line: a scalar or a one-line flow collection.
fn scalar_or_flow(text: &str) -> Option<Value> {
    match text.as_bytes()[0] {
        b'{' | b'[' => flow(text),
        _ => {
            let (v, rest) = scalar_token(text)?;
            end_of_line(rest)?;
            Some(v)
        }
    }
}

/// Nothing but spaces and a comment.
fn end_of_line(rest: &str) -> Option<()> {
    let r = rest.trim_start_matches(' ');
    (r.is_empty() || (r.starts_with('#') && r.len() < rest.len())).then_some(())
}

/// A block-context scalar at the start of `text`: the value and what follows it (a
/// comment). Plain scalars run to the end of the line or to ` #`.
fn scalar_token(text: &str) -> Option<(Value, &str)> {
    match text.as_bytes()[0] {
        q @ (b'"' | b'\'') => {
            let close = text[1..].find(q as char)? + 1;
            let inner = &text[1..close];
            if q == b'"' && inner.contains('\\') {
                return None;
            }
            let rest = &text[close + 1..];
            // `'it''s'`: an escaped quote, the full parser.
            if rest.starts_with(q as char) {
                return None;
            }
            Some((Value::String(inner.to_string()), rest))
        }
        _ => {
            let (s, rest) = match text.find(" #") {
                Some(i) => (text[..i].trim_end_matches(' '), &text[i..]),
                None => (text, ""),
            };
            if s.contains(": ") || s.ends_with(':') {
                return None;
            }
            Some((plain(s)?, rest))
        }
    }
}

/// `{k: v, ...}` or `[a, b, ...]` of scalars on one line.
fn flow(text: &str) -> Option<Value> {
    let open = text.as_bytes()[0];
    let close = if open == b'{' { '}' } else { ']' };
    let end = text.find(close)?;
    end_of_line(&text[end + 1..])?;
    let inner = text[1..end].trim_matches(' ');
    if inner.contains(['{', '[', '}', ']', '#']) {
        return None;
    }
    if open == b'[' {
        let mut items = Vec::new();
        if !inner.is_empty() {
            for item in inner.split(',') {
                items.push(flow_scalar(item)?);
            }
        }
        return Some(Value::Array(items));
    }
    let mut map = Map::new();
    if !inner.is_empty() {
        for item in inner.split(',') {
            let item = item.trim_matches(' ');
            let (k, v) = item.split_once(": ")?;
            let (key, tail) = key_of(&item[..k.len() + 1])?;
            if !tail.is_empty() {
                return None;
            }
            if map.insert(key.to_string(), flow_scalar(v)?).is_some() {
                return None;
            }
        }
    }
    Some(Value::Object(map))
}

/// One scalar of a flow collection: plain without `:`, or quoted.
fn flow_scalar(item: &str) -> Option<Value> {
    let item = item.trim_matches(' ');
    if item.is_empty() {
        return None;
    }
    if item.starts_with(['"', '\'']) {
        let (v, rest) = scalar_token(item)?;
        return rest.is_empty().then_some(v);
    }
    if item.contains(':') {
        return None;
    }
    plain(item)
}

/// A plain scalar (trimmed, not empty) resolved as the full parser does, or `None` where
/// the subset does not decide (numbers other than decimal integers, indicators).
fn plain(s: &str) -> Option<Value> {
    match s {
        "~" | "null" | "Null" | "NULL" => return Some(Value::Null),
        "true" | "True" | "TRUE" => return Some(Value::Bool(true)),
        "false" | "False" | "FALSE" => return Some(Value::Bool(false)),
        _ => {}
    }
    let b = s.as_bytes();
    let first = *b.first()?;
    if first.is_ascii_alphabetic() || first == b'_' || first == b'/' {
        let lower = s.get(..3).map(str::to_ascii_lowercase);
        // `inf`, `infinity`, `nan`: Rust's float parser reads them.
        if matches!(lower.as_deref(), Some("inf" | "nan")) {
            return None;
        }
        return Some(Value::String(s.to_string()));
    }
    if !(first.is_ascii_digit() || first == b'-' || first == b'.') {
        return None;
    }
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    if !digits.is_empty() && digits.len() <= 18 && digits.bytes().all(|c| c.is_ascii_digit()) {
        if digits.len() > 1 && digits.starts_with('0') {
            // `0755`: the full parser keeps it a string, with its own rules.
            return None;
        }
        // Invariant: at most 18 digits fit in an i64.
        let n: i64 = digits.parse().ok()?;
        return Some(if neg {
            if n == 0 {
                return None;
            }
            Value::from(-n)
        } else {
            Value::from(n as u64)
        });
    }
    let unsigned = digits;
    if s.contains(' ')
        || unsigned.starts_with('.')
        || (unsigned.len() > 1
            && unsigned.as_bytes()[0] == b'0'
            && unsigned.as_bytes()[1].is_ascii_alphabetic())
    {
        // `.5`, `.inf`, `0x1f`, `0o17`, `0b1`: the full parser.
        return None;
    }
    // An address (`10.0.0.1`): no number has two dots.
    if s.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && s.bytes().filter(|&c| c == b'.').count() >= 2
    {
        return Some(Value::String(s.to_string()));
    }
    // Decimal integers (with `_`) and floats (`1.5`, `1e3`, `-2.`) use only these
    // characters; anything else (`7db6d8ff4d`, `10.0.0.0/8`, `8080-tcp`) is a string.
    if s.bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    Some(Value::String(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the full parser reads, as [`super::super::parse_documents`] calls it.
    fn full(text: &str) -> Result<Vec<Value>, String> {
        serde_saphyr::from_multiple_with_options::<super::super::Plain>(
            text,
            super::super::yaml_options(text.len()),
        )
        .map(|v| v.into_iter().map(|p| p.0).collect())
        .map_err(|e| e.to_string())
    }

    /// The subset reads `text` as the full parser does, or not at all; returns whether
    /// it read it.
    fn agrees(name: &str, text: &str) -> bool {
        match parse(text) {
            Some(docs) => {
                assert_eq!(Ok(docs), full(text), "{name}: {text:?}");
                true
            }
            None => false,
        }
    }

    #[test]
    fn subset_agrees_with_the_full_parser() {
        // See: #14
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata");
        let mut dirs = vec![root];
        let (mut files, mut read) = (0, 0);
        while let Some(d) = dirs.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
                    let text = std::fs::read_to_string(&p).unwrap();
                    files += 1;
                    read += usize::from(agrees(&p.display().to_string(), &text));
                }
            }
        }
        assert!(files > 100, "{files} testdata files");
        // Most hand-written manifests are in the subset.
        assert!(read * 2 > files, "{read} of {files} testdata files read");
        for (pods, seed) in [(40, 3), (1000, 1), (300, 7)] {
            let text = crate::synth::generate(&crate::synth::SynthParams::scaled(pods, seed));
            assert!(agrees("generated", &text), "generated {pods} {seed}");
        }
    }

    #[test]
    fn edge_cases_agree_or_are_left_to_the_full_parser() {
        let read = [
            "a: 1\n",
            "a:\n",
            "a: ~\nb: null\nc: Null\nd: NULL\ne:\n",
            "a: true\nb: True\nc: TRUE\nd: false\ne: False\nf: FALSE\n",
            "a: yes\nb: no\nc: on\nd: off\ne: y\nf: n\n",
            "a: 0\nb: -1\nc: 123456789012345678\nd: -123456789012345678\n",
            "a: 10.0.0.1\nb: 10.0.0.0/8\nc: fd00::1\nd: 8080-tcp\ne: v1.2.3\n",
            "a: 'x: y'\nb: \"# z\"\nc: ''\nd: \"\"\ne: '---'\n",
            "a: b # comment\nc: d#e\n# comment\n  # indented comment\nf: g\n",
            "a:\n- 1\n- x\n-\n- - 2\n",
            "a:\n  - b: 1\n    c: 2\n  -   d: 3\n      e: [x, 'y', \"z\", 4]\n",
            "a: {}\nb: []\nc: {x: 1, y: two}\nd: [ ]\n",
            "---\n---\n# only a comment\n---\na: 1\n---\n",
            "- a\n- b: c\n  d: e\n",
            "  a: 1\n  b: 2\n",
            "",
            "# nothing\n",
            "a: 1 \nb: two words here \n",
            "key/with.dots_and-dash: v\n",
            "a: b:c\nb: http://x.y/z?q=1&r=2\nc: a,b\nd: a[0]\n",
            "a: inf\nb: Infinity\nc: nan\nd: .inf\ne: 1e3\nf: 0x1f\ng: 0o17\nh: 0755\ni: 1_000\nj: +5\nk: -0\nl: 1.5\n",
            "true: 1\n",
            "null: 1\n",
            "a: 1\na: 2\n",
            "a: [1, 2,]\n",
            "a: {b: 1, b: 2}\n",
            "a: x\n  y\n",
            "a: 'x\n  y'\n",
            "a: \"x\\ty\"\n",
            "a: 'it''s'\n",
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: |\n  text\n",
            "a: >\n  text\n",
            "a: - b\n",
            "a: b: c\n",
            "a:\n  b\n",
            "a:\n  - b\n  c: d\n",
            "--- a: 1\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n...\n",
            "a:\tb\n",
            "a: 1\r\n",
            "a: é\n",
            "? a\n: b\n",
            "\"a\": 1\n",
            "a:b\n",
            "a: 2001-12-14\nb: 12:30\nc: 1abc\nd: 1e\n",
            "a: [x: 1]\n",
            "a: {x}\n",
            "a: [[1]]\n",
            "a: ['a, b']\n",
            "- - a\n",
            "x\n",
            "1\n",
            "-\n",
            "a: 1\n- b\n",
            "a: 1\n b: 2\n",
            "a:\n    b: 1\n  c: 2\n",
        ];
        let mut n = 0;
        for text in read {
            n += usize::from(agrees("edge", text));
        }
        assert!(n >= 20, "{n} edge cases read by the subset");
    }

    #[test]
    fn mutations_agree_or_are_left_to_the_full_parser() {
        // Every one-character change of small manifests, at every position: the subset
        // reads the same values as the full parser, or leaves the text to it.
        let seeds = [
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: a-1\n  labels: {app: web, tier: '2'}\nspec:\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\n      protocol: TCP\n---\nx: [1, b]\n",
            "a:\n- b: 10.0.0.1 # c\n  d: \"e\"\n-   f: ~\n    g:\n    - 0\n",
        ];
        let subs = [
            "", " ", "  ", ":", ": ", "#", " #", "-", "- ", "'", "\"", "{", "}", "[", "]", ",",
            "&", "*", "!", "|", ">", "?", "%", "@", "`", "\n", "\n  ", "\n- ", "0", "1", ".", "e",
            "x", "true", "null", "~", "---", "\n---\n", "...", "\\",
        ];
        let (mut tried, mut read) = (0, 0);
        for seed in seeds {
            for i in 0..=seed.len() {
                for sub in subs {
                    for j in [i, (i + 1).min(seed.len())] {
                        let text = format!("{}{sub}{}", &seed[..i], &seed[j..]);
                        tried += 1;
                        read += usize::from(agrees("mutation", &text));
                    }
                }
            }
        }
        assert!(read * 10 > tried, "{read} of {tried} mutations read");
    }
}
