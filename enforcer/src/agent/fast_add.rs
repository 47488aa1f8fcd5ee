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
//!
//! **Beside a pass in flight.** A pass owns the reconciler on its own thread for
//! 100 ms and more at node scale; an `ADD` arriving then must not wait for it. Right
//! before a pass starts, the shell takes a [`FastView`] ([`Reconciler::fast_view`]):
//! the last good model and graph (`Arc`), the renderer, the applier, the record store,
//! the namespaces the reconciler may write, and the local Pods it knows nothing about
//! yet. With it an `ADD` is rendered, applied and answered while the pass runs
//! ([`FastView::add`]); the reconciler takes the result when it is back
//! ([`Reconciler::take_fast`]) and the next pass brings the peers. The view is offered
//! only when the pass compiles **the view's model plus CNI `ADD`s only** (the same
//! precondition as above, checked when the pass starts, and no netns discovery or
//! record pruning in the pass): so the pass's compile and the next one give the Pod the
//! same rules with the same or more peers, never fewer. A pass that carries any other
//! change (a policy change in flight) gets no view: `ADD`s wait for it and take the
//! fast path from its new model. One writer per netns: the view refuses every
//! namespace a record of the reconciler names (desired, applied, a live CNI record, the
//! node's), and each namespace and Pod once per pass; the pass cannot learn of the new
//! Pod's namespace before it is back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use super::cni::{RecordWrite, add_record, request_pod};
use super::reconciler::{Done, SyncReport, execute};
use super::{Reconciler, RulesetSource};
use crate::applier::Applier;
use crate::cni::Request;
use crate::cni::records::RecordStore;
use crate::plan::{Desired, PodState, plan_pods};
use crate::reporter::CompiledModel;
use crate::state::{CniEntry, Object, PodKey};

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

/// What the fast path needs while a pass owns the [`Reconciler`]: see the module
/// doc. Taken by [`Reconciler::fast_view`]; used by one thread at a time.
pub(super) struct FastView {
    compiled: Arc<CompiledModel>,
    renderer: Arc<dyn RulesetSource>,
    applier: Arc<dyn Applier>,
    records: Option<RecordStore>,
    /// The node addresses the last compile rendered with (`Some` with a node table).
    node_addresses: Option<Vec<IpAddr>>,
    /// Local Pods the reconciler knows nothing of but the object (no CNI entry, no
    /// record, no pending record write, no netns from another source), with their
    /// UID. A Pod leaves the map at its first request in this window.
    fresh: BTreeMap<PodKey, Option<String>>,
    /// Namespaces the reconciler (so the pass) may write or that this window took.
    claimed: BTreeSet<String>,
}

/// A CNI `ADD` answered by [`FastView::add`] while a pass ran: what
/// [`Reconciler::take_fast`] records once the reconciler is back.
pub(super) struct FastApplied {
    request: Request,
    desired: Desired,
    done: Done,
}

impl FastApplied {
    /// The Pod.
    pub(super) fn pod(&self) -> &PodKey {
        match &self.done {
            Done::Applied { pod, .. } | Done::Removed { pod, .. } | Done::Failed { pod, .. } => pod,
        }
    }
}

impl FastView {
    /// A request other than `ADD` for `pod` arrived in this window: its `ADD`s wait
    /// for the reconciler from now on.
    pub(super) fn forget(&mut self, pod: &PodKey) {
        self.fresh.remove(pod);
    }

