//! "Require the kernel or skip": the one place that decides whether a real-kernel test
//! runs, plus shared lab fixtures.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Duration;

use enforcer::netns;
use netpol_lab::probe::Listener;
use netpol_lab::topology::{Host, HostSpec, Topology};
use policy_compiler::Protocol;

/// Environment variable that turns "skip" into "fail".
pub const REQUIRE_ENV: &str = "NETPOL_REQUIRE_KERNEL";

/// True if the test should run. Prints why it is skipped otherwise; panics instead of
/// skipping when `NETPOL_REQUIRE_KERNEL=1`.
pub fn available(test: &str) -> bool {
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
        Err(reason) if required() => {
            panic!("{test}: {REQUIRE_ENV}=1 but the kernel lab is unavailable: {reason}")
        }
        Err(reason) => {
            eprintln!("skipping {test}: {reason} (set {REQUIRE_ENV}=1 to fail instead)");
            false
        }
    }
}

/// Whether `NETPOL_REQUIRE_KERNEL=1`: a kernel test that cannot run must fail.
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

/// Skips `test` for `reason` (printed), or fails it under `NETPOL_REQUIRE_KERNEL=1`: the
/// one way a kernel test may skip besides [`available`].
pub fn skip(test: &str, reason: &str) {
    if required() {
        panic!("{test}: {REQUIRE_ENV}=1 but the test cannot run: {reason}");
    }
    eprintln!("skipping {test}: {reason} (set {REQUIRE_ENV}=1 to fail instead)");
}

/// A topology prefix unique to this test process and `tag` (1..=6 ASCII letters):
/// `np<pid><tag>`. The first call also removes the namespaces of test processes that
/// died without cleaning up (their pid no longer runs).
pub fn prefix(tag: &str) -> String {
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
pub fn dual_stack(n: u8) -> Vec<HostSpec> {
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

/// How long a probe that the rules allow may take.
pub const ALLOW: Duration = Duration::from_secs(2);
/// How long to wait before calling a probe denied.
pub const DENY: Duration = Duration::from_millis(400);

/// The host's IPv4 address (the host must have one).
pub fn v4(h: &Host) -> IpAddr {
    IpAddr::V4(h.ipv4.unwrap().addr())
}

/// The host's IPv6 address (the host must have one).
pub fn v6(h: &Host) -> IpAddr {
    IpAddr::V6(h.ipv6.unwrap().addr())
}

/// A listener on every host, port and protocol.
pub fn listeners(hosts: &[Host], ports: &[u16]) -> Vec<Listener> {
    let mut out = Vec::new();
    for h in hosts {
        for &port in ports {
            for p in Protocol::ALL {
                out.push(Listener::new(h.name.clone(), p, port));
            }
        }
    }
    out
}

/// Ingress allows only TCP 80 (plus replies, loopback and ICMPv6 for neighbour discovery).
pub const INGRESS_TCP_80: &str = "
table inet netpol {
    chain ingress {
        type filter hook input priority 0; policy drop;
        ct state established,related accept
        iif lo accept
        meta l4proto ipv6-icmp accept
        tcp dport 80 accept
    }
}
";
