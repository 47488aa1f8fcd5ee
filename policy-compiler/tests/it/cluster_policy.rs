//! ClusterNetworkPolicy (policy.networking.k8s.io/v1alpha2): loading, validation and the
//! tier walk (Admin, NetworkPolicy, Baseline, default), each side on its own. See: #13

use policy_compiler::graph::Decision;
use policy_compiler::model::{Action, Tier};
use policy_compiler::{AllowGraph, Diagnostic, Model, Protocol, SourceText, Subject, load};

const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue}}
---
apiVersion: v1
kind: Node
metadata: {name: n1, labels: {kubernetes.io/os: linux}}
status: {addresses: [{type: InternalIP, address: 192.168.0.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: a, labels: {app: p}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{containerPort: 80, name: web}, {containerPort: 53, protocol: UDP, name: dns}]}]
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: q, namespace: b, labels: {app: q}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{containerPort: 8080, name: web}]}]
status: {phase: Running, podIP: 10.0.0.2, podIPs: [{ip: 10.0.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: b, labels: {app: h}}
spec:
  nodeName: n1
  hostNetwork: true
  containers: [{name: c}]
status: {phase: Running, podIP: 192.168.0.10, podIPs: [{ip: 192.168.0.10}]}
";

fn compile(policies: &str) -> (Model, AllowGraph, Vec<Diagnostic>) {
    let text = format!("{CLUSTER}---\n{policies}");
    let (inputs, mut diags) = load(&[SourceText {
        name: "t.yaml",
        text: &text,
    }]);
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    let graph = AllowGraph::build(&model);
    (model, graph, diags)
}

fn ok(policies: &str) -> (Model, AllowGraph) {
    let (m, g, d) = compile(policies);
    assert!(d.iter().all(|d| !d.is_error()), "{d:#?}");
    (m, g)
}

fn allowed(m: &Model, g: &AllowGraph, from: &str, to: &str, proto: Protocol, port: u16) -> bool {
    let s = Subject::parse(m, from).unwrap();
    let d = Subject::parse(m, to).unwrap();
    g.reach(m, s, d).allowed.contains(proto, port)
}

fn errors(policies: &str) -> Vec<(String, String)> {
    let (m, _, d) = compile(policies);
    assert!(m.cluster_policies.is_empty(), "compiled from a bad object");
    d.iter()
        .filter(|d| d.is_error())
        .map(|d| (d.field.clone().unwrap_or_default(), d.message.clone()))
        .collect()
}

fn cnp(name: &str, tier: &str, priority: u32, body: &str) -> String {
    format!(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n{body}---\n"
    )
}

const SUBJECT_A: &str = "  subject: {namespaces: {matchLabels: {team: red}}}\n";

#[test]
fn admin_rules_in_order_first_match_decides_per_port() {
    let p = cnp(
        "ingress",
        "Admin",
        10,
        &format!(
            "{SUBJECT_A}  ingress:\n  - {{name: web, action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}\n  - {{name: rest, action: Deny, from: [{{pods: {{namespaceSelector: {{matchLabels: {{team: blue}}}}, podSelector: {{}}}}}}]}}\n"
        ),
    );
    let (m, g) = ok(&p);
    assert!(allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 80));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 81));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Udp, 53));
    // Pod to itself by its own IP: not subject to ClusterNetworkPolicy.
    assert!(allowed(&m, &g, "a/p", "a/p", Protocol::Tcp, 81));
    // hostNetwork Pods are no peers of `namespaces`: the Deny does not match them, and a
    // Pod's own node may always reach it.
    assert!(allowed(&m, &g, "b/h", "a/p", Protocol::Tcp, 81));
    // The deciding rule.
    let r = g.reach(
        &m,
        Subject::parse(&m, "b/q").unwrap(),
        Subject::parse(&m, "a/p").unwrap(),
    );
    let Decision::Cluster(i) = r.ingress.tiers.decision(false, Protocol::Tcp, 81) else {
        panic!("{:?}", r.ingress.tiers)
    };
    let mt = &r.ingress.tiers.matches[i];
    assert_eq!(
        (mt.tier, mt.rule, mt.action),
        (Tier::Admin, 1, Action::Deny)
    );
    assert_eq!(m.cluster_policy(mt.policy).name, "ingress");
}

