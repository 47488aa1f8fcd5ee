//! `netpol matrix`: text, JSON, CSV and Markdown shapes, errors, stdin.

use tempfile::TempDir;

use crate::support::{
    EXCEPT_OUTSIDE_CIDR, case, manifest_stream, manifests_of, netpol, netpol_stdin,
};

const CASE: &str = "upstream/port-81-only";
const ENDPOINTS: [&str; 9] = [
    "x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c",
];

fn matrix(args: &[&str]) -> crate::support::Run {
    let mut all: Vec<String> = ["matrix"]
        .iter()
        .chain(args)
        .map(ToString::to_string)
        .collect();
    all.extend(manifests_of(CASE));
    netpol(&all)
}

#[test]
fn text_grid() {
    let run = matrix(&["--port", "81"]);
    run.expect_code(0);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.len(), 10, "{}", run.stdout);
    assert_eq!(lines[0], "TCP/81 x/a x/b x/c y/a y/b y/c z/a z/b z/c");
    // Only namespace y may reach x/a on TCP 81.
    assert_eq!(lines[1], "x/a    .   .   .   .   .   .   .   .   .");
    assert_eq!(lines[2], "x/b    X   .   .   .   .   .   .   .   .");
    assert_eq!(lines[5], "y/b    .   .   .   .   .   .   .   .   .");
    assert_eq!(lines[9], "z/c    X   .   .   .   .   .   .   .   .");
}

