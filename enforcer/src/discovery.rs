//! Finding the network namespace of a Pod from its IP addresses.
//!
//! New Pods get their netns from netpol's chained CNI plugin. Pods that started before
//! the plugin was installed have no such record; for them, [`discover`] looks at every
//! candidate namespace on the node and maps a Pod to the one namespace that holds its
//! addresses:
//!
//! - **Candidates:** every file in [`DiscoveryOptions::dirs`] (by default
//!   [`netns::NETNS_DIR`], where container runtimes bind-mount sandbox namespaces) and,
//!   with [`DiscoveryOptions::proc_scan`], every `/proc/<pid>/ns/net`. Files that are not
//!   network namespaces are skipped (`setns` says `EINVAL`). Candidates are deduplicated
//!   by the namespace's `(st_dev, st_ino)`: a bind mount's handle wins over a `/proc`
//!   path. The agent's own namespace (`/proc/self/ns/net`, the host network) is never a
//!   candidate: hostNetwork Pods are never enforced.
//! - **Reading:** one dedicated `std::thread` `setns`es into each candidate in turn and
//!   lists its addresses with `getifaddrs(3)` (whose netlink socket is created in the
//!   thread's current namespace). The thread does nothing else and exits at the end;
//!   the caller's thread never changes namespace. Loopback and IPv6 link-local
//!   addresses are ignored.
//! - **Matching ([`Conflict`]s are never guessed):** a Pod maps to a namespace when that
//!   namespace is the only one holding any of the Pod's addresses, holds all of them, and
//!   holds no address of another wanted Pod. An address in two namespaces, one namespace
//!   with addresses of two Pods, or a namespace with only some of a Pod's addresses map
//!   nothing for the Pods involved: enforcing Pod A's policy in Pod B's namespace would be
//!   worse than enforcing nothing yet.
//!
//! Handles follow [`netns`]: a plain name for a file directly in [`netns::NETNS_DIR`]
//! (see [`netns::from_path`]), else an absolute path such as `/proc/1234/ns/net`. A
//! `/proc` handle is only as stable as its process: it names another namespace (or
//! nothing) once that process exits and its pid is reused, so it suits a Pod's sandbox
//! process only until the runtime's own record is known.
//!
//! Pass every address of the Pods to match; addresses a namespace holds that are not in
//! `wanted` are ignored (a Pod netns may carry other addresses), so the more Pods are
//! passed, the more conflicts can be seen.
//!
//! # Example
//!
//! ```no_run
//! use std::collections::BTreeMap;
//! use enforcer::discovery::{DiscoveryOptions, discover};
//! use enforcer::state::PodKey;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut wanted = BTreeMap::new();
//! wanted.insert("10.244.1.7".parse()?, PodKey::new("shop", "api-0"));
//! wanted.insert("fd00:10:244:1::7".parse()?, PodKey::new("shop", "api-0"));
//! let d = discover(&DiscoveryOptions::default(), &wanted)?;
//! for (pod, netns) in &d.found {
//!     println!("{pod} -> {netns}"); // e.g. `shop/api-0 -> cni-5f3c…`
//! }
//! for conflict in &d.conflicts {
//!     eprintln!("not enforced yet: {conflict}");
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

use crate::netns;
use crate::state::PodKey;

/// The agent's own network namespace: never a Pod's.
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Where [`discover`] looks for namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryOptions {
    /// Directories of namespace files (bind mounts); every entry is a candidate.
    /// Default: `[/var/run/netns]`. A missing directory is no error.
    pub dirs: Vec<PathBuf>,
    /// Also try every `/proc/<pid>/ns/net`. Needs the host's PID namespace (`hostPID`)
    /// and, for processes of other users (a Pod's sandbox usually runs as 65535),
    /// `CAP_SYS_PTRACE`: without it their entries fail with `EACCES`
    /// ([`DiscoveryError::Stat`] in [`Discovery::errors`]). Default: `false`.
    pub proc_scan: bool,
}

