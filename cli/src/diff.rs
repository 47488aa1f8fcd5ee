//! `netpol diff OLD NEW` (paths) or `netpol diff --base REV -f PATH...` (the working tree
//! against a git revision of the same paths): every pair whose allowed set changed, as
//! netpol-analyzer's `diff-type` (`added`, `removed`, `changed`) with both sides' sets.
//! Exit 0 when nothing changed, 1 when something did (CI can gate on it), 2 on invalid
//! input.
//!
//! ```text
//! netpol diff old/ new/
//! netpol diff --base origin/main -f policies/ -o json --explain
//! diff-type: changed, source: x/a, destination: y/b, old: TCP 80, new: All Connections
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use clap::ValueEnum;
use policy_compiler::connectivity::{Change, Connectivity, diff, port_ranges, ports_text};
use policy_compiler::{Explanation, PortSet, Subject, explain};
use serde::Serialize;

use crate::inputs::{self, Compiled, EXIT_INVALID};
use crate::list::{FilterArgs, csv_field, dot_id, dot_nodes};
use crate::output::Out;

/// Exit code when something changed.
const EXIT_CHANGED: i32 = 1;

/// Output formats of `diff`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DiffFormat {
    Text,
    Json,
    Csv,
    Md,
    Dot,
    Html,
}

/// Arguments of `diff`.
#[derive(clap::Args)]
pub(crate) struct DiffArgs {
    /// The old policy set: files or directories (`-` is not allowed). Not with --base.
    #[arg(value_name = "OLD", requires = "new", conflicts_with = "base")]
    old: Option<PathBuf>,
    /// The new policy set.
    #[arg(value_name = "NEW")]
    new: Option<PathBuf>,
    /// Compare the -f paths in the working tree (new) with the same paths at git
    /// revision REV (old), read with `git show REV:path`.
    #[arg(long, value_name = "REV", requires = "files")]
    base: Option<String>,
    /// With --base: the paths (files or directories) to compare.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Attach `explain` of both versions to every changed endpoint pair.
    #[arg(long)]
    explain: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: DiffFormat,
    /// Endpoints declared by labels (`--endpoints FILE`, as for `list`), the same for
    /// both versions.
    #[arg(long = "endpoints", value_name = "FILE")]
    endpoints: Vec<PathBuf>,
    /// List skipped objects.
    #[arg(short, long)]
    verbose: bool,
    /// Largest input read, per file and for all files together, in MiB (per version).
    #[arg(long, value_name = "MIB", default_value_t = inputs::DEFAULT_MAX_INPUT_MIB)]
    max_input_mib: u64,
    #[command(flatten)]
    filter: FilterArgs,
}

/// One side of a change in `-o json`.
#[derive(Serialize)]
struct JsonSide {
    all: bool,
    ports: Vec<policy_compiler::connectivity::PortRange>,
}

#[derive(Serialize)]
struct JsonChange<'a> {
    diff_type: &'static str,
    src: &'a str,
    dst: &'a str,
    old: Option<JsonSide>,
    new: Option<JsonSide>,
    #[serde(skip_serializing_if = "Option::is_none")]
    explain: Option<JsonExplain>,
}

#[derive(Serialize)]
struct JsonExplain {
    old: Option<Explanation>,
    new: Option<Explanation>,
}

fn side(p: &Option<PortSet>) -> Option<JsonSide> {
    p.as_ref().map(|p| JsonSide {
        all: p.is_all(),
        ports: port_ranges(p),
    })
}

fn text_of(p: &Option<PortSet>) -> String {
    p.as_ref()
        .map_or_else(|| "No Connections".to_string(), ports_text)
}

