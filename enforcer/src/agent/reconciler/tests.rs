//! Unit tests of the reconciler core with the recording applier.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use policy_compiler::{AllowGraph, EndpointId, Model};

use super::*;
use crate::agent::{CompiledRulesets, RenderError};
use crate::applier::{Recorded, RecordingApplier};
use crate::manifests::ManifestDir;

/// Renders the isolation and the labels of the Pod: enough to see changes.
struct FakeRenderer {
    fail: std::sync::Mutex<BTreeSet<String>>,
}

impl RulesetSource for FakeRenderer {
    fn render(
        &self,
        model: &Model,
        graph: &AllowGraph,
        pod: EndpointId,
    ) -> Result<String, RenderError> {
        let ep = model.endpoint(pod);
        if self.fail.lock().unwrap().contains(&ep.key()) {
            return Err(RenderError {
                message: "injected".into(),
            });
        }
        let iso = graph.isolation(pod);
        Ok(format!(
            "table inet netpol {{ # {} ingress {:?} egress {:?} rules {} }}",
            ep.key(),
            iso.ingress,
            iso.egress,
            graph.edges(pod, policy_compiler::Direction::Ingress).len()
        ))
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    src: ManifestDir,
    fake: Arc<RecordingApplier>,
    renderer: Arc<FakeRenderer>,
    rec: Reconciler,
    metrics: Arc<Metrics>,
}

const PODS: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}, annotations: {netpol.io/netns: ns-a}}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}, annotations: {netpol.io/netns: ns-b}}\nspec: {containers: [{name: c}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: remote, namespace: x}\nspec: {containers: [{name: c}]}\n";
const DENY_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}}\n";
const ALLOW_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  ingress: [{from: [{podSelector: {}}]}]\n";

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
        std::fs::write(dir.path().join("pol.yaml"), DENY_A).unwrap();
        let src = ManifestDir::new(dir.path(), None);
        let fake = Arc::new(RecordingApplier::new());
        let renderer = Arc::new(FakeRenderer {
            fail: Default::default(),
        });
        let metrics = Arc::new(Metrics::new());
        let config = AgentConfig {
            backoff: BackoffPolicy {
                base: Duration::from_secs(1),
                max: Duration::from_secs(8),
            },
            ..AgentConfig::default()
        };
        let rec = Reconciler::new(&config, renderer.clone(), fake.clone(), metrics.clone());
        Self {
            dir,
            src,
            fake,
            renderer,
            rec,
            metrics,
        }
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join(file), text).unwrap();
    }

    /// One pass as the agent does it.
    fn pass(&mut self, now: Instant) -> SyncReport {
        let scan = self.src.scan();
        // The watch sends only non-empty scans.
        if !scan.is_empty() {
            self.rec.handle_scan(scan);
        }
        self.rec.compile();
        self.rec.sync(now)
    }
}

fn key(n: &str) -> PodKey {
    PodKey::new("x", n)
}

/// Pod tables defer Service addresses to the node table only when the agent owns
/// one: without it (`--no-node-table`) they would let every Service address out
/// unjudged. See: #10
#[test]
fn service_addresses_are_deferred_only_with_a_node_table() {
    const EGRESS_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: e, namespace: x}\nspec: {podSelector: {matchLabels: {app: a}}, policyTypes: [Egress]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: x}\nspec: {clusterIP: 10.96.0.50, selector: {app: b}, ports: [{port: 80}]}\n";
    for node_table in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pods.yaml"), PODS).unwrap();
        std::fs::write(dir.path().join("pol.yaml"), EGRESS_A).unwrap();
        let mut src = ManifestDir::new(dir.path(), None);
        let fake = Arc::new(RecordingApplier::new());
        let config = AgentConfig {
            node_table,
            ..AgentConfig::default()
        };
        let mut rec = Reconciler::new(
            &config,
            Arc::new(CompiledRulesets::default()),
            fake.clone(),
            Arc::new(Metrics::new()),
        );
        rec.handle_scan(src.scan());
        rec.compile();
        rec.sync(Instant::now());
        let table = fake.table("ns-a").expect("x/a is applied");
        assert_eq!(table.contains("@svc_v4"), node_table, "{table}");
        assert!(table.contains("10.96.0.50") == node_table, "{table}");
    }
}

