//! The allow graph: every endpoint's isolation and allowed peers, with provenance.
//!
//! Nodes are endpoints and *peer sets* (a rule peer resolved to the endpoints it selects,
//! an ipBlock, or "anyone" for a rule without `from`/`to`). Edges follow the traffic:
//! `peer -> endpoint` for ingress rules, `endpoint -> peer` for egress rules, and carry the
//! policy, direction, rule index and peer index that allow it; the ports come from the
//! rule, resolved per destination (named ports differ per Pod).
//!
//! Identical peers (same namespace scope and selector, same ipBlock) are interned to one
//! node, so the graph is linear in the policies' size times the Pods they select, never
//! Pods x Pods.

mod tiers;

pub use tiers::{ClusterPeerSet, ClusterPeerSetId, Decision, TierMatch, TierWalk};

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use petgraph::Direction as PgDir;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;

use crate::model::{
    BackendTarget, Direction, Endpoint, EndpointId, IpBlock, Model, NamespaceScope, Peer, PolicyId,
    Rule, Service,
};
use crate::ports::{PortRanges, PortSet};

/// One side of a flow: an endpoint, or an address outside the cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A Pod or workload.
    Endpoint(EndpointId),
    /// An address that belongs to no endpoint.
    External(IpAddr),
}

impl From<EndpointId> for Subject {
    fn from(id: EndpointId) -> Self {
        Subject::Endpoint(id)
    }
}

impl Subject {
    /// Resolves `ns/name` (Pod), `name` (Pod in `default`), `ns/kind/name` (workload) or an
    /// IP address (the Pod that has it, else an external address).
    pub fn parse(model: &Model, arg: &str) -> Result<Subject, String> {
        if let Ok(ip) = arg.parse::<IpAddr>() {
            return Ok(match model.endpoint_by_ip(&ip) {
                Some(id) => Subject::Endpoint(id),
                None => Subject::External(ip),
            });
        }
        let parts: Vec<&str> = arg.split('/').collect();
        let key = match parts.as_slice() {
            [name] => format!("default/{name}"),
            [ns, name] => format!("{ns}/{name}"),
            [ns, kind, name] if *kind == crate::declared::KEY_KIND => {
                format!("{ns}/{kind}/{name}")
            }
            [ns, kind, name] => {
                let k = crate::load::WorkloadKind::parse(kind).ok_or_else(|| {
                    format!(
                        "{arg:?}: unknown workload kind {kind:?} (expected deployment, replicaset, statefulset, daemonset, job, cronjob or replicationcontroller)"
                    )
                })?;
                format!("{ns}/{}/{name}", k.lower())
            }
            _ => {
                return Err(format!(
                    "{arg:?} is not an endpoint: use ns/name, name, ns/kind/name or an IP address"
                ));
            }
        };
        if let Some(id) = model.endpoint_by_key(&key) {
            return Ok(Subject::Endpoint(id));
        }
        if let Some(by) = model.replaced_by(&key) {
            // A ReplicaSet of a Deployment given without Pods: its owner stands for it.
            if let [one] = by
                && let Some(id) = model.endpoint_by_key(one)
                && model.endpoint(id).kind != crate::model::EndpointKind::Pod
            {
                return Ok(Subject::Endpoint(id));
            }
            return Err(format!(
                "{key} is represented by its Pods in the input (ownerReferences): {}; name one of them",
                by.join(", ")
            ));
        }
        let ns = key.split('/').next().unwrap_or("");
        let known: Vec<String> = model
            .endpoints_in(ns)
            .iter()
            .map(|id| model.endpoint(*id).key())
            .take(20)
            .collect();
        if known.is_empty() {
            Err(format!(
                "no endpoint {key}: namespace {ns} has no Pods or workloads in the input"
            ))
        } else {
            Err(format!(
                "no endpoint {key}; endpoints in {ns}: {}",
                known.join(", ")
            ))
        }
    }

    /// `ns/name`, `ns/kind/name` or the address.
    pub fn display(&self, model: &Model) -> String {
        match self {
            Subject::Endpoint(id) => model.endpoint(*id).key(),
            Subject::External(ip) => ip.to_string(),
        }
    }

    fn endpoint<'m>(&self, model: &'m Model) -> Option<&'m Endpoint> {
        match self {
            Subject::Endpoint(id) => Some(model.endpoint(*id)),
            Subject::External(_) => None,
        }
    }
}

/// Index of an interned peer set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerSetId(pub u32);

