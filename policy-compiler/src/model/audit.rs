//! Audit (staged) policies: the `netpol.io/mode` annotation (#12). See docs/audit.md.
//!
//! A NetworkPolicy or ClusterNetworkPolicy annotated `netpol.io/mode: audit` is kept out of
//! [`Model::policies`] / [`Model::cluster_policies`] (what every verdict, ruleset and
//! analysis reads: the *enforced* verdict) and held in [`Model::audit_policies`] /
//! [`Model::audit_cluster_policies`]. [`Model::audited`] is the model as if they were
//! enforced: the *audited* verdict.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{Builder, ClusterPolicyId, Model, PolicyId};
use crate::diagnostic::{Diagnostic, ObjectRef, Origin};

/// The annotation that makes a policy an audit policy.
pub const MODE_ANNOTATION: &str = "netpol.io/mode";

/// Field path of the annotation, as diagnostics name it.
pub const MODE_FIELD: &str = "metadata.annotations[\"netpol.io/mode\"]";

/// How a policy takes part in enforcement (`netpol.io/mode`; absent = enforce).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum PolicyMode {
    /// Enforced (the default).
    #[default]
    Enforce,
    /// Logged only: what it would drop is reported, nothing is dropped or allowed.
    Audit,
}

impl PolicyMode {
    /// `enforce` or `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyMode::Enforce => "enforce",
            PolicyMode::Audit => "audit",
        }
    }
}

impl fmt::Display for PolicyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Longest value quoted back in a diagnostic; a longer one is cut (hostile input).
const MAX_QUOTED: usize = 64;

impl Builder {
    /// The mode of an object from its annotations, or `None` (with an error diagnostic at
    /// [`MODE_FIELD`]) for a value other than `audit` or `enforce`.
    pub(super) fn policy_mode(
        &mut self,
        meta: &ObjectMeta,
        origin: Option<&Origin>,
        obj: &ObjectRef,
    ) -> Option<PolicyMode> {
        let Some(value) = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get(MODE_ANNOTATION))
        else {
            return Some(PolicyMode::Enforce);
        };
        match value.as_str() {
            "enforce" => Some(PolicyMode::Enforce),
            "audit" => Some(PolicyMode::Audit),
            other => {
                // The span index names map keys with dots: locate the key there, report
                // the path with the bracketed key (the key itself contains dots).
                let mut d = Diagnostic::field_error(
                    origin,
                    obj,
                    &format!("metadata.annotations.{MODE_ANNOTATION}"),
                    Some(quoted(other)),
                    "unsupported value: supported values are \"audit\", \"enforce\"",
                );
                d.field = Some(MODE_FIELD.to_string());
                self.diags.push(d);
                None
            }
        }
    }
}

/// `value`, cut at [`MAX_QUOTED`] characters with `...`.
fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_QUOTED) {
        Some((i, _)) => format!("{}...", &value[..i]),
        None => value.to_string(),
    }
}

impl Model {
    /// True when any policy is an audit policy.
    pub fn has_audit(&self) -> bool {
        !self.audit_policies.is_empty() || !self.audit_cluster_policies.is_empty()
    }

    /// The model as if every audit policy were enforced (the *audited* verdict's model),
    /// or `None` when there is no audit policy. Its policies keep their
    /// [`PolicyMode::Audit`], so answers can name them as audit policies; ids are
    /// renumbered in the usual order.
    pub fn audited(&self) -> Option<Model> {
        if !self.has_audit() {
            return None;
        }
        let mut m = self.clone();
        m.policies.append(&mut m.audit_policies);
        sort_policies(&mut m.policies);
        m.cluster_policies.append(&mut m.audit_cluster_policies);
        sort_cluster_policies(&mut m.cluster_policies);
        Some(m)
    }
}

/// Sorts by `ns/name` and numbers them.
pub(super) fn sort_policies(p: &mut [super::Policy]) {
    p.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    for (i, p) in p.iter_mut().enumerate() {
        p.id = PolicyId(u32::try_from(i).unwrap_or(u32::MAX));
    }
}

/// Sorts in evaluation order (tier, priority, name) and numbers them.
pub(super) fn sort_cluster_policies(p: &mut [super::ClusterPolicy]) {
    p.sort_by(|a, b| (a.tier, a.priority, &a.name).cmp(&(b.tier, b.priority, &b.name)));
    for (i, p) in p.iter_mut().enumerate() {
        p.id = ClusterPolicyId(u32::try_from(i).unwrap_or(u32::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_cuts_long_values_on_char_boundaries() {
        assert_eq!(quoted("abc"), "abc");
        let long = "é".repeat(100);
        let q = quoted(&long);
        assert!(q.ends_with("..."));
        assert_eq!(q.chars().count(), MAX_QUOTED + 3);
    }
}
