//! Reading `-f PATH...` (or, with `--cluster`, the live cluster) into a compiled model,
//! and printing diagnostics.

mod files;

use std::collections::BTreeSet;
use std::path::PathBuf;

use miette::{LabeledSpan, NamedSource, Report};
use policy_compiler::{AllowGraph, Diagnostic, Inputs, Model, Severity, SourceText, load};

pub(crate) use files::{DEFAULT_MAX_INPUT_MIB, Limits, collect};

use crate::InputArgs;

/// Exit code for invalid input.
pub(crate) const EXIT_INVALID: i32 = 2;

/// Files read, by display name, and the warnings of reading them.
pub(crate) struct Sources {
    files: Vec<(String, String)>,
    /// Endpoints files (`--endpoints`): declared endpoints, not manifests.
    endpoint_files: Vec<(String, String)>,
    /// Skipped paths (dangling symlinks, directories reached twice).
    pub(crate) warnings: Vec<Diagnostic>,
}

impl Sources {
    /// Reads files, directories (recursively: `*.yaml`, `*.yml`, `*.json`, sorted) and `-`,
    /// regular files only and within `limits` (see [`files`]).
    pub(crate) fn read(paths: &[PathBuf], limits: Limits) -> Result<Sources, Vec<Diagnostic>> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut seen_dirs = BTreeSet::new();
        let mut budget = limits.total;
        for p in paths {
            if p.as_os_str() == "-" {
                match files::read_stdin(limits, &mut budget) {
                    Ok(s) => files.push(("-".to_string(), s)),
                    Err(e) => errors.push(Diagnostic::file_error(
                        "-",
                        None,
                        format!("cannot read stdin: {e}"),
                    )),
                }
                continue;
            }
            let mut found = Vec::new();
            if let Err(e) = files::collect(p, true, &mut found, &mut warnings, &mut seen_dirs) {
                errors.push(*e);
                continue;
            }
            for f in found {
                let name = f.display().to_string();
                match files::read_regular(&f, limits, &mut budget) {
                    Ok(s) => files.push((name, s)),
                    Err(e) => errors.push(Diagnostic::file_error(&name, None, e)),
                }
            }
        }
        if errors.is_empty() {
            Ok(Sources {
                files,
                endpoint_files: Vec::new(),
                warnings,
            })
        } else {
            errors.extend(warnings);
            Err(errors)
        }
    }

    /// The texts as compiler sources.
    pub(crate) fn texts(&self) -> Vec<SourceText<'_>> {
        self.files
            .iter()
            .map(|(name, text)| SourceText { name, text })
            .collect()
    }

    fn text_of(&self, name: &str) -> Option<&str> {
        self.files
            .iter()
            .chain(&self.endpoint_files)
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }

    /// Reads endpoints files (`--endpoints FILE`, regular files within `limits`); on
    /// failure prints the diagnostics and returns `Err(2)`.
    pub(crate) fn read_endpoints(
        mut self,
        paths: &[PathBuf],
        limits: Limits,
    ) -> Result<Sources, i32> {
        let mut budget = limits.total;
        let mut errors = Vec::new();
        for p in paths {
            let name = p.display().to_string();
            match files::read_regular(p, limits, &mut budget) {
                Ok(t) => self.endpoint_files.push((name, t)),
                Err(e) => errors.push(Diagnostic::file_error(&name, None, e)),
            }
        }
        if errors.is_empty() {
            Ok(self)
        } else {
            print_diagnostics(&errors, None);
            Err(EXIT_INVALID)
        }
    }

    /// Adds the declared endpoints of the endpoints files to `inputs`; returns the
    /// diagnostics of parsing them. See: #14
    pub(crate) fn declare(&self, inputs: &mut Inputs) -> Vec<Diagnostic> {
        let mut diags = Vec::new();
        for (name, text) in &self.endpoint_files {
            let (eps, d) = policy_compiler::declared::parse_declared(name, text);
            inputs.declared.extend(eps);
            diags.extend(d);
        }
        diags
    }

    /// Only the endpoints files (for inputs that are not files: `--cluster`).
    pub(crate) fn endpoints_only(paths: &[PathBuf], limits: Limits) -> Result<Sources, i32> {
        Sources {
            files: Vec::new(),
            endpoint_files: Vec::new(),
            warnings: Vec::new(),
        }
        .read_endpoints(paths, limits)
    }
}

