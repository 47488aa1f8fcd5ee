//! The plugin side of `netpol-cni`: what the binary does once exec'd by a runtime.
//!
//! [`run`] takes the `CNI_*` environment, the network configuration from stdin and a
//! [`Transport`] to the agent, and returns what to print and the exit code, so the whole
//! plugin is tested without a runtime (and, through the binary, exactly as a runtime
//! drives it).
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
//! use enforcer::cni::plugin::{run, Transport, TransportError};
//! use enforcer::cni::{Request, Response};
//! use std::collections::BTreeMap;
//! use std::time::Duration;
//!
//! struct Agent;
//! impl Transport for Agent {
//!     fn call(&self, _: &Request, _: Duration) -> Result<Response, TransportError> {
//!         Ok(Response::ok("applied"))
//!     }
//! }
//! let env: BTreeMap<String, String> = [
//!     ("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "c1"), ("CNI_NETNS", "/var/run/netns/cni-1"),
//!     ("CNI_IFNAME", "eth0"), ("CNI_ARGS", "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a"),
//! ].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
//! let conf = br#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni",
//!   "prevResult":{"ips":[{"address":"10.0.0.5/24"}]}}"#;
//! let out = run(&env, conf, &|_| Box::new(Agent));
//! assert_eq!(out.code, 0);
//! assert!(out.stdout.contains("10.0.0.5/24"));
//! ```

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{Command, DEFAULT_SOCKET, MAX_LINE, PodRef, Request, Response, WIRE_VERSION};

/// CNI versions the plugin speaks (all have `prevResult.ips[].address`).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];

/// CNI error codes used here (spec 1.0, "Well-known error codes"; 100+ are the plugin's).
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later (the agent is unreachable or did not answer in time).
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The agent answered and refused (the Pod's policy could not be put in place).
    pub const AGENT_REFUSED: u32 = 100;
}

/// The plugin's part of the network configuration (unknown fields are ignored: the
/// runtime adds its own).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    /// The configuration's CNI version.
    pub cni_version: String,
    /// Network name.
    #[serde(default)]
    pub name: String,
    /// The agent's socket.
    #[serde(default = "default_socket")]
    pub agent_socket: PathBuf,
    /// Seconds `ADD` waits for the agent.
    #[serde(default = "default_timeout")]
    pub timeout_seconds: u64,
    /// Let the Pod start when the agent cannot confirm its policy.
    #[serde(default)]
    pub fail_open: bool,
    /// The result of the plugins before this one.
    #[serde(default)]
    pub prev_result: Option<Value>,
}

fn default_socket() -> PathBuf {
    PathBuf::from(DEFAULT_SOCKET)
}

fn default_timeout() -> u64 {
    10
}

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
        let stream = UnixStream::connect(&self.path).map_err(|source| TransportError::Connect {
            path: self.path.clone(),
            source,
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
        stream.set_read_timeout(Some(left())).map_err(io)?;
        let mut answer = Vec::new();
        BufReader::new(stream.take(MAX_LINE as u64 + 1))
            .read_until(b'\n', &mut answer)
            .map_err(io)?;
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

/// What the plugin prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Standard output: the result, the version report, or a CNI error object.
    pub stdout: String,
    /// Standard error: what an operator should know (fail-open, DEL without agent).
    pub stderr: String,
    /// Exit code: 0 on success, 1 with an error object on stdout.
    pub code: i32,
}

struct CniError {
    code: u32,
    msg: String,
    details: String,
}

fn err(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
    CniError {
        code,
        msg: msg.into(),
        details: details.into(),
    }
}

fn version_key(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(str::parse::<u32>);
    let key = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    it.next().is_none().then_some(key)
}

fn supported(v: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&v)
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

/// The addresses of `prevResult.ips[].address` (CIDR notation).
pub fn result_ips(prev: &Value) -> Result<Vec<IpAddr>, String> {
    let Some(ips) = prev.get("ips") else {
        return Ok(Vec::new());
    };
    let ips = ips.as_array().ok_or("prevResult.ips is not an array")?;
    let mut out = Vec::new();
    for (i, ip) in ips.iter().enumerate() {
        let address = ip
            .get("address")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("prevResult.ips[{i}].address is missing"))?;
        let net: ipnet::IpNet = address
            .parse()
            .map_err(|e| format!("prevResult.ips[{i}].address {address:?}: {e}"))?;
        if !out.contains(&net.addr()) {
            out.push(net.addr());
        }
    }
    Ok(out)
}

fn env<'a>(vars: &'a BTreeMap<String, String>, key: &str) -> Option<&'a str> {
    vars.get(key).map(String::as_str).filter(|s| !s.is_empty())
}

