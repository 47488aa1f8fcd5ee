//! Agent latency benchmark (root, real nft): one node with N Pods (one netns each, no
//! veths: only rule application is measured), the agent running as a child process
//! (this binary with `agent` as its first argument), M successive policy changes.
//!
//! Measures, per change, the time from the manifest write (rename) until `nft list
//! table inet netpol` in every affected Pod's netns shows the new ruleset; the agent
//! process's CPU time (its own plus its reaped `ip`/`nft` children, from
//! `/proc/PID/stat`) and RSS while idle (verify every 5 s) and during the change burst.
//!
//! ```text
//! cargo run --release -p enforcer --example agent_latency -- [--pods 100] [--changes 50]
//!     [--debounce-ms 200] [--idle-secs 10] [--no-drops]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CompiledRulesets};
use enforcer::applier::NftApplier;
use enforcer::manifests::{ManifestDir, WatchOptions};
use enforcer::netns;
use enforcer::reporter::DropsConfig;

const NAMESPACES: usize = 10;
/// Linux reports CPU times in USER_HZ ticks, 100 per second on every mainstream arch.
const TICKS: f64 = 100.0;

struct Opts {
    pods: usize,
    changes: usize,
    debounce: Duration,
    idle: Duration,
    no_drops: bool,
}

fn opts(args: &[String]) -> Opts {
    let mut o = Opts {
        pods: 100,
        changes: 50,
        debounce: Duration::from_millis(200),
        idle: Duration::from_secs(10),
        no_drops: false,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut num = || -> u64 { it.next().and_then(|v| v.parse().ok()).expect(a) };
        match a.as_str() {
            "--pods" => o.pods = num() as usize,
            "--changes" => o.changes = num() as usize,
            "--debounce-ms" => o.debounce = Duration::from_millis(num()),
            "--idle-secs" => o.idle = Duration::from_secs(num()),
            "--no-drops" => o.no_drops = true,
            other => panic!("unknown argument {other}"),
        }
    }
    o
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("agent") {
        run_agent(&args[1..]);
        return;
    }
    if let Err(why) = netns::kernel_support() {
        eprintln!("needs root and network namespaces: {why}");
        std::process::exit(2);
    }
    bench(&opts(&args));
}

/// The agent, as `netpol agent` runs it (JSON logs to stderr, SIGTERM stops).
fn run_agent(args: &[String]) {
    let dir = PathBuf::from(&args[0]);
    let listen: SocketAddr = args[1].parse().unwrap();
    let debounce = Duration::from_millis(args[2].parse().unwrap());
    let drops = args[3] == "drops";
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let config = AgentConfig {
            listen: Some(listen),
            watch: WatchOptions {
                debounce,
                ..WatchOptions::default()
            },
            drops: drops.then(DropsConfig::default),
            ..AgentConfig::default()
        };
        let agent = Agent::start(
            config,
            ManifestDir::new(dir, None),
            Arc::new(CompiledRulesets::default()),
            Arc::new(NftApplier),
        )
        .await
        .unwrap();
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
        term.recv().await;
        agent.stop().await.unwrap();
    });
}

fn netns_name(i: usize) -> String {
    format!("npb-{i}")
}

fn pods_yaml(n: usize) -> String {
    let mut s = String::new();
    for i in 0..NAMESPACES {
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}}}\n---\n"
        );
    }
    for i in 0..n {
        let role = if (i / NAMESPACES).is_multiple_of(2) {
            "server"
        } else {
            "client"
        };
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: n{ns}\n  labels: {{role: {role}}}\n  annotations: {{netpol.io/netns: {netns}}}\nspec: {{containers: [{{name: c}}]}}\nstatus:\n  phase: Running\n  podIP: 10.1.{hi}.{lo}\n  podIPs: [{{ip: 10.1.{hi}.{lo}}}, {{ip: 'fd01::{v6:x}'}}]\n---\n",
            ns = i % NAMESPACES,
            netns = netns_name(i),
            hi = i / 250,
            lo = i % 250 + 1,
            v6 = i + 1,
        );
    }
    s
}

/// Namespace `ns`'s policy: servers accept clients of every namespace on 80 and `extra`.
fn policy_yaml(ns: usize, extra: Option<u16>) -> String {
    let ports = match extra {
        Some(p) => format!("[{{port: 80}}, {{port: {p}}}]"),
        None => "[{port: 80}]".to_owned(),
    };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: n{ns}}}\nspec:\n  podSelector: {{matchLabels: {{role: server}}}}\n  ingress:\n  - from: [{{namespaceSelector: {{}}, podSelector: {{matchLabels: {{role: client}}}}}}]\n    ports: {ports}\n"
    )
}

fn write(dir: &Path, file: &str, text: &str) {
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

/// `nft list table inet netpol` in `ns`, with `nft` forked from a thread inside it.
fn listing(ns: &str) -> String {
    netns::run_in(ns, || {
        Command::new("nft")
            .args(["list", "table", "inet", "netpol"])
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    })
    .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.get(9..12)?.parse().ok()?;
    Some((status, resp.split_once("\r\n\r\n")?.1.to_owned()))
}

fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = get(addr, "/metrics").unwrap();
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// CPU seconds of the process and its reaped children.
fn cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = rest
        .split(' ')
        .skip(11)
        .take(4)
        .map(|v| v.parse().unwrap())
        .collect();
    f.iter().sum::<f64>() / TICKS
}

