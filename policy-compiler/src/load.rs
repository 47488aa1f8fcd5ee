//! Documents to typed Kubernetes objects.
//!
//! Reads the object kinds netpol cares about (Namespace, Pod, workload controllers,
//! `networking.k8s.io/v1` NetworkPolicy, v1 Service, `discovery.k8s.io/v1` EndpointSlice,
//! v1 Node) into k8s-openapi types, expands `List` kinds,
//! and skips everything else (reported in [`Inputs::skipped`]). Type errors carry the
//! field path and the position in the file.

use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{
    Namespace, Node, Pod, PodTemplateSpec, ReplicationController, Service,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cnp::ClusterNetworkPolicy;
use crate::diagnostic::{Diagnostic, ObjectRef, Origin};
use crate::source::{SpanFile, SpanIndex, parse_documents};

/// One input text and the name to report it by.
#[derive(Debug, Clone, Copy)]
pub struct SourceText<'a> {
    /// File name (or `-` for stdin) used in diagnostics.
    pub name: &'a str,
    /// The file's contents.
    pub text: &'a str,
}

/// The workload controllers whose Pod template is an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkloadKind {
    /// apps/v1 Deployment.
    Deployment,
    /// apps/v1 ReplicaSet.
    ReplicaSet,
    /// apps/v1 StatefulSet.
    StatefulSet,
    /// apps/v1 DaemonSet.
    DaemonSet,
    /// batch/v1 Job.
    Job,
    /// batch/v1 CronJob.
    CronJob,
    /// v1 ReplicationController.
    ReplicationController,
}

impl WorkloadKind {
    /// All kinds, in a fixed order.
    pub const ALL: [WorkloadKind; 7] = [
        WorkloadKind::Deployment,
        WorkloadKind::ReplicaSet,
        WorkloadKind::StatefulSet,
        WorkloadKind::DaemonSet,
        WorkloadKind::Job,
        WorkloadKind::CronJob,
        WorkloadKind::ReplicationController,
    ];

    /// The Kubernetes kind, e.g. `Deployment`.
    pub fn kind(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::CronJob => "CronJob",
            WorkloadKind::ReplicationController => "ReplicationController",
        }
    }

    /// Lowercase kind as used in endpoint names (`shop/deployment/web`).
    pub fn lower(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "deployment",
            WorkloadKind::ReplicaSet => "replicaset",
            WorkloadKind::StatefulSet => "statefulset",
            WorkloadKind::DaemonSet => "daemonset",
            WorkloadKind::Job => "job",
            WorkloadKind::CronJob => "cronjob",
            WorkloadKind::ReplicationController => "replicationcontroller",
        }
    }

    /// Parses a kind, case-insensitively (`deployment`, `Deployment`, `deploy`).
    pub fn parse(s: &str) -> Option<Self> {
        let l = s.to_ascii_lowercase();
        Self::ALL
            .into_iter()
            .find(|k| k.lower() == l)
            .or(match l.as_str() {
                "deploy" => Some(WorkloadKind::Deployment),
                "rs" => Some(WorkloadKind::ReplicaSet),
                "sts" => Some(WorkloadKind::StatefulSet),
                "ds" => Some(WorkloadKind::DaemonSet),
                "cj" => Some(WorkloadKind::CronJob),
                "rc" => Some(WorkloadKind::ReplicationController),
                _ => None,
            })
    }
}

/// A workload controller reduced to what matters: its metadata and its Pod template.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Which controller.
    pub kind: WorkloadKind,
    /// The controller's metadata.
    pub metadata: ObjectMeta,
    /// The Pod template (for a CronJob, the job template's Pod template).
    pub template: PodTemplateSpec,
    /// How many Pods it runs at once, when known: `spec.replicas` (API default 1) of
    /// Deployments, ReplicaSets, StatefulSets and ReplicationControllers, `parallelism`
    /// (default 1) of Jobs and CronJobs' job templates; `None` for DaemonSets (one per
    /// node) and negative values.
    pub replicas: Option<u32>,
}

/// An object with where it came from (`None` for objects from the API server).
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The object.
    pub object: T,
    /// File, document and spans.
    pub origin: Option<Origin>,
}

