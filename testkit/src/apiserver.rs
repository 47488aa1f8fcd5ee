//! An in-process fake Kubernetes API server speaking the list/watch wire format, for
//! testing kube client code without a cluster.
//!
//! `GET <collection>` answers a `<Kind>List` with `metadata.resourceVersion`, paginated
//! with `limit` / `continue` as the real server does;
//! `GET <collection>?watch=true&resourceVersion=N` answers a chunked stream of
//! newline-delimited `{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...}`,
//! replaying the events after N first (like etcd's watch cache). The test mutates objects
//! (every change gets a new resourceVersion and goes to open watches), sends bookmarks,
//! closes watch streams, compacts history (watches from older versions get an ERROR
//! `410 Gone`, as the real server does after etcd compaction), and stops or restarts the
//! whole server. `GET /api/v1/namespaces/{ns}/pods/{name}` and
//! `GET /api/v1/namespaces/{name}` answer one object (404 Status when absent), and an
//! object can be stored without being announced to watches (a Pod the watch has not
//! delivered yet). `GET /apis` and `GET /apis/{group}/{version}` answer discovery
//! documents derived from the served collections; [`ApiServer::add_crd`] serves a custom
//! resource, [`ApiServer::fail`] makes a collection's lists fail, and lists asked for
//! metadata only (`Accept: ...;as=PartialObjectMetadataList`) get metadata only. Every
//! request is recorded.
//!
//! Used by the enforcer and cli tests and the `kube_memory` example.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Collections served, with their kind and apiVersion.
pub const COLLECTIONS: &[(&str, &str, &str)] = &[
    ("/api/v1/namespaces", "Namespace", "v1"),
    ("/api/v1/pods", "Pod", "v1"),
    (
        "/api/v1/replicationcontrollers",
        "ReplicationController",
        "v1",
    ),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "NetworkPolicy",
        "networking.k8s.io/v1",
    ),
    ("/api/v1/services", "Service", "v1"),
    ("/api/v1/nodes", "Node", "v1"),
    (
        "/apis/discovery.k8s.io/v1/endpointslices",
        "EndpointSlice",
        "discovery.k8s.io/v1",
    ),
    ("/apis/apps/v1/deployments", "Deployment", "apps/v1"),
    ("/apis/apps/v1/replicasets", "ReplicaSet", "apps/v1"),
    ("/apis/apps/v1/statefulsets", "StatefulSet", "apps/v1"),
    ("/apis/apps/v1/daemonsets", "DaemonSet", "apps/v1"),
    ("/apis/batch/v1/jobs", "Job", "batch/v1"),
    ("/apis/batch/v1/cronjobs", "CronJob", "batch/v1"),
    (
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
        "ClusterNetworkPolicy",
        "policy.networking.k8s.io/v1alpha2",
    ),
];

pub const PODS: &str = "/api/v1/pods";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const POLICIES: &str = "/apis/networking.k8s.io/v1/networkpolicies";
/// ClusterNetworkPolicies (a CRD: [`ApiServer::uninstall`] makes it 404 like a cluster
/// without the CRD).
pub const CLUSTER_POLICIES: &str = "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies";

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// The `Accept` header (`as=PartialObjectMetadataList` for metadata-only lists).
    pub accept: String,
    pub query: BTreeMap<String, String>,
}

impl Recorded {
    pub fn is_watch(&self) -> bool {
        matches!(
            self.query.get("watch").map(String::as_str),
            Some("true" | "1")
        )
    }
}

