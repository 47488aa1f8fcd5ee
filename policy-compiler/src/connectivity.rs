//! Connectivity: every ordered pair that may talk, with the exact allowed port set.
//!
//! Parties are the model's endpoints and *IP ranges*: the address space cut at every
//! ipBlock bound (cidr and except) of the policies, each elementary range written as the
//! CIDRs that cover it exactly. Within one range every ipBlock either contains all
//! addresses or none, so one address answers for the whole range.
//!
//! Pairs are evaluated per *class*: endpoints with the same allow-graph edges, the same
//! membership in every peer set (per address family) and the same declared ports get the
//! same answers, so a row is computed once per class of source and destination and
//! reused (`reach` stays the one place where semantics live). Output is streamed per
//! source row in a fixed order (endpoints by key, then ranges by address): memory stays
//! O(endpoints + classes²) (bounded: rows are cached only up to [`ROW_CACHE_CELLS`]).
//!
//! ```
//! use policy_compiler::{load, Model, AllowGraph, SourceText};
//! use policy_compiler::connectivity::{Connectivity, EndpointFilter};
//! let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n";
//! let (inputs, _) = load(&[SourceText { name: "x.yaml", text: yaml }]);
//! let (model, _) = Model::build(&inputs);
//! let graph = AllowGraph::build(&model);
//! let c = Connectivity::new(&model, &graph, &[]);
//! let mut n = 0;
//! c.for_each(&EndpointFilter::default(), |conn| { assert!(conn.ports.is_all()); n += 1; });
//! assert_eq!(n, 2); // x/a => 0.0.0.0/0 and 0.0.0.0/0 => x/a (self traffic is not listed)
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use crate::graph::{
    AllowGraph, ClusterPeerSet, ClusterPeerSetId, PeerSet, PeerSetId, Provenance, Subject,
};
use crate::model::{ContainerPort, Direction, Endpoint, EndpointId, Model};
use crate::ports::{PortSet, Protocol};
use crate::ruleset::interval::{Family, net_bounds, to_int};

/// Rows are cached while the cache holds fewer cells than this.
pub const ROW_CACHE_CELLS: usize = 4_000_000;

/// From this many classes on, a listing computes its rows on two threads.
pub const PARALLEL_CLASSES: usize = 64;

/// Which endpoints a listing is about: a pair is listed when either side matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointFilter {
    /// Namespaces (any of them); empty: every namespace.
    pub namespaces: Vec<String>,
    /// Labels `k=v` the endpoint must all carry; empty: any labels.
    pub selector: Vec<(String, String)>,
}

impl EndpointFilter {
    /// True when nothing is filtered.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.selector.is_empty()
    }

    /// Parses `k=v[,k=v...]` into the selector; errors name the bad part.
    pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(format!("--selector {p:?}: expected key=value")),
            })
            .collect()
    }

    /// True when `e` matches (namespace and every label).
    pub fn matches(&self, e: &Endpoint) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&e.namespace))
            && self
                .selector
                .iter()
                .all(|(k, v)| e.labels.get(k).is_some_and(|x| x == v))
    }
}

/// One side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Party {
    /// A Pod or workload.
    Endpoint(EndpointId),
    /// Addresses outside the endpoints (an ipBlock's range), one CIDR.
    Range(IpNet),
}

impl Party {
    /// `ns/name`, `ns/kind/name` or the CIDR.
    pub fn name(&self, model: &Model) -> String {
        match self {
            Party::Endpoint(id) => model.endpoint(*id).key(),
            Party::Range(n) => n.to_string(),
        }
    }

    /// Namespace of an endpoint (`None` for a range).
    pub fn namespace<'m>(&self, model: &'m Model) -> Option<&'m str> {
        match self {
            Party::Endpoint(id) => Some(model.endpoint(*id).namespace.as_str()),
            Party::Range(_) => None,
        }
    }
}

/// One allowed connection: `src` may open connections to `dst` on `ports` (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Source.
    pub src: Party,
    /// Destination.
    pub dst: Party,
    /// What may flow (egress at the source ∩ ingress at the destination).
    pub ports: PortSet,
}

/// A port range of one protocol, as in `netpol list -o json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortRange {
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: Protocol,
    /// First port.
    pub from: u16,
    /// Last port (inclusive).
    pub to: u16,
}

/// The ranges of a port set, protocol by protocol.
pub fn port_ranges(ports: &PortSet) -> Vec<PortRange> {
    let mut out = Vec::new();
    for p in Protocol::ALL {
        for &(from, to) in ports.get(p).ranges() {
            out.push(PortRange {
                protocol: p,
                from,
                to,
            });
        }
    }
    out
}

