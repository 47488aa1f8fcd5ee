//! Policy kinds that change connectivity but that netpol does not evaluate.
//!
//! A cluster that holds a CiliumNetworkPolicy, a Calico GlobalNetworkPolicy or an
//! Antrea ClusterNetworkPolicy may deny (or allow) traffic that Kubernetes NetworkPolicies allow (or
//! deny): skipping such objects silently would make every answer look authoritative.
//! [`foreign_policy`] recognises them by API group and kind; `load` turns each into a
//! warning and lists it in `Inputs::unevaluated`, and every command that answers a
//! connectivity question says the answer may differ.
//!
//! Services, EndpointSlices, Nodes and `policy.networking.k8s.io` ClusterNetworkPolicy are
//! not here: they are evaluated kinds (`load` reads the whole `policy.networking.k8s.io`
//! group itself, and rejects its v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy
//! with an error naming their replacement).

use crate::diagnostic::{Diagnostic, ObjectRef, Origin};

/// `(API group, kinds, who enforces them)`. The group is the part of `apiVersion` before
/// the `/`.
const FOREIGN: &[(&str, &[&str], &str)] = &[
    (
        "cilium.io",
        &[
            "CiliumNetworkPolicy",
            "CiliumClusterwideNetworkPolicy",
            "CiliumCIDRGroup",
        ],
        "Cilium",
    ),
    (
        "projectcalico.org",
        &[
            "NetworkPolicy",
            "GlobalNetworkPolicy",
            "StagedNetworkPolicy",
            "StagedGlobalNetworkPolicy",
            "NetworkSet",
            "GlobalNetworkSet",
            "HostEndpoint",
            "Tier",
        ],
        "Calico",
    ),
    (
        "crd.projectcalico.org",
        &[
            "NetworkPolicy",
            "GlobalNetworkPolicy",
            "StagedNetworkPolicy",
            "StagedGlobalNetworkPolicy",
            "NetworkSet",
            "GlobalNetworkSet",
            "HostEndpoint",
            "Tier",
        ],
        "Calico",
    ),
    (
        "crd.antrea.io",
        &[
            "NetworkPolicy",
            "ClusterNetworkPolicy",
            "Tier",
            "ClusterGroup",
            "Group",
        ],
        "Antrea",
    ),
    (
        "security.antrea.tanzu.vmware.com",
        &["NetworkPolicy", "ClusterNetworkPolicy"],
        "Antrea",
    ),
    (
        "k8s.ovn.org",
        &["EgressFirewall", "AdminPolicyBasedExternalRoute"],
        "OVN-Kubernetes",
    ),
    (
        "network.openshift.io",
        &["EgressNetworkPolicy"],
        "OpenShift SDN",
    ),
    (
        "k8s.cni.cncf.io",
        &["MultiNetworkPolicy"],
        "multi-networkpolicy",
    ),
    (
        "security.istio.io",
        &["AuthorizationPolicy", "PeerAuthentication"],
        "Istio",
    ),
    (
        "policy.linkerd.io",
        &[
            "Server",
            "ServerAuthorization",
            "AuthorizationPolicy",
            "MeshTLSAuthentication",
            "NetworkAuthentication",
        ],
        "Linkerd",
    ),
    (
        "networking.gke.io",
        &["FQDNNetworkPolicy"],
        "GKE Dataplane V2",
    ),
];

/// The API groups of [`foreign_policy`] kinds with their kinds and who enforces them, in
/// a fixed order (for `--cluster`, which lists them from the API server).
pub fn groups() -> impl Iterator<Item = (&'static str, &'static [&'static str], &'static str)> {
    FOREIGN.iter().copied()
}

/// The warning for an object of a foreign kind (`by` from [`foreign_policy`]), the same
/// whether the object came from a file (`origin`) or from the cluster (`None`).
pub fn warning(
    origin: Option<&Origin>,
    object: &ObjectRef,
    api_version: &str,
    kind: &str,
    by: &str,
) -> Diagnostic {
    Diagnostic::field_error(
        origin,
        object,
        "kind",
        Some(format!("{api_version} {kind}")),
        format!(
            "not evaluated by netpol: {by} enforces it too, so real connectivity may differ from netpol's answers"
        ),
    )
    .warning()
}

/// The ObjectRef listed in `Inputs::unevaluated` for `object` (its kind becomes
/// `apiVersion Kind`).
pub fn unevaluated_ref(object: ObjectRef, api_version: &str, kind: &str) -> ObjectRef {
    ObjectRef {
        kind: format!("{api_version} {kind}"),
        ..object
    }
}

/// What replaced a retired kind of `policy.networking.k8s.io` (the v1alpha1
/// AdminNetworkPolicy and BaselineAdminNetworkPolicy), `None` for other kinds.
pub fn replacement(kind: &str) -> Option<&'static str> {
    match kind {
        "AdminNetworkPolicy" => Some("a ClusterNetworkPolicy with `tier: Admin`"),
        "BaselineAdminNetworkPolicy" => Some("a ClusterNetworkPolicy with `tier: Baseline`"),
        _ => None,
    }
}

/// The message for an object of a retired kind (see [`replacement`]).
pub fn retired_message(api_version: &str, kind: &str, replacement: &str) -> String {
    format!(
        "{kind} ({api_version}) is not evaluated: the network-policy-api v1alpha2 replaced it with {replacement} (policy.networking.k8s.io/v1alpha2); rewrite it so its rules are not silently lost"
    )
}

/// Who enforces `kind` of `api_version` when netpol does not evaluate it and it changes
/// which connections succeed; `None` for kinds netpol evaluates or that do not matter.
pub fn foreign_policy(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    FOREIGN
        .iter()
        .find(|(g, kinds, _)| *g == group && kinds.contains(&kind))
        .map(|(_, _, by)| *by)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_policy_engines_by_group_and_kind() {
        assert_eq!(
            foreign_policy("cilium.io/v2", "CiliumNetworkPolicy"),
            Some("Cilium")
        );
        assert_eq!(
            foreign_policy("projectcalico.org/v3", "GlobalNetworkPolicy"),
            Some("Calico")
        );
        assert_eq!(
            foreign_policy("crd.projectcalico.org/v1", "NetworkPolicy"),
            Some("Calico")
        );
        // Antrea's kind of the same name stays foreign; the network-policy-api one is
        // evaluated. See: #13
        assert!(foreign_policy("crd.antrea.io/v1beta1", "ClusterNetworkPolicy").is_some());
        assert_eq!(
            foreign_policy("policy.networking.k8s.io/v1alpha2", "ClusterNetworkPolicy"),
            None
        );
        // Evaluated or irrelevant kinds.
        assert_eq!(
            foreign_policy("networking.k8s.io/v1", "NetworkPolicy"),
            None
        );
        assert_eq!(foreign_policy("v1", "Service"), None);
        assert_eq!(foreign_policy("discovery.k8s.io/v1", "EndpointSlice"), None);
        assert_eq!(foreign_policy("v1", "ConfigMap"), None);
        assert_eq!(foreign_policy("cilium.io/v2", "CiliumNode"), None);
    }
}
