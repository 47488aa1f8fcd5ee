//! The pure half of the lab: which Pods get a namespace, with which addresses, which
//! listeners and probes, and what the compiler expects of each probe.
//!
//! [`LabPlan::new`] takes the loaded objects, assigns addresses to Pods that have none
//! (writing them into the Pods' `status.podIP`/`status.podIPs`, so the compiler, the
//! agent's rulesets and the kernel all see the same addresses), and compiles. No IO.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use k8s_openapi::api::core::v1::{PodIP, PodStatus};
use policy_compiler::model::EndpointKind;
use policy_compiler::{
    AllowGraph, Diagnostic, EndpointId, Inputs, Matrix, MatrixQuery, Model, Protocol, Subject,
    matrix,
};
use serde::Serialize;

/// First IPv4 address handed to Pods without one (a common Pod CIDR, 10.244.0.0/16).
pub const ASSIGN_V4: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 10);
/// First IPv6 address handed to Pods without one (`fd00:10:244::/64`).
pub const ASSIGN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x244, 0, 0, 0, 0, 0x10);
/// Listener used when no Pod declares a container port.
pub const DEFAULT_SERVICE: (Protocol, u16) = (Protocol::Tcp, 80);
/// Namespace and name of the cluster DNS Service.
pub const KUBE_DNS: (&str, &str) = ("kube-system", "kube-dns");
/// The lab's own DNS Pod, added when the inputs define no `kube-system/kube-dns`.
pub const LAB_DNS_POD: (&str, &str) = ("kube-system", "netpol-lab-dns");
/// The ClusterIP of the lab's `kube-dns` (kubeadm's and kind's default), unless an
/// input Service already uses it.
pub const KUBE_DNS_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// Its IPv6 ClusterIP in a dual-stack lab.
pub const KUBE_DNS_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
/// The DNS port.
pub const DNS_PORT: u16 = 53;
/// Annotation (value `dns`) on the objects the lab adds for its cluster DNS, so that
/// planning the plan's own inputs again replaces them instead of keeping them.
pub const LAB_ANNOTATION: &str = "netpol.io/lab";

/// The lab's cluster DNS: a Pod of its own behind `kube-system/kube-dns`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabDns {
    /// The DNS Pod (`kube-system/netpol-lab-dns`, label `k8s-app: kube-dns`, as CoreDNS
    /// Pods are labelled): it gets a namespace and a ruleset like any Pod, but is no
    /// probe source or destination (its UDP/TCP 53 serve DNS, not probes).
    pub pod: LabPod,
    /// The ClusterIPs of `kube-system/kube-dns` (10.96.0.10, and fd00:10:96::a in a
    /// dual-stack lab).
    pub cluster_ips: Vec<IpAddr>,
}

/// Why the inputs cannot become a lab.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The compiler rejected the inputs.
    #[error("{} invalid input(s)", .0.iter().filter(|d| d.is_error()).count())]
    Invalid(Vec<Diagnostic>),
    /// Two Pods of the lab have the same address: one segment cannot hold both.
    #[error("pods {first} and {second} both have IP {ip}: the lab needs distinct addresses")]
    DuplicateIp {
        /// The address.
        ip: IpAddr,
        /// One Pod.
        first: String,
        /// The other.
        second: String,
    },
    /// A Pod's address cannot be given to a lab interface (loopback, link-local, …).
    #[error("pod {pod} has IP {ip}, which a lab interface cannot use ({why})")]
    UnusableIp {
        /// The Pod.
        pod: String,
        /// The address.
        ip: IpAddr,
        /// What kind of address it is.
        why: &'static str,
    },
    /// The address pool for Pods without an IP ran out.
    #[error("no free address left to assign to pod {pod}")]
    PoolExhausted {
        /// The Pod.
        pod: String,
    },
}

/// A Pod that gets a network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LabPod {
    /// `ns/name`.
    pub pod: String,
    /// Endpoint in the plan's model.
    #[serde(skip)]
    pub id: EndpointId,
    /// Addresses, primary first.
    pub ips: Vec<IpAddr>,
    /// True when the lab assigned the addresses (the manifest had none).
    pub assigned: bool,
}

