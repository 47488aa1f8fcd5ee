//! `netpol agent`: the node agent on a manifest directory or on the Kubernetes API
//! (`--kubernetes`; see docs/agent.md and docs/kubernetes.md).
//!
//! Logs are JSON lines on stderr (`RUST_LOG` filters, default `info`); drop reports are
//! log lines of target `netpol::drops` (`--no-drops` turns them off). The agent runs
//! until SIGINT or SIGTERM and leaves the Pods' tables in place when it stops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use enforcer::agent::{Agent, AgentConfig, ChainConfig, CniConfig, CompiledRulesets};
use enforcer::applier::NetlinkApplier;
use enforcer::cni::install::{self, PluginConfig};
use enforcer::kube::KubeSource;
use enforcer::manifests::{ManifestDir, WatchOptions};
use enforcer::reporter::DropsConfig;
use enforcer::source::{ManifestSource, StateSource};
use policy_compiler::ruleset::RulesetOptions;

/// Flags of `netpol agent`.
#[derive(clap::Args, Debug)]
pub(crate) struct AgentArgs {
    /// Directory of manifests (recursive: *.yaml, *.yml, *.json), watched for changes.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    manifests: Option<PathBuf>,
    /// Watch Namespaces, Pods and NetworkPolicies on the Kubernetes API instead (in-cluster
    /// service account, or --kubeconfig / $KUBECONFIG). Needs --node.
    #[arg(long, requires = "node")]
    kubernetes: bool,
    /// Kubeconfig file for --kubernetes (default: $KUBECONFIG, ~/.kube/config, then the
    /// in-cluster service account).
    #[arg(long, value_name = "FILE", requires = "kubernetes")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context for --kubernetes (default: the current context).
    #[arg(long, value_name = "CONTEXT", requires = "kubernetes")]
    context: Option<String>,
    /// Pod to netns mapping: lines `namespace/pod netns-name` (/var/run/netns/NAME).
    /// The Pod annotation `netpol.io/netns` (a plain name only) wins over it. Manifest source only.
    #[arg(long, value_name = "FILE", conflicts_with = "kubernetes")]
    netns_map: Option<PathBuf>,
    /// Only Pods with this spec.nodeName (or none) are local.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// How often kernel tables are compared with what was applied (e.g. 5s, 500ms, 1m).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    verify_interval: Duration,
    /// Quiet time after a change in the directory before it is read.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    debounce: Duration,
    /// NFLOG group of the drop rules.
    #[arg(long, default_value_t = RulesetOptions::default().log_group)]
    log_group: u16,
    /// Do not report drops (no NFLOG listener in the Pods' namespaces).
    #[arg(long)]
    no_drops: bool,
    /// Serve the netpol-cni plugin on this unix socket (e.g. /run/netpol/cni.sock): new
    /// Pods are enforced before their sandbox is handed back to the runtime.
    #[arg(long, value_name = "PATH")]
    cni_socket: Option<PathBuf>,
    /// Directory keeping the plugin's records (Pod -> netns, IPs) across agent restarts
    /// (e.g. /var/lib/netpol/cni, a hostPath).
    #[arg(long, value_name = "DIR", requires = "cni_socket")]
    cni_records: Option<PathBuf>,
    /// Keep netpol-cni chained in this CNI configuration directory (e.g. /etc/cni/net.d):
    /// checked every verify interval, chained again when the primary CNI rewrote its
    /// configuration without it.
    #[arg(long, value_name = "DIR", requires = "cni_socket")]
    cni_conf_dir: Option<PathBuf>,
    /// The plugin entry to chain (JSON, as for `netpol-cni install --entry`); default: the
    /// defaults with --cni-socket as agentSocket.
    #[arg(long, value_name = "FILE", requires = "cni_conf_dir")]
    cni_entry: Option<PathBuf>,
    /// Find the netns of this node's Pods that have none (started before netpol-cni) by
    /// their IPs, among /var/run/netns. Needs --node.
    #[arg(long, requires = "node")]
    discover_netns: bool,
    /// Do not own the node table (`table inet netpol` in the agent's own network
    /// namespace, which judges the egress of this node's Pods after kube-proxy's DNAT).
    /// Without it, connections through Services are not judged on their backend.
    #[arg(long)]
    no_node_table: bool,
}

