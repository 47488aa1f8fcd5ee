use super::*;
use crate::{SourceText, load};

fn build(yaml: &str) -> (Model, AllowGraph) {
    let (inputs, diags) = load(&[SourceText {
        name: "t.yaml",
        text: yaml,
    }]);
    assert!(diags.is_empty(), "{diags:?}");
    let (model, diags) = Model::build(&inputs);
    assert!(!crate::diagnostic::has_errors(&diags), "{diags:?}");
    let graph = AllowGraph::build(&model);
    (model, graph)
}

fn pod(ns: &str, name: &str, labels: &str, ips: &[&str], ports: &str) -> String {
    let pod_ips: Vec<String> = ips.iter().map(|i| format!("{{ip: \"{i}\"}}")).collect();
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\n\
         spec: {{containers: [{{name: c, ports: [{ports}]}}]}}\n\
         status: {{phase: Running, podIP: \"{}\", podIPs: [{}]}}\n---\n",
        ips[0],
        pod_ips.join(", ")
    )
}

fn compile(model: &Model, graph: &AllowGraph, key: &str) -> Ruleset {
    let id = model.endpoint_by_key(key).unwrap();
    compile_pod(model, graph, id, &RulesetOptions::default())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn not_isolated_is_two_accepting_chains() {
    let (m, g) = build(&pod("x", "a", "app: a", &["10.0.0.1"], ""));
    let rs = compile(&m, &g, "x/a");
    assert_eq!(rs.stats().rules, 0);
    assert_eq!(rs.stats().chains, 2);
    assert!(rs.maps.is_empty() && rs.sets.is_empty());
    let text = rs.to_nft();
    assert!(text.starts_with("# netpol ruleset for x/a\n"), "{text}");
    assert!(text.contains("add table inet netpol\ndelete table inet netpol\n"));
    assert!(rs.simulate(Direction::Ingress, ip("1.2.3.4"), Protocol::Udp, 9));
}

#[test]
fn overlapping_peers_become_disjoint_classes() {
    let yaml = format!(
        "{}{}{}",
        pod("x", "a", "app: a", &["10.0.0.1", "fd00::1"], ""),
        pod("x", "b", "app: b", &["10.0.0.2", "fd00::2"], ""),
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/24, except: [10.0.0.128/25]}}]
    ports: [{port: 80}]
  - from: [{podSelector: {matchLabels: {app: b}}}]
    ports: [{port: 81, protocol: UDP}, {port: 8000, endPort: 8080}]
  - from: [{ipBlock: {cidr: 10.0.0.2/31}}]
"#,
    );
    let (m, g) = build(&yaml);
    let rs = compile(&m, &g, "x/a");
    let v4 = &rs.maps[0];
    assert_eq!(v4.name, "ingress_v4");
    let keys: Vec<String> = v4
        .elements
        .iter()
        .map(|e| format!("{}-{} {:?}", e.first, e.last, e.verdict))
        .collect();
    assert_eq!(
        keys,
        [
            "10.0.0.0-10.0.0.1 Jump(\"ingress_class_0\")",
            "10.0.0.2-10.0.0.3 Accept",
            "10.0.0.4-10.0.0.127 Jump(\"ingress_class_0\")",
        ]
    );
    // x/b's IPv6 address gets the pod-selector rule's ports.
    let v6 = &rs.maps[1];
    assert_eq!(v6.elements.len(), 1);
    assert_eq!(v6.elements[0].first, ip("fd00::2"));
    assert_eq!(v6.elements[0].prefix, Some(128));
    let s = rs.stats();
    assert_eq!((s.maps, s.map_elements, s.sets), (2, 4, 2));
    // 4 static rules, 2 vmap rules and the log rule in ingress; one per class.
    assert_eq!(s.rules, 7 + 2);
    assert!(rs.simulate(Direction::Ingress, ip("10.0.0.9"), Protocol::Tcp, 80));
    assert!(!rs.simulate(Direction::Ingress, ip("10.0.0.9"), Protocol::Tcp, 81));
    assert!(!rs.simulate(Direction::Ingress, ip("10.0.0.200"), Protocol::Tcp, 80));
    assert!(rs.simulate(Direction::Ingress, ip("fd00::2"), Protocol::Tcp, 8080));
    assert!(rs.simulate(Direction::Ingress, ip("fd00::2"), Protocol::Udp, 81));
    assert!(!rs.simulate(Direction::Ingress, ip("fd00::2"), Protocol::Sctp, 81));
    assert!(rs.simulate(Direction::Egress, ip("8.8.8.8"), Protocol::Sctp, 1));
    let text = rs.to_nft();
    assert!(text.contains("\t\t\t10.0.0.2/31 : accept, # x/p rule 0 peer 0; x/p rule 1 peer 0; x/p rule 2 peer 0\n"), "{text}");
    assert!(text.contains("\t\t\tudp . 81,\n"), "{text}");
    assert!(text.contains("\t\t\ttcp . 8000-8080,\n"), "{text}");
    assert!(
        text.contains(
            "counter log group 100 prefix \"netpol:x/a:ingress \" drop comment \"isolated by x/p\""
        ),
        "{text}"
    );
}

