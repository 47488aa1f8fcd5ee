//! The ClusterNetworkPolicy stages of one direction of one Pod, in tier order.
//!
//! A direction that a ClusterNetworkPolicy with rules for it applies to, or that a
//! NetworkPolicy isolates, is judged by three stages ([`Staged::compile`]), appended to
//! the chain that judges it (the Pod table's base chain, or a node-table Pod chain):
//!
//! ```text
//!   jump <prefix>_admin          Admin rules in order: accept | log+drop | return (Pass)
//!   <NetworkPolicy lookup>       only when a NetworkPolicy isolates: maps, class chains,
//!   counter log ... drop         and the final logging drop
//!   jump <prefix>_baseline       only when no NetworkPolicy isolates; then the chain
//!                                ends (accept: the base chain's policy, or a return)
//! ```
//!
//! Each CNP rule becomes at most two nft rules per family, whatever its peers: one on an
//! address interval set (`<stage>_<i>_v4`, the peer ranges whose ports are every port of
//! every protocol) and one on an `address . inet_proto . inet_service` interval set
//! (`<stage>_<i>_v4_ports`). Peer ranges are made disjoint by [`interval::disjoint`], like
//! the NetworkPolicy maps, with the rule's ports resolved as the compiler does
//! ([`ClusterRule::ports_toward`]): at ingress against the Pod itself, at egress against
//! each destination Pod (a `networks` peer contributes its ranges with named ports
//! unresolved, and each Pod address inside them with them resolved).

use crate::graph::{AllowGraph, ClusterPeerSet};
use crate::model::{Action, ClusterRule, Direction, EndpointId, Model, Tier};
use crate::ports::{PortSet, Protocol};

use super::interval::{self, Contribution, Family};
use super::{
    AddrField, Chain, NftRule, PortElement, RuleKind, TierElement, TierSet, TierVerdict,
    cluster_log_prefix, comment, family_suffix, rule,
};

/// One direction's stages of one Pod: what to append to the judging chain and the chains
/// and sets they use. Empty when neither a CNP rule nor a NetworkPolicy applies.
pub(super) struct Staged {
    /// Rules to append to the judging chain, after the fixed accepts.
    pub(super) rules: Vec<NftRule>,
    /// The stage chains (`<prefix>_admin`, `<prefix>_baseline`) and NP class chains.
    pub(super) chains: Vec<Chain>,
    /// The NetworkPolicy peer lookup (maps and their elements), when one isolates.
    pub(super) lookup: Option<std::sync::Arc<super::PeerLookup>>,
    /// NetworkPolicy port sets.
    pub(super) sets: Vec<super::PortsSet>,
    /// CNP rule sets.
    pub(super) tier_sets: Vec<TierSet>,
    /// Whether a NetworkPolicy isolates (the chain ends in a logging drop).
    pub(super) isolated: bool,
}

/// The CNP rules of `pod` in `dir` for `tier`, in evaluation order: (policy, rule index).
pub(super) fn tier_rules(
    model: &Model,
    graph: &AllowGraph,
    pod: EndpointId,
    dir: Direction,
    tier: Tier,
) -> Vec<(crate::model::ClusterPolicyId, usize)> {
    let mut out = Vec::new();
    for id in graph.cluster_subjects(pod) {
        let p = model.cluster_policy(*id);
        if p.tier != tier {
            continue;
        }
        out.extend((0..p.rules(dir).len()).map(|i| (*id, i)));
    }
    out
}

/// Everything a stage compiler needs besides the Pod and direction.
pub(super) struct StageContext<'a> {
    pub(super) model: &'a Model,
    pub(super) graph: &'a AllowGraph,
    pub(super) log_group: u16,
    /// Where NetworkPolicy peer lookups come from.
    pub(super) lookups: &'a super::LookupProvider<'a>,
}