/// `All Connections`, `No Connections` or `TCP 80,8080-8090, UDP 53`.
pub fn ports_text(ports: &PortSet) -> String {
    if ports.is_all() {
        return "All Connections".into();
    }
    if ports.is_empty() {
        return "No Connections".into();
    }
    let mut s = String::new();
    for p in Protocol::ALL {
        let r = ports.get(p);
        if r.is_empty() {
            continue;
        }
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "{p} ");
        let parts: Vec<String> = r
            .ranges()
            .iter()
            .map(|&(lo, hi)| {
                if lo == hi {
                    lo.to_string()
                } else if lo == 0 && hi == u16::MAX {
                    "all ports".to_string()
                } else {
                    format!("{lo}-{hi}")
                }
            })
            .collect();
        s.push_str(&parts.join(","));
    }
    s
}

/// What decides an endpoint's answers, as a source and as a destination.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Signature {
    egress: Option<Vec<(PeerSetId, Provenance)>>,
    ingress: Option<Vec<(PeerSetId, Provenance)>>,
    selectable: bool,
    /// Per IP family, the peer sets containing the endpoint at that IP; endpoint peer sets
    /// under family `None`.
    member: Vec<(Option<Family>, Vec<PeerSetId>)>,
    ports: Vec<ContainerPort>,
    /// The node: traffic from a Pod's own node is always admitted (`Reach::from_node`),
    /// so two hostNetwork Pods (or two destinations) on different nodes differ.
    node: Option<String>,
    /// The ClusterNetworkPolicies applying to the endpoint, in order.
    cluster: Vec<crate::model::ClusterPolicyId>,
    /// Per IP family, the ClusterNetworkPolicy peer sets containing the endpoint (by
    /// identity under `None`, by address under its family).
    cluster_member: Vec<(Option<Family>, Vec<ClusterPeerSetId>)>,
}

/// Connectivity of one model.
pub struct Connectivity<'m> {
    model: &'m Model,
    graph: &'m AllowGraph,
    class_of: Vec<usize>,
    reps: Vec<EndpointId>,
    /// A second member of each class, when it has one.
    second: Vec<Option<EndpointId>>,
    /// The address space cut at every ipBlock bound, sorted.
    elems: Vec<Elem>,
    cut_nets: Vec<IpNet>,
    /// The model's own cuts (ipBlock and ClusterNetworkPolicy networks and addresses).
    own_cuts: Vec<IpNet>,
    /// Whether an endpoint has an IPv6 address.
    v6_endpoints: bool,
}