impl<T> Located<T> {
    /// An object that did not come from a file (for example from a watch).
    pub fn unlocated(object: T) -> Self {
        Self {
            object,
            origin: None,
        }
    }
}

/// Every object read, by kind.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    /// Namespaces.
    pub namespaces: Vec<Located<Namespace>>,
    /// Pods.
    pub pods: Vec<Located<Pod>>,
    /// Workload controllers.
    pub workloads: Vec<Located<Workload>>,
    /// NetworkPolicies.
    pub policies: Vec<Located<NetworkPolicy>>,
    /// Services (v1).
    pub services: Vec<Located<Service>>,
    /// EndpointSlices (`discovery.k8s.io/v1`).
    pub endpoint_slices: Vec<Located<EndpointSlice>>,
    /// Nodes (v1).
    pub nodes: Vec<Located<Node>>,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`).
    pub cluster_policies: Vec<Located<ClusterNetworkPolicy>>,
    /// Declared endpoints (`--endpoints FILE`, [`crate::declared`]): Pods the manifests
    /// do not contain, by namespace and labels.
    pub declared: Vec<crate::declared::DeclaredEndpoint>,
    /// Objects of other kinds, which do not affect connectivity.
    pub skipped: Vec<ObjectRef>,
    /// Policies of other engines (Cilium, Calico, AdminNetworkPolicy, ...) that do affect
    /// connectivity but that netpol does not evaluate (`kind` is `apiVersion Kind`); see
    /// [`crate::foreign`].
    pub unevaluated: Vec<ObjectRef>,
}

impl Inputs {
    /// Adds everything from `other`.
    pub fn extend(&mut self, other: Inputs) {
        append(&mut self.namespaces, other.namespaces);
        append(&mut self.pods, other.pods);
        append(&mut self.workloads, other.workloads);
        append(&mut self.policies, other.policies);
        append(&mut self.services, other.services);
        append(&mut self.endpoint_slices, other.endpoint_slices);
        append(&mut self.nodes, other.nodes);
        append(&mut self.cluster_policies, other.cluster_policies);
        append(&mut self.declared, other.declared);
        append(&mut self.skipped, other.skipped);
        append(&mut self.unevaluated, other.unevaluated);
    }
}

/// `into.extend(from)`, taking `from`'s buffer when `into` is empty: a Pod is a few
/// hundred bytes, and copying a thousand of them into fresh memory showed in profiles.
fn append<T>(into: &mut Vec<T>, from: Vec<T>) {
    if into.is_empty() {
        *into = from;
    } else {
        into.extend(from);
    }
}

/// Parses and types every source. Never panics; every problem is a diagnostic.
pub fn load(sources: &[SourceText<'_>]) -> (Inputs, Vec<Diagnostic>) {
    let mut inputs = Inputs::default();
    let mut diags = Vec::new();
    for src in sources {
        load_one(src, &mut inputs, &mut diags);
    }
    (inputs, diags)
}

fn load_one(src: &SourceText<'_>, inputs: &mut Inputs, diags: &mut Vec<Diagnostic>) {
    if let Some((i, d)) = load_subset(src) {
        inputs.extend(i);
        diags.extend(d);
        return;
    }
    let docs = match parse_documents(src.text) {
        Ok(d) => d,
        Err(e) => {
            diags.push(Diagnostic::file_error(
                src.name,
                e.pos,
                format!("malformed YAML/JSON: {}", e.message),
            ));
            return;
        }
    };
    let file: Arc<str> = Arc::from(src.name);
    let load_docs = |docs: Vec<crate::source::Document>| {
        let mut inputs = Inputs::default();
        let mut diags = Vec::new();
        for doc in docs {
            let spans = Arc::new(doc.spans);
            let origin = Origin {
                file: file.clone(),
                document: doc.index,
                base: String::new(),
                spans,
            };
            load_value(doc.value, origin, None, &mut inputs, &mut diags);
        }
        (inputs, diags)
    };
    // Documents are typed independently: a long file's two halves on two threads, joined
    // in document order (the same objects and diagnostics in the same order). See: #14
    let mut first = docs;
    let second = if first.len() >= PARALLEL_DOCUMENTS {
        first.split_off(first.len() / 2)
    } else {
        Vec::new()
    };
    let ((ia, da), (ib, db)) = if second.is_empty() {
        (load_docs(first), (Inputs::default(), Vec::new()))
    } else {
        std::thread::scope(|s| {
            let h = s.spawn(|| load_docs(second));
            let a = load_docs(first);
            // Loading never panics on input; a panic is a bug, passed on.
            let b = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            (a, b)
        })
    };
    inputs.extend(ia);
    diags.extend(da);
    inputs.extend(ib);
    diags.extend(db);
}

/// A text in the plain subset of YAML ([`crate::source::subset_documents`]), read and
/// typed one document at a time, so that each document's JSON value is freed before
/// the next is read (the memory stays warm: first-touch page faults were a fifth of
/// `netpol list`); a long file's two halves on two threads, cut at a document start and
/// joined in document order. The same objects and diagnostics in the same order as
/// [`parse_documents`] and typing; `None` when the text leaves the subset (the caller
/// then parses it whole, and what was typed here is dropped). See: #14
fn load_subset(src: &SourceText<'_>) -> Option<(Inputs, Vec<Diagnostic>)> {
    let file: Arc<str> = Arc::from(src.name);
    let spans = SpanFile::new(src.text);
    // `pods` is reserved for `room` objects (documents are mostly Pods): no copies as
    // the vector grows, and none when the second half is appended to the first.
    let read =
        |text: &str, first: usize, room: usize| -> Option<(Inputs, Vec<Diagnostic>, usize)> {
            let mut inputs = Inputs::default();
            inputs.pods.reserve(room);
            let mut diags = Vec::new();
            let mut n = 0;
            crate::source::subset_documents(text, &mut |value| {
                let origin = Origin {
                    file: file.clone(),
                    document: first + n,
                    base: String::new(),
                    spans: Arc::new(spans.spans(first + n)),
                };
                load_value(value, origin, None, &mut inputs, &mut diags);
                n += 1;
            })?;
            Some((inputs, diags, n))
        };
    let Some(cut) = crate::source::parallel_cut(src.text) else {
        return read(src.text, 0, 0).map(|(i, d, _)| (i, d));
    };
    let (a, b) = src.text.split_at(cut);
    let in_a = crate::source::subset_document_count(a);
    let in_b = crate::source::subset_document_count(b);
    let (ra, rb) = std::thread::scope(|s| {
        let h = s.spawn(|| read(b, in_a, in_b));
        let ra = read(a, 0, in_a + in_b);
        // Loading never panics on input; a panic is a bug, passed on.
        let rb = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (ra, rb)
    });
    let (mut inputs, mut diags, n) = ra?;
    let (ib, db, _) = rb?;
    // The second half's document numbers assumed this count.
    if n != in_a {
        return None;
    }
    inputs.extend(ib);
    diags.extend(db);
    Some((inputs, diags))
}

/// From this many documents in one file on, [`load`] types them on two threads.
pub const PARALLEL_DOCUMENTS: usize = 256;

fn str_field<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn object_ref_of(v: &Value, kind: &str) -> ObjectRef {
    let meta = v.get("metadata");
    ObjectRef {
        kind: kind.to_string(),
        namespace: meta
            .and_then(|m| str_field(m, "namespace"))
            .unwrap_or("")
            .to_string(),
        name: meta
            .and_then(|m| str_field(m, "name"))
            .unwrap_or("")
            .to_string(),
    }
}

/// `(kind, apiVersion)` inherited by items of a typed list such as `PodList`.
type ItemDefaults = (String, String);

fn load_value(
    mut value: Value,
    origin: Origin,
    item_defaults: Option<&ItemDefaults>,
    inputs: &mut Inputs,
    diags: &mut Vec<Diagnostic>,
) {
    if value.is_null() {
        return;
    }
    if !value.is_object() {
        diags.push(Diagnostic::field_error(
            Some(&origin),
            &ObjectRef {
                kind: String::new(),
                namespace: String::new(),
                name: String::new(),
            },
            "",
            None,
            "expected a Kubernetes object (a mapping with apiVersion and kind)",
        ));
        return;
    }
    if let (Some((kind, api)), Some(obj)) = (item_defaults, value.as_object_mut()) {
        obj.entry("kind")
            .or_insert_with(|| Value::from(kind.clone()));
        obj.entry("apiVersion")
            .or_insert_with(|| Value::from(api.clone()));
    }
    if value.get("kind").is_none()
        && value.get("apiVersion").is_none()
        && value.get("metadata").is_none()
    {
        // Not a Kubernetes object at all (for example a test's expect.yaml beside the
        // manifests): skipped, like kinds that do not affect connectivity.
        inputs.skipped.push(ObjectRef {
            kind: "(not a Kubernetes object)".into(),
            namespace: String::new(),
            name: format!("{}#{}", origin.file, origin.document),
        });
        return;
    }
    let Some(kind) = str_field(&value, "kind").map(str::to_string) else {
        let oref = object_ref_of(&value, "object");
        diags.push(Diagnostic::field_error(
            Some(&origin),
            &oref,
            "kind",
            None,
            "missing field `kind`",
        ));
        return;
    };
    let api = str_field(&value, "apiVersion").unwrap_or("").to_string();
    let oref = object_ref_of(&value, &kind);

    if kind == "List" || (kind.ends_with("List") && value.get("items").is_some()) {
        let defaults = kind
            .strip_suffix("List")
            .filter(|k| !k.is_empty())
            .map(|k| (k.to_string(), api.clone()));
        let items = match value.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            Some(Value::Null) | None => Vec::new(),
            Some(_) => {
                diags.push(Diagnostic::field_error(
                    Some(&origin),
                    &oref,
                    "items",
                    None,
                    "expected a list of objects",
                ));
                return;
            }
        };
        for (i, item) in items.into_iter().enumerate() {
            let mut o = origin.clone();
            o.base = crate::source::index_path(&child_base(&origin.base, "items"), i);
            load_value(item, o, defaults.as_ref(), inputs, diags);
        }
        return;
    }

    if api.is_empty() {
        diags.push(Diagnostic::field_error(
            Some(&origin),
            &oref,
            "apiVersion",
            None,
            "missing field `apiVersion`",
        ));
        return;
    }

    let origin = Some(origin);
    if api.split('/').next() == Some(CNP_GROUP) {
        cluster_policy(&value, &api, &kind, origin, oref, inputs, diags);
        return;
    }
    if let Some(by) = crate::foreign::foreign_policy(&api, &kind) {
        diags.push(crate::foreign::warning(
            origin.as_ref(),
            &oref,
            &api,
            &kind,
            by,
        ));
        inputs
            .unevaluated
            .push(crate::foreign::unevaluated_ref(oref, &api, &kind));
        return;
    }
    match kind.as_str() {
        "Namespace" => {
            if let Some(ns) = typed::<Namespace>(&value, &origin, &oref, diags) {
                inputs.namespaces.push(Located { object: ns, origin });
            }
        }
        "Pod" => {
            if let Some(p) = typed::<Pod>(&value, &origin, &oref, diags) {
                inputs.pods.push(Located { object: p, origin });
            }
        }
        "NetworkPolicy" => {
            if api != "networking.k8s.io/v1" {
                diags.push(Diagnostic::field_error(
                    origin.as_ref(),
                    &oref,
                    "apiVersion",
                    Some(api.clone()),
                    "unsupported apiVersion for NetworkPolicy: netpol reads networking.k8s.io/v1",
                ));
                return;
            }
            if let Some(p) = typed::<NetworkPolicy>(&value, &origin, &oref, diags) {
                inputs.policies.push(Located { object: p, origin });
            }
        }
        "Service" | "Node" if api != "v1" => {
            diags.push(Diagnostic::field_error(
                origin.as_ref(),
                &oref,
                "apiVersion",
                Some(api.clone()),
                format!("unsupported apiVersion for {kind}: netpol reads v1"),
            ));
        }
        "Service" => {
            if let Some(s) = typed::<Service>(&value, &origin, &oref, diags) {
                inputs.services.push(Located { object: s, origin });
            }
        }
        "Node" => {
            if let Some(n) = typed::<Node>(&value, &origin, &oref, diags) {
                inputs.nodes.push(Located { object: n, origin });
            }
        }
        "EndpointSlice" => {
            if api != "discovery.k8s.io/v1" {
                diags.push(Diagnostic::field_error(
                    origin.as_ref(),
                    &oref,
                    "apiVersion",
                    Some(api.clone()),
                    "unsupported apiVersion for EndpointSlice: netpol reads discovery.k8s.io/v1",
                ));
                return;
            }
            if let Some(s) = typed::<EndpointSlice>(&value, &origin, &oref, diags) {
                inputs.endpoint_slices.push(Located { object: s, origin });
            }
        }
        other => match WorkloadKind::parse(other) {
            Some(wk) if wk.kind() == other => {
                if let Some(w) = workload(wk, &mut value, &api, &origin, &oref, diags) {
                    inputs.workloads.push(Located { object: w, origin });
                }
            }
            _ => {
                if let Some(d) = kind_warning(&kind, origin.as_ref(), &oref) {
                    diags.push(d);
                }
                inputs.skipped.push(oref);
            }
        },
    }
}

/// The API group of ClusterNetworkPolicy (and of the v1alpha1 kinds it replaced).
const CNP_GROUP: &str = "policy.networking.k8s.io";

/// Objects of the `policy.networking.k8s.io` group: `v1alpha2` ClusterNetworkPolicy is
/// read; the v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy are errors that name
/// their replacement (skipping them would silently drop their Deny rules and widen every
/// answer); other kinds and versions of the group are errors for the same reason.
fn cluster_policy(
    value: &Value,
    api: &str,
    kind: &str,
    origin: Option<Origin>,
    oref: ObjectRef,
    inputs: &mut Inputs,
    diags: &mut Vec<Diagnostic>,
) {
    if let Some(r) = crate::foreign::replacement(kind) {
        diags.push(Diagnostic::field_error(
            origin.as_ref(),
            &oref,
            "kind",
            Some(format!("{api} {kind}")),
            crate::foreign::retired_message(api, kind, r),
        ));
        return;
    }
    if kind != crate::cnp::KIND {
        diags.push(Diagnostic::field_error(
            origin.as_ref(),
            &oref,
            "kind",
            Some(format!("{api} {kind}")),
            format!(
                "unknown kind {kind} of {CNP_GROUP}: netpol reads {} {}",
                crate::cnp::API_VERSION,
                crate::cnp::KIND
            ),
        ));
        return;
    }
    if api != crate::cnp::API_VERSION {
        diags.push(Diagnostic::field_error(
            origin.as_ref(),
            &oref,
            "apiVersion",
            Some(api.to_string()),
            format!(
                "unsupported apiVersion for ClusterNetworkPolicy: netpol reads {}",
                crate::cnp::API_VERSION
            ),
        ));
        return;
    }
    if let Some(p) = typed::<ClusterNetworkPolicy>(value, &origin, &oref, diags) {
        inputs.cluster_policies.push(Located { object: p, origin });
    }
}

/// The kinds netpol evaluates (`load_value`'s match; Service, EndpointSlice and Node are
/// listed ahead of being read) for typo suggestions. Keep in step with the match.
const EVALUATED_KINDS: &[&str] = &[
    "Namespace",
    "Pod",
    "NetworkPolicy",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicationController",
    "Service",
    "EndpointSlice",
    "Node",
    "ClusterNetworkPolicy",
];

/// Built-in kinds that are skipped on purpose: never reported as a typo of an evaluated
/// kind (`Node` is two edits from `Pod`, `Role` one from `Node`).
const KNOWN_SKIPPED_KINDS: &[&str] = &[
    "APIService",
    "Binding",
    "CSIDriver",
    "CSINode",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "ConfigMap",
    "ControllerRevision",
    "CustomResourceDefinition",
    "Endpoints",
    "Event",
    "HorizontalPodAutoscaler",
    "Ingress",
    "IngressClass",
    "Lease",
    "LimitRange",
    "MutatingWebhookConfiguration",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "PodDisruptionBudget",
    "PodTemplate",
    "PriorityClass",
    "ResourceQuota",
    "Role",
    "RoleBinding",
    "RuntimeClass",
    "Secret",
    "ServiceAccount",
    "StorageClass",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// A warning for a skipped `kind` that is empty or looks like a misspelled evaluated kind
/// (`NetworkPolcy`, `networkpolicy`): such an object would otherwise vanish silently.
/// See: #11
fn kind_warning(kind: &str, origin: Option<&Origin>, oref: &ObjectRef) -> Option<Diagnostic> {
    if KNOWN_SKIPPED_KINDS.contains(&kind) {
        return None;
    }
    let message = if kind.trim().is_empty() {
        "empty `kind`: the object is skipped".to_string()
    } else {
        let nearest = crate::strict::nearest(kind, EVALUATED_KINDS.iter().copied())?;
        format!(
            "unknown kind `{kind}` is skipped, did you mean `{nearest}`? (kinds are case-sensitive)"
        )
    };
    Some(Diagnostic::field_error(origin, oref, "kind", Some(kind.to_string()), message).warning())
}

fn child_base(base: &str, key: &str) -> String {
    crate::source::child_path(base, key)
}

/// Current apiVersion of each workload kind; older group versions of the same kinds
/// (`extensions/v1beta1`, `apps/v1beta1`, `apps/v1beta2`, `batch/v1beta1`) carry the same
/// metadata and Pod template and are read as the current version.
fn current_api(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Job | WorkloadKind::CronJob => "batch/v1",
        WorkloadKind::ReplicationController => "v1",
        _ => "apps/v1",
    }
}

fn legacy_api(kind: WorkloadKind, api: &str) -> bool {
    match kind {
        WorkloadKind::Job | WorkloadKind::CronJob => {
            api == "batch/v1beta1" || api == "batch/v2alpha1"
        }
        WorkloadKind::ReplicationController => false,
        _ => matches!(api, "extensions/v1beta1" | "apps/v1beta1" | "apps/v1beta2"),
    }
}

fn workload(
    kind: WorkloadKind,
    value: &mut Value,
    api: &str,
    origin: &Option<Origin>,
    oref: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<Workload> {
    let legacy = api != current_api(kind) && legacy_api(kind, api);
    if api != current_api(kind) {
        if legacy {
            if let Some(o) = value.as_object_mut() {
                o.insert("apiVersion".into(), Value::from(current_api(kind)));
            }
        } else {
            diags.push(Diagnostic::field_error(
                origin.as_ref(),
                oref,
                "apiVersion",
                Some(api.to_string()),
                format!(
                    "unsupported apiVersion for {}: expected {}",
                    kind.kind(),
                    current_api(kind)
                ),
            ));
            return None;
        }
    }
    let missing_template = || {
        Diagnostic::field_error(
            origin.as_ref(),
            oref,
            "spec.template",
            None,
            "missing Pod template",
        )
    };
    let (metadata, template, replicas) = match kind {
        WorkloadKind::Deployment => {
            let d: Deployment = typed_as(value, origin, oref, diags, legacy)?;
            let n = d.spec.as_ref().and_then(|s| s.replicas);
            (d.metadata, d.spec.map(|s| s.template), n)
        }
        WorkloadKind::ReplicaSet => {
            let d: ReplicaSet = typed_as(value, origin, oref, diags, legacy)?;
            let n = d.spec.as_ref().and_then(|s| s.replicas);
            (d.metadata, d.spec.and_then(|s| s.template), n)
        }
        WorkloadKind::StatefulSet => {
            let d: StatefulSet = typed_as(value, origin, oref, diags, legacy)?;
            let n = d.spec.as_ref().and_then(|s| s.replicas);
            (d.metadata, d.spec.map(|s| s.template), n)
        }
        WorkloadKind::DaemonSet => {
            let d: DaemonSet = typed_as(value, origin, oref, diags, legacy)?;
            (d.metadata, d.spec.map(|s| s.template), Some(-1))
        }
        WorkloadKind::Job => {
            let d: Job = typed_as(value, origin, oref, diags, legacy)?;
            let n = d.spec.as_ref().and_then(|s| s.parallelism);
            (d.metadata, d.spec.map(|s| s.template), n)
        }
        WorkloadKind::CronJob => {
            let d: CronJob = typed_as(value, origin, oref, diags, legacy)?;
            let job = d.spec.and_then(|s| s.job_template.spec);
            let n = job.as_ref().and_then(|s| s.parallelism);
            (d.metadata, job.map(|s| s.template), n)
        }
        WorkloadKind::ReplicationController => {
            let d: ReplicationController = typed_as(value, origin, oref, diags, legacy)?;
            let n = d.spec.as_ref().and_then(|s| s.replicas);
            (d.metadata, d.spec.and_then(|s| s.template), n)
        }
    };
    let Some(template) = template else {
        diags.push(missing_template());
        return None;
    };
    Some(Workload {
        kind,
        metadata,
        template,
        replicas: replica_count(replicas),
    })
}

/// A declared replica count (`None`: the API default, 1) as [`Workload::replicas`];
/// negative counts (and the DaemonSet marker -1) are unknown.
pub fn replica_count(declared: Option<i32>) -> Option<u32> {
    u32::try_from(declared.unwrap_or(1)).ok()
}

/// Types `value` as `T`. Every problem is a diagnostic: a type error (the object is then
/// dropped) and every field `T` does not know, which `kubectl --validate=strict` (its
/// default) rejects: a typo like `matchLabel` would otherwise read as an empty selector.
/// Unknown fields are errors, except under `status` (written by the cluster, and newer
/// clusters add fields there) and in objects of a legacy group version read as the
/// current one, where they are warnings. See: #11
fn typed<T: DeserializeOwned>(
    value: &Value,
    origin: &Option<Origin>,
    oref: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    typed_as(value, origin, oref, diags, false)
}

fn typed_as<T: DeserializeOwned>(
    value: &Value,
    origin: &Option<Origin>,
    oref: &ObjectRef,
    diags: &mut Vec<Diagnostic>,
    legacy: bool,
) -> Option<T> {
    if let Some(o) = origin {
        yaml11_warnings(value, o, oref, diags);
    }
    let (result, unknown) = crate::strict::deserialize::<T>(value);
    let mut strict_error = false;
    for u in unknown {
        let hint = match u.suggestion() {
            Some(s) => format!(", did you mean `{s}`?"),
            None => String::new(),
        };
        let in_status = u.path == "status" || u.path.starts_with("status.");
        let why = if in_status {
            "ignored: status is written by the cluster, perhaps by a newer release"
        } else if legacy {
            "ignored: a field of the legacy apiVersion"
        } else {
            "the API server rejects unknown fields; netpol would read the object without it"
        };
        let d = Diagnostic::field_error(
            origin.as_ref(),
            oref,
            &u.path,
            None,
            format!("unknown field `{}`{hint} ({why})", u.name),
        );
        let lenient = legacy || in_status;
        strict_error |= !lenient;
        diags.push(if lenient { d.warning() } else { d });
    }
    match result {
        // Never half-read: an object with an unknown field is left out, like one with a
        // type error.
        Ok(_) if strict_error => None,
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let offending = lookup(value, &path).and_then(|v| match v {
                Value::Object(_) | Value::Array(_) | Value::Null => None,
                other => Some(other.to_string().trim_matches('"').to_string()),
            });
            diags.push(Diagnostic::field_error(
                origin.as_ref(),
                oref,
                &path,
                offending,
                e.into_inner().to_string(),
            ));
            None
        }
    }
}

/// Plain scalars that YAML 1.1 (kubectl's parser) reads as booleans while YAML 1.2 (netpol's)
/// reads them as strings.
const YAML11_BOOLS: &[&str] = &[
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "on", "On", "ON", "off", "Off",
    "OFF",
];

/// Warns about label and selector values (`labels`, `matchLabels`, `matchExpressions[].values`
/// anywhere in the object) written as a plain YAML 1.1 boolean: netpol reads `app: yes` as
/// the string `yes`, kubectl as the boolean `true` (sent as `"true"` or rejected), so the
/// same file would select different Pods. Quoted values are fine. See: #11
fn yaml11_warnings(value: &Value, origin: &Origin, oref: &ObjectRef, diags: &mut Vec<Diagnostic>) {
    fn walk(v: &Value, path: &mut String, label_values: bool, out: &mut Vec<(String, String)>) {
        match v {
            Value::String(s) if label_values && YAML11_BOOLS.contains(&s.as_str()) => {
                out.push((path.clone(), s.clone()));
            }
            Value::Object(m) => {
                for (k, child) in m {
                    let len = path.len();
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(k);
                    let labels =
                        matches!(k.as_str(), "labels" | "matchLabels") && child.is_object();
                    let values = k == "values" && path.contains("matchExpressions[");
                    if labels || values {
                        // The values one level down are labels or selector values.
                        match child {
                            Value::Object(m) => {
                                for (lk, lv) in m {
                                    let l = path.len();
                                    path.push('.');
                                    path.push_str(lk);
                                    walk(lv, path, true, out);
                                    path.truncate(l);
                                }
                            }
                            Value::Array(items) => {
                                for (i, lv) in items.iter().enumerate() {
                                    let l = path.len();
                                    path.push_str(&format!("[{i}]"));
                                    walk(lv, path, true, out);
                                    path.truncate(l);
                                }
                            }
                            _ => {}
                        }
                    } else {
                        walk(child, path, false, out);
                    }
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{i}]"));
                    walk(child, path, false, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    /// Whether any string in `v` is a YAML 1.1 boolean: most objects have none, and this
    /// walk builds no paths. See: #14
    fn any_bool_word(v: &Value) -> bool {
        match v {
            Value::String(s) => YAML11_BOOLS.contains(&s.as_str()),
            Value::Object(m) => m.values().any(any_bool_word),
            Value::Array(items) => items.iter().any(any_bool_word),
            _ => false,
        }
    }
    if !any_bool_word(value) {
        return;
    }
    let mut found = Vec::new();
    walk(value, &mut String::new(), false, &mut found);
    for (path, s) in found {
        if origin.is_quoted(&path) != Some(false) {
            continue;
        }
        let as_bool = matches!(
            s.as_str(),
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON"
        );
        diags.push(
            Diagnostic::field_error(
                Some(origin),
                oref,
                &path,
                Some(s.clone()),
                format!(
                    "plain `{s}` is the string \"{s}\" here (YAML 1.2) but the boolean {as_bool} for kubectl (YAML 1.1), which then selects or labels differently or rejects the object: quote it"
                ),
            )
            .warning(),
        );
    }
}

/// Finds a value by field path (`a.b[2].c`).
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    let mut cur = value;
    if path.is_empty() {
        return Some(cur);
    }
    for seg in path.split('.') {
        let (key, idxs) = match seg.find('[') {
            Some(i) => (&seg[..i], &seg[i..]),
            None => (seg, ""),
        };
        if !key.is_empty() {
            cur = cur.get(key)?;
        }
        for idx in idxs.split('[').filter(|s| !s.is_empty()) {
            let n: usize = idx.trim_end_matches(']').parse().ok()?;
            cur = cur.get(n)?;
        }
    }
    Some(cur)
}

/// An empty span index, for objects parsed without positions.
pub fn no_spans() -> Arc<SpanIndex> {
    Arc::new(SpanIndex::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> (Inputs, Vec<Diagnostic>) {
        load(&[SourceText {
            name: "t.yaml",
            text,
        }])
    }

    #[test]
    fn reads_kinds_and_skips_others() {
        let (inputs, diags) = load_str(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: s}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: s}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: c, image: i}]}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(inputs.namespaces.len(), 1);
        assert_eq!(inputs.workloads.len(), 1);
        assert_eq!(inputs.services.len(), 1);
        assert_eq!(inputs.skipped.len(), 1);
    }

    #[test]
    fn typed_list_items_inherit_kind() {
        let (inputs, diags) = load_str(
            r#"{"apiVersion": "v1", "kind": "PodList", "items": [{"metadata": {"name": "a", "namespace": "x"}, "spec": {"containers": [{"name": "c"}]}}]}"#,
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(inputs.pods.len(), 1);
    }

    #[test]
    fn type_error_names_field_and_line() {
        let (_, diags) = load_str(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 80\n      endPort: lots\n",
        );
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(d.field.as_deref(), Some("spec.ingress[0].ports[0].endPort"));
        assert_eq!(d.line, Some(9));
        assert_eq!(d.value.as_deref(), Some("lots"));
    }

    #[test]
    fn legacy_workload_versions_are_read() {
        let (inputs, diags) = load_str(
            "apiVersion: extensions/v1beta1\nkind: DaemonSet\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {labels: {app: d}}\n    spec: {containers: [{name: c}]}\n",
        );
        assert!(diags.is_empty(), "{diags:?}");
        assert_eq!(inputs.workloads.len(), 1);
    }

    #[test]
    fn malformed_yaml_is_a_file_error() {
        let (_, diags) = load_str("kind: [\n");
        assert_eq!(diags.len(), 1);
        assert!(diags[0].message.starts_with("malformed"), "{}", diags[0]);
        assert!(diags[0].line.is_some());
    }
}
