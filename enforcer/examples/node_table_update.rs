//! Node table benchmark (root, real kernel): a peer change reaching the node table, old
//! (the whole table replaced with `nft -f`) and new (one generation-checked netlink
//! element batch) side by side in one run, and the child processes one verify pass
//! starts, old (every table listed with `nft list`) and new (netlink generation checks).
//!
//! The node table is compiled for `--pods` local Pods, each egress-isolated with every
//! one of `--peers` remote Pods as a peer (`egress_pod_<k>_v4` maps); a change adds or
//! removes one peer, so every local Pod's map gains or loses one element. It lives in a
//! lab namespace standing in for the node's.
//!
//! ```text
//! cargo run --release -p enforcer --example node_table_update -- [--pods 110] [--peers 100]
//!     [--changes 20] [--passes 20]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{AgentConfig, CompiledRulesets, Reconciler, RulesetSource};
use enforcer::applier::{Applier, NetlinkApplier, NodeNetnsApplier};
use enforcer::manifests::ManifestDir;
use enforcer::metrics::Metrics;
use enforcer::plan::{Desired, element_ops};
use netpol_lab::topology::{HostSpec, Topology};
use policy_compiler::ruleset::NodeContext;
use policy_compiler::{AllowGraph, Model, SourceText, load};

struct Opts {
    pods: usize,
    peers: usize,
    changes: usize,
    passes: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        pods: 110,
        peers: 100,
        changes: 20,
        passes: 20,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let v = || pair[1].parse().expect("a number");
        match pair[0].as_str() {
            "--pods" => o.pods = v(),
            "--peers" => o.peers = v(),
            "--changes" => o.changes = v(),
            "--passes" => o.passes = v(),
            other => panic!("unknown option {other}"),
        }
    }
    o
}

fn pod(name: &str, app: &str, node: &str, ip: String, netns: Option<&str>) -> String {
    let annotations = netns.map_or(String::new(), |n| {
        format!(", annotations: {{netpol.io/netns: {n}}}")
    });
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}{annotations}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
    )
}

const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: out, namespace: x}\nspec: {podSelector: {matchLabels: {app: web}}, policyTypes: [Egress], egress: [{to: [{podSelector: {matchLabels: {app: db}}}], ports: [{port: 5432}]}]}\n";

fn ip(i: usize, base: u8) -> String {
    format!("10.{base}.{}.{}", i / 250, i % 250 + 1)
}

/// The node table with `peers` db Pods (the web Pods are the local ones).
fn node_table(o: &Opts, peers: usize) -> Desired {
    let mut yaml = String::from(POLICY);
    yaml.push_str("---\n");
    for i in 0..o.pods {
        yaml += &pod(&format!("web{i}"), "web", "n1", ip(i, 1), None);
    }
    for i in 0..peers {
        yaml += &pod(&format!("db{i}"), "db", "n2", ip(i, 2), None);
    }
    let (inputs, _) = load(&[SourceText {
        name: "bench.yaml",
        text: &yaml,
    }]);
    let (model, _) = Model::build(&inputs);
    let graph = AllowGraph::build(&model);
    let mut ctx = NodeContext::new(&model, "n1", vec!["10.9.0.1".parse().unwrap()]);
    ctx.pods = (0..o.pods)
        .map(|i| model.endpoint_by_key(&format!("x/web{i}")).unwrap())
        .collect();
    ctx.pods.sort_unstable();
    CompiledRulesets::default()
        .render_node_desired(&model, &graph, &ctx)
        .unwrap()
        .unwrap()
}

