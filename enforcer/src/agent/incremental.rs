//! Incremental compile: a local Pod's table is rendered again only when something its
//! render reads changed (issue #12 point 3).
//!
//! [`Inputs`] fingerprints, for one compiled model and graph, everything
//! [`policy_compiler::ruleset::compile_pod`] reads for one Pod: the Pod itself (not
//! its index), its isolation, its edges with the content of each peer set they lead to
//! (the members' addresses and container ports, not interned ids), its node's
//! addresses, and a cluster-wide part (policies, ClusterNetworkPolicies, audit
//! policies, Namespaces, Services, Nodes; every endpoint too when a rule's named ports
//! resolve against all of them, and whenever audit policies exist). Peer sets are hashed once per compile and shared by every table that
//! references them. A table whose fingerprint equals the last one keeps its rendered
//! `Desired` (shared by `Arc`): no interval sweep, no text, no entries.
//!
//! The fingerprint over-approximates on purpose (a policy edit re-renders every table,
//! a change of ClusterNetworkPolicy peers every table): what must never happen is a
//! table kept while its render would differ. The randomised test in
//! `reconciler/tests.rs` (`incremental_equals_full_compile`) compares the two paths
//! after every event.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::net::IpAddr;

use policy_compiler::graph::{PeerSet, PeerSetId, rule_of};
use policy_compiler::model::PortMatch;
use policy_compiler::{AllowGraph, Direction, Endpoint, EndpointId, Model};
use sha2::{Digest, Sha256};

/// A SHA-256 over the inputs of one render.
pub(super) type Fingerprint = [u8; 32];

/// A hasher that `write!` feeds (Debug output of model objects, without allocating).
struct Hasher(Sha256);

impl Hasher {
    fn new(tag: &str) -> Self {
        let mut h = Self(Sha256::new());
        h.str(tag);
        h
    }

    /// A length-prefixed string: no two sequences of strings hash alike by accident.
    fn str(&mut self, s: &str) {
        self.0.update((s.len() as u64).to_le_bytes());
        self.0.update(s.as_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.0.update((b.len() as u64).to_le_bytes());
        self.0.update(b);
    }

    fn debug(&mut self, v: &impl fmt::Debug) {
        // Writing into a hasher cannot fail.
        let _ = write!(self, "{v:?}");
        self.0.update([0xff]);
    }

    fn finish(self) -> Fingerprint {
        self.0.finalize().into()
    }
}

impl fmt::Write for Hasher {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

/// An endpoint as a render sees it: everything but its index in the model (which
/// shifts whenever a Pod sorted before it comes or goes) and where it was read from.
fn endpoint(h: &mut Hasher, e: &Endpoint) {
    h.str(&e.namespace);
    h.str(&e.name);
    h.debug(&(
        &e.kind,
        &e.labels,
        &e.ips,
        &e.ports,
        e.host_network,
        &e.node,
        &e.owner,
        e.replicas,
    ));
}

/// The fingerprints of one compiled model and graph; peer sets and the cluster-wide
/// part are computed on first use and shared by every table.
pub(super) struct Inputs<'m> {
    model: &'m Model,
    graph: &'m AllowGraph,
    global: Option<Fingerprint>,
    endpoints: Option<Fingerprint>,
    peer_sets: HashMap<PeerSetId, Fingerprint>,
}

impl<'m> Inputs<'m> {
    pub(super) fn new(model: &'m Model, graph: &'m AllowGraph) -> Self {
        Self {
            model,
            graph,
            global: None,
            endpoints: None,
            peer_sets: HashMap::new(),
        }
    }

    /// Every endpoint (named ports of rules toward blocks resolve against all Pods in
    /// them; ClusterNetworkPolicy peers select endpoints by identity).
    fn endpoints(&mut self) -> Fingerprint {
        let model = self.model;
        *self.endpoints.get_or_insert_with(|| {
            let mut h = Hasher::new("endpoints");
            for e in &model.endpoints {
                endpoint(&mut h, e);
            }
            h.finish()
        })
    }

