//! The Kubernetes source: Namespaces, Pods and NetworkPolicies from the API server.
//!
//! [`run_source`] runs one kube-rs [`watcher()`] per kind (list, then watch with bookmarks;
//! relist after `410 Gone`; reconnect with [`WatchStreamExt::default_backoff`]), slims
//! every object ([`slim`]) and turns watcher events into state events in one place,
//! [`Feed::handle`]. It sends them as [`Scan`]s, the same messages the manifest-directory
//! source sends, so the agent consumes both alike.
//!
//! **Fail closed.** Until every kind has been listed once, scans say `complete: false` and
//! the agent compiles nothing. A failing API server (unreachable, errors, a relist cut
//! short) changes nothing: the last known objects stay until a complete relist replaces
//! them. All Pods of the cluster are watched (peer sets need them); which are local is
//! decided by `spec.nodeName` in [`State::local_pods`](crate::state::State::local_pods).
//!
//! **Metrics.** [`run_source_with_metrics`] (which the agent uses through
//! [`StateSource::start_with_metrics`]) keeps the `netpol_watch_*` metrics per kind: errors,
//! complete lists, delivered events, synced, time of the last event (see
//! [`metrics`](crate::metrics)). kube-rs reports neither a watch that works again after
//! errors nor bookmarks, so each watcher's client reports the watch requests the API
//! server accepted ([`Feed::watching`]); bookmarks stay unseen.
//!
//! [`WATCHED`] and [`WATCH_VERBS`] are the API calls the source makes; the ClusterRole in
//! `manifests/` grants exactly those (a test compares them). [`snapshot`] lists live state
//! once, for `netpol explain --cluster`, with the other engines' policies of [`foreign`].
//!
//! ```no_run
//! # async fn f() -> Result<(), enforcer::kube::KubeError> {
//! let client = enforcer::kube::client(None, None).await?;
//! let (tx, mut rx) = tokio::sync::mpsc::channel(16);
//! tokio::spawn(enforcer::kube::run_source(client, tx));
//! while let Some(scan) = rx.recv().await {
//!     println!("{} events, complete: {}", scan.events.len(), scan.complete);
//! }
//! # Ok(()) }
//! ```

pub mod feed;
pub mod foreign;
pub mod slim;
pub mod snapshot;

use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;

use ::kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use ::kube::runtime::{WatchStreamExt, watcher};
use ::kube::{Api, Client, Config};

use futures::future::BoxFuture;
use futures::stream::{BoxStream, PollNext};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use policy_compiler::Located;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

pub use feed::Feed;
pub use slim::{
    slim_cluster_policy, slim_endpoint_slice, slim_namespace, slim_node, slim_pod, slim_policy,
    slim_service,
};

use crate::manifests::Scan;
use crate::metrics::Metrics;
use crate::source::{PodLookup, StateSource};
use crate::state::{Kind, Object, PodKey};