/// Runs `netpol diff`.
pub(crate) fn run(args: &DiffArgs) -> i32 {
    let limits = inputs::Limits::mib(args.max_input_mib);
    let (old, new) = match (&args.old, &args.new, &args.base) {
        (Some(o), Some(n), None) => {
            let old = inputs::read(std::slice::from_ref(o), &args.endpoints, limits);
            let new = inputs::read(std::slice::from_ref(n), &args.endpoints, limits);
            let (old, new) = match (old, new) {
                (Ok(o), Ok(n)) => (o, n),
                (Err(c), _) | (_, Err(c)) => return c,
            };
            match inputs::compile_two(&old, &new, args.verbose) {
                (Ok(o), Ok(n)) => (o, n),
                (Err(c), _) | (_, Err(c)) => return c,
            }
        }
        (None, None, Some(rev)) => {
            let old = match at_revision(rev, &args.files) {
                Ok(files) => inputs::texts(files, &args.endpoints, limits),
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_INVALID;
                }
            };
            let new = inputs::read(&args.files, &args.endpoints, limits);
            let (old, new) = match (old, new) {
                (Ok(o), Ok(n)) => (o, n),
                (Err(c), _) | (_, Err(c)) => return c,
            };
            match inputs::compile_two(&old, &new, args.verbose) {
                (Ok(o), Ok(n)) => (o, n),
                (Err(c), _) | (_, Err(c)) => return c,
            }
        }
        _ => {
            eprintln!("error: give OLD and NEW paths, or --base REV with -f PATH");
            return EXIT_INVALID;
        }
    };
    for w in old.caveats().into_iter().chain(new.caveats()) {
        eprintln!("warning: {w}");
    }
    let changes = changes(&old, &new, args);
    render(args, &old, &new, &changes);
    if changes.is_empty() { 0 } else { EXIT_CHANGED }
}

/// Every change, in order (both connectivities cut the address space at the same
/// bounds, so IP ranges carry the same names on both sides).
fn changes(old: &Compiled, new: &Compiled, args: &DiffArgs) -> Vec<Change> {
    let (o, n) = Connectivity::pair((&old.model, &old.graph), (&new.model, &new.graph));
    let mut out = Vec::new();
    diff(&o, &n, &args.filter.filter(), |c| out.push(c));
    out
}

fn subject(c: &Compiled, name: &str) -> Option<Subject> {
    if let Some((addr, _)) = name.split_once('/')
        && let Ok(ip) = addr.parse::<std::net::IpAddr>()
    {
        return Some(Subject::External(ip));
    }
    c.model.endpoint_by_key(name).map(Subject::Endpoint)
}

fn explain_pair(c: &Compiled, src: &str, dst: &str) -> Option<Explanation> {
    let (s, d) = (subject(c, src)?, subject(c, dst)?);
    let mut e = explain(&c.model, &c.graph, s, d, None);
    e.caveats = c.caveats();
    Some(e)
}