/// (VmRSS, VmHWM) in MiB.
fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib = |key: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(f64::NAN)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1e3)
}

struct Cleanup(usize, Option<Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.1.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for i in 0..self.0 {
            let _ = netns::delete(&netns_name(i));
        }
    }
}

fn bench(o: &Opts) {
    let mut cleanup = Cleanup(o.pods, None);
    for i in 0..o.pods {
        let name = netns_name(i);
        if netns::exists(&name) {
            netns::delete(&name).unwrap();
        }
        netns::add(&name).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(d, "pods.yaml", &pods_yaml(o.pods));
    for ns in 0..NAMESPACES {
        write(d, &format!("policy-n{ns}.yaml"), &policy_yaml(ns, None));
    }
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = std::fs::File::create(d.join("agent.log")).unwrap();
    let started = Instant::now();
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "agent",
            &d.display().to_string(),
            &addr.to_string(),
            &o.debounce.as_millis().to_string(),
            if o.no_drops { "no-drops" } else { "drops" },
        ])
        .stderr(log)
        .spawn()
        .unwrap();
    let pid = child.id();
    cleanup.1 = Some(child);
    while get(addr, "/readyz").is_none_or(|(s, _)| s != 200) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "agent not ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let first_sync = started.elapsed();
    let (rss_sync, _) = rss(pid);

    // Idle: verify every 5 s, nothing changes.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (cpu(pid), Instant::now());
    std::thread::sleep(o.idle);
    let idle_cpu = (cpu(pid) - c0) / t0.elapsed().as_secs_f64();
    let (rss_idle, _) = rss(pid);

    // Burst: one change at a time, each re-rendering one namespace's 5 servers.
    let servers: Vec<Vec<usize>> = (0..NAMESPACES)
        .map(|ns| {
            (0..o.pods)
                .filter(|i| i % NAMESPACES == ns && (i / NAMESPACES).is_multiple_of(2))
                .collect()
        })
        .collect();
    let applies0 = metric(addr, "netpol_applies_total");
    let (c0, t0) = (cpu(pid), Instant::now());
    let mut lat = Vec::new();
    let mut rss_burst: f64 = 0.0;
    let mut polls = 0usize;
    for k in 0..o.changes {
        let ns = k % NAMESPACES;
        let port = 20000 + k as u16;
        let marker = format!(" {port}");
        let start = Instant::now();
        write(
            d,
            &format!("policy-n{ns}.yaml"),
            &policy_yaml(ns, Some(port)),
        );
        let mut pending: Vec<usize> = servers[ns].clone();
        while !pending.is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "change {k} not enforced"
            );
            pending.retain(|&i| {
                polls += 1;
                !listing(&netns_name(i)).contains(&marker)
            });
        }
        lat.push(start.elapsed());
        rss_burst = rss_burst.max(rss(pid).0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let burst_secs = t0.elapsed().as_secs_f64();
    let burst_cpu = (cpu(pid) - c0) / burst_secs;
    let applies = metric(addr, "netpol_applies_total") - applies0;
    let apply_mean = metric(addr, "netpol_apply_duration_seconds_sum")
        / metric(addr, "netpol_apply_duration_seconds_count");
    let (_, hwm) = rss(pid);

    lat.sort();
    let affected = servers[0].len();
    println!(
        "agent_latency: {} Pods ({} netns, no veths), {} changes of {affected} Pods each, debounce {}, drops {}",
        o.pods,
        o.pods,
        o.changes,
        ms(o.debounce),
        if o.no_drops { "off" } else { "on" }
    );
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| first full sync ({} Pods, from process start) | {} |",
        o.pods,
        ms(first_sync)
    );
    println!(
        "| change -> enforced in kernel, p50 | {} |",
        ms(percentile(&lat, 0.5))
    );
    println!(
        "| change -> enforced in kernel, p99 | {} |",
        ms(percentile(&lat, 0.99))
    );
    println!(
        "| change -> enforced in kernel, max | {} |",
        ms(*lat.last().unwrap())
    );
    println!(
        "| applies during the burst (expected {}) | {applies} |",
        o.changes * affected
    );
    println!(
        "| mean apply (one `ip netns exec nft -f`) | {:.1} ms |",
        apply_mean * 1e3
    );
    println!(
        "| agent CPU idle ({}s, verify every 5 s) | {:.2} % of a core |",
        o.idle.as_secs(),
        idle_cpu * 100.0
    );
    println!(
        "| agent CPU during the burst ({burst_secs:.1} s) | {:.1} % of a core |",
        burst_cpu * 100.0
    );
    println!(
        "| RSS after first sync / idle / burst max / peak | {rss_sync:.1} / {rss_idle:.1} / {rss_burst:.1} / {hwm:.1} MiB |"
    );
    println!("| benchmark's own listings during the burst (not in agent CPU) | {polls} |");

    // Stop the agent (SIGTERM) and remove the namespaces.
    if let Some(mut c) = cleanup.1.take() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = c.wait();
    }
}
