//! `Connectivity` (per-class rows) equals `reach` on every pair, for every golden case
//! and a synthetic cluster: the classes are an optimisation, never a semantic.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;

use policy_compiler::connectivity::{Connectivity, EndpointFilter, Party};
use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{AllowGraph, EndpointId, Model, PortSet, SourceText, Subject, load};

use crate::cases::case_dirs;
use crate::support::{compile_files, manifest_files, repo_root};

/// Checks `Connectivity::for_each` against `reach` directly: every endpoint pair exactly,
/// and for ranges every address at a cut bound (and next to it) in both directions.
fn check_against_reach(model: &Model, graph: &AllowGraph, c: &Connectivity<'_>, what: &str) {
    let mut pairs: BTreeMap<(EndpointId, EndpointId), PortSet> = BTreeMap::new();
    let mut to_range: BTreeMap<EndpointId, Vec<(IpNet, PortSet)>> = BTreeMap::new();
    let mut from_range: BTreeMap<EndpointId, Vec<(IpNet, PortSet)>> = BTreeMap::new();
    c.for_each(&EndpointFilter::default(), |conn| {
        assert!(!conn.ports.is_empty(), "{what}: empty connection listed");
        match (conn.src, conn.dst) {
            (Party::Endpoint(s), Party::Endpoint(d)) => {
                assert!(
                    pairs.insert((s, d), conn.ports).is_none(),
                    "{what}: listed twice"
                );
            }
            (Party::Endpoint(s), Party::Range(n)) => {
                to_range.entry(s).or_default().push((n, conn.ports));
            }
            (Party::Range(n), Party::Endpoint(d)) => {
                from_range.entry(d).or_default().push((n, conn.ports));
            }
            (Party::Range(_), Party::Range(_)) => panic!("{what}: range to range listed"),
        }
    });
    let mut probes: Vec<IpAddr> = Vec::new();
    for n in c.cuts() {
        probes.push(n.network());
        probes.push(n.broadcast());
        if let IpAddr::V4(a) = n.broadcast()
            && let Some(next) = u32::from(a).checked_add(1)
        {
            probes.push(IpAddr::V4(next.into()));
        }
    }
    for s in &model.endpoints {
        for d in &model.endpoints {
            if s.id == d.id && s.single() {
                continue;
            }
            let want = graph
                .reach(model, Subject::Endpoint(s.id), Subject::Endpoint(d.id))
                .allowed;
            let got = pairs
                .get(&(s.id, d.id))
                .cloned()
                .unwrap_or_else(PortSet::none);
            assert_eq!(got, want, "{what}: {} => {}", s.key(), d.key());
        }
        for ip in &probes {
            if model.endpoint_by_ip(ip).is_some() {
                continue;
            }
            let ext = Subject::External(*ip);
            let find = |v: Option<&Vec<(IpNet, PortSet)>>| {
                v.and_then(|v| {
                    v.iter()
                        .find(|(n, _)| n.contains(ip))
                        .map(|(_, p)| p.clone())
                })
                .unwrap_or_else(PortSet::none)
            };
            let want = graph.reach(model, Subject::Endpoint(s.id), ext).allowed;
            assert_eq!(
                find(to_range.get(&s.id)),
                want,
                "{what}: {} => {ip}",
                s.key()
            );
            let want = graph.reach(model, ext, Subject::Endpoint(s.id)).allowed;
            assert_eq!(
                find(from_range.get(&s.id)),
                want,
                "{what}: {ip} => {}",
                s.key()
            );
        }
    }
}

#[test]
fn classes_agree_with_reach_on_every_golden_case() {
    let root = repo_root().join("testdata/cases");
    let dirs = case_dirs(&root);
    assert!(dirs.len() >= 40);
    for dir in &dirs {
        let (model, graph, _) = compile_files(&manifest_files(dir));
        let c = Connectivity::new(&model, &graph, &[]);
        check_against_reach(&model, &graph, &c, &dir.display().to_string());
    }
}

#[test]
fn classes_agree_with_reach_on_a_synthetic_cluster() {
    let text = generate(&SynthParams {
        namespaces: 6,
        pods: 240,
        policies: 40,
        seed: 7,
    });
    let (inputs, _) = load(&[SourceText {
        name: "gen.yaml",
        text: &text,
    }]);
    let (model, _) = Model::build(&inputs);
    let graph = AllowGraph::build(&model);
    let c = Connectivity::new(&model, &graph, &[]);
    assert!(
        c.class_count() < model.endpoints.len(),
        "classes merge endpoints"
    );
    assert!(c.range_count() > 1, "ipBlocks cut the address space");
    check_against_reach(&model, &graph, &c, "synthetic");
}