/// What a peer node stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerSet {
    /// The endpoints a pod/namespace selector peer selects, sorted.
    Endpoints(Vec<EndpointId>),
    /// Addresses in a block (Pod IPs included).
    Block(IpBlock),
    /// Anyone: a rule without peers.
    All,
}

/// A graph node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    /// An endpoint.
    Endpoint(EndpointId),
    /// A peer set.
    Peer(PeerSetId),
}

/// Why an edge exists: the rule that allows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Provenance {
    /// The policy.
    pub policy: PolicyId,
    /// Ingress or egress rule.
    pub direction: Direction,
    /// Index into the policy's rules of that direction.
    pub rule: u32,
    /// Index into the rule's `from`/`to`; `None` when the rule has no peers (anyone).
    pub peer: Option<u32>,
}

/// Isolation of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Policies that select the endpoint with policyType Ingress.
    pub ingress: Vec<PolicyId>,
    /// Policies that select the endpoint with policyType Egress.
    pub egress: Vec<PolicyId>,
}

impl Isolation {
    /// Isolating policies for a direction.
    pub fn by(&self, dir: Direction) -> &[PolicyId] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// A rule that allows (part of) a flow, and which ports it allows for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMatch {
    /// Which policy, rule and peer.
    pub provenance: Provenance,
    /// Ports it allows toward the destination.
    pub ports: PortSet,
}

/// One direction's verdict for a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SideVerdict {
    /// False when the side is not a selectable endpoint (external address, hostNetwork
    /// Pod, workload-less IP): no policy can isolate it.
    pub applies: bool,
    /// True when some policy isolates this endpoint in this direction.
    pub isolated: bool,
    /// The isolating policies.
    pub policies: Vec<PolicyId>,
    /// What this side allows (everything when not isolated).
    pub allowed: PortSet,
    /// The NetworkPolicy rules that allow something, in policy/rule/peer order.
    pub matches: Vec<RuleMatch>,
    /// The ClusterNetworkPolicy tier walk (Admin, NetworkPolicy, Baseline, default) that
    /// gave `allowed`; see [`TierWalk::decision`].
    pub tiers: TierWalk,
}

/// The answer for a flow `src -> dst`: both sides and their intersection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reach {
    /// Source.
    pub src: Subject,
    /// Destination.
    pub dst: Subject,
    /// Address used for the source (for ipBlock matching).
    pub src_ip: Option<IpAddr>,
    /// Address used for the destination.
    pub dst_ip: Option<IpAddr>,
    /// Traffic from a single Pod to itself: always allowed. False between two replicas
    /// of one workload with `replicas != 1` (or unknown), which are judged as any pair.
    pub to_self: bool,
    /// Traffic from the destination Pod's own node (an address of its node, or a
    /// hostNetwork Pod on it): the ingress side allows it (`ingress.allowed` is
    /// everything), whatever the policies.
    pub from_node: bool,
    /// Egress at the source.
    pub egress: SideVerdict,
    /// Ingress at the destination.
    pub ingress: SideVerdict,
    /// What may flow: egress ∩ ingress (everything for self traffic).
    pub allowed: PortSet,
}

/// The resolved allow graph of a [`Model`].
#[derive(Debug, Clone)]
pub struct AllowGraph {
    graph: DiGraph<Node, Provenance>,
    endpoint_nodes: Vec<NodeIndex>,
    peers: Vec<PeerSet>,
    peer_sources: Vec<Option<Peer>>,
    isolation: Vec<Isolation>,
    cluster: tiers::ClusterIndex,
    /// The audited view ([`AuditView`]) when the model has audit policies.
    audit: Option<Box<AuditView>>,
}

/// The model and allow graph with every audit policy enforced (`netpol.io/mode: audit`,
/// #12): the *audited* verdict, beside the enforced one every other answer uses. See
/// docs/audit.md and [`crate::audit`].
#[derive(Debug, Clone)]
pub struct AuditView {
    /// [`Model::audited`].
    pub model: Model,
    /// Its allow graph.
    pub graph: AllowGraph,
}

impl AuditView {
    /// The audited view, or `None` when the model has no audit policy (then the audited
    /// verdict is the enforced one everywhere).
    pub fn of(model: &Model) -> Option<AuditView> {
        let model = model.audited()?;
        let graph = AllowGraph::build(&model);
        Some(AuditView { model, graph })
    }
}

impl AllowGraph {
    /// The audited view of the model this graph was built from (every
    /// `netpol.io/mode: audit` policy enforced), or `None` without audit policies. Built
    /// with the graph, so every consumer of a graph (rulesets, reports) has it. See
    /// docs/audit.md.
    pub fn audit(&self) -> Option<&AuditView> {
        self.audit.as_deref()
    }

