//! Slimming: objects from the API server reduced to the fields netpol reads.
//!
//! The agent holds every Pod of the cluster (peer sets), so what it keeps per Pod is what
//! bounds its memory. Everything dropped here is either unused by the compiler
//! (`managedFields`, images, probes, volumes, conditions, ...) or changes often without
//! changing policy (`resourceVersion`, status timestamps): dropping it also means a
//! status-only update is no change for the state index, so it causes no recompile.

use k8s_openapi::api::core::v1::{
    Container, Namespace, Node, NodeStatus, Pod, PodSpec, PodStatus, Service, ServiceStatus,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// Metadata reduced to name, namespace, labels and (with `owners`, for Pods) the
/// controller ownerReference and the UID (which tells a CNI record's Pod from a later Pod
/// of the same name; it never changes in an update). Every annotation is dropped, the
/// `netpol.io/netns` one included: in Kubernetes mode a Pod's netns comes from CNI records
/// and the runtime, never from what the Pod's author wrote, so it is not even kept in the
/// state. See: #11
fn meta(m: ObjectMeta, owners: bool) -> ObjectMeta {
    let owner_references = if owners {
        m.owner_references
            .map(|refs| {
                refs.into_iter()
                    .filter(|r| r.controller == Some(true))
                    .collect::<Vec<_>>()
            })
            .filter(|refs| !refs.is_empty())
    } else {
        None
    };
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: if owners { m.uid } else { None },
        labels: m.labels,
        annotations: None,
        owner_references,
        ..ObjectMeta::default()
    }
}

/// A container reduced to its name, ports and restart policy (a sidecar init container
/// with `restartPolicy: Always` serves its ports like any container).
fn container(c: Container) -> Container {
    Container {
        name: c.name,
        ports: c.ports,
        restart_policy: c.restart_policy,
        ..Container::default()
    }
}

/// A Pod reduced to what the compiler and the agent read: name, namespace, labels, the
/// controller owner (no annotations, not even `netpol.io/netns`); `nodeName`, `hostNetwork`, container ports;
/// status phase, Pod IPs and host IPs.
pub fn slim_pod(pod: Pod) -> Pod {
    let spec = pod.spec.map(|s| PodSpec {
        containers: s.containers.into_iter().map(container).collect(),
        init_containers: s
            .init_containers
            .map(|cs| cs.into_iter().map(container).collect()),
        host_network: s.host_network,
        node_name: s.node_name,
        ..PodSpec::default()
    });
    let status = pod.status.map(|s| PodStatus {
        phase: s.phase,
        pod_ip: s.pod_ip,
        pod_ips: s.pod_ips,
        host_ip: s.host_ip,
        host_ips: s.host_ips,
        ..PodStatus::default()
    });
    Pod {
        metadata: meta(pod.metadata, true),
        spec,
        status,
    }
}

/// A Namespace reduced to its name and labels.
pub fn slim_namespace(ns: Namespace) -> Namespace {
    Namespace {
        metadata: meta(ns.metadata, false),
        spec: None,
        status: None,
    }
}

/// A policy's metadata: [`meta`] plus the one annotation netpol reads on policies,
/// `netpol.io/mode` (audit policies, #12); every other annotation is dropped.
fn policy_meta(m: ObjectMeta) -> ObjectMeta {
    let mode = m
        .annotations
        .as_ref()
        .and_then(|a| a.get(policy_compiler::model::MODE_ANNOTATION))
        .cloned();
    let mut out = meta(m, false);
    out.annotations = mode.map(|v| {
        std::collections::BTreeMap::from([(policy_compiler::model::MODE_ANNOTATION.to_string(), v)])
    });
    out
}

/// A NetworkPolicy reduced to name, namespace, labels, `netpol.io/mode` and spec (the
/// `last-applied-configuration` annotation alone is as large as the policy).
pub fn slim_policy(p: NetworkPolicy) -> NetworkPolicy {
    NetworkPolicy {
        metadata: policy_meta(p.metadata),
        spec: p.spec,
    }
}

/// A Service reduced to name, namespace, labels, spec (type, clusterIPs, externalIPs,
/// selector, ports) and its load-balancer ingress addresses.
pub fn slim_service(s: Service) -> Service {
    let status = s
        .status
        .and_then(|st| st.load_balancer)
        .filter(|lb| lb.ingress.as_ref().is_some_and(|i| !i.is_empty()))
        .map(|lb| ServiceStatus {
            load_balancer: Some(lb),
            ..ServiceStatus::default()
        });
    Service {
        metadata: meta(s.metadata, false),
        spec: s.spec,
        status,
    }
}

/// An EndpointSlice reduced to name, namespace, labels (`kubernetes.io/service-name`
/// ties it to its Service), address type, endpoints and ports.
pub fn slim_endpoint_slice(e: EndpointSlice) -> EndpointSlice {
    EndpointSlice {
        metadata: meta(e.metadata, false),
        address_type: e.address_type,
        endpoints: e
            .endpoints
            .into_iter()
            .map(|mut ep| {
                ep.deprecated_topology = None;
                ep.hints = None;
                ep.zone = None;
                ep
            })
            .collect(),
        ports: e.ports,
    }
}