#[test]
fn filters_keep_pairs_with_either_side_matching() {
    let dir = repo_root().join("testdata/cases/upstream/pod-selector");
    let (model, graph, _) = compile_files(&manifest_files(&dir));
    let c = Connectivity::new(&model, &graph, &[]);
    let f = EndpointFilter {
        namespaces: vec!["y".into()],
        selector: vec![("pod".into(), "a".into())],
    };
    let mut n = 0;
    c.for_each(&f, |conn| {
        let s = conn.src.name(&model);
        let d = conn.dst.name(&model);
        assert!(s == "y/a" || d == "y/a", "{s} => {d}");
        n += 1;
    });
    assert!(n > 0);
}

#[test]
fn diff_lists_exactly_the_pairs_whose_ports_changed() {
    use policy_compiler::connectivity::diff;
    let root = repo_root().join("testdata/cases/upstream");
    let (m1, g1, _) = compile_files(&manifest_files(&root.join("ipblock-except")));
    let (m2, g2, _) = compile_files(&manifest_files(&root.join("port-81-only")));
    let c1 = Connectivity::new(&m1, &g1, &[]);
    let c2 = Connectivity::new(&m2, &g2, c1.cuts());
    let c1 = Connectivity::new(&m1, &g1, c2.cuts());
    let mut same = 0;
    diff(&c1, &c1, &EndpointFilter::default(), |_| same += 1);
    assert_eq!(same, 0, "a policy set does not differ from itself");
    let mut changes = BTreeMap::new();
    diff(&c1, &c2, &EndpointFilter::default(), |ch| {
        assert_ne!(ch.old, ch.new);
        assert!(
            changes
                .insert((ch.src.clone(), ch.dst.clone()), ch)
                .is_none()
        );
    });
    assert!(!changes.is_empty());
    // Every endpoint pair: listed iff reach differs, with both sides' sets.
    for s in &m1.endpoints {
        for d in &m1.endpoints {
            if s.id == d.id {
                continue;
            }
            let (s2, d2) = (
                m2.endpoint_by_key(&s.key()).unwrap(),
                m2.endpoint_by_key(&d.key()).unwrap(),
            );
            let a = g1.reach(&m1, s.id.into(), d.id.into()).allowed;
            let b = g2.reach(&m2, s2.into(), d2.into()).allowed;
            match changes.get(&(s.key(), d.key())) {
                None => assert_eq!(a, b, "{} => {}", s.key(), d.key()),
                Some(ch) => {
                    assert_eq!(ch.old.clone().unwrap_or_else(PortSet::none), a);
                    assert_eq!(ch.new.clone().unwrap_or_else(PortSet::none), b);
                    assert_eq!(
                        ch.diff_type(),
                        match (a.is_empty(), b.is_empty()) {
                            (true, _) => "added",
                            (_, true) => "removed",
                            _ => "changed",
                        }
                    );
                }
            }
        }
    }
}