/// A compiled cluster.
pub(crate) struct Compiled {
    /// The model.
    pub(crate) model: Model,
    /// Its allow graph.
    pub(crate) graph: AllowGraph,
    /// Objects of other policy engines in the input (`apiVersion Kind ns/name`): answers
    /// may differ in the cluster.
    pub(crate) unevaluated: Vec<String>,
}

impl Compiled {
    /// What answers should say when the input holds policies netpol does not evaluate.
    pub(crate) fn caveats(&self) -> Vec<String> {
        if self.unevaluated.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "the input holds {} polic{} netpol does not evaluate ({}): the answer may differ in the cluster",
            self.unevaluated.len(),
            if self.unevaluated.len() == 1 {
                "y"
            } else {
                "ies"
            },
            self.unevaluated.join(", ")
        )]
    }
}

/// Reads, loads and compiles; on any error prints the diagnostics and returns `Err(2)`.
/// Warnings are printed and compilation goes on. With `verbose`, skipped objects are listed.
/// `endpoints` are endpoints files (`--endpoints`).
pub(crate) fn compile(
    paths: &[PathBuf],
    endpoints: &[PathBuf],
    verbose: bool,
    limits: Limits,
) -> Result<Compiled, i32> {
    load_and_compile(paths, endpoints, verbose, limits).map(|(inputs, c)| {
        // Commands compile once and exit: the parsed objects are not needed after the
        // model is built, and freeing them object by object (about 2% of `netpol list`
        // at 1,000 Pods) would only delay the answer; the process returns the memory.
        // See: #14
        std::mem::forget(inputs);
        c
    })
}

/// Like [`compile`], also returning the loaded objects (for `lab`, which adds to them).
pub(crate) fn load_and_compile(
    paths: &[PathBuf],
    endpoints: &[PathBuf],
    verbose: bool,
    limits: Limits,
) -> Result<(Inputs, Compiled), i32> {
    let sources = match Sources::read(paths, limits) {
        Ok(s) => s,
        Err(diags) => {
            print_diagnostics(&diags, None);
            return Err(EXIT_INVALID);
        }
    };
    if paths.is_empty() {
        eprintln!(
            "error: no input: give manifests with -f PATH (files, directories or - for stdin)"
        );
        return Err(EXIT_INVALID);
    }
    let sources = sources.read_endpoints(endpoints, limits)?;
    compile_sources(&sources, verbose)
}

fn compile_sources(sources: &Sources, verbose: bool) -> Result<(Inputs, Compiled), i32> {
    report(sources, build(sources), verbose)
}

/// Sources compiled, nothing printed yet (so that two versions can be compiled on two
/// threads and reported in a fixed order: `diff`).
struct Built {
    inputs: Inputs,
    diags: Vec<Diagnostic>,
    model: Model,
    /// `None` when a diagnostic is an error.
    graph: Option<AllowGraph>,
}

fn build(sources: &Sources) -> Built {
    let (mut inputs, mut load_diags) = load(&sources.texts());
    let mut diags = sources.warnings.clone();
    diags.append(&mut load_diags);
    diags.extend(sources.declare(&mut inputs));
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    let graph =
        (!policy_compiler::diagnostic::has_errors(&diags)).then(|| AllowGraph::build(&model));
    Built {
        inputs,
        diags,
        model,
        graph,
    }
}

/// Prints what [`build`] found; `Err(2)` on any error.
fn report(sources: &Sources, b: Built, verbose: bool) -> Result<(Inputs, Compiled), i32> {
    if verbose {
        for s in &b.inputs.skipped {
            eprintln!("skipped {s}: kind does not affect Pod-to-Pod connectivity");
        }
    }
    print_diagnostics(&b.diags, Some(sources));
    let Some(graph) = b.graph else {
        let n = b.diags.iter().filter(|d| d.is_error()).count();
        eprintln!("error: {n} invalid input(s): nothing was compiled");
        return Err(EXIT_INVALID);
    };
    let unevaluated = b
        .inputs
        .unevaluated
        .iter()
        .map(ToString::to_string)
        .collect();
    Ok((
        b.inputs,
        Compiled {
            model: b.model,
            graph,
            unevaluated,
        },
    ))
}

/// Reads `-f` paths and endpoints files without compiling them (see [`compile_two`]).
pub(crate) fn read(
    paths: &[PathBuf],
    endpoints: &[PathBuf],
    limits: Limits,
) -> Result<Sources, i32> {
    let sources = match Sources::read(paths, limits) {
        Ok(s) => s,
        Err(diags) => {
            print_diagnostics(&diags, None);
            return Err(EXIT_INVALID);
        }
    };
    if paths.is_empty() {
        eprintln!(
            "error: no input: give manifests with -f PATH (files, directories or - for stdin)"
        );
        return Err(EXIT_INVALID);
    }
    sources.read_endpoints(endpoints, limits)
}

