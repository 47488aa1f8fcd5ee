//! Property tests: no input makes the loader or the compiler panic, and the answers hold
//! their invariants (determinism, self traffic, matrix == explain, unisolated == open).
//! Hostile names and labels print valid text, JSON, CSV and Markdown; the stable corpus
//! under `testdata/fuzz/loader/` is replayed through loading, validation and every
//! printer. Case counts are bounded so CI stays fast. See: #11

use proptest::prelude::*;

use policy_compiler::explain::explain;
use policy_compiler::{
    AllowGraph, MatrixFormat, MatrixQuery, MatrixWriter, Model, PortQuery, Protocol, SourceText,
    Subject, load, matrix,
};

fn compile(text: &str) -> (Model, AllowGraph, usize) {
    let (inputs, mut diags) = load(&[SourceText {
        name: "fuzz.yaml",
        text,
    }]);
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    let graph = AllowGraph::build(&model);
    (model, graph, diags.len())
}

fn label() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just("c".to_string()),
        Just("x".to_string()),
        Just("Bad Value".to_string()),
        Just(String::new()),
    ]
}

fn selector() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("{}".to_string()),
        label().prop_map(|v| format!("{{matchLabels: {{pod: '{v}'}}}}")),
        (
            label(),
            prop_oneof![
                Just("In"),
                Just("NotIn"),
                Just("Exists"),
                Just("DoesNotExist"),
                Just("Equals")
            ]
        )
            .prop_map(|(v, op)| format!(
                "{{matchExpressions: [{{key: pod, operator: {op}, values: ['{v}']}}]}}"
            )),
        label().prop_map(|v| format!("{{matchLabels: {{ns: '{v}'}}}}")),
    ]
}

fn cidr() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("10.0.0.0/8".to_string()),
        Just("10.0.1.0/24".to_string()),
        Just("10.0.1.2/32".to_string()),
        Just("0.0.0.0/0".to_string()),
        Just("fd00::/8".to_string()),
        Just("10.0.0.0/33".to_string()),
        Just("banana".to_string()),
    ]
}

fn peer() -> impl Strategy<Value = String> {
    prop_oneof![
        selector().prop_map(|s| format!("{{podSelector: {s}}}")),
        selector().prop_map(|s| format!("{{namespaceSelector: {s}}}")),
        (selector(), selector())
            .prop_map(|(a, b)| format!("{{podSelector: {a}, namespaceSelector: {b}}}")),
        (cidr(), proptest::collection::vec(cidr(), 0..2)).prop_map(|(c, ex)| format!(
            "{{ipBlock: {{cidr: '{c}', except: [{}]}}}}",
            ex.iter()
                .map(|e| format!("'{e}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        Just("{}".to_string()),
    ]
}

fn port() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u32..70000).prop_map(|p| format!("{{port: {p}}}")),
        (79u32..83, 79u32..90).prop_map(|(p, e)| format!("{{port: {p}, endPort: {e}}}")),
        prop_oneof![
            Just("serve-80-tcp"),
            Just("serve-81-udp"),
            Just("http"),
            Just("Bad_Name")
        ]
        .prop_map(|n| format!("{{port: {n}}}")),
        prop_oneof![Just("TCP"), Just("UDP"), Just("SCTP"), Just("ICMP")]
            .prop_map(|p| format!("{{protocol: {p}}}")),
        (prop_oneof![Just("UDP"), Just("SCTP")], 80u32..82)
            .prop_map(|(p, n)| format!("{{protocol: {p}, port: {n}}}")),
    ]
}

fn rule(dir: &'static str) -> impl Strategy<Value = String> {
    (
        proptest::option::of(proptest::collection::vec(peer(), 0..3)),
        proptest::option::of(proptest::collection::vec(port(), 0..3)),
    )
        .prop_map(move |(peers, ports)| {
            let key = if dir == "ingress" { "from" } else { "to" };
            let mut parts = Vec::new();
            if let Some(p) = peers {
                parts.push(format!("{key}: [{}]", p.join(", ")));
            }
            if let Some(p) = ports {
                parts.push(format!("ports: [{}]", p.join(", ")));
            }
            format!("{{{}}}", parts.join(", "))
        })
}

fn policy(i: usize) -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("x"), Just("y")],
        selector(),
        proptest::option::of(proptest::collection::vec(rule("ingress"), 0..3)),
        proptest::option::of(proptest::collection::vec(rule("egress"), 0..3)),
        prop_oneof![Just(""), Just("[Ingress]"), Just("[Egress]"), Just("[Ingress, Egress]"), Just("[Sideways]")],
    )
        .prop_map(move |(ns, sel, ing, eg, types)| {
            let mut s = format!(
                "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n  podSelector: {sel}\n"
            );
            if let Some(r) = ing {
                s.push_str(&format!("  ingress: [{}]\n", r.join(", ")));
            }
            if let Some(r) = eg {
                s.push_str(&format!("  egress: [{}]\n", r.join(", ")));
            }
            if !types.is_empty() {
                s.push_str(&format!("  policyTypes: {types}\n"));
            }
            s
        })
}

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n";

