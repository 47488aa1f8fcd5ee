//! The routed layout: the hub namespace is a Kubernetes **node** and every host a Pod on
//! a routed veth, as Calico and most cloud CNIs wire a node.
//!
//! ```text
//!  <prefix>-hub = the node                                   <prefix>-0 (a Pod)
//!  ┌──────────────────────────────────────────────┐          ┌───────────────────────────┐
//!  │ eth0 172.18.0.2/16, default dev eth0         │          │ eth0 10.244.0.10/32       │
//!  │ h0 (no IPv4, proxy_arp, fe80::1/64) ─────────┼── veth ──┤ 169.254.1.1 dev eth0 link │
//!  │ 10.244.0.10/32 dev h0                        │          │ default via 169.254.1.1   │
//!  │ ip_forward=1                                 │          │ default via fe80::1 (v6)  │
//!  └──────────────────────────────────────────────┘          └───────────────────────────┘
//! ```
//!
//! - The node has an `eth0` with the node IP(s) and a default route through it, so it
//!   has an address to source its own traffic from (kubelet probes, masquerade) and a
//!   route for Service addresses that kube-proxy DNATs (a ClusterIP is on no interface).
//!   `eth0` is one end of a veth pair whose other end (`eth0-up`, up, no address, no
//!   proxy ARP) stays in the node: nothing answers there, so traffic to addresses
//!   outside the lab dies unanswered and never leaves the lab (kernels without the
//!   `dummy` module work too).
//! - Each Pod's host-side veth end `h<n>` has no IPv4 address; the node routes the Pod's
//!   /32 (and /128) to it. `proxy_arp` on `h<n>` answers the Pod's ARP for its gateway
//!   `169.254.1.1` (Calico's link-local gateway: it exists nowhere, proxy ARP answers
//!   because the node routes it elsewhere). IPv6 uses `fe80::1` on every `h<n>`.
//! - Forwarding is on in the node namespace only; no bridge, so no `br_netfilter`: every
//!   Pod-to-Pod packet crosses the node's IP stack (prerouting, forward, postrouting),
//!   exactly where kube-proxy and a node-level policy table hook.

use std::fmt::Write as _;

use ipnet::{Ipv4Net, Ipv6Net};

use super::{HOST_IFACE, Host};

/// The Pods' IPv4 gateway: link-local, answered by proxy ARP on the node's veth ends.
pub const GATEWAY_V4: &str = "169.254.1.1";
/// The Pods' IPv6 gateway: a link-local address on every node-side veth end.
pub const GATEWAY_V6: &str = "fe80::1";
/// The node's own interface (holding the node IPs).
pub const NODE_IFACE: &str = "eth0";
/// The other end of the node's interface: a dead end inside the node namespace.
pub const NODE_UPLINK: &str = "eth0-up";

/// The node of a routed topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's name (`spec.nodeName` of its Pods).
    pub name: String,
    /// The node's IPv4 address with the prefix of its network, e.g. `172.18.0.2/16`.
    pub ipv4: Ipv4Net,
    /// The node's IPv6 address, if the lab is dual-stack.
    pub ipv6: Option<Ipv6Net>,
}

impl NodeSpec {
    /// A node spec.
    pub fn new(name: impl Into<String>, ipv4: Ipv4Net, ipv6: Option<Ipv6Net>) -> Self {
        Self {
            name: name.into(),
            ipv4,
            ipv6,
        }
    }
}

/// Sysctls of the node namespace, written before any veth exists so that `default`
/// is inherited by every interface.
pub(super) const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
];

/// Sysctls of the node namespace once the veths exist: proxy ARP on every Pod's
/// node-side end (and nowhere else), answered at once (`proxy_delay` 0, as Calico sets
/// it: the kernel's default delays proxy answers by up to 0.8 s, which a Pod's first
/// packet would wait for).
pub(super) fn veth_sysctls(hosts: &[Host]) -> Vec<(String, &'static str)> {
    (0..hosts.len())
        .flat_map(|n| {
            [
                (format!("net.ipv4.conf.h{n}.proxy_arp"), "1"),
                (format!("net.ipv4.neigh.h{n}.proxy_delay"), "0"),
            ]
        })
        .collect()
}