#[test]
fn admin_over_network_policy_over_baseline() {
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-80, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n---\n";
    let admin = cnp(
        "admin",
        "Admin",
        1,
        &format!(
            "{SUBJECT_A}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}\n  - {{action: Accept, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 81}}}}}}]}}\n  - {{action: Pass, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 82, end: 90}}}}}}}}]}}\n"
        ),
    );
    let baseline = cnp(
        "baseline",
        "Baseline",
        1,
        &format!("{SUBJECT_A}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}\n"),
    );
    let (m, g) = ok(&format!("{np}{admin}{baseline}"));
    // Admin Deny beats the NetworkPolicy's allow; Admin Accept beats its isolation.
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 80));
    assert!(allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 81));
    // Passed to the NetworkPolicy, which isolates and does not allow 85.
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 85));
    // Without the NetworkPolicy the Baseline Deny decides what Admin passed or left.
    let (m, g) = ok(&format!("{admin}{baseline}"));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 85));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Udp, 5353));
    assert!(allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 81));
    // The other direction has no rules: allowed by default.
    assert!(allowed(&m, &g, "a/p", "b/q", Protocol::Tcp, 85));
}

#[test]
fn baseline_pass_falls_through_to_default_allow_and_np_overrides_baseline() {
    let baseline = cnp(
        "baseline",
        "Baseline",
        5,
        &format!(
            "{SUBJECT_A}  ingress:\n  - {{action: Pass, from: [{{namespaces: {{matchLabels: {{team: blue}}}}}}]}}\n  - {{action: Deny, from: [{{namespaces: {{}}}}]}}\n"
        ),
    );
    let (m, g) = ok(&baseline);
    assert!(allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 80));
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n";
    let (m, g) = ok(&format!("{np}{baseline}"));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 80));
}

#[test]
fn egress_accept_still_needs_ingress_at_the_destination() {
    let egress = cnp(
        "egress",
        "Admin",
        1,
        "  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: q}}}}\n  egress:\n  - {action: Accept, to: [{networks: [10.0.0.0/24]}]}\n",
    );
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n---\n";
    let (m, g) = ok(&format!("{egress}{np}"));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 80));
    let r = g.reach(
        &m,
        Subject::parse(&m, "b/q").unwrap(),
        Subject::parse(&m, "a/p").unwrap(),
    );
    assert!(r.egress.allowed.is_all());
}

#[test]
fn named_ports_resolve_per_destination_any_protocol() {
    let egress = cnp(
        "named",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - {action: Accept, to: [{namespaces: {}}], protocols: [{destinationNamedPort: web}, {destinationNamedPort: dns}]}\n  - {action: Deny, to: [{namespaces: {}}]}\n",
    );
    let (m, g) = ok(&egress);
    assert!(allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 80));
    assert!(allowed(&m, &g, "b/q", "a/p", Protocol::Udp, 53));
    assert!(!allowed(&m, &g, "b/q", "a/p", Protocol::Tcp, 8080));
    assert!(allowed(&m, &g, "a/p", "b/q", Protocol::Tcp, 8080));
    assert!(!allowed(&m, &g, "a/p", "b/q", Protocol::Tcp, 80));
}