impl Default for DiscoveryOptions {
    fn default() -> Self {
        Self {
            dirs: vec![PathBuf::from(netns::NETNS_DIR)],
            proc_scan: false,
        }
    }
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Pods mapped to their namespace handle (a name or an absolute path, see [`netns`]).
    pub found: BTreeMap<PodKey, String>,
    /// Pods left unmapped because the addresses are ambiguous, in a stable order.
    pub conflicts: Vec<Conflict>,
    /// Candidates that could not be read (the scan went on without them).
    pub errors: Vec<DiscoveryError>,
    /// Namespaces whose addresses were read (after deduplication, without the agent's own).
    pub scanned: usize,
}

/// Why a Pod was not mapped although some namespace holds its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// The Pod's addresses are in more than one namespace: one address in two, or its
    /// addresses spread over several.
    ManyNetns {
        /// The Pod.
        pod: PodKey,
        /// Each namespace holding some of its addresses, with those addresses.
        netns: BTreeMap<String, BTreeSet<IpAddr>>,
    },
    /// One namespace holds addresses of more than one Pod; none of them is mapped.
    ManyPods {
        /// The namespace handle.
        netns: String,
        /// The Pods whose addresses it holds.
        pods: BTreeSet<PodKey>,
    },
    /// The only namespace holding some of the Pod's addresses lacks the others.
    Incomplete {
        /// The Pod.
        pod: PodKey,
        /// The namespace handle.
        netns: String,
        /// The Pod's addresses found in no namespace.
        missing: BTreeSet<IpAddr>,
    },
}

impl Conflict {
    /// The Pods this conflict leaves unmapped.
    pub fn pods(&self) -> Vec<&PodKey> {
        match self {
            Conflict::ManyNetns { pod, .. } | Conflict::Incomplete { pod, .. } => vec![pod],
            Conflict::ManyPods { pods, .. } => pods.iter().collect(),
        }
    }
}

fn join<T: fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    items
        .into_iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Conflict::ManyNetns { pod, netns } => {
                let each = netns.iter().map(|(n, ips)| format!("{n} ({})", join(ips)));
                write!(f, "pod {pod}: addresses in several netns: {}", join(each))
            }
            Conflict::ManyPods { netns, pods } => {
                write!(f, "netns {netns} holds addresses of pods {}", join(pods))
            }
            Conflict::Incomplete {
                pod,
                netns,
                missing,
            } => write!(f, "pod {pod}: netns {netns} lacks {}", join(missing)),
        }
    }
}

