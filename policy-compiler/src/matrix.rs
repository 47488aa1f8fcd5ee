//! `matrix`: the truth table of every ordered endpoint pair.
//!
//! Rows are sources, columns destinations, endpoints sorted by name (`ns/name` for Pods,
//! `ns/kind/name` for workloads). With a port the cells answer "may this port flow";
//! without one they answer "may anything flow", and the per-cell traffic is kept too.

use std::fmt::Write as _;

use serde::Serialize;

use crate::explain::PortQuery;
use crate::graph::{AllowGraph, Subject};
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
}

/// Computes the matrix over all endpoints of the model.
pub fn matrix(model: &Model, graph: &AllowGraph, q: MatrixQuery) -> Matrix {
    let protocol = q.protocol.or(q.port.map(|_| Protocol::Tcp));
    let ids: Vec<_> = model.endpoints.iter().map(|e| e.id).collect();
    let mut allowed = Vec::with_capacity(ids.len());
    let mut traffic = Vec::with_capacity(ids.len());
    for &s in &ids {
        let mut row = Vec::with_capacity(ids.len());
        let mut trow = Vec::new();
        for &d in &ids {
            let r = graph.reach(model, Subject::Endpoint(s), Subject::Endpoint(d));
            let ok = match (protocol, q.port) {
                (Some(p), Some(port)) => r.allowed.contains(p, port),
                (Some(p), None) => !r.allowed.get(p).is_empty(),
                _ => !r.allowed.is_empty(),
            };
            row.push(ok);
            if q.port.is_none() {
                trow.push(match protocol {
                    Some(p) => PortSet::of(p, r.allowed.get(p).clone()),
                    None => r.allowed,
                });
            }
        }
        allowed.push(row);
        traffic.push(trow);
    }
    Matrix {
        port: q.port,
        protocol,
        endpoints: model.endpoints.iter().map(|e| e.key()).collect(),
        allowed,
        traffic: q.port.is_none().then_some(traffic),
    }
}

impl Matrix {
    /// The query as a [`PortQuery`], when both protocol and port are set.
    pub fn query(&self) -> Option<PortQuery> {
        Some(PortQuery {
            protocol: self.protocol?,
            port: self.port?,
        })
    }

    /// Keeps only the endpoints `i` with `keep[i]` (rows and columns); endpoints past the
    /// end of `keep` are kept.
    pub fn retain(&mut self, keep: &[bool]) {
        fn pick<T>(keep: &[bool], v: &mut Vec<T>) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep.get(i - 1).copied().unwrap_or(true)
            });
        }
        let mut names = std::mem::take(&mut self.endpoints);
        pick(keep, &mut names);
        self.endpoints = names;
        let mut rows = std::mem::take(&mut self.allowed);
        pick(keep, &mut rows);
        for r in &mut rows {
            pick(keep, r);
        }
        self.allowed = rows;
        if let Some(mut t) = self.traffic.take() {
            pick(keep, &mut t);
            for r in &mut t {
                pick(keep, r);
            }
            self.traffic = Some(t);
        }
    }

    fn title(&self) -> String {
        match (self.protocol, self.port) {
            (Some(p), Some(port)) => format!("{p}/{port}"),
            (Some(p), None) => format!("{p}/any"),
            _ => "any".into(),
        }
    }

    fn mark(&self, i: usize, j: usize) -> &'static str {
        if !self.allowed[i][j] {
            return "X";
        }
        match &self.traffic {
            Some(t) if !t[i][j].is_all() && self.protocol.is_none() => "~",
            Some(t) if self.protocol.is_some_and(|p| !t[i][j].get(p).is_all()) => "~",
            _ => ".",
        }
    }

    /// Upstream e2e style grid: `.` allowed, `X` denied (and `~` partly allowed, without a
    /// port query), with a header row whose first cell names the query.
    pub fn to_text(&self) -> String {
        let w = self
            .endpoints
            .iter()
            .map(String::len)
            .max()
            .unwrap_or(1)
            .max(self.title().len());
        let mut s = String::new();
        let _ = write!(s, "{:<w$}", self.title());
        for e in &self.endpoints {
            let _ = write!(s, " {e}");
        }
        s.push('\n');
        for (i, src) in self.endpoints.iter().enumerate() {
            let _ = write!(s, "{src:<w$}");
            for (j, dst) in self.endpoints.iter().enumerate() {
                let _ = write!(s, " {:<width$}", self.mark(i, j), width = dst.len());
            }
            let trimmed = s.trim_end().len();
            s.truncate(trimmed);
            s.push('\n');
        }
        if self.traffic.is_some() {
            s.push_str("legend: . all allowed, ~ partly allowed, X denied\n");
        }
        s
    }

    /// CSV: header `source,<dst>...`, cells `true`/`false`.
    pub fn to_csv(&self) -> String {
        let mut s = String::from("source");
        for e in &self.endpoints {
            let _ = write!(s, ",{e}");
        }
        s.push('\n');
        for (i, src) in self.endpoints.iter().enumerate() {
            s.push_str(src);
            for j in 0..self.endpoints.len() {
                let _ = write!(s, ",{}", self.allowed[i][j]);
            }
            s.push('\n');
        }
        s
    }

    /// Markdown table with ✓ / ✗ cells.
    pub fn to_markdown(&self) -> String {
        let mut s = format!("| {} |", self.title());
        for e in &self.endpoints {
            let _ = write!(s, " {e} |");
        }
        s.push_str("\n|---|");
        for _ in &self.endpoints {
            s.push_str("---|");
        }
        s.push('\n');
        for (i, src) in self.endpoints.iter().enumerate() {
            let _ = write!(s, "| {src} |");
            for j in 0..self.endpoints.len() {
                let cell = match self.mark(i, j) {
                    "X" => "✗",
                    "~" => "~",
                    _ => "✓",
                };
                let _ = write!(s, " {cell} |");
            }
            s.push('\n');
        }
        s
    }
}
