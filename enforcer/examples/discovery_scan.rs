//! How long `enforcer::discovery::discover` takes (root): N named namespaces, each with
//! one IPv4 and one IPv6 address on a veth pair that stays inside it, down (no traffic),
//! every address wanted; the median of R scans per N, with and without `proc_scan`.
//!
//! ```text
//! cargo run --release -p enforcer --example discovery_scan -- [--sizes 10,50,200] [--runs 5]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use enforcer::discovery::{DiscoveryOptions, discover};
use enforcer::netns;
use enforcer::state::PodKey;

/// Removes the namespaces when dropped (also on a panic).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = netns::delete(name);
        }
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut sizes = vec![10usize, 50, 200];
    let mut runs = 5usize;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--sizes" => {
                sizes = it
                    .next()
                    .expect("--sizes N,N")
                    .split(',')
                    .map(|n| n.parse().expect("a number"))
                    .collect();
            }
            "--runs" => runs = it.next().and_then(|r| r.parse().ok()).expect("--runs N"),
            other => panic!("unknown argument {other}"),
        }
    }
    if let Err(reason) = netns::kernel_support() {
        eprintln!("discovery_scan: {reason}");
        std::process::exit(3);
    }
    let before = netns::list().unwrap().len();
    let processes = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.parse::<u32>().is_ok())
            })
        })
        .count();
    println!(
        "other named netns on this host: {before}; processes (for proc_scan): {processes}; \
         {runs} runs each"
    );
    println!("| netns | setup | discover (median) | per netns | with proc_scan (median) |");
    println!("|---:|---:|---:|---:|---:|");
    let prefix = format!("npdscan{}", std::process::id());
    for n in sizes {
        let setup = Instant::now();
        let mut made = Namespaces(Vec::new());
        let mut wanted = BTreeMap::new();
        for i in 0..n {
            let name = format!("{prefix}-{i}");
            netns::add(&name).unwrap();
            made.0.push(name.clone());
            let (hi, lo) = (i / 250, i % 250 + 2);
            let v4 = format!("10.252.{hi}.{lo}");
            let v6 = format!("fd00:252::{hi}:{lo}");
            netns::ip_batch(
                &name,
                "addresses",
                &format!(
                    "link add d0 type veth peer name d1\naddr add {v4}/24 dev d0\n\
                     addr add {v6}/64 dev d0 nodad\n"
                ),
            )
            .unwrap();
            let pod = PodKey::new("bench", format!("pod-{i}"));
            wanted.insert(v4.parse::<IpAddr>().unwrap(), pod.clone());
            wanted.insert(v6.parse::<IpAddr>().unwrap(), pod);
        }
        let setup = setup.elapsed();
        let time = |options: &DiscoveryOptions| {
            let times: Vec<Duration> = (0..runs)
                .map(|_| {
                    let start = Instant::now();
                    let d = discover(options, &wanted).unwrap();
                    let elapsed = start.elapsed();
                    assert_eq!(d.found.len(), n, "conflicts: {:?}", d.conflicts);
                    elapsed
                })
                .collect();
            median(times)
        };
        let plain = time(&DiscoveryOptions::default());
        let with_proc = time(&DiscoveryOptions {
            proc_scan: true,
            ..DiscoveryOptions::default()
        });
        println!(
            "| {n} | {} | {} | {:.0} µs | {} |",
            ms(setup),
            ms(plain),
            plain.as_secs_f64() * 1e6 / n as f64,
            ms(with_proc)
        );
        drop(made);
    }
}
