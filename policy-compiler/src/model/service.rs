//! Services, EndpointSlices and Nodes in the model.
//!
//! A [`Service`] is validated as the API server validates it (type, cluster IPs, ports,
//! selector, external IPs, load-balancer ingress IPs) and gets its **backends**: the
//! endpoints kube-proxy would DNAT a connection to, each with the target port it uses for
//! every Service port.
//!
//! - When EndpointSlices name the Service (label `kubernetes.io/service-name`), they are
//!   the truth: every ready endpoint address of a slice whose port (same name, same
//!   protocol) matches a Service port is a backend on that slice port. An address that is
//!   a Pod's IP (or a `targetRef` to a Pod of the input) is that Pod; any other address is
//!   an external backend.
//! - Otherwise the backends are derived from the selector as the EndpointSlice controller
//!   does: Pods of the Service's namespace whose labels match (Running or Pending;
//!   Succeeded and Failed Pods are not endpoints in the model), hostNetwork Pods included
//!   (the controller includes them; their address is the node's), Pods without an IP yet
//!   included too (so `explain` answers for manifests without status), and workload Pod
//!   templates whose labels match (the Pods they will create).
//! - A Service without selector and without slices has no backends; an ExternalName
//!   Service never has any (DNS only, no proxying).
//!
//! A numeric `targetPort` is used as is (absent: the Service port); a named one resolves
//! per backend to its container port of that name and protocol, and a backend that does
//! not declare it is not a backend for that port.
//!
//! A [`NodeInfo`] holds a Node's InternalIP/ExternalIP addresses and Pod CIDRs; the
//! addresses that count as "the node" of a Pod are [`Model::node_addresses`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::{Node, Service as K8sService};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Builder, EndpointId, EndpointKind, Model, oref, parse_cidr};
use crate::diagnostic::{Diagnostic, ObjectRef, Origin};
use crate::load::Located;
use crate::ports::Protocol;
use crate::selector::Labels;
use crate::validate;

/// The label that links an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceType {
    /// `ClusterIP` (the default).
    ClusterIp,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
    /// `ExternalName`: a DNS alias, never proxied.
    ExternalName,
}

impl ServiceType {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::ExternalName => "ExternalName",
        }
    }
}

/// `targetPort` of a Service port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    /// A port number.
    Number(u16),
    /// A container port name, resolved per backend.
    Named(String),
}

impl fmt::Display for TargetPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TargetPort::Number(n) => write!(f, "{n}"),
            TargetPort::Named(n) => f.write_str(n),
        }
    }
}

/// One validated entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (required when the Service has several ports).
    pub name: Option<String>,
    /// Protocol (TCP when absent).
    pub protocol: Protocol,
    /// The Service port clients connect to.
    pub port: u16,
    /// Where the backend listens (the Service port when absent).
    pub target_port: TargetPort,
    /// The node port (NodePort and LoadBalancer Services), when given.
    pub node_port: Option<u16>,
}

impl ServicePort {
    /// `http TCP 80 -> targetPort web`, for dumps.
    pub fn describe(&self) -> String {
        let name = self
            .name
            .as_deref()
            .map(|n| format!("{n} "))
            .unwrap_or_default();
        let node = self
            .node_port
            .map(|n| format!(" nodePort {n}"))
            .unwrap_or_default();
        format!(
            "{name}{} {} -> targetPort {}{node}",
            self.protocol, self.port, self.target_port
        )
    }
}

/// What a backend is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BackendTarget {
    /// A Pod or workload of the model.
    Endpoint(EndpointId),
    /// An EndpointSlice address that is no endpoint of the model.
    Address(IpAddr),
}

/// One backend of a Service and its target port for each Service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// The endpoint or address.
    pub target: BackendTarget,
    /// The node it runs on, when known (`nodeName` of the slice endpoint or the Pod).
    pub node: Option<String>,
    /// `ports[i]`: the target port for `Service::ports[i]`, `None` when this backend does
    /// not serve that port (a named targetPort it does not declare).
    pub ports: Vec<Option<u16>>,
}

/// Where a Service's backends came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSource {
    /// EndpointSlices of the input, by name.
    EndpointSlices(Vec<String>),
    /// The selector, as the EndpointSlice controller would compute them.
    Selector,
    /// Neither: no selector and no EndpointSlice (or an ExternalName Service).
    Nothing,
}

/// A validated Service with its backends.
#[derive(Debug, Clone)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIPs` (or `clusterIP`); empty when headless or not allocated.
    pub cluster_ips: Vec<IpAddr>,
    /// `clusterIP: None`.
    pub headless: bool,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<IpAddr>,
    /// `spec.externalName` of an ExternalName Service.
    pub external_name: Option<String>,
    /// `spec.selector` (`None`: no selector, backends only from EndpointSlices).
    pub selector: Option<Labels>,
    /// Ports, in the order given.
    pub ports: Vec<ServicePort>,
    /// Backends, sorted by target.
    pub backends: Vec<Backend>,
    /// Where the backends came from.
    pub backend_source: BackendSource,
    /// Where it came from.
    pub origin: Option<Origin>,
}

impl Service {
    /// `ns/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `ns/service/name`, as `explain` names it.
    pub fn display(&self) -> String {
        format!("{}/service/{}", self.namespace, self.name)
    }

