//! Which Pods get a ruleset: the one definition the agent, `netpol compile`, the lab and
//! `netpol test` share.
//!
//! A ruleset lives in a Pod's own network namespace, so an endpoint gets one when it is
//! a Pod (a workload's Pod template has no namespace), is not `hostNetwork` (it shares
//! the node's namespace) and has not finished (`Succeeded`/`Failed` Pods are not
//! endpoints at all, see [`is_finished`]).

use std::fmt;

use k8s_openapi::api::core::v1::Pod;

use super::{Endpoint, EndpointKind, Model};
use crate::EndpointId;

/// Why an endpoint gets no ruleset of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoRuleset {
    /// A workload's Pod template: no network namespace.
    Workload,
    /// A `hostNetwork` Pod: it shares the node's network namespace.
    HostNetwork,
    /// A declared endpoint (`--endpoints`): not in the manifests, so nothing to enforce.
    Declared,
}

impl fmt::Display for NoRuleset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoRuleset::Workload => "a workload, not a Pod: only Pods have a network namespace",
            NoRuleset::HostNetwork => {
                "a hostNetwork Pod: it shares the node's network namespace and gets no ruleset"
            }
            NoRuleset::Declared => {
                "a declared endpoint (--endpoints): not in the manifests, so it gets no ruleset"
            }
        })
    }
}

/// Whether a Pod has finished (`status.phase` `Succeeded` or `Failed`): it is no
/// endpoint, so it is neither selected nor enforced.
pub fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a Pod object gets a ruleset (not finished, not `hostNetwork`), for code that
/// looks at objects before a model exists (the agent's netns discovery).
pub fn pod_gets_ruleset(pod: &Pod) -> bool {
    !is_finished(pod) && pod.spec.as_ref().and_then(|s| s.host_network) != Some(true)
}

impl Endpoint {
    /// Why this endpoint gets no ruleset of its own, `None` when it gets one.
    pub fn no_ruleset(&self) -> Option<NoRuleset> {
        match self.kind {
            EndpointKind::Workload(_) => Some(NoRuleset::Workload),
            EndpointKind::Declared => Some(NoRuleset::Declared),
            EndpointKind::Pod if self.host_network => Some(NoRuleset::HostNetwork),
            EndpointKind::Pod => None,
        }
    }

    /// Whether this endpoint gets a ruleset of its own.
    pub fn enforceable(&self) -> bool {
        self.no_ruleset().is_none()
    }
}

impl Model {
    /// The endpoints that get a ruleset ([`Endpoint::enforceable`]), in id order; with
    /// `node`, only those whose `spec.nodeName` is `node`.
    pub fn enforceable_pods<'a>(
        &'a self,
        node: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .iter()
            .filter(move |e| e.enforceable() && node.is_none_or(|n| e.node.as_deref() == Some(n)))
    }

    /// Whether the endpoint `id` gets a ruleset.
    pub fn is_enforceable(&self, id: EndpointId) -> bool {
        self.endpoint(id).enforceable()
    }
}

#[cfg(test)]
mod tests {
    use crate::{SourceText, load};

    use super::*;

    #[test]
    fn pods_only_not_host_network_not_finished_and_by_node() {
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x}
spec: {nodeName: n2, containers: [{name: c}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: h, namespace: x}
spec: {nodeName: n1, hostNetwork: true, containers: [{name: c}]}
status: {podIP: 192.168.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: done, namespace: x}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Succeeded, podIP: 10.0.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: u, namespace: x}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.0.4}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: w, namespace: x}
spec:
  selector: {matchLabels: {app: w}}
  template: {metadata: {labels: {app: w}}, spec: {containers: [{name: c}]}}
";
        let (inputs, diags) = load(&[SourceText {
            name: "t.yaml",
            text,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        let (model, diags) = Model::build(&inputs);
        assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
        let keys =
            |node| -> Vec<String> { model.enforceable_pods(node).map(Endpoint::key).collect() };
        assert_eq!(keys(None), ["x/a", "x/b", "x/u"]);
        assert_eq!(keys(Some("n1")), ["x/a"]);
        assert_eq!(keys(Some("n3")), Vec::<String>::new());
        let reason = |key: &str| {
            let id = model.endpoint_by_key(key).unwrap();
            (model.is_enforceable(id), model.endpoint(id).no_ruleset())
        };
        assert_eq!(reason("x/h"), (false, Some(NoRuleset::HostNetwork)));
        assert_eq!(reason("x/deployment/w"), (false, Some(NoRuleset::Workload)));
        assert_eq!(reason("x/a"), (true, None));
        assert!(
            model.endpoint_by_key("x/done").is_none(),
            "finished Pods are no endpoints"
        );
        for (i, pod) in inputs.pods.iter().enumerate() {
            let want = i == 0 || i == 1 || i == 4;
            assert_eq!(pod_gets_ruleset(&pod.object), want, "{i}");
        }
    }
}