impl<'m> Connectivity<'m> {
    /// Classes of the endpoints and the IP ranges of the model's ipBlocks, cut also at
    /// `extra_cuts` (the ranges of another model, so that two listings name the same
    /// ranges; see [`Connectivity::cuts`]).
    pub fn new(model: &'m Model, graph: &'m AllowGraph, extra_cuts: &[IpNet]) -> Self {
        let n = model.endpoints.len();
        let mut member: Vec<BTreeMap<Option<Family>, Vec<PeerSetId>>> = vec![BTreeMap::new(); n];
        let mut blocks = Vec::new();
        for i in 0..graph.peer_set_count() {
            let id = PeerSetId(u32::try_from(i).unwrap_or(u32::MAX));
            match graph.peer_set(id) {
                PeerSet::All => {}
                PeerSet::Endpoints(v) => {
                    for e in v {
                        member[e.0 as usize].entry(None).or_default().push(id);
                    }
                }
                PeerSet::Block(b) => blocks.push((id, b)),
            }
        }
        for e in &model.endpoints {
            for ip in &e.ips {
                let fam = Family::of(ip);
                let m = member[e.id.0 as usize].entry(Some(fam)).or_default();
                // An endpoint with two IPs of one family: the primary decides (as reach).
                if !m.is_empty() {
                    continue;
                }
                m.extend(
                    blocks
                        .iter()
                        .filter(|(_, b)| b.contains(ip))
                        .map(|(id, _)| *id),
                );
                if m.is_empty() {
                    // Keep the family visible in the signature.
                    m.push(PeerSetId(u32::MAX));
                }
            }
        }
        // ClusterNetworkPolicy peers: membership by identity and by address, and their
        // networks and node addresses as cuts of the address space.
        let mut cluster_member: Vec<BTreeMap<Option<Family>, Vec<ClusterPeerSetId>>> =
            vec![BTreeMap::new(); n];
        let mut cluster_cuts: Vec<IpNet> = Vec::new();
        for i in 0..graph.cluster_peer_set_count() {
            let id = ClusterPeerSetId(u32::try_from(i).unwrap_or(u32::MAX));
            let set = graph.cluster_peer_set(id);
            match set {
                ClusterPeerSet::Endpoints(v) => {
                    for e in v {
                        cluster_member[e.0 as usize]
                            .entry(None)
                            .or_default()
                            .push(id);
                    }
                    continue;
                }
                ClusterPeerSet::Networks(nets) => cluster_cuts.extend(nets.iter().copied()),
                ClusterPeerSet::Addresses(a) => {
                    cluster_cuts.extend(a.iter().map(|ip| IpNet::from(*ip)))
                }
                ClusterPeerSet::Nothing => continue,
            }
            for e in &model.endpoints {
                // The primary address of each family decides (as reach).
                let mut seen = Vec::new();
                for ip in &e.ips {
                    let fam = Family::of(ip);
                    if seen.contains(&fam) {
                        continue;
                    }
                    seen.push(fam);
                    if set.contains(Subject::Endpoint(e.id), Some(*ip)) {
                        cluster_member[e.id.0 as usize]
                            .entry(Some(fam))
                            .or_default()
                            .push(id);
                    }
                }
            }
        }
        // The node decides an answer only through `Reach::from_node`: a hostNetwork source
        // on the destination's node, or a source address of that node. Without
        // hostNetwork endpoints and node addresses it never does, and endpoints on
        // different nodes share a class. See: #14
        let nodes_matter = model.endpoints.iter().any(|e| e.host_network)
            || model
                .node_names()
                .into_iter()
                .any(|n| !model.node_addresses(n).is_empty());
        let mut classes: BTreeMap<Signature, usize> = BTreeMap::new();
        let mut reps = Vec::new();
        let mut second: Vec<Option<EndpointId>> = Vec::new();
        let mut class_of = Vec::with_capacity(n);
        for e in &model.endpoints {
            let iso = graph.isolation(e.id);
            let side = |dir: Direction| {
                (!iso.by(dir).is_empty()).then(|| graph.edges(e.id, dir).into_iter().collect())
            };
            let sig = Signature {
                egress: side(Direction::Egress),
                ingress: side(Direction::Ingress),
                selectable: e.selectable(),
                member: std::mem::take(&mut member[e.id.0 as usize])
                    .into_iter()
                    .collect(),
                ports: e.ports.clone(),
                node: if nodes_matter { e.node.clone() } else { None },
                cluster: graph.cluster_subjects(e.id).to_vec(),
                cluster_member: std::mem::take(&mut cluster_member[e.id.0 as usize])
                    .into_iter()
                    .collect(),
            };
            let next = reps.len();
            let c = *classes.entry(sig).or_insert(next);
            if c == next {
                reps.push(e.id);
                second.push(None);
            } else if second[c].is_none() {
                second[c] = Some(e.id);
            }
            class_of.push(c);
        }
        let own_cuts: Vec<IpNet> = blocks
            .iter()
            .flat_map(|(_, b)| std::iter::once(b.cidr).chain(b.except.iter().copied()))
            .chain(cluster_cuts)
            .collect();
        let v6_endpoints = model
            .endpoints
            .iter()
            .any(|e| e.ips.iter().any(IpAddr::is_ipv6));
        let mut c = Connectivity {
            model,
            graph,
            class_of,
            reps,
            second,
            elems: Vec::new(),
            cut_nets: Vec::new(),
            own_cuts,
            v6_endpoints,
        };
        c.cut(extra_cuts);
        c
    }

    /// Cuts the address space at the model's own ipBlock bounds and at `extra`.
    fn cut(&mut self, extra: &[IpNet]) {
        let mut cuts: Vec<IpNet> = self.own_cuts.iter().chain(extra).copied().collect();
        let v6 = self.v6_endpoints || cuts.iter().any(|c| matches!(c, IpNet::V6(_)));
        cuts.push(IpNet::V4(ipnet::Ipv4Net::default()));
        if v6 {
            cuts.push(IpNet::V6(ipnet::Ipv6Net::default()));
        }
        cuts.sort();
        cuts.dedup();
        self.elems = partition(&cuts);
        self.cut_nets = cuts;
    }

    /// The connectivities of two models cut at the same ranges (each at the other's
    /// [`Connectivity::cuts`]), as `diff` needs them: the same as
    /// `new(old, new(new, new(old, []).cuts()).cuts())` and `new(new, ...)`, with the
    /// classes of each model computed once, the two models on two threads. See: #14
    pub fn pair(
        old: (&'m Model, &'m AllowGraph),
        new: (&'m Model, &'m AllowGraph),
    ) -> (Self, Self) {
        let (mut o, mut n) = std::thread::scope(|s| {
            let h = s.spawn(|| Connectivity::new(old.0, old.1, &[]));
            let n = Connectivity::new(new.0, new.1, &[]);
            // Connectivity::new never panics on a model; a panic is a bug, passed on.
            let o = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            (o, n)
        });
        let old_cuts = o.cut_nets.clone();
        o.cut(&n.cut_nets);
        n.cut(&old_cuts);
        (o, n)
    }

    /// The networks this model cuts the address space at (pass them to
    /// [`Connectivity::new`] of another model so both use the same ranges).
    pub fn cuts(&self) -> &[IpNet] {
        &self.cut_nets
    }

    /// Number of elementary IP ranges.
    pub fn range_count(&self) -> usize {
        self.elems.len()
    }

