//! "Require the kernel or skip": the one place that decides whether a real-kernel test
//! runs, plus shared lab fixtures.

use std::io::Write as _;
use std::sync::OnceLock;

use enforcer::netns;
use enforcer::topology::{HostSpec, Topology};

/// Environment variable that turns "skip" into "fail".
pub(crate) const REQUIRE_ENV: &str = "NETPOL_REQUIRE_KERNEL";

/// True if the test should run. Prints why it is skipped otherwise; panics instead of
/// skipping when `NETPOL_REQUIRE_KERNEL=1`.
pub(crate) fn available(test: &str) -> bool {
    static SUPPORT: OnceLock<Result<(), String>> = OnceLock::new();
    let support = SUPPORT.get_or_init(|| {
        let support = netns::kernel_support();
        if let Err(reason) = &support {
            // Written to the real stderr once: the harness captures `eprintln!` output
            // of passing tests, and a silent skip would look like a pass.
            let _ = writeln!(
                std::io::stderr(),
                "real-kernel tests skipped: {reason} (set {REQUIRE_ENV}=1 to fail instead)"
            );
        }
        support
    });
    match support {
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

/// A topology prefix unique to this test process and `tag` (1..=6 ASCII letters):
/// `np<pid><tag>`. The first call also removes the namespaces of test processes that
/// died without cleaning up (their pid no longer runs).
pub(crate) fn prefix(tag: &str) -> String {
    assert!(
        (1..=6).contains(&tag.len()) && tag.bytes().all(|b| b.is_ascii_alphabetic()),
        "bad tag {tag:?}"
    );
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(sweep_dead_runs);
    let p = format!("np{}{tag}", std::process::id() % 100_000);
    Topology::cleanup_stale(&p).expect("cleanup_stale");
    p
}

fn sweep_dead_runs() {
    for name in netns::list().unwrap_or_default() {
        let Some(rest) = name.strip_prefix("np") else {
            continue;
        };
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let tag_len = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        if digits == 0 || tag_len == 0 {
            continue;
        }
        let pid = &rest[..digits];
        if !std::path::Path::new("/proc").join(pid).exists() {
            let prefix = &name[..2 + digits + tag_len];
            if let Ok(removed) = Topology::cleanup_stale(prefix)
                && !removed.is_empty()
            {
                eprintln!("removed namespaces of a dead test run: {removed:?}");
            }
        }
    }
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
