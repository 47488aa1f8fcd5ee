//! The Ruleset: one Pod's nftables table, as data, and its `nft -f` text.
//!
//! [`compile_pod`] turns a Pod's allow edges into a table `inet netpol` for the Pod's own
//! network namespace. The shape is fixed (static chains, peers in maps and sets), so the
//! number of *rules* does not grow with peers:
//!
//! ```text
//! table inet netpol
//!   map  ingress_v4 / ingress_v6    peer address interval -> accept | jump ingress_class_<k>
//!   set  ingress_class_<k>_ports    inet_proto . inet_service intervals (one per PortSet)
//!   chain ingress  (hook input,  policy drop when isolated, accept otherwise)
//!     ct state established,related accept
//!     icmpv6 type { nd-* } accept        # IPv6 neighbour discovery
//!     ct state invalid drop
//!     iif lo accept                      # a Pod may always reach itself
//!     ip saddr vmap @ingress_v4
//!     ip6 saddr vmap @ingress_v6
//!     counter log group N prefix "netpol:<ns>/<name>:ingress " drop
//!   chain ingress_class_<k>
//!     meta l4proto . th dport @ingress_class_<k>_ports accept
//!   (egress: the same with hook output, daddr and oif lo)
//! ```
//!
//! Map elements are disjoint (nft rejects overlapping intervals): every peer contributes
//! `(address range, PortSet)` pairs, which [`interval`] splits at all bounds, unions per
//! elementary range and merges again. Class chains are entered with `jump`, so traffic a
//! class does not allow returns to the base chain and reaches the logging drop rule.
//!
//! Port semantics are the compiler's own ([`rule_ports`]): ingress named ports resolve
//! against the Pod itself, egress named ports against each destination Pod (an ipBlock
//! contributes its range with named ports unresolved, plus each Pod IP inside it with
//! them resolved against that Pod).
//!
//! ```
//! use policy_compiler::{load, Model, AllowGraph, SourceText};
//! use policy_compiler::ruleset::{compile_pod, RulesetOptions};
//! let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";
//! let (inputs, _) = load(&[SourceText { name: "x.yaml", text: yaml }]);
//! let (model, _) = Model::build(&inputs);
//! let graph = AllowGraph::build(&model);
//! let a = model.endpoint_by_key("x/a").unwrap();
//! let rs = compile_pod(&model, &graph, a, &RulesetOptions::default());
//! let text = rs.to_nft();
//! assert!(text.contains("hook input priority filter; policy drop;"));
//! assert!(text.contains("hook output priority filter; policy accept;"));
//! assert_eq!(rs.stats().map_elements, 0);
//! ```

pub mod interval;
mod render;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use crate::graph::{AllowGraph, PeerSet, rule_of, rule_ports};
use crate::model::{Direction, EndpointId, Model, PortMatch, Rule};
use crate::ports::{PortSet, Protocol};

pub use interval::Family;

use interval::{Contribution, Segment};

/// Name of the table in every Pod's namespace.
pub const TABLE: &str = "netpol";

/// Longest log prefix the kernel accepts (NF_LOG_PREFIXLEN minus the NUL).
pub const MAX_LOG_PREFIX: usize = 127;

/// Longest rule comment nft accepts.
pub const MAX_COMMENT: usize = 127;

/// The ICMPv6 neighbour discovery types accepted in isolated directions.
pub const ND_TYPES: [&str; 4] = [
    "nd-router-solicit",
    "nd-router-advert",
    "nd-neighbor-solicit",
    "nd-neighbor-advert",
];

/// Knobs of the generated ruleset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetOptions {
    /// nflog group of the logging drop rule.
    pub log_group: u16,
}

impl Default for RulesetOptions {
    fn default() -> Self {
        Self { log_group: 100 }
    }
}

/// Who allowed an address range or a port class: a policy's rule and peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Source {
    /// Policy `ns/name`.
    pub policy: String,
    /// Rule index in the policy's rules of the chain's direction.
    pub rule: u32,
    /// Peer index in the rule's `from`/`to` (`None`: the rule has no peers).
    pub peer: Option<u32>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}", self.policy, self.rule)?;
        match self.peer {
            Some(p) => write!(f, " peer {p}"),
            None => f.write_str(" any peer"),
        }
    }
}