    /// Number of endpoint classes (endpoints with identical answers).
    pub fn class_count(&self) -> usize {
        self.reps.len()
    }

    fn subject(p: Party) -> Subject {
        match p {
            Party::Endpoint(id) => Subject::Endpoint(id),
            Party::Range(n) => Subject::External(n.network()),
        }
    }

    /// What may flow from `src` to `dst` (for a range: from or to its first address).
    pub fn ports(&self, src: Party, dst: Party) -> PortSet {
        self.graph
            .allowed(self.model, Self::subject(src), Self::subject(dst))
    }

    fn elem_party(e: &Elem) -> Party {
        Party::Range(e.first_net())
    }

    /// What `src` (a class representative or a range) may send to each class and range.
    fn class_row(&self, src: Party) -> ClassRow {
        let to_class = self.to_classes(src);
        let to_range = match src {
            Party::Endpoint(_) => self
                .elems
                .iter()
                .map(|e| self.ports(src, Self::elem_party(e)))
                .collect(),
            // Range to range: no policy applies to either side; not listed.
            Party::Range(_) => vec![PortSet::none(); self.elems.len()],
        };
        ClassRow { to_class, to_range }
    }

    /// What `src` may send to each class.
    fn to_classes(&self, src: Party) -> Vec<PortSet> {
        let own = match src {
            Party::Endpoint(id) => Some(self.class_of[id.0 as usize]),
            Party::Range(_) => None,
        };
        (0..self.reps.len())
            .map(|c| {
                // Toward its own class: a distinct member (self traffic is per endpoint).
                let dst = if Some(c) == own {
                    self.second[c].unwrap_or(self.reps[c])
                } else {
                    self.reps[c]
                };
                self.ports(src, Party::Endpoint(dst))
            })
            .collect()
    }

    /// Every class's row, when they fit in a [`RowCache`] (else an empty cache).
    fn all_rows(&self) -> RowCache {
        let per_row = self.reps.len() + self.elems.len();
        let mut cache = RowCache::default();
        if self.reps.len().saturating_mul(per_row) > ROW_CACHE_CELLS {
            return cache;
        }
        for (c, &rep) in self.reps.iter().enumerate() {
            cache.rows.insert(c, self.class_row(Party::Endpoint(rep)));
            cache.cells += per_row;
        }
        cache
    }

    /// [`Connectivity::all_rows`] on two threads (each computes half of the classes'
    /// rows), for listings of more than [`PARALLEL_CLASSES`] classes. The rows are the
    /// same whichever thread computes them. See: #14
    fn all_rows_2(&self) -> RowCache {
        let n = self.reps.len();
        let per_row = n + self.elems.len();
        if n < PARALLEL_CLASSES || n.saturating_mul(per_row) > ROW_CACHE_CELLS {
            return self.all_rows();
        }
        let rows = |range: std::ops::Range<usize>| -> Vec<(usize, ClassRow)> {
            range
                .map(|c| (c, self.class_row(Party::Endpoint(self.reps[c]))))
                .collect()
        };
        let (a, b) = std::thread::scope(|s| {
            let h = s.spawn(|| rows(n / 2..n));
            let a = rows(0..n / 2);
            // class_row never panics on a model; a panic is a bug, passed on.
            let b = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            (a, b)
        });
        let mut cache = RowCache::default();
        for (c, r) in a.into_iter().chain(b) {
            cache.rows.insert(c, r);
            cache.cells += per_row;
        }
        cache
    }

