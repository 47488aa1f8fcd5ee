//! `matrix`: the truth table of every ordered endpoint pair.
//!
//! Rows are sources, columns destinations, endpoints sorted by name (`ns/name` for Pods,
//! `ns/kind/name` for workloads). With a port the cells answer "may this port flow";
//! without one they answer "may anything flow", and the per-cell traffic is kept too.

use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;
use serde::ser::SerializeSeq as _;

use crate::audit::AuditView;
use crate::explain::PortQuery;
use crate::graph::{AllowGraph, Subject};
use crate::model::EndpointId;
use crate::model::Model;
use crate::ports::{PortSet, Protocol};

/// What a matrix is computed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MatrixQuery {
    /// Only this protocol (TCP when only a port is given).
    pub protocol: Option<Protocol>,
    /// Only this port.
    pub port: Option<u16>,
}

/// The truth table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matrix {
    /// Queried port (`null`: any port).
    pub port: Option<u16>,
    /// Queried protocol (`null`: any protocol).
    pub protocol: Option<Protocol>,
    /// Endpoint names, sorted.
    pub endpoints: Vec<String>,
    /// `allowed[src][dst]`.
    pub allowed: Vec<Vec<bool>>,
    /// Per-cell traffic, only without a port query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Vec<Vec<PortSet>>>,
    /// `audited_allowed[src][dst]`: the audited verdict (every `netpol.io/mode: audit`
    /// policy enforced); only when the model has audit policies ([`matrix_with_audit`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audited_allowed: Option<Vec<Vec<bool>>>,
    /// Per-cell audited traffic, only with audit policies and without a port query.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audited_traffic: Option<Vec<Vec<PortSet>>>,
}

/// Computes the matrix over all endpoints of the model, held in memory: O(endpoints²).
/// To print a large matrix, use [`MatrixWriter`], which computes and writes one row at a
/// time.
pub fn matrix(model: &Model, graph: &AllowGraph, q: MatrixQuery) -> Matrix {
    matrix_with_audit(model, graph, None, q)
}

/// [`matrix`] with the audited verdict of every cell beside the enforced one when
/// `audit` (the [`AuditView`] of `model`) is given. See docs/audit.md.
pub fn matrix_with_audit(
    model: &Model,
    graph: &AllowGraph,
    audit: Option<&AuditView>,
    q: MatrixQuery,
) -> Matrix {
    let w = MatrixWriter::new(model, graph, q).with_audit(audit);
    let rows: Vec<Row> = (0..w.names.len()).map(|i| w.row(i)).collect();
    let traffic = q.port.is_none().then(|| {
        rows.iter()
            .map(|r| r.traffic.clone().unwrap_or_default())
            .collect()
    });
    let audited_allowed = audit.map(|_| {
        rows.iter()
            .map(|r| {
                r.audited
                    .as_ref()
                    .map(|a| a.allowed.clone())
                    .unwrap_or_default()
            })
            .collect()
    });
    let audited_traffic = (audit.is_some() && q.port.is_none()).then(|| {
        rows.iter()
            .map(|r| {
                r.audited
                    .as_ref()
                    .and_then(|a| a.traffic.clone())
                    .unwrap_or_default()
            })
            .collect()
    });
    Matrix {
        port: w.port,
        protocol: w.protocol,
        allowed: rows.into_iter().map(|r| r.allowed).collect(),
        endpoints: w.names,
        traffic,
        audited_allowed,
        audited_traffic,
    }
}

/// Output formats of [`MatrixWriter::write`] (and of [`Matrix`]'s `to_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixFormat {
    /// [`Matrix::to_text`].
    Text,
    /// Pretty JSON, the shape of [`Matrix`] serialized.
    Json,
    /// [`Matrix::to_csv`].
    Csv,
    /// [`Matrix::to_markdown`].
    Markdown,
}

/// One source's row.
#[derive(Debug, Clone)]
struct Row {
    allowed: Vec<bool>,
    /// Per-cell traffic, only without a port query.
    traffic: Option<Vec<PortSet>>,
    /// The audited row, only with audit policies.
    audited: Option<Box<Row>>,
}

/// What the renderers need: names, the query, and any row on demand.
trait Rows {
    fn names(&self) -> &[String];
    fn protocol(&self) -> Option<Protocol>;
    fn port(&self) -> Option<u16>;
    /// Whether rows carry per-cell traffic (`~` marks, the legend, JSON `traffic`).
    fn has_traffic(&self) -> bool;
    /// Whether rows carry the audited verdict (`A`/`a` marks, JSON `audited_*`).
    fn has_audit(&self) -> bool;
    fn row(&self, i: usize) -> Row;
}

