//! The plugin side of `netpol-cni`: what the binary does once exec'd by a runtime.
//!
//! The CNI protocol itself (the `CNI_*` environment, the configuration on stdin, version
//! negotiation, result layouts of 0.3.0 to 1.1.0, error objects, VERSION) is
//! [`rscni_plugin`]'s; [`NetpolCni`] is the plugin's logic behind its
//! [`Cni`](rscni_plugin::cni::Cni) trait, with the agent behind the [`Transport`] trait
//! (the real one is a unix socket with a deadline). The `netpol-cni` binary is
//! `Plugin::default().run(&NetpolCni::with_socket())`.
//!
//! On ADD the plugin returns `prevResult` only after the agent has applied the Pod's
//! ruleset: no Pod runs a moment without its policy. When the agent cannot confirm that
//! in time, ADD fails (the runtime tears the sandbox down and retries), unless the
//! network config says `"failOpen": true`.
//!
//! Network configuration (the entry in the node's conflist):
//!
//! | field | default | meaning |
//! |---|---|---|
//! | `agentSocket` | `/run/netpol/cni.sock` | the agent's unix socket |
//! | `timeoutSeconds` | `10` | how long `ADD` waits for the agent (1..=600) |
//! | `failOpen` | `false` | when the agent cannot confirm the Pod's policy in time, let the Pod start anyway (logged to stderr) instead of failing the sandbox |
//!
//! ```
//! use std::time::Duration;
//! use netpol_cni::plugin::{NetpolCni, Transport, TransportError};
//! use netpol_cni::{Request, Response};
//! use rscni_plugin::cni::Cni;
//! use rscni_plugin::test_util::ArgsBuilder;
//!
//! struct Agent;
//! impl Transport for Agent {
//!     fn call(&self, _: &Request, _: Duration) -> Result<Response, TransportError> {
//!         Ok(Response::ok("applied"))
//!     }
//! }
//! let cni = NetpolCni::new(|_| Box::new(Agent));
//! let args = ArgsBuilder::new()
//!     .container_id("c1").unwrap()
//!     .netns("/var/run/netns/cni-1")
//!     .ifname("eth0").unwrap()
//!     .args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a")
//!     .config(r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni",
//!       "prevResult":{"ips":[{"address":"10.0.0.5/24"}]}}"#).unwrap()
//!     .build().unwrap();
//! let result = cni.add(args).unwrap();
//! assert_eq!(result.ips[0].address.to_string(), "10.0.0.5/24");
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rscni_plugin::cni::Cni;
use rscni_plugin::error::Error;
use rscni_plugin::types::{Args, CNIResult, NetConf};

use netpol_common::ErrorChain;

use super::{Command, MAX_LINE, PodRef, Request, Response, WIRE_VERSION};

/// CNI error code of an ADD or CHECK the agent answered and refused (the Pod's policy
/// could not be put in place). Plugin-specific codes start at 100.
pub const AGENT_REFUSED: u32 = 100;

/// The plugin's own fields of the network configuration: the installer's struct, one
/// contract with one set of defaults ([`crate::config`]).
pub use crate::config::PluginConfig as Settings;

/// Why the agent could not be asked or did not answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The socket could not be reached (no agent running, wrong path, permissions).
    #[error("cannot connect to the agent at {path}")]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// Writing the request or reading the answer failed or timed out.
    #[error("no answer from the agent at {path} within {timeout_ms} ms")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The deadline.
        timeout_ms: u64,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The answer was not a valid response line.
    #[error("invalid answer from the agent: {detail}")]
    Protocol {
        /// What was wrong.
        detail: String,
    },
}

/// The way to the agent.
pub trait Transport {
    /// Sends `request` and waits at most `timeout` for the answer.
    fn call(&self, request: &Request, timeout: Duration) -> Result<Response, TransportError>;
}

/// The real transport: one connection to the agent's unix socket per request.
#[derive(Debug, Clone)]
pub struct SocketTransport {
    /// The socket path.
    pub path: PathBuf,
}