    fn row_of<'c>(&self, src: Party, cache: &'c mut RowCache) -> std::borrow::Cow<'c, ClassRow> {
        let Party::Endpoint(id) = src else {
            return std::borrow::Cow::Owned(self.class_row(src));
        };
        let c = self.class_of[id.0 as usize];
        if !cache.rows.contains_key(&c) {
            let r = self.class_row(Party::Endpoint(self.reps[c]));
            let cells = r.to_class.len() + r.to_range.len();
            if cache.cells + cells > ROW_CACHE_CELLS {
                cache.rows.clear();
                cache.cells = 0;
            }
            cache.cells += cells;
            cache.rows.insert(c, r);
        }
        match cache.rows.get(&c) {
            Some(r) => std::borrow::Cow::Borrowed(r),
            None => std::borrow::Cow::Owned(self.class_row(Party::Endpoint(self.reps[c]))),
        }
    }

    /// The endpoint part of `src`'s row: `f(dst, ports)` for every endpoint, empty sets
    /// included, self traffic of a single Pod left out.
    fn endpoint_cells(&self, src: Party, row: &ClassRow, mut f: impl FnMut(EndpointId, &PortSet)) {
        for e in &self.model.endpoints {
            if Party::Endpoint(e.id) == src {
                if !e.single() {
                    f(e.id, &self.ports(src, src));
                }
                continue;
            }
            f(e.id, &row.to_class[self.class_of[e.id.0 as usize]]);
        }
    }

    /// Calls `f` for every connection (pairs with nothing allowed left out, self traffic
    /// of a single Pod left out, range to range left out) where either side matches
    /// `filter`. Sources: endpoints by key, then ranges by address; destinations
    /// likewise. Adjacent elementary ranges with the same answer are merged and written
    /// as the CIDRs that cover them exactly.
    pub fn for_each(&self, filter: &EndpointFilter, mut f: impl FnMut(Connection)) {
        self.for_each_ref(filter, |src, dst, ports| {
            f(Connection {
                src,
                dst,
                ports: ports.clone(),
            })
        });
    }

    /// [`Connectivity::for_each`] without a copy of each port set: `f(src, dst, ports)`
    /// borrows the row's set (`netpol list` writes 56,000 connections at 1,000 Pods, and
    /// the copies were a tenth of its time). See: #14
    pub fn for_each_ref(&self, filter: &EndpointFilter, mut f: impl FnMut(Party, Party, &PortSet)) {
        let dst_match: Vec<bool> = self
            .model
            .endpoints
            .iter()
            .map(|e| filter.is_empty() || filter.matches(e))
            .collect();
        let any_dst = dst_match.iter().any(|m| *m);
        let mut cache = if any_dst {
            self.all_rows_2()
        } else {
            RowCache::default()
        };
        for e in &self.model.endpoints {
            let src = Party::Endpoint(e.id);
            let src_match = dst_match[e.id.0 as usize];
            if !src_match && !any_dst {
                continue;
            }
            let row = self.row_of(src, &mut cache);
            self.endpoint_cells(src, &row, |d, p| {
                if !p.is_empty() && (src_match || dst_match[d.0 as usize]) {
                    f(src, Party::Endpoint(d), p);
                }
            });
            if src_match {
                for (net, p) in merged(&self.elems, &row.to_range) {
                    if !p.is_empty() {
                        f(src, Party::Range(net), p);
                    }
                }
            }
        }
        if !any_dst {
            return;
        }
        // Range sources: rows toward the (matching) endpoints, adjacent equal rows merged.
        // A range's cell toward an endpoint is its cell toward the endpoint's class, so
        // rows are kept and compared by class, with nothing toward classes that hold no
        // matching endpoint: equal class rows are equal endpoint rows. See: #14
        let mut relevant = vec![false; self.reps.len()];
        for e in &self.model.endpoints {
            if dst_match[e.id.0 as usize] {
                relevant[self.class_of[e.id.0 as usize]] = true;
            }
        }
        let rows: Vec<Vec<PortSet>> = self
            .elems
            .iter()
            .map(|el| {
                let mut row = self.to_classes(Self::elem_party(el));
                for (p, r) in row.iter_mut().zip(&relevant) {
                    if !r {
                        *p = PortSet::none();
                    }
                }
                row
            })
            .collect();
        for (net, row) in merged(&self.elems, &rows) {
            for e in &self.model.endpoints {
                if !dst_match[e.id.0 as usize] {
                    continue;
                }
                let p = &row[self.class_of[e.id.0 as usize]];
                if !p.is_empty() {
                    f(Party::Range(net), Party::Endpoint(e.id), p);
                }
            }
        }
    }

    /// The model.
    pub fn model(&self) -> &'m Model {
        self.model
    }
}

/// One change between two connectivities: `old`/`new` are `None` when nothing is
/// allowed on that side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Source name.
    pub src: String,
    /// Destination name.
    pub dst: String,
    /// Allowed before (`None`: nothing).
    pub old: Option<PortSet>,
    /// Allowed after (`None`: nothing).
    pub new: Option<PortSet>,
}

impl Change {
    /// netpol-analyzer's `diff-type`: `added`, `removed` or `changed`.
    pub fn diff_type(&self) -> &'static str {
        match (&self.old, &self.new) {
            (None, _) => "added",
            (_, None) => "removed",
            _ => "changed",
        }
    }
}