/// An object of the inputs that gets no namespace, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    /// `ns/name` of a Pod, `ns/kind/name` of a workload.
    pub object: String,
    /// Why it is not in the lab.
    pub reason: String,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipped {}: {}", self.object, self.reason)
    }
}

/// One probe to run and the compiler's answer for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedProbe {
    /// Index of the source in [`LabPlan::pods`].
    pub src: usize,
    /// Index of the destination in [`LabPlan::pods`].
    pub dst: usize,
    /// Source address (the family of `dst_ip`).
    pub src_ip: IpAddr,
    /// Destination address.
    pub dst_ip: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
    /// The compiler allows it (`AllowGraph::reach_at` at these addresses; for the
    /// primary family this is the `netpol matrix` cell).
    pub expected: bool,
    /// The pair's primary family (the addresses `netpol matrix` answers for).
    pub primary: bool,
}

/// Everything the lab will build and check, computed without touching the kernel.
#[derive(Debug)]
pub struct LabPlan {
    inputs: Inputs,
    model: Model,
    graph: AllowGraph,
    pods: Vec<LabPod>,
    skipped: Vec<Skipped>,
    services: Vec<(Protocol, u16)>,
    notes: Vec<String>,
    dns: Option<LabDns>,
}

fn labels(pairs: &[(&str, &str)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    )
}

fn meta(ns: &str, name: &str) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(ns.to_owned()),
        annotations: labels(&[(LAB_ANNOTATION, "dns")]),
        ..Default::default()
    }
}