/// Errors of a scan. [`DiscoveryError::OwnNetns`], [`DiscoveryError::Thread`] and
/// [`DiscoveryError::Panicked`] fail the whole scan; the others are per candidate and
/// land in [`Discovery::errors`].
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The agent's own namespace (`/proc/self/ns/net`) could not be identified, so the
    /// host network could not be told apart from Pod namespaces.
    #[error("cannot stat {OWN_NETNS}")]
    OwnNetns {
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A directory of namespace files (or `/proc`) could not be listed.
    #[error("cannot list {dir}")]
    ListDir {
        /// The directory.
        dir: PathBuf,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A candidate path is not UTF-8, so it has no namespace handle.
    #[error("netns candidate {path:?}: path is not utf-8")]
    NotUtf8 {
        /// The path.
        path: PathBuf,
    },
    /// A candidate could not be inspected (`stat`).
    #[error("netns candidate {path}: cannot stat")]
    Stat {
        /// The path.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A candidate could not be opened.
    #[error("netns {netns}: cannot open")]
    Open {
        /// The namespace handle.
        netns: String,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` failed for a reason other than "not a network namespace".
    #[error("netns {netns}: setns(CLONE_NEWNET) failed")]
    Setns {
        /// The namespace handle.
        netns: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// `getifaddrs(3)` failed inside the namespace.
    #[error("netns {netns}: cannot list addresses")]
    Addresses {
        /// The namespace handle.
        netns: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The scan thread could not be started.
    #[error("cannot spawn the netns discovery thread")]
    Thread {
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// The scan thread panicked.
    #[error("netns discovery thread panicked")]
    Panicked,
}

/// Finds the namespace of each Pod in `wanted` (address -> Pod; a Pod with several
/// addresses appears once per address). See the module doc for what counts as a match.
///
/// Per-candidate failures are collected in [`Discovery::errors`]; only failing to
/// identify the agent's own namespace or to run the scan thread fails the call. An empty
/// `wanted` scans nothing.
pub fn discover(
    options: &DiscoveryOptions,
    wanted: &BTreeMap<IpAddr, PodKey>,
) -> Result<Discovery, DiscoveryError> {
    let mut discovery = Discovery::default();
    if wanted.is_empty() {
        return Ok(discovery);
    }
    let own = fs::metadata(OWN_NETNS)
        .map(|m| NsId::of(&m))
        .map_err(|source| DiscoveryError::OwnNetns { source })?;
    let mut candidates = Vec::new();
    for dir in &options.dirs {
        list_dir(dir, &mut candidates, &mut discovery.errors);
    }
    if options.proc_scan {
        list_proc(&mut candidates, &mut discovery.errors);
    }
    let candidates = choose(candidates, own);
    let read = read_addresses(&candidates)?;
    let mut seen = Vec::new();
    for (candidate, result) in candidates.into_iter().zip(read) {
        match result {
            Ok(Some(addresses)) => {
                discovery.scanned += 1;
                let held: BTreeSet<IpAddr> = addresses
                    .into_iter()
                    .filter(|ip| wanted.contains_key(ip))
                    .collect();
                if !held.is_empty() {
                    seen.push((candidate.handle, held));
                }
            }
            Ok(None) => {}
            Err(e) => discovery.errors.push(e),
        }
    }
    let (found, conflicts) = match_pods(wanted, &seen);
    discovery.found = found;
    discovery.conflicts = conflicts;
    tracing::debug!(
        scanned = discovery.scanned,
        found = discovery.found.len(),
        conflicts = discovery.conflicts.len(),
        errors = discovery.errors.len(),
        "netns discovery"
    );
    Ok(discovery)
}

/// Identity of a namespace: device and inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct NsId {
    dev: u64,
    ino: u64,
}

impl NsId {
    fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// A file that may be a network namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    /// The handle reported to the caller ([`netns::from_path`] of `path`).
    handle: String,
    /// The file opened for `setns`.
    path: PathBuf,
    /// `(st_dev, st_ino)` when listed; re-checked after opening.
    id: NsId,
    /// Found through `/proc/<pid>/ns/net` rather than a bind mount.
    via_proc: bool,
}

/// Whether an IO error means the candidate went away while looking (a namespace deleted,
/// a process exited): not worth reporting, a later scan sees the new state.
fn vanished(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(Errno::ESRCH as i32)
}

fn candidate(path: PathBuf, via_proc: bool, errors: &mut Vec<DiscoveryError>) -> Option<Candidate> {
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if vanished(&e) => return None,
        Err(source) => {
            errors.push(DiscoveryError::Stat { path, source });
            return None;
        }
    };
    if meta.is_dir() {
        return None;
    }
    let Some(text) = path.to_str() else {
        errors.push(DiscoveryError::NotUtf8 { path });
        return None;
    };
    Some(Candidate {
        handle: netns::from_path(text),
        id: NsId::of(&meta),
        path,
        via_proc,
    })
}

fn list_dir(dir: &Path, out: &mut Vec<Candidate>, errors: &mut Vec<DiscoveryError>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return,
        Err(source) => {
            errors.push(DiscoveryError::ListDir {
                dir: dir.to_owned(),
                source,
            });
            return;
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => paths.push(entry.path()),
            Err(source) => errors.push(DiscoveryError::ListDir {
                dir: dir.to_owned(),
                source,
            }),
        }
    }
    paths.sort();
    out.extend(
        paths
            .into_iter()
            .filter_map(|p| candidate(p, false, errors)),
    );
}

fn list_proc(out: &mut Vec<Candidate>, errors: &mut Vec<DiscoveryError>) {
    let proc = Path::new("/proc");
    let entries = match fs::read_dir(proc) {
        Ok(entries) => entries,
        Err(source) => {
            errors.push(DiscoveryError::ListDir {
                dir: proc.to_owned(),
                source,
            });
            return;
        }
    };
    // Entries that fail to read are processes exiting while listing: nothing to report.
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    out.extend(
        pids.into_iter().filter_map(|pid| {
            candidate(PathBuf::from(format!("/proc/{pid}/ns/net")), true, errors)
        }),
    );
}

/// One candidate per namespace, in input order: bind mounts before `/proc` paths, the
/// first listed among equals; the agent's own namespace (`own`) is dropped.
fn choose(mut candidates: Vec<Candidate>, own: NsId) -> Vec<Candidate> {
    candidates.sort_by_key(|c| c.via_proc); // stable: keeps the listing order otherwise
    let mut seen = BTreeSet::from([own]);
    candidates.retain(|c| seen.insert(c.id));
    candidates
}

type Read = Result<Option<BTreeSet<IpAddr>>, DiscoveryError>;

/// Reads every candidate's addresses on one dedicated thread; `Ok(None)` for a candidate
/// that is not a network namespace or vanished. The thread exits before this returns.
fn read_addresses(candidates: &[Candidate]) -> Result<Vec<Read>, DiscoveryError> {
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name("netns-discover".to_owned())
            .spawn_scoped(scope, || candidates.iter().map(read_one).collect())
            .map_err(|source| DiscoveryError::Thread { source })?;
        handle.join().map_err(|_| DiscoveryError::Panicked)
    })
}

/// Enters `candidate` on the current (dedicated) thread and lists its addresses.
fn read_one(candidate: &Candidate) -> Read {
    let netns = || candidate.handle.clone();
    let file = match File::open(&candidate.path) {
        Ok(file) => file,
        Err(e) if vanished(&e) => return Ok(None),
        Err(source) => {
            return Err(DiscoveryError::Open {
                netns: netns(),
                source,
            });
        }
    };
    // The name may now point elsewhere (namespace recreated, pid reused): that one was
    // not deduplicated, so leave it to the next scan.
    match file.metadata() {
        Ok(meta) if NsId::of(&meta) == candidate.id => {}
        _ => return Ok(None),
    }
    match setns(&file, CloneFlags::CLONE_NEWNET) {
        Ok(()) => {}
        // Not a network namespace (a plain file, another namespace type): skip. The
        // thread stays where it was, and nothing is read for this candidate.
        Err(Errno::EINVAL) => return Ok(None),
        Err(source) => {
            return Err(DiscoveryError::Setns {
                netns: netns(),
                source,
            });
        }
    }
    let addresses = netns::routable_addresses().map_err(|source| DiscoveryError::Addresses {
        netns: netns(),
        source,
    })?;
    Ok(Some(addresses.into_iter().collect()))
}

/// Whether an address on an interface can be a Pod's: [`netns::is_routable`].
#[cfg(test)]
use crate::netns::is_routable as pod_address;

/// The pure match: `seen` lists each namespace handle with the wanted addresses it
/// holds. Returns the unambiguous Pods and the conflicts (see [`Conflict`]).
fn match_pods(
    wanted: &BTreeMap<IpAddr, PodKey>,
    seen: &[(String, BTreeSet<IpAddr>)],
) -> (BTreeMap<PodKey, String>, Vec<Conflict>) {
    let mut pod_addresses: BTreeMap<&PodKey, BTreeSet<IpAddr>> = BTreeMap::new();
    for (ip, pod) in wanted {
        pod_addresses.entry(pod).or_default().insert(*ip);
    }
    let mut by_pod: BTreeMap<&PodKey, BTreeMap<&str, BTreeSet<IpAddr>>> = BTreeMap::new();
    let mut by_netns: BTreeMap<&str, BTreeSet<&PodKey>> = BTreeMap::new();
    for (netns, addresses) in seen {
        for ip in addresses {
            if let Some(pod) = wanted.get(ip) {
                by_pod
                    .entry(pod)
                    .or_default()
                    .entry(netns)
                    .or_default()
                    .insert(*ip);
                by_netns.entry(netns).or_default().insert(pod);
            }
        }
    }

    let mut conflicts = Vec::new();
    let mut blocked = BTreeSet::new();
    for (netns, pods) in &by_netns {
        if pods.len() > 1 {
            blocked.extend(pods.iter().copied());
            conflicts.push(Conflict::ManyPods {
                netns: (*netns).to_owned(),
                pods: pods.iter().map(|p| (*p).clone()).collect(),
            });
        }
    }
    let mut found = BTreeMap::new();
    for (pod, places) in by_pod {
        if places.len() > 1 {
            conflicts.push(Conflict::ManyNetns {
                pod: pod.clone(),
                netns: places
                    .into_iter()
                    .map(|(n, ips)| (n.to_owned(), ips))
                    .collect(),
            });
            continue;
        }
        if blocked.contains(pod) {
            continue;
        }
        let Some((netns, held)) = places.into_iter().next() else {
            continue;
        };
        let missing: BTreeSet<IpAddr> = pod_addresses
            .get(pod)
            .map(|all| all.difference(&held).copied().collect())
            .unwrap_or_default();
        if missing.is_empty() {
            found.insert(pod.clone(), netns.to_owned());
        } else {
            conflicts.push(Conflict::Incomplete {
                pod: pod.clone(),
                netns: netns.to_owned(),
                missing,
            });
        }
    }
    (found, conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn pod(name: &str) -> PodKey {
        PodKey::new("ns", name)
    }

    fn wanted(pairs: &[(&str, &str)]) -> BTreeMap<IpAddr, PodKey> {
        pairs.iter().map(|(a, p)| (ip(a), pod(p))).collect()
    }

    fn seen(list: &[(&str, &[&str])]) -> Vec<(String, BTreeSet<IpAddr>)> {
        list.iter()
            .map(|(n, ips)| ((*n).to_owned(), ips.iter().map(|a| ip(a)).collect()))
            .collect()
    }

    #[test]
    fn unambiguous_pods_map_to_their_netns() {
        let w = wanted(&[
            ("10.0.0.1", "a"),
            ("fd00::1", "a"),
            ("10.0.0.2", "b"),
            ("10.0.0.3", "absent"),
        ]);
        let s = seen(&[
            ("cni-a", &["10.0.0.1", "fd00::1"]),
            ("/proc/7/ns/net", &["10.0.0.2"]),
            ("empty", &[]),
        ]);
        let (found, conflicts) = match_pods(&w, &s);
        assert_eq!(conflicts, []);
        assert_eq!(
            found,
            BTreeMap::from([
                (pod("a"), "cni-a".to_owned()),
                (pod("b"), "/proc/7/ns/net".to_owned()),
            ])
        );
    }

    #[test]
    fn one_address_in_two_netns_maps_nothing() {
        let w = wanted(&[("10.0.0.1", "a"), ("10.0.0.2", "b")]);
        let s = seen(&[
            ("x", &["10.0.0.1"]),
            ("y", &["10.0.0.1"]),
            ("z", &["10.0.0.2"]),
        ]);
        let (found, conflicts) = match_pods(&w, &s);
        assert_eq!(found, BTreeMap::from([(pod("b"), "z".to_owned())]));
        assert_eq!(
            conflicts,
            [Conflict::ManyNetns {
                pod: pod("a"),
                netns: BTreeMap::from([
                    ("x".to_owned(), BTreeSet::from([ip("10.0.0.1")])),
                    ("y".to_owned(), BTreeSet::from([ip("10.0.0.1")])),
                ]),
            }]
        );
        assert_eq!(
            conflicts[0].to_string(),
            "pod ns/a: addresses in several netns: x (10.0.0.1), y (10.0.0.1)"
        );
    }

    #[test]
    fn a_pods_addresses_split_over_two_netns_map_nothing() {
        let w = wanted(&[("10.0.0.1", "a"), ("fd00::1", "a")]);
        let s = seen(&[("x", &["10.0.0.1"]), ("y", &["fd00::1"])]);
        let (found, conflicts) = match_pods(&w, &s);
        assert!(found.is_empty());
        assert!(matches!(&conflicts[..], [Conflict::ManyNetns { pod: p, .. }] if *p == pod("a")));
    }

    #[test]
    fn one_netns_with_two_pods_maps_neither() {
        let w = wanted(&[("10.0.0.1", "a"), ("10.0.0.2", "b"), ("10.0.0.3", "c")]);
        let s = seen(&[("x", &["10.0.0.1", "10.0.0.2"]), ("y", &["10.0.0.3"])]);
        let (found, conflicts) = match_pods(&w, &s);
        assert_eq!(found, BTreeMap::from([(pod("c"), "y".to_owned())]));
        assert_eq!(
            conflicts,
            [Conflict::ManyPods {
                netns: "x".to_owned(),
                pods: BTreeSet::from([pod("a"), pod("b")]),
            }]
        );
        assert_eq!(conflicts[0].pods(), [&pod("a"), &pod("b")]);
        assert_eq!(
            conflicts[0].to_string(),
            "netns x holds addresses of pods ns/a, ns/b"
        );
    }

    #[test]
    fn a_netns_with_only_some_of_a_pods_addresses_is_not_a_match() {
        let w = wanted(&[("10.0.0.1", "a"), ("fd00::1", "a")]);
        let s = seen(&[("x", &["10.0.0.1"])]);
        let (found, conflicts) = match_pods(&w, &s);
        assert!(found.is_empty());
        assert_eq!(
            conflicts,
            [Conflict::Incomplete {
                pod: pod("a"),
                netns: "x".to_owned(),
                missing: BTreeSet::from([ip("fd00::1")]),
            }]
        );
        assert_eq!(conflicts[0].to_string(), "pod ns/a: netns x lacks fd00::1");
    }

    #[test]
    fn both_conflicts_on_one_pod_are_reported_once_each() {
        // a is in x and y; x also holds b: a ManyPods for x and a ManyNetns for a, b
        // unmapped through x.
        let w = wanted(&[("10.0.0.1", "a"), ("10.0.0.2", "b")]);
        let s = seen(&[("x", &["10.0.0.1", "10.0.0.2"]), ("y", &["10.0.0.1"])]);
        let (found, conflicts) = match_pods(&w, &s);
        assert!(found.is_empty());
        assert_eq!(conflicts.len(), 2, "{conflicts:?}");
        assert!(matches!(conflicts[0], Conflict::ManyPods { .. }));
        assert!(matches!(conflicts[1], Conflict::ManyNetns { .. }));
    }

    fn cand(handle: &str, ino: u64, via_proc: bool) -> Candidate {
        Candidate {
            handle: handle.to_owned(),
            path: netns::path(handle),
            id: NsId { dev: 4, ino },
            via_proc,
        }
    }

    #[test]
    fn dedup_prefers_bind_mounts_and_drops_the_own_netns() {
        let own = NsId { dev: 4, ino: 1 };
        let chosen = choose(
            vec![
                cand("cni-b", 20, false),
                cand("cni-b-again", 20, false),
                cand("host-alias", 1, false),
                cand("/other/dir/c", 30, false),
                cand("/proc/1/ns/net", 1, true),
                cand("/proc/50/ns/net", 20, true),
                cand("/proc/60/ns/net", 40, true),
                cand("/proc/61/ns/net", 40, true),
            ],
            own,
        );
        let handles: Vec<_> = chosen.iter().map(|c| c.handle.as_str()).collect();
        assert_eq!(handles, ["cni-b", "/other/dir/c", "/proc/60/ns/net"]);

        // A /proc path listed first still loses to a bind mount of the same namespace.
        let chosen = choose(
            vec![cand("/proc/9/ns/net", 20, true), cand("cni-b", 20, false)],
            own,
        );
        assert_eq!(chosen, [cand("cni-b", 20, false)]);
    }

    #[test]
    fn loopback_and_v6_link_local_are_not_pod_addresses() {
        assert!(pod_address(ip("10.244.0.5"), false));
        assert!(pod_address(ip("fd00:10:244::5"), false));
        assert!(pod_address(ip("2001:db8::5"), false));
        assert!(
            !pod_address(ip("10.244.0.5"), true),
            "on the loopback interface"
        );
        assert!(!pod_address(ip("127.0.0.1"), false));
        assert!(!pod_address(ip("::1"), false));
        assert!(!pod_address(ip("fe80::1"), false));
        assert!(!pod_address(ip("febf::1"), false));
        assert!(!pod_address(ip("0.0.0.0"), false));
    }

    #[test]
    fn nothing_wanted_scans_nothing() {
        let d = discover(&DiscoveryOptions::default(), &BTreeMap::new()).unwrap();
        assert_eq!(d.scanned, 0);
        assert!(d.found.is_empty() && d.conflicts.is_empty() && d.errors.is_empty());
        assert_eq!(
            DiscoveryOptions::default().dirs,
            [PathBuf::from("/var/run/netns")]
        );
    }
}
