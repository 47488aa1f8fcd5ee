//! The state index: every object the agent knows, by key, fed in one place.
//!
//! [`State`] is a plain struct with synchronous [`State::apply`], [`State::delete`] and
//! [`State::reset`] (the shape of a watch stream: added/modified, deleted, relisted), plus
//! the Pod-to-netns mapping. Sources (the manifest directory, the Kubernetes watches,
//! the CNI plugin's requests) turn what they see into [`Event`]s; the agent feeds them to [`State::handle`] in one
//! place. [`State::inputs`] gives the compiler its [`Inputs`], in key order, so the same
//! state always compiles to the same rulesets.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodIP, PodStatus, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use policy_compiler::cnp::ClusterNetworkPolicy;
use policy_compiler::{
    Diagnostic, Inputs, Located, Model, ModelChange, Origin, Patched, Workload, WorkloadKind,
};

use crate::trust::{self, NetnsTrust};

/// Annotation on a Pod naming its network namespace (`/var/run/netns/<name>`).
pub const NETNS_ANNOTATION: &str = "netpol.io/netns";

/// The kinds the state holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// v1 Namespace (cluster-scoped).
    Namespace,
    /// v1 Pod.
    Pod,
    /// A workload controller.
    Workload(WorkloadKind),
    /// networking.k8s.io/v1 NetworkPolicy.
    NetworkPolicy,
    /// v1 Service.
    Service,
    /// discovery.k8s.io/v1 EndpointSlice.
    EndpointSlice,
    /// v1 Node (cluster-scoped).
    Node,
    /// policy.networking.k8s.io/v1alpha2 ClusterNetworkPolicy (cluster-scoped).
    ClusterNetworkPolicy,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::Namespace => f.write_str("Namespace"),
            Kind::Pod => f.write_str("Pod"),
            Kind::Workload(k) => f.write_str(k.kind()),
            Kind::NetworkPolicy => f.write_str("NetworkPolicy"),
            Kind::Service => f.write_str("Service"),
            Kind::EndpointSlice => f.write_str("EndpointSlice"),
            Kind::Node => f.write_str("Node"),
            Kind::ClusterNetworkPolicy => f.write_str("ClusterNetworkPolicy"),
        }
    }
}

/// Identifies an object: kind, namespace (empty for Namespaces) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// Kind.
    pub kind: Kind,
    /// Namespace; `default` when the object names none; empty for Namespaces.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A Pod, by namespace and name (`ns/name`, the compiler's endpoint key of a Pod).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
}

