//! The netpol test kit: code shared by the integration tests of every crate (and by
//! examples that need a cluster or a kernel), never by a shipped binary
//! (`publish = false`).
//!
//! - [`kernel`]: "require the kernel or skip": the one place that decides whether a
//!   real-kernel test runs (`NETPOL_REQUIRE_KERNEL=1` turns a skip into a failure), unique
//!   namespace prefixes per test process, and lab fixtures.
//! - [`cases`]: the golden cases of `testdata/cases` (by `policy_compiler::case`, as
//!   `netpol test` finds them), compiled for the kernel tests.
//! - [`apiserver`]: an in-process fake Kubernetes API server speaking list/watch, so no
//!   test needs a cluster.
//! - [`imports`]: the module import graph of a crate read from its sources, and its
//!   cycles (`tests/it/imports.rs` fails on any cycle in any workspace crate).
//!
//! # Example
//!
//! ```no_run
//! if testkit::kernel::available("my_test") {
//!     let prefix = testkit::kernel::prefix("mine");
//!     let hosts = testkit::kernel::dual_stack(2);
//!     # let _ = (prefix, hosts);
//! }
//! ```

// This whole crate is test code; clippy's allow-unwrap-in-tests does not reach helpers
// outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

pub mod apiserver;
pub mod cases;
pub mod imports;
pub mod kernel;