/// The matrix computed row by row while it is written: memory O(endpoints) whatever the
/// size (a 5,000-endpoint matrix held whole, with per-cell traffic, took 4.3 GB). Output
/// is byte-identical to rendering [`matrix`]'s result. See: #11
pub struct MatrixWriter<'a> {
    model: &'a Model,
    graph: &'a AllowGraph,
    protocol: Option<Protocol>,
    port: Option<u16>,
    ids: Vec<EndpointId>,
    names: Vec<String>,
    audit: Option<&'a AuditView>,
}

impl<'a> MatrixWriter<'a> {
    /// A writer of the matrix of `q` over all endpoints of the model.
    pub fn new(model: &'a Model, graph: &'a AllowGraph, q: MatrixQuery) -> Self {
        MatrixWriter {
            model,
            graph,
            protocol: q.protocol.or(q.port.map(|_| Protocol::Tcp)),
            port: q.port,
            ids: model.endpoints.iter().map(|e| e.id).collect(),
            names: model.endpoints.iter().map(|e| e.key()).collect(),
            audit: None,
        }
    }

    /// Adds the audited verdict of every cell (`audit`: the [`AuditView`] of the model;
    /// `None` changes nothing).
    pub fn with_audit(mut self, audit: Option<&'a AuditView>) -> Self {
        self.audit = audit;
        self
    }

    /// Keeps only the endpoints `i` (in model order) with `keep[i]`, as rows and columns
    /// (`--namespace`, `--selector`); endpoints past the end of `keep` are kept.
    pub fn retain(&mut self, keep: &[bool]) {
        let k = |i: usize| keep.get(i).copied().unwrap_or(true);
        let mut i = 0;
        self.ids.retain(|_| {
            i += 1;
            k(i - 1)
        });
        let mut i = 0;
        self.names.retain(|_| {
            i += 1;
            k(i - 1)
        });
    }

    /// Writes the whole matrix in `format`, one row at a time.
    pub fn write(&self, format: MatrixFormat, out: &mut dyn Write) -> io::Result<()> {
        render(self, format, out)
    }
}

impl Rows for MatrixWriter<'_> {
    fn names(&self) -> &[String] {
        &self.names
    }
    fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }
    fn port(&self) -> Option<u16> {
        self.port
    }
    fn has_traffic(&self) -> bool {
        self.port.is_none()
    }
    fn has_audit(&self) -> bool {
        self.audit.is_some()
    }
    fn row(&self, i: usize) -> Row {
        let mut row = self.row_of(self.model, self.graph, i);
        if let Some(a) = self.audit {
            // Same endpoints, same ids: only the policies differ.
            row.audited = Some(Box::new(self.row_of(&a.model, &a.graph, i)));
        }
        row
    }
}

impl MatrixWriter<'_> {
    fn row_of(&self, model: &Model, graph: &AllowGraph, i: usize) -> Row {
        let s = self.ids[i];
        let mut allowed = Vec::with_capacity(self.ids.len());
        let mut traffic = Vec::new();
        for &d in &self.ids {
            let r = graph.reach(model, Subject::Endpoint(s), Subject::Endpoint(d));
            let ok = match (self.protocol, self.port) {
                (Some(p), Some(port)) => r.allowed.contains(p, port),
                (Some(p), None) => !r.allowed.get(p).is_empty(),
                _ => !r.allowed.is_empty(),
            };
            allowed.push(ok);
            if self.port.is_none() {
                traffic.push(match self.protocol {
                    Some(p) => PortSet::of(p, r.allowed.get(p).clone()),
                    None => r.allowed,
                });
            }
        }
        Row {
            allowed,
            traffic: self.port.is_none().then_some(traffic),
            audited: None,
        }
    }
}

impl Rows for Matrix {
    fn names(&self) -> &[String] {
        &self.endpoints
    }
    fn protocol(&self) -> Option<Protocol> {
        self.protocol
    }
    fn port(&self) -> Option<u16> {
        self.port
    }
    fn has_traffic(&self) -> bool {
        self.traffic.is_some()
    }
    fn has_audit(&self) -> bool {
        self.audited_allowed.is_some()
    }
    fn row(&self, i: usize) -> Row {
        Row {
            allowed: self.allowed.get(i).cloned().unwrap_or_default(),
            traffic: self
                .traffic
                .as_ref()
                .map(|t| t.get(i).cloned().unwrap_or_default()),
            audited: self.audited_allowed.as_ref().map(|a| {
                Box::new(Row {
                    allowed: a.get(i).cloned().unwrap_or_default(),
                    traffic: self
                        .audited_traffic
                        .as_ref()
                        .map(|t| t.get(i).cloned().unwrap_or_default()),
                    audited: None,
                })
            }),
        }
    }
}

