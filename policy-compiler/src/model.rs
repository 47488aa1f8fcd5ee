//! The Model: validated, defaulted and normalised cluster state.
//!
//! [`Model::build`] turns typed objects into endpoints (Pods and workload Pod templates),
//! namespaces (declared or implicit) and policies whose rules are in a normal form:
//! absent and empty lists are told apart only where the API tells them apart, defaults are
//! applied as the API server applies them, and every invalid field becomes a
//! [`Diagnostic`].

mod enforce;

pub use enforce::{NoRuleset, is_finished, pod_gets_ruleset};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::diagnostic::{Diagnostic, ObjectRef, Origin};
use crate::load::{Inputs, Located, WorkloadKind};
use crate::ports::{PortRanges, Protocol};
use crate::selector::{Labels, Selector};
use crate::validate;

mod audit;
mod cluster;
mod patch;
mod service;

pub use audit::{MODE_ANNOTATION, MODE_FIELD, PolicyMode};
pub use patch::{ModelChange, Patched};

pub use cluster::{
    Action, ClusterPeer, ClusterPolicy, ClusterPolicyId, ClusterPort, ClusterRule, MAX_ITEMS,
    PodSelection, Tier, selected_node_addresses,
};
pub use service::{
    Backend, BackendSource, BackendTarget, NodeInfo, SERVICE_NAME_LABEL, Service, ServicePort,
    ServiceType, TargetPort, unusable_service_ip,
};

/// The label every Namespace carries with its own name.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Index of an endpoint in [`Model::endpoints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId(pub u32);

/// Index of a policy in [`Model::policies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyId(pub u32);

/// A Namespace, declared or implied by an object in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceInfo {
    /// Labels, always including `kubernetes.io/metadata.name`.
    pub labels: Labels,
    /// False when no Namespace object was given.
    pub declared: bool,
}

/// What an endpoint is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointKind {
    /// A Pod.
    Pod,
    /// The Pod template of a workload controller.
    Workload(WorkloadKind),
    /// A Pod declared by labels in an endpoints file ([`crate::declared`]): created at
    /// run time by an operator, not in the manifests.
    Declared,
}

/// A container port a named port can resolve to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ContainerPort {
    /// Port name, if any.
    pub name: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// A Pod, or a workload's Pod template: something traffic flows to and from.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Index in the model.
    pub id: EndpointId,
    /// Namespace.
    pub namespace: String,
    /// Object name.
    pub name: String,
    /// Pod or workload.
    pub kind: EndpointKind,
    /// Pod (or template) labels.
    pub labels: Labels,
    /// Pod IPs, primary first.
    pub ips: Vec<IpAddr>,
    /// Declared container ports.
    pub ports: Vec<ContainerPort>,
    /// hostNetwork Pods are node endpoints: pod selectors never select them.
    pub host_network: bool,
    /// `spec.nodeName`, when set.
    pub node: Option<String>,
    /// Controller owner (`kind`, `name`) from ownerReferences; for a Pod whose owner chain
    /// leads to a workload in the input, that top workload (see `Model::replaced_by`).
    pub owner: Option<(String, String)>,
    /// How many Pods it stands for: 1 for a Pod, the workload's replica count, `None` when
    /// unknown (DaemonSets). Traffic from an endpoint to itself is self traffic only when
    /// this is `Some(1)`; otherwise it is judged between two distinct replicas.
    pub replicas: Option<u32>,
    /// Where it came from.
    pub origin: Option<Origin>,
}

impl Endpoint {
    /// `ns/name` for Pods, `ns/kind/name` for workloads.
    pub fn key(&self) -> String {
        match self.kind {
            EndpointKind::Pod => format!("{}/{}", self.namespace, self.name),
            EndpointKind::Workload(k) => format!("{}/{}/{}", self.namespace, k.lower(), self.name),
            EndpointKind::Declared => format!(
                "{}/{}/{}",
                self.namespace,
                crate::declared::KEY_KIND,
                self.name
            ),
        }
    }

    /// True when the endpoint is exactly one Pod (a Pod, or a workload with one replica).
    pub fn single(&self) -> bool {
        self.replicas == Some(1)
    }

    /// True when pod selectors may select this endpoint.
    pub fn selectable(&self) -> bool {
        !self.host_network
    }

    /// Port numbers a named port resolves to on this endpoint for `protocol`.
    pub fn resolve_named_port(&self, name: &str, protocol: Protocol) -> Vec<u16> {
        let mut v: Vec<u16> = self
            .ports
            .iter()
            .filter(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }
}

/// The namespaces a peer's pod selector looks in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NamespaceScope {
    /// No namespaceSelector: the policy's own namespace.
    Own(String),
    /// namespaceSelector: every namespace it matches (`{}` is all).
    Selector(Selector),
}

/// An ipBlock: a CIDR minus excepts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpBlock {
    /// The block (host bits cleared).
    pub cidr: IpNet,
    /// Carved-out sub-blocks, each strictly inside `cidr`.
    pub except: Vec<IpNet>,
}

impl IpBlock {
    /// True when `ip` is in the cidr and in no except.
    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let ex: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            write!(f, " except {}", ex.join(", "))?;
        }
        Ok(())
    }
}

/// One peer of a rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Peer {
    /// Pods selected by a pod selector in the namespaces of a scope (AND).
    Pods {
        /// Which namespaces.
        namespaces: NamespaceScope,
        /// Which Pods in them (`{}` when absent).
        pods: Selector,
    },
    /// Addresses in a block, Pod IPs included.
    IpBlock(IpBlock),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Pods { namespaces, pods } => match namespaces {
                NamespaceScope::Own(ns) => write!(f, "pods {pods} in namespace {ns}"),
                NamespaceScope::Selector(s) if s.is_everything() => {
                    write!(f, "pods {pods} in all namespaces")
                }
                NamespaceScope::Selector(s) => write!(f, "pods {pods} in namespaces {s}"),
            },
            Peer::IpBlock(b) => write!(f, "ipBlock {b}"),
        }
    }
}

/// Which ports of a protocol a rule port allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PortMatch {
    /// No port number: every port of the protocol.
    Any,
    /// A number, or `port`..=`endPort`.
    Range(u16, u16),
    /// A named port, resolved against the destination Pod's container ports.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RulePort {
    /// Protocol (TCP when absent).
    pub protocol: Protocol,
    /// Ports.
    pub port: PortMatch,
}

