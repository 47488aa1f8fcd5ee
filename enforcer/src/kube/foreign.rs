//! Other engines' policy objects in the live cluster (`--cluster`): the kinds
//! [`policy_compiler::foreign`] knows (Cilium, Calico, Antrea, ...) and the retired
//! v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy.
//!
//! API discovery finds which of them the server has: `GET /apis` (the group list), then
//! `GET /apis/{group}/{version}` for the groups of interest only (preferred version first;
//! each kind is listed at the first version that serves it). Only metadata is listed
//! (`list_metadata`: name and namespace are all a warning needs). An absent group or CRD
//! (not in discovery, or 404) means no such objects; any other failure (403, 500, an
//! unreachable aggregated API) is a warning naming the group or kind, never silence and
//! never an error. Each object found gives the same warning as from a file and is listed
//! in `Inputs::unevaluated`, so answers carry the caveat. See: #14

use ::kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams};
use ::kube::{Api, Client};
use policy_compiler::diagnostic::{Diagnostic, ObjectRef, Severity};
use policy_compiler::foreign;

/// Page size of list calls.
const PAGE: u32 = 500;

/// The group of the retired v1alpha1 kinds (and of ClusterNetworkPolicy, listed elsewhere).
const RETIRED_GROUP: &str = "policy.networking.k8s.io";
/// The retired kinds, served at v1alpha1 by the old network-policy-api CRDs.
const RETIRED_KINDS: &[&str] = &["AdminNetworkPolicy", "BaselineAdminNetworkPolicy"];
/// Who enforced the retired kinds.
const RETIRED_BY: &str = "the network-policy-api (v1alpha1)";

/// Objects of other engines' policy kinds found in the cluster.
#[derive(Debug, Default)]
pub struct Foreign {
    /// For `Inputs::unevaluated` (`kind` is `apiVersion Kind`), sorted.
    pub unevaluated: Vec<ObjectRef>,
    /// One warning per object, and one per group or kind that could not be listed.
    pub warnings: Vec<Diagnostic>,
}

/// A kind to list: group, version, kind, plural, who enforces it.
struct Served {
    group: &'static str,
    version: String,
    kind: &'static str,
    plural: String,
    by: &'static str,
}

/// A warning about the listing itself (no object).
fn listing_warning(message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Warning,
        file: None,
        line: None,
        column: None,
        object: None,
        field: None,
        value: None,
        message,
    }
}

/// The groups of interest, in a fixed order: `(group, kinds, who enforces them)`.
fn wanted() -> Vec<(&'static str, &'static [&'static str], &'static str)> {
    let mut w: Vec<_> = foreign::groups().collect();
    w.push((RETIRED_GROUP, RETIRED_KINDS, RETIRED_BY));
    w
}

/// Finds the served foreign kinds through discovery; failures become warnings.
async fn discover(client: &Client, warnings: &mut Vec<Diagnostic>) -> Vec<Served> {
    let groups = match client.list_api_groups().await {
        Ok(g) => g.groups,
        Err(::kube::Error::Api(e)) if e.code == 404 => return Vec::new(),
        Err(e) => {
            warnings.push(listing_warning(format!(
                "cannot discover the API groups (GET /apis: {e}): policies of other engines (Cilium, Calico, Antrea, ...) are not listed, so real connectivity may differ from netpol's answers"
            )));
            return Vec::new();
        }
    };
    let mut served = Vec::new();
    for (group, kinds, by) in wanted() {
        let Some(g) = groups.iter().find(|g| g.name == group) else {
            continue;
        };
        // Preferred version first, then the others in the server's order.
        let mut versions: Vec<String> = g
            .preferred_version
            .iter()
            .map(|v| v.version.clone())
            .collect();
        for v in &g.versions {
            if !versions.contains(&v.version) {
                versions.push(v.version.clone());
            }
        }
        let mut found: Vec<&str> = Vec::new();
        for version in versions {
            let gv = format!("{group}/{version}");
            let resources = match client.list_api_group_resources(&gv).await {
                Ok(r) => r.resources,
                Err(::kube::Error::Api(e)) if e.code == 404 => continue,
                Err(e) => {
                    warnings.push(listing_warning(format!(
                        "cannot discover the resources of {gv} ({e}): its {by} policies are not listed, so real connectivity may differ from netpol's answers"
                    )));
                    continue;
                }
            };
            for r in resources {
                // Subresources (`x/status`) share the kind.
                if r.name.contains('/') {
                    continue;
                }
                let Some(kind) = kinds.iter().find(|k| **k == r.kind) else {
                    continue;
                };
                if group == RETIRED_GROUP && version != "v1alpha1" {
                    continue;
                }
                if found.contains(kind) {
                    continue;
                }
                found.push(kind);
                served.push(Served {
                    group,
                    version: version.clone(),
                    kind,
                    plural: r.name,
                    by,
                });
            }
        }
    }
    served
}

/// Lists the metadata of every object of `s`; none when the CRD is absent (404).
async fn list(client: &Client, s: &Served) -> Result<Vec<ObjectRef>, ::kube::Error> {
    let gvk = GroupVersionKind::gvk(s.group, &s.version, s.kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, &s.plural);
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(PAGE);
    loop {
        let page = match api.list_metadata(&params).await {
            Ok(p) => p,
            Err(::kube::Error::Api(e)) if e.code == 404 => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        out.extend(page.items.into_iter().map(|o| ObjectRef {
            kind: s.kind.to_owned(),
            namespace: o.metadata.namespace.unwrap_or_default(),
            name: o.metadata.name.unwrap_or_default(),
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// Lists the objects of other engines' policy kinds that the server has. Never fails:
/// what cannot be listed is a warning.
pub async fn foreign_policies(client: &Client) -> Foreign {
    let mut out = Foreign::default();
    let served = discover(client, &mut out.warnings).await;
    let mut found = Vec::new();
    for s in &served {
        let api_version = format!("{}/{}", s.group, s.version);
        match list(client, s).await {
            Ok(objects) => {
                found.extend(objects.into_iter().map(|o| (api_version.clone(), s.by, o)));
            }
            Err(e) => out.warnings.push(listing_warning(format!(
                "cannot list {} ({api_version}): {e}: its objects, which {} enforces, are not known, so real connectivity may differ from netpol's answers",
                s.kind, s.by
            ))),
        }
    }
    found.sort_by(|a, b| {
        (&a.0, &a.2.kind, &a.2.namespace, &a.2.name).cmp(&(
            &b.0,
            &b.2.kind,
            &b.2.namespace,
            &b.2.name,
        ))
    });
    for (api_version, by, object) in found {
        let kind = object.kind.clone();
        let warning = match foreign::replacement(&kind) {
            Some(r) if api_version.starts_with(RETIRED_GROUP) => Diagnostic::field_error(
                None,
                &object,
                "kind",
                Some(format!("{api_version} {kind}")),
                foreign::retired_message(&api_version, &kind, r),
            )
            .warning(),
            _ => foreign::warning(None, &object, &api_version, &kind, by),
        };
        out.warnings.push(warning);
        out.unevaluated
            .push(foreign::unevaluated_ref(object, &api_version, &kind));
    }
    out
}
