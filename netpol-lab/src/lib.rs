//! netpol lab: the real-kernel harness that proves compiled rulesets with real packets.
//! It runs on a workstation or CI machine (as root), never on a node: `netpol lab` is a
//! subcommand of the `netpol` CLI, which depends on this crate.
//!
//! Main types and modules:
//! - [`topology::Topology`]: lab hosts, each in its own namespace, on one bridge that
//!   lives in a separate hub namespace (nothing touches the host's network).
//! - [`probe::Prober`]: real TCP, UDP and SCTP servers and clients between lab hosts;
//!   SCTP is spoken over raw IP sockets because the kernel may lack the SCTP module.
//! - [`lab`]: `netpol lab`: the manifests' Pods as namespaces, rulesets applied by the
//!   agent's `enforcer::agent::Reconciler`, every pair probed, kernel vs compiler, drop
//!   reports.
//!
//! Everything here needs root and a kernel with network namespaces;
//! `enforcer::netns::kernel_support` says whether that is available.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use netpol_lab::probe::{Listener, Prober};
//! use policy_compiler::Protocol;
//! use netpol_lab::topology::{HostSpec, Topology};
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

// The agent's modules the lab drives, under the paths these files used while they lived in
// the `enforcer` crate (`crate::netns`, `crate::agent`, ...).
use enforcer::{agent, applier, drops, manifests, metrics, netns, nft, state};

pub mod lab;
pub mod probe;
pub mod topology;
