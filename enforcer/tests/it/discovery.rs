//! `enforcer::discovery` against real namespaces: named ones with addresses, one
//! reachable only through `/proc/<pid>/ns/net` (`unshare --net sleep`), duplicates.
//! Nothing sends traffic: addresses sit on a veth pair whose both ends stay in the
//! namespace, down (the kernel here has no `dummy` module).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use enforcer::discovery::{Conflict, Discovery, DiscoveryError, DiscoveryOptions, discover};
use enforcer::netns;
use enforcer::state::PodKey;

use crate::kernel;

/// Namespaces and processes made by a test, removed when dropped (also on failure).
#[derive(Default)]
struct Guard {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Guard {
    /// Adds the named namespace with `addresses` on `d0` (see [`batch`]).
    fn named(&mut self, name: String, addresses: &[&str]) -> String {
        netns::add(&name).unwrap();
        self.names.push(name.clone());
        netns::ip_batch(&name, "addresses", &batch(addresses)).unwrap();
        name
    }

    /// Starts `unshare --net sleep 60` (a namespace with no name, only a process) with
    /// `addresses` on `d0` (see [`batch`]); returns `/proc/<pid>/ns/net`.
    fn unshared(&mut self, addresses: &[&str]) -> String {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) is needed");
        let path = format!("/proc/{}/ns/net", child.id());
        self.children.push(child);
        // unshare enters its namespace, then execs sleep under the same pid.
        let own = ino("/proc/self/ns/net");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).map(|m| m.ino()).unwrap_or(own) == own {
            assert!(Instant::now() < deadline, "unshare did not enter a netns");
            std::thread::sleep(Duration::from_millis(10));
        }
        let cmds = batch(addresses);
        netns::exec_checked(&path, "ip", &["-batch", "-"], Some(cmds.as_bytes())).unwrap();
        path
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for name in &self.names {
            let _ = netns::delete(name);
        }
    }
}

/// `ip -batch` input: a veth pair `d0`/`d1` inside the namespace, left down, with
/// `addresses` on `d0`.
fn batch(addresses: &[&str]) -> String {
    let mut cmds = String::from("link add d0 type veth peer name d1\n");
    for a in addresses {
        // No duplicate address detection: the IPv6 address is usable at once.
        let nodad = if a.contains(':') { " nodad" } else { "" };
        cmds.push_str(&format!("addr add {a} dev d0{nodad}\n"));
    }
    cmds
}

fn ino(path: &str) -> u64 {
    std::fs::metadata(path).unwrap().ino()
}

fn pod(name: &str) -> PodKey {
    PodKey::new("disc", name)
}

fn wanted(pairs: &[(&str, &str)]) -> BTreeMap<IpAddr, PodKey> {
    pairs
        .iter()
        .map(|(a, p)| (a.parse().unwrap(), pod(p)))
        .collect()
}

fn interfaces() -> BTreeSet<String> {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .map(|a| a.interface_name)
        .collect()
}

/// A non-loopback address of the host's own namespace, if it has one.
fn host_address() -> Option<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .unwrap()
        .filter_map(|a| a.address?.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
        .find(|ip| !ip.is_loopback())
}

fn no_errors(d: &Discovery) {
    assert!(d.errors.is_empty(), "{:#?}", d.errors);
}

/// Errors other than processes this one may not inspect: `/proc/<pid>/ns/net` of a
/// process of another user, or one in a more privileged context, is `EACCES` without
/// `CAP_SYS_PTRACE` (on this machine: pid 1). Those are reported, not fatal.
fn errors_except_proc_access(d: &Discovery) -> Vec<&DiscoveryError> {
    d.errors
        .iter()
        .filter(|e| {
            !matches!(e, DiscoveryError::Stat { path, source }
                if path.starts_with("/proc")
                    && source.kind() == std::io::ErrorKind::PermissionDenied)
        })
        .collect()
}

#[test]
fn getifaddrs_lists_the_threads_current_netns() {
    if !kernel::available("getifaddrs_lists_the_threads_current_netns") {
        return;
    }
    let mut g = Guard::default();
    let ns = g.named(format!("{}-0", kernel::prefix("difad")), &["10.251.0.2/24"]);
    let inside = netns::run_in(&ns, interfaces).unwrap();
    assert_eq!(
        inside,
        BTreeSet::from(["d0", "d1", "lo"].map(str::to_owned))
    );
    let outside = interfaces();
    assert!(
        !outside.contains("d0"),
        "caller's thread moved: {outside:?}"
    );
}