fn stats(mut v: Vec<Duration>) -> String {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let p = |q: f64| v[((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1];
    format!(
        "p50 {:7.2} ms  p99 {:7.2} ms  max {:7.2} ms",
        ms(p(0.5)),
        ms(p(0.99)),
        ms(*v.last().unwrap())
    )
}

/// Child processes per verify pass of a reconciler owning a node table and the tables
/// of `local` Pods (lab namespaces), with `applier` (`netns::processes_started`).
fn processes_per_pass<A: Applier + 'static>(
    applier: A,
    hosts: &[netpol_lab::topology::Host],
    passes: usize,
) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let mut yaml = String::from(POLICY);
    yaml.push_str("---\n");
    for (i, h) in hosts.iter().enumerate() {
        yaml += &pod(&format!("web{i}"), "web", "n1", ip(i, 1), Some(&h.netns));
    }
    yaml += &pod("db0", "db", "n2", ip(0, 2), None);
    std::fs::write(dir.path().join("all.yaml"), yaml).unwrap();
    let mut rec = Reconciler::new(
        &AgentConfig {
            node_table: true,
            node: Some("n1".into()),
            ..AgentConfig::default()
        },
        Arc::new(CompiledRulesets::default()),
        Arc::new(applier),
        Arc::new(Metrics::new()),
    );
    let mut src = ManifestDir::new(dir.path(), None);
    rec.handle_scan(src.scan());
    rec.compile();
    let r = rec.sync(Instant::now());
    assert!(r.failed.is_empty(), "{r:?}");
    // Settle: the first pass after a commit takes its baseline listings.
    rec.take_baselines();
    rec.verify();
    // Every `ip` and `nft` the enforcer starts is counted there.
    let before = enforcer::netns::processes_started();
    for _ in 0..passes {
        assert!(rec.verify().is_empty());
    }
    (enforcer::netns::processes_started() - before) as f64 / passes as f64
}

fn main() {
    let o = opts();
    let specs: Vec<HostSpec> = (0..3)
        .map(|i| {
            HostSpec::new(
                format!("h{i}"),
                Some(format!("10.250.0.{}/24", 11 + i).parse().unwrap()),
                None,
            )
        })
        .collect();
    let lab = Topology::build(&format!("ntbench{}", std::process::id() % 10_000), &specs)
        .expect("lab (needs root)");
    let node = lab.hosts()[0].netns.clone();

    let small = node_table(&o, o.peers);
    let big = node_table(&o, o.peers + 1);
    let (a, b) = (small.parts.clone().unwrap(), big.parts.clone().unwrap());
    assert_eq!(a.skeleton, b.skeleton, "a peer change is elements only");
    let (small_text, big_text) = (small.text.get(), big.text.get());
    let add = element_ops(&a.entries, &b.entries);
    let remove = element_ops(&b.entries, &a.entries);
    println!(
        "node table: {} local egress-isolated Pods x {} peers: {} map elements, {} bytes of nft text; a peer change = {} element adds or deletes",
        o.pods,
        o.peers,
        a.entries.len(),
        small_text.len(),
        add.len()
    );

    // Old: the whole table replaced with `nft -f` per change.
    let old = NodeNetnsApplier { node: node.clone() };
    old.apply_node(&small_text).unwrap();
    let mut replace = Vec::new();
    for i in 0..o.changes {
        let text = if i % 2 == 0 { &big_text } else { &small_text };
        let t = Instant::now();
        old.apply_node(text).unwrap();
        replace.push(t.elapsed());
    }
    // New: one generation-checked netlink batch per change.
    let new = NetlinkApplier::with_node_netns(node.clone());
    new.apply_node(&small_text).unwrap();
    let mut generation = new.node_generation().unwrap().unwrap();
    let mut elements = Vec::new();
    for i in 0..o.changes {
        let (ops, text) = if i % 2 == 0 {
            (&add, &big_text)
        } else {
            (&remove, &small_text)
        };
        let t = Instant::now();
        generation = new.update_node(ops, generation, text).unwrap();
        elements.push(t.elapsed());
    }
    println!(
        "\npeer change -> node table in the kernel ({} changes each):",
        o.changes
    );
    println!("  old  table replace (nft -f)     {}", stats(replace));
    println!("  new  element batch (netlink)    {}", stats(elements));

    let local = &lab.hosts()[1..];
    let old_pass = processes_per_pass(NodeNetnsApplier { node: node.clone() }, local, o.passes);
    let new_pass = processes_per_pass(
        NetlinkApplier::with_node_netns(node.clone()),
        local,
        o.passes,
    );
    println!(
        "\nchild processes per verify pass (node table + {} Pod tables, {} passes):",
        local.len(),
        o.passes
    );
    println!("  old  nft list per table          {old_pass:.1}");
    println!("  new  netlink generation check    {new_pass:.1}");
}
