//! Packet-path benchmark (not a test): new-connection rate and connect latency between
//! two lab Pods with
//!
//! - (a) no ruleset,
//! - (b) netpol's ruleset for a policy allowing 10,000 peer CIDRs and 1,000 ports,
//! - (c) the same policy as a linear chain: one rule per peer
//!   (`ip saddr X tcp dport @ports accept`, the 1,000 ports in one shared named set; a
//!   literal anonymous `{ports}` per rule would be 10M set elements).
//!
//! The client's address is the *last* peer, so the linear chain walks all rules.
//! Needs root. `cargo run --release -p enforcer --example packet_path [CONNECTIONS]`.
// See: #3

#![allow(clippy::unwrap_used, clippy::expect_used)] // example binary

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use enforcer::{netns, nft};
use netpol_lab::topology::{HostSpec, Topology};
use policy_compiler::ruleset::{RulesetOptions, compile_pod};
use policy_compiler::{AllowGraph, Model, SourceText, load};

const PEERS: usize = 10_000;
const PORTS: usize = 1_000;
const CLIENT: &str = "10.0.0.1";
const SERVER: &str = "10.0.0.2";

fn ports() -> Vec<u16> {
    (0..PORTS).map(|i| 20_000 + 2 * i as u16).collect()
}

/// Peer CIDRs: non-adjacent /24s (so nothing merges), then the client's /32 last.
fn peers() -> Vec<String> {
    let mut v: Vec<String> = (0..PEERS - 1)
        .map(|i| {
            let k = 2 * i;
            format!("11.{}.{}.0/24", k / 256, k % 256)
        })
        .collect();
    v.push(format!("{CLIENT}/32"));
    v
}

fn netpol_ruleset() -> (String, String) {
    let mut y = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: bench, labels: {{app: server}}}}\n\
spec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {SERVER}}}\n---\n\
apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: wide, namespace: bench}}\n\
spec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  ingress:\n  - ports:\n"
    );
    for p in ports() {
        let _ = writeln!(y, "    - port: {p}");
    }
    y.push_str("    from:\n");
    for c in peers() {
        let _ = writeln!(y, "    - ipBlock: {{cidr: {c}}}");
    }
    let (inputs, diags) = load(&[SourceText {
        name: "bench.yaml",
        text: &y,
    }]);
    assert!(diags.is_empty());
    let (model, diags) = Model::build(&inputs);
    assert!(!policy_compiler::diagnostic::has_errors(&diags));
    let graph = AllowGraph::build(&model);
    let id = model.endpoint_by_key("bench/server").unwrap();
    let start = Instant::now();
    let rs = compile_pod(&model, &graph, id, &RulesetOptions::default());
    let text = rs.to_nft();
    let took = start.elapsed();
    (text, format!("{} (compiled in {took:.1?})", rs.stats()))
}

fn linear_ruleset() -> (String, String) {
    let mut s = String::from(
        "add table inet netpol\ndelete table inet netpol\ntable inet netpol {\n\tset ports {\n\t\ttype inet_service\n\t\telements = { ",
    );
    let ps: Vec<String> = ports().iter().map(ToString::to_string).collect();
    s.push_str(&ps.join(", "));
    s.push_str(" }\n\t}\n\tchain ingress {\n\t\ttype filter hook input priority filter; policy drop;\n\t\tct state established,related accept\n\t\tct state invalid drop\n\t\tiif lo accept\n");
    for c in peers() {
        let _ = writeln!(s, "\t\tip saddr {c} tcp dport @ports accept");
    }
    s.push_str("\t}\n}\n");
    (s, format!("{} rules, 1 set ({PORTS} elements)", PEERS + 3))
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
    max: Duration,
    rate: f64,
}

/// Closes with RST (SO_LINGER 0): no TIME_WAIT, so thousands of connections never
/// collide with a previous connection's state on a reused client port.
fn close_hard(s: TcpStream) {
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Linger, &linger)
        .expect("SO_LINGER");
    drop(s);
}

fn measure(client_ns: &str, target: SocketAddr, n: usize) -> Stats {
    netns::run_in(client_ns, move || {
        for _ in 0..200 {
            close_hard(
                TcpStream::connect_timeout(&target, Duration::from_secs(2))
                    .expect("warm-up connect"),
            );
        }
        let mut lat = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            let s = TcpStream::connect_timeout(&target, Duration::from_secs(2)).expect("connect");
            close_hard(s);
            lat.push(t.elapsed());
        }
        let total = start.elapsed();
        lat.sort_unstable();
        Stats {
            p50: lat[n / 2],
            p99: lat[n * 99 / 100],
            mean: total / n as u32,
            max: lat[n - 1],
            rate: n as f64 / total.as_secs_f64(),
        }
    })
    .unwrap()
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(5_000, |a| a.parse().expect("CONNECTIONS"));
    if let Err(reason) = netns::kernel_support() {
        eprintln!("packet_path needs root and network namespaces: {reason}");
        std::process::exit(1);
    }
    let prefix = format!("npbench{}", std::process::id() % 100_000);
    let _ = Topology::cleanup_stale(&prefix);
    let lab = Topology::build(
        &prefix,
        &[
            HostSpec::new(
                "client",
                Some(format!("{CLIENT}/24").parse().unwrap()),
                None,
            ),
            HostSpec::new(
                "server",
                Some(format!("{SERVER}/24").parse().unwrap()),
                None,
            ),
        ],
    )
    .unwrap();
    let client = lab.host("client").unwrap().netns.clone();
    let server = lab.host("server").unwrap().netns.clone();
    let port = *ports().last().unwrap();
    let ip: IpAddr = SERVER.parse().unwrap();
    let target = SocketAddr::new(ip, port);
    let stop = Arc::new(AtomicBool::new(false));
    let listener = netns::run_in(&server, move || TcpListener::bind(target).unwrap()).unwrap();
    let stop2 = Arc::clone(&stop);
    let acceptor = std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
            if stop2.load(Ordering::Relaxed) {
                break;
            }
        }
    });

    let configs: Vec<(&str, Option<(String, String)>)> = vec![
        ("(a) no ruleset", None),
        ("(b) netpol maps/sets", Some(netpol_ruleset())),
        ("(c) linear rule per peer", Some(linear_ruleset())),
    ];
    let mut rows = Vec::new();
    for (name, rs) in configs {
        nft::flush(&server).unwrap();
        let size = match &rs {
            Some((text, size)) => {
                let t = Instant::now();
                nft::apply(&server, text).unwrap();
                format!("{size}; loaded in {:.1?}", t.elapsed())
            }
            None => "-".to_owned(),
        };
        let st = measure(&client, target, n);
        rows.push((name, size, st));
    }
    stop.store(true, Ordering::Relaxed);
    nft::flush(&server).unwrap();
    netns::run_in(&client, move || TcpStream::connect(target).map(drop))
        .unwrap()
        .unwrap();
    acceptor.join().unwrap();

    println!("{n} sequential TCP connect+close per configuration, client is the last peer\n");
    println!(
        "| configuration | p50 connect | p99 connect | mean | max | conn/s | p50 vs (a) | ruleset |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let base = rows[0].2.p50.as_secs_f64();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    for (name, size, st) in &rows {
        println!(
            "| {name} | {:.1} µs | {:.1} µs | {:.1} µs | {:.0} µs | {:.0} | {:.2}x | {size} |",
            us(st.p50),
            us(st.p99),
            us(st.mean),
            us(st.max),
            st.rate,
            st.p50.as_secs_f64() / base
        );
    }
    lab.teardown().unwrap();
}
