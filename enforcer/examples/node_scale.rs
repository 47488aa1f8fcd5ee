//! Node-scale benchmark of the kernel path (root, real kernel; #12): a node with
//! `--local` Pods (one netns each, no veths) in a `--cluster`-Pod cluster view, run with
//! the old applier (`NftApplier`: `ip netns exec nft -f` per table, `nft list` per
//! check) and the new one (`NetlinkApplier`: element updates and generations over
//! netlink) in ONE invocation, side by side.
//!
//! Per mode:
//! 1. **Changes** (the reconciler driven directly, so compile and kernel time are
//!    split): `--changes` times a remote peer Pod changes IP (every local table's peer
//!    map changes) and, alternately, the policy's port changes (every table's rules
//!    change). Times: scan (read the changed file), compile (whole model + render), sync
//!    (kernel), and the total = every affected table enforced.
//! 2. **Idle**: `--verify-passes` verify passes (what the agent does every 5 s at idle);
//!    CPU time (own + reaped children) and child processes started per pass, and the
//!    idle CPU share at a 5 s interval.
//! 3. **CNI ADD**: the agent in-process with the `netpol-cni` socket; `--adds` Pods set
//!    up one after another through the plugin's own code. Each new Pod is a peer of
//!    every local Pod, so each ADD also updates `--local` tables.
//!
//! Then the agent's RSS (`VmRSS`, `VmHWM`) with the cluster view loaded.
//!
//! ```text
//! cargo run --release -p enforcer --example node_scale -- [--local 110] [--cluster 10000]
//!     [--changes 20] [--adds 20] [--verify-passes 5] [--mode both|old|new]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CniConfig, CompiledRulesets, Reconciler};
use enforcer::applier::{Applier, NetlinkApplier, NftApplier};
use enforcer::manifests::ManifestDir;
use enforcer::metrics::Metrics;
use enforcer::netns;
use netpol_cni::plugin::NetpolCni;
use rscni_plugin::cni::Cni;
use rscni_plugin::test_util::ArgsBuilder;

const NODE: &str = "n0";
const NAMESPACES: usize = 100;
/// Linux reports CPU times in USER_HZ ticks, 100 per second on every mainstream arch.
const TICKS: f64 = 100.0;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn mode_arg() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--mode")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "both".into())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// This process's CPU seconds: own user+system plus reaped children's.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14..=17 of stat (utime, stime, cutime, cstime) are 11..=14 after ") ".
    (11..=14).map(|i| f[i].parse::<f64>().unwrap()).sum::<f64>() / TICKS
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn remote_ip(i: usize) -> String {
    format!(
        "10.{}.{}.{}",
        100 + i / 62_500,
        (i / 250) % 250,
        i % 250 + 1
    )
}

/// The cluster view: `cluster - local` remote Pods on other nodes in NAMESPACES
/// namespaces (half `team: front`, Pods `app: web` or `app: db`), `local` Pods on this
/// node in `bench` (`app: bench`, netns `<prefix>-e<i>`), `adds` Pending Pods for CNI
/// ADDs (`app: new`). The policy: local Pods accept `app: new` from `bench` on TCP 80
/// and `app: web` from front namespaces on `port`.
fn write_cluster(dir: &Path, prefix: &str, local: usize, cluster: usize, adds: usize) {
    let mut yaml = String::new();
    for n in 0..NAMESPACES {
        let team = if n % 2 == 0 { "front" } else { "back" };
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: {team}}}}}\n---"
        );
    }
    yaml.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n");
    // One running `app: new` Pod elsewhere: the port-80 class exists before the ADDs
    // (the first peer of a port class adds its chain: a rule change).
    yaml.push_str("apiVersion: v1\nkind: Pod\nmetadata: {name: new-remote, namespace: bench, labels: {app: new}}\nspec: {nodeName: n1, containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.92.0.1}\n---\n");
    for i in 0..cluster.saturating_sub(local) {
        let app = if i % 3 == 0 { "db" } else { "web" };
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: r{i}, namespace: ns{}, labels: {{app: {app}}}}}\nspec: {{nodeName: n{}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {}}}\n---",
            i % NAMESPACES,
            1 + i % 90,
            remote_ip(i),
        );
    }
    for i in 0..local {
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: e{i}, namespace: bench, labels: {{app: bench}}, annotations: {{netpol.io/netns: {prefix}-e{i}}}}}\nspec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.90.{}.{}}}\n---",
            i / 250,
            i % 250 + 1
        );
    }
    for i in 0..adds {
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: n{i}, namespace: bench, labels: {{app: new}}}}\nspec: {{nodeName: {NODE}, containers: [{{name: c}}]}}\nstatus: {{phase: Pending}}\n---"
        );
    }
    std::fs::write(dir.join("cluster.yaml"), yaml).unwrap();
    std::fs::write(dir.join("policy.yaml"), policy(8080)).unwrap();
    std::fs::write(dir.join("peer.yaml"), peer(0)).unwrap();
}

