//! Kernel proof of the compiled rulesets on a real node: for every golden case, a routed
//! node namespace (node IP, forwarding, the kube-proxy equivalent's DNAT and the node
//! table) with one Pod namespace per Pod (its own addresses, its own compiled
//! `table inet netpol`), plus a host per external address the assertions use. Real
//! TCP/UDP/SCTP probes:
//! - every ordered Pod pair, every matrix (port, protocol), both families of dual-stack
//!   Pods, by Pod IP, and every assertion: the kernel must equal
//!   [`AllowGraph::reach_at`] (which for the primary family must equal the matrix cell,
//!   and the expectation);
//! - every Pod through every Service port, by ClusterIP of each family both have: the
//!   case's own Services, or, for a case without any, one Service per Pod
//!   (`s-<ns>-<pod>`, ClusterIP, every probed port, backed by that Pod through an
//!   EndpointSlice), as upstream e2e creates one per Pod. The observed outcomes must be
//!   exactly the set of the backends' verdicts ([`AllowGraph::reach_service_at`]: each
//!   judged after DNAT, a Pod through its own Service (hairpin) on both sides);
//! - kubelet-style probes from the node IP to every Pod on every probed port: always
//!   connected.
// See: #3, #10

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::time::{Duration, Instant};

use enforcer::nft;
use netpol_lab::lab::{SERVICE_TRIES, kubeproxy, services};
use netpol_lab::probe::{Listener, ProbeSpec, Prober};
use netpol_lab::topology::{HostSpec, NodeSpec, Topology};
use policy_compiler::expect::parse_expectations;
use policy_compiler::model::{BackendTarget, EndpointId, EndpointKind};
use policy_compiler::ruleset::{NodeContext, RulesetOptions, compile_node, compile_pod};
use policy_compiler::{
    AllowGraph, MatrixQuery, Model, PortQuery, Protocol, Subject, explain, matrix,
};

use crate::cases::{self, Case};
use crate::kernel;

/// First try: denied probes cost this much each, so keep it short.
const QUICK: Duration = Duration::from_millis(300);
/// Retry of a probe the kernel denied but the compiler allows (slow first packets).
const PATIENT: Duration = Duration::from_secs(2);
/// The lab node's name (a host of the topology: the node probes from it).
const NODE: &str = "lab-node";

fn parse_protocol(p: &Option<String>) -> Protocol {
    p.as_deref().map_or(Protocol::Tcp, |s| s.parse().unwrap())
}

/// Why a probe has its expectation (for the failure message).
enum Why {
    /// Pod IP or external address: `netpol explain` of the flow.
    Direct {
        src: Subject,
        dst: Subject,
        protocol: Protocol,
        port: u16,
    },
    /// Through a Service: the backends with their verdicts.
    Service(String),
    /// From the node: always allowed.
    Node,
}

/// One probe (tried `tries` times) and what the compiler says about it.
struct Check {
    spec: ProbeSpec,
    tries: usize,
    /// The outcomes that must be observed, sorted: `[false]`, `[true]` or both.
    expected: Vec<bool>,
    what: String,
    why: Why,
}

/// Per-case outcome.
pub(crate) struct Summary {
    pub(crate) probes: usize,
    pub(crate) denied: usize,
    pub(crate) service_cells: usize,
    pub(crate) node_probes: usize,
    pub(crate) failures: Vec<String>,
    pub(crate) notes: Vec<String>,
}

fn ip_of_family(model: &Model, s: Subject, v4: bool) -> Option<IpAddr> {
    match s {
        Subject::External(ip) => (ip.is_ipv4() == v4).then_some(ip),
        Subject::Endpoint(id) => model
            .endpoint(id)
            .ips
            .iter()
            .find(|i| i.is_ipv4() == v4)
            .copied(),
    }
}

/// A DNS-1035 label from `s-<ns>-<pod>`.
fn service_name(ns: &str, pod: &str) -> String {
    let raw = format!("s-{ns}-{pod}");
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    while name.ends_with('-') {
        name.pop();
    }
    name
}

