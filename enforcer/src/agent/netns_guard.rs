//! The agent's side of [`crate::trust`]: the source's trust level, and failing closed
//! for Pods that resolve to one network namespace.

use std::collections::BTreeMap;

use super::Reconciler;
use crate::plan::Desired;
use crate::state::PodKey;
use crate::trust::{self, NetnsTrust};

impl Reconciler {
    /// Sets how far Pod annotations are trusted to name a netns (the state source's
    /// [`crate::source::StateSource::netns_trust`]).
    pub fn set_netns_trust(&mut self, trust: NetnsTrust) {
        self.state.set_netns_trust(trust);
    }

    /// The namespaces claimed by more than one local Pod at the last compile, and the
    /// Pods claiming each.
    pub fn netns_conflicts(&self) -> &BTreeMap<String, Vec<PodKey>> {
        &self.netns_conflicts
    }

    /// Splits `local` (Pod -> netns) into the Pods with a namespace of their own and,
    /// for Pods sharing one, a [`trust::DENY_ALL`] ruleset each: none of them gets its
    /// own (possibly permissive) ruleset, since the agent cannot tell whose namespace it
    /// is, and keeping the table already there is no answer either (it is whichever
    /// Pod's was applied last). Logs each conflict when it appears and sets
    /// `netpol_netns_conflicts`.
    pub(super) fn fail_closed_on_shared_netns(
        &mut self,
        mut local: BTreeMap<PodKey, String>,
    ) -> (BTreeMap<PodKey, String>, BTreeMap<PodKey, Desired>) {
        let found = trust::conflicts(&local);
        let mut denied = BTreeMap::new();
        for (netns, pods) in &found {
            if self.netns_conflicts.get(netns) != Some(pods) {
                let names: Vec<String> = pods.iter().map(ToString::to_string).collect();
                tracing::error!(netns, pods = ?names, "several Pods resolve to one network namespace: applying deny-all there (fail closed) until only one does");
            }
            for pod in pods {
                if let Some(handle) = local.remove(pod) {
                    denied.insert(pod.clone(), Desired::new(handle, trust::DENY_ALL));
                }
            }
        }
        for netns in self.netns_conflicts.keys() {
            if !found.contains_key(netns) {
                tracing::info!(netns, "network namespace conflict resolved");
            }
        }
        self.metrics
            .netns_conflicts
            .set(i64::try_from(found.len()).unwrap_or(i64::MAX));
        self.netns_conflicts = found;
        (local, denied)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Instant;

    use super::*;
    use crate::agent::{AgentConfig, CompiledRulesets};
    use crate::applier::RecordingApplier;
    use crate::manifests::ManifestDir;
    use crate::metrics::Metrics;

    fn pod(name: &str, netns: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {name}}}, annotations: {{netpol.io/netns: {netns}}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.{}}}\n---\n",
            name.len()
        )
    }

    /// `victim` is isolated; `open` is not (its ruleset accepts everything).
    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: victim}}}\n";

    fn pass(rec: &mut Reconciler, src: &mut ManifestDir) {
        rec.handle_scan(src.scan());
        rec.compile();
        rec.sync(Instant::now());
    }

    // See: #11
    #[test]
    fn two_pods_one_netns_fail_closed_for_both() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pol.yaml"), POLICY).unwrap();
        std::fs::write(dir.path().join("pods.yaml"), pod("victim", "nps-v")).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let fake = Arc::new(RecordingApplier::new());
        let metrics = Arc::new(Metrics::new());
        let mut rec = Reconciler::new(
            &AgentConfig::default(),
            Arc::new(CompiledRulesets::default()),
            fake.clone(),
            metrics.clone(),
        );
        pass(&mut rec, &mut src);
        let isolated = fake.table("nps-v").unwrap();
        assert!(isolated.contains("policy drop"), "{isolated}");
        assert_eq!(metrics.pods_enforced.get(), 1);

        // A second, unisolated Pod claims the victim's netns.
        std::fs::write(
            dir.path().join("pods.yaml"),
            format!("{}{}", pod("victim", "nps-v"), pod("open", "nps-v")),
        )
        .unwrap();
        for _ in 0..3 {
            pass(&mut rec, &mut src);
            assert_eq!(fake.table("nps-v").as_deref(), Some(trust::DENY_ALL));
        }
        let pods = vec![PodKey::new("x", "open"), PodKey::new("x", "victim")];
        assert_eq!(rec.netns_conflicts()["nps-v"], pods);
        assert_eq!(metrics.netns_conflicts.get(), 1);
        assert_eq!(metrics.pods_enforced.get(), 0, "neither counts as enforced");
        let open_rulesets = fake
            .calls()
            .iter()
            .filter(|c| matches!(c, crate::applier::Recorded::Apply { ruleset, .. } if ruleset != trust::DENY_ALL && ruleset != &isolated))
            .count();
        assert_eq!(open_rulesets, 0, "the open Pod's ruleset never applied");

        // The claim goes: the victim's own ruleset comes back, the conflict clears.
        std::fs::write(dir.path().join("pods.yaml"), pod("victim", "nps-v")).unwrap();
        pass(&mut rec, &mut src);
        assert_eq!(fake.table("nps-v").as_deref(), Some(isolated.as_str()));
        assert!(rec.netns_conflicts().is_empty());
        assert_eq!(metrics.netns_conflicts.get(), 0);
        assert_eq!(metrics.pods_enforced.get(), 1);
    }

    // See: #11
    #[test]
    fn annotation_with_absolute_path_or_dotdot_maps_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let pods: String = [
            ("a", "/proc/1/ns/net"),
            ("b", "/var/run/netns/nps-x"),
            ("c", "../nps-x"),
            ("d", "nps-ok"),
        ]
        .iter()
        .map(|(n, ns)| pod(n, &format!("'{ns}'")))
        .collect();
        std::fs::write(dir.path().join("pods.yaml"), pods).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let fake = Arc::new(RecordingApplier::new());
        let mut rec = Reconciler::new(
            &AgentConfig::default(),
            Arc::new(CompiledRulesets::default()),
            fake.clone(),
            Arc::new(Metrics::new()),
        );
        pass(&mut rec, &mut src);
        let applied: Vec<String> = rec.desired().keys().map(ToString::to_string).collect();
        assert_eq!(applied, ["x/d"]);
        assert!(fake.table("/proc/1/ns/net").is_none());

        // With the Kubernetes trust level, not even a plain name is taken.
        rec.set_netns_trust(NetnsTrust::NoAnnotation);
        pass(&mut rec, &mut src);
        assert!(rec.desired().is_empty(), "{:?}", rec.desired());
    }
}
