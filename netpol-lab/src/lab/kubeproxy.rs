//! A kube-proxy equivalent for the lab: Service DNAT in the node's network namespace,
//! shaped like kube-proxy's nftables mode (`pkg/proxy/nftables`).
//!
//! [`render`] is pure: Service ports with their resolved endpoints in, one nft file out
//! (`table ip netpol-kubeproxy` and, when a Service has IPv6 addresses,
//! `table ip6 netpol-kubeproxy`), each replaced in one transaction. [`apply`] loads it
//! into the node namespace.
//!
//! What it does, as kube-proxy does:
//! - `nat-prerouting` (hook prerouting, priority dstnat) and `nat-output` (hook output,
//!   priority -100, the node's own traffic) jump to `services`, which looks the
//!   destination up in a verdict map `service-ips` keyed by
//!   `address . protocol . port`: ClusterIPs, externalIPs and node address . nodePort.
//! - Each Service port has a chain choosing an endpoint at random
//!   (`numgen random mod N vmap { 0 : goto ep-…, … }`); each endpoint chain marks a
//!   hairpin flow (source == the endpoint) for masquerade and `dnat to IP:targetPort`.
//! - Traffic that arrived through an external address (nodePort, externalIP) is marked
//!   for masquerade too (`externalTrafficPolicy: Cluster`, kube-proxy's default), so the
//!   backend sees the node as the source.
//! - `nat-postrouting` (hook postrouting, priority srcnat) masquerades marked flows
//!   (mark bit `0x4000`, as kube-proxy).
//! - A Service port without endpoints is rejected (`filter-*` chains at priority -110,
//!   new connections only), as kube-proxy's `no-endpoint-services` map does.
//!
//! Not modelled: `externalTrafficPolicy`/`internalTrafficPolicy: Local`, session
//! affinity, LoadBalancer ingress addresses, topology hints.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use policy_compiler::Protocol;

use crate::nft::{self, NftError};

/// The table name (family `ip` and `ip6`), distinct from kube-proxy's own
/// `kube-proxy` so both could coexist.
pub const TABLE: &str = "netpol-kubeproxy";
/// The masquerade mark bit (kube-proxy's).
pub const MASQ_MARK: u32 = 0x4000;

/// One port of one Service with its ready endpoints, as kube-proxy sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServicePort {
    /// `namespace/name` of the Service.
    pub service: String,
    /// The port's name (may be empty for a single-port Service).
    pub port_name: String,
    /// The port's protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// ClusterIPs (none for a headless Service: it gets no DNAT).
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// The nodePort, if any (reached at every node address).
    pub node_port: Option<u16>,
    /// Ready endpoints: backend address and the resolved targetPort.
    pub endpoints: Vec<SocketAddr>,
}

impl ServicePort {
    fn label(&self) -> String {
        let proto = self.protocol.to_string().to_lowercase();
        if self.port_name.is_empty() {
            format!("{}/{proto}/{}", self.service, self.port)
        } else {
            format!("{}/{proto}/{}", self.service, self.port_name)
        }
    }
}

/// nft accepts comments of at most 128 bytes: longer ones (long Service names) keep their
/// end, which names the port and endpoint. See: #13
fn comment(s: &str) -> String {
    const MAX: usize = 127;
    let clean: String = s
        .chars()
        .map(|c| if c == '"' || !c.is_ascii() { '_' } else { c })
        .collect();
    if clean.len() <= MAX {
        return clean;
    }
    // ASCII only: byte and char positions agree.
    format!("...{}", &clean[clean.len() - (MAX - 3)..])
}

fn nft_proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Which family a table is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn table(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }
    fn addr(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }
    fn has(self, ip: &IpAddr) -> bool {
        matches!(
            (self, ip),
            (Family::V4, IpAddr::V4(_)) | (Family::V6, IpAddr::V6(_))
        )
    }
}

/// The nft file for `ports` on a node with addresses `node_ips`: replaces
/// `table ip netpol-kubeproxy` (and `table ip6 netpol-kubeproxy` when any address is
/// IPv6) in one transaction. Deterministic: ports are sorted, endpoints and addresses
/// deduplicated and sorted.
pub fn render(ports: &[ServicePort], node_ips: &[IpAddr]) -> String {
    let mut ports = ports.to_vec();
    ports.sort();
    ports.dedup();
    let node_ips: BTreeSet<IpAddr> = node_ips.iter().copied().collect();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# kube-proxy equivalent of the netpol lab (nftables mode shape); see \
         enforcer::lab::kubeproxy"
    );
    let any_v6 = ports.iter().any(|p| {
        p.cluster_ips
            .iter()
            .chain(&p.external_ips)
            .any(IpAddr::is_ipv6)
    }) || node_ips.iter().any(IpAddr::is_ipv6);
    render_family(&mut out, Family::V4, &ports, &node_ips);
    if any_v6 {
        render_family(&mut out, Family::V6, &ports, &node_ips);
    }
    out
}

