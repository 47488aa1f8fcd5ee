//! The Kubernetes source against the in-process fake API server (`apiserver.rs`): list,
//! watch events, reconnects, 410 relists, bookmarks, an unreachable server, and the
//! `netpol_watch_*` metrics of each. See: #5

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enforcer::kube::{WATCHED, api_calls, run_source_with_metrics};
use enforcer::metrics::{Metrics, WatchEventType};
use enforcer::state::{Kind, Object, ObjectKey, State};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::apiserver::{ApiServer, CLUSTER_POLICIES, NAMESPACES, PODS, POLICIES};

fn pod(name: &str, app: &str, node: &str) -> Value {
    json!({
        "metadata": {
            "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
            "labels": {"app": app},
            "annotations": {"netpol.io/netns": format!("ns-{name}"), "big": "x".repeat(1000)},
            "managedFields": [{"manager": "kubelet", "operation": "Update"}]
        },
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx",
                  "ports": [{"containerPort": 80, "name": "http"}]}]},
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}],
                    "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}}})
}

fn policy(name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "shop"}, "spec": {"podSelector": {}}})
}

/// The source running against a server, feeding a State like the agent does.
struct Harness {
    metrics: Arc<Metrics>,
    state: Arc<Mutex<State>>,
    complete: Arc<Mutex<Vec<bool>>>,
    task: tokio::task::JoinHandle<()>,
    feeder: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
        self.feeder.abort();
    }
}

impl Harness {
    fn start(server: &ApiServer) -> Harness {
        let (tx, mut rx) = mpsc::channel(16);
        let metrics = Arc::new(Metrics::new());
        let task = tokio::spawn(run_source_with_metrics(
            server.client(),
            tx,
            metrics.clone(),
        ));
        let state = Arc::new(Mutex::new(State::new()));
        let complete = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (state.clone(), complete.clone());
        let feeder = tokio::spawn(async move {
            while let Some(scan) = rx.recv().await {
                let mut st = s.lock().unwrap();
                for e in scan.events {
                    st.handle(e);
                }
                c.lock().unwrap().push(scan.complete);
            }
        });
        Harness {
            metrics,
            state,
            complete,
            task,
            feeder,
        }
    }

    fn keys(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap()
            .objects()
            .map(|o| o.key().to_string())
            .collect()
    }

    fn generation(&self) -> u64 {
        self.state.lock().unwrap().generation()
    }

    fn synced(&self) -> bool {
        self.complete.lock().unwrap().last() == Some(&true)
    }

    fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<Object> {
        let key = ObjectKey {
            kind,
            namespace: ns.into(),
            name: name.into(),
        };
        self.state.lock().unwrap().get(&key).cloned()
    }

