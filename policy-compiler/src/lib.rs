//! policy-compiler: Kubernetes NetworkPolicy semantics, pure.
//!
//! Text in, answers out, no IO:
//! manifests --[`load`]--> typed objects --[`Model::build`]--> [`Model`]
//! --[`AllowGraph::build`]--> [`AllowGraph`] --> explain / matrix / rulesets.
//!
//! ```
//! use policy_compiler::{load, Model, AllowGraph, SourceText, Protocol};
//! let yaml = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\n";
//! let (inputs, diags) = load(&[SourceText { name: "x.yaml", text: yaml }]);
//! assert!(diags.is_empty());
//! let (model, diags) = Model::build(&inputs);
//! assert!(diags.is_empty());
//! let graph = AllowGraph::build(&model);
//! let a = model.endpoint_by_key("x/a").unwrap();
//! assert!(graph.reach(&model, a.into(), a.into()).allowed.contains(Protocol::Tcp, 80));
//! ```

pub mod audit;
pub mod case;
pub mod cnp;
pub mod connectivity;
pub mod declared;
pub mod diagnostic;
pub mod expect;
pub mod explain;
pub mod foreign;
pub mod graph;
pub mod lint;
pub mod load;
pub mod matrix;
pub mod model;
pub mod ports;
pub mod ruleset;
pub mod selector;
pub mod source;
pub mod strict;
pub mod synth;
pub mod validate;

pub use audit::AuditView;
pub use diagnostic::{Diagnostic, ObjectRef, Origin, Severity};
pub use explain::{
    Destination, Explanation, PortQuery, ServiceExplanation, explain, explain_service,
    explain_service_with_audit, explain_with_audit, parse_destination, parse_source,
};
pub use graph::{AllowGraph, Reach, Subject};
pub use load::{Inputs, Located, SourceText, Workload, WorkloadKind, load};
pub use matrix::{
    Matrix, MatrixFormat, MatrixQuery, MatrixWriter, ServiceMatrix, matrix, matrix_with_audit,
    service_matrix, service_matrix_with_audit,
};
pub use model::{
    Direction, Endpoint, EndpointId, Model, ModelChange, Patched, Policy, PolicyId, PolicyMode,
    Service,
};
pub use ports::{PortRanges, PortSet, Protocol};