impl RulePort {
    /// Ports this entry allows toward `dst` (`None` when the destination is not a Pod, so
    /// named ports cannot resolve).
    pub fn resolve(&self, dst: Option<&Endpoint>) -> PortRanges {
        match &self.port {
            PortMatch::Any => PortRanges::all(),
            PortMatch::Range(lo, hi) => PortRanges::range(*lo, *hi),
            PortMatch::Named(n) => dst
                .map(|d| {
                    PortRanges::from_ranges(
                        d.resolve_named_port(n, self.protocol)
                            .into_iter()
                            .map(|p| (p, p)),
                    )
                })
                .unwrap_or_default(),
        }
    }
}

impl fmt::Display for RulePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::Any => write!(f, "{} all ports", self.protocol),
            PortMatch::Range(lo, hi) if lo == hi => write!(f, "{} {lo}", self.protocol),
            PortMatch::Range(lo, hi) => write!(f, "{} {lo}-{hi}", self.protocol),
            PortMatch::Named(n) => write!(f, "{} {n}", self.protocol),
        }
    }
}

/// One ingress or egress rule, normalised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `None`: `from`/`to` absent or empty, every peer (Pods and external addresses).
    pub peers: Option<Vec<Peer>>,
    /// `None`: `ports` absent or empty, every port of every protocol.
    pub ports: Option<Vec<RulePort>>,
}

impl Rule {
    /// `all ports`, or the rule's ports as written (`TCP 80, UDP 53-60, TCP http`).
    pub fn ports_text(&self) -> String {
        match &self.ports {
            None => "all ports".to_string(),
            Some(ps) => ps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// Traffic direction, from the selected Pod's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Into the Pod.
    Ingress,
    /// Out of the Pod.
    Egress,
}

impl Direction {
    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated NetworkPolicy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Index in the model.
    pub id: PolicyId,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Selects the Pods in `namespace` the policy applies to.
    pub pod_selector: Selector,
    /// Whether the policy has the Ingress policyType (after defaulting).
    pub isolates_ingress: bool,
    /// Whether the policy has the Egress policyType (after defaulting).
    pub isolates_egress: bool,
    /// Ingress rules (ignored when `isolates_ingress` is false).
    pub ingress: Vec<Rule>,
    /// Egress rules (ignored when `isolates_egress` is false).
    pub egress: Vec<Rule>,
    /// Where it came from.
    pub origin: Option<Origin>,
    /// `netpol.io/mode`: audit policies live in [`Model::audit_policies`].
    pub mode: PolicyMode,
}

impl Policy {
    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Whether the policy isolates `dir`.
    pub fn isolates(&self, dir: Direction) -> bool {
        match dir {
            Direction::Ingress => self.isolates_ingress,
            Direction::Egress => self.isolates_egress,
        }
    }

    /// Rules for `dir` (empty when the policy does not isolate that direction).
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match (dir, self.isolates(dir)) {
            (_, false) => &[],
            (Direction::Ingress, true) => &self.ingress,
            (Direction::Egress, true) => &self.egress,
        }
    }
}

/// Validated, normalised cluster state.
#[derive(Debug, Clone, Default)]
pub struct Model {
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, NamespaceInfo>,
    /// Endpoints sorted by key; `endpoints[i].id == EndpointId(i)`.
    pub endpoints: Vec<Endpoint>,
    /// Policies sorted by `ns/name`; `policies[i].id == PolicyId(i)`.
    pub policies: Vec<Policy>,
    /// Services sorted by `ns/name`, with their backends.
    pub services: Vec<Service>,
    /// Nodes given as objects, by name.
    pub nodes: BTreeMap<String, NodeInfo>,
    /// ClusterNetworkPolicies in evaluation order: Admin tier, then Baseline; by priority
    /// (lower first), then name; `cluster_policies[i].id == ClusterPolicyId(i)`.
    pub cluster_policies: Vec<ClusterPolicy>,
    /// NetworkPolicies annotated `netpol.io/mode: audit`, sorted like `policies` (ids index
    /// this list). Never enforced: see [`Model::audited`] and docs/audit.md.
    pub audit_policies: Vec<Policy>,
    /// ClusterNetworkPolicies annotated `netpol.io/mode: audit`, in evaluation order (ids
    /// index this list).
    pub audit_cluster_policies: Vec<ClusterPolicy>,
    service_by_key: BTreeMap<String, usize>,
    node_ips: BTreeMap<String, BTreeSet<IpAddr>>,
    by_key: BTreeMap<String, EndpointId>,
    by_ip: BTreeMap<IpAddr, EndpointId>,
    by_namespace: BTreeMap<String, Vec<EndpointId>>,
    replaced: BTreeMap<String, Vec<String>>,
    /// The EndpointSlices as backend resolution reads them, kept so that a
    /// [`Model::patch`] resolves the backends again after Pods changed.
    slices: Vec<service::PendingSlice>,
}

impl Model {
    /// Builds the model, reporting every invalid object or field. Invalid objects are left
    /// out; valid ones are kept.
    pub fn build(inputs: &Inputs) -> (Model, Vec<Diagnostic>) {
        let mut b = Self::builder(
            &inputs.namespaces,
            &inputs.pods,
            &inputs.workloads,
            &inputs.policies,
            &inputs.services,
            &inputs.endpoint_slices,
            &inputs.nodes,
            &inputs.cluster_policies,
        );
        // Declared endpoints (`--endpoints`) are not objects of a cluster. See: #14
        for d in &inputs.declared {
            b.declared(d);
        }
        b.finish()
    }

    /// [`Model::build`] from objects held elsewhere (an index that owns them), by
    /// reference, so nothing is copied into an [`Inputs`] first. Same objects in the same
    /// order, same model.
    pub fn build_from<'a>(
        namespaces: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Namespace>>,
        pods: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Pod>>,
        workloads: impl IntoIterator<Item = &'a Located<crate::load::Workload>>,
        policies: impl IntoIterator<Item = &'a Located<NetworkPolicy>>,
    ) -> (Model, Vec<Diagnostic>) {
        Self::build_with_services(namespaces, pods, workloads, policies, [], [], [])
    }