/// Where a base chain hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// `input`: traffic into the Pod (ingress).
    Input,
    /// `output`: traffic out of the Pod (egress).
    Output,
}

impl Hook {
    /// `input` / `output`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Output => "output",
        }
    }
}

/// A base chain's hook and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// Hook (priority is always `filter`, 0).
    pub hook: Hook,
    /// Default verdict: `accept` when not isolated, `drop` when isolated.
    pub accept: bool,
}

/// A verdict in a peer map.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MapVerdict {
    /// All traffic from/to the range is allowed.
    Accept,
    /// Ports decide: jump to this class chain.
    Jump(String),
}

/// One element of a peer map: an inclusive address range and its verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapElement {
    /// First address.
    pub first: IpAddr,
    /// Last address.
    pub last: IpAddr,
    /// The CIDR prefix length when the range is exactly one block.
    pub prefix: Option<u8>,
    /// Verdict.
    pub verdict: MapVerdict,
    /// Which policy rules and peers contribute to the range.
    pub sources: Vec<Source>,
}

/// An interval verdict map keyed by peer address (`<dir>_v4`, `<dir>_v6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerMap {
    /// Map name.
    pub name: String,
    /// Address family (`ipv4_addr` or `ipv6_addr`).
    pub family: Family,
    /// Disjoint elements, sorted by address.
    pub elements: Vec<MapElement>,
}

/// One element of a port set: protocol and an inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortElement {
    /// Protocol.
    pub protocol: Protocol,
    /// First port.
    pub first: u16,
    /// Last port.
    pub last: u16,
}

/// A named set of type `inet_proto . inet_service` with intervals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortsSet {
    /// Set name.
    pub name: String,
    /// Elements, sorted.
    pub elements: Vec<PortElement>,
}

/// Address selector of a peer-map rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AddrField {
    /// Source address (ingress).
    Saddr,
    /// Destination address (egress).
    Daddr,
}

impl AddrField {
    /// `saddr` / `daddr`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrField::Saddr => "saddr",
            AddrField::Daddr => "daddr",
        }
    }
}

/// The fixed rule shapes of a netpol table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    /// `ct state established,related accept`.
    Established,
    /// `icmpv6 type { nd-* } accept`.
    NeighbourDiscovery,
    /// `ct state invalid drop`.
    Invalid,
    /// `iif lo accept` (ingress) / `oif lo accept` (egress).
    Loopback(Hook),
    /// `ip saddr vmap @map` (and friends).
    PeerMap {
        /// Family of the address match.
        family: Family,
        /// Source or destination address.
        field: AddrField,
        /// The map.
        map: String,
    },
    /// `meta l4proto . th dport @set accept`.
    Ports {
        /// The set.
        set: String,
    },
    /// `counter log group N prefix "…" drop`.
    LogDrop {
        /// nflog group.
        group: u16,
        /// Log prefix (at most [`MAX_LOG_PREFIX`] bytes).
        prefix: String,
    },
}

/// A rule with its optional kernel-side comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftRule {
    /// What it does.
    pub kind: RuleKind,
    /// `comment "…"` (at most [`MAX_COMMENT`] bytes).
    pub comment: Option<String>,
}

/// A chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    /// Chain name.
    pub name: String,
    /// Hook and policy of a base chain.
    pub base: Option<BaseChain>,
    /// Review notes, rendered as `#` lines in the text (not loaded into the kernel).
    pub notes: Vec<String>,
    /// Rules in order.
    pub rules: Vec<NftRule>,
}

/// Size numbers of a ruleset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RulesetStats {
    /// Chains.
    pub chains: usize,
    /// Rules in all chains.
    pub rules: usize,
    /// Named sets.
    pub sets: usize,
    /// Elements of all named sets.
    pub set_elements: usize,
    /// Maps.
    pub maps: usize,
    /// Elements of all maps.
    pub map_elements: usize,
}