impl Staged {
    /// The stages of `pod` in `dir`, chains and sets named after `prefix`. `np_drop` is
    /// the NetworkPolicy stage's final logging drop (used when a NetworkPolicy isolates).
    pub(super) fn compile(
        cx: &StageContext<'_>,
        pod: EndpointId,
        dir: Direction,
        prefix: &str,
        np_drop: NftRule,
    ) -> Staged {
        let mut out = Staged {
            rules: Vec::new(),
            chains: Vec::new(),
            lookup: None,
            sets: Vec::new(),
            tier_sets: Vec::new(),
            isolated: !cx.graph.isolation(pod).by(dir).is_empty(),
        };
        let admin = tier_rules(cx.model, cx.graph, pod, dir, Tier::Admin);
        if !admin.is_empty() {
            let name = format!("{prefix}_admin");
            out.stage(cx, pod, dir, &name, Tier::Admin, &admin);
        }
        if out.isolated {
            let classifier = super::PeerClassifier::of(cx.model, cx.graph, pod, dir, prefix);
            let lookup = (cx.lookups)(&classifier);
            let (rules, sets, class_chains) = lookup.structure();
            out.rules.extend(rules);
            out.sets.extend(sets);
            out.chains.extend(class_chains);
            out.lookup = Some(lookup);
            out.rules.push(np_drop);
        } else {
            let baseline = tier_rules(cx.model, cx.graph, pod, dir, Tier::Baseline);
            if !baseline.is_empty() {
                let name = format!("{prefix}_baseline");
                out.stage(cx, pod, dir, &name, Tier::Baseline, &baseline);
            }
        }
        out
    }

    /// One tier's chain `name`, entered with `jump` from the judging chain.
    fn stage(
        &mut self,
        cx: &StageContext<'_>,
        pod: EndpointId,
        dir: Direction,
        name: &str,
        tier: Tier,
        rules: &[(crate::model::ClusterPolicyId, usize)],
    ) {
        let me = cx.model.endpoint(pod);
        let mut chain_rules = Vec::new();
        let mut notes = Vec::new();
        for (i, &(pid, r)) in rules.iter().enumerate() {
            let policy = cx.model.cluster_policy(pid);
            let Some(cr) = policy.rules(dir).get(r) else {
                continue;
            };
            notes.push(format!(
                "{i}: {} priority {} rule {} {}",
                policy.name,
                policy.priority,
                cr.label(r),
                cr.action.as_str()
            ));
            let verdict = match cr.action {
                Action::Accept => TierVerdict::Accept,
                Action::Pass => TierVerdict::Pass,
                Action::Deny => TierVerdict::Drop {
                    group: cx.log_group,
                    prefix: cluster_log_prefix(&me.namespace, &me.name, dir, tier, pid.0, r),
                },
            };
            let label = if cr.name.is_empty() {
                format!("#{r}")
            } else {
                cr.name.clone()
            };
            let who = comment(&format!(
                "{} {} rule {label} {}",
                tier.as_str(),
                policy.name,
                cr.action.as_str()
            ));
            let sets = rule_sets(cx, pod, dir, pid, r, cr, &format!("{name}_{i}"));
            for set in sets {
                let field = match dir {
                    Direction::Ingress => AddrField::Saddr,
                    Direction::Egress => AddrField::Daddr,
                };
                chain_rules.push(rule(
                    RuleKind::Tier {
                        family: set.family,
                        field,
                        set: set.name.clone(),
                        ports: set.with_ports,
                        verdict: verdict.clone(),
                    },
                    Some(who.clone()),
                ));
                self.tier_sets.push(set);
            }
        }
        self.rules.push(rule(
            RuleKind::Jump {
                chain: name.to_owned(),
            },
            Some(comment(&format!("{} tier", tier.as_str()))),
        ));
        self.chains.push(Chain {
            name: name.to_owned(),
            base: None,
            notes,
            rules: chain_rules,
        });
    }
}

