//! Patching a [`Model`] from Pod and Namespace changes instead of building it again
//! (#12 point 3).
//!
//! [`Model::patch`] takes the objects an event changed, as they are now, and brings the
//! model to exactly what [`Model::build`] gives for the whole new input: the changed
//! endpoints replaced, inserted or removed at their sorted place, ids renumbered, the
//! key, IP and namespace indexes and the node addresses kept in step, implicit
//! namespaces added or dropped. Everything is validated before anything is changed: a
//! change that would give any diagnostic, or that a patch cannot follow exactly
//! (workloads and their owner collapse), leaves the model untouched and says why
//! ([`Patched::Rebuild`]): the caller builds the model again. Service backends are
//! resolved again (every Service: backends name endpoints by id, and ids move when a
//! Pod comes or goes).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Namespace, Pod};

use super::{Builder, Endpoint, EndpointId, EndpointKind, Model, NamespaceInfo, service};
use crate::load::Located;

/// One object a [`Model::patch`] takes, as it is now.
#[derive(Debug, Clone, Copy)]
pub enum ModelChange<'a> {
    /// The Pod `namespace/name` now (`None`: it is gone).
    Pod {
        /// Namespace (`default` when the object names none).
        namespace: &'a str,
        /// `metadata.name`.
        name: &'a str,
        /// The object, when it exists.
        pod: Option<&'a Located<Pod>>,
    },
    /// The Namespace `name` now (`None`: it is gone).
    Namespace {
        /// `metadata.name`.
        name: &'a str,
        /// The object, when it exists.
        namespace: Option<&'a Located<Namespace>>,
    },
}

/// What [`Model::patch`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Patched {
    /// The model is now what a build of the new input gives (that build would report no
    /// diagnostic about the changed objects).
    Done,
    /// Nothing was changed: build the model again (the reason, for logs).
    Rebuild(&'static str),
}

/// A changed Pod, validated: its key and its endpoint (`None`: no endpoint, gone or
/// finished).
struct PodPatch {
    namespace: String,
    key: String,
    endpoint: Option<Endpoint>,
}

