//! The CNI `ADD` fast path (#12): the new Pod's own table, applied before the plugin is
//! answered, without waiting for a whole pass.
//!
//! What the plugin must wait for is only the new Pod's table (fail closed: in place
//! before the sandbox starts). The peers' tables (the new Pod's address in their sets)
//! follow with the normal compile and sync right after. So on `ADD` the agent renders
//! the Pod's table from the **last good model and graph** and applies it alone.
//!
//! Why that table is the right one: the fast path runs only when every state change
//! since the last good compile was a CNI `ADD` ([`Reconciler::fast_add`] refuses
//! otherwise). Such a change only gives Pods addresses and a netns. A Pod's table
//! holds no address of its own except as a peer of itself, and an address that
//! appears only adds members to peer sets: the next full compile gives this Pod the
//! same rules with the same or more peer entries, never fewer (the tests below:
//! `fast_table_is_the_next_compiles`, `fast_table_is_never_wider_than_the_next_compile`).
//! So the Pod's IPs need not be overlaid on the model (that would copy it). The Pod
//! normally exists already (Pending, no IP), so it is an endpoint of the last model.
//!
//! Anything else (the Pod not in the last model, another kind of change pending, a
//! refused compile, a netns shared with another Pod, a render or apply error) is a
//! [`FastAdd::Fallback`]: the request waits for the normal pass, as before.

use std::time::Instant;

use super::Reconciler;
use super::reconciler::{SyncReport, execute};
use crate::plan::{PodState, plan_pods};
use crate::state::PodKey;

/// What [`Reconciler::fast_add`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastAdd {
    /// The Pod's table is applied and equal to its desired ruleset: answer the plugin.
    Enforced,
    /// Not done (why); the request waits for the normal pass.
    Fallback(String),
}

impl Reconciler {
    /// Notes a CNI `ADD` taken into the state: `clean` says whether, before it, the
    /// state was the last good compile's plus CNI `ADD`s only. Keeps the fast path's
    /// precondition ([`Reconciler::fast_add`]).
    pub(super) fn note_cni_add(&mut self, generation_before: u64) {
        let compiled_clean = self.refused.is_none()
            && self.compiled().is_some()
            && self.compiled_generation == Some(generation_before);
        let chain_clean = self.fast_base == Some(generation_before);
        self.fast_base = (compiled_clean || chain_clean).then(|| self.state.generation());
    }

    /// True when every state change since the last good compile was a CNI `ADD`.
    fn only_adds_since_compile(&self) -> bool {
        let generation = self.state.generation();
        self.refused.is_none()
            && self.compiled().is_some()
            && (self.compiled_generation == Some(generation) || self.fast_base == Some(generation))
    }

