//! Node-scale benchmark of the agent (root, real kernel; #12): a node with `--local`
//! Pods (one netns each, no veths) in a `--cluster`-Pod cluster view. One invocation
//! runs each mode in its own child process (so each RSS is its own) and prints them side
//! by side: `full` (every event renders every local table) and `incremental` (a table
//! is rendered again only when something its render reads changed), both with the
//! netlink applier (`NetlinkApplier`: element updates and generations); `--mode nft`
//! adds the old applier (`ip netns exec nft -f` per table, `nft list` per check).
//! `--mode replace` runs `incremental` twice: whole tables replaced with `nft -f` (the
//! netlink applier before #12's netlink table loads) and over netlink from the compiled
//! ruleset (`nfnl::NftSocket::replace_table`), side by side.
//!
//! Per mode:
//! 1. **Changes** (the reconciler driven directly, so compile and kernel time are
//!    split): `--changes` times, in turn, a remote peer Pod changes IP (every local
//!    table's peer map changes), an unrelated remote Pod changes IP (no local table
//!    changes), and the policy's port changes (every table's rules change). Times: scan
//!    (read the changed file), compile (model, graph, render), sync (kernel), and the
//!    total = every affected table enforced.
//! 2. **Idle**: `--verify-passes` verify passes (what the agent does every 5 s at idle);
//!    CPU time (own + reaped children) and child processes started per pass, and the
//!    idle CPU share at a 5 s interval.
//! 3. **CNI ADD**: the agent in-process with the `netpol-cni` socket; `--adds` Pods set
//!    up one after another through the plugin's own code. Each new Pod is a peer of
//!    every local Pod, so each ADD also updates `--local` tables. `--add-gap-ms N`
//!    waits N ms before each ADD (default 0: back to back, each ADD then also waits
//!    for the pass of the one before).
//!
//! Then the agent's RSS (`VmRSS`, `VmHWM`) with the cluster view loaded, and the live
//! bytes the program holds (counted by its global allocator: mimalloc, as the agent's;
//! the system allocator with `NODE_SCALE_SYSTEM_ALLOC=1`, for heaptrack), so RSS minus
//! live is the allocator's share (fragmentation, caches, metadata).
//!
//! ```text
//! cargo run --release -p enforcer --example node_scale -- [--local 110] [--cluster 10000]
//!     [--changes 30] [--adds 20] [--add-gap-ms 0] [--verify-passes 5] [--forget]
//!     [--mode both|all|replace|full|incremental|nft|incremental-nft-replace]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{arg, pct, word};
use enforcer::agent::{AgentConfig, CniConfig, CompiledRulesets, Reconciler};
use enforcer::applier::{Applier, NetlinkApplier, NftApplier};
use enforcer::manifests::ManifestDir;
use enforcer::metrics::Metrics;
use enforcer::netns;

/// The allocator the agent ships with (`cli/src/main.rs`, mimalloc), so the RSS
/// measured here is the agent's, fragmentation included; with `NODE_SCALE_SYSTEM_ALLOC`
/// set, the system allocator (which heaptrack and massif can see). Either way it counts
/// the live bytes the program holds, so RSS minus live bytes is the allocator's share.
#[global_allocator]
static ALLOC: Counting = Counting;

/// 0: not decided yet, 1: system, 2: mimalloc. Decided at the first allocation (one
/// thread: before `main`'s first line), so every block is freed by the allocator that
/// gave it.
static WHICH: AtomicU8 = AtomicU8::new(0);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

struct Counting;

impl Counting {
    // The one unsafe of the benchmark: a counting global allocator cannot be written
    // without it (the agent's own binary needs none). See: #12
    #[allow(unsafe_code)]
    fn system() -> bool {
        match WHICH.load(Ordering::Relaxed) {
            1 => true,
            2 => false,
            _ => {
                // SAFETY: getenv reads the environment without allocating; no thread
                // changes it (the benchmark never calls setenv).
                let set =
                    !unsafe { nix::libc::getenv(c"NODE_SCALE_SYSTEM_ALLOC".as_ptr()) }.is_null();
                WHICH.store(if set { 1 } else { 2 }, Ordering::Relaxed);
                set
            }
        }
    }

    fn grew(size: usize) {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to one allocator, the same for a block's whole life.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::grew(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe {
            if Self::system() {
                System.alloc(layout)
            } else {
                mimalloc::MiMalloc.alloc(layout)
            }
        }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from the same allocator with this layout.
        unsafe {
            if Self::system() {
                System.dealloc(ptr, layout)
            } else {
                mimalloc::MiMalloc.dealloc(ptr, layout)
            }
        }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::grew(layout.size());
        // SAFETY: forwarded with the caller's layout.
        unsafe {
            if Self::system() {
                System.alloc_zeroed(layout)
            } else {
                mimalloc::MiMalloc.alloc_zeroed(layout)
            }
        }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        Self::grew(new_size);
        // SAFETY: `ptr` came from the same allocator with this layout.
        unsafe {
            if Self::system() {
                System.realloc(ptr, layout, new_size)
            } else {
                mimalloc::MiMalloc.realloc(ptr, layout, new_size)
            }
        }
    }
}

