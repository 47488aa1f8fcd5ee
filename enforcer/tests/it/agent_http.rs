//! The agent's HTTP side cannot starve enforcement: a flood of idle, half-sent
//! connections to /metrics (no kernel needed: the recording applier). See: #11

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CompiledRulesets};
use enforcer::applier::RecordingApplier;
use enforcer::manifests::{ManifestDir, WatchOptions};
use enforcer::state::PodKey;

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}, annotations: {netpol.io/netns: nph-a}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.1}\n";
const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec: {podSelector: {}}\n";
const ALLOW: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: x}\nspec:\n  podSelector: {}\n  ingress: [{}]\n";

fn get(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    // A connection closed over the cap reads as empty (or reset): the caller retries.
    let _ = s.read_to_string(&mut out);
    out
}

// See: #11
#[test]
fn metrics_flood_does_not_delay_enforcement() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pod.yaml"), POD).unwrap();
    std::fs::write(dir.path().join("pol.yaml"), DENY).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let applier = Arc::new(RecordingApplier::new());
    let config = AgentConfig {
        verify_interval: Duration::from_millis(300),
        watch: WatchOptions {
            debounce: Duration::from_millis(50),
            rescan: Duration::from_secs(2),
        },
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..AgentConfig::default()
    };
    let agent = rt
        .block_on(Agent::start(
            config,
            ManifestDir::new(dir.path(), None),
            Arc::new(CompiledRulesets::default()),
            applier.clone(),
        ))
        .unwrap();
    let addr = agent.local_addr().unwrap();
    let start = Instant::now();
    while !agent.ready() {
        assert!(start.elapsed() < Duration::from_secs(10), "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    let a = PodKey::new("x", "a");
    assert_eq!(applier.applies(&a), 1);

    // Four times the connection cap, each stuck in its request head.
    let flood: Vec<std::net::TcpStream> = (0..256)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            s
        })
        .collect();
    // A policy change reaches the kernel during the flood, well within the
    // header timeout (5 s) that would free the HTTP slots.
    std::fs::write(dir.path().join("pol.yaml"), ALLOW).unwrap();
    let changed = Instant::now();
    while applier.applies(&a) < 2 {
        assert!(
            changed.elapsed() < Duration::from_secs(4),
            "policy change waited for the HTTP side"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // After the flood, the endpoints answer again.
    drop(flood);
    let ended = Instant::now();
    loop {
        let resp = get(addr, "/healthz");
        if resp.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(ended.elapsed() < Duration::from_secs(10), "{resp}");
        std::thread::sleep(Duration::from_millis(50));
    }
    rt.block_on(agent.stop()).unwrap();
}
