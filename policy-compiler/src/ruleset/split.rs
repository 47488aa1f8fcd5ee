//! A Pod's table split into its structure and its peer lookups (issue #12).
//!
//! The NetworkPolicy peer lookup of one direction of one Pod (its peer maps, their rules,
//! class chains and port sets: [`PeerLookup`]) is a function of a [`PeerClassifier`] and
//! of the members of the peer sets the classifier names: [`PeerClassifier::sweep`]. The
//! classifier holds everything else the lookup reads: the map prefix, the Pod's edges
//! in graph order (peer set, policy, rule, peer) and, at ingress, each rule's ports
//! resolved against the Pod. It does not hold the Pod's name: Pods selected alike by the
//! same rules have equal classifiers, so one sweep serves all of them (an agent with
//! 110 alike Pods sweeps once per event, not 110 times).
//!
//! [`compile_pod_split`] renders a Pod's table with its lookups taken from a caller's
//! provider (a memo, in the agent) and returns it as a [`PodSplit`]: the skeleton (the
//! table with its peer maps declared empty, which still carries the class chains and
//! port sets a sweep found) and the lookups whose maps fill it. [`super::compile_pod`] is
//! this same code with a provider that sweeps every time, so there is one definition:
//! `compile_pod_split(.., sweep).ruleset() == compile_pod(..)`, and the tests check it on
//! every golden case and on generated clusters.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::graph::{AllowGraph, PeerSet, PeerSetId, Provenance, rule_of, rule_ports};
use crate::model::{Direction, Endpoint, EndpointId, Model, PortMatch, Rule};
use crate::ports::{PortSet, Protocol};

use super::interval::{self, Contribution, Family, Segment};
use super::{
    AddrField, Chain, MapElement, MapVerdict, NftRule, PeerMap, PortElement, PortsSet, RuleKind,
    Ruleset, RulesetOptions, Source, comment, family_suffix, rule,
};

/// What the peer lookup of one direction of one Pod reads besides the members of the
/// peer sets it names (see the module documentation). Equal classifiers of one model
/// and graph sweep to equal lookups.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerClassifier {
    /// Name prefix of the maps, class chains and port sets (`ingress`, `egress`, ...).
    prefix: String,
    /// The direction.
    dir: Direction,
    /// The edges in graph order: peer set, provenance, and at ingress the rule's ports
    /// resolved against the Pod (egress ports resolve against each destination).
    edges: Vec<(PeerSetId, Provenance, Option<PortSet>)>,
}

impl PeerClassifier {
    /// The classifier of `pod`'s peer lookup in `dir`, names prefixed with `prefix`.
    pub fn of(
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
        dir: Direction,
        prefix: &str,
    ) -> PeerClassifier {
        let me = model.endpoint(pod);
        let mut cache: BTreeMap<Provenance, PortSet> = BTreeMap::new();
        let edges = graph
            .edges(pod, dir)
            .into_iter()
            .map(|(set, prov)| {
                let ports = (dir == Direction::Ingress).then(|| {
                    let key = Provenance { peer: None, ..prov };
                    cache
                        .entry(key)
                        .or_insert_with(|| rule_ports(rule_of(model, &prov), Some(me)))
                        .clone()
                });
                (set, prov, ports)
            })
            .collect();
        PeerClassifier {
            prefix: prefix.to_owned(),
            dir,
            edges,
        }
    }