    /// The addresses clients connect to on the Service port (cluster IPs, external IPs,
    /// load-balancer IPs), sorted, deduplicated. Node addresses (on node ports) are not
    /// included: they depend on the node.
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = self
            .cluster_ips
            .iter()
            .chain(&self.external_ips)
            .chain(&self.load_balancer_ips)
            .copied()
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// True when kube-proxy rewrites connections to it (not headless, not ExternalName).
    pub fn proxied(&self) -> bool {
        !self.headless && self.service_type != ServiceType::ExternalName
    }

    /// Index of the port named `arg` or numbered `arg` (several ports may share a number
    /// with different protocols: all of them).
    pub fn find_ports(&self, arg: &str) -> Vec<usize> {
        let by_number = arg.parse::<u16>().ok();
        self.ports
            .iter()
            .enumerate()
            .filter(|(_, p)| match by_number {
                Some(n) => p.port == n,
                None => p.name.as_deref() == Some(arg),
            })
            .map(|(i, _)| i)
            .collect()
    }
}

/// A validated Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// `metadata.name`.
    pub name: String,
    /// InternalIP and ExternalIP addresses of `status.addresses`, sorted.
    pub addresses: Vec<IpAddr>,
    /// `spec.podCIDRs` (or `podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
    /// `metadata.labels` (ClusterNetworkPolicy `nodes` peers select on them).
    pub labels: Labels,
}

/// An EndpointSlice reduced to what backend resolution needs.
#[derive(Debug, Clone)]
pub(super) struct PendingSlice {
    namespace: String,
    name: String,
    service: String,
    /// `(name, protocol, port)`; `port` `None` means "unrestricted" (no usable number).
    ports: Vec<(Option<String>, Protocol, Option<u16>)>,
    endpoints: Vec<PendingEndpoint>,
}

#[derive(Debug, Clone)]
struct PendingEndpoint {
    addresses: Vec<IpAddr>,
    node: Option<String>,
    /// `targetRef` to a Pod: `ns/name`.
    pod: Option<String>,
}

/// Why an address cannot be a Service address, if it cannot.
pub fn unusable_service_ip(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("may not be the unspecified address");
    }
    if ip.is_loopback() {
        return Some("may not be in the loopback range (127.0.0.0/8, ::1/128)");
    }
    if ip.is_multicast() {
        return Some("may not be a multicast address");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_link_local() => {
            Some("may not be in the link-local range (169.254.0.0/16)")
        }
        IpAddr::V4(v4) if v4.is_broadcast() => Some("may not be the broadcast address"),
        IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80 => {
            Some("may not be in the link-local range (fe80::/10)")
        }
        _ => None,
    }
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p > 0)
}

