//! "Require the kernel or skip": the one place that decides whether a real-kernel test
//! runs, plus shared lab fixtures.

use std::sync::OnceLock;

use enforcer::netns;
use enforcer::topology::{HostSpec, Topology};

/// Environment variable that turns "skip" into "fail".
pub(crate) const REQUIRE_ENV: &str = "NETPOL_REQUIRE_KERNEL";

/// True if the test should run. Prints why it is skipped otherwise; panics instead of
/// skipping when `NETPOL_REQUIRE_KERNEL=1`.
pub(crate) fn available(test: &str) -> bool {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    match SUPPORT.get_or_init(netns::kernel_support) {
        Ok(()) => true,
        Err(reason) if std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1") => {
            panic!("{test}: {REQUIRE_ENV}=1 but the kernel lab is unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason} (set {REQUIRE_ENV}=1 to fail instead)");
            false
        }
    }
}

/// A topology prefix unique to this test process and `tag` (at most 6 characters), with
/// leftovers of an earlier crashed run of the same name removed.
pub(crate) fn prefix(tag: &str) -> String {
    assert!(tag.len() <= 6 && tag.bytes().all(|b| b.is_ascii_alphanumeric()));
    let p = format!("np{}{tag}", std::process::id() % 100_000);
    Topology::cleanup_stale(&p).expect("cleanup_stale");
    p
}

/// `n` dual-stack hosts `h0..hn` with 10.0.0.(11+i)/24 and fd00::(11+i)/64.
pub(crate) fn dual_stack(n: u8) -> Vec<HostSpec> {
    (0..n)
        .map(|i| {
            HostSpec::new(
                format!("h{i}"),
                Some(format!("10.0.0.{}/24", 11 + i).parse().unwrap()),
                Some(format!("fd00::{:x}/64", 0x11 + i).parse().unwrap()),
            )
        })
        .collect()
}