fn require<'a>(vars: &'a BTreeMap<String, String>, key: &str) -> Result<&'a str, CniError> {
    env(vars, key).ok_or_else(|| {
        err(
            code::INVALID_ENV,
            format!("{key} is not set"),
            format!("netpol-cni needs {key} for this command"),
        )
    })
}

/// Runs the plugin: `vars` is the environment, `stdin` the network configuration,
/// `connect` makes the transport to the agent named by the configuration.
pub fn run<'t>(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    connect: &dyn Fn(&NetConf) -> Box<dyn Transport + 't>,
) -> Output {
    let mut stderr = String::new();
    let mut version = "1.0.0".to_owned();
    match run_inner(vars, stdin, connect, &mut stderr, &mut version) {
        Ok(stdout) => Output {
            stdout,
            stderr,
            code: 0,
        },
        Err(e) => Output {
            stdout: json!({
                "cniVersion": version,
                "code": e.code,
                "msg": e.msg,
                "details": e.details,
            })
            .to_string(),
            stderr,
            code: 1,
        },
    }
}

fn run_inner<'t>(
    vars: &BTreeMap<String, String>,
    stdin: &[u8],
    connect: &dyn Fn(&NetConf) -> Box<dyn Transport + 't>,
    stderr: &mut String,
    version: &mut String,
) -> Result<String, CniError> {
    let command = require(vars, "CNI_COMMAND")?;
    if command == "VERSION" {
        // stdin may hold `{"cniVersion": "..."}`; answer in that version when we can.
        let asked = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_owned))
            .filter(|v| supported(v))
            .unwrap_or_else(|| "1.0.0".to_owned());
        return Ok(
            json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string(),
        );
    }
    let command = match command {
        "ADD" => Command::Add,
        "DEL" => Command::Del,
        "CHECK" => Command::Check,
        other => {
            return Err(err(
                code::INVALID_ENV,
                format!("unknown CNI_COMMAND {other:?}"),
                "expected ADD, DEL, CHECK or VERSION",
            ));
        }
    };
    let raw: Value = serde_json::from_slice(stdin).map_err(|e| {
        err(
            code::DECODE,
            "cannot decode the network configuration on stdin",
            format!("line {}, column {}: {e}", e.line(), e.column()),
        )
    })?;
    if let Some(v) = raw.get("cniVersion").and_then(Value::as_str) {
        *version = v.to_owned();
    }
    let conf: NetConf = serde_json::from_value(raw).map_err(|e| {
        err(
            code::INVALID_CONFIG,
            "invalid netpol-cni network configuration",
            e.to_string(),
        )
    })?;
    if !supported(&conf.cni_version) {
        *version = "1.0.0".to_owned();
        return Err(err(
            code::INCOMPATIBLE_VERSION,
            format!("CNI version {:?} is not supported", conf.cni_version),
            format!("supported: {}", SUPPORTED_VERSIONS.join(", ")),
        ));
    }
    if !(1..=600).contains(&conf.timeout_seconds) {
        return Err(err(
            code::INVALID_CONFIG,
            format!("timeoutSeconds {} is out of range", conf.timeout_seconds),
            "timeoutSeconds must be between 1 and 600",
        ));
    }
    if command == Command::Check && version_key(&conf.cni_version) < Some((0, 4, 0)) {
        return Err(err(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK is not defined for CNI version {}", conf.cni_version),
            "CHECK needs cniVersion 0.4.0 or later",
        ));
    }
    let container_id = require(vars, "CNI_CONTAINERID")?;
    let ifname = require(vars, "CNI_IFNAME")?;
    let netns = if command == Command::Del {
        env(vars, "CNI_NETNS").unwrap_or_default()
    } else {
        require(vars, "CNI_NETNS")?
    };
    // The result handed on: the previous plugins' result, in this configuration's version.
    let passthrough = || -> Result<String, CniError> {
        let mut prev = conf.prev_result.clone().ok_or_else(|| {
            err(
                code::INVALID_CONFIG,
                "no prevResult: netpol-cni is a chained plugin",
                "list it after the plugin that sets up the interface and addresses",
            )
        })?;
        if let Some(obj) = prev.as_object_mut() {
            obj.insert("cniVersion".into(), Value::String(conf.cni_version.clone()));
        }
        Ok(prev.to_string())
    };
    let Some(pod) = pod_from_args(env(vars, "CNI_ARGS").unwrap_or_default()) else {
        // Not a Kubernetes Pod (no K8S_POD_* arguments): nothing netpol enforces.
        stderr.push_str("netpol-cni: CNI_ARGS names no Kubernetes Pod: passing through\n");
        return match command {
            Command::Add => passthrough(),
            Command::Del | Command::Check => Ok(String::new()),
        };
    };
    let ips = match &conf.prev_result {
        Some(prev) => {
            result_ips(prev).map_err(|e| err(code::INVALID_CONFIG, "invalid prevResult", e))?
        }
        None if command == Command::Del => Vec::new(),
        // ADD and CHECK need the previous result: this fails with the reason.
        None => return passthrough(),
    };
    if command == Command::Add && ips.is_empty() {
        return Err(err(
            code::INVALID_CONFIG,
            "prevResult has no IP addresses",
            "netpol-cni needs the Pod's addresses to enforce its policy and its peers'",
        ));
    }
    let timeout = Duration::from_secs(conf.timeout_seconds);
    let request = Request {
        version: WIRE_VERSION,
        command,
        container_id: container_id.to_owned(),
        netns: netns.to_owned(),
        ifname: ifname.to_owned(),
        pod: pod.clone(),
        ips,
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    let transport = connect(&conf);
    let answer = transport.call(&request, timeout);
    let who = format!("{}/{}", pod.namespace, pod.name);
    match (command, answer) {
        (Command::Del, Ok(r)) if !r.ok => {
            stderr.push_str(&format!("netpol-cni: DEL {who}: agent: {}\n", r.message));
            Ok(String::new())
        }
        (Command::Del, Err(e)) => {
            // DEL must not fail for something already gone; the agent drops records
            // whose namespace disappeared when it comes back.
            stderr.push_str(&format!("netpol-cni: DEL {who}: {}\n", chain(&e)));
            Ok(String::new())
        }
        (Command::Del, Ok(_)) => Ok(String::new()),
        (cmd, Ok(r)) if r.ok => match cmd {
            Command::Add => passthrough(),
            _ => Ok(String::new()),
        },
        (cmd, outcome) => {
            let (code, msg) = match &outcome {
                Ok(r) => (
                    code::AGENT_REFUSED,
                    format!("netpol agent refused {cmd} of Pod {who}: {}", r.message),
                ),
                Err(e) => (
                    code::TRY_AGAIN_LATER,
                    format!(
                        "netpol agent did not confirm {cmd} of Pod {who}: {}",
                        chain(e)
                    ),
                ),
            };
            if conf.fail_open {
                stderr.push_str(&format!(
                    "netpol-cni: failOpen: {msg}; letting the Pod start without confirmed policy\n"
                ));
                return match cmd {
                    Command::Add => passthrough(),
                    _ => Ok(String::new()),
                };
            }
            Err(err(
                code,
                msg,
                "failing closed: the Pod does not start until its policy is in place \
                 (set \"failOpen\": true in the netpol-cni config to let it start)",
            ))
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

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

    fn vars(command: &str) -> BTreeMap<String, String> {
        [
            ("CNI_COMMAND", command),
            ("CNI_CONTAINERID", "c1"),
            ("CNI_NETNS", "/var/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME=a;K8S_POD_INFRA_CONTAINER_ID=c1;K8S_POD_UID=u-1",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    const CONF: &str = r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni","timeoutSeconds":3,
        "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/var/run/netns/cni-1"}],
        "ips":[{"address":"10.244.1.5/24","interface":0},{"address":"fd00::5/64","interface":0}],
        "dns":{}}}"#;

    fn run_with(fake: &Fake, v: &BTreeMap<String, String>, conf: &str) -> Output {
        let connect = |_: &NetConf| -> Box<dyn Transport + '_> { Box::new(fake) };
        run(v, conf.as_bytes(), &connect)
    }

    fn fake(answer: Option<Response>) -> Fake {
        Fake {
            answer,
            seen: RefCell::new(Vec::new()),
        }
    }

    #[test]
    fn add_passes_prev_result_through_after_the_agent_applied() {
        let f = fake(Some(Response::ok("applied")));
        let out = run_with(&f, &vars("ADD"), CONF);
        assert_eq!(out.code, 0, "{out:?}");
        let result: Value = serde_json::from_str(&out.stdout).unwrap();
        let prev: Value = serde_json::from_str::<Value>(CONF).unwrap()["prevResult"].clone();
        assert_eq!(result, prev);
        let seen = f.seen.borrow();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].command, Command::Add);
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
            let out = run_with(&f, &vars("ADD"), CONF);
            assert_eq!(out.code, 1);
            let e: Value = serde_json::from_str(&out.stdout).unwrap();
            let want = if answer.is_some() {
                code::AGENT_REFUSED
            } else {
                code::TRY_AGAIN_LATER
            };
            assert_eq!(e["code"], want, "{e}");
            assert_eq!(e["cniVersion"], "1.0.0");
            assert!(e["msg"].as_str().unwrap().contains("x/a"), "{e}");

            let open = CONF.replacen(
                "\"timeoutSeconds\":3",
                "\"timeoutSeconds\":3,\"failOpen\":true",
                1,
            );
            let out = run_with(&f, &vars("ADD"), &open);
            assert_eq!(out.code, 0, "{out:?}");
            assert!(out.stdout.contains("10.244.1.5/24"));
            assert!(out.stderr.contains("failOpen"), "{}", out.stderr);
        }
    }

    #[test]
    fn del_always_succeeds_and_check_reports() {
        let f = fake(None);
        let out = run_with(&f, &vars("DEL"), CONF);
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
        assert!(out.stderr.contains("cannot connect"), "{}", out.stderr);
        let mut v = vars("DEL");
        v.remove("CNI_NETNS");
        let out = run_with(
            &f,
            &v,
            r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni"}"#,
        );
        assert_eq!(out.code, 0, "DEL without netns or prevResult: {out:?}");

        let f = fake(Some(Response::ok("in place")));
        let out = run_with(&f, &vars("CHECK"), CONF);
        assert_eq!((out.code, out.stdout.as_str()), (0, ""));
        let f = fake(Some(Response::error("no ruleset")));
        assert_eq!(run_with(&f, &vars("CHECK"), CONF).code, 1);
        let old = CONF.replacen("\"cniVersion\":\"1.0.0\"", "\"cniVersion\":\"0.3.1\"", 1);
        let out = run_with(&f, &vars("CHECK"), &old);
        assert!(out.stdout.contains("\"code\":1"), "{}", out.stdout);
    }

    #[test]
    fn version_and_bad_input_give_cni_errors() {
        let f = fake(None);
        let out = run_with(&f, &vars("VERSION"), r#"{"cniVersion":"0.4.0"}"#);
        assert_eq!(out.code, 0);
        let v: Value = serde_json::from_str(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 4);

        let cases: Vec<(BTreeMap<String, String>, String, u32)> = vec![
            (BTreeMap::new(), CONF.into(), code::INVALID_ENV),
            (vars("RM"), CONF.into(), code::INVALID_ENV),
            (vars("ADD"), "{not json".into(), code::DECODE),
            (
                vars("ADD"),
                CONF.replace("1.0.0", "2.0.0"),
                code::INCOMPATIBLE_VERSION,
            ),
            (
                vars("ADD"),
                CONF.replacen("\"timeoutSeconds\":3", "\"timeoutSeconds\":0", 1),
                code::INVALID_CONFIG,
            ),
            (
                vars("ADD"),
                CONF.replacen("\"timeoutSeconds\":3", "\"timeoutSeconds\":\"x\"", 1),
                code::INVALID_CONFIG,
            ),
            (
                vars("ADD"),
                r#"{"cniVersion":"1.0.0","name":"k8s","type":"netpol-cni"}"#.into(),
                code::INVALID_CONFIG,
            ),
            (
                vars("ADD"),
                CONF.replace("10.244.1.5/24", "10.244.1.500/24"),
                code::INVALID_CONFIG,
            ),
            (
                vars("ADD"),
                r#"{"cniVersion":"1.0.0","prevResult":{"ips":[]}}"#.into(),
                code::INVALID_CONFIG,
            ),
        ];
        let mut no_netns = vars("ADD");
        no_netns.remove("CNI_NETNS");
        let mut cases = cases;
        cases.push((no_netns, CONF.into(), code::INVALID_ENV));
        for (v, conf, want) in cases {
            let out = run_with(&f, &v, &conf);
            assert_eq!(out.code, 1, "{conf}");
            let e: Value = serde_json::from_str(&out.stdout).unwrap();
            assert_eq!(e["code"], want, "{conf}: {e}");
            assert!(!e["msg"].as_str().unwrap().is_empty());
        }
        assert!(f.seen.borrow().is_empty(), "nothing reached the agent");
    }

    #[test]
    fn non_kubernetes_containers_pass_through() {
        let f = fake(None);
        let mut v = vars("ADD");
        v.insert("CNI_ARGS".into(), "IgnoreUnknown=1".into());
        let out = run_with(&f, &v, CONF);
        assert_eq!(out.code, 0);
        assert!(out.stdout.contains("10.244.1.5/24"));
        assert!(f.seen.borrow().is_empty());
    }

    #[test]
    fn args_and_versions_parse() {
        assert_eq!(pod_from_args("K8S_POD_NAME=a"), None);
        assert_eq!(
            pod_from_args("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a").map(|p| p.name),
            Some("a".into())
        );
        assert!(version_key("0.4.0") > version_key("0.3.1"));
        assert_eq!(version_key("1.0"), None);
    }
}