impl PodKey {
    /// A key from its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of the Pod object.
    pub fn object_key(&self) -> ObjectKey {
        ObjectKey {
            kind: Kind::Pod,
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Parses `ns/name`.
    pub fn parse(s: &str) -> Option<Self> {
        let (ns, name) = s.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| Self::new(ns, name))
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One object with where it came from.
#[derive(Debug, Clone)]
pub enum Object {
    /// A Namespace.
    Namespace(Located<Namespace>),
    /// A Pod.
    Pod(Located<Pod>),
    /// A workload controller.
    Workload(Located<Workload>),
    /// A NetworkPolicy.
    NetworkPolicy(Located<NetworkPolicy>),
    /// A Service.
    Service(Located<Service>),
    /// An EndpointSlice.
    EndpointSlice(Located<EndpointSlice>),
    /// A Node.
    Node(Located<Node>),
    /// A ClusterNetworkPolicy.
    ClusterNetworkPolicy(Located<ClusterNetworkPolicy>),
}

fn namespaced(meta: &ObjectMeta) -> String {
    meta.namespace.clone().unwrap_or_else(|| "default".into())
}

impl Object {
    /// Every object of `inputs`, in the order read.
    pub fn all(inputs: Inputs) -> Vec<Object> {
        let mut out = Vec::new();
        out.extend(inputs.namespaces.into_iter().map(Object::Namespace));
        out.extend(inputs.pods.into_iter().map(Object::Pod));
        out.extend(inputs.workloads.into_iter().map(Object::Workload));
        out.extend(inputs.policies.into_iter().map(Object::NetworkPolicy));
        out.extend(inputs.services.into_iter().map(Object::Service));
        out.extend(
            inputs
                .endpoint_slices
                .into_iter()
                .map(Object::EndpointSlice),
        );
        out.extend(inputs.nodes.into_iter().map(Object::Node));
        out.extend(
            inputs
                .cluster_policies
                .into_iter()
                .map(Object::ClusterNetworkPolicy),
        );
        out
    }

    fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.object.metadata,
            Object::Pod(o) => &o.object.metadata,
            Object::Workload(o) => &o.object.metadata,
            Object::NetworkPolicy(o) => &o.object.metadata,
            Object::Service(o) => &o.object.metadata,
            Object::EndpointSlice(o) => &o.object.metadata,
            Object::Node(o) => &o.object.metadata,
            Object::ClusterNetworkPolicy(o) => &o.object.metadata,
        }
    }

    /// The object's key.
    pub fn key(&self) -> ObjectKey {
        let meta = self.meta();
        let name = meta.name.clone().unwrap_or_default();
        let (kind, namespace) = match self {
            Object::Namespace(_) => (Kind::Namespace, String::new()),
            Object::Pod(_) => (Kind::Pod, namespaced(meta)),
            Object::Workload(w) => (Kind::Workload(w.object.kind), namespaced(meta)),
            Object::NetworkPolicy(_) => (Kind::NetworkPolicy, namespaced(meta)),
            Object::Service(_) => (Kind::Service, namespaced(meta)),
            Object::EndpointSlice(_) => (Kind::EndpointSlice, namespaced(meta)),
            Object::Node(_) => (Kind::Node, String::new()),
            Object::ClusterNetworkPolicy(_) => (Kind::ClusterNetworkPolicy, String::new()),
        };
        ObjectKey {
            kind,
            namespace,
            name,
        }
    }

    /// Where the object came from (`None` for objects from the API server).
    pub fn origin(&self) -> Option<&Origin> {
        match self {
            Object::Namespace(o) => o.origin.as_ref(),
            Object::Pod(o) => o.origin.as_ref(),
            Object::Workload(o) => o.origin.as_ref(),
            Object::NetworkPolicy(o) => o.origin.as_ref(),
            Object::Service(o) => o.origin.as_ref(),
            Object::EndpointSlice(o) => o.origin.as_ref(),
            Object::Node(o) => o.origin.as_ref(),
            Object::ClusterNetworkPolicy(o) => o.origin.as_ref(),
        }
    }

    /// True when both are the same object with the same content (origins ignored).
    pub fn same_content(&self, other: &Object) -> bool {
        match (self, other) {
            (Object::Namespace(a), Object::Namespace(b)) => a.object == b.object,
            (Object::Pod(a), Object::Pod(b)) => a.object == b.object,
            (Object::Workload(a), Object::Workload(b)) => {
                a.object.kind == b.object.kind
                    && a.object.metadata == b.object.metadata
                    && a.object.template == b.object.template
                    && a.object.replicas == b.object.replicas
            }
            (Object::NetworkPolicy(a), Object::NetworkPolicy(b)) => a.object == b.object,
            (Object::Service(a), Object::Service(b)) => a.object == b.object,
            (Object::EndpointSlice(a), Object::EndpointSlice(b)) => a.object == b.object,
            (Object::Node(a), Object::Node(b)) => a.object == b.object,
            (Object::ClusterNetworkPolicy(a), Object::ClusterNetworkPolicy(b)) => {
                a.object == b.object
            }
            _ => false,
        }
    }

    /// The netns named by the Pod's `netpol.io/netns` annotation.
    fn netns_annotation(&self) -> Option<&str> {
        match self {
            Object::Pod(p) => p
                .object
                .metadata
                .annotations
                .as_ref()?
                .get(NETNS_ANNOTATION)
                .map(String::as_str),
            _ => None,
        }
    }

    fn node_name(&self) -> Option<&str> {
        match self {
            Object::Pod(p) => p.object.spec.as_ref()?.node_name.as_deref(),
            _ => None,
        }
    }
}

/// A change seen by a source.
#[derive(Debug, Clone)]
pub enum Event {
    /// An object was added or modified (shared: objects are large, and a source that
    /// keeps its objects, like the manifest directory, shares them with the state).
    Apply(Arc<Object>),
    /// An object is gone.
    Delete(ObjectKey),
    /// The complete set of objects (a relist): everything else is gone.
    Reset(Vec<Arc<Object>>),
    /// The Pod-to-netns mapping file changed (replaces the previous mapping).
    NetnsMap(BTreeMap<PodKey, String>),
    /// The CNI plugin set up a Pod's sandbox (`ADD`).
    CniAdd(PodKey, CniRecord),
    /// The CNI plugin tore a Pod's sandbox down (`DEL`).
    CniDel {
        /// The Pod.
        pod: PodKey,
        /// The sandbox; a `DEL` of another (older) sandbox changes nothing.
        container_id: String,
    },
}

/// What the CNI plugin reported for a Pod's sandbox: the kernel's truth on this node,
/// known before the API server shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniRecord {
    /// The sandbox (`CNI_CONTAINERID`).
    pub container_id: String,
    /// The netns handle ([`crate::netns`]: a name in `/var/run/netns`, or a path).
    pub netns: String,
    /// The Pod's addresses.
    pub ips: Vec<IpAddr>,
    /// The Pod's UID, when the runtime passed it: a record applies to that incarnation
    /// of the Pod only (a StatefulSet Pod recreated under the same name is another).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// A Pod's CNI state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CniEntry {
    /// The sandbox is up.
    Live(CniRecord),
    /// The sandbox was torn down: the Pod holds no address on this node any more (its
    /// IP may already be another Pod's), whatever the API server still says.
    Gone {
        /// The sandbox that was torn down.
        container_id: String,
        /// The Pod's UID as recorded.
        uid: Option<String>,
    },
}

/// What changed for the model since [`State::take_model_changes`]: the Pods (objects
/// or CNI records) and Namespaces a [`Model::patch`] takes again. See: #12
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModelDelta {
    /// Pods whose object or CNI entry changed.
    pub pods: BTreeSet<PodKey>,
    /// Namespaces whose object changed.
    pub namespaces: BTreeSet<String>,
}

impl ModelDelta {
    /// True when nothing the model reads changed.
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.namespaces.is_empty()
    }
}

