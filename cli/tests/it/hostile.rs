//! Hostile input to the `netpol` binary: every class of input found by the hostile-input
//! campaign of #11 has a test named after it. No input may panic (exit 101) or hang.

use std::path::Path;

use tempfile::TempDir;

use crate::support::netpol_in;

fn tmp() -> TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// A one-line JSON `List` of `n` Pods (`kubectl get -o json | jq -c`), plus `extra` items.
fn one_line_list(n: usize, extra: &[serde_json::Value]) -> String {
    let mut items: Vec<serde_json::Value> = (0..n)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("p{i}"), "namespace": "x", "labels": {"app": "a".repeat(40)}},
                "spec": {"containers": [{"name": "c", "image": "i"}]},
                "status": {"podIP": format!("10.0.{}.{}", i / 250, i % 250 + 1)},
            })
        })
        .collect();
    items.extend(extra.iter().cloned());
    serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

#[test]
fn long_line_diagnostic_never_panics() {
    // See: #11 (a diagnostic past column 65535 panicked the printer with exit 101, even a
    // warning on valid single-line JSON).
    let t = tmp();
    // A warning (duplicate Pod IP) far along one line: still answers.
    let dup = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "dup", "namespace": "x"},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"podIP": "10.0.0.1"},
    });
    let text = one_line_list(600, &[dup]);
    assert!(text.len() > 70_000 && !text.contains('\n'));
    let f = write(t.path(), "warn.json", &text);
    let run = netpol_in(t.path(), &["explain", "x/p0", "x/p1", "-f", &f]);
    run.expect_code(0);
    assert!(run.stderr.contains("warning"), "{}", run.stderr);
    assert!(run.stderr.contains("near: …"), "{}", run.stderr);
    assert!(run.stderr.len() < 2_000, "an excerpt, not the line");

    // An error there: exit 2, with file:line:col.
    let bad = serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bad", "namespace": "x"},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}]}]},
    });
    let f = write(t.path(), "err.json", &one_line_list(600, &[bad]));
    let run = netpol_in(t.path(), &["matrix", "-f", &f]);
    run.expect_code(2);
    assert!(run.stderr.contains("err.json:1:"), "{}", run.stderr);
    assert!(run.stderr.contains("strict subset"), "{}", run.stderr);
}
