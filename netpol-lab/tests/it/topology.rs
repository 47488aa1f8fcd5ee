use enforcer::netns;
use netpol_lab::topology::{HostSpec, Topology};

use crate::kernel;

fn addrs(netns: &str) -> String {
    let out = netns::exec_checked(netns, "ip", &["-br", "addr"], None).unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn builds_and_tears_down_a_dual_stack_lab() {
    if !kernel::available("builds_and_tears_down_a_dual_stack_lab") {
        return;
    }
    let prefix = kernel::prefix("topo");
    let hosts = [
        HostSpec::new("a", Some("10.0.0.11/24".parse().unwrap()), None),
        HostSpec::new("b", None, Some("fd00::12/64".parse().unwrap())),
        kernel::dual_stack(3).pop().unwrap(),
    ];
    let lab = Topology::build(&prefix, &hosts).unwrap();
    assert_eq!(lab.hub(), format!("{prefix}-hub"));
    let names: Vec<_> = lab.hosts().iter().map(|h| h.netns.clone()).collect();
    assert_eq!(names, [0, 1, 2].map(|n| format!("{prefix}-{n}")));

    let a = addrs(&lab.host("a").unwrap().netns);
    assert!(a.contains("10.0.0.11/24") && !a.contains("fd00"), "{a}");
    let b = addrs(&lab.host("b").unwrap().netns);
    assert!(b.contains("fd00::12/64") && !b.contains("10.0.0"), "{b}");
    let c = addrs(&lab.host("h2").unwrap().netns);
    assert!(
        c.contains("10.0.0.13/24") && c.contains("fd00::13/64"),
        "{c}"
    );
    let dad = netns::exec_checked(
        &lab.host("h2").unwrap().netns,
        "sysctl",
        &["-n", "net.ipv6.conf.eth0.accept_dad"],
        None,
    )
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&dad.stdout).trim(),
        "0",
        "DAD must be off"
    );
    let full = netns::exec_checked(&lab.host("h2").unwrap().netns, "ip", &["addr"], None).unwrap();
    let full = String::from_utf8(full.stdout).unwrap();
    // The lab's own addresses are usable at once (nodad, accept_dad=0). The kernel's
    // link-local address may still be in DAD under load; the lab never uses it.
    assert!(
        !full
            .lines()
            .any(|l| l.contains("scope global") && l.contains("tentative")),
        "{full}"
    );
    let hub = addrs(lab.hub());
    assert!(hub.contains("br0") && hub.contains("h2@"), "{hub}");

    lab.teardown().unwrap();
    for n in names {
        assert!(!netns::exists(&n), "{n} left behind");
    }
    assert!(!netns::exists(&format!("{prefix}-hub")));
}

#[test]
fn build_refuses_existing_names_and_cleanup_stale_removes_only_its_prefix() {
    if !kernel::available("build_refuses_existing_names_and_cleanup_stale_removes_only_its_prefix")
    {
        return;
    }
    let prefix = kernel::prefix("stale");
    let other = format!("{prefix}9-0");
    let stale = [
        format!("{prefix}-hub"),
        format!("{prefix}-0"),
        format!("{prefix}-7"),
    ];
    for n in stale.iter().chain([&other]) {
        netns::add(n).unwrap();
    }
    let hosts = kernel::dual_stack(1);
    let err = Topology::build(&prefix, &hosts).unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    let removed = Topology::cleanup_stale(&prefix).unwrap();
    let exists_other = netns::exists(&other);
    let _ = netns::delete(&other);
    let mut expected = stale.to_vec();
    expected.sort();
    assert_eq!(removed, expected);
    assert!(exists_other, "cleanup_stale removed another prefix's netns");
    for n in &stale {
        assert!(!netns::exists(n));
    }
    // Dropping without teardown cleans up too.
    drop(Topology::build(&prefix, &hosts).unwrap());
    assert!(!netns::exists(&format!("{prefix}-0")));
}

#[test]
fn routed_node_forwards_between_pods_and_reaches_them_from_the_node_ip() {
    use netpol_lab::probe::{Listener, Prober, Protocol};
    use netpol_lab::topology::NodeSpec;
    use std::time::Duration;
    if !kernel::available("routed_node_forwards_between_pods_and_reaches_them_from_the_node_ip") {
        return;
    }
    let prefix = kernel::prefix("routed");
    let node = NodeSpec::new(
        "node-1",
        "172.18.0.2/16".parse().unwrap(),
        Some("fd00:18::2/64".parse().unwrap()),
    );
    let hosts = [
        HostSpec::new(
            "ns/a",
            Some("10.244.0.10/16".parse().unwrap()),
            Some("fd00:10:244::10/64".parse().unwrap()),
        ),
        HostSpec::new("ns/b", Some("10.244.1.20/16".parse().unwrap()), None),
    ];
    let lab = Topology::build_routed(&prefix, &node, &hosts).unwrap();
    assert_eq!(lab.node().unwrap().netns, lab.hub());
    // No bridge: the node routes each Pod's /32 to its veth end.
    let routes = netns::exec_checked(lab.hub(), "ip", &["route"], None).unwrap();
    let routes = String::from_utf8(routes.stdout).unwrap();
    assert!(routes.contains("10.244.0.10 dev h0"), "{routes}");
    assert!(!addrs(lab.hub()).contains("br0"));
    let a = addrs(&lab.host("ns/a").unwrap().netns);
    assert!(a.contains("10.244.0.10/32"), "{a}");

    let listeners = [
        Listener::new("ns/a", Protocol::Tcp, 80),
        Listener::new("ns/b", Protocol::Tcp, 80),
        Listener::new("ns/b", Protocol::Udp, 53),
        Listener::new("node-1", Protocol::Tcp, 10250),
    ];
    let prober = Prober::start(&lab, &listeners).unwrap();
    let t = Duration::from_secs(2);
    for (from, to, proto, port) in [
        ("ns/a", "10.244.1.20", Protocol::Tcp, 80),
        ("ns/a", "10.244.1.20", Protocol::Udp, 53),
        ("ns/b", "10.244.0.10", Protocol::Tcp, 80),
        ("node-1", "10.244.0.10", Protocol::Tcp, 80),
        ("node-1", "fd00:10:244::10", Protocol::Tcp, 80),
        ("ns/a", "172.18.0.2", Protocol::Tcp, 10250),
    ] {
        let r = prober
            .probe(from, to.parse().unwrap(), proto, port, t)
            .unwrap();
        assert!(r.connected, "{from} -> {to} {proto}/{port}: {}", r.detail);
    }
    // Forwarding is on in the node only: a Pod does not route for others.
    let fwd = netns::exec_checked(
        &lab.host("ns/a").unwrap().netns,
        "sysctl",
        &["-n", "net.ipv4.ip_forward"],
        None,
    )
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&fwd.stdout).trim(), "0");
    drop(prober);
    lab.teardown().unwrap();
    assert!(!netns::exists(&format!("{prefix}-hub")));
}
