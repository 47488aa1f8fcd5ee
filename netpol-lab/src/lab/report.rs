//! What a lab run found: the kernel's truth tables beside the compiler's, the probes that
//! disagree, and the drop reports; as text for people and JSON for tools
//! (see `docs/lab.md` for the JSON shape).

use std::fmt::Write as _;
use std::net::IpAddr;

use policy_compiler::Protocol;
use serde::Serialize;

use super::plan::Skipped;
use crate::drops::report::DropReport;

/// One Pod of the lab and where it lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabPodInfo {
    /// `ns/name`.
    pub pod: String,
    /// Its network namespace (`ip netns exec <netns> …`).
    pub netns: String,
    /// Addresses, primary first.
    pub ips: Vec<IpAddr>,
    /// True when the lab assigned the addresses.
    pub assigned: bool,
}

/// The kernel's and the compiler's truth table for one (protocol, port): the
/// `netpol matrix -o json` shape plus `expected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabMatrix {
    /// Port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// The lab's Pods (`ns/name`), rows and columns.
    pub endpoints: Vec<String>,
    /// The kernel: `allowed[src][dst]` is whether a real connection got through
    /// (primary address family).
    pub allowed: Vec<Vec<bool>>,
    /// The compiler: `netpol matrix` restricted to the lab's Pods.
    pub expected: Vec<Vec<bool>>,
}

impl LabMatrix {
    /// Cells where the kernel and the compiler differ.
    pub fn mismatches(&self) -> usize {
        self.allowed
            .iter()
            .zip(&self.expected)
            .map(|(a, e)| a.iter().zip(e).filter(|(a, e)| a != e).count())
            .sum()
    }
}

/// A probe whose real outcome differs from the compiler's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Disagreement {
    /// Source Pod.
    pub src: String,
    /// Destination Pod.
    pub dst: String,
    /// Source address.
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Port.
    pub port: u16,
    /// Whether the connection got through.
    pub kernel: bool,
    /// Whether the compiler allows it.
    pub expected: bool,
    /// False for the second address family of a dual-stack pair (not a matrix cell).
    pub primary: bool,
    /// What the probe saw (`connected`, `timed out after 300ms`, …).
    pub detail: String,
    /// `netpol explain` of the flow at these addresses.
    pub explanation: String,
}

/// Milliseconds spent per phase.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// Removing leftovers and building the namespaces, veths and bridge.
    pub topology_ms: u64,
    /// The agent: compile, render and apply every Pod's ruleset.
    pub agent_ms: u64,
    /// Listeners, probes (and retries) and collecting drop reports.
    pub probes_ms: u64,
    /// From the start of the lab to the report.
    pub total_ms: u64,
}

/// One Service cell: a source Pod to a Service port, probed once (or, when its backends'
/// verdicts differ, several times: kube-proxy picks a backend at random).
#[derive(Debug, Clone, Serialize)]
pub struct ServiceCell {
    /// What was probed and what the compiler says.
    #[serde(flatten)]
    pub probe: super::services::ServiceProbe,
    /// The outcomes seen (`connected` values), sorted, deduplicated.
    pub observed: Vec<bool>,
    /// `observed == expected`.
    pub agree: bool,
    /// The last probe's outcome.
    pub detail: String,
}

/// One kubelet-style probe from the node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeCell {
    /// What was probed.
    #[serde(flatten)]
    pub probe: super::services::NodeProbe,
    /// The probe connected (it always must).
    pub connected: bool,
    /// The probe's outcome.
    pub detail: String,
}

/// One name lookup from a lab Pod through the lab's `kube-system/kube-dns` ClusterIP
/// (UDP), as an application resolves a Service before connecting to it.
#[derive(Debug, Clone, Serialize)]
pub struct DnsCell {
    /// The asking Pod.
    pub src: String,
    /// The name asked (`<svc>.<ns>.svc.cluster.local`), A or AAAA by the Pod's family.
    pub name: String,
    /// The DNS server asked: the kube-dns ClusterIP of the Pod's family, port 53.
    pub server: std::net::SocketAddr,
    /// The compiler: the Pod may reach kube-dns on UDP 53 after DNAT (its egress and the
    /// DNS Pod's ingress).
    pub expected: bool,
    /// An answer came back.
    pub resolved: bool,
    /// The addresses answered (the Service's ClusterIPs of that family).
    pub answer: Vec<std::net::IpAddr>,
    /// `resolved == expected`, and an answer names the Service's ClusterIPs.
    pub agree: bool,
    /// What the lookup saw.
    pub detail: String,
}