    /// The fast path of a CNI `ADD` of `pod` (already taken into the state by
    /// [`Reconciler::cni_request`]): renders its table from the last good model and
    /// graph and applies it. On [`FastAdd::Enforced`] the table is in the kernel; the
    /// next compile and sync bring the peers' tables (and this one, if it must change).
    pub fn fast_add(&mut self, pod: &PodKey, now: Instant) -> FastAdd {
        let fallback = |why: &str| FastAdd::Fallback(why.to_owned());
        if !self.complete {
            return fallback("the agent's source is not complete yet");
        }
        if !self.only_adds_since_compile() {
            return fallback("other changes wait for a compile");
        }
        let Some(compiled) = self.compiled().cloned() else {
            return fallback("nothing compiled yet");
        };
        if self.state.cni_record(pod).is_none() {
            return fallback("no CNI record for this incarnation of the Pod");
        }
        let Some(netns) = self.state.local_netns(pod, self.node.as_deref()) else {
            return fallback("the Pod is not local");
        };
        let shared = self
            .pods
            .iter()
            .any(|(p, r)| p != pod && r.desired.as_ref().is_some_and(|d| d.netns == netns))
            || self.state.cni().iter().any(|(p, e)| {
                p != pod && matches!(e, crate::state::CniEntry::Live(r) if r.netns == netns)
            });
        if shared {
            return fallback("the netns is claimed by another Pod");
        }
        let model = &compiled.model;
        let Some(id) = model.endpoint_by_key(&pod.to_string()) else {
            return fallback("the Pod is not in the last compile");
        };
        if model.endpoint(id).no_ruleset().is_some() {
            return fallback("the Pod gets no ruleset");
        }
        // The node addresses the last compile rendered with (`Some` with a node table).
        let on_node = self.node_table.as_ref().map(|n| n.addresses.clone());
        let desired = match self.renderer.render_desired(
            model,
            &compiled.graph,
            id,
            on_node.as_deref(),
            &netns,
        ) {
            Ok(d) => d,
            Err(e) => return FastAdd::Fallback(format!("render failed: {e}")),
        };
        let record = self.pods.entry(pod.clone()).or_default();
        record.desired = Some(desired);
        let state = PodState {
            desired: record.desired.as_ref(),
            actual: record.applied.as_ref(),
            applied_parts: record.applied_parts.as_deref(),
            generation: record.generation,
        };
        let ops = plan_pods(&[(pod, state)]);
        let mut report = SyncReport::default();
        for op in ops {
            let done = execute(self.applier.as_ref(), op);
            self.take_done(done, now, &mut report);
        }
        match self.pods.get(pod) {
            Some(r) if r.enforced() => {
                self.metrics.cni_fast_adds.inc();
                tracing::info!(namespace = %pod.namespace, pod = %pod.name, netns, "cni ADD: own table applied (fast path)");
                FastAdd::Enforced
            }
            Some(r) => FastAdd::Fallback(format!(
                "apply failed: {}",
                r.last_error.as_deref().unwrap_or("not enforced")
            )),
            None => fallback("no record after the apply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::agent::{AgentConfig, CniStatus, CompiledRulesets};
    use crate::applier::RecordingApplier;
    use crate::cni::{Command, PodRef, Request, WIRE_VERSION};
    use crate::manifests::ManifestDir;
    use crate::metrics::Metrics;
    use crate::plan::BackoffPolicy;

    /// `a` is local and accepts `app: new`; `n1` and `n2` are new Pods (Pending, no IP,
    /// no netns yet) that accept `app: a` and (in [`mutual`]) each other on TCP 80.
    const CLUSTER: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}, annotations: {netpol.io/netns: fa-a}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: n1, namespace: x, uid: u1, labels: {app: new}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Pending}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: n2, namespace: x, uid: u2, labels: {app: new}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Pending}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: new}}}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: new, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: new}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]\n";

    fn mutual() -> String {
        CLUSTER.replace(
            "{podSelector: {matchLabels: {app: a}}}], ports",
            "{podSelector: {matchLabels: {app: a}}}, {podSelector: {matchLabels: {app: new}}}], ports",
        )
    }

    struct Fixture {
        dir: tempfile::TempDir,
        src: ManifestDir,
        fake: Arc<RecordingApplier>,
        rec: Reconciler,
    }

    impl Fixture {
        fn new(cluster: &str) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("cluster.yaml"), cluster).unwrap();
            let src = ManifestDir::new(dir.path(), None);
            let fake = Arc::new(RecordingApplier::with_generations());
            let config = AgentConfig {
                backoff: BackoffPolicy {
                    base: Duration::from_secs(1),
                    max: Duration::from_secs(8),
                },
                ..AgentConfig::default()
            };
            let rec = Reconciler::new(
                &config,
                Arc::new(CompiledRulesets::default()),
                fake.clone(),
                Arc::new(Metrics::new()),
            );
            let mut f = Self {
                dir,
                src,
                fake,
                rec,
            };
            f.pass(Instant::now());
            assert!(f.rec.synced());
            f
        }

        fn pass(&mut self, now: Instant) -> SyncReport {
            let scan = self.src.scan();
            if !scan.is_empty() {
                self.rec.handle_scan(scan);
            }
            self.rec.compile();
            self.rec.sync(now)
        }

        fn add(&mut self, name: &str, uid: &str, ip: &str) -> PodKey {
            let request = Request {
                version: WIRE_VERSION,
                command: Command::Add,
                container_id: format!("sandbox-{name}"),
                netns: format!("/var/run/netns/fa-{name}"),
                ifname: "eth0".into(),
                pod: PodRef {
                    namespace: "x".into(),
                    name: name.into(),
                    uid: Some(uid.into()),
                },
                ips: vec![ip.parse().unwrap()],
                timeout_ms: 5000,
            };
            self.rec.cni_request(&request).unwrap()
        }

        /// The desired ruleset of `pod` the reconciler holds.
        fn desired(&self, pod: &PodKey) -> Desired {
            self.rec.pods[pod].desired.clone().unwrap()
        }
    }

    use crate::plan::Desired;

    fn entries(d: &Desired) -> std::collections::BTreeSet<policy_compiler::ruleset::PeerEntry> {
        (*d.parts.as_ref().unwrap().entries).clone()
    }

    // See: #12
    #[test]
    fn fast_table_is_the_next_compiles() {
        let mut f = Fixture::new(CLUSTER);
        let n1 = f.add("n1", "u1", "10.0.0.11");
        assert!(f.fake.table("fa-n1").is_none());
        assert_eq!(f.rec.fast_add(&n1, Instant::now()), FastAdd::Enforced);
        let fast = f.desired(&n1);
        assert_eq!(f.fake.table("fa-n1").as_deref(), Some(&*fast.text.get()));
        assert_eq!(
            f.rec.cni_status(&n1),
            CniStatus::Waiting("compiling".into())
        );
        assert!(
            f.rec.pods[&n1].enforced(),
            "its table is in place before any pass"
        );
        // The peers' tables follow with the normal pass; the new Pod's table stands.
        assert!(!f.fake.table("fa-a").unwrap().contains("10.0.0.11"));
        let report = f.pass(Instant::now());
        assert_eq!(report.applied, vec![PodKey::new("x", "a")], "{report:?}");
        assert!(f.fake.table("fa-a").unwrap().contains("10.0.0.11"));
        let full = f.desired(&n1);
        assert_eq!(full.checksum, fast.checksum);
        assert_eq!(full.text, fast.text);
        assert_eq!(f.fake.applies(&n1), 1, "applied once, by the fast path");
        assert_eq!(f.rec.cni_status(&n1), CniStatus::Enforced);
    }

    // See: #12
    #[test]
    fn fast_table_is_never_wider_than_the_next_compile() {
        let mut f = Fixture::new(&mutual());
        // Two ADDs before any pass: n2's fast table is rendered from a model where n1
        // has no address yet; the next compile adds it (wider), never removes anything.
        let n1 = f.add("n1", "u1", "10.0.0.11");
        assert_eq!(f.rec.fast_add(&n1, Instant::now()), FastAdd::Enforced);
        let n2 = f.add("n2", "u2", "10.0.0.12");
        assert_eq!(f.rec.fast_add(&n2, Instant::now()), FastAdd::Enforced);
        let (fast1, fast2) = (f.desired(&n1), f.desired(&n2));
        f.pass(Instant::now());
        for (pod, fast, newcomer) in [(&n1, fast1, "10.0.0.12"), (&n2, fast2, "10.0.0.11")] {
            let full = f.desired(pod);
            let (fast_parts, full_parts) =
                (fast.parts.as_ref().unwrap(), full.parts.as_ref().unwrap());
            assert_eq!(
                fast_parts.skeleton, full_parts.skeleton,
                "{pod}: same rules"
            );
            let (a, b) = (entries(&fast), entries(&full));
            assert!(
                a.is_subset(&b),
                "{pod}: fast entries {a:?} not within {b:?}"
            );
            assert!(
                !fast.text.get().contains(newcomer) && full.text.get().contains(newcomer),
                "{pod}"
            );
            assert!(
                f.rec.pods[pod].enforced(),
                "{pod}: the pass brought the wider table"
            );
        }
    }

    // See: #12
    #[test]
    fn fast_path_falls_back_to_the_pass() {
        let mut f = Fixture::new(CLUSTER);
        // A Pod unknown to the last compile.
        let ghost = f.add("ghost", "g", "10.0.0.30");
        assert!(matches!(
            f.rec.fast_add(&ghost, Instant::now()),
            FastAdd::Fallback(_)
        ));
        assert!(f.fake.table("fa-ghost").is_none());
        f.pass(Instant::now());

        // Another change waits for a compile: the last model is not the state's.
        let deny = CLUSTER.replace("ports: [{port: 80}]", "ports: [{port: 81}]");
        std::fs::write(f.dir.path().join("cluster.yaml"), deny).unwrap();
        let scan = f.src.scan();
        f.rec.handle_scan(scan);
        let n1 = f.add("n1", "u1", "10.0.0.11");
        let got = f.rec.fast_add(&n1, Instant::now());
        assert_eq!(
            got,
            FastAdd::Fallback("other changes wait for a compile".into())
        );
        assert!(f.fake.table("fa-n1").is_none(), "nothing applied");
        f.pass(Instant::now());
        assert_eq!(f.rec.cni_status(&n1), CniStatus::Enforced);
        assert!(f.fake.table("fa-n1").unwrap().contains("81"));

        // A failed apply: not answered ok; the pass retries after its backoff.
        let n2 = f.add("n2", "u2", "10.0.0.12");
        f.fake.set_failing(&n2, true);
        let now = Instant::now();
        assert!(
            matches!(f.rec.fast_add(&n2, now), FastAdd::Fallback(why) if why.starts_with("apply failed"))
        );
        assert_ne!(f.rec.cni_status(&n2), CniStatus::Enforced);
        f.fake.set_failing(&n2, false);
        f.pass(now + Duration::from_secs(2));
        assert_eq!(f.rec.cni_status(&n2), CniStatus::Enforced);
    }

    // See: #12
    #[test]
    fn a_netns_claimed_by_another_pod_is_not_fast() {
        let mut f = Fixture::new(CLUSTER);
        let request = |name: &str, uid: &str| Request {
            version: WIRE_VERSION,
            command: Command::Add,
            container_id: format!("sandbox-{name}"),
            netns: "/var/run/netns/fa-a".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "x".into(),
                name: name.into(),
                uid: Some(uid.into()),
            },
            ips: vec!["10.0.0.11".parse().unwrap()],
            timeout_ms: 5000,
        };
        let n1 = f.rec.cni_request(&request("n1", "u1")).unwrap();
        assert_eq!(
            f.rec.fast_add(&n1, Instant::now()),
            FastAdd::Fallback("the netns is claimed by another Pod".into())
        );
    }
}
