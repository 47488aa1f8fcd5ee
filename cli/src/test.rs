//! `netpol test DIR...`: golden-file policy tests, for users' CI.
//!
//! A *case* is a directory that holds `expect.yaml` or at least one golden file. Its
//! manifests are every `*.yaml`, `*.yml` and `*.json` in it except `expect.yaml` and the
//! goldens, including files in subdirectories that are not cases themselves. Cases are
//! found recursively under each DIR (hidden directories are skipped); a case may contain
//! further cases. The rule is [`policy_compiler::case`], shared with the test suites.
//!
//! Per case: compile the manifests (any error diagnostic fails the case, and nothing else
//! of it is checked), check `expect.yaml` ([`policy_compiler::expect`]), and compare every
//! golden file byte for byte with what netpol prints now. `--update` rewrites goldens that
//! differ and creates the goldens that `expect.yaml` implies (one matrix golden per matrix
//! expectation); it never edits `expect.yaml`.
//!
//! Goldens are a table of kinds, [`golden::GOLDEN_KINDS`]: `matrix-<proto>-<port>.txt` is
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
//!
//! Modules: [`case`] (what a case and its manifests are), [`golden`] (golden kinds and
//! checking one golden), [`report`] (results as text and JSON), [`junit`] (JUnit XML);
//! this file has the arguments and runs the cases.

mod case;
mod golden;
mod junit;
mod report;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::ValueEnum;
use policy_compiler::expect::{check, parse_expectations_in};
use policy_compiler::{AllowGraph, Inputs, Model};

use crate::inputs;
use case::{case_inputs, find_cases};
use golden::{GOLDEN_KINDS, Outputs, check_golden, golden_kind};
use policy_compiler::Diagnostic;
use policy_compiler::case::{Case, EXPECT_FILE};
use report::{CaseReport, JsonReport, Status, Suite, failed, passed, text_report};

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
    /// Endpoints declared by labels (Pods an operator creates), added to every case:
    /// a YAML file `endpoints: [{namespace, name, labels, ports, replicas}]`.
    #[arg(long = "endpoints", value_name = "FILE")]
    endpoints: Vec<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    Json,
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
        let mut found = match find_cases(dir) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("error: {e}");
                return inputs::EXIT_INVALID;
            }
        };
        // A case under two DIRs (`netpol test a a/b`) runs once, under the first.
        found.retain(|(c, _)| {
            seen.insert(std::fs::canonicalize(&c.dir).unwrap_or_else(|_| c.dir.clone()))
        });
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
    let declared = match inputs::Sources::endpoints_only(&args.endpoints, inputs::Limits::default())
    {
        Ok(s) => s,
        Err(code) => return code,
    };
    let mut suites = Vec::new();
    for (dir, cases) in plan {
        let mut reports = Vec::new();
        for (case, warnings) in cases {
            let report = run_case(dir, &case, &warnings, args.update, live.as_ref(), &declared);
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

/// Compiles and checks one case directory (against `live` cluster state instead of its
/// manifests when given).
pub(crate) fn run_case(
    root: &Path,
    case: &Case,
    warnings: &[Diagnostic],
    update: bool,
    live: Option<&Inputs>,
    declared: &inputs::Sources,
) -> CaseReport {
    let dir = case.dir.as_path();
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
    check_case(case, warnings, update, live, declared, &mut report);
    report.passed = report.checks.iter().all(|c| c.status != Status::Failed);
    report
}

fn check_case(
    case: &Case,
    warnings: &[Diagnostic],
    update: bool,
    live: Option<&Inputs>,
    declared: &inputs::Sources,
    report: &mut CaseReport,
) {
    let (mut inputs, mut diags, what) = match live {
        Some(inputs) => (inputs.clone(), Vec::new(), "live cluster".to_owned()),
        None => match case_inputs(case, warnings) {
            Ok((inputs, diags, n)) => (inputs, diags, format!("{n} manifest file(s)")),
            Err(e) => {
                report.checks.push(failed("manifests", "manifests", e));
                return;
            }
        },
    };
    diags.extend(declared.declare(&mut inputs));
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
    let mut expectations = None;
    if let Some(expect_path) = case.expect.as_ref().filter(|p| p.is_file()) {
        match std::fs::read_to_string(expect_path)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|t| parse_expectations_in(&expect_path.display().to_string(), &t))
        {
            Err(e) => report.checks.push(failed("expect", EXPECT_FILE, e)),
            // A case that checks nothing would pass whatever the manifests say. See: #11
            Ok(exp) if exp.assertions.is_empty() && exp.matrix.is_empty() => {
                report.checks.push(failed(
                    "expect",
                    EXPECT_FILE,
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
    let mut present = BTreeSet::new();
    // Regular files only: reading a FIFO would block.
    for path in case.goldens.iter().filter(|p| p.is_file()) {
        let fname = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(kind) = golden_kind(&fname) else {
            continue;
        };
        present.insert(fname.clone());
        report
            .checks
            .push(check_golden(kind, &outputs, path, &fname, update));
    }
    if update {
        for kind in GOLDEN_KINDS {
            for fname in (kind.implied)(&outputs) {
                if present.contains(&fname) {
                    continue;
                }
                let path = case.dir.join(&fname);
                report
                    .checks
                    .push(check_golden(kind, &outputs, &path, &fname, true));
            }
        }
    }
}