fn live_mib() -> f64 {
    LIVE.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

const NODE: &str = "n0";
const NAMESPACES: usize = 100;
/// Linux reports CPU times in USER_HZ ticks, 100 per second on every mainstream arch.
const TICKS: f64 = 100.0;

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
    std::fs::write(dir.join("other.yaml"), other(0)).unwrap();
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

/// A remote Pod no local table refers to (a db Pod in a back namespace) whose IP
/// changes: the common case of churn elsewhere in the cluster.
fn other(version: usize) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: churn, namespace: ns1, labels: {{app: db}}}}\nspec: {{nodeName: n2, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.251.{}.{}}}\n",
        version / 250,
        version % 250 + 1
    )
}

#[derive(Default)]
struct Results {
    initial_ms: f64,
    pod_change: Vec<(f64, f64, f64, f64)>,
    other_change: Vec<(f64, f64, f64, f64)>,
    policy_change: Vec<(f64, f64, f64, f64)>,
    /// Local tables rendered per change (the rest kept their last render).
    rendered: Vec<usize>,
    /// Distinct peer lookups swept per change (shared by the rendered tables).
    sweeps: Vec<usize>,
    verify_cpu_ms: f64,
    verify_procs: f64,
    adds_ms: Vec<f64>,
    add_procs: f64,
    rss_kib: u64,
    hwm_kib: u64,
    /// Live bytes (MiB) after the initial sync and its baselines; at the end.
    live_sync: f64,
    live_end: f64,
    /// Peak live bytes (MiB) over the whole run.
    live_peak: f64,
}

