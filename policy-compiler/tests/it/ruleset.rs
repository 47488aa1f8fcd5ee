//! Rulesets of every golden case: the software evaluation of each Pod's ruleset agrees
//! with the allow graph for every peer address, and a few `.nft` goldens pin the text.
// See: #3

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use policy_compiler::expect::parse_expectations;
use policy_compiler::model::EndpointKind;
use policy_compiler::ruleset::{
    NodeContext, PeerClassifier, PeerLookup, PeerMap, RulesetOptions, compile_node, compile_pod,
    compile_pod_split,
};
use policy_compiler::{AllowGraph, Direction, Model, Protocol, Subject};

use crate::cases::case_dirs;
use crate::support::{compile_files, manifest_files, repo_root};

/// `(case, pod)` pairs whose ruleset text is pinned as `testdata/cases/<case>/<ns>_<name>.nft`.
pub(crate) const GOLDENS: &[(&str, &str)] = &[
    ("upstream/pod-selector", "x/a"),
    ("upstream/named-port-egress", "x/a"),
    ("upstream/ipblock-except", "x/a"),
    ("semantics/ipv6-dual-stack", "y/a"),
    ("semantics/ipv6-dual-stack", "z/a"),
    ("apps/shop-multi-tier", "shop/api"),
    // See: #10 — node_v4 in ingress, svc_v4 in egress.
    ("services/allow-dns", "app/client"),
    ("services/nodeport", "web/server"),
    // See: #13 — Admin Deny before the NetworkPolicy lookup; Admin Pass, then Baseline.
    (
        "cnp/admin/integration/1-initial",
        "network-policy-conformance-gryffindor/harry-potter-0",
    ),
    (
        "cnp/admin/integration/4-networkpolicy-deleted",
        "network-policy-conformance-gryffindor/harry-potter-0",
    ),
    // See: #12 — audit chains at priority filter + 10 (NetworkPolicy and CNP), and a Pod
    // whose table the audit policies leave unchanged.
    ("audit/staged-policies", "ops/scanner"),
    ("audit/staged-policies", "shop/db"),
    ("audit/staged-policies", "shop/web"),
];

/// Node tables pinned as `node_<name>.nft`: (case, node).
// See: #10
pub(crate) const NODE_GOLDENS: &[(&str, &str)] =
    &[("services/allow-dns", "n1"), ("audit/service-egress", "n1")];

fn compiled(dir: &Path) -> (Model, AllowGraph) {
    let (model, graph, diags) = compile_files(&manifest_files(dir));
    assert!(
        !diags.iter().any(|d| d.is_error()),
        "{}: {diags:?}",
        dir.display()
    );
    (model, graph)
}

/// Addresses to try as peers: every endpoint IP, every literal of the expectations and a
/// few addresses outside everything.
fn peer_addresses(model: &Model, dir: &Path) -> Vec<(Subject, IpAddr)> {
    let mut out: Vec<(Subject, IpAddr)> = Vec::new();
    for e in &model.endpoints {
        for ip in &e.ips {
            out.push((Subject::Endpoint(e.id), *ip));
        }
    }
    let exp =
        parse_expectations(&std::fs::read_to_string(dir.join("expect.yaml")).unwrap()).unwrap();
    let literals = exp
        .assertions
        .iter()
        .flat_map(|a| [a.from.as_str(), a.to.as_str()])
        .filter_map(|s| s.parse::<IpAddr>().ok());
    let extra = [
        "203.0.113.7",
        "10.255.255.254",
        "0.0.0.0",
        "2001:db8::7",
        "::",
    ]
    .into_iter()
    .map(|s| s.parse::<IpAddr>().unwrap());
    for ip in literals.chain(extra) {
        let subject = match model.endpoint_by_ip(&ip) {
            Some(id) => Subject::Endpoint(id),
            None => Subject::External(ip),
        };
        out.push((subject, ip));
    }
    out.sort();
    out.dedup();
    out
}

