//! `explain`: may SRC reach DST (on a port, or at all), and which rules decide it.
//!
//! Builds on [`AllowGraph::reach`] and adds, for a denied side, the *nearest miss*: the
//! rule of an isolating policy that came closest, and what failed (a namespace label, a
//! pod label, an address outside a block, a port outside the rule's ports).

use std::fmt::{self, Write as _};

use serde::Serialize;

use crate::audit::AuditView;
use crate::graph::{
    AllowGraph, Decision, Provenance, Reach, SideVerdict, Subject, TierWalk, rule_ports,
};
use crate::model::{
    ClusterPeer, ClusterPolicyId, Direction, Endpoint, Model, NamespaceScope, Peer, PolicyId,
    PolicyMode, PortMatch, Rule, Service, Tier,
};
use crate::ports::{PortSet, Protocol};

/// A port query: one protocol and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PortQuery {
    /// Protocol.
    pub protocol: Protocol,
    /// Port number.
    pub port: u16,
}

/// One rule that allows the queried traffic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllowedBy {
    /// `ns/name`.
    pub policy: String,
    /// Rule index in the policy's ingress or egress list.
    pub rule: u32,
    /// Peer index in the rule's `from`/`to` (`null`: the rule has no peers).
    pub peer: Option<u32>,
    /// Port index in the rule's `ports` (`null`: the rule has no ports, or no port was
    /// queried).
    pub port: Option<u32>,
    /// What this rule allows toward the destination.
    pub ports: PortSet,
}

/// One side of an explanation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideExplanation {
    /// `egress` or `ingress`.
    pub direction: &'static str,
    /// Where the side is enforced (the source for egress, the destination for ingress).
    pub at: String,
    /// False when no policy can apply (external address or hostNetwork Pod).
    pub applies: bool,
    /// Whether some policy isolates this side.
    pub isolated: bool,
    /// The isolating policies, `ns/name`.
    pub policies: Vec<String>,
    /// The rules that allow the queried traffic.
    pub allowed_by: Vec<AllowedBy>,
    /// What this side allows.
    pub allowed_traffic: PortSet,
    /// Whether this side allows the queried traffic (any traffic without a port).
    pub allowed: bool,
    /// For a side denied by its NetworkPolicies: the closest rule and what failed.
    pub nearest_miss: Option<String>,
    /// The ClusterNetworkPolicy tier walk of this side; absent when no
    /// ClusterNetworkPolicy applies to the Pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tiers: Option<TierExplanation>,
}

/// A ClusterNetworkPolicy rule that matched one side of the flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierRule {
    /// `Admin` or `Baseline`.
    pub tier: &'static str,
    /// The ClusterNetworkPolicy's name.
    pub policy: String,
    /// Its priority.
    pub priority: u16,
    /// Rule index in its ingress or egress list.
    pub rule: u32,
    /// The rule's name (may be empty).
    pub name: String,
    /// `Accept`, `Deny` or `Pass`.
    pub action: &'static str,
    /// Index of the first matching peer in `from`/`to`.
    pub peer: u32,
    /// The ports the rule matches toward the destination.
    pub ports: PortSet,
    /// Of those, the ports this rule decides (no earlier rule had); empty when shadowed.
    pub decides: PortSet,
}

/// Who decided the queried port (or, without a port, the verdict's first deciding rule).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierDecision {
    /// `Admin`, `NetworkPolicy`, `Baseline` or `default`.
    pub tier: &'static str,
    /// The deciding ClusterNetworkPolicy (Admin/Baseline), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// Its rule index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// Its rule name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny`, `allow`/`deny` (NetworkPolicy) or `allow` (default).
    pub action: &'static str,
    /// An Admin Pass rule that sent the port on, if any (`policy rule N "name"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed_by: Option<String>,
}

/// The tier walk of one side: Admin, NetworkPolicy, Baseline, default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierExplanation {
    /// The ClusterNetworkPolicies applying to the Pod, in evaluation order
    /// (`name (Admin 3)`).
    pub applied: Vec<String>,
    /// Matching Admin rules, in evaluation order.
    pub admin: Vec<TierRule>,
    /// Ports that reached the NetworkPolicy tier.
    pub to_network_policy: PortSet,
    /// Whether a NetworkPolicy isolates the Pod on this side (it then decides every port
    /// that reaches it).
    pub network_policy_decides: bool,
    /// Matching Baseline rules, in evaluation order (only when no NetworkPolicy decides).
    pub baseline: Vec<TierRule>,
    /// Ports allowed because no tier decided them (or a Baseline Pass sent them on).
    pub to_default: PortSet,
    /// Who decided the queried port; without a port, `null`.
    pub decided_by: Option<TierDecision>,
    /// Rules with `domainNames` peers (egress Accept rules): which addresses a name
    /// resolves to cannot be decided offline, so netpol treats them as matching nothing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub undecidable: Vec<String>,
}

