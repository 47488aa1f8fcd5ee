//! `netpol list`: every ordered pair that may talk, with the exact allowed ports
//! (`policy_compiler::connectivity`), as text, JSON, CSV, Markdown, DOT or HTML
//! (`crate::html`).
//!
//! ```text
//! netpol list -f cluster/ --namespace shop -o json
//! x/a => x/b : TCP 80,8080-8090, UDP 53
//! x/a => 0.0.0.0/5 : All Connections
//! ```

use clap::ValueEnum;
use policy_compiler::connectivity::{Connectivity, EndpointFilter, Party, port_ranges, ports_text};
use policy_compiler::{Model, PortSet};
#[cfg(test)]
use serde::Serialize;

use crate::InputArgs;
use crate::output::Out;

/// Output formats of `list`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ListFormat {
    Text,
    Json,
    Csv,
    Md,
    Dot,
    Html,
}

/// Endpoint filters shared by every command that lists endpoints.
#[derive(clap::Args, Clone, Default)]
pub(crate) struct FilterArgs {
    /// Only pairs with an endpoint in NS on either side (repeatable).
    #[arg(long = "namespace", value_name = "NS")]
    pub(crate) namespaces: Vec<String>,
    /// Only pairs with an endpoint carrying these labels (k=v[,k=v], repeatable: all
    /// must hold) on either side.
    #[arg(long, value_name = "K=V", value_parser = check_selector)]
    pub(crate) selector: Vec<String>,
}

fn check_selector(s: &str) -> Result<String, String> {
    EndpointFilter::parse_selector(s).map(|_| s.to_string())
}

impl FilterArgs {
    /// The compiler's filter.
    pub(crate) fn filter(&self) -> EndpointFilter {
        EndpointFilter {
            namespaces: self.namespaces.clone(),
            selector: self
                .selector
                .iter()
                .flat_map(|s| EndpointFilter::parse_selector(s).unwrap_or_default())
                .collect(),
        }
    }
}

/// Arguments of `list`.
#[derive(clap::Args)]
pub(crate) struct ListArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    pub(crate) output: ListFormat,
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
}

/// Where a [`Writer`] writes: stdout ([`Out`]) or, in tests, a string.
pub(crate) trait Sink {
    /// Writes `s`.
    fn put(&mut self, s: &str);
}

impl Sink for Out {
    fn put(&mut self, s: &str) {
        Out::put(self, s);
    }
}

impl Sink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

/// One connection in `-o json` (what [`Writer`] writes, byte for byte).
#[cfg(test)]
#[derive(Serialize)]
pub(crate) struct JsonConnection<'a> {
    pub(crate) src: &'a str,
    pub(crate) dst: &'a str,
    pub(crate) all: bool,
    pub(crate) ports: Vec<policy_compiler::connectivity::PortRange>,
}

/// Runs `netpol list`.
pub(crate) fn run(args: &ListArgs, input: &InputArgs) -> i32 {
    let c = match crate::inputs::compile_input(input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in c.caveats() {
        eprintln!("warning: {w}");
    }
    let conn = Connectivity::new(&c.model, &c.graph, &[]);
    let filter = args.filter.filter();
    let mut out = Out::new();
    if let ListFormat::Html = args.output {
        let mut edges = Vec::new();
        conn.for_each(&filter, |x| {
            let src = x.src.name(&c.model);
            let dst = x.dst.name(&c.model);
            let e =
                policy_compiler::explain(&c.model, &c.graph, subject(x.src), subject(x.dst), None);
            edges.push(crate::html::Edge {
                src,
                dst,
                kind: "allowed",
                ports: ports_text(&x.ports),
                old: None,
                rules: crate::html::rules_of(&e),
            });
        });
        out.put(&crate::html::page(&crate::html::Picture::new(
            "netpol list".into(),
            edges,
        )));
        out.finish();
        return 0;
    }
    let mut w = Writer::new(args.output, &mut out);
    conn.for_each_ref(&filter, |src, dst, ports| {
        w.connection(&c.model, src, dst, ports);
    });
    w.end();
    out.finish();
    // The process ends now: freeing the model object by object would only delay it
    // (about 2% of `netpol list` at 1,000 Pods). See: #14
    std::mem::forget(conn);
    std::mem::forget(c);
    0
}

fn subject(p: policy_compiler::connectivity::Party) -> policy_compiler::Subject {
    match p {
        policy_compiler::connectivity::Party::Endpoint(id) => {
            policy_compiler::Subject::Endpoint(id)
        }
        policy_compiler::connectivity::Party::Range(n) => {
            policy_compiler::Subject::External(n.network())
        }
    }
}

/// A streaming renderer of connections.
///
/// Each endpoint's name and each distinct port set are encoded for the format once
/// (JSON strings, CSV fields, DOT IDs) and every line is written from those pieces: at
/// 1,000 Pods `-o json` writes 56,000 lines that share about a hundred port sets, and
/// formatting each line anew was a third of the command. The bytes are the same as
/// serializing each `JsonConnection` with `serde_json`. See: #14
pub(crate) struct Writer<'o> {
    format: ListFormat,
    out: &'o mut dyn Sink,
    first: bool,
    /// DOT: the nodes seen, drawn at the end grouped by namespace.
    nodes: std::collections::BTreeSet<String>,
    /// Endpoint names by id, as written in this format (`None`: not yet encoded).
    names: Vec<Option<String>>,
    /// Address ranges' names (CIDRs), as written in this format: formatting an address
    /// for each of the thousands of lines to a range was a tenth of `netpol list`.
    range_names: std::collections::HashMap<Party, String>,
    /// Port sets as written in this format (for JSON, from `"all"` to the closing `}`),
    /// by index in `encoded`.
    ports: std::collections::HashMap<PortSet, usize>,
    encoded: Vec<String>,
    /// The last port set written and its index: consecutive lines mostly share it.
    last: Option<(PortSet, usize)>,
    /// The line being written.
    line: String,
}

