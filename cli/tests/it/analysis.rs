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

// SARIF 2.1.0 as GitHub code scanning reads it: the schema's required properties
// (sarifLog: version, runs; run: tool; tool: driver; toolComponent: name; result:
// message; reportingDescriptor: id) and a physical location with a region per result.
#[test]
fn sarif_has_the_required_fields_and_locations() {
    let run = netpol(&[
        "lint",
        "-f",
        "testdata/analysis/manifests/lint.yaml",
        "-o",
        "sarif",
    ]);
    run.expect_code(1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    let driver = &runs[0]["tool"]["driver"];
    assert_eq!(driver["name"], "netpol");
    let rules = driver["rules"].as_array().unwrap();
    let ids: Vec<&str> = rules.iter().map(|r| r["id"].as_str().unwrap()).collect();
    let results = runs[0]["results"].as_array().unwrap();
    assert!(results.len() >= 8, "{results:?}");
    for r in results {
        let id = r["ruleId"].as_str().unwrap();
        let index = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(ids[index], id);
        assert!(!r["message"]["text"].as_str().unwrap().is_empty());
        assert!(matches!(r["level"].as_str(), Some("warning" | "note")));
        let loc = &r["locations"][0]["physicalLocation"];
        assert_eq!(
            loc["artifactLocation"]["uri"],
            "testdata/analysis/manifests/lint.yaml"
        );
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(loc["region"]["startColumn"].as_u64().unwrap() >= 1);
    }
    // Every check of the fixture fires.
    for id in [
        "NP001", "NP002", "NP003", "NP004", "NP005", "NP006", "NP007", "NP008",
    ] {
        assert!(results.iter().any(|r| r["ruleId"] == id), "{id} missing");
    }
}
