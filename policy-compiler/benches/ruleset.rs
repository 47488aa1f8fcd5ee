//! Ruleset size and compile time per Pod as peers and policies grow.
//!
//! `cargo bench -p policy-compiler --bench ruleset`. Prints a size table (rules, set and
//! map elements) once, then criterion timings of `compile_pod` and `to_nft`.
// See: #3

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark binary

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use policy_compiler::ruleset::{RulesetOptions, compile_pod};
use policy_compiler::{AllowGraph, Model, SourceText, load};

const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

fn target_pod(s: &mut String) {
    s.push_str(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: target, namespace: app, labels: {role: target}}\n\
spec: {containers: [{name: c, ports: [{name: web, containerPort: 8080}]}]}\n\
status: {phase: Running, podIP: 10.0.0.1, podIPs: [{ip: 10.0.0.1}, {ip: \"fd00::1\"}]}\n---\n",
    );
}

/// One policy with `n` ipBlock peers (distinct /32s and /24s) and 3 ports.
fn ipblocks(n: usize) -> String {
    let mut s = String::new();
    target_pod(&mut s);
    s.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: app}\n");
    s.push_str("spec:\n  podSelector: {matchLabels: {role: target}}\n  ingress:\n");
    s.push_str("  - ports: [{port: 80}, {port: 443}, {port: 53, protocol: UDP}]\n    from:\n");
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        if i % 2 == 0 {
            let _ = writeln!(
                s,
                "    - ipBlock: {{cidr: 172.{}.{a}.{b}/32}}",
                16 + a / 250
            );
        } else {
            let _ = writeln!(s, "    - ipBlock: {{cidr: 11.{a}.{b}.0/24}}");
        }
    }
    s
}

/// `n` peer Pods (dual-stack) and `n / 10` policies, each allowing a tenth of them on a
/// different port, plus one egress policy with a named port.
fn pods_and_policies(n: usize) -> String {
    let mut s = String::new();
    target_pod(&mut s);
    for i in 0..n {
        let (a, b) = (i / 250, i % 250 + 1);
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: app, labels: {{group: g{}}}}}\n\
spec: {{containers: [{{name: c, ports: [{{name: web, containerPort: {}}}]}}]}}\n\
status: {{phase: Running, podIP: 10.1.{a}.{b}, podIPs: [{{ip: 10.1.{a}.{b}}}, {{ip: \"fd00::1:{a:x}:{b:x}\"}}]}}\n---\n",
            i % (n / 10).max(1),
            8000 + i % 7
        );
    }
    for g in 0..(n / 10).max(1) {
        let _ = writeln!(
            s,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: g{g}, namespace: app}}"
        );
        s.push_str("spec:\n  podSelector: {matchLabels: {role: target}}\n  policyTypes: [Ingress, Egress]\n");
        let _ = writeln!(
            s,
            "  ingress:\n  - from: [{{podSelector: {{matchLabels: {{group: g{g}}}}}}}]"
        );
        let _ = writeln!(s, "    ports: [{{port: {}}}]", 1000 + g);
        let _ = writeln!(
            s,
            "  egress:\n  - to: [{{podSelector: {{matchLabels: {{group: g{g}}}}}}}]"
        );
        s.push_str("    ports: [{port: web}]\n---\n");
    }
    s
}

fn build(text: &str) -> (Model, AllowGraph) {
    // One source per document: the loader caps documents per source.
    let docs: Vec<&str> = text
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .collect();
    let sources: Vec<SourceText<'_>> = docs
        .iter()
        .map(|d| SourceText {
            name: "bench.yaml",
            text: d,
        })
        .collect();
    let (inputs, diags) = load(&sources);
    assert!(diags.is_empty(), "{:?}", diags.first());
    let (model, diags) = Model::build(&inputs);
    assert!(!policy_compiler::diagnostic::has_errors(&diags));
    let graph = AllowGraph::build(&model);
    (model, graph)
}

fn bench(c: &mut Criterion) {
    let opts = RulesetOptions::default();
    eprintln!("| scenario | peers | policies | rules | set elements | map elements | text bytes |");
    eprintln!("|---|---|---|---|---|---|---|");
    for (label, gen_fn) in [
        ("ipblocks", ipblocks as fn(usize) -> String),
        ("pods+policies", pods_and_policies),
    ] {
        let mut group = c.benchmark_group(format!("compile_pod/{label}"));
        group.sample_size(10);
        for n in SIZES {
            let (model, graph) = build(&gen_fn(n));
            let target = model.endpoint_by_key("app/target").unwrap();
            let rs = compile_pod(&model, &graph, target, &opts);
            let st = rs.stats();
            eprintln!(
                "| {label} | {n} | {} | {} | {} | {} | {} |",
                model.policies.len(),
                st.rules,
                st.set_elements,
                st.map_elements,
                rs.to_nft().len()
            );
            group.bench_with_input(BenchmarkId::new("compile", n), &n, |b, _| {
                b.iter(|| compile_pod(black_box(&model), &graph, target, &opts));
            });
            group.bench_with_input(BenchmarkId::new("compile+to_nft", n), &n, |b, _| {
                b.iter(|| compile_pod(black_box(&model), &graph, target, &opts).to_nft());
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