/// A Node reduced to its name, labels and `status.addresses` (the node's addresses are
/// what netpol reads: traffic from them is the node's).
pub fn slim_node(n: Node) -> Node {
    Node {
        metadata: meta(n.metadata, false),
        spec: None,
        status: n.status.map(|st| NodeStatus {
            addresses: st.addresses,
            ..NodeStatus::default()
        }),
    }
}

/// A ClusterNetworkPolicy reduced to its name, `netpol.io/mode` and spec (no other
/// annotation, managed fields or status).
pub fn slim_cluster_policy(
    p: policy_compiler::cnp::ClusterNetworkPolicy,
) -> policy_compiler::cnp::ClusterNetworkPolicy {
    policy_compiler::cnp::ClusterNetworkPolicy {
        api_version: p.api_version,
        kind: p.kind,
        metadata: policy_meta(p.metadata),
        spec: p.spec,
        status: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn slim_pod_keeps_only_what_netpol_reads() {
        let full = pod(serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": "42",
                "labels": {"app": "web"},
                "annotations": {"netpol.io/netns": "cni-1", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "r1", "controller": true},
                    {"apiVersion": "v1", "kind": "Thing", "name": "other", "uid": "t1"}
                ]
            },
            "spec": {
                "nodeName": "n1", "hostNetwork": false, "serviceAccountName": "sa",
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{
                    "name": "c", "image": "nginx:1", "env": [{"name": "A", "value": "b"}],
                    "ports": [{"name": "http", "containerPort": 80}],
                    "readinessProbe": {"tcpSocket": {"port": 80}}
                }],
                "initContainers": [{"name": "side", "image": "envoy", "restartPolicy": "Always",
                                     "ports": [{"containerPort": 15001}]}]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "hostIP": "192.168.0.1", "startTime": "2024-01-01T00:00:00Z",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "nginx:1", "imageID": "x", "ready": true, "restartCount": 0}]
            }
        }));
        let want = pod(serde_json::json!({
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"},
                "ownerReferences": [
                    {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "r1", "controller": true}
                ]
            },
            "spec": {
                "nodeName": "n1", "hostNetwork": false,
                "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}],
                "initContainers": [{"name": "side", "restartPolicy": "Always", "ports": [{"containerPort": 15001}]}]
            },
            "status": {
                "phase": "Running", "podIP": "10.0.0.5", "podIPs": [{"ip": "10.0.0.5"}, {"ip": "fd00::5"}],
                "hostIP": "192.168.0.1"
            }
        }));
        assert_eq!(slim_pod(full.clone()), want);
        assert_eq!(slim_pod(want.clone()), want, "idempotent");
        // A status-only change (conditions, restarts) is no change once slimmed.
        let mut later = full;
        later.metadata.resource_version = Some("43".into());
        if let Some(s) = later.status.as_mut() {
            s.conditions = None;
        }
        assert_eq!(slim_pod(later), want);
    }

    #[test]
    fn slim_pod_strips_the_netns_annotation() {
        // See: #11 (a Pod's `netpol.io/netns` annotation could point its ruleset at
        // another Pod's netns; in Kubernetes mode it is not even kept in the state).
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x",
                          "annotations": {"netpol.io/netns": "/proc/1/ns/net", "other": "1"}},
            "spec": {"containers": [{"name": "c"}]}
        }));
        assert_eq!(slim_pod(p).metadata.annotations, None);
    }

    #[test]
    fn slim_pod_without_annotations_has_none() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "annotations": {"other": "1"}},
            "spec": {"containers": [{"name": "c"}]}
        }));
        let s = slim_pod(p);
        assert_eq!(s.metadata.annotations, None);
        assert_eq!(s.metadata.owner_references, None);
        assert!(s.status.is_none());
    }

    #[test]
    fn slim_namespace_and_policy_drop_noise() {
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"},
                          "managedFields": [{"manager": "m"}], "resourceVersion": "7"},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        }))
        .unwrap();
        let s = slim_namespace(ns);
        assert_eq!(s.metadata.name.as_deref(), Some("shop"));
        assert!(s.metadata.labels.is_some());
        assert!(s.metadata.managed_fields.is_none() && s.spec.is_none() && s.status.is_none());

        let p: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "deny", "namespace": "shop", "generation": 3,
                          "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"podSelector": {}}
        }))
        .unwrap();
        let s = slim_policy(p.clone());
        assert_eq!(s.spec, p.spec);
        assert_eq!(s.metadata.annotations, None);
        assert_eq!(s.metadata.generation, None);
    }

    #[test]
    fn slim_policies_keep_the_mode_annotation_only() {
        // See: #12 (dropping it would enforce an audit policy in Kubernetes mode).
        let p: NetworkPolicy = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "shop",
                          "annotations": {"netpol.io/mode": "audit", "other": "1"}},
            "spec": {"podSelector": {}}
        }))
        .unwrap();
        let a = slim_policy(p).metadata.annotations.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["netpol.io/mode"], "audit");
        let c: policy_compiler::cnp::ClusterNetworkPolicy =
            serde_json::from_value(serde_json::json!({
                "apiVersion": "policy.networking.k8s.io/v1alpha2",
                "kind": "ClusterNetworkPolicy",
                "metadata": {"name": "c", "annotations": {"netpol.io/mode": "bogus", "x": "y"}},
                "spec": {}
            }))
            .unwrap();
        let a = slim_cluster_policy(c).metadata.annotations.unwrap();
        assert_eq!(a.len(), 1);
        assert_eq!(a["netpol.io/mode"], "bogus");
    }
}