fn render(args: &DiffArgs, old: &Compiled, new: &Compiled, changes: &[Change]) {
    let mut out = Out::new();
    let explained = |ch: &Change| {
        args.explain.then(|| JsonExplain {
            old: explain_pair(old, &ch.src, &ch.dst),
            new: explain_pair(new, &ch.src, &ch.dst),
        })
    };
    match args.output {
        DiffFormat::Text => {
            for ch in changes {
                out.put(&format!(
                    "diff-type: {}, source: {}, destination: {}, old: {}, new: {}\n",
                    ch.diff_type(),
                    ch.src,
                    ch.dst,
                    text_of(&ch.old),
                    text_of(&ch.new)
                ));
                if let Some(x) = explained(ch) {
                    for (label, e) in [("old", x.old), ("new", x.new)] {
                        let Some(e) = e else {
                            out.put(&format!("  {label}: (not in this version)\n"));
                            continue;
                        };
                        out.put(&format!("  {label}:\n"));
                        for line in e.to_string().lines() {
                            out.put(&format!("    {line}\n"));
                        }
                    }
                }
            }
            out.put(&format!("{} change(s)\n", changes.len()));
        }
        DiffFormat::Json => {
            out.put("{\"changes\": [");
            for (i, ch) in changes.iter().enumerate() {
                let j = JsonChange {
                    diff_type: ch.diff_type(),
                    src: &ch.src,
                    dst: &ch.dst,
                    old: side(&ch.old),
                    new: side(&ch.new),
                    explain: explained(ch),
                };
                out.put(if i == 0 { "\n  " } else { ",\n  " });
                out.put(&serde_json::to_string(&j).unwrap_or_default());
            }
            out.put(if changes.is_empty() { "]}\n" } else { "\n]}\n" });
        }
        DiffFormat::Csv => {
            out.put("diff-type,source,destination,old,new\n");
            for ch in changes {
                out.put(&format!(
                    "{},{},{},{},{}\n",
                    ch.diff_type(),
                    csv_field(&ch.src),
                    csv_field(&ch.dst),
                    csv_field(&text_of(&ch.old)),
                    csv_field(&text_of(&ch.new))
                ));
            }
        }
        DiffFormat::Md => {
            out.put("| diff-type | source | destination | old | new |\n|---|---|---|---|---|\n");
            for ch in changes {
                out.put(&format!(
                    "| {} | {} | {} | {} | {} |\n",
                    ch.diff_type(),
                    ch.src,
                    ch.dst,
                    text_of(&ch.old),
                    text_of(&ch.new)
                ));
            }
        }
        DiffFormat::Html => {
            let edges = changes
                .iter()
                .map(|ch| {
                    let by = if ch.new.is_some() { new } else { old };
                    crate::html::Edge {
                        src: ch.src.clone(),
                        dst: ch.dst.clone(),
                        kind: ch.diff_type(),
                        ports: text_of(&ch.new),
                        old: Some(text_of(&ch.old)),
                        rules: explain_pair(by, &ch.src, &ch.dst)
                            .map(|e| crate::html::rules_of(&e))
                            .unwrap_or_default(),
                    }
                })
                .collect();
            out.put(&crate::html::page(&crate::html::Picture::new(
                "netpol diff".into(),
                edges,
            )));
        }
        DiffFormat::Dot => {
            out.put("digraph netpol_diff {\n  rankdir=LR;\n  node [shape=box];\n");
            let mut nodes = std::collections::BTreeSet::new();
            for ch in changes {
                let (color, label) = match ch.diff_type() {
                    "added" => ("green", text_of(&ch.new)),
                    "removed" => ("red", text_of(&ch.old)),
                    _ => (
                        "orange",
                        format!("{} -> {}", text_of(&ch.old), text_of(&ch.new)),
                    ),
                };
                out.put(&format!(
                    "  {} -> {} [color={color}, fontcolor={color}, label={}];\n",
                    dot_id(&ch.src),
                    dot_id(&ch.dst),
                    dot_id(&format!("{} {label}", ch.diff_type()))
                ));
                nodes.insert(ch.src.clone());
                nodes.insert(ch.dst.clone());
            }
            out.put(&dot_nodes(&nodes));
            out.put("}\n");
        }
    }
    out.finish();
}

/// The manifest files under `paths` at git revision `rev`, read with `git show`, named
/// `REV:path`. Files that exist only at `rev` are included.
fn at_revision(rev: &str, paths: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    let mut names = Vec::new();
    for p in paths {
        let out = git(&[
            "ls-tree",
            "-r",
            "--name-only",
            rev,
            "--",
            &p.display().to_string(),
        ])?;
        let mut found: Vec<String> = out
            .lines()
            .filter(|l| {
                let path = Path::new(l);
                // An explicit file counts whatever its extension, as for -f.
                path == p.as_path()
                    || matches!(
                        path.extension().and_then(|e| e.to_str()),
                        Some("yaml" | "yml" | "json")
                    )
            })
            .map(str::to_string)
            .collect();
        if found.is_empty() {
            return Err(format!("{} does not exist at revision {rev}", p.display()));
        }
        found.sort();
        names.extend(found);
    }
    let mut files = Vec::new();
    for n in names {
        let text = git(&["show", &format!("{rev}:./{n}")])?;
        files.push((format!("{rev}:{n}"), text));
    }
    Ok(files)
}

fn git(args: &[&str]) -> Result<String, String> {
    let out = Command::new("git")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run git: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    String::from_utf8(out.stdout)
        .map_err(|_| format!("git {}: output is not UTF-8", args.join(" ")))
}