#[test]
fn json_shape() {
    let run = matrix(&["--port", "80", "--protocol", "udp", "-o", "json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["port"], 80);
    assert_eq!(v["protocol"], "UDP");
    let eps: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(eps, ENDPOINTS);
    let mut sorted = eps.clone();
    sorted.sort_unstable();
    assert_eq!(eps, sorted);
    let allowed = v["allowed"].as_array().unwrap();
    assert_eq!(allowed.len(), 9);
    for (i, row) in allowed.iter().enumerate() {
        let row = row.as_array().unwrap();
        assert_eq!(row.len(), 9);
        assert!(row.iter().all(serde_json::Value::is_boolean));
        assert_eq!(row[i], true, "the diagonal is allowed");
    }
    // The policy allows TCP 81 only: UDP 80 to x/a is denied from every other pod.
    assert!((1..9).all(|s| allowed[s][0] == false));
    assert!(
        v.get("traffic").is_none(),
        "no per-cell traffic with a port"
    );
}

#[test]
fn json_without_port_has_traffic() {
    let run = matrix(&["-o", "json"]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(v["port"], serde_json::Value::Null);
    assert_eq!(v["protocol"], serde_json::Value::Null);
    let traffic = v["traffic"].as_array().expect("traffic without a port");
    assert_eq!(traffic.len(), 9);
    // y/b -> x/a: exactly TCP 81.
    assert_eq!(traffic[4][0], serde_json::json!({"TCP": ["81"]}));
}

#[test]
fn csv_and_markdown() {
    let csv = matrix(&["--port", "81", "-o", "csv"]);
    csv.expect_code(0);
    let mut lines = csv.stdout.lines();
    assert_eq!(
        lines.next(),
        Some("source,x/a,x/b,x/c,y/a,y/b,y/c,z/a,z/b,z/c")
    );
    assert_eq!(
        lines.next(),
        Some("x/a,true,true,true,true,true,true,true,true,true")
    );
    assert_eq!(
        lines.next(),
        Some("x/b,false,true,true,true,true,true,true,true,true")
    );
    let md = matrix(&["--port", "81", "-o", "md"]);
    md.expect_code(0);
    assert!(md.stdout.starts_with("| TCP/81 | x/a |"), "{}", md.stdout);
    assert!(md.stdout.contains("| x/b | ✗ | ✓ |"), "{}", md.stdout);
}

#[test]
fn invalid_manifest_exits_2_with_position_and_field() {
    let t = TempDir::new().unwrap();
    let bad = t.path().join("policies.yaml");
    std::fs::write(&bad, EXCEPT_OUTSIDE_CIDR).unwrap();
    let cluster = case(CASE).join("cluster.yaml");
    let run = netpol(&[
        "matrix",
        "-f",
        cluster.to_str().unwrap(),
        "-f",
        bad.to_str().unwrap(),
    ]);
    run.expect_code(2);
    assert_eq!(run.stdout, "");
    assert!(
        run.stderr.contains(&format!("{}:17:11", bad.display())),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("spec.egress[0].to[0].ipBlock.except[0]"),
        "{}",
        run.stderr
    );
}

#[test]
fn unreadable_input_exits_2() {
    let run = netpol(&["matrix", "-f", "no/such/file.yaml"]);
    run.expect_code(2);
    assert!(run.stderr.contains("no/such/file.yaml"), "{}", run.stderr);
}

#[test]
fn reads_stdin() {
    let run = netpol_stdin(
        &["matrix", "--port", "81", "-f", "-"],
        &manifest_stream(CASE),
    );
    run.expect_code(0);
    assert!(
        run.stdout
            .starts_with("TCP/81 x/a x/b x/c y/a y/b y/c z/a z/b z/c\n"),
        "{}",
        run.stdout
    );
}

// See: #10
#[test]
fn via_services_columns_are_service_ports() {
    let dir = crate::support::case("services/allow-dns")
        .display()
        .to_string();
    let run = crate::support::netpol(&["matrix", "--via-services", "-f", &dir]);
    run.expect_code(0);
    let lines: Vec<Vec<&str>> = run
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec![
                "-",
                "app/service/server:80/TCP",
                "kube-system/service/kube-dns:53/UDP",
                "kube-system/service/kube-dns:53/TCP",
                "kube-system/service/kube-dns:9153/TCP"
            ],
            vec!["app/client", "X", ".", ".", "X"],
            vec!["app/server", "X", ".", ".", "X"],
            vec!["kube-system/coredns-a", "X", ".", ".", "."],
            vec!["kube-system/coredns-b", "X", ".", ".", "."],
        ]
    );
    let dir = crate::support::case("services/multi-backend")
        .display()
        .to_string();
    let run = crate::support::netpol(&[
        "matrix",
        "--via-services",
        "--port",
        "5432",
        "-o",
        "json",
        "-f",
        &dir,
    ]);
    run.expect_code(0);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(
        v["columns"],
        serde_json::json!(["shop/service/db:5432/TCP"])
    );
    assert_eq!(v["sources"][2], "shop/web");
    assert_eq!(v["allowed"][2][0], 1);
    assert_eq!(v["backends"][2][0], 2);
    let run = crate::support::netpol(&["matrix", "--via-services", "-o", "csv", "-f", &dir]);
    run.expect_code(2);
}

/// With audit policies, CSV appends one `audited:<source>` row per source and Markdown
/// keeps the enforced symbol with the audit letter beside it: a denied cell that audit
/// policies would open is still ✗ (it was printed ✓). See: #12
#[test]
fn csv_and_markdown_carry_the_audited_verdict() {
    let run = |files: &[String], port: &str, format: &str| {
        let mut args: Vec<String> = ["matrix", "--port", port, "-o", format]
            .iter()
            .map(ToString::to_string)
            .collect();
        args.extend(files.iter().cloned());
        let r = netpol(&args);
        r.expect_code(0);
        r.stdout
    };
    let staged = manifests_of("audit/staged-policies");
    let csv = run(&staged, "5432", "csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "source,ops/scanner,shop/db,shop/web", "{csv}");
    assert_eq!(lines[1], "ops/scanner,true,false,true");
    assert_eq!(lines.len(), 7, "{csv}");
    // Audited: web-from-shop (audit) would close shop/web to the scanner.
    assert_eq!(lines[4], "audited:ops/scanner,true,false,false");
    assert!(
        lines[4..].iter().all(|l| l.starts_with("audited:")),
        "{csv}"
    );
    let md = run(&staged, "5432", "md");
    assert!(
        md.lines().any(|l| l == "| ops/scanner | ✓ | ✗ | ✓ A |"),
        "{md}"
    );
    assert!(
        md.contains("**A** allowed, an audit policy would deny"),
        "{md}"
    );

    // A denied cell that an audit policy would open: ✗ a, never ✓.
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("open.yaml");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.2}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: open, namespace: x, annotations: {netpol.io/mode: audit}}\nspec: {podSelector: {matchLabels: {app: b}}, ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}\n",
    )
    .unwrap();
    let files = ["-f".to_string(), path.display().to_string()];
    let md = run(&files, "80", "md");
    assert!(md.lines().any(|l| l == "| x/a | ✓ | ✗ a |"), "{md}");
    let csv = run(&files, "80", "csv");
    assert_eq!(
        csv,
        "source,x/a,x/b\nx/a,true,false\nx/b,true,true\naudited:x/a,true,true\naudited:x/b,true,true\n"
    );

    // Without audit policies both shapes are as before: no audited rows, no legend.
    let mut args: Vec<String> = ["matrix", "--port", "81", "-o", "csv"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(manifests_of(CASE));
    let plain = netpol(&args);
    plain.expect_code(0);
    assert!(!plain.stdout.contains("audited:"), "{}", plain.stdout);
    assert_eq!(plain.stdout.lines().count(), 10);
}
