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
//! ClusterNetworkPolicies keep their tier order (`ruleset/stages.rs`): a direction a CNP
//! with rules for it applies to gets `jump <dir>_admin` before the peer lookup, and, when
//! no NetworkPolicy isolates it, `jump <dir>_baseline` after (then `policy accept`); Pass
//! is `return`.
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

mod audit;
pub mod interval;
mod render;
mod split;
mod stages;

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use crate::graph::AllowGraph;
use crate::model::{Direction, Endpoint, EndpointId, EndpointKind, Model, Tier};
use crate::ports::Protocol;

pub use audit::{
    AUDIT_LOG_TAG, AUDIT_PREFIX, AUDIT_PRIORITY, compile_node_with_audit, compile_pod_with_audit,
};
pub use interval::Family;
pub use split::{
    LookupProvider, PeerClassifier, PeerLookup, PodSplit, compile_pod_split, sweep_every_time,
};

use stages::{StageContext, Staged};

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
    /// Addresses of the Pod's node known at runtime (the agent passes the addresses of
    /// the node's own network namespace), added to those the model knows
    /// ([`Model::node_addresses`]). They fill the `node_v4`/`node_v6` sets an isolated
    /// ingress chain accepts, and the node-address entries (on node ports) of `svc_v4`/
    /// `svc_v6`.
    pub node_addresses: Vec<IpAddr>,
    /// Whether an isolated egress chain lets Service addresses out (`svc_v4`/`svc_v6`) to
    /// be judged after DNAT by the node table ([`compile_node`]). Sound only where a node
    /// table is loaded: without one (`netpol agent --no-node-table`) it must be `false`,
    /// so a Service address is judged like any other destination, before DNAT (fail
    /// closed; never wider). Default `true`, the layout the agent loads on a node.
    pub defer_services: bool,
}

impl Default for RulesetOptions {
    fn default() -> Self {
        Self {
            log_group: 100,
            node_addresses: Vec::new(),
            defer_services: true,
        }
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
    /// `input`: traffic into the Pod (ingress); in the node table, traffic to the node.
    Input,
    /// `output`: traffic out of the Pod (egress).
    Output,
    /// `forward`: the node table's hook for traffic routed through the node.
    Forward,
}

impl Hook {
    /// `input` / `output` / `forward`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Input => "input",
            Hook::Output => "output",
            Hook::Forward => "forward",
        }
    }
}

/// A base chain's hook and policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    /// Hook.
    pub hook: Hook,
    /// Default verdict: `accept` when not isolated, `drop` when isolated.
    pub accept: bool,
    /// Priority relative to `filter`: 0, or [`AUDIT_PRIORITY`] for an audit chain (it
    /// runs after the enforced chain of its hook).
    pub priority: i32,
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

/// One element of a peer map as the kernel holds it: the map, the address range and
/// the verdict. Provenance ([`MapElement::sources`]) is review text, not kernel state,
/// so it is not part of an entry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerEntry {
    /// The map (`ingress_v4`, ...).
    pub map: String,
    /// Address family of the map.
    pub family: Family,
    /// First address.
    pub first: IpAddr,
    /// Last address.
    pub last: IpAddr,
    /// Verdict.
    pub verdict: MapVerdict,
}

impl fmt::Display for PeerEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}-{} : ", self.map, self.first, self.last)?;
        match &self.verdict {
            MapVerdict::Accept => f.write_str("accept"),
            MapVerdict::Jump(c) => write!(f, "jump {c}"),
        }
    }
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

impl PeerMap {
    /// Its elements as the kernel holds them, in address order.
    pub fn peer_entries(&self) -> impl Iterator<Item = PeerEntry> + '_ {
        self.elements.iter().map(|e| PeerEntry {
            map: self.name.clone(),
            family: self.family,
            first: e.first,
            last: e.last,
            verdict: e.verdict.clone(),
        })
    }

    /// Its `elements = { … }` block of the `nft -f` text (empty without elements), for
    /// [`Ruleset::to_nft_with`].
    pub fn elements_nft(&self) -> String {
        let mut s = String::new();
        render::elements(&mut s, self);
        s
    }
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

/// A named set of addresses (`type ipv4_addr` / `ipv6_addr`): the node's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrSet {
    /// Set name (`node_v4`, `node_v6`).
    pub name: String,
    /// Address family.
    pub family: Family,
    /// Addresses, sorted, deduplicated.
    pub elements: Vec<IpAddr>,
}

/// One element of a Service set: address, protocol, port, and the Service it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceElement {
    /// A Service address (cluster IP, external IP, load-balancer IP) or a node address.
    pub addr: IpAddr,
    /// Protocol of the Service port.
    pub protocol: Protocol,
    /// The Service port (or the node port, with a node address).
    pub port: u16,
    /// `ns/name` of the Service (rendered as a `#` note).
    pub service: String,
}

/// A named set of type `ipv4_addr . inet_proto . inet_service` (or `ipv6_addr . …`):
/// destinations that kube-proxy rewrites, judged after DNAT by the node table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSet {
    /// Set name (`svc_v4`, `svc_v6`).
    pub name: String,
    /// Address family.
    pub family: Family,
    /// Elements sorted by address, protocol, port; one per triple.
    pub elements: Vec<ServiceElement>,
}

/// What a ClusterNetworkPolicy rule does to a packet it matches.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TierVerdict {
    /// `Accept`: `accept` (final for the hook).
    Accept,
    /// `Pass`: `return` to the judging chain, which goes on with the next stage.
    Pass,
    /// `Deny`: `counter log group N prefix "…" drop`; the prefix names the rule
    /// ([`cluster_log_prefix`]).
    Drop {
        /// nflog group.
        group: u16,
        /// Log prefix (at most [`MAX_LOG_PREFIX`] bytes).
        prefix: String,
    },
    /// An audit chain's Deny: `counter log group N prefix "netpol-audit:…" accept`
    /// (would drop; see [`compile_pod_with_audit`]).
    LogAccept {
        /// nflog group.
        group: u16,
        /// Log prefix (at most [`MAX_LOG_PREFIX`] bytes).
        prefix: String,
    },
}