/// Texts read elsewhere (`diff --base`: a git revision) as sources, with endpoints files.
pub(crate) fn texts(
    files: Vec<(String, String)>,
    endpoints: &[PathBuf],
    limits: Limits,
) -> Result<Sources, i32> {
    Sources {
        files,
        endpoint_files: Vec::new(),
        warnings: Vec::new(),
    }
    .read_endpoints(endpoints, limits)
}

/// Compiles two versions on two threads (the machine's cores: `diff` of two 10k-Pod
/// clusters spends most of its time here), then prints their diagnostics in order,
/// `a`'s first, exactly as two [`compile`] calls would. See: #14
pub(crate) fn compile_two(
    a: &Sources,
    b: &Sources,
    verbose: bool,
) -> (Result<Compiled, i32>, Result<Compiled, i32>) {
    let (ba, bb) = std::thread::scope(|s| {
        let h = s.spawn(|| build(a));
        let bb = build(b);
        // The compiler never panics on input; a panic is a bug, passed on as is.
        let ba = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
        (ba, bb)
    });
    let ra = report(a, ba, verbose).map(|(_, c)| c);
    let rb = report(b, bb, verbose).map(|(_, c)| c);
    (ra, rb)
}

/// [`compile`] of `-f` paths or, with `--cluster`, of the live cluster.
pub(crate) fn compile_input(input: &InputArgs) -> Result<Compiled, i32> {
    let limits = Limits::mib(input.max_input_mib);
    if input.cluster {
        let sources = Sources::endpoints_only(&input.endpoints, limits)?;
        let mut inputs = live(input.context.as_deref())?;
        let diags = sources.declare(&mut inputs);
        compile_inputs(&inputs, diags, Some(&sources))
    } else {
        compile(&input.files, &input.endpoints, input.verbose, limits)
    }
}

/// Lists the live cluster through the kubeconfig (`$KUBECONFIG` or `~/.kube/config`,
/// `context` or the current one); prints the warnings of listing it (other engines'
/// policies: see `enforcer::kube::foreign`), or the error and returns `Err(2)` on failure.
pub(crate) fn live(context: Option<&str>) -> Result<Inputs, i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the tokio runtime: {e}");
            EXIT_INVALID
        })?;
    let (inputs, warnings) = rt
        .block_on(async {
            let client = enforcer::kube::client(None, context).await?;
            enforcer::kube::snapshot::snapshot(&client).await
        })
        .map_err(|e| {
            let mut msg = format!("error: cannot read the cluster: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(&format!(": {s}"));
                source = s.source();
            }
            eprintln!("{msg}");
            EXIT_INVALID
        })?;
    print_diagnostics(&warnings, None);
    Ok(inputs)
}

/// Builds the model of objects that did not come from files (no source snippets).
pub(crate) fn compile_inputs(
    inputs: &Inputs,
    mut diags: Vec<Diagnostic>,
    sources: Option<&Sources>,
) -> Result<Compiled, i32> {
    let (model, d) = Model::build(inputs);
    diags.extend(d);
    print_diagnostics(&diags, sources);
    if policy_compiler::diagnostic::has_errors(&diags) {
        let n = diags.iter().filter(|d| d.is_error()).count();
        eprintln!("error: {n} invalid input(s): nothing was compiled");
        return Err(EXIT_INVALID);
    }
    let graph = AllowGraph::build(&model);
    let unevaluated = inputs.unevaluated.iter().map(ToString::to_string).collect();
    Ok(Compiled {
        model,
        graph,
        unevaluated,
    })
}

/// Prints diagnostics to stderr, with a source snippet where the position is known.
pub(crate) fn print_diagnostics(diags: &[Diagnostic], sources: Option<&Sources>) {
    // Sorted by file and position for stable output.
    let mut sorted: Vec<&Diagnostic> = diags.iter().collect();
    sorted.sort_by_key(|d| (d.file.clone(), d.line, d.column));
    for d in sorted {
        let text = match (sources, &d.file) {
            (Some(s), Some(f)) => s.text_of(f),
            _ => None,
        };
        eprintln!("{}", render_diagnostic(d, text));
    }
}