fn same_family(model: &Model, s: Subject, ip: &IpAddr) -> Option<IpAddr> {
    match s {
        Subject::External(a) => Some(a),
        Subject::Endpoint(id) => model
            .endpoint(id)
            .ips
            .iter()
            .find(|a| a.is_ipv4() == ip.is_ipv4())
            .copied(),
    }
}

#[test]
fn software_evaluation_of_every_ruleset_matches_the_allow_graph() {
    let root = repo_root().join("testdata/cases");
    let ports: [(Protocol, u16); 8] = [
        (Protocol::Tcp, 80),
        (Protocol::Tcp, 81),
        (Protocol::Tcp, 90),
        (Protocol::Tcp, 443),
        (Protocol::Udp, 53),
        (Protocol::Udp, 80),
        (Protocol::Sctp, 80),
        (Protocol::Sctp, 81),
    ];
    let mut checked = 0usize;
    let mut audit_checked = 0usize;
    let mut failures = Vec::new();
    for dir in case_dirs(&root) {
        let name = dir.strip_prefix(&root).unwrap().display().to_string();
        let (model, graph) = compiled(&dir);
        let peers = peer_addresses(&model, &dir);
        for pod in model
            .endpoints
            .iter()
            .filter(|e| e.kind == EndpointKind::Pod && !e.host_network)
        {
            let rs = compile_pod(&model, &graph, pod.id, &RulesetOptions::default());
            let me = Subject::Endpoint(pod.id);
            for &(peer, peer_ip) in &peers {
                if peer == me {
                    continue; // loopback: accepted by `iif lo` / `oif lo`
                }
                let Some(my_ip) = same_family(&model, me, &peer_ip) else {
                    continue;
                };
                let ingress = graph.reach_at(&model, peer, Some(peer_ip), me, Some(my_ip));
                let egress = graph.reach_at(&model, me, Some(my_ip), peer, Some(peer_ip));
                // See: #12 — the audit chains judge as the audited model does.
                let audited = graph.audit().map(|a| {
                    (
                        a.graph
                            .reach_at(&a.model, peer, Some(peer_ip), me, Some(my_ip)),
                        a.graph
                            .reach_at(&a.model, me, Some(my_ip), peer, Some(peer_ip)),
                    )
                });
                for (p, port) in ports {
                    for (d, want) in [
                        (
                            Direction::Ingress,
                            ingress.ingress.allowed.contains(p, port),
                        ),
                        (Direction::Egress, egress.egress.allowed.contains(p, port)),
                    ] {
                        checked += 1;
                        if rs.simulate(d, peer_ip, p, port) != want {
                            failures.push(format!(
                                "{name}: {} {d} peer {} ({peer_ip}) {p}/{port}: graph says {want}",
                                pod.key(),
                                peer.display(&model)
                            ));
                        }
                        let Some((ai, ae)) = &audited else {
                            if rs.simulate_audit(d, peer_ip, p, port).is_some() {
                                failures
                                    .push(format!("{name}: audit chains without audit policies"));
                            }
                            continue;
                        };
                        audit_checked += 1;
                        let audit_want = match d {
                            Direction::Ingress => ai.ingress.allowed.contains(p, port),
                            Direction::Egress => ae.egress.allowed.contains(p, port),
                        };
                        // No audit chains: the audit policies change nothing here.
                        let got = rs.simulate_audit(d, peer_ip, p, port).unwrap_or(want);
                        if got != audit_want {
                            failures.push(format!(
                                "{name}: {} {d} peer {} ({peer_ip}) {p}/{port}: audited graph says {audit_want}, audit chains {got}",
                                pod.key(),
                                peer.display(&model)
                            ));
                        }
                    }
                }
            }
        }
    }
    println!("{checked} ruleset evaluations, {audit_checked} of audit chains");
    // The audit case exists: an empty walk cannot pass. See: #12
    assert!(audit_checked > 0, "no audit chain was evaluated");
    assert!(
        failures.is_empty(),
        "{} disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn nft_goldens_match() {
    let root = repo_root().join("testdata/cases");
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (case, pod) in GOLDENS {
        let dir = root.join(case);
        let (model, graph) = compiled(&dir);
        let id = model
            .endpoint_by_key(pod)
            .unwrap_or_else(|| panic!("{case}: no pod {pod}"));
        let text = compile_pod(&model, &graph, id, &RulesetOptions::default()).to_nft();
        let path = dir.join(format!("{}.nft", pod.replace('/', "_")));
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old != text {
            if update {
                std::fs::write(&path, &text).unwrap();
            } else {
                stale.push(format!("{}:\n{text}", path.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "golden .nft files differ (UPDATE_EXPECT=1 cargo test to update, review with git diff):\n{}",
        stale.join("\n")
    );
}

#[test]
fn node_table_goldens_match() {
    let root = repo_root().join("testdata/cases");
    let update = std::env::var("UPDATE_EXPECT").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (case, node) in NODE_GOLDENS {
        let dir = root.join(case);
        let (model, graph) = compiled(&dir);
        let ctx = NodeContext::new(&model, node, model.node_addresses(node));
        let text = compile_node(&model, &graph, &ctx, &RulesetOptions::default()).to_nft();
        let path = dir.join(format!("node_{node}.nft"));
        let old = std::fs::read_to_string(&path).unwrap_or_default();
        if old != text {
            if update {
                std::fs::write(&path, &text).unwrap();
            } else {
                stale.push(format!("{}:\n{text}", path.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "golden node .nft files differ (UPDATE_EXPECT=1 cargo test to update):\n{}",
        stale.join("\n")
    );
}

/// Through every Service of every case, from every Pod: the node table's verdict on the
/// post-DNAT flow equals the source side of `reach_service`, the Pod table lets the
/// Service address through exactly on the Service's ports, and the backend's Pod table
/// agrees with the ingress side.
// See: #10
#[test]
fn via_service_verdicts_match_the_rulesets() {
    let root = repo_root().join("testdata/cases");
    let mut checked = 0usize;
    let mut failures = Vec::new();
    for dir in case_dirs(&root) {
        let name = dir.strip_prefix(&root).unwrap().display().to_string();
        let (model, graph) = compiled(&dir);
        if model.services.is_empty() {
            continue;
        }
        let pods: Vec<_> = model
            .endpoints
            .iter()
            .filter(|e| e.kind == EndpointKind::Pod && !e.host_network && !e.ips.is_empty())
            .collect();
        // One node holding every Pod: the table of a node judges only its own Pods.
        let ctx = NodeContext {
            node: "all".into(),
            addresses: Vec::new(),
            pods: pods.iter().map(|e| e.id).collect(),
        };
        let node_rs = compile_node(&model, &graph, &ctx, &RulesetOptions::default());
        for src in &pods {
            let src_rs = compile_pod(&model, &graph, src.id, &RulesetOptions::default());
            for svc in &model.services {
                for (i, sp) in svc.ports.iter().enumerate() {
                    if svc.proxied() {
                        for addr in svc.addresses() {
                            let through =
                                src_rs.simulate(Direction::Egress, addr, sp.protocol, sp.port);
                            if !through {
                                failures.push(format!(
                                    "{name}: {} egress drops Service address {addr} {} {}",
                                    src.key(),
                                    sp.protocol,
                                    sp.port
                                ));
                            }
                        }
                    }
                    for flow in graph.reach_service(&model, Subject::Endpoint(src.id), svc, i) {
                        let Subject::Endpoint(b) = flow.backend else {
                            continue;
                        };
                        let backend = model.endpoint(b);
                        let Some(dst_ip) = same_family(&model, Subject::Endpoint(b), &src.ips[0])
                        else {
                            continue;
                        };
                        let egress = flow
                            .reach
                            .egress
                            .allowed
                            .contains(flow.protocol, flow.target_port);
                        let ingress = flow
                            .reach
                            .ingress
                            .allowed
                            .contains(flow.protocol, flow.target_port);
                        let node = node_rs.simulate_node(
                            src.ips[0],
                            dst_ip,
                            flow.protocol,
                            flow.target_port,
                        );
                        let dst_rs = compile_pod(&model, &graph, b, &RulesetOptions::default());
                        let at_backend = backend.host_network
                            || dst_rs.simulate(
                                Direction::Ingress,
                                src.ips[0],
                                flow.protocol,
                                flow.target_port,
                            );
                        checked += 1;
                        // Hairpin: the node table judges the backend's ingress too,
                        // since kube-proxy masquerades the flow. See: #10
                        let node_verdict = egress && (!flow.hairpin || ingress);
                        if node != node_verdict
                            || at_backend != ingress
                            || (egress && ingress) != flow.allowed
                        {
                            failures.push(format!(
                                "{name}: {} -> {} via {}: node table {node}, backend table {at_backend}, graph egress {egress} ingress {ingress}",
                                src.key(), backend.key(), svc.key()
                            ));
                        }
                    }
                }
            }
        }
    }
    println!("{checked} via-Service flows");
    assert!(
        checked >= 20,
        "expected Service flows in testdata/cases/services, found {checked}"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The node table's audit chains (`audit_forward`, `audit_hairpin`) judge a flow through
/// a Service after DNAT as the audited graph does: for every case with audit policies and
/// Services, every Pod, Service port and backend, the node table's audited verdict
/// equals the audited egress (and, for hairpin, ingress) of the flow, and its enforced
/// verdict is unchanged by the audit chains. See: #12
#[test]
fn audited_via_service_verdicts_match_the_node_table() {
    let root = repo_root().join("testdata/cases");
    let mut checked = 0usize;
    let mut differing = 0usize;
    let mut failures = Vec::new();
    for dir in case_dirs(&root) {
        let name = dir.strip_prefix(&root).unwrap().display().to_string();
        let (model, graph) = compiled(&dir);
        let Some(audit) = graph.audit() else {
            continue;
        };
        if model.services.is_empty() {
            continue;
        }
        let pods: Vec<_> = model
            .endpoints
            .iter()
            .filter(|e| e.kind == EndpointKind::Pod && !e.host_network && !e.ips.is_empty())
            .collect();
        let ctx = NodeContext {
            node: "all".into(),
            addresses: Vec::new(),
            pods: pods.iter().map(|e| e.id).collect(),
        };
        let node_rs = compile_node(&model, &graph, &ctx, &RulesetOptions::default());
        for src in &pods {
            for (svc, asvc) in model.services.iter().zip(&audit.model.services) {
                assert_eq!(svc.key(), asvc.key());
                for i in 0..svc.ports.len() {
                    let enforced = graph.reach_service(&model, Subject::Endpoint(src.id), svc, i);
                    let audited =
                        audit
                            .graph
                            .reach_service(&audit.model, Subject::Endpoint(src.id), asvc, i);
                    for (flow, aflow) in enforced.iter().zip(&audited) {
                        let Subject::Endpoint(b) = flow.backend else {
                            continue;
                        };
                        let Some(dst_ip) = same_family(&model, Subject::Endpoint(b), &src.ips[0])
                        else {
                            continue;
                        };
                        let side = |f: &policy_compiler::graph::ServiceFlow| {
                            let egress = f.reach.egress.allowed.contains(f.protocol, f.target_port);
                            let ingress =
                                f.reach.ingress.allowed.contains(f.protocol, f.target_port);
                            egress && (!f.hairpin || ingress)
                        };
                        let (want, want_audited) = (side(flow), side(aflow));
                        let (p, port) = (flow.protocol, flow.target_port);
                        let got = node_rs.simulate_node(src.ips[0], dst_ip, p, port);
                        let got_audited = node_rs
                            .simulate_node_audit(src.ips[0], dst_ip, p, port)
                            .unwrap_or(got);
                        checked += 1;
                        differing += usize::from(want != want_audited);
                        if got != want || got_audited != want_audited {
                            failures.push(format!(
                                "{name}: {} -> {} via {}: node table {got} / audited {got_audited}, graph {want} / audited {want_audited}",
                                src.key(),
                                model.endpoint(b).key(),
                                svc.key()
                            ));
                        }
                    }
                }
            }
        }
    }
    println!("{checked} audited via-Service flows, {differing} with differing verdicts");
    assert!(differing >= 2, "expected audit/service-egress's flows");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Renders every Pod of `model` through [`compile_pod_split`] with one memo of peer
/// lookups shared by all of them (as the agent does within one compile) and checks it
/// against [`compile_pod`]: the whole table, the skeleton, the skeleton's text filled
/// with the shared element blocks, and the entries; with and without node addresses.
/// Returns (lookups asked for, lookups swept, Pods checked). See: #12
pub(crate) fn check_split(model: &Model, graph: &AllowGraph) -> (usize, usize, usize) {
    let node_opts = RulesetOptions {
        node_addresses: vec!["192.168.0.1".parse().unwrap()],
        defer_services: true,
        ..RulesetOptions::default()
    };
    let (mut asked, mut swept, mut pods) = (0, 0, 0);
    for opts in [RulesetOptions::default(), node_opts] {
        let memo: RefCell<HashMap<PeerClassifier, Arc<PeerLookup>>> = RefCell::default();
        let count = Cell::new(0usize);
        let lookups = |c: &PeerClassifier| {
            count.set(count.get() + 1);
            memo.borrow_mut()
                .entry(c.clone())
                .or_insert_with(|| Arc::new(c.sweep(model, graph)))
                .clone()
        };
        for pod in model.endpoints.iter().filter(|e| e.no_ruleset().is_none()) {
            let want = compile_pod(model, graph, pod.id, &opts);
            let Some(split) = compile_pod_split(model, graph, pod.id, &opts, &lookups) else {
                assert!(
                    graph.audit().is_some(),
                    "{}: no split without audit",
                    pod.key()
                );
                continue;
            };
            pods += 1;
            assert_eq!(split.skeleton, want.skeleton(), "{}: skeleton", pod.key());
            let blocks: Vec<String> = split
                .lookups
                .iter()
                .flat_map(|l| l.maps().iter().map(PeerMap::elements_nft))
                .collect();
            let blocks: Vec<&str> = blocks.iter().map(String::as_str).collect();
            assert_eq!(
                split.skeleton.to_nft_with(&blocks),
                want.to_nft(),
                "{}: text from the shared element blocks",
                pod.key()
            );
            let entries: Vec<_> = split
                .lookups
                .iter()
                .flat_map(|l| l.maps().iter().flat_map(PeerMap::peer_entries))
                .collect();
            assert_eq!(entries, want.peer_entries(), "{}: entries", pod.key());
            assert_eq!(split.ruleset(), want, "{}: whole table", pod.key());
        }
        asked += count.get();
        swept += memo.borrow().len();
    }
    (asked, swept, pods)
}

/// The split (skeleton + peer lookups shared through a memo) renders every golden case
/// exactly as `compile_pod`, and alike Pods did share lookups. See: #12
#[test]
fn split_with_shared_lookups_equals_compile_pod_on_every_case() {
    let root = repo_root().join("testdata/cases");
    let (mut asked, mut swept, mut pods, mut cases) = (0, 0, 0, 0);
    for dir in case_dirs(&root) {
        let (model, graph) = compiled(&dir);
        let (a, s, p) = check_split(&model, &graph);
        asked += a;
        swept += s;
        pods += p;
        cases += 1;
    }
    assert!(cases > 100, "only {cases} cases");
    assert!(pods > 1000, "only {pods} Pods checked");
    assert!(
        asked > swept + 50,
        "{asked} lookups from {swept} sweeps: few shared"
    );
}
