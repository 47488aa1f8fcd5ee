//! The node agent: keeps each local Pod's `table inet netpol` equal to the compiled policy.
//!
//! ```text
//! StateSource (ManifestSource: manifest dir | KubeSource: watches)
//!     ──Scan { events }──▶ State::handle (one place) ◀──Event::CniAdd/CniDel── cni::server
//!                                                   │ compile (State::build_model,
//!                                                   │ AllowGraph::build, render per
//!                                                   ▼ local enforceable Pod)
//!          one PodRecord per Pod: desired (netns, checksum, text), applied (netns,
//!          checksum), kernel listing checksum, drift, backoff, last error
//!                         └────────── plan ──────────┘
//!                                       ▼
//!                  Op::{Apply, Remove} ──Applier──▶ nft in the Pod netns
//!                                       │
//!            verify: kernel listing vs applied checksum ──drift──▶ re-apply
//!            pending CNI ADDs answered once their Pod's ruleset is applied
//! ```
//!
//! Modules: [`Reconciler`] (`reconciler.rs`, with the node table in `node_table.rs`) is
//! the synchronous core (unit-tested with
//! [`RecordingApplier`](crate::applier::RecordingApplier)); `cni.rs` answers the
//! `netpol-cni` plugin, `discovery.rs` finds Pods' netns by IP, `chaining.rs` keeps the
//! plugin chained, `netns_guard.rs` fails closed on shared namespaces; `config.rs` holds
//! the settings and `render.rs` the [`RulesetSource`]. [`Agent`] (`shell.rs`) runs the
//! core on tokio: every pass runs in `spawn_blocking`, applies run on plain threads
//! (never on an async worker), and `nft` itself enters the netns as a child process.
//!
//! **Fail closed.** Nothing is flushed first: an apply replaces the table in one nft
//! transaction, so an isolated Pod is never open in between. A failed compilation or
//! render keeps the last good rulesets; a failed apply keeps the last good table (nft is
//! atomic) and is retried with exponential backoff; an incomplete or unreachable source
//! keeps the last known state. Tables found changed in the kernel (tampering) are
//! re-applied and counted.
//!
//! **Drop reports.** With [`AgentConfig::drops`], each compile that changes the
//! rulesets hands the new model and the enforced namespaces to a
//! [`DropReporter`](crate::reporter::DropReporter) (a plain thread) before anything is
//! applied; see [`crate::reporter`].

mod chaining;
mod cni;
mod config;
mod discovery;
mod events;
mod fast_add;
mod incremental;
mod model_step;
mod netns_guard;
mod node_table;
mod reconciler;
mod render;
mod shared;
mod shell;

pub use self::cni::CniStatus;
pub use self::config::{AgentConfig, ChainConfig, CniConfig};
pub use self::fast_add::FastAdd;
pub use self::model_step::ModelSource;
pub use self::reconciler::{CompileStats, Reconciler, SyncReport};
pub use self::render::{CompiledRulesets, RenderError, RulesetSource};
pub use self::shared::{SharedEntries, SharedRenders, Swept};
pub use self::shell::{Agent, AgentError};

/// Displays an error with its sources (`a: b: c`); defined in `netpol-common`, shared by
/// every crate.
pub use netpol_common::ErrorChain;