/// Longest source line shown as a miette snippet. Longer lines (one-line JSON from
/// `kubectl get -o json | jq -c`, minified manifests) get a short excerpt around the
/// column instead: miette cannot render columns past 65535 (it panics), and a snippet of a
/// megabyte-long line helps nobody. See: #11
const MAX_SNIPPET_LINE: usize = 400;

/// Characters of a long line shown on each side of the column.
const EXCERPT_RADIUS: usize = 40;

/// One diagnostic as printed: a miette report with a source snippet when `text` (the
/// diagnostic's file) holds its position on a line of at most [`MAX_SNIPPET_LINE`] bytes,
/// else the one-line form plus, when the position is in `text`, an excerpt of the line.
/// Never panics, whatever the line and column.
pub(crate) fn render_diagnostic(d: &Diagnostic, text: Option<&str>) -> String {
    let located = match (text, d.line, d.column) {
        (Some(t), Some(l), Some(c)) => line_at(t, l).map(|(start, line)| (t, start, line, c)),
        _ => None,
    };
    let Some((text, start, line, col)) = located else {
        return d.to_string();
    };
    let line = line.trim_end_matches(['\n', '\r']);
    let col = (col as usize).saturating_sub(1);
    if line.len() > MAX_SNIPPET_LINE {
        let chars: Vec<char> = line.chars().collect();
        let at = col.min(chars.len());
        let from = at.saturating_sub(EXCERPT_RADIUS);
        let to = at.saturating_add(EXCERPT_RADIUS).min(chars.len());
        let excerpt: String = chars[from..to].iter().collect();
        let before = if from > 0 { "…" } else { "" };
        let after = if to < chars.len() { "…" } else { "" };
        return format!(
            "{d}\n  near: {before}{excerpt}{after}\n        {}^",
            " ".repeat(before.chars().count() + (at - from))
        );
    }
    let off = start + line.chars().take(col).map(char::len_utf8).sum::<usize>();
    let label = d.field.clone().unwrap_or_else(|| "here".into());
    let sev = match d.severity {
        Severity::Error => miette::Severity::Error,
        Severity::Warning => miette::Severity::Warning,
    };
    let report = Report::from(
        miette::MietteDiagnostic::new(d.to_string())
            .with_severity(sev)
            .with_label(LabeledSpan::at_offset(off, label)),
    )
    .with_source_code(NamedSource::new(
        d.file.clone().unwrap_or_default(),
        text.to_string(),
    ));
    format!("{report:?}")
}

/// The byte offset and text (with its line break) of 1-based line `line`.
fn line_at(text: &str, line: u32) -> Option<(usize, &str)> {
    let mut off = 0usize;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            return Some((off, l));
        }
        off += l.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag(line: u32, column: u32) -> Diagnostic {
        let mut d = Diagnostic::file_error("f.json", None, "something is off");
        d.line = Some(line);
        d.column = Some(column);
        d
    }

    #[test]
    fn long_line_diagnostic_never_panics() {
        // See: #11 (a diagnostic past column 65535 panicked miette: exit 101).
        let long = format!("{{\"a\": \"{}\", \"b\": 1}}\n", "x".repeat(200_000));
        for col in [1, 70_000, 200_005, u32::MAX] {
            for d in [diag(1, col), diag(1, col).warning()] {
                let out = render_diagnostic(&d, Some(&long));
                assert!(out.contains("f.json:1:"), "{out}");
                assert!(out.len() < 1_000, "an excerpt, not the whole line");
            }
        }
        let near = render_diagnostic(&diag(1, 200_005), Some(&long));
        assert!(near.contains("near: …xxx"), "{near}");
        assert!(near.contains("\"b\""), "{near}");
    }

    #[test]
    fn any_position_renders() {
        let text = "a: 1\n\tb: é\r\n\nc: \u{1F600}\u{1F600}\n";
        for line in [0, 1, 2, 3, 4, 5, 99, u32::MAX] {
            for col in [0, 1, 2, 3, 5, 8, 400, 65_536, u32::MAX] {
                let out = render_diagnostic(&diag(line, col), Some(text));
                assert!(out.contains("something is off"), "{out}");
            }
        }
        assert!(render_diagnostic(&diag(1, 1), Some("")).contains("something is off"));
    }

    #[test]
    fn short_lines_get_a_snippet() {
        let out = render_diagnostic(&diag(2, 3), Some("a: 1\nbb: 2\n"));
        assert!(out.contains("bb: 2"), "{out}");
    }
}