#[test]
fn egress_named_ports_resolve_per_destination() {
    let yaml = format!(
        "{}{}{}{}",
        pod("x", "a", "app: a", &["10.0.0.1"], ""),
        pod(
            "x",
            "b",
            "app: b",
            &["10.0.0.2"],
            "{name: web, containerPort: 8080}"
        ),
        pod(
            "x",
            "c",
            "app: c",
            &["10.0.0.3"],
            "{name: web, containerPort: 9090}"
        ),
        r#"apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/30}}]
    ports: [{port: web}, {port: 53, protocol: UDP}]
"#,
    );
    let (m, g) = build(&yaml);
    let rs = compile(&m, &g, "x/a");
    let e = |a: &str, p: Protocol, port: u16| rs.simulate(Direction::Egress, ip(a), p, port);
    assert!(e("10.0.0.2", Protocol::Tcp, 8080));
    assert!(!e("10.0.0.2", Protocol::Tcp, 9090));
    assert!(e("10.0.0.3", Protocol::Tcp, 9090));
    assert!(!e("10.0.0.0", Protocol::Tcp, 8080));
    assert!(e("10.0.0.0", Protocol::Udp, 53));
    assert!(e("10.0.0.3", Protocol::Udp, 53));
    assert!(!e("10.0.0.4", Protocol::Udp, 53));
    // Every address answers what the compiler says.
    for (name, a) in [("x/b", "10.0.0.2"), ("x/c", "10.0.0.3")] {
        let d = m.endpoint_by_key(name).unwrap();
        let src = m.endpoint_by_key("x/a").unwrap();
        let r = g.reach(&m, src.into(), d.into());
        for port in [53, 8080, 9090] {
            for p in [Protocol::Tcp, Protocol::Udp] {
                assert_eq!(
                    e(a, p, port),
                    r.egress.allowed.contains(p, port),
                    "{a} {p} {port}"
                );
            }
        }
    }
}

#[test]
fn log_prefix_fits_the_kernel_limit() {
    let long = "n".repeat(253);
    let p = log_prefix(&"s".repeat(63), &long, Direction::Egress);
    assert!(p.len() <= MAX_LOG_PREFIX, "{}", p.len());
    assert!(p.ends_with(":egress "), "{p}");
    assert_eq!(
        log_prefix("x", "a", Direction::Ingress),
        "netpol:x/a:ingress "
    );
    assert!(comment(&"y".repeat(300)).len() <= MAX_COMMENT);
}