/// One Service per Pod, as upstream e2e creates them: `s-<ns>-<pod>` in the Pod's
/// namespace, a ClusterIP of each of the Pod's families (10.96.128.0/17 and
/// fd00:10:96::/112, avoiding every address of the model), every probed (protocol,
/// port) with targetPort = port, and an EndpointSlice per family naming the Pod, so the
/// Pod's labels stay untouched. Returned as one JSON list text.
fn per_pod_services(
    model: &Model,
    pods: &[EndpointId],
    ports: &BTreeSet<(Protocol, u16)>,
) -> String {
    let used: BTreeSet<IpAddr> = model.endpoints.iter().flat_map(|e| e.ips.clone()).collect();
    let mut next: u32 = 1;
    let mut items = Vec::new();
    let port_name = |p: Protocol, n: u16| format!("{}-{n}", p.to_string().to_lowercase());
    for &id in pods {
        let e = model.endpoint(id);
        let name = service_name(&e.namespace, &e.name);
        let mut cluster_ips = Vec::new();
        let mut families = Vec::new();
        for ip in &e.ips {
            let v6 = ip.is_ipv6();
            if families.contains(&v6) {
                continue;
            }
            let cip = loop {
                let n = next;
                next += 1;
                let c = if v6 {
                    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, n as u16))
                } else {
                    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 128, 0)) + n))
                };
                if !used.contains(&c) {
                    break c;
                }
            };
            families.push(v6);
            cluster_ips.push(cip);
        }
        let svc_ports: Vec<serde_json::Value> = ports
            .iter()
            .map(|&(p, n)| {
                serde_json::json!({"name": port_name(p, n), "protocol": p.to_string(),
                    "port": n, "targetPort": n})
            })
            .collect();
        items.push(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": e.namespace},
            "spec": {
                "clusterIP": cluster_ips[0].to_string(),
                "clusterIPs": cluster_ips.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "ipFamilyPolicy": if cluster_ips.len() > 1 { "RequireDualStack" } else { "SingleStack" },
                "ports": svc_ports,
            }
        }));
        for &v6 in &families {
            let ip = e.ips.iter().find(|i| i.is_ipv6() == v6).unwrap();
            items.push(serde_json::json!({
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{name}-{}", if v6 { "v6" } else { "v4" }),
                    "namespace": e.namespace,
                    "labels": {"kubernetes.io/service-name": name},
                },
                "addressType": if v6 { "IPv6" } else { "IPv4" },
                "endpoints": [{
                    "addresses": [ip.to_string()],
                    "conditions": {"ready": true},
                    "targetRef": {"kind": "Pod", "namespace": e.namespace, "name": e.name},
                }],
                "ports": ports.iter().map(|&(p, n)| serde_json::json!(
                    {"name": port_name(p, n), "protocol": p.to_string(), "port": n}
                )).collect::<Vec<_>>(),
            }));
        }
    }
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": "v1", "kind": "List", "items": items
    }))
    .unwrap()
}

fn lab_node(hosts: &[HostSpec]) -> NodeSpec {
    let v6 = hosts
        .iter()
        .any(|h| h.ipv6.is_some())
        .then(|| "fd00:18::2/64".parse().unwrap());
    NodeSpec::new(NODE, "172.18.0.2/16".parse().unwrap(), v6)
}