impl Transport for SocketTransport {
    fn call(&self, request: &Request, timeout: Duration) -> Result<Response, TransportError> {
        let start = Instant::now();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let io = |source| TransportError::Io {
            path: self.path.clone(),
            timeout_ms,
            source,
        };
        // Connecting is inside the deadline too: a unix socket whose accept queue is full
        // blocks `connect`. See: #11
        let stream = connect_within(&self.path, timeout).map_err(|source| {
            if source.kind() == std::io::ErrorKind::TimedOut {
                io(source)
            } else {
                TransportError::Connect {
                    path: self.path.clone(),
                    source,
                }
            }
        })?;
        let left = || {
            timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_millis(1))
        };
        stream.set_write_timeout(Some(left())).map_err(io)?;
        let mut line = serde_json::to_vec(request).map_err(|e| TransportError::Protocol {
            detail: e.to_string(),
        })?;
        line.push(b'\n');
        (&stream).write_all(&line).map_err(io)?;
        // The deadline is the whole call's: each read waits at most what is left, so an
        // agent trickling a byte at a time cannot keep the plugin alive past it. See: #11
        let deadline = start + timeout;
        let mut answer = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the agent did not finish its answer in time",
                )));
            }
            stream.set_read_timeout(Some(left)).map_err(io)?;
            let n = match (&stream).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            if n == 0 {
                break;
            }
            let chunk = &buf[..n];
            if let Some(end) = chunk.iter().position(|b| *b == b'\n') {
                answer.extend_from_slice(&chunk[..=end]);
                break;
            }
            answer.extend_from_slice(chunk);
            if answer.len() > MAX_LINE {
                break;
            }
        }
        if answer.last() != Some(&b'\n') {
            return Err(if answer.len() > MAX_LINE {
                TransportError::Protocol {
                    detail: format!("answer longer than {MAX_LINE} bytes"),
                }
            } else {
                io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the agent closed the connection without answering",
                ))
            });
        }
        serde_json::from_slice(&answer).map_err(|e| TransportError::Protocol {
            detail: e.to_string(),
        })
    }
}

/// `UnixStream::connect` that gives up after `timeout` (std has no connect timeout for
/// unix sockets, and `connect` blocks while the listener's accept queue is full). The
/// connecting thread is left behind on timeout: the plugin process exits right after.
fn connect_within(path: &std::path::Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let (tx, rx) = std::sync::mpsc::channel();
    let owned = path.to_owned();
    std::thread::Builder::new()
        .name("netpol-cni-connect".to_owned())
        .spawn(move || {
            // The receiver may be gone (timed out): nothing to tell then.
            let _ = tx.send(UnixStream::connect(owned));
        })?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the agent's socket did not accept the connection in time",
        )),
    }
}

/// Parses `CNI_ARGS` (`K=V;K=V`) into the Pod it names, if it names one.
pub fn pod_from_args(args: &str) -> Option<PodRef> {
    let map: BTreeMap<&str, &str> = args
        .split(';')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let namespace = map.get("K8S_POD_NAMESPACE").filter(|s| !s.is_empty())?;
    let name = map.get("K8S_POD_NAME").filter(|s| !s.is_empty())?;
    Some(PodRef {
        namespace: (*namespace).to_owned(),
        name: (*name).to_owned(),
        uid: map
            .get("K8S_POD_UID")
            .filter(|s| !s.is_empty())
            .map(|s| (*s).to_owned()),
    })
}

/// The Pod's addresses in a result, each once.
pub fn result_ips(result: &CNIResult) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for ip in &result.ips {
        if !out.contains(&ip.address.addr()) {
            out.push(ip.address.addr());
        }
    }
    out
}

type Connect<'t> = Box<dyn Fn(&Settings) -> Box<dyn Transport + 't> + 't>;

/// The netpol chained plugin: tells the agent about each sandbox and, on ADD, hands the
/// previous result on once the agent has applied the Pod's ruleset.
pub struct NetpolCni<'t> {
    connect: Connect<'t>,
}