impl Builder {
    pub(super) fn service(&mut self, svc: &Located<K8sService>) {
        let meta = &svc.object.metadata;
        let origin = svc.origin.as_ref();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let obj = oref("Service", meta, &ns);
        let mut ok = self.check_meta(
            "Service",
            meta,
            &ns,
            origin,
            validate::dns1035_label,
            "metadata.labels",
            meta.labels.as_ref(),
        );
        let spec = svc.object.spec.clone().unwrap_or_default();
        let service_type = match spec.type_.as_deref() {
            None | Some("ClusterIP") => ServiceType::ClusterIp,
            Some("NodePort") => ServiceType::NodePort,
            Some("LoadBalancer") => ServiceType::LoadBalancer,
            Some("ExternalName") => ServiceType::ExternalName,
            Some(other) => {
                self.err(
                    origin,
                    &obj,
                    "spec.type",
                    Some(other.into()),
                    "unsupported value: supported values are \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\"",
                );
                return;
            }
        };

        // Cluster IPs.
        let mut headless = false;
        let mut cluster_ips = Vec::new();
        let mut ip_texts: Vec<(String, String)> = Vec::new();
        if let Some(ip) = spec.cluster_ip.as_deref().filter(|s| !s.is_empty()) {
            ip_texts.push(("spec.clusterIP".into(), ip.into()));
        }
        for (i, ip) in spec.cluster_ips.iter().flatten().enumerate() {
            if i == 0
                && let Some(first) = spec.cluster_ip.as_deref().filter(|s| !s.is_empty())
                && first != ip
            {
                self.err(
                    origin,
                    &obj,
                    "spec.clusterIPs[0]",
                    Some(ip.clone()),
                    format!("must match `clusterIP` ({first})"),
                );
                ok = false;
            }
            ip_texts.push((format!("spec.clusterIPs[{i}]"), ip.clone()));
        }
        if spec.cluster_ips.as_ref().is_some_and(|v| v.len() > 2) {
            self.err(
                origin,
                &obj,
                "spec.clusterIPs",
                None,
                "may not have more than two entries (one per IP family)",
            );
            ok = false;
        }
        for (field, text) in &ip_texts {
            if text == "None" {
                headless = true;
                continue;
            }
            match text.parse::<IpAddr>() {
                Ok(ip) => {
                    if let Some(why) = unusable_service_ip(&ip) {
                        self.err(origin, &obj, field, Some(text.clone()), why);
                        ok = false;
                    } else if !cluster_ips.contains(&ip) {
                        cluster_ips.push(ip);
                    }
                }
                Err(_) => {
                    self.err(
                        origin,
                        &obj,
                        field,
                        Some(text.clone()),
                        "must be a valid IP address or \"None\"",
                    );
                    ok = false;
                }
            }
        }
        if headless && !cluster_ips.is_empty() {
            self.err(
                origin,
                &obj,
                "spec.clusterIPs",
                None,
                "may not mix \"None\" with IP addresses",
            );
            ok = false;
        }
        if cluster_ips.len() == 2 && cluster_ips[0].is_ipv4() == cluster_ips[1].is_ipv4() {
            self.err(
                origin,
                &obj,
                "spec.clusterIPs[1]",
                Some(cluster_ips[1].to_string()),
                "must be of a different IP family than clusterIPs[0]",
            );
            ok = false;
        }
        match service_type {
            ServiceType::ExternalName => {
                if !cluster_ips.is_empty() || headless {
                    self.err(
                        origin,
                        &obj,
                        "spec.clusterIP",
                        spec.cluster_ip.clone(),
                        "may not be set for an ExternalName Service",
                    );
                    ok = false;
                }
                match spec.external_name.as_deref() {
                    None | Some("") => {
                        self.err(
                            origin,
                            &obj,
                            "spec.externalName",
                            None,
                            "required value for an ExternalName Service",
                        );
                        ok = false;
                    }
                    Some(n) => {
                        if let Err(e) = validate::dns1123_subdomain(n.trim_end_matches('.')) {
                            self.err(origin, &obj, "spec.externalName", Some(n.into()), e);
                            ok = false;
                        }
                    }
                }
            }
            ServiceType::NodePort | ServiceType::LoadBalancer if headless => {
                self.err(
                    origin,
                    &obj,
                    "spec.clusterIP",
                    Some("None".into()),
                    format!(
                        "may not be \"None\" for a {} Service",
                        service_type.as_str()
                    ),
                );
                ok = false;
            }
            _ => {}
        }

        // Ports.
        let raw_ports = spec.ports.clone().unwrap_or_default();
        if raw_ports.is_empty() && service_type != ServiceType::ExternalName && !headless {
            self.err(origin, &obj, "spec.ports", None, "required value");
            ok = false;
        }
        let mut ports = Vec::new();
        let mut names = BTreeSet::new();
        let mut numbers = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for (i, p) in raw_ports.iter().enumerate() {
            let base = format!("spec.ports[{i}]");
            let mut pok = true;
            match p.name.as_deref().filter(|n| !n.is_empty()) {
                None if raw_ports.len() > 1 => {
                    self.err(
                        origin,
                        &obj,
                        &format!("{base}.name"),
                        None,
                        "required value: a Service with several ports must name each",
                    );
                    pok = false;
                }
                None => {}
                Some(n) => {
                    if let Err(e) = validate::dns1123_label(n) {
                        self.err(origin, &obj, &format!("{base}.name"), Some(n.into()), e);
                        pok = false;
                    } else if !names.insert(n.to_string()) {
                        self.err(
                            origin,
                            &obj,
                            &format!("{base}.name"),
                            Some(n.into()),
                            "duplicate value: another port has this name",
                        );
                        pok = false;
                    }
                }
            }
            let protocol = self
                .port_protocol(
                    p.protocol.as_deref(),
                    || format!("{base}.protocol"),
                    origin,
                    &obj,
                )
                .unwrap_or_else(|| {
                    pok = false;
                    Protocol::Tcp
                });
            let port = port_number(p.port);
            if port.is_none() {
                self.err(
                    origin,
                    &obj,
                    &format!("{base}.port"),
                    Some(p.port.to_string()),
                    "must be between 1 and 65535, inclusive",
                );
                pok = false;
            }
            if let Some(n) = port
                && pok
                && !numbers.insert((protocol, n))
            {
                self.err(
                    origin,
                    &obj,
                    &format!("{base}.port"),
                    Some(n.to_string()),
                    format!("duplicate value: another port has {protocol} {n}"),
                );
                pok = false;
            }
            let target_port = match &p.target_port {
                None => port.map(TargetPort::Number),
                Some(IntOrString::Int(n)) => match port_number(*n) {
                    Some(t) => Some(TargetPort::Number(t)),
                    None => {
                        self.err(
                            origin,
                            &obj,
                            &format!("{base}.targetPort"),
                            Some(n.to_string()),
                            "must be between 1 and 65535, inclusive",
                        );
                        pok = false;
                        None
                    }
                },
                Some(IntOrString::String(s)) => {
                    // The API server accepts a number written as a string.
                    match s.parse::<i32>() {
                        Ok(n) => match port_number(n) {
                            Some(t) => Some(TargetPort::Number(t)),
                            None => {
                                self.err(
                                    origin,
                                    &obj,
                                    &format!("{base}.targetPort"),
                                    Some(s.clone()),
                                    "must be between 1 and 65535, inclusive",
                                );
                                pok = false;
                                None
                            }
                        },
                        Err(_) => match validate::iana_svc_name(s) {
                            Ok(()) => Some(TargetPort::Named(s.clone())),
                            Err(e) => {
                                self.err(
                                    origin,
                                    &obj,
                                    &format!("{base}.targetPort"),
                                    Some(s.clone()),
                                    e,
                                );
                                pok = false;
                                None
                            }
                        },
                    }
                }
            };
            let node_port = match p.node_port {
                None | Some(0) => None,
                Some(n) => match port_number(n) {
                    None => {
                        self.err(
                            origin,
                            &obj,
                            &format!("{base}.nodePort"),
                            Some(n.to_string()),
                            "must be between 1 and 65535, inclusive",
                        );
                        pok = false;
                        None
                    }
                    Some(np) => {
                        if !matches!(
                            service_type,
                            ServiceType::NodePort | ServiceType::LoadBalancer
                        ) {
                            self.err(
                                origin,
                                &obj,
                                &format!("{base}.nodePort"),
                                Some(n.to_string()),
                                format!(
                                    "may not be used when `type` is {:?}",
                                    service_type.as_str()
                                ),
                            );
                            pok = false;
                        } else if !node_ports.insert((protocol, np)) {
                            self.err(
                                origin,
                                &obj,
                                &format!("{base}.nodePort"),
                                Some(n.to_string()),
                                "duplicate value: another port has this nodePort",
                            );
                            pok = false;
                        }
                        Some(np)
                    }
                },
            };
            match (pok, port, target_port) {
                (true, Some(port), Some(target_port)) => ports.push(ServicePort {
                    name: p.name.clone().filter(|n| !n.is_empty()),
                    protocol,
                    port,
                    target_port,
                    node_port,
                }),
                _ => ok = false,
            }
        }

        // Selector: label keys and values, like metadata labels.
        let selector = spec.selector.clone().filter(|s| !s.is_empty());
        for (k, v) in selector.iter().flatten() {
            let field = format!("spec.selector.{k}");
            if let Err(e) = validate::label_key(k) {
                self.err(
                    origin,
                    &obj,
                    &field,
                    Some(k.clone()),
                    format!("invalid label key: {e}"),
                );
                ok = false;
            }
            if let Err(e) = validate::label_value(v) {
                self.err(
                    origin,
                    &obj,
                    &field,
                    Some(v.clone()),
                    format!("invalid label value: {e}"),
                );
                ok = false;
            }
        }

        let mut ips_of = |this: &mut Self, texts: Vec<(String, String)>| {
            let mut out = Vec::new();
            for (field, text) in texts {
                match text.parse::<IpAddr>() {
                    Ok(ip) => match unusable_service_ip(&ip) {
                        Some(why) => {
                            this.err(origin, &obj, &field, Some(text), why);
                            ok = false;
                        }
                        None => out.push(ip),
                    },
                    Err(_) => {
                        this.err(
                            origin,
                            &obj,
                            &field,
                            Some(text),
                            "must be a valid IP address",
                        );
                        ok = false;
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        };
        let external_ips = ips_of(
            self,
            spec.external_ips
                .iter()
                .flatten()
                .enumerate()
                .map(|(i, s)| (format!("spec.externalIPs[{i}]"), s.clone()))
                .collect(),
        );
        let load_balancer_ips = ips_of(
            self,
            svc.object
                .status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|l| l.ingress.as_ref())
                .into_iter()
                .flatten()
                .enumerate()
                .filter_map(|(i, ing)| {
                    ing.ip
                        .as_ref()
                        .map(|ip| (format!("status.loadBalancer.ingress[{i}].ip"), ip.clone()))
                })
                .collect(),
        );
        if !ok {
            return;
        }
        self.implicit_namespace(&ns);
        self.services.push(Service {
            namespace: ns,
            name: meta.name.clone().unwrap_or_default(),
            service_type,
            cluster_ips,
            headless,
            external_ips,
            load_balancer_ips,
            external_name: spec
                .external_name
                .filter(|_| service_type == ServiceType::ExternalName),
            selector,
            ports,
            backends: Vec::new(),
            backend_source: BackendSource::Nothing,
            origin: svc.origin.clone(),
        });
    }

    pub(super) fn endpoint_slice(&mut self, slice: &Located<EndpointSlice>) {
        let meta = &slice.object.metadata;
        let origin = slice.origin.as_ref();
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let obj = oref("EndpointSlice", meta, &ns);
        let mut ok = self.check_meta(
            "EndpointSlice",
            meta,
            &ns,
            origin,
            validate::dns1123_subdomain,
            "metadata.labels",
            meta.labels.as_ref(),
        );
        let s = &slice.object;
        let family = match s.address_type.as_str() {
            "IPv4" => Some(true),
            "IPv6" => Some(false),
            "FQDN" => None,
            other => {
                self.err(
                    origin,
                    &obj,
                    "addressType",
                    Some(other.into()),
                    "unsupported value: supported values are \"FQDN\", \"IPv4\", \"IPv6\"",
                );
                return;
            }
        };
        let mut ports = Vec::new();
        let mut names = BTreeSet::new();
        for (i, p) in s.ports.iter().flatten().enumerate() {
            let base = format!("ports[{i}]");
            let name = p.name.clone().filter(|n| !n.is_empty());
            if let Some(n) = &name
                && let Err(e) = validate::dns1123_label(n)
            {
                self.err(origin, &obj, &format!("{base}.name"), Some(n.clone()), e);
                ok = false;
            }
            if !names.insert(name.clone()) {
                self.err(
                    origin,
                    &obj,
                    &format!("{base}.name"),
                    name.clone(),
                    "duplicate value: another port has this name",
                );
                ok = false;
            }
            let protocol = self
                .port_protocol(
                    p.protocol.as_deref(),
                    || format!("{base}.protocol"),
                    origin,
                    &obj,
                )
                .unwrap_or_else(|| {
                    ok = false;
                    Protocol::Tcp
                });
            let port = match p.port {
                None => None,
                Some(n) => match port_number(n) {
                    Some(n) => Some(n),
                    None => {
                        self.err(
                            origin,
                            &obj,
                            &format!("{base}.port"),
                            Some(n.to_string()),
                            "must be between 1 and 65535, inclusive",
                        );
                        ok = false;
                        None
                    }
                },
            };
            ports.push((name, protocol, port));
        }
        let mut endpoints = Vec::new();
        for (i, e) in s.endpoints.iter().enumerate() {
            let base = format!("endpoints[{i}]");
            if e.addresses.is_empty() {
                self.err(
                    origin,
                    &obj,
                    &format!("{base}.addresses"),
                    None,
                    "required value: must contain at least 1 address",
                );
                ok = false;
            }
            let mut addresses = Vec::new();
            for (j, a) in e.addresses.iter().enumerate() {
                let field = format!("{base}.addresses[{j}]");
                match family {
                    None => {
                        if let Err(m) = validate::dns1123_subdomain(a) {
                            self.err(origin, &obj, &field, Some(a.clone()), m);
                            ok = false;
                        }
                    }
                    Some(v4) => match a.parse::<IpAddr>() {
                        Ok(ip) if ip.is_ipv4() == v4 => addresses.push(ip),
                        Ok(_) => {
                            self.err(
                                origin,
                                &obj,
                                &field,
                                Some(a.clone()),
                                format!(
                                    "must be an {} address (addressType {})",
                                    if v4 { "IPv4" } else { "IPv6" },
                                    s.address_type
                                ),
                            );
                            ok = false;
                        }
                        Err(_) => {
                            self.err(
                                origin,
                                &obj,
                                &field,
                                Some(a.clone()),
                                "must be a valid IP address",
                            );
                            ok = false;
                        }
                    },
                }
            }
            let pod = e
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    r.name.as_ref().map(|n| {
                        format!("{}/{n}", r.namespace.clone().unwrap_or_else(|| ns.clone()))
                    })
                });
            // kube-proxy routes to ready endpoints; `ready` absent means ready.
            let ready = e.conditions.as_ref().and_then(|c| c.ready) != Some(false);
            if ready {
                endpoints.push(PendingEndpoint {
                    addresses,
                    node: e.node_name.clone(),
                    pod,
                });
            }
        }
        let service = meta
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned();
        if !ok {
            return;
        }
        let Some(service) = service else {
            self.diags.push(
                Diagnostic::field_error(
                    origin,
                    &obj,
                    "metadata.labels",
                    None,
                    format!(
                        "has no label {SERVICE_NAME_LABEL}: it belongs to no Service and is ignored"
                    ),
                )
                .warning(),
            );
            return;
        };
        if family.is_none() {
            // FQDN slices are not used by kube-proxy.
            return;
        }
        self.slices.push(PendingSlice {
            namespace: ns,
            name: meta.name.clone().unwrap_or_default(),
            service,
            ports,
            endpoints,
        });
    }

