//! The ClusterNetworkPolicy tier walk of one side of a flow.
//!
//! Each side (egress at the source, ingress at the destination) is judged on its own,
//! port by port, in this order (network-policy-api v1alpha2):
//!
//! 1. Admin tier: the ClusterNetworkPolicies applying to the Pod, by priority (lower
//!    first; equal priorities by name), rules in written order. The first rule whose peer
//!    and ports match decides: `Accept` and `Deny` are final, `Pass` skips the rest of the
//!    tier.
//! 2. NetworkPolicy: when a NetworkPolicy isolates the Pod in this direction it decides
//!    every port that got here (allowed when a rule allows it, denied otherwise).
//! 3. Baseline tier: as the Admin tier; `Pass` goes on to the default.
//! 4. Default: allowed.
//!
//! Every set below is a [`PortSet`]: a side is a partition of all ports by who decided
//! them, so the answer for any port and the reasons are the same computation.
//!
//! Peers resolve like NetworkPolicy peers and are interned the same way
//! ([`ClusterPeerSet`]): `namespaces`/`pods` to sorted endpoint ids (never hostNetwork
//! Pods), `networks` to CIDRs matched against the peer's address, `nodes` to the addresses
//! of the selected Node objects, `domainNames` to nothing (it cannot be decided from
//! addresses offline). Subjects are listed per endpoint once, at build time.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use super::Subject;
use crate::model::{
    Action, ClusterPeer, ClusterPolicyId, Direction, Endpoint, EndpointId, Model, Tier,
    selected_node_addresses,
};
use crate::ports::{PortSet, Protocol};

/// Index of an interned ClusterNetworkPolicy peer set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterPeerSetId(pub u32);

/// What a ClusterNetworkPolicy peer stands for, resolved against the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPeerSet {
    /// `namespaces` / `pods`: these endpoints (sorted), matched by identity.
    Endpoints(Vec<EndpointId>),
    /// `networks`: addresses in any of these CIDRs.
    Networks(Vec<IpNet>),
    /// `nodes`: these node addresses (sorted).
    Addresses(Vec<IpAddr>),
    /// `domainNames`: no flow matches offline.
    Nothing,
}

impl ClusterPeerSet {
    /// True when the set holds `subject` seen at `ip`.
    pub fn contains(&self, subject: Subject, ip: Option<IpAddr>) -> bool {
        match self {
            ClusterPeerSet::Endpoints(v) => match subject {
                Subject::Endpoint(id) => v.binary_search(&id).is_ok(),
                Subject::External(_) => false,
            },
            ClusterPeerSet::Networks(n) => ip.is_some_and(|ip| n.iter().any(|c| c.contains(&ip))),
            ClusterPeerSet::Addresses(a) => ip.is_some_and(|ip| a.binary_search(&ip).is_ok()),
            ClusterPeerSet::Nothing => false,
        }
    }
}

/// A rule that matched one side of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierMatch {
    /// The ClusterNetworkPolicy.
    pub policy: ClusterPolicyId,
    /// Its tier.
    pub tier: Tier,
    /// The rule's direction (the side's).
    pub direction: Direction,
    /// Index of the rule in its direction.
    pub rule: u32,
    /// Index of the first matching peer in the rule's `from`/`to`.
    pub peer: u32,
    /// The rule's action.
    pub action: Action,
    /// The ports the rule matches toward the destination.
    pub ports: PortSet,
    /// Of those, the ports it decides: no earlier rule of the walk had decided them (empty
    /// when it is shadowed entirely).
    pub decided: PortSet,
}

/// Who decided which ports of one side.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierWalk {
    /// Matching rules, Admin then Baseline, in evaluation order.
    pub matches: Vec<TierMatch>,
    /// True when some ClusterNetworkPolicy applies to the Pod on this side (with or
    /// without a rule for this direction).
    pub subject: bool,
    /// Ports that reached the NetworkPolicy tier (not decided by an Admin Accept or Deny).
    pub to_network_policy: PortSet,
    /// What the isolating NetworkPolicies allow (everything when none isolates).
    pub network_policy_allowed: PortSet,
    /// Ports that reached the Baseline tier (nothing when a NetworkPolicy isolates).
    pub to_baseline: PortSet,
    /// Ports no tier decided (or a Baseline Pass passed on): allowed by default.
    pub to_default: PortSet,
}