fn pod(ns: &str, name: &str, ip: &str, host: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\nspec:\n  hostNetwork: {host}\n  containers:\n  - name: c\n    ports:\n    - {{containerPort: 80, name: serve-80-tcp}}\n    - {{containerPort: 81, name: serve-81-udp, protocol: UDP}}\nstatus: {{phase: Running, podIPs: [{{ip: '{ip}'}}]}}\n"
    )
}

fn cluster(policies: &[String], host_b: bool) -> String {
    let mut docs = vec![
        CLUSTER.to_string(),
        pod("x", "a", "10.0.1.1", false),
        pod("x", "b", "10.0.1.2", host_b),
        pod("y", "a", "10.0.2.1", false),
        pod("y", "c", "fd00::3", false),
    ];
    docs.extend(policies.iter().cloned());
    docs.join("---\n")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    /// Any bytes: the loader reports, never panics.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        let _ = compile(&text);
    }

    /// Mutated real manifests: never panic.
    #[test]
    fn mutated_manifests_never_panic(cut in 0usize..2000, insert in "[ :{}\\[\\]\\-a-z0-9'\"\n]{0,8}") {
        let base = cluster(&[
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}]\n    ports: [{port: 80, endPort: 90}]\n".to_string()
        ], false);
        let at = cut.min(base.len());
        let at = (0..=at).rev().find(|i| base.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..at], insert, &base[at..]);
        let _ = compile(&text);
    }

    /// Generated policies: deterministic, self always allowed, matrix == explain, and a
    /// pair where neither side is isolated is fully open.
    #[test]
    fn compiled_answers_hold_invariants(
        policies in proptest::collection::vec(0usize..1, 0..4)
            .prop_flat_map(|v| (0..v.len()).map(policy).collect::<Vec<_>>()),
        host_b in any::<bool>(),
        port in prop_oneof![Just(80u16), Just(81), Just(85)],
        proto in prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)],
    ) {
        let text = cluster(&policies, host_b);
        let (model, graph, _) = compile(&text);
        let (model2, graph2, _) = compile(&text);
        prop_assert_eq!(graph.dump(&model), graph2.dump(&model2));
        // Tables split into skeleton and shared peer lookups are compile_pod's. See: #12
        crate::ruleset::check_split(&model, &graph);
        let q = MatrixQuery { protocol: Some(proto), port: Some(port) };
        let m = matrix(&model, &graph, q);
        for (i, s) in model.endpoints.iter().enumerate() {
            for (j, d) in model.endpoints.iter().enumerate() {
                let e = explain(&model, &graph, Subject::Endpoint(s.id), Subject::Endpoint(d.id),
                    Some(PortQuery { protocol: proto, port }));
                prop_assert_eq!(e.allowed, m.allowed[i][j]);
                if i == j {
                    prop_assert!(e.allowed);
                }
                if !e.egress.isolated && !e.ingress.isolated {
                    prop_assert!(e.allowed);
                }
                if !e.allowed && i != j {
                    let denying = if e.egress.allowed { &e.ingress } else { &e.egress };
                    prop_assert!(denying.isolated);
                    prop_assert!(denying.nearest_miss.is_some(), "{}", e);
                }
            }
        }
    }
}