#[test]
fn node_peers_select_node_addresses_and_networks_match_addresses() {
    let egress = cnp(
        "nodes",
        "Admin",
        1,
        "  subject: {namespaces: {matchLabels: {team: red}}}\n  egress:\n  - {action: Accept, to: [{nodes: {matchLabels: {kubernetes.io/os: linux}}}], protocols: [{tcp: {destinationPort: {number: 10250}}}]}\n  - {action: Deny, to: [{nodes: {}}, {networks: [0.0.0.0/0]}]}\n",
    );
    let (m, g) = ok(&egress);
    assert!(allowed(&m, &g, "a/p", "b/h", Protocol::Tcp, 10250));
    assert!(allowed(&m, &g, "a/p", "192.168.0.10", Protocol::Tcp, 10250));
    assert!(!allowed(&m, &g, "a/p", "b/h", Protocol::Tcp, 22));
    assert!(!allowed(&m, &g, "a/p", "b/q", Protocol::Tcp, 80));
    assert!(!allowed(&m, &g, "a/p", "203.0.113.1", Protocol::Tcp, 443));
    // hostNetwork Pods are never subjects.
    assert!(allowed(&m, &g, "b/h", "203.0.113.1", Protocol::Tcp, 443));
}

#[test]
fn domain_names_match_nothing_offline() {
    let egress = cnp(
        "dns",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - {action: Accept, to: [{domainNames: [example.com, '*.example.org']}]}\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n",
    );
    let (m, g) = ok(&egress);
    assert!(!allowed(&m, &g, "a/p", "93.184.216.34", Protocol::Tcp, 443));
    // explain says why.
    let e = policy_compiler::explain(
        &m,
        &g,
        Subject::parse(&m, "a/p").unwrap(),
        Subject::parse(&m, "93.184.216.34").unwrap(),
        None,
    );
    let t = e.egress.tiers.as_ref().unwrap();
    assert_eq!(t.undecidable.len(), 1, "{e}");
    assert!(e.to_string().contains(
        "note: dns egress rule 0 (Accept): domainNames example.com, *.example.org cannot be decided offline (treated as matching nothing)"
    ), "{e}");
    // Deny/Pass rules with domainNames: accepted by the API server, unsupported upstream.
    let deny = cnp(
        "dns",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - {action: Deny, to: [{domainNames: [example.com]}]}\n",
    );
    let (_, _, d) = compile(&deny);
    assert!(
        d.iter()
            .any(|d| !d.is_error() && d.message.contains("only supported for Accept rules")),
        "{d:?}"
    );
}

#[test]
fn equal_priorities_with_overlapping_subjects_warn() {
    let a = cnp("a1", "Admin", 7, &format!("{SUBJECT_A}  ingress: []\n"));
    let b = cnp("a2", "Admin", 7, "  subject: {namespaces: {}}\n");
    let c = cnp("a3", "Baseline", 7, "  subject: {namespaces: {}}\n");
    let (_, _, d) = compile(&format!("{a}{b}{c}"));
    let w: Vec<_> = d.iter().filter(|d| !d.is_error()).collect();
    assert_eq!(w.len(), 1, "{d:#?}");
    assert!(
        w[0].message
            .contains("same tier (Admin) and priority as ClusterNetworkPolicy a1")
    );
    assert_eq!(w[0].field.as_deref(), Some("spec.priority"));
}