fn verdicts(v: &[bool]) -> String {
    match v {
        [false] => "denied".to_owned(),
        [true] => "allowed".to_owned(),
        [] => "nothing".to_owned(),
        _ => "allowed or denied (per backend)".to_owned(),
    }
}

/// Everything a lab run found.
#[derive(Debug, Clone, Serialize)]
pub struct LabReport {
    /// True when every probe agrees with the compiler.
    pub agree: bool,
    /// Namespace name prefix of the lab.
    pub prefix: String,
    /// The hub namespace holding the bridge.
    pub hub: String,
    /// The lab's Pods.
    pub pods: Vec<LabPodInfo>,
    /// Objects without a namespace, and why.
    pub skipped: Vec<Skipped>,
    /// Remarks (assigned addresses, leftovers removed, drop listener problems).
    pub notes: Vec<String>,
    /// One truth table per (protocol, port), sorted.
    pub matrices: Vec<LabMatrix>,
    /// Every probe that disagrees (both address families).
    pub disagreements: Vec<Disagreement>,
    /// Drop reports collected while probing, one per flow.
    pub drops: Vec<DropReport>,
    /// Probes through Service addresses (kube-proxy DNAT in the node), one per source
    /// Pod and Service port: the backends' verdicts beside what the kernel did.
    pub services: Vec<ServiceCell>,
    /// Kubelet-style probes from the node's address to every Pod's declared ports
    /// (always allowed).
    pub node_probes: Vec<NodeCell>,
    /// Service names looked up from every lab Pod through the lab's cluster DNS (empty
    /// when the inputs define `kube-system/kube-dns`: the lab runs no DNS then).
    pub dns: Vec<DnsCell>,
    /// Probes run (retries not counted).
    pub probes: usize,
    /// Where the time went.
    pub timings_ms: Timings,
}

fn side(p: &crate::drops::report::Peer) -> String {
    p.pod.clone().unwrap_or_else(|| p.ip.to_string())
}

/// What a drop line says after the ports: `dropped (ingress at x/a, isolated by …)`.
fn dropped_at(d: &DropReport) -> String {
    // See: #12 — an audit chain's record: the packet passed.
    let verb = if d.audit {
        "would drop (audit)"
    } else {
        "dropped"
    };
    let mut s = format!("{verb} ({} at {}", d.direction, d.pod);
    // See: #13 — a ClusterNetworkPolicy Deny rule decided, not the NetworkPolicies.
    if let (Some(p), Some(r)) = (&d.cluster_policy, &d.cluster_rule) {
        let _ = write!(s, ", {} {p} rule {r}", d.tier);
    } else if !d.policies.is_empty() {
        let _ = write!(s, ", isolated by {}", d.policies.join(", "));
    }
    // Dropped by the node table after DNAT: the Service the flow went through.
    if !d.services.is_empty() {
        let _ = write!(s, "; via Service {}", d.services.join(", "));
    }
    s.push(')');
    s
}

/// One line for a drop report:
/// `x/b -> x/a TCP 80 dropped (ingress at x/a, isolated by x/deny-all) ×3`.
pub fn drop_line(d: &DropReport, mark_v6: bool) -> String {
    let mut s = format!("{} -> {} {}", side(&d.src), side(&d.dst), d.protocol);
    if let Some(port) = d.dst_port {
        let _ = write!(s, " {port}");
    }
    if mark_v6 && d.dst.ip.is_ipv6() {
        s.push_str(" (IPv6)");
    }
    let _ = write!(s, " {}", dropped_at(d));
    if d.count > 1 {
        let _ = write!(s, " ×{}", d.count);
    }
    if let Some(n) = &d.note {
        let _ = write!(s, " [{n}]");
    }
    s
}

