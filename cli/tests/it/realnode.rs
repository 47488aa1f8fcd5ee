//! The agent on a real node, driven exactly like an independent harness drives it: a
//! node netns, Pods on routed veths, kube-proxy-style DNAT in the node netns (written by
//! the test, not by netpol), a DNS server in a `kube-system` Pod behind
//! `kube-system/kube-dns`, a manifest directory without EndpointSlices, and the built
//! `netpol agent --manifests DIR --netns-map FILE --node NODE --listen ADDR` run INSIDE
//! the node netns; after `/readyz`, probes by Service name (DNS through the kube-dns
//! ClusterIP), by ClusterIP, by Pod IP, by NodePort and from the node IP (kubelet). Every
//! expectation is upstream NetworkPolicy semantics, written by hand. See: #10

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enforcer::netns;
use netpol_lab::lab::dns::{self, DnsServer, Transport, Zone};
use netpol_lab::lab::kubeproxy::{self, ServicePort};
use netpol_lab::probe::{Listener, Prober, Protocol};
use netpol_lab::topology::{HostSpec, NodeSpec, Topology};

use crate::lab::available;

const NODE: &str = "node-1";
const NODE_IP: &str = "172.18.0.2";
const DNS_IP: &str = "10.96.0.10";

/// A container port: (name, protocol, port).
type Port = (&'static str, &'static str, u16);

/// Pods: (ns/name, IP, labels, container ports).
const PODS: &[(&str, &str, &str, &[Port])] = &[
    (
        "kube-system/coredns",
        "10.244.0.53",
        "k8s-app: kube-dns",
        &[("dns", "UDP", 53), ("dns-tcp", "TCP", 53)],
    ),
    ("app/client", "10.244.0.10", "app: client", &[]),
    (
        "app/server",
        "10.244.0.11",
        "app: server",
        &[("http", "TCP", 8080)],
    ),
    (
        "app/other",
        "10.244.0.12",
        "app: other",
        &[("http", "TCP", 8080)],
    ),
    ("ipb/probe", "10.244.0.20", "app: probe", &[]),
    (
        "ipb/kept",
        "10.244.0.21",
        "app: web",
        &[("http", "TCP", 8080)],
    ),
    (
        "ipb/removed",
        "10.244.0.22",
        "app: web2",
        &[("http", "TCP", 8080)],
    ),
    ("open/a", "10.244.0.30", "app: a", &[("http", "TCP", 8080)]),
    (
        "open/b-0",
        "10.244.0.31",
        "app: b, idx: '0'",
        &[("web", "TCP", 8081)],
    ),
    (
        "open/b-1",
        "10.244.0.32",
        "app: b, idx: '1'",
        &[("web", "TCP", 8082)],
    ),
    ("open/c", "10.244.0.33", "app: c", &[]),
];

/// Services: (ns/name, clusterIP, selector, ports (name, protocol, port, targetPort,
/// nodePort)), and their endpoints as kube-proxy would program them (targetPort
/// resolved per backend).
struct Svc {
    key: &'static str,
    ip: &'static str,
    selector: &'static str,
    ports: &'static [(&'static str, &'static str, u16, &'static str, Option<u16>)],
    endpoints: &'static [&'static [&'static str]],
}