#[derive(Default)]
struct Collection {
    kind: String,
    api_version: String,
    /// Cluster-scoped kinds say `namespaced: false` in discovery.
    cluster_scoped: bool,
    /// Lists answer this status code (403, 500) instead of the items.
    fail: Option<u16>,
    items: BTreeMap<(String, String), Value>,
    /// Events by resourceVersion, for replay to watches that start behind.
    history: Vec<(u64, Bytes)>,
    /// Watches from a resourceVersion below this get `410 Gone`.
    compacted: u64,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct Inner {
    rv: u64,
    collections: BTreeMap<String, Collection>,
    requests: Vec<Recorded>,
}

/// The fake server. Dropping it stops it.
pub struct ApiServer {
    addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The collection and key of a single-object path (Pods and Namespaces).
fn single_object(path: &str) -> Option<(&'static str, (String, String))> {
    let rest = path.strip_prefix("/api/v1/namespaces/")?;
    match rest.split('/').collect::<Vec<_>>().as_slice() {
        [ns, "pods", name] => Some((PODS, ((*ns).to_owned(), (*name).to_owned()))),
        [name] if !name.is_empty() => Some((NAMESPACES, (String::new(), (*name).to_owned()))),
        _ => None,
    }
}

fn key_of(obj: &Value) -> (String, String) {
    let m = &obj["metadata"];
    (
        m["namespace"].as_str().unwrap_or("").to_owned(),
        m["name"].as_str().unwrap_or("").to_owned(),
    )
}

fn line(v: &Value) -> Bytes {
    let mut s = v.to_string();
    s.push('\n');
    Bytes::from(s)
}

fn gone_status() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version", "reason": "Expired", "code": 410
    })
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, v: &Value) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
    *r.status_mut() = status;
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn streaming(rx: mpsc::UnboundedReceiver<Bytes>) -> Response<Body> {
    let s = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut r = Response::new(StreamBody::new(s).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

fn handle(inner: &Mutex<Inner>, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let rec = Recorded {
        method: req.method().to_string(),
        path: path.clone(),
        accept: accept.clone(),
        query: query.clone(),
    };
    let watch = rec.is_watch();
    let mut g = inner.lock().unwrap();
    g.requests.push(rec);
    let rv = g.rv;
    if let Some((collection, key)) = single_object(&path)
        && req.method() == hyper::Method::GET
    {
        return match g
            .collections
            .get(collection)
            .and_then(|c| c.items.get(&key))
        {
            Some(obj) => full(StatusCode::OK, obj),
            None => full(
                StatusCode::NOT_FOUND,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
            ),
        };
    }
    if let Some(d) = discovery(&g.collections, &path) {
        return full(StatusCode::OK, &d);
    }
    let Some(c) = g.collections.get_mut(&path) else {
        return full(
            StatusCode::NOT_FOUND,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}),
        );
    };
    if req.method() != hyper::Method::GET {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"kind": "Status", "code": 405}),
        );
    }
    if let Some(code) = c.fail {
        return full(
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "injected failure", "code": code}),
        );
    }
    if !watch {
        // Paginated like the real server: `limit` items from the `continue` token (here
        // the offset), `metadata.continue` while more remain.
        let from: usize = query
            .get("continue")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0);
        let limit: usize = query
            .get("limit")
            .and_then(|l| l.parse().ok())
            .filter(|l| *l > 0)
            .unwrap_or(usize::MAX);
        let metadata_only = accept.contains("as=PartialObjectMetadataList");
        let items: Vec<Value> = c
            .items
            .values()
            .skip(from)
            .take(limit)
            .map(|o| {
                if metadata_only {
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": o["metadata"]})
                } else {
                    o.clone()
                }
            })
            .collect();
        let next = from.saturating_add(items.len());
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if next < c.items.len() {
            metadata["continue"] = json!(next.to_string());
            metadata["remainingItemCount"] = json!(c.items.len() - next);
        }
        return full(
            StatusCode::OK,
            &json!({
                "kind": format!("{}List", c.kind), "apiVersion": c.api_version,
                "metadata": metadata, "items": items
            }),
        );
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let (tx, rx) = mpsc::unbounded_channel();
    if from < c.compacted {
        let _ = tx.send(line(&json!({"type": "ERROR", "object": gone_status()})));
        return streaming(rx); // tx dropped: the stream ends after the error
    }
    for (at, l) in &c.history {
        if *at > from {
            let _ = tx.send(l.clone());
        }
    }
    c.watchers.push(tx);
    streaming(rx)
}

/// The group, version and resource (plural) of a collection path under `/apis`.
fn group_version_resource(path: &str) -> Option<(&str, &str, &str)> {
    let mut it = path.strip_prefix("/apis/")?.split('/');
    match (it.next(), it.next(), it.next(), it.next()) {
        (Some(g), Some(v), Some(r), None) => Some((g, v, r)),
        _ => None,
    }
}

