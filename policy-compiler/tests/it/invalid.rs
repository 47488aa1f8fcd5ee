//! Invalid input, data-driven: each `testdata/invalid/<name>.{yaml,json}` must produce
//! exactly the diagnostics in `<name>.diagnostics` (file:line:col, object, field, value,
//! message), and must leave the invalid objects out of the model.
//! Regenerate with `UPDATE_EXPECT=1` and review with `git diff`.

use crate::support::{compile_files, repo_root};

#[test]
fn invalid_inputs_give_exact_diagnostics() {
    let dir = repo_root().join("testdata/invalid");
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("yaml" | "json")
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 10);
    let mut stale = Vec::new();
    for f in files {
        let (model, _, diags) = compile_files(std::slice::from_ref(&f));
        assert!(
            diags.iter().any(|d| d.is_error()),
            "{}: expected errors",
            f.display()
        );
        // Policies with any error are never half-kept.
        for p in &model.policies {
            assert!(
                !diags.iter().any(|d| d
                    .object
                    .as_ref()
                    .is_some_and(|o| o.kind == "NetworkPolicy" && o.name == p.name)),
                "{}: invalid policy {} kept",
                f.display(),
                p.key()
            );
        }
        for p in &model.cluster_policies {
            assert!(
                !diags.iter().any(|d| d.is_error()
                    && d.object
                        .as_ref()
                        .is_some_and(|o| o.kind == "ClusterNetworkPolicy" && o.name == p.name)),
                "{}: invalid ClusterNetworkPolicy {} kept",
                f.display(),
                p.name
            );
        }
        let root = repo_root();
        let text: String = diags
            .iter()
            .map(|d| {
                let mut d = d.clone();
                d.file = d.file.map(|p| {
                    std::path::Path::new(&p)
                        .strip_prefix(&root)
                        .map(|r| r.display().to_string())
                        .unwrap_or(p)
                });
                format!("{d}\n")
            })
            .collect();
        let golden = f.with_extension("diagnostics");
        if std::fs::read_to_string(&golden).unwrap_or_default() != text {
            if update {
                std::fs::write(&golden, &text).unwrap();
            } else {
                stale.push(format!("{}:\n{text}", golden.display()));
            }
        }
    }
    assert!(
        stale.is_empty(),
        "diagnostics differ:\n{}",
        stale.join("\n")
    );
}