impl NetpolCni<'static> {
    /// The plugin talking to the agent over the configured socket.
    pub fn with_socket() -> Self {
        Self::new(|s| {
            Box::new(SocketTransport {
                path: s.agent_socket.clone(),
            })
        })
    }
}

impl<'t> NetpolCni<'t> {
    /// The plugin with `connect` making the transport to the agent for the settings.
    pub fn new(connect: impl Fn(&Settings) -> Box<dyn Transport + 't> + 't) -> Self {
        Self {
            connect: Box::new(connect),
        }
    }

    fn request(
        &self,
        command: Command,
        args: &Args,
        pod: PodRef,
        ips: Vec<IpAddr>,
        s: &Settings,
    ) -> Request {
        Request {
            version: WIRE_VERSION,
            command,
            container_id: args
                .container_id()
                .map(ToString::to_string)
                .unwrap_or_default(),
            netns: args
                .netns()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ifname: args.ifname().map(ToString::to_string).unwrap_or_default(),
            pod,
            ips,
            timeout_ms: s.timeout_seconds.saturating_mul(1000),
        }
    }

    /// Asks the agent; `Err` is the CNI error to return (or to override with failOpen).
    fn ask(&self, s: &Settings, request: &Request) -> Result<(), Error> {
        let who = format!("{}/{}", request.pod.namespace, request.pod.name);
        let cmd = request.command;
        let transport = (self.connect)(s);
        match transport.call(request, Duration::from_secs(s.timeout_seconds)) {
            Ok(r) if r.ok => Ok(()),
            Ok(r) => Err(Error::Custom(
                AGENT_REFUSED,
                format!("netpol agent refused {cmd} of Pod {who}: {}", r.message),
                FAIL_CLOSED.to_owned(),
            )),
            Err(e) => Err(Error::TryAgainLater(format!(
                "netpol agent did not confirm {cmd} of Pod {who}: {}. {FAIL_CLOSED}",
                ErrorChain(&e)
            ))),
        }
    }

    /// `Ok` when the agent confirmed, or when it did not and the config fails open.
    fn confirmed(&self, s: &Settings, request: &Request) -> Result<(), Error> {
        match self.ask(s, request) {
            Err(e) if s.fail_open => {
                eprintln!(
                    "netpol-cni: failOpen: {}: {}; letting the Pod start without confirmed policy",
                    e.msg(),
                    e.details()
                );
                Ok(())
            }
            other => other,
        }
    }
}

const FAIL_CLOSED: &str = "failing closed: the Pod does not start until its policy is in place \
                           (set \"failOpen\": true in the netpol-cni config to let it start)";

fn prev_result(conf: &NetConf) -> Result<CNIResult, Error> {
    conf.prev_result.clone().ok_or_else(|| {
        Error::InvalidNetworkConfig(
            "no prevResult: netpol-cni is a chained plugin; list it after the plugin that sets \
             up the interface and addresses"
                .to_owned(),
        )
    })
}