fn policy(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bench, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: bench}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: new}}}}}}]\n    ports: [{{port: 80}}]\n  - from: [{{namespaceSelector: {{matchLabels: {{team: front}}}}, podSelector: {{matchLabels: {{app: web}}}}}}]\n    ports: [{{port: {port}}}]\n"
    )
}

/// The churned remote peer: a web Pod in a front namespace whose IP changes.
fn peer(version: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: churn, namespace: ns0, labels: {{app: web}}}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.250.{}.{}}}\n",
        version / 250,
        version % 250 + 1
    )
}

#[derive(Default)]
struct Results {
    initial_ms: f64,
    pod_change: Vec<(f64, f64, f64, f64)>,
    policy_change: Vec<(f64, f64, f64, f64)>,
    verify_cpu_ms: f64,
    verify_procs: f64,
    adds_ms: Vec<f64>,
    add_procs: f64,
    rss_kib: u64,
    hwm_kib: u64,
}

fn config(cni: Option<CniConfig>) -> AgentConfig {
    AgentConfig {
        node: Some(NODE.into()),
        drops: None,
        verify_interval: Duration::from_secs(3600),
        cni,
        ..AgentConfig::default()
    }
}

/// What every mode runs on.
struct Setup<'a> {
    manifests: &'a Path,
    dir: &'a Path,
    prefix: &'a str,
    local: usize,
    changes: usize,
    passes: usize,
    adds: usize,
}