#[test]
fn first_pass_applies_local_pods_then_only_changes() {
    let mut f = Fixture::new();
    let t0 = Instant::now();
    let r = f.pass(t0);
    assert_eq!(r.applied, [key("a"), key("b")], "remote has no netns");
    assert!(f.rec.synced());
    assert_eq!(f.metrics.pods_enforced.get(), 2);
    let a_before = f.fake.table("ns-a").unwrap();
    assert!(a_before.contains("ingress [PolicyId(0)]"), "{a_before}");

    // Nothing changed: nothing applied.
    assert_eq!(f.pass(t0), SyncReport::default());
    // A policy change reaching only a: only a is re-applied.
    f.write("pol.yaml", ALLOW_A);
    f.fake.clear_calls();
    let r = f.pass(t0);
    assert_eq!(r.applied, [key("a")]);
    assert_eq!(f.fake.applies(&key("b")), 0);
    assert_ne!(f.fake.table("ns-a").unwrap(), a_before);
    assert_eq!(f.metrics.applies.get(), 3);
}

#[test]
fn invalid_manifest_changes_nothing() {
    let mut f = Fixture::new();
    let t0 = Instant::now();
    f.pass(t0);
    let before = f.fake.table("ns-a");
    f.fake.clear_calls();
    f.write(
        "pol.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {matchLabels: {app: '-bad-'}}}\n",
    );
    assert_eq!(f.pass(t0), SyncReport::default());
    assert!(f.fake.calls().is_empty());
    assert_eq!(f.fake.table("ns-a"), before);
    assert_eq!(f.metrics.manifest_errors.get(), 1);
    // Deleting the policy file is a valid change: a is opened on purpose.
    std::fs::remove_file(f.dir.path().join("pol.yaml")).unwrap();
    assert_eq!(f.pass(t0).applied, [key("a")]);
}

#[test]
fn never_valid_manifests_touch_nothing_at_start() {
    let mut f = Fixture::new();
    f.write("pol.yaml", "kind: [\n");
    let r = f.pass(Instant::now());
    assert_eq!(r, SyncReport::default());
    assert!(f.fake.calls().is_empty());
    assert!(!f.rec.synced(), "not ready");
    f.write("pol.yaml", DENY_A);
    assert_eq!(f.pass(Instant::now()).applied.len(), 2);
    assert!(f.rec.synced());
}

#[test]
fn deleting_a_never_valid_file_after_another_change_resumes_compiling() {
    // See: #11 (the agent logged "never been valid: not compiling" and never compiled
    // again until an unrelated object changed).
    let mut f = Fixture::new();
    let t0 = Instant::now();
    assert_eq!(f.pass(t0).applied.len(), 2);
    f.write("pol.yaml", ALLOW_A);
    f.write("broken.yaml", "kind: [\n");
    assert_eq!(
        f.pass(t0),
        SyncReport::default(),
        "incomplete: not compiled"
    );
    assert_eq!(f.pass(t0), SyncReport::default());
    std::fs::remove_file(f.dir.path().join("broken.yaml")).unwrap();
    assert_eq!(
        f.pass(t0).applied,
        [key("a")],
        "the policy change is compiled"
    );
}

#[test]
fn deleted_pod_table_is_removed() {
    let mut f = Fixture::new();
    f.pass(Instant::now());
    f.write("pods.yaml", &PODS.replace("name: b,", "name: b2,"));
    let r = f.pass(Instant::now());
    assert!(r.removed.is_empty(), "b2 reuses ns-b: {r:?}");
    assert_eq!(r.applied, [key("b2")]);
    assert!(
        !f.fake
            .calls()
            .iter()
            .any(|c| matches!(c, Recorded::Remove { .. }))
    );
    assert!(!f.rec.actual().contains_key(&key("b")), "b forgotten");
    // Without reuse: removed.
    f.write(
        "pods.yaml",
        &PODS
            .replace("name: b,", "name: b3,")
            .replace("ns-b", "ns-c"),
    );
    let r = f.pass(Instant::now());
    assert_eq!(r.removed, [key("b2")]);
    assert!(f.fake.table("ns-b").is_none());
    assert_eq!(f.metrics.removes.get(), 1);
}

