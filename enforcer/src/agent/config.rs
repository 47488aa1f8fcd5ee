//! Settings of the agent.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::manifests::WatchOptions;
use crate::plan::BackoffPolicy;
use crate::reporter::DropsConfig;

/// Settings of the reconcile loop.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Only Pods whose `spec.nodeName` is this node (or unset) are local.
    pub node: Option<String>,
    /// How often the kernel tables are compared with what was applied.
    pub verify_interval: Duration,
    /// Manifest watch timing.
    pub watch: WatchOptions,
    /// Retry delays of failed applies.
    pub backoff: BackoffPolicy,
    /// Applies running at the same time.
    pub parallelism: usize,
    /// Address of `/metrics`, `/healthz`, `/readyz` (`None`: no HTTP server).
    pub listen: Option<SocketAddr>,
    /// Drop reports (`None`: off). Its NFLOG group must be the rulesets' log group.
    pub drops: Option<DropsConfig>,
    /// The `netpol-cni` socket (`None`: no plugin talks to this agent).
    pub cni: Option<CniConfig>,
    /// Find the netns of this node's Pods that have none by their IPs (needs `node`;
    /// `None`: off). See [`crate::discovery`].
    pub discovery: Option<crate::discovery::DiscoveryOptions>,
    /// Own the node table: `table inet netpol` in the agent's own network namespace
    /// (the node's), judging the egress of this node's Pods after kube-proxy's DNAT
    /// (see [`crate::node`]). Off by default: in-process tests run in the host's
    /// namespace; `netpol agent` turns it on.
    pub node_table: bool,
    /// Subscribe to nftables commit events in each enforced netns and verify a table as
    /// soon as something committed there; the verify interval stays as a slow safety
    /// net. Off by default (in-process tests); `netpol agent` turns it on.
    pub nft_events: bool,
    /// Render a local Pod's table again only when something its render reads changed
    /// (see `agent/incremental.rs`), the changed ones on `parallelism` threads; off:
    /// every compile renders every table, one after another (the path before #12, the
    /// benchmark's baseline). On by default. See: #12
    pub incremental: bool,
}

/// Where the agent meets the `netpol-cni` plugin.
#[derive(Debug, Clone)]
pub struct CniConfig {
    /// The unix socket (`/run/netpol/cni.sock`).
    pub socket: PathBuf,
    /// Directory persisting the plugin's records across agent restarts (`None`: memory
    /// only).
    pub records: Option<PathBuf>,
    /// Keep the plugin chained in the node's CNI configuration (`None`: the installer's
    /// job only).
    pub chain: Option<ChainConfig>,
}

/// The node's CNI configuration the agent keeps `netpol-cni` chained into: a primary CNI
/// that rewrites its conflist (on upgrade, on restart) drops the entry, and new Pods
/// would start without waiting for their policy.
#[derive(Debug, Clone)]
pub struct ChainConfig {
    /// The CNI configuration directory (`/etc/cni/net.d`).
    pub conf_dir: PathBuf,
    /// The entry to chain.
    pub entry: crate::cni::install::PluginConfig,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            node: None,
            verify_interval: Duration::from_secs(5),
            watch: WatchOptions::default(),
            backoff: BackoffPolicy::default(),
            parallelism: 8,
            listen: None,
            drops: Some(DropsConfig::default()),
            cni: None,
            discovery: None,
            node_table: false,
            nft_events: false,
            incremental: true,
        }
    }
}