/// Every known object by key, the Pod-to-netns mapping and the CNI records.
#[derive(Debug, Default, Clone)]
pub struct State {
    /// Behind a pointer: a Pod is about 2.3 KB inline (k8s-openapi types), and B-tree
    /// nodes keep spare slots; a pointer keeps the slack at a pointer per slot. Shared
    /// (`Arc`) with the source that keeps the same object (the manifest directory's
    /// last good files), so an object is held once, not once per holder. See: #12
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    netns_map: BTreeMap<PodKey, String>,
    cni: BTreeMap<PodKey, CniEntry>,
    discovered: BTreeMap<PodKey, String>,
    generation: u64,
    netns_trust: NetnsTrust,
    /// What changed for the model since the last [`State::take_model_changes`];
    /// `None` when something a patch does not follow changed (any other kind, a
    /// relist), or before the first take.
    model_changes: Option<ModelDelta>,
}

fn uid_of(obj: &Object) -> Option<&str> {
    match obj {
        Object::Pod(p) => p.object.metadata.uid.as_deref(),
        _ => None,
    }
}

/// Whether a record made for `record_uid` applies to a Pod object with `object_uid`
/// (unknown on either side: it does).
fn same_incarnation(record_uid: Option<&str>, object_uid: Option<&str>) -> bool {
    match (record_uid, object_uid) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

impl State {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies an event; the one entry point sources use. Returns whether anything
    /// changed.
    pub fn handle(&mut self, event: Event) -> bool {
        match event {
            Event::Apply(obj) => self.apply_shared(obj),
            Event::Delete(key) => self.delete(&key),
            Event::Reset(objs) => self.reset_shared(objs),
            Event::NetnsMap(map) => self.set_netns_map(map),
            Event::CniAdd(pod, record) => self.cni_add(pod, record),
            Event::CniDel { pod, container_id } => self.cni_del(&pod, &container_id),
        }
    }

    /// Records a sandbox set up by the CNI plugin. Returns whether anything changed.
    pub fn cni_add(&mut self, pod: PodKey, record: CniRecord) -> bool {
        let entry = CniEntry::Live(record);
        let changed = self.cni.get(&pod) != Some(&entry);
        if changed {
            self.note_pod(&pod);
        }
        self.cni.insert(pod, entry);
        self.bump(changed)
    }

    /// Records that a sandbox was torn down; a `DEL` of a sandbox other than the
    /// recorded one (a late `DEL` of an older sandbox) changes nothing. Returns whether
    /// anything changed.
    pub fn cni_del(&mut self, pod: &PodKey, container_id: &str) -> bool {
        let uid = match self.cni.get(pod) {
            Some(CniEntry::Live(r)) if r.container_id == container_id => r.uid.clone(),
            _ => return false,
        };
        self.cni.insert(
            pod.clone(),
            CniEntry::Gone {
                container_id: container_id.to_owned(),
                uid,
            },
        );
        self.note_pod(pod);
        let changed = true;
        self.bump(changed)
    }

    /// Replaces the netns found by IP ([`crate::discovery`]), the last fallback of
    /// [`State::local_pods`]. Returns whether it changed.
    pub fn set_discovered(&mut self, map: BTreeMap<PodKey, String>) -> bool {
        let changed = map != self.discovered;
        self.discovered = map;
        self.bump(changed)
    }

    /// The netns found by IP.
    pub fn discovered(&self) -> &BTreeMap<PodKey, String> {
        &self.discovered
    }

    /// Forgets a Pod's CNI entry (its namespace is gone). Returns whether it was there.
    pub fn cni_forget(&mut self, pod: &PodKey) -> bool {
        let changed = self.cni.remove(pod).is_some();
        if changed {
            self.note_pod(pod);
        }
        self.bump(changed)
    }

    /// The CNI entries.
    pub fn cni(&self) -> &BTreeMap<PodKey, CniEntry> {
        &self.cni
    }

    /// Drops tombstones of Pods that are gone from the index (they no longer change
    /// anything; not a content change).
    pub fn prune_cni(&mut self) {
        let objects = &self.objects;
        self.cni.retain(|pod, entry| {
            matches!(entry, CniEntry::Live(_)) || objects.contains_key(&pod.object_key())
        });
    }

    /// The Pod object of `pod`.
    pub fn pod(&self, pod: &PodKey) -> Option<&Object> {
        self.objects.get(&pod.object_key()).map(|o| &**o)
    }

    /// The live CNI record of `pod` that applies to the Pod object the index holds.
    pub fn cni_record(&self, pod: &PodKey) -> Option<&CniRecord> {
        match self.cni.get(pod)? {
            CniEntry::Live(r)
                if same_incarnation(r.uid.as_deref(), self.pod(pod).and_then(uid_of)) =>
            {
                Some(r)
            }
            _ => None,
        }
    }

    /// Adds or replaces an object. Returns whether its content changed.
    pub fn apply(&mut self, obj: Object) -> bool {
        self.apply_shared(Arc::new(obj))
    }

    /// [`State::apply`] of an object the caller may keep too (no copy is made).
    pub fn apply_shared(&mut self, obj: Arc<Object>) -> bool {
        let key = obj.key();
        let changed = self
            .objects
            .get(&key)
            .is_none_or(|old| !Arc::ptr_eq(old, &obj) && !old.same_content(&obj));
        if changed {
            self.note_object(&key);
        }
        self.objects.insert(key, obj);
        self.bump(changed)
    }

    /// Removes an object. Returns whether it was there.
    pub fn delete(&mut self, key: &ObjectKey) -> bool {
        let changed = self.objects.remove(key).is_some();
        if changed {
            self.note_object(key);
        }
        self.bump(changed)
    }

    /// Replaces every object. Returns whether anything changed.
    pub fn reset(&mut self, objs: impl IntoIterator<Item = Object>) -> bool {
        self.reset_shared(objs.into_iter().map(Arc::new))
    }

    /// [`State::reset`] with objects the caller may keep too (no copy is made).
    pub fn reset_shared(&mut self, objs: impl IntoIterator<Item = Arc<Object>>) -> bool {
        let new: BTreeMap<ObjectKey, Arc<Object>> =
            objs.into_iter().map(|o| (o.key(), o)).collect();
        let changed = new.len() != self.objects.len()
            || new
                .iter()
                .zip(&self.objects)
                .any(|((ka, a), (kb, b))| ka != kb || (!Arc::ptr_eq(a, b) && !a.same_content(b)));
        if changed {
            self.model_changes = None;
        }
        self.objects = new;
        self.bump(changed)
    }

    /// Sets how far Pod annotations are trusted to name a netns (the source's trust
    /// level; [`NetnsTrust::PlainNames`] by default). Returns whether it changed.
    pub fn set_netns_trust(&mut self, trust: NetnsTrust) -> bool {
        let changed = trust != self.netns_trust;
        self.netns_trust = trust;
        self.bump(changed)
    }

    /// The annotation's netns when the trust level accepts it (a refused value is
    /// logged and ignored: the other sources still apply).
    fn trusted_annotation<'a>(&self, pod: &PodKey, obj: &'a Object) -> Option<&'a str> {
        if self.netns_trust == NetnsTrust::NoAnnotation {
            return None;
        }
        match trust::check_annotation(obj.netns_annotation()?) {
            Ok(name) => Some(name),
            Err(e) => {
                tracing::error!(namespace = %pod.namespace, pod = %pod.name, error = %e, "netns annotation ignored");
                None
            }
        }
    }

    /// Replaces the Pod-to-netns mapping. Returns whether it changed.
    pub fn set_netns_map(&mut self, map: BTreeMap<PodKey, String>) -> bool {
        let changed = map != self.netns_map;
        self.netns_map = map;
        self.bump(changed)
    }

    /// Notes a changed object for the next model patch.
    fn note_object(&mut self, key: &ObjectKey) {
        match key.kind {
            Kind::Pod => self.note_pod(&PodKey::new(key.namespace.clone(), key.name.clone())),
            Kind::Namespace => {
                if let Some(d) = &mut self.model_changes {
                    d.namespaces.insert(key.name.clone());
                }
            }
            // Policies, Services, workloads...: the model is built again.
            _ => self.model_changes = None,
        }
    }

    fn note_pod(&mut self, pod: &PodKey) {
        if let Some(d) = &mut self.model_changes {
            d.pods.insert(pod.clone());
        }
    }

    /// What changed for the model since the last call (`None`: unknown, build it
    /// again), and starts noting afresh. The netns mapping, discovery and trust level
    /// are not in the model: they are not noted.
    pub fn take_model_changes(&mut self) -> Option<ModelDelta> {
        self.model_changes.replace(ModelDelta::default())
    }

    /// Forgets what changed: the next [`State::take_model_changes`] says `None` (the
    /// model it would patch is not the one these changes started from).
    pub fn forget_model_changes(&mut self) {
        self.model_changes = None;
    }

    /// Brings `model`, built from this state as it was at the matching
    /// [`State::take_model_changes`], to what [`State::build_model`] gives now, by
    /// patching the objects of `delta` ([`Model::patch`]); on [`Patched::Rebuild`]
    /// the model is unchanged.
    pub fn patch_model(&self, model: &mut Model, delta: &ModelDelta) -> Patched {
        // Pods as the model sees them: with their CNI overlay (a copy per changed Pod).
        let pods: Vec<(&PodKey, Option<std::borrow::Cow<'_, Located<Pod>>>)> = delta
            .pods
            .iter()
            .map(|key| {
                let pod = match self.pod(key) {
                    Some(Object::Pod(p)) if self.cni.contains_key(key) => {
                        let mut copy = p.clone();
                        self.overlay_cni(key, &mut copy.object);
                        Some(std::borrow::Cow::Owned(copy))
                    }
                    Some(Object::Pod(p)) => Some(std::borrow::Cow::Borrowed(p)),
                    _ => None,
                };
                (key, pod)
            })
            .collect();
        let namespaces: Vec<(&str, Option<&Located<Namespace>>)> = delta
            .namespaces
            .iter()
            .map(|name| {
                let key = ObjectKey {
                    kind: Kind::Namespace,
                    namespace: String::new(),
                    name: name.clone(),
                };
                let ns = match self.get(&key) {
                    Some(Object::Namespace(n)) => Some(n),
                    _ => None,
                };
                (name.as_str(), ns)
            })
            .collect();
        let mut changes: Vec<ModelChange<'_>> = pods
            .iter()
            .map(|(key, pod)| ModelChange::Pod {
                namespace: &key.namespace,
                name: &key.name,
                pod: pod.as_deref(),
            })
            .collect();
        changes.extend(
            namespaces
                .iter()
                .map(|(name, namespace)| ModelChange::Namespace {
                    name,
                    namespace: *namespace,
                }),
        );
        model.patch(&changes)
    }

    fn bump(&mut self, changed: bool) -> bool {
        if changed {
            self.generation += 1;
        }
        changed
    }

    /// Increases whenever the content changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when no object is known.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The object with this key.
    pub fn get(&self, key: &ObjectKey) -> Option<&Object> {
        self.objects.get(key).map(|o| &**o)
    }

    /// Every object, in key order.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects.values().map(|o| &**o)
    }

    /// The compiler's input, in key order (deterministic).
    pub fn inputs(&self) -> Inputs {
        let mut inputs = Inputs::default();
        for (key, obj) in &self.objects {
            match (**obj).clone() {
                Object::Namespace(o) => inputs.namespaces.push(o),
                Object::Pod(mut o) => {
                    let pod = PodKey::new(key.namespace.clone(), key.name.clone());
                    self.overlay_cni(&pod, &mut o.object);
                    inputs.pods.push(o);
                }
                Object::Workload(o) => inputs.workloads.push(o),
                Object::NetworkPolicy(o) => inputs.policies.push(o),
                Object::Service(o) => inputs.services.push(o),
                Object::EndpointSlice(o) => inputs.endpoint_slices.push(o),
                Object::Node(o) => inputs.nodes.push(o),
                Object::ClusterNetworkPolicy(o) => inputs.cluster_policies.push(o),
            }
        }
        inputs
    }

    /// The Node object named `name`, if the state has it.
    pub fn node(&self, name: &str) -> Option<&Node> {
        let key = ObjectKey {
            kind: Kind::Node,
            namespace: String::new(),
            name: name.to_owned(),
        };
        match self.objects.get(&key).map(|o| &**o) {
            Some(Object::Node(n)) => Some(&n.object),
            _ => None,
        }
    }

    /// The compiled model of the state: what `Model::build(&self.inputs())` gives, without
    /// copying every object first (at 50k Pods the copy is hundreds of MB). Only Pods
    /// whose addresses a CNI record changes are copied.
    pub fn build_model(&self) -> (Model, Vec<Diagnostic>) {
        // Only Pods with a CNI entry can be overlaid: look those up (a handful), not
        // every Pod's key.
        let mut overlaid: BTreeMap<&str, BTreeMap<&str, Located<Pod>>> = BTreeMap::new();
        for pod in self.cni.keys() {
            if let Some(Object::Pod(p)) = self.pod(pod) {
                let mut copy = p.clone();
                self.overlay_cni(pod, &mut copy.object);
                overlaid
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .insert(pod.name.as_str(), copy);
            }
        }
        // One walk over the index, by kind, in key order.
        let mut namespaces = Vec::new();
        let mut pods = Vec::new();
        let mut workloads = Vec::new();
        let mut policies = Vec::new();
        let mut services = Vec::new();
        let mut slices = Vec::new();
        let mut nodes = Vec::new();
        let mut cluster_policies = Vec::new();
        for (key, obj) in &self.objects {
            match &**obj {
                Object::Namespace(n) => namespaces.push(n),
                Object::Pod(p) => pods.push(
                    overlaid
                        .get(key.namespace.as_str())
                        .and_then(|m| m.get(key.name.as_str()))
                        .unwrap_or(p),
                ),
                Object::Workload(w) => workloads.push(w),
                Object::NetworkPolicy(p) => policies.push(p),
                Object::Service(s) => services.push(s),
                Object::EndpointSlice(s) => slices.push(s),
                Object::Node(n) => nodes.push(n),
                Object::ClusterNetworkPolicy(p) => cluster_policies.push(p),
            }
        }
        Model::build_all(
            namespaces,
            pods,
            workloads,
            policies,
            services,
            slices,
            nodes,
            cluster_policies,
        )
    }

    /// What the CNI plugin saw beats what the API server says (it is newer): a live
    /// record sets the Pod's addresses (peers' sets hold a new Pod's IP before the
    /// kubelet reports it); a torn-down sandbox clears them (the IP may be reused).
    fn overlay_cni(&self, pod: &PodKey, object: &mut Pod) {
        let uid = object.metadata.uid.as_deref();
        let ips: Vec<IpAddr> = match self.cni.get(pod) {
            Some(CniEntry::Live(r)) if same_incarnation(r.uid.as_deref(), uid) => r.ips.clone(),
            Some(CniEntry::Gone { uid: gone, .. }) if same_incarnation(gone.as_deref(), uid) => {
                Vec::new()
            }
            _ => return,
        };
        let status = object.status.get_or_insert_with(PodStatus::default);
        status.pod_ip = ips.first().map(ToString::to_string);
        status.pod_ips =
            (!ips.is_empty()).then(|| ips.iter().map(|ip| PodIP { ip: ip.to_string() }).collect());
    }

    /// Pods on this node with a network namespace, and that namespace's name.
    ///
    /// The `netpol.io/netns` annotation (only with [`NetnsTrust::PlainNames`], and only
    /// a plain name) wins over the CNI record, which wins over the mapping file, which
    /// wins over a netns discovered by IP. With `node`, Pods
    /// whose `spec.nodeName` names another node are not local (Pods without a nodeName
    /// are, when mapped).
    pub fn local_pods(&self, node: Option<&str>) -> BTreeMap<PodKey, String> {
        let mut out = BTreeMap::new();
        for (key, obj) in &self.objects {
            if key.kind != Kind::Pod {
                continue;
            }
            // Pods of other nodes are most of a cluster: skip them before allocating.
            if let (Some(want), Some(have)) = (node, obj.node_name())
                && want != have
            {
                continue;
            }
            let pod = PodKey::new(key.namespace.clone(), key.name.clone());
            if let Some(netns) = self.local_netns_of(&pod, obj, node) {
                out.insert(pod, netns);
            }
        }
        out
    }

    /// [`State::local_pods`] for one Pod: its netns when it is local, without walking
    /// every object (the CNI `ADD` fast path, `agent/fast_add.rs`).
    pub fn local_netns(&self, pod: &PodKey, node: Option<&str>) -> Option<String> {
        let obj = self.pod(pod)?;
        self.local_netns_of(pod, obj, node)
    }

    fn local_netns_of(&self, pod: &PodKey, obj: &Object, node: Option<&str>) -> Option<String> {
        if let (Some(want), Some(have)) = (node, obj.node_name())
            && want != have
        {
            return None;
        }
        self.trusted_annotation(pod, obj)
            .map(str::to_owned)
            .or_else(|| self.cni_record(pod).map(|r| r.netns.clone()))
            .or_else(|| self.netns_map.get(pod).cloned())
            .or_else(|| self.discovered.get(pod).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_compiler::{SourceText, load};

    fn objects(yaml: &str) -> Vec<Object> {
        let (inputs, diags) = load(&[SourceText {
            name: "t.yaml",
            text: yaml,
        }]);
        assert!(diags.is_empty(), "{diags:?}");
        Object::all(inputs)
    }

    fn pod(name: &str, extra_meta: &str, node: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x{extra_meta}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\n---\n"
        )
    }

    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n";

    #[test]
    fn apply_delete_reset_track_changes() {
        let mut s = State::new();
        let objs = objects(&format!("{}{POLICY}", pod("a", "", "n1")));
        assert_eq!(objs.len(), 2);
        assert!(s.reset(objs.clone()));
        assert_eq!(s.len(), 2);
        let g = s.generation();
        assert!(!s.reset(objs.clone()), "same objects are no change");
        assert!(!s.apply(objs[0].clone()));
        assert_eq!(s.generation(), g);

        let changed = objects(&pod("a", ", labels: {app: a}", "n1"));
        assert!(s.apply(changed[0].clone()));
        assert!(s.generation() > g);
        let key = ObjectKey {
            kind: Kind::NetworkPolicy,
            namespace: "x".into(),
            name: "deny".into(),
        };
        assert!(s.get(&key).is_some());
        assert!(s.handle(Event::Delete(key.clone())));
        assert!(!s.delete(&key));
        assert_eq!(s.len(), 1);
        assert!(s.reset(Vec::new()));
        assert!(s.is_empty());
    }

    #[test]
    fn inputs_are_in_key_order_whatever_the_arrival_order() {
        let objs = objects(&format!(
            "{}{}{POLICY}",
            pod("b", "", "n"),
            pod("a", "", "n")
        ));
        let mut s1 = State::new();
        let mut s2 = State::new();
        for o in &objs {
            s1.apply(o.clone());
        }
        for o in objs.iter().rev() {
            s2.apply(o.clone());
        }
        let names = |s: &State| {
            s.inputs()
                .pods
                .iter()
                .map(|p| p.object.metadata.name.clone().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&s1), ["a", "b"]);
        assert_eq!(names(&s1), names(&s2));
        assert_eq!(s1.inputs().policies.len(), 1);
        assert!(s1.inputs().pods[0].origin.is_some(), "origin kept");
    }

    #[test]
    fn local_pods_use_annotation_then_map_and_node() {
        let yaml = format!(
            "{}{}{}",
            pod("a", ", annotations: {netpol.io/netns: ns-a}", "n1"),
            pod("b", "", "n1"),
            pod("c", "", "n2"),
        );
        let mut s = State::new();
        s.reset(objects(&yaml));
        assert_eq!(s.local_pods(None).len(), 1, "only the annotated Pod");
        let mut map = BTreeMap::new();
        map.insert(PodKey::new("x", "a"), "ignored".to_owned());
        map.insert(PodKey::new("x", "b"), "ns-b".to_owned());
        map.insert(PodKey::new("x", "c"), "ns-c".to_owned());
        assert!(s.handle(Event::NetnsMap(map.clone())));
        assert!(!s.set_netns_map(map));
        let all = s.local_pods(None);
        assert_eq!(all[&PodKey::new("x", "a")], "ns-a", "annotation wins");
        assert_eq!(all.len(), 3);
        let n1: Vec<String> = s
            .local_pods(Some("n1"))
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(n1, ["x/a", "x/b"]);
    }

    // See: #5
    #[test]
    fn cni_records_overlay_ips_and_netns_for_their_incarnation_only() {
        let yaml = format!(
            "{}{}",
            pod("a", ", uid: u1", "n1"),
            pod("b", ", uid: u2, annotations: {netpol.io/netns: ns-b}", "n1"),
        );
        let mut s = State::new();
        s.reset(objects(&yaml));
        let a = PodKey::new("x", "a");
        let rec = |cid: &str, uid: Option<&str>| CniRecord {
            container_id: cid.into(),
            netns: "cni-a".into(),
            ips: vec!["10.1.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            uid: uid.map(str::to_owned),
        };
        let ips = |s: &State| {
            let inputs = s.inputs();
            let st = inputs.pods[0].object.status.clone().unwrap_or_default();
            (st.pod_ip, st.pod_ips.map(|v| v.len()))
        };
        assert!(!s.local_pods(None).contains_key(&a));
        assert!(s.handle(Event::CniAdd(a.clone(), rec("c1", Some("u1")))));
        assert!(
            !s.cni_add(a.clone(), rec("c1", Some("u1"))),
            "same record: no change"
        );
        assert_eq!(s.local_pods(Some("n1"))[&a], "cni-a");
        assert_eq!(ips(&s), (Some("10.1.0.5".into()), Some(2)));
        // A record of another incarnation (same name, other UID) applies to nothing.
        s.cni_add(a.clone(), rec("c9", Some("other")));
        assert!(!s.local_pods(None).contains_key(&a));
        assert_eq!(ips(&s), (None, None));
        s.cni_add(a.clone(), rec("c1", Some("u1")));
        // DEL of another sandbox: nothing; of the recorded one: IPs cleared, not local.
        assert!(!s.handle(Event::CniDel {
            pod: a.clone(),
            container_id: "old".into()
        }));
        assert!(s.cni_del(&a, "c1"));
        assert!(!s.local_pods(None).contains_key(&a));
        assert_eq!(ips(&s), (None, None));
        // The tombstone goes once the Pod is gone from the index.
        s.delete(&ObjectKey {
            kind: Kind::Pod,
            namespace: "x".into(),
            name: "a".into(),
        });
        s.prune_cni();
        assert!(s.cni().is_empty());
        // The annotation wins over a record; discovery is the last resort.
        let b = PodKey::new("x", "b");
        s.cni_add(b.clone(), rec("cb", None));
        assert_eq!(s.local_pods(None)[&b], "ns-b");
        let mut found = BTreeMap::new();
        found.insert(b.clone(), "found-b".to_owned());
        assert!(s.set_discovered(found));
        assert_eq!(s.local_pods(None)[&b], "ns-b");
    }

    const CLUSTER_POLICY: &str = "---\napiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec: {tier: Admin, priority: 5, subject: {namespaces: {}}, ingress: [{name: d, action: Deny, from: [{namespaces: {}}]}]}\n";

    #[test]
    fn build_model_equals_building_from_cloned_inputs() {
        // See: #13 — ClusterNetworkPolicies reach the model too.
        let yaml = format!(
            "{}{}{POLICY}{CLUSTER_POLICY}",
            pod("a", ", uid: u1, labels: {app: a}", "n1"),
            pod("b", ", labels: {app: b}", "n1"),
        );
        let mut s = State::new();
        s.reset(objects(&yaml));
        s.cni_add(
            PodKey::new("x", "a"),
            CniRecord {
                container_id: "c".into(),
                netns: "cni-a".into(),
                ips: vec!["10.9.0.1".parse().unwrap()],
                uid: Some("u1".into()),
            },
        );
        let (want, _) = Model::build(&s.inputs());
        let (got, diags) = s.build_model();
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(got.dump(), want.dump());
        assert_eq!(got.cluster_policies.len(), 1);
        assert!(
            s.get(&ObjectKey {
                kind: Kind::ClusterNetworkPolicy,
                namespace: String::new(),
                name: "guard".into(),
            })
            .is_some()
        );
        assert!(
            got.dump().contains("10.9.0.1"),
            "overlay applied:\n{}",
            got.dump()
        );
    }

    /// SplitMix64: deterministic event sequences.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            ((z ^ (z >> 31)) % n as u64) as usize
        }
    }

    /// A random valid Pod: in a declared or undeclared namespace, with IPs from a small
    /// pool (so some are shared), sometimes hostNetwork, finished, Pending or on no node.
    fn random_pod(rng: &mut Rng, name: &str) -> Object {
        let ns = ["a", "b", "c", "u1"][rng.below(4)];
        let app = ["web", "db", "api"][rng.below(3)];
        let node = match rng.below(4) {
            0 => String::new(),
            n => format!("nodeName: n{n}, "),
        };
        let host = if rng.below(6) == 0 {
            "hostNetwork: true, "
        } else {
            ""
        };
        let ports = if rng.below(2) == 0 {
            ", ports: [{name: http, containerPort: 8080}]"
        } else {
            ""
        };
        let status = match rng.below(8) {
            0 => "{phase: Succeeded, podIP: 10.0.0.9}".to_owned(),
            1 => "{phase: Pending}".to_owned(),
            _ => format!("{{phase: Running, podIP: 10.0.0.{}}}", rng.below(12) + 1),
        };
        objects(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{app: {app}}}}}\nspec: {{{node}{host}containers: [{{name: c{ports}}}]}}\nstatus: {status}\n"
        ))
        .remove(0)
    }

    const STATIC: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: u2}\nspec: {podSelector: {}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: a}\nspec: {clusterIP: 10.96.0.1, selector: {app: web}, ports: [{port: 80, targetPort: http}]}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: db, namespace: b}\nspec: {clusterIP: 10.96.0.2, ports: [{name: pg, port: 5432}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: db-1, namespace: b, labels: {kubernetes.io/service-name: db}}\naddressType: IPv4\nports: [{name: pg, port: 5432, protocol: TCP}]\nendpoints:\n- addresses: [10.0.0.3]\n  targetRef: {kind: Pod, namespace: b, name: q2}\n- addresses: [10.0.0.5]\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 192.168.0.1}]}\n";

    /// A model patched from the changes the state noted equals the model built from
    /// every object, after every event of random sequences: Pods added, changed (labels,
    /// IPs shared with others, hostNetwork, finished, node), deleted, CNI records added
    /// and torn down, Namespaces relabelled, deleted and declared again (implicit
    /// namespaces appear and go), with Services (by selector and by EndpointSlice), a
    /// policy in an undeclared namespace and a Node. The graphs are compared too.
    /// See: #12
    #[test]
    fn patched_model_equals_built_model() {
        let mut patched = 0;
        for seed in 0..6 {
            let mut rng = Rng(seed);
            let mut s = State::new();
            let mut objs = objects(STATIC);
            for i in 0..20 {
                objs.push(random_pod(&mut rng, &format!("q{i}")));
            }
            for ns in ["a", "b", "c"] {
                objs.extend(objects(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: t{}}}}}\n",
                    rng.below(2)
                )));
            }
            s.reset(objs);
            assert_eq!(s.take_model_changes(), None, "a relist: build");
            let (mut model, diags) = s.build_model();
            assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
            for step in 0..120 {
                let pod = format!("q{}", rng.below(26));
                let ns = ["a", "b", "c"][rng.below(3)];
                let what = match rng.below(10) {
                    0..=3 => {
                        let obj = random_pod(&mut rng, &pod);
                        // A Pod moves namespace as a delete and an add (another key).
                        let key = obj.key();
                        s.apply(obj);
                        format!("apply {key}")
                    }
                    4 => {
                        let key = s
                            .objects()
                            .filter(|o| o.key().kind == Kind::Pod)
                            .nth(rng.below(20))
                            .map(Object::key);
                        if let Some(k) = &key {
                            s.delete(k);
                        }
                        format!("delete {key:?}")
                    }
                    5 => {
                        let labels = ["{team: t0}", "{team: t1}", "{}"][rng.below(3)];
                        s.apply(
                            objects(&format!(
                                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {labels}}}\n"
                            ))
                            .remove(0),
                        );
                        format!("namespace {ns} {labels}")
                    }
                    6 => {
                        s.delete(&ObjectKey {
                            kind: Kind::Namespace,
                            namespace: String::new(),
                            name: ns.into(),
                        });
                        format!("delete namespace {ns}")
                    }
                    7 | 8 => {
                        let key = s
                            .objects()
                            .filter(|o| o.key().kind == Kind::Pod)
                            .nth(rng.below(20))
                            .map(Object::key);
                        let Some(k) = key else { continue };
                        let p = PodKey::new(k.namespace, k.name);
                        s.cni_add(
                            p.clone(),
                            CniRecord {
                                container_id: "c".into(),
                                netns: "x".into(),
                                ips: vec![format!("10.0.0.{}", rng.below(12) + 1).parse().unwrap()],
                                uid: None,
                            },
                        );
                        format!("CNI ADD {p}")
                    }
                    _ => {
                        let Some(p) = s.cni().keys().next().cloned() else {
                            continue;
                        };
                        if rng.below(2) == 0 {
                            s.cni_del(&p, "c");
                        } else {
                            s.cni_forget(&p);
                        }
                        format!("CNI DEL {p}")
                    }
                };
                let (want, diags) = s.build_model();
                assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
                match s.take_model_changes() {
                    Some(delta) => match s.patch_model(&mut model, &delta) {
                        Patched::Done => patched += 1,
                        Patched::Rebuild(why) => panic!("seed {seed} step {step}: {what}: {why}"),
                    },
                    None => panic!("seed {seed} step {step}: {what}: nothing noted"),
                }
                assert_eq!(
                    format!("{model:?}"),
                    format!("{want:?}"),
                    "seed {seed} step {step}: {what}"
                );
                let (g1, g2) = (
                    policy_compiler::AllowGraph::build(&model),
                    policy_compiler::AllowGraph::build(&want),
                );
                assert_eq!(
                    g1.dump(&model),
                    g2.dump(&want),
                    "seed {seed} step {step}: {what}"
                );
            }
        }
        assert!(patched > 500, "patched only {patched}");
    }

    #[test]
    fn a_policy_change_or_relist_is_not_patched() {
        let mut s = State::new();
        s.reset(objects(&pod("a", "", "n1")));
        assert_eq!(s.take_model_changes(), None);
        assert_eq!(s.take_model_changes(), Some(ModelDelta::default()));
        s.apply(objects(POLICY).remove(0));
        assert_eq!(s.take_model_changes(), None, "a policy: build");
        s.apply(objects(&pod("b", "", "n1")).remove(0));
        let mut map = BTreeMap::new();
        map.insert(PodKey::new("x", "b"), "nb".to_owned());
        s.set_netns_map(map);
        let delta = s.take_model_changes().unwrap();
        assert_eq!(
            delta
                .pods
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["x/b"],
            "the netns mapping is not in the model"
        );
        s.apply(objects(&pod("c", "", "n1")).remove(0));
        s.forget_model_changes();
        assert_eq!(s.take_model_changes(), None);
    }

    #[test]
    fn pod_keys_parse() {
        assert_eq!(PodKey::parse("x/a"), Some(PodKey::new("x", "a")));
        for bad in ["a", "/a", "x/", "x/a/b"] {
            assert_eq!(PodKey::parse(bad), None, "{bad}");
        }
        assert_eq!(PodKey::new("x", "a").to_string(), "x/a");
    }
}
