//! `netpol test DIR...`: golden-file policy tests, for users' CI.
//!
//! A *case* is a directory that holds `expect.yaml` or at least one golden file. Its
//! manifests are every `*.yaml`, `*.yml` and `*.json` in it except `expect.yaml` and the
//! goldens, including files in subdirectories that are not cases themselves. Cases are
//! found recursively under each DIR (hidden directories are skipped); a case may contain
//! further cases.
//!
//! Per case: compile the manifests (any error diagnostic fails the case, and nothing else
//! of it is checked), check `expect.yaml` ([`policy_compiler::expect`]), and compare every
//! golden file byte for byte with what netpol prints now. `--update` rewrites goldens that
//! differ and creates the goldens that `expect.yaml` implies (one matrix golden per matrix
//! expectation); it never edits `expect.yaml`.
//!
//! Goldens are a table of kinds, [`GOLDEN_KINDS`]: `matrix-<proto>-<port>.txt` is
//! [`policy_compiler::Matrix::to_text`] for that query; `<ns>_<pod>.nft` is that Pod's
//! ruleset (`netpol compile --pod ns/pod`), and `node_<name>.nft` (when no Pod
//! `node/<name>` exists) the node table of node `<name>` (`netpol compile --node-table
//! <name>`). A new kind is one more entry there.
//!
//! Exit codes: 0 all cases pass, 1 some case failed (invalid manifests included),
//! 2 usage error, an unreadable DIR, no case found, or the JUnit file cannot be written.
//!
//! ```text
//! netpol test testdata/cases --junit target/netpol-junit.xml
//! netpol test policies/tests --update && git diff policies/tests
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use policy_compiler::expect::{Expectations, check, parse_expectations_in};
use policy_compiler::model::NoRuleset;
use policy_compiler::{AllowGraph, Inputs, MatrixQuery, Model, Protocol, load, matrix};
use serde::Serialize;
use similar::TextDiff;

use crate::inputs::{self, Limits, Sources};
use crate::junit;

/// Exit code when some case failed.
const EXIT_FAILED: i32 = 1;

/// Arguments of `netpol test`.
#[derive(clap::Args)]
pub(crate) struct TestArgs {
    /// Directories searched recursively for cases: directories holding `expect.yaml` or
    /// golden files (`matrix-<proto>-<port>.txt`, `<ns>_<pod>.nft`).
    #[arg(value_name = "DIR", required = true)]
    dirs: Vec<PathBuf>,
    /// Rewrite golden files that differ and create the matrix goldens implied by
    /// `expect.yaml`; never edits `expect.yaml`. Review the result with `git diff`.
    #[arg(long)]
    update: bool,
    /// Also write a JUnit XML report to FILE (one testsuite per DIR, one testcase per case).
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Output format on stdout. With json the `N passed, M failed` line goes to stderr.
    #[arg(short, long, value_enum, default_value = "text")]
    output: Format,
    /// Check every case against the live cluster (listed once through the kubeconfig)
    /// instead of the case's manifests: expect.yaml and goldens describe the cluster.
    #[arg(long)]
    cluster: bool,
    /// Kubeconfig context for --cluster (default: the current context).
    #[arg(long, value_name = "CONTEXT", requires = "cluster")]
    context: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
}

/// What golden files are rendered from: one compiled case.
pub(crate) struct Outputs<'a> {
    model: &'a Model,
    graph: &'a AllowGraph,
    expectations: Option<&'a Expectations>,
}

