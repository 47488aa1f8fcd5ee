//! Compile and query benchmarks on synthetic clusters (`policy_compiler::synth`).
//!
//! `cargo bench -p policy-compiler --bench compile` runs, for 1k, 10k and 50k Pods (a
//! namespace per 100 Pods, a policy per 10 Pods):
//! - `compile/{load,model,graph,total}/N`: text -> `load` -> `Model::build` ->
//!   `AllowGraph::build`, each stage alone and all three together;
//! - `explain/{port,any}/N`: one `explain` query on the loaded model, with and without a
//!   port;
//! - `matrix/N`: the whole truth table, on small clusters only (it is Pods x Pods).
//!
//! `NETPOL_BENCH_PODS=1000,10000` picks the sizes; criterion's filter picks benchmarks
//! (`cargo bench -p policy-compiler --bench compile -- explain`). Results are reported
//! in docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a failure is a bug

use std::hint::black_box;
use std::time::Duration;

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{
    AllowGraph, EndpointId, Inputs, MatrixQuery, Model, PortQuery, Protocol, SourceText, explain,
    load, matrix,
};

const SEED: u64 = 1;

fn sizes() -> Vec<usize> {
    std::env::var("NETPOL_BENCH_PODS")
        .ok()
        .map(|v| {
            v.split(',')
                .map(|s| {
                    s.trim()
                        .parse()
                        .expect("NETPOL_BENCH_PODS: comma-separated numbers")
                })
                .collect()
        })
        .unwrap_or_else(|| vec![1_000, 10_000, 50_000])
}

fn load_text(text: &str) -> Inputs {
    let (inputs, diags) = load(&[SourceText {
        name: "synth.yaml",
        text,
    }]);
    assert!(diags.is_empty(), "{diags:?}");
    inputs
}

fn build(inputs: &Inputs) -> Model {
    let (model, diags) = Model::build(inputs);
    assert!(diags.is_empty(), "{diags:?}");
    model
}

/// A group whose samples are few and flat when one iteration takes long.
fn group_for<'c>(
    c: &'c mut Criterion,
    name: &str,
    pods: usize,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    if pods >= 10_000 {
        g.sample_size(10)
            .sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(5));
    } else {
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(3));
    }
    g
}

fn compile(c: &mut Criterion) {
    for pods in sizes() {
        let text = generate(&SynthParams::scaled(pods, SEED));
        let mut g = group_for(c, "compile", pods);
        g.throughput(Throughput::Bytes(text.len() as u64));
        g.bench_with_input(BenchmarkId::new("load", pods), &text, |b, t| {
            b.iter_with_large_drop(|| load_text(black_box(t)))
        });
        let inputs = load_text(&text);
        g.bench_with_input(BenchmarkId::new("model", pods), &inputs, |b, i| {
            b.iter_with_large_drop(|| build(black_box(i)))
        });
        let model = build(&inputs);
        g.bench_with_input(BenchmarkId::new("graph", pods), &model, |b, m| {
            b.iter_with_large_drop(|| AllowGraph::build(black_box(m)))
        });
        g.bench_with_input(BenchmarkId::new("total", pods), &text, |b, t| {
            b.iter_with_large_drop(|| {
                let model = build(&load_text(black_box(t)));
                let graph = AllowGraph::build(&model);
                (model, graph)
            })
        });
        g.finish();
    }
}

/// A source and destination in different namespaces, both isolated by several policies:
/// the 6th Pod and the middle one (endpoints are sorted by namespace and name).
fn pair(model: &Model) -> (EndpointId, EndpointId) {
    let n = model.endpoints.len();
    (EndpointId(5), EndpointId(u32::try_from(n / 2).unwrap()))
}

fn explain_query(c: &mut Criterion) {
    for pods in sizes() {
        let text = generate(&SynthParams::scaled(pods, SEED));
        let model = build(&load_text(&text));
        let graph = AllowGraph::build(&model);
        let (src, dst) = pair(&model);
        let mut g = c.benchmark_group("explain");
        g.warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let port = Some(PortQuery {
            protocol: Protocol::Tcp,
            port: 9000,
        });
        g.bench_function(BenchmarkId::new("port", pods), |b| {
            b.iter(|| {
                explain(
                    &model,
                    &graph,
                    black_box(src.into()),
                    black_box(dst.into()),
                    port,
                )
            })
        });
        g.bench_function(BenchmarkId::new("any", pods), |b| {
            b.iter(|| {
                explain(
                    &model,
                    &graph,
                    black_box(src.into()),
                    black_box(dst.into()),
                    None,
                )
            })
        });
        g.finish();
    }
}

fn matrix_small(c: &mut Criterion) {
    // Pods x Pods queries by definition: kept to small clusters.
    let pods = 300;
    let model = build(&load_text(&generate(&SynthParams::scaled(pods, SEED))));
    let graph = AllowGraph::build(&model);
    let mut g = c.benchmark_group("matrix");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    g.throughput(Throughput::Elements((pods * pods) as u64));
    g.bench_function(BenchmarkId::from_parameter(pods), |b| {
        b.iter(|| {
            matrix(
                &model,
                &graph,
                MatrixQuery {
                    protocol: Some(Protocol::Tcp),
                    port: Some(9000),
                },
            )
        })
    });
    g.finish();
}

criterion_group!(benches, compile, explain_query, matrix_small);
criterion_main!(benches);