fn render_family(
    out: &mut String,
    fam: Family,
    ports: &[ServicePort],
    node_ips: &BTreeSet<IpAddr>,
) {
    let t = fam.table();
    let ipkw = t; // `ip` / `ip6` as a match keyword
    let _ = writeln!(out, "add table {t} {TABLE}\ndelete table {t} {TABLE}");
    let _ = writeln!(out, "table {t} {TABLE} {{");
    let mut elements = Vec::new();
    let mut no_endpoints = Vec::new();
    let mut chains = String::new();
    for (i, p) in ports.iter().enumerate() {
        let proto = nft_proto(p.protocol);
        let internal: Vec<IpAddr> = p
            .cluster_ips
            .iter()
            .filter(|a| fam.has(a))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut external: BTreeSet<(IpAddr, u16)> = p
            .external_ips
            .iter()
            .filter(|a| fam.has(a))
            .map(|a| (*a, p.port))
            .collect();
        if let Some(np) = p.node_port {
            external.extend(node_ips.iter().filter(|a| fam.has(a)).map(|a| (*a, np)));
        }
        if internal.is_empty() && external.is_empty() {
            continue;
        }
        let eps: Vec<SocketAddr> = p
            .endpoints
            .iter()
            .filter(|e| fam.has(&e.ip()))
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let label = p.label();
        if eps.is_empty() {
            for a in internal.iter().chain(external.iter().map(|(a, _)| a)) {
                let port = external
                    .iter()
                    .find(|(x, _)| x == a)
                    .map_or(p.port, |(_, np)| *np);
                no_endpoints.push(format!(
                    "{a} . {proto} . {port} comment \"{}\"",
                    comment(&format!("{label} has no endpoints"))
                ));
            }
            continue;
        }
        for a in &internal {
            elements.push(format!("{a} . {proto} . {} : goto svc-{i}", p.port));
        }
        for (a, port) in &external {
            elements.push(format!("{a} . {proto} . {port} : goto ext-{i}"));
        }
        let _ = writeln!(
            chains,
            "\tchain svc-{i} {{\n\t\tcomment \"{}\"",
            comment(&label)
        );
        let vmap: Vec<String> = (0..eps.len())
            .map(|j| format!("{j} : goto ep-{i}-{j}"))
            .collect();
        let _ = writeln!(
            chains,
            "\t\tnumgen random mod {} vmap {{ {} }}\n\t}}",
            eps.len(),
            vmap.join(", ")
        );
        if !external.is_empty() {
            let _ = writeln!(
                chains,
                "\tchain ext-{i} {{\n\t\tcomment \"{}\"\n\
                 \t\tjump mark-for-masquerade\n\t\tgoto svc-{i}\n\t}}",
                comment(&format!("{label} via nodePort or externalIP"))
            );
        }
        for (j, ep) in eps.iter().enumerate() {
            let _ = writeln!(
                chains,
                "\tchain ep-{i}-{j} {{\n\t\tcomment \"{c}\"\n\
                 \t\t{ipkw} saddr {ip} jump mark-for-masquerade\n\
                 \t\tmeta l4proto {proto} dnat to {ep}\n\t}}",
                c = comment(&format!("{label} -> {ep}")),
                ip = ep.ip(),
            );
        }
    }
    let key = format!("{} . inet_proto . inet_service", fam.addr());
    let _ = writeln!(out, "\tmap service-ips {{\n\t\ttype {key} : verdict");
    if !elements.is_empty() {
        let _ = writeln!(out, "\t\telements = {{ {} }}", elements.join(",\n\t\t\t"));
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(out, "\tset no-endpoint-services {{\n\t\ttype {key}");
    if !no_endpoints.is_empty() {
        let _ = writeln!(
            out,
            "\t\telements = {{ {} }}",
            no_endpoints.join(",\n\t\t\t")
        );
    }
    let _ = writeln!(out, "\t}}");
    let _ = writeln!(
        out,
        "\tchain mark-for-masquerade {{\n\t\tmeta mark set meta mark | {MASQ_MARK:#x}\n\t}}\n\
         \tchain masquerading {{\n\t\tmeta mark & {MASQ_MARK:#x} == 0 return\n\
         \t\tmeta mark set meta mark ^ {MASQ_MARK:#x}\n\t\tmasquerade\n\t}}\n\
         \tchain services {{\n\t\t{ipkw} daddr . meta l4proto . th dport vmap @service-ips\n\t}}\n\
         \tchain nat-prerouting {{\n\t\ttype nat hook prerouting priority dstnat; policy accept;\n\
         \t\tjump services\n\t}}\n\
         \tchain nat-output {{\n\t\ttype nat hook output priority -100; policy accept;\n\
         \t\tjump services\n\t}}\n\
         \tchain nat-postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tjump masquerading\n\t}}\n\
         \tchain endpoints-check {{\n\
         \t\t{ipkw} daddr . meta l4proto . th dport @no-endpoint-services reject\n\t}}"
    );
    for (hook, name) in [
        ("forward", "filter-forward"),
        ("input", "filter-input"),
        ("output", "filter-output"),
    ] {
        let _ = writeln!(
            out,
            "\tchain {name} {{\n\t\ttype filter hook {hook} priority -110; policy accept;\n\
             \t\tct state new jump endpoints-check\n\t}}"
        );
    }
    out.push_str(&chains);
    let _ = writeln!(out, "}}");
}

/// Loads [`render`]'s output into the node namespace `netns` (one transaction).
pub fn apply(netns: &str, ports: &[ServicePort], node_ips: &[IpAddr]) -> Result<(), NftError> {
    nft::apply(netns, &render(ports, node_ips))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(service: &str, proto: Protocol, port: u16, eps: &[&str]) -> ServicePort {
        ServicePort {
            service: service.to_owned(),
            port_name: String::new(),
            protocol: proto,
            port,
            cluster_ips: vec!["10.96.0.10".parse().unwrap()],
            external_ips: vec![],
            node_port: None,
            endpoints: eps.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    // See: #13 — the conformance fixture's Service names are long.
    #[test]
    fn long_comments_are_cut_to_what_nft_accepts() {
        let long = format!("ns/s-{}/sctp/9003 -> 10.244.3.10:9003", "x".repeat(200));
        let c = comment(&long);
        assert_eq!(c.len(), 127);
        assert!(
            c.starts_with("...") && c.ends_with("-> 10.244.3.10:9003"),
            "{c}"
        );
        assert_eq!(comment("a \"b\""), "a _b_");
    }

    #[test]
    fn cluster_ip_picks_a_random_endpoint_and_dnats_to_its_target_port() {
        let p = port(
            "kube-system/kube-dns",
            Protocol::Udp,
            53,
            &["10.244.0.11:5353", "10.244.0.10:5353"],
        );
        let text = render(&[p], &["172.18.0.2".parse().unwrap()]);
        assert!(text.starts_with("# kube-proxy"), "{text}");
        assert!(text.contains("add table ip netpol-kubeproxy\ndelete table ip netpol-kubeproxy\n"));
        assert!(
            text.contains("10.96.0.10 . udp . 53 : goto svc-0"),
            "{text}"
        );
        assert!(
            text.contains("numgen random mod 2 vmap { 0 : goto ep-0-0, 1 : goto ep-0-1 }"),
            "{text}"
        );
        // Endpoints sorted; hairpin marked before the DNAT.
        assert!(text.contains(
            "ip saddr 10.244.0.10 jump mark-for-masquerade\n\t\tmeta l4proto udp dnat to 10.244.0.10:5353"
        ), "{text}");
        assert!(text.contains("type nat hook prerouting priority dstnat"));
        assert!(text.contains("type nat hook output priority -100"));
        assert!(!text.contains("table ip6"), "IPv4 only: {text}");
    }

    #[test]
    fn node_ports_and_external_ips_masquerade_and_no_endpoints_reject() {
        let mut np = port("x/web", Protocol::Tcp, 80, &["10.244.0.12:8080"]);
        np.node_port = Some(30080);
        np.external_ips = vec!["192.0.2.7".parse().unwrap()];
        let empty = port("x/empty", Protocol::Tcp, 81, &[]);
        let text = render(
            &[np, empty],
            &["172.18.0.2".parse().unwrap(), "fd00::2".parse().unwrap()],
        );
        assert!(
            text.contains("172.18.0.2 . tcp . 30080 : goto ext-"),
            "{text}"
        );
        assert!(text.contains("192.0.2.7 . tcp . 80 : goto ext-"), "{text}");
        assert!(
            text.contains("jump mark-for-masquerade\n\t\tgoto svc-"),
            "{text}"
        );
        assert!(
            text.contains("10.96.0.10 . tcp . 81 comment \"x/empty/tcp/81 has no endpoints\""),
            "{text}"
        );
        // The node has IPv6: an ip6 table too, without IPv4 elements.
        let v6 = &text[text.find("table ip6").unwrap()..];
        assert!(!v6.contains("10.96.0.10"), "{v6}");
    }

    #[test]
    fn output_is_deterministic() {
        let a = port(
            "a/a",
            Protocol::Tcp,
            80,
            &["10.244.0.1:80", "10.244.0.2:80"],
        );
        let b = port("b/b", Protocol::Udp, 53, &["10.244.0.3:53"]);
        let ips: [IpAddr; 1] = ["172.18.0.2".parse().unwrap()];
        assert_eq!(
            render(&[a.clone(), b.clone()], &ips),
            render(&[b, a.clone(), a], &ips)
        );
    }
}