    /// [`Model::build_from`] with Services, EndpointSlices and Nodes (by reference too).
    pub fn build_with_services<'a>(
        namespaces: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Namespace>>,
        pods: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Pod>>,
        workloads: impl IntoIterator<Item = &'a Located<crate::load::Workload>>,
        policies: impl IntoIterator<Item = &'a Located<NetworkPolicy>>,
        services: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Service>>,
        endpoint_slices: impl IntoIterator<
            Item = &'a Located<k8s_openapi::api::discovery::v1::EndpointSlice>,
        >,
        nodes: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Node>>,
    ) -> (Model, Vec<Diagnostic>) {
        Self::build_all(
            namespaces,
            pods,
            workloads,
            policies,
            services,
            endpoint_slices,
            nodes,
            [],
        )
    }

    /// [`Model::build_with_services`] with ClusterNetworkPolicies (by reference too): what
    /// [`Model::build`] does with every kind of [`Inputs`].
    #[allow(clippy::too_many_arguments)] // one iterator per kind, as the other entry points
    pub fn build_all<'a>(
        namespaces: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Namespace>>,
        pods: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Pod>>,
        workloads: impl IntoIterator<Item = &'a Located<crate::load::Workload>>,
        policies: impl IntoIterator<Item = &'a Located<NetworkPolicy>>,
        services: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Service>>,
        endpoint_slices: impl IntoIterator<
            Item = &'a Located<k8s_openapi::api::discovery::v1::EndpointSlice>,
        >,
        nodes: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Node>>,
        cluster_policies: impl IntoIterator<Item = &'a Located<crate::cnp::ClusterNetworkPolicy>>,
    ) -> (Model, Vec<Diagnostic>) {
        Self::builder(
            namespaces,
            pods,
            workloads,
            policies,
            services,
            endpoint_slices,
            nodes,
            cluster_policies,
        )
        .finish()
    }

    /// A builder holding every object, in the order the model is built from (Nodes and
    /// Services first).
    #[allow(clippy::too_many_arguments)] // one iterator per kind, as the entry points
    fn builder<'a>(
        namespaces: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Namespace>>,
        pods: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Pod>>,
        workloads: impl IntoIterator<Item = &'a Located<crate::load::Workload>>,
        policies: impl IntoIterator<Item = &'a Located<NetworkPolicy>>,
        services: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Service>>,
        endpoint_slices: impl IntoIterator<
            Item = &'a Located<k8s_openapi::api::discovery::v1::EndpointSlice>,
        >,
        nodes: impl IntoIterator<Item = &'a Located<k8s_openapi::api::core::v1::Node>>,
        cluster_policies: impl IntoIterator<Item = &'a Located<crate::cnp::ClusterNetworkPolicy>>,
    ) -> Builder {
        let mut b = Builder::default();
        for n in nodes {
            b.node(n);
        }
        for s in services {
            b.service(s);
        }
        for s in endpoint_slices {
            b.endpoint_slice(s);
        }
        for ns in namespaces {
            b.namespace(ns);
        }
        for pod in pods {
            b.pod(pod);
        }
        for w in workloads {
            b.workload(w);
        }
        for p in policies {
            b.policy(p);
        }
        for p in cluster_policies {
            b.cluster_policy(p);
        }
        b
    }

    /// Endpoint by id.
    pub fn endpoint(&self, id: EndpointId) -> &Endpoint {
        &self.endpoints[id.0 as usize]
    }

    /// Policy by id.
    pub fn policy(&self, id: PolicyId) -> &Policy {
        &self.policies[id.0 as usize]
    }

    /// ClusterNetworkPolicy by id.
    pub fn cluster_policy(&self, id: ClusterPolicyId) -> &ClusterPolicy {
        &self.cluster_policies[id.0 as usize]
    }

    /// Endpoint by key (`ns/name` or `ns/kind/name`).
    pub fn endpoint_by_key(&self, key: &str) -> Option<EndpointId> {
        self.by_key.get(key).copied()
    }

    /// The Pod that has `ip`, if any.
    pub fn endpoint_by_ip(&self, ip: &IpAddr) -> Option<EndpointId> {
        self.by_ip.get(ip).copied()
    }

    /// For a workload that is not an endpoint because ownerReferences in the input say
    /// what stands for it: the keys of its Pods, or of its owner workload when no Pod of
    /// it was given.
    pub fn replaced_by(&self, key: &str) -> Option<&[String]> {
        self.replaced.get(key).map(Vec::as_slice)
    }

    /// Endpoints in a namespace, sorted.
    pub fn endpoints_in(&self, ns: &str) -> &[EndpointId] {
        self.by_namespace.get(ns).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Labels of a namespace (empty when unknown).
    pub fn namespace_labels(&self, ns: &str) -> Option<&Labels> {
        self.namespaces.get(ns).map(|n| &n.labels)
    }

    /// Stable text dump of the normalised model: namespaces, endpoints, policies.
    pub fn dump(&self) -> String {
        use std::fmt::Write as _;
        let labels = |l: &Labels| {
            l.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let mut s = String::new();
        for (name, ns) in &self.namespaces {
            let implicit = if ns.declared { "" } else { " (implicit)" };
            let _ = writeln!(s, "namespace {name}{implicit} [{}]", labels(&ns.labels));
        }
        for e in &self.endpoints {
            let ips: Vec<String> = e.ips.iter().map(ToString::to_string).collect();
            let ports: Vec<String> = e
                .ports
                .iter()
                .map(|p| match &p.name {
                    Some(n) => format!("{n}={}/{}", p.protocol, p.port),
                    None => format!("{}/{}", p.protocol, p.port),
                })
                .collect();
            let host = if e.host_network { " hostNetwork" } else { "" };
            let _ = writeln!(
                s,
                "endpoint {}{host} [{}] ips [{}] ports [{}]",
                e.key(),
                labels(&e.labels),
                ips.join(", "),
                ports.join(", ")
            );
        }
        for p in self.policies.iter().chain(&self.audit_policies) {
            // Audit policies are marked, so a model without them dumps as before.
            let audit = if p.mode == PolicyMode::Audit {
                " (audit)"
            } else {
                ""
            };
            let _ = writeln!(
                s,
                "policy {}{audit} selects pods {}",
                p.key(),
                p.pod_selector
            );
            for dir in [Direction::Ingress, Direction::Egress] {
                if !p.isolates(dir) {
                    continue;
                }
                let rules = p.rules(dir);
                if rules.is_empty() {
                    let _ = writeln!(s, "  {dir}: no rules (deny all)");
                }
                for (i, r) in rules.iter().enumerate() {
                    let peers = match &r.peers {
                        None => "anyone".to_string(),
                        Some(ps) => ps
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(" | "),
                    };
                    let ports = r.ports_text();
                    let _ = writeln!(s, "  {dir} rule {i}: {peers} on [{ports}]");
                }
            }
        }
        cluster::dump(self, &mut s);
        service::dump(self, &mut s);
        s
    }

    /// Policies of a namespace that select `ep`, in order.
    pub fn policies_selecting(&self, ep: &Endpoint) -> impl Iterator<Item = &Policy> {
        self.policies.iter().filter(move |p| {
            ep.selectable() && p.namespace == ep.namespace && p.pod_selector.matches(&ep.labels)
        })
    }
}

#[derive(Default)]
struct Builder {
    namespaces: BTreeMap<String, NamespaceInfo>,
    endpoints: Vec<Endpoint>,
    policies: Vec<Policy>,
    diags: Vec<Diagnostic>,
    /// `kind/namespace/name` of every object taken (no part contains a `/`).
    seen: BTreeSet<String>,
    services: Vec<Service>,
    slices: Vec<service::PendingSlice>,
    nodes: BTreeMap<String, NodeInfo>,
    cluster_policies: Vec<ClusterPolicy>,
}

fn oref(kind: &str, meta: &ObjectMeta, ns: &str) -> ObjectRef {
    ObjectRef {
        kind: kind.to_string(),
        namespace: ns.to_string(),
        name: meta.name.clone().unwrap_or_default(),
    }
}

impl Builder {
    fn err(
        &mut self,
        origin: Option<&Origin>,
        obj: &ObjectRef,
        field: &str,
        value: Option<String>,
        msg: impl Into<String>,
    ) {
        self.diags
            .push(Diagnostic::field_error(origin, obj, field, value, msg));
    }

    /// A port's `protocol` (`TCP` when absent), or an error diagnostic at `field` and
    /// `None` for a value the API server rejects.
    fn port_protocol(
        &mut self,
        value: Option<&str>,
        field: impl FnOnce() -> String,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<Protocol> {
        let Some(s) = value else {
            return Some(Protocol::Tcp);
        };
        let parsed = Protocol::parse_api(s);
        if parsed.is_none() {
            self.err(
                origin,
                obj,
                &field(),
                Some(s.into()),
                "unsupported value: supported values are \"SCTP\", \"TCP\", \"UDP\"",
            );
        }
        parsed
    }

    /// Checks name uniqueness and validity, labels; returns false when the object is invalid.
    #[allow(clippy::too_many_arguments)] // one call per object kind; a struct would only rename them
    fn check_meta(
        &mut self,
        kind: &str,
        meta: &ObjectMeta,
        ns: &str,
        origin: Option<&Origin>,
        name_rule: fn(&str) -> Result<(), String>,
        labels_field: &str,
        labels: Option<&BTreeMap<String, String>>,
    ) -> bool {
        // Built only for a diagnostic (this runs for every object of every compile).
        let obj = || oref(kind, meta, ns);
        let mut ok = true;
        match meta.name.as_deref() {
            None | Some("") => {
                self.err(origin, &obj(), "metadata.name", None, "name is required");
                ok = false;
            }
            Some(n) => {
                if let Err(e) = name_rule(n) {
                    self.err(origin, &obj(), "metadata.name", Some(n.into()), e);
                    ok = false;
                } else if !self.seen.insert(format!("{kind}/{ns}/{n}")) {
                    self.err(
                        origin,
                        &obj(),
                        "metadata.name",
                        Some(n.into()),
                        format!("duplicate {kind}: an object with this name was given before"),
                    );
                    ok = false;
                }
            }
        }
        if !ns.is_empty()
            && let Err(e) = validate::dns1123_label(ns)
        {
            self.err(origin, &obj(), "metadata.namespace", Some(ns.into()), e);
            ok = false;
        }
        for (k, v) in labels.into_iter().flatten() {
            let field = || format!("{labels_field}.{k}");
            if let Err(e) = validate::label_key(k) {
                self.err(
                    origin,
                    &obj(),
                    &field(),
                    Some(k.clone()),
                    format!("invalid label key: {e}"),
                );
                ok = false;
            }
            if let Err(e) = validate::label_value(v) {
                self.err(
                    origin,
                    &obj(),
                    &field(),
                    Some(v.clone()),
                    format!("invalid label value: {e}"),
                );
                ok = false;
            }
        }
        ok
    }

    fn implicit_namespace(&mut self, ns: &str) {
        if validate::dns1123_label(ns).is_err() {
            return;
        }
        self.namespaces
            .entry(ns.to_string())
            .or_insert_with(|| NamespaceInfo {
                labels: Labels::from([(NAMESPACE_NAME_LABEL.to_string(), ns.to_string())]),
                declared: false,
            });
    }

    fn namespace(&mut self, ns: &Located<k8s_openapi::api::core::v1::Namespace>) {
        let meta = &ns.object.metadata;
        let origin = ns.origin.as_ref();
        if !self.check_meta(
            "Namespace",
            meta,
            "",
            origin,
            validate::dns1123_label,
            "metadata.labels",
            meta.labels.as_ref(),
        ) {
            return;
        }
        let name = meta.name.clone().unwrap_or_default();
        let mut labels: Labels = meta.labels.clone().unwrap_or_default();
        labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
        self.namespaces.insert(
            name,
            NamespaceInfo {
                labels,
                declared: true,
            },
        );
    }

    fn ports_of(
        &mut self,
        spec: &PodSpec,
        origin: Option<&Origin>,
        obj: &dyn Fn() -> ObjectRef,
        spec_path: &str,
    ) -> Option<Vec<ContainerPort>> {
        let mut out = Vec::new();
        let mut ok = true;
        let groups: [(&str, Option<&Vec<Container>>); 2] = [
            ("containers", Some(&spec.containers)),
            ("initContainers", spec.init_containers.as_ref()),
        ];
        for (group, containers) in groups {
            for (ci, c) in containers.into_iter().flatten().enumerate() {
                for (pi, p) in c.ports.iter().flatten().enumerate() {
                    // Field paths are only formatted for a diagnostic.
                    let base = || format!("{spec_path}.{group}[{ci}].ports[{pi}]");
                    let Some(protocol) = self.port_protocol(
                        p.protocol.as_deref(),
                        || format!("{}.protocol", base()),
                        origin,
                        &obj(),
                    ) else {
                        ok = false;
                        continue;
                    };
                    let Some(port) = u16::try_from(p.container_port).ok().filter(|p| *p > 0) else {
                        self.err(
                            origin,
                            &obj(),
                            &format!("{}.containerPort", base()),
                            Some(p.container_port.to_string()),
                            if p.container_port == 0 {
                                "required value: must be between 1 and 65535, inclusive"
                            } else {
                                "must be between 1 and 65535, inclusive"
                            },
                        );
                        ok = false;
                        continue;
                    };
                    if let Some(n) = &p.name
                        && let Err(e) = validate::iana_svc_name(n)
                    {
                        self.err(
                            origin,
                            &obj(),
                            &format!("{}.name", base()),
                            Some(n.clone()),
                            e,
                        );
                        ok = false;
                        continue;
                    }
                    out.push(ContainerPort {
                        name: p.name.clone(),
                        protocol,
                        port,
                    });
                }
            }
        }
        out.sort();
        out.dedup();
        ok.then_some(out)
    }

    fn pod(&mut self, pod: &Located<k8s_openapi::api::core::v1::Pod>) {
        let meta = &pod.object.metadata;
        let origin = pod.origin.as_ref();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let obj = || oref("Pod", meta, &ns);
        let status = pod.object.status.as_ref();
        if is_finished(&pod.object) {
            return;
        }
        if !self.check_meta(
            "Pod",
            meta,
            &ns,
            origin,
            validate::dns1123_subdomain,
            "metadata.labels",
            meta.labels.as_ref(),
        ) {
            return;
        }
        let no_spec;
        let spec = match &pod.object.spec {
            Some(s) => s,
            None => {
                no_spec = PodSpec::default();
                &no_spec
            }
        };
        let Some(ports) = self.ports_of(spec, origin, &obj, "spec") else {
            return;
        };
        let mut ips: Vec<IpAddr> = Vec::new();
        let mut ok = true;
        let mut push_ip = |s: &str, field: String, this: &mut Self| match s.parse::<IpAddr>() {
            Ok(ip) => {
                if !ips.contains(&ip) {
                    ips.push(ip);
                }
            }
            Err(_) => {
                this.err(
                    origin,
                    &obj(),
                    &field,
                    Some(s.into()),
                    "must be a valid IP address",
                );
                ok = false;
            }
        };
        if let Some(st) = status {
            for (i, p) in st.pod_ips.iter().flatten().enumerate() {
                push_ip(&p.ip, format!("status.podIPs[{i}].ip"), self);
            }
            if let Some(ip) = st.pod_ip.as_deref().filter(|s| !s.is_empty()) {
                push_ip(ip, "status.podIP".into(), self);
            }
        }
        if !ok {
            return;
        }
        self.implicit_namespace(&ns);
        let owner = meta
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .or_else(|| meta.owner_references.iter().flatten().next())
            .map(|o| (o.kind.clone(), o.name.clone()));
        self.endpoints.push(Endpoint {
            id: EndpointId(0),
            namespace: ns,
            name: meta.name.clone().unwrap_or_default(),
            kind: EndpointKind::Pod,
            labels: meta.labels.clone().unwrap_or_default(),
            ips,
            ports,
            host_network: spec.host_network == Some(true),
            node: spec.node_name.clone(),
            owner,
            replicas: Some(1),
            origin: pod.origin.clone(),
        });
    }

    /// A declared endpoint ([`crate::declared`], validated when parsed): labels and ports,
    /// no IP, no node. See: #14
    fn declared(&mut self, e: &crate::declared::DeclaredEndpoint) {
        self.implicit_namespace(&e.namespace);
        self.endpoints.push(Endpoint {
            id: EndpointId(0),
            namespace: e.namespace.clone(),
            name: e.name.clone(),
            kind: EndpointKind::Declared,
            labels: e.labels.clone(),
            ips: Vec::new(),
            ports: e
                .ports
                .iter()
                .map(|p| ContainerPort {
                    name: p.name.clone(),
                    protocol: p.protocol,
                    port: p.port,
                })
                .collect(),
            host_network: false,
            node: None,
            owner: None,
            replicas: e.replicas,
            origin: e.origin.clone(),
        });
    }

    fn workload(&mut self, w: &Located<crate::load::Workload>) {
        let meta = &w.object.metadata;
        let origin = w.origin.as_ref();
        let kind = w.object.kind.kind();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let obj = oref(kind, meta, &ns);
        let tmeta = w.object.template.metadata.clone().unwrap_or_default();
        let template_path = if w.object.kind == WorkloadKind::CronJob {
            "spec.jobTemplate.spec.template"
        } else {
            "spec.template"
        };
        if !self.check_meta(
            kind,
            meta,
            &ns,
            origin,
            validate::dns1123_subdomain,
            &format!("{template_path}.metadata.labels"),
            tmeta.labels.as_ref(),
        ) {
            return;
        }
        let spec = w.object.template.spec.clone().unwrap_or_default();
        let Some(ports) = self.ports_of(
            &spec,
            origin,
            &|| obj.clone(),
            &format!("{template_path}.spec"),
        ) else {
            return;
        };
        self.implicit_namespace(&ns);
        self.endpoints.push(Endpoint {
            id: EndpointId(0),
            namespace: ns,
            name: meta.name.clone().unwrap_or_default(),
            kind: EndpointKind::Workload(w.object.kind),
            labels: tmeta.labels.unwrap_or_default(),
            ips: Vec::new(),
            ports,
            host_network: spec.host_network == Some(true),
            node: spec.node_name.clone(),
            owner: meta
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone())),
            replicas: w.object.replicas,
            origin: w.origin.clone(),
        });
    }

    fn selector(
        &mut self,
        sel: &LabelSelector,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<Selector> {
        match Selector::parse(sel) {
            Ok(s) => Some(s),
            Err(errs) => {
                for e in errs {
                    self.err(
                        origin,
                        obj,
                        &format!("{field}.{}", e.field),
                        Some(e.value),
                        e.message,
                    );
                }
                None
            }
        }
    }

    fn peer(
        &mut self,
        p: &NetworkPolicyPeer,
        field: &str,
        ns: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<Peer> {
        let n = usize::from(p.pod_selector.is_some())
            + usize::from(p.namespace_selector.is_some())
            + usize::from(p.ip_block.is_some());
        if n == 0 {
            self.err(origin, obj, field, None, "must specify a peer");
            return None;
        }
        if let Some(b) = &p.ip_block {
            if n > 1 {
                self.err(
                    origin,
                    obj,
                    field,
                    None,
                    "may not specify both ipBlock and another peer",
                );
                return None;
            }
            return self
                .ip_block(b, &format!("{field}.ipBlock"), origin, obj)
                .map(Peer::IpBlock);
        }
        let pods = match &p.pod_selector {
            Some(s) => self.selector(s, &format!("{field}.podSelector"), origin, obj),
            None => Some(Selector::everything()),
        };
        let namespaces = match &p.namespace_selector {
            Some(s) => self
                .selector(s, &format!("{field}.namespaceSelector"), origin, obj)
                .map(NamespaceScope::Selector),
            None => Some(NamespaceScope::Own(ns.to_string())),
        };
        Some(Peer::Pods {
            namespaces: namespaces?,
            pods: pods?,
        })
    }

    fn ip_block(
        &mut self,
        b: &k8s_openapi::api::networking::v1::IPBlock,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<IpBlock> {
        let cidr = match parse_cidr(&b.cidr) {
            Ok(c) => c,
            Err(e) => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.cidr"),
                    Some(b.cidr.clone()),
                    e,
                );
                return None;
            }
        };
        let mut except = Vec::new();
        let mut ok = true;
        for (i, e) in b.except.iter().flatten().enumerate() {
            let f = format!("{field}.except[{i}]");
            match parse_cidr(e) {
                Ok(ex) => {
                    if !cidr.contains(&ex.network()) || ex.prefix_len() <= cidr.prefix_len() {
                        self.err(
                            origin,
                            obj,
                            &f,
                            Some(e.clone()),
                            format!("must be a strict subset of `cidr` {cidr}"),
                        );
                        ok = false;
                    } else {
                        except.push(ex);
                    }
                }
                Err(m) => {
                    self.err(origin, obj, &f, Some(e.clone()), m);
                    ok = false;
                }
            }
        }
        except.sort();
        except.dedup();
        ok.then_some(IpBlock { cidr, except })
    }

    fn port(
        &mut self,
        p: &NetworkPolicyPort,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<RulePort> {
        let protocol = self.port_protocol(
            p.protocol.as_deref(),
            || format!("{field}.protocol"),
            origin,
            obj,
        )?;
        let port = match &p.port {
            None => {
                if let Some(e) = p.end_port {
                    self.err(
                        origin,
                        obj,
                        &format!("{field}.endPort"),
                        Some(e.to_string()),
                        "may not be specified when `port` is not specified",
                    );
                    return None;
                }
                PortMatch::Any
            }
            Some(IntOrString::Int(n)) => {
                let Some(lo) = u16::try_from(*n).ok().filter(|v| *v > 0) else {
                    self.err(
                        origin,
                        obj,
                        &format!("{field}.port"),
                        Some(n.to_string()),
                        "must be between 1 and 65535, inclusive",
                    );
                    return None;
                };
                match p.end_port {
                    None => PortMatch::Range(lo, lo),
                    Some(e) => {
                        let Some(hi) = u16::try_from(e).ok().filter(|v| *v > 0) else {
                            self.err(
                                origin,
                                obj,
                                &format!("{field}.endPort"),
                                Some(e.to_string()),
                                "must be between 1 and 65535, inclusive",
                            );
                            return None;
                        };
                        if hi < lo {
                            self.err(
                                origin,
                                obj,
                                &format!("{field}.endPort"),
                                Some(e.to_string()),
                                format!("must be greater than or equal to `port` ({lo})"),
                            );
                            return None;
                        }
                        PortMatch::Range(lo, hi)
                    }
                }
            }
            Some(IntOrString::String(s)) => {
                if let Some(e) = p.end_port {
                    self.err(
                        origin,
                        obj,
                        &format!("{field}.endPort"),
                        Some(e.to_string()),
                        format!("may not be specified when `port` is a named port ({s:?})"),
                    );
                    return None;
                }
                if let Err(e) = validate::iana_svc_name(s) {
                    self.err(origin, obj, &format!("{field}.port"), Some(s.clone()), e);
                    return None;
                }
                PortMatch::Named(s.clone())
            }
        };
        Some(RulePort { protocol, port })
    }

    #[allow(clippy::too_many_arguments)] // ingress and egress share this with different field names
    fn rule(
        &mut self,
        peers: Option<&Vec<NetworkPolicyPeer>>,
        ports: Option<&Vec<NetworkPolicyPort>>,
        field: &str,
        peers_key: &str,
        ns: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<Rule> {
        let mut ok = true;
        let peers = match peers {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => {
                let mut out = Vec::new();
                for (i, p) in v.iter().enumerate() {
                    match self.peer(p, &format!("{field}.{peers_key}[{i}]"), ns, origin, obj) {
                        Some(p) => out.push(p),
                        None => ok = false,
                    }
                }
                Some(out)
            }
        };
        let ports = match ports {
            None => None,
            Some(v) if v.is_empty() => None,
            Some(v) => {
                let mut out = Vec::new();
                for (i, p) in v.iter().enumerate() {
                    match self.port(p, &format!("{field}.ports[{i}]"), origin, obj) {
                        Some(p) => out.push(p),
                        None => ok = false,
                    }
                }
                Some(out)
            }
        };
        ok.then_some(Rule { peers, ports })
    }

    fn policy(&mut self, np: &Located<NetworkPolicy>) {
        let meta = &np.object.metadata;
        let origin = np.origin.as_ref();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let obj = oref("NetworkPolicy", meta, &ns);
        let mut ok = self.check_meta(
            "NetworkPolicy",
            meta,
            &ns,
            origin,
            validate::dns1123_subdomain,
            "metadata.labels",
            meta.labels.as_ref(),
        );
        let spec = np.object.spec.clone().unwrap_or_default();
        let pod_selector = match &spec.pod_selector {
            Some(s) => self.selector(s, "spec.podSelector", origin, &obj),
            None => Some(Selector::everything()),
        };
        let ingress_rules = spec.ingress.clone().unwrap_or_default();
        let egress_rules = spec.egress.clone().unwrap_or_default();
        let (mut isolates_ingress, mut isolates_egress) = (false, false);
        match &spec.policy_types {
            Some(types) if !types.is_empty() => {
                if types.len() > 2 {
                    self.err(
                        origin,
                        &obj,
                        "spec.policyTypes",
                        Some(types.join(",")),
                        "may not specify more than two policyTypes",
                    );
                    ok = false;
                }
                for (i, t) in types.iter().enumerate() {
                    match t.as_str() {
                        "Ingress" => isolates_ingress = true,
                        "Egress" => isolates_egress = true,
                        other => {
                            self.err(
                                origin,
                                &obj,
                                &format!("spec.policyTypes[{i}]"),
                                Some(other.into()),
                                "unsupported value: supported values are \"Ingress\", \"Egress\"",
                            );
                            ok = false;
                        }
                    }
                }
            }
            _ => {
                isolates_ingress = true;
                isolates_egress = !egress_rules.is_empty();
            }
        }
        let mut ingress = Vec::new();
        for (i, r) in ingress_rules.iter().enumerate() {
            match self.rule(
                r.from.as_ref(),
                r.ports.as_ref(),
                &format!("spec.ingress[{i}]"),
                "from",
                &ns,
                origin,
                &obj,
            ) {
                Some(r) => ingress.push(r),
                None => ok = false,
            }
        }
        let mut egress = Vec::new();
        for (i, r) in egress_rules.iter().enumerate() {
            match self.rule(
                r.to.as_ref(),
                r.ports.as_ref(),
                &format!("spec.egress[{i}]"),
                "to",
                &ns,
                origin,
                &obj,
            ) {
                Some(r) => egress.push(r),
                None => ok = false,
            }
        }
        let mode = self.policy_mode(meta, origin, &obj);
        let Some(pod_selector) = pod_selector else {
            return;
        };
        let (true, Some(mode)) = (ok, mode) else {
            return;
        };
        self.implicit_namespace(&ns);
        self.policies.push(Policy {
            id: PolicyId(0),
            namespace: ns,
            name: meta.name.clone().unwrap_or_default(),
            pod_selector,
            isolates_ingress,
            isolates_egress,
            ingress,
            egress,
            origin: np.origin.clone(),
            mode,
        });
    }

    /// ownerReferences in the input: a workload owned by another input workload (a
    /// Deployment's ReplicaSet, a CronJob's Job) is represented by its owner, and Pods whose
    /// owner chain reaches an input workload are that workload's replicas: the workload is
    /// then represented by its Pods (`owner` names the top workload). Every Pod counts once.
    fn collapse_owned(&mut self) -> BTreeMap<String, Vec<String>> {
        const MAX_DEPTH: usize = 8;
        let workloads: BTreeMap<(&str, &str, &str), usize> = self
            .endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e.kind {
                EndpointKind::Workload(k) => {
                    Some(((e.namespace.as_str(), k.kind(), e.name.as_str()), i))
                }
                EndpointKind::Pod | EndpointKind::Declared => None,
            })
            .collect();
        // The top input workload an owner reference leads to.
        let top = |ns: &str, owner: &(String, String)| -> Option<usize> {
            let mut cur = *workloads.get(&(ns, owner.0.as_str(), owner.1.as_str()))?;
            for _ in 0..MAX_DEPTH {
                let next = self.endpoints[cur]
                    .owner
                    .as_ref()
                    .and_then(|o| workloads.get(&(ns, o.0.as_str(), o.1.as_str())));
                match next {
                    Some(&n) if n != cur => cur = n,
                    _ => break,
                }
            }
            Some(cur)
        };
        // Each endpoint's top input workload, when its owner chain leads to another one.
        let tops: Vec<Option<usize>> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.owner
                    .as_ref()
                    .and_then(|o| top(&e.namespace, o))
                    .filter(|t| *t != i)
            })
            .collect();
        let mut pods_of: BTreeMap<usize, Vec<String>> = BTreeMap::new();
        for (i, t) in tops.iter().enumerate() {
            if let (Some(t), EndpointKind::Pod) = (t, self.endpoints[i].kind) {
                pods_of.entry(*t).or_default().push(self.endpoints[i].key());
            }
        }
        let mut replaced: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut drop = vec![false; self.endpoints.len()];
        for (i, e) in self.endpoints.iter().enumerate() {
            if !matches!(e.kind, EndpointKind::Workload(_)) {
                continue;
            }
            let by = match (tops[i], pods_of.get(&i)) {
                (_, Some(pods)) => pods.clone(),
                (Some(t), None) => pods_of
                    .get(&t)
                    .cloned()
                    .unwrap_or_else(|| vec![self.endpoints[t].key()]),
                (None, None) => continue,
            };
            drop[i] = true;
            replaced.insert(e.key(), by);
        }
        let mut owners: Vec<(usize, (String, String))> = Vec::new();
        for (i, t) in tops.iter().enumerate() {
            if let (Some(t), EndpointKind::Pod) = (t, self.endpoints[i].kind)
                && let EndpointKind::Workload(k) = self.endpoints[*t].kind
            {
                owners.push((i, (k.kind().to_string(), self.endpoints[*t].name.clone())));
            }
        }
        for (i, o) in owners {
            self.endpoints[i].owner = Some(o);
        }
        let mut i = 0;
        self.endpoints.retain(|_| {
            i += 1;
            !drop[i - 1]
        });
        for v in replaced.values_mut() {
            v.sort();
        }
        replaced
    }

    fn finish(mut self) -> (Model, Vec<Diagnostic>) {
        let replaced = self.collapse_owned();
        // `key()` formats a String: compute it once per endpoint (for the sort and the
        // index both). `(key, index)` pairs are unique, so the unstable sort gives the
        // order of a stable sort by key.
        let mut order: Vec<(String, usize)> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.key(), i))
            .collect();
        order.sort_unstable();
        let mut slots: Vec<Option<Endpoint>> = std::mem::take(&mut self.endpoints)
            .into_iter()
            .map(Some)
            .collect();
        let mut keys = Vec::with_capacity(order.len());
        for (key, i) in order {
            // Every index is in `order` once, so each slot is taken once.
            if let Some(e) = slots.get_mut(i).and_then(Option::take) {
                self.endpoints.push(e);
                keys.push(key);
            }
        }
        let mut by_key = BTreeMap::new();
        let mut by_ip = BTreeMap::new();
        let mut by_namespace: BTreeMap<String, Vec<EndpointId>> = BTreeMap::new();
        for (i, e) in self.endpoints.iter_mut().enumerate() {
            e.id = EndpointId(u32::try_from(i).unwrap_or(u32::MAX));
        }
        for (e, key) in self.endpoints.iter().zip(keys) {
            by_key.insert(key, e.id);
            // hostNetwork Pods share the node's IP; they never own it.
            if !e.host_network {
                for ip in &e.ips {
                    if let Some(prev) = by_ip.insert(*ip, e.id) {
                        self.diags.push(
                            Diagnostic::field_error(
                                e.origin.as_ref(),
                                &ObjectRef {
                                    kind: "Pod".into(),
                                    namespace: e.namespace.clone(),
                                    name: e.name.clone(),
                                },
                                "status.podIPs",
                                Some(ip.to_string()),
                                format!(
                                    "IP address is also used by {}",
                                    self.endpoints[prev.0 as usize].key()
                                ),
                            )
                            .warning(),
                        );
                    }
                }
            }
            // Sorted by `ns/name`: a namespace's endpoints are contiguous.
            match by_namespace.last_entry() {
                Some(mut last) if *last.key() == e.namespace => last.get_mut().push(e.id),
                _ => {
                    by_namespace
                        .entry(e.namespace.clone())
                        .or_default()
                        .push(e.id);
                }
            }
        }
        let (mut audit_policies, mut policies): (Vec<Policy>, Vec<Policy>) = self
            .policies
            .into_iter()
            .partition(|p| p.mode == PolicyMode::Audit);
        audit::sort_policies(&mut policies);
        audit::sort_policies(&mut audit_policies);
        let (mut audit_cluster_policies, mut cluster_policies): (Vec<_>, Vec<_>) = self
            .cluster_policies
            .into_iter()
            .partition(|p: &ClusterPolicy| p.mode == PolicyMode::Audit);
        audit::sort_cluster_policies(&mut cluster_policies);
        audit::sort_cluster_policies(&mut audit_cluster_policies);
        let mut model = Model {
            namespaces: self.namespaces,
            endpoints: self.endpoints,
            policies,
            services: Vec::new(),
            nodes: self.nodes,
            cluster_policies,
            audit_policies,
            audit_cluster_policies,
            service_by_key: BTreeMap::new(),
            node_ips: BTreeMap::new(),
            by_key,
            by_ip,
            by_namespace,
            replaced,
            slices: Vec::new(),
        };
        let mut services = self.services;
        services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        service::resolve_backends(&model, &mut services, &self.slices, &mut self.diags);
        model.service_by_key = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key(), i))
            .collect();
        model.services = services;
        model.slices = self.slices;
        model.node_ips = service::node_ips(&model);
        self.diags.extend(cluster::priority_overlaps(&model));
        self.diags
            .extend(cluster::nodes_without_node_objects(&model));
        (model, self.diags)
    }
}