    pub(super) fn node(&mut self, node: &Located<Node>) {
        let meta = &node.object.metadata;
        let origin = node.origin.as_ref();
        let obj = oref("Node", meta, "");
        let mut ok = self.check_meta(
            "Node",
            meta,
            "",
            origin,
            validate::dns1123_subdomain,
            "metadata.labels",
            meta.labels.as_ref(),
        );
        let mut addresses = Vec::new();
        let addrs = node
            .object
            .status
            .as_ref()
            .and_then(|s| s.addresses.as_ref());
        for (i, a) in addrs.into_iter().flatten().enumerate() {
            if !matches!(a.type_.as_str(), "InternalIP" | "ExternalIP") {
                continue;
            }
            match a.address.parse::<IpAddr>() {
                Ok(ip) => addresses.push(ip),
                Err(_) => {
                    self.err(
                        origin,
                        &obj,
                        &format!("status.addresses[{i}].address"),
                        Some(a.address.clone()),
                        format!("must be a valid IP address (type {})", a.type_),
                    );
                    ok = false;
                }
            }
        }
        addresses.sort_unstable();
        addresses.dedup();
        let spec = node.object.spec.clone().unwrap_or_default();
        let mut cidr_texts: Vec<(String, String)> = Vec::new();
        if let Some(c) = spec.pod_cidr.filter(|c| !c.is_empty()) {
            cidr_texts.push(("spec.podCIDR".into(), c));
        }
        for (i, c) in spec.pod_cidrs.iter().flatten().enumerate() {
            cidr_texts.push((format!("spec.podCIDRs[{i}]"), c.clone()));
        }
        let mut pod_cidrs = Vec::new();
        for (field, text) in cidr_texts {
            match parse_cidr(&text) {
                Ok(c) => pod_cidrs.push(c),
                Err(e) => {
                    self.err(origin, &obj, &field, Some(text), e);
                    ok = false;
                }
            }
        }
        pod_cidrs.sort_unstable();
        pod_cidrs.dedup();
        if !ok {
            return;
        }
        let name = meta.name.clone().unwrap_or_default();
        self.nodes.insert(
            name.clone(),
            NodeInfo {
                name,
                addresses,
                pod_cidrs,
                labels: meta.labels.clone().unwrap_or_default(),
            },
        );
    }
}