impl Model {
    /// Applies `changes` (objects as they are now) to the model, so that it equals the
    /// model [`Model::build`] gives for the input with these objects changed; or changes
    /// nothing and returns [`Patched::Rebuild`] when it cannot guarantee that (a changed
    /// object with a diagnostic, workloads in the model). Warnings that a build
    /// reports about other objects (a shared IP, a Service named port no backend has)
    /// are not reported again.
    pub fn patch(&mut self, changes: &[ModelChange<'_>]) -> Patched {
        if !self.replaced.is_empty()
            || self
                .endpoints
                .iter()
                .any(|e| !matches!(e.kind, EndpointKind::Pod))
        {
            return Patched::Rebuild("workloads or declared endpoints");
        }
        // Validate every changed object first: nothing is changed unless all are good.
        let mut pods: BTreeMap<String, PodPatch> = BTreeMap::new();
        let mut namespaces: BTreeMap<String, Option<NamespaceInfo>> = BTreeMap::new();
        for change in changes {
            match *change {
                ModelChange::Pod {
                    namespace,
                    name,
                    pod,
                } => {
                    let mut b = Builder::default();
                    if let Some(p) = pod {
                        b.pod(p);
                    }
                    if !b.diags.is_empty() {
                        return Patched::Rebuild("a changed Pod has diagnostics");
                    }
                    let endpoint = b.endpoints.pop();
                    if let Some(e) = &endpoint
                        && (e.namespace != namespace || e.name != name)
                    {
                        return Patched::Rebuild("a Pod under another key");
                    }
                    let key = format!("{namespace}/{name}");
                    pods.insert(
                        key.clone(),
                        PodPatch {
                            namespace: namespace.to_owned(),
                            key,
                            endpoint,
                        },
                    );
                }
                ModelChange::Namespace { name, namespace } => {
                    let info = match namespace {
                        Some(ns) => {
                            let mut b = Builder::default();
                            b.namespace(ns);
                            if !b.diags.is_empty() {
                                return Patched::Rebuild("a changed Namespace has diagnostics");
                            }
                            match b.namespaces.remove(name) {
                                Some(info) => Some(info),
                                None => return Patched::Rebuild("a Namespace under another name"),
                            }
                        }
                        None => None,
                    };
                    namespaces.insert(name.to_owned(), info);
                }
            }
        }
        // Namespaces whose implicit entry may appear or go.
        let mut touched: BTreeSet<String> = namespaces.keys().cloned().collect();
        let mut affected_ips: BTreeSet<IpAddr> = BTreeSet::new();
        let mut nodes_changed = false;
        for p in pods.into_values() {
            let old = self.by_key.get(&p.key).copied();
            if let Some(id) = old {
                let e = &self.endpoints[id.0 as usize];
                affected_ips.extend(e.ips.iter().copied());
                touched.insert(e.namespace.clone());
            }
            if let Some(e) = &p.endpoint {
                affected_ips.extend(e.ips.iter().copied());
            }
            touched.insert(p.namespace.clone());
            let old_node = old.map(|id| {
                let e = &self.endpoints[id.0 as usize];
                (e.node.clone(), e.host_network, e.ips.clone())
            });
            let new_node = p
                .endpoint
                .as_ref()
                .map(|e| (e.node.clone(), e.host_network, e.ips.clone()));
            if node_relevant(old_node.as_ref()) != node_relevant(new_node.as_ref()) {
                nodes_changed = true;
            }
            match (old, p.endpoint) {
                (Some(id), Some(mut e)) => {
                    e.id = id;
                    self.endpoints[id.0 as usize] = e;
                }
                (None, Some(e)) => self.insert_endpoint(p.key, e),
                (Some(id), None) => self.remove_endpoint(&p.key, id),
                (None, None) => {}
            }
        }
        self.reindex_ips(&affected_ips);
        for ns in touched {
            self.settle_namespace(&ns, namespaces.remove(&ns));
        }
        if nodes_changed {
            self.node_ips = service::node_ips(self);
        }
        if !self.services.is_empty() {
            let mut services = std::mem::take(&mut self.services);
            let slices = std::mem::take(&mut self.slices);
            // Warnings only (named ports no backend has): not reported again.
            let mut warnings = Vec::new();
            service::resolve_backends(self, &mut services, &slices, &mut warnings);
            self.services = services;
            self.slices = slices;
        }
        Patched::Done
    }

    /// Inserts a Pod endpoint at its sorted place; later ids move up by one.
    fn insert_endpoint(&mut self, key: String, mut e: Endpoint) {
        let at = self.by_key.range(..key.clone()).count();
        let id = EndpointId(u32::try_from(at).unwrap_or(u32::MAX));
        let shift = |v: &mut EndpointId| {
            if *v >= id {
                v.0 = v.0.saturating_add(1);
            }
        };
        self.by_key.values_mut().for_each(shift);
        self.by_ip.values_mut().for_each(shift);
        for ids in self.by_namespace.values_mut() {
            ids.iter_mut().for_each(shift);
        }
        e.id = id;
        let ids = self.by_namespace.entry(e.namespace.clone()).or_default();
        let pos = ids.partition_point(|i| *i < id);
        ids.insert(pos, id);
        self.endpoints.insert(at, e);
        self.renumber(at);
        self.by_key.insert(key, id);
    }

    /// Removes the endpoint `id` (key `key`); later ids move down by one.
    fn remove_endpoint(&mut self, key: &str, id: EndpointId) {
        let at = id.0 as usize;
        if at >= self.endpoints.len() {
            return;
        }
        let e = self.endpoints.remove(at);
        self.by_key.remove(key);
        self.by_ip.retain(|_, v| *v != id);
        if let Some(ids) = self.by_namespace.get_mut(&e.namespace) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_namespace.remove(&e.namespace);
            }
        }
        let shift = |v: &mut EndpointId| {
            if *v > id {
                v.0 -= 1;
            }
        };
        self.by_key.values_mut().for_each(shift);
        self.by_ip.values_mut().for_each(shift);
        for ids in self.by_namespace.values_mut() {
            ids.iter_mut().for_each(shift);
        }
        self.renumber(at);
    }

    fn renumber(&mut self, from: usize) {
        for (i, e) in self.endpoints.iter_mut().enumerate().skip(from) {
            e.id = EndpointId(u32::try_from(i).unwrap_or(u32::MAX));
        }
    }

    /// The owner of each of `ips` as a build finds it: the last endpoint (in id order)
    /// that has it and is not `hostNetwork`.
    fn reindex_ips(&mut self, ips: &BTreeSet<IpAddr>) {
        if ips.is_empty() {
            return;
        }
        let mut owner: BTreeMap<IpAddr, EndpointId> = BTreeMap::new();
        for e in self.endpoints.iter().filter(|e| !e.host_network) {
            for ip in e.ips.iter().filter(|ip| ips.contains(ip)) {
                owner.insert(*ip, e.id);
            }
        }
        for ip in ips {
            match owner.get(ip) {
                Some(id) => self.by_ip.insert(*ip, *id),
                None => self.by_ip.remove(ip),
            };
        }
    }

    /// The entry of namespace `ns` after a patch: `change` is `Some` when the Namespace
    /// object changed (`Some(None)`: deleted). An undeclared namespace is implicit while
    /// an endpoint or a policy is in it.
    fn settle_namespace(&mut self, ns: &str, change: Option<Option<NamespaceInfo>>) {
        match change {
            Some(Some(info)) => {
                self.namespaces.insert(ns.to_owned(), info);
                return;
            }
            Some(None) => {}
            None => {
                if self.namespaces.get(ns).is_some_and(|i| i.declared) {
                    return;
                }
            }
        }
        let used = self.by_namespace.contains_key(ns)
            || self
                .policies
                .iter()
                .chain(&self.audit_policies)
                .any(|p| p.namespace == ns)
            || self.services.iter().any(|s| s.namespace == ns);
        let mut b = Builder::default();
        if used {
            b.implicit_namespace(ns);
        }
        match b.namespaces.remove(ns) {
            Some(info) => self.namespaces.insert(ns.to_owned(), info),
            None => self.namespaces.remove(ns),
        };
    }
}

