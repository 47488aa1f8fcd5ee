//! `lint`: policies that are valid but probably not what their author meant.
//!
//! Each check is a [`LintRule`] with a stable id (`NP001`...) and name; a [`Finding`]
//! names the rule, the object, and where it is (file, line, column, field path), so the
//! CLI can print `file:line:col` or SARIF for code scanning. Checks read the [`Model`]
//! only: they are pure and deterministic (findings sorted by file, position, rule).
//!
//! Selection checks (NP001-NP003, NP008) need the Pods or workloads in the input; with no
//! endpoint at all they are skipped and [`lint`] reports one NP000 note instead.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::diagnostic::Origin;
use crate::graph::{AllowGraph, PeerSet, rule_ports};
use crate::model::{
    Direction, Endpoint, EndpointId, Model, NamespaceScope, Peer, Policy, PortMatch, Rule,
};
use crate::ports::Protocol;

/// How serious a rule's findings are (SARIF `level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Probably a mistake.
    Warning,
    /// Worth knowing.
    Note,
}

/// A check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LintRule {
    /// Stable id, `NP001`.
    pub id: &'static str,
    /// Stable kebab-case name.
    pub name: &'static str,
    /// Level of its findings.
    pub level: Level,
    /// One line: what it finds.
    pub summary: &'static str,
    /// Why it matters and what to do.
    pub help: &'static str,
}

/// Every check, in id order.
pub const RULES: &[LintRule] = &[
    LintRule {
        id: "NP000",
        name: "no-endpoints",
        level: Level::Note,
        summary: "the input holds no Pod or workload: selection checks were skipped",
        help: "Give the Pods or workloads too (-f deploy/ -f policies/) so that selectors can be checked.",
    },
    LintRule {
        id: "NP001",
        name: "policy-selects-no-pod",
        level: Level::Warning,
        summary: "a policy's podSelector selects no Pod or workload of its namespace",
        help: "The policy has no effect. Check spec.podSelector's labels and the policy's namespace.",
    },
    LintRule {
        id: "NP002",
        name: "peer-selects-nothing",
        level: Level::Warning,
        summary: "a from/to peer selects no Pod or workload (a typo in the labels?)",
        help: "The peer allows nothing. Check its podSelector and namespaceSelector labels (namespace labels need Namespace objects in the input).",
    },
    LintRule {
        id: "NP003",
        name: "named-port-undeclared",
        level: Level::Warning,
        summary: "a named port that no destination of the rule declares",
        help: "A named port resolves against the destination's container ports; where none declares it, the rule allows nothing.",
    },
    LintRule {
        id: "NP004",
        name: "ipblock-overlaps-cluster",
        level: Level::Warning,
        summary: "an ipBlock contains Pod addresses or Service ClusterIPs",
        help: "Pod IPs change when Pods restart; select Pods by labels. (ipBlocks do match Pod IPs, so this also opens or closes Pod traffic.) A Service's ClusterIP is translated to a backend Pod's IP before NetworkPolicy sees the packet, so an ipBlock never matches Service traffic by its ClusterIP: select the backends instead.",
    },
    LintRule {
        id: "NP005",
        name: "identical-policies",
        level: Level::Warning,
        summary: "two policies of a namespace are identical",
        help: "One of them is redundant; delete it so that a later edit of one does not silently keep the old behaviour.",
    },
    LintRule {
        id: "NP006",
        name: "redundant-rule",
        level: Level::Warning,
        summary: "a rule allows nothing that another rule of the same policy does not",
        help: "The rule is shadowed by a broader one (same peers or all peers, same ports or all ports); delete it or narrow the other.",
    },
    LintRule {
        id: "NP007",
        name: "egress-deny-without-dns",
        level: Level::Warning,
        summary: "egress is denied by default but DNS (UDP 53) is not allowed",
        help: "Name resolution fails for the selected Pods. Allow UDP and TCP 53 to the cluster DNS (for example kube-system/k8s-app=kube-dns).",
    },
    LintRule {
        id: "NP008",
        name: "hostnetwork-only-policy",
        level: Level::Warning,
        summary: "a policy selects only hostNetwork Pods, which NetworkPolicy does not apply to",
        help: "hostNetwork Pods share the node's network namespace; no NetworkPolicy isolates them.",
    },
    LintRule {
        id: "NP101",
        name: "ingress-exposure",
        level: Level::Note,
        summary: "what an endpoint is reachable from (with --exposure)",
        help: "Endpoints without ingress isolation accept every Pod and every address, 0.0.0.0/0 included.",
    },
    LintRule {
        id: "NP102",
        name: "egress-exposure",
        level: Level::Note,
        summary: "an endpoint without egress isolation (with --exposure)",
        help: "Endpoints without egress isolation may reach every Pod and every address.",
    },
];