/// One element of a [`TierSet`]: an inclusive address range, with a protocol and port
/// range in a set with ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierElement {
    /// First address.
    pub first: IpAddr,
    /// Last address.
    pub last: IpAddr,
    /// The CIDR prefix length when the range is exactly one block.
    pub prefix: Option<u8>,
    /// Protocol and port range (`Some` exactly in a set with ports).
    pub ports: Option<PortElement>,
}

/// The peers of one ClusterNetworkPolicy rule in one family: a set of type
/// `ipv4_addr` (every port of every protocol) or `ipv4_addr . inet_proto . inet_service`
/// (with ports), `flags interval`. Addresses are disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierSet {
    /// Set name (`<stage>_<i>_v4`, `<stage>_<i>_v4_ports`).
    pub name: String,
    /// Address family.
    pub family: Family,
    /// Whether elements carry protocol and ports.
    pub with_ports: bool,
    /// Elements sorted by address, then protocol and port.
    pub elements: Vec<TierElement>,
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
    /// `ip saddr @node_v4 accept` (and friends): an address set.
    AddrSetAccept {
        /// Family of the address match.
        family: Family,
        /// Source or destination address.
        field: AddrField,
        /// The [`AddrSet`].
        set: String,
    },
    /// `ip daddr . meta l4proto . th dport @svc_v4 accept`: a [`ServiceSet`].
    ServiceAccept {
        /// Family of the address match.
        family: Family,
        /// The set.
        set: String,
    },
    /// `jump <chain>`: enter a stage chain (it returns unless a rule decides).
    Jump {
        /// The chain.
        chain: String,
    },
    /// A ClusterNetworkPolicy rule: `ip saddr @set <verdict>` or
    /// `ip saddr . meta l4proto . th dport @set <verdict>` (a [`TierSet`]).
    Tier {
        /// Family of the address match.
        family: Family,
        /// Source (ingress) or destination (egress) address.
        field: AddrField,
        /// The [`TierSet`].
        set: String,
        /// Whether the set has protocol and port.
        ports: bool,
        /// What a match does.
        verdict: TierVerdict,
    },
    /// `counter log group N prefix "…" drop`.
    LogDrop {
        /// nflog group.
        group: u16,
        /// Log prefix (at most [`MAX_LOG_PREFIX`] bytes).
        prefix: String,
    },
    /// `counter log group N prefix "netpol-audit:…" accept`: an audit chain's would-be
    /// drop ([`compile_pod_with_audit`]).
    LogAccept {
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
    /// Address sets (the node's addresses); empty without node addresses.
    pub addr_sets: Vec<AddrSet>,
    /// Service sets; empty without Services.
    pub service_sets: Vec<ServiceSet>,
    /// ClusterNetworkPolicy rule sets; empty without ClusterNetworkPolicies.
    pub tier_sets: Vec<TierSet>,
    /// Chains: `ingress`, `egress`, then the class chains.
    pub chains: Vec<Chain>,
}

impl Ruleset {
    /// Counts of chains, rules, sets, maps and their elements.
    pub fn stats(&self) -> RulesetStats {
        RulesetStats {
            chains: self.chains.len(),
            rules: self.chains.iter().map(|c| c.rules.len()).sum(),
            sets: self.sets.len()
                + self.addr_sets.len()
                + self.service_sets.len()
                + self.tier_sets.len(),
            set_elements: self.sets.iter().map(|s| s.elements.len()).sum::<usize>()
                + self
                    .addr_sets
                    .iter()
                    .map(|s| s.elements.len())
                    .sum::<usize>()
                + self
                    .service_sets
                    .iter()
                    .map(|s| s.elements.len())
                    .sum::<usize>()
                + self
                    .tier_sets
                    .iter()
                    .map(|s| s.elements.len())
                    .sum::<usize>(),
            maps: self.maps.len(),
            map_elements: self.maps.iter().map(|m| m.elements.len()).sum(),
        }
    }

    /// The `nft -f` text: replaces the table in one transaction, whether or not it exists.
    pub fn to_nft(&self) -> String {
        render::nft(self)
    }

    /// [`Ruleset::to_nft`] with the elements of map `i` written as `elements[i]` (a
    /// [`PeerMap::elements_nft`] block) where given: a skeleton's text filled with
    /// shared element blocks equals the whole table's text without rendering its
    /// elements again. See: #12
    pub fn to_nft_with(&self, elements: &[&str]) -> String {
        render::nft_with(self, elements)
    }

    /// The ruleset without the elements of its peer maps: chains, rules, port, node and
    /// Service sets, and the maps declared empty. Peers appearing, leaving or changing
    /// address change only [`Ruleset::peer_entries`]; anything else changes the
    /// skeleton. An agent replaces the whole table when the skeleton changes and
    /// otherwise adds and deletes map elements (see docs/ruleset.md).
    pub fn skeleton(&self) -> Ruleset {
        let mut rs = self.clone();
        for m in &mut rs.maps {
            m.elements.clear();
        }
        rs
    }

    /// The elements of the peer maps, in map order then address order (disjoint per
    /// map): what [`Ruleset::skeleton`] leaves out.
    pub fn peer_entries(&self) -> Vec<PeerEntry> {
        self.maps.iter().flat_map(PeerMap::peer_entries).collect()
    }

