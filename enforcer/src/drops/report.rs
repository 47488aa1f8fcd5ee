//! Drop reports for people: who was dropped by which Pod's policies, and the rule that
//! came closest to allowing it. One JSON object per line (see `docs/drops.md`).

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use policy_compiler::explain::explain_reach;
use policy_compiler::model::BackendTarget;
use policy_compiler::{AllowGraph, Direction, EndpointId, Model, PolicyMode, PortQuery, Subject};
use serde::Serialize;

use super::L4Proto;
use super::aggregate::DropSummary;

/// The value of the `msg` field of a drop report line.
pub const DROP_MSG: &str = "netpol drop";
/// The `msg` of a report of an audit chain: accepted, but audit policies would drop it
/// (#12, docs/audit.md).
pub const AUDIT_DROP_MSG: &str = "netpol would drop (audit)";
/// The value of the `msg` field of a suppressed-count line.
pub const SUPPRESSED_MSG: &str = "netpol drops suppressed";

/// One side of a dropped flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Peer {
    /// The address in the packet.
    pub ip: IpAddr,
    /// `ns/name` of the Pod with that address, if the model has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

/// A described [`DropSummary`]: one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropReport {
    /// [`DROP_MSG`], or [`AUDIT_DROP_MSG`] for an audit chain's would-be drop.
    pub msg: &'static str,
    /// True for a would-be drop of audit policies (the packet was accepted); then the
    /// policies and rule are read from the audited model.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub audit: bool,
    /// Last drop in the window, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// First drop in the window, same format.
    pub first_ts: String,
    /// Network namespace whose ruleset dropped.
    pub netns: String,
    /// `ns/name` of the Pod whose ruleset dropped (from the log prefix).
    pub pod: String,
    /// `ingress` (dropped entering `pod`) or `egress` (dropped leaving it).
    pub direction: &'static str,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`, `ICMPv6` or `IP-<n>`.
    pub protocol: L4Proto,
    /// Source.
    pub src: Peer,
    /// Destination.
    pub dst: Peer,
    /// Source port of the last drop (TCP, UDP, SCTP).
    pub src_port: Option<u16>,
    /// Destination port (TCP, UDP, SCTP).
    pub dst_port: Option<u16>,
    /// Packets dropped in the window.
    pub count: u64,
    /// Window length in milliseconds.
    pub window_ms: u64,
    /// The stage that dropped: `networkpolicy`, or the ClusterNetworkPolicy tier
    /// `admin` / `baseline` (from the log prefix).
    pub tier: &'static str,
    /// The ClusterNetworkPolicy whose Deny rule dropped (tier `admin` / `baseline`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_policy: Option<String>,
    /// That rule: its name, or `#<index>` when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster_rule: Option<String>,
    /// Policies (`ns/name`) isolating `pod` in `direction`, per the model.
    pub policies: Vec<String>,
    /// explain's nearest miss on the isolated side: the closest rule and what failed.
    pub nearest_miss: Option<String>,
    /// When the model does not account for the drop: the Pod is unknown, no policy
    /// isolates it, or the model allows the flow (ruleset and model out of step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Services (`ns/name`) fronting the destination on that port, for a drop of the
    /// node table (read in the node's namespace, after kube-proxy's DNAT: the
    /// destination is the backend the Service's address was rewritten to).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