/// Errors of the Kubernetes source and of live listings.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file could not be read or parsed.
    #[error("cannot read kubeconfig")]
    Kubeconfig(#[source] KubeconfigError),
    /// The kubeconfig has no usable context, cluster or user.
    #[error("cannot use kubeconfig context {context:?}")]
    Context {
        /// The context asked for (`None`: the current context).
        context: Option<String>,
        /// The error.
        #[source]
        source: KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster service account is available.
    #[error("cannot find a kubeconfig or in-cluster configuration")]
    Infer(#[source] ::kube::config::InferConfigError),
    /// The client could not be built from the configuration (TLS, auth plugin).
    #[error("cannot build the Kubernetes client")]
    Client(#[source] ::kube::Error),
    /// A list call failed.
    #[error("cannot list {resource}")]
    List {
        /// Resource path segment (`pods`, `deployments`).
        resource: &'static str,
        /// The error.
        #[source]
        source: ::kube::Error,
    },
}

/// An API resource the source reads: group (empty for core), version and plural name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ApiResource {
    /// API group (`""` for core, `networking.k8s.io`).
    pub group: &'static str,
    /// Version (`v1`).
    pub version: &'static str,
    /// Plural resource name as in RBAC rules and URLs (`pods`).
    pub resource: &'static str,
}

const fn api_resource<K: k8s_openapi::Resource>() -> ApiResource {
    ApiResource {
        group: K::GROUP,
        version: K::VERSION,
        resource: K::URL_PATH_SEGMENT,
    }
}

/// The resources the agent's source watches, cluster-wide: exactly the types
/// [`run_source`] builds watchers for (see [`Watched`]).
pub const WATCHED: [ApiResource; 7] = [
    api_resource::<Namespace>(),
    api_resource::<Pod>(),
    api_resource::<NetworkPolicy>(),
    api_resource::<Service>(),
    api_resource::<EndpointSlice>(),
    api_resource::<Node>(),
    api_resource::<ClusterPolicyResource>(),
];

/// A `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy as a kube-rs resource (the
/// compiler's wire type, which may not depend on kube): cluster-scoped, plural
/// `clusternetworkpolicies`. Its CRD may not be installed: see [`watch_optional`].
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct ClusterPolicyResource(pub policy_compiler::cnp::ClusterNetworkPolicy);

impl k8s_openapi::Resource for ClusterPolicyResource {
    const API_VERSION: &'static str = policy_compiler::cnp::API_VERSION;
    const GROUP: &'static str = "policy.networking.k8s.io";
    const KIND: &'static str = policy_compiler::cnp::KIND;
    const VERSION: &'static str = "v1alpha2";
    const URL_PATH_SEGMENT: &'static str = "clusternetworkpolicies";
    type Scope = k8s_openapi::ClusterResourceScope;
}

impl k8s_openapi::Metadata for ClusterPolicyResource {
    type Ty = k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    fn metadata(&self) -> &Self::Ty {
        &self.0.metadata
    }
    fn metadata_mut(&mut self) -> &mut Self::Ty {
        &mut self.0.metadata
    }
}

/// The verbs a watcher uses on each of [`WATCHED`]: a (paginated) list, then watches.
pub const WATCH_VERBS: [&str; 2] = ["list", "watch"];

/// The single objects [`KubeLookup`] fetches (verb `get`): a Pod whose CNI `ADD` arrives
/// before the watch shows it, and its Namespace (whose labels namespaceSelectors read).
pub const LOOKED_UP: [ApiResource; 2] = [api_resource::<Pod>(), api_resource::<Namespace>()];

/// Every `(apiGroup, resource, verb)` the agent's source calls: what its RBAC must grant.
pub fn api_calls() -> std::collections::BTreeSet<(&'static str, &'static str, &'static str)> {
    WATCHED
        .iter()
        .flat_map(|r| WATCH_VERBS.iter().map(|v| (r.group, r.resource, *v)))
        .chain(LOOKED_UP.iter().map(|r| (r.group, r.resource, "get")))
        .collect()
}

/// Fetches a Pod and its Namespace with `get`, for a CNI `ADD` that is ahead of the
/// watch (the kubelet sets up a sandbox moments after the Pod is bound; the agent's
/// watch may not have seen the Pod, or its new Namespace, yet).
#[derive(Clone)]
pub struct KubeLookup {
    client: Client,
}

impl KubeLookup {
    /// A lookup through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl PodLookup for KubeLookup {
    fn lookup(&self, pod: PodKey) -> BoxFuture<'static, Result<Vec<Object>, String>> {
        let client = self.client.clone();
        Box::pin(async move {
            let pods: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace);
            let namespaces: Api<Namespace> = Api::all(client);
            let (p, ns) = tokio::join!(pods.get_opt(&pod.name), namespaces.get_opt(&pod.namespace));
            let mut out = Vec::new();
            match p {
                Ok(Some(p)) => out.push(p.into_object()),
                Ok(None) => return Err(format!("Pod {pod} does not exist in the API")),
                Err(e) => return Err(format!("get Pod {pod}: {e}")),
            }
            match ns {
                Ok(Some(ns)) => out.push(ns.into_object()),
                Ok(None) => {}
                Err(e) => return Err(format!("get Namespace {}: {e}", pod.namespace)),
            }
            Ok(out)
        })
    }
}

/// A kind the source watches: its state kind and how an API object becomes a (slim) state
/// object. Implemented for exactly the types of [`WATCHED`].
pub trait Watched:
    ::kube::Resource<DynamicType = ()>
    + k8s_openapi::Resource
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
    /// The state kind.
    const STATE_KIND: Kind;
    /// The slimmed object, unlocated (it comes from the API server).
    fn into_object(self) -> Object;
}

impl Watched for Namespace {
    const STATE_KIND: Kind = Kind::Namespace;
    fn into_object(self) -> Object {
        Object::Namespace(Located::unlocated(slim_namespace(self)))
    }
}

impl Watched for Pod {
    const STATE_KIND: Kind = Kind::Pod;
    fn into_object(self) -> Object {
        Object::Pod(Located::unlocated(slim_pod(self)))
    }
}

impl Watched for NetworkPolicy {
    const STATE_KIND: Kind = Kind::NetworkPolicy;
    fn into_object(self) -> Object {
        Object::NetworkPolicy(Located::unlocated(slim_policy(self)))
    }
}

impl Watched for Service {
    const STATE_KIND: Kind = Kind::Service;
    fn into_object(self) -> Object {
        Object::Service(Located::unlocated(slim_service(self)))
    }
}