#[test]
fn invalid_objects_are_errors_with_field_paths_and_nothing_is_compiled() {
    let e = errors(&cnp(
        "bad",
        "Middle",
        1001,
        "  subject: {namespaces: {}, pods: {podSelector: {}}}\n",
    ));
    let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(fields, ["spec.tier", "spec.priority", "spec.subject"]);
    let e = errors(&cnp(
        "bad",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  egress:\n  - {action: Allow, to: []}\n  - {action: Deny, to: [{}], protocols: []}\n  - {action: Deny, to: [{networks: [10.0.0.0/33, 10.0.0.0/8, 10.0.0.0/8]}]}\n  - {action: Deny, to: [{namespaces: {}}], protocols: [{tcp: {destinationPort: {range: {start: 90, end: 90}}}}, {tcp: {}}, {udp: {destinationPort: {number: 0}}}, {tcp: {destinationPort: {number: 1}}, udp: {destinationPort: {number: 1}}}]}\n  - {action: Accept, to: [{networks: [10.0.0.0/8]}], protocols: [{destinationNamedPort: web}]}\n",
    ));
    let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        [
            "spec.egress[0].action",
            "spec.egress[0].to",
            "spec.egress[1].to[0]",
            "spec.egress[1].protocols",
            "spec.egress[2].to[0].networks[0]",
            "spec.egress[2].to[0].networks[2]",
            "spec.egress[3].protocols[0].tcp.destinationPort.range",
            "spec.egress[3].protocols[1].tcp",
            "spec.egress[3].protocols[2].udp.destinationPort.number",
            "spec.egress[3].protocols[3]",
            "spec.egress[4]",
        ],
        "{e:#?}"
    );
    // Ingress peers are namespaces/pods only; unknown fields are rejected by name.
    let e = errors(&cnp(
        "bad",
        "Admin",
        1,
        "  subject: {namespaces: {}}\n  ingress:\n  - {action: Deny, from: [{networks: [10.0.0.0/8]}]}\n",
    ));
    assert_eq!(e[0].0, "spec.ingress[0].from[0].networks", "{e:#?}");
    assert!(e[0].1.contains("unknown field `networks`"), "{e:#?}");
    // Too many rules.
    let rules: String = (0..26)
        .map(|_| "  - {action: Deny, from: [{namespaces: {}}]}\n")
        .collect();
    let e = errors(&cnp(
        "bad",
        "Admin",
        1,
        &format!("{SUBJECT_A}  ingress:\n{rules}"),
    ));
    assert_eq!(e[0].0, "spec.ingress");
}

#[test]
fn v1alpha1_kinds_are_errors_naming_the_replacement() {
    let (_, _, d) = compile(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: anp}\nspec: {priority: 1}\n---\napiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec: {}\n",
    );
    let e: Vec<_> = d.iter().filter(|d| d.is_error()).collect();
    assert_eq!(e.len(), 2, "{d:#?}");
    assert!(e[0].message.contains("`tier: Admin`"), "{}", e[0]);
    assert!(e[1].message.contains("`tier: Baseline`"), "{}", e[1]);
    assert!(e[0].line.is_some());
}

#[test]
fn explain_walks_the_tiers_and_names_the_deciding_rule() {
    use policy_compiler::{PortQuery, explain};
    let np = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: only-80, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{ports: [{port: 80}]}]\n---\n";
    let admin = cnp(
        "guard",
        "Admin",
        2,
        &format!(
            "{SUBJECT_A}  ingress:\n  - {{name: no-blue-ssh, action: Deny, from: [{{namespaces: {{matchLabels: {{team: blue}}}}}}], protocols: [{{tcp: {{destinationPort: {{number: 22}}}}}}]}}\n  - {{name: delegate, action: Pass, from: [{{namespaces: {{}}}}]}}\n"
        ),
    );
    let baseline = cnp(
        "default-deny",
        "Baseline",
        9,
        &format!(
            "{SUBJECT_A}  ingress:\n  - {{name: deny-all, action: Deny, from: [{{namespaces: {{}}}}]}}\n"
        ),
    );
    let (m, g) = ok(&format!("{np}{admin}{baseline}"));
    let q = |port| {
        Some(PortQuery {
            protocol: Protocol::Tcp,
            port,
        })
    };
    let (src, dst) = (
        Subject::parse(&m, "b/q").unwrap(),
        Subject::parse(&m, "a/p").unwrap(),
    );
    // Admin Deny decides 22: the rule is named, no NetworkPolicy nearest miss.
    let e = explain(&m, &g, src, dst, q(22));
    assert!(!e.allowed);
    let text = e.to_string();
    assert!(
        text.contains(
            "denied by Admin tier ClusterNetworkPolicy guard ingress rule 0 \"no-blue-ssh\" (Deny)"
        ),
        "{text}"
    );
    assert!(text.contains("NetworkPolicy tier: not reached"), "{text}");
    assert!(e.ingress.nearest_miss.is_none());
    let t = e.ingress.tiers.as_ref().unwrap();
    assert_eq!(t.applied, ["guard (Admin 2)", "default-deny (Baseline 9)"]);
    let d = t.decided_by.as_ref().unwrap();
    assert_eq!((d.tier, d.action, d.rule), ("Admin", "Deny", Some(0)));
    // Passed to the NetworkPolicy, which allows 80 and denies 443 (nearest miss given);
    // the Baseline is not reached because a NetworkPolicy isolates the Pod.
    let e = explain(&m, &g, src, dst, q(80));
    assert!(e.allowed, "{e}");
    let e = explain(&m, &g, src, dst, q(443));
    assert!(!e.allowed);
    let text = e.to_string();
    assert!(
        text.contains("denied by the NetworkPolicy tier (after Pass by guard rule 1 \"delegate\")"),
        "{text}"
    );
    assert!(e.ingress.nearest_miss.is_some(), "{text}");
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(
        json["ingress"]["tiers"]["decided_by"]["tier"],
        "NetworkPolicy"
    );
    assert_eq!(json["ingress"]["tiers"]["baseline"], serde_json::json!([]));
    // Without the NetworkPolicy the Baseline decides.
    let (m, g) = ok(&format!("{admin}{baseline}"));
    let e = explain(&m, &g, src, dst, q(443));
    assert!(!e.allowed);
    assert!(
        e.to_string().contains(
            "denied by Baseline tier ClusterNetworkPolicy default-deny ingress rule 0 \"deny-all\" (Deny) (after Pass by guard rule 1 \"delegate\")"
        ),
        "{e}"
    );
    // No ClusterNetworkPolicy applies to the egress side: no tier walk in the JSON.
    let json = serde_json::to_value(&e).unwrap();
    assert!(json["egress"].get("tiers").is_none());
}