#[test]
fn diff_of_two_synthetic_versions_equals_reach_pair_by_pair() {
    // See: #14 (the diff compares rows once per source class pair, on two threads, and
    // `Connectivity::pair` builds each side's classes once: the answers must not change).
    use policy_compiler::connectivity::{Change, diff};
    let params = SynthParams {
        namespaces: 6,
        pods: 240,
        policies: 40,
        seed: 11,
    };
    let compile = |text: &str| {
        let (inputs, _) = load(&[SourceText {
            name: "gen.yaml",
            text,
        }]);
        let (model, _) = Model::build(&inputs);
        let graph = AllowGraph::build(&model);
        (model, graph)
    };
    let (m1, g1) = compile(&generate(&params));
    let (m2, g2) = compile(&generate(&SynthParams {
        policies: 52,
        ..params
    }));
    let (c1, c2) = Connectivity::pair((&m1, &g1), (&m2, &g2));
    // The same cuts as building each side at the other's cuts.
    let t1 = Connectivity::new(&m1, &g1, &[]);
    let t2 = Connectivity::new(&m2, &g2, t1.cuts());
    let t1 = Connectivity::new(&m1, &g1, t2.cuts());
    assert_eq!(c1.cuts(), t1.cuts());
    assert_eq!(c2.cuts(), t2.cuts());
    assert_eq!(c1.range_count(), c2.range_count());
    let collect = |a: &Connectivity<'_>, b: &Connectivity<'_>, f: &EndpointFilter| {
        let mut v: Vec<Change> = Vec::new();
        diff(a, b, f, |c| v.push(c));
        v
    };
    let all = EndpointFilter::default();
    let changes = collect(&c1, &c2, &all);
    assert_eq!(changes, collect(&t1, &t2, &all));
    assert!(collect(&c1, &c1, &all).is_empty());
    let mut by_pair = BTreeMap::new();
    for ch in &changes {
        assert_ne!(ch.old, ch.new);
        assert!(
            by_pair
                .insert((ch.src.clone(), ch.dst.clone()), ch.clone())
                .is_none()
        );
    }
    let ranges = changes
        .iter()
        .filter(|c| c.dst.parse::<IpNet>().is_ok() || c.src.parse::<IpNet>().is_ok())
        .count();
    assert!(ranges > 0, "some range rows change too");
    let mut pairs = 0;
    for s in &m1.endpoints {
        for d in &m1.endpoints {
            if s.id == d.id {
                continue;
            }
            let (s2, d2) = (
                m2.endpoint_by_key(&s.key()).unwrap(),
                m2.endpoint_by_key(&d.key()).unwrap(),
            );
            let a = g1.reach(&m1, s.id.into(), d.id.into()).allowed;
            let b = g2.reach(&m2, s2.into(), d2.into()).allowed;
            match by_pair.get(&(s.key(), d.key())) {
                None => assert_eq!(a, b, "{} => {}", s.key(), d.key()),
                Some(ch) => {
                    pairs += 1;
                    assert_eq!(ch.old.clone().unwrap_or_else(PortSet::none), a);
                    assert_eq!(ch.new.clone().unwrap_or_else(PortSet::none), b);
                }
            }
        }
    }
    assert!(pairs > 100, "{pairs} endpoint pairs changed");
    // A filter keeps exactly the changes with a matching side, in the same order.
    let ns = changes[changes.len() / 2]
        .src
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let f = EndpointFilter {
        namespaces: vec![ns.clone()],
        selector: Vec::new(),
    };
    let side_in = |name: &str| name.split('/').next() == Some(ns.as_str());
    let want: Vec<Change> = changes
        .iter()
        .filter(|c| side_in(&c.src) || side_in(&c.dst))
        .cloned()
        .collect();
    assert!(!want.is_empty());
    assert_eq!(collect(&c1, &c2, &f), want);
}

#[test]
fn nodes_split_classes_only_where_they_decide() {
    // See: #14 (the node was part of every class signature: Pods on 90 nodes made
    // 90 times the classes, although without hostNetwork Pods or node addresses the
    // node never changes an answer).
    let pod = |name: &str, node: &str, ip: &str, host: bool| {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: web}}}}\nspec: {{nodeName: {node}, hostNetwork: {host}, containers: [{{name: c}}]}}\nstatus: {{podIP: {ip}}}\n"
        )
    };
    let policy = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n";
    let plain = format!(
        "{}{}{}{policy}",
        pod("a", "n1", "10.0.1.1", false),
        pod("b", "n2", "10.0.2.1", false),
        pod("c", "n3", "10.0.3.1", false)
    );
    let with_host = format!("{plain}{}", pod("h", "n1", "192.168.0.1", true));
    let mut counts = Vec::new();
    for text in [plain, with_host] {
        let (inputs, diags) = load(&[SourceText {
            name: "nodes.yaml",
            text: &text,
        }]);
        assert!(
            !policy_compiler::diagnostic::has_errors(&diags),
            "{diags:?}"
        );
        let (model, _) = Model::build(&inputs);
        let graph = AllowGraph::build(&model);
        let c = Connectivity::new(&model, &graph, &[]);
        check_against_reach(&model, &graph, &c, "nodes");
        counts.push(c.class_count());
    }
    // a, b and c answer alike whatever their node.
    assert_eq!(counts[0], 1);
    // With a hostNetwork Pod on n1, a (on n1) admits it and b, c do not.
    assert!(counts[1] >= 3, "{counts:?}");
}