/// Which tier, policy and rule decided one port of one side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// An Accept or Deny rule of a ClusterNetworkPolicy (index into
    /// [`TierWalk::matches`]).
    Cluster(usize),
    /// The isolating NetworkPolicies: allowed or not.
    NetworkPolicy {
        /// Whether a NetworkPolicy rule allows the port.
        allowed: bool,
    },
    /// No tier decided: allowed (after a Baseline Pass when `passed` is set, an index into
    /// [`TierWalk::matches`]).
    Default {
        /// The Baseline Pass rule that sent the port here, if any.
        passed: Option<usize>,
    },
}

impl TierWalk {
    /// Who decided `port` of `proto`; `isolated` is whether a NetworkPolicy isolates
    /// this side.
    pub fn decision(&self, isolated: bool, proto: Protocol, port: u16) -> Decision {
        for (i, m) in self.matches.iter().enumerate() {
            if m.tier != Tier::Admin || !m.decided.contains(proto, port) {
                continue;
            }
            match m.action {
                Action::Accept | Action::Deny => return Decision::Cluster(i),
                Action::Pass => break,
            }
        }
        if isolated {
            return Decision::NetworkPolicy {
                allowed: self.network_policy_allowed.contains(proto, port),
            };
        }
        for (i, m) in self.matches.iter().enumerate() {
            if m.tier != Tier::Baseline || !m.decided.contains(proto, port) {
                continue;
            }
            return match m.action {
                Action::Accept | Action::Deny => Decision::Cluster(i),
                Action::Pass => Decision::Default { passed: Some(i) },
            };
        }
        Decision::Default { passed: None }
    }

    /// The Admin Pass rule that passed `port` on to the next tiers, if one did.
    pub fn admin_pass(&self, proto: Protocol, port: u16) -> Option<usize> {
        self.matches.iter().position(|m| {
            m.tier == Tier::Admin && m.action == Action::Pass && m.decided.contains(proto, port)
        })
    }
}

/// ClusterNetworkPolicies resolved against the model: who each applies to and its peers.
#[derive(Debug, Clone, Default)]
pub(super) struct ClusterIndex {
    /// Per endpoint, the ClusterNetworkPolicies that apply to it, in evaluation order.
    subjects: Vec<Vec<ClusterPolicyId>>,
    peer_sets: Vec<ClusterPeerSet>,
    /// Per policy, per direction (ingress, egress), per rule: the peer set of each peer.
    rule_peers: Vec<[Vec<Vec<ClusterPeerSetId>>; 2]>,
}