/// The full answer to `netpol explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    /// Source name.
    pub source: String,
    /// Destination name.
    pub destination: String,
    /// Queried port, if any.
    pub port: Option<u16>,
    /// Queried protocol, if any.
    pub protocol: Option<Protocol>,
    /// The verdict: the queried port allowed, or (without a port) any traffic allowed.
    pub allowed: bool,
    /// Everything that may flow.
    pub allowed_traffic: PortSet,
    /// Traffic from a Pod to itself (always allowed).
    pub to_self: bool,
    /// Source and destination are one workload with `replicas != 1` or unknown: judged
    /// between two distinct replicas. `null` otherwise; else the replica count
    /// (`"3"`, `"unknown"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub between_replicas: Option<String>,
    /// Why the answer may differ in the cluster (objects netpol does not evaluate);
    /// filled by the caller, which knows what was skipped.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub caveats: Vec<String>,
    /// Traffic from the destination Pod's own node (always allowed into it); only
    /// serialised when true.
    #[serde(skip_serializing_if = "is_false")]
    pub from_node: bool,
    /// Egress at the source.
    pub egress: SideExplanation,
    /// Ingress at the destination.
    pub ingress: SideExplanation,
    /// The audited verdict (every `netpol.io/mode: audit` policy enforced), only when it
    /// differs from this, the enforced one ([`explain_with_audit`]); its policy names
    /// carry ` (audit)` where the policy is an audit policy. See docs/audit.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Box<Explanation>>,
}

/// Explains the flow `src -> dst`, optionally for one protocol/port.
pub fn explain(
    model: &Model,
    graph: &AllowGraph,
    src: Subject,
    dst: Subject,
    query: Option<PortQuery>,
) -> Explanation {
    let reach = graph.reach(model, src, dst);
    explain_reach(model, graph, &reach, query)
}

/// [`explain`] with the audited verdict beside the enforced one: `audit` is the
/// [`AuditView`] of `model` (`None` when it has no audit policy). The answer's
/// [`Explanation::audit`] is set only when the audited verdict differs (the queried port,
/// or without a port the allowed traffic), so an input without audit policies, or whose
/// audit policies change nothing for this flow, explains exactly as [`explain`].
pub fn explain_with_audit(
    model: &Model,
    graph: &AllowGraph,
    audit: Option<&AuditView>,
    src: Subject,
    dst: Subject,
    query: Option<PortQuery>,
) -> Explanation {
    let mut e = explain(model, graph, src, dst, query);
    if let Some(a) = audit {
        // The audited model has the same endpoints (only policies differ), so the
        // subjects mean the same there.
        let audited = explain(&a.model, &a.graph, src, dst, query);
        if audited.allowed != e.allowed || audited.allowed_traffic != e.allowed_traffic {
            e.audit = Some(Box::new(audited));
        }
    }
    e
}

/// `ns/name`, with ` (audit)` for an audit policy (only an audited model holds them).
fn policy_name(model: &Model, id: PolicyId) -> String {
    let p = model.policy(id);
    match p.mode {
        PolicyMode::Enforce => p.key(),
        PolicyMode::Audit => format!("{} (audit)", p.key()),
    }
}

/// A ClusterNetworkPolicy's name, with ` (audit)` for an audit policy.
fn cluster_policy_name(model: &Model, id: ClusterPolicyId) -> String {
    let p = model.cluster_policy(id);
    match p.mode {
        PolicyMode::Enforce => p.name.clone(),
        PolicyMode::Audit => format!("{} (audit)", p.name),
    }
}

/// Explains an already computed [`Reach`].
pub fn explain_reach(
    model: &Model,
    graph: &AllowGraph,
    reach: &Reach,
    query: Option<PortQuery>,
) -> Explanation {
    let ok = |set: &PortSet| match query {
        Some(q) => set.contains(q.protocol, q.port),
        None => !set.is_empty(),
    };
    let dst_ep = match reach.dst {
        Subject::Endpoint(id) => Some(model.endpoint(id)),
        Subject::External(_) => None,
    };
    let side = |dir: Direction, v: &SideVerdict, at: Subject, peer: Subject| {
        let peer_ip = match dir {
            Direction::Egress => reach.dst_ip,
            Direction::Ingress => reach.src_ip,
        };
        // With ClusterNetworkPolicies, a NetworkPolicy rule allows only what reaches the
        // NetworkPolicy tier.
        let np_reached =
            |ports: &PortSet| !v.tiers.subject || ok(&ports.intersect(&v.tiers.to_network_policy));
        let allowed_by = v
            .matches
            .iter()
            .filter(|m| ok(&m.ports) && np_reached(&m.ports))
            .map(|m| AllowedBy {
                policy: policy_name(model, m.provenance.policy),
                rule: m.provenance.rule,
                peer: m.provenance.peer,
                port: query.and_then(|q| port_index(model, &m.provenance, q, dst_ep)),
                ports: m.ports.clone(),
            })
            .collect();
        let allowed = ok(&v.allowed);
        let applied = match at {
            Subject::Endpoint(id) => graph.cluster_subjects(id),
            Subject::External(_) => &[],
        };
        let tiers = v
            .tiers
            .subject
            .then(|| tier_explanation(model, dir, applied, &v.tiers, v.isolated, query));
        // The nearest miss explains a NetworkPolicy denial; a ClusterNetworkPolicy Deny
        // names its rule in `tiers.decided_by`.
        let np_denied = match &tiers {
            Some(t) => {
                t.decided_by
                    .as_ref()
                    .is_some_and(|d| d.tier == "NetworkPolicy")
                    || (query.is_none() && t.network_policy_decides)
            }
            None => true,
        };
        let nearest_miss = (v.isolated && !allowed && np_denied)
            .then(|| nearest_miss(model, graph, dir, v, peer, peer_ip, dst_ep, query))
            .flatten();
        SideExplanation {
            direction: dir.as_str(),
            at: at.display(model),
            applies: v.applies,
            isolated: v.isolated,
            policies: v.policies.iter().map(|p| policy_name(model, *p)).collect(),
            allowed_by,
            allowed_traffic: v.allowed.clone(),
            allowed,
            nearest_miss,
            tiers,
        }
    };
    Explanation {
        source: reach.src.display(model),
        destination: reach.dst.display(model),
        port: query.map(|q| q.port),
        protocol: query.map(|q| q.protocol),
        allowed: ok(&reach.allowed),
        allowed_traffic: reach.allowed.clone(),
        to_self: reach.to_self,
        between_replicas: match (reach.src, reach.dst) {
            (Subject::Endpoint(a), Subject::Endpoint(b)) if a == b && !reach.to_self => Some(
                model
                    .endpoint(a)
                    .replicas
                    .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
            ),
            _ => None,
        },
        caveats: Vec::new(),
        from_node: reach.from_node,
        egress: side(Direction::Egress, &reach.egress, reach.src, reach.dst),
        ingress: side(Direction::Ingress, &reach.ingress, reach.dst, reach.src),
        audit: None,
    }
}