/// Every printer over every endpoint pair (bounded): never panics, and the outputs are
/// well formed: JSON parses, text/CSV/Markdown have one line per endpoint plus headers.
fn print_everything(model: &Model, graph: &AllowGraph) {
    let n = model.endpoints.len();
    for q in [
        MatrixQuery::default(),
        MatrixQuery {
            protocol: Some(Protocol::Udp),
            port: None,
        },
        MatrixQuery {
            protocol: Some(Protocol::Tcp),
            port: Some(80),
        },
    ] {
        let w = MatrixWriter::new(model, graph, q);
        let out = |f| {
            let mut v = Vec::new();
            w.write(f, &mut v).unwrap();
            String::from_utf8(v).unwrap()
        };
        let json: serde_json::Value = serde_json::from_str(&out(MatrixFormat::Json)).unwrap();
        assert_eq!(json["endpoints"].as_array().unwrap().len(), n);
        assert_eq!(json["allowed"].as_array().unwrap().len(), n);
        let legend = usize::from(q.port.is_none());
        assert_eq!(out(MatrixFormat::Text).lines().count(), n + 1 + legend);
        assert_eq!(out(MatrixFormat::Csv).lines().count(), n + 1);
        assert_eq!(out(MatrixFormat::Markdown).lines().count(), n + 2);
    }
    let ids: Vec<_> = model.endpoints.iter().map(|e| e.id).take(6).collect();
    for &s in &ids {
        for &d in &ids {
            for q in [
                None,
                Some(PortQuery {
                    protocol: Protocol::Tcp,
                    port: 80,
                }),
            ] {
                let e = explain(model, graph, Subject::Endpoint(s), Subject::Endpoint(d), q);
                let _ = e.to_string();
                let _: serde_json::Value =
                    serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
            }
        }
    }
}

#[test]
fn loader_corpus_replays() {
    // See: #11. Each file is a hostile input class: alias bombs, deep nesting, duplicate
    // keys, unknown fields, one-line JSON, BOM/tabs/CRLF, kind typos, non-objects, YAML 1.1
    // scalars, hostile values, truncation, huge numbers.
    let dir = crate::support::repo_root().join("testdata/fuzz/loader");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 12, "corpus walk found {} files", files.len());
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let (model, graph, _) = compile(&text);
        print_everything(&model, &graph);
        // Positions of every diagnostic are within the text.
        let (_, diags) = load(&[SourceText {
            name: "f",
            text: &text,
        }]);
        for d in diags {
            if let Some(l) = d.line {
                assert!(
                    l as usize <= text.lines().count().max(1),
                    "{}: {d}",
                    f.display()
                );
            }
        }
    }
}

/// Label values and annotations as hostile as YAML allows (quotes, separators, control
/// characters, bidi overrides, emoji): names are DNS labels by validation, so printed
/// tables stay well formed.
fn hostile_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{1,8}",
        "\\PC{0,12}",
        Just("a,b".to_string()),
        Just("|pipe|".to_string()),
        Just("\"quoted\"".to_string()),
        Just("\u{202e}rtl".to_string()),
        Just("line\nbreak".to_string()),
        Just("\u{1F600}".to_string()),
    ]
}