/// Runs one case in its own topology.
pub(crate) fn prove_case(dir: &Path, tag: &str) -> Summary {
    let case: Case = cases::compile(dir);
    if !case.model.cluster_policies.is_empty() {
        // The per-Pod ruleset does not enforce ClusterNetworkPolicy tiers yet (#13, kernel
        // part): these cases are proven against expect.yaml by the compiler only.
        return Summary {
            probes: 0,
            denied: 0,
            service_cells: 0,
            node_probes: 0,
            failures: Vec::new(),
            notes: vec!["skipped: ClusterNetworkPolicy is not enforced by the ruleset yet".into()],
        };
    }
    let exp =
        parse_expectations(&std::fs::read_to_string(dir.join("expect.yaml")).unwrap()).unwrap();
    let mut notes = Vec::new();

    // Every (protocol, port) the expectations mention: listened on by every host, and the
    // ports of the per-Pod Services.
    let mut ports: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    for m in &exp.matrix {
        ports.insert((parse_protocol(&m.protocol), m.port));
    }
    for a in &exp.assertions {
        ports.insert((parse_protocol(&a.protocol), a.port));
    }

    // Hosts: one per Pod with addresses (not hostNetwork), one per external address.
    let mut hosts: Vec<HostSpec> = Vec::new();
    let mut host_of: BTreeMap<Subject, String> = BTreeMap::new();
    let mut pods = Vec::new();
    for e in &case.model.endpoints {
        if e.kind != EndpointKind::Pod || e.ips.is_empty() {
            continue;
        }
        if e.host_network {
            notes.push(format!(
                "skipped hostNetwork Pod {} (it shares its node's IP and netns)",
                e.key()
            ));
            continue;
        }
        let v4 = e.ips.iter().find_map(|i| match i {
            IpAddr::V4(a) => Some(ipnet::Ipv4Net::new(*a, 16).unwrap()),
            IpAddr::V6(_) => None,
        });
        let v6 = e.ips.iter().find_map(|i| match i {
            IpAddr::V6(a) => Some(ipnet::Ipv6Net::new(*a, 64).unwrap()),
            IpAddr::V4(_) => None,
        });
        hosts.push(HostSpec::new(e.key(), v4, v6));
        host_of.insert(Subject::Endpoint(e.id), e.key());
        pods.push(e.id);
    }

    // The model the node runs: the case's, plus per-Pod Services when it has none.
    let case_name = case.name.clone();
    let (lab_case, per_pod) = if case.model.services.is_empty() && !pods.is_empty() {
        let extra = per_pod_services(&case.model, &pods, &ports);
        (
            cases::compile_with(dir, &[("per-pod-services.json".to_owned(), extra)]),
            true,
        )
    } else {
        (cases::compile(dir), false)
    };
    let model = &lab_case.model;
    let graph: &AllowGraph = &lab_case.graph;
    // Services add no endpoint: ids are the case's.
    let keys = |m: &Model| m.endpoints.iter().map(|e| e.key()).collect::<Vec<_>>();
    assert_eq!(keys(model), keys(&case.model), "{case_name}");

    let pod_hosts: BTreeSet<Subject> = host_of.keys().copied().collect();
    let skipped_host = |s: &Subject| match s {
        Subject::Endpoint(_) => !pod_hosts.contains(s),
        Subject::External(_) => false,
    };
    let mut assertions = Vec::new();
    let mut node_assertions = Vec::new();
    for (i, a) in exp.assertions.iter().enumerate() {
        if let Ok(policy_compiler::Destination::Service(_)) =
            policy_compiler::parse_destination(model, &a.to)
        {
            if a.from.starts_with("node/") {
                node_assertions.push((i, a));
            }
            // A Pod through a Service: every such cell is probed below.
            continue;
        }
        let (Ok(s), Ok(d)) = (Subject::parse(model, &a.from), Subject::parse(model, &a.to)) else {
            if a.from.starts_with("node/") && policy_compiler::parse_source(model, &a.from).is_ok()
            {
                node_assertions.push((i, a));
                continue;
            }
            panic!("{case_name}: assertion {i} does not resolve");
        };
        if skipped_host(&s) || skipped_host(&d) {
            notes.push(format!(
                "skipped assertion {i} ({} -> {}): hostNetwork Pod",
                a.from, a.to
            ));
            continue;
        }
        for subj in [s, d] {
            if let Subject::External(ip) = subj
                && !host_of.contains_key(&subj)
            {
                let name = format!("ext-{ip}");
                let (v4, v6) = match ip {
                    IpAddr::V4(a) => (Some(ipnet::Ipv4Net::new(a, 16).unwrap()), None),
                    IpAddr::V6(a) => (None, Some(ipnet::Ipv6Net::new(a, 64).unwrap())),
                };
                hosts.push(HostSpec::new(name.clone(), v4, v6));
                host_of.insert(subj, name);
            }
        }
        assertions.push((i, a, s, d));
    }

    // Probes.
    let mut checks: Vec<Check> = Vec::new();
    let mut seen: BTreeSet<ProbeSpec> = BTreeSet::new();
    let mut add = |checks: &mut Vec<Check>, c: Check| {
        if seen.insert(c.spec.clone()) {
            checks.push(c);
        }
    };
    for m in &exp.matrix {
        let p = parse_protocol(&m.protocol);
        let compiled = matrix(
            &case.model,
            &case.graph,
            MatrixQuery {
                protocol: Some(p),
                port: Some(m.port),
            },
        );
        for &s in &pods {
            for &d in &pods {
                for v4 in [true, false] {
                    let (Some(sip), Some(dip)) = (
                        ip_of_family(model, s.into(), v4),
                        ip_of_family(model, d.into(), v4),
                    ) else {
                        continue;
                    };
                    let want = graph
                        .reach_at(model, s.into(), Some(sip), d.into(), Some(dip))
                        .allowed
                        .contains(p, m.port);
                    // The primary family's answer is the matrix cell.
                    let (_, primary) = AllowGraph::addresses(model, s.into(), d.into());
                    if primary.is_some_and(|a| a.is_ipv4() == v4) {
                        let cell = compiled.allowed[s.0 as usize][d.0 as usize];
                        assert_eq!(
                            cell,
                            want,
                            "{case_name}: matrix and reach_at disagree for {} -> {}",
                            model.endpoint(s).key(),
                            model.endpoint(d).key()
                        );
                    }
                    add(
                        &mut checks,
                        Check {
                            spec: ProbeSpec::new(
                                host_of[&Subject::Endpoint(s)].clone(),
                                dip,
                                p,
                                m.port,
                            ),
                            tries: 1,
                            expected: vec![want],
                            what: format!(
                                "matrix {p}/{} {} -> {} ({sip} -> {dip})",
                                m.port,
                                model.endpoint(s).key(),
                                model.endpoint(d).key()
                            ),
                            why: Why::Direct {
                                src: s.into(),
                                dst: d.into(),
                                protocol: p,
                                port: m.port,
                            },
                        },
                    );
                }
            }
        }
    }
    for (i, a, s, d) in &assertions {
        let p = parse_protocol(&a.protocol);
        // The family of an IP literal, else the primary family of the pair.
        let v4 = match (s, d) {
            (Subject::External(ip), _) | (_, Subject::External(ip)) => ip.is_ipv4(),
            _ => AllowGraph::addresses(model, *s, *d)
                .1
                .is_none_or(|ip| ip.is_ipv4()),
        };
        let (Some(sip), Some(dip)) = (ip_of_family(model, *s, v4), ip_of_family(model, *d, v4))
        else {
            notes.push(format!(
                "skipped assertion {i} ({} -> {}): no common address family",
                a.from, a.to
            ));
            continue;
        };
        let want = graph
            .reach_at(model, *s, Some(sip), *d, Some(dip))
            .allowed
            .contains(p, a.port);
        assert_eq!(
            want, a.allowed,
            "{case_name}: assertion {i} ({} -> {} {p}/{}): compiler says {want}",
            a.from, a.to, a.port
        );
        add(
            &mut checks,
            Check {
                spec: ProbeSpec::new(host_of[s].clone(), dip, p, a.port),
                tries: 1,
                expected: vec![want],
                what: format!(
                    "assertion {i} {} -> {} {p}/{} ({sip} -> {dip})",
                    a.from, a.to, a.port
                ),
                why: Why::Direct {
                    src: *s,
                    dst: *d,
                    protocol: p,
                    port: a.port,
                },
            },
        );
    }

    // Through Services: every Pod to every port of every proxied Service, at its ClusterIP
    // of each family both have.
    let hosted = |b: &BackendTarget| match b {
        BackendTarget::Endpoint(id) => pod_hosts.contains(&Subject::Endpoint(*id)),
        BackendTarget::Address(_) => false,
    };
    let mut service_cells = 0;
    let mut backend_listeners: BTreeSet<(String, Protocol, u16)> = BTreeSet::new();
    for svc in model.services.iter().filter(|s| s.proxied()) {
        if let Some(b) = svc.backends.iter().find(|b| !hosted(&b.target)) {
            notes.push(format!(
                "skipped Service {}: backend {} is no lab Pod",
                svc.key(),
                model.backend_name(b)
            ));
            continue;
        }
        for b in &svc.backends {
            if let BackendTarget::Endpoint(id) = b.target {
                for (sp, tp) in svc.ports.iter().zip(&b.ports) {
                    if let Some(tp) = tp {
                        backend_listeners.insert((model.endpoint(id).key(), sp.protocol, *tp));
                    }
                }
            }
        }
        for (i, sp) in svc.ports.iter().enumerate() {
            for &src in &pods {
                for v6 in [false, true] {
                    let Some(address) = svc.cluster_ips.iter().find(|a| a.is_ipv6() == v6) else {
                        continue;
                    };
                    let Some(sip) = ip_of_family(model, src.into(), !v6) else {
                        continue;
                    };
                    let flows = graph.reach_service_at(model, src.into(), svc, i, v6);
                    // No backend of this family: kube-proxy rejects.
                    let expected: Vec<bool> = if flows.is_empty() {
                        vec![false]
                    } else {
                        let set: BTreeSet<bool> = flows.iter().map(|f| f.allowed).collect();
                        set.into_iter().collect()
                    };
                    let backends: Vec<String> = flows
                        .iter()
                        .map(|f| {
                            let name = match f.backend {
                                Subject::Endpoint(id) => model.endpoint(id).key(),
                                Subject::External(ip) => ip.to_string(),
                            };
                            format!(
                                "{name}:{} {}{}",
                                f.target_port,
                                if f.allowed { "allowed" } else { "denied" },
                                if f.hairpin { " (hairpin)" } else { "" }
                            )
                        })
                        .collect();
                    service_cells += 1;
                    checks.push(Check {
                        spec: ProbeSpec::new(
                            host_of[&Subject::Endpoint(src)].clone(),
                            *address,
                            sp.protocol,
                            sp.port,
                        ),
                        tries: if expected.len() > 1 { SERVICE_TRIES } else { 1 },
                        expected,
                        what: format!(
                            "{} -> Service {} {}/{} ({sip} -> {address})",
                            model.endpoint(src).key(),
                            svc.key(),
                            sp.protocol,
                            sp.port
                        ),
                        why: Why::Service(if backends.is_empty() {
                            "no backends".to_owned()
                        } else {
                            backends.join(", ")
                        }),
                    });
                }
            }
        }
    }
    if per_pod {
        // Every per-Pod Service cell exists, so the via-Service table is complete.
        assert!(
            pods.is_empty() || service_cells >= pods.len() * pods.len(),
            "{case_name}: {service_cells} Service cells for {} Pods",
            pods.len()
        );
    }

    // Kubelet-style: the node to every Pod on every probed port, each family.
    let node = lab_node(&hosts);
    let node_ips: Vec<IpAddr> = std::iter::once(IpAddr::V4(node.ipv4.addr()))
        .chain(node.ipv6.map(|n| IpAddr::V6(n.addr())))
        .collect();
    let mut node_probes = 0;
    for &d in &pods {
        for ip in &model.endpoint(d).ips {
            for &(p, port) in &ports {
                node_probes += 1;
                checks.push(Check {
                    spec: ProbeSpec::new(NODE, *ip, p, port),
                    tries: 1,
                    expected: vec![true],
                    what: format!("node -> {} {p}/{port} ({ip})", model.endpoint(d).key()),
                    why: Why::Node,
                });
            }
        }
    }
    for (i, a) in node_assertions {
        let p = parse_protocol(&a.protocol);
        // The lab has one node: only assertions about a Pod's own node (always allowed).
        if !a.allowed {
            notes.push(format!(
                "skipped assertion {i} ({} -> {}): the lab has one node",
                a.from, a.to
            ));
            continue;
        }
        let to = match policy_compiler::parse_destination(model, &a.to) {
            Ok(policy_compiler::Destination::Service(svc)) => svc.cluster_ips.first().copied(),
            _ => Subject::parse(model, &a.to)
                .ok()
                .and_then(|d| ip_of_family(model, d, true).or(ip_of_family(model, d, false))),
        };
        let Some(to) = to else {
            notes.push(format!("skipped assertion {i}: no address"));
            continue;
        };
        checks.push(Check {
            spec: ProbeSpec::new(NODE, to, p, a.port),
            tries: 1,
            expected: vec![true],
            what: format!("assertion {i} {} -> {} {p}/{} ({to})", a.from, a.to, a.port),
            why: Why::Node,
        });
    }

    let lab = Topology::build_routed(&kernel::prefix(tag), &node, &hosts)
        .unwrap_or_else(|e| panic!("{case_name}: topology: {e}"));
    let opts = RulesetOptions {
        node_addresses: node_ips.clone(),
        ..RulesetOptions::default()
    };
    for &id in &pods {
        let rs = compile_pod(model, graph, id, &opts);
        let host = lab.host(&model.endpoint(id).key()).unwrap();
        nft::apply(&host.netns, &rs.to_nft())
            .unwrap_or_else(|e| panic!("{case_name} {}: {e}", model.endpoint(id).key()));
    }
    let ctx = NodeContext {
        node: NODE.to_owned(),
        addresses: node_ips.clone(),
        pods: pods.clone(),
    };
    nft::apply(lab.hub(), &compile_node(model, graph, &ctx, &opts).to_nft())
        .unwrap_or_else(|e| panic!("{case_name} node table: {e}"));
    let proxy = services::kube_proxy(model);
    if !proxy.is_empty() {
        kubeproxy::apply(lab.hub(), &proxy, &node_ips)
            .unwrap_or_else(|e| panic!("{case_name} kube-proxy: {e}"));
    }

    let mut listeners: Vec<Listener> = lab
        .hosts()
        .iter()
        .flat_map(|h| {
            ports
                .iter()
                .map(|(p, port)| Listener::new(h.name.clone(), *p, *port))
        })
        .collect();
    for (host, p, port) in backend_listeners {
        if !ports.contains(&(p, port)) {
            listeners.push(Listener::new(host, p, port));
        }
    }
    let prober = Prober::start(&lab, &listeners).unwrap();
    let mut specs: Vec<ProbeSpec> = Vec::new();
    let mut owner: Vec<usize> = Vec::new();
    for (i, c) in checks.iter().enumerate() {
        for _ in 0..c.tries {
            specs.push(c.spec.clone());
            owner.push(i);
        }
    }
    let run = |specs: &[ProbeSpec], timeout| -> Vec<(bool, String)> {
        prober
            .probe_all(specs, timeout)
            .into_iter()
            .zip(specs)
            .map(|(r, s)| {
                let r = r.unwrap_or_else(|e| panic!("{case_name}: {s}: {e}"));
                (r.connected, r.detail)
            })
            .collect()
    };
    let mut results = run(&specs, QUICK);
    // Retry "denied but should be allowed" patiently: a first packet can be slow.
    let retry: Vec<usize> = (0..specs.len())
        .filter(|&k| checks[owner[k]].expected == [true] && !results[k].0)
        .collect();
    if !retry.is_empty() {
        let again: Vec<ProbeSpec> = retry.iter().map(|&k| specs[k].clone()).collect();
        for (&k, r) in retry.iter().zip(run(&again, PATIENT)) {
            results[k] = r;
        }
    }
    drop(prober);

    let mut observed: Vec<(BTreeSet<bool>, String)> =
        vec![(BTreeSet::new(), String::new()); checks.len()];
    for (k, (connected, detail)) in results.into_iter().enumerate() {
        let o = &mut observed[owner[k]];
        o.0.insert(connected);
        if o.1.is_empty() || connected != checks[owner[k]].expected[0] {
            o.1 = detail;
        }
    }
    let mut failures = Vec::new();
    for (c, (seen, detail)) in checks.iter().zip(&observed) {
        let seen: Vec<bool> = seen.iter().copied().collect();
        if seen == c.expected {
            continue;
        }
        let outcome = |v: &[bool]| match v {
            [true] => "allowed",
            [false] => "denied",
            _ => "allowed or denied",
        };
        let mut msg = format!(
            "{case_name}: {}: kernel {} ({detail}), compiler {}\n",
            c.what,
            outcome(&seen),
            outcome(&c.expected),
        );
        match &c.why {
            Why::Direct {
                src,
                dst,
                protocol,
                port,
            } => {
                let e = explain(
                    model,
                    graph,
                    *src,
                    *dst,
                    Some(PortQuery {
                        protocol: *protocol,
                        port: *port,
                    }),
                );
                for line in e.to_string().lines() {
                    let _ = writeln!(msg, "    {line}");
                }
            }
            Why::Service(b) => {
                let _ = writeln!(msg, "    backends: {b}");
            }
            Why::Node => {
                let _ = writeln!(msg, "    the node may always connect");
            }
        }
        failures.push(msg);
    }
    lab.teardown().unwrap();
    Summary {
        probes: specs.len(),
        denied: checks.iter().filter(|c| c.expected == [false]).count(),
        service_cells,
        node_probes,
        failures,
        notes,
    }
}