#[test]
fn discover_finds_named_and_proc_only_namespaces() {
    if !kernel::available("discover_finds_named_and_proc_only_namespaces") {
        return;
    }
    let p = kernel::prefix("dfind");
    let mut g = Guard::default();
    let a = g.named(format!("{p}-0"), &["10.251.1.2/24", "fd00:251:1::2/64"]);
    let b = g.named(format!("{p}-1"), &["10.251.1.3/24"]);
    // Only loopback: sorted after a and b, so a thread that did not really switch (or a
    // cached address list) would show b's address here and make a conflict.
    let _c = g.named(format!("{p}-2"), &[]);
    let d = g.unshared(&["10.251.1.4/24", "fd00:251:1::4/64"]);
    let mut pairs = vec![
        ("10.251.1.2", "a"),
        ("fd00:251:1::2", "a"),
        ("10.251.1.3", "b"),
        ("10.251.1.4", "d"),
        ("fd00:251:1::4", "d"),
        ("10.251.1.9", "nowhere"),
        ("127.0.0.1", "loopback"),
    ];
    let host = host_address().map(|ip| ip.to_string());
    if let Some(host) = &host {
        pairs.push((host, "host"));
    }
    let wanted = wanted(&pairs);
    let own = ino("/proc/self/ns/net");

    let with_proc = DiscoveryOptions {
        proc_scan: true,
        ..DiscoveryOptions::default()
    };
    let found = discover(&with_proc, &wanted).unwrap();
    let errors = errors_except_proc_access(&found);
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(found.conflicts, [], "{:#?}", found.conflicts);
    assert_eq!(
        found.found,
        BTreeMap::from([(pod("a"), a.clone()), (pod("b"), b.clone()), (pod("d"), d)]),
        "named namespaces by name, the unshared one by its /proc path; the host's \
         address, loopback and absent addresses match nothing"
    );
    assert!(found.scanned >= 4, "scanned {}", found.scanned);
    for handle in found.found.values() {
        assert_ne!(ino(netns::path(handle).to_str().unwrap()), own);
    }

    let named_only = discover(&DiscoveryOptions::default(), &wanted).unwrap();
    no_errors(&named_only);
    assert_eq!(named_only.conflicts, []);
    assert_eq!(
        named_only.found,
        BTreeMap::from([(pod("a"), a), (pod("b"), b)]),
        "without proc_scan the unshared namespace is not seen"
    );
    // At least a, b and c; other tests create and delete namespaces concurrently, so
    // the two counts are not comparable.
    assert!(named_only.scanned >= 3, "scanned {}", named_only.scanned);
}

#[test]
fn discover_reports_conflicts_and_never_guesses() {
    if !kernel::available("discover_reports_conflicts_and_never_guesses") {
        return;
    }
    let p = kernel::prefix("dconf");
    let mut g = Guard::default();
    let dup0 = g.named(format!("{p}-0"), &["10.251.2.2/24"]);
    let dup1 = g.named(format!("{p}-1"), &["10.251.2.2/24"]);
    let shared = g.named(format!("{p}-2"), &["10.251.2.5/24", "10.251.2.6/24"]);
    let partial = g.named(format!("{p}-3"), &["10.251.2.8/24"]);
    let fine = g.named(format!("{p}-4"), &["10.251.2.10/24"]);
    // Files that are not namespaces in a second directory: skipped, no error.
    let extra = tempfile::tempdir().unwrap();
    std::fs::write(extra.path().join("plain-file"), "").unwrap();
    std::fs::create_dir(extra.path().join("subdir")).unwrap();

    let wanted = wanted(&[
        ("10.251.2.2", "p"),
        ("10.251.2.5", "q"),
        ("10.251.2.6", "r"),
        ("10.251.2.8", "s"),
        ("fd00:251:2::8", "s"),
        ("10.251.2.10", "t"),
    ]);
    let options = DiscoveryOptions {
        dirs: vec![netns::NETNS_DIR.into(), extra.path().to_owned()],
        proc_scan: false,
    };
    let d = discover(&options, &wanted).unwrap();
    no_errors(&d);
    assert_eq!(d.found, BTreeMap::from([(pod("t"), fine)]));
    let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
    assert_eq!(
        d.conflicts,
        [
            Conflict::ManyPods {
                netns: shared,
                pods: BTreeSet::from([pod("q"), pod("r")]),
            },
            Conflict::ManyNetns {
                pod: pod("p"),
                netns: BTreeMap::from([
                    (dup0, BTreeSet::from([ip("10.251.2.2")])),
                    (dup1, BTreeSet::from([ip("10.251.2.2")])),
                ]),
            },
            Conflict::Incomplete {
                pod: pod("s"),
                netns: partial,
                missing: BTreeSet::from([ip("fd00:251:2::8")]),
            },
        ]
    );
}