fn dir_index(dir: Direction) -> usize {
    match dir {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl ClusterIndex {
    pub(super) fn build(model: &Model) -> ClusterIndex {
        if model.cluster_policies.is_empty() {
            return ClusterIndex {
                subjects: vec![Vec::new(); model.endpoints.len()],
                ..ClusterIndex::default()
            };
        }
        let subjects = model
            .endpoints
            .iter()
            .map(|e| {
                model
                    .cluster_policies
                    .iter()
                    .filter(|p| p.selects(model, e))
                    .map(|p| p.id)
                    .collect()
            })
            .collect();
        let mut interned: BTreeMap<&ClusterPeer, ClusterPeerSetId> = BTreeMap::new();
        let mut peer_sets = Vec::new();
        let mut rule_peers = Vec::new();
        for p in &model.cluster_policies {
            let mut per_dir: [Vec<Vec<ClusterPeerSetId>>; 2] = Default::default();
            for dir in [Direction::Ingress, Direction::Egress] {
                for rule in p.rules(dir) {
                    let ids = rule
                        .peers
                        .iter()
                        .map(|peer| {
                            *interned.entry(peer).or_insert_with(|| {
                                let id = ClusterPeerSetId(
                                    u32::try_from(peer_sets.len()).unwrap_or(u32::MAX),
                                );
                                peer_sets.push(resolve_peer(model, peer));
                                id
                            })
                        })
                        .collect();
                    per_dir[dir_index(dir)].push(ids);
                }
            }
            rule_peers.push(per_dir);
        }
        ClusterIndex {
            subjects,
            peer_sets,
            rule_peers,
        }
    }

    /// The ClusterNetworkPolicies applying to an endpoint, in evaluation order.
    pub(super) fn subjects(&self, id: EndpointId) -> &[ClusterPolicyId] {
        self.subjects
            .get(id.0 as usize)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    pub(super) fn peer_set_count(&self) -> usize {
        self.peer_sets.len()
    }

    pub(super) fn peer_set(&self, id: ClusterPeerSetId) -> &ClusterPeerSet {
        &self.peer_sets[id.0 as usize]
    }

    /// The peer sets of rule `rule` of `policy` in `dir`, parallel to its peers.
    pub(super) fn rule_peers(
        &self,
        policy: ClusterPolicyId,
        dir: Direction,
        rule: usize,
    ) -> &[ClusterPeerSetId] {
        self.rule_peers
            .get(policy.0 as usize)
            .and_then(|d| d[dir_index(dir)].get(rule))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The tier walk of endpoint `at`'s `dir` side for a flow with `peer` (seen at
    /// `peer_ip`) toward destination `dst_ep`; `np` is what the isolating NetworkPolicies
    /// allow, `None` when none isolates.
    #[allow(clippy::too_many_arguments)] // the side's coordinates, as AllowGraph::side
    pub(super) fn walk(
        &self,
        model: &Model,
        at: EndpointId,
        dir: Direction,
        peer: Subject,
        peer_ip: Option<IpAddr>,
        dst_ep: Option<&Endpoint>,
        np: Option<&PortSet>,
    ) -> (TierWalk, PortSet) {
        let subjects = self.subjects(at);
        let mut walk = TierWalk {
            subject: !subjects.is_empty(),
            network_policy_allowed: np.cloned().unwrap_or_else(PortSet::all),
            ..TierWalk::default()
        };
        // Ports still undecided in the current tier, and what each tier sends on.
        let mut undecided = PortSet::all();
        let mut allowed = PortSet::none();
        let mut passed = PortSet::none();
        let mut tier = Tier::Admin;
        let finish_admin = |undecided: &mut PortSet,
                            passed: &mut PortSet,
                            walk: &mut TierWalk,
                            allowed: &mut PortSet| {
            let to_np = undecided.union(passed);
            walk.to_network_policy = to_np.clone();
            match np {
                Some(np) => {
                    allowed.add(&to_np.intersect(np));
                    *undecided = PortSet::none();
                }
                None => *undecided = to_np,
            }
            walk.to_baseline = undecided.clone();
            *passed = PortSet::none();
        };
        for pid in subjects {
            let policy = model.cluster_policy(*pid);
            if policy.tier != tier {
                finish_admin(&mut undecided, &mut passed, &mut walk, &mut allowed);
                tier = Tier::Baseline;
                if np.is_some() {
                    // The NetworkPolicy tier decided every port that got there.
                    break;
                }
            }
            for (ri, rule) in policy.rules(dir).iter().enumerate() {
                let sets = self.rule_peers(*pid, dir, ri);
                let Some(pi) = sets
                    .iter()
                    .position(|s| self.peer_set(*s).contains(peer, peer_ip))
                else {
                    continue;
                };
                let ports = rule.ports_toward(dst_ep);
                let decided = undecided.intersect(&ports);
                undecided = undecided.subtract(&ports);
                match rule.action {
                    Action::Accept => allowed.add(&decided),
                    Action::Deny => {}
                    Action::Pass => passed.add(&decided),
                }
                walk.matches.push(TierMatch {
                    policy: *pid,
                    tier,
                    direction: dir,
                    rule: u32::try_from(ri).unwrap_or(u32::MAX),
                    peer: u32::try_from(pi).unwrap_or(u32::MAX),
                    action: rule.action,
                    ports,
                    decided,
                });
            }
        }
        if tier == Tier::Admin {
            finish_admin(&mut undecided, &mut passed, &mut walk, &mut allowed);
        }
        // Baseline Pass and undecided ports: the default, allowed.
        let to_default = undecided.union(&passed);
        allowed.add(&to_default);
        walk.to_default = to_default;
        (walk, allowed)
    }
}

fn resolve_peer(model: &Model, peer: &ClusterPeer) -> ClusterPeerSet {
    match peer {
        ClusterPeer::Pods(sel) => {
            let mut v: Vec<EndpointId> = model
                .endpoints
                .iter()
                .filter(|e| sel.matches(e, model.namespace_labels(&e.namespace)))
                .map(|e| e.id)
                .collect();
            v.sort_unstable();
            ClusterPeerSet::Endpoints(v)
        }
        ClusterPeer::Networks(n) => ClusterPeerSet::Networks(n.clone()),
        ClusterPeer::Nodes(sel) => ClusterPeerSet::Addresses(selected_node_addresses(model, sel)),
        ClusterPeer::DomainNames(_) => ClusterPeerSet::Nothing,
    }
}