/// Proves the cases whose index is `shard` modulo `shards` (tests run in parallel).
fn prove_shard(test: &str, shard: usize, shards: usize, tag: &str) {
    if !kernel::available(test) {
        return;
    }
    let start = Instant::now();
    let mut failures = Vec::new();
    let (mut total, mut cells, mut nodes) = (0, 0, 0);
    let dirs = cases::case_dirs();
    // A walk that found nothing proves nothing.
    assert!(dirs.len() >= 50, "only {} cases found", dirs.len());
    for (i, dir) in dirs.iter().enumerate() {
        if i % shards != shard {
            continue;
        }
        let t = Instant::now();
        let name = cases::case_name(dir);
        let s = prove_case(dir, tag);
        total += s.probes;
        cells += s.service_cells;
        nodes += s.node_probes;
        for n in &s.notes {
            eprintln!("  {name}: note: {n}");
        }
        eprintln!(
            "kernel proof {:<45} {:>5} probes {:>5} denied {:>4} via Service {:>4} from node {:>6.2}s{}",
            name,
            s.probes,
            s.denied,
            s.service_cells,
            s.node_probes,
            t.elapsed().as_secs_f64(),
            if s.failures.is_empty() {
                String::new()
            } else {
                format!("  {} DISAGREEMENTS", s.failures.len())
            }
        );
        failures.extend(s.failures);
    }
    eprintln!(
        "kernel proof shard {shard}/{shards}: {total} probes ({cells} Service cells, {nodes} node probes) in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} kernel/compiler disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kernel_agrees_with_compiler_on_every_case_shard_0() {
    prove_shard(
        "kernel_agrees_with_compiler_on_every_case_shard_0",
        0,
        3,
        "pfa",
    );
}

#[test]
fn kernel_agrees_with_compiler_on_every_case_shard_1() {
    prove_shard(
        "kernel_agrees_with_compiler_on_every_case_shard_1",
        1,
        3,
        "pfb",
    );
}

#[test]
fn kernel_agrees_with_compiler_on_every_case_shard_2() {
    prove_shard(
        "kernel_agrees_with_compiler_on_every_case_shard_2",
        2,
        3,
        "pfc",
    );
}