impl Watched for EndpointSlice {
    const STATE_KIND: Kind = Kind::EndpointSlice;
    fn into_object(self) -> Object {
        Object::EndpointSlice(Located::unlocated(slim_endpoint_slice(self)))
    }
}

impl Watched for Node {
    const STATE_KIND: Kind = Kind::Node;
    fn into_object(self) -> Object {
        Object::Node(Located::unlocated(slim_node(self)))
    }
}

impl Watched for ClusterPolicyResource {
    const STATE_KIND: Kind = Kind::ClusterNetworkPolicy;
    fn into_object(self) -> Object {
        Object::ClusterNetworkPolicy(Located::unlocated(slim_cluster_policy(self.0)))
    }
}

/// What one kind's watcher reports.
// As large as the watcher's own items, which were passed unboxed before this enum.
#[allow(clippy::large_enum_variant)]
enum Signal {
    /// A watcher event or error.
    Watcher(Result<watcher::Event<Object>, watcher::Error>),
    /// The API server accepted a watch request (a 2xx answer to `?watch=true`).
    Watching,
}

type Item = (Kind, Signal);

fn map_event<K>(event: watcher::Event<K>, f: impl Fn(K) -> Object) -> watcher::Event<Object> {
    match event {
        watcher::Event::Apply(o) => watcher::Event::Apply(f(o)),
        watcher::Event::Delete(o) => watcher::Event::Delete(f(o)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(o) => watcher::Event::InitApply(f(o)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

fn is_watch(uri: &hyper::Uri) -> bool {
    uri.query().is_some_and(|q| {
        q.split('&')
            .any(|kv| matches!(kv, "watch=true" | "watch=1"))
    })
}

/// `client`, also sending `()` on `accepted` for every watch request the API server
/// answered with a success status (the stream is open). Errors and responses are passed
/// through unchanged.
fn report_watches(client: Client, accepted: mpsc::UnboundedSender<()>) -> Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |req: hyper::Request<::kube::client::Body>| {
        let client = client.clone();
        let accepted = accepted.clone();
        let watch = is_watch(req.uri());
        async move {
            let response = client.send(req).await?;
            if watch && response.status().is_success() {
                // The receiver is gone only when the watcher is.
                let _ = accepted.send(());
            }
            Ok::<_, ::kube::Error>(response)
        }
    });
    Client::new(service, namespace)
}

/// One kind's watcher: list + watch with bookmarks over all namespaces, relists on
/// `410 Gone`, retried with the default backoff (800 ms doubling to 30 s, jittered).
/// With `report`, accepted watch requests are reported too ([`Signal::Watching`]).
fn watch<K: Watched>(client: Client, report: bool) -> BoxStream<'static, Item> {
    debug_assert!(
        WATCHED.contains(&api_resource::<K>()),
        "RBAC covers every watched kind"
    );
    let (accepted, mut accepted_rx) = mpsc::unbounded_channel();
    let client = if report {
        report_watches(client, accepted)
    } else {
        client
    };
    let api: Api<K> = Api::all(client);
    let events = watcher(api, watcher::Config::default())
        .default_backoff()
        .map(|r| {
            (
                K::STATE_KIND,
                Signal::Watcher(r.map(|ev| map_event(ev, K::into_object))),
            )
        });
    let watching = stream::poll_fn(move |cx| accepted_rx.poll_recv(cx))
        .map(|()| (K::STATE_KIND, Signal::Watching));
    // `Watching` is sent before the watcher can read anything from that watch, so
    // polling it first keeps the order (an error read from the new watch comes after).
    stream::select_with_strategy(watching, events, |_: &mut ()| PollNext::Left).boxed()
}

/// True when a watcher error says the resource does not exist on the server (its CRD is
/// not installed): `404` on the list.
fn is_not_found(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(::kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(s)) => s.code == 404,
        _ => false,
    }
}

/// [`watch`] for a kind whose CRD may be absent (ClusterNetworkPolicy): a `404` is an
/// empty, complete list (the kind has no objects: nothing to enforce, and the source
/// still syncs), and the watcher keeps retrying with backoff, so objects appear once the
/// CRD is installed. Any other error is reported as usual. See: #13
fn watch_optional<K: Watched>(client: Client, report: bool) -> BoxStream<'static, Item> {
    watch::<K>(client, report)
        .flat_map(|(kind, signal)| match signal {
            Signal::Watcher(Err(e)) if is_not_found(&e) => {
                tracing::debug!(%kind, "resource not served (CRD not installed): none");
                stream::iter(vec![
                    (kind, Signal::Watcher(Ok(watcher::Event::Init))),
                    (kind, Signal::Watcher(Ok(watcher::Event::InitDone))),
                ])
                .boxed()
            }
            other => stream::iter(vec![(kind, other)]).boxed(),
        })
        .boxed()
}