/// Discovery documents derived from the served collections: `GET /apis` (APIGroupList,
/// the first version of a group preferred) and `GET /apis/{group}/{version}`
/// (APIResourceList). `None` for other paths.
fn discovery(collections: &BTreeMap<String, Collection>, path: &str) -> Option<Value> {
    let served = || {
        collections
            .iter()
            .filter_map(|(p, c)| group_version_resource(p).map(|gvr| (gvr, c)))
    };
    if path == "/apis" {
        let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for ((g, v, _), _) in served() {
            let vs = groups.entry(g).or_default();
            if !vs.contains(&v) {
                vs.push(v);
            }
        }
        let groups: Vec<Value> = groups
            .into_iter()
            .map(|(g, vs)| {
                let versions: Vec<Value> = vs
                    .iter()
                    .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
                    .collect();
                json!({"name": g, "versions": versions, "preferredVersion": versions[0]})
            })
            .collect();
        return Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
    }
    let gv = path.strip_prefix("/apis/")?;
    let (group, version) = gv.split_once('/')?;
    if version.contains('/') {
        return None;
    }
    let resources: Vec<Value> = served()
        .filter(|((g, v, _), _)| *g == group && *v == version)
        .map(|((_, _, r), c)| {
            json!({"name": r, "singularName": "", "namespaced": !c.cluster_scoped, "kind": c.kind,
                   "verbs": ["get", "list", "watch"]})
        })
        .collect();
    (!resources.is_empty()).then(|| {
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
    })
}

/// Whether a kind of [`COLLECTIONS`] is cluster-scoped.
fn cluster_scoped(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Node" | "ClusterNetworkPolicy")
}

impl ApiServer {
    /// Serves a custom resource at `path` (`/apis/{group}/{version}/{plural}`) of `kind`
    /// (its CRD is installed): listed, watched and in discovery.
    pub fn add_crd(&self, path: &str, kind: &str, cluster_scoped: bool) {
        let (g, v, _) =
            group_version_resource(path).expect("a path /apis/{group}/{version}/{plural}");
        let api_version = format!("{g}/{v}");
        self.inner.lock().unwrap().collections.insert(
            path.to_owned(),
            Collection {
                kind: kind.to_owned(),
                api_version,
                cluster_scoped,
                ..Collection::default()
            },
        );
    }

    /// Makes every list of `path` answer `code` (403 forbidden, 500) from now on.
    pub fn fail(&self, path: &str, code: u16) {
        self.inner
            .lock()
            .unwrap()
            .collections
            .get_mut(path)
            .expect("known collection")
            .fail = Some(code);
    }

    /// Starts an empty server on 127.0.0.1 (a free port).
    /// Stops serving a collection (its list answers 404, as for a CRD that is not
    /// installed).
    pub fn remove_collection(&self, path: &str) {
        self.inner.lock().unwrap().collections.remove(path);
    }