fn lab_made(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> bool {
    m.annotations
        .as_ref()
        .and_then(|a| a.get(LAB_ANNOTATION))
        .is_some_and(|v| v == "dns")
}

/// The lab's DNS Pod, without an address yet (it gets one from the pool).
fn dns_pod() -> k8s_openapi::api::core::v1::Pod {
    use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
    let mut metadata = meta(LAB_DNS_POD.0, LAB_DNS_POD.1);
    metadata.labels = labels(&[("k8s-app", "kube-dns")]);
    Pod {
        metadata,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "dns".to_owned(),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(PodStatus {
            phase: Some("Running".to_owned()),
            ..Default::default()
        }),
    }
}

/// `kube-system/kube-dns` (UDP and TCP 53) with one EndpointSlice per family naming the
/// lab's DNS Pod at `ips` (no selector: only the lab's responder serves it).
fn dns_service(
    cluster_ips: &[IpAddr],
    pod_ips: &[IpAddr],
) -> (
    k8s_openapi::api::core::v1::Service,
    Vec<k8s_openapi::api::discovery::v1::EndpointSlice>,
) {
    use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
    use k8s_openapi::api::discovery::v1::{
        Endpoint, EndpointConditions, EndpointPort, EndpointSlice,
    };
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let ports = [("dns", "UDP"), ("dns-tcp", "TCP")];
    let svc = Service {
        metadata: meta(KUBE_DNS.0, KUBE_DNS.1),
        spec: Some(ServiceSpec {
            cluster_ip: cluster_ips.first().map(ToString::to_string),
            cluster_ips: Some(cluster_ips.iter().map(ToString::to_string).collect()),
            ip_family_policy: Some(
                if cluster_ips.len() > 1 {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                }
                .to_owned(),
            ),
            ports: Some(
                ports
                    .iter()
                    .map(|(name, proto)| ServicePort {
                        name: Some((*name).to_owned()),
                        protocol: Some((*proto).to_owned()),
                        port: i32::from(DNS_PORT),
                        target_port: Some(IntOrString::Int(i32::from(DNS_PORT))),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }),
        status: None,
    };
    let slices = pod_ips
        .iter()
        .map(|ip| {
            let family = if ip.is_ipv4() { "IPv4" } else { "IPv6" };
            let mut metadata = meta(
                KUBE_DNS.0,
                &format!("{}-{}", KUBE_DNS.1, family.to_lowercase()),
            );
            metadata.labels = labels(&[("kubernetes.io/service-name", KUBE_DNS.1)]);
            EndpointSlice {
                metadata,
                address_type: family.to_owned(),
                endpoints: vec![Endpoint {
                    addresses: vec![ip.to_string()],
                    conditions: Some(EndpointConditions {
                        ready: Some(true),
                        ..Default::default()
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".to_owned()),
                        namespace: Some(LAB_DNS_POD.0.to_owned()),
                        name: Some(LAB_DNS_POD.1.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ports: Some(
                    ports
                        .iter()
                        .map(|(name, proto)| EndpointPort {
                            name: Some((*name).to_owned()),
                            protocol: Some((*proto).to_owned()),
                            port: Some(i32::from(DNS_PORT)),
                            ..Default::default()
                        })
                        .collect(),
                ),
            }
        })
        .collect();
    (svc, slices)
}

fn unusable(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V4(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V4(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V4(a) if a.is_broadcast() => Some("broadcast"),
        IpAddr::V4(a) if a.is_link_local() => Some("link-local"),
        IpAddr::V6(a) if a.is_unspecified() => Some("unspecified"),
        IpAddr::V6(a) if a.is_loopback() => Some("loopback"),
        IpAddr::V6(a) if a.is_multicast() => Some("multicast"),
        IpAddr::V6(a) if a.is_unicast_link_local() => Some("link-local"),
        _ => None,
    }
}

/// Hands out addresses from a start address upwards, skipping used ones.
struct Pool<T> {
    next: T,
    used: BTreeSet<IpAddr>,
}

impl Pool<Ipv4Addr> {
    /// The next free address of 10.244.0.0/16, skipping `.0` and `.255`.
    fn take(&mut self) -> Option<Ipv4Addr> {
        loop {
            let a = self.next;
            if a.octets()[..2] != ASSIGN_V4.octets()[..2] {
                return None;
            }
            self.next = Ipv4Addr::from(u32::from(a).checked_add(1)?);
            let last = a.octets()[3];
            if last != 0 && last != 255 && self.used.insert(IpAddr::V4(a)) {
                return Some(a);
            }
        }
    }
}

impl Pool<Ipv6Addr> {
    fn take(&mut self) -> Option<Ipv6Addr> {
        loop {
            let a = self.next;
            if a.segments()[..4] != ASSIGN_V6.segments()[..4] {
                return None;
            }
            self.next = Ipv6Addr::from(u128::from(a).checked_add(1)?);
            if self.used.insert(IpAddr::V6(a)) {
                return Some(a);
            }
        }
    }
}

fn pod_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or_default()
    )
}

fn compile(inputs: &Inputs) -> Result<(Model, AllowGraph), PlanError> {
    let (model, diags) = Model::build(inputs);
    if diags.iter().any(Diagnostic::is_error) {
        return Err(PlanError::Invalid(diags));
    }
    let graph = AllowGraph::build(&model);
    Ok((model, graph))
}

impl LabPlan {
    /// Plans a lab for `inputs`: Pods (not hostNetwork) get a namespace; Pods without
    /// an address get one from 10.244.0.0/16 (and `fd00:10:244::/64` when some Pod of
    /// the inputs has IPv6; IPv6 only when no Pod has IPv4), written into their status
    /// before compiling.
    pub fn new(mut inputs: Inputs) -> Result<LabPlan, PlanError> {
        // A plan's own inputs planned again: its cluster DNS is made afresh.
        inputs.pods.retain(|p| !lab_made(&p.object.metadata));
        inputs.services.retain(|s| !lab_made(&s.object.metadata));
        inputs
            .endpoint_slices
            .retain(|s| !lab_made(&s.object.metadata));
        // The lab's cluster DNS, unless the inputs define kube-dns (or hold a Pod of the
        // DNS Pod's name).
        let defines = |ns: Option<&String>, name: Option<&String>, want: (&str, &str)| {
            ns.map_or("default", String::as_str) == want.0
                && name.map(String::as_str) == Some(want.1)
        };
        let lab_dns = !inputs.services.iter().any(|s| {
            defines(
                s.object.metadata.namespace.as_ref(),
                s.object.metadata.name.as_ref(),
                KUBE_DNS,
            )
        }) && !inputs.pods.iter().any(|p| {
            defines(
                p.object.metadata.namespace.as_ref(),
                p.object.metadata.name.as_ref(),
                LAB_DNS_POD,
            )
        });
        if lab_dns {
            inputs
                .pods
                .push(policy_compiler::load::Located::unlocated(dns_pod()));
        }
        let (model0, _) = compile(&inputs)?;
        let used: BTreeSet<IpAddr> = model0
            .endpoints
            .iter()
            .flat_map(|e| e.ips.iter().copied())
            .collect();
        let pods0 = || model0.endpoints.iter().filter(|e| e.enforceable());
        let has_v4 = pods0().any(|e| e.ips.iter().any(IpAddr::is_ipv4));
        let has_v6 = pods0().any(|e| e.ips.iter().any(IpAddr::is_ipv6));
        let (want_v4, want_v6) = (has_v4 || !has_v6, has_v6);
        let mut v4 = Pool {
            next: ASSIGN_V4,
            used: used.clone(),
        };
        let mut v6 = Pool {
            next: ASSIGN_V6,
            used,
        };
        let mut assigned: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        let dns_key = format!("{}/{}", LAB_DNS_POD.0, LAB_DNS_POD.1);
        // The lab's DNS Pod last: the inputs' Pods get the addresses they would get
        // without it.
        let (dns0, others): (Vec<_>, Vec<_>) = pods0()
            .filter(|e| e.ips.is_empty())
            .partition(|e| lab_dns && e.key() == dns_key);
        for e in others.into_iter().chain(dns0) {
            let mut ips = Vec::new();
            let exhausted = || PlanError::PoolExhausted { pod: e.key() };
            if want_v4 {
                ips.push(IpAddr::V4(v4.take().ok_or_else(exhausted)?));
            }
            if want_v6 {
                ips.push(IpAddr::V6(v6.take().ok_or_else(exhausted)?));
            }
            assigned.insert(e.key(), ips);
        }
        for p in &mut inputs.pods {
            let Some(ips) = assigned.get(&pod_key(&p.object.metadata)) else {
                continue;
            };
            let status = p.object.status.get_or_insert_with(PodStatus::default);
            status.pod_ip = Some(ips[0].to_string());
            status.pod_ips = Some(ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
        }
        let mut dns_cluster_ips = Vec::new();
        if lab_dns && let Some(pod_ips) = assigned.remove(&dns_key) {
            let taken: BTreeSet<IpAddr> =
                model0.services.iter().flat_map(|s| s.addresses()).collect();
            let free4 = (0u32..=245)
                .map(|i| IpAddr::V4(Ipv4Addr::from(u32::from(KUBE_DNS_IP) + i)))
                .find(|ip| !taken.contains(ip));
            let free6 = (0u128..=245)
                .map(|i| IpAddr::V6(Ipv6Addr::from(u128::from(KUBE_DNS_IP6) + i)))
                .find(|ip| !taken.contains(ip));
            for ip in &pod_ips {
                let cip = if ip.is_ipv4() { free4 } else { free6 };
                dns_cluster_ips.extend(cip);
            }
            let (svc, slices) = dns_service(&dns_cluster_ips, &pod_ips);
            inputs
                .services
                .push(policy_compiler::load::Located::unlocated(svc));
            inputs.endpoint_slices.extend(
                slices
                    .into_iter()
                    .map(policy_compiler::load::Located::unlocated),
            );
        }
        let (model, graph) = compile(&inputs)?;

        let mut pods = Vec::new();
        let mut dns = None;
        let mut skipped = Vec::new();
        let mut by_ip: BTreeMap<IpAddr, String> = BTreeMap::new();
        for e in &model.endpoints {
            let key = e.key();
            if lab_dns && key == dns_key {
                dns = (!e.ips.is_empty()).then(|| LabDns {
                    pod: LabPod {
                        pod: key.clone(),
                        id: e.id,
                        ips: e.ips.clone(),
                        assigned: true,
                    },
                    cluster_ips: dns_cluster_ips.clone(),
                });
                by_ip.extend(e.ips.iter().map(|ip| (*ip, key.clone())));
                continue;
            }
            match e.kind {
                EndpointKind::Workload(_) => skipped.push(Skipped {
                    object: key,
                    reason: "a workload's Pod template: no Pod, no network namespace".into(),
                }),
                EndpointKind::Declared => skipped.push(Skipped {
                    object: key,
                    reason: "a declared endpoint (--endpoints): not in the manifests".into(),
                }),
                EndpointKind::Pod if e.host_network => skipped.push(Skipped {
                    object: key,
                    reason: "hostNetwork Pod: it shares the node's network namespace".into(),
                }),
                EndpointKind::Pod => {
                    for ip in &e.ips {
                        if let Some(why) = unusable(*ip) {
                            return Err(PlanError::UnusableIp {
                                pod: key,
                                ip: *ip,
                                why,
                            });
                        }
                        if let Some(first) = by_ip.insert(*ip, key.clone()) {
                            return Err(PlanError::DuplicateIp {
                                ip: *ip,
                                first,
                                second: key,
                            });
                        }
                    }
                    pods.push(LabPod {
                        assigned: assigned.contains_key(&key),
                        pod: key,
                        id: e.id,
                        ips: e.ips.clone(),
                    });
                }
            }
        }
        let endpoints: BTreeSet<String> = model.endpoints.iter().map(|e| e.key()).collect();
        for p in &inputs.pods {
            let key = pod_key(&p.object.metadata);
            if !endpoints.contains(&key) {
                let phase = p.object.status.as_ref().and_then(|s| s.phase.clone());
                skipped.push(Skipped {
                    object: key,
                    reason: format!(
                        "phase {}: not an endpoint",
                        phase.as_deref().unwrap_or("unknown")
                    ),
                });
            }
        }
        skipped.sort_by(|a, b| a.object.cmp(&b.object));

        let mut notes = Vec::new();
        let mut services: BTreeSet<(Protocol, u16)> = pods
            .iter()
            .flat_map(|p| model.endpoint(p.id).ports.iter())
            .map(|cp| (cp.protocol, cp.port))
            .collect();
        if services.is_empty() && !pods.is_empty() {
            notes.push(format!(
                "no Pod declares a container port: probing {} {}",
                DEFAULT_SERVICE.0, DEFAULT_SERVICE.1
            ));
            services.insert(DEFAULT_SERVICE);
        }
        if !assigned.is_empty() {
            notes.push(format!(
                "{} Pod(s) without an IP got one from the lab's range (10.244.0.0/16{})",
                assigned.len(),
                if want_v6 { ", fd00:10:244::/64" } else { "" }
            ));
        }
        if !lab_dns {
            notes.push(format!(
                "the inputs define {}/{}: the lab runs no cluster DNS of its own and looks no names up",
                KUBE_DNS.0, KUBE_DNS.1
            ));
        }
        if let Some(d) = &dns {
            let ips: Vec<String> = d.cluster_ips.iter().map(ToString::to_string).collect();
            notes.push(format!(
                "cluster DNS: {}/{} ({}) served by the lab's {} ({}), label k8s-app: kube-dns",
                KUBE_DNS.0,
                KUBE_DNS.1,
                ips.join(", "),
                d.pod.pod,
                d.pod
                    .ips
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(LabPlan {
            inputs,
            model,
            graph,
            pods,
            skipped,
            services: services.into_iter().collect(),
            notes,
            dns,
        })
    }

    /// The inputs with the assigned addresses written into the Pods' status.
    pub fn inputs(&self) -> &Inputs {
        &self.inputs
    }

    /// The compiled model (of [`LabPlan::inputs`]).
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Its allow graph.
    pub fn graph(&self) -> &AllowGraph {
        &self.graph
    }

    /// The Pods that get a namespace, sorted by `ns/name`.
    pub fn pods(&self) -> &[LabPod] {
        &self.pods
    }

    /// Objects that get none, and why.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Every (protocol, port) some lab Pod declares as a container port, sorted. Every
    /// lab Pod listens on all of them, so each truth table is complete.
    pub fn services(&self) -> &[(Protocol, u16)] {
        &self.services
    }

    /// Remarks for the user (assigned addresses, default service).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The lab's cluster DNS, when the inputs define no `kube-system/kube-dns`.
    pub fn dns(&self) -> Option<&LabDns> {
        self.dns.as_ref()
    }

    /// `netpol matrix` for one service, restricted to the lab's Pods (in their order).
    pub fn expected(&self, protocol: Protocol, port: u16) -> Matrix {
        let full = matrix(
            &self.model,
            &self.graph,
            MatrixQuery {
                protocol: Some(protocol),
                port: Some(port),
            },
        );
        let index: BTreeMap<&str, usize> = full
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.as_str(), i))
            .collect();
        let idx: Vec<usize> = self
            .pods
            .iter()
            .filter_map(|p| index.get(p.pod.as_str()).copied())
            .collect();
        Matrix {
            port: full.port,
            protocol: full.protocol,
            endpoints: idx.iter().map(|&i| full.endpoints[i].clone()).collect(),
            allowed: idx
                .iter()
                .map(|&s| idx.iter().map(|&d| full.allowed[s][d]).collect())
                .collect(),
            traffic: None,
            audited_allowed: None,
            audited_traffic: None,
        }
    }

    /// Every probe: each service, each ordered pair of lab Pods (a Pod to itself too),
    /// each address family both have; the primary family's answers are the matrix cells.
    pub fn probes(&self) -> Vec<PlannedProbe> {
        let mut out = Vec::new();
        for &(protocol, port) in &self.services {
            let expected = self.expected(protocol, port);
            for (si, s) in self.pods.iter().enumerate() {
                for (di, d) in self.pods.iter().enumerate() {
                    let (ps, pd) = (Subject::Endpoint(s.id), Subject::Endpoint(d.id));
                    let (_, primary_dst) = AllowGraph::addresses(&self.model, ps, pd);
                    for v4 in [true, false] {
                        let of = |p: &LabPod| p.ips.iter().copied().find(|i| i.is_ipv4() == v4);
                        let (Some(src_ip), Some(dst_ip)) = (of(s), of(d)) else {
                            continue;
                        };
                        let primary = primary_dst.is_some_and(|p| p.is_ipv4() == v4);
                        let allowed = if primary {
                            expected.allowed[si][di]
                        } else {
                            self.graph
                                .reach_at(&self.model, ps, Some(src_ip), pd, Some(dst_ip))
                                .allowed
                                .contains(protocol, port)
                        };
                        out.push(PlannedProbe {
                            src: si,
                            dst: di,
                            src_ip,
                            dst_ip,
                            protocol,
                            port,
                            expected: allowed,
                            primary,
                        });
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::{SourceText, load};

    fn plan(yaml: &str) -> Result<LabPlan, PlanError> {
        let (inputs, diags) = load(&[SourceText {
            name: "t.yaml",
            text: yaml,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        LabPlan::new(inputs)
    }

    fn pod(name: &str, ips: &[&str], extra_spec: &str) -> String {
        let status = if ips.is_empty() {
            String::new()
        } else {
            format!(
                "\nstatus: {{phase: Running, podIP: '{}', podIPs: [{}]}}",
                ips[0],
                ips.iter()
                    .map(|i| format!("{{ip: '{i}'}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}}}\nspec: {{{extra_spec}containers: [{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]}}]}}{status}\n---\n"
        )
    }

    const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n";

    #[test]
    fn the_lab_adds_its_cluster_dns_unless_the_inputs_define_kube_dns() {
        // See: #10
        let p = plan(&format!("{}{}{DENY}", pod("a", &[], ""), pod("b", &[], ""))).unwrap();
        let dns = p.dns().unwrap();
        assert_eq!(dns.pod.pod, "kube-system/netpol-lab-dns");
        assert_eq!(dns.cluster_ips, [IpAddr::V4(KUBE_DNS_IP)]);
        // Its address comes after the inputs' Pods' (theirs do not move).
        let ips: Vec<String> = p.pods().iter().map(|q| q.ips[0].to_string()).collect();
        assert_eq!(ips, ["10.244.0.10", "10.244.0.11"]);
        assert_eq!(dns.pod.ips, ["10.244.0.12".parse::<IpAddr>().unwrap()]);
        // Not a probed Pod, but a Pod of the model with the CoreDNS label, behind
        // kube-system/kube-dns on UDP and TCP 53.
        assert_eq!(p.pods().len(), 2);
        assert_eq!(p.expected(Protocol::Tcp, 80).endpoints, ["x/a", "x/b"]);
        let svc = p.model().service("kube-system/kube-dns").unwrap();
        assert_eq!(svc.cluster_ips, [IpAddr::V4(KUBE_DNS_IP)]);
        assert_eq!(svc.backends.len(), 1);
        let ep = p.model().endpoint(dns.pod.id);
        assert_eq!(
            ep.labels.get("k8s-app").map(String::as_str),
            Some("kube-dns")
        );
        let ports: Vec<(Protocol, u16)> = svc.ports.iter().map(|q| (q.protocol, q.port)).collect();
        assert_eq!(ports, [(Protocol::Udp, 53), (Protocol::Tcp, 53)]);
        assert!(
            p.notes()
                .iter()
                .any(|n| n.starts_with("cluster DNS: kube-system/kube-dns (10.96.0.10)"))
        );

        // 10.96.0.10 taken by another Service: the next free address; dual-stack Pods
        // get a dual-stack kube-dns.
        let taken = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: x}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 80}]}\n---\n";
        let p = plan(&format!(
            "{taken}{}",
            pod("a", &["10.0.0.1", "fd00::1"], "")
        ))
        .unwrap();
        assert_eq!(
            p.dns().unwrap().cluster_ips,
            [
                "10.96.0.11".parse::<IpAddr>().unwrap(),
                IpAddr::V6(KUBE_DNS_IP6)
            ]
        );

        // The inputs define kube-dns: no lab DNS, said in a note.
        let own = "apiVersion: v1\nkind: Service\nmetadata: {name: kube-dns, namespace: kube-system}\nspec: {clusterIP: 10.96.0.10, ports: [{port: 53, protocol: UDP}]}\n---\n";
        let p = plan(&format!("{own}{}", pod("a", &[], ""))).unwrap();
        assert!(p.dns().is_none());
        assert!(
            p.model()
                .endpoint_by_key("kube-system/netpol-lab-dns")
                .is_none()
        );
        assert!(
            p.notes()
                .iter()
                .any(|n| n.contains("runs no cluster DNS of its own"))
        );

        // Planning a plan's own inputs again gives the same plan.
        let p = plan(&format!("{}{}", pod("a", &[], ""), pod("b", &[], ""))).unwrap();
        let again = LabPlan::new(p.inputs().clone()).unwrap();
        assert_eq!(again.dns(), p.dns());
        let ips = |q: &LabPlan| q.pods().iter().map(|x| x.ips.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&again), ips(&p));
        assert_eq!(again.model().services.len(), 1);
    }

    #[test]
    fn pods_without_ips_get_addresses_the_compiler_sees() {
        let p = plan(&format!(
            "{}{}{DENY}",
            pod("a", &[], ""),
            pod("b", &["10.244.0.10"], "")
        ))
        .unwrap();
        let a = &p.pods()[0];
        assert_eq!(a.pod, "x/a");
        assert!(a.assigned);
        assert_eq!(
            a.ips,
            ["10.244.0.11".parse::<IpAddr>().unwrap()],
            "b's taken"
        );
        assert_eq!(p.model().endpoint(a.id).ips, a.ips, "injected into status");
        let st = p.inputs().pods[0].object.status.as_ref().unwrap();
        assert_eq!(st.pod_ip.as_deref(), Some("10.244.0.11"));
        assert!(!p.pods()[1].assigned);
        assert_eq!(
            p.services(),
            [(Protocol::Tcp, 80), (Protocol::Udp, 53)],
            "sorted union"
        );
        let m = p.expected(Protocol::Tcp, 80);
        assert_eq!(m.endpoints, ["x/a", "x/b"]);
        assert_eq!(m.allowed, [[true, true], [false, true]]);
        // 2 services x 4 ordered pairs, one family.
        let probes = p.probes();
        assert_eq!(probes.len(), 8);
        assert!(probes.iter().all(|q| q.primary));
        assert_eq!(probes.iter().filter(|q| !q.expected).count(), 2);
    }

    #[test]
    fn dual_stack_inputs_get_dual_stack_addresses_and_two_probes_per_pair() {
        let p = plan(&format!(
            "{}{}",
            pod("a", &[], ""),
            pod("b", &["10.0.0.2", "fd00::2"], "")
        ))
        .unwrap();
        assert_eq!(p.pods()[0].ips.len(), 2);
        assert!(p.pods()[0].ips[1].is_ipv6());
        let probes = p.probes();
        assert_eq!(probes.len(), 2 * 4 * 2);
        assert_eq!(probes.iter().filter(|q| q.primary).count(), 8);
    }

    #[test]
    fn host_network_workloads_and_finished_pods_are_skipped() {
        let yaml = format!(
            "{}{}{}apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: web, namespace: x}}\nspec: {{selector: {{matchLabels: {{app: w}}}}, template: {{metadata: {{labels: {{app: w}}}}, spec: {{containers: [{{name: c}}]}}}}}}\n",
            pod("a", &["10.0.0.1"], ""),
            pod("h", &["192.168.1.5"], "hostNetwork: true, "),
            "apiVersion: v1\nkind: Pod\nmetadata: {name: done, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {phase: Succeeded}\n---\n",
        );
        let p = plan(&yaml).unwrap();
        assert_eq!(p.pods().len(), 1);
        let skipped: Vec<String> = p.skipped().iter().map(|s| s.object.clone()).collect();
        assert_eq!(skipped, ["x/deployment/web", "x/done", "x/h"]);
        assert!(p.skipped()[1].reason.contains("Succeeded"));
    }

    #[test]
    fn duplicate_and_unusable_addresses_are_refused() {
        let dup = format!(
            "{}{}",
            pod("a", &["10.0.0.1"], ""),
            pod("b", &["10.0.0.1"], "")
        );
        assert!(matches!(plan(&dup), Err(PlanError::DuplicateIp { .. })));
        let lo = pod("a", &["127.0.0.1"], "");
        assert!(matches!(plan(&lo), Err(PlanError::UnusableIp { .. })));
    }

    #[test]
    fn no_ports_means_tcp_80() {
        let p = plan("apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\n").unwrap();
        assert_eq!(p.services(), [DEFAULT_SERVICE]);
        // No port, an assigned address, the lab's cluster DNS.
        assert_eq!(p.notes().len(), 3, "{:?}", p.notes());
    }

    #[test]
    fn the_pool_skips_used_network_and_broadcast_addresses() {
        let mut pool = Pool {
            next: Ipv4Addr::new(10, 244, 0, 254),
            used: [IpAddr::V4(Ipv4Addr::new(10, 244, 1, 1))].into(),
        };
        assert_eq!(pool.take(), Some(Ipv4Addr::new(10, 244, 0, 254)));
        assert_eq!(pool.take(), Some(Ipv4Addr::new(10, 244, 1, 2)));
        let mut end = Pool {
            next: Ipv4Addr::new(10, 244, 255, 254),
            used: BTreeSet::new(),
        };
        assert!(end.take().is_some());
        assert_eq!(end.take(), None);
    }
}