fn port_index(
    model: &Model,
    prov: &Provenance,
    q: PortQuery,
    dst: Option<&Endpoint>,
) -> Option<u32> {
    let rule = crate::graph::rule_of(model, prov);
    rule.ports.as_ref().and_then(|ports| {
        ports
            .iter()
            .position(|p| p.protocol == q.protocol && p.resolve(dst).contains(q.port))
            .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
    })
}

fn tier_rule(model: &Model, w: &TierWalk, i: usize) -> TierRule {
    let m = &w.matches[i];
    let p = model.cluster_policy(m.policy);
    TierRule {
        tier: m.tier.as_str(),
        policy: cluster_policy_name(model, m.policy),
        priority: p.priority,
        rule: m.rule,
        name: p
            .rules(m.direction)
            .get(m.rule as usize)
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        action: m.action.as_str(),
        peer: m.peer,
        ports: m.ports.clone(),
        decides: m.decided.clone(),
    }
}

fn tier_explanation(
    model: &Model,
    dir: Direction,
    applied: &[crate::model::ClusterPolicyId],
    w: &TierWalk,
    isolated: bool,
    query: Option<PortQuery>,
) -> TierExplanation {
    let rules = |tier: Tier| -> Vec<TierRule> {
        (0..w.matches.len())
            .filter(|i| w.matches[*i].tier == tier)
            .map(|i| tier_rule(model, w, i))
            .collect()
    };
    let label = |i: usize| {
        let r = tier_rule(model, w, i);
        rule_label(&r)
    };
    let decided_by = query.map(|q| {
        let passed_by = w.admin_pass(q.protocol, q.port).map(label);
        match w.decision(isolated, q.protocol, q.port) {
            Decision::Cluster(i) => {
                let r = tier_rule(model, w, i);
                TierDecision {
                    tier: r.tier,
                    policy: Some(r.policy),
                    rule: Some(r.rule),
                    name: Some(r.name),
                    action: r.action,
                    passed_by,
                }
            }
            Decision::NetworkPolicy { allowed } => TierDecision {
                tier: "NetworkPolicy",
                policy: None,
                rule: None,
                name: None,
                action: if allowed { "allow" } else { "deny" },
                passed_by,
            },
            Decision::Default { passed } => TierDecision {
                tier: "default",
                policy: None,
                rule: None,
                name: None,
                action: "allow",
                passed_by: passed.map(label).or(passed_by),
            },
        }
    });
    let mut undecidable = Vec::new();
    for id in applied.iter().filter(|_| dir == Direction::Egress) {
        let p = model.cluster_policy(*id);
        for (ri, r) in p.egress.iter().enumerate() {
            for peer in &r.peers {
                if let ClusterPeer::DomainNames(names) = peer {
                    undecidable.push(format!(
                        "{} egress rule {ri}{} ({}): domainNames {} cannot be decided offline (treated as matching nothing)",
                        p.name,
                        if r.name.is_empty() { String::new() } else { format!(" {:?}", r.name) },
                        r.action,
                        names.join(", ")
                    ));
                }
            }
        }
    }
    TierExplanation {
        undecidable,
        applied: applied
            .iter()
            .map(|id| {
                let p = model.cluster_policy(*id);
                format!(
                    "{} ({} {})",
                    cluster_policy_name(model, *id),
                    p.tier,
                    p.priority
                )
            })
            .collect(),
        admin: rules(Tier::Admin),
        to_network_policy: w.to_network_policy.clone(),
        network_policy_decides: isolated,
        baseline: rules(Tier::Baseline),
        to_default: w.to_default.clone(),
        decided_by,
    }
}

/// `ClusterNetworkPolicy NAME ingress rule N "name"` without the direction: `NAME rule N
/// "name"`.
fn rule_label(r: &TierRule) -> String {
    if r.name.is_empty() {
        format!("{} rule {}", r.policy, r.rule)
    } else {
        format!("{} rule {} {:?}", r.policy, r.rule, r.name)
    }
}