/// The transcribed upstream conformance suite (testdata/cases/cnp, see its README): every
/// PokeServer assertion agrees in `explain` and in `matrix` (expect.yaml itself is checked
/// by the golden-case test). Prints the per-test counts that docs/cluster-network-policy.md
/// tabulates.
#[test]
fn upstream_conformance_agrees_in_explain_and_matrix() {
    use std::collections::BTreeMap;

    use policy_compiler::expect::parse_expectations;
    use policy_compiler::{MatrixQuery, PortQuery, explain, matrix};

    use crate::support::{compile_files, manifest_files, repo_root};

    let root = repo_root().join("testdata/cases/cnp");
    let dirs = crate::cases::case_dirs(&root);
    assert!(
        dirs.len() >= 62,
        "expected the transcribed cases under {}",
        root.display()
    );
    // Per upstream test (tier/case directory): (assertions, agreeing in explain, in matrix).
    let mut per_test: BTreeMap<String, (usize, usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for dir in &dirs {
        let rel = dir.strip_prefix(&root).unwrap();
        let test = rel.parent().unwrap().display().to_string();
        let (model, graph, diags) = compile_files(&manifest_files(dir));
        assert!(
            diags.iter().all(|d| !d.is_error()),
            "{}: {diags:?}",
            rel.display()
        );
        let exp =
            parse_expectations(&std::fs::read_to_string(dir.join("expect.yaml")).unwrap()).unwrap();
        let mut matrices: BTreeMap<(Protocol, u16), policy_compiler::Matrix> = BTreeMap::new();
        for a in &exp.assertions {
            let protocol: Protocol = a.protocol.as_deref().unwrap_or("TCP").parse().unwrap();
            let (src, dst) = (
                Subject::parse(&model, &a.from).unwrap(),
                Subject::parse(&model, &a.to).unwrap(),
            );
            let e = explain(
                &model,
                &graph,
                src,
                dst,
                Some(PortQuery {
                    protocol,
                    port: a.port,
                }),
            );
            let m = matrices.entry((protocol, a.port)).or_insert_with(|| {
                matrix(
                    &model,
                    &graph,
                    MatrixQuery {
                        protocol: Some(protocol),
                        port: Some(a.port),
                    },
                )
            });
            let idx = |s: &str| m.endpoints.iter().position(|n| n == s).unwrap();
            let cell = m.allowed[idx(&a.from)][idx(&a.to)];
            let counts = per_test.entry(test.clone()).or_default();
            counts.0 += 1;
            counts.1 += usize::from(e.allowed == a.allowed);
            counts.2 += usize::from(cell == a.allowed);
            if e.allowed != a.allowed || cell != a.allowed {
                failures.push(format!(
                    "{}: {} -> {} {protocol} {}: upstream {}, explain {}, matrix {cell}\n{e}",
                    rel.display(),
                    a.from,
                    a.to,
                    a.port,
                    a.allowed,
                    e.allowed
                ));
            }
        }
    }
    let count = |v6: bool| -> usize {
        per_test
            .iter()
            .filter(|(t, _)| t.starts_with("ipv6/") == v6)
            .map(|(_, c)| c.0)
            .sum()
    };
    for (t, (n, e, m)) in &per_test {
        println!("{t:<32} {n:>3} assertions, {e:>3} agree in explain, {m:>3} in matrix");
    }
    println!(
        "{} tests, {} assertions (+ {} in the IPv6 variant)",
        per_test.len(),
        count(false),
        count(true)
    );
    assert_eq!(
        count(false),
        301,
        "the upstream suite has 301 PokeServer assertions"
    );
    assert_eq!(
        count(true),
        63,
        "the IPv6 variant of the address-dependent tests"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn lint_exposure_follows_the_tiers() {
    use policy_compiler::lint::{LintOptions, lint};
    let egress = cnp(
        "no-internet",
        "Baseline",
        1,
        "  subject: {namespaces: {matchLabels: {team: red}}}\n  egress:\n  - {action: Deny, to: [{networks: [0.0.0.0/0]}]}\n",
    );
    let (m, g) = ok(&egress);
    let findings = lint(&m, &g, LintOptions { exposure: true });
    let np102 = |key: &str| {
        findings
            .iter()
            .filter(|f| f.rule.id == "NP102" && f.object == key)
            .count()
    };
    // a/p cannot reach outside any more; b/q (no policy at all) still may.
    assert_eq!(np102("a/p"), 0, "{findings:#?}");
    assert_eq!(np102("b/q"), 1, "{findings:#?}");
}

#[test]
fn services_are_judged_after_dnat_with_the_tiers_and_hairpin_is_not_exempt() {
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: p}\n  ports: [{port: 8080, targetPort: web}]\n---\n";
    let deny = cnp(
        "guard",
        "Admin",
        1,
        &format!(
            "{SUBJECT_A}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}]}}\n"
        ),
    );
    let (m, g) = ok(&format!("{svc}{deny}"));
    let svc = m.service("a/web").unwrap();
    for src in ["b/q", "a/p"] {
        let flows = g.reach_service(&m, Subject::parse(&m, src).unwrap(), svc, 0);
        assert_eq!(flows.len(), 1);
        // Service port 8080 -> targetPort web (80) on a/p: the Admin Deny on 80 decides,
        // for the hairpin flow a/p -> a/p too.
        assert_eq!(flows[0].target_port, 80);
        assert!(!flows[0].allowed, "{src}");
    }
    // Directly to its own IP a Pod is exempt.
    assert!(allowed(&m, &g, "a/p", "a/p", Protocol::Tcp, 80));
}

#[test]
fn nodes_peers_without_node_objects_warn() {
    let egress = "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: n}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  egress:\n  - {action: Deny, to: [{networks: [10.0.0.0/8]}, {nodes: {}}]}\n";
    let (inputs, _) = load(&[SourceText {
        name: "t.yaml",
        text: egress,
    }]);
    let (_, d) = Model::build(&inputs);
    assert_eq!(d.len(), 1, "{d:#?}");
    assert_eq!(d[0].field.as_deref(), Some("spec.egress[0].to[1].nodes"));
    assert!(!d[0].is_error());
    // With Node objects (the shared cluster of this file): no warning.
    let (_, _, d) = compile(egress);
    assert!(d.is_empty(), "{d:#?}");
}