fn hostile_name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        "\\PC{1,10}",
        Just("a".repeat(64))
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Hostile names and label values, through loading, validation and every printer.
    #[test]
    fn hostile_names_and_labels_print_well_formed(
        pods in proptest::collection::vec((hostile_name(), hostile_value(), hostile_value()), 1..6),
        selector_value in hostile_value(),
    ) {
        let mut docs = vec![CLUSTER.to_string()];
        for (i, (name, v1, v2)) in pods.iter().enumerate() {
            let pod = serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": "x", "labels": {"pod": v1, "k": v2},
                             "annotations": {"note": v2}},
                "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 80, "name": "http"}]}]},
                "status": {"phase": "Running", "podIP": format!("10.0.3.{}", i + 1)},
            });
            docs.push(pod.to_string());
        }
        docs.push(serde_json::json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": selector_value}},
                     "ingress": [{"from": [{"podSelector": {"matchExpressions":
                        [{"key": "k", "operator": "In", "values": [selector_value]}]}}]}]},
        }).to_string());
        let text = docs.join("\n---\n");
        let (model, graph, _) = compile(&text);
        print_everything(&model, &graph);
    }

    /// Arbitrary bytes through every printer (most fail to load: the rest must print).
    #[test]
    fn arbitrary_text_prints_or_reports(text in "\\PC{0,200}") {
        let (model, graph, _) = compile(&text);
        print_everything(&model, &graph);
    }
}

/// A Service selecting `pod: a` in x (x/a, or x/b too when it carries the label) with a
/// named and a numeric port, and one with an unrelated selector.
const SERVICES: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: x}\nspec:\n  clusterIP: 10.96.0.1\n  selector: {pod: a}\n  ports:\n  - {name: web, port: 8080, targetPort: serve-80-tcp}\n  - {name: dns, port: 53, protocol: UDP, targetPort: 81}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: all, namespace: y}\nspec:\n  clusterIP: 10.96.0.2\n  selector: {pod: c}\n  ports:\n  - {port: 80}\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Through a Service, each backend's verdict is the direct verdict to that backend on
    /// its target port, except hairpin, which is judged instead of exempt.
    // See: #10
    #[test]
    fn via_service_equals_direct_to_the_backend(
        policies in proptest::collection::vec(0usize..1, 0..4)
            .prop_flat_map(|v| (0..v.len()).map(policy).collect::<Vec<_>>()),
        host_b in any::<bool>(),
    ) {
        let mut docs = policies.clone();
        docs.push(SERVICES.to_string());
        let text = cluster(&docs, host_b);
        let (model, graph, _) = compile(&text);
        prop_assert_eq!(model.services.len(), 2);
        for src in &model.endpoints {
            for svc in &model.services {
                for (i, sp) in svc.ports.iter().enumerate() {
                    for flow in graph.reach_service(&model, Subject::Endpoint(src.id), svc, i) {
                        let direct = graph.reach(&model, Subject::Endpoint(src.id), flow.backend);
                        let want = if flow.hairpin {
                            flow.reach.egress.allowed.contains(sp.protocol, flow.target_port)
                                && flow.reach.ingress.allowed.contains(sp.protocol, flow.target_port)
                        } else {
                            direct.allowed.contains(sp.protocol, flow.target_port)
                        };
                        prop_assert_eq!(flow.allowed, want);
                        if !flow.hairpin {
                            prop_assert_eq!(&flow.reach, &direct);
                        }
                        // Named targetPort: the backend's own container port.
                        if sp.name.as_deref() == Some("web") {
                            prop_assert_eq!(flow.target_port, 80);
                        }
                    }
                }
            }
        }
    }
}

