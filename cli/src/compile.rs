//! `netpol compile`: each selected Pod's nftables ruleset, as `nft -f` text or JSON.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use policy_compiler::model::EndpointKind;
use policy_compiler::ruleset::{RulesetOptions, compile_pod};
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
#[command(group = clap::ArgGroup::new("which").required(true).args(["pod", "node", "all"]))]
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
    let pods: Vec<EndpointId> = if let Some(p) = &args.pod {
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
        if e.kind != EndpointKind::Pod {
            eprintln!(
                "error: {} is a workload, not a Pod: only Pods have a network namespace",
                e.key()
            );
            return EXIT_INVALID;
        }
        if e.host_network {
            eprintln!(
                "error: {} uses hostNetwork: it shares the node's network namespace and gets no ruleset",
                e.key()
            );
            return EXIT_INVALID;
        }
        vec![id]
    } else {
        let mut out = Vec::new();
        for e in &model.endpoints {
            if e.kind != EndpointKind::Pod {
                continue;
            }
            if let Some(n) = &args.node
                && e.node.as_deref() != Some(n.as_str())
            {
                continue;
            }
            if e.host_network {
                eprintln!("note: skipping hostNetwork Pod {}", e.key());
                continue;
            }
            out.push(e.id);
        }
        if out.is_empty() {
            eprintln!("note: no Pods selected");
        }
        out
    };
    let opts = RulesetOptions {
        log_group: args.log_group,
    };
    let mut rendered: BTreeMap<String, String> = BTreeMap::new();
    let mut json: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for id in pods {
        let rs = compile_pod(model, &c.graph, id, &opts);
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
        None if args.output == CompileFormat::Json && args.pod.is_none() => {
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
