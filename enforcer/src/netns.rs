//! Named network namespaces: create, delete, enter on a dedicated thread, run commands in.
//!
//! Named namespaces follow the iproute2 convention: a bind mount at
//! `/var/run/netns/<name>`. Creation and deletion go through `ip netns add/del`, so a
//! namespace made here is visible to `ip netns list` and the other way round.
//!
//! `setns(2)` changes the network namespace of the *calling thread* only. Code here
//! never enters a namespace on the caller's thread: [`run_in`] and [`spawn_in`] start a
//! fresh `std::thread`, enter the namespace there, and run the closure. Sockets keep the
//! namespace they were created in, so a socket made inside the closure stays bound to
//! that namespace for its whole life.
//!
//! Commands run with `ip netns exec <name> …` ([`exec`], [`exec_checked`]).
//!
//! **Names and paths.** Everywhere a namespace is taken (except [`add`], [`delete`] and
//! [`ip_batch`], which only make sense for named ones), an absolute path to a namespace
//! file works too: what a container runtime hands a CNI plugin (`/proc/<pid>/ns/net`, or
//! a bind mount elsewhere). Commands then run under `nsenter --net=<path>`. A path inside
//! [`NETNS_DIR`] is better passed as its name; [`from_path`] does that.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;
use nix::sched::{CloneFlags, setns};

