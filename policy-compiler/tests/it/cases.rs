//! Every golden case under testdata/cases: manifests in, hand-derived expectations checked.

use std::path::{Path, PathBuf};

use policy_compiler::expect::{check, parse_expectations};

use crate::support::{cases, compile_files, manifest_files, repo_root};

/// Every case directory under `root`, sorted ([`crate::support::cases`]).
pub(crate) fn case_dirs(root: &Path) -> Vec<PathBuf> {
    cases(root).into_iter().map(|c| c.dir).collect()
}

#[test]
fn golden_cases_hold() {
    let root = repo_root().join("testdata/cases");
    let dirs = case_dirs(&root);
    assert!(
        dirs.len() >= 40,
        "expected the golden cases under {}",
        root.display()
    );
    let mut failed = Vec::new();
    let mut checked = 0;
    for dir in &dirs {
        let name = dir.strip_prefix(&root).unwrap().display().to_string();
        let (model, graph, diags) = compile_files(&manifest_files(dir));
        let errors: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(ToString::to_string)
            .collect();
        if !errors.is_empty() {
            failed.push(format!(
                "{name}: invalid manifests:\n  {}",
                errors.join("\n  ")
            ));
            continue;
        }
        let exp = parse_expectations(&std::fs::read_to_string(dir.join("expect.yaml")).unwrap())
            .unwrap_or_else(|e| panic!("{name}/expect.yaml: {e}"));
        checked += exp.assertions.len() + exp.matrix.len();
        for f in check(&model, &graph, &exp) {
            failed.push(format!("{name}: {}\n{}", f.what, f.report));
        }
    }
    println!("{} cases, {checked} expectations", dirs.len());
    assert!(
        failed.is_empty(),
        "{} failure(s):\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

/// Stage dumps (Model, AllowGraph) of every case, pinned as `stages.txt` beside the case.
/// Regenerate with `UPDATE_EXPECT=1 cargo test -p policy-compiler --test it`, review with
/// `git diff`.
#[test]
fn stage_dumps_are_stable() {
    let root = repo_root().join("testdata/cases");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut stale = Vec::new();
    for dir in case_dirs(&root) {
        let (model, graph, _) = compile_files(&manifest_files(&dir));
        let dump = format!(
            "# Model\n{}\n# AllowGraph\n{}",
            model.dump(),
            graph.dump(&model)
        );
        let path = dir.join("stages.txt");
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != dump {
            if update {
                std::fs::write(&path, &dump).unwrap();
            } else {
                stale.push(path.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "stage dumps differ (run with UPDATE_EXPECT=1 and review git diff): {stale:?}"
    );
}
