//! Integration tests of the policy compiler: golden cases from testdata/ and the np-guard
//! conformance cases from ../shared.

#![allow(clippy::unwrap_used)] // test binary: a failed unwrap is a failed test

mod cases;
mod cluster_policy;
mod conformance;
mod connectivity;
mod fuzz;
mod invalid;
mod npguard;
mod regressions;
mod ruleset;
mod support;
