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

/// `netpol explain` with the manifests of a `services/` case.
fn explain_services(case_name: &str, args: &[&str]) -> crate::support::Run {
    let mut all: Vec<String> = ["explain"]
        .iter()
        .chain(args)
        .map(ToString::to_string)
        .collect();
    all.extend(["-f".to_string(), case(case_name).display().to_string()]);
    netpol(&all)
}

// See: #10
#[test]
fn through_a_service_answers_per_backend_with_the_port_mapping() {
    let run = explain_services(
        "services/multi-backend",
        &["shop/web", "shop/service/db", "--port", "postgres"],
    );
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        "shop/web -> shop/service/db:5432 (TCP): allowed to 1 of 2 backends\n\
         \x20 shop/service/db:5432 -> shop/db-0:5432 (targetPort postgres): TCP 5432 allowed\n\
         \x20   egress at shop/web: not isolated\n\
         \x20   ingress at shop/db-0: isolated by shop/db-primary\n\
         \x20     allowed by shop/db-primary ingress rule 0 peer 0 port 0 (TCP 5432)\n\
         \x20 shop/service/db:5432 -> shop/db-1:5432 (targetPort postgres): TCP 5432 denied\n\
         \x20   egress at shop/web: not isolated\n\
         \x20   ingress at shop/db-1: isolated by shop/db-replica-deny\n\
         \x20     denied; nearest miss: shop/db-replica-deny has no ingress rules: it denies all ingress\n"
    );
    // `svc` alias and the port by number: the same answer.
    let by_number = explain_services(
        "services/multi-backend",
        &["shop/web", "shop/svc/db", "--port", "5432"],
    );
    assert_eq!(by_number.stdout, run.stdout);
}

// See: #10
#[test]
fn through_a_service_json_lists_the_backends() {
    let run = explain_services(
        "services/named-target-port",
        &[
            "api/client",
            "api/service/api",
            "--port",
            "80",
            "-o",
            "json",
        ],
    );
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["destination"], "api/service/api");
    assert_eq!(v["service"]["name"], "api/api");
    assert_eq!(v["service"]["type"], "ClusterIP");
    assert_eq!(v["service"]["addresses"], serde_json::json!(["10.96.0.30"]));
    assert_eq!(v["verdict"], "allowed to 1 of 2 backends");
    assert_eq!(v["allowed"], false);
    let b = v["backends"].as_array().expect("backends");
    let rows: Vec<(String, u64, String, bool)> = b
        .iter()
        .map(|x| {
            (
                x["backend"].as_str().unwrap().to_owned(),
                x["port"].as_u64().unwrap(),
                x["targetPort"].as_str().unwrap().to_owned(),
                x["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("api/api-v1".to_owned(), 8080, "http".to_owned(), true),
            ("api/api-v2".to_owned(), 9090, "http".to_owned(), false),
        ]
    );
    assert_eq!(b[1]["ingress"]["isolated"], true);
    assert!(
        b[1]["ingress"]["nearest_miss"]
            .as_str()
            .unwrap()
            .contains("TCP 9090")
    );
}

// See: #10
#[test]
fn a_service_without_backends_says_so_and_bad_ports_are_usage_errors() {
    let run = explain_services(
        "services/no-backends",
        &["misc/client", "misc/service/nobody"],
    );
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        "misc/client -> misc/service/nobody:80 (TCP): no backends\n"
    );
    let run = explain_services(
        "services/no-backends",
        &["misc/client", "misc/service/nobody", "--port", "81"],
    );
    run.expect_code(2);
    assert!(run.stderr.contains("has no port 81"), "{}", run.stderr);
    let run = explain_services(
        "services/no-backends",
        &["misc/client", "misc/service/nope"],
    );
    run.expect_code(2);
    assert!(
        run.stderr.contains("no Service misc/nope"),
        "{}",
        run.stderr
    );
    let run = explain_services(
        "services/no-backends",
        &["misc/client", "misc/client", "--port", "http"],
    );
    run.expect_code(2);
    // A port name toward a Pod resolves against its container ports (#14); this Pod
    // declares none named http.
    assert!(
        run.stderr
            .contains("misc/client declares no TCP port named http"),
        "{}",
        run.stderr
    );
}

// See: #10
#[test]
fn the_pods_own_node_always_connects() {
    let run = explain_services(
        "services/allow-dns",
        &["node/n1", "app/server", "--port", "8080"],
    );
    run.expect_code(0);
    assert_eq!(
        run.stdout,
        "192.168.6.1 -> app/server: TCP 8080 allowed\n\
         \x20 192.168.6.1 is the node of app/server: a Pod's own node may always connect to it\n"
    );
    let json = explain_services(
        "services/allow-dns",
        &["node/n1", "app/server", "--port", "8080", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("JSON");
    assert_eq!(v["from_node"], true);
    assert_eq!(v["allowed"], true);
    // Non-node queries do not carry the field (their JSON is unchanged).
    let other = explain_services(
        "services/allow-dns",
        &["app/client", "app/server", "--port", "8080", "-o", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&other.stdout).expect("JSON");
    assert!(v.get("from_node").is_none());
    assert_eq!(v["allowed"], false);
}