/// The table `inet netpol` for one Pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    /// The Pod, `ns/name`.
    pub pod: String,
    /// Header notes (isolation summary), rendered as `#` lines.
    pub notes: Vec<String>,
    /// Peer maps.
    pub maps: Vec<PeerMap>,
    /// Port sets.
    pub sets: Vec<PortsSet>,
    /// Chains: `ingress`, `egress`, then the class chains.
    pub chains: Vec<Chain>,
}

impl Ruleset {
    /// Counts of chains, rules, sets, maps and their elements.
    pub fn stats(&self) -> RulesetStats {
        RulesetStats {
            chains: self.chains.len(),
            rules: self.chains.iter().map(|c| c.rules.len()).sum(),
            sets: self.sets.len(),
            set_elements: self.sets.iter().map(|s| s.elements.len()).sum(),
            maps: self.maps.len(),
            map_elements: self.maps.iter().map(|m| m.elements.len()).sum(),
        }
    }

    /// The `nft -f` text: replaces the table in one transaction, whether or not it exists.
    pub fn to_nft(&self) -> String {
        render::nft(self)
    }

    /// Evaluates the ruleset in software for a new connection of the Pod with `peer`
    /// (the source for ingress, the destination for egress), as the kernel would,
    /// ignoring loopback and conntrack. For tests and `explain`-style checks.
    pub fn simulate(&self, dir: Direction, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        let Some(base) = self.chains.iter().find(|c| c.name == dir.as_str()) else {
            return true;
        };
        let family = Family::of(&peer);
        for r in &base.rules {
            match &r.kind {
                RuleKind::PeerMap { family: f, map, .. } if *f == family => {
                    let Some(m) = self.maps.iter().find(|m| &m.name == map) else {
                        continue;
                    };
                    let v = interval::to_int(&peer);
                    let hit = m.elements.iter().find(|e| {
                        interval::to_int(&e.first) <= v && v <= interval::to_int(&e.last)
                    });
                    match hit.map(|e| &e.verdict) {
                        Some(MapVerdict::Accept) => return true,
                        Some(MapVerdict::Jump(c)) if self.class_allows(c, protocol, port) => {
                            return true;
                        }
                        Some(MapVerdict::Jump(_)) | None => {}
                    }
                }
                RuleKind::LogDrop { .. } => return false,
                _ => {}
            }
        }
        base.base.is_none_or(|b| b.accept)
    }

    fn class_allows(&self, chain: &str, protocol: Protocol, port: u16) -> bool {
        let Some(c) = self.chains.iter().find(|c| c.name == chain) else {
            return false;
        };
        c.rules.iter().any(|r| match &r.kind {
            RuleKind::Ports { set } => self.sets.iter().any(|s| {
                &s.name == set
                    && s.elements
                        .iter()
                        .any(|e| e.protocol == protocol && e.first <= port && port <= e.last)
            }),
            _ => false,
        })
    }
}

impl fmt::Display for RulesetStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} chains, {} rules, {} sets ({} elements), {} maps ({} elements)",
            self.chains, self.rules, self.sets, self.set_elements, self.maps, self.map_elements
        )
    }
}