impl Cni for NetpolCni<'_> {
    fn add(&self, args: Args) -> Result<CNIResult, Error> {
        let s = Settings::from_conf(args.config())?;
        let prev = prev_result(args.config())?;
        let Some(pod) = pod_from_args(args.args().unwrap_or_default()) else {
            eprintln!("netpol-cni: CNI_ARGS names no Kubernetes Pod: passing through");
            return Ok(prev);
        };
        let ips = result_ips(&prev);
        if ips.is_empty() {
            return Err(Error::InvalidNetworkConfig(
                "prevResult has no IP addresses: netpol-cni needs the Pod's addresses to \
                 enforce its policy and its peers'"
                    .to_owned(),
            ));
        }
        let request = self.request(Command::Add, &args, pod, ips, &s);
        self.confirmed(&s, &request)?;
        Ok(prev)
    }

    /// Never fails (the CNI spec: DEL of something half-made or already gone must
    /// succeed): problems are logged to stderr. The binary also exits 0 when the runtime's
    /// environment or stdin cannot be read for a DEL. See: #11
    fn del(&self, args: Args) -> Result<(), Error> {
        let s = Settings::from_conf(args.config()).unwrap_or_else(|e| {
            eprintln!(
                "netpol-cni: DEL: {}: {}; telling the agent at the default socket",
                e.msg(),
                e.details()
            );
            // The defaults: the default socket and timeout, fail closed.
            Settings::default()
        });
        let Some(pod) = pod_from_args(args.args().unwrap_or_default()) else {
            return Ok(());
        };
        let ips = args
            .config()
            .prev_result
            .as_ref()
            .map(result_ips)
            .unwrap_or_default();
        let request = self.request(Command::Del, &args, pod, ips, &s);
        if let Err(e) = self.ask(&s, &request) {
            // DEL must not fail for something already gone; the agent drops records
            // whose namespace disappeared when it comes back.
            eprintln!("netpol-cni: DEL: {}: {}", e.msg(), e.details());
        }
        Ok(())
    }

    fn check(&self, args: Args) -> Result<(), Error> {
        let s = Settings::from_conf(args.config())?;
        let prev = prev_result(args.config())?;
        let Some(pod) = pod_from_args(args.args().unwrap_or_default()) else {
            return Ok(());
        };
        let request = self.request(Command::Check, &args, pod, result_ips(&prev), &s);
        self.confirmed(&s, &request)
    }

    /// Ready when the agent's socket accepts connections (so ADDs can be confirmed).
    fn status(&self, args: Args) -> Result<(), Error> {
        let s = Settings::from_conf(args.config())?;
        match connect_within(&s.agent_socket, Duration::from_secs(s.timeout_seconds)) {
            Ok(_) => Ok(()),
            Err(_) if s.fail_open => Ok(()),
            Err(e) => Err(Error::PluginNotAvailable(format!(
                "netpol agent socket {}: {e}",
                s.agent_socket.display()
            ))),
        }
    }

    /// Nothing to collect: the agent forgets records whose namespace is gone.
    fn gc(&self, _args: Args) -> Result<(), Error> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use rscni_plugin::test_util::ArgsBuilder;

    use super::*;

    fn code(e: &Error) -> u32 {
        u32::from(e)
    }

    struct Fake {
        answer: Option<Response>,
        seen: RefCell<Vec<Request>>,
    }

    impl Transport for &Fake {
        fn call(&self, r: &Request, _: Duration) -> Result<Response, TransportError> {
            self.seen.borrow_mut().push(r.clone());
            self.answer.clone().ok_or_else(|| TransportError::Connect {
                path: "/nonexistent.sock".into(),
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            })
        }
    }

    fn fake(answer: Option<Response>) -> Fake {
        Fake {
            answer,
            seen: RefCell::new(Vec::new()),
        }
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni","timeoutSeconds":3,
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],
        "ips":[{"address":"10.244.1.5/24","interface":0},{"address":"fd00::5/64","interface":0}],
        "dns":{}}}"#;

    const POD_ARGS: &str = "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1";

    fn args(conf: &str, cni_args: &str) -> Args {
        ArgsBuilder::new()
            .container_id("c1")
            .unwrap()
            .netns("/var/run/netns/cni-1")
            .ifname("eth0")
            .unwrap()
            .args(cni_args)
            .config(conf)
            .unwrap()
            .build()
            .unwrap()
    }

    fn plugin(f: &Fake) -> NetpolCni<'_> {
        NetpolCni::new(move |_| Box::new(f))
    }

    #[test]
    fn add_passes_prev_result_through_after_the_agent_applied() {
        let f = fake(Some(Response::ok("applied")));
        let result = plugin(&f).add(args(CONF, POD_ARGS)).unwrap();
        assert_eq!(result.ips.len(), 2);
        assert_eq!(result.interfaces[0].name, "eth0");
        let seen = f.seen.borrow();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].command, Command::Add);
        assert_eq!(seen[0].container_id, "c1");
        assert_eq!(seen[0].netns, "/var/run/netns/cni-1");
        assert_eq!(seen[0].pod.uid.as_deref(), Some("u-1"));
        assert_eq!(
            seen[0].ips,
            [
                "10.244.1.5".parse::<IpAddr>().unwrap(),
                "fd00::5".parse().unwrap()
            ]
        );
        assert_eq!(seen[0].timeout_ms, 3000);
    }

    #[test]
    fn add_fails_closed_unless_fail_open() {
        for answer in [None, Some(Response::error("pod x/a is not known"))] {
            let f = fake(answer.clone());
            let e = plugin(&f).add(args(CONF, POD_ARGS)).unwrap_err();
            let want = if answer.is_some() { AGENT_REFUSED } else { 11 };
            assert_eq!(code(&e), want, "{e:?}");
            assert!(
                format!("{} {}", e.msg(), e.details()).contains("x/a"),
                "{e:?}"
            );
            let open = CONF.replacen(
                "\"timeoutSeconds\":3",
                "\"timeoutSeconds\":3,\"failOpen\":true",
                1,
            );
            let result = plugin(&f).add(args(&open, POD_ARGS)).unwrap();
            assert_eq!(result.ips.len(), 2);
        }
    }

    #[test]
    fn del_always_succeeds_and_check_reports() {
        let f = fake(None);
        plugin(&f).del(args(CONF, POD_ARGS)).unwrap();
        let bare = r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni"}"#;
        plugin(&f).del(args(bare, POD_ARGS)).unwrap();
        assert_eq!(
            f.seen.borrow().len(),
            2,
            "DEL reported even without prevResult"
        );

        let f = fake(Some(Response::ok("in place")));
        plugin(&f).check(args(CONF, POD_ARGS)).unwrap();
        let f = fake(Some(Response::error("no ruleset")));
        let e = plugin(&f).check(args(CONF, POD_ARGS)).unwrap_err();
        assert_eq!(code(&e), AGENT_REFUSED);
    }

    #[test]
    fn bad_configuration_is_refused_before_the_agent_is_asked() {
        let f = fake(Some(Response::ok("applied")));
        for (conf, what) in [
            (CONF.replacen("\"timeoutSeconds\":3", "\"timeoutSeconds\":0", 1), "out of range"),
            (CONF.replacen("\"timeoutSeconds\":3", "\"timeoutSeconds\":\"x\"", 1), "invalid type"),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni"}"#.to_owned(), "prevResult"),
            (r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni","prevResult":{"ips":[]}}"#.to_owned(), "no IP"),
        ] {
            let e = plugin(&f).add(args(&conf, POD_ARGS)).unwrap_err();
            assert_eq!(code(&e), 7, "{conf}: {e:?}");
            assert!(format!("{} {}", e.msg(), e.details()).contains(what), "{what}: {e:?}");
        }
        assert!(f.seen.borrow().is_empty(), "nothing reached the agent");
    }

    #[test]
    fn non_kubernetes_containers_pass_through() {
        let f = fake(None);
        let result = plugin(&f).add(args(CONF, "IgnoreUnknown=1")).unwrap();
        assert_eq!(result.ips.len(), 2);
        assert!(f.seen.borrow().is_empty());
    }

    #[test]
    fn status_reports_the_agent_socket() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        let conf = |fail_open: bool| {
            format!(
                r#"{{"cniVersion":"1.1.0","name":"k8s","type":"netpol-cni","agentSocket":"{}","failOpen":{fail_open}}}"#,
                sock.display()
            )
        };
        let f = fake(None);
        let e = plugin(&f).status(args(&conf(false), "")).unwrap_err();
        assert_eq!(code(&e), 50, "{e:?}");
        plugin(&f).status(args(&conf(true), "")).unwrap();
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        plugin(&f).status(args(&conf(false), "")).unwrap();
        plugin(&f).gc(args(&conf(false), "")).unwrap();
    }

    #[test]
    fn pod_args_parse() {
        assert_eq!(pod_from_args("K8S_POD_NAME=a"), None);
        assert_eq!(
            pod_from_args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a").map(|p| p.name),
            Some("a".into())
        );
    }
}