#[test]
fn failed_apply_keeps_last_good_and_backs_off() {
    let mut f = Fixture::new();
    let t0 = Instant::now();
    f.pass(t0);
    let good = f.fake.table("ns-a");
    f.fake.set_failing(&key("a"), true);
    f.write("pol.yaml", ALLOW_A);
    let r = f.pass(t0);
    assert_eq!(r.failed, [key("a")]);
    assert_eq!(r.retry_at, Some(t0 + Duration::from_secs(1)));
    assert_eq!(f.fake.table("ns-a"), good, "last good stays");
    assert_eq!(f.metrics.apply_errors.get(), 1);
    assert_eq!(f.metrics.pods_enforced.get(), 1);
    // Before the backoff expires: deferred, not attempted.
    f.fake.clear_calls();
    let r = f.rec.sync(t0 + Duration::from_millis(500));
    assert_eq!(r.deferred, [key("a")]);
    assert!(f.fake.calls().is_empty());
    // Second failure doubles the delay.
    let t1 = t0 + Duration::from_secs(1);
    let r = f.rec.sync(t1);
    assert_eq!(r.retry_at, Some(t1 + Duration::from_secs(2)));
    // Recovery.
    f.fake.set_failing(&key("a"), false);
    let r = f.rec.sync(t1 + Duration::from_secs(2));
    assert_eq!(r.applied, [key("a")]);
    assert_ne!(f.fake.table("ns-a"), good);
    assert_eq!(f.metrics.pods_enforced.get(), 2);
}

#[test]
fn render_failure_keeps_last_good_ruleset_of_that_pod() {
    let mut f = Fixture::new();
    f.pass(Instant::now());
    f.renderer.fail.lock().unwrap().insert("x/a".into());
    f.write("pol.yaml", ALLOW_A);
    let r = f.pass(Instant::now());
    assert!(r.applied.is_empty(), "{r:?}");
    assert_eq!(f.metrics.compile_errors.get(), 1);
    assert!(f.rec.desired().contains_key(&key("a")));
}

#[test]
fn drift_is_detected_repaired_and_counted() {
    let mut f = Fixture::new();
    f.pass(Instant::now());
    assert!(f.rec.verify().is_empty());
    f.fake.tamper("ns-a", Some("table inet netpol { }"));
    f.fake.tamper("ns-b", None);
    assert_eq!(f.rec.verify(), [key("a"), key("b")]);
    assert_eq!(f.metrics.pods_enforced.get(), 0);
    let r = f.rec.sync(Instant::now());
    assert_eq!(r.applied, [key("a"), key("b")]);
    assert_eq!(f.metrics.drift_repairs.get(), 2);
    assert!(f.rec.verify().is_empty());
}

#[test]
fn node_filter_selects_local_pods() {
    let mut f = Fixture::new();
    let pods = PODS
        .replacen("spec: {containers", "spec: {nodeName: n1, containers", 1)
        .replacen("spec: {containers", "spec: {nodeName: n2, containers", 1);
    f.write("pods.yaml", &pods);
    let config = AgentConfig {
        node: Some("n1".into()),
        ..AgentConfig::default()
    };
    f.rec = Reconciler::new(
        &config,
        f.renderer.clone(),
        f.fake.clone(),
        f.metrics.clone(),
    );
    let r = f.pass(Instant::now());
    assert_eq!(r.applied, [key("a")]);
}

#[test]
fn parallel_keeps_order() {
    let out = parallel(4, (0..100).collect(), |i: i32| i * 2);
    assert_eq!(out, (0..100).map(|i| i * 2).collect::<Vec<_>>());
}

mod incremental {
    //! Peer changes as element updates (with a fake that tells generations). See: #12

    use super::*;
    use crate::applier::{Recorded, RecordingApplier};
    use crate::nfnl::ElementOp;

