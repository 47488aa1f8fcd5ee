//! netpol enforcer: applies compiled nftables rulesets inside Pod network namespaces.
//!
//! - [`netns`]: create and delete named network namespaces, run a closure inside one on
//!   a dedicated thread, run a command inside one.
//! - [`topology::Topology`]: lab hosts in their own namespaces on one bridge that lives
//!   in a hub namespace.
//! - [`probe::Prober`]: real TCP, UDP and SCTP servers and clients between lab hosts;
//!   SCTP is spoken over raw IP sockets because the kernel may lack the SCTP module.
//! - [`nft`]: load a ruleset into a namespace in one transaction, list it back.

pub mod netns;
pub mod nft;
pub mod probe;
pub mod topology;