/// Why `peer` (seen at `ip`) does not match a rule peer; `None` when it matches.
pub fn peer_miss(
    model: &Model,
    peer: &Peer,
    subject: Subject,
    ip: Option<std::net::IpAddr>,
) -> Option<String> {
    match peer {
        Peer::IpBlock(b) => match ip {
            None => Some(format!("{} has no IP address", subject.display(model))),
            Some(ip) if !b.cidr.contains(&ip) => Some(format!("{ip} is not in {}", b.cidr)),
            Some(ip) => b
                .except
                .iter()
                .find(|e| e.contains(&ip))
                .map(|e| format!("{ip} is in except {e} of {}", b.cidr)),
        },
        Peer::Pods { namespaces, pods } => {
            let Subject::Endpoint(id) = subject else {
                return Some(format!(
                    "{} is not a Pod: only ipBlock peers match it",
                    subject.display(model)
                ));
            };
            let e = model.endpoint(id);
            if !e.selectable() {
                return Some(format!(
                    "{} is a hostNetwork Pod: pod selectors never select it",
                    e.key()
                ));
            }
            match namespaces {
                NamespaceScope::Own(ns) if *ns != e.namespace => {
                    return Some(format!(
                        "{} is in namespace {}, not the policy's namespace {ns}",
                        e.key(),
                        e.namespace
                    ));
                }
                NamespaceScope::Selector(sel) => {
                    let empty = Default::default();
                    let labels = model.namespace_labels(&e.namespace).unwrap_or(&empty);
                    if let Some(r) = sel.first_miss(labels) {
                        return Some(format!("namespace {} {}", e.namespace, r.why_not(labels)));
                    }
                }
                NamespaceScope::Own(_) => {}
            }
            pods.first_miss(&e.labels)
                .map(|r| format!("pod {} {}", e.key(), r.why_not(&e.labels)))
        }
    }
}

fn port_miss(rule: &Rule, dst: Option<&Endpoint>, q: Option<PortQuery>) -> Option<String> {
    let ports = rule.ports.as_ref()?;
    let dst_name = dst
        .map(Endpoint::key)
        .unwrap_or_else(|| "an external address".into());
    match q {
        Some(q) => {
            if ports
                .iter()
                .any(|p| p.protocol == q.protocol && p.resolve(dst).contains(q.port))
            {
                return None;
            }
            let list: Vec<String> = ports
                .iter()
                .map(|p| match &p.port {
                    PortMatch::Named(n) => {
                        let r = p.resolve(dst);
                        if r.is_empty() {
                            format!("{} {n} (not declared by {dst_name})", p.protocol)
                        } else {
                            format!("{} {n}={r}", p.protocol)
                        }
                    }
                    _ => p.to_string(),
                })
                .collect();
            Some(format!(
                "{} {} not in [{}]",
                q.protocol,
                q.port,
                list.join(", ")
            ))
        }
        None => rule_ports(rule, dst).is_empty().then(|| {
            let names: Vec<String> = ports.iter().map(ToString::to_string).collect();
            format!(
                "none of the rule's ports [{}] exist on {dst_name}",
                names.join(", ")
            )
        }),
    }
}

/// True when a selector peer's miss is about pod labels (its namespace matched).
fn pod_label_miss(rule: &Rule, peer: usize, miss: &str) -> bool {
    matches!(
        rule.peers.as_ref().and_then(|p| p.get(peer)),
        Some(Peer::Pods { .. })
    ) && miss.starts_with("pod ")
}

#[allow(clippy::too_many_arguments)]
fn nearest_miss(
    model: &Model,
    _graph: &AllowGraph,
    dir: Direction,
    v: &SideVerdict,
    peer: Subject,
    peer_ip: Option<std::net::IpAddr>,
    dst: Option<&Endpoint>,
    q: Option<PortQuery>,
) -> Option<String> {
    let mut best: Option<(u8, String)> = None;
    let mut consider = |score: u8, text: String| {
        if best.as_ref().is_none_or(|(s, _)| score > *s) {
            best = Some((score, text));
        }
    };
    for pid in &v.policies {
        let policy = model.policy(*pid);
        let rules = policy.rules(dir);
        if rules.is_empty() {
            consider(
                0,
                format!("{} has no {dir} rules: it denies all {dir}", policy.key()),
            );
            continue;
        }
        for (ri, rule) in rules.iter().enumerate() {
            let pm = port_miss(rule, dst, q);
            let peers: Vec<(Option<usize>, Option<String>)> = match &rule.peers {
                None => vec![(None, None)],
                Some(ps) => ps
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (Some(i), peer_miss(model, p, peer, peer_ip)))
                    .collect(),
            };
            for (pi, miss) in peers {
                let at = match pi {
                    Some(i) => format!("{} {dir} rule {ri} peer {i}", policy.key()),
                    None => format!("{} {dir} rule {ri}", policy.key()),
                };
                // Closest first: the peer matched and only the port failed; then a peer
                // whose namespace (or block) matched but whose pod labels did not; the
                // port matching breaks ties.
                let closeness = match (&miss, pi) {
                    (None, _) => 2,
                    (Some(m), Some(i)) if pod_label_miss(rule, i, m) => 1,
                    _ => 0,
                };
                let score = closeness * 2 + u8::from(pm.is_none()) + 1;
                let why = match (&miss, &pm) {
                    (None, Some(p)) => p.clone(),
                    (Some(m), None) => m.clone(),
                    (Some(m), Some(p)) => format!("{m}; and {p}"),
                    (None, None) => continue,
                };
                consider(score, format!("{at}: {why}"));
            }
        }
    }
    best.map(|(_, t)| t)
}

impl Explanation {
    /// The one-line verdict: `TCP 80 allowed`, or `TCP 80, 443 allowed; all else denied`.
    pub fn verdict(&self) -> String {
        match (self.protocol, self.port) {
            (Some(p), Some(port)) => {
                format!(
                    "{p} {port} {}",
                    if self.allowed { "allowed" } else { "denied" }
                )
            }
            _ if self.allowed_traffic.is_all() => "all traffic allowed".into(),
            _ if self.allowed_traffic.is_empty() => "all traffic denied".into(),
            _ => format!("{} allowed; all else denied", self.allowed_traffic),
        }
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} -> {}: {}",
            self.source,
            self.destination,
            self.verdict()
        )?;
        self.write_body(f)?;
        let Some(a) = &self.audit else {
            return Ok(());
        };
        // The audited answer, indented under one line that says what it is.
        let would_drop = match self.port {
            Some(_) => self.allowed && !a.allowed,
            None => !self.allowed_traffic.subtract(&a.allowed_traffic).is_empty(),
        };
        write_audited(f, &a.verdict(), would_drop, &a.to_string())
    }
}

