//! `netpol explain SRC DST`: text and JSON shapes, errors, stdin.

use tempfile::TempDir;

use crate::support::{
    EXCEPT_OUTSIDE_CIDR, case, manifest_stream, manifests_of, netpol, netpol_stdin,
};

const CASE: &str = "upstream/port-81-only";

fn explain(args: &[&str]) -> crate::support::Run {
    let mut all: Vec<String> = ["explain"]
        .iter()
        .chain(args)
        .map(ToString::to_string)
        .collect();
    all.extend(manifests_of(CASE));
    netpol(&all)
}

#[test]
fn text_names_the_deciding_rules() {
    let run = explain(&["y/b", "x/a", "--port", "81"]);
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        "y/b -> x/a: TCP 81 allowed\n\
         \x20 egress at y/b: not isolated\n\
         \x20 ingress at x/a: isolated by x/allow-client-a-via-ns-selector\n\
         \x20   allowed by x/allow-client-a-via-ns-selector ingress rule 0 peer 0 port 0 (TCP 81)\n"
    );
}

#[test]
fn text_gives_the_nearest_miss_when_denied() {
    let run = explain(&["x/b", "x/a", "--port", "81"]);
    run.expect_code(0);
    let mut lines = run.stdout.lines();
    assert_eq!(lines.next(), Some("x/b -> x/a: TCP 81 denied"));
    assert!(
        run.stdout.contains(
            "denied; nearest miss: x/allow-client-a-via-ns-selector ingress rule 0 peer 0: namespace x"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn json_shape() {
    let run = explain(&["y/b", "x/a", "--port", "81", "-o", "json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["source"], "y/b");
    assert_eq!(v["destination"], "x/a");
    assert_eq!(v["port"], 81);
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(v["allowed"], true);
    assert_eq!(v["egress"]["isolated"], false);
    assert_eq!(v["egress"]["policies"], serde_json::json!([]));
    assert_eq!(v["egress"]["allowed_by"], serde_json::json!([]));
    let ing = &v["ingress"];
    assert_eq!(ing["isolated"], true);
    assert_eq!(
        ing["policies"],
        serde_json::json!(["x/allow-client-a-via-ns-selector"])
    );
    assert_eq!(ing["allowed"], true);
    let by = ing["allowed_by"].as_array().expect("allowed_by is a list");
    assert_eq!(by.len(), 1);
    assert_eq!(by[0]["policy"], "x/allow-client-a-via-ns-selector");
    assert_eq!(by[0]["rule"], 0);
    assert_eq!(by[0]["peer"], 0);
    assert_eq!(by[0]["port"], 0);
    for key in [
        "source",
        "destination",
        "port",
        "protocol",
        "allowed",
        "egress",
        "ingress",
    ] {
        assert!(v.get(key).is_some(), "missing {key}");
    }
}

#[test]
fn json_without_port_has_null_port_and_protocol() {
    let run = explain(&["x/b", "x/a", "-o", "json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["port"], serde_json::Value::Null);
    assert_eq!(v["protocol"], serde_json::Value::Null);
    assert_eq!(v["allowed"], false);
    assert_eq!(v["ingress"]["allowed_by"], serde_json::json!([]));
    assert!(v["ingress"]["nearest_miss"].is_string());
}

#[test]
fn invalid_manifest_exits_2_with_position_and_field() {
    let t = TempDir::new().unwrap();
    let bad = t.path().join("policies.yaml");
    std::fs::write(&bad, EXCEPT_OUTSIDE_CIDR).unwrap();
    let cluster = case(CASE).join("cluster.yaml");
    let run = netpol(&[
        "explain",
        "x/a",
        "x/b",
        "-f",
        cluster.to_str().unwrap(),
        "-f",
        bad.to_str().unwrap(),
    ]);
    run.expect_code(2);
    assert_eq!(run.stdout, "");
    let want = format!("{}:17:11", bad.display());
    assert!(run.stderr.contains(&want), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("spec.egress[0].to[0].ipBlock.except[0]"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nothing was compiled"),
        "{}",
        run.stderr
    );
}

#[test]
fn unknown_endpoint_exits_2() {
    let run = explain(&["x/a", "x/nope"]);
    run.expect_code(2);
    assert!(run.stderr.contains("no endpoint x/nope"), "{}", run.stderr);
    assert!(run.stderr.contains("x/a, x/b, x/c"), "{}", run.stderr);
}

#[test]
fn external_ip_destination() {
    let run = explain(&["x/a", "203.0.113.10", "--port", "443"]);
    run.expect_code(0);
    assert!(
        run.stdout
            .starts_with("x/a -> 203.0.113.10: TCP 443 allowed\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn reads_stdin() {
    let run = netpol_stdin(
        &["explain", "y/b", "x/a", "--port", "81", "-f", "-"],
        &manifest_stream(CASE),
    );
    run.expect_code(0);
    assert!(
        run.stdout.starts_with("y/b -> x/a: TCP 81 allowed\n"),
        "{}",
        run.stdout
    );
}
