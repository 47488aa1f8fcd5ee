//! Audit (staged) policies, the analysis side (#12): the *audited* view of a model, as if
//! every policy annotated `netpol.io/mode: audit` were enforced, beside the enforced one
//! that every other answer uses. See docs/audit.md.
//!
//! ```
//! use policy_compiler::{Model, SourceText, audit::AuditView, load};
//! let text = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n";
//! let (inputs, _) = load(&[SourceText { name: "a.yaml", text }]);
//! let (model, _) = Model::build(&inputs);
//! // No audit policy: no audited view, and every answer is the enforced one.
//! assert!(AuditView::of(&model).is_none());
//! ```

// The type lives beside the graph that holds it (`AllowGraph::audit`), so this module
// only imports the graph and nothing imports back (no module cycle).
pub use crate::graph::AuditView;