impl Explanation {
    /// Everything after the verdict line.
    fn write_body(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.caveats {
            writeln!(f, "  warning: {c}")?;
        }
        if self.to_self {
            writeln!(f, "  traffic from a Pod to itself is always allowed")?;
            return Ok(());
        }
        if let Some(n) = &self.between_replicas {
            writeln!(
                f,
                "  judged between two distinct replicas of {} (replicas: {n})",
                self.source
            )?;
        }
        if self.from_node {
            writeln!(
                f,
                "  {} is the node of {}: a Pod's own node may always connect to it",
                self.source, self.destination
            )?;
            return Ok(());
        }
        for side in [&self.egress, &self.ingress] {
            let mut line = String::new();
            let _ = write!(line, "  {} at {}: ", side.direction, side.at);
            if !side.applies {
                let _ = write!(line, "not a Pod that policies select: not isolated");
            } else if !side.isolated && side.tiers.is_some() {
                let _ = write!(line, "no NetworkPolicy isolates it");
            } else if !side.isolated {
                let _ = write!(line, "not isolated");
            } else {
                let _ = write!(line, "isolated by {}", side.policies.join(", "));
            }
            writeln!(f, "{line}")?;
            if let Some(t) = &side.tiers {
                let q = self
                    .protocol
                    .zip(self.port)
                    .map(|(protocol, port)| PortQuery { protocol, port });
                write_tiers(f, side, t, q)?;
            }
            if side.isolated {
                if !side.allowed_traffic.is_empty() && self.port.is_none() {
                    writeln!(f, "    allows {}", side.allowed_traffic)?;
                }
                for a in &side.allowed_by {
                    let mut s = format!(
                        "    allowed by {} {} rule {}",
                        a.policy, side.direction, a.rule
                    );
                    if let Some(p) = a.peer {
                        let _ = write!(s, " peer {p}");
                    }
                    if let Some(p) = a.port {
                        let _ = write!(s, " port {p}");
                    }
                    let _ = write!(s, " ({})", a.ports);
                    writeln!(f, "{s}")?;
                }
                if let Some(m) = &side.nearest_miss {
                    writeln!(f, "    denied; nearest miss: {m}")?;
                }
            }
        }
        Ok(())
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The tier walk of one side, as a security engineer reads it: the ClusterNetworkPolicies
/// that apply, each matching Admin rule, the NetworkPolicy tier, each matching Baseline
/// rule, the default, and who decided the queried port.
fn write_tiers(
    f: &mut fmt::Formatter<'_>,
    side: &SideExplanation,
    t: &TierExplanation,
    query: Option<PortQuery>,
) -> fmt::Result {
    writeln!(f, "    ClusterNetworkPolicies: {}", t.applied.join(", "))?;
    for u in &t.undecidable {
        writeln!(f, "    note: {u}")?;
    }
    let has = |set: &PortSet| match query {
        Some(q) => set.contains(q.protocol, q.port),
        None => !set.is_empty(),
    };
    let rule_line = |f: &mut fmt::Formatter<'_>, r: &TierRule| -> fmt::Result {
        let what = if !has(&r.ports) {
            match query {
                Some(q) => format!("does not match {} {}", q.protocol, q.port),
                None => "matches no port".to_string(),
            }
        } else if !has(&r.decides) {
            "shadowed by an earlier rule".to_string()
        } else {
            let verb = match (r.action, r.tier) {
                ("Pass", "Admin") => "passes to NetworkPolicy",
                ("Pass", _) => "passes to the default",
                _ => "decides",
            };
            match query {
                Some(_) => verb.to_string(),
                None => format!("{verb} {}", r.decides),
            }
        };
        let name = if r.name.is_empty() {
            String::new()
        } else {
            format!(" {:?}", r.name)
        };
        writeln!(
            f,
            "    {} tier: {} {} rule {}{name}: {} {}: {what}",
            r.tier, r.policy, side.direction, r.rule, r.action, r.ports
        )
    };
    if t.admin.is_empty() {
        writeln!(f, "    Admin tier: no matching rule")?;
    }
    for r in &t.admin {
        rule_line(f, r)?;
    }
    if !has(&t.to_network_policy) {
        writeln!(f, "    NetworkPolicy tier: not reached")?;
        return write_decision(f, side, t);
    }
    if t.network_policy_decides {
        match query {
            Some(_) => writeln!(f, "    NetworkPolicy tier: isolates the Pod and decides")?,
            None => writeln!(
                f,
                "    NetworkPolicy tier: isolates the Pod and decides {}",
                t.to_network_policy
            )?,
        }
        return write_decision(f, side, t);
    }
    writeln!(
        f,
        "    NetworkPolicy tier: no NetworkPolicy isolates the Pod: on to Baseline"
    )?;
    if t.baseline.is_empty() {
        writeln!(f, "    Baseline tier: no matching rule")?;
    }
    for r in &t.baseline {
        rule_line(f, r)?;
    }
    if query.is_none() && !t.to_default.is_empty() {
        writeln!(f, "    default: {} allowed (no tier decided)", t.to_default)?;
    }
    write_decision(f, side, t)
}

fn write_decision(
    f: &mut fmt::Formatter<'_>,
    side: &SideExplanation,
    t: &TierExplanation,
) -> fmt::Result {
    let Some(d) = &t.decided_by else {
        return Ok(());
    };
    let passed = match &d.passed_by {
        Some(p) => format!(" (after Pass by {p})"),
        None => String::new(),
    };
    match (d.policy.as_deref(), d.rule) {
        (Some(p), Some(r)) => {
            let name = match d.name.as_deref() {
                Some(n) if !n.is_empty() => format!(" {n:?}"),
                _ => String::new(),
            };
            let verb = if d.action == "Accept" {
                "allowed"
            } else {
                "denied"
            };
            writeln!(
                f,
                "    {verb} by {} tier ClusterNetworkPolicy {p} {} rule {r}{name} ({}){passed}",
                d.tier, side.direction, d.action
            )
        }
        _ if d.tier == "NetworkPolicy" => {
            let verb = if d.action == "allow" {
                "allowed"
            } else {
                "denied"
            };
            writeln!(f, "    {verb} by the NetworkPolicy tier{passed}")
        }
        _ => writeln!(f, "    allowed by default: no tier decided{passed}"),
    }
}

/// What `explain` was asked about as destination.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'m> {
    /// A Pod, workload or address.
    Subject(Subject),
    /// A Service (`ns/service/name` or `ns/svc/name`).
    Service(&'m Service),
}

/// Parses a source: anything [`Subject::parse`] takes, or `node/NAME` (the first address
/// of node NAME, when no Pod `node/NAME` exists).
pub fn parse_source(model: &Model, arg: &str) -> Result<Subject, String> {
    let sub = Subject::parse(model, arg);
    if sub.is_ok() {
        return sub;
    }
    if let Some(name) = arg.strip_prefix("node/").filter(|n| !n.contains('/')) {
        let addrs = model.node_addresses(name);
        return match addrs.first() {
            Some(ip) => Ok(Subject::External(*ip)),
            None if model.nodes.contains_key(name) => Err(format!(
                "node {name} has no InternalIP/ExternalIP address and no hostNetwork Pod with an IP"
            )),
            None => Err(format!("no node {name} in the input")),
        };
    }
    sub
}

/// Parses a destination: a Service (`ns/service/name`, `ns/svc/name`), else anything
/// [`Subject::parse`] takes.
pub fn parse_destination<'m>(model: &'m Model, arg: &str) -> Result<Destination<'m>, String> {
    let parts: Vec<&str> = arg.split('/').collect();
    if let [ns, kind, name] = parts.as_slice()
        && matches!(
            kind.to_ascii_lowercase().as_str(),
            "service" | "svc" | "services"
        )
    {
        let key = format!("{ns}/{name}");
        return match model.service(&key) {
            Some(s) => Ok(Destination::Service(s)),
            None => {
                let known: Vec<String> = model
                    .services
                    .iter()
                    .filter(|s| s.namespace == *ns)
                    .map(Service::display)
                    .take(20)
                    .collect();
                if known.is_empty() {
                    Err(format!(
                        "no Service {key}: namespace {ns} has no Services in the input"
                    ))
                } else {
                    Err(format!(
                        "no Service {key}; Services in {ns}: {}",
                        known.join(", ")
                    ))
                }
            }
        };
    }
    Subject::parse(model, arg).map(Destination::Subject)
}

