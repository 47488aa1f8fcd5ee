//! ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`) in the model: validation
//! like the API server with the CRD (OpenAPI schema and CEL rules, standard and
//! experimental channels) and the normalised [`ClusterPolicy`].
//!
//! Evaluation order is fixed here: [`Model::cluster_policies`] is sorted by tier (Admin,
//! then Baseline), priority (lower first) and, for equal priorities (which upstream leaves
//! to the implementation), by name; a warning names equal-priority policies of one tier
//! whose subjects overlap. The tier walk itself is in `graph/tiers.rs`.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{Builder, Direction, Endpoint, Model, PortMatch, RulePort, oref, parse_cidr};
use crate::cnp::{self, ClusterNetworkPolicy, NamespacedPod, ProtocolEntry};
use crate::diagnostic::{Diagnostic, ObjectRef, Origin};
use crate::load::Located;
use crate::ports::{PortRanges, PortSet, Protocol};
use crate::selector::{Labels, Selector};
use crate::validate;

/// Most rules per direction, peers per rule, entries of `protocols`, CIDRs of `networks`
/// and names of `domainNames` (the CRD's `maxItems`).
pub const MAX_ITEMS: usize = 25;

/// Index of a ClusterNetworkPolicy in [`Model::cluster_policies`] (evaluation order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterPolicyId(pub u32);

/// The tier a ClusterNetworkPolicy is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    /// Before NetworkPolicies.
    Admin,
    /// After NetworkPolicies.
    Baseline,
}

impl Tier {
    /// `Admin` / `Baseline`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Admin => "Admin",
            Tier::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a rule does with the traffic it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Allowed; no further rule of this side is read (the other side still judges).
    Accept,
    /// Dropped; no further rule is read.
    Deny,
    /// Skips the rest of this tier: NetworkPolicy next (Admin) or the default (Baseline).
    Pass,
}

impl Action {
    /// `Accept` / `Deny` / `Pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Accept => "Accept",
            Action::Deny => "Deny",
            Action::Pass => "Pass",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Pods by namespace selector AND pod selector (`namespaces` is `{}` for a `namespaces`
/// subject or peer).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodSelection {
    /// Which namespaces (`{}`: all).
    pub namespaces: Selector,
    /// Which Pods in them (`{}`: all).
    pub pods: Selector,
    /// True for the `namespaces` form (only a namespace selector was written).
    pub namespaces_only: bool,
}

impl PodSelection {
    /// True when `ep` (not hostNetwork) is in a namespace whose labels `ns_labels` match and
    /// its labels match the pod selector.
    pub fn matches(&self, ep: &Endpoint, ns_labels: Option<&Labels>) -> bool {
        ep.selectable()
            && ns_labels.is_some_and(|l| self.namespaces.matches(l))
            && self.pods.matches(&ep.labels)
    }
}

impl fmt::Display for PodSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespaces_only {
            if self.namespaces.is_everything() {
                return f.write_str("all pods in all namespaces");
            }
            return write!(f, "all pods in namespaces {}", self.namespaces);
        }
        if self.namespaces.is_everything() {
            write!(f, "pods {} in all namespaces", self.pods)
        } else {
            write!(f, "pods {} in namespaces {}", self.pods, self.namespaces)
        }
    }
}

/// One peer of a ClusterNetworkPolicy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPeer {
    /// `namespaces` or `pods`: Pods (never hostNetwork ones), by identity.
    Pods(PodSelection),
    /// `networks` (egress): destination addresses in any of the CIDRs, Pods' and nodes'
    /// addresses included.
    Networks(Vec<IpNet>),
    /// `nodes` (egress, experimental): the addresses of the selected Node objects.
    Nodes(Selector),
    /// `domainNames` (egress, experimental, Accept only): cannot be decided from
    /// addresses, so it matches no flow (see docs/cluster-network-policy.md).
    DomainNames(Vec<String>),
}

