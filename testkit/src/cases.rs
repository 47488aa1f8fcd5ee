//! Golden cases from testdata/cases, compiled for the kernel tests.

use std::path::{Path, PathBuf};

use policy_compiler::{AllowGraph, Model, SourceText, load};

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every case directory (holding `expect.yaml`), sorted.
pub fn case_dirs() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![repo_root().join("testdata/cases")];
    while let Some(d) = stack.pop() {
        if d.join("expect.yaml").is_file() {
            out.push(d);
            continue;
        }
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `upstream/pod-selector` for a case directory.
pub fn case_name(dir: &Path) -> String {
    dir.strip_prefix(repo_root().join("testdata/cases"))
        .unwrap()
        .display()
        .to_string()
}

/// A compiled case.
pub struct Case {
    pub name: String,
    pub model: Model,
    pub graph: AllowGraph,
}

/// Loads and compiles the manifests of a case (everything but `expect.yaml`).
pub fn compile(dir: &Path) -> Case {
    compile_with(dir, &[])
}

/// [`compile`] with extra manifests `(name, text)` loaded after the case's files (the
/// kernel proof adds per-Pod Services this way).
pub fn compile_with(dir: &Path, extra: &[(String, String)]) -> Case {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) && p.file_name().is_some_and(|n| n != "expect.yaml")
        })
        .collect();
    files.sort();
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap()))
        .chain(extra.iter().cloned())
        .collect();
    let sources: Vec<SourceText<'_>> = texts
        .iter()
        .map(|(n, t)| SourceText { name: n, text: t })
        .collect();
    let (inputs, mut diags) = load(&sources);
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    assert!(
        !diags.iter().any(|d| d.is_error()),
        "{}: {diags:?}",
        dir.display()
    );
    let graph = AllowGraph::build(&model);
    Case {
        name: case_name(dir),
        model,
        graph,
    }
}