    /// Evaluates the ruleset in software for a new connection of the Pod with `peer`
    /// (the source for ingress, the destination for egress), as the kernel would,
    /// ignoring loopback and conntrack. For tests and `explain`-style checks.
    pub fn simulate(&self, dir: Direction, peer: IpAddr, protocol: Protocol, port: u16) -> bool {
        let Some(base) = self.chains.iter().find(|c| c.name == dir.as_str()) else {
            return true;
        };
        let pkt = Packet::new_connection(dir, peer, protocol, port);
        self.eval(base, &pkt, 0).unwrap_or(true)
    }

    /// The audited verdict of a new connection, as [`Ruleset::simulate`] judges the
    /// enforced one, read from the audit chains (`audit_ingress` / `audit_egress`): `true`
    /// when they would let it pass, `false` when they log it as would drop; `None` when
    /// the table has no audit chains ([`compile_pod_with_audit`]).
    pub fn simulate_audit(
        &self,
        dir: Direction,
        peer: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<bool> {
        let name = format!("{AUDIT_PREFIX}{}", dir.as_str());
        let base = self.chains.iter().find(|c| c.name == name)?;
        let pkt = Packet::new_connection(dir, peer, protocol, port);
        Some(self.eval(base, &pkt, 0).unwrap_or(true))
    }

    /// Evaluates a node table ([`compile_node`]) for a new flow `src -> dst` after DNAT
    /// (`dst` is the backend), as its `forward` chain would.
    /// Every base chain on hook `forward` sees the packet (an accept ends only its own
    /// chain), so the flow passes when none of them drops it.
    /// Audit chains ([`compile_node_with_audit`]) only log: they are not evaluated here
    /// (see [`Ruleset::simulate_node_audit`]).
    pub fn simulate_node(&self, src: IpAddr, dst: IpAddr, protocol: Protocol, port: u16) -> bool {
        self.forward_verdict(false, src, dst, protocol, port)
            .unwrap_or(true)
    }

    /// The audited verdict of a node table for a flow after DNAT, as
    /// [`Ruleset::simulate_node`] judges the enforced one, read from its audit chains on
    /// hook `forward` (`audit_forward`, `audit_hairpin`): `true` when they let it pass,
    /// `false` when they log it as would drop; `None` when the table has no audit chains.
    pub fn simulate_node_audit(
        &self,
        src: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<bool> {
        self.forward_verdict(true, src, dst, protocol, port)
    }

    /// Whether every base chain on hook `forward` (the audit ones when `audit`, else the
    /// others) lets the flow pass; `None` when there is no such chain.
    fn forward_verdict(
        &self,
        audit: bool,
        src: IpAddr,
        dst: IpAddr,
        protocol: Protocol,
        port: u16,
    ) -> Option<bool> {
        let pkt = Packet {
            saddr: Some(src),
            daddr: Some(dst),
            protocol,
            port,
        };
        let mut bases = self
            .chains
            .iter()
            .filter(|c| {
                c.base.is_some_and(|b| {
                    b.hook == Hook::Forward && (b.priority == AUDIT_PRIORITY) == audit
                })
            })
            .peekable();
        bases.peek()?;
        Some(bases.all(|base| self.eval(base, &pkt, 0).unwrap_or(true)))
    }

    /// `Some(verdict)` when the chain decides, `None` when it returns (non-base chains).
    fn eval(&self, chain: &Chain, pkt: &Packet, depth: u8) -> Option<bool> {
        // Chains only jump downwards (base -> pod -> class); the bound guards the IR.
        if depth > 4 {
            return None;
        }
        let addr = |field: &AddrField| match field {
            AddrField::Saddr => pkt.saddr,
            AddrField::Daddr => pkt.daddr,
        };
        for r in &chain.rules {
            match &r.kind {
                RuleKind::PeerMap { family, field, map } => {
                    let Some(a) = addr(field).filter(|a| Family::of(a) == *family) else {
                        continue;
                    };
                    let Some(m) = self.maps.iter().find(|m| &m.name == map) else {
                        continue;
                    };
                    let v = interval::to_int(&a);
                    let hit = m.elements.iter().find(|e| {
                        interval::to_int(&e.first) <= v && v <= interval::to_int(&e.last)
                    });
                    match hit.map(|e| &e.verdict) {
                        Some(MapVerdict::Accept) => return Some(true),
                        Some(MapVerdict::Jump(c)) => {
                            if let Some(target) = self.chains.iter().find(|ch| &ch.name == c)
                                && let Some(v) = self.eval(target, pkt, depth + 1)
                            {
                                return Some(v);
                            }
                        }
                        None => {}
                    }
                }
                RuleKind::Ports { set } => {
                    let hit = self.sets.iter().any(|s| {
                        &s.name == set
                            && s.elements.iter().any(|e| {
                                e.protocol == pkt.protocol
                                    && e.first <= pkt.port
                                    && pkt.port <= e.last
                            })
                    });
                    if hit {
                        return Some(true);
                    }
                }
                RuleKind::AddrSetAccept { family, field, set } => {
                    let Some(a) = addr(field).filter(|a| Family::of(a) == *family) else {
                        continue;
                    };
                    if self
                        .addr_sets
                        .iter()
                        .any(|s| &s.name == set && s.elements.contains(&a))
                    {
                        return Some(true);
                    }
                }
                RuleKind::ServiceAccept { family, set } => {
                    let Some(a) = pkt.daddr.filter(|a| Family::of(a) == *family) else {
                        continue;
                    };
                    if self.service_sets.iter().any(|s| {
                        &s.name == set
                            && s.elements.iter().any(|e| {
                                e.addr == a && e.protocol == pkt.protocol && e.port == pkt.port
                            })
                    }) {
                        return Some(true);
                    }
                }
                RuleKind::Jump { chain: c } => {
                    if let Some(target) = self.chains.iter().find(|ch| &ch.name == c)
                        && let Some(v) = self.eval(target, pkt, depth + 1)
                    {
                        return Some(v);
                    }
                }
                RuleKind::Tier {
                    family,
                    field,
                    set,
                    ports,
                    verdict,
                } => {
                    let Some(a) = addr(field).filter(|a| Family::of(a) == *family) else {
                        continue;
                    };
                    let v = interval::to_int(&a);
                    let hit = self.tier_sets.iter().any(|s| {
                        &s.name == set
                            && s.with_ports == *ports
                            && s.elements.iter().any(|e| {
                                interval::to_int(&e.first) <= v
                                    && v <= interval::to_int(&e.last)
                                    && e.ports.is_none_or(|p| {
                                        p.protocol == pkt.protocol
                                            && p.first <= pkt.port
                                            && pkt.port <= p.last
                                    })
                            })
                    });
                    if hit {
                        return match verdict {
                            TierVerdict::Accept => Some(true),
                            // An audit chain's would-be drop counts as a drop in
                            // `simulate_audit`; enforced chains never hold one.
                            TierVerdict::Drop { .. } | TierVerdict::LogAccept { .. } => Some(false),
                            // `return`: back to the calling chain.
                            TierVerdict::Pass => None,
                        };
                    }
                }
                RuleKind::LogDrop { .. } | RuleKind::LogAccept { .. } => return Some(false),
                RuleKind::Established
                | RuleKind::NeighbourDiscovery
                | RuleKind::Invalid
                | RuleKind::Loopback(_) => {}
            }
        }
        chain.base.map(|b| b.accept)
    }
}

/// A new connection as the simulator sees it.
struct Packet {
    saddr: Option<IpAddr>,
    daddr: Option<IpAddr>,
    protocol: Protocol,
    port: u16,
}

impl Packet {
    /// A new connection with `peer` in direction `dir` of the table's Pod: from `peer`
    /// (ingress) or to it (egress).
    fn new_connection(dir: Direction, peer: IpAddr, protocol: Protocol, port: u16) -> Self {
        let (saddr, daddr) = match dir {
            Direction::Ingress => (Some(peer), None),
            Direction::Egress => (None, Some(peer)),
        };
        Packet {
            saddr,
            daddr,
            protocol,
            port,
        }
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

/// Name of the node table's base chain on hook `forward`.
pub const NODE_FORWARD_CHAIN: &str = "forward";

/// Name of the node table's base chain on hook `input`.
pub const NODE_INPUT_CHAIN: &str = "input";

/// Name of the node table's second base chain on hook `forward`: the ingress of a Pod
/// reaching itself through a Service (hairpin), judged before kube-proxy masquerades it.
/// A separate base chain, so that an `accept` of either lookup does not skip the other
/// (an accept ends only its own base chain; a drop is final).
pub const NODE_HAIRPIN_CHAIN: &str = "hairpin";

/// Compiles the ruleset of one endpoint (meant for Pods: workloads have no netns).
///
/// With node addresses (the model's for the Pod's node, plus
/// [`RulesetOptions::node_addresses`]) an isolated ingress chain accepts them first
/// (`ip saddr @node_v4 accept`): a Pod's own node may always connect. With Services, an
/// isolated egress chain lets Service-addressed flows through
/// (`ip daddr . meta l4proto . th dport @svc_v4 accept`): they are judged after DNAT by
/// the node table ([`compile_node`]). Without either, the table is what it always was.
///
/// When the model has audit policies ([`AllowGraph::audit`]) and they change this Pod's
/// table, the audit chains are added (`audit_ingress` / `audit_egress`; see
/// [`compile_pod_with_audit`] and docs/audit.md); otherwise the table is exactly the
/// enforced one.
pub fn compile_pod(
    model: &Model,
    graph: &AllowGraph,
    pod: EndpointId,
    opts: &RulesetOptions,
) -> Ruleset {
    compile_pod_with_audit(model, graph, graph.audit(), pod, opts)
}

/// The enforced table of one endpoint (no audit chains), its peer lookups from
/// `lookups` (see [`compile_pod_split`]).
fn compile_enforced(
    model: &Model,
    graph: &AllowGraph,
    pod: EndpointId,
    opts: &RulesetOptions,
    lookups: &LookupProvider<'_>,
) -> PodSplit {
    let ep = model.endpoint(pod);
    let key = ep.key();
    let mut rs = Ruleset {
        pod: key.clone(),
        notes: vec![format!("netpol ruleset for {key}")],
        maps: Vec::new(),
        sets: Vec::new(),
        addr_sets: Vec::new(),
        service_sets: Vec::new(),
        tier_sets: Vec::new(),
        chains: Vec::new(),
    };
    let node_addrs = pod_node_addresses(model, ep, opts);
    let mut class_chains = Vec::new();
    let mut split_lookups = Vec::new();
    let cx = StageContext {
        model,
        graph,
        log_group: opts.log_group,
        lookups,
    };
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
        let cluster = cluster_note(model, graph, pod, dir);
        if policies.is_empty() && cluster.is_none() {
            rs.notes.push(format!(
                "{dir}: not isolated (no NetworkPolicy with policyType {} selects it)",
                match dir {
                    Direction::Ingress => "Ingress",
                    Direction::Egress => "Egress",
                }
            ));
            rs.chains.push(Chain {
                name: dir.as_str().to_owned(),
                base: Some(BaseChain {
                    hook,
                    accept: true,
                    priority: 0,
                }),
                notes: vec!["not isolated: everything is allowed".to_owned()],
                rules: Vec::new(),
            });
            continue;
        }
        if policies.is_empty() {
            rs.notes.push(format!(
                "{dir}: not isolated by a NetworkPolicy: Baseline tier, then accept"
            ));
        } else {
            rs.notes
                .push(format!("{dir}: isolated by {}", policies.join(", ")));
        }
        if let Some(c) = &cluster {
            rs.notes.push(format!("{dir}: {c}"));
        }
        let mut rules = vec![
            rule(RuleKind::Established, None),
            rule(RuleKind::NeighbourDiscovery, None),
            rule(RuleKind::Invalid, None),
            rule(RuleKind::Loopback(hook), None),
        ];
        match dir {
            Direction::Ingress => {
                for set in node_sets(&node_addrs) {
                    rules.push(rule(
                        RuleKind::AddrSetAccept {
                            family: set.family,
                            field: AddrField::Saddr,
                            set: set.name.clone(),
                        },
                        Some(comment("the Pod's node may always connect")),
                    ));
                    rs.addr_sets.push(set);
                }
            }
            Direction::Egress if opts.defer_services => {
                for set in service_sets(model, &node_addrs) {
                    rules.push(rule(
                        RuleKind::ServiceAccept {
                            family: set.family,
                            set: set.name.clone(),
                        },
                        Some(comment(
                            "Service addresses: judged after DNAT by the node table",
                        )),
                    ));
                    rs.service_sets.push(set);
                }
            }
            // No node table: Service addresses are ordinary destinations. See: #10
            Direction::Egress => {}
        }
        let np_drop = rule(
            RuleKind::LogDrop {
                group: opts.log_group,
                prefix: log_prefix(&ep.namespace, &ep.name, dir),
            },
            Some(comment(&format!("isolated by {}", policies.join(", ")))),
        );
        let staged = Staged::compile(&cx, pod, dir, dir.as_str(), np_drop);
        rules.extend(staged.rules);
        if let Some(l) = staged.lookup {
            rs.maps.extend(l.empty_maps());
            split_lookups.push(l);
        }
        rs.sets.extend(staged.sets);
        rs.tier_sets.extend(staged.tier_sets);
        class_chains.extend(staged.chains);
        let mut notes = Vec::new();
        if !policies.is_empty() {
            notes.push(format!("isolated by {}", policies.join(", ")));
        }
        if let Some(c) = cluster {
            notes.push(c);
        }
        rs.chains.push(Chain {
            name: dir.as_str().to_owned(),
            base: Some(BaseChain {
                hook,
                accept: !staged.isolated,
                priority: 0,
            }),
            notes,
            rules,
        });
    }
    rs.chains.extend(class_chains);
    PodSplit {
        skeleton: rs,
        lookups: split_lookups,
    }
}

/// `ClusterNetworkPolicies: a, b` when some with rules for `dir` apply to `pod`.
fn cluster_note(
    model: &Model,
    graph: &AllowGraph,
    pod: EndpointId,
    dir: Direction,
) -> Option<String> {
    let names: Vec<String> = graph
        .cluster_subjects(pod)
        .iter()
        .map(|id| model.cluster_policy(*id))
        .filter(|p| !p.rules(dir).is_empty())
        .map(|p| format!("{} ({} {})", p.name, p.tier.as_str(), p.priority))
        .collect();
    (!names.is_empty()).then(|| format!("ClusterNetworkPolicies {}", names.join(", ")))
}

/// The addresses that count as `ep`'s node in its ruleset: the model's
/// ([`Model::node_addresses`]) plus the caller's. Sorted, deduplicated.
fn pod_node_addresses(model: &Model, ep: &Endpoint, opts: &RulesetOptions) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = ep
        .node
        .as_deref()
        .map(|n| model.node_addresses(n))
        .unwrap_or_default();
    v.extend(opts.node_addresses.iter().copied());
    v.sort_unstable();
    v.dedup();
    v
}

/// `node_v4` / `node_v6`, only the non-empty ones.
fn node_sets(addrs: &[IpAddr]) -> Vec<AddrSet> {
    [Family::V4, Family::V6]
        .into_iter()
        .map(|family| AddrSet {
            name: format!("node_{}", family_suffix(family)),
            family,
            elements: addrs
                .iter()
                .filter(|a| Family::of(a) == family)
                .copied()
                .collect(),
        })
        .filter(|s| !s.elements.is_empty())
        .collect()
}

fn family_suffix(f: Family) -> &'static str {
    match f {
        Family::V4 => "v4",
        Family::V6 => "v6",
    }
}

/// Every destination kube-proxy rewrites, as `svc_v4` / `svc_v6` (only the non-empty
/// ones): each proxied Service's addresses on its ports, and the node addresses on its
/// node ports. Headless and ExternalName Services are not proxied: connections to their
/// backends are direct and judged as such.
pub fn service_sets(model: &Model, node_addrs: &[IpAddr]) -> Vec<ServiceSet> {
    let mut elems: BTreeMap<(IpAddr, Protocol, u16), String> = BTreeMap::new();
    for svc in model.services.iter().filter(|s| s.proxied()) {
        let key = svc.key();
        for sp in &svc.ports {
            for a in svc.addresses() {
                elems
                    .entry((a, sp.protocol, sp.port))
                    .or_insert_with(|| key.clone());
            }
            if let Some(np) = sp.node_port {
                for a in node_addrs {
                    elems
                        .entry((*a, sp.protocol, np))
                        .or_insert_with(|| key.clone());
                }
            }
        }
    }
    [Family::V4, Family::V6]
        .into_iter()
        .map(|family| ServiceSet {
            name: format!("svc_{}", family_suffix(family)),
            family,
            elements: elems
                .iter()
                .filter(|((a, _, _), _)| Family::of(a) == family)
                .map(|((addr, protocol, port), service)| ServiceElement {
                    addr: *addr,
                    protocol: *protocol,
                    port: *port,
                    service: service.clone(),
                })
                .collect(),
        })
        .filter(|s| !s.elements.is_empty())
        .collect()
}

/// What the node table needs to know about its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeContext {
    /// The node's name (`spec.nodeName` of its Pods).
    pub node: String,
    /// Addresses of the node's own network namespace (informational in the node table:
    /// flows from them are never judged there).
    pub addresses: Vec<IpAddr>,
    /// The node's Pods whose egress the table judges (only the egress-isolated ones with
    /// IPs get a chain); see [`NodeContext::new`].
    pub pods: Vec<EndpointId>,
}

