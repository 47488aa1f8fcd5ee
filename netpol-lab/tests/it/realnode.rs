//! The real-node lab pieces on a real kernel: routed veths, the kube-proxy equivalent
//! (DNAT at prerouting/output, random endpoint, hairpin and nodePort masquerade, reject
//! without endpoints) and the cluster DNS responder. See: #10

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use netpol_lab::lab::dns::{self, DnsServer, Transport, Zone};
use netpol_lab::lab::kubeproxy::{self, ServicePort};
use netpol_lab::probe::{Listener, Prober, Protocol};
use netpol_lab::topology::{HostSpec, NodeSpec, Topology};

use crate::kernel;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn svc(name: &str, proto: Protocol, port: u16, cip: &str, eps: &[&str]) -> ServicePort {
    ServicePort {
        service: name.to_owned(),
        port_name: String::new(),
        protocol: proto,
        port,
        cluster_ips: vec![ip(cip)],
        external_ips: vec![],
        node_port: None,
        endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
    }
}

#[test]
fn kube_proxy_dnat_and_dns_on_a_routed_node() {
    if !kernel::available("kube_proxy_dnat_and_dns_on_a_routed_node") {
        return;
    }
    let prefix = kernel::prefix("kpx");
    let node = NodeSpec::new("node-1", "172.18.0.2/16".parse().unwrap(), None);
    let hosts = [
        HostSpec::new("x/client", Some("10.244.0.10/16".parse().unwrap()), None),
        HostSpec::new("x/web-0", Some("10.244.0.11/16".parse().unwrap()), None),
        HostSpec::new("x/web-1", Some("10.244.0.12/16".parse().unwrap()), None),
        HostSpec::new(
            "kube-system/coredns",
            Some("10.244.0.53/16".parse().unwrap()),
            None,
        ),
    ];
    let lab = Topology::build_routed(&prefix, &node, &hosts).unwrap();
    let mut web = svc(
        "x/web",
        Protocol::Tcp,
        80,
        "10.96.0.80",
        &["10.244.0.11:8080", "10.244.0.12:8080"],
    );
    web.node_port = Some(30080);
    let ports = [
        web,
        svc(
            "x/one",
            Protocol::Tcp,
            81,
            "10.96.0.81",
            &["10.244.0.11:8080"],
        ),
        svc("x/empty", Protocol::Tcp, 82, "10.96.0.82", &[]),
        svc(
            "kube-system/kube-dns",
            Protocol::Udp,
            53,
            "10.96.0.10",
            &["10.244.0.53:5353"],
        ),
        svc(
            "kube-system/kube-dns",
            Protocol::Tcp,
            53,
            "10.96.0.10",
            &["10.244.0.53:5353"],
        ),
    ];
    kubeproxy::apply(lab.hub(), &ports, &[ip("172.18.0.2")]).unwrap();
    let mut zone = Zone::new();
    zone.add_service("x", "web", &[ip("10.96.0.80")]);
    let coredns = lab.host("kube-system/coredns").unwrap();
    let dns_server = DnsServer::start(&coredns.netns, &[ip("10.244.0.53")], 5353, zone).unwrap();
    let prober = Prober::start(
        &lab,
        &[
            Listener::new("x/web-0", Protocol::Tcp, 8080),
            Listener::new("x/web-1", Protocol::Tcp, 8080),
        ],
    )
    .unwrap();
    let t = Duration::from_secs(2);
    let client = &lab.host("x/client").unwrap().netns;

    // DNS by name through the kube-dns ClusterIP, UDP and TCP.
    let server = SocketAddr::new(ip("10.96.0.10"), 53);
    for tr in [Transport::Udp, Transport::Tcp] {
        let got = dns::resolve_in(client, "web.x.svc.cluster.local", false, server, tr, t);
        assert_eq!(got.unwrap(), Some(vec![ip("10.96.0.80")]), "{tr:?}");
        let none = dns::resolve_in(client, "nope.x.svc.cluster.local", false, server, tr, t);
        assert_eq!(none.unwrap(), None, "{tr:?}");
    }

    // ClusterIP (single and multi-backend), NodePort from a Pod and from the node,
    // hairpin (a backend through its own Service).
    for (from, to, port) in [
        ("x/client", "10.96.0.81", 81),
        ("x/client", "10.96.0.80", 80),
        ("x/client", "172.18.0.2", 30080),
        ("node-1", "172.18.0.2", 30080),
        ("node-1", "10.96.0.80", 80),
        ("x/web-0", "10.96.0.81", 81),
    ] {
        for _ in 0..4 {
            let r = prober.probe(from, ip(to), Protocol::Tcp, port, t).unwrap();
            assert!(r.connected, "{from} -> {to}:{port}: {}", r.detail);
        }
    }
    // No endpoints: rejected at once, as kube-proxy does.
    let r = prober
        .probe("x/client", ip("10.96.0.82"), Protocol::Tcp, 82, t)
        .unwrap();
    assert!(!r.connected, "{}", r.detail);
    assert!(
        r.elapsed < Duration::from_secs(1),
        "rejected, not timed out: {}",
        r.detail
    );

    // Both backends are chosen (random; 40 tries miss one with probability 2^-39).
    let listing = enforcer::netns::exec_checked(
        lab.hub(),
        "nft",
        &["list", "table", "ip", kubeproxy::TABLE],
        None,
    )
    .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(listing.contains("numgen random mod 2"), "{listing}");
    for _ in 0..40 {
        let _ = prober.probe("x/client", ip("10.96.0.80"), Protocol::Tcp, 80, t);
    }
    let ct = enforcer::netns::exec(lab.hub(), "cat", &["/proc/net/nf_conntrack"], None);
    if let Ok(ct) = ct
        && ct.success
    {
        let ct = String::from_utf8_lossy(&ct.stdout);
        for b in ["src=10.244.0.11", "src=10.244.0.12"] {
            assert!(ct.contains(b), "backend {b} never chosen: {ct}");
        }
    }
    drop(prober);
    dns_server.stop();
    lab.teardown().unwrap();
}
