//! What an unrelated Pod change costs the agent before any render (#12): the state of a
//! node-scale cluster view (the shape of `node_scale`: `--cluster` Pods in 100
//! namespaces, `--local` of them on this node, one NetworkPolicy), then `--changes`
//! times a remote Pod that no local table refers to changes IP, and each time
//! `State::build_model`, `AllowGraph::build` and `State::local_pods` run as the
//! reconciler's compile runs them; and `State::patch_model` (the model patched from the
//! changed Pod, what the incremental compile does since #12 point 3) on a copy of the
//! last model, checked equal to the build. No kernel, no root: a profiler-friendly loop.
//!
//! ```text
//! cargo run --release -p enforcer --example model_scale -- [--local 110] [--cluster 10000] [--changes 10]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::time::Instant;

use common::{arg, pct};
use enforcer::state::{Object, State};
use policy_compiler::{AllowGraph, Patched, SourceText, load};

fn objects(yaml: &str) -> Vec<Object> {
    let (inputs, diags) = load(&[SourceText {
        name: "cluster.yaml",
        text: yaml,
    }]);
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    Object::all(inputs)
}

fn cluster(local: usize, cluster: usize) -> String {
    let mut yaml = String::new();
    for n in 0..100 {
        let team = if n % 2 == 0 { "front" } else { "back" };
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: {team}}}}}\n---"
        );
    }
    yaml.push_str("apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n");
    for i in 0..cluster.saturating_sub(local) {
        let app = if i % 3 == 0 { "db" } else { "web" };
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: r{i}, namespace: ns{}, labels: {{app: {app}}}}}\nspec: {{nodeName: n{}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.{}.{}.{}}}\n---",
            i % 100,
            1 + i % 90,
            100 + i / 62_500,
            (i / 250) % 250,
            i % 250 + 1
        );
    }
    for i in 0..local {
        let _ = writeln!(
            yaml,
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: e{i}, namespace: bench, labels: {{app: bench}}, annotations: {{netpol.io/netns: e{i}}}}}\nspec: {{nodeName: n0, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.90.{}.{}}}\n---",
            i / 250,
            i % 250 + 1
        );
    }
    yaml.push_str("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bench, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: bench}}\n  ingress:\n  - from: [{namespaceSelector: {matchLabels: {team: front}}, podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 8080}]\n");
    yaml
}

fn other(version: usize) -> Object {
    let yaml = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: churn, namespace: ns1, labels: {{app: db}}}}\nspec: {{nodeName: n2, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.251.{}.{}}}\n",
        version / 250,
        version % 250 + 1
    );
    objects(&yaml).remove(0)
}

fn main() {
    let local = arg("--local", 110);
    let size = arg("--cluster", 10_000);
    let changes = arg("--changes", 10).max(1);
    let mut state = State::new();
    state.reset(objects(&cluster(local, size)));
    let (mut model_ms, mut graph_ms, mut local_ms, mut total_ms) = (vec![], vec![], vec![], vec![]);
    let (mut patch_ms, mut clone_ms) = (vec![], vec![]);
    let (mut last, _) = state.build_model();
    state.take_model_changes();
    for i in 0..changes {
        state.apply(other(i));
        let delta = state.take_model_changes().expect("a Pod change is noted");
        let t = Instant::now();
        assert_eq!(state.patch_model(&mut last, &delta), Patched::Done);
        patch_ms.push((Instant::now() - t).as_secs_f64() * 1e3);
        // With a drop reporter holding the last model, the compile patches a copy.
        let t = Instant::now();
        let copy = last.clone();
        clone_ms.push((Instant::now() - t).as_secs_f64() * 1e3);
        drop(copy);
        let t0 = Instant::now();
        let (model, diags) = state.build_model();
        assert!(diags.iter().all(|d| !d.is_error()));
        let t1 = Instant::now();
        let graph = AllowGraph::build(&model);
        let t2 = Instant::now();
        let pods = state.local_pods(Some("n0"));
        let t3 = Instant::now();
        assert_eq!(pods.len(), local);
        assert!(graph.peer_set_count() > 0);
        let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
        if i == 0 {
            assert_eq!(last.dump(), model.dump(), "patch == build");
        }
        model_ms.push(ms(t0, t1));
        graph_ms.push(ms(t1, t2));
        local_ms.push(ms(t2, t3));
        total_ms.push(ms(t0, t3));
    }
    for v in [
        &mut model_ms,
        &mut graph_ms,
        &mut local_ms,
        &mut total_ms,
        &mut patch_ms,
        &mut clone_ms,
    ] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "| Pods | build_model p50 | AllowGraph::build p50 | local_pods p50 | total p50 / p99 (ms) | patch_model p50 / p99 (ms) | Model::clone p50 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {size} | {:.1} | {:.1} | {:.1} | {:.1} / {:.1} | {:.2} / {:.2} | {:.1} |",
        pct(&model_ms, 0.5),
        pct(&graph_ms, 0.5),
        pct(&local_ms, 0.5),
        pct(&total_ms, 0.5),
        pct(&total_ms, 0.99),
        pct(&patch_ms, 0.5),
        pct(&patch_ms, 0.99),
        pct(&clone_ms, 0.5)
    );
}