fn title(protocol: Option<Protocol>, port: Option<u16>) -> String {
    match (protocol, port) {
        (Some(p), Some(port)) => format!("{p}/{port}"),
        (Some(p), None) => format!("{p}/any"),
        _ => "any".into(),
    }
}

/// `.` allowed, `X` denied, `~` partly allowed (only with per-cell traffic); with audit
/// policies, where the audited verdict differs: `A` (allowed, some of it an audit policy
/// would deny: reported as would drop (audit)) or `a` (denied, some of it audit policies
/// would allow).
fn mark(row: &Row, j: usize, protocol: Option<Protocol>) -> &'static str {
    audit_mark(row, j).unwrap_or_else(|| enforced_mark(row, j, protocol))
}

/// `A` or `a` where the row's audited verdict of cell `j` differs from the enforced one
/// (see [`mark`]); `None` without audit policies or where they agree.
fn audit_mark(row: &Row, j: usize) -> Option<&'static str> {
    let a = row.audited.as_ref()?;
    fn cell(r: &Row, j: usize) -> (bool, Option<&PortSet>) {
        (
            r.allowed.get(j).copied().unwrap_or(false),
            r.traffic.as_ref().and_then(|t| t.get(j)),
        )
    }
    let ((e, et), (au, at)) = (cell(row, j), cell(a, j));
    let (drops, adds) = match (et, at) {
        (Some(et), Some(at)) => (!et.subtract(at).is_empty(), !at.subtract(et).is_empty()),
        _ => (e && !au, au && !e),
    };
    if drops {
        Some("A")
    } else if adds {
        Some("a")
    } else {
        None
    }
}

/// The enforced verdict's mark alone: `.`, `X` or `~`.
fn enforced_mark(row: &Row, j: usize, protocol: Option<Protocol>) -> &'static str {
    if !row.allowed.get(j).copied().unwrap_or(false) {
        return "X";
    }
    match row.traffic.as_ref().and_then(|t| t.get(j)) {
        Some(t) if protocol.is_none() && !t.is_all() => "~",
        Some(t) if protocol.is_some_and(|p| !t.get(p).is_all()) => "~",
        _ => ".",
    }
}

