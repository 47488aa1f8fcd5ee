//! The `netpol-cni` chained CNI plugin and its conversation with the agent.
//!
//! ```text
//! container runtime ──exec (CNI_* env, config + prevResult on stdin)──▶ netpol-cni
//!     netpol-cni ──one JSON line over /run/netpol/cni.sock──▶ agent (cni::server)
//!     agent: record Pod → netns + IPs, compile, apply the Pod's ruleset and its peers'
//!     new sets in this pass ──one JSON line──▶ netpol-cni ──prevResult──▶ runtime
//! ```
//!
//! [`plugin::NetpolCni`] is the plugin (`ADD`, `DEL`, `CHECK`, `STATUS`, `GC`), run by
//! `rscni_plugin` (the CNI protocol, versions 0.3.0 to 1.1.0), with the agent behind the
//! [`plugin::Transport`] trait (the real one is a unix socket with a deadline). The
//! `netpol-cni` binary only starts it. On `ADD` the plugin returns only
//! after the agent has applied the Pod's ruleset: no Pod runs a moment without its
//! policy. When the agent cannot answer in time, `ADD` fails (the runtime tears the
//! sandbox down and retries), unless the network config says `"failOpen": true`.
//!
//! The agent side lives in the `enforcer` crate (`enforcer::cni::server`: the socket,
//! one request per connection; the records in `enforcer::state::State`: netns and IPs of
//! each Pod, persisted by `enforcer::cni::records`); it depends on this crate for the wire
//! types only ([`Request`], [`Response`], [`Command`], [`PodRef`] and the constants).
//! [`install`] puts the binary on the node and chains it into the node's conflist.
//!
//! This crate is one process's code (the plugin the runtime execs per Pod, and its
//! installer in the DaemonSet's init container): it depends on serde, serde_json,
//! rscni-plugin and thiserror, never on kube, tokio, hyper or the policy compiler
//! (`.ci/run` checks that).

pub mod config;
pub mod install;
pub mod plugin;

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Default path of the agent's socket.
pub const DEFAULT_SOCKET: &str = "/run/netpol/cni.sock";

/// Version of the plugin-agent wire format ([`Request::version`]).
pub const WIRE_VERSION: u32 = 1;

/// Largest request or response line accepted, in bytes.
pub const MAX_LINE: usize = 64 * 1024;

/// The CNI operation the plugin reports to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Command {
    /// A sandbox got its network: enforce before returning.
    Add,
    /// A sandbox's network is being torn down.
    Del,
    /// Is the sandbox's policy in place?
    Check,
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
        })
    }
}

/// The Pod a sandbox belongs to (from `CNI_ARGS`: `K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
/// `K8S_POD_UID`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodRef {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID, when the runtime passes it (containerd and CRI-O do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// One request of the plugin to the agent (a JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// [`WIRE_VERSION`].
    pub version: u32,
    /// What happened.
    pub command: Command,
    /// `CNI_CONTAINERID`: the sandbox.
    pub container_id: String,
    /// `CNI_NETNS` (may be empty on `DEL`).
    #[serde(default)]
    pub netns: String,
    /// `CNI_IFNAME`.
    #[serde(default)]
    pub ifname: String,
    /// The Pod.
    pub pod: PodRef,
    /// The Pod's addresses, from `prevResult.ips`.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    /// How long the plugin waits for the answer, in milliseconds (the agent answers
    /// before that, with an error if need be).
    pub timeout_ms: u64,
}

/// The agent's answer (a JSON line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request was carried out (`ADD`: the ruleset is applied; `CHECK`: it
    /// is in place; `DEL`: the record is gone).
    pub ok: bool,
    /// What was done, or why not.
    pub message: String,
}

impl Response {
    /// A success.
    pub fn ok(message: impl Into<String>) -> Self {
        Self {
            ok: true,
            message: message.into(),
        }
    }

    /// A refusal.
    pub fn error(message: impl Into<String>) -> Self {
        Self {
            ok: false,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_is_camel_case_json() {
        let r = Request {
            version: WIRE_VERSION,
            command: Command::Add,
            container_id: "c1".into(),
            netns: "/var/run/netns/cni-1".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "x".into(),
                name: "a".into(),
                uid: None,
            },
            ips: vec!["10.0.0.5".parse().unwrap()],
            timeout_ms: 1000,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"version":1,"command":"ADD","containerId":"c1","netns":"/var/run/netns/cni-1","ifname":"eth0","pod":{"namespace":"x","name":"a"},"ips":["10.0.0.5"],"timeoutMs":1000}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert!(serde_json::from_str::<Request>(r#"{"command":"RM"}"#).is_err());
    }
}
