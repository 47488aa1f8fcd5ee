//! Integration tests of the lab: topologies, probes, `lab::run` and the kernel proof of
//! every golden case. Real-kernel tests need root and `ip netns`; they skip with a
//! message otherwise, or fail if `NETPOL_REQUIRE_KERNEL=1` (see `testkit::kernel`).

// This whole crate is test code; clippy's allow-unwrap-in-tests does not reach helpers
// outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod lab;
mod probe;
mod proof;
mod realnode;
mod topology;

// The shared test kit, under the paths the modules here use.
use testkit::{cases, kernel};