    /// The peer sets the lookup reads the members of.
    pub fn peer_sets(&self) -> impl Iterator<Item = PeerSetId> + '_ {
        self.edges.iter().map(|(set, _, _)| *set)
    }

    /// The lookup: every member address (or block range) of every edge with its ports,
    /// made disjoint by an interval sweep, then one class chain per distinct port set.
    pub fn sweep(&self, model: &Model, graph: &AllowGraph) -> PeerLookup {
        PeerLookup::compile(self, self.side(model, graph))
    }

    fn side(&self, model: &Model, graph: &AllowGraph) -> Side {
        let dir = self.dir;
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
        // Egress `rule_ports` is per (rule, destination); a rule is shared by all its
        // peers, and a rule with many ports is expensive to resolve, so resolve each
        // pair once.
        let mut cache: BTreeMap<(Provenance, Option<EndpointId>), PortSet> = BTreeMap::new();
        let mut ports_of = |prov: &Provenance, rule: &Rule, dst: Option<&Endpoint>| -> PortSet {
            let key = (
                Provenance {
                    peer: None,
                    ..*prov
                },
                dst.map(|e| e.id),
            );
            cache
                .entry(key)
                .or_insert_with(|| rule_ports(rule, dst))
                .clone()
        };
        for (set, prov, ingress_ports) in &self.edges {
            let rule = rule_of(model, prov);
            let source = Source {
                policy: model.policy(prov.policy).key(),
                rule: prov.rule,
                peer: prov.peer,
            };
            let named = has_named_ports(rule);
            match graph.peer_set(*set) {
                PeerSet::Endpoints(members) => {
                    for id in members {
                        let e = model.endpoint(*id);
                        let ports = match ingress_ports {
                            Some(p) => p.clone(),
                            None => ports_of(prov, rule, Some(e)),
                        };
                        for ip in &e.ips {
                            let v = interval::to_int(ip);
                            push(v, v, Family::of(ip), ports.clone(), &source);
                        }
                    }
                }
                block_or_all => {
                    let (nets, except): (Vec<&ipnet::IpNet>, &[ipnet::IpNet]) = match block_or_all {
                        PeerSet::Block(b) => (vec![&b.cidr], &b.except),
                        _ => (vec![&all_v4, &all_v6], &[]),
                    };
                    let ports = match ingress_ports {
                        Some(p) => p.clone(),
                        None => ports_of(prov, rule, None),
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
                                    push(
                                        v,
                                        v,
                                        Family::of(ip),
                                        ports_of(prov, rule, Some(e)),
                                        &source,
                                    );
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

/// One direction's peer lookup of one Pod: the peer maps `<prefix>_v4`/`<prefix>_v6`,
/// their rules, the class chains `<prefix>_class_<k>` and their port sets. Made by
/// [`PeerClassifier::sweep`]; shared by every table with the same classifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerLookup {
    maps: Vec<PeerMap>,
    sets: Vec<PortsSet>,
    rules: Vec<NftRule>,
    class_chains: Vec<Chain>,
}

impl PeerLookup {
    fn compile(c: &PeerClassifier, side: Side) -> PeerLookup {
        let prefix = c.prefix.as_str();
        let field = match c.dir {
            Direction::Ingress => AddrField::Saddr,
            Direction::Egress => AddrField::Daddr,
        };
        let mut out = PeerLookup {
            maps: Vec::new(),
            sets: Vec::new(),
            rules: Vec::new(),
            class_chains: Vec::new(),
        };
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
            .map(|(k, ps)| (*ps, format!("{prefix}_class_{k}")))
            .collect();
        for (family, segs) in [(Family::V4, &side.v4), (Family::V6, &side.v6)] {
            let name = format!("{prefix}_{}", family_suffix(family));
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
            out.rules.push(rule(
                RuleKind::PeerMap {
                    family,
                    field,
                    map: name.clone(),
                },
                None,
            ));
            out.maps.push(PeerMap {
                name,
                family,
                elements,
            });
        }
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
            out.sets.push(PortsSet {
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
            out.class_chains.push(Chain {
                name,
                base: None,
                notes: vec![ports.to_string()],
                rules: vec![rule(
                    RuleKind::Ports { set },
                    Some(comment(&who.join(", "))),
                )],
            });
        }
        out
    }

    /// Its peer maps with their elements (`<prefix>_v4`, `<prefix>_v6`).
    pub fn maps(&self) -> &[PeerMap] {
        &self.maps
    }

    /// Its peer maps declared empty (what a skeleton holds).
    pub(super) fn empty_maps(&self) -> Vec<PeerMap> {
        self.maps
            .iter()
            .map(|m| PeerMap {
                name: m.name.clone(),
                family: m.family,
                elements: Vec::new(),
            })
            .collect()
    }

    /// Its rules (one per map), port sets and class chains, without the map elements.
    pub(super) fn structure(&self) -> (Vec<NftRule>, Vec<PortsSet>, Vec<Chain>) {
        (
            self.rules.clone(),
            self.sets.clone(),
            self.class_chains.clone(),
        )
    }
}

/// Its maps with their elements: moved out when `lookup` is the only reference.
pub(super) fn filled_maps(lookup: Arc<PeerLookup>) -> Vec<PeerMap> {
    match Arc::try_unwrap(lookup) {
        Ok(l) => l.maps,
        Err(shared) => shared.maps.clone(),
    }
}

/// Where a table's peer lookups come from: [`sweep_every_time`], or a caller's memo
/// (it must return what [`PeerClassifier::sweep`] returns for the same model and graph).
pub type LookupProvider<'a> = dyn Fn(&PeerClassifier) -> Arc<PeerLookup> + 'a;

/// The provider that sweeps on every call: what [`super::compile_pod`] uses.
pub fn sweep_every_time<'a>(
    model: &'a Model,
    graph: &'a AllowGraph,
) -> impl Fn(&PeerClassifier) -> Arc<PeerLookup> + 'a {
    move |c| Arc::new(c.sweep(model, graph))
}

/// A Pod's table as its skeleton and the peer lookups whose maps fill it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSplit {
    /// The table with every peer map declared empty: equal to
    /// [`Ruleset::skeleton`] of the whole table.
    pub skeleton: Ruleset,
    /// The lookups, in the skeleton's map order (each fills two consecutive maps).
    pub lookups: Vec<Arc<PeerLookup>>,
}

impl PodSplit {
    /// The whole table, as [`PodSplit::ruleset`] gives it, leaving this split whole (its
    /// lookups stay shared; their maps are copied into the result).
    pub fn to_ruleset(&self) -> Ruleset {
        let mut rs = self.skeleton.clone();
        rs.maps = self.lookups.iter().cloned().flat_map(filled_maps).collect();
        rs
    }

    /// The whole table: the skeleton with its maps' elements.
    pub fn ruleset(self) -> Ruleset {
        let mut rs = self.skeleton;
        // The skeleton's maps are exactly its lookups' maps declared empty, in order
        // (`compile_enforced` adds both together).
        rs.maps = self.lookups.into_iter().flat_map(filled_maps).collect();
        rs
    }
}

/// `pod`'s table split into skeleton and lookups, the lookups taken from `lookups`.
/// `None` when the model has audit policies (an audit table is rendered from two
/// models: call [`super::compile_pod`]). Otherwise
/// `compile_pod_split(..).ruleset() == compile_pod(..)` whenever `lookups` returns
/// what [`PeerClassifier::sweep`] does.
pub fn compile_pod_split(
    model: &Model,
    graph: &AllowGraph,
    pod: EndpointId,
    opts: &RulesetOptions,
    lookups: &LookupProvider<'_>,
) -> Option<PodSplit> {
    if graph.audit().is_some() {
        return None;
    }
    Some(super::compile_enforced(model, graph, pod, opts, lookups))
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