/// What of an endpoint [`service::node_ips`] reads.
fn node_relevant(e: Option<&(Option<String>, bool, Vec<IpAddr>)>) -> Option<(&str, &[IpAddr])> {
    let (node, host, ips) = e?;
    let node = node.as_deref()?;
    Some((node, if *host { ips.as_slice() } else { &[] }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SourceText, load};

    fn build(yaml: &str) -> (Model, crate::Inputs) {
        let (inputs, diags) = load(&[SourceText {
            name: "t.yaml",
            text: yaml,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        (Model::build(&inputs).0, inputs)
    }

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n";

    #[test]
    fn a_pod_with_diagnostics_changes_nothing() {
        let (mut model, _) = build(POD);
        let before = format!("{model:?}");
        let (bad, _) = load(&[SourceText {
            name: "t.yaml",
            text: "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {containers: [{name: c}]}\nstatus: {podIP: nope}\n",
        }]);
        let got = model.patch(&[ModelChange::Pod {
            namespace: "x",
            name: "a",
            pod: bad.pods.first(),
        }]);
        assert!(matches!(got, Patched::Rebuild(_)), "{got:?}");
        assert_eq!(format!("{model:?}"), before, "untouched");
    }

    #[test]
    fn workloads_are_built_again() {
        let (mut model, inputs) = build(&format!(
            "{POD}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d, namespace: x}}\nspec: {{selector: {{matchLabels: {{app: d}}}}, template: {{metadata: {{labels: {{app: d}}}}, spec: {{containers: [{{name: c}}]}}}}}}\n"
        ));
        let got = model.patch(&[ModelChange::Pod {
            namespace: "x",
            name: "a",
            pod: inputs.pods.first(),
        }]);
        assert_eq!(got, Patched::Rebuild("workloads or declared endpoints"));
    }

    #[test]
    fn a_pod_added_and_removed_is_what_a_build_gives() {
        let (mut model, _) = build("");
        let (inputs, _) = load(&[SourceText {
            name: "t.yaml",
            text: POD,
        }]);
        let add = [ModelChange::Pod {
            namespace: "x",
            name: "a",
            pod: inputs.pods.first(),
        }];
        assert_eq!(model.patch(&add), Patched::Done);
        assert_eq!(
            format!("{model:?}"),
            format!("{:?}", Model::build(&inputs).0)
        );
        let gone = [ModelChange::Pod {
            namespace: "x",
            name: "a",
            pod: None,
        }];
        assert_eq!(model.patch(&gone), Patched::Done);
        assert!(model.namespaces.is_empty(), "the implicit namespace went");
        assert_eq!(format!("{model:?}"), format!("{:?}", build("").0));
    }
}
