//! Rulesets of every golden case: the software evaluation of each Pod's ruleset agrees
//! with the allow graph for every peer address, and a few `.nft` goldens pin the text.
// See: #3

use std::net::IpAddr;
use std::path::Path;

use policy_compiler::expect::parse_expectations;
use policy_compiler::model::EndpointKind;
use policy_compiler::ruleset::{RulesetOptions, compile_pod};
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
];

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
                    }
                }
            }
        }
    }
    println!("{checked} ruleset evaluations");
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