    /// What every table may read: policies, ClusterNetworkPolicies (and, when there
    /// are any, every endpoint: their peers), Namespaces, Services, Nodes.
    fn global(&mut self) -> Fingerprint {
        if let Some(g) = self.global {
            return g;
        }
        let model = self.model;
        let mut h = Hasher::new("global");
        // Whole policies (their index and origin too: they change only when the set of
        // policies or their file changes, and a field added later is covered).
        h.debug(&model.policies);
        for c in &model.cluster_policies {
            // Its index is part of its drop rules' log prefix.
            h.debug(&c.id);
            h.debug(c);
        }
        // Audit policies: a table's audit chains are rendered from the audited model,
        // whose edges and peer sets this fingerprint does not follow one by one; with any
        // audit policy, every endpoint counts (coarse, and never stale).
        h.debug(&model.audit_policies);
        for c in &model.audit_cluster_policies {
            h.debug(&c.id);
            h.debug(c);
        }
        if !model.cluster_policies.is_empty() || model.has_audit() {
            let e = self.endpoints();
            h.bytes(&e);
        }
        h.debug(&model.namespaces);
        // What `service_sets` reads (not the backends: a Pod coming or going changes
        // them, and Pod tables do not list them).
        for s in &model.services {
            h.debug(&(
                &s.namespace,
                &s.name,
                &s.service_type,
                &s.cluster_ips,
                s.headless,
                &s.external_ips,
                &s.load_balancer_ips,
                &s.external_name,
                &s.ports,
            ));
        }
        h.debug(&model.nodes);
        let g = h.finish();
        self.global = Some(g);
        g
    }

    /// The content of a peer set: its members' identity, addresses and container
    /// ports (egress named ports resolve against them), or its block.
    fn peer_set(&mut self, id: PeerSetId) -> Fingerprint {
        let (model, graph) = (self.model, self.graph);
        *self.peer_sets.entry(id).or_insert_with(|| {
            let mut h = Hasher::new("peer set");
            match graph.peer_set(id) {
                PeerSet::Endpoints(members) => {
                    h.str("endpoints");
                    for m in members {
                        endpoint(&mut h, model.endpoint(*m));
                    }
                }
                PeerSet::Block(b) => {
                    h.str("block");
                    h.debug(b);
                }
                PeerSet::All => h.str("all"),
            }
            h.finish()
        })
    }

    /// The fingerprint of the render of `pod` with `node_addresses` (`Some`: the agent
    /// owns a node table) into `netns`.
    pub(super) fn pod(
        &mut self,
        pod: EndpointId,
        node_addresses: Option<&[IpAddr]>,
        netns: &str,
    ) -> Fingerprint {
        let (model, graph) = (self.model, self.graph);
        let global = self.global();
        let mut h = Hasher::new("pod");
        h.bytes(&global);
        h.str(netns);
        h.debug(&node_addresses);
        let ep = model.endpoint(pod);
        endpoint(&mut h, ep);
        if let Some(node) = &ep.node {
            h.debug(&model.node_addresses(node));
        }
        let iso = graph.isolation(pod);
        for dir in [Direction::Ingress, Direction::Egress] {
            h.str(dir.as_str());
            for p in iso.by(dir) {
                h.str(&model.policy(*p).key());
            }
        }
        for c in graph.cluster_subjects(pod) {
            h.str(&model.cluster_policy(*c).name);
        }
        let mut all_endpoints = false;
        for dir in [Direction::Ingress, Direction::Egress] {
            h.str(dir.as_str());
            for (set, prov) in graph.edges(pod, dir) {
                h.str(&model.policy(prov.policy).key());
                h.debug(&(prov.direction, prov.rule, prov.peer));
                let content = self.peer_set(set);
                h.bytes(&content);
                // Egress named ports toward a block resolve against every Pod in it.
                if dir == Direction::Egress && !matches!(graph.peer_set(set), PeerSet::Endpoints(_))
                {
                    let rule = rule_of(model, &prov);
                    all_endpoints |= rule
                        .ports
                        .iter()
                        .flatten()
                        .any(|p| matches!(p.port, PortMatch::Named(_)));
                }
            }
        }
        if all_endpoints {
            let e = self.endpoints();
            h.bytes(&e);
        }
        h.finish()
    }
}
