//! Reading `-f PATH...` (or, with `--cluster`, the live cluster) into a compiled model,
//! and printing diagnostics.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use miette::{LabeledSpan, NamedSource, Report};
use policy_compiler::{AllowGraph, Diagnostic, Inputs, Model, Severity, SourceText, load};

use crate::InputArgs;

/// Exit code for invalid input.
pub(crate) const EXIT_INVALID: i32 = 2;

/// Files read, by display name.
pub(crate) struct Sources {
    files: Vec<(String, String)>,
}

impl Sources {
    /// Reads files, directories (recursively: `*.yaml`, `*.yml`, `*.json`, sorted) and `-`.
    pub(crate) fn read(paths: &[PathBuf]) -> Result<Sources, Vec<Diagnostic>> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            if p.as_os_str() == "-" {
                let mut s = String::new();
                match std::io::stdin().read_to_string(&mut s) {
                    Ok(_) => files.push(("-".to_string(), s)),
                    Err(e) => errors.push(Diagnostic::file_error(
                        "-",
                        None,
                        format!("cannot read stdin: {e}"),
                    )),
                }
                continue;
            }
            let mut found = Vec::new();
            if let Err(e) = collect(p, true, &mut found) {
                errors.push(Diagnostic::file_error(&p.display().to_string(), None, e));
                continue;
            }
            for f in found {
                let name = f.display().to_string();
                match std::fs::read_to_string(&f) {
                    Ok(s) => files.push((name, s)),
                    Err(e) => errors.push(Diagnostic::file_error(
                        &name,
                        None,
                        format!("cannot read file: {e}"),
                    )),
                }
            }
        }
        if errors.is_empty() {
            Ok(Sources { files })
        } else {
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
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }
}

fn collect(p: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read path: {e}"))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| format!("cannot read directory: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, false, out)?;
        }
    } else if explicit
        || matches!(
            p.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
    {
        out.push(p.to_path_buf());
    }
    Ok(())
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
pub(crate) fn compile(paths: &[PathBuf], verbose: bool) -> Result<Compiled, i32> {
    load_and_compile(paths, verbose).map(|(_, c)| c)
}

/// Like [`compile`], also returning the loaded objects (for `lab`, which adds to them).
pub(crate) fn load_and_compile(
    paths: &[PathBuf],
    verbose: bool,
) -> Result<(Inputs, Compiled), i32> {
    let sources = match Sources::read(paths) {
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
    compile_sources(&sources, verbose)
}

/// Compiles texts read elsewhere (`diff --base`: files of a git revision), by name.
pub(crate) fn compile_texts(files: Vec<(String, String)>, verbose: bool) -> Result<Compiled, i32> {
    compile_sources(&Sources { files }, verbose).map(|(_, c)| c)
}

fn compile_sources(sources: &Sources, verbose: bool) -> Result<(Inputs, Compiled), i32> {
    let (inputs, mut diags) = load(&sources.texts());
    if verbose {
        for s in &inputs.skipped {
            eprintln!("skipped {s}: kind does not affect Pod-to-Pod connectivity");
        }
    }
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    print_diagnostics(&diags, Some(sources));
    if policy_compiler::diagnostic::has_errors(&diags) {
        let n = diags.iter().filter(|d| d.is_error()).count();
        eprintln!("error: {n} invalid input(s): nothing was compiled");
        return Err(EXIT_INVALID);
    }
    let graph = AllowGraph::build(&model);
    let unevaluated = inputs.unevaluated.iter().map(ToString::to_string).collect();
    Ok((
        inputs,
        Compiled {
            model,
            graph,
            unevaluated,
        },
    ))
}

/// [`compile`] of `-f` paths or, with `--cluster`, of the live cluster.
pub(crate) fn compile_input(input: &InputArgs) -> Result<Compiled, i32> {
    if input.cluster {
        let inputs = live(input.context.as_deref())?;
        compile_inputs(&inputs, Vec::new(), None)
    } else {
        compile(&input.files, input.verbose)
    }
}

/// Lists the live cluster through the kubeconfig (`$KUBECONFIG` or `~/.kube/config`,
/// `context` or the current one); prints the error and returns `Err(2)` on failure.
pub(crate) fn live(context: Option<&str>) -> Result<Inputs, i32> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the tokio runtime: {e}");
            EXIT_INVALID
        })?;
    rt.block_on(async {
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
    })
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
        let snippet = match (sources, &d.file, d.line, d.column) {
            (Some(s), Some(f), Some(l), Some(c)) => {
                s.text_of(f).and_then(|t| offset(t, l, c).map(|o| (t, o)))
            }
            _ => None,
        };
        match snippet {
            Some((text, off)) => {
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
                eprintln!("{report:?}");
            }
            None => eprintln!("{d}"),
        }
    }
}

fn offset(text: &str, line: u32, col: u32) -> Option<usize> {
    let mut off = 0usize;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i + 1 == line as usize {
            let chars: usize = l
                .chars()
                .take((col as usize).saturating_sub(1))
                .map(char::len_utf8)
                .sum();
            return Some(off + chars);
        }
        off += l.len();
    }
    None
}
