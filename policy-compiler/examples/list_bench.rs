//! `netpol list` at 1,000 Pods, step by step: the time (best of N runs, so that a busy
//! machine's waits mostly drop out) of reading the YAML, typing it,
//! the model, the allow graph, the connectivity classes and listing every connection
//! rendered as `netpol list` prints it (text) to a counting sink.
//!
//! ```text
//! cargo run --release -p policy-compiler --example list_bench -- 1000 [RUNS]
//! ```

use std::borrow::Cow;
use std::collections::HashMap;

use policy_compiler::connectivity::{Connectivity, EndpointFilter, Party, ports_text};
use policy_compiler::source::parse_documents;
use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{AllowGraph, Model, PortSet, SourceText, load};

/// Seconds since the first call (schedstat's per-thread CPU time is updated only at
/// scheduler ticks: too coarse for steps of a millisecond).
fn cpu() -> f64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_secs_f64()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pods: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let text = generate(&SynthParams::scaled(pods, 1));
    let mut best = [f64::MAX; 6];
    let mut lines = 0usize;
    let mut shape = (0, 0, 0);
    for _ in 0..runs {
        let mut t = [0.0; 6];
        let c = cpu();
        let docs = parse_documents(&text).expect("generated YAML parses");
        t[0] = cpu() - c;
        drop(docs);
        let c = cpu();
        let (inputs, _) = load(&[SourceText {
            name: "gen.yaml",
            text: &text,
        }]);
        t[1] = cpu() - c;
        let c = cpu();
        let (model, _) = Model::build(&inputs);
        t[2] = cpu() - c;
        let c = cpu();
        let graph = AllowGraph::build(&model);
        t[3] = cpu() - c;
        let c = cpu();
        let conn = Connectivity::new(&model, &graph, &[]);
        t[4] = cpu() - c;
        shape = (
            model.endpoints.len(),
            conn.class_count(),
            conn.range_count(),
        );
        let c = cpu();
        let (mut n, mut bytes) = (0usize, 0usize);
        // As `netpol list` writes: names and port sets formatted once, each line
        // assembled from them in one buffer.
        let names: Vec<String> = model.endpoints.iter().map(|e| e.key()).collect();
        let mut texts: HashMap<PortSet, String> = HashMap::new();
        let mut line = String::new();
        conn.for_each_ref(&EndpointFilter::default(), |src, dst, ports| {
            let name = |p: Party| match p {
                Party::Endpoint(id) => Cow::Borrowed(names[id.0 as usize].as_str()),
                Party::Range(_) => Cow::Owned(p.name(&model)),
            };
            let text = texts
                .entry(ports.clone())
                .or_insert_with(|| ports_text(ports));
            line.clear();
            line.push_str(&name(src));
            line.push_str(" => ");
            line.push_str(&name(dst));
            line.push_str(" : ");
            line.push_str(text);
            line.push('\n');
            n += 1;
            bytes += line.len();
        });
        t[5] = cpu() - c;
        lines = n;
        std::hint::black_box(bytes);
        for (b, x) in best.iter_mut().zip(t) {
            *b = b.min(x);
        }
    }
    println!(
        "| endpoints / classes / ranges | YAML only | load (YAML + typing) | model | graph | classes | list + render ({lines} lines) | total (load..list) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let ms = |s: f64| format!("{:.1} ms", s * 1e3);
    println!(
        "| {} / {} / {} | {} | {} | {} | {} | {} | {} | **{}** |",
        shape.0,
        shape.1,
        shape.2,
        ms(best[0]),
        ms(best[1]),
        ms(best[2]),
        ms(best[3]),
        ms(best[4]),
        ms(best[5]),
        ms(best[1..].iter().sum())
    );
}