/// A kind of golden file: which file names it owns and how their content is rendered.
pub(crate) struct GoldenKind {
    /// Short name, in reports and JSON (`matrix`).
    pub(crate) name: &'static str,
    /// Whether a file name (no directory) in a case is a golden of this kind.
    pub(crate) owns: fn(&str) -> bool,
    /// The content the golden file `name` must have; `Err` when the name does not parse
    /// or names nothing in the case (for example an unknown Pod).
    pub(crate) render: fn(&Outputs<'_>, &str) -> Result<String, String>,
    /// File names `--update` creates when they are missing.
    pub(crate) implied: fn(&Outputs<'_>) -> Vec<String>,
}

/// Every golden kind, tried in order; the first that owns a file name wins.
///
/// Extension point: per-Pod rulesets become one more entry once
/// `policy_compiler::ruleset` exists, along the lines of
/// `GoldenKind { name: "nft", owns: |f| f.ends_with(".nft"), render: render_nft, implied: |_| Vec::new() }`
/// where `render_nft` splits `<ns>_<name>.nft`, finds the Pod with
/// `Model::endpoint_by_key` and returns its ruleset text (a valid `nft -f` file). With no
/// implied names, users create an empty `<ns>_<name>.nft` and fill it with `--update`.
pub(crate) const GOLDEN_KINDS: &[GoldenKind] = &[
    GoldenKind {
        name: "matrix",
        owns: owns_matrix,
        render: render_matrix,
        implied: implied_matrix,
    },
    GoldenKind {
        name: "nft",
        owns: owns_nft,
        render: render_nft,
        implied: |_| Vec::new(),
    },
];

fn owns_nft(f: &str) -> bool {
    f.ends_with(".nft")
}

/// `<ns>_<name>.nft`: the Pod's ruleset (`netpol compile --pod ns/name`), default options.
/// Namespace and Pod names cannot contain `_`, so the first `_` separates them.
fn render_nft(o: &Outputs<'_>, f: &str) -> Result<String, String> {
    let bad = || format!("golden name {f:?} is not <namespace>_<pod>.nft");
    let stem = f.strip_suffix(".nft").ok_or_else(bad)?;
    let (ns, name) = stem.split_once('_').ok_or_else(bad)?;
    let key = format!("{ns}/{name}");
    let id = match o.model.endpoint_by_key(&key) {
        Some(id) => id,
        // `node_<name>.nft`: the node table of node <name> (`netpol compile --node-table`),
        // when no Pod node/<name> exists. See: #10
        None if ns == "node" && o.model.node_names().contains(&name) => {
            let ctx = policy_compiler::ruleset::NodeContext::new(
                o.model,
                name,
                o.model.node_addresses(name),
            );
            let opts = policy_compiler::ruleset::RulesetOptions::default();
            return Ok(
                policy_compiler::ruleset::compile_node(o.model, o.graph, &ctx, &opts).to_nft(),
            );
        }
        None => return Err(format!("{f}: no Pod {key} in the case")),
    };
    if o.model.endpoint(id).no_ruleset() == Some(NoRuleset::HostNetwork) {
        return Err(format!(
            "{f}: {key} is a hostNetwork Pod: it has no ruleset of its own"
        ));
    }
    let opts = policy_compiler::ruleset::RulesetOptions::default();
    Ok(policy_compiler::ruleset::compile_pod(o.model, o.graph, id, &opts).to_nft())
}

fn golden_kind(file_name: &str) -> Option<&'static GoldenKind> {
    GOLDEN_KINDS.iter().find(|k| (k.owns)(file_name))
}

fn owns_matrix(f: &str) -> bool {
    f.starts_with("matrix-") && f.ends_with(".txt")
}

/// `matrix-tcp-80.txt` -> (TCP, 80).
fn parse_matrix_name(f: &str) -> Result<(Protocol, u16), String> {
    let bad = || format!("golden name {f:?} is not matrix-<tcp|udp|sctp>-<port>.txt");
    let mid = f
        .strip_prefix("matrix-")
        .and_then(|s| s.strip_suffix(".txt"))
        .ok_or_else(bad)?;
    let (proto, digits) = mid.split_once('-').ok_or_else(bad)?;
    let protocol: Protocol = proto.parse().map_err(|_| bad())?;
    let port = digits.parse::<u16>().map_err(|_| bad())?;
    // Canonical names only, so one query has exactly one golden file.
    if proto != protocol.as_str().to_ascii_lowercase() || digits != port.to_string() {
        return Err(bad());
    }
    Ok((protocol, port))
}

/// The canonical golden name of a matrix query.
pub(crate) fn matrix_name(protocol: Protocol, port: u16) -> String {
    format!(
        "matrix-{}-{port}.txt",
        protocol.as_str().to_ascii_lowercase()
    )
}

fn render_matrix(o: &Outputs<'_>, f: &str) -> Result<String, String> {
    let (protocol, port) = parse_matrix_name(f)?;
    let q = MatrixQuery {
        protocol: Some(protocol),
        port: Some(port),
    };
    Ok(matrix(o.model, o.graph, q).to_text())
}

fn implied_matrix(o: &Outputs<'_>) -> Vec<String> {
    let Some(exp) = o.expectations else {
        return Vec::new();
    };
    let names: BTreeSet<String> = exp
        .matrix
        .iter()
        .filter_map(|m| {
            let p = match &m.protocol {
                None => Protocol::Tcp,
                Some(s) => s.parse().ok()?,
            };
            Some(matrix_name(p, m.port))
        })
        .collect();
    names.into_iter().collect()
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Status {
    /// Holds.
    Passed,
    /// Does not hold.
    Failed,
    /// A golden file was written by `--update`.
    Updated,
}

/// One check of a case: its manifests, its expectations or one golden file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    /// `manifests`, `expect`, or a golden kind name.
    pub(crate) kind: &'static str,
    /// What was checked (`assertion 0: x/a -> y/b TCP 80`, `matrix-tcp-80.txt`).
    pub(crate) what: String,
    /// Outcome.
    pub(crate) status: Status,
    /// Explanation or diff; empty when passed.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) report: String,
}

/// The result of one case directory.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CaseReport {
    /// Path relative to the DIR it was found under (`.` for DIR itself).
    pub(crate) name: String,
    /// Path of the case directory, as found under DIR.
    pub(crate) path: String,
    /// Whether every check passed (updated goldens count as passed).
    pub(crate) passed: bool,
    /// Every check, in order.
    pub(crate) checks: Vec<Check>,
    /// Compiler warnings (they do not fail the case).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) warnings: Vec<String>,
}