/// The Kubernetes API as the agent's [`StateSource`]: [`run_source`] on a task, or
/// [`run_source_with_metrics`] when started with the agent's metrics.
pub struct KubeSource {
    client: Client,
}

impl KubeSource {
    /// A source reading through `client`.
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl StateSource for KubeSource {
    fn start(self: Box<Self>) -> mpsc::Receiver<Scan> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_source(self.client, tx));
        rx
    }

    fn start_with_metrics(self: Box<Self>, metrics: Arc<Metrics>) -> mpsc::Receiver<Scan> {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(run_source_with_metrics(self.client, tx, metrics));
        rx
    }

    fn describe(&self) -> String {
        "kubernetes API".to_owned()
    }

    fn lookup(&self) -> Option<Arc<dyn PodLookup>> {
        Some(Arc::new(KubeLookup::new(self.client.clone())))
    }
}

/// Runs the source until `tx` is closed: watches [`WATCHED`] and sends what changed as
/// [`Scan`]s (events that arrive together are batched into one scan). Errors are logged
/// and retried with backoff; they never change the state (fail closed).
pub async fn run_source(client: Client, tx: mpsc::Sender<Scan>) {
    run(client, tx, None).await;
}

/// [`run_source`], keeping the `netpol_watch_*` metrics in `metrics`.
pub async fn run_source_with_metrics(
    client: Client,
    tx: mpsc::Sender<Scan>,
    metrics: Arc<Metrics>,
) {
    run(client, tx, Some(metrics)).await;
}

async fn run(client: Client, tx: mpsc::Sender<Scan>, metrics: Option<Arc<Metrics>>) {
    let report = metrics.is_some();
    let streams = vec![
        watch::<Namespace>(client.clone(), report),
        watch::<Pod>(client.clone(), report),
        watch::<NetworkPolicy>(client.clone(), report),
        watch::<Service>(client.clone(), report),
        watch::<EndpointSlice>(client.clone(), report),
        watch::<Node>(client.clone(), report),
        watch_optional::<ClusterPolicyResource>(client, report),
    ];
    let mut feed = Feed::new([
        Namespace::STATE_KIND,
        Pod::STATE_KIND,
        NetworkPolicy::STATE_KIND,
        Service::STATE_KIND,
        EndpointSlice::STATE_KIND,
        Node::STATE_KIND,
        ClusterPolicyResource::STATE_KIND,
    ]);
    if let Some(metrics) = metrics {
        feed = feed.with_metrics(metrics);
    }
    let mut batches = stream::select_all(streams).ready_chunks(1024);
    let mut sent_complete = false;
    loop {
        let batch = tokio::select! {
            () = tx.closed() => return,
            batch = batches.next() => match batch {
                Some(b) => b,
                None => return,
            },
        };
        let mut events = Vec::new();
        for (kind, item) in batch {
            match item {
                Signal::Watcher(Ok(ev)) => events.extend(feed.handle(kind, ev)),
                Signal::Watcher(Err(error)) => {
                    feed.error(kind);
                    tracing::warn!(
                        %kind,
                        error = %error,
                        "kubernetes watch failed: keeping the last known state, retrying with backoff"
                    );
                }
                Signal::Watching => feed.watching(kind),
            }
        }
        let complete = feed.synced();
        if events.is_empty() && complete == sent_complete {
            continue;
        }
        if complete && !sent_complete {
            tracing::info!("kubernetes source synced: every kind listed");
        }
        sent_complete = complete;
        let scan = Scan {
            events,
            complete,
            ..Scan::default()
        };
        if tx.send(scan).await.is_err() {
            return;
        }
    }
}

/// Builds a client: from `kubeconfig` (or `$KUBECONFIG`, `~/.kube/config`) with `context`
/// (or the current context); without either, the first of `$KUBECONFIG`,
/// `~/.kube/config` and the in-cluster service account that exists.
pub async fn client(kubeconfig: Option<&Path>, context: Option<&str>) -> Result<Client, KubeError> {
    let options = KubeConfigOptions {
        context: context.map(str::to_owned),
        ..KubeConfigOptions::default()
    };
    let config = match (kubeconfig, context) {
        (Some(path), _) => {
            let file = Kubeconfig::read_from(path).map_err(KubeError::Kubeconfig)?;
            Config::from_custom_kubeconfig(file, &options)
                .await
                .map_err(|source| KubeError::Context {
                    context: options.context.clone(),
                    source,
                })?
        }
        (None, Some(_)) => {
            Config::from_kubeconfig(&options)
                .await
                .map_err(|source| KubeError::Context {
                    context: options.context.clone(),
                    source,
                })?
        }
        (None, None) => Config::infer().await.map_err(KubeError::Infer)?,
    };
    Client::try_from(config).map_err(KubeError::Client)
}
