//! Shared helpers: loading a directory of manifests into a model.

use std::path::{Path, PathBuf};

use policy_compiler::{AllowGraph, Diagnostic, Model, SourceText, load};

/// Repository root (the workspace).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate is inside the workspace")
        .to_path_buf()
}

/// Manifest files of a directory, recursively, sorted, skipping `expect.yaml`.
pub(crate) fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) && p.file_name().is_some_and(|n| n != "expect.yaml")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Loads and compiles files; returns the model, graph and all diagnostics.
pub(crate) fn compile_files(files: &[PathBuf]) -> (Model, AllowGraph, Vec<Diagnostic>) {
    let texts: Vec<(String, String)> = files
        .iter()
        .map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap()))
        .collect();
    let sources: Vec<SourceText<'_>> = texts
        .iter()
        .map(|(n, t)| SourceText { name: n, text: t })
        .collect();
    let (inputs, mut diags) = load(&sources);
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    let graph = AllowGraph::build(&model);
    (model, graph, diags)
}