    fn pod(name: &str, app: &str, ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}, annotations: {{netpol.io/netns: ns-{name}}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
        )
    }

    fn policy(port: u16) -> String {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: x}}\nspec: {{podSelector: {{matchLabels: {{app: a}}}}, ingress: [{{from: [{{podSelector: {{matchLabels: {{app: b}}}}}}], ports: [{{port: {port}}}]}}]}}\n"
        )
    }

    struct Inc {
        dir: tempfile::TempDir,
        src: ManifestDir,
        fake: Arc<RecordingApplier>,
        rec: Reconciler,
        metrics: Arc<Metrics>,
    }

    impl Inc {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(
                dir.path().join("pods.yaml"),
                pod("a", "a", "10.0.0.1") + &pod("b1", "b", "10.0.0.2"),
            )
            .unwrap();
            std::fs::write(dir.path().join("pol.yaml"), policy(80)).unwrap();
            let src = ManifestDir::new(dir.path(), None);
            let fake = Arc::new(RecordingApplier::with_generations());
            let metrics = Arc::new(Metrics::new());
            let rec = Reconciler::new(
                &AgentConfig::default(),
                Arc::new(CompiledRulesets::default()),
                fake.clone(),
                metrics.clone(),
            );
            let mut f = Self {
                dir,
                src,
                fake,
                rec,
                metrics,
            };
            let r = f.pass();
            assert_eq!(r.applied, [key("a"), key("b1")]);
            f.fake.clear_calls();
            f
        }

        fn pass(&mut self) -> SyncReport {
            let scan = self.src.scan();
            if !scan.is_empty() {
                self.rec.handle_scan(scan);
            }
            self.rec.compile();
            self.rec.sync(Instant::now())
        }

        fn pods(&self, pods: &[String]) {
            std::fs::write(self.dir.path().join("pods.yaml"), pods.concat()).unwrap();
        }

        fn calls_for(&self, netns: &str) -> Vec<Recorded> {
            self.fake
                .calls()
                .into_iter()
                .filter(|c| match c {
                    Recorded::Apply { netns: n, .. }
                    | Recorded::Update { netns: n, .. }
                    | Recorded::Rewrite { netns: n, .. }
                    | Recorded::Remove { netns: n, .. } => n == netns,
                })
                .collect()
        }
    }

    #[test]
    fn a_peer_appearing_moving_and_leaving_is_element_updates() {
        let mut f = Inc::new();
        let a = pod("a", "a", "10.0.0.1");
        let b1 = pod("b1", "b", "10.0.0.2");
        // Appearing: one update adding its address, no table replace.
        f.pods(&[a.clone(), b1.clone(), pod("b2", "b", "10.0.0.7")]);
        let r = f.pass();
        assert_eq!(r.applied, [key("a"), key("b2")], "b2's own table is new");
        let calls = f.calls_for("ns-a");
        let [Recorded::Update { ops, .. }] = calls.as_slice() else {
            panic!("{calls:?}")
        };
        assert!(
            matches!(ops.as_slice(), [ElementOp::Add(e)] if e.first.to_string() == "10.0.0.7"),
            "{ops:?}"
        );
        assert_eq!(f.fake.applies(&key("a")), 0);
        assert_eq!(f.metrics.element_updates.get(), 1);
        // The fake holds exactly the full text a replace would have loaded.
        let want = f.rec.desired()[&key("a")].text.to_string();
        assert_eq!(f.fake.table("ns-a").unwrap(), want);
        // Moving: delete the old address, add the new one, in one update.
        f.fake.clear_calls();
        f.pods(&[a.clone(), b1.clone(), pod("b2", "b", "10.0.0.8")]);
        f.pass();
        let calls = f.calls_for("ns-a");
        let [Recorded::Update { ops, .. }] = calls.as_slice() else {
            panic!("{calls:?}")
        };
        assert_eq!(ops.len(), 2, "{ops:?}");
        assert!(matches!(&ops[0], ElementOp::Delete(e) if e.first.to_string() == "10.0.0.7"));
        assert!(matches!(&ops[1], ElementOp::Add(e) if e.first.to_string() == "10.0.0.8"));
        // Leaving: a deletion.
        f.fake.clear_calls();
        f.pods(&[a, b1]);
        let r = f.pass();
        assert_eq!(r.removed, [key("b2")]);
        let calls = f.calls_for("ns-a");
        let [Recorded::Update { ops, .. }] = calls.as_slice() else {
            panic!("{calls:?}")
        };
        assert!(matches!(ops.as_slice(), [ElementOp::Delete(_)]), "{ops:?}");
        assert!(f.rec.verify().is_empty());
    }

    #[test]
    fn a_rule_change_rewrites_the_table_keeping_its_peer_maps() {
        // See: #12
        let mut f = Inc::new();
        f.fake.clear_calls();
        std::fs::write(f.dir.path().join("pol.yaml"), policy(443)).unwrap();
        let r = f.pass();
        assert_eq!(r.applied, [key("a")]);
        assert_eq!(f.fake.rewrites(&key("a")), 1);
        assert_eq!(f.fake.applies(&key("a")), 0);
        assert_eq!(f.fake.updates(&key("a")), 0);
        // Same peers: no element changes.
        let calls = f.calls_for("ns-a");
        let [Recorded::Rewrite { ops, ruleset, .. }] = calls.as_slice() else {
            panic!("{calls:?}")
        };
        assert!(ops.is_empty(), "{ops:?}");
        assert_eq!(f.fake.table("ns-a").as_deref(), Some(ruleset.as_str()));
        assert!(f.rec.verify().is_empty());
    }

    #[test]
    fn a_rule_change_after_a_foreign_commit_replaces_the_table() {
        // See: #12
        let mut f = Inc::new();
        let table = f.fake.table("ns-a").unwrap();
        f.fake.tamper("ns-a", Some(&table));
        f.fake.clear_calls();
        std::fs::write(f.dir.path().join("pol.yaml"), policy(443)).unwrap();
        let r = f.pass();
        assert_eq!(r.applied, [key("a")]);
        // Refused as stale (nothing changed), then replaced whole.
        assert_eq!(f.fake.rewrites(&key("a")), 1);
        assert_eq!(f.fake.applies(&key("a")), 1);
    }

    #[test]
    fn a_foreign_commit_makes_the_update_stale_and_the_table_is_replaced() {
        let mut f = Inc::new();
        // Someone commits in a's namespace (same content): the generation moves.
        let table = f.fake.table("ns-a").unwrap();
        f.fake.tamper("ns-a", Some(&table));
        f.pods(&[
            pod("a", "a", "10.0.0.1"),
            pod("b1", "b", "10.0.0.2"),
            pod("b2", "b", "10.0.0.7"),
        ]);
        let r = f.pass();
        assert!(r.applied.contains(&key("a")));
        let calls = f.calls_for("ns-a");
        assert!(
            matches!(
                calls.as_slice(),
                [Recorded::Update { .. }, Recorded::Apply { .. }]
            ),
            "stale update, then a replace: {calls:?}"
        );
        let want = f.rec.desired()[&key("a")].text.to_string();
        assert_eq!(f.fake.table("ns-a").unwrap(), want);
    }

    #[test]
    fn tampering_after_an_update_is_repaired_and_a_verify_without_commits_lists_nothing() {
        let mut f = Inc::new();
        // After the pass the agent lists the replaced tables (the generation proves
        // them its own): the baselines.
        assert!(f.rec.needs_baselines());
        f.rec.take_baselines();
        assert!(!f.rec.needs_baselines());
        // Nothing committed since: the generations prove it, nothing is listed.
        let lists = f.fake.lists();
        assert!(f.rec.verify().is_empty());
        assert_eq!(f.fake.lists(), lists);
        f.pods(&[
            pod("a", "a", "10.0.0.1"),
            pod("b1", "b", "10.0.0.2"),
            pod("b2", "b", "10.0.0.7"),
        ]);
        f.pass();
        assert_eq!(f.fake.updates(&key("a")), 1);
        assert!(f.rec.verify().is_empty());
        assert_eq!(f.fake.lists(), lists, "after an element update neither");
        // Tampered after the update: no listing to compare with, so the table is
        // replaced (fail closed), not trusted.
        f.fake.tamper("ns-a", Some("table inet netpol { }"));
        assert!(f.rec.verify().is_empty(), "not provably drift");
        f.fake.clear_calls();
        let r = f.rec.sync(Instant::now());
        assert_eq!(r.applied, [key("a")]);
        assert_eq!(f.fake.applies(&key("a")), 1, "a full replace");
        let want = f.rec.desired()[&key("a")].text.to_string();
        assert_eq!(f.fake.table("ns-a").unwrap(), want);
        // Tampered after a replace and its baseline: drift, counted, replaced.
        f.rec.take_baselines();
        assert!(f.rec.verify().is_empty());
        f.fake.tamper("ns-a", Some("table inet netpol { }"));
        assert_eq!(f.rec.verify(), [key("a")]);
        let r = f.rec.sync(Instant::now());
        assert_eq!(r.applied, [key("a")]);
        assert_eq!(f.metrics.drift_repairs.get(), 1);
    }
}