fn run_mode(name: &str, applier: Arc<dyn Applier>, setup: &Setup<'_>) -> Results {
    let Setup {
        manifests,
        dir,
        prefix,
        local,
        changes,
        passes,
        adds,
    } = *setup;
    let mut r = Results::default();
    std::fs::write(manifests.join("policy.yaml"), policy(8080)).unwrap();
    std::fs::write(manifests.join("peer.yaml"), peer(0)).unwrap();
    let mut src = ManifestDir::new(manifests, None);
    let mut rec = Reconciler::new(
        &config(None),
        Arc::new(CompiledRulesets::default()),
        applier.clone(),
        Arc::new(Metrics::new()),
    );
    let t = Instant::now();
    rec.handle_scan(src.scan());
    rec.compile();
    let first = rec.sync(Instant::now());
    assert_eq!(first.applied.len(), local, "{name}: initial sync {first:?}");
    r.initial_ms = t.elapsed().as_secs_f64() * 1e3;
    rec.take_baselines();
    rec.verify();
    eprintln!(
        "{name}: initial sync of {local} tables in {:.0} ms",
        r.initial_ms
    );
    for i in 0..changes {
        let pod_change = i % 2 == 0;
        if pod_change {
            std::fs::write(manifests.join("peer.yaml"), peer(i + 1)).unwrap();
        } else {
            std::fs::write(manifests.join("policy.yaml"), policy(8081 + (i % 4) as u16)).unwrap();
        }
        let t0 = Instant::now();
        let scan = src.scan();
        assert!(!scan.is_empty());
        rec.handle_scan(scan);
        let t1 = Instant::now();
        assert!(rec.compile());
        let t2 = Instant::now();
        let rep = rec.sync(Instant::now());
        let t3 = Instant::now();
        assert_eq!(rep.applied.len(), local, "{name}: change {i}: {rep:?}");
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let row = (ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t0, t3));
        if pod_change {
            r.pod_change.push(row);
        } else {
            r.policy_change.push(row);
        }
        // What the agent does right after a pass (lists new tables off the apply path).
        rec.take_baselines();
    }
    assert!(rec.verify().is_empty(), "{name}: no drift");
    let (cpu0, procs0) = (cpu_seconds(), netns::processes_started());
    for _ in 0..passes {
        let drifted = rec.verify();
        assert!(drifted.is_empty());
    }
    r.verify_cpu_ms = (cpu_seconds() - cpu0) * 1e3 / passes as f64;
    r.verify_procs = (netns::processes_started() - procs0) as f64 / passes as f64;
    drop(rec);

    // CNI ADDs with the agent in-process.
    if adds > 0 {
        let socket = dir.join(format!("cni-{}.sock", name.len()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = config(Some(CniConfig {
            socket: socket.clone(),
            records: Some(dir.join(format!("records-{}", name.len()))),
            chain: None,
        }));
        let agent = rt
            .block_on(Agent::start(
                cfg,
                ManifestDir::new(manifests, None),
                Arc::new(CompiledRulesets::default()),
                applier,
            ))
            .unwrap();
        while !agent.ready() {
            std::thread::sleep(Duration::from_millis(20));
        }
        // Let the first pass finish its follow-up (baseline listings).
        std::thread::sleep(Duration::from_millis(500));
        let procs0 = netns::processes_started();
        for i in 0..adds {
            let ns = format!("{prefix}-n{i}");
            let path = netns::path(&ns).display().to_string();
            let conf = serde_json::json!({
                "cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
                "agentSocket": socket, "timeoutSeconds": 60,
                "prevResult": {"ips": [{"address": format!("10.91.{}.{}/16", i / 250, i % 250 + 1)}]}
            })
            .to_string();
            let args = ArgsBuilder::new()
                .container_id(&format!("sandbox-{}-{i}", name.len()))
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
            r.adds_ms.push(start.elapsed().as_secs_f64() * 1e3);
            assert!(out.is_ok(), "{name}: ADD {i}: {out:?}");
        }
        r.add_procs = (netns::processes_started() - procs0) as f64 / adds as f64;
        r.rss_kib = status_kib("VmRSS:");
        r.hwm_kib = status_kib("VmHWM:");
        rt.block_on(agent.stop()).unwrap();
    } else {
        r.rss_kib = status_kib("VmRSS:");
        r.hwm_kib = status_kib("VmHWM:");
    }
    r
}

fn summary(rows: &[(f64, f64, f64, f64)]) -> String {
    let col = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (scan, compile, sync, total) = (col(|r| r.0), col(|r| r.1), col(|r| r.2), col(|r| r.3));
    format!(
        "{:.0} / {:.0} | {:.0} / {:.0} | **{:.1} / {:.1}** | {:.0} / {:.0}",
        pct(&scan, 0.5),
        pct(&scan, 0.99),
        pct(&compile, 0.5),
        pct(&compile, 0.99),
        pct(&sync, 0.5),
        pct(&sync, 0.99),
        pct(&total, 0.5),
        pct(&total, 0.99),
    )
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if let Err(reason) = netns::kernel_support() {
        eprintln!("node_scale needs root and network namespaces: {reason}");
        std::process::exit(3);
    }
    let local = arg("--local", 110);
    let cluster = arg("--cluster", 10_000);
    let changes = arg("--changes", 20);
    let adds = arg("--adds", 20);
    let passes = arg("--verify-passes", 5).max(1);
    let mode = mode_arg();
    let prefix = format!("npscale{}", std::process::id() % 10_000);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    write_cluster(&manifests, &prefix, local, cluster, adds);
    let mut names = Vec::new();
    for i in 0..local {
        names.push(format!("{prefix}-e{i}"));
    }
    for i in 0..adds {
        names.push(format!("{prefix}-n{i}"));
    }
    for n in &names {
        netns::add(n).unwrap();
    }
    let mut results = Vec::new();
    let modes: Vec<(&str, Arc<dyn Applier>)> = match mode.as_str() {
        "old" => vec![("old (nft processes)", Arc::new(NftApplier))],
        "new" => vec![("new (netlink)", Arc::new(NetlinkApplier::new()))],
        _ => vec![
            ("old (nft processes)", Arc::new(NftApplier)),
            ("new (netlink)", Arc::new(NetlinkApplier::new())),
        ],
    };
    for (name, applier) in modes {
        // Each mode starts from empty namespaces.
        for n in &names {
            let _ = enforcer::nft::delete_table(n, "inet", "netpol");
        }
        let setup = Setup {
            manifests: &manifests,
            dir: dir.path(),
            prefix: &prefix,
            local,
            changes,
            passes,
            adds,
        };
        let r = run_mode(name, applier, &setup);
        results.push((name, r));
    }
    for n in &names {
        let _ = netns::delete(n);
    }
    println!(
        "node: {local} local Pods, cluster view {cluster} Pods; {changes} changes, {adds} CNI ADDs, {passes} verify passes; {} cores, load {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!();
    println!(
        "| mode | initial sync ms | Pod change: scan p50/p99 | compile p50/p99 | **kernel p50/p99** | total p50/p99 ms | policy change: scan | compile | **kernel** | total |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in &results {
        println!(
            "| {name} | {:.0} | {} | {} |",
            r.initial_ms,
            summary(&r.pod_change),
            summary(&r.policy_change)
        );
    }
    println!();
    println!(
        "| mode | CNI ADD p50 ms | p99 ms | max ms | processes per ADD | verify pass CPU ms | processes per verify pass | idle CPU at 5 s verify | RSS MiB | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (name, r) in &results {
        let mut a = r.adds_ms.clone();
        a.sort_by(f64::total_cmp);
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.3}% | {:.0} | {:.0} |",
            pct(&a, 0.5),
            pct(&a, 0.99),
            pct(&a, 1.0),
            r.add_procs,
            r.verify_cpu_ms,
            r.verify_procs,
            r.verify_cpu_ms / 5000.0 * 100.0,
            r.rss_kib as f64 / 1024.0,
            r.hwm_kib as f64 / 1024.0,
        );
    }
}
