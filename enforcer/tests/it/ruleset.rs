//! Compiled rulesets in the kernel: the text and the JSON renderings load to the same
//! state, and the `.nft` goldens stay valid `nft -f` input.
// See: #3

use std::time::Instant;

use enforcer::netns;
use enforcer::nft;
use enforcer::ruleset_json;
use policy_compiler::model::EndpointKind;
use policy_compiler::ruleset::{NodeContext, RulesetOptions, compile_node, compile_pod};
use serde_json::Value;

use crate::cases::{self, case_dirs};
use crate::kernel;

/// Removes namespaces when dropped, so a failing assertion still cleans up.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tag: &str, n: usize) -> Self {
        let p = kernel::prefix(tag);
        let names: Vec<String> = (0..n).map(|i| format!("{p}-{i}")).collect();
        for name in &names {
            netns::add(name).unwrap();
        }
        Namespaces(names)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}

/// The listing without handles and metainfo (they differ between loads).
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("handle");
            for x in m.values_mut() {
                normalise(x);
            }
        }
        Value::Array(a) => {
            a.retain(|x| x.get("metainfo").is_none());
            for x in a {
                normalise(x);
            }
        }
        _ => {}
    }
}

fn listing(ns: &str) -> Value {
    let mut v = nft::list_table_json(ns, "inet", "netpol").unwrap();
    normalise(&mut v);
    v
}

#[test]
fn text_and_json_renderings_load_identically_for_every_pod_of_every_case() {
    if !kernel::available("text_and_json_renderings_load_identically_for_every_pod_of_every_case") {
        return;
    }
    let ns = Namespaces::new("rsjson", 2);
    let (text_ns, json_ns) = (&ns.0[0], &ns.0[1]);
    let start = Instant::now();
    let mut pods = 0;
    let mut nodes = 0;
    for dir in case_dirs() {
        let case = cases::compile(&dir);
        for e in case
            .model
            .endpoints
            .iter()
            .filter(|e| e.kind == EndpointKind::Pod && !e.host_network)
        {
            let rs = compile_pod(&case.model, &case.graph, e.id, &RulesetOptions::default());
            let text = rs.to_nft();
            nft::apply(text_ns, &text)
                .unwrap_or_else(|err| panic!("{} {}: {err}\n{text}", case.name, e.key()));
            let json = ruleset_json::to_json(&rs).unwrap();
            nft::apply_json(json_ns, &json)
                .unwrap_or_else(|err| panic!("{} {}: {err}\n{json}", case.name, e.key()));
            let (a, b) = (listing(text_ns), listing(json_ns));
            assert_eq!(
                a,
                b,
                "{} {}: text and JSON load differently\ntext:\n{text}\njson:\n{json}",
                case.name,
                e.key()
            );
            pods += 1;
        }
        // The node table of every node the case names (See: #10).
        for node in case.model.node_names() {
            let ctx = NodeContext::new(&case.model, node, case.model.node_addresses(node));
            let rs = compile_node(&case.model, &case.graph, &ctx, &RulesetOptions::default());
            let text = rs.to_nft();
            nft::apply(text_ns, &text)
                .unwrap_or_else(|err| panic!("{} node {node}: {err}\n{text}", case.name));
            let json = ruleset_json::to_json(&rs).unwrap();
            nft::apply_json(json_ns, &json)
                .unwrap_or_else(|err| panic!("{} node {node}: {err}\n{json}", case.name));
            assert_eq!(
                listing(text_ns),
                listing(json_ns),
                "{} node {node}: text and JSON load differently\ntext:\n{text}\njson:\n{json}",
                case.name
            );
            nodes += 1;
        }
    }
    eprintln!(
        "text/JSON parity: {pods} pods, {nodes} node tables in {:?}",
        start.elapsed()
    );
    assert!(
        nodes >= 2,
        "expected node tables in testdata/cases/services, found {nodes}"
    );
    // Loading twice replaces the table (no "exists" error, no duplicate rules).
    let before = listing(text_ns);
    let any = cases::compile(&case_dirs()[0]);
    let rs = compile_pod(
        &any.model,
        &any.graph,
        any.model.endpoints[0].id,
        &RulesetOptions::default(),
    );
    nft::apply(text_ns, &rs.to_nft()).unwrap();
    nft::apply(text_ns, &rs.to_nft()).unwrap();
    assert_ne!(before, Value::Null);
    let count = |v: &Value| {
        v["nftables"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|o| o.get("rule").is_some())
            .count()
    };
    assert_eq!(count(&listing(text_ns)), rs.stats().rules);
}

#[test]
fn nft_goldens_are_valid_nft_input() {
    if !kernel::available("nft_goldens_are_valid_nft_input") {
        return;
    }
    let ns = Namespaces::new("rsgold", 1);
    let mut n = 0;
    for dir in case_dirs() {
        for f in std::fs::read_dir(&dir).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|e| e == "nft") {
                let text = std::fs::read_to_string(&p).unwrap();
                nft::check(&ns.0[0], &text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                n += 1;
            }
        }
    }
    assert!(n >= 4, "expected .nft goldens, found {n}");
}