/// A generated ClusterNetworkPolicy rule: action, peers, optional protocols. See: #13
fn cnp_rule(dir: &'static str) -> impl Strategy<Value = String> {
    let action = prop_oneof![Just("Accept"), Just("Deny"), Just("Pass")];
    let pod_peer = prop_oneof![
        Just("{namespaces: {}}".to_string()),
        Just("{namespaces: {matchLabels: {ns: y}}}".to_string()),
        Just("{pods: {podSelector: {matchLabels: {pod: a}}}}".to_string()),
        Just("{pods: {namespaceSelector: {matchLabels: {ns: x}}, podSelector: {}}}".to_string()),
    ];
    let egress_peer = prop_oneof![
        Just("{networks: [10.0.1.0/24]}".to_string()),
        Just("{networks: ['::/0', 10.0.2.1/32]}".to_string()),
        Just("{nodes: {}}".to_string()),
    ];
    let peer = if dir == "egress" {
        prop_oneof![pod_peer, egress_peer].boxed()
    } else {
        pod_peer.boxed()
    };
    let protocols = prop_oneof![
        Just(String::new()),
        Just(", protocols: [{tcp: {destinationPort: {number: 80}}}]".to_string()),
        Just(", protocols: [{udp: {destinationPort: {range: {start: 80, end: 85}}}}, {sctp: {destinationPort: {number: 81}}}]".to_string()),
        Just(", protocols: [{destinationNamedPort: serve-81-udp}]".to_string()),
    ];
    let key = if dir == "egress" { "to" } else { "from" };
    (action, proptest::collection::vec(peer, 1..3), protocols).prop_map(move |(a, ps, pr)| {
        // The CEL rule: no named port with networks/nodes peers.
        let pr = if pr.contains("Named")
            && ps
                .iter()
                .any(|p| p.contains("networks") || p.contains("nodes"))
        {
            String::new()
        } else {
            pr
        };
        format!("  - {{action: {a}, {key}: [{}]{pr}}}\n", ps.join(", "))
    })
}

fn cnp(i: usize) -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("Admin"), Just("Baseline")],
        0u16..3,
        prop_oneof![
            Just("{namespaces: {}}"),
            Just("{namespaces: {matchLabels: {ns: x}}}"),
            Just("{pods: {podSelector: {matchLabels: {pod: a}}}}"),
        ],
        proptest::collection::vec(cnp_rule("ingress"), 0..3),
        proptest::collection::vec(cnp_rule("egress"), 0..3),
    )
        .prop_map(move |(tier, prio, subject, ing, eg)| {
            let mut s = format!(
                "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: c{i}}}\nspec:\n  tier: {tier}\n  priority: {prio}\n  subject: {subject}\n"
            );
            if !ing.is_empty() {
                s.push_str("  ingress:\n");
                s.extend(ing);
            }
            if !eg.is_empty() {
                s.push_str("  egress:\n");
                s.extend(eg);
            }
            s
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, .. ProptestConfig::default() })]

    /// Mutated ClusterNetworkPolicy manifests: never panic, and nothing with an error is
    /// compiled. See: #13
    #[test]
    fn mutated_cluster_policies_never_panic(cut in 0usize..1400, insert in "[ :{}\\[\\]\\-a-z0-9'\"\n]{0,8}") {
        let base = cluster(&[
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: c}\nspec:\n  tier: Admin\n  priority: 5\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}}\n  ingress:\n  - {name: r, action: Deny, from: [{namespaces: {matchLabels: {ns: y}}}], protocols: [{tcp: {destinationPort: {range: {start: 80, end: 90}}}}]}\n  egress:\n  - {action: Pass, to: [{networks: [10.0.0.0/8]}, {nodes: {}}]}\n  - {action: Accept, to: [{domainNames: ['*.example.com']}]}\n".to_string()
        ], false);
        let at = cut.min(base.len());
        let at = (0..=at).rev().find(|i| base.is_char_boundary(*i)).unwrap_or(0);
        let text = format!("{}{}{}", &base[..at], insert, &base[at..]);
        let (inputs, mut diags) = load(&[SourceText { name: "fuzz.yaml", text: &text }]);
        let (model, d) = Model::build(&inputs);
        diags.extend(d);
        if diags.iter().any(|d| d.is_error() && d.object.as_ref().is_some_and(|o| o.kind == "ClusterNetworkPolicy")) {
            prop_assert!(model.cluster_policies.is_empty());
        }
        let graph = AllowGraph::build(&model);
        print_everything(&model, &graph);
    }

    /// Generated ClusterNetworkPolicies (with or without a NetworkPolicy): deterministic,
    /// matrix == explain, self traffic allowed, and every denied side names who denied it
    /// (a ClusterNetworkPolicy Deny, or the NetworkPolicy tier). See: #13
    #[test]
    fn cluster_policy_answers_hold_invariants(
        cnps in proptest::collection::vec(0usize..1, 0..3)
            .prop_flat_map(|v| (0..v.len()).map(cnp).collect::<Vec<_>>()),
        nps in proptest::collection::vec(0usize..1, 0..2)
            .prop_flat_map(|v| (0..v.len()).map(policy).collect::<Vec<_>>()),
        host_b in any::<bool>(),
        port in prop_oneof![Just(80u16), Just(81), Just(85)],
        proto in prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)],
    ) {
        let mut all = cnps.clone();
        all.extend(nps);
        let text = cluster(&all, host_b);
        let (model, graph, _) = compile(&text);
        let (model2, graph2, _) = compile(&text);
        prop_assert_eq!(graph.dump(&model), graph2.dump(&model2));
        let q = MatrixQuery { protocol: Some(proto), port: Some(port) };
        let m = matrix(&model, &graph, q);
        for (i, s) in model.endpoints.iter().enumerate() {
            for (j, d) in model.endpoints.iter().enumerate() {
                let e = explain(&model, &graph, Subject::Endpoint(s.id), Subject::Endpoint(d.id),
                    Some(PortQuery { protocol: proto, port }));
                prop_assert_eq!(e.allowed, m.allowed[i][j]);
                if i == j {
                    prop_assert!(e.allowed);
                    continue;
                }
                for side in [&e.egress, &e.ingress] {
                    if side.allowed || e.from_node {
                        continue;
                    }
                    let by_cluster = side.tiers.as_ref().and_then(|t| t.decided_by.as_ref())
                        .is_some_and(|d| d.action == "Deny");
                    prop_assert!(by_cluster || (side.isolated && side.nearest_miss.is_some()), "{}", e);
                }
            }
        }
    }
}

