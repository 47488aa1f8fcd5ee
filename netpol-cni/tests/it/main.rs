//! Integration tests of the `netpol-cni` binary: one test binary, a module per area.

// This whole crate is test code; clippy's allow-unwrap-in-tests does not reach helpers
// outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod cni;
mod hostile;