    pub async fn start() -> ApiServer {
        let mut inner = Inner {
            rv: 1,
            ..Inner::default()
        };
        for (path, kind, api) in COLLECTIONS {
            inner.collections.insert(
                (*path).to_owned(),
                Collection {
                    kind: (*kind).to_owned(),
                    api_version: (*api).to_owned(),
                    cluster_scoped: cluster_scoped(kind),
                    ..Collection::default()
                },
            );
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = ApiServer {
            addr,
            inner: Arc::new(Mutex::new(inner)),
            task: Mutex::new(None),
        };
        server.serve(listener);
        server
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let inner = self.inner.clone();
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let inner = inner.clone();
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let r = handle(&inner, &req);
                        async move { Ok::<_, Infallible>(r) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        *self.task.lock().unwrap() = Some(task);
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client for this server (no auth, no TLS).
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// A kubeconfig file text with one context, `name`, pointing at this server.
    pub fn kubeconfig(&self, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster: {{server: \"{}\"}}\nusers:\n- name: {name}\n  user: {{}}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: {name}}}\ncurrent-context: {name}\n",
            self.url()
        )
    }

    fn record(&self, path: &str, typ: &str, mut obj: Value) -> u64 {
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let c = g.collections.get_mut(path).expect("known collection");
        if obj.get("kind").is_none() {
            obj["kind"] = json!(c.kind);
            obj["apiVersion"] = json!(c.api_version);
        }
        let key = key_of(&obj);
        if typ == "DELETED" {
            c.items.remove(&key);
        } else {
            c.items.insert(key, obj.clone());
        }
        let l = line(&json!({"type": typ, "object": obj}));
        c.history.push((rv, l.clone()));
        c.watchers.retain(|w| w.send(l.clone()).is_ok());
        rv
    }

    /// Adds an object (ADDED to watches). Returns its resourceVersion.
    pub fn add(&self, path: &str, obj: Value) -> u64 {
        self.record(path, "ADDED", obj)
    }

    /// Replaces an object (MODIFIED).
    pub fn modify(&self, path: &str, obj: Value) -> u64 {
        self.record(path, "MODIFIED", obj)
    }

    /// Deletes the object `namespace/name` (DELETED with its last state).
    pub fn delete(&self, path: &str, namespace: &str, name: &str) -> u64 {
        let obj = {
            let g = self.inner.lock().unwrap();
            g.collections[path]
                .items
                .get(&(namespace.to_owned(), name.to_owned()))
                .cloned()
                .expect("object exists")
        };
        self.record(path, "DELETED", obj)
    }

    /// Sends a BOOKMARK at a new resourceVersion (no object changes). Returns it.
    pub fn bookmark(&self, path: &str) -> u64 {
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        let c = g.collections.get_mut(path).expect("known collection");
        let l = line(&json!({"type": "BOOKMARK", "object": {
            "kind": c.kind, "apiVersion": c.api_version,
            "metadata": {"resourceVersion": rv.to_string()}
        }}));
        c.watchers.retain(|w| w.send(l.clone()).is_ok());
        rv
    }

    /// Stores `obj` in `path` without an event: `GET` sees it, lists too, open watches
    /// do not (yet).
    pub fn add_unannounced(&self, path: &str, mut obj: Value) {
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(g.rv.to_string());
        let c = g.collections.get_mut(path).expect("known collection");
        if obj.get("kind").is_none() {
            obj["kind"] = json!(c.kind);
            obj["apiVersion"] = json!(c.api_version);
        }
        c.items.insert(key_of(&obj), obj);
    }

    /// Closes every open watch of `path` (the client sees the stream end).
    pub fn disconnect(&self, path: &str) {
        let mut g = self.inner.lock().unwrap();
        g.collections
            .get_mut(path)
            .expect("known collection")
            .watchers
            .clear();
    }

    /// Replaces the collection's objects *without* watch events (changes lost in a gap)
    /// and compacts its history: open watches get ERROR 410 and close, and watches from
    /// any older resourceVersion get 410 too, so clients must relist.
    pub fn compact_with(&self, path: &str, items: Vec<Value>) {
        let mut g = self.inner.lock().unwrap();
        g.rv += 1;
        let rv = g.rv;
        let c = g.collections.get_mut(path).expect("known collection");
        c.items.clear();
        for mut obj in items {
            if obj.get("kind").is_none() {
                obj["kind"] = json!(c.kind);
                obj["apiVersion"] = json!(c.api_version);
            }
            obj["metadata"]["resourceVersion"] = json!(rv.to_string());
            c.items.insert(key_of(&obj), obj);
        }
        c.history.clear();
        c.compacted = rv;
        let l = line(&json!({"type": "ERROR", "object": gone_status()}));
        for w in c.watchers.drain(..) {
            let _ = w.send(l.clone());
        }
    }

    /// Stops serving collection `path` (its CRD is deleted): lists and watches get `404`,
    /// open watches end, its objects are gone.
    pub fn uninstall(&self, path: &str) {
        self.inner.lock().unwrap().collections.remove(path);
    }

    /// Serves collection `path` again, empty (its CRD is installed).
    pub fn install(&self, path: &str) {
        let Some((path, kind, api)) = COLLECTIONS.iter().find(|c| c.0 == path) else {
            panic!("unknown collection {path}");
        };
        self.inner.lock().unwrap().collections.insert(
            (*path).to_owned(),
            Collection {
                kind: (*kind).to_owned(),
                api_version: (*api).to_owned(),
                cluster_scoped: cluster_scoped(kind),
                ..Collection::default()
            },
        );
    }

    /// Number of open watches of `path`.
    pub fn watchers(&self, path: &str) -> usize {
        let mut g = self.inner.lock().unwrap();
        let c = g.collections.get_mut(path).expect("known collection");
        c.watchers.retain(|w| !w.is_closed());
        c.watchers.len()
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// Stops listening and drops every connection (the API server is unreachable).
    pub fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap().take() {
            task.abort();
        }
        let mut g = self.inner.lock().unwrap();
        for c in g.collections.values_mut() {
            c.watchers.clear();
        }
    }

    /// Listens again on the same address, with the same objects.
    pub async fn restart(&self) {
        self.stop();
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        };
        self.serve(listener);
    }
}