/// A node `n1` with CoreDNS, a client and a server, default deny in `app` plus the
/// common allow-DNS egress rule; Services `kube-system/kube-dns` and `app/server`.
// See: #10
const NODE_CASE: &str = r#"apiVersion: v1
kind: Node
metadata: {name: n1}
status: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: Hostname, address: n1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-a, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}, {name: dns-tcp, containerPort: 53}]}]
status: {phase: Running, podIP: 10.0.9.1}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: app, labels: {app: client}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: app, labels: {app: server}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIP: 10.96.0.10
  selector: {k8s-app: kube-dns}
  ports: [{name: dns, port: 53, protocol: UDP, targetPort: dns}, {name: dns-tcp, port: 53, targetPort: 53}]
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: app}
spec:
  type: NodePort
  clusterIP: 10.96.0.50
  selector: {app: server}
  ports: [{port: 80, targetPort: http, nodePort: 30080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: app}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
"#;

#[test]
fn isolated_ingress_accepts_the_node_and_egress_defers_services() {
    let (m, g) = build(NODE_CASE);
    let server = compile(&m, &g, "app/server");
    assert_eq!(server.addr_sets.len(), 1);
    assert_eq!(server.addr_sets[0].elements, vec![ip("192.168.0.1")]);
    assert!(server.simulate(Direction::Ingress, ip("192.168.0.1"), Protocol::Udp, 9));
    assert!(!server.simulate(Direction::Ingress, ip("192.168.0.2"), Protocol::Tcp, 8080));
    assert!(!server.simulate(Direction::Ingress, ip("10.0.1.1"), Protocol::Tcp, 8080));
    let text = server.to_nft();
    assert!(
        text.contains(
            "\t\tip saddr @node_v4 accept comment \"the Pod's node may always connect\"\n"
        ),
        "{text}"
    );
    let client = compile(&m, &g, "app/client");
    let svc = &client.service_sets[0];
    let elems: Vec<String> = svc
        .elements
        .iter()
        .map(|e| format!("{} {} {} {}", e.addr, e.protocol, e.port, e.service))
        .collect();
    assert_eq!(
        elems,
        [
            "10.96.0.10 TCP 53 kube-system/kube-dns",
            "10.96.0.10 UDP 53 kube-system/kube-dns",
            "10.96.0.50 TCP 80 app/server",
            "192.168.0.1 TCP 30080 app/server",
        ]
    );
    // Service addresses pass the Pod's egress chain (judged after DNAT on the node) ...
    assert!(client.simulate(Direction::Egress, ip("10.96.0.50"), Protocol::Tcp, 80));
    assert!(client.simulate(Direction::Egress, ip("10.96.0.10"), Protocol::Udp, 53));
    // ... other ports of the same address do not.
    assert!(!client.simulate(Direction::Egress, ip("10.96.0.50"), Protocol::Tcp, 81));
    // Direct destinations are judged as before.
    assert!(client.simulate(Direction::Egress, ip("10.0.9.1"), Protocol::Udp, 53));
    assert!(!client.simulate(Direction::Egress, ip("10.0.1.2"), Protocol::Tcp, 8080));
    // The client's ingress has the node set too, its egress no node exemption.
    assert!(!client.simulate(Direction::Egress, ip("192.168.0.1"), Protocol::Tcp, 22));
    // Runtime node addresses join the model's.
    let id = m.endpoint_by_key("app/server").unwrap();
    let opts = RulesetOptions {
        node_addresses: vec![ip("fd00::1"), ip("192.168.0.1")],
        ..RulesetOptions::default()
    };
    let rs = compile_pod(&m, &g, id, &opts);
    assert_eq!(rs.addr_sets.len(), 2);
    assert!(rs.simulate(Direction::Ingress, ip("fd00::1"), Protocol::Tcp, 1));
}

/// Without a node table (`defer_services: false`) a Service address is an ordinary
/// destination of the Pod's egress chain: never let out unjudged. See: #10
#[test]
fn without_a_node_table_service_addresses_are_not_deferred() {
    let (m, g) = build(NODE_CASE);
    let id = m.endpoint_by_key("app/client").unwrap();
    let opts = RulesetOptions {
        defer_services: false,
        ..RulesetOptions::default()
    };
    let client = compile_pod(&m, &g, id, &opts);
    assert!(client.service_sets.is_empty());
    assert!(!client.to_nft().contains("svc_v4"));
    assert!(!client.simulate(Direction::Egress, ip("10.96.0.50"), Protocol::Tcp, 80));
    assert!(!client.simulate(Direction::Egress, ip("10.96.0.10"), Protocol::Udp, 53));
    // Direct destinations are judged exactly as with the node table.
    assert!(client.simulate(Direction::Egress, ip("10.0.9.1"), Protocol::Udp, 53));
}

#[test]
fn node_table_judges_local_egress_after_dnat() {
    let (m, g) = build(NODE_CASE);
    let ctx = NodeContext::new(&m, "n1", vec![ip("192.168.0.1")]);
    let rs = compile_node(&m, &g, &ctx, &RulesetOptions::default());
    // Two egress-isolated local Pods (client, server), CoreDNS is not isolated.
    let pod_chains: Vec<&str> = rs
        .chains
        .iter()
        .map(|c| c.name.as_str())
        .filter(|n| n.starts_with("egress_pod_") && !n.contains("class"))
        .collect();
    assert_eq!(pod_chains, ["egress_pod_0", "egress_pod_1"]);
    let dns = ip("10.0.9.1");
    let (client, server) = (ip("10.0.1.1"), ip("10.0.1.2"));
    assert!(rs.simulate_node(client, dns, Protocol::Udp, 53));
    assert!(rs.simulate_node(client, dns, Protocol::Tcp, 53));
    assert!(!rs.simulate_node(client, dns, Protocol::Tcp, 80));
    assert!(!rs.simulate_node(client, server, Protocol::Tcp, 8080));
    // Hairpin: no self exemption on the node.
    assert!(!rs.simulate_node(server, server, Protocol::Tcp, 8080));
    // Not judged: the node itself, non-isolated Pods.
    assert!(rs.simulate_node(ip("192.168.0.1"), server, Protocol::Tcp, 8080));
    assert!(rs.simulate_node(dns, server, Protocol::Tcp, 8080));
    let text = rs.to_nft();
    assert!(text.contains("type filter hook forward priority filter; policy accept;"));
    assert!(text.contains("type filter hook input priority filter; policy accept;"));
    assert!(
        text.contains("\t\t\t10.0.1.1 : jump egress_pod_0,\n"),
        "{text}"
    );
    assert!(text.contains("counter log group 100 prefix \"netpol:app/client:egress \" drop"));
}

#[test]
fn node_table_agrees_with_reach_through_every_service() {
    // See: #10 — via-Service verdict == node table verdict on the backend.
    let (m, g) = build(NODE_CASE);
    let ctx = NodeContext::new(&m, "n1", Vec::new());
    let rs = compile_node(&m, &g, &ctx, &RulesetOptions::default());
    let mut checked = 0;
    for src in &ctx.pods {
        let src_ip = m.endpoint(*src).ips[0];
        for svc in &m.services {
            for port in 0..svc.ports.len() {
                for flow in g.reach_service(&m, (*src).into(), svc, port) {
                    let crate::graph::Subject::Endpoint(b) = flow.backend else {
                        continue;
                    };
                    let dst = m.endpoint(b).ips[0];
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
                    // Hairpin: the node table judges the ingress side too. See: #10
                    assert_eq!(
                        rs.simulate_node(src_ip, dst, flow.protocol, flow.target_port),
                        egress && (!flow.hairpin || ingress),
                        "{} -> {} via {}",
                        m.endpoint(*src).key(),
                        m.endpoint(b).key(),
                        svc.key()
                    );
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 6, "{checked}");
}

const HAIRPIN_CASE: &str = r#"apiVersion: v1
kind: Pod
metadata: {name: web, namespace: hp, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {phase: Running, podIPs: [{ip: 10.0.1.1}, {ip: "fd00::1"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: self-ok, namespace: hp, labels: {app: self-ok}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: frontend, namespace: hp, labels: {app: frontend}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.1.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-frontend, namespace: hp}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: frontend}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: self-ok-from-itself, namespace: hp}
spec:
  podSelector: {matchLabels: {app: self-ok}}
  ingress: [{from: [{podSelector: {matchLabels: {app: self-ok}}}], ports: [{port: 80}]}]
"#;

#[test]
fn node_table_judges_hairpin_ingress_before_masquerade() {
    // See: #10 — kube-proxy masquerades a Pod -> own Service -> itself flow, so the Pod's
    // own ingress chain sees the node; the node table judges that ingress instead.
    let (m, g) = build(HAIRPIN_CASE);
    let ctx = NodeContext::new(&m, "n1", vec![ip("192.168.0.1")]);
    let rs = compile_node(&m, &g, &ctx, &RulesetOptions::default());
    let (web, web6, ok, front) = (
        ip("10.0.1.1"),
        ip("fd00::1"),
        ip("10.0.1.2"),
        ip("10.0.1.3"),
    );
    // web's ingress admits only frontend: web through its own Service is dropped, on
    // both families; frontend passes (web's own table judges it, unmasqueraded).
    assert!(!rs.simulate_node(web, web, Protocol::Tcp, 8080));
    assert!(!rs.simulate_node(web6, web6, Protocol::Tcp, 8080));
    assert!(rs.simulate_node(front, web, Protocol::Tcp, 8080));
    // self-ok admits itself on 80 only.
    assert!(rs.simulate_node(ok, ok, Protocol::Tcp, 80));
    assert!(!rs.simulate_node(ok, ok, Protocol::Tcp, 81));
    // Not hairpin: another source to an isolated Pod is not judged here.
    assert!(rs.simulate_node(ok, web, Protocol::Tcp, 9999));
    // frontend is not ingress-isolated: nothing to judge.
    assert!(rs.simulate_node(front, front, Protocol::Tcp, 1));
    let text = rs.to_nft();
    assert!(text.contains("\tchain hairpin {\n"), "{text}");
    assert_eq!(
        text.matches("type filter hook forward priority filter; policy accept;")
            .count(),
        2,
        "{text}"
    );
    assert!(text.contains("10.0.1.1 : jump hairpin_pod_1,"), "{text}");
    assert!(text.contains("fd00::1 : jump ingress_pod_1,"), "{text}");
    assert!(text.contains("counter log group 100 prefix \"netpol:hp/web:ingress \" drop"));
}