impl NodeContext {
    /// The context of node `node`: its Pods are the model's Pods (not workloads, not
    /// hostNetwork) whose `spec.nodeName` is `node`, sorted.
    pub fn new(model: &Model, node: &str, addresses: Vec<IpAddr>) -> NodeContext {
        let pods = model
            .endpoints
            .iter()
            .filter(|e| {
                e.kind == EndpointKind::Pod && e.selectable() && e.node.as_deref() == Some(node)
            })
            .map(|e| e.id)
            .collect();
        NodeContext {
            node: node.to_owned(),
            addresses,
            pods,
        }
    }
}

/// Compiles the node table: `table inet netpol` in the node's own network namespace,
/// judging every new flow from a local egress-isolated Pod on its destination after DNAT
/// (kube-proxy rewrites at prerouting/output, before this table's `forward`/`input` hooks
/// at priority filter, and masquerades only at postrouting, after it).
///
/// ```text
/// table inet netpol
///   map egress_src_v4 / _v6     Pod address -> jump egress_pod_<k>
///   chain forward (hook forward, policy accept) / chain input (hook input, policy accept)
///     ct state established,related accept
///     icmpv6 type { nd-* } accept
///     ip saddr vmap @egress_src_v4
///     ip6 saddr vmap @egress_src_v6
///   chain egress_pod_<k>          one per local egress-isolated Pod
///     ip daddr vmap @egress_pod_<k>_v4     the Pod's egress peers, as in its own table
///     ip6 daddr vmap @egress_pod_<k>_v6
///     counter log group N prefix "netpol:<ns>/<pod>:egress " drop
///   chain egress_pod_<k>_class_<j>  meta l4proto . th dport @egress_pod_<k>_class_<j>_ports accept
/// ```
///
/// Flows from anything else (non-isolated Pods, the node itself, other nodes) are
/// accepted: this table never judges the node's own traffic. There is no self exemption:
/// a Pod reaching itself through a Service (hairpin) is judged like any flow, on both
/// sides. Its egress in `forward`; its ingress in a second base chain on the same hook,
/// because kube-proxy masquerades hairpin flows (the Pod's own ingress chain sees the
/// node and admits it):
///
/// ```text
///   map hairpin_dst_v4 / _v6    Pod address -> jump hairpin_pod_<j>
///   chain hairpin (hook forward, policy accept)
///     ct state established,related accept
///     ip daddr vmap @hairpin_dst_v4
///     ip6 daddr vmap @hairpin_dst_v6
///   chain hairpin_pod_<j>         one per local ingress-isolated Pod
///     ip saddr vmap @hairpin_pod_<j>_v4    the Pod's own addresses -> jump ingress_pod_<j>
///   chain ingress_pod_<j>         the Pod's ingress peer lookup, as in its own table
///     ip saddr vmap @ingress_pod_<j>_v4 …
///     counter log group N prefix "netpol:<ns>/<pod>:ingress " drop
/// ```
///
/// When the model has audit policies ([`AllowGraph::audit`]) and they change the node
/// table, its audit chains are added (`audit_forward`, `audit_input`, `audit_hairpin`;
/// see [`compile_node_with_audit`] and docs/audit.md): a flow through a Service that an
/// audit policy would deny after DNAT is logged as would drop (audit), never dropped.
pub fn compile_node(
    model: &Model,
    graph: &AllowGraph,
    ctx: &NodeContext,
    opts: &RulesetOptions,
) -> Ruleset {
    compile_node_with_audit(model, graph, graph.audit(), ctx, opts)
}