/// Fills every Service's backends from the slices (preferred) or its selector. Runs after
/// the endpoints are sorted and indexed.
pub(super) fn resolve_backends(
    model: &Model,
    services: &mut [Service],
    slices: &[PendingSlice],
    diags: &mut Vec<Diagnostic>,
) {
    let mut by_service: BTreeMap<(&str, &str), Vec<&PendingSlice>> = BTreeMap::new();
    for s in slices {
        by_service
            .entry((s.namespace.as_str(), s.service.as_str()))
            .or_default()
            .push(s);
    }
    for svc in services.iter_mut() {
        if svc.service_type == ServiceType::ExternalName {
            continue;
        }
        let mine = by_service
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .cloned()
            .unwrap_or_default();
        if !mine.is_empty() {
            from_slices(model, svc, &mine);
        } else if svc.selector.is_some() {
            from_selector(model, svc);
            warn_unresolved_named_ports(model, svc, diags);
        }
    }
}

fn from_slices(model: &Model, svc: &mut Service, slices: &[&PendingSlice]) {
    let mut names: Vec<String> = slices.iter().map(|s| s.name.clone()).collect();
    names.sort();
    let mut backends: BTreeMap<BackendTarget, Backend> = BTreeMap::new();
    for slice in slices {
        // For each Service port, the slice port with the same name and protocol.
        let port_map: Vec<Option<u16>> = svc
            .ports
            .iter()
            .map(|sp| {
                slice
                    .ports
                    .iter()
                    .find(|(n, pr, _)| *n == sp.name && *pr == sp.protocol)
                    .and_then(|(_, _, p)| *p)
            })
            .collect();
        for e in &slice.endpoints {
            let by_ref = e.pod.as_deref().and_then(|k| model.endpoint_by_key(k));
            let targets: Vec<BackendTarget> = match by_ref {
                Some(id) => vec![BackendTarget::Endpoint(id)],
                None => e
                    .addresses
                    .iter()
                    .map(|ip| match model.endpoint_by_ip(ip) {
                        Some(id) => BackendTarget::Endpoint(id),
                        None => BackendTarget::Address(*ip),
                    })
                    .collect(),
            };
            for t in targets {
                let node = e.node.clone().or_else(|| match t {
                    BackendTarget::Endpoint(id) => model.endpoint(id).node.clone(),
                    BackendTarget::Address(_) => None,
                });
                let b = backends.entry(t).or_insert_with(|| Backend {
                    target: t,
                    node,
                    ports: vec![None; svc.ports.len()],
                });
                for (slot, p) in b.ports.iter_mut().zip(&port_map) {
                    if slot.is_none() {
                        *slot = *p;
                    }
                }
            }
        }
    }
    svc.backends = backends.into_values().collect();
    svc.backend_source = BackendSource::EndpointSlices(names);
}

