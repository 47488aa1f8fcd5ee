//! netpol enforcer: the node agent, which applies compiled nftables rulesets inside Pod
//! network namespaces and keeps them equal to the compiled policy.
//!
//! Main types and modules:
//! - [`netns`]: create and delete named network namespaces, run a closure inside one on
//!   a dedicated thread ([`netns::run_in`], [`netns::spawn_in`]), run a command inside
//!   one ([`netns::exec`]).
//! - [`nft`]: load a ruleset into a namespace in one transaction, list it back.
//! - [`nfnl`]: nf_tables over netlink in-process: the generation of a namespace, peer-map
//!   element updates in one conditional transaction, commit events.
//! - [`drops`]: drop reports: NFLOG listener per Pod namespace, rate limiting, and
//!   JSON lines naming the Pods, isolating policies and nearest miss.
//! - [`cni`]: the agent's end of the `netpol-cni` plugin ([`cni::server`], the records
//!   of [`cni::records`]); the wire types come from the `netpol-cni` crate, which is the
//!   plugin's own process.
//! - [`ruleset_json`]: a compiled [`policy_compiler::ruleset::Ruleset`] as nftables JSON
//!   through the `nftables` crate (with the adapter for the crate's gaps).
//!
//! The lab (topologies, probes, `netpol lab`) is the `netpol-lab` crate, which drives this
//! agent's [`agent::Reconciler`]; the plugin and its installer are the `netpol-cni` crate.
//!
//! The node agent (see `docs/agent.md`):
//! - [`state::State`]: the object index (apply/delete/reset), fed in one place;
//! - [`discovery::discover`]: the fallback for Pods started before the CNI plugin: the
//!   one network namespace holding a Pod's addresses (ambiguity is reported, never
//!   guessed);
//! - [`manifests::ManifestDir`]: the manifest-directory source (fail closed per file);
//! - [`kube::run_source`]: the Kubernetes source (watchers, per-kind relists, slim
//!   objects, fail closed, `netpol_watch_*` metrics with
//!   [`kube::run_source_with_metrics`]), and [`kube::snapshot::snapshot`] for live queries;
//! - [`plan::plan`]: pure `desired x actual -> Vec<Op>`, with [`plan::Backoff`];
//! - [`applier::Applier`]: [`applier::NftApplier`] (real) and
//!   [`applier::RecordingApplier`] (fake);
//! - [`agent::Reconciler`] (synchronous core) and [`agent::Agent`] (tokio loop, HTTP);
//! - [`reporter::DropReporter`]: drop reports of the enforced Pods (a listener per
//!   Pod netns, rate limited, described against the agent's latest model);
//! - [`metrics::Metrics`] (prometheus-client) and [`http`] (`/metrics`, `/healthz`,
//!   `/readyz`).
//!
//! Everything here needs root and a kernel with network namespaces;
//! [`netns::kernel_support`] says whether that is available.
//!
//! # Example
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! enforcer::netns::kernel_support()?;
//! enforcer::netns::add("demo")?;
//! enforcer::nft::apply(
//!     "demo",
//!     "table inet netpol { chain input { type filter hook input priority 0; policy drop; \
//!        ct state established,related accept; iif lo accept; tcp dport 80 accept; } }",
//! )?;
//! println!("{}", enforcer::nft::list_text("demo")?);
//! enforcer::netns::delete("demo")?;
//! # Ok(())
//! # }
//! ```

pub mod agent;
pub mod applier;
/// The agent's end of the `netpol-cni` plugin: the socket server and the records on
/// disk. The wire types, and the conflist transforms the agent uses to keep the plugin
/// chained ([`install::is_chained`], [`install::chain`]), are the `netpol-cni` crate's
/// (re-exported here).
pub mod cni {
    pub use netpol_cni::install;
    pub use netpol_cni::{
        Command, DEFAULT_SOCKET, MAX_LINE, PodRef, Request, Response, WIRE_VERSION,
    };

    pub mod records;
    pub mod server;
}
pub mod discovery;
pub mod drops;
pub mod http;
pub mod kube;
pub mod manifests;
pub mod metrics;
pub mod netns;
pub mod nfnl;
pub mod nft;
pub mod node;
pub mod plan;
pub mod reporter;
pub mod ruleset_json;
pub mod source;
pub mod state;
pub mod trust;
