//! Integration tests of the `netpol` binary: one test binary, a module per subcommand.
//! Each runs the built binary on the repository's cases or on temporary directories.

// This whole crate is test code; clippy's allow-unwrap-in-tests does not reach helpers
// outside `#[test]` functions.
#![allow(clippy::unwrap_used)]

mod analysis;
mod cluster;
mod explain;
mod hostile;
mod html;
mod lab;
mod matrix;
mod nca;
mod realnode;
mod regressions;
mod support;
mod test_cmd;

// The fake API server, for `--cluster`.
use testkit::apiserver;