impl DropReport {
    /// The report as one line of JSON, without the newline.
    pub fn to_json_line(&self) -> String {
        // Serializing plain strings, numbers and addresses cannot fail.
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!(r#"{{"msg":"{DROP_MSG}","error":{:?}}}"#, e.to_string()))
    }
}

/// The line reporting events that the aggregator did not keep (its key bound was hit).
pub fn suppressed_json_line(count: u64, at: SystemTime) -> String {
    serde_json::json!({ "msg": SUPPRESSED_MSG, "ts": rfc3339(at), "count": count }).to_string()
}

fn subject(model: &Model, ip: IpAddr, known: Option<EndpointId>) -> Subject {
    match known.or_else(|| model.endpoint_by_ip(&ip)) {
        Some(id) => Subject::Endpoint(id),
        None => Subject::External(ip),
    }
}

/// Names the Pods of a summary and the policies and rule behind the drop.
///
/// The Pod in the prefix is the one whose ruleset dropped: the source for egress, the
/// destination for ingress; it is looked up by name, the other side by address
/// ([`Model::endpoint_by_ip`]). Policies come from [`AllowGraph::isolation`]; the nearest
/// miss from [`explain_reach`] at the packet's own addresses (so ipBlocks are judged
/// against the real source or destination), for the packet's protocol and port.
pub fn describe(summary: &DropSummary, model: &Model, graph: &AllowGraph) -> DropReport {
    describe_in(
        summary,
        model,
        graph,
        summary.netns == crate::node::OWN_NETNS,
    )
}

/// `ns/name`, with ` (audit)` for an audit policy (only an audited model holds them).
fn policy_name(model: &Model, id: policy_compiler::PolicyId) -> String {
    let p = model.policy(id);
    match p.mode {
        PolicyMode::Enforce => p.key(),
        PolicyMode::Audit => format!("{} (audit)", p.key()),
    }
}

/// The Services (`ns/name`) with a backend at `dst` serving `protocol`/`port` (the
/// target port kube-proxy DNATs to), sorted.
pub fn fronting_services(
    model: &Model,
    dst: IpAddr,
    protocol: L4Proto,
    port: Option<u16>,
) -> Vec<String> {
    let (Some(proto), Some(port)) = (protocol.policy_protocol(), port) else {
        return Vec::new();
    };
    let endpoint = model.endpoint_by_ip(&dst);
    let mut out: Vec<String> = model
        .services
        .iter()
        .filter(|s| s.proxied())
        .filter(|s| {
            s.backends.iter().any(|b| {
                let here = match b.target {
                    BackendTarget::Endpoint(id) => Some(id) == endpoint,
                    BackendTarget::Address(a) => a == dst,
                };
                here && s
                    .ports
                    .iter()
                    .zip(&b.ports)
                    .any(|(sp, tp)| sp.protocol == proto && *tp == Some(port))
            })
        })
        .map(|s| s.key())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// [`describe`], saying whether the drop was read after DNAT (in the node's namespace,
/// whatever its name): then the report names the Services fronting the destination.
pub fn describe_in(
    summary: &DropSummary,
    model: &Model,
    graph: &AllowGraph,
    after_dnat: bool,
) -> DropReport {
    // See: #12 — an audit chain's would-be drop is described against the audited model
    // (its rule references index that model's policies).
    if summary.key.pod.audit {
        let mut r = match graph.audit() {
            Some(a) => describe_plain(summary, &a.model, &a.graph, after_dnat),
            None => {
                let mut r = describe_plain(summary, model, graph, after_dnat);
                r.note =
                    Some("the model has no audit policy: the ruleset is out of step".to_owned());
                r
            }
        };
        r.msg = AUDIT_DROP_MSG;
        r.audit = true;
        return r;
    }
    describe_plain(summary, model, graph, after_dnat)
}

fn describe_plain(
    summary: &DropSummary,
    model: &Model,
    graph: &AllowGraph,
    after_dnat: bool,
) -> DropReport {
    let key = &summary.key;
    let dir = key.pod.direction;
    let pod_key = key.pod.pod_key();
    let target = model.endpoint_by_key(&pod_key).or_else(|| {
        model.endpoint_by_ip(match dir {
            Direction::Ingress => &key.dst_ip,
            Direction::Egress => &key.src_ip,
        })
    });
    let (src, dst) = match dir {
        Direction::Egress => (
            subject(model, key.src_ip, target),
            subject(model, key.dst_ip, None),
        ),
        Direction::Ingress => (
            subject(model, key.src_ip, None),
            subject(model, key.dst_ip, target),
        ),
    };
    let peer = |s: Subject, ip: IpAddr| Peer {
        ip,
        pod: match s {
            Subject::Endpoint(id) => Some(model.endpoint(id).key()),
            Subject::External(_) => None,
        },
    };
    let policies: Vec<String> = target
        .map(|t| {
            graph
                .isolation(t)
                .by(dir)
                .iter()
                .map(|p| policy_name(model, *p))
                .collect()
        })
        .unwrap_or_default();
    let query = key
        .protocol
        .policy_protocol()
        .zip(key.dst_port)
        .map(|(protocol, port)| PortQuery { protocol, port });

    let mut nearest_miss = None;
    let mut cluster_policy = None;
    let mut cluster_rule = None;
    let note = match (target, key.pod.cluster) {
        (None, _) => Some(format!("pod {pod_key} is not in the model")),
        // See: #13 — a ClusterNetworkPolicy Deny rule, named through the model.
        (Some(_), Some(c)) => {
            let found = model
                .cluster_policies
                .get(c.policy as usize)
                .filter(|p| p.tier == c.tier)
                .and_then(|p| {
                    let r = p.rules(dir).get(c.rule as usize)?;
                    Some((p, r))
                });
            match found {
                Some((p, r)) => {
                    cluster_policy = Some(match p.mode {
                        PolicyMode::Enforce => p.name.clone(),
                        PolicyMode::Audit => format!("{} (audit)", p.name),
                    });
                    cluster_rule = Some(if r.name.is_empty() {
                        format!("#{}", c.rule)
                    } else {
                        r.name.clone()
                    });
                    let reach = graph.reach_at(model, src, Some(key.src_ip), dst, Some(key.dst_ip));
                    let side = match dir {
                        Direction::Egress => &reach.egress,
                        Direction::Ingress => &reach.ingress,
                    };
                    match query {
                        Some(q) if side.allowed.contains(q.protocol, q.port) => Some(format!(
                            "the model allows this {dir} flow: the ruleset is out of step"
                        )),
                        _ => None,
                    }
                }
                None => Some(format!(
                    "the model has no {} ClusterNetworkPolicy rule {c} for {dir}: the ruleset is out of step",
                    key.pod.tier()
                )),
            }
        }
        (Some(_), None) if policies.is_empty() => Some(format!(
            "the model has no policy isolating {pod_key} for {dir}: the ruleset is out of step"
        )),
        (Some(_), None) => {
            let reach = graph.reach_at(model, src, Some(key.src_ip), dst, Some(key.dst_ip));
            let exp = explain_reach(model, graph, &reach, query);
            let side = match dir {
                Direction::Egress => &exp.egress,
                Direction::Ingress => &exp.ingress,
            };
            nearest_miss = side.nearest_miss.clone();
            if query.is_none() {
                Some(format!(
                    "{} is not covered by NetworkPolicy ports: an isolated Pod drops it",
                    key.protocol
                ))
            } else if side.allowed {
                Some(format!(
                    "the model allows this {dir} flow: the ruleset is out of step"
                ))
            } else {
                None
            }
        }
    };
    DropReport {
        msg: DROP_MSG,
        audit: false,
        ts: rfc3339(summary.last_ts),
        first_ts: rfc3339(summary.first_ts),
        netns: summary.netns.clone(),
        pod: pod_key,
        direction: dir.as_str(),
        protocol: key.protocol,
        src: peer(src, key.src_ip),
        dst: peer(dst, key.dst_ip),
        src_port: summary.src_port,
        dst_port: key.dst_port,
        count: summary.count,
        window_ms: u64::try_from(summary.window.as_millis()).unwrap_or(u64::MAX),
        tier: key.pod.tier(),
        cluster_policy,
        cluster_rule,
        policies,
        nearest_miss,
        note,
        services: if after_dnat {
            fronting_services(model, key.dst_ip, key.protocol, key.dst_port)
        } else {
            Vec::new()
        },
    }
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC); times before 1970 print as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days to civil date (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
    let z = i64::try_from(days).unwrap_or(i64::MAX / 2) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drops::LogPrefix;
    use crate::drops::aggregate::DropKey;
    use policy_compiler::{SourceText, load};

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
status: {podIP: 10.0.0.11, podIPs: [{ip: 10.0.0.11}, {ip: "fd00::11"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
status: {podIP: 10.0.0.12, podIPs: [{ip: 10.0.0.12}, {ip: "fd00::12"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-web, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: a}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-deny-egress, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
"#;

    fn compiled() -> (Model, AllowGraph) {
        let (inputs, diags) = load(&[SourceText {
            name: "test.yaml",
            text: MANIFESTS,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        let (model, diags) = Model::build(&inputs);
        assert!(diags.is_empty(), "{diags:?}");
        let graph = AllowGraph::build(&model);
        (model, graph)
    }

    fn summary(dir: Direction, pod: &str, src: &str, dst: &str, port: Option<u16>) -> DropSummary {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_717_171_717_123);
        DropSummary {
            key: DropKey {
                pod: LogPrefix {
                    namespace: "x".to_owned(),
                    pod: pod.to_owned(),
                    direction: dir,
                    cluster: None,
                    audit: false,
                },
                src_ip: src.parse().unwrap(),
                dst_ip: dst.parse().unwrap(),
                protocol: if port.is_some() {
                    L4Proto::Tcp
                } else {
                    L4Proto::Icmp
                },
                dst_port: port,
                netns: "ns-a".to_owned(),
            },
            netns: "np-1".to_owned(),
            count: 7,
            src_port: port.map(|_| 40000),
            first_ts: t - Duration::from_millis(900),
            last_ts: t,
            window: Duration::from_secs(1),
        }
    }

    // See: #13
    #[test]
    fn cluster_policy_drop_names_the_tier_policy_and_rule() {
        let cnp = r#"
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - name: no-81-from-a
    action: Deny
    from: [{namespaces: {}}]
    protocols: [{tcp: {destinationPort: {number: 81}}}]
"#;
        let text = format!("{MANIFESTS}{cnp}");
        let (inputs, diags) = load(&[SourceText {
            name: "test.yaml",
            text: &text,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        let (model, diags) = Model::build(&inputs);
        assert!(diags.is_empty(), "{diags:?}");
        let graph = AllowGraph::build(&model);
        let rs = policy_compiler::ruleset::compile_pod(
            &model,
            &graph,
            model.endpoint_by_key("x/b").unwrap(),
            &policy_compiler::ruleset::RulesetOptions::default(),
        );
        // The prefix the ruleset writes is the one the report reads.
        let nft = rs.to_nft();
        let prefix = "netpol:x/b:ingress:a0.0 ";
        assert!(nft.contains(prefix), "{nft}");
        let mut s = summary(Direction::Ingress, "b", "10.0.0.11", "10.0.0.12", Some(81));
        s.key.pod = LogPrefix::parse(prefix).unwrap();
        let r = describe(&s, &model, &graph);
        assert_eq!(r.tier, "admin");
        assert_eq!(r.cluster_policy.as_deref(), Some("guard"));
        assert_eq!(r.cluster_rule.as_deref(), Some("no-81-from-a"));
        assert_eq!(r.note, None, "{r:?}");
        let line = r.to_json_line();
        assert!(
            line.contains(
                r#""tier":"admin","cluster_policy":"guard","cluster_rule":"no-81-from-a""#
            ),
            "{line}"
        );
        // A stale index (policy or rule gone) says so instead of naming a wrong rule.
        s.key.pod = LogPrefix::parse("netpol:x/b:ingress:a3.0 ").unwrap();
        let r = describe(&s, &model, &graph);
        assert_eq!(r.cluster_policy, None);
        assert!(r.note.as_deref().unwrap().contains("out of step"), "{r:?}");
        // Port 80 is not what the rule denies: the model allows it, the note says so.
        let mut s80 = summary(Direction::Ingress, "b", "10.0.0.11", "10.0.0.12", Some(80));
        s80.key.pod = LogPrefix::parse(prefix).unwrap();
        let r = describe(&s80, &model, &graph);
        assert!(r.note.as_deref().unwrap().contains("allows"), "{r:?}");
    }

    #[test]
    fn ingress_drop_names_pods_policies_and_nearest_miss() {
        let (model, graph) = compiled();
        let r = describe(
            &summary(Direction::Ingress, "b", "10.0.0.11", "10.0.0.12", Some(81)),
            &model,
            &graph,
        );
        assert_eq!(r.pod, "x/b");
        assert_eq!(r.src.pod.as_deref(), Some("x/a"));
        assert_eq!(r.dst.pod.as_deref(), Some("x/b"));
        assert_eq!(r.policies, ["x/b-web"]);
        let miss = r.nearest_miss.as_deref().unwrap();
        assert!(miss.contains("x/b-web") && miss.contains("81"), "{miss}");
        assert_eq!(r.note, None);
        let line = r.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "netpol drop");
        assert_eq!(v["ts"], "2024-05-31T16:08:37.123Z");
        assert_eq!(v["direction"], "ingress");
        assert_eq!(v["protocol"], "TCP");
        assert_eq!(v["src"]["ip"], "10.0.0.11");
        assert_eq!(v["dst_port"], 81);
        assert_eq!(v["count"], 7);
        assert_eq!(v["window_ms"], 1000);
    }

    #[test]
    fn egress_drop_to_an_external_address() {
        let (model, graph) = compiled();
        let r = describe(
            &summary(Direction::Egress, "a", "fd00::11", "2001:db8::1", Some(443)),
            &model,
            &graph,
        );
        assert_eq!(r.src.pod.as_deref(), Some("x/a"));
        assert_eq!(r.dst.pod, None);
        assert_eq!(r.policies, ["x/a-deny-egress"]);
        assert_eq!(
            r.nearest_miss.as_deref(),
            Some("x/a-deny-egress has no egress rules: it denies all egress")
        );
        assert_eq!(r.note, None);
        let v: serde_json::Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert!(v["dst"].get("pod").is_none(), "{v}");
        assert_eq!(v["dst"]["ip"], "2001:db8::1");
    }

    #[test]
    fn drops_the_model_does_not_explain_get_a_note() {
        let (model, graph) = compiled();
        // Allowed by the model: TCP 80 from a to b.
        let r = describe(
            &summary(Direction::Ingress, "b", "10.0.0.11", "10.0.0.12", Some(80)),
            &model,
            &graph,
        );
        assert!(r.note.unwrap().contains("allows"));
        // a's ingress is not isolated.
        let r = describe(
            &summary(Direction::Ingress, "a", "10.0.0.12", "10.0.0.11", Some(80)),
            &model,
            &graph,
        );
        assert!(r.note.unwrap().contains("no policy"), "");
        // Unknown Pod.
        let r = describe(
            &summary(Direction::Ingress, "zz", "10.0.0.11", "10.9.9.9", Some(80)),
            &model,
            &graph,
        );
        assert!(r.note.unwrap().contains("not in the model"));
        // ICMP has no port: isolated Pods drop it.
        let r = describe(
            &summary(Direction::Ingress, "b", "10.0.0.11", "10.0.0.12", None),
            &model,
            &graph,
        );
        assert!(r.note.unwrap().contains("ICMP"));
        assert_eq!(r.policies, ["x/b-web"]);
    }

    #[test]
    fn timestamps_and_suppressed_lines() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(rfc3339(before), "1970-01-01T00:00:00.000Z");
        let v: serde_json::Value =
            serde_json::from_str(&suppressed_json_line(3, SystemTime::UNIX_EPOCH)).unwrap();
        assert_eq!(v["msg"], SUPPRESSED_MSG);
        assert_eq!(v["count"], 3);
    }
}