const SERVICES: &[Svc] = &[
    Svc {
        key: "kube-system/kube-dns",
        ip: DNS_IP,
        selector: "k8s-app: kube-dns",
        ports: &[
            ("dns", "UDP", 53, "53", None),
            ("dns-tcp", "TCP", 53, "53", None),
        ],
        endpoints: &[&["10.244.0.53:53"], &["10.244.0.53:53"]],
    },
    Svc {
        key: "app/server",
        ip: "10.96.0.50",
        selector: "app: server",
        ports: &[("http", "TCP", 80, "http", Some(30080))],
        endpoints: &[&["10.244.0.11:8080"]],
    },
    Svc {
        key: "app/other",
        ip: "10.96.0.51",
        selector: "app: other",
        ports: &[("http", "TCP", 80, "http", None)],
        endpoints: &[&["10.244.0.12:8080"]],
    },
    Svc {
        key: "ipb/kept",
        ip: "10.96.0.60",
        selector: "app: web",
        ports: &[("http", "TCP", 80, "8080", None)],
        endpoints: &[&["10.244.0.21:8080"]],
    },
    Svc {
        key: "ipb/removed",
        ip: "10.96.0.61",
        selector: "app: web2",
        ports: &[("http", "TCP", 80, "8080", None)],
        endpoints: &[&["10.244.0.22:8080"]],
    },
    Svc {
        key: "open/a",
        ip: "10.96.0.70",
        selector: "app: a",
        ports: &[("http", "TCP", 80, "http", Some(30070))],
        endpoints: &[&["10.244.0.30:8080"]],
    },
    // Two backends with different named targetPorts.
    Svc {
        key: "open/b",
        ip: "10.96.0.71",
        selector: "app: b",
        ports: &[("web", "TCP", 80, "web", None)],
        endpoints: &[&["10.244.0.31:8081", "10.244.0.32:8082"]],
    },
];

const POLICIES: &str = r#"
# app: the upstream pair "default deny all" + "allow DNS", and client -> server on http.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny-all, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-dns, namespace: app}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-to-server, namespace: app}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: server}}}]
    ports: [{port: http}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: app}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: client}}}]
    ports: [{port: http}]
---
# ipb: egress to a /4 that covers Service and Pod addresses, except one backend.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: wide-except, namespace: ipb}
spec:
  podSelector: {matchLabels: {app: probe}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/4, except: [10.244.0.22/32]}
---
# open: c's egress would be limited to app=b (audit: logged, never enforced). Through the
# Service open/a it is judged after DNAT by the node table's audit chain. See: #12
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: c-egress-staged
  namespace: open
  annotations: {netpol.io/mode: audit}
spec:
  podSelector: {matchLabels: {app: c}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {app: b}}}]
---
# open: b-1 only from c; a's own ingress is open; c may reach anything.
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b1-from-c, namespace: open}
spec:
  podSelector: {matchExpressions: [{key: idx, operator: In, values: ['1']}]}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: c}}}]
"#;

fn manifests() -> String {
    let mut out = String::new();
    for ns in ["kube-system", "app", "ipb", "open"] {
        out.push_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n---\n"
        ));
    }
    for (key, ip, labels, ports) in PODS {
        let (ns, name) = key.split_once('/').unwrap();
        let mut p = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\nspec:\n  nodeName: {NODE}\n  containers:\n  - name: c\n    image: i\n"
        );
        if !ports.is_empty() {
            p.push_str("    ports:\n");
            for (pn, proto, port) in *ports {
                p.push_str(&format!(
                    "    - {{name: {pn}, protocol: {proto}, containerPort: {port}}}\n"
                ));
            }
        }
        p.push_str(&format!(
            "status:\n  phase: Running\n  podIP: {ip}\n  podIPs: [{{ip: {ip}}}]\n---\n"
        ));
        out.push_str(&p);
    }
    for s in SERVICES {
        let (ns, name) = s.key.split_once('/').unwrap();
        let node_port = s.ports.iter().any(|p| p.4.is_some());
        out.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  type: {}\n  clusterIP: {}\n  clusterIPs: [{}]\n  selector: {{{}}}\n  ports:\n",
            if node_port { "NodePort" } else { "ClusterIP" },
            s.ip,
            s.ip,
            s.selector
        ));
        for (pn, proto, port, target, np) in s.ports {
            out.push_str(&format!(
                "  - {{name: {pn}, protocol: {proto}, port: {port}, targetPort: {target}{}}}\n",
                np.map(|n| format!(", nodePort: {n}")).unwrap_or_default()
            ));
        }
        out.push_str("---\n");
    }
    out.push_str(POLICIES);
    out
}

