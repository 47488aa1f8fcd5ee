//! `netpol diff` of two versions of a synthetic cluster (`netpol gen`'s generator): the
//! time of each step, in one run, as a table. The two versions are compiled one after
//! the other and then on two threads at once (what `netpol diff` does), then diffed with
//! every change rendered as `netpol diff` prints it, to a counting sink.
//!
//! ```text
//! cargo run --release -p policy-compiler --example diff_bench -- 10000
//! ```
//!
//! Versions of the new side: `same` (identical text), `one-policy` (one NetworkPolicy
//! added: a new allow rule for one app in one namespace, a typical pull request) and
//! `+10%-policies` (`--policies` 1.1 times as many: about a tenth of the cluster's
//! isolation changes).

use std::time::Instant;

use policy_compiler::connectivity::{Connectivity, EndpointFilter, diff, ports_text};
use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{AllowGraph, Model, SourceText, load};

fn compile(name: &str, text: &str) -> (Model, AllowGraph) {
    let (inputs, diags) = load(&[SourceText { name, text }]);
    assert!(!policy_compiler::diagnostic::has_errors(&diags));
    let (model, diags) = Model::build(&inputs);
    assert!(!policy_compiler::diagnostic::has_errors(&diags));
    let graph = AllowGraph::build(&model);
    (model, graph)
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64()
}

/// This thread's CPU time so far, in seconds (`/proc/thread-self/schedstat`), so the
/// table also holds what an idle machine would take on a shared one.
fn cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e9)
}

/// The process's CPU time so far (all threads: `diff` computes the two versions' rows
/// on two threads), in seconds, from `/proc/self/stat` (clock ticks of 10 ms).
fn process_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(") ")?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// `compile` on this thread, with the CPU time it took.
fn compile_cpu(name: &str, text: &str) -> ((Model, AllowGraph), f64) {
    let c = cpu();
    let r = compile(name, text);
    (r, cpu() - c)
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000]
    } else {
        sizes
    };
    println!(
        "| Pods | new version | classes | ranges | changes | output | compile both, serial | compile both, 2 threads | diff + render | **total (2 threads)** | on-CPU: compile old / new | on-CPU: diff + render, main thread / all threads | **on-CPU total, 2 threads** (main thread / all threads) |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for pods in sizes {
        let base = SynthParams::scaled(pods, 1);
        let old_text = generate(&base);
        // A namespace and an app of the cluster, for the one added policy.
        let ns = old_text
            .lines()
            .skip_while(|l| !l.starts_with("kind: Pod"))
            .find_map(|l| l.trim().strip_prefix("namespace: "))
            .unwrap_or("default")
            .to_string();
        let one = format!(
            "{old_text}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bench-extra, namespace: {ns}}}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from: [{{namespaceSelector: {{}}}}]\n    ports: [{{port: 8443}}]\n"
        );
        let more = generate(&SynthParams {
            policies: base.policies + base.policies / 10,
            ..base
        });
        for (label, new_text) in [
            ("same", old_text.clone()),
            ("one-policy", one),
            ("+10%-policies", more),
        ] {
            let t = Instant::now();
            let old = compile("old.yaml", &old_text);
            let new = compile("new.yaml", &new_text);
            let serial = secs(t);
            drop((old, new));
            let t = Instant::now();
            let ((old, old_cpu), (new, new_cpu)) = std::thread::scope(|s| {
                let o = s.spawn(|| compile_cpu("old.yaml", &old_text));
                let n = compile_cpu("new.yaml", &new_text);
                (o.join().expect("compile thread"), n)
            });
            let parallel = secs(t);
            let t = Instant::now();
            let c0 = cpu();
            let p0 = process_cpu();
            let (oc, nc) = Connectivity::pair((&old.0, &old.1), (&new.0, &new.1));
            let (mut changes, mut bytes) = (0u64, 0u64);
            diff(&oc, &nc, &EndpointFilter::default(), |c| {
                changes += 1;
                let side = |p: &Option<policy_compiler::PortSet>| {
                    p.as_ref()
                        .map_or_else(|| "No Connections".to_string(), ports_text)
                };
                let line = format!(
                    "diff-type: {}, source: {}, destination: {}, old: {}, new: {}\n",
                    c.diff_type(),
                    c.src,
                    c.dst,
                    side(&c.old),
                    side(&c.new)
                );
                bytes += line.len() as u64;
            });
            let d = secs(t);
            let d_cpu = cpu() - c0;
            let d_all = process_cpu() - p0;
            println!(
                "| {pods} | {label} | {} | {} | {changes} | {:.1} MB | {serial:.2} s | {parallel:.2} s | {d:.2} s | **{:.2} s** | {old_cpu:.2} s / {new_cpu:.2} s | {d_cpu:.2} s / {d_all:.2} s | **{:.2} s / {:.2} s** |",
                oc.class_count(),
                oc.range_count(),
                bytes as f64 / 1e6,
                parallel + d,
                old_cpu.max(new_cpu) + d_cpu,
                old_cpu.max(new_cpu) + d_all
            );
        }
    }
}
