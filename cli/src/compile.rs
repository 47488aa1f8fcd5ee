//! `netpol compile`: each selected Pod's nftables ruleset (or a node table), as `nft -f`
//! text or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use policy_compiler::model::NoRuleset;
use policy_compiler::ruleset::{NodeContext, Ruleset, RulesetOptions, compile_node, compile_pod};
use policy_compiler::{EndpointId, Subject};

use crate::inputs::{self, EXIT_INVALID};

/// Output format of `compile`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum CompileFormat {
    /// `nft -f` text (replaces `table inet netpol` in one transaction).
    Nft,
    /// nftables JSON for `nft -j -f` (the same transaction).
    Json,
}

/// Which Pods and how to write their rulesets.
#[derive(Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["pod", "node", "node_table", "all"]))]
pub(crate) struct CompileArgs {
    /// One Pod: ns/name (or name in default).
    #[arg(long)]
    pod: Option<String>,
    /// Every Pod whose spec.nodeName is NODE.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// Every Pod.
    #[arg(long)]
    all: bool,
    /// The node table of NODE (`table inet netpol` for the node's own netns: egress of
    /// its Pods judged after DNAT), named `node/NODE` (file `node_NODE.nft`).
    #[arg(long, value_name = "NODE")]
    node_table: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "nft")]
    output: CompileFormat,
    /// Write one file per Pod, `<ns>_<name>.nft` / `.json`, into DIR (created if missing).
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,
    /// nflog group of the logging drop rule.
    #[arg(long, default_value_t = RulesetOptions::default().log_group)]
    log_group: u16,
}

/// Runs `compile`; returns the exit code.
pub(crate) fn run(args: &CompileArgs, input: &crate::InputArgs) -> i32 {
    let c = match inputs::compile_input(input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let model = &c.model;
    let opts = RulesetOptions {
        log_group: args.log_group,
        ..RulesetOptions::default()
    };
    let pods: Vec<EndpointId> = if args.node_table.is_some() {
        Vec::new()
    } else if let Some(p) = &args.pod {
        let id = match Subject::parse(model, p) {
            Ok(Subject::Endpoint(id)) => id,
            Ok(Subject::External(ip)) => {
                eprintln!("error: {ip} is not the IP of a Pod in the input");
                return EXIT_INVALID;
            }
            Err(e) => {
                eprintln!("error: {e}");
                return EXIT_INVALID;
            }
        };
        let e = model.endpoint(id);
        match e.no_ruleset() {
            Some(NoRuleset::Workload) => {
                eprintln!(
                    "error: {} is a workload, not a Pod: only Pods have a network namespace",
                    e.key()
                );
                return EXIT_INVALID;
            }
            Some(NoRuleset::HostNetwork) => {
                eprintln!(
                    "error: {} uses hostNetwork: it shares the node's network namespace and gets no ruleset",
                    e.key()
                );
                return EXIT_INVALID;
            }
            Some(NoRuleset::Declared) => {
                eprintln!(
                    "error: {} is a declared endpoint (--endpoints): it is not in the manifests and gets no ruleset",
                    e.key()
                );
                return EXIT_INVALID;
            }
            None => {}
        }
        vec![id]
    } else {
        let node = args.node.as_deref();
        for e in &model.endpoints {
            if e.no_ruleset() == Some(NoRuleset::HostNetwork)
                && node.is_none_or(|n| e.node.as_deref() == Some(n))
            {
                eprintln!("note: skipping hostNetwork Pod {}", e.key());
            }
        }
        let out: Vec<_> = model.enforceable_pods(node).map(|e| e.id).collect();
        if out.is_empty() {
            eprintln!("note: no Pods selected");
        }
        out
    };
    let mut rulesets: Vec<Ruleset> = pods
        .into_iter()
        .map(|id| compile_pod(model, &c.graph, id, &opts))
        .collect();
    if let Some(n) = &args.node_table {
        if !model.node_names().contains(&n.as_str()) {
            eprintln!(
                "note: node {n} is not in the input (no Node object, no Pod with spec.nodeName {n})"
            );
        }
        let ctx = NodeContext::new(model, n, model.node_addresses(n));
        rulesets.push(compile_node(model, &c.graph, &ctx, &opts));
    }
    let mut rendered: BTreeMap<String, String> = BTreeMap::new();
    let mut json: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for rs in rulesets {
        match args.output {
            CompileFormat::Nft => {
                rendered.insert(rs.pod.clone(), rs.to_nft());
            }
            CompileFormat::Json => match enforcer::ruleset_json::to_json(&rs) {
                Ok(v) => {
                    json.insert(rs.pod.clone(), v);
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return 1;
                }
            },
        }
    }
    if args.output == CompileFormat::Json {
        for (pod, v) in &json {
            rendered.insert(pod.clone(), format!("{}\n", crate::to_json(v)));
        }
    }
    match &args.out_dir {
        Some(dir) => {
            if let Err(e) = std::fs::create_dir_all(dir) {
                eprintln!("error: cannot create {}: {e}", dir.display());
                return 1;
            }
            let ext = match args.output {
                CompileFormat::Nft => "nft",
                CompileFormat::Json => "json",
            };
            for (pod, text) in &rendered {
                let path = dir.join(format!("{}.{ext}", pod.replace('/', "_")));
                if let Err(e) = std::fs::write(&path, text) {
                    eprintln!("error: cannot write {}: {e}", path.display());
                    return 1;
                }
            }
        }
        None if args.output == CompileFormat::Json
            && args.pod.is_none()
            && args.node_table.is_none() =>
        {
            // Several documents: one object keyed by Pod.
            crate::output::emitln(&crate::to_json(&json));
        }
        None => {
            for text in rendered.values() {
                crate::output::emit(text);
            }
        }
    }
    0
}