impl fmt::Display for ClusterPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPeer::Pods(p) => write!(f, "{p}"),
            ClusterPeer::Networks(n) => {
                let v: Vec<String> = n.iter().map(ToString::to_string).collect();
                write!(f, "networks {}", v.join(", "))
            }
            ClusterPeer::Nodes(s) if s.is_everything() => f.write_str("all nodes"),
            ClusterPeer::Nodes(s) => write!(f, "nodes {s}"),
            ClusterPeer::DomainNames(d) => write!(f, "domainNames {}", d.join(", ")),
        }
    }
}

/// One entry of a rule's `protocols`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClusterPort {
    /// `tcp` / `udp` / `sctp`, with a port, a range or every port.
    Port(RulePort),
    /// `destinationNamedPort`: the destination Pod's container ports of that name, of
    /// whatever protocol they declare.
    Named(String),
}

impl ClusterPort {
    /// The ports this entry matches toward `dst` (`None`: not a Pod, no named ports).
    pub fn resolve(&self, dst: Option<&Endpoint>) -> PortSet {
        match self {
            ClusterPort::Port(p) => PortSet::of(p.protocol, p.resolve(dst)),
            ClusterPort::Named(name) => {
                let Some(d) = dst else {
                    return PortSet::none();
                };
                let parts: Vec<(Protocol, PortRanges)> = d
                    .ports
                    .iter()
                    .filter(|p| p.name.as_deref() == Some(name.as_str()))
                    .map(|p| (p.protocol, PortRanges::range(p.port, p.port)))
                    .collect();
                PortSet::from_parts(parts.iter().map(|(p, r)| (*p, r)))
            }
        }
    }
}

impl fmt::Display for ClusterPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterPort::Port(p) => write!(f, "{p}"),
            ClusterPort::Named(n) => write!(f, "named port {n}"),
        }
    }
}

/// One rule of a ClusterNetworkPolicy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRule {
    /// `name` (may be empty).
    pub name: String,
    /// What it does.
    pub action: Action,
    /// `from` / `to` (at least one).
    pub peers: Vec<ClusterPeer>,
    /// `protocols`; `None`: every port of every protocol.
    pub ports: Option<Vec<ClusterPort>>,
}

impl ClusterRule {
    /// The ports the rule matches toward `dst` (named ports resolved against it).
    pub fn ports_toward(&self, dst: Option<&Endpoint>) -> PortSet {
        match &self.ports {
            None => PortSet::all(),
            Some(ps) => {
                let mut out = PortSet::none();
                for p in ps {
                    out.add(&p.resolve(dst));
                }
                out
            }
        }
    }

    /// `all ports`, or the entries as written.
    pub fn ports_text(&self) -> String {
        match &self.ports {
            None => "all ports".into(),
            Some(ps) => ps
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// `"name"` or `#index` when the rule has no name.
    pub fn label(&self, index: usize) -> String {
        if self.name.is_empty() {
            format!("#{index}")
        } else {
            format!("{:?}", self.name)
        }
    }
}

/// A validated ClusterNetworkPolicy.
#[derive(Debug, Clone)]
pub struct ClusterPolicy {
    /// Index in [`Model::cluster_policies`].
    pub id: ClusterPolicyId,
    /// `metadata.name`.
    pub name: String,
    /// Admin or Baseline.
    pub tier: Tier,
    /// 0..=1000, lower first within the tier.
    pub priority: u16,
    /// The Pods it applies to (never hostNetwork Pods).
    pub subject: PodSelection,
    /// Ingress rules, in precedence order.
    pub ingress: Vec<ClusterRule>,
    /// Egress rules, in precedence order.
    pub egress: Vec<ClusterRule>,
    /// Where it came from.
    pub origin: Option<Origin>,
    /// `netpol.io/mode`: audit policies live in [`Model::audit_cluster_policies`].
    pub mode: super::PolicyMode,
}

impl ClusterPolicy {
    /// Rules of a direction.
    pub fn rules(&self, dir: Direction) -> &[ClusterRule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// True when the policy applies to `ep`.
    pub fn selects(&self, model: &Model, ep: &Endpoint) -> bool {
        self.subject
            .matches(ep, model.namespace_labels(&ep.namespace))
    }

    /// `ClusterNetworkPolicy NAME`, for messages.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: cnp::KIND.into(),
            namespace: String::new(),
            name: self.name.clone(),
        }
    }
}

/// Dump lines for the ClusterNetworkPolicies (none when the input has none, so older stage
/// dumps stay byte-identical).
pub(super) fn dump(model: &Model, s: &mut String) {
    use std::fmt::Write as _;
    for p in model
        .cluster_policies
        .iter()
        .chain(&model.audit_cluster_policies)
    {
        let audit = if p.mode == super::PolicyMode::Audit {
            " (audit)"
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "clusternetworkpolicy {}{audit} tier {} priority {} subject {}",
            p.name, p.tier, p.priority, p.subject
        );
        for dir in [Direction::Ingress, Direction::Egress] {
            for (i, r) in p.rules(dir).iter().enumerate() {
                let peers: Vec<String> = r.peers.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    s,
                    "  {dir} rule {i} {} {}: {} on [{}]",
                    r.label(i),
                    r.action,
                    peers.join(" | "),
                    r.ports_text()
                );
            }
        }
    }
}

