//! Audit (staged) policies, the analysis side (#12): the *audited* view of a model, as if
//! every policy annotated `netpol.io/mode: audit` were enforced, beside the enforced one
//! that every other answer uses. See docs/audit.md.
//!
//! ```
//! use policy_compiler::{AllowGraph, Model, SourceText, audit::AuditView, load};
//! let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
//! let (inputs, _) = load(&[SourceText { name: "a.yaml", text }]);
//! let (model, _) = Model::build(&inputs);
//! // No audit policy: no audited view, and every answer is the enforced one.
//! assert!(AuditView::of(&model).is_none());
//! ```

use crate::graph::AllowGraph;
use crate::model::Model;

/// The model and allow graph with every audit policy enforced.
#[derive(Debug, Clone)]
pub struct AuditView {
    /// [`Model::audited`].
    pub model: Model,
    /// Its allow graph.
    pub graph: AllowGraph,
}

impl AuditView {
    /// The audited view, or `None` when the model has no audit policy (then the audited
    /// verdict is the enforced one everywhere).
    pub fn of(model: &Model) -> Option<AuditView> {
        let model = model.audited()?;
        let graph = AllowGraph::build(&model);
        Some(AuditView { model, graph })
    }
}
