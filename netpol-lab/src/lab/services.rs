//! The lab as a real node, beyond Pod IPs: Service probes through the kube-proxy
//! equivalent and kubelet-style probes from the node. Pure planning here; `Lab` runs it.
//!
//! - [`kube_proxy`]: every proxied Service port of the model with its backends'
//!   addresses and resolved target ports, for [`super::kubeproxy`].
//! - [`service_probes`]: every lab Pod to every Service port with backends, through the
//!   Service's first ClusterIP (or external IP) of each family the Pod has. The expectation is the SET of verdicts
//!   of the backends that serve the port ([`AllowGraph::reach_service`]: each judged
//!   after DNAT, hairpin included): kube-proxy picks a backend at random, so a cell with
//!   backends of different verdicts is probed several times and the observed outcomes
//!   must be exactly that set.
//! - [`node_probes`]: the node to every Pod's declared ports; always allowed.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use policy_compiler::model::BackendTarget;
use policy_compiler::{AllowGraph, Model, Protocol, Subject};
use serde::Serialize;

use super::kubeproxy::ServicePort;
use super::plan::LabPlan;

/// A probe through a Service address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceProbe {
    /// Index of the source in [`LabPlan::pods`].
    #[serde(skip)]
    pub src_index: usize,
    /// Source Pod (`ns/name`).
    pub src: String,
    /// Service (`ns/name`).
    pub service: String,
    /// Service port name, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// Protocol.
    pub protocol: Protocol,
    /// The Service port.
    pub port: u16,
    /// The address probed (ClusterIP or external IP).
    pub address: IpAddr,
    /// The compiler's verdicts over the backends serving this port (`[false]`,
    /// `[true]` or `[false, true]`).
    pub expected: Vec<bool>,
    /// Backends (`pod:targetPort`) with their verdicts.
    pub backends: Vec<(String, bool)>,
}

/// A kubelet-style probe from the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeProbe {
    /// Index of the destination in [`LabPlan::pods`].
    #[serde(skip)]
    pub dst_index: usize,
    /// Destination Pod.
    pub dst: String,
    /// Destination address (the Pod's primary IP).
    pub ip: IpAddr,
    /// Protocol.
    pub protocol: Protocol,
    /// A port the Pod declares.
    pub port: u16,
}

fn backend_ip(model: &Model, t: BackendTarget, v6: bool) -> Option<IpAddr> {
    match t {
        BackendTarget::Endpoint(id) => model
            .endpoint(id)
            .ips
            .iter()
            .copied()
            .find(|ip| ip.is_ipv6() == v6),
        BackendTarget::Address(ip) => (ip.is_ipv6() == v6).then_some(ip),
    }
}

/// kube-proxy's view of the model: every port of every proxied Service with its
/// ready backends (address of the Service's family, resolved target port).
pub fn kube_proxy(model: &Model) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for s in model.services.iter().filter(|s| s.proxied()) {
        for (i, p) in s.ports.iter().enumerate() {
            let mut endpoints = Vec::new();
            for v6 in [false, true] {
                for b in &s.backends {
                    if let (Some(ip), Some(Some(tp))) =
                        (backend_ip(model, b.target, v6), b.ports.get(i))
                    {
                        endpoints.push(SocketAddr::new(ip, *tp));
                    }
                }
            }
            out.push(ServicePort {
                service: s.key(),
                port_name: p.name.clone().unwrap_or_default(),
                protocol: p.protocol,
                port: p.port,
                cluster_ips: s.cluster_ips.clone(),
                external_ips: s
                    .external_ips
                    .iter()
                    .chain(&s.load_balancer_ips)
                    .copied()
                    .collect(),
                node_port: p.node_port,
                endpoints,
            });
        }
    }
    out
}

/// Every lab Pod to every Service port that has backends, at the Service's first
/// address of each family the source has ([`AllowGraph::reach_service_at`]).
pub fn service_probes(plan: &LabPlan) -> Vec<ServiceProbe> {
    let model = plan.model();
    let graph: &AllowGraph = plan.graph();
    let mut out = Vec::new();
    for s in model.services.iter().filter(|s| s.proxied()) {
        // The lab's own kube-dns serves DNS, not probes: checked by name lookups.
        if plan.dns().is_some() && (s.namespace.as_str(), s.name.as_str()) == super::plan::KUBE_DNS
        {
            continue;
        }
        for (i, p) in s.ports.iter().enumerate() {
            for (src_index, src) in plan.pods().iter().enumerate() {
                // Each family the Pod has (primary first), at the Service's first
                // address of that family: dual-stack Services are DNATed per family.
                let mut families: Vec<bool> = src.ips.iter().map(IpAddr::is_ipv6).collect();
                families.dedup();
                for v6 in families {
                    let Some(address) = s.addresses().into_iter().find(|a| a.is_ipv6() == v6)
                    else {
                        continue;
                    };
                    let flows = graph.reach_service_at(model, Subject::Endpoint(src.id), s, i, v6);
                    if flows.is_empty() {
                        continue;
                    }
                    let expected: BTreeSet<bool> = flows.iter().map(|f| f.allowed).collect();
                    let backends = flows
                        .iter()
                        .map(|f| {
                            let name = match f.backend {
                                Subject::Endpoint(id) => model.endpoint(id).key(),
                                Subject::External(ip) => ip.to_string(),
                            };
                            (format!("{name}:{}", f.target_port), f.allowed)
                        })
                        .collect();
                    out.push(ServiceProbe {
                        src_index,
                        src: src.pod.clone(),
                        service: s.key(),
                        port_name: p.name.clone(),
                        protocol: p.protocol,
                        port: p.port,
                        address,
                        expected: expected.into_iter().collect(),
                        backends,
                    });
                }
            }
        }
    }
    out
}

/// Target ports of Service backends that are lab Pods: `(pod index, protocol, port)`,
/// so every backend listens where kube-proxy sends the flow.
pub fn backend_listeners(plan: &LabPlan) -> BTreeSet<(usize, Protocol, u16)> {
    let model = plan.model();
    let mut out = BTreeSet::new();
    for s in model.services.iter().filter(|s| s.proxied()) {
        for b in &s.backends {
            let BackendTarget::Endpoint(id) = b.target else {
                continue;
            };
            let Some(idx) = plan.pods().iter().position(|p| p.id == id) else {
                continue;
            };
            for (sp, tp) in s.ports.iter().zip(&b.ports) {
                if let Some(tp) = tp {
                    out.insert((idx, sp.protocol, *tp));
                }
            }
        }
    }
    out
}

/// The node to every lab Pod's declared container ports (at its primary IP).
pub fn node_probes(plan: &LabPlan) -> Vec<NodeProbe> {
    let model = plan.model();
    let mut out = Vec::new();
    for (dst_index, p) in plan.pods().iter().enumerate() {
        let Some(ip) = p.ips.first().copied() else {
            continue;
        };
        let ports: BTreeSet<(Protocol, u16)> = model
            .endpoint(p.id)
            .ports
            .iter()
            .map(|c| (c.protocol, c.port))
            .collect();
        for (protocol, port) in ports {
            out.push(NodeProbe {
                dst_index,
                dst: p.pod.clone(),
                ip,
                protocol,
                port,
            });
        }
    }
    out
}
