//! netpol enforcer: applies compiled nftables rulesets inside Pod network namespaces,
//! and the real-kernel lab used to prove those rulesets with real packets.
//!
//! Main types and modules:
//! - [`netns`]: create and delete named network namespaces, run a closure inside one on
//!   a dedicated thread ([`netns::run_in`], [`netns::spawn_in`]), run a command inside
//!   one ([`netns::exec`]).
//! - [`topology::Topology`]: lab hosts, each in its own namespace, on one bridge that
//!   lives in a separate hub namespace (nothing touches the host's network).
//! - [`probe::Prober`]: real TCP, UDP and SCTP servers and clients between lab hosts;
//!   SCTP is spoken over raw IP sockets because the kernel may lack the SCTP module.
//! - [`nft`]: load a ruleset into a namespace in one transaction, list it back.
//! - [`drops`]: drop reports: NFLOG listener per Pod namespace, rate limiting, and
//!   JSON lines naming the Pods, isolating policies and nearest miss.
//! - [`lab`]: `netpol lab`: the manifests' Pods as namespaces, rulesets applied by the
//!   agent's [`agent::Reconciler`], every pair probed, kernel vs compiler, drop reports.
//! - [`cni::install`]: put the `netpol-cni` chained plugin on a node: the binary into
//!   the CNI bin directory, an entry into the node's network configuration (and back).
//! - [`ruleset_json`]: a compiled [`policy_compiler::ruleset::Ruleset`] as nftables JSON
//!   through the `nftables` crate (with the adapter for the crate's gaps).
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
//! use std::time::Duration;
//! use enforcer::probe::{Listener, Prober};
//! use policy_compiler::Protocol;
//! use enforcer::topology::{HostSpec, Topology};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hosts = [
//!     HostSpec::new("client", Some("10.0.0.1/24".parse()?), Some("fd00::1/64".parse()?)),
//!     HostSpec::new("server", Some("10.0.0.2/24".parse()?), Some("fd00::2/64".parse()?)),
//! ];
//! let lab = Topology::build("demo", &hosts)?;
//! enforcer::nft::apply(
//!     &lab.host("server").ok_or("no server")?.netns,
//!     "table inet netpol { chain input { type filter hook input priority 0; policy drop; \
//!        ct state established,related accept; iif lo accept; \
//!        meta l4proto ipv6-icmp accept; tcp dport 80 accept; } }",
//! )?;
//! let prober = Prober::start(&lab, &[Listener::new("server", Protocol::Tcp, 80)])?;
//! let to = "10.0.0.2".parse()?;
//! let r = prober.probe("client", to, Protocol::Tcp, 80, Duration::from_millis(400))?;
//! assert!(r.connected, "{}", r.detail);
//! drop(prober); // stop servers before the namespaces go away
//! lab.teardown()?;
//! # Ok(())
//! # }
//! ```

pub mod agent;
pub mod applier;
pub mod cni;
pub mod discovery;
pub mod drops;
pub mod http;
pub mod kube;
pub mod lab;
pub mod manifests;
pub mod metrics;
pub mod netns;
pub mod nft;
pub mod node;
pub mod plan;
pub mod probe;
pub mod reporter;
pub mod ruleset_json;
pub mod source;
pub mod state;
pub mod topology;