/// Drop lines with the ports of one (source, destination, family, dropping side)
/// together: `x/b -> x/a TCP 80, 81; UDP 80 dropped (ingress at x/a, …) ×4`.
pub fn drop_lines(drops: &[DropReport], mark_v6: bool) -> Vec<String> {
    struct Group {
        head: String,
        tail: String,
        ports: Vec<(String, Option<u16>)>,
        count: u64,
    }
    let mut groups: Vec<Group> = Vec::new();
    for d in drops {
        let v6 = if mark_v6 && d.dst.ip.is_ipv6() {
            " (IPv6)"
        } else {
            ""
        };
        let head = format!("{} -> {}", side(&d.src), side(&d.dst));
        let mut tail = format!("{v6} {}", dropped_at(d));
        if let Some(n) = &d.note {
            let _ = write!(tail, " [{n}]");
        }
        let port = (d.protocol.to_string(), d.dst_port);
        match groups.iter_mut().find(|g| g.head == head && g.tail == tail) {
            Some(g) => {
                g.ports.push(port);
                g.count += d.count;
            }
            None => groups.push(Group {
                head,
                tail,
                ports: vec![port],
                count: d.count,
            }),
        }
    }
    groups
        .into_iter()
        .map(|g| {
            let n = g.ports.len();
            let mut by_proto: Vec<(String, Vec<String>)> = Vec::new();
            for (proto, port) in g.ports {
                let port = port.map(|p| p.to_string());
                match by_proto.iter_mut().find(|(p, _)| *p == proto) {
                    Some((_, ports)) => ports.extend(port),
                    None => by_proto.push((proto, port.into_iter().collect())),
                }
            }
            let ports: Vec<String> = by_proto
                .into_iter()
                .map(|(proto, ports)| {
                    if ports.is_empty() {
                        proto
                    } else {
                        format!("{proto} {}", ports.join(", "))
                    }
                })
                .collect();
            let mut line = format!("{} {}{}", g.head, ports.join("; "), g.tail);
            // `×N` counts the packets of one flow; a group says how many in all, when
            // some flow was dropped more than once.
            if n == 1 && g.count > 1 {
                let _ = write!(line, " ×{}", g.count);
            } else if n > 1 && g.count > n as u64 {
                let _ = write!(line, " ({} packets)", g.count);
            }
            line
        })
        .collect()
}

fn mark(allowed: bool) -> char {
    if allowed { '.' } else { 'X' }
}

impl LabMatrix {
    fn title(&self) -> String {
        format!("{}/{}", self.protocol, self.port)
    }

    /// Both grids side by side; columns are numbered like the rows. A cell where the
    /// kernel differs from the compiler is followed by `!` (and red with `color`).
    pub fn to_text(&self, color: bool) -> String {
        let n = self.endpoints.len();
        let num_w = n.saturating_sub(1).to_string().len();
        let name_w = self.endpoints.iter().map(String::len).max().unwrap_or(0);
        let left_w = num_w + 1 + name_w;
        let cell_w = num_w + 1;
        let grid_w = (cell_w * n).max("kernel".len());
        let mut s = String::new();
        let mismatches = self.mismatches();
        let verdict = if mismatches == 0 {
            "kernel agrees with netpol matrix".to_owned()
        } else {
            format!("{mismatches} cell(s) DISAGREE with netpol matrix (marked !)")
        };
        let _ = writeln!(s, "{}: {verdict}", self.title());
        let _ = writeln!(s, "{:left_w$}   {:grid_w$}   netpol matrix", "", "kernel");
        let header: String = (0..n).map(|j| format!("{j:<cell_w$}")).collect();
        let line = format!("{:left_w$}   {header:grid_w$}   {header}", "");
        let _ = writeln!(s, "{}", line.trim_end());
        for (i, src) in self.endpoints.iter().enumerate() {
            let mut kernel = String::new();
            let mut compiler = String::new();
            for j in 0..n {
                let (k, e) = (self.allowed[i][j], self.expected[i][j]);
                let pad = " ".repeat(cell_w.saturating_sub(2));
                if k == e {
                    let _ = write!(kernel, "{} {pad}", mark(k));
                } else if color {
                    let _ = write!(kernel, "\x1b[1;31m{}!\x1b[0m{pad}", mark(k));
                } else {
                    let _ = write!(kernel, "{}!{pad}", mark(k));
                }
                let _ = write!(compiler, "{} {pad}", mark(e));
            }
            // Pad by visible width (escape codes have none).
            let visible = cell_w * n;
            let fill = " ".repeat(grid_w.saturating_sub(visible));
            let line = format!("{i:>num_w$} {src:<name_w$}   {kernel}{fill}   {compiler}");
            let _ = writeln!(s, "{}", line.trim_end());
        }
        s
    }
}

impl LabReport {
    /// True when some Pod of the lab has IPv4 and some has IPv6.
    fn dual_stack(&self) -> bool {
        let any = |v4: bool| {
            self.pods
                .iter()
                .any(|p| p.ips.iter().any(|i| i.is_ipv4() == v4))
        };
        any(true) && any(false)
    }