/// The cases found under one DIR.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Suite {
    /// DIR as given.
    pub(crate) dir: String,
    /// Its cases, sorted by path.
    pub(crate) cases: Vec<CaseReport>,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    suites: &'a [Suite],
    passed: usize,
    failed: usize,
}

/// Runs `netpol test`; returns the exit code.
pub(crate) fn run(args: &TestArgs) -> i32 {
    let mut seen = BTreeSet::new();
    let mut plan = Vec::new();
    for dir in &args.dirs {
        if !dir.is_dir() {
            eprintln!("error: {}: not a readable directory", dir.display());
            return inputs::EXIT_INVALID;
        }
        let mut found = Vec::new();
        if let Err(e) = find_cases(dir, &mut found) {
            eprintln!("error: {e}");
            return inputs::EXIT_INVALID;
        }
        // A case under two DIRs (`netpol test a a/b`) runs once, under the first.
        found.retain(|c| seen.insert(std::fs::canonicalize(c).unwrap_or_else(|_| c.clone())));
        plan.push((dir, found));
    }
    if plan.iter().all(|(_, cases)| cases.is_empty()) {
        eprintln!(
            "error: no case found under {}: a case is a directory holding expect.yaml or golden files",
            args.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return inputs::EXIT_INVALID;
    }
    let live = if args.cluster {
        match inputs::live(args.context.as_deref()) {
            Ok(i) => Some(i),
            Err(code) => return code,
        }
    } else {
        None
    };
    let mut suites = Vec::new();
    for (dir, cases) in plan {
        let mut reports = Vec::new();
        for case in cases {
            let report = run_case(dir, &case, args.update, live.as_ref());
            if args.output == Format::Text {
                crate::output::emit(&text_report(&report));
            }
            reports.push(report);
        }
        suites.push(Suite {
            dir: dir.display().to_string(),
            cases: reports,
        });
    }
    let total = suites.iter().map(|s| s.cases.len()).sum::<usize>();
    let failed = suites
        .iter()
        .flat_map(|s| &s.cases)
        .filter(|c| !c.passed)
        .count();
    let passed = total - failed;
    let summary = format!("{passed} passed, {failed} failed");
    match args.output {
        Format::Text => crate::output::emitln(&format!("\n{summary}")),
        Format::Json => {
            let json = JsonReport {
                suites: &suites,
                passed,
                failed,
            };
            crate::output::emitln(&crate::to_json(&json));
            eprintln!("{summary}");
        }
    }
    if let Some(path) = &args.junit
        && let Err(e) = junit::write(path, &suites)
    {
        eprintln!("error: cannot write JUnit report {}: {e}", path.display());
        return inputs::EXIT_INVALID;
    }
    if failed > 0 { EXIT_FAILED } else { 0 }
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: cannot read directory: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    out.sort();
    Ok(out)
}

fn file_name(p: &Path) -> &str {
    p.file_name().and_then(|n| n.to_str()).unwrap_or("")
}

fn is_case(dir: &Path) -> Result<bool, String> {
    Ok(entries(dir)?.iter().any(|p| {
        p.is_file() && (file_name(p) == "expect.yaml" || golden_kind(file_name(p)).is_some())
    }))
}

/// Every case directory under `dir` (itself included), sorted; a directory reached again
/// through a symlink is not searched twice (a loop would never end).
fn find_cases(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    find_cases_in(dir, out, &mut BTreeSet::new())
}

fn find_cases_in(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut BTreeSet<(u64, u64)>,
) -> Result<(), String> {
    if let Ok(m) = std::fs::metadata(dir)
        && !seen.insert((m.dev(), m.ino()))
    {
        return Ok(());
    }
    if is_case(dir)? {
        out.push(dir.to_path_buf());
    }
    for p in entries(dir)? {
        if p.is_dir() && !is_hidden(&p) {
            find_cases_in(&p, out, seen)?;
        }
    }
    Ok(())
}

/// Manifests of a case: files in it and in subdirectories that are not cases, sorted.
/// Regular files only; dangling symlinks are skipped with a warning and every directory is
/// read once (symlink loops), as for `-f`. See: #11
fn manifests(dir: &Path, top: bool, out: &mut Vec<PathBuf>, walk: &mut Walk) -> Result<(), String> {
    if !top && is_case(dir)? {
        return Ok(());
    }
    for p in entries(dir)? {
        if p.is_dir() {
            if is_hidden(&p) {
                continue;
            }
            match std::fs::metadata(&p) {
                Ok(m) if !walk.seen_dirs.insert((m.dev(), m.ino())) => {
                    walk.warnings.push(
                        policy_compiler::Diagnostic::file_error(
                            &p.display().to_string(),
                            None,
                            "skipped: directory already read (a symlink loop or a second link to it)",
                        )
                        .warning(),
                    );
                }
                _ => manifests(&p, false, out, walk)?,
            }
            continue;
        }
        let name = file_name(&p);
        if name != "expect.yaml" && golden_kind(name).is_none() {
            inputs::collect(&p, false, out, &mut walk.warnings, &mut walk.seen_dirs)
                .map_err(|d| d.to_string())?;
        }
    }
    Ok(())
}

/// State of a walk over a case's manifests.
#[derive(Default)]
struct Walk {
    warnings: Vec<policy_compiler::Diagnostic>,
    seen_dirs: BTreeSet<(u64, u64)>,
}

fn failed(kind: &'static str, what: impl Into<String>, report: impl Into<String>) -> Check {
    Check {
        kind,
        what: what.into(),
        status: Status::Failed,
        report: report.into(),
    }
}

fn passed(kind: &'static str, what: impl Into<String>) -> Check {
    Check {
        kind,
        what: what.into(),
        status: Status::Passed,
        report: String::new(),
    }
}

/// Compiles and checks one case directory (against `live` cluster state instead of its
/// manifests when given).
pub(crate) fn run_case(root: &Path, dir: &Path, update: bool, live: Option<&Inputs>) -> CaseReport {
    let name = match dir.strip_prefix(root) {
        Ok(p) if p.as_os_str().is_empty() => ".".to_string(),
        Ok(p) => p.display().to_string(),
        Err(_) => dir.display().to_string(),
    };
    let mut report = CaseReport {
        name,
        path: dir.display().to_string(),
        passed: false,
        checks: Vec::new(),
        warnings: Vec::new(),
    };
    check_case(dir, update, live, &mut report);
    report.passed = report.checks.iter().all(|c| c.status != Status::Failed);
    report
}

/// The case's manifests, loaded: inputs, load diagnostics and the number of files.
fn case_inputs(dir: &Path) -> Result<(Inputs, Vec<policy_compiler::Diagnostic>, usize), String> {
    let mut files = Vec::new();
    let mut walk = Walk::default();
    if let Ok(m) = std::fs::metadata(dir) {
        walk.seen_dirs.insert((m.dev(), m.ino()));
    }
    manifests(dir, true, &mut files, &mut walk)?;
    if files.is_empty() {
        return Err("no manifest (*.yaml, *.yml, *.json) in the case directory".to_owned());
    }
    let sources = Sources::read(&files, Limits::default()).map_err(|diags| {
        diags
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let (inputs, mut diags) = load(&sources.texts());
    diags.extend(walk.warnings);
    Ok((inputs, diags, files.len()))
}

fn check_case(dir: &Path, update: bool, live: Option<&Inputs>, report: &mut CaseReport) {
    let (inputs, mut diags, what) = match live {
        Some(inputs) => (inputs.clone(), Vec::new(), "live cluster".to_owned()),
        None => match case_inputs(dir) {
            Ok((inputs, diags, n)) => (inputs, diags, format!("{n} manifest file(s)")),
            Err(e) => {
                report.checks.push(failed("manifests", "manifests", e));
                return;
            }
        },
    };
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    diags.sort_by_key(|d| (d.file.clone(), d.line, d.column));
    let (errors, warnings): (Vec<_>, Vec<_>) = diags.iter().partition(|d| d.is_error());
    report.warnings = warnings.iter().map(ToString::to_string).collect();
    if !errors.is_empty() {
        let mut r = format!(
            "{} invalid input(s): nothing else in this case was checked\n",
            errors.len()
        );
        for e in errors {
            let _ = writeln!(r, "{e}");
        }
        report.checks.push(failed("manifests", "manifests", r));
        return;
    }
    report.checks.push(passed("manifests", what));
    let graph = AllowGraph::build(&model);

    // expect.yaml.
    let expect_path = dir.join("expect.yaml");
    let mut expectations = None;
    if expect_path.is_file() {
        match std::fs::read_to_string(&expect_path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| parse_expectations_in(&expect_path.display().to_string(), &t))
        {
            Err(e) => report.checks.push(failed("expect", "expect.yaml", e)),
            // A case that checks nothing would pass whatever the manifests say. See: #11
            Ok(exp) if exp.assertions.is_empty() && exp.matrix.is_empty() => {
                report.checks.push(failed(
                    "expect",
                    "expect.yaml",
                    "expect.yaml has no checks: add `assertions` or `matrix` (an empty expect.yaml would pass whatever the policies say)",
                ));
            }
            Ok(exp) => {
                let total = exp.assertions.len() + exp.matrix.len();
                let failures = check(&model, &graph, &exp);
                let ok = total.saturating_sub(failures.len());
                for f in failures {
                    report.checks.push(failed("expect", f.what, f.report));
                }
                if ok > 0 {
                    report.checks.push(passed(
                        "expect",
                        format!("expect.yaml: {ok} of {total} expectation(s) hold"),
                    ));
                }
                expectations = Some(exp);
            }
        }
    }

    // Goldens.
    let outputs = Outputs {
        model: &model,
        graph: &graph,
        expectations: expectations.as_ref(),
    };
    let existing: Vec<PathBuf> = match entries(dir) {
        Ok(e) => e.into_iter().filter(|p| p.is_file()).collect(),
        Err(e) => {
            report.checks.push(failed("golden", "goldens", e));
            return;
        }
    };
    let mut present = BTreeSet::new();
    for path in existing {
        let fname = file_name(&path).to_string();
        let Some(kind) = golden_kind(&fname) else {
            continue;
        };
        present.insert(fname.clone());
        report
            .checks
            .push(check_golden(kind, &outputs, &path, &fname, update));
    }
    if update {
        for kind in GOLDEN_KINDS {
            for fname in (kind.implied)(&outputs) {
                if present.contains(&fname) {
                    continue;
                }
                let path = dir.join(&fname);
                report
                    .checks
                    .push(check_golden(kind, &outputs, &path, &fname, true));
            }
        }
    }
}

fn check_golden(
    kind: &'static GoldenKind,
    outputs: &Outputs<'_>,
    path: &Path,
    fname: &str,
    update: bool,
) -> Check {
    let want = match (kind.render)(outputs, fname) {
        Ok(w) => w,
        Err(e) => return failed(kind.name, fname, e),
    };
    let have = match std::fs::read(path) {
        Ok(h) => Some(h),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return failed(kind.name, fname, format!("cannot read: {e}")),
    };
    if have.as_deref() == Some(want.as_bytes()) {
        return passed(kind.name, fname);
    }
    if update {
        return match std::fs::write(path, &want) {
            Ok(()) => Check {
                kind: kind.name,
                what: fname.to_string(),
                status: Status::Updated,
                report: if have.is_some() {
                    "rewritten".into()
                } else {
                    "created".into()
                },
            },
            Err(e) => failed(kind.name, fname, format!("cannot write: {e}")),
        };
    }
    let old = have.unwrap_or_default();
    failed(kind.name, fname, golden_diff(fname, &old, &want))
}

/// A unified diff from the golden file to the actual output.
pub(crate) fn golden_diff(fname: &str, golden: &[u8], actual: &str) -> String {
    let hint =
        "(run `netpol test --update` to accept the actual output, then review with `git diff`)";
    match std::str::from_utf8(golden) {
        Ok(old) => {
            let diff = TextDiff::from_lines(old, actual);
            let text = diff
                .unified_diff()
                .context_radius(3)
                .header(&format!("{fname} (golden)"), &format!("{fname} (actual)"))
                .to_string();
            format!("golden differs from the actual output {hint}\n{text}")
        }
        Err(_) => format!("golden is not UTF-8 text {hint}; actual output:\n{actual}"),
    }
}

fn indent(out: &mut String, text: &str, by: &str) {
    for line in text.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{by}{line}");
        }
    }
}

/// The human readable report of one case.
fn text_report(c: &CaseReport) -> String {
    let mut s = String::new();
    let status = if c.passed { "ok  " } else { "FAIL" };
    let _ = writeln!(s, "{status} {}", c.path);
    for w in &c.warnings {
        let _ = writeln!(s, "  {w}");
    }
    for k in &c.checks {
        match k.status {
            Status::Passed => {}
            Status::Updated => {
                let _ = writeln!(s, "  updated {} ({})", k.what, k.report);
            }
            Status::Failed => {
                let _ = writeln!(s, "  {}", k.what);
                indent(&mut s, &k.report, "    ");
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_golden_names_round_trip() {
        for p in Protocol::ALL {
            let n = matrix_name(p, 80);
            assert!(owns_matrix(&n));
            assert_eq!(parse_matrix_name(&n), Ok((p, 80)));
        }
        assert_eq!(matrix_name(Protocol::Udp, 53), "matrix-udp-53.txt");
    }

    #[test]
    fn non_canonical_matrix_names_are_rejected() {
        for bad in [
            "matrix-TCP-80.txt",
            "matrix-tcp-080.txt",
            "matrix-tcp-99999.txt",
            "matrix-tcp.txt",
            "matrix-icmp-1.txt",
            "matrix-tcp-80-x.txt",
        ] {
            assert!(owns_matrix(bad), "{bad}");
            assert!(parse_matrix_name(bad).is_err(), "{bad}");
        }
        assert!(!owns_matrix("matrix.yaml"));
        assert!(golden_kind("policies.yaml").is_none());
    }

    #[test]
    fn diff_is_unified_and_names_the_file() {
        let d = golden_diff("matrix-tcp-80.txt", b"a\nb\nc\n", "a\nB\nc\n");
        assert!(d.contains("--- matrix-tcp-80.txt (golden)"), "{d}");
        assert!(d.contains("+++ matrix-tcp-80.txt (actual)"), "{d}");
        assert!(d.contains("-b\n+B\n"), "{d}");
        let nl = golden_diff("f", b"a", "a\n");
        assert!(nl.contains("No newline"), "{nl}");
    }
}
