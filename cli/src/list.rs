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
use policy_compiler::connectivity::{
    Connection, Connectivity, EndpointFilter, Party, port_ranges, ports_text,
};
use policy_compiler::{Model, PortSet};
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

/// One connection in `-o json`.
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
    conn.for_each(&filter, |x| w.connection(&c.model, &x));
    w.end();
    out.finish();
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
pub(crate) struct Writer<'o> {
    format: ListFormat,
    out: &'o mut Out,
    first: bool,
    /// DOT: the nodes seen, drawn at the end grouped by namespace.
    nodes: std::collections::BTreeSet<String>,
    /// Endpoint names by id, formatted once (not twice per connection). See: #14
    names: Vec<String>,
}

impl<'o> Writer<'o> {
    pub(crate) fn new(format: ListFormat, out: &'o mut Out) -> Self {
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
        }
    }

    fn connection(&mut self, model: &Model, c: &Connection) {
        if self.names.len() != model.endpoints.len() {
            self.names = model.endpoints.iter().map(|e| e.key()).collect();
        }
        let names = std::mem::take(&mut self.names);
        let name = |p: &Party| match p {
            Party::Endpoint(id) => std::borrow::Cow::Borrowed(names[id.0 as usize].as_str()),
            Party::Range(_) => std::borrow::Cow::Owned(p.name(model)),
        };
        let (src, dst) = (name(&c.src), name(&c.dst));
        self.pair(&src, &dst, &c.ports);
        self.names = names;
    }

    pub(crate) fn pair(&mut self, src: &str, dst: &str, ports: &PortSet) {
        let line = match self.format {
            ListFormat::Text | ListFormat::Html => {
                format!("{src} => {dst} : {}\n", ports_text(ports))
            }
            ListFormat::Json => {
                let j = JsonConnection {
                    src,
                    dst,
                    all: ports.is_all(),
                    ports: port_ranges(ports),
                };
                let sep = if self.first { "\n  " } else { ",\n  " };
                format!("{sep}{}", serde_json::to_string(&j).unwrap_or_default())
            }
            ListFormat::Csv => format!(
                "{},{},{}\n",
                csv_field(src),
                csv_field(dst),
                csv_field(&ports_text(ports))
            ),
            ListFormat::Md => format!("| {src} | {dst} | {} |\n", ports_text(ports)),
            ListFormat::Dot => format!(
                "  {} -> {} [label={}];\n",
                dot_id(src),
                dot_id(dst),
                dot_id(&ports_text(ports))
            ),
        };
        self.first = false;
        if matches!(self.format, ListFormat::Dot) {
            self.nodes.insert(src.to_string());
            self.nodes.insert(dst.to_string());
        }
        self.out.put(&line);
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