fn rule(id: &str) -> &'static LintRule {
    RULES
        .iter()
        .find(|r| r.id == id)
        // The ids used below are the table's; a test checks every one resolves.
        .unwrap_or(&RULES[0])
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check.
    pub rule: &'static LintRule,
    /// `Kind ns/name` of the object.
    pub object: String,
    /// File, when known.
    pub file: Option<String>,
    /// 1-based line.
    pub line: Option<u32>,
    /// 1-based column.
    pub column: Option<u32>,
    /// Field path in the object.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

/// What to check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LintOptions {
    /// Also report every endpoint's exposure (NP101, NP102).
    pub exposure: bool,
}

/// Runs every check.
pub fn lint(model: &Model, graph: &AllowGraph, opts: LintOptions) -> Vec<Finding> {
    let mut out = Vec::new();
    let has_endpoints = !model.endpoints.is_empty();
    if !has_endpoints && !model.policies.is_empty() {
        out.push(Finding {
            rule: rule("NP000"),
            object: String::new(),
            file: None,
            line: None,
            column: None,
            field: None,
            message: rule("NP000").summary.to_string(),
        });
    }
    let mut seen: BTreeMap<(String, String), &Policy> = BTreeMap::new();
    // Audit policies (`netpol.io/mode: audit`, docs/audit.md) are checked like enforced
    // ones: a typo in a staged policy is found before it is enforced. Their findings
    // name the object `NetworkPolicy ns/name (audit)`, and the DNS check reads the
    // audited view, where they apply.
    let enforced = model.policies.iter().map(|p| (p, false));
    let staged = model.audit_policies.iter().map(|p| (p, true));
    for (p, audit) in enforced.chain(staged) {
        let at =
            |id: &str, field: &str, message: String| policy_finding(p, audit, id, field, message);
        let targets = targets(model, p);
        if has_endpoints && targets.is_empty() {
            let host_only = model
                .endpoints_in(&p.namespace)
                .iter()
                .map(|id| model.endpoint(*id))
                .any(|e| e.host_network && p.pod_selector.matches(&e.labels));
            if host_only {
                out.push(at(
                    "NP008",
                    "spec.podSelector",
                    format!(
                        "podSelector {} selects only hostNetwork Pods: the policy has no effect",
                        p.pod_selector
                    ),
                ));
            } else {
                out.push(at(
                    "NP001",
                    "spec.podSelector",
                    format!(
                        "podSelector {} selects no Pod or workload in namespace {}",
                        p.pod_selector, p.namespace
                    ),
                ));
            }
        }
        // Identical policies: same normal form.
        let key = (p.namespace.clone(), normal_form(p));
        if let Some(first) = seen.get(&key) {
            out.push(at(
                "NP005",
                "metadata.name",
                format!("identical to {}", first.key()),
            ));
        } else {
            seen.insert(key, p);
        }
        for dir in [Direction::Ingress, Direction::Egress] {
            if !p.isolates(dir) {
                continue;
            }
            let list = match dir {
                Direction::Ingress => "ingress",
                Direction::Egress => "egress",
            };
            let peers_key = match dir {
                Direction::Ingress => "from",
                Direction::Egress => "to",
            };
            let rules = p.rules(dir);
            for (ri, r) in rules.iter().enumerate() {
                if let Some(by) = shadowing_rule(rules, ri) {
                    out.push(at(
                        "NP006",
                        &format!("spec.{list}[{ri}]"),
                        format!("{list} rule {ri} is covered by rule {by} of the same policy"),
                    ));
                }
                let mut dsts: Option<Vec<EndpointId>> = match dir {
                    Direction::Ingress => Some(targets.clone()),
                    Direction::Egress => match &r.peers {
                        None => Some(model.endpoints.iter().map(|e| e.id).collect()),
                        Some(_) => Some(Vec::new()),
                    },
                };
                for (pi, peer) in r.peers.iter().flatten().enumerate() {
                    let field = format!("spec.{list}[{ri}].{peers_key}[{pi}]");
                    match peer {
                        Peer::Pods { .. } => {
                            let members = members(model, peer);
                            if has_endpoints && members.is_empty() {
                                out.push(at(
                                    "NP002",
                                    &field,
                                    format!("peer ({peer}) selects no Pod or workload"),
                                ));
                            }
                            if dir == Direction::Egress
                                && let Some(d) = dsts.as_mut()
                            {
                                d.extend(members);
                            }
                        }
                        // Blocks of the "internet" kind (0.0.0.0/0, /1../7) are meant to
                        // hold everything; only narrower blocks are suspicious.
                        Peer::IpBlock(b) if b.cidr.prefix_len() < BROAD_PREFIX => {}
                        Peer::IpBlock(b) => {
                            let inside: Vec<&Endpoint> = model
                                .endpoints
                                .iter()
                                .filter(|e| {
                                    !e.host_network && e.ips.iter().any(|ip| b.contains(ip))
                                })
                                .collect();
                            if !inside.is_empty() {
                                let names: Vec<String> =
                                    inside.iter().take(5).map(|e| e.key()).collect();
                                out.push(at(
                                    "NP004",
                                    &format!("{field}.ipBlock.cidr"),
                                    format!(
                                        "ipBlock {b} contains the IPs of {} Pod(s) ({}{})",
                                        inside.len(),
                                        names.join(", "),
                                        if inside.len() > 5 { ", ..." } else { "" }
                                    ),
                                ));
                            }
                            // Services: a ClusterIP is DNATed to a backend before the
                            // policy sees the packet. See: #14
                            let services: Vec<String> = model
                                .services
                                .iter()
                                .flat_map(|s| {
                                    s.cluster_ips
                                        .iter()
                                        .filter(|ip| b.contains(ip))
                                        .map(move |ip| format!("{} {ip}", s.display()))
                                })
                                .collect();
                            if !services.is_empty() {
                                out.push(at(
                                    "NP004",
                                    &format!("{field}.ipBlock.cidr"),
                                    format!(
                                        "ipBlock {b} contains {} Service ClusterIP(s) ({}{}): Service traffic is matched after DNAT, by the backend Pod's IP, never by the ClusterIP",
                                        services.len(),
                                        services.iter().take(5).cloned().collect::<Vec<_>>().join(", "),
                                        if services.len() > 5 { ", ..." } else { "" }
                                    ),
                                ));
                            }
                            if dir == Direction::Egress
                                && let Some(d) = dsts.as_mut()
                            {
                                d.extend(
                                    model
                                        .endpoints
                                        .iter()
                                        .filter(|e| e.ips.iter().any(|ip| b.contains(ip)))
                                        .map(|e| e.id),
                                );
                            }
                        }
                    }
                }
                // Named ports no destination declares.
                let dsts = dsts.unwrap_or_default();
                if has_endpoints && !dsts.is_empty() {
                    for (ki, rp) in r.ports.iter().flatten().enumerate() {
                        let PortMatch::Named(name) = &rp.port else {
                            continue;
                        };
                        let declared = dsts.iter().any(|d| {
                            !model
                                .endpoint(*d)
                                .resolve_named_port(name, rp.protocol)
                                .is_empty()
                        });
                        if !declared {
                            out.push(at(
                                "NP003",
                                &format!("spec.{list}[{ri}].ports[{ki}].port"),
                                format!(
                                    "no destination of this rule declares a {} port named {name}",
                                    rp.protocol
                                ),
                            ));
                        }
                    }
                }
            }
        }
        // Egress default deny without DNS, for the selected endpoints that lack it.
        if p.isolates(Direction::Egress) {
            // The audited model has the same endpoints: the targets mean the same there.
            let (m, g) = match graph.audit().filter(|_| audit) {
                Some(v) => (&v.model, &v.graph),
                None => (model, graph),
            };
            let without: Vec<String> = targets
                .iter()
                .filter(|t| !allows_dns(m, g, **t))
                .map(|t| model.endpoint(*t).key())
                .collect();
            if !without.is_empty() {
                let shown: Vec<&str> = without.iter().take(5).map(String::as_str).collect();
                out.push(at(
                    "NP007",
                    "spec.policyTypes",
                    format!(
                        "egress of {} endpoint(s) ({}{}) is isolated and no egress rule allows UDP 53",
                        without.len(),
                        shown.join(", "),
                        if without.len() > 5 { ", ..." } else { "" }
                    ),
                ));
            }
        }
    }
    if opts.exposure {
        exposure(model, graph, &mut out);
    }
    out.sort_by(|a, b| {
        (&a.file, a.line, a.column, a.rule.id, &a.message)
            .cmp(&(&b.file, b.line, b.column, b.rule.id, &b.message))
    });
    out
}