/// Warnings for policies of one tier with the same priority whose subjects share a Pod:
/// upstream leaves their relative order to the implementation (netpol reads them by name).
pub(super) fn priority_overlaps(model: &Model) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let ps = &model.cluster_policies;
    for (i, a) in ps.iter().enumerate() {
        for b in ps[i + 1..]
            .iter()
            .take_while(|b| (b.tier, b.priority) == (a.tier, a.priority))
        {
            let shared = model
                .endpoints
                .iter()
                .find(|e| a.selects(model, e) && b.selects(model, e));
            if let Some(e) = shared {
                out.push(
                    Diagnostic::field_error(
                        b.origin.as_ref(),
                        &b.object_ref(),
                        "spec.priority",
                        Some(b.priority.to_string()),
                        format!(
                            "same tier ({}) and priority as ClusterNetworkPolicy {} and both apply to {}: their order is undefined upstream (implementations may differ); netpol reads {} first (by name). Give them distinct priorities",
                            a.tier,
                            a.name,
                            e.key(),
                            a.name
                        ),
                    )
                    .warning(),
                );
            }
        }
    }
    out
}

/// Warnings for `nodes` peers when the input has no Node objects: they select Nodes by
/// label, so without Node objects they match no address (offline manifests often omit
/// Nodes).
pub(super) fn nodes_without_node_objects(model: &Model) -> Vec<Diagnostic> {
    if !model.nodes.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in &model.cluster_policies {
        for (ri, r) in p.egress.iter().enumerate() {
            for (pi, peer) in r.peers.iter().enumerate() {
                if matches!(peer, ClusterPeer::Nodes(_)) {
                    out.push(
                        Diagnostic::field_error(
                            p.origin.as_ref(),
                            &p.object_ref(),
                            &format!("spec.egress[{ri}].to[{pi}].nodes"),
                            None,
                            "the input has no Node objects: this peer selects Nodes by label, so it matches no address (add the Nodes, e.g. `kubectl get nodes -o yaml`)",
                        )
                        .warning(),
                    );
                }
            }
        }
    }
    out
}

/// The CRD's DomainName pattern:
/// `^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`
/// (its `A-z` range also admits `[\]^_` and a backtick as a label's first character).
fn valid_domain_name(s: &str) -> bool {
    let s = s.strip_prefix("*.").unwrap_or(s);
    let s = s.strip_suffix('.').unwrap_or(s);
    let first_ok = |c: char| c.is_ascii_alphanumeric() || ('['..='`').contains(&c);
    let mid_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    let labels: Vec<&str> = s.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|l| {
            let mut cs = l.chars();
            let Some(first) = cs.next() else {
                return false;
            };
            if !first_ok(first) {
                return false;
            }
            let rest: Vec<char> = cs.collect();
            match rest.split_last() {
                None => true,
                Some((last, mid)) => last.is_ascii_alphanumeric() && mid.iter().all(|c| mid_ok(*c)),
            }
        })
}