/// The enforced node table (no audit chains).
fn compile_node_enforced(
    model: &Model,
    graph: &AllowGraph,
    ctx: &NodeContext,
    opts: &RulesetOptions,
) -> Ruleset {
    let mut rs = Ruleset {
        pod: format!("node/{}", ctx.node),
        notes: vec![format!(
            "netpol node table for node {}: egress of its Pods after DNAT",
            ctx.node
        )],
        maps: Vec::new(),
        sets: Vec::new(),
        addr_sets: Vec::new(),
        service_sets: Vec::new(),
        tier_sets: Vec::new(),
        chains: Vec::new(),
    };
    if !ctx.addresses.is_empty() {
        let a: Vec<String> = ctx.addresses.iter().map(ToString::to_string).collect();
        rs.notes.push(format!(
            "node addresses (never judged here): {}",
            a.join(", ")
        ));
    }
    let mut pods: Vec<EndpointId> = ctx.pods.clone();
    pods.sort_unstable();
    pods.dedup();
    let mut src_v4 = Vec::new();
    let mut src_v6 = Vec::new();
    let mut pod_chains = Vec::new();
    let mut class_chains = Vec::new();
    let mut k = 0usize;
    let sweep = sweep_every_time(model, graph);
    let cx = StageContext {
        model,
        graph,
        log_group: opts.log_group,
        lookups: &sweep,
    };
    for id in pods {
        let ep = model.endpoint(id);
        let policies: Vec<String> = graph
            .isolation(id)
            .by(Direction::Egress)
            .iter()
            .map(|p| model.policy(*p).key())
            .collect();
        let cluster = cluster_note(model, graph, id, Direction::Egress);
        if policies.is_empty() && cluster.is_none() || !ep.selectable() {
            continue;
        }
        if ep.ips.is_empty() {
            rs.notes
                .push(format!("{}: egress-isolated but has no IP yet", ep.key()));
            continue;
        }
        let chain = format!("egress_pod_{k}");
        k += 1;
        let why = judged_by(&policies, cluster.as_deref());
        rs.notes.push(format!("{chain}: {} egress {why}", ep.key()));
        for ip in &ep.ips {
            let v = interval::to_int(ip);
            let family = Family::of(ip);
            let el = MapElement {
                first: *ip,
                last: *ip,
                prefix: interval::as_prefix(v, v, family),
                verdict: MapVerdict::Jump(chain.clone()),
                sources: Vec::new(),
            };
            match family {
                Family::V4 => src_v4.push((el, ep.key())),
                Family::V6 => src_v6.push((el, ep.key())),
            }
        }
        let np_drop = rule(
            RuleKind::LogDrop {
                group: opts.log_group,
                prefix: log_prefix(&ep.namespace, &ep.name, Direction::Egress),
            },
            Some(comment(&format!("isolated by {}", policies.join(", ")))),
        );
        let staged = Staged::compile(&cx, id, Direction::Egress, &chain, np_drop);
        rs.maps
            .extend(staged.lookup.map(split::filled_maps).unwrap_or_default());
        rs.sets.extend(staged.sets);
        rs.tier_sets.extend(staged.tier_sets);
        class_chains.extend(staged.chains);
        pod_chains.push(Chain {
            name: chain,
            base: None,
            notes: vec![format!("{} egress, {why}", ep.key())],
            rules: staged.rules,
        });
    }
    let mut src_maps = Vec::new();
    for (family, mut elems) in [(Family::V4, src_v4), (Family::V6, src_v6)] {
        // Stable sort: two Pods with one address (the model warned), the first by key
        // keeps it.
        elems.sort_by_key(|(e, _)| interval::to_int(&e.first));
        elems.dedup_by_key(|(e, _)| interval::to_int(&e.first));
        src_maps.push(PeerMap {
            name: format!("egress_src_{}", family_suffix(family)),
            family,
            elements: elems.into_iter().map(|(e, _)| e).collect(),
        });
    }
    // Hairpin: a Pod through a Service to itself. kube-proxy masquerades such a flow at
    // postrouting, so the Pod's own ingress chain sees the node as the source and would
    // admit it; its ingress is judged here instead, before masquerade. See: #10
    let hairpin = HairpinLookup::compile(model, graph, &ctx.pods, opts);
    rs.notes.extend(hairpin.notes);
    let mut maps = src_maps;
    maps.extend(hairpin.dst_maps);
    maps.append(&mut rs.maps);
    maps.extend(hairpin.maps);
    rs.maps = maps;
    rs.sets.extend(hairpin.sets);
    rs.tier_sets.extend(hairpin.tier_sets);
    for (name, hook) in [
        (NODE_FORWARD_CHAIN, Hook::Forward),
        (NODE_INPUT_CHAIN, Hook::Input),
    ] {
        rs.chains.push(Chain {
            name: name.to_owned(),
            base: Some(BaseChain {
                hook,
                accept: true,
                priority: 0,
            }),
            notes: vec![
                "new flows from local egress-isolated Pods, after DNAT; everything else passes"
                    .to_owned(),
            ],
            rules: vec![
                rule(RuleKind::Established, None),
                rule(RuleKind::NeighbourDiscovery, None),
                rule(
                    RuleKind::PeerMap {
                        family: Family::V4,
                        field: AddrField::Saddr,
                        map: "egress_src_v4".to_owned(),
                    },
                    None,
                ),
                rule(
                    RuleKind::PeerMap {
                        family: Family::V6,
                        field: AddrField::Saddr,
                        map: "egress_src_v6".to_owned(),
                    },
                    None,
                ),
            ],
        });
    }
    rs.chains.push(Chain {
        name: NODE_HAIRPIN_CHAIN.to_owned(),
        base: Some(BaseChain {
            hook: Hook::Forward,
            accept: true,
            priority: 0,
        }),
        notes: vec![
            "new flows from a local ingress-isolated Pod to itself through a Service (hairpin), \
             after DNAT and before masquerade: the Pod's ingress; everything else passes"
                .to_owned(),
        ],
        rules: vec![
            rule(RuleKind::Established, None),
            rule(
                RuleKind::PeerMap {
                    family: Family::V4,
                    field: AddrField::Daddr,
                    map: "hairpin_dst_v4".to_owned(),
                },
                None,
            ),
            rule(
                RuleKind::PeerMap {
                    family: Family::V6,
                    field: AddrField::Daddr,
                    map: "hairpin_dst_v6".to_owned(),
                },
                None,
            ),
        ],
    });
    rs.chains.extend(pod_chains);
    rs.chains.extend(class_chains);
    rs.chains.extend(hairpin.chains);
    rs
}

