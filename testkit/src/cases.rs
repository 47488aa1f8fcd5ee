//! Golden cases from testdata/cases (found by `policy_compiler::case`, the one definition
//! `netpol test` uses too), compiled for the kernel tests.

use std::path::{Path, PathBuf};

use policy_compiler::{AllowGraph, Model, SourceText, case, load};

/// Repository root (the workspace).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every case under `root` by the compiler's one definition of a case
/// ([`policy_compiler::case`], the same as `netpol test`'s), read from the filesystem;
/// each directory once (symlink loops).
pub fn discover(root: &Path) -> Vec<case::Case> {
    let mut seen = std::collections::BTreeSet::new();
    case::discover(root, |d| -> Result<_, std::io::Error> {
        if !seen.insert(std::fs::canonicalize(d)?) {
            return Ok(None);
        }
        let mut out = Vec::new();
        for e in std::fs::read_dir(d)? {
            let path = e?.path();
            let is_dir = path.is_dir();
            out.push(case::Entry { path, is_dir });
        }
        Ok(Some(out))
    })
    .unwrap_or_else(|e| panic!("{}: {e}", root.display()))
}

/// Every case directory of `testdata/cases`, sorted.
pub fn case_dirs() -> Vec<PathBuf> {
    discover(&repo_root().join("testdata/cases"))
        .into_iter()
        .map(|c| c.dir)
        .collect()
}

/// The manifests of the case at `dir` (not those of cases nested in it), sorted.
pub fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    discover(dir)
        .into_iter()
        .find(|c| c.dir == dir)
        .unwrap_or_else(|| panic!("{}: not a case directory", dir.display()))
        .manifests
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

/// Loads and compiles the manifests of a case ([`manifest_files`]).
pub fn compile(dir: &Path) -> Case {
    compile_with(dir, &[])
}

/// [`compile`] with extra manifests `(name, text)` loaded after the case's files (the
/// kernel proof adds per-Pod Services this way).
pub fn compile_with(dir: &Path, extra: &[(String, String)]) -> Case {
    let files = manifest_files(dir);
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