fn kube_proxy() -> Vec<ServicePort> {
    let mut out = Vec::new();
    for s in SERVICES {
        for ((pn, proto, port, _, np), eps) in s.ports.iter().zip(s.endpoints) {
            out.push(ServicePort {
                service: s.key.to_owned(),
                port_name: (*pn).to_owned(),
                protocol: if *proto == "UDP" {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                },
                port: *port,
                cluster_ips: vec![s.ip.parse().unwrap()],
                external_ips: vec![],
                node_port: *np,
                endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
            });
        }
    }
    out
}

fn readyz(node_netns: &str, addr: SocketAddr) -> bool {
    netns::run_in(node_netns, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(300)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
        let _ = s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.starts_with("HTTP/1.1 200")
    })
    .unwrap_or(false)
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(node_netns: &str, dir: &Path, listen: SocketAddr) -> Agent {
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            node_netns,
            env!("CARGO_BIN_EXE_netpol"),
            "agent",
        ])
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .arg("--netns-map")
        .arg(dir.join("netns-map"))
        .args(["--node", NODE, "--listen", &listen.to_string()])
        .args(["--verify-interval", "1s"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    Agent(child)
}

#[derive(Debug, Clone, Copy)]
enum To {
    /// A Service by DNS name (resolved from the client's netns via the kube-dns
    /// ClusterIP, UDP), then its port.
    Name(&'static str),
    /// An address (ClusterIP, Pod IP or node IP . nodePort).
    Ip(&'static str),
}

#[test]
fn agent_enforces_through_services_on_a_routed_node_like_a_harness() {
    if !available("agent_enforces_through_services_on_a_routed_node_like_a_harness") {
        return;
    }
    let prefix = format!("nprn{}", std::process::id() % 100_000);
    let _ = Topology::cleanup_stale(&prefix);
    let node = NodeSpec::new(NODE, format!("{NODE_IP}/16").parse().unwrap(), None);
    let hosts: Vec<HostSpec> = PODS
        .iter()
        .map(|(k, ip, ..)| HostSpec::new(*k, Some(format!("{ip}/16").parse().unwrap()), None))
        .collect();
    let lab = Topology::build_routed(&prefix, &node, &hosts).unwrap();
    kubeproxy::apply(lab.hub(), &kube_proxy(), &[NODE_IP.parse().unwrap()]).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("manifests")).unwrap();
    std::fs::write(tmp.path().join("manifests/all.yaml"), manifests()).unwrap();
    let map: String = lab
        .hosts()
        .iter()
        .map(|h| format!("{} {}\n", h.name, h.netns))
        .collect();
    std::fs::write(tmp.path().join("netns-map"), map).unwrap();

    // The cluster DNS in the kube-dns Pod.
    let mut zone = Zone::new();
    for s in SERVICES {
        let (ns, name) = s.key.split_once('/').unwrap();
        zone.add_service(ns, name, &[s.ip.parse().unwrap()]);
    }
    let coredns = lab.host("kube-system/coredns").unwrap().netns.clone();
    let dns_server =
        DnsServer::start(&coredns, &["10.244.0.53".parse().unwrap()], 53, zone).unwrap();
    let mut listeners = Vec::new();
    for (key, _, _, ports) in PODS {
        for (_, proto, port) in *ports {
            if *port != 53 {
                let p = if *proto == "UDP" {
                    Protocol::Udp
                } else {
                    Protocol::Tcp
                };
                listeners.push(Listener::new(*key, p, *port));
            }
        }
    }
    let prober = Prober::start(&lab, &listeners).unwrap();

    let listen: SocketAddr = format!("{NODE_IP}:19190").parse().unwrap();
    let _agent = start_agent(lab.hub(), tmp.path(), listen);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !readyz(lab.hub(), listen) {
        let log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "agent not ready in 30 s:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The agent owns a node table in its own netns.
    let tables = netns::exec_checked(lab.hub(), "nft", &["list", "tables"], None).unwrap();
    let tables = String::from_utf8(tables.stdout).unwrap();
    let mut failures = Vec::new();
    if !tables.contains("table inet netpol") {
        failures.push(format!("no node table in the node netns: {tables}"));
    }

    let dns_at: SocketAddr = format!("{DNS_IP}:53").parse().unwrap();
    let t = Duration::from_millis(800);
    let resolve = |from: &str, name: &str| -> Option<IpAddr> {
        let netns = &lab.host(from).unwrap().netns;
        match dns::resolve_in(netns, name, false, dns_at, Transport::Udp, t) {
            Ok(Some(ips)) => ips.first().copied(),
            _ => None,
        }
    };

    // Name resolution is itself subject to the client's egress policy.
    for (from, name, expect) in [
        ("app/client", "server.app.svc.cluster.local", true),
        ("app/client", "other.app", true),
        ("app/server", "server.app.svc.cluster.local", true),
        ("ipb/probe", "kept.ipb.svc.cluster.local", true),
        ("open/c", "b.open.svc.cluster.local", true),
    ] {
        let got = resolve(from, name).is_some();
        if got != expect {
            failures.push(format!(
                "DNS {from} -> {name}: resolved {got}, expected {expect}"
            ));
        }
    }
    // DNS over TCP too.
    let netns_client = lab.host("app/client").unwrap().netns.clone();
    if !matches!(
        dns::resolve_in(
            &netns_client,
            "server.app",
            false,
            dns_at,
            Transport::Tcp,
            t
        ),
        Ok(Some(_))
    ) {
        failures.push("DNS over TCP app/client -> kube-dns blocked".to_owned());
    }

    let cells: &[(&str, To, u16, bool)] = &[
        // default-deny + allow-DNS: exactly the Services the policies allow.
        (
            "app/client",
            To::Name("server.app.svc.cluster.local"),
            80,
            true,
        ),
        ("app/client", To::Ip("10.96.0.50"), 80, true),
        ("app/client", To::Ip("10.244.0.11"), 8080, true),
        (
            "app/client",
            To::Name("other.app.svc.cluster.local"),
            80,
            false,
        ),
        ("app/client", To::Ip("10.244.0.12"), 8080, false),
        (
            "app/client",
            To::Name("a.open.svc.cluster.local"),
            80,
            false,
        ),
        // NodePort of an allowed backend from an isolated client: judged after DNAT.
        ("app/client", To::Ip("172.18.0.2"), 30080, true),
        ("app/client", To::Ip("172.18.0.2"), 30070, false),
        // Hairpin: server through its own Service is subject to its egress (none).
        ("app/server", To::Ip("10.96.0.50"), 80, false),
        // ... and a non-isolated Pod through its own Service connects.
        ("open/a", To::Ip("10.96.0.70"), 80, true),
        // ipBlock /4 with except: the Service address is inside the /4, but the
        // backend the except removes stays blocked through the Service.
        (
            "ipb/probe",
            To::Name("kept.ipb.svc.cluster.local"),
            80,
            true,
        ),
        (
            "ipb/probe",
            To::Name("removed.ipb.svc.cluster.local"),
            80,
            false,
        ),
        ("ipb/probe", To::Ip("10.244.0.22"), 8080, false),
        ("ipb/probe", To::Ip("10.244.0.21"), 8080, true),
        // Only an audit policy would deny c -> a: it connects (and is reported below).
        ("open/c", To::Ip("10.96.0.70"), 80, true),
        // Ingress-isolated backends: other Pods are not allowed in.
        ("open/a", To::Ip("10.96.0.50"), 80, false),
        ("open/a", To::Ip("10.244.0.11"), 8080, false),
    ];
    for (from, to, port, expect) in cells {
        let ip = match to {
            To::Name(n) => match resolve(from, n) {
                Some(ip) => ip,
                None => {
                    failures.push(format!("{from} -> {n}: name did not resolve"));
                    continue;
                }
            },
            To::Ip(a) => a.parse().unwrap(),
        };
        let r = prober.probe(from, ip, Protocol::Tcp, *port, t).unwrap();
        if r.connected != *expect {
            failures.push(format!(
                "{from} -> {to:?} ({ip}):{port}: connected {}, expected {expect} ({})",
                r.connected, r.detail
            ));
        }
    }

    // Multi-backend: b-0 (open) and b-1 (only from c). From a: outcomes {connected,
    // blocked}; from c: always connected.
    for (from, want) in [
        ("open/a", BTreeSet::from([true, false])),
        ("open/c", BTreeSet::from([true])),
    ] {
        let mut seen = BTreeSet::new();
        for _ in 0..24 {
            let r = prober
                .probe(from, "10.96.0.71".parse().unwrap(), Protocol::Tcp, 80, t)
                .unwrap();
            seen.insert(r.connected);
        }
        if seen != want {
            failures.push(format!(
                "{from} -> open/b (2 backends): outcomes {seen:?}, expected {want:?}"
            ));
        }
    }

    // Kubelet-style probes from the node IP reach every Pod's declared ports, whatever
    // the policies.
    for (key, ip, _, ports) in PODS {
        for (_, proto, port) in *ports {
            if *port == 53 {
                continue;
            }
            let p = if *proto == "UDP" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            let r = prober
                .probe(NODE, ip.parse().unwrap(), p, *port, t)
                .unwrap();
            if !r.connected {
                failures.push(format!("node -> {key} {proto}/{port}: {}", r.detail));
            }
        }
    }

    // The node table's drop of the /4-except flow through the Service names both Pods,
    // the direction, the isolating policy and the Service (reports flush each second).
    let want = [
        "\"netns\":\"(node)\"",
        "\"pod\":\"ipb/probe\"",
        "\"direction\":\"egress\"",
        "\"dst_pod\":\"ipb/removed\"",
        "\"policies\":\"ipb/wide-except\"",
        "\"services\":\"ipb/removed\"",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut log = String::new();
    while Instant::now() < deadline {
        log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
        if log.lines().any(|l| want.iter().all(|w| l.contains(w))) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if !log.lines().any(|l| want.iter().all(|w| l.contains(w))) {
        failures.push(format!("no node-table drop report with {want:?}"));
    }
    // The audited flow through a Service passed and was reported by the node table's
    // audit chain, after DNAT, with the backend and the audit policy. See: #12
    let want_audit = [
        "netpol would drop (audit)",
        "\"netns\":\"(node)\"",
        "\"pod\":\"open/c\"",
        "\"dst_pod\":\"open/a\"",
        "open/c-egress-staged",
    ];
    if !log
        .lines()
        .any(|l| want_audit.iter().all(|w| l.contains(w)))
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            log = std::fs::read_to_string(tmp.path().join("agent.log")).unwrap_or_default();
            if log
                .lines()
                .any(|l| want_audit.iter().all(|w| l.contains(w)))
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    if !log
        .lines()
        .any(|l| want_audit.iter().all(|w| l.contains(w)))
    {
        failures.push(format!("no node-table audit report with {want_audit:?}"));
    }
    if std::env::var_os("NETPOL_KEEP_AGENT_LOG").is_some() {
        let _ = std::fs::write("/tmp/netpol-realnode-agent.log", &log);
    }
    drop(prober);
    dns_server.stop();
    drop(_agent);
    lab.teardown().unwrap();
    assert!(
        failures.is_empty(),
        "{} cell(s) disagree with upstream semantics:\n{}\n--- agent log (tail)\n{}",
        failures.len(),
        failures.join("\n"),
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