/// The hairpin part of the node table: for every local ingress-isolated Pod `k` with
/// IPs, `hairpin_dst_v4/_v6` send flows to its addresses to `hairpin_pod_<k>`, whose maps
/// `hairpin_pod_<k>_v4/_v6` (the Pod's own addresses) send flows FROM the Pod itself to
/// `ingress_pod_<k>`: the Pod's ingress peer lookup, exactly as in its Pod table, and a
/// logging drop. Any other source falls off the end of `hairpin_pod_<k>` (return).
struct HairpinLookup {
    dst_maps: Vec<PeerMap>,
    maps: Vec<PeerMap>,
    sets: Vec<PortsSet>,
    tier_sets: Vec<TierSet>,
    chains: Vec<Chain>,
    notes: Vec<String>,
}

impl HairpinLookup {
    fn compile(
        model: &Model,
        graph: &AllowGraph,
        pods: &[EndpointId],
        opts: &RulesetOptions,
    ) -> HairpinLookup {
        let mut pods: Vec<EndpointId> = pods.to_vec();
        pods.sort_unstable();
        pods.dedup();
        let mut out = HairpinLookup {
            dst_maps: Vec::new(),
            maps: Vec::new(),
            sets: Vec::new(),
            tier_sets: Vec::new(),
            chains: Vec::new(),
            notes: Vec::new(),
        };
        let sweep = sweep_every_time(model, graph);
        let cx = StageContext {
            model,
            graph,
            log_group: opts.log_group,
            lookups: &sweep,
        };
        let mut dst: [Vec<MapElement>; 2] = [Vec::new(), Vec::new()];
        let mut pod_chains = Vec::new();
        let mut lookups = Vec::new();
        let mut k = 0usize;
        for id in pods {
            let ep = model.endpoint(id);
            let policies: Vec<String> = graph
                .isolation(id)
                .by(Direction::Ingress)
                .iter()
                .map(|p| model.policy(*p).key())
                .collect();
            let cluster = cluster_note(model, graph, id, Direction::Ingress);
            if policies.is_empty() && cluster.is_none() || !ep.selectable() || ep.ips.is_empty() {
                continue;
            }
            let hairpin = format!("hairpin_pod_{k}");
            let ingress = format!("ingress_pod_{k}");
            k += 1;
            let why = judged_by(&policies, cluster.as_deref());
            out.notes.push(format!(
                "{ingress}: {} ingress through its own Service (hairpin), {why}",
                ep.key(),
            ));
            let element = |ip: &IpAddr, chain: &str| {
                let v = interval::to_int(ip);
                MapElement {
                    first: *ip,
                    last: *ip,
                    prefix: interval::as_prefix(v, v, Family::of(ip)),
                    verdict: MapVerdict::Jump(chain.to_owned()),
                    sources: Vec::new(),
                }
            };
            let mut rules = Vec::new();
            for family in [Family::V4, Family::V6] {
                let own: Vec<MapElement> = ep
                    .ips
                    .iter()
                    .filter(|ip| Family::of(ip) == family)
                    .map(|ip| element(ip, &ingress))
                    .collect();
                if own.is_empty() {
                    continue;
                }
                let name = format!("{hairpin}_{}", family_suffix(family));
                rules.push(rule(
                    RuleKind::PeerMap {
                        family,
                        field: AddrField::Saddr,
                        map: name.clone(),
                    },
                    Some(comment("from the Pod itself")),
                ));
                let slot = match family {
                    Family::V4 => 0,
                    Family::V6 => 1,
                };
                dst[slot].extend(own.iter().map(|e| MapElement {
                    verdict: MapVerdict::Jump(hairpin.clone()),
                    ..e.clone()
                }));
                out.maps.push(PeerMap {
                    name,
                    family,
                    elements: own,
                });
            }
            pod_chains.push(Chain {
                name: hairpin,
                base: None,
                notes: vec![format!("{} to itself through a Service", ep.key())],
                rules,
            });
            let np_drop = rule(
                RuleKind::LogDrop {
                    group: opts.log_group,
                    prefix: log_prefix(&ep.namespace, &ep.name, Direction::Ingress),
                },
                Some(comment(&format!(
                    "hairpin, isolated by {}",
                    policies.join(", ")
                ))),
            );
            let staged = Staged::compile(&cx, id, Direction::Ingress, &ingress, np_drop);
            out.maps
                .extend(staged.lookup.map(split::filled_maps).unwrap_or_default());
            out.sets.extend(staged.sets);
            out.tier_sets.extend(staged.tier_sets);
            lookups.push(Chain {
                name: ingress,
                base: None,
                notes: vec![format!("{} ingress (hairpin), {why}", ep.key())],
                rules: staged.rules,
            });
            out.chains.extend(staged.chains);
        }
        for (family, mut elems) in [(Family::V4, 0usize), (Family::V6, 1)]
            .map(|(f, slot)| (f, std::mem::take(&mut dst[slot])))
        {
            // Two Pods with one address (the model warned): the first by id keeps it.
            elems.sort_by_key(|e| interval::to_int(&e.first));
            elems.dedup_by_key(|e| interval::to_int(&e.first));
            out.dst_maps.push(PeerMap {
                name: format!("hairpin_dst_{}", family_suffix(family)),
                family,
                elements: elems,
            });
        }
        let classes = std::mem::take(&mut out.chains);
        out.chains = pod_chains;
        out.chains.extend(lookups);
        out.chains.extend(classes);
        out
    }
}