/// ipBlocks with a shorter prefix than this are "the internet" for NP004.
const BROAD_PREFIX: u8 = 8;

fn policy_finding(p: &Policy, audit: bool, id: &str, field: &str, message: String) -> Finding {
    let pos = p.origin.as_ref().and_then(|o| locate(o, field));
    Finding {
        rule: rule(id),
        object: format!(
            "NetworkPolicy {}{}",
            p.key(),
            if audit { " (audit)" } else { "" }
        ),
        file: p.origin.as_ref().map(|o| o.file.to_string()),
        line: pos.map(|p| p.line),
        column: pos.map(|p| p.column),
        field: Some(field.to_string()),
        message,
    }
}

/// The position of `field`, or of its nearest ancestor that has one (absent fields
/// such as a defaulted `spec.policyTypes` point at `spec`).
fn locate(o: &Origin, field: &str) -> Option<crate::source::Pos> {
    let mut f = field.to_string();
    loop {
        if let Some(p) = o.locate(&f) {
            return Some(p);
        }
        match f.rfind(['.', '[']) {
            Some(i) => f.truncate(i),
            None => return o.locate(""),
        }
    }
}

/// The endpoints a policy selects (selectable ones, as the graph does).
fn targets(model: &Model, p: &Policy) -> Vec<EndpointId> {
    model
        .endpoints_in(&p.namespace)
        .iter()
        .copied()
        .filter(|id| {
            let e = model.endpoint(*id);
            e.selectable() && p.pod_selector.matches(&e.labels)
        })
        .collect()
}