/// A Service port, as `explain` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePortRef {
    /// Port name, if any.
    pub name: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
}

/// One backend's answer for a connection through a Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackendExplanation {
    /// The Service port connected to.
    pub service_port: ServicePortRef,
    /// The backend: `ns/name`, `ns/kind/name` or an address.
    pub backend: String,
    /// The port the backend receives the connection on.
    pub port: u16,
    /// `targetPort` as the Service spells it (a number or a container port name).
    #[serde(rename = "targetPort")]
    pub target_port: String,
    /// Whether the flow source -> backend on `port` is allowed.
    pub allowed: bool,
    /// The source is this backend (hairpin): judged like any flow.
    pub hairpin: bool,
    /// Egress at the source.
    pub egress: SideExplanation,
    /// Ingress at the backend.
    pub ingress: SideExplanation,
    /// The full explanation of the flow to the backend (text rendering).
    #[serde(skip)]
    pub explanation: Explanation,
}

/// The answer to `netpol explain SRC ns/service/NAME [--port P]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceExplanation {
    /// Source name.
    pub source: String,
    /// `ns/service/name`.
    pub destination: String,
    /// The Service: name, type and the addresses clients use.
    pub service: ServiceRef,
    /// The Service ports asked about.
    pub ports: Vec<ServicePortRef>,
    /// True when every backend flow is allowed (and there is at least one).
    pub allowed: bool,
    /// `allowed to 2 of 3 backends`, `no backends`, ...
    pub verdict: String,
    /// One entry per backend and Service port, in Service port then backend order.
    pub backends: Vec<BackendExplanation>,
    /// Service ports no backend serves (for example a named targetPort nobody declares).
    pub unserved_ports: Vec<ServicePortRef>,
    /// The audited answer (every `netpol.io/mode: audit` policy enforced), only when a
    /// backend's verdict differs ([`explain_service_with_audit`]). See docs/audit.md.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit: Option<Box<ServiceExplanation>>,
}