/// What kind of rule a peer list belongs to (field names and allowed peers differ).
#[derive(Clone, Copy)]
enum Side {
    Ingress,
    Egress,
}

/// A peer as read, before the one-field check: `(field name, present)`.
struct PeerFields<'a> {
    namespaces: Option<&'a LabelSelector>,
    pods: Option<&'a NamespacedPod>,
    nodes: Option<&'a LabelSelector>,
    networks: Option<&'a Vec<String>>,
    domain_names: Option<&'a Vec<String>>,
}

/// One ingress or egress rule's fields, whichever side it is from.
struct RuleFields<'a> {
    name: Option<&'a str>,
    action: Option<&'a str>,
    peers: Option<Vec<PeerFields<'a>>>,
    protocols: Option<&'a [ProtocolEntry]>,
}

impl Builder {
    /// The rules of one side (`field` = `spec.ingress` / `spec.egress`), each validated
    /// with its diagnostics reported; `None` when any of them (or their count) is invalid.
    fn cluster_rules(
        &mut self,
        side: Side,
        rules: &[RuleFields<'_>],
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<Vec<ClusterRule>> {
        let mut ok = self.max_items(rules.len(), field, origin, obj);
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            let rule = self.cluster_rule(
                side,
                r.name,
                r.action,
                r.peers.as_deref(),
                r.protocols,
                &format!("{field}[{i}]"),
                origin,
                obj,
            );
            match rule {
                Some(r) => out.push(r),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    pub(super) fn cluster_policy(&mut self, cnp: &Located<ClusterNetworkPolicy>) {
        let meta = &cnp.object.metadata;
        let origin = cnp.origin.as_ref();
        let obj = oref(cnp::KIND, meta, "");
        let ok = self.check_meta(
            cnp::KIND,
            meta,
            "",
            origin,
            validate::dns1123_subdomain,
            "metadata.labels",
            meta.labels.as_ref(),
        );
        if let Some(ns) = meta.namespace.as_deref().filter(|n| !n.is_empty()) {
            self.diags.push(
                Diagnostic::field_error(
                    origin,
                    &obj,
                    "metadata.namespace",
                    Some(ns.into()),
                    "ignored: ClusterNetworkPolicy is cluster-scoped",
                )
                .warning(),
            );
        }
        let Some(spec) = &cnp.object.spec else {
            self.err(origin, &obj, "spec", None, "required value");
            return;
        };
        let tier = match spec.tier.as_deref() {
            None => {
                self.err(origin, &obj, "spec.tier", None, "required value");
                None
            }
            Some("Admin") => Some(Tier::Admin),
            Some("Baseline") => Some(Tier::Baseline),
            Some(other) => {
                self.err(
                    origin,
                    &obj,
                    "spec.tier",
                    Some(other.into()),
                    "unsupported value: supported values are \"Admin\", \"Baseline\"",
                );
                None
            }
        };
        let priority = match spec.priority {
            None => {
                self.err(origin, &obj, "spec.priority", None, "required value");
                None
            }
            Some(p) => match u16::try_from(p).ok().filter(|p| *p <= 1000) {
                Some(p) => Some(p),
                None => {
                    self.err(
                        origin,
                        &obj,
                        "spec.priority",
                        Some(p.to_string()),
                        if p < 0 {
                            "should be greater than or equal to 0"
                        } else {
                            "should be less than or equal to 1000"
                        },
                    );
                    None
                }
            },
        };
        let subject = match &spec.subject {
            None => {
                self.err(origin, &obj, "spec.subject", None, "required value");
                None
            }
            Some(s) => {
                let fields = PeerFields {
                    namespaces: s.namespaces.as_ref(),
                    pods: s.pods.as_ref(),
                    nodes: None,
                    networks: None,
                    domain_names: None,
                };
                self.pod_selection(
                    &fields,
                    "spec.subject",
                    &["namespaces", "pods"],
                    origin,
                    &obj,
                )
            }
        };
        let ingress_rules: Vec<RuleFields<'_>> = spec
            .ingress
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|r| RuleFields {
                name: r.name.as_deref(),
                action: r.action.as_deref(),
                peers: r.from.as_ref().map(|v| {
                    v.iter()
                        .map(|p| PeerFields {
                            namespaces: p.namespaces.as_ref(),
                            pods: p.pods.as_ref(),
                            nodes: None,
                            networks: None,
                            domain_names: None,
                        })
                        .collect()
                }),
                protocols: r.protocols.as_deref(),
            })
            .collect();
        let egress_rules: Vec<RuleFields<'_>> = spec
            .egress
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|r| RuleFields {
                name: r.name.as_deref(),
                action: r.action.as_deref(),
                peers: r.to.as_ref().map(|v| {
                    v.iter()
                        .map(|p| PeerFields {
                            namespaces: p.namespaces.as_ref(),
                            pods: p.pods.as_ref(),
                            nodes: p.nodes.as_ref(),
                            networks: p.networks.as_ref(),
                            domain_names: p.domain_names.as_ref(),
                        })
                        .collect()
                }),
                protocols: r.protocols.as_deref(),
            })
            .collect();
        let ingress =
            self.cluster_rules(Side::Ingress, &ingress_rules, "spec.ingress", origin, &obj);
        let egress = self.cluster_rules(Side::Egress, &egress_rules, "spec.egress", origin, &obj);
        let (Some(ingress), Some(egress)) = (ingress, egress) else {
            return;
        };
        let mode = self.policy_mode(meta, origin, &obj);
        let (Some(tier), Some(priority), Some(subject), true, Some(mode)) =
            (tier, priority, subject, ok, mode)
        else {
            return;
        };
        self.cluster_policies.push(ClusterPolicy {
            id: ClusterPolicyId(0),
            name: meta.name.clone().unwrap_or_default(),
            tier,
            priority,
            subject,
            ingress,
            egress,
            origin: cnp.origin.clone(),
            mode,
        });
    }

    fn max_items(
        &mut self,
        n: usize,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> bool {
        if n > MAX_ITEMS {
            self.err(
                origin,
                obj,
                field,
                Some(n.to_string()),
                format!("too many: {n}: must have at most {MAX_ITEMS} items"),
            );
            return false;
        }
        true
    }

    /// Exactly one of the fields of `allowed` set, for a subject or a peer.
    fn one_field(
        &mut self,
        f: &PeerFields<'_>,
        field: &str,
        allowed: &[&str],
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<&'static str> {
        let set: Vec<&'static str> = [
            ("namespaces", f.namespaces.is_some()),
            ("pods", f.pods.is_some()),
            ("nodes", f.nodes.is_some()),
            ("networks", f.networks.is_some()),
            ("domainNames", f.domain_names.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect();
        match set.as_slice() {
            [one] => Some(one),
            [] => {
                self.err(
                    origin,
                    obj,
                    field,
                    None,
                    format!("exactly one of {} must be set", quoted(allowed)),
                );
                None
            }
            many => {
                self.err(
                    origin,
                    obj,
                    field,
                    Some(many.join(", ")),
                    format!(
                        "exactly one of {} must be set, found {}",
                        quoted(allowed),
                        many.len()
                    ),
                );
                None
            }
        }
    }

    /// A subject (or a `namespaces`/`pods` peer) as a [`PodSelection`].
    fn pod_selection(
        &mut self,
        f: &PeerFields<'_>,
        field: &str,
        allowed: &[&str],
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<PodSelection> {
        match self.one_field(f, field, allowed, origin, obj)? {
            "namespaces" => {
                let sel = f.namespaces?;
                let namespaces = self.selector(sel, &format!("{field}.namespaces"), origin, obj)?;
                Some(PodSelection {
                    namespaces,
                    pods: Selector::everything(),
                    namespaces_only: true,
                })
            }
            "pods" => self.namespaced_pod(f.pods?, &format!("{field}.pods"), origin, obj),
            _ => None,
        }
    }

    fn namespaced_pod(
        &mut self,
        p: &NamespacedPod,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<PodSelection> {
        let namespaces = match &p.namespace_selector {
            Some(s) => self.selector(s, &format!("{field}.namespaceSelector"), origin, obj),
            None => Some(Selector::everything()),
        };
        let pods = match &p.pod_selector {
            Some(s) => self.selector(s, &format!("{field}.podSelector"), origin, obj),
            None => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.podSelector"),
                    None,
                    "required value",
                );
                None
            }
        };
        Some(PodSelection {
            namespaces: namespaces?,
            pods: pods?,
            namespaces_only: false,
        })
    }

    #[allow(clippy::too_many_arguments)] // ingress and egress share this with different field names
    fn cluster_rule(
        &mut self,
        side: Side,
        name: Option<&str>,
        action: Option<&str>,
        peers: Option<&[PeerFields<'_>]>,
        protocols: Option<&[ProtocolEntry]>,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<ClusterRule> {
        let mut ok = true;
        let name = name.unwrap_or_default();
        if name.chars().count() > 100 {
            self.err(
                origin,
                obj,
                &format!("{field}.name"),
                Some(name.into()),
                format!(
                    "too long: may not be more than 100 characters (has {})",
                    name.chars().count()
                ),
            );
            ok = false;
        }
        let action = match action {
            None => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.action"),
                    None,
                    "required value",
                );
                None
            }
            Some("Accept") => Some(Action::Accept),
            Some("Deny") => Some(Action::Deny),
            Some("Pass") => Some(Action::Pass),
            Some(other) => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.action"),
                    Some(other.into()),
                    "unsupported value: supported values are \"Accept\", \"Deny\", \"Pass\"",
                );
                None
            }
        };
        let (peers_key, allowed): (&str, &[&str]) = match side {
            Side::Ingress => ("from", &["namespaces", "pods"]),
            Side::Egress => (
                "to",
                &["namespaces", "pods", "nodes", "networks", "domainNames"],
            ),
        };
        let mut out_peers = Vec::new();
        match peers {
            None => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.{peers_key}"),
                    None,
                    "required value",
                );
                ok = false;
            }
            Some([]) => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.{peers_key}"),
                    None,
                    "should have at least 1 items",
                );
                ok = false;
            }
            Some(ps) => {
                ok &= self.max_items(ps.len(), &format!("{field}.{peers_key}"), origin, obj);
                for (i, p) in ps.iter().enumerate() {
                    let pf = format!("{field}.{peers_key}[{i}]");
                    match self.cluster_peer(p, &pf, allowed, action, origin, obj) {
                        Some(p) => out_peers.push(p),
                        None => ok = false,
                    }
                }
            }
        }
        let ports = match protocols {
            None => None,
            Some([]) => {
                self.err(
                    origin,
                    obj,
                    &format!("{field}.protocols"),
                    None,
                    "should have at least 1 items",
                );
                ok = false;
                None
            }
            Some(ps) => {
                ok &= self.max_items(ps.len(), &format!("{field}.protocols"), origin, obj);
                let mut out = Vec::new();
                for (i, p) in ps.iter().enumerate() {
                    match self.cluster_port(p, &format!("{field}.protocols[{i}]"), origin, obj) {
                        Some(p) => out.push(p),
                        None => ok = false,
                    }
                }
                Some(out)
            }
        };
        // The experimental channel's CEL rule on egress rules.
        if let Some(ps) = &ports
            && ps.iter().any(|p| matches!(p, ClusterPort::Named(_)))
            && out_peers.iter().any(|p| {
                matches!(
                    p,
                    ClusterPeer::Networks(_) | ClusterPeer::Nodes(_) | ClusterPeer::DomainNames(_)
                )
            })
        {
            self.err(
                origin,
                obj,
                field,
                None,
                "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames",
            );
            ok = false;
        }
        let (Some(action), true) = (action, ok) else {
            return None;
        };
        Some(ClusterRule {
            name: name.to_string(),
            action,
            peers: out_peers,
            ports,
        })
    }

    fn cluster_peer(
        &mut self,
        p: &PeerFields<'_>,
        field: &str,
        allowed: &[&str],
        action: Option<Action>,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<ClusterPeer> {
        match self.one_field(p, field, allowed, origin, obj)? {
            "namespaces" | "pods" => self
                .pod_selection(p, field, allowed, origin, obj)
                .map(ClusterPeer::Pods),
            "nodes" => {
                let sel = p.nodes?;
                self.selector(sel, &format!("{field}.nodes"), origin, obj)
                    .map(ClusterPeer::Nodes)
            }
            "networks" => {
                let nets = p.networks?;
                let f = format!("{field}.networks");
                let ok = self.list_bounds(nets, &f, origin, obj);
                let mut out = Vec::new();
                let mut all_ok = ok;
                for (i, n) in nets.iter().enumerate() {
                    let nf = format!("{f}[{i}]");
                    if !self.set_item(nets, i, &nf, origin, obj) {
                        all_ok = false;
                        continue;
                    }
                    if n.len() > 43 {
                        self.err(
                            origin,
                            obj,
                            &nf,
                            Some(n.clone()),
                            "too long: may not be more than 43 bytes",
                        );
                        all_ok = false;
                        continue;
                    }
                    match parse_cidr(n) {
                        Ok(c) => out.push(c),
                        Err(_) => {
                            self.err(
                                origin,
                                obj,
                                &nf,
                                Some(n.clone()),
                                "Invalid CIDR format provided",
                            );
                            all_ok = false;
                        }
                    }
                }
                out.sort();
                out.dedup();
                all_ok.then_some(ClusterPeer::Networks(out))
            }
            "domainNames" => {
                let names = p.domain_names?;
                let f = format!("{field}.domainNames");
                let mut ok = self.list_bounds(names, &f, origin, obj);
                for (i, n) in names.iter().enumerate() {
                    if !self.set_item(names, i, &format!("{f}[{i}]"), origin, obj) {
                        ok = false;
                    } else if !valid_domain_name(n) {
                        self.err(
                            origin,
                            obj,
                            &format!("{f}[{i}]"),
                            Some(n.clone()),
                            "should match the DomainName pattern: a domain name like `example.com`, optionally prefixed with `*.` for its subdomains",
                        );
                        ok = false;
                    }
                }
                if ok && matches!(action, Some(Action::Deny | Action::Pass)) {
                    self.diags.push(
                        Diagnostic::field_error(
                            origin,
                            obj,
                            &f,
                            None,
                            "domainNames is only supported for Accept rules: this peer matches nothing",
                        )
                        .warning(),
                    );
                }
                ok.then(|| ClusterPeer::DomainNames(names.clone()))
            }
            _ => None,
        }
    }

    /// `minItems: 1` and `maxItems: 25` of `networks` / `domainNames`.
    fn list_bounds(
        &mut self,
        items: &[String],
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> bool {
        if items.is_empty() {
            self.err(origin, obj, field, None, "should have at least 1 items");
            return false;
        }
        self.max_items(items.len(), field, origin, obj)
    }

    /// `listType: set`: item `i` must not repeat an earlier one.
    fn set_item(
        &mut self,
        items: &[String],
        i: usize,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> bool {
        if items[..i].contains(&items[i]) {
            self.err(
                origin,
                obj,
                field,
                Some(items[i].clone()),
                "duplicate value (the list is a set)",
            );
            return false;
        }
        true
    }

    fn cluster_port(
        &mut self,
        p: &ProtocolEntry,
        field: &str,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<ClusterPort> {
        let set: Vec<&str> = [
            ("tcp", p.tcp.is_some()),
            ("udp", p.udp.is_some()),
            ("sctp", p.sctp.is_some()),
            ("destinationNamedPort", p.destination_named_port.is_some()),
        ]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(n, _)| n)
        .collect();
        let which = match set.as_slice() {
            [one] => *one,
            [] => {
                self.err(
                    origin,
                    obj,
                    field,
                    None,
                    "exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort` must be set",
                );
                return None;
            }
            many => {
                self.err(
                    origin,
                    obj,
                    field,
                    Some(many.join(", ")),
                    format!(
                        "exactly one of `tcp`, `udp`, `sctp`, `destinationNamedPort` must be set, found {}",
                        many.len()
                    ),
                );
                return None;
            }
        };
        let (protocol, ports) = match which {
            "tcp" => (Protocol::Tcp, p.tcp.as_ref()?),
            "udp" => (Protocol::Udp, p.udp.as_ref()?),
            "sctp" => (Protocol::Sctp, p.sctp.as_ref()?),
            _ => {
                let name = p.destination_named_port.clone()?;
                if let Err(e) = validate::iana_svc_name(&name) {
                    // The CRD accepts any string; no container port can have this name.
                    self.diags.push(
                        Diagnostic::field_error(
                            origin,
                            obj,
                            &format!("{field}.destinationNamedPort"),
                            Some(name.clone()),
                            format!("matches no container port: {e}"),
                        )
                        .warning(),
                    );
                }
                return Some(ClusterPort::Named(name));
            }
        };
        let pf = format!("{field}.{which}");
        let Some(dp) = &ports.destination_port else {
            self.err(
                origin,
                obj,
                &pf,
                None,
                "should have at least 1 properties (`destinationPort`)",
            );
            return None;
        };
        let df = format!("{pf}.destinationPort");
        let port_in_range = |this: &mut Self, v: Option<i64>, f: &str| -> Option<u16> {
            match v {
                None => {
                    this.err(origin, obj, f, None, "required value");
                    None
                }
                Some(n) => match u16::try_from(n).ok().filter(|n| *n >= 1) {
                    Some(n) => Some(n),
                    None => {
                        this.err(
                            origin,
                            obj,
                            f,
                            Some(n.to_string()),
                            "must be between 1 and 65535, inclusive",
                        );
                        None
                    }
                },
            }
        };
        let port = match (dp.number, &dp.range) {
            (Some(n), None) => {
                let n = port_in_range(self, Some(n), &format!("{df}.number"))?;
                PortMatch::Range(n, n)
            }
            (None, Some(r)) => {
                let rf = format!("{df}.range");
                let lo = port_in_range(self, r.start, &format!("{rf}.start"));
                let hi = port_in_range(self, r.end, &format!("{rf}.end"));
                let (lo, hi) = (lo?, hi?);
                if lo >= hi {
                    self.err(
                        origin,
                        obj,
                        &rf,
                        Some(format!("{lo}-{hi}")),
                        "Start port must be less than End port",
                    );
                    return None;
                }
                PortMatch::Range(lo, hi)
            }
            (None, None) => {
                self.err(
                    origin,
                    obj,
                    &df,
                    None,
                    "exactly one of `number`, `range` must be set",
                );
                return None;
            }
            (Some(_), Some(_)) => {
                self.err(
                    origin,
                    obj,
                    &df,
                    Some("number, range".into()),
                    "exactly one of `number`, `range` must be set, found 2",
                );
                return None;
            }
        };
        Some(ClusterPort::Port(RulePort { protocol, port }))
    }
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The addresses of the Node objects `sel` selects (their InternalIP/ExternalIP, plus
/// hostNetwork Pods' addresses on them), sorted.
pub fn selected_node_addresses(model: &Model, sel: &Selector) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = model
        .nodes
        .values()
        .filter(|n| sel.matches(&n.labels))
        .flat_map(|n| model.node_addresses(&n.name))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_name_pattern() {
        for ok in [
            "kubernetes.io",
            "*.kubernetes.io",
            "a.b.c.",
            "x_y.io",
            "a1.b2",
        ] {
            assert!(valid_domain_name(ok), "{ok}");
        }
        for bad in [
            "io", "*.io", "a..b", "-a.io", "a-.io", "*a.io", "a.*.io", "", "a b.io",
        ] {
            assert!(!valid_domain_name(bad), "{bad}");
        }
    }
}
