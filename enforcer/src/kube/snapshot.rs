//! A one-time listing of live cluster state as compiler [`Inputs`], for
//! `netpol explain|matrix|test --cluster`.
//!
//! Lists Namespaces, Pods, NetworkPolicies and the workload controllers whose Pod
//! templates are endpoints, with their ownerReferences: the model, as for files, lets a
//! Deployment's ReplicaSets and a CronJob's Jobs be represented by their owner, and a
//! workload whose Pods are listed by those Pods (every Pod counts once). Objects are
//! slimmed and unlocated. ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`) are
//! listed when the API server serves them; without their CRD there are none.

use ::kube::api::ListParams;
use ::kube::{Api, Client};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec, ReplicationController};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use policy_compiler::{Diagnostic, Inputs, Located, Workload, WorkloadKind};
use serde::de::DeserializeOwned;

use super::{
    ClusterPolicyResource, KubeError, slim_cluster_policy, slim_namespace, slim_pod, slim_policy,
};

/// Page size of list calls.
const PAGE: u32 = 500;

async fn list_all<K>(client: &Client) -> Result<Vec<K>, KubeError>
where
    K: ::kube::Resource<DynamicType = ()>
        + k8s_openapi::Resource
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::all(client.clone());
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = api.list(&params).await.map_err(|source| KubeError::List {
            resource: <K as k8s_openapi::Resource>::URL_PATH_SEGMENT,
            source,
        })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

fn workload(
    kind: WorkloadKind,
    metadata: ObjectMeta,
    template: Option<PodTemplateSpec>,
    replicas: Option<i32>,
) -> Option<Located<Workload>> {
    let template = template?;
    let slim = slim_pod(Pod {
        metadata: template.metadata.unwrap_or_default(),
        spec: template.spec,
        status: None,
    });
    // The controller ownerReference stays: the model lets the owner stand for this one.
    let owner: Vec<_> = metadata
        .owner_references
        .iter()
        .flatten()
        .filter(|r| r.controller == Some(true))
        .cloned()
        .collect();
    let mut metadata = slim_namespace(Namespace {
        metadata,
        ..Namespace::default()
    })
    .metadata;
    metadata.owner_references = (!owner.is_empty()).then_some(owner);
    Some(Located::unlocated(Workload {
        kind,
        metadata,
        template: PodTemplateSpec {
            metadata: Some(slim.metadata),
            spec: slim.spec,
        },
        replicas: policy_compiler::load::replica_count(replicas),
    }))
}

/// Lists the ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`) through the
/// same typed resource as the agent's watch, slimmed as the watch slims them; a 404 (the
/// CRD is not installed) means none.
async fn list_cluster_policies(
    client: &Client,
) -> Result<Vec<Located<policy_compiler::cnp::ClusterNetworkPolicy>>, KubeError> {
    match list_all::<ClusterPolicyResource>(client).await {
        Ok(items) => Ok(items
            .into_iter()
            .map(|o| Located::unlocated(slim_cluster_policy(o.0)))
            .collect()),
        Err(KubeError::List {
            source: ::kube::Error::Api(e),
            ..
        }) if e.code == 404 => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Lists the live cluster state as compiler inputs (sorted by the compiler later), and
/// the warnings of listing it (other engines' policies, kinds that could not be listed).
pub async fn snapshot(client: &Client) -> Result<(Inputs, Vec<Diagnostic>), KubeError> {
    let foreign = super::foreign::foreign_policies(client).await;
    let mut inputs = Inputs {
        namespaces: list_all::<Namespace>(client)
            .await?
            .into_iter()
            .map(|o| Located::unlocated(slim_namespace(o)))
            .collect(),
        pods: list_all::<Pod>(client)
            .await?
            .into_iter()
            .map(|o| Located::unlocated(slim_pod(o)))
            .collect(),
        policies: list_all::<NetworkPolicy>(client)
            .await?
            .into_iter()
            .map(|o| Located::unlocated(slim_policy(o)))
            .collect(),
        cluster_policies: list_cluster_policies(client).await?,
        unevaluated: foreign.unevaluated,
        ..Inputs::default()
    };
    let w = &mut inputs.workloads;
    for d in list_all::<Deployment>(client).await? {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        w.extend(workload(
            WorkloadKind::Deployment,
            d.metadata,
            d.spec.map(|s| s.template),
            replicas,
        ));
    }
    for d in list_all::<ReplicaSet>(client).await? {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        w.extend(workload(
            WorkloadKind::ReplicaSet,
            d.metadata,
            d.spec.and_then(|s| s.template),
            replicas,
        ));
    }
    for d in list_all::<StatefulSet>(client).await? {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        w.extend(workload(
            WorkloadKind::StatefulSet,
            d.metadata,
            d.spec.map(|s| s.template),
            replicas,
        ));
    }
    for d in list_all::<DaemonSet>(client).await? {
        let replicas = Some(-1);
        w.extend(workload(
            WorkloadKind::DaemonSet,
            d.metadata,
            d.spec.map(|s| s.template),
            replicas,
        ));
    }
    for d in list_all::<Job>(client).await? {
        let replicas = d.spec.as_ref().and_then(|s| s.parallelism);
        w.extend(workload(
            WorkloadKind::Job,
            d.metadata,
            d.spec.map(|s| s.template),
            replicas,
        ));
    }
    for d in list_all::<CronJob>(client).await? {
        let job = d.spec.and_then(|s| s.job_template.spec);
        let replicas = job.as_ref().and_then(|s| s.parallelism);
        w.extend(workload(
            WorkloadKind::CronJob,
            d.metadata,
            job.map(|s| s.template),
            replicas,
        ));
    }
    for d in list_all::<ReplicationController>(client).await? {
        let replicas = d.spec.as_ref().and_then(|s| s.replicas);
        w.extend(workload(
            WorkloadKind::ReplicationController,
            d.metadata,
            d.spec.and_then(|s| s.template),
            replicas,
        ));
    }
    Ok((inputs, foreign.warnings))
}
