//! Golden tests of the analysis commands (`list`, `diff`, `matrix` filters, `explain`
//! options, `lint`): every directory of `testdata/analysis/` holding `cmd` (the
//! arguments, run from the repository root) pins `stdout`, `stderr` and `exit`.
//! `UPDATE_EXPECT=1 cargo test -p cli --test it analysis` rewrites them; review with
//! `git diff`.

use std::path::PathBuf;

use crate::support::{netpol, repo_root};

fn cases() -> Vec<PathBuf> {
    let root = repo_root().join("testdata/analysis");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("cmd").is_file())
        .collect();
    out.sort();
    out
}

#[test]
fn analysis_goldens_hold() {
    let cases = cases();
    assert!(
        cases.len() >= 20,
        "expected the cases under testdata/analysis"
    );
    let update = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failed = Vec::new();
    for dir in &cases {
        let cmd = std::fs::read_to_string(dir.join("cmd")).unwrap();
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let run = netpol(&args);
        let got = [
            ("stdout", run.stdout.clone()),
            ("stderr", run.stderr.clone()),
            ("exit", format!("{}\n", run.code)),
        ];
        for (file, text) in got {
            let path = dir.join(file);
            if update {
                std::fs::write(&path, &text).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap_or_default();
            if want != text {
                failed.push(format!(
                    "{}: {file} differs\n--- want\n{want}\n--- got\n{text}",
                    dir.display()
                ));
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