/// The non-empty sets of one CNP rule: per family, the all-ports ranges and the
/// address-and-port elements.
fn rule_sets(
    cx: &StageContext<'_>,
    pod: EndpointId,
    dir: Direction,
    pid: crate::model::ClusterPolicyId,
    r: usize,
    cr: &ClusterRule,
    base: &str,
) -> Vec<TierSet> {
    let model = cx.model;
    let me = model.endpoint(pod);
    let named = cr
        .ports
        .iter()
        .flatten()
        .any(|p| matches!(p, crate::model::ClusterPort::Named(_)));
    let mut v4: Vec<Contribution<u32>> = Vec::new();
    let mut v6: Vec<Contribution<u32>> = Vec::new();
    let mut push = |ip_lo: u128, hi: u128, family: Family, ports: PortSet, peer: u32| {
        if ports.is_empty() {
            return;
        }
        let c = Contribution {
            lo: ip_lo,
            hi,
            ports,
            source: peer,
        };
        match family {
            Family::V4 => v4.push(c),
            Family::V6 => v6.push(c),
        }
    };
    let fixed = match dir {
        Direction::Ingress => cr.ports_toward(Some(me)),
        Direction::Egress => cr.ports_toward(None),
    };
    let peers = cx.graph.cluster_rule_peers(pid, dir, r);
    for (pi, set) in peers.iter().enumerate() {
        let pi = u32::try_from(pi).unwrap_or(u32::MAX);
        match set {
            ClusterPeerSet::Endpoints(ids) => {
                for id in ids {
                    let e = model.endpoint(*id);
                    let ports = match dir {
                        Direction::Ingress => fixed.clone(),
                        Direction::Egress => cr.ports_toward(Some(e)),
                    };
                    for ip in &e.ips {
                        let v = interval::to_int(ip);
                        push(v, v, Family::of(ip), ports.clone(), pi);
                    }
                }
            }
            ClusterPeerSet::Networks(nets) => {
                for net in nets {
                    let (lo, hi) = interval::net_bounds(net);
                    push(lo, hi, Family::of(&net.addr()), fixed.clone(), pi);
                }
                // Egress named ports resolve per destination Pod inside the networks.
                if dir == Direction::Egress && named {
                    for e in &model.endpoints {
                        for ip in &e.ips {
                            if nets.iter().any(|n| n.contains(ip)) {
                                let v = interval::to_int(ip);
                                push(v, v, Family::of(ip), cr.ports_toward(Some(e)), pi);
                            }
                        }
                    }
                }
            }
            ClusterPeerSet::Addresses(addrs) => {
                for ip in addrs {
                    let v = interval::to_int(ip);
                    push(v, v, Family::of(ip), fixed.clone(), pi);
                }
            }
            ClusterPeerSet::Nothing => {}
        }
    }
    let mut out = Vec::new();
    for (family, contributions) in [(Family::V4, v4), (Family::V6, v6)] {
        let segments = interval::disjoint(&contributions, family.max());
        let mut all = Vec::new();
        let mut some = Vec::new();
        for s in &segments {
            let (first, last) = (family.addr(s.lo), family.addr(s.hi));
            let prefix = interval::as_prefix(s.lo, s.hi, family);
            if s.ports.is_all() {
                all.push(TierElement {
                    first,
                    last,
                    prefix,
                    ports: None,
                });
                continue;
            }
            for p in Protocol::ALL {
                for &(lo, hi) in s.ports.get(p).ranges() {
                    some.push(TierElement {
                        first,
                        last,
                        prefix,
                        ports: Some(PortElement {
                            protocol: p,
                            first: lo,
                            last: hi,
                        }),
                    });
                }
            }
        }
        let suffix = family_suffix(family);
        if !all.is_empty() {
            out.push(TierSet {
                name: format!("{base}_{suffix}"),
                family,
                with_ports: false,
                elements: all,
            });
        }
        if !some.is_empty() {
            out.push(TierSet {
                name: format!("{base}_{suffix}_ports"),
                family,
                with_ports: true,
                elements: some,
            });
        }
    }
    out
}