    /// Resolves every policy's selectors against the model.
    pub fn build(model: &Model) -> AllowGraph {
        let mut graph = DiGraph::new();
        let endpoint_nodes: Vec<NodeIndex> = model
            .endpoints
            .iter()
            .map(|e| graph.add_node(Node::Endpoint(e.id)))
            .collect();
        let mut b = GraphBuilder {
            model,
            graph,
            peers: vec![PeerSet::All],
            peer_sources: vec![None],
            peer_nodes: Vec::new(),
            interned: BTreeMap::new(),
            ns_cache: BTreeMap::new(),
        };
        let all_node = b.graph.add_node(Node::Peer(PeerSetId(0)));
        b.peer_nodes.push(all_node);
        let mut isolation = vec![Isolation::default(); model.endpoints.len()];

        for policy in &model.policies {
            let targets: Vec<EndpointId> = model
                .endpoints_in(&policy.namespace)
                .iter()
                .copied()
                .filter(|id| {
                    let e = model.endpoint(*id);
                    e.selectable() && policy.pod_selector.matches(&e.labels)
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            for dir in [Direction::Ingress, Direction::Egress] {
                if !policy.isolates(dir) {
                    continue;
                }
                for t in &targets {
                    let iso = &mut isolation[t.0 as usize];
                    match dir {
                        Direction::Ingress => iso.ingress.push(policy.id),
                        Direction::Egress => iso.egress.push(policy.id),
                    }
                }
                for (ri, rule) in policy.rules(dir).iter().enumerate() {
                    let rule_peers: Vec<(Option<u32>, PeerSetId)> = match &rule.peers {
                        None => vec![(None, PeerSetId(0))],
                        Some(peers) => peers
                            .iter()
                            .enumerate()
                            .map(|(pi, p)| (Some(index_u32(pi)), b.intern(p)))
                            .collect(),
                    };
                    for (peer_idx, set) in rule_peers {
                        let prov = Provenance {
                            policy: policy.id,
                            direction: dir,
                            rule: index_u32(ri),
                            peer: peer_idx,
                        };
                        let pn = b.peer_nodes[set.0 as usize];
                        for t in &targets {
                            let tn = endpoint_nodes[t.0 as usize];
                            match dir {
                                Direction::Ingress => b.graph.add_edge(pn, tn, prov),
                                Direction::Egress => b.graph.add_edge(tn, pn, prov),
                            };
                        }
                    }
                }
            }
        }
        AllowGraph {
            graph: b.graph,
            endpoint_nodes,
            peers: b.peers,
            peer_sources: b.peer_sources,
            isolation,
            cluster: tiers::ClusterIndex::build(model),
            // The audited model holds no audit policies: no recursion past one level.
            audit: AuditView::of(model).map(Box::new),
        }
    }

    /// The ClusterNetworkPolicies that apply to an endpoint, in evaluation order (Admin by
    /// priority, then Baseline). hostNetwork Pods are never subjects.
    pub fn cluster_subjects(&self, id: EndpointId) -> &[crate::model::ClusterPolicyId] {
        self.cluster.subjects(id)
    }

    /// Number of interned ClusterNetworkPolicy peer sets.
    pub fn cluster_peer_set_count(&self) -> usize {
        self.cluster.peer_set_count()
    }

    /// A ClusterNetworkPolicy peer set.
    pub fn cluster_peer_set(&self, id: ClusterPeerSetId) -> &ClusterPeerSet {
        self.cluster.peer_set(id)
    }

    /// The resolved peer sets of rule `rule` of ClusterNetworkPolicy `policy` in `dir`,
    /// parallel to the rule's peers.
    pub fn cluster_rule_peers(
        &self,
        policy: crate::model::ClusterPolicyId,
        dir: Direction,
        rule: usize,
    ) -> Vec<&ClusterPeerSet> {
        self.cluster
            .rule_peers(policy, dir, rule)
            .iter()
            .map(|id| self.cluster.peer_set(*id))
            .collect()
    }

    /// The petgraph graph itself.
    pub fn graph(&self) -> &DiGraph<Node, Provenance> {
        &self.graph
    }

    /// Isolation of an endpoint.
    pub fn isolation(&self, id: EndpointId) -> &Isolation {
        &self.isolation[id.0 as usize]
    }

    /// A peer set.
    pub fn peer_set(&self, id: PeerSetId) -> &PeerSet {
        &self.peers[id.0 as usize]
    }

    /// Number of peer sets (including "anyone").
    pub fn peer_set_count(&self) -> usize {
        self.peers.len()
    }

    /// The allow edges of an endpoint in a direction: `(peer set, provenance)`, sorted by
    /// provenance.
    pub fn edges(&self, id: EndpointId, dir: Direction) -> Vec<(PeerSetId, Provenance)> {
        let n = self.endpoint_nodes[id.0 as usize];
        let pg = match dir {
            Direction::Ingress => PgDir::Incoming,
            Direction::Egress => PgDir::Outgoing,
        };
        let mut out: Vec<(PeerSetId, Provenance)> = self
            .graph
            .edges_directed(n, pg)
            .filter(|e| e.weight().direction == dir)
            .filter_map(|e| {
                let other = match pg {
                    PgDir::Incoming => e.source(),
                    PgDir::Outgoing => e.target(),
                };
                match self.graph[other] {
                    Node::Peer(p) => Some((p, *e.weight())),
                    Node::Endpoint(_) => None,
                }
            })
            .collect();
        out.sort_by_key(|(_, p)| *p);
        out
    }

    /// True when peer set `set` contains `subject` (seen at address `ip`).
    pub fn peer_contains(&self, set: PeerSetId, subject: Subject, ip: Option<IpAddr>) -> bool {
        match &self.peers[set.0 as usize] {
            PeerSet::All => true,
            PeerSet::Endpoints(v) => match subject {
                Subject::Endpoint(id) => v.binary_search(&id).is_ok(),
                Subject::External(_) => false,
            },
            PeerSet::Block(b) => ip.is_some_and(|ip| b.contains(&ip)),
        }
    }

    /// The addresses a flow uses: the destination's primary IP, and the source's IP of the
    /// same family (its primary IP when it has none of that family).
    pub fn addresses(
        model: &Model,
        src: Subject,
        dst: Subject,
    ) -> (Option<IpAddr>, Option<IpAddr>) {
        let dst_ip = match dst {
            Subject::External(ip) => Some(ip),
            Subject::Endpoint(id) => model.endpoint(id).ips.first().copied(),
        };
        let src_ip = match src {
            Subject::External(ip) => Some(ip),
            Subject::Endpoint(id) => {
                let ips = &model.endpoint(id).ips;
                dst_ip
                    .and_then(|d| ips.iter().find(|i| i.is_ipv4() == d.is_ipv4()))
                    .or(ips.first())
                    .copied()
            }
        };
        (src_ip, dst_ip)
    }

    /// Everything that may flow from `src` to `dst`, with both sides' reasons, using the
    /// addresses chosen by [`AllowGraph::addresses`].
    pub fn reach(&self, model: &Model, src: Subject, dst: Subject) -> Reach {
        let (src_ip, dst_ip) = Self::addresses(model, src, dst);
        self.reach_at(model, src, src_ip, dst, dst_ip)
    }

    /// Like [`AllowGraph::reach`], with explicit addresses (for one IP family of a
    /// dual-stack Pod).
    pub fn reach_at(
        &self,
        model: &Model,
        src: Subject,
        src_ip: Option<IpAddr>,
        dst: Subject,
        dst_ip: Option<IpAddr>,
    ) -> Reach {
        self.reach_inner(model, src, src_ip, dst, dst_ip, true)
    }

    /// [`AllowGraph::reach`]'s `allowed` set alone, without the reasons (no policy lists,
    /// no rule matches, no sorting): for callers that ask every pair (`list`, `diff`).
    /// The same semantics, step for step; `tests/it/connectivity.rs` compares both on
    /// every pair of every golden case and of a synthetic cluster.
    pub fn allowed(&self, model: &Model, src: Subject, dst: Subject) -> PortSet {
        if !model.cluster_policies.is_empty() {
            // ClusterNetworkPolicy tiers decide before NetworkPolicies: reach's full walk.
            return self.reach(model, src, dst).allowed;
        }
        let (src_ip, dst_ip) = Self::addresses(model, src, dst);
        if matches!((src, dst), (Subject::Endpoint(a), Subject::Endpoint(b)) if a == b && model.endpoint(a).single())
        {
            return PortSet::all();
        }
        let dst_ep = dst.endpoint(model);
        let egress = match src {
            Subject::Endpoint(id) if model.endpoint(id).selectable() => {
                self.side_allowed(model, id, Direction::Egress, dst, dst_ip, dst_ep)
            }
            _ => PortSet::all(),
        };
        if egress.is_empty() {
            return egress;
        }
        if from_own_node(model, src, src_ip, dst) {
            return egress;
        }
        let ingress = match dst {
            Subject::Endpoint(id) if model.endpoint(id).selectable() => {
                self.side_allowed(model, id, Direction::Ingress, src, src_ip, dst_ep)
            }
            _ => PortSet::all(),
        };
        egress.intersect(&ingress)
    }

    /// [`AllowGraph::side`]'s allowed set alone.
    fn side_allowed(
        &self,
        model: &Model,
        at: EndpointId,
        dir: Direction,
        peer: Subject,
        peer_ip: Option<IpAddr>,
        dst_ep: Option<&Endpoint>,
    ) -> PortSet {
        if self.isolation[at.0 as usize].by(dir).is_empty() {
            return PortSet::all();
        }
        let n = self.endpoint_nodes[at.0 as usize];
        let pg = match dir {
            Direction::Ingress => PgDir::Incoming,
            Direction::Egress => PgDir::Outgoing,
        };
        let mut allowed = PortSet::none();
        for e in self.graph.edges_directed(n, pg) {
            let prov = e.weight();
            if prov.direction != dir {
                continue;
            }
            let other = match pg {
                PgDir::Incoming => e.source(),
                PgDir::Outgoing => e.target(),
            };
            let Node::Peer(set) = self.graph[other] else {
                continue;
            };
            if !self.peer_contains(set, peer, peer_ip) {
                continue;
            }
            let rule = rule_of(model, prov);
            if rule.ports.is_none() {
                return PortSet::all();
            }
            allowed.add(&rule_ports(rule, dst_ep));
        }
        allowed
    }

    fn reach_inner(
        &self,
        model: &Model,
        src: Subject,
        src_ip: Option<IpAddr>,
        dst: Subject,
        dst_ip: Option<IpAddr>,
        exempt_self: bool,
    ) -> Reach {
        let dst_ep = dst.endpoint(model);
        let egress = match src {
            Subject::Endpoint(id) if model.endpoint(id).selectable() => {
                self.side(model, id, Direction::Egress, dst, dst_ip, dst_ep)
            }
            _ => not_applicable(),
        };
        let ingress = match dst {
            Subject::Endpoint(id) if model.endpoint(id).selectable() => {
                self.side(model, id, Direction::Ingress, src, src_ip, dst_ep)
            }
            _ => not_applicable(),
        };
        // A workload with several (or an unknown number of) replicas: two distinct Pods.
        let to_self = exempt_self
            && matches!((src, dst), (Subject::Endpoint(a), Subject::Endpoint(b)) if a == b && model.endpoint(a).single());
        let from_node = from_own_node(model, src, src_ip, dst);
        let mut ingress = ingress;
        if from_node {
            // The destination's ingress always admits its own node (enforced in its table
            // by `ip saddr @node_v4 accept`).
            ingress.allowed = PortSet::all();
        }
        let allowed = if to_self {
            PortSet::all()
        } else {
            egress.allowed.intersect(&ingress.allowed)
        };
        Reach {
            src,
            dst,
            src_ip,
            dst_ip,
            to_self,
            from_node,
            egress,
            ingress,
            allowed,
        }
    }

    /// The flows of a connection to Service port `port` (index into `svc.ports`) of
    /// `svc`: one per backend that serves the port, each judged after DNAT exactly as a
    /// direct connection to the backend on its target port ([`AllowGraph::reach`]).
    pub fn reach_service(
        &self,
        model: &Model,
        src: Subject,
        svc: &Service,
        port: usize,
    ) -> Vec<ServiceFlow> {
        self.reach_service_in(model, src, svc, port, None)
    }

    /// [`AllowGraph::reach_service`] for one address family of a dual-stack Service
    /// (`v6`: a connection to its IPv6 address, DNATed to the backends' IPv6 addresses):
    /// every backend with an address of that family, judged at the source's and the
    /// backend's addresses of that family. A source without an address of the family
    /// has no flows.
    pub fn reach_service_at(
        &self,
        model: &Model,
        src: Subject,
        svc: &Service,
        port: usize,
        v6: bool,
    ) -> Vec<ServiceFlow> {
        self.reach_service_in(model, src, svc, port, Some(v6))
    }

    fn reach_service_in(
        &self,
        model: &Model,
        src: Subject,
        svc: &Service,
        port: usize,
        family: Option<bool>,
    ) -> Vec<ServiceFlow> {
        let of_family = |s: Subject, v6: bool| match s {
            Subject::External(ip) => (ip.is_ipv6() == v6).then_some(ip),
            Subject::Endpoint(id) => model
                .endpoint(id)
                .ips
                .iter()
                .find(|i| i.is_ipv6() == v6)
                .copied(),
        };
        let Some(sp) = svc.ports.get(port) else {
            return Vec::new();
        };
        svc.backends
            .iter()
            .filter_map(|b| {
                let target_port = b.ports.get(port).copied().flatten()?;
                let dst = match b.target {
                    BackendTarget::Endpoint(id) => Subject::Endpoint(id),
                    BackendTarget::Address(ip) => Subject::External(ip),
                };
                // Hairpin (a Pod to itself through a Service) is judged like any flow: the
                // self exemption covers a Pod's own IP only (network-policy-api).
                let hairpin = src == dst;
                let (src_ip, dst_ip) = match family {
                    None => Self::addresses(model, src, dst),
                    Some(v6) => (Some(of_family(src, v6)?), Some(of_family(dst, v6)?)),
                };
                let reach = self.reach_inner(model, src, src_ip, dst, dst_ip, false);
                let allowed = reach.allowed.contains(sp.protocol, target_port);
                Some(ServiceFlow {
                    backend: dst,
                    protocol: sp.protocol,
                    target_port,
                    allowed,
                    hairpin,
                    reach,
                })
            })
            .collect()
    }

    fn side(
        &self,
        model: &Model,
        at: EndpointId,
        dir: Direction,
        peer: Subject,
        peer_ip: Option<IpAddr>,
        dst_ep: Option<&Endpoint>,
    ) -> SideVerdict {
        let policies = self.isolation[at.0 as usize].by(dir).to_vec();
        let cluster = !self.cluster.subjects(at).is_empty();
        if policies.is_empty() && !cluster {
            return SideVerdict {
                applies: true,
                isolated: false,
                policies,
                allowed: PortSet::all(),
                matches: Vec::new(),
                tiers: TierWalk {
                    to_network_policy: PortSet::all(),
                    network_policy_allowed: PortSet::all(),
                    to_baseline: PortSet::all(),
                    to_default: PortSet::all(),
                    ..TierWalk::default()
                },
            };
        }
        let isolated = !policies.is_empty();
        let mut allowed = PortSet::none();
        let mut matches = Vec::new();
        for (set, prov) in self.edges(at, dir) {
            if !self.peer_contains(set, peer, peer_ip) {
                continue;
            }
            let rule = rule_of(model, &prov);
            let ports = rule_ports(rule, dst_ep);
            allowed.add(&ports);
            matches.push(RuleMatch {
                provenance: prov,
                ports,
            });
        }
        let np = isolated.then_some(&allowed);
        let (tiers, allowed) = self.cluster.walk(model, at, dir, peer, peer_ip, dst_ep, np);
        SideVerdict {
            applies: true,
            isolated,
            policies,
            allowed,
            matches,
            tiers,
        }
    }

    /// Stable text dump: per endpoint, its isolation and allow edges; then the peer sets.
    pub fn dump(&self, model: &Model) -> String {
        let mut s = String::new();
        for e in &model.endpoints {
            let _ = writeln!(s, "endpoint {}", e.key());
            for dir in [Direction::Ingress, Direction::Egress] {
                let pols = self.isolation(e.id).by(dir);
                if pols.is_empty() {
                    let _ = writeln!(s, "  {dir}: not isolated");
                    continue;
                }
                let names: Vec<String> = pols.iter().map(|p| model.policy(*p).key()).collect();
                let _ = writeln!(s, "  {dir}: isolated by {}", names.join(", "));
                for (set, prov) in self.edges(e.id, dir) {
                    let rule = rule_of(model, &prov);
                    let ports = rule.ports_text();
                    let peer = match prov.peer {
                        Some(p) => format!("peer {p}"),
                        None => "any peer".into(),
                    };
                    let _ = writeln!(
                        s,
                        "    {} rule {} {peer}: {} [{ports}]",
                        model.policy(prov.policy).key(),
                        prov.rule,
                        self.describe_peer_set(model, set),
                    );
                }
            }
            let cluster = self.cluster.subjects(e.id);
            if !cluster.is_empty() {
                let names: Vec<String> = cluster
                    .iter()
                    .map(|id| {
                        let p = model.cluster_policy(*id);
                        format!("{} ({} {})", p.name, p.tier, p.priority)
                    })
                    .collect();
                let _ = writeln!(s, "  clusternetworkpolicies: {}", names.join(", "));
            }
        }
        s
    }

    /// `{x/a, x/b}`, `ipBlock 10.0.0.0/8 except ...` or `anyone`.
    pub fn describe_peer_set(&self, model: &Model, set: PeerSetId) -> String {
        match &self.peers[set.0 as usize] {
            PeerSet::All => "anyone".into(),
            PeerSet::Block(b) => format!("ipBlock {b}"),
            PeerSet::Endpoints(v) => {
                let names: Vec<String> = v.iter().map(|id| model.endpoint(*id).key()).collect();
                format!("{{{}}}", names.join(", "))
            }
        }
    }

    /// The peer a set was interned from (`None` for "anyone").
    pub fn peer_source(&self, set: PeerSetId) -> Option<&Peer> {
        self.peer_sources[set.0 as usize].as_ref()
    }
}

/// One backend's flow of a connection through a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFlow {
    /// The backend (the destination after DNAT).
    pub backend: Subject,
    /// Protocol of the Service port.
    pub protocol: crate::ports::Protocol,
    /// The port the backend receives the connection on.
    pub target_port: u16,
    /// Whether the flow is allowed on `target_port`.
    pub allowed: bool,
    /// The source is the backend itself (hairpin): judged, not exempt.
    pub hairpin: bool,
    /// The full verdict of the flow `src -> backend`.
    pub reach: Reach,
}

/// True when `src` (seen at `src_ip`) is the node `dst` runs on: an address of that node
/// (its Node object's, or a hostNetwork Pod's on it) or a hostNetwork Pod on it. Pod IPs
/// never count, even when a Node object lists them.
fn from_own_node(model: &Model, src: Subject, src_ip: Option<IpAddr>, dst: Subject) -> bool {
    let Subject::Endpoint(d) = dst else {
        return false;
    };
    let de = model.endpoint(d);
    let Some(node) = de.node.as_deref().filter(|_| de.selectable()) else {
        return false;
    };
    match src {
        Subject::External(ip) => model.is_node_address(node, &ip),
        Subject::Endpoint(s) => {
            let se = model.endpoint(s);
            !se.selectable()
                && (se.node.as_deref() == Some(node)
                    || src_ip.is_some_and(|ip| model.is_node_address(node, &ip)))
        }
    }
}

fn not_applicable() -> SideVerdict {
    SideVerdict {
        applies: false,
        isolated: false,
        policies: Vec::new(),
        allowed: PortSet::all(),
        matches: Vec::new(),
        tiers: TierWalk::default(),
    }
}

fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// The rule an edge came from.
pub fn rule_of<'m>(model: &'m Model, prov: &Provenance) -> &'m Rule {
    &model.policy(prov.policy).rules(prov.direction)[prov.rule as usize]
}