/// Parses `500ms`, `5s`, `2m` (a bare number is seconds).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration unit {unit:?}: use ms, s or m")),
    }
    .and_then(|d| {
        if d.is_zero() {
            Err("duration must be positive".to_owned())
        } else {
            Ok(d)
        }
    })
}

/// What `--cni-conf-dir` / `--cni-entry` ask for.
fn chain_config(args: &AgentArgs, socket: &std::path::Path) -> anyhow::Result<Option<ChainConfig>> {
    let Some(conf_dir) = &args.cni_conf_dir else {
        return Ok(None);
    };
    let entry = match &args.cni_entry {
        Some(file) => install::read_entry(file)
            .with_context(|| format!("cannot read --cni-entry {}", file.display()))?,
        None => PluginConfig {
            agent_socket: socket.to_owned(),
            ..PluginConfig::default()
        },
    };
    if entry.agent_socket != socket {
        anyhow::bail!(
            "the plugin entry's agentSocket {} is not --cni-socket {}: the plugin would not reach this agent",
            entry.agent_socket.display(),
            socket.display()
        );
    }
    Ok(Some(ChainConfig {
        conf_dir: conf_dir.clone(),
        entry,
    }))
}

/// Runs the agent until a signal; returns the exit code.
pub(crate) fn run(args: &AgentArgs) -> i32 {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run_agent(args) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "agent failed");
            1
        }
    }
}

fn run_agent(args: &AgentArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let result = rt.block_on(async {
        let config = AgentConfig {
            node: args.node.clone(),
            verify_interval: args.verify_interval,
            watch: WatchOptions {
                debounce: args.debounce,
                ..WatchOptions::default()
            },
            listen: Some(args.listen),
            drops: (!args.no_drops).then(|| {
                let mut d = DropsConfig::default();
                d.nflog.group = args.log_group;
                d
            }),
            discovery: args
                .discover_netns
                .then(enforcer::discovery::DiscoveryOptions::default),
            cni: match &args.cni_socket {
                Some(socket) => Some(CniConfig {
                    socket: socket.clone(),
                    records: args.cni_records.clone(),
                    chain: chain_config(args, socket)?,
                }),
                None => None,
            },
            node_table: !args.no_node_table,
            nft_events: true,
            ..AgentConfig::default()
        };
        let renderer = Arc::new(CompiledRulesets {
            options: RulesetOptions {
                log_group: args.log_group,
                ..RulesetOptions::default()
            },
        });
        let source: Box<dyn StateSource> = if args.kubernetes {
            let client =
                enforcer::kube::client(args.kubeconfig.as_deref(), args.context.as_deref())
                    .await
                    .context("cannot connect to the Kubernetes API")?;
            Box::new(KubeSource::new(client))
        } else {
            let manifests = args
                .manifests
                .clone()
                .context("--manifests DIR or --kubernetes is required")?;
            Box::new(ManifestSource::new(
                // Files modified within the debounce window are read once stable. See: #11
                ManifestDir::new(&manifests, args.netns_map.clone()).with_settle(args.debounce),
                config.watch,
            ))
        };
        tracing::info!(
            source = source.describe(),
            netns_map = args.netns_map.as_ref().map(|p| p.display().to_string()),
            node = args.node,
            drops = !args.no_drops,
            "netpol agent starting"
        );
        let mut agent = Agent::start_with_source(
            config,
            source,
            renderer,
            Arc::new(NetlinkApplier::new()),
        )
            .await
            .context("cannot start the agent")?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        tokio::select! {
            r = agent.wait() => return r.context("agent stopped"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping (tables stay in place)"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping (tables stay in place)"),
        }
        agent.stop().await.context("agent stopped with an error")
    });
    // A manifest scan still running on a blocking thread (a slow or hung filesystem)
    // must not hold the exit: dropping the runtime would wait for it without bound.
    // See: #11
    rt.shutdown_timeout(SHUTDOWN_GRACE);
    result
}

/// How long the exit waits for blocking work (a manifest scan) after the agent stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "5h", "0s", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