/// Every pair whose allowed set differs between `old` and `new` (built with each
/// other's [`Connectivity::cuts`], so their ranges agree), where either side matches
/// `filter` (in the model it exists in), in name order of sources then destinations
/// (endpoints first, then ranges).
pub fn diff(
    old: &Connectivity<'_>,
    new: &Connectivity<'_>,
    filter: &EndpointFilter,
    mut f: impl FnMut(Change),
) {
    let keys = |c: &Connectivity<'_>| -> Vec<(String, EndpointId, bool)> {
        c.model
            .endpoints
            .iter()
            .map(|e| (e.key(), e.id, filter.is_empty() || filter.matches(e)))
            .collect()
    };
    let (ok, nk) = (keys(old), keys(new));
    let all = merge_keys(&ok, &nk);
    // Every destination's (old class, new class): a row differs at a destination exactly
    // when it differs at that pair of classes, so each row is compared once per distinct
    // pair (about as many as classes), not once per endpoint. See: #14
    let mut pair_ids: BTreeMap<(Option<usize>, Option<usize>), usize> = BTreeMap::new();
    let mut pairs: Vec<(Option<usize>, Option<usize>)> = Vec::new();
    let dst_pair: Vec<usize> = all
        .iter()
        .map(|(_, od, nd, _)| {
            let key = (
                od.map(|d| old.class_of[d.0 as usize]),
                nd.map(|d| new.class_of[d.0 as usize]),
            );
            *pair_ids.entry(key).or_insert_with(|| {
                pairs.push(key);
                pairs.len() - 1
            })
        })
        .collect();
    let any_dst_match = all.iter().any(|(_, _, _, m)| *m);
    let none = PortSet::none();
    // Every row of both sides, computed on two threads (the rows are most of a diff's
    // work; each is then read once per source class pair). See: #14
    let (mut oc, mut nc) = if any_dst_match {
        std::thread::scope(|s| {
            let h = s.spawn(|| old.all_rows());
            let n = new.all_rows();
            // all_rows never panics on a model; a panic is a bug, passed on.
            let o = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            (o, n)
        })
    } else {
        (RowCache::default(), RowCache::default())
    };
    let empty_ranges = vec![PortSet::none(); old.elems.len()];
    // Per source (old class, new class) pair: which destination pairs differ and the
    // range changes. Sources with the same pair of classes have the same rows, so both
    // are computed once per pair, not once per source. See: #14
    let mut memo: Vec<Option<SourceDiff>> = vec![None; pairs.len()];
    let mut memo_cells = 0usize;
    let mut differs = vec![false; pairs.len()];
    for (i, (src, o_id, n_id, src_match)) in all.iter().enumerate() {
        if !*src_match && !any_dst_match {
            continue;
        }
        // Self traffic of the source, on each side (for workloads with replicas != 1).
        let single = o_id.is_none_or(|id| old.model.endpoint(id).single())
            && n_id.is_none_or(|id| new.model.endpoint(id).single());
        let sk = dst_pair[i];
        if memo[sk].is_none() {
            let o_row = o_id.map(|id| old.row_of(Party::Endpoint(id), &mut oc));
            let n_row = n_id.map(|id| new.row_of(Party::Endpoint(id), &mut nc));
            let d = SourceDiff::new(
                old,
                o_row.as_deref(),
                n_row.as_deref(),
                &pairs,
                &empty_ranges,
            );
            let cells = d.differing.len() + d.ranges.len() + 1;
            if memo_cells + cells > ROW_CACHE_CELLS {
                memo.iter_mut().for_each(|m| *m = None);
                memo_cells = 0;
            }
            memo_cells += cells;
            memo[sk] = Some(d);
        }
        let Some(sd) = memo[sk].as_ref() else {
            continue;
        };
        if !sd.differing.is_empty() || !single {
            let o_row = o_id.map(|id| old.row_of(Party::Endpoint(id), &mut oc));
            let n_row = n_id.map(|id| new.row_of(Party::Endpoint(id), &mut nc));
            let (o_self, n_self) = if single {
                (None, None)
            } else {
                (
                    o_id.map(|id| old.ports(Party::Endpoint(id), Party::Endpoint(id))),
                    n_id.map(|id| new.ports(Party::Endpoint(id), Party::Endpoint(id))),
                )
            };
            for &k in &sd.differing {
                differs[k] = true;
            }
            for (j, (dst, _, _, dst_match)) in all.iter().enumerate() {
                if !(*src_match || *dst_match) {
                    continue;
                }
                if j == i {
                    if single {
                        continue;
                    }
                    // The same key on each side: that side's own self traffic.
                    let opr = o_self.as_ref().unwrap_or(&none);
                    let npr = n_self.as_ref().unwrap_or(&none);
                    if opr != npr {
                        f(change(src, dst, opr, npr));
                    }
                    continue;
                }
                let k = dst_pair[j];
                if differs[k] {
                    let (opc, npc) = pairs[k];
                    f(change(
                        src,
                        dst,
                        cell(o_row.as_deref(), opc, &none),
                        cell(n_row.as_deref(), npc, &none),
                    ));
                }
            }
            for &k in &sd.differing {
                differs[k] = false;
            }
        }
        if *src_match {
            for (net, op, np) in &sd.ranges {
                f(change(src, &net.to_string(), op, np));
            }
        }
    }
    // Range sources toward endpoints: a range's row, by class, on each side.
    let range_rows: Vec<Vec<(usize, PortSet, PortSet)>> = old
        .elems
        .iter()
        .map(|el| {
            let o_row = old.class_row(Connectivity::elem_party(el));
            let n_row = new.class_row(Connectivity::elem_party(el));
            let mut out = Vec::new();
            let mut any = false;
            for (k, (opc, npc)) in pairs.iter().enumerate() {
                differs[k] = cell(Some(&o_row), *opc, &none) != cell(Some(&n_row), *npc, &none);
                any |= differs[k];
            }
            if !any {
                return out;
            }
            for (j, (_, _, _, dst_match)) in all.iter().enumerate() {
                let k = dst_pair[j];
                if *dst_match && differs[k] {
                    let (opc, npc) = pairs[k];
                    out.push((
                        j,
                        cell(Some(&o_row), opc, &none).clone(),
                        cell(Some(&n_row), npc, &none).clone(),
                    ));
                }
            }
            out
        })
        .collect();
    for (net, row) in merged(&old.elems, &range_rows) {
        for (j, op, np) in row {
            f(change(&net.to_string(), &all[*j].0, op, np));
        }
    }
}