/// Ports a rule allows toward `dst` (named ports resolved against it).
pub fn rule_ports(rule: &Rule, dst: Option<&Endpoint>) -> PortSet {
    match &rule.ports {
        None => PortSet::all(),
        Some(ports) => {
            // One merge per protocol: rules with many ports stay linear-logarithmic.
            let resolved: Vec<(crate::ports::Protocol, PortRanges)> =
                ports.iter().map(|p| (p.protocol, p.resolve(dst))).collect();
            PortSet::from_parts(resolved.iter().map(|(p, r)| (*p, r)))
        }
    }
}

struct GraphBuilder<'m> {
    model: &'m Model,
    graph: DiGraph<Node, Provenance>,
    peers: Vec<PeerSet>,
    peer_sources: Vec<Option<Peer>>,
    peer_nodes: Vec<NodeIndex>,
    interned: BTreeMap<&'m Peer, PeerSetId>,
    ns_cache: BTreeMap<&'m crate::selector::Selector, Vec<&'m str>>,
}

impl<'m> GraphBuilder<'m> {
    fn intern(&mut self, peer: &'m Peer) -> PeerSetId {
        if let Some(id) = self.interned.get(peer) {
            return *id;
        }
        let set = match peer {
            Peer::IpBlock(b) => PeerSet::Block(b.clone()),
            Peer::Pods { namespaces, pods } => {
                let model = self.model;
                let nss: Vec<&str> = match namespaces {
                    NamespaceScope::Own(ns) => vec![ns.as_str()],
                    NamespaceScope::Selector(sel) => self
                        .ns_cache
                        .entry(sel)
                        .or_insert_with(|| {
                            model
                                .namespaces
                                .iter()
                                .filter(|(_, info)| sel.matches(&info.labels))
                                .map(|(n, _)| n.as_str())
                                .collect()
                        })
                        .clone(),
                };
                let mut members: Vec<EndpointId> = nss
                    .iter()
                    .flat_map(|ns| model.endpoints_in(ns).iter().copied())
                    .filter(|id| {
                        let e = model.endpoint(*id);
                        e.selectable() && pods.matches(&e.labels)
                    })
                    .collect();
                members.sort_unstable();
                PeerSet::Endpoints(members)
            }
        };
        let id = PeerSetId(index_u32(self.peers.len()));
        self.peers.push(set);
        self.peer_sources.push(Some(peer.clone()));
        let n = self.graph.add_node(Node::Peer(id));
        self.peer_nodes.push(n);
        self.interned.insert(peer, id);
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{SourceText, load};

    #[test]
    fn reach_service_at_judges_each_family_at_its_own_addresses() {
        // See: #10 — a dual-stack Service: the IPv4 ipBlock allows the v4 flow only.
        let text = r#"apiVersion: v1
kind: Pod
metadata: {name: client, namespace: x, labels: {app: client}}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: x, labels: {app: web}}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: 10.0.0.2}, {ip: "fd00::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: v4only, namespace: x, labels: {app: v4only}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  clusterIPs: [10.96.0.5, "fd00:10:96::5"]
  ipFamilyPolicy: RequireDualStack
  selector: {app: web}
  ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-v4-only, namespace: x}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/24}}]}]