    /// The fast path of a CNI `ADD` while a pass runs: checks the request as
    /// [`Reconciler::cni_request`] does, persists its record, renders the Pod's table
    /// from the view's model and applies it. `Ok`: the table is in the kernel, answer
    /// the plugin and hand the result to [`Reconciler::take_fast`]. `Err(why)`: nothing
    /// was applied (or the apply failed); the request waits for the reconciler.
    pub(super) fn add(&mut self, request: &Request) -> Result<FastApplied, String> {
        let pod = request_pod(request)?;
        let record = add_record(request)?;
        let Some(uid) = self.fresh.remove(&pod) else {
            return Err("the agent knows this Pod already, or it is not local".to_owned());
        };
        if let (Some(want), Some(have)) = (request.pod.uid.as_deref(), uid.as_deref())
            && want != have
        {
            return Err("the request is for another incarnation of the Pod".to_owned());
        }
        let netns = record.netns.clone();
        // Claimed even if what follows fails: one writer per namespace per window.
        if !self.claimed.insert(netns.clone()) {
            return Err("the netns is claimed by another Pod".to_owned());
        }
        let model = &self.compiled.model;
        let Some(id) = model.endpoint_by_key(&pod.to_string()) else {
            return Err("the Pod is not in the last compile".to_owned());
        };
        if model.endpoint(id).no_ruleset().is_some() {
            return Err("the Pod gets no ruleset".to_owned());
        }
        // Persisted before the table is applied and the plugin answered, as the pass
        // does (a restart after the answer finds the Pod local).
        if let Some(store) = &self.records
            && let Err(e) = store.save(&pod, &record)
        {
            tracing::error!(error = %netpol_common::ErrorChain(&e), "cannot persist cni record");
        }
        let desired = self
            .renderer
            .render_desired(
                model,
                &self.compiled.graph,
                id,
                self.node_addresses.as_deref(),
                &netns,
            )
            .map_err(|e| format!("render failed: {e}"))?;
        let state = PodState {
            desired: Some(&desired),
            actual: None,
            applied_parts: None,
            generation: None,
        };
        let mut done = None;
        for op in plan_pods(&[(&pod, state)]) {
            done = Some(execute(self.applier.as_ref(), op));
        }
        match done {
            Some(done @ Done::Applied { .. })
                if matches!(&done, Done::Applied { checksum, netns, .. }
                    if *checksum == desired.checksum && *netns == desired.netns) =>
            {
                Ok(FastApplied {
                    request: request.clone(),
                    desired,
                    done,
                })
            }
            Some(Done::Failed { error, .. }) => Err(format!(
                "apply failed: {}",
                netpol_common::ErrorChain(&error)
            )),
            _ => Err("the plan did not apply the Pod's table".to_owned()),
        }
    }
}

impl Reconciler {
    /// The [`FastView`] for `ADD`s arriving while the next pass runs, or `None` when
    /// that pass compiles more than the last good model plus CNI `ADD`s (then `ADD`s
    /// wait for it). The caller must not let that pass discover namespaces or prune
    /// records (those change the state after the check).
    pub(super) fn fast_view(&self) -> Option<FastView> {
        if !self.complete || !self.only_adds_since_compile() {
            return None;
        }
        let compiled = self.compiled()?.clone();
        let node = self.node.as_deref();
        let mut claimed: BTreeSet<String> = self
            .pods
            .values()
            .flat_map(|r| {
                let desired = r.desired.as_ref().map(|d| d.netns.clone());
                desired
                    .into_iter()
                    .chain(r.applied.as_ref().map(|a| a.netns.clone()))
            })
            .collect();
        claimed.extend(self.state.cni().values().filter_map(|e| match e {
            CniEntry::Live(r) => Some(r.netns.clone()),
            CniEntry::Gone { .. } => None,
        }));
        claimed.insert(crate::node::OWN_NETNS.to_owned());
        let writing: BTreeSet<&PodKey> = self
            .record_writes
            .iter()
            .map(|w| match w {
                RecordWrite::Save(p, _) | RecordWrite::Remove(p) => p,
            })
            .collect();
        let mut fresh = BTreeMap::new();
        for obj in self.state.objects() {
            let Object::Pod(p) = obj else { continue };
            let scheduled = p.object.spec.as_ref().and_then(|s| s.node_name.as_deref());
            if let (Some(want), Some(have)) = (node, scheduled)
                && want != have
            {
                continue;
            }
            let key = obj.key();
            let pod = PodKey::new(key.namespace, key.name);
            if self.pods.contains_key(&pod)
                || self.state.cni().contains_key(&pod)
                || writing.contains(&pod)
                || self.state.local_netns(&pod, node).is_some()
            {
                continue;
            }
            fresh.insert(pod, p.object.metadata.uid.clone());
        }
        Some(FastView {
            compiled,
            renderer: self.renderer.clone(),
            applier: self.applier.clone(),
            records: self.records.clone(),
            node_addresses: self.node_table.as_ref().map(|n| n.addresses.clone()),
            fresh,
            claimed,
        })
    }

    /// Takes an `ADD` that [`FastView::add`] applied while a pass ran: the request
    /// into the state (as [`Reconciler::cni_request`]) and the applied table into the
    /// Pod's record (as the fast path does), so the next pass brings its peers and
    /// re-applies it only if its ruleset changed. Call it once the pass is back, in
    /// the order the requests arrived.
    pub(super) fn take_fast(&mut self, fast: FastApplied, now: Instant) {
        let FastApplied {
            request,
            desired,
            done,
        } = fast;
        let pod = match self.cni_request(&request) {
            Ok(pod) => pod,
            Err(why) => {
                // Cannot happen: the view checked the same request the same way.
                tracing::error!(why, "cni ADD answered by the fast path refused afterwards");
                return;
            }
        };
        self.pods.entry(pod).or_default().desired = Some(desired);
        self.take_done(done, now, &mut SyncReport::default());
        self.metrics.cni_fast_adds.inc();
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
            let fake = Arc::new(RecordingApplier::with_generations());
            Self::with_applier(cluster, fake.clone(), fake)
        }

