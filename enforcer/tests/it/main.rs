//! Integration tests of the enforcer. Real-kernel tests need root and `ip netns`; they
//! skip with a message otherwise, or fail if `NETPOL_REQUIRE_KERNEL=1` (see `kernel`).

// This whole crate is test code; clippy's allow-unwrap-in-tests does not reach helpers
// outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod agent;
mod agent_http;
mod agent_live;
mod audit;
mod discovery;
mod drops;
mod fast_add;
mod fuzz;
mod install;
mod kube;
mod netns;
mod nfnl;
mod nfnl_table;
mod nft;
mod node_table;
mod ruleset;

// The shared test kit, under the paths the modules here use.
use testkit::{apiserver, cases, kernel};