/// Compiles the ruleset of one endpoint (meant for Pods: workloads have no netns).
pub fn compile_pod(
    model: &Model,
    graph: &AllowGraph,
    pod: EndpointId,
    opts: &RulesetOptions,
) -> Ruleset {
    let ep = model.endpoint(pod);
    let key = ep.key();
    let mut rs = Ruleset {
        pod: key.clone(),
        notes: vec![format!("netpol ruleset for {key}")],
        maps: Vec::new(),
        sets: Vec::new(),
        chains: Vec::new(),
    };
    let mut class_chains = Vec::new();
    for dir in [Direction::Ingress, Direction::Egress] {
        let policies: Vec<String> = graph
            .isolation(pod)
            .by(dir)
            .iter()
            .map(|p| model.policy(*p).key())
            .collect();
        let hook = match dir {
            Direction::Ingress => Hook::Input,
            Direction::Egress => Hook::Output,
        };
        if policies.is_empty() {
            rs.notes.push(format!(
                "{dir}: not isolated (no NetworkPolicy with policyType {} selects it)",
                match dir {
                    Direction::Ingress => "Ingress",
                    Direction::Egress => "Egress",
                }
            ));
            rs.chains.push(Chain {
                name: dir.as_str().to_owned(),
                base: Some(BaseChain { hook, accept: true }),
                notes: vec!["not isolated: everything is allowed".to_owned()],
                rules: Vec::new(),
            });
            continue;
        }
        rs.notes
            .push(format!("{dir}: isolated by {}", policies.join(", ")));
        let side = Side::compile(model, graph, pod, dir);
        let field = match dir {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        };
        let mut rules = vec![
            rule(RuleKind::Established, None),
            rule(RuleKind::NeighbourDiscovery, None),
            rule(RuleKind::Invalid, None),
            rule(RuleKind::Loopback(hook), None),
        ];
        // Classes: distinct PortSets other than "all traffic", in PortSet order.
        let mut classes: BTreeMap<&PortSet, BTreeSet<&Source>> = BTreeMap::new();
        for seg in side.v4.iter().chain(&side.v6) {
            if !seg.ports.is_all() {
                classes.entry(&seg.ports).or_default().extend(&seg.sources);
            }
        }
        let class_names: BTreeMap<&PortSet, String> = classes
            .keys()
            .enumerate()
            .map(|(k, ps)| (*ps, format!("{dir}_class_{k}")))
            .collect();
        for (family, segs) in [(Family::V4, &side.v4), (Family::V6, &side.v6)] {
            let name = format!(
                "{dir}_{}",
                match family {
                    Family::V4 => "v4",
                    Family::V6 => "v6",
                }
            );
            let elements = segs
                .iter()
                .map(|s| MapElement {
                    first: family.addr(s.lo),
                    last: family.addr(s.hi),
                    prefix: interval::as_prefix(s.lo, s.hi, family),
                    verdict: match class_names.get(&s.ports) {
                        Some(c) => MapVerdict::Jump(c.clone()),
                        None => MapVerdict::Accept,
                    },
                    sources: s.sources.iter().cloned().collect(),
                })
                .collect();
            rules.push(rule(
                RuleKind::PeerMap {
                    family,
                    field,
                    map: name.clone(),
                },
                None,
            ));
            rs.maps.push(PeerMap {
                name,
                family,
                elements,
            });
        }
        rules.push(rule(
            RuleKind::LogDrop {
                group: opts.log_group,
                prefix: log_prefix(&ep.namespace, &ep.name, dir),
            },
            Some(comment(&format!("isolated by {}", policies.join(", ")))),
        ));
        rs.chains.push(Chain {
            name: dir.as_str().to_owned(),
            base: Some(BaseChain {
                hook,
                accept: false,
            }),
            notes: vec![format!("isolated by {}", policies.join(", "))],
            rules,
        });
        for (ports, sources) in &classes {
            let name = class_names.get(ports).cloned().unwrap_or_default();
            let set = format!("{name}_ports");
            let mut elements = Vec::new();
            for p in Protocol::ALL {
                for &(first, last) in ports.get(p).ranges() {
                    elements.push(PortElement {
                        protocol: p,
                        first,
                        last,
                    });
                }
            }
            rs.sets.push(PortsSet {
                name: set.clone(),
                elements,
            });
            let rules_of: BTreeSet<(&str, u32)> = sources
                .iter()
                .map(|s| (s.policy.as_str(), s.rule))
                .collect();
            let who: Vec<String> = rules_of
                .iter()
                .map(|(p, r)| format!("{p} rule {r}"))
                .collect();
            class_chains.push(Chain {
                name,
                base: None,
                notes: vec![ports.to_string()],
                rules: vec![rule(
                    RuleKind::Ports { set },
                    Some(comment(&who.join(", "))),
                )],
            });
        }
    }
    rs.chains.extend(class_chains);
    rs
}

fn rule(kind: RuleKind, comment: Option<String>) -> NftRule {
    NftRule { kind, comment }
}

