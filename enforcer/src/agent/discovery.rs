//! Netns discovery in the reconciler: finding, by IP, the network namespace of this
//! node's Pods that started before the CNI plugin (see [`crate::discovery`]).

use std::collections::BTreeMap;

use super::Reconciler;
use crate::netns;
use crate::state::{Object, PodKey};

impl Reconciler {
    /// Finds, by IP, the netns of this node's Pods that have none from the annotation, a
    /// CNI record or the map (Pods started before the plugin), when discovery is on and
    /// a node is set; also when a netns found earlier has disappeared. Conflicts map
    /// nothing and are logged. Blocking (enters namespaces on its own thread).
    pub fn discover_netns(&mut self) {
        let (Some(options), Some(node)) = (&self.discovery, self.node.as_deref()) else {
            return;
        };
        let local = self.state.local_pods(Some(node));
        let mut wanted: BTreeMap<std::net::IpAddr, PodKey> = BTreeMap::new();
        let mut missing = 0usize;
        for obj in self.state.objects() {
            let Object::Pod(p) = obj else { continue };
            let (spec, status) = (p.object.spec.as_ref(), p.object.status.as_ref());
            if spec.and_then(|s| s.node_name.as_deref()) != Some(node)
                || !policy_compiler::model::pod_gets_ruleset(&p.object)
            {
                continue;
            }
            let ips: Vec<std::net::IpAddr> = status
                .into_iter()
                .flat_map(|s| {
                    s.pod_ips
                        .iter()
                        .flatten()
                        .map(|i| i.ip.clone())
                        .chain(s.pod_ip.clone())
                })
                .filter_map(|ip| ip.parse().ok())
                .collect();
            if ips.is_empty() {
                continue;
            }
            let key = obj.key();
            let pod = PodKey::new(key.namespace, key.name);
            let stale = self
                .state
                .discovered()
                .get(&pod)
                .is_some_and(|h| local.get(&pod) == Some(h) && !netns::path(h).exists());
            if !local.contains_key(&pod) || stale {
                missing += 1;
            }
            for ip in ips {
                wanted.insert(ip, pod.clone());
            }
        }
        if missing == 0 {
            return;
        }
        match crate::discovery::discover(options, &wanted) {
            Ok(found) => {
                for c in &found.conflicts {
                    tracing::warn!(conflict = %c, "netns discovery: ambiguous, nothing mapped");
                }
                for e in &found.errors {
                    tracing::debug!(error = %netpol_common::ErrorChain(e), "netns discovery: candidate skipped");
                }
                // Only what no better source gives.
                let mut map = BTreeMap::new();
                for (pod, handle) in found.found {
                    let better = local
                        .get(&pod)
                        .is_some_and(|h| self.state.discovered().get(&pod) != Some(h));
                    if !better {
                        map.insert(pod, handle);
                    }
                }
                if map != *self.state.discovered() {
                    tracing::info!(
                        pods = map.len(),
                        scanned = found.scanned,
                        "netns discovered by Pod IP"
                    );
                }
                self.state.set_discovered(map);
            }
            Err(e) => {
                tracing::warn!(error = %netpol_common::ErrorChain(&e), "netns discovery failed");
            }
        }
    }
}
