//! Shared helpers: loading a directory of manifests into a model.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use policy_compiler::case::{Case, Entry, discover};
use policy_compiler::{AllowGraph, Diagnostic, Model, SourceText, load};

/// Repository root (the workspace).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crate is inside the workspace")
        .to_path_buf()
}

/// Every case under `root`, by the compiler's one definition ([`policy_compiler::case`],
/// the same as `netpol test`'s and testkit's), read from the filesystem; each directory
/// once (symlink loops).
pub(crate) fn cases(root: &Path) -> Vec<Case> {
    let mut seen = BTreeSet::new();
    discover(root, |d| -> Result<_, std::io::Error> {
        if !seen.insert(std::fs::canonicalize(d)?) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(d)? {
            let path = e?.path();
            let is_dir = path.is_dir();
            out.push(Entry { path, is_dir });
        }
        Ok(Some(out))
    })
    .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

/// The manifests of the case at `dir` (not those of cases nested in it), sorted.
pub(crate) fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    cases(dir)
        .into_iter()
        .find(|c| c.dir == dir)
        .unwrap_or_else(|| panic!("{}: not a case directory", dir.display()))
        .manifests
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