    async fn wait(&self, what: &str, f: impl Fn(&Harness) -> bool) {
        let start = Instant::now();
        while !f(self) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out waiting for {what}; state: {:?}",
                self.keys()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const KINDS: [&str; 3] = ["namespaces", "pods", "networkpolicies"];

fn applies(h: &Harness, kind: &'static str) -> u64 {
    h.metrics.watch_events(kind, WatchEventType::Apply)
}

fn deletes(h: &Harness, kind: &'static str) -> u64 {
    h.metrics.watch_events(kind, WatchEventType::Delete)
}

async fn wait_watching(server: &ApiServer) {
    let start = Instant::now();
    for path in [NAMESPACES, PODS, POLICIES, CLUSTER_POLICIES] {
        while server.watchers(path) == 0 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "no watch on {path}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn populated() -> (ApiServer, Harness) {
    let server = ApiServer::start().await;
    server.add(NAMESPACES, namespace("shop"));
    server.add(PODS, pod("a", "a", "n1"));
    server.add(PODS, pod("b", "b", "n2"));
    server.add(POLICIES, policy("deny"));
    let h = Harness::start(&server);
    h.wait("initial sync", Harness::synced).await;
    wait_watching(&server).await;
    (server, h)
}

fn cluster_policy(name: &str) -> Value {
    json!({
        "metadata": {"name": name, "annotations": {"big": "x".repeat(1000)}},
        "spec": {"tier": "Admin", "priority": 5, "subject": {"namespaces": {}},
                 "ingress": [{"name": "deny-all", "action": "Deny", "from": [{"namespaces": {}}]}]},
        "status": {"conditions": []}
    })
}

/// Without the ClusterNetworkPolicy CRD the source still syncs (a 404 is an empty list,
/// never an error that blocks compiling); once the CRD is installed, its objects arrive
/// through the same watcher's retries, slimmed, and reach the model. See: #13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_policies_are_watched_and_an_absent_crd_means_none() {
    let server = ApiServer::start().await;
    server.uninstall(CLUSTER_POLICIES);
    server.add(NAMESPACES, namespace("shop"));
    let h = Harness::start(&server);
    h.wait("sync without the CRD", Harness::synced).await;
    assert_eq!(h.keys(), ["Namespace shop"]);
    assert_eq!(h.metrics.watch_errors("clusternetworkpolicies"), 0);

    server.install(CLUSTER_POLICIES);
    server.add(CLUSTER_POLICIES, cluster_policy("guard"));
    h.wait("the ClusterNetworkPolicy once the CRD is installed", |h| {
        h.get(Kind::ClusterNetworkPolicy, "", "guard").is_some()
    })
    .await;
    assert!(h.synced());
    let Some(Object::ClusterNetworkPolicy(p)) = h.get(Kind::ClusterNetworkPolicy, "", "guard")
    else {
        panic!("guard")
    };
    assert_eq!(p.object.metadata.annotations, None, "slimmed");
    assert_eq!(p.object.status, None, "slimmed");
    let (model, diags) = h.state.lock().unwrap().build_model();
    assert!(diags.is_empty(), "{diags:?}");
    let names: Vec<&str> = model
        .cluster_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["guard"]);

    // The CRD deleted again: its objects go (a 404 relist is empty).
    server.uninstall(CLUSTER_POLICIES);
    h.wait("the ClusterNetworkPolicy gone with its CRD", |h| {
        h.get(Kind::ClusterNetworkPolicy, "", "guard").is_none()
    })
    .await;
    assert!(h.synced());
}

fn list_calls(server: &ApiServer, path: &str) -> usize {
    server
        .requests()
        .iter()
        .filter(|r| r.path == path && !r.is_watch())
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_list_populates_state_slimmed_and_uses_only_rbac_calls() {
    let (server, h) = populated().await;
    assert_eq!(
        h.keys(),
        [
            "Namespace shop",
            "Pod shop/a",
            "Pod shop/b",
            "NetworkPolicy shop/deny"
        ]
    );
    let complete = h.complete.lock().unwrap().clone();
    assert!(
        complete.windows(2).all(|w| w[0] <= w[1]),
        "incomplete until every kind is listed, then complete for good: {complete:?}"
    );
    let Some(Object::Pod(p)) = h.get(Kind::Pod, "shop", "a") else {
        panic!("pod a")
    };
    assert!(p.origin.is_none());
    let meta = &p.object.metadata;
    assert!(meta.managed_fields.is_none() && meta.resource_version.is_none());
    // Every annotation is stripped, netpol.io/netns included. See: #11
    assert_eq!(
        meta.annotations, None,
        "no annotations, not even netpol.io/netns"
    );
    let mut state = h.state.lock().unwrap().clone();
    // The annotation is gone: the netns comes from the operator's map (or CNI records).
    state.handle(enforcer::state::Event::NetnsMap(
        [("a", "ns-a"), ("b", "ns-b")]
            .into_iter()
            .map(|(p, n)| (enforcer::state::PodKey::new("shop", p), n.to_owned()))
            .collect(),
    ));
    let local: Vec<String> = state
        .local_pods(Some("n1"))
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(local, ["shop/a"], "local Pods by spec.nodeName");
    assert_eq!(
        state.local_pods(Some("n1"))[&enforcer::state::PodKey::new("shop", "a")],
        "ns-a"
    );

    // Every request is a GET list or watch of a WATCHED collection, and every granted
    // (group, resource, verb) was used: RBAC is exact.
    let mut seen = std::collections::BTreeSet::new();
    for r in server.requests() {
        assert_eq!(r.method, "GET", "{r:?}");
        let res = WATCHED
            .iter()
            .find(|w| {
                let base = if w.group.is_empty() {
                    format!("/api/{}", w.version)
                } else {
                    format!("/apis/{}/{}", w.group, w.version)
                };
                r.path == format!("{base}/{}", w.resource)
            })
            .unwrap_or_else(|| panic!("request outside WATCHED: {r:?}"));
        let verb = if r.is_watch() { "watch" } else { "list" };
        if r.is_watch() {
            assert_eq!(
                r.query.get("allowWatchBookmarks").map(String::as_str),
                Some("true")
            );
        }
        seen.insert((res.group, res.resource, verb));
    }
    let watch_calls: std::collections::BTreeSet<_> =
        api_calls().into_iter().filter(|c| c.2 != "get").collect();
    assert_eq!(
        seen, watch_calls,
        "the watchers list and watch, nothing else"
    );

    // Metrics: one complete list per kind, synced, every listed object delivered.
    for kind in KINDS {
        assert_eq!(h.metrics.watch_relists(kind), 1, "{kind}");
        assert!(h.metrics.watch_synced(kind), "{kind}");
        assert_eq!(h.metrics.watch_errors(kind), 0, "{kind}");
        assert_eq!(deletes(&h, kind), 0, "{kind}");
        assert!(h.metrics.watch_last_event(kind) > 1.6e9, "{kind}");
    }
    assert_eq!(
        [
            applies(&h, "namespaces"),
            applies(&h, "pods"),
            applies(&h, "networkpolicies")
        ],
        [1, 2, 1]
    );
    let text = h.metrics.encode();
    for line in [
        "netpol_watch_relists_total{kind=\"pods\"} 1",
        "netpol_watch_synced{kind=\"networkpolicies\"} 1",
        "netpol_watch_events_total{kind=\"pods\",type=\"apply\"} 2",
        "netpol_watch_errors_total{kind=\"namespaces\"} 0",
    ] {
        assert!(text.contains(line), "{line} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_modified_deleted_propagate() {
    let (server, h) = populated().await;
    server.add(PODS, pod("c", "c", "n1"));
    h.wait("c added", |h| h.get(Kind::Pod, "shop", "c").is_some())
        .await;
    server.modify(PODS, pod("a", "changed", "n1"));
    h.wait("a modified", |h| {
        matches!(h.get(Kind::Pod, "shop", "a"), Some(Object::Pod(p))
            if p.object.metadata.labels.as_ref().and_then(|l| l.get("app")).map(String::as_str) == Some("changed"))
    })
    .await;
    server.delete(POLICIES, "shop", "deny");
    h.wait("policy deleted", |h| {
        h.get(Kind::NetworkPolicy, "shop", "deny").is_none()
    })
    .await;
    server.add(NAMESPACES, namespace("web"));
    h.wait("namespace added", |h| {
        h.get(Kind::Namespace, "", "web").is_some()
    })
    .await;
    assert_eq!(list_calls(&server, PODS), 1, "no relist");
    // Listed a, b; then c added, a modified: 4 applies. One policy deleted.
    assert_eq!((applies(&h, "pods"), deletes(&h, "pods")), (4, 0));
    assert_eq!(
        (
            applies(&h, "networkpolicies"),
            deletes(&h, "networkpolicies")
        ),
        (1, 1)
    );
    assert_eq!(applies(&h, "namespaces"), 2);
    for kind in KINDS {
        assert_eq!(h.metrics.watch_relists(kind), 1, "{kind}");
        assert!(h.metrics.watch_synced(kind), "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_only_updates_do_not_change_state() {
    let (server, h) = populated().await;
    let g = h.generation();
    let mut p = pod("a", "a", "n1");
    p["status"]["conditions"] = json!([{"type": "Ready", "status": "False"}]);
    server.modify(PODS, p);
    server.add(PODS, pod("marker", "m", "n9"));
    h.wait("marker", |h| h.get(Kind::Pod, "shop", "marker").is_some())
        .await;
    assert_eq!(h.generation(), g + 1, "only the marker changed the state");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_reconnects_from_the_last_version_and_continues() {
    let (server, h) = populated().await;
    server.disconnect(PODS);
    // Changed while the watch is down: replayed when the client watches again.
    server.add(PODS, pod("c", "c", "n1"));
    server.delete(PODS, "shop", "b");
    h.wait("replayed events", |h| {
        h.get(Kind::Pod, "shop", "c").is_some() && h.get(Kind::Pod, "shop", "b").is_none()
    })
    .await;
    assert_eq!(list_calls(&server, PODS), 1, "resumed the watch, no relist");
    server.add(PODS, pod("d", "d", "n1"));
    h.wait("watch continues", |h| {
        h.get(Kind::Pod, "shop", "d").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_410_relists_and_state_equals_the_new_list() {
    let (server, h) = populated().await;
    // Lost in a gap: b deleted, c added, a changed; then history is compacted.
    server.compact_with(PODS, vec![pod("a", "a2", "n1"), pod("c", "c", "n1")]);
    h.wait("relisted", |h| {
        h.get(Kind::Pod, "shop", "c").is_some() && h.get(Kind::Pod, "shop", "b").is_none()
    })
    .await;
    assert_eq!(
        h.keys(),
        [
            "Namespace shop",
            "Pod shop/a",
            "Pod shop/c",
            "NetworkPolicy shop/deny"
        ],
        "pods equal the new list, other kinds untouched"
    );
    assert_eq!(list_calls(&server, PODS), 2, "one relist");
    assert_eq!(list_calls(&server, POLICIES), 1);
    // Metrics: the 410 is a pods error, followed by a second complete pods list.
    assert_eq!(h.metrics.watch_relists("pods"), 2);
    assert_eq!(h.metrics.watch_relists("namespaces"), 1);
    assert_eq!(h.metrics.watch_relists("networkpolicies"), 1);
    assert!(h.metrics.watch_errors("pods") >= 1);
    assert_eq!(h.metrics.watch_errors("networkpolicies"), 0);
    assert!(h.metrics.watch_synced("pods"), "synced after the relist");
    // The relist delivered a2 and c, and the delete of b.
    assert_eq!((applies(&h, "pods"), deletes(&h, "pods")), (4, 1));
    // And it watches again from the new list.
    wait_watching(&server).await;
    server.add(PODS, pod("d", "d", "n1"));
    h.wait("watch after relist", |h| {
        h.get(Kind::Pod, "shop", "d").is_some()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_advance_without_changing_state() {
    let (server, h) = populated().await;
    let g = h.generation();
    let scans = h.complete.lock().unwrap().len();
    let rv = server.bookmark(PODS);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.generation(), g);
    assert_eq!(
        h.complete.lock().unwrap().len(),
        scans,
        "no scan for a bookmark"
    );
    // The next watch resumes from the bookmark's resourceVersion.
    server.disconnect(PODS);
    let start = Instant::now();
    loop {
        let resumed = server.requests().iter().any(|r| {
            r.path == PODS
                && r.is_watch()
                && r.query.get("resourceVersion") == Some(&rv.to_string())
        });
        if resumed {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}",
            server.requests()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(h.generation(), g);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_keeps_the_last_known_state_then_recovers() {
    let (server, h) = populated().await;
    let before = h.keys();
    let g = h.generation();
    let relists: Vec<u64> = KINDS.map(|k| h.metrics.watch_relists(k)).to_vec();
    server.stop();
    // Long enough for several failed reconnects (backoff starts at 800 ms).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(h.keys(), before, "fail closed: nothing dropped");
    assert_eq!(h.generation(), g);
    assert!(h.synced(), "still complete");
    // Metrics: every kind failing and not synced.
    h.wait("errors of every kind", |h| {
        KINDS
            .iter()
            .all(|k| h.metrics.watch_errors(k) >= 2 && !h.metrics.watch_synced(k))
    })
    .await;
    let errors: Vec<u64> = KINDS.map(|k| h.metrics.watch_errors(k)).to_vec();
    let text = h.metrics.encode();
    assert!(
        text.contains("netpol_watch_synced{kind=\"namespaces\"} 0"),
        "{text}"
    );
    // Back (with a change made meanwhile): the source reconnects with backoff.
    server.restart().await;
    server.add(PODS, pod("c", "c", "n1"));
    h.wait("recovered", |h| h.get(Kind::Pod, "shop", "c").is_some())
        .await;
    assert!(h.get(Kind::Pod, "shop", "a").is_some());
    // Synced again, also the kinds without any event since (their watch resumed).
    h.wait("synced again", |h| {
        KINDS.iter().all(|k| h.metrics.watch_synced(k))
    })
    .await;
    assert_eq!(
        KINDS.map(|k| h.metrics.watch_relists(k)).to_vec(),
        relists,
        "resumed, no relist"
    );
    let after: Vec<u64> = KINDS.map(|k| h.metrics.watch_errors(k)).to_vec();
    assert!(
        after.iter().zip(&errors).all(|(a, e)| a >= e),
        "{after:?} {errors:?}"
    );
    // No more errors once recovered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(KINDS.map(|k| h.metrics.watch_errors(k)).to_vec(), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_synced_source_reports_incomplete() {
    let server = ApiServer::start().await;
    server.stop();
    let h = Harness::start(&server);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(h.state.lock().unwrap().is_empty());
    assert!(!h.synced(), "no complete scan while nothing was listed");
    for kind in KINDS {
        assert!(h.metrics.watch_errors(kind) >= 1, "{kind}");
        assert_eq!(h.metrics.watch_relists(kind), 0, "{kind}");
        assert!(!h.metrics.watch_synced(kind), "{kind}");
        assert_eq!(h.metrics.watch_last_event(kind), 0.0, "{kind}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enforces_local_pods_from_the_api() {
    use enforcer::agent::{AgentConfig, CniConfig};
    use enforcer::applier::RecordingApplier;
    use enforcer::cni::records::RecordStore;
    use enforcer::state::{CniRecord, PodKey};

    let server = ApiServer::start().await;
    server.add(NAMESPACES, namespace("shop"));
    server.add(PODS, pod("a", "a", "n1"));
    server.add(PODS, pod("b", "b", "n2"));
    // Local, annotated (`netpol.io/netns: ns-c`), but no CNI record.
    server.add(PODS, pod("c", "c", "n1"));
    server.add(POLICIES, policy("deny"));
    // The netns comes from the CNI record, never from the annotation (`ns-a`).
    let dir = tempfile::tempdir().unwrap();
    let records = dir.path().join("records");
    RecordStore::new(&records)
        .save(
            &PodKey::new("shop", "a"),
            &CniRecord {
                container_id: "ca".into(),
                netns: "cni-a".into(),
                ips: vec!["10.0.0.1".parse().unwrap()],
                uid: Some("uid-a".into()),
            },
        )
        .unwrap();
    let applier = Arc::new(RecordingApplier::new());
    let config = AgentConfig {
        node: Some("n1".into()),
        cni: Some(CniConfig {
            socket: dir.path().join("cni.sock"),
            records: Some(records),
            chain: None,
        }),
        ..AgentConfig::default()
    };
    let agent = start_ready_agent(&server, config, applier.clone()).await;
    assert_eq!(
        applier.applies(&PodKey::new("shop", "a")),
        1,
        "local Pod enforced"
    );
    assert_eq!(
        applier.applies(&PodKey::new("shop", "b")),
        0,
        "other node's Pod is not"
    );
    // See: #11 (annotation in Kubernetes mode ignored: a Pod's author writes it)
    assert_eq!(
        applier.applies(&PodKey::new("shop", "c")),
        0,
        "an annotation alone maps nothing from the API"
    );
    assert!(applier.table("ns-a").is_none(), "annotation not used");
    assert!(applier.table("ns-c").is_none(), "annotation not used");
    // The agent's own metrics (on /metrics) have the source's watch series.
    for kind in KINDS {
        assert_eq!(agent.metrics().watch_relists(kind), 1, "{kind}");
        assert!(agent.metrics().watch_synced(kind), "{kind}");
    }
    let table = applier.table("cni-a").unwrap();
    assert!(table.contains("table inet netpol"), "{table}");
    // The policy goes away in the API: a's table follows (no longer isolated).
    server.delete(POLICIES, "shop", "deny");
    let start = Instant::now();
    while applier.applies(&PodKey::new("shop", "a")) < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "no re-apply");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.stop().await.unwrap();
}

/// A CNI ADD for a Pod the watch has not delivered yet: the agent `get`s it (and its
/// Namespace), enforces it, and answers; every call it made is in `api_calls()`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cni_add_ahead_of_the_watch_gets_the_pod() {
    use enforcer::agent::{AgentConfig, CniConfig};
    use enforcer::applier::RecordingApplier;
    use enforcer::state::PodKey;
    use netpol_cni::plugin::NetpolCni;
    use rscni_plugin::cni::Cni;
    use rscni_plugin::test_util::ArgsBuilder;

    let server = ApiServer::start().await;
    server.add(NAMESPACES, namespace("shop"));
    server.add(PODS, pod("a", "a", "n1"));
    server.add(POLICIES, policy("deny"));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("cni.sock");
    let applier = Arc::new(RecordingApplier::new());
    let config = AgentConfig {
        node: Some("n1".into()),
        drops: None,
        cni: Some(CniConfig {
            socket: socket.clone(),
            records: None,
            chain: None,
        }),
        ..AgentConfig::default()
    };
    let agent = start_ready_agent(&server, config, applier.clone()).await;
    // The new Pod exists in the API (GET finds it) but the watch has not shown it, and
    // its Namespace is new as well.
    server.add_unannounced(NAMESPACES, namespace("fresh"));
    let mut web = pod("web", "web", "n1");
    web["metadata"]["namespace"] = json!("fresh");
    web["metadata"]["annotations"] = json!({});
    web["status"] = json!({"phase": "Pending"});
    server.add_unannounced(PODS, web);
    let conf = json!({
        "cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
        "agentSocket": socket, "timeoutSeconds": 10,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.9/24"}]}
    })
    .to_string();
    let args = ArgsBuilder::new()
        .container_id("sandbox-web")
        .unwrap()
        .netns("/var/run/netns/cni-fake-web")
        .ifname("eth0")
        .unwrap()
        .args("K8S_POD_NAMESPACE=fresh;K8S_POD_NAME=web;K8S_POD_UID=uid-web")
        .config(&conf)
        .unwrap()
        .build()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || NetpolCni::with_socket().add(args))
        .await
        .unwrap();
    assert!(out.is_ok(), "{out:?}");
    assert_eq!(
        applier.applies(&PodKey::new("fresh", "web")),
        1,
        "enforced before ADD returned"
    );
    let table = applier.table("cni-fake-web").unwrap();
    assert!(table.contains("table inet netpol"), "{table}");
    let gets: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| !r.is_watch() && r.path.contains("/namespaces/"))
        .map(|r| r.path)
        .collect();
    assert!(
        gets.contains(&"/api/v1/namespaces/fresh/pods/web".to_owned()),
        "{gets:?}"
    );
    assert!(
        gets.contains(&"/api/v1/namespaces/fresh".to_owned()),
        "{gets:?}"
    );
    // Every call the agent made (list, watch, get) is one api_calls() grants, and
    // together they are all of them.
    let mut seen = std::collections::BTreeSet::new();
    for r in server.requests() {
        let call = if r.path.contains("/namespaces/") {
            let resource = if r.path.contains("/pods/") {
                "pods"
            } else {
                "namespaces"
            };
            ("", resource, "get")
        } else {
            let res = WATCHED
                .iter()
                .find(|w| r.path.ends_with(&format!("/{}", w.resource)))
                .unwrap_or_else(|| panic!("unexpected request {r:?}"));
            (
                res.group,
                res.resource,
                if r.is_watch() { "watch" } else { "list" },
            )
        };
        seen.insert(call);
    }
    assert_eq!(seen, api_calls());
    agent.stop().await.unwrap();
}

/// The agent on the Kubernetes source of `server`, once its first full sync is applied.
async fn start_ready_agent(
    server: &ApiServer,
    config: enforcer::agent::AgentConfig,
    applier: Arc<enforcer::applier::RecordingApplier>,
) -> enforcer::agent::Agent {
    let agent = enforcer::agent::Agent::start_with_source(
        config,
        Box::new(enforcer::kube::KubeSource::new(server.client())),
        Arc::new(enforcer::agent::CompiledRulesets::default()),
        applier,
    )
    .await
    .unwrap();
    let start = Instant::now();
    while !agent.ready() {
        assert!(start.elapsed() < Duration::from_secs(20), "agent not ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent
}