fn config(cni: Option<CniConfig>, incremental: bool) -> AgentConfig {
    AgentConfig {
        node: Some(NODE.into()),
        drops: None,
        verify_interval: Duration::from_secs(3600),
        cni,
        incremental,
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
    /// `--forget`: the reconciler and its source are leaked, not dropped, after the
    /// verify passes (for a heap profiler's steady-state view; use with `--adds 0`).
    forget: bool,
}

fn run_mode(
    name: &str,
    applier: Arc<dyn Applier>,
    incremental: bool,
    setup: &Setup<'_>,
) -> Results {
    let Setup {
        manifests,
        dir,
        prefix,
        local,
        changes,
        passes,
        adds,
        forget,
    } = *setup;
    let mut r = Results::default();
    std::fs::write(manifests.join("policy.yaml"), policy(8080)).unwrap();
    std::fs::write(manifests.join("peer.yaml"), peer(0)).unwrap();
    std::fs::write(manifests.join("other.yaml"), other(0)).unwrap();
    let mut src = ManifestDir::new(manifests, None);
    let mut rec = Reconciler::new(
        &config(None, incremental),
        Arc::new(CompiledRulesets::default()),
        applier.clone(),
        Arc::new(Metrics::new()),
    );
    let t = Instant::now();
    rec.handle_scan(src.scan());
    eprintln!(
        "{name}: live after the scan and state {:.1} MiB",
        live_mib()
    );
    rec.compile();
    eprintln!("{name}: live after the first compile {:.1} MiB", live_mib());
    let first = rec.sync(Instant::now());
    assert_eq!(first.applied.len(), local, "{name}: initial sync {first:?}");
    r.initial_ms = t.elapsed().as_secs_f64() * 1e3;
    rec.take_baselines();
    rec.verify();
    r.live_sync = live_mib();
    eprintln!(
        "{name}: live after the initial sync and baselines {:.1} MiB (RSS {:.0} MiB)",
        r.live_sync,
        status_kib("VmRSS:") as f64 / 1024.0
    );
    eprintln!(
        "{name}: initial sync of {local} tables in {:.0} ms",
        r.initial_ms
    );
    for i in 0..changes {
        let kind = i % 3;
        match kind {
            0 => std::fs::write(manifests.join("peer.yaml"), peer(i + 1)).unwrap(),
            1 => std::fs::write(manifests.join("other.yaml"), other(i + 1)).unwrap(),
            _ => std::fs::write(manifests.join("policy.yaml"), policy(8081 + (i % 4) as u16))
                .unwrap(),
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
        let affected = if kind == 1 { 0 } else { local };
        assert_eq!(rep.applied.len(), affected, "{name}: change {i}: {rep:?}");
        r.rendered.push(rec.last_compile().rendered);
        r.sweeps.push(rec.last_compile().sweeps);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        let row = (ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t0, t3));
        match kind {
            0 => r.pod_change.push(row),
            1 => r.other_change.push(row),
            _ => r.policy_change.push(row),
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
    if forget {
        // What a heap profiler reports as leaked at exit is then exactly what the
        // reconciler and the manifest source hold in steady state.
        std::mem::forget(rec);
        std::mem::forget(src);
    } else {
        // The agent below reads the directory with its own source: this one's objects
        // must not count in its RSS.
        drop(rec);
        drop(src);
    }

    // CNI ADDs with the agent in-process.
    if adds > 0 {
        let socket = dir.join("cni.sock");
        let rt = common::runtime();
        let cfg = config(
            Some(CniConfig {
                socket: socket.clone(),
                records: Some(dir.join("records")),
                chain: None,
            }),
            incremental,
        );
        let agent = common::start_agent(&rt, cfg, manifests, applier);
        // Let the first pass finish its follow-up (baseline listings).
        std::thread::sleep(Duration::from_millis(500));
        let procs0 = netns::processes_started();
        let gap = Duration::from_millis(arg("--add-gap-ms", 0) as u64);
        for i in 0..adds {
            // With a gap, each ADD finds the agent idle (its previous pass done).
            std::thread::sleep(gap);
            let ns = format!("{prefix}-n{i}");
            let took = common::cni_add(&socket, &ns, "sandbox", i);
            r.adds_ms.push(took.as_secs_f64() * 1e3);
        }
        r.add_procs = (netns::processes_started() - procs0) as f64 / adds as f64;
        r.rss_kib = status_kib("VmRSS:");
        r.hwm_kib = status_kib("VmHWM:");
        r.live_end = live_mib();
        rt.block_on(agent.stop()).unwrap();
    } else {
        r.rss_kib = status_kib("VmRSS:");
        r.hwm_kib = status_kib("VmHWM:");
        r.live_end = live_mib();
    }
    r.live_peak = PEAK.load(Ordering::Relaxed) as f64 / (1024.0 * 1024.0);
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

fn summary_short(rows: &[(f64, f64, f64, f64)]) -> String {
    let col = |f: fn(&(f64, f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = rows.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (compile, total) = (col(|r| r.1), col(|r| r.3));
    format!(
        "{:.0} / {:.0} | {:.0} / {:.0}",
        pct(&compile, 0.5),
        pct(&compile, 0.99),
        pct(&total, 0.5),
        pct(&total, 0.99),
    )
}

/// The changes table's row of one mode.
fn changes_row(name: &str, r: &Results) -> String {
    let rendered = r.rendered.iter().sum::<usize>() as f64 / r.rendered.len().max(1) as f64;
    let sweeps = r.sweeps.iter().sum::<usize>() as f64 / r.sweeps.len().max(1) as f64;
    format!(
        "| {name} | {:.0} | {} | {} | {} | {rendered:.0} | {sweeps:.1} |",
        r.initial_ms,
        summary(&r.pod_change),
        summary_short(&r.other_change),
        summary(&r.policy_change)
    )
}

/// The CNI/idle/memory table's row of one mode.
fn adds_row(name: &str, r: &Results) -> String {
    let mut a = r.adds_ms.clone();
    a.sort_by(f64::total_cmp);
    format!(
        "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.3}% | {:.0} | {:.0} | {:.0} / {:.0} / {:.0} |",
        pct(&a, 0.5),
        pct(&a, 0.99),
        pct(&a, 1.0),
        r.add_procs,
        r.verify_cpu_ms,
        r.verify_procs,
        r.verify_cpu_ms / 5000.0 * 100.0,
        r.rss_kib as f64 / 1024.0,
        r.hwm_kib as f64 / 1024.0,
        r.live_sync,
        r.live_end,
        r.live_peak,
    )
}

/// [`NetlinkApplier`] loading whole tables with `nft -f` (the text) instead of over
/// netlink (the compiled ruleset): element updates and generations stay netlink.
struct NftReplace(NetlinkApplier);

impl Applier for NftReplace {
    fn apply(
        &self,
        pod: &enforcer::state::PodKey,
        netns: &str,
        ruleset: &str,
    ) -> Result<(), enforcer::applier::ApplyError> {
        self.0.apply(pod, netns, ruleset)
    }
    fn remove(
        &self,
        pod: &enforcer::state::PodKey,
        netns: &str,
    ) -> Result<(), enforcer::applier::ApplyError> {
        self.0.remove(pod, netns)
    }
    fn list(
        &self,
        pod: &enforcer::state::PodKey,
        netns: &str,
    ) -> Result<Option<String>, enforcer::applier::ApplyError> {
        self.0.list(pod, netns)
    }
    fn apply_node(&self, ruleset: &str) -> Result<(), enforcer::applier::ApplyError> {
        self.0.apply_node(ruleset)
    }
    fn list_node(&self) -> Result<Option<String>, enforcer::applier::ApplyError> {
        self.0.list_node()
    }
    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, enforcer::applier::ApplyError> {
        self.0.node_addresses()
    }
    fn generation(
        &self,
        pod: &enforcer::state::PodKey,
        netns: &str,
    ) -> Result<Option<u32>, enforcer::applier::ApplyError> {
        self.0.generation(pod, netns)
    }
    fn update(
        &self,
        pod: &enforcer::state::PodKey,
        netns: &str,
        ops: &[enforcer::nfnl::ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, enforcer::applier::ApplyError> {
        self.0.update(pod, netns, ops, generation, ruleset)
    }
    fn update_reads_text(&self) -> bool {
        self.0.update_reads_text()
    }
    fn node_generation(&self) -> Result<Option<u32>, enforcer::applier::ApplyError> {
        self.0.node_generation()
    }
    fn update_node(
        &self,
        ops: &[enforcer::nfnl::ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, enforcer::applier::ApplyError> {
        self.0.update_node(ops, generation, ruleset)
    }
}

/// Runs one mode in this process; its rows, prefixed `T1 ` and `T2 `, go to stdout.
fn run_one(mode: &str) {
    let local = arg("--local", 110);
    let cluster = arg("--cluster", 10_000);
    let changes = arg("--changes", 30);
    let adds = arg("--adds", 20);
    let passes = arg("--verify-passes", 5).max(1);
    let (name, applier, incremental): (&str, Arc<dyn Applier>, bool) = match mode {
        "nft" => ("full, nft processes", Arc::new(NftApplier), false),
        "full" => ("full compile", Arc::new(NetlinkApplier::new()), false),
        "incremental" => ("**incremental**", Arc::new(NetlinkApplier::new()), true),
        "incremental-nft-replace" => (
            "incremental, replace with nft -f",
            Arc::new(NftReplace(NetlinkApplier::new())),
            true,
        ),
        other => panic!("unknown mode {other}"),
    };
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
    let setup = Setup {
        manifests: &manifests,
        dir: dir.path(),
        prefix: &prefix,
        local,
        changes,
        passes,
        adds,
        forget: std::env::args().any(|a| a == "--forget"),
    };
    let r = run_mode(name, applier, incremental, &setup);
    for n in &names {
        let _ = netns::delete(n);
    }
    println!("T1 {}", changes_row(name, &r));
    println!("T2 {}", adds_row(name, &r));
}

fn main() {
    common::init_tracing();
    if let Err(reason) = netns::kernel_support() {
        eprintln!("node_scale needs root and network namespaces: {reason}");
        std::process::exit(3);
    }
    let mode = word("--mode", "both");
    let modes: Vec<&str> = match mode.as_str() {
        "both" => vec!["full", "incremental"],
        "all" => vec!["nft", "full", "incremental"],
        "replace" => vec!["incremental-nft-replace", "incremental"],
        one => {
            // A child (or a single mode): rows only.
            run_one(one);
            return;
        }
    };
    // Each mode in its own process: its RSS is its own.
    let (mut t1, mut t2) = (Vec::new(), Vec::new());
    let args: Vec<String> = std::env::args().skip(1).collect();
    for m in modes {
        let mut child_args: Vec<String> = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if a == "--mode" {
                it.next();
            } else {
                child_args.push(a.clone());
            }
        }
        child_args.extend(["--mode".to_owned(), m.to_owned()]);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(&child_args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "mode {m} failed");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(row) = line.strip_prefix("T1 ") {
                t1.push(row.to_owned());
            } else if let Some(row) = line.strip_prefix("T2 ") {
                t2.push(row.to_owned());
            }
        }
    }
    println!(
        "node: {} local Pods, cluster view {} Pods; {} changes, {} CNI ADDs, {} verify passes; {} cores, load {}",
        arg("--local", 110),
        arg("--cluster", 10_000),
        arg("--changes", 30),
        arg("--adds", 20),
        arg("--verify-passes", 5).max(1),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim()
    );
    println!();
    println!(
        "| mode | initial sync ms | peer Pod change: scan p50/p99 | compile p50/p99 | **kernel p50/p99** | total p50/p99 ms | unrelated Pod change: compile | total | policy change: scan | compile | **kernel** | total | tables rendered per change | peer sweeps per change |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &t1 {
        println!("{row}");
    }
    println!();
    println!(
        "| mode | CNI ADD p50 ms | p99 ms | max ms | processes per ADD | verify pass CPU ms | processes per verify pass | idle CPU at 5 s verify | RSS MiB | peak RSS MiB | live MiB: after sync / at RSS / peak |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &t2 {
        println!("{row}");
    }
}