/// What differs in one source's rows (old class, new class) in [`diff`].
#[derive(Clone)]
struct SourceDiff {
    /// Indices of the destination (old class, new class) pairs whose cells differ.
    differing: Vec<usize>,
    /// Range destinations whose cells differ: merged range, old and new set.
    ranges: Vec<(IpNet, PortSet, PortSet)>,
}

impl SourceDiff {
    fn new(
        old: &Connectivity<'_>,
        o_row: Option<&ClassRow>,
        n_row: Option<&ClassRow>,
        pairs: &[(Option<usize>, Option<usize>)],
        empty_ranges: &[PortSet],
    ) -> Self {
        let none = PortSet::none();
        let differing = pairs
            .iter()
            .enumerate()
            .filter(|(_, (opc, npc))| cell(o_row, *opc, &none) != cell(n_row, *npc, &none))
            .map(|(k, _)| k)
            .collect();
        let or = o_row.map_or(empty_ranges, |r| &r.to_range);
        let nr = n_row.map_or(empty_ranges, |r| &r.to_range);
        let cells: Vec<(&PortSet, &PortSet)> = or.iter().zip(nr.iter()).collect();
        let ranges = merged(&old.elems, &cells)
            .into_iter()
            .filter(|(_, (op, np))| op != np)
            .map(|(net, (op, np))| (net, (*op).clone(), (*np).clone()))
            .collect();
        SourceDiff { differing, ranges }
    }
}

/// A row's cell at a class (`none` where the side has no such endpoint).
fn cell<'a>(row: Option<&'a ClassRow>, class: Option<usize>, none: &'a PortSet) -> &'a PortSet {
    match (row, class) {
        (Some(r), Some(c)) => &r.to_class[c],
        _ => none,
    }
}

fn change(src: &str, dst: &str, old: &PortSet, new: &PortSet) -> Change {
    Change {
        src: src.to_string(),
        dst: dst.to_string(),
        old: (!old.is_empty()).then(|| old.clone()),
        new: (!new.is_empty()).then(|| new.clone()),
    }
}

/// The union of two sorted key lists: `(key, id in old, id in new, filter matches)`.
fn merge_keys(
    a: &[(String, EndpointId, bool)],
    b: &[(String, EndpointId, bool)],
) -> Vec<(String, Option<EndpointId>, Option<EndpointId>, bool)> {
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    while i < a.len() || j < b.len() {
        let ord = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push((a[i].0.clone(), Some(a[i].1), None, a[i].2));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push((b[j].0.clone(), None, Some(b[j].1), b[j].2));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0.clone(), Some(a[i].1), Some(b[j].1), a[i].2 || b[j].2));
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// One elementary address range (inclusive bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Elem {
    fam: Family,
    lo: u128,
    hi: u128,
    /// The first CIDR of the range (its name as a party), computed once.
    first: IpNet,
}

impl Elem {
    fn new(fam: Family, lo: u128, hi: u128) -> Elem {
        let mut v = Vec::new();
        cidrs(lo, hi, fam, &mut v);
        let first = v
            .first()
            .copied()
            .unwrap_or_else(|| IpNet::V4(ipnet::Ipv4Net::default()));
        Elem { fam, lo, hi, first }
    }

    fn first_net(&self) -> IpNet {
        self.first
    }
}

/// Adjacent elementary ranges with equal values merged, each merged range split into the
/// CIDRs that cover it exactly, with its value.
fn merged<'v, T: PartialEq>(elems: &[Elem], values: &'v [T]) -> Vec<(IpNet, &'v T)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < elems.len().min(values.len()) {
        let mut j = i;
        while j + 1 < elems.len().min(values.len())
            && elems[j + 1].fam == elems[i].fam
            && elems[j].hi.checked_add(1) == Some(elems[j + 1].lo)
            && values[j + 1] == values[i]
        {
            j += 1;
        }
        let mut nets = Vec::new();
        cidrs(elems[i].lo, elems[j].hi, elems[i].fam, &mut nets);
        out.extend(nets.into_iter().map(|n| (n, &values[i])));
        i = j + 1;
    }
    out
}