/// A Service, as `explain` names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceRef {
    /// `ns/name`.
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer` or `ExternalName`.
    #[serde(rename = "type")]
    pub service_type: &'static str,
    /// Cluster, external and load-balancer IPs.
    pub addresses: Vec<String>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// Where the backends came from: `endpointslices`, `selector` or `nothing`.
    pub backends_from: &'static str,
}

/// Explains a connection from `src` to Service `svc` on the Service ports `ports`
/// (indices into `svc.ports`; all of them when empty): per backend, after DNAT.
pub fn explain_service(
    model: &Model,
    graph: &AllowGraph,
    src: Subject,
    svc: &Service,
    ports: &[usize],
) -> ServiceExplanation {
    let indices: Vec<usize> = if ports.is_empty() {
        (0..svc.ports.len()).collect()
    } else {
        ports.to_vec()
    };
    let port_ref = |i: usize| {
        let sp = &svc.ports[i];
        ServicePortRef {
            name: sp.name.clone(),
            protocol: sp.protocol,
            port: sp.port,
        }
    };
    let mut backends = Vec::new();
    let mut unserved = Vec::new();
    for &i in indices.iter().filter(|i| **i < svc.ports.len()) {
        let sp = &svc.ports[i];
        let flows = graph.reach_service(model, src, svc, i);
        if flows.is_empty() && !svc.backends.is_empty() {
            unserved.push(port_ref(i));
        }
        for flow in flows {
            let q = PortQuery {
                protocol: flow.protocol,
                port: flow.target_port,
            };
            let e = explain_reach(model, graph, &flow.reach, Some(q));
            backends.push(BackendExplanation {
                service_port: port_ref(i),
                backend: flow.backend.display(model),
                port: flow.target_port,
                target_port: sp.target_port.to_string(),
                allowed: flow.allowed,
                hairpin: flow.hairpin,
                egress: e.egress.clone(),
                ingress: e.ingress.clone(),
                explanation: e,
            });
        }
    }
    let n_ok = backends.iter().filter(|b| b.allowed).count();
    let distinct: std::collections::BTreeSet<&str> =
        backends.iter().map(|b| b.backend.as_str()).collect();
    let unit = if indices.len() > 1 && backends.len() != distinct.len() {
        "backend ports"
    } else {
        "backends"
    };
    let verdict = if backends.is_empty() {
        if svc.service_type == crate::model::ServiceType::ExternalName {
            "no backends (ExternalName: a DNS alias, not proxied)".to_owned()
        } else {
            "no backends".to_owned()
        }
    } else {
        let unit = if backends.len() == 1 {
            unit.trim_end_matches('s')
        } else {
            unit
        };
        format!("allowed to {n_ok} of {} {unit}", backends.len())
    };
    ServiceExplanation {
        source: src.display(model),
        destination: svc.display(),
        service: ServiceRef {
            name: svc.key(),
            service_type: svc.service_type.as_str(),
            addresses: svc.addresses().iter().map(ToString::to_string).collect(),
            headless: svc.headless,
            backends_from: match svc.backend_source {
                crate::model::BackendSource::EndpointSlices(_) => "endpointslices",
                crate::model::BackendSource::Selector => "selector",
                crate::model::BackendSource::Nothing => "nothing",
            },
        },
        ports: indices
            .iter()
            .filter(|i| **i < svc.ports.len())
            .map(|i| port_ref(*i))
            .collect(),
        allowed: !backends.is_empty() && n_ok == backends.len(),
        verdict,
        backends,
        unserved_ports: unserved,
        audit: None,
    }
}

/// [`explain_service`] with the audited answer beside the enforced one: `audit` is the
/// [`AuditView`] of `model` (`None` without audit policies). [`ServiceExplanation::audit`]
/// is set only when some backend's audited verdict (or allowed traffic) differs, so a
/// Service whose backends no audit policy touches explains exactly as
/// [`explain_service`].
pub fn explain_service_with_audit(
    model: &Model,
    graph: &AllowGraph,
    audit: Option<&AuditView>,
    src: Subject,
    svc: &Service,
    ports: &[usize],
) -> ServiceExplanation {
    let mut e = explain_service(model, graph, src, svc, ports);
    let Some(a) = audit else {
        return e;
    };
    // The audited model has the same endpoints and Services (only policies differ).
    let Some(asvc) = a.model.services.iter().find(|x| x.key() == svc.key()) else {
        return e;
    };
    let audited = explain_service(&a.model, &a.graph, src, asvc, ports);
    let differs = audited.allowed != e.allowed
        || audited.backends.len() != e.backends.len()
        || audited.backends.iter().zip(&e.backends).any(|(x, y)| {
            x.allowed != y.allowed || x.explanation.allowed_traffic != y.explanation.allowed_traffic
        });
    if differs {
        e.audit = Some(Box::new(audited));
    }
    e
}

impl fmt::Display for ServiceExplanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ports = match self.ports.as_slice() {
            [p] => format!(":{} ({})", p.port, p.protocol),
            _ => String::new(),
        };
        writeln!(
            f,
            "{} -> {}{ports}: {}",
            self.source, self.destination, self.verdict
        )?;
        if self.backends.is_empty() && self.ports.is_empty() {
            writeln!(f, "  the Service has no ports")?;
        }
        for p in &self.unserved_ports {
            writeln!(
                f,
                "  port {} ({}): no backend serves it (targetPort not declared by any backend)",
                p.port, p.protocol
            )?;
        }
        for b in &self.backends {
            let allowed = if b.allowed { "allowed" } else { "denied" };
            writeln!(
                f,
                "  {}:{} -> {}:{} (targetPort {}): {} {} {allowed}",
                self.destination,
                b.service_port.port,
                b.backend,
                b.port,
                b.target_port,
                b.service_port.protocol,
                b.port
            )?;
            if b.hairpin {
                writeln!(
                    f,
                    "    hairpin: {} reaches itself through the Service, which policies judge like any flow",
                    b.backend
                )?;
            }
            let text = b.explanation.to_string();
            for line in text.lines().skip(1) {
                writeln!(f, "  {line}")?;
            }
        }
        let Some(a) = &self.audit else {
            return Ok(());
        };
        // A backend the enforced verdict allows and the audited one denies is what the
        // kernel reports as would drop (audit).
        let would_drop = self
            .backends
            .iter()
            .zip(&a.backends)
            .any(|(e, x)| e.allowed && !x.allowed);
        write_audited(f, &a.verdict, would_drop, &a.to_string())
    }
}

/// The audited answer under the enforced one: a heading with its verdict (and whether
/// the kernel reports the difference as would drop (audit)), then `body`'s lines after
/// its first (the audited answer's own verdict line), indented.
fn write_audited(
    f: &mut fmt::Formatter<'_>,
    verdict: &str,
    would_drop: bool,
    body: &str,
) -> fmt::Result {
    writeln!(
        f,
        "  audited (audit policies enforced): {verdict}{}",
        if would_drop {
            "; reported as would drop (audit)"
        } else {
            ""
        }
    )?;
    for line in body.lines().skip(1) {
        writeln!(f, "  {line}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{SourceText, load};

    const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {team: a}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: y, labels: {app: b}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.2}\n---\n";

    fn run(policies: &str, src: &str, dst: &str, port: Option<u16>) -> Explanation {
        let text = format!("{CLUSTER}{policies}");
        let (inputs, d) = load(&[SourceText {
            name: "t",
            text: &text,
        }]);
        assert!(d.is_empty(), "{d:?}");
        let (model, d) = Model::build(&inputs);
        assert!(d.is_empty(), "{d:?}");
        let graph = AllowGraph::build(&model);
        let s = Subject::parse(&model, src).unwrap();
        let t = Subject::parse(&model, dst).unwrap();
        explain(
            &model,
            &graph,
            s,
            t,
            port.map(|port| PortQuery {
                protocol: Protocol::Tcp,
                port,
            }),
        )
    }

    const NP: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n";

    #[test]
    fn nearest_miss_names_the_namespace_label() {
        let e = run(
            &format!(
                "{NP}  ingress:\n  - from: [{{namespaceSelector: {{matchLabels: {{team: a}}}}}}]\n"
            ),
            "y/b",
            "x/a",
            Some(80),
        );
        assert!(!e.allowed);
        assert_eq!(
            e.ingress.nearest_miss.as_deref(),
            Some("x/p ingress rule 0 peer 0: namespace y lacks label team=a")
        );
        assert!(e.egress.nearest_miss.is_none());
    }

    #[test]
    fn nearest_miss_names_the_port() {
        let e = run(
            &format!("{NP}  ingress:\n  - ports: [{{port: 80}}, {{port: 443}}]\n"),
            "y/b",
            "x/a",
            Some(8080),
        );
        assert_eq!(
            e.ingress.nearest_miss.as_deref(),
            Some("x/p ingress rule 0: TCP 8080 not in [TCP 80, TCP 443]")
        );
        let e = run(
            &format!("{NP}  ingress:\n  - ports: [{{port: http}}]\n"),
            "y/b",
            "x/a",
            None,
        );
        assert_eq!(e.verdict(), "TCP 8080 allowed; all else denied");
        assert_eq!(e.ingress.allowed_by[0].port, None);
        let e = run(
            &format!("{NP}  ingress:\n  - ports: [{{port: http}}]\n"),
            "y/b",
            "x/a",
            Some(8080),
        );
        assert_eq!(e.ingress.allowed_by[0].port, Some(0));
        assert_eq!(
            e.to_string().lines().next(),
            Some("y/b -> x/a: TCP 8080 allowed")
        );
    }

    #[test]
    fn no_rules_and_ip_blocks() {
        let e = run(
            &format!("{NP}  policyTypes: [Ingress]\n"),
            "y/b",
            "x/a",
            Some(80),
        );
        assert_eq!(
            e.ingress.nearest_miss.as_deref(),
            Some("x/p has no ingress rules: it denies all ingress")
        );
        let e = run(
            &format!(
                "{NP}  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/24, except: [10.0.0.2/32]}}}}]\n"
            ),
            "y/b",
            "x/a",
            Some(80),
        );
        assert_eq!(
            e.ingress.nearest_miss.as_deref(),
            Some("x/p ingress rule 0 peer 0: 10.0.0.2 is in except 10.0.0.2/32 of 10.0.0.0/24")
        );
        // An external client inside the block is allowed.
        let e = run(
            &format!(
                "{NP}  ingress:\n  - from: [{{ipBlock: {{cidr: 10.0.0.0/24, except: [10.0.0.2/32]}}}}]\n"
            ),
            "10.0.0.9",
            "x/a",
            Some(80),
        );
        assert!(e.allowed);
        assert!(!e.egress.applies);
    }

    #[test]
    fn json_shape() {
        let e = run(
            &format!(
                "{NP}  ingress:\n  - from: [{{podSelector: {{}}, namespaceSelector: {{}}}}]\n"
            ),
            "y/b",
            "x/a",
            Some(80),
        );
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["allowed"], true);
        assert_eq!(v["ingress"]["allowed_by"][0]["policy"], "x/p");
        assert_eq!(v["ingress"]["allowed_by"][0]["rule"], 0);
        assert_eq!(v["ingress"]["allowed_by"][0]["peer"], 0);
        assert!(v["ingress"]["allowed_by"][0]["port"].is_null());
        assert_eq!(v["egress"]["isolated"], false);
        assert_eq!(v["protocol"], "TCP");
    }
}