/// The endpoints a Pods peer selects.
fn members(model: &Model, peer: &Peer) -> Vec<EndpointId> {
    let Peer::Pods { namespaces, pods } = peer else {
        return Vec::new();
    };
    let nss: Vec<&str> = match namespaces {
        NamespaceScope::Own(ns) => vec![ns.as_str()],
        NamespaceScope::Selector(sel) => model
            .namespaces
            .iter()
            .filter(|(_, info)| sel.matches(&info.labels))
            .map(|(n, _)| n.as_str())
            .collect(),
    };
    nss.iter()
        .flat_map(|ns| model.endpoints_in(ns).iter().copied())
        .filter(|id| {
            let e = model.endpoint(*id);
            e.selectable() && pods.matches(&e.labels)
        })
        .collect()
}

/// A policy's content without its name, as a comparable string.
fn normal_form(p: &Policy) -> String {
    format!(
        "{:?}|{}|{}|{:?}|{:?}",
        p.pod_selector, p.isolates_ingress, p.isolates_egress, p.ingress, p.egress
    )
}

/// Another rule of the list that allows everything rule `i` allows (the first such;
/// for identical rules, the earlier one).
fn shadowing_rule(rules: &[Rule], i: usize) -> Option<usize> {
    let r = &rules[i];
    rules.iter().enumerate().find_map(|(j, o)| {
        if j == i {
            return None;
        }
        let peers_cover = match (&o.peers, &r.peers) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(op), Some(rp)) => rp.iter().all(|p| op.contains(p)),
        };
        let ports_cover = match (&o.ports, &r.ports) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(op), Some(rp)) => rp.iter().all(|p| {
                op.contains(p)
                    || op
                        .iter()
                        .any(|q| q.protocol == p.protocol && q.port == PortMatch::Any)
            }),
        };
        let identical = o == r;
        (peers_cover && ports_cover && (!identical || j < i)).then_some(j)
    })
}

