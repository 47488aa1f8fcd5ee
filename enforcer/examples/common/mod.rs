//! What the agent benchmarks share: argument parsing, percentiles, and the CNI harness
//! (an agent in this process serving the `netpol-cni` socket, and one ADD through the
//! plugin's own code with the real socket transport, as a runtime would call it).
// Each example uses a different subset of these helpers.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CompiledRulesets};
use enforcer::applier::Applier;
use enforcer::manifests::ManifestDir;
use enforcer::netns;
use netpol_cni::plugin::NetpolCni;
use rscni_plugin::cni::Cni;
use rscni_plugin::test_util::ArgsBuilder;

/// The number after `name` on the command line, or `default`.
pub(crate) fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// The word after `name` on the command line, or `default`.
pub(crate) fn word(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.into())
}

/// The `p` quantile (0..=1) of sorted milliseconds; NaN when empty.
pub(crate) fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Logs to stderr when `RUST_LOG` is set.
pub(crate) fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
}

/// A multi-threaded runtime for the in-process agent.
pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Starts the agent on `manifests` and waits until it is ready (first sync applied).
pub(crate) fn start_agent(
    rt: &tokio::runtime::Runtime,
    config: AgentConfig,
    manifests: &Path,
    applier: Arc<dyn Applier>,
) -> Agent {
    let agent = rt
        .block_on(Agent::start(
            config,
            ManifestDir::new(manifests, None),
            Arc::new(CompiledRulesets::default()),
            applier,
        ))
        .unwrap();
    while !agent.ready() {
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// One CNI ADD of Pod `bench/n<i>` in netns `netns` with address `10.91.x.y/16`
/// (sandbox `<sandbox>-<i>`) through the plugin, against the agent's `socket`.
/// Returns how long the plugin took to answer.
pub(crate) fn cni_add(socket: &Path, netns_name: &str, sandbox: &str, i: usize) -> Duration {
    let path = netns::path(netns_name).display().to_string();
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
        "agentSocket": socket, "timeoutSeconds": 60,
        "prevResult": {"ips": [{"address": format!("10.91.{}.{}/16", i / 250, i % 250 + 1)}]}
    })
    .to_string();
    let args = ArgsBuilder::new()
        .container_id(&format!("{sandbox}-{i}"))
        .unwrap()
        .netns(&path)
        .ifname("eth0")
        .unwrap()
        .args(&format!("K8S_POD_NAMESPACE=bench;K8S_POD_NAME=n{i}"))
        .config(&conf)
        .unwrap()
        .build()
        .unwrap();
    let start = Instant::now();
    let out = NetpolCni::with_socket().add(args);
    let took = start.elapsed();
    assert!(out.is_ok(), "ADD {i}: {out:?}");
    took
}