/// Parses a CIDR as the API server does: an address, `/`, a prefix length; host bits are
/// cleared (`10.0.0.1/24` is `10.0.0.0/24`).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let net: IpNet = s
        .parse()
        .map_err(|_| "must be a valid CIDR (for example 10.0.0.0/16 or fd00::/64)".to_string())?;
    Ok(net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{SourceText, load};

    pub(crate) fn build(text: &str) -> (Model, Vec<Diagnostic>) {
        let (inputs, mut diags) = load(&[SourceText {
            name: "t.yaml",
            text,
        }]);
        let (m, d) = Model::build(&inputs);
        diags.extend(d);
        (m, diags)
    }

    const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\n";

    fn errors_of(spec: &str) -> Vec<Diagnostic> {
        let (_, d) = build(&format!("{NP}spec:\n{spec}"));
        d
    }

    #[test]
    fn policy_types_default() {
        let (m, d) = build(&format!(
            "{NP}spec:\n  podSelector: {{}}\n  egress: [{{}}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: q, namespace: x}}\nspec:\n  podSelector: {{}}\n  egress: []\n"
        ));
        assert!(d.is_empty(), "{d:?}");
        assert!(m.policies[0].isolates_ingress && m.policies[0].isolates_egress);
        assert!(m.policies[1].isolates_ingress && !m.policies[1].isolates_egress);
        assert!(m.namespaces.contains_key("x"));
    }

    #[test]
    fn except_must_be_strict_subset() {
        let d = errors_of(
            "  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 10.0.0.0/16\n        except: [10.0.1.0/24, 10.1.0.0/24, 10.0.0.0/16]\n",
        );
        let fields: Vec<_> = d.iter().map(|d| d.field.clone().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.ingress[0].from[0].ipBlock.except[1]",
                "spec.ingress[0].from[0].ipBlock.except[2]"
            ]
        );
        assert_eq!(d[0].line, Some(10));
        assert_eq!(d[0].value.as_deref(), Some("10.1.0.0/24"));
        assert_eq!(
            d[0].object.as_ref().unwrap().to_string(),
            "NetworkPolicy x/p"
        );
    }

    #[test]
    fn peer_errors() {
        let d = errors_of(
            "  podSelector: {}\n  ingress:\n  - from:\n    - {}\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n    - ipBlock: {cidr: 10.0.0.0/33}\n",
        );
        let msgs: Vec<_> = d
            .iter()
            .map(|d| (d.field.clone().unwrap(), d.message.clone()))
            .collect();
        assert_eq!(
            msgs[0],
            (
                "spec.ingress[0].from[0]".into(),
                "must specify a peer".into()
            )
        );
        assert_eq!(msgs[1].0, "spec.ingress[0].from[1]");
        assert!(msgs[1].1.contains("both ipBlock"));
        assert_eq!(msgs[2].0, "spec.ingress[0].from[2].ipBlock.cidr");
    }

    #[test]
    fn port_errors() {
        let d = errors_of(
            "  podSelector: {}\n  ingress:\n  - ports:\n    - {port: 0}\n    - {port: 70000}\n    - {port: http, endPort: 90}\n    - {endPort: 90}\n    - {port: 90, endPort: 80}\n    - {protocol: ICMP, port: 1}\n    - {protocol: tcp, port: 1}\n    - {port: Bad_Name}\n",
        );
        let fields: Vec<_> = d.iter().map(|d| d.field.clone().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.ingress[0].ports[0].port",
                "spec.ingress[0].ports[1].port",
                "spec.ingress[0].ports[2].endPort",
                "spec.ingress[0].ports[3].endPort",
                "spec.ingress[0].ports[4].endPort",
                "spec.ingress[0].ports[5].protocol",
                "spec.ingress[0].ports[6].protocol",
                "spec.ingress[0].ports[7].port",
            ]
        );
    }

    #[test]
    fn bad_labels_and_names() {
        let (m, d) = build(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: Bad_Name, namespace: x}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: ok, namespace: x, labels: {'bad key': v}}\nspec: {containers: [{name: c}]}\n",
        );
        assert_eq!(d.len(), 2, "{d:?}");
        assert_eq!(d[0].field.as_deref(), Some("metadata.name"));
        assert_eq!(d[1].field.as_deref(), Some("metadata.labels.bad key"));
        assert!(m.endpoints.is_empty());
    }

    #[test]
    fn pods_ips_and_phases() {
        let (m, d) = build(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c, ports: [{containerPort: 80, name: http}]}]}\nstatus: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: done}\nspec: {containers: [{name: c}]}\nstatus: {phase: Succeeded}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(m.endpoints.len(), 1);
        let a = &m.endpoints[0];
        assert_eq!(a.key(), "default/a");
        assert_eq!(a.ips.len(), 2);
        assert_eq!(a.resolve_named_port("http", Protocol::Tcp), vec![80]);
        assert!(a.resolve_named_port("http", Protocol::Udp).is_empty());
        assert_eq!(
            m.namespaces["default"].labels[NAMESPACE_NAME_LABEL],
            "default"
        );
    }

    #[test]
    fn selector_errors_have_full_paths() {
        let d = errors_of(
            "  podSelector:\n    matchExpressions: [{key: a, operator: In, values: []}]\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {'-x': z}}\n",
        );
        let fields: Vec<_> = d.iter().map(|d| d.field.clone().unwrap()).collect();
        assert_eq!(
            fields,
            [
                "spec.podSelector.matchExpressions[0].values",
                "spec.ingress[0].from[0].namespaceSelector.matchLabels.-x"
            ]
        );
    }
}