fn from_selector(model: &Model, svc: &mut Service) {
    let Some(selector) = &svc.selector else {
        return;
    };
    let mut backends = Vec::new();
    for id in model.endpoints_in(&svc.namespace) {
        let e = model.endpoint(*id);
        if !selector.iter().all(|(k, v)| e.labels.get(k) == Some(v)) {
            continue;
        }
        let ports = svc
            .ports
            .iter()
            .map(|sp| match &sp.target_port {
                TargetPort::Number(n) => Some(*n),
                TargetPort::Named(name) => e.resolve_named_port(name, sp.protocol).first().copied(),
            })
            .collect();
        backends.push(Backend {
            target: BackendTarget::Endpoint(*id),
            node: e.node.clone(),
            ports,
        });
    }
    svc.backends = backends;
    svc.backend_source = BackendSource::Selector;
}

fn warn_unresolved_named_ports(model: &Model, svc: &Service, diags: &mut Vec<Diagnostic>) {
    if svc.backends.is_empty() {
        return;
    }
    for (i, sp) in svc.ports.iter().enumerate() {
        let TargetPort::Named(name) = &sp.target_port else {
            continue;
        };
        if svc.backends.iter().all(|b| b.ports[i].is_none()) {
            let who: Vec<String> = svc
                .backends
                .iter()
                .map(|b| match b.target {
                    BackendTarget::Endpoint(id) => model.endpoint(id).key(),
                    BackendTarget::Address(ip) => ip.to_string(),
                })
                .take(5)
                .collect();
            diags.push(
                Diagnostic::field_error(
                    svc.origin.as_ref(),
                    &ObjectRef {
                        kind: "Service".into(),
                        namespace: svc.namespace.clone(),
                        name: svc.name.clone(),
                    },
                    &format!("spec.ports[{i}].targetPort"),
                    Some(name.clone()),
                    format!(
                        "no backend declares a {} container port named {name:?} (backends: {}): port {} of Service {} has no backends",
                        sp.protocol,
                        who.join(", "),
                        sp.port,
                        svc.key()
                    ),
                )
                .warning(),
            );
        }
    }
}