        /// A fixture whose reconciler applies through `applier` (in front of `fake`).
        fn with_applier(
            cluster: &str,
            fake: Arc<RecordingApplier>,
            applier: Arc<dyn crate::applier::Applier>,
        ) -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("cluster.yaml"), cluster).unwrap();
            let src = ManifestDir::new(dir.path(), None);
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
                applier,
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
            self.rec.cni_request(&add_request(name, uid, ip)).unwrap()
        }

        /// The desired ruleset of `pod` the reconciler holds.
        fn desired(&self, pod: &PodKey) -> Desired {
            self.rec.pods[pod].desired.clone().unwrap()
        }
    }

    fn add_request(name: &str, uid: &str, ip: &str) -> Request {
        Request {
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

    /// An applier in front of a [`RecordingApplier`] whose first table apply in one
    /// namespace (once armed) stops until the test lets it go: a pass held in flight,
    /// deterministically (channels, no sleeps).
    struct Gate {
        fake: Arc<RecordingApplier>,
        netns: String,
        armed: std::sync::atomic::AtomicBool,
        entered: std::sync::Mutex<std::sync::mpsc::Sender<()>>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Gate {
        fn hold(&self, netns: &str) {
            // Only the first apply after arming waits.
            if netns == self.netns && self.armed.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.entered.lock().unwrap().send(()).unwrap();
                self.release.lock().unwrap().recv().unwrap();
            }
        }
    }

    use crate::applier::{Applier, ApplyError};

    impl Applier for Gate {
        fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
            self.hold(netns);
            self.fake.apply(pod, netns, ruleset)
        }
        fn apply_ruleset(
            &self,
            pod: &PodKey,
            netns: &str,
            text: &str,
            ruleset: Option<&policy_compiler::ruleset::Ruleset>,
        ) -> Result<(), ApplyError> {
            self.hold(netns);
            self.fake.apply_ruleset(pod, netns, text, ruleset)
        }
        fn update(
            &self,
            pod: &PodKey,
            netns: &str,
            ops: &[crate::nfnl::ElementOp],
            generation: u32,
            ruleset: &str,
        ) -> Result<u32, ApplyError> {
            self.hold(netns);
            self.fake.update(pod, netns, ops, generation, ruleset)
        }
        fn generation(&self, pod: &PodKey, netns: &str) -> Result<Option<u32>, ApplyError> {
            self.fake.generation(pod, netns)
        }
        fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
            self.fake.remove(pod, netns)
        }
        fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
            self.fake.list(pod, netns)
        }
        fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
            self.fake.apply_node(ruleset)
        }
        fn list_node(&self) -> Result<Option<String>, ApplyError> {
            self.fake.list_node()
        }
        fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
            self.fake.node_addresses()
        }
    }

    /// A fixture on `cluster` whose applies to `netns` wait (after its first pass):
    /// `(fixture, entered, release)`.
    fn gated(
        cluster: &str,
        netns: &str,
    ) -> (
        Fixture,
        std::sync::mpsc::Receiver<()>,
        std::sync::mpsc::Sender<()>,
    ) {
        let fake = Arc::new(RecordingApplier::with_generations());
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let gate = Arc::new(Gate {
            fake: fake.clone(),
            netns: netns.to_owned(),
            armed: std::sync::atomic::AtomicBool::new(false),
            entered: std::sync::Mutex::new(entered_tx),
            release: std::sync::Mutex::new(release_rx),
        });
        let f = Fixture::with_applier(cluster, fake, gate.clone());
        gate.armed.store(true, std::sync::atomic::Ordering::SeqCst);
        (f, entered, release)
    }

    // See: #12
    #[test]
    fn fast_table_beside_a_pass_in_flight_is_never_wider_than_the_next_compile() {
        let (mut f, entered, release) = gated(&mutual(), "fa-a");
        let fake = f.fake.clone();
        // n1's ADD is taken; its pass (compile + n1's table + a's peer update) runs
        // and holds in a's update. The view is taken right before, as the shell does.
        let n1 = f.add("n1", "u1", "10.0.0.11");
        let mut view = f.rec.fast_view().expect("only ADDs since the last compile");
        let rec = &mut f.rec;
        let applied = std::thread::scope(|s| {
            let pass = s.spawn(move || {
                rec.compile();
                rec.sync(Instant::now())
            });
            entered.recv().unwrap();
            // The pass is in flight (held in a's table): n2's ADD is answered beside it.
            let applied = view
                .add(&add_request("n2", "u2", "10.0.0.12"))
                .expect("fast path beside the pass");
            let in_kernel = fake.table("fa-n2").expect("n2's table applied");
            assert_eq!(in_kernel, *applied.desired.text.get());
            assert!(
                !in_kernel.contains("10.0.0.11"),
                "rendered from the view's model"
            );
            // Same Pod again, another Pod in a claimed namespace, a namespace the pass
            // writes: none is fast, nothing applied.
            let again = view.add(&add_request("n2", "u2", "10.0.0.12"));
            assert!(again.is_err());
            let mut other = add_request("n1", "u1", "10.0.0.13");
            other.netns = "/var/run/netns/fa-n2".into();
            assert!(view.add(&other).is_err(), "n1 is the reconciler's");
            let mut stranger = add_request("a", "", "10.0.0.1");
            stranger.netns = "/var/run/netns/fa-a".into();
            assert!(view.add(&stranger).is_err(), "a's netns is the pass's");
            assert_eq!(fake.applies(&PodKey::new("x", "n2")), 1);
            assert!(!pass.is_finished(), "still held");
            release.send(()).unwrap();
            let report = pass.join().unwrap();
            assert!(report.applied.contains(&n1), "{report:?}");
            applied
        });
        let n2 = applied.pod().clone();
        let fast = applied.desired.clone();
        f.rec.take_fast(applied, Instant::now());
        assert!(f.rec.pods[&n2].enforced(), "the reconciler knows the table");
        // The next pass: n2 as the peer of n1 and a, and n2's table only ever wider.
        f.pass(Instant::now());
        let full = f.desired(&n2);
        let (fast_parts, full_parts) = (fast.parts.as_ref().unwrap(), full.parts.as_ref().unwrap());
        assert_eq!(fast_parts.skeleton, full_parts.skeleton, "same rules");
        let (a, b) = (entries(&fast), entries(&full));
        assert!(a.is_subset(&b), "fast entries {a:?} not within {b:?}");
        assert!(
            full.text.get().contains("10.0.0.11"),
            "n1 joined n2's peers"
        );
        assert!(f.fake.table("fa-a").unwrap().contains("10.0.0.12"));
        assert!(f.fake.table("fa-n1").unwrap().contains("10.0.0.12"));
        assert_eq!(f.fake.table("fa-n2").as_deref(), Some(&*full.text.get()));
        assert_eq!(f.rec.cni_status(&n2), CniStatus::Enforced);
    }

    // See: #12
    #[test]
    fn a_pass_carrying_a_policy_change_offers_no_fast_view() {
        let mut f = Fixture::new(CLUSTER);
        let n1 = f.add("n1", "u1", "10.0.0.11");
        assert!(f.rec.fast_view().is_some(), "ADDs only");
        // A narrowing policy change is taken: the pass about to run compiles it, so a
        // table rendered from the last model (port 80) would be wider than its (81).
        let narrower = CLUSTER.replace("ports: [{port: 80}]", "ports: [{port: 81}]");
        std::fs::write(f.dir.path().join("cluster.yaml"), narrower).unwrap();
        let scan = f.src.scan();
        f.rec.handle_scan(scan);
        assert!(f.rec.fast_view().is_none(), "ADDs wait for this pass");
        f.pass(Instant::now());
        assert!(f.fake.table("fa-n1").unwrap().contains("81"));
        // After it, ADDs are fast again, from the new model.
        let mut view = f.rec.fast_view().expect("compiled, nothing pending");
        let applied = view.add(&add_request("n2", "u2", "10.0.0.12")).unwrap();
        assert!(applied.desired.text.get().contains("81"));
        assert!(!applied.desired.text.get().contains("dport 80"));
        // A DEL in the same window: that Pod's ADDs wait for the reconciler.
        view.forget(&PodKey::new("x", "n2"));
        f.rec.take_fast(applied, Instant::now());
        f.pass(Instant::now());
        let n2 = PodKey::new("x", "n2");
        assert_eq!(f.rec.cni_status(&n2), CniStatus::Enforced);
        assert_eq!(f.fake.applies(&n2), 1, "the pass kept the fast table");
        assert_eq!(f.rec.cni_status(&n1), CniStatus::Enforced);
    }
}