/// What one source class (or range) may send to each destination class and range.
#[derive(Clone)]
struct ClassRow {
    to_class: Vec<PortSet>,
    to_range: Vec<PortSet>,
}

/// Cached rows by source class (cleared when it would exceed [`ROW_CACHE_CELLS`]).
#[derive(Default)]
struct RowCache {
    rows: BTreeMap<usize, ClassRow>,
    cells: usize,
}

/// The address space of each family present in `cuts`, cut at every bound of `cuts`,
/// as sorted elementary ranges.
fn partition(cuts: &[IpNet]) -> Vec<Elem> {
    let mut out = Vec::new();
    for fam in [Family::V4, Family::V6] {
        let nets: Vec<&IpNet> = cuts
            .iter()
            .filter(|n| Family::of(&n.addr()) == fam)
            .collect();
        if nets.is_empty() {
            continue;
        }
        let max = match fam {
            Family::V4 => u128::from(u32::MAX),
            Family::V6 => u128::MAX,
        };
        let mut starts: Vec<u128> = vec![0];
        for n in nets {
            let (lo, hi) = net_bounds(n);
            starts.push(lo);
            if hi < max {
                starts.push(hi + 1);
            }
        }
        starts.sort_unstable();
        starts.dedup();
        for (i, &lo) in starts.iter().enumerate() {
            let hi = starts.get(i + 1).map_or(max, |n| n - 1);
            out.push(Elem::new(fam, lo, hi));
        }
    }
    out
}

/// The minimal CIDRs covering `[lo, hi]`.
fn cidrs(mut lo: u128, hi: u128, fam: Family, out: &mut Vec<IpNet>) {
    let bits = match fam {
        Family::V4 => 32u32,
        Family::V6 => 128,
    };
    loop {
        // Largest block aligned at lo that fits in [lo, hi].
        let mut size_bits = if lo == 0 {
            bits
        } else {
            lo.trailing_zeros().min(bits)
        };
        while size_bits > 0 {
            let last = if size_bits >= 128 {
                u128::MAX
            } else {
                lo + ((1u128 << size_bits) - 1)
            };
            if last <= hi {
                break;
            }
            size_bits -= 1;
        }
        let prefix = u8::try_from(bits - size_bits).unwrap_or(0);
        let addr = match fam {
            Family::V4 => IpAddr::V4(std::net::Ipv4Addr::from(
                u32::try_from(lo).unwrap_or(u32::MAX),
            )),
            Family::V6 => IpAddr::V6(std::net::Ipv6Addr::from(lo)),
        };
        if let Ok(n) = IpNet::new(addr, prefix) {
            out.push(n);
        }
        let last = if size_bits >= 128 {
            u128::MAX
        } else {
            lo + ((1u128 << size_bits) - 1)
        };
        if last >= hi {
            return;
        }
        lo = last + 1;
    }
}

/// An address's integer (re-exported for the CLI's sorting).
pub fn addr_int(ip: &IpAddr) -> u128 {
    to_int(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_cuts_at_every_bound_into_exact_cidrs() {
        let n = |s: &str| s.parse::<IpNet>().unwrap();
        let p = partition(&[n("0.0.0.0/0"), n("10.0.0.0/8"), n("10.1.0.0/16")]);
        let mut nets = Vec::new();
        for e in &p {
            cidrs(e.lo, e.hi, e.fam, &mut nets);
        }
        let s: Vec<String> = nets.iter().map(ToString::to_string).collect();
        assert_eq!(
            s,
            [
                "0.0.0.0/5",
                "8.0.0.0/7",
                "10.0.0.0/16",
                "10.1.0.0/16",
                "10.2.0.0/15",
                "10.4.0.0/14",
                "10.8.0.0/13",
                "10.16.0.0/12",
                "10.32.0.0/11",
                "10.64.0.0/10",
                "10.128.0.0/9",
                "11.0.0.0/8",
                "12.0.0.0/6",
                "16.0.0.0/4",
                "32.0.0.0/3",
                "64.0.0.0/2",
                "128.0.0.0/1"
            ]
        );
        let all6 = partition(&[n("::/0")]);
        assert_eq!(all6.len(), 1);
        assert_eq!(all6[0].first_net(), n("::/0"));
    }

    #[test]
    fn ports_text_reads_like_the_issue() {
        use crate::ports::PortRanges;
        let p = PortSet::of(Protocol::Tcp, PortRanges::range(80, 80))
            .union(&PortSet::of(Protocol::Tcp, PortRanges::range(8080, 8090)))
            .union(&PortSet::of(Protocol::Udp, PortRanges::range(53, 53)));
        assert_eq!(ports_text(&p), "TCP 80,8080-8090, UDP 53");
        assert_eq!(ports_text(&PortSet::all()), "All Connections");
    }
}