impl<'o> Writer<'o> {
    pub(crate) fn new(format: ListFormat, out: &'o mut dyn Sink) -> Self {
        match format {
            ListFormat::Json => out.put("{\"connections\": ["),
            ListFormat::Csv => out.put("src,dst,conn\n"),
            ListFormat::Md => out.put("| src | dst | conn |\n|---|---|---|\n"),
            ListFormat::Dot => out.put("digraph netpol {\n  rankdir=LR;\n  node [shape=box];\n"),
            ListFormat::Text | ListFormat::Html => {}
        }
        Writer {
            format,
            out,
            first: true,
            nodes: std::collections::BTreeSet::new(),
            names: Vec::new(),
            range_names: std::collections::HashMap::new(),
            ports: std::collections::HashMap::new(),
            encoded: Vec::new(),
            last: None,
            line: String::new(),
        }
    }

    /// A name as written in this format.
    fn encode_name(&self, name: &str) -> String {
        match self.format {
            ListFormat::Text | ListFormat::Html | ListFormat::Md => name.to_string(),
            // A string always serializes; the default is never used.
            ListFormat::Json => serde_json::to_string(name).unwrap_or_default(),
            ListFormat::Csv => csv_field(name),
            ListFormat::Dot => dot_id(name),
        }
    }

    /// A port set as written in this format.
    fn encode_ports(&self, ports: &PortSet) -> String {
        match self.format {
            ListFormat::Text | ListFormat::Html | ListFormat::Md => ports_text(ports),
            ListFormat::Json => format!(
                "\"all\":{},\"ports\":{}}}",
                ports.is_all(),
                // Port ranges always serialize; the default is never used.
                serde_json::to_string(&port_ranges(ports)).unwrap_or_default()
            ),
            ListFormat::Csv => csv_field(&ports_text(ports)),
            ListFormat::Dot => dot_id(&ports_text(ports)),
        }
    }

    /// Appends a party's name, encoded (once per endpoint), to the line.
    fn push_name(&mut self, model: &Model, p: Party) {
        match p {
            Party::Endpoint(id) => {
                let i = id.0 as usize;
                if self.names.len() != model.endpoints.len() {
                    self.names = vec![None; model.endpoints.len()];
                }
                if self.names[i].is_none() {
                    let enc = self.encode_name(&model.endpoint(id).key());
                    self.names[i] = Some(enc);
                }
                if let Some(n) = &self.names[i] {
                    self.line.push_str(n);
                }
            }
            Party::Range(_) => {
                if !self.range_names.contains_key(&p) {
                    let enc = self.encode_name(&p.name(model));
                    self.range_names.insert(p, enc);
                }
                if let Some(enc) = self.range_names.get(&p) {
                    self.line.push_str(enc);
                }
            }
        }
    }

    /// The index in `encoded` of `ports`, encoding it on first use.
    fn ports_index(&mut self, ports: &PortSet) -> usize {
        if let Some((last, i)) = &self.last
            && last == ports
        {
            return *i;
        }
        let i = match self.ports.get(ports) {
            Some(i) => *i,
            None => {
                let i = self.encoded.len();
                self.encoded.push(self.encode_ports(ports));
                self.ports.insert(ports.clone(), i);
                i
            }
        };
        self.last = Some((ports.clone(), i));
        i
    }

    /// Writes one connection.
    pub(crate) fn connection(&mut self, model: &Model, src: Party, dst: Party, ports: &PortSet) {
        let p = self.ports_index(ports);
        let (open, mid, before_ports) = match self.format {
            ListFormat::Text | ListFormat::Html => ("", " => ", " : "),
            ListFormat::Json => (
                if self.first {
                    "\n  {\"src\":"
                } else {
                    ",\n  {\"src\":"
                },
                ",\"dst\":",
                ",",
            ),
            ListFormat::Csv => ("", ",", ","),
            ListFormat::Md => ("| ", " | ", " | "),
            ListFormat::Dot => ("  ", " -> ", " [label="),
        };
        let close = match self.format {
            ListFormat::Text | ListFormat::Html | ListFormat::Csv => "\n",
            ListFormat::Json => "",
            ListFormat::Md => " |\n",
            ListFormat::Dot => "];\n",
        };
        self.line.clear();
        self.line.push_str(open);
        self.push_name(model, src);
        self.line.push_str(mid);
        self.push_name(model, dst);
        self.line.push_str(before_ports);
        self.line.push_str(&self.encoded[p]);
        self.line.push_str(close);
        self.out.put(&self.line);
        self.first = false;
        if matches!(self.format, ListFormat::Dot) {
            self.nodes.insert(src.name(model));
            self.nodes.insert(dst.name(model));
        }
    }