    /// The report for people: the lab's Pods, each table pair, disagreements with their
    /// explanation, drop reports, and a verdict line.
    pub fn to_text(&self, color: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "lab {}: {} Pod(s), node netns {} (routed veths, kube-proxy DNAT)",
            self.prefix,
            self.pods.len(),
            self.hub
        );
        let w = self.pods.iter().map(|p| p.pod.len()).max().unwrap_or(0);
        let nw = self.pods.iter().map(|p| p.netns.len()).max().unwrap_or(0);
        for p in &self.pods {
            let ips: Vec<String> = p.ips.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                s,
                "  {:<w$}  {:<nw$}  {}{}",
                p.pod,
                p.netns,
                ips.join(", "),
                if p.assigned { "  (assigned)" } else { "" }
            );
        }
        for k in &self.skipped {
            let _ = writeln!(s, "note: {k}");
        }
        for n in &self.notes {
            let _ = writeln!(s, "note: {n}");
        }
        let t = &self.timings_ms;
        let _ = writeln!(
            s,
            "rulesets applied by the agent in {} ms; {} probes in {} ms",
            t.agent_ms, self.probes, t.probes_ms
        );
        for m in &self.matrices {
            s.push('\n');
            s.push_str(&m.to_text(color));
        }
        if !self.disagreements.is_empty() {
            let _ = writeln!(s, "\ndisagreements ({}):", self.disagreements.len());
            for d in &self.disagreements {
                let _ = writeln!(
                    s,
                    "  {} -> {} {} {} ({} -> {}{}): kernel {} ({}), compiler {}",
                    d.src,
                    d.dst,
                    d.protocol,
                    d.port,
                    d.src_ip,
                    d.dst_ip,
                    if d.primary { "" } else { ", second family" },
                    if d.kernel { "allowed" } else { "denied" },
                    d.detail,
                    if d.expected { "allowed" } else { "denied" },
                );
                for line in d.explanation.lines() {
                    let _ = writeln!(s, "      {line}");
                }
            }
        }
        if !self.services.is_empty() {
            let bad: Vec<&ServiceCell> = self.services.iter().filter(|c| !c.agree).collect();
            let _ = writeln!(
                s,
                "\nServices (through kube-proxy's DNAT in the node): {} of {} cell(s) agree",
                self.services.len() - bad.len(),
                self.services.len()
            );
            for c in &self.services {
                let p = &c.probe;
                let backends: Vec<String> = p
                    .backends
                    .iter()
                    .map(|(b, ok)| format!("{b} {}", if *ok { "allowed" } else { "denied" }))
                    .collect();
                let _ = writeln!(
                    s,
                    "  {}{} -> {} {} {} ({}): kernel {}, compiler {} [{}]",
                    if c.agree { "" } else { "! " },
                    p.src,
                    p.service,
                    p.protocol,
                    p.port,
                    p.address,
                    verdicts(&c.observed),
                    verdicts(&p.expected),
                    backends.join(", ")
                );
            }
        }
        if !self.node_probes.is_empty() {
            let failed: Vec<&NodeCell> = self.node_probes.iter().filter(|c| !c.connected).collect();
            let _ = writeln!(
                s,
                "\nnode probes (kubelet-style, from the node's address): {} of {} connected",
                self.node_probes.len() - failed.len(),
                self.node_probes.len()
            );
            for c in failed {
                let _ = writeln!(
                    s,
                    "  ! node -> {} {} {}: {}",
                    c.probe.dst, c.probe.protocol, c.probe.port, c.detail
                );
            }
        }
        if let Some(first) = self.dns.first() {
            let bad = self.dns.iter().filter(|c| !c.agree).count();
            let _ = writeln!(
                s,
                "\nDNS (Service names through kube-system/kube-dns {}): {} of {} lookup(s) agree",
                first.server.ip(),
                self.dns.len() - bad,
                self.dns.len()
            );
            for c in &self.dns {
                let got = if c.resolved {
                    let a: Vec<String> = c.answer.iter().map(ToString::to_string).collect();
                    format!("resolved {}", a.join(", "))
                } else {
                    "no answer".to_owned()
                };
                let _ = writeln!(
                    s,
                    "  {}{} {}: {got}, compiler {}",
                    if c.agree { "" } else { "! " },
                    c.src,
                    c.name,
                    if c.expected { "resolves" } else { "DNS denied" }
                );
            }
        }
        let dual = self.dual_stack();
        let (audit, drops): (Vec<DropReport>, Vec<DropReport>) =
            self.drops.iter().cloned().partition(|d| d.audit);
        if drops.is_empty() {
            let _ = writeln!(s, "\ndrops: none reported");
        } else {
            let _ = writeln!(s, "\ndrops ({} flow(s)):", drops.len());
            for line in drop_lines(&drops, dual) {
                let _ = writeln!(s, "  {line}");
            }
        }
        // Audit policies (docs/audit.md): accepted, reported; only when there are any.
        if !audit.is_empty() {
            let _ = writeln!(
                s,
                "\nwould drop (audit), accepted where logged ({} flow(s)):",
                audit.len()
            );
            for line in drop_lines(&audit, dual) {
                let _ = writeln!(s, "  {line}");
            }
        }
        s.push('\n');
        if self.agree {
            let _ = writeln!(
                s,
                "kernel agrees with the compiler: {} probes, {} table(s), {} ms",
                self.probes,
                self.matrices.len(),
                t.total_ms
            );
        } else {
            let _ = writeln!(
                s,
                "DISAGREEMENT: {} of {} probes, {} Service cell(s), {} node probe(s) and {} DNS lookup(s) differ from the compiler",
                self.disagreements.len(),
                self.probes,
                self.services.iter().filter(|c| !c.agree).count(),
                self.node_probes.iter().filter(|c| !c.connected).count(),
                self.dns.iter().filter(|c| !c.agree).count()
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::L4Proto;
    use crate::drops::report::{DROP_MSG, Peer};

    fn m(allowed: [[bool; 2]; 2], expected: [[bool; 2]; 2]) -> LabMatrix {
        LabMatrix {
            port: 80,
            protocol: Protocol::Tcp,
            endpoints: vec!["x/a".into(), "x/b".into()],
            allowed: allowed.iter().map(|r| r.to_vec()).collect(),
            expected: expected.iter().map(|r| r.to_vec()).collect(),
        }
    }

    #[test]
    fn tables_side_by_side_mark_disagreements() {
        let agree = m([[true, false], [true, true]], [[true, false], [true, true]]);
        assert_eq!(
            agree.to_text(false),
            "TCP/80: kernel agrees with netpol matrix\n\
             \x20       kernel   netpol matrix\n\
             \x20       0 1      0 1\n\
             0 x/a   . X      . X\n\
             1 x/b   . .      . .\n"
        );
        let differ = m([[true, true], [true, true]], [[true, false], [true, true]]);
        let text = differ.to_text(false);
        assert!(text.starts_with("TCP/80: 1 cell(s) DISAGREE"), "{text}");
        assert!(text.contains("0 x/a   . .!     . X"), "{text}");
        assert!(differ.to_text(true).contains("\x1b[1;31m.!\x1b[0m"));
    }

    #[test]
    fn drop_lines_read_like_sentences() {
        let d = DropReport {
            msg: DROP_MSG,
            audit: false,
            ts: String::new(),
            first_ts: String::new(),
            netns: "lab-0".into(),
            pod: "x/a".into(),
            direction: "ingress",
            protocol: L4Proto::Tcp,
            src: Peer {
                ip: "10.0.0.2".parse().unwrap(),
                pod: Some("x/b".into()),
            },
            dst: Peer {
                ip: "10.0.0.1".parse().unwrap(),
                pod: Some("x/a".into()),
            },
            src_port: Some(40000),
            dst_port: Some(80),
            count: 3,
            window_ms: 1000,
            tier: "networkpolicy",
            cluster_policy: None,
            cluster_rule: None,
            policies: vec!["x/deny-all".into()],
            nearest_miss: None,
            note: None,
            services: Vec::new(),
        };
        assert_eq!(
            drop_line(&d, false),
            "x/b -> x/a TCP 80 dropped (ingress at x/a, isolated by x/deny-all) ×3"
        );
        let mut d81 = d.clone();
        d81.dst_port = Some(81);
        d81.count = 1;
        let mut cnp = d.clone();
        let mut udp = d.clone();
        udp.protocol = L4Proto::Udp;
        let mut other = d.clone();
        other.pod = "x/b".into();
        other.direction = "egress";
        assert_eq!(
            drop_lines(&[d, d81.clone(), udp, other], false),
            [
                "x/b -> x/a TCP 80, 81; UDP 80 dropped (ingress at x/a, isolated by x/deny-all) (7 packets)",
                "x/b -> x/a TCP 80 dropped (egress at x/b, isolated by x/deny-all) ×3",
            ]
        );
        cnp.tier = "admin";
        cnp.cluster_policy = Some("guard".into());
        cnp.cluster_rule = Some("no-80".into());
        assert_eq!(
            drop_line(&cnp, false),
            "x/b -> x/a TCP 80 dropped (ingress at x/a, admin guard rule no-80) ×3"
        );
    }
}