/// Text safe inside nft double quotes, at most [`MAX_COMMENT`] bytes.
fn comment(s: &str) -> String {
    let clean = sanitize(s);
    truncate(&clean, MAX_COMMENT)
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    // ASCII only after sanitize; keep room for the ellipsis marker.
    let mut out: String = s.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// `netpol:<ns>/<name>:<dir> `, the name shortened to fit [`MAX_LOG_PREFIX`].
pub fn log_prefix(namespace: &str, name: &str, dir: Direction) -> String {
    let ns = sanitize(namespace);
    let name = sanitize(name);
    let fixed = "netpol:".len() + ns.len() + 1 + 1 + dir.as_str().len() + 1;
    let room = MAX_LOG_PREFIX.saturating_sub(fixed);
    let name = if name.len() > room {
        name.chars().take(room).collect()
    } else {
        name
    };
    let s = format!("netpol:{ns}/{name}:{dir} ");
    s.chars().take(MAX_LOG_PREFIX).collect()
}

/// The resolved peers of one direction of one Pod.
struct Side {
    v4: Vec<Segment<Source>>,
    v6: Vec<Segment<Source>>,
}

fn has_named_ports(rule: &Rule) -> bool {
    rule.ports
        .iter()
        .flatten()
        .any(|p| matches!(p.port, PortMatch::Named(_)))
}

impl Side {
    fn compile(model: &Model, graph: &AllowGraph, pod: EndpointId, dir: Direction) -> Side {
        let me = model.endpoint(pod);
        let mut v4: Vec<Contribution<Source>> = Vec::new();
        let mut v6: Vec<Contribution<Source>> = Vec::new();
        let mut push = |lo: u128, hi: u128, family: Family, ports: PortSet, source: &Source| {
            let c = Contribution {
                lo,
                hi,
                ports,
                source: source.clone(),
            };
            match family {
                Family::V4 => v4.push(c),
                Family::V6 => v6.push(c),
            }
        };
        let all_v4: ipnet::IpNet = ipnet::IpNet::V4(ipnet::Ipv4Net::default());
        let all_v6: ipnet::IpNet = ipnet::IpNet::V6(ipnet::Ipv6Net::default());
        for (set, prov) in graph.edges(pod, dir) {
            let rule = rule_of(model, &prov);
            let source = Source {
                policy: model.policy(prov.policy).key(),
                rule: prov.rule,
                peer: prov.peer,
            };
            let named = has_named_ports(rule);
            match (graph.peer_set(set), dir) {
                (PeerSet::Endpoints(members), _) => {
                    let own = rule_ports(rule, Some(me));
                    for id in members {
                        let e = model.endpoint(*id);
                        let ports = match dir {
                            Direction::Ingress => own.clone(),
                            Direction::Egress => rule_ports(rule, Some(e)),
                        };
                        for ip in &e.ips {
                            let v = interval::to_int(ip);
                            push(v, v, Family::of(ip), ports.clone(), &source);
                        }
                    }
                }
                (block_or_all, _) => {
                    let (nets, except): (Vec<&ipnet::IpNet>, &[ipnet::IpNet]) = match block_or_all {
                        PeerSet::Block(b) => (vec![&b.cidr], &b.except),
                        _ => (vec![&all_v4, &all_v6], &[]),
                    };
                    let ports = match dir {
                        Direction::Ingress => rule_ports(rule, Some(me)),
                        Direction::Egress => rule_ports(rule, None),
                    };
                    for net in &nets {
                        let family = Family::of(&net.addr());
                        for (lo, hi) in interval::subtract(net, except) {
                            push(lo, hi, family, ports.clone(), &source);
                        }
                    }
                    // Egress named ports resolve per destination Pod: each Pod IP in the
                    // block gets its own ports on top of the block's.
                    if dir == Direction::Egress && named {
                        for e in &model.endpoints {
                            for ip in &e.ips {
                                let inside = match block_or_all {
                                    PeerSet::Block(b) => b.contains(ip),
                                    _ => true,
                                };
                                if inside {
                                    let v = interval::to_int(ip);
                                    push(v, v, Family::of(ip), rule_ports(rule, Some(e)), &source);
                                }
                            }
                        }
                    }
                }
            }
        }
        Side {
            v4: interval::disjoint(&v4, Family::V4.max()),
            v6: interval::disjoint(&v6, Family::V6.max()),
        }
    }
}

#[cfg(test)]
mod tests;