"#;
        let (inputs, d) = load(&[SourceText { name: "t", text }]);
        assert!(d.is_empty(), "{d:?}");
        let (model, d) = Model::build(&inputs);
        assert!(d.iter().all(|d| !d.is_error()), "{d:?}");
        let graph = AllowGraph::build(&model);
        let svc = model.service("x/web").unwrap();
        let client = Subject::Endpoint(model.endpoint_by_key("x/client").unwrap());
        let v4only = Subject::Endpoint(model.endpoint_by_key("x/v4only").unwrap());
        let v4 = graph.reach_service_at(&model, client, svc, 0, false);
        let v6 = graph.reach_service_at(&model, client, svc, 0, true);
        assert_eq!(v4.len(), 1);
        assert_eq!(v6.len(), 1);
        assert!(v4[0].allowed);
        assert!(!v6[0].allowed, "the ipBlock is IPv4 only");
        assert_eq!(v6[0].reach.dst_ip, Some("fd00::2".parse().unwrap()));
        // The primary family is what reach_service answers.
        assert!(graph.reach_service(&model, client, svc, 0)[0].allowed);
        // A source without an IPv6 address has no IPv6 flow.
        assert!(
            graph
                .reach_service_at(&model, v4only, svc, 0, true)
                .is_empty()
        );
    }

    #[test]
    fn subjects_parse_pods_workloads_and_addresses() {
        let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c}]}\n";
        let (inputs, d) = load(&[SourceText { name: "t", text }]);
        assert!(d.is_empty(), "{d:?}");
        let (model, d) = Model::build(&inputs);
        assert!(d.is_empty(), "{d:?}");
        let a = model.endpoint_by_key("default/a").unwrap();
        let web = model.endpoint_by_key("shop/deployment/web").unwrap();
        assert_eq!(Subject::parse(&model, "a"), Ok(Subject::Endpoint(a)));
        assert_eq!(
            Subject::parse(&model, "default/a"),
            Ok(Subject::Endpoint(a))
        );
        assert_eq!(Subject::parse(&model, "10.0.0.1"), Ok(Subject::Endpoint(a)));
        assert_eq!(
            Subject::parse(&model, "shop/deployment/web"),
            Ok(Subject::Endpoint(web))
        );
        assert_eq!(
            Subject::parse(&model, "shop/deploy/web"),
            Ok(Subject::Endpoint(web))
        );
        assert_eq!(
            Subject::parse(&model, "203.0.113.9"),
            Ok(Subject::External("203.0.113.9".parse().unwrap()))
        );
        assert!(
            Subject::parse(&model, "shop/widget/web")
                .unwrap_err()
                .contains("unknown workload kind")
        );
        assert!(
            Subject::parse(&model, "shop/web")
                .unwrap_err()
                .contains("shop/deployment/web")
        );
        assert!(
            Subject::parse(&model, "x/y/z/w")
                .unwrap_err()
                .contains("not an endpoint")
        );
        // A workload has no IP: traffic to itself is self traffic, to others is evaluated.
        let r =
            AllowGraph::build(&model).reach(&model, Subject::Endpoint(web), Subject::Endpoint(a));
        assert!(r.allowed.is_all());
    }
}