fn render<R: Rows + ?Sized>(r: &R, format: MatrixFormat, out: &mut dyn Write) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    match format {
        MatrixFormat::Text => render_text(r, &mut out)?,
        MatrixFormat::Csv => render_csv(r, &mut out)?,
        MatrixFormat::Markdown => render_markdown(r, &mut out)?,
        MatrixFormat::Json => {
            render_json(r, &mut out)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()
}

fn render_text<R: Rows + ?Sized>(r: &R, s: &mut dyn Write) -> io::Result<()> {
    let names = r.names();
    let title = title(r.protocol(), r.port());
    let w = names
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(title.len());
    write!(s, "{title:<w$}")?;
    for e in names {
        write!(s, " {e}")?;
    }
    s.write_all(b"\n")?;
    let mut line = String::new();
    for (i, src) in names.iter().enumerate() {
        let row = r.row(i);
        line.clear();
        let _ = write!(line, "{src:<w$}");
        for (j, dst) in names.iter().enumerate() {
            let _ = write!(
                line,
                " {:<width$}",
                mark(&row, j, r.protocol()),
                width = dst.len()
            );
        }
        s.write_all(line.trim_end().as_bytes())?;
        s.write_all(b"\n")?;
    }
    if r.has_traffic() {
        s.write_all(b"legend: . all allowed, ~ partly allowed, X denied\n")?;
    }
    if r.has_audit() {
        s.write_all(
            b"audit: A allowed, an audit policy would deny (some of) it: would drop (audit); a denied, audit policies would allow (some of) it\n",
        )?;
    }
    Ok(())
}

/// `source,<endpoints...>` then one row of enforced verdicts (`true`/`false`) per source;
/// with audit policies, one more row per source named `audited:<source>` with the audited
/// verdicts (every audit policy enforced), so the table stays rectangular and a reader
/// that ignores those rows reads the enforced matrix as before. See docs/audit.md.
fn render_csv<R: Rows + ?Sized>(r: &R, s: &mut dyn Write) -> io::Result<()> {
    let names = r.names();
    s.write_all(b"source")?;
    for e in names {
        write!(s, ",{e}")?;
    }
    s.write_all(b"\n")?;
    let mut audited = Vec::new();
    for (i, src) in names.iter().enumerate() {
        let row = r.row(i);
        s.write_all(src.as_bytes())?;
        for a in &row.allowed {
            write!(s, ",{a}")?;
        }
        s.write_all(b"\n")?;
        if let Some(a) = row.audited {
            audited.push((src, a.allowed));
        }
    }
    for (src, allowed) in audited {
        write!(s, "audited:{src}")?;
        for a in &allowed {
            write!(s, ",{a}")?;
        }
        s.write_all(b"\n")?;
    }
    Ok(())
}

fn render_markdown<R: Rows + ?Sized>(r: &R, s: &mut dyn Write) -> io::Result<()> {
    let names = r.names();
    write!(s, "| {} |", title(r.protocol(), r.port()))?;
    for e in names {
        write!(s, " {e} |")?;
    }
    s.write_all(b"\n|---|")?;
    for _ in names {
        s.write_all(b"---|")?;
    }
    s.write_all(b"\n")?;
    for (i, src) in names.iter().enumerate() {
        let row = r.row(i);
        write!(s, "| {src} |")?;
        for j in 0..names.len() {
            // The enforced verdict, then where the audited one differs its letter: a
            // denied cell stays ✗ whatever audit policies would do.
            let cell = match enforced_mark(&row, j, r.protocol()) {
                "X" => "✗",
                "~" => "~",
                _ => "✓",
            };
            match audit_mark(&row, j) {
                Some(a) => write!(s, " {cell} {a} |")?,
                None => write!(s, " {cell} |")?,
            }
        }
        s.write_all(b"\n")?;
    }
    if r.has_audit() {
        s.write_all(
            b"\nAudit: **A** allowed, an audit policy would deny (some of) it: would drop (audit); **a** denied, audit policies would allow (some of) it.\n",
        )?;
    }
    Ok(())
}

/// The JSON of [`Matrix`] (`serde_json` pretty), with `allowed` and `traffic` serialized
/// from rows computed while writing (the traffic rows are computed a second time).
fn render_json<R: Rows + ?Sized>(r: &R, s: &mut dyn Write) -> io::Result<()> {
    struct Lazy<'r, R: ?Sized> {
        rows: &'r R,
        traffic: bool,
        audited: bool,
    }
    impl<R: Rows + ?Sized> Serialize for Lazy<'_, R> {
        fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
            let n = self.rows.names().len();
            let mut seq = ser.serialize_seq(Some(n))?;
            for i in 0..n {
                let mut row = self.rows.row(i);
                if self.audited {
                    row = row.audited.map(|a| *a).unwrap_or(Row {
                        allowed: Vec::new(),
                        traffic: None,
                        audited: None,
                    });
                }
                if self.traffic {
                    seq.serialize_element(&row.traffic.unwrap_or_default())?;
                } else {
                    seq.serialize_element(&row.allowed)?;
                }
            }
            seq.end()
        }
    }
    #[derive(Serialize)]
    #[serde(bound = "")]
    struct Shape<'r, R: Rows + ?Sized> {
        port: Option<u16>,
        protocol: Option<Protocol>,
        endpoints: &'r [String],
        allowed: Lazy<'r, R>,
        #[serde(skip_serializing_if = "Option::is_none")]
        traffic: Option<Lazy<'r, R>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        audited_allowed: Option<Lazy<'r, R>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        audited_traffic: Option<Lazy<'r, R>>,
    }
    let shape = Shape {
        port: r.port(),
        protocol: r.protocol(),
        endpoints: r.names(),
        allowed: Lazy {
            rows: r,
            traffic: false,
            audited: false,
        },
        traffic: r.has_traffic().then_some(Lazy {
            rows: r,
            traffic: true,
            audited: false,
        }),
        audited_allowed: r.has_audit().then_some(Lazy {
            rows: r,
            traffic: false,
            audited: true,
        }),
        audited_traffic: (r.has_audit() && r.has_traffic()).then_some(Lazy {
            rows: r,
            traffic: true,
            audited: true,
        }),
    };
    serde_json::to_writer_pretty(s, &shape).map_err(io::Error::other)
}