    pub(crate) fn end(self) {
        match self.format {
            ListFormat::Json => self.out.put(if self.first { "]}\n" } else { "\n]}\n" }),
            ListFormat::Dot => {
                self.out.put(&dot_nodes(&self.nodes));
                self.out.put("}\n");
            }
            _ => {}
        }
    }
}

/// A CSV field, quoted when needed (RFC 4180).
pub(crate) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A DOT quoted ID.
pub(crate) fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// DOT node declarations: endpoints grouped in one cluster per namespace, IP ranges as
/// ellipses.
pub(crate) fn dot_nodes(nodes: &std::collections::BTreeSet<String>) -> String {
    let mut by_ns: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    let mut s = String::new();
    for n in nodes {
        match n.split_once('/') {
            Some((ns, _)) if ns.parse::<std::net::IpAddr>().is_err() => {
                by_ns.entry(ns).or_default().push(n)
            }
            _ => {
                s.push_str(&format!("  {} [shape=ellipse];\n", dot_id(n)));
            }
        }
    }
    for (ns, members) in by_ns {
        s.push_str(&format!(
            "  subgraph {} {{\n    label={};\n",
            dot_id(&format!("cluster_{ns}")),
            dot_id(ns)
        ));
        for m in members {
            s.push_str(&format!("    {};\n", dot_id(m)));
        }
        s.push_str("  }\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::{PortRanges, Protocol, SourceText, load};

    /// A model whose endpoint names need escaping in every format.
    fn model() -> Model {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: y}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.2}\n";
        let (inputs, diags) = load(&[SourceText {
            name: "t.yaml",
            text: yaml,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        Model::build(&inputs).0
    }

    #[test]
    fn cached_pieces_write_what_serde_json_writes() {
        // See: #14 (lines are written from names and port sets encoded once).
        let m = model();
        let (a, b) = (m.endpoints[0].id, m.endpoints[1].id);
        let (http, alt, dns) = (
            PortRanges::range(80, 80),
            PortRanges::range(8080, 8090),
            PortRanges::range(53, 53),
        );
        let tcp = PortSet::from_parts([
            (Protocol::Tcp, &http),
            (Protocol::Tcp, &alt),
            (Protocol::Udp, &dns),
        ]);
        let range = Party::Range("10.1.0.0/16".parse().unwrap_or_else(|_| unreachable!()));
        let conns = [
            (Party::Endpoint(a), Party::Endpoint(b), PortSet::all()),
            (Party::Endpoint(a), Party::Endpoint(b), tcp.clone()),
            (Party::Endpoint(b), range, tcp.clone()),
            (range, Party::Endpoint(a), PortSet::all()),
            (Party::Endpoint(a), Party::Endpoint(b), tcp.clone()),
        ];
        let mut out = String::new();
        let mut w = Writer::new(ListFormat::Json, &mut out);
        for (s, d, p) in &conns {
            w.connection(&m, *s, *d, p);
        }
        w.end();
        let lines: Vec<String> = conns
            .iter()
            .map(|(s, d, p)| {
                serde_json::to_string(&JsonConnection {
                    src: &s.name(&m),
                    dst: &d.name(&m),
                    all: p.is_all(),
                    ports: port_ranges(p),
                })
                .unwrap()
            })
            .collect();
        let want = format!("{{\"connections\": [\n  {}\n]}}\n", lines.join(",\n  "));
        assert_eq!(out, want);

        let mut text = String::new();
        let mut w = Writer::new(ListFormat::Text, &mut text);
        for (s, d, p) in &conns {
            w.connection(&m, *s, *d, p);
        }
        w.end();
        let want: String = conns
            .iter()
            .map(|(s, d, p)| format!("{} => {} : {}\n", s.name(&m), d.name(&m), ports_text(p)))
            .collect();
        assert_eq!(text, want);
        assert!(
            text.contains("x/a => y/b : TCP 80,8080-8090, UDP 53\n"),
            "{text}"
        );
    }

    #[test]
    fn names_are_escaped_per_format() {
        let mut out = String::new();
        let w = Writer::new(ListFormat::Json, &mut out);
        assert_eq!(w.encode_name("a\"b\\c"), r#""a\"b\\c""#);
        let mut out = String::new();
        let w = Writer::new(ListFormat::Csv, &mut out);
        assert_eq!(w.encode_name("a,\"b"), "\"a,\"\"b\"");
        let mut out = String::new();
        let w = Writer::new(ListFormat::Dot, &mut out);
        assert_eq!(w.encode_name("a\"b"), "\"a\\\"b\"");
    }
}