/// `ip -batch` commands for the node namespace: its own interface, one veth pair per
/// host (the host end moved into the host's namespace) and the host routes.
pub(super) fn node_commands(node: &NodeSpec, hosts: &[Host]) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "link set lo up");
    let _ = writeln!(c, "link add {NODE_IFACE} type veth peer name {NODE_UPLINK}");
    let _ = writeln!(c, "link set {NODE_UPLINK} up");
    let _ = writeln!(c, "addr add {} dev {NODE_IFACE}", node.ipv4);
    if let Some(v6) = node.ipv6 {
        let _ = writeln!(c, "addr add {v6} dev {NODE_IFACE} nodad");
    }
    let _ = writeln!(c, "link set {NODE_IFACE} up");
    let _ = writeln!(c, "route add 0.0.0.0/0 dev {NODE_IFACE}");
    if node.ipv6.is_some() {
        let _ = writeln!(c, "route add ::/0 dev {NODE_IFACE}");
    }
    for (n, h) in hosts.iter().enumerate() {
        let _ = writeln!(
            c,
            "link add h{n} type veth peer name {HOST_IFACE} netns {}",
            h.netns
        );
        if h.ipv6.is_some() {
            let _ = writeln!(c, "addr add {GATEWAY_V6}/64 dev h{n} nodad");
        }
        let _ = writeln!(c, "link set h{n} up");
        if let Some(v4) = h.ipv4 {
            let _ = writeln!(c, "route add {}/32 dev h{n}", v4.addr());
        }
        if let Some(v6) = h.ipv6 {
            let _ = writeln!(c, "route add {}/128 dev h{n}", v6.addr());
        }
    }
    c
}

/// `ip -batch` commands for one host (Pod) namespace of a routed topology.
pub(super) fn host_commands(h: &Host) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "link set lo up");
    if let Some(v4) = h.ipv4 {
        let _ = writeln!(c, "addr add {}/32 dev {HOST_IFACE}", v4.addr());
    }
    if let Some(v6) = h.ipv6 {
        let _ = writeln!(c, "addr add {}/128 dev {HOST_IFACE} nodad", v6.addr());
    }
    let _ = writeln!(c, "link set {HOST_IFACE} up");
    if h.ipv4.is_some() {
        let _ = writeln!(c, "route add {GATEWAY_V4} dev {HOST_IFACE} scope link");
        let _ = writeln!(c, "route add 0.0.0.0/0 via {GATEWAY_V4} dev {HOST_IFACE}");
    }
    if h.ipv6.is_some() {
        let _ = writeln!(c, "route add ::/0 via {GATEWAY_V6} dev {HOST_IFACE}");
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(n: usize, v4: &str, v6: Option<&str>) -> Host {
        Host {
            name: format!("ns/p{n}"),
            netns: format!("t-{n}"),
            ipv4: v4.parse().ok(),
            ipv6: v6.and_then(|a| a.parse().ok()),
        }
    }

    #[test]
    fn node_routes_each_pod_address_to_its_veth() {
        let node = NodeSpec::new("n1", "172.18.0.2/16".parse().unwrap(), None);
        let hosts = [
            host(0, "10.244.0.10/16", Some("fd00::10/64")),
            host(1, "10.244.0.11/16", None),
        ];
        let c = node_commands(&node, &hosts);
        assert!(c.contains("addr add 172.18.0.2/16 dev eth0\n"), "{c}");
        assert!(
            c.contains("link add eth0 type veth peer name eth0-up\n"),
            "{c}"
        );
        assert_eq!(veth_sysctls(&hosts)[2].0, "net.ipv4.conf.h1.proxy_arp");
        assert_eq!(veth_sysctls(&hosts)[3].0, "net.ipv4.neigh.h1.proxy_delay");
        assert!(c.contains("route add 10.244.0.10/32 dev h0\n"), "{c}");
        assert!(c.contains("route add fd00::10/128 dev h0\n"), "{c}");
        assert!(c.contains("addr add fe80::1/64 dev h0 nodad\n"), "{c}");
        assert!(c.contains("route add 10.244.0.11/32 dev h1\n"), "{c}");
        // No IPv6 on the IPv4-only host's veth end, no IPv6 default on a v4 node.
        assert!(!c.contains("dev h1 nodad"), "{c}");
        assert!(!c.contains("::/0"), "{c}");
    }

    #[test]
    fn pods_get_host_addresses_and_a_link_local_gateway() {
        let c = host_commands(&host(0, "10.244.0.10/16", Some("fd00::10/64")));
        assert!(c.contains("addr add 10.244.0.10/32 dev eth0\n"), "{c}");
        assert!(c.contains("addr add fd00::10/128 dev eth0 nodad\n"), "{c}");
        assert!(
            c.contains("route add 169.254.1.1 dev eth0 scope link\n"),
            "{c}"
        );
        assert!(
            c.contains("route add 0.0.0.0/0 via 169.254.1.1 dev eth0\n"),
            "{c}"
        );
        assert!(c.contains("route add ::/0 via fe80::1 dev eth0\n"), "{c}");
    }
}
