//! CNI ADD latency (root, real nft): an agent in this process serving the netpol-cni
//! socket on a node that already enforces `--pods` Pods, then `--adds` new Pods set up
//! one after another, each through the plugin's own code (`NetpolCni::add` with the real
//! socket transport), as a runtime would.
//!
//! Measures, per ADD, the time from the plugin's start until it returns (the Pod's
//! ruleset and every peer's updated sets applied), and prints a table of medians and
//! tails. Every existing Pod (`app=bench`) allows ingress from the new ones (`app=new`,
//! not isolated), so each ADD also re-applies all `--pods` existing tables: the worst
//! case for "peers' sets at once".
//!
//! ```text
//! cargo run --release -p enforcer --example cni_add_latency -- [--pods 20] [--adds 30]
//!     [--burst 1]
//! ```
//!
//! `--burst N` runs N ADDs at once (N threads, like a runtime starting a scaled-up
//! Deployment's sandboxes), `--adds` in total.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{arg, cni_add, pct};
use enforcer::agent::{AgentConfig, CniConfig};
use enforcer::applier::NftApplier;
use enforcer::netns;

fn main() {
    common::init_tracing();
    if let Err(reason) = netns::kernel_support() {
        eprintln!("cni_add_latency needs root and network namespaces: {reason}");
        std::process::exit(3);
    }
    let pods = arg("--pods", 20);
    let adds = arg("--adds", 30);
    let burst = arg("--burst", 1).max(1);
    let prefix = format!("npcnib{}", std::process::id() % 10_000);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n");
    let mut names = Vec::new();
    for i in 0..pods {
        let ns = format!("{prefix}-e{i}");
        netns::add(&ns).unwrap();
        names.push(ns.clone());
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: e{i}, namespace: bench, labels: {{app: bench}}, annotations: {{netpol.io/netns: {ns}}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.90.0.{}}}\n---",
            i + 1
        );
    }
    for i in 0..adds {
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: n{i}, namespace: bench, labels: {{app: new}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Pending}}\n---"
        );
    }
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: same-app, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: bench}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: new}}}], ports: [{port: 80}]}]\n");
    std::fs::write(manifests.join("all.yaml"), yaml).unwrap();
    let socket = dir.path().join("cni.sock");
    let rt = common::runtime();
    let config = AgentConfig {
        drops: None,
        verify_interval: Duration::from_secs(60),
        cni: Some(CniConfig {
            socket: socket.clone(),
            records: Some(dir.path().join("records")),
            chain: None,
        }),
        ..AgentConfig::default()
    };
    let agent = common::start_agent(&rt, config, &manifests, Arc::new(NftApplier));
    let mut took = Vec::new();
    let add = |i: usize| -> Duration {
        let ns = format!("{prefix}-n{i}");
        cni_add(&socket, &ns, "sandbox", i)
    };
    for i in 0..adds {
        let ns = format!("{prefix}-n{i}");
        netns::add(&ns).unwrap();
        names.push(ns);
    }
    let wall = Instant::now();
    for chunk in (0..adds).collect::<Vec<_>>().chunks(burst) {
        std::thread::scope(|s| {
            let handles: Vec<_> = chunk.iter().map(|&i| s.spawn(move || add(i))).collect();
            for h in handles {
                took.push(h.join().unwrap());
            }
        });
    }
    let wall = wall.elapsed();
    rt.block_on(agent.stop()).unwrap();
    for ns in names {
        let _ = netns::delete(&ns);
    }
    let mut took: Vec<f64> = took.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    took.sort_by(f64::total_cmp);
    println!("| existing Pods | ADDs | burst | p50 ms | p90 ms | max ms | ADDs/s |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {pods} | {adds} | {burst} | {:.1} | {:.1} | {:.1} | {:.1} |",
        pct(&took, 0.5),
        pct(&took, 0.9),
        pct(&took, 1.0),
        adds as f64 / wall.as_secs_f64()
    );
}