impl Model {
    /// The Service `ns/name`.
    pub fn service(&self, key: &str) -> Option<&Service> {
        self.service_by_key
            .get(key)
            .and_then(|i| self.services.get(*i))
    }

    /// The addresses that count as node `name` itself: its Node object's InternalIP and
    /// ExternalIP addresses and the IPs of hostNetwork Pods on it (they share the node's
    /// network namespace). Sorted, deduplicated. The agent adds the addresses of the
    /// node's own network namespace at runtime.
    pub fn node_addresses(&self, name: &str) -> Vec<IpAddr> {
        self.node_ips
            .get(name)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// True when `ip` is an address of node `name` (see [`Model::node_addresses`]).
    pub fn is_node_address(&self, name: &str, ip: &IpAddr) -> bool {
        self.node_ips.get(name).is_some_and(|s| s.contains(ip))
    }

    /// Names of the nodes that have `ip` (usually one).
    pub fn nodes_with_address(&self, ip: &IpAddr) -> Vec<&str> {
        self.node_ips
            .iter()
            .filter(|(_, s)| s.contains(ip))
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Every known node name: Node objects and `spec.nodeName` of endpoints.
    pub fn node_names(&self) -> Vec<&str> {
        self.node_ips.keys().map(String::as_str).collect()
    }

    /// Text name of a backend (`ns/pod` or the address).
    pub fn backend_name(&self, b: &Backend) -> String {
        match b.target {
            BackendTarget::Endpoint(id) => self.endpoint(id).key(),
            BackendTarget::Address(ip) => ip.to_string(),
        }
    }
}

/// Node addresses by node name: Node objects plus hostNetwork Pods with a `nodeName`.
pub(super) fn node_ips(model: &Model) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut out: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for (name, n) in &model.nodes {
        out.entry(name.clone())
            .or_default()
            .extend(n.addresses.iter().copied());
    }
    for e in &model.endpoints {
        if let Some(node) = &e.node {
            let set = out.entry(node.clone()).or_default();
            if e.host_network && e.kind == EndpointKind::Pod {
                set.extend(e.ips.iter().copied());
            }
        }
    }
    out
}

/// Dump lines for Services and Nodes (none when the input has neither, so older stage
/// dumps stay byte-identical).
pub(super) fn dump(model: &Model, s: &mut String) {
    use std::fmt::Write as _;
    for svc in &model.services {
        let mut addrs = Vec::new();
        if svc.headless {
            addrs.push("headless".to_string());
        }
        addrs.extend(svc.cluster_ips.iter().map(ToString::to_string));
        addrs.extend(svc.external_ips.iter().map(|i| format!("external {i}")));
        addrs.extend(
            svc.load_balancer_ips
                .iter()
                .map(|i| format!("loadBalancer {i}")),
        );
        let ports: Vec<String> = svc.ports.iter().map(ServicePort::describe).collect();
        let _ = writeln!(
            s,
            "service {} {} [{}] ports [{}]",
            svc.key(),
            svc.service_type.as_str(),
            addrs.join(", "),
            ports.join(", ")
        );
        let from = match &svc.backend_source {
            BackendSource::EndpointSlices(n) => format!("endpointslices {}", n.join(", ")),
            BackendSource::Selector => "selector".to_string(),
            BackendSource::Nothing => "nothing".to_string(),
        };
        if svc.backends.is_empty() {
            let _ = writeln!(s, "  backends from {from}: none");
        }
        for b in &svc.backends {
            let ports: Vec<String> = b
                .ports
                .iter()
                .zip(&svc.ports)
                .map(|(t, sp)| match t {
                    Some(t) => format!("{}->{t}", sp.port),
                    None => format!("{}->none", sp.port),
                })
                .collect();
            let _ = writeln!(
                s,
                "  backend {} ({from}) [{}]",
                model.backend_name(b),
                ports.join(", ")
            );
        }
    }
    for n in model.nodes.values() {
        let a: Vec<String> = n.addresses.iter().map(ToString::to_string).collect();
        let c: Vec<String> = n.pod_cidrs.iter().map(ToString::to_string).collect();
        let _ = writeln!(
            s,
            "node {} addresses [{}] podCIDRs [{}]",
            n.name,
            a.join(", "),
            c.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::build;
    use super::*;

    const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: db-0, namespace: shop, labels: {app: db}}\nspec: {nodeName: n1, containers: [{name: c, ports: [{name: postgres, containerPort: 5432}]}]}\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-1, namespace: shop, labels: {app: db}}\nspec: {containers: [{name: c, ports: [{name: postgres, containerPort: 6432}]}]}\nstatus: {phase: Running, podIP: 10.0.0.2}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: db-2, namespace: shop, labels: {app: db}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.3}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db, namespace: shop}\nspec:\n  selector: {matchLabels: {app: db}}\n  template:\n    metadata: {labels: {app: db}}\n    spec: {containers: [{name: c, ports: [{name: postgres, containerPort: 7432}]}]}\n---\n";

    fn svc(spec: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: db, namespace: shop}}\nspec:\n{spec}"
        )
    }

    #[test]
    fn named_target_port_resolves_per_backend() {
        let (m, d) = build(&format!(
            "{PODS}{}",
            svc(
                "  clusterIP: 10.96.0.5\n  selector: {app: db}\n  ports: [{port: 5432, targetPort: postgres}]\n"
            )
        ));
        assert!(d.is_empty(), "{d:?}");
        let s = m.service("shop/db").unwrap();
        assert_eq!(s.backend_source, BackendSource::Selector);
        let got: Vec<(String, Option<u16>)> = s
            .backends
            .iter()
            .map(|b| (m.backend_name(b), b.ports[0]))
            .collect();
        assert_eq!(
            got,
            [
                ("shop/db-0".to_string(), Some(5432)),
                ("shop/db-1".to_string(), Some(6432)),
                ("shop/db-2".to_string(), None),
                ("shop/deployment/db".to_string(), Some(7432)),
            ]
        );
        assert_eq!(m.node_addresses("n1"), Vec::<IpAddr>::new());
    }

    #[test]
    fn endpoint_slices_are_preferred_over_the_selector() {
        let slice = "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-abc, namespace: shop, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: '', port: 9999, protocol: TCP}]\nendpoints:\n- addresses: [10.0.0.2]\n  targetRef: {kind: Pod, name: db-1}\n- addresses: [10.9.9.9]\n- addresses: [10.0.0.1]\n  conditions: {ready: false}\n";
        let (m, d) = build(&format!(
            "{PODS}{}---\n{slice}",
            svc(
                "  clusterIP: 10.96.0.5\n  selector: {app: db}\n  ports: [{port: 5432, targetPort: postgres}]\n"
            )
        ));
        assert!(d.is_empty(), "{d:?}");
        let s = m.service("shop/db").unwrap();
        assert_eq!(
            s.backend_source,
            BackendSource::EndpointSlices(vec!["db-abc".into()])
        );
        let got: Vec<(String, Option<u16>)> = s
            .backends
            .iter()
            .map(|b| (m.backend_name(b), b.ports[0]))
            .collect();
        assert_eq!(
            got,
            [
                ("shop/db-1".to_string(), Some(9999)),
                ("10.9.9.9".to_string(), Some(9999)),
            ]
        );
    }

    #[test]
    fn no_selector_no_slices_no_backends_and_unresolved_named_port_warns() {
        let (m, d) = build(&format!(
            "{PODS}{}",
            svc("  clusterIP: 10.96.0.5\n  ports: [{port: 5432, targetPort: postgres}]\n")
        ));
        assert!(d.is_empty(), "{d:?}");
        let s = m.service("shop/db").unwrap();
        assert!(s.backends.is_empty());
        assert_eq!(s.backend_source, BackendSource::Nothing);
        let (_, d) = build(&format!(
            "{PODS}{}",
            svc(
                "  clusterIP: 10.96.0.5\n  selector: {app: db}\n  ports: [{port: 5432, targetPort: pg}]\n"
            )
        ));
        assert_eq!(d.len(), 1, "{d:?}");
        assert!(!d[0].is_error());
        assert_eq!(d[0].field.as_deref(), Some("spec.ports[0].targetPort"));
        assert!(d[0].message.contains("shop/db"), "{}", d[0]);
    }

    #[test]
    fn invalid_services_are_rejected_with_field_paths() {
        let (m, d) = build(&svc(
            "  type: NodePort\n  clusterIP: 127.0.0.1\n  selector: {'bad key': x}\n  externalIPs: [nope]\n  ports:\n  - {name: a, port: 0}\n  - {name: a, port: 80, protocol: ICMP}\n  - {port: 81, targetPort: Bad_Name, nodePort: 70000}\n",
        ));
        assert!(m.services.is_empty());
        let fields: Vec<&str> = d.iter().filter_map(|d| d.field.as_deref()).collect();
        assert_eq!(
            fields,
            [
                "spec.clusterIP",
                "spec.ports[0].port",
                "spec.ports[1].name",
                "spec.ports[1].protocol",
                "spec.ports[2].name",
                "spec.ports[2].targetPort",
                "spec.ports[2].nodePort",
                "spec.selector.bad key",
                "spec.externalIPs[0]",
            ],
            "{d:#?}"
        );
        assert!(d[0].message.contains("loopback"), "{}", d[0]);
    }

    #[test]
    fn slice_addresses_must_match_the_address_type() {
        let (_, d) = build(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: s, namespace: shop, labels: {kubernetes.io/service-name: db}}\naddressType: IPv6\nendpoints: [{addresses: [10.0.0.1]}]\n",
        );
        assert_eq!(d.len(), 1, "{d:?}");
        assert_eq!(d[0].field.as_deref(), Some("endpoints[0].addresses[0]"));
    }

    #[test]
    fn node_addresses_include_host_network_pods() {
        let (m, d) = build(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nspec: {podCIDR: 10.0.0.0/24}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}, {type: ExternalIP, address: 203.0.113.1}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: h, namespace: kube-system}\nspec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}\nstatus: {phase: Running, podIP: 192.168.0.7}\n",
        );
        assert!(d.is_empty(), "{d:?}");
        let got: Vec<String> = m
            .node_addresses("n1")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["192.168.0.1", "192.168.0.7", "203.0.113.1"]);
        assert_eq!(m.nodes["n1"].pod_cidrs.len(), 1);
    }
}