/// `doc` with `netpol.io/mode: audit` in its metadata (a generated NetworkPolicy or
/// ClusterNetworkPolicy: `metadata: {name: ...`).
fn annotate_audit(doc: &str) -> String {
    doc.replacen(
        "metadata: {name:",
        "metadata: {annotations: {netpol.io/mode: audit}, name:",
        1,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, .. ProptestConfig::default() })]

    /// Audit policies (#12): annotating any subset of the policies of a generated cluster
    /// never changes the enforced matrix beyond leaving those policies out (the matrix of
    /// the cluster without them, cell for cell, traffic included), and the audited matrix
    /// is the matrix of the cluster with them enforced. Without an annotation the audited
    /// view does not exist and the matrix is unchanged. See: #12
    #[test]
    fn audit_annotation_never_changes_the_enforced_matrix(
        cnps in proptest::collection::vec(0usize..1, 0..3)
            .prop_flat_map(|v| (0..v.len()).map(cnp).collect::<Vec<_>>()),
        nps in proptest::collection::vec(0usize..1, 0..4)
            .prop_flat_map(|v| (0..v.len()).map(policy).collect::<Vec<_>>()),
        mask in proptest::collection::vec(any::<bool>(), 7),
        host_b in any::<bool>(),
    ) {
        let mut all = cnps.clone();
        all.extend(nps);
        let audited: Vec<String> = all.iter().zip(&mask)
            .map(|(d, m)| if *m { annotate_audit(d) } else { d.clone() })
            .collect();
        let without: Vec<String> = all.iter().zip(&mask)
            .filter(|(_, m)| !**m)
            .map(|(d, _)| d.clone())
            .collect();
        let (m_all, g_all, _) = compile(&cluster(&all, host_b));
        let (m_aud, g_aud, _) = compile(&cluster(&audited, host_b));
        let (m_wo, g_wo, _) = compile(&cluster(&without, host_b));
        let view = policy_compiler::AuditView::of(&m_aud);
        let any_audit = !m_aud.audit_policies.is_empty() || !m_aud.audit_cluster_policies.is_empty();
        prop_assert_eq!(view.is_some(), any_audit);
        for q in [
            MatrixQuery::default(),
            MatrixQuery { protocol: Some(Protocol::Udp), port: Some(81) },
        ] {
            let enforced = policy_compiler::matrix_with_audit(&m_aud, &g_aud, view.as_ref(), q);
            let expect_enforced = matrix(&m_wo, &g_wo, q);
            prop_assert_eq!(&enforced.allowed, &expect_enforced.allowed);
            prop_assert_eq!(&enforced.traffic, &expect_enforced.traffic);
            let expect_audited = matrix(&m_all, &g_all, q);
            match &view {
                Some(_) => {
                    prop_assert_eq!(enforced.audited_allowed.as_ref(), Some(&expect_audited.allowed));
                    prop_assert_eq!(&enforced.audited_traffic, &expect_audited.traffic);
                }
                None => {
                    prop_assert_eq!(&enforced.allowed, &expect_audited.allowed);
                    prop_assert_eq!(&enforced.traffic, &expect_audited.traffic);
                    prop_assert_eq!(enforced.to_text(), expect_enforced.to_text());
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, .. ProptestConfig::default() })]

    /// Any `netpol.io/mode` value (any size, any characters): never a panic; `audit` and
    /// `enforce` compile, anything else is exactly one error at the annotation's path and
    /// the policy is left out. See: #12
    #[test]
    fn any_mode_value_is_audit_enforce_or_one_error(
        value in prop_oneof![
            Just("audit".to_string()),
            Just("enforce".to_string()),
            "\\PC{0,40}",
            "[\\x00-\\x7f]{0,20}",
            (0usize..20_000).prop_map(|n| "a".repeat(n)),
        ],
        cluster_kind in any::<bool>(),
    ) {
        // A YAML double-quoted scalar with every other character escaped: any content
        // survives the parser.
        let mut quoted = String::from("\"");
        for c in value.chars() {
            match c {
                ' ' => quoted.push(c),
                c if c.is_ascii_graphic() && c != '"' && c != '\\' => quoted.push(c),
                c if u32::from(c) <= 0xffff => quoted.push_str(&format!("\\u{:04x}", u32::from(c))),
                c => quoted.push_str(&format!("\\U{:08x}", u32::from(c))),
            }
        }
        quoted.push('"');
        let doc = if cluster_kind {
            format!("apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata:\n  name: c\n  annotations:\n    netpol.io/mode: {quoted}\nspec: {{tier: Admin, priority: 1, subject: {{namespaces: {{}}}}}}\n")
        } else {
            format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\n  namespace: x\n  annotations:\n    netpol.io/mode: {quoted}\nspec: {{podSelector: {{}}}}\n")
        };
        let (inputs, d) = load(&[SourceText { name: "mode.yaml", text: &doc }]);
        prop_assert!(d.iter().all(|d| !d.is_error()), "{:?}", d);
        let (model, d) = Model::build(&inputs);
        let errors: Vec<_> = d.iter().filter(|d| d.is_error()).collect();
        let compiled = model.policies.len() + model.cluster_policies.len()
            + model.audit_policies.len() + model.audit_cluster_policies.len();
        match value.as_str() {
            "audit" | "enforce" => {
                prop_assert!(errors.is_empty(), "{:?}", errors);
                prop_assert_eq!(compiled, 1);
                prop_assert_eq!(model.has_audit(), value == "audit");
            }
            _ => {
                prop_assert_eq!(errors.len(), 1, "{:?}", errors);
                prop_assert_eq!(errors[0].field.as_deref(), Some("metadata.annotations[\"netpol.io/mode\"]"));
                prop_assert_eq!(errors[0].line, Some(if cluster_kind { 6 } else { 7 }));
                prop_assert!(errors[0].value.as_ref().is_some_and(|v| v.chars().count() <= 67));
                prop_assert_eq!(compiled, 0);
                let _ = errors[0].to_string();
            }
        }
    }
}
