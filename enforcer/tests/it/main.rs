//! Integration tests of the enforcer. Real-kernel tests need root and `ip netns`; they
//! skip with a message otherwise, or fail if `NETPOL_REQUIRE_KERNEL=1` (see `kernel`).

// This whole crate is test code; clippy's allow-unwrap-in-tests does not reach helpers
// outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod agent;
mod agent_live;
mod apiserver;
mod cases;
mod discovery;
mod drops;
mod install;
mod kernel;
mod kube;
mod lab;
mod netns;
mod nft;
mod probe;
mod proof;
mod realnode;
mod ruleset;
mod topology;