/// True when some egress rule of `at` allows UDP 53 toward some peer.
fn allows_dns(model: &Model, graph: &AllowGraph, at: EndpointId) -> bool {
    graph
        .edges(at, Direction::Egress)
        .iter()
        .any(|(set, prov)| {
            let nonempty = match graph.peer_set(*set) {
                PeerSet::All | PeerSet::Block(_) => true,
                PeerSet::Endpoints(v) => !v.is_empty(),
            };
            let r = crate::graph::rule_of(model, prov);
            let resolved = match graph.peer_set(*set) {
                PeerSet::Endpoints(v) => v
                    .iter()
                    .any(|d| rule_ports(r, Some(model.endpoint(*d))).contains(Protocol::Udp, 53)),
                _ => rule_ports(r, None).contains(Protocol::Udp, 53),
            };
            nonempty && resolved
        })
}

fn exposure(model: &Model, graph: &AllowGraph, out: &mut Vec<Finding>) {
    let world = crate::graph::Subject::External(std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        203, 0, 113, 1,
    )));
    for e in &model.endpoints {
        let iso = graph.isolation(e.id);
        let pos = e.origin.as_ref().and_then(|o| locate(o, "metadata.name"));
        let mk = |id: &str, message: String| Finding {
            rule: rule(id),
            object: e.key(),
            file: e.origin.as_ref().map(|o| o.file.to_string()),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            field: Some("metadata.name".into()),
            message,
        };
        if !e.selectable() {
            continue;
        }
        // A ClusterNetworkPolicy applying to the endpoint may deny what no NetworkPolicy
        // isolates: then the answer comes from the tier walk. See: #13
        let cluster = !graph.cluster_subjects(e.id).is_empty();
        if iso.ingress.is_empty() && !cluster {
            out.push(mk(
                "NP101",
                "no ingress isolation: reachable from every Pod and from 0.0.0.0/0 on all ports"
                    .to_string(),
            ));
        } else {
            let from_world = graph
                .reach(model, world, crate::graph::Subject::Endpoint(e.id))
                .allowed;
            if !from_world.is_empty() {
                out.push(mk(
                    "NP101",
                    format!(
                        "reachable from outside the cluster (0.0.0.0/0, e.g. 203.0.113.1) on {from_world}"
                    ),
                ));
            }
        }
        if iso.egress.is_empty() && !cluster {
            out.push(mk(
                "NP102",
                "no egress isolation: may reach every Pod and every address".to_string(),
            ));
        } else if iso.egress.is_empty() {
            let to_world = graph
                .reach(model, crate::graph::Subject::Endpoint(e.id), world)
                .allowed;
            if !to_world.is_empty() {
                out.push(mk(
                    "NP102",
                    format!(
                        "no NetworkPolicy isolates its egress; after its ClusterNetworkPolicies it may reach outside the cluster (0.0.0.0/0, e.g. 203.0.113.1) on {to_world}"
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_id_is_in_the_table_once() {
        for id in [
            "NP000", "NP001", "NP002", "NP003", "NP004", "NP005", "NP006", "NP007", "NP008",
            "NP101", "NP102",
        ] {
            assert_eq!(rule(id).id, id);
            assert_eq!(RULES.iter().filter(|r| r.id == id).count(), 1);
        }
        assert_eq!(RULES.len(), 11);
    }
}