fn render_string(m: &Matrix, format: MatrixFormat) -> String {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail; the renderers write UTF-8 only.
    let _ = render(m, format, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

impl Matrix {
    /// The query as a [`PortQuery`], when both protocol and port are set.
    pub fn query(&self) -> Option<PortQuery> {
        Some(PortQuery {
            protocol: self.protocol?,
            port: self.port?,
        })
    }

    /// Upstream e2e style grid: `.` allowed, `X` denied (and `~` partly allowed, without a
    /// port query), with a header row whose first cell names the query.
    pub fn to_text(&self) -> String {
        render_string(self, MatrixFormat::Text)
    }

    /// CSV: header `source,<dst>...`, cells `true`/`false`.
    pub fn to_csv(&self) -> String {
        render_string(self, MatrixFormat::Csv)
    }

    /// Markdown table with ✓ / ✗ cells.
    pub fn to_markdown(&self) -> String {
        render_string(self, MatrixFormat::Markdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{SourceText, load};

    fn compiled() -> (Model, AllowGraph) {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/cases/upstream/port-81-only/cluster.yaml"
        ))
        .unwrap()
            + "\n---\n"
            + &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../testdata/cases/upstream/port-81-only/policies.yaml"
            ))
            .unwrap();
        let (inputs, d) = load(&[SourceText {
            name: "c",
            text: &text,
        }]);
        assert!(d.is_empty(), "{d:?}");
        let (model, d) = Model::build(&inputs);
        assert!(d.is_empty(), "{d:?}");
        let graph = AllowGraph::build(&model);
        (model, graph)
    }

    #[test]
    fn streamed_matrix_equals_the_held_one() {
        // See: #11 (the streamed rows must print what the whole matrix printed).
        let (model, graph) = compiled();
        for q in [
            MatrixQuery::default(),
            MatrixQuery {
                protocol: Some(Protocol::Udp),
                port: None,
            },
            MatrixQuery {
                protocol: None,
                port: Some(81),
            },
            MatrixQuery {
                protocol: Some(Protocol::Tcp),
                port: Some(80),
            },
        ] {
            let m = matrix(&model, &graph, q);
            let w = MatrixWriter::new(&model, &graph, q);
            let out = |f| {
                let mut v = Vec::new();
                w.write(f, &mut v).unwrap();
                String::from_utf8(v).unwrap()
            };
            // JSON against serde's own serialization of the held matrix.
            let json = serde_json::to_string_pretty(&m).unwrap() + "\n";
            assert_eq!(out(MatrixFormat::Json), json, "{q:?}");
            assert_eq!(out(MatrixFormat::Text), m.to_text(), "{q:?}");
            assert_eq!(out(MatrixFormat::Csv), m.to_csv(), "{q:?}");
            assert_eq!(out(MatrixFormat::Markdown), m.to_markdown(), "{q:?}");
            assert_eq!(m.allowed.len(), 9);
        }
    }
}

/// `matrix --via-services`: every source endpoint against every Service port. A cell
/// counts the backends the connection is allowed to (after DNAT, per backend, as
/// [`AllowGraph::reach_service`] judges it) out of the backends serving that port.
// See: #10
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceMatrix {
    /// Source endpoint names, sorted (the rows).
    pub sources: Vec<String>,
    /// Service ports, `ns/service/name:port/PROTO`, sorted by Service then port order
    /// (the columns).
    pub columns: Vec<String>,
    /// `allowed[src][col]`: backends the connection is allowed to.
    pub allowed: Vec<Vec<usize>>,
    /// `backends[src][col]`: backends serving the port (0: no backends).
    pub backends: Vec<Vec<usize>>,
    /// `audited_allowed[src][col]`: backends the connection is allowed to with every
    /// `netpol.io/mode: audit` policy enforced; only with audit policies
    /// ([`service_matrix_with_audit`]). See docs/audit.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audited_allowed: Option<Vec<Vec<usize>>>,
}

/// Computes the Service matrix; `port` (and `protocol`) keep only Service ports with that
/// number (and protocol).
pub fn service_matrix(
    model: &Model,
    graph: &AllowGraph,
    port: Option<u16>,
    protocol: Option<Protocol>,
) -> ServiceMatrix {
    service_matrix_with_audit(model, graph, None, port, protocol)
}