/// Directory holding the bind mounts of named network namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// Errors of namespace operations; each names the namespace and the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name is empty, too long, or contains `/` or characters iproute2 rejects.
    #[error("invalid netns name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A program could not be started at all (not installed, not executable, …).
    #[error("netns {netns}: {op}: could not run `{program}`")]
    Spawn {
        /// Namespace the command was meant for.
        netns: String,
        /// What was being done, e.g. `add` or `exec nft`.
        op: String,
        /// The program that failed to start.
        program: String,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// A command ran and exited unsuccessfully.
    #[error("netns {netns}: {op} failed ({status}): {stderr}")]
    Command {
        /// Namespace the command ran for.
        netns: String,
        /// What was being done.
        op: String,
        /// Exit status as printed by std.
        status: String,
        /// The command's standard error, trimmed.
        stderr: String,
    },
    /// `/var/run/netns/<name>` could not be opened (usually: no such namespace).
    #[error("netns {netns}: cannot open {path}")]
    Open {
        /// Namespace name.
        netns: String,
        /// Path that was opened.
        path: PathBuf,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// `setns(2)` failed on the dedicated thread.
    #[error("netns {netns}: setns(CLONE_NEWNET) failed")]
    Setns {
        /// Namespace name.
        netns: String,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The dedicated thread could not be started.
    #[error("netns {netns}: cannot spawn thread")]
    Thread {
        /// Namespace name.
        netns: String,
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
    /// The closure run inside the namespace panicked.
    #[error("netns {netns}: thread panicked: {message}")]
    Panicked {
        /// Namespace name.
        netns: String,
        /// The panic payload, if it was a string.
        message: String,
    },
    /// Listing `/var/run/netns` failed.
    #[error("cannot list {NETNS_DIR}")]
    List {
        /// The underlying IO error.
        #[source]
        source: io::Error,
    },
}

/// Checks that `name` is usable as a network namespace: a name (see [`validate_plain_name`])
/// or an absolute path to a namespace file (no `..` components, no NUL, at most 4096
/// bytes).
pub fn validate_name(name: &str) -> Result<(), NetnsError> {
    if is_path(name) {
        let reason = if name.len() > 4096 {
            Some("path longer than 4096 bytes")
        } else if name.contains('\0') {
            Some("path contains NUL")
        } else if name.split('/').any(|c| c == "..") {
            Some("path contains `..`")
        } else {
            None
        };
        return match reason {
            Some(reason) => Err(NetnsError::InvalidName {
                name: name.to_owned(),
                reason,
            }),
            None => Ok(()),
        };
    }
    validate_plain_name(name)
}

/// Whether `netns` is an absolute path rather than a name.
pub fn is_path(netns: &str) -> bool {
    netns.starts_with('/')
}

/// The handle for a namespace file at `path`: its name when it lives directly in
/// [`NETNS_DIR`] (or `/run/netns`, the same directory on systemd hosts), else the path.
pub fn from_path(path: &str) -> String {
    for dir in [NETNS_DIR, "/run/netns"] {
        if let Some(rest) = path.strip_prefix(dir).and_then(|r| r.strip_prefix('/'))
            && validate_plain_name(rest).is_ok()
        {
            return rest.to_owned();
        }
    }
    path.to_owned()
}

/// Checks that `name` is usable as a *named* network namespace (iproute2's rules).
///
/// Accepts 1..=64 characters from `[A-Za-z0-9_.-]`, not `.` or `..`.
pub fn validate_plain_name(name: &str) -> Result<(), NetnsError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > 64 {
        Some("longer than 64 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        Some("only [A-Za-z0-9_.-] allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Path of the namespace file: the bind mount of a named namespace, or the path itself.
pub fn path(name: &str) -> PathBuf {
    if is_path(name) {
        PathBuf::from(name)
    } else {
        PathBuf::from(NETNS_DIR).join(name)
    }
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    validate_name(name).is_ok() && path(name).exists()
}

/// Creates the named network namespace (`ip netns add NAME`).
pub fn add(name: &str) -> Result<(), NetnsError> {
    validate_plain_name(name)?;
    run_checked(name, "add", "ip", &["netns", "add", name], None).map(drop)
}

/// Deletes the named network namespace (`ip netns del NAME`).
///
/// Interfaces inside it are destroyed once the last user (process, thread or socket)
/// has left; veth peers in other namespaces disappear with them.
pub fn delete(name: &str) -> Result<(), NetnsError> {
    validate_plain_name(name)?;
    run_checked(name, "del", "ip", &["netns", "del", name], None).map(drop)
}

/// Names of all named network namespaces, sorted.
pub fn list() -> Result<Vec<String>, NetnsError> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => return Err(NetnsError::List { source }),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetnsError::List { source })?;
        if let Some(name) = entry.file_name().to_str() {
            names.push(name.to_owned());
        }
    }
    names.sort();
    Ok(names)
}

fn enter(name: &str) -> Result<(), NetnsError> {
    let path = path(name);
    let file = File::open(&path).map_err(|source| NetnsError::Open {
        netns: name.to_owned(),
        path: path.clone(),
        source,
    })?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Setns {
        netns: name.to_owned(),
        source,
    })
}

fn thread_name(netns: &str) -> String {
    // Linux keeps 15 bytes of a thread name: for a path, the informative end.
    let tail = netns
        .rsplit('/')
        .find(|c| !c.is_empty() && *c != "net" && *c != "ns");
    format!("netns-{}", tail.unwrap_or(netns))
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Runs `f` inside the named namespace on a fresh thread and waits for its result.
///
/// The caller's thread never changes namespace. `f` may borrow from the caller.
pub fn run_in<F, T>(name: &str, f: F) -> Result<T, NetnsError>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    validate_name(name)?;
    thread::scope(|scope| {
        let handle = thread::Builder::new()
            .name(thread_name(name))
            .spawn_scoped(scope, || {
                enter(name)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread {
                netns: name.to_owned(),
                source,
            })?;
        handle.join().map_err(|payload| NetnsError::Panicked {
            netns: name.to_owned(),
            message: panic_message(payload.as_ref()),
        })?
    })
}

/// Starts `f` on a new thread inside the named namespace and returns once the thread
/// has entered it (so a failing `setns` is reported here, not lost in the thread).
pub fn spawn_in<F, T>(name: &str, f: F) -> Result<NetnsThread<T>, NetnsError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    validate_name(name)?;
    let (tx, rx) = mpsc::sync_channel::<Result<(), NetnsError>>(1);
    let owned = name.to_owned();
    let handle = thread::Builder::new()
        .name(thread_name(name))
        .spawn(move || {
            let entered = enter(&owned);
            let ok = entered.is_ok();
            // The caller blocks on this message; if it is gone, nobody needs the result.
            let _ = tx.send(entered);
            ok.then(f)
        })
        .map_err(|source| NetnsError::Thread {
            netns: name.to_owned(),
            source,
        })?;
    match rx.recv() {
        Ok(Ok(())) => Ok(NetnsThread {
            netns: name.to_owned(),
            handle,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetnsError::Panicked {
            netns: name.to_owned(),
            message: "thread exited before entering the namespace".to_owned(),
        }),
    }
}

/// A thread started by [`spawn_in`], running inside a network namespace.
#[derive(Debug)]
pub struct NetnsThread<T> {
    netns: String,
    handle: thread::JoinHandle<Option<T>>,
}

impl<T> NetnsThread<T> {
    /// Name of the namespace the thread runs in.
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Whether the thread has finished.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Waits for the thread and returns the closure's value.
    pub fn join(self) -> Result<T, NetnsError> {
        match self.handle.join() {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(NetnsError::Panicked {
                netns: self.netns,
                message: "closure did not run".to_owned(),
            }),
            Err(payload) => Err(NetnsError::Panicked {
                netns: self.netns,
                message: panic_message(payload.as_ref()),
            }),
        }
    }
}

/// Output of a command run in a namespace.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Whether the command exited with status 0.
    pub success: bool,
    /// Exit status as printed by std.
    pub status: String,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

/// Processes started by this module (every `ip`, `nft` and `nsenter` of the process
/// goes through [`run`]).
static STARTED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many child processes this process has started to run commands (`ip netns
/// exec`, `nft`, ...): the agent's steady state should start none (benchmarks read it).
pub fn processes_started() -> u64 {
    STARTED.load(std::sync::atomic::Ordering::Relaxed)
}

fn run(
    netns: &str,
    op: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, NetnsError> {
    STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spawn_err = |source| NetnsError::Spawn {
        netns: netns.to_owned(),
        op: op.to_owned(),
        program: program.to_owned(),
        source,
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error (EPIPE) means the program exited early; its status and stderr
        // below tell why, so the write error itself adds nothing.
        let _ = pipe.write_all(input);
    }
    let output = child.wait_with_output().map_err(spawn_err)?;
    Ok(CommandOutput {
        success: output.status.success(),
        status: output.status.to_string(),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

fn run_checked(
    netns: &str,
    op: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, NetnsError> {
    let out = run(netns, op, program, args, stdin)?;
    if out.success {
        Ok(out)
    } else {
        Err(NetnsError::Command {
            netns: netns.to_owned(),
            op: op.to_owned(),
            status: out.status,
            stderr: out.stderr,
        })
    }
}

/// Runs `program args…` inside the namespace (`ip netns exec NAME program args…`, or
/// `nsenter --net=PATH -- program args…` for a path), feeding `stdin` if given. A
/// non-zero exit is *not* an error here; see [`exec_checked`].
pub fn exec(
    name: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, NetnsError> {
    validate_name(name)?;
    let op = format!("exec {program}");
    if is_path(name) {
        let net = format!("--net={name}");
        let mut full = vec![net.as_str(), "--", program];
        full.extend_from_slice(args);
        return run(name, &op, "nsenter", &full, stdin);
    }
    let mut full = vec!["netns", "exec", name, program];
    full.extend_from_slice(args);
    run(name, &op, "ip", &full, stdin)
}

/// Runs `program args…` in the calling process's own namespace (no `ip netns exec`,
/// no `setns`), feeding `stdin` if given; `label` names the namespace in errors (e.g.
/// the node's). A non-zero exit is *not* an error here.
pub fn run_here(
    label: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, NetnsError> {
    run(label, &format!("run {program}"), program, args, stdin)
}

/// Like [`exec`], but a non-zero exit becomes [`NetnsError::Command`] carrying stderr.
pub fn exec_checked(
    name: &str,
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<CommandOutput, NetnsError> {
    let out = exec(name, program, args, stdin)?;
    if out.success {
        Ok(out)
    } else {
        Err(NetnsError::Command {
            netns: name.to_owned(),
            op: format!("exec {program}"),
            status: out.status,
            stderr: out.stderr,
        })
    }
}

/// Runs `ip -n NAME -batch -` with `commands` (one iproute2 command per line, without
/// the leading `ip`). `op` names the step in errors.
pub fn ip_batch(name: &str, op: &str, commands: &str) -> Result<(), NetnsError> {
    validate_plain_name(name)?;
    run_checked(
        name,
        op,
        "ip",
        &["-n", name, "-batch", "-"],
        Some(commands.as_bytes()),
    )
    .map(drop)
}

/// Why the real-kernel features cannot be used here, or `Ok` if they can.
///
/// Checks that the effective user is root and that a scratch namespace can be created
/// and deleted (`ip netns add`/`del`). Used by tests and the `lab` command to decide
/// whether to skip.
pub fn kernel_support() -> Result<(), String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not running as root (network namespaces need CAP_SYS_ADMIN)".to_owned());
    }
    let scratch = format!("npcheck{}", std::process::id());
    if let Err(e) = add(&scratch) {
        return Err(format!("`ip netns add` does not work here: {e}"));
    }
    let entered = run_in(&scratch, || ());
    let deleted = delete(&scratch);
    entered.map_err(|e| format!("cannot enter a network namespace: {e}"))?;
    deleted.map_err(|e| format!("`ip netns del` does not work here: {e}"))?;
    Ok(())
}

/// Whether an interface address can be the source of routed traffic: not on a loopback
/// interface, not loopback, not unspecified, not IPv6 link-local. The node's addresses
/// ([`crate::node`]) and a Pod's ([`crate::discovery`]) are both these.
pub fn is_routable(ip: IpAddr, loopback_interface: bool) -> bool {
    let link_local_v6 = matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80);
    !loopback_interface && !ip.is_loopback() && !ip.is_unspecified() && !link_local_v6
}

/// The routable addresses ([`is_routable`]) of the calling thread's network namespace
/// (`getifaddrs(3)`), sorted and deduplicated.
pub fn routable_addresses() -> nix::Result<BTreeSet<IpAddr>> {
    Ok(getifaddrs()?
        .filter_map(|a| {
            let loopback = a.flags.contains(InterfaceFlags::IFF_LOOPBACK);
            let addr = a.address?;
            let ip = if let Some(v4) = addr.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(addr.as_sockaddr_in6()?.ip())
            };
            is_routable(ip, loopback).then_some(ip)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate_name("np-1").is_ok());
        assert!(validate_name("a.b_c").is_ok());
        for bad in ["", ".", "..", "a/b", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn paths_are_accepted_and_named_namespaces_recognised() {
        assert!(validate_name("/proc/1/ns/net").is_ok());
        assert!(validate_name("/var/run/netns/../x").is_err());
        assert!(validate_name("/a\0b").is_err());
        assert!(add("/proc/1/ns/net").is_err(), "add takes names only");
        assert_eq!(from_path("/var/run/netns/cni-1234"), "cni-1234");
        assert_eq!(from_path("/run/netns/cni-1234"), "cni-1234");
        assert_eq!(from_path("/proc/42/ns/net"), "/proc/42/ns/net");
        assert_eq!(from_path("/var/run/netns/a/b"), "/var/run/netns/a/b");
        assert_eq!(path("/proc/42/ns/net"), PathBuf::from("/proc/42/ns/net"));
        assert_eq!(path("x"), PathBuf::from("/var/run/netns/x"));
        assert_eq!(thread_name("/proc/42/ns/net"), "netns-42");
    }

    #[test]
    fn invalid_name_is_rejected_before_running_anything() {
        let err = run_in("../etc", || ()).unwrap_err();
        assert!(matches!(err, NetnsError::InvalidName { .. }), "{err}");
    }
}