/// `ns/a, ns/b` (NetworkPolicies isolating), ClusterNetworkPolicies, or both.
fn judged_by(policies: &[String], cluster: Option<&str>) -> String {
    let mut parts = Vec::new();
    if !policies.is_empty() {
        parts.push(format!("isolated by {}", policies.join(", ")));
    }
    parts.extend(cluster.map(str::to_owned));
    parts.join("; ")
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

/// `netpol:<ns>/<name>:<dir>:<a|b><policy>.<rule> `: the log prefix of a
/// ClusterNetworkPolicy Deny rule; `a` Admin, `b` Baseline, `<policy>` the index in
/// [`Model::cluster_policies`] and `<rule>` the rule's index in its direction (the drop
/// reporter maps them back through the same model). The name is shortened to fit.
pub fn cluster_log_prefix(
    namespace: &str,
    name: &str,
    dir: Direction,
    tier: Tier,
    policy: u32,
    rule: usize,
) -> String {
    let t = match tier {
        Tier::Admin => 'a',
        Tier::Baseline => 'b',
    };
    let suffix = format!(":{t}{policy}.{rule}");
    let ns = sanitize(namespace);
    let name = sanitize(name);
    let fixed = "netpol:".len() + ns.len() + 1 + 1 + dir.as_str().len() + suffix.len() + 1;
    let room = MAX_LOG_PREFIX.saturating_sub(fixed);
    let name: String = name.chars().take(room).collect();
    let s = format!("netpol:{ns}/{name}:{dir}{suffix} ");
    s.chars().take(MAX_LOG_PREFIX).collect()
}

#[cfg(test)]
mod tests;