/// [`service_matrix`] with the audited count of every cell beside the enforced one when
/// `audit` (the [`AuditView`] of `model`) is given.
pub fn service_matrix_with_audit(
    model: &Model,
    graph: &AllowGraph,
    audit: Option<&AuditView>,
    port: Option<u16>,
    protocol: Option<Protocol>,
) -> ServiceMatrix {
    let cols: Vec<(&crate::model::Service, usize)> = model
        .services
        .iter()
        .flat_map(|s| (0..s.ports.len()).map(move |i| (s, i)))
        .filter(|(s, i)| {
            let sp = &s.ports[*i];
            port.is_none_or(|p| sp.port == p) && protocol.is_none_or(|p| sp.protocol == p)
        })
        .collect();
    let mut allowed = Vec::with_capacity(model.endpoints.len());
    let mut backends = Vec::with_capacity(model.endpoints.len());
    for src in &model.endpoints {
        let mut arow = Vec::with_capacity(cols.len());
        let mut brow = Vec::with_capacity(cols.len());
        for (svc, i) in &cols {
            let flows = graph.reach_service(model, Subject::Endpoint(src.id), svc, *i);
            arow.push(flows.iter().filter(|f| f.allowed).count());
            brow.push(flows.len());
        }
        allowed.push(arow);
        backends.push(brow);
    }
    // The audited model has the same endpoints and Services (only policies differ).
    let audited_allowed = audit.map(|a| {
        let acols: Vec<(&crate::model::Service, usize)> = cols
            .iter()
            .map(|(s, i)| {
                let same = a.model.services.iter().find(|x| x.key() == s.key());
                (same.unwrap_or(s), *i)
            })
            .collect();
        model
            .endpoints
            .iter()
            .map(|src| {
                acols
                    .iter()
                    .map(|(svc, i)| {
                        a.graph
                            .reach_service(&a.model, Subject::Endpoint(src.id), svc, *i)
                            .iter()
                            .filter(|f| f.allowed)
                            .count()
                    })
                    .collect()
            })
            .collect()
    });
    ServiceMatrix {
        sources: model.endpoints.iter().map(|e| e.key()).collect(),
        columns: cols
            .iter()
            .map(|(s, i)| {
                let sp = &s.ports[*i];
                format!("{}:{}/{}", s.display(), sp.port, sp.protocol)
            })
            .collect(),
        allowed,
        backends,
        audited_allowed,
    }
}

impl ServiceMatrix {
    /// Text table: `.` allowed to every backend, `X` to none, `N/M` to some, `-` no
    /// backends. Rows are sources, columns Service ports. With audit policies, a cell
    /// whose audited count differs reads `enforced>audited` (`.>X`: allowed, and every
    /// backend would drop (audit)), with a legend line.
    pub fn to_text(&self) -> String {
        let one = |a: usize, b: usize| match (a, b) {
            (_, 0) => "-".to_string(),
            (a, b) if a == b => ".".to_string(),
            (0, _) => "X".to_string(),
            (a, b) => format!("{a}/{b}"),
        };
        let cell = |r: usize, c: usize| {
            let (a, b) = (self.allowed[r][c], self.backends[r][c]);
            match self.audited_allowed.as_ref().map(|x| x[r][c]) {
                Some(au) if au != a => format!("{}>{}", one(a, b), one(au, b)),
                _ => one(a, b),
            }
        };
        let w0 = self
            .sources
            .iter()
            .map(String::len)
            .chain([1])
            .max()
            .unwrap_or(1);
        let widths: Vec<usize> = self
            .columns
            .iter()
            .enumerate()
            .map(|(c, name)| {
                (0..self.sources.len())
                    .map(|r| cell(r, c).len())
                    .chain([name.len()])
                    .max()
                    .unwrap_or(name.len())
            })
            .collect();
        let mut s = String::new();
        let _ = write!(s, "{:<w0$}", "-");
        for (c, w) in self.columns.iter().zip(&widths) {
            let _ = write!(s, " {c:<w$}");
        }
        s.push('\n');
        for (r, name) in self.sources.iter().enumerate() {
            let _ = write!(s, "{name:<w0$}");
            for (c, w) in widths.iter().enumerate() {
                let _ = write!(s, " {:<w$}", cell(r, c));
            }
            s.push('\n');
        }
        if self.audited_allowed.is_some() {
            s.push_str("audit: E>A where the audited verdict (audit policies enforced) differs: E enforced, A audited\n");
        }
        // Trailing spaces of the last column are noise.
        s.lines()
            .map(str::trim_end)
            .map(|l| format!("{l}\n"))
            .collect()
    }
}
