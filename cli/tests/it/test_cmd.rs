//! `netpol test DIR...`: golden-file policy tests.

use std::path::Path;

use quick_xml::Reader;
use quick_xml::events::Event;
use tempfile::TempDir;

use crate::support::{
    EXCEPT_OUTSIDE_CIDR, case, copy_case, last_line, netpol, netpol_in, repo_root,
};

const CASE: &str = "upstream/port-81-only";

fn tmp() -> TempDir {
    tempfile::tempdir().expect("temp dir")
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create dir");
    }
    std::fs::write(path, text).expect("write file");
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read file")
}

/// `netpol matrix --port PORT --protocol PROTO` of a case directory's manifests.
fn matrix_text(dir: &Path, proto: &str, port: u16) -> String {
    let cluster = dir.join("cluster.yaml");
    let policies = dir.join("policies.yaml");
    let port = port.to_string();
    let args = [
        "matrix",
        "--port",
        &port,
        "--protocol",
        proto,
        "-f",
        cluster.to_str().expect("utf-8 path"),
        "-f",
        policies.to_str().expect("utf-8 path"),
    ];
    netpol(&args).expect_code(0).stdout.clone()
}

#[test]
fn repository_cases_pass() {
    let run = netpol(&["test", "testdata/cases"]);
    run.expect_code(0);
    let summary = last_line(&run.stdout);
    let (passed, failed) = summary
        .split_once(" passed, ")
        .unwrap_or_else(|| panic!("summary line: {summary:?}"));
    assert!(passed.parse::<usize>().unwrap() >= 40, "{summary}");
    assert_eq!(failed, "0 failed");
    assert!(!run.stdout.contains("FAIL"));
}

#[test]
fn passing_case() {
    let t = tmp();
    copy_case(CASE, &t.path().join("c"));
    let run = netpol_in(t.path(), &["test", "."]);
    run.expect_code(0);
    assert!(run.stdout.contains("ok   ./c\n"), "{}", run.stdout);
    assert_eq!(last_line(&run.stdout), "1 passed, 0 failed");
}

#[test]
fn failing_assertion_shows_the_explanation() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    write(
        &dir.join("expect.yaml"),
        "assertions:\n  - {from: x/b, to: x/a, port: 80, allowed: true}\n  - {from: y/b, to: x/a, port: 81, allowed: true}\n",
    );
    let run = netpol_in(t.path(), &["test", "c"]);
    run.expect_code(1);
    let out = &run.stdout;
    assert!(out.contains("FAIL c\n"), "{out}");
    assert!(out.contains("assertion 0: x/b -> x/a TCP 80"), "{out}");
    assert!(out.contains("expected allowed, got denied"), "{out}");
    assert!(out.contains("x/b -> x/a: TCP 80 denied"), "{out}");
    assert!(
        out.contains("nearest miss: x/allow-client-a-via-ns-selector"),
        "{out}"
    );
    assert!(
        !out.contains("assertion 1"),
        "the holding assertion is quiet: {out}"
    );
    assert_eq!(last_line(out), "0 passed, 1 failed");
}

#[test]
fn failing_golden_shows_a_unified_diff() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    std::fs::remove_file(dir.join("expect.yaml")).unwrap();
    let actual = matrix_text(&dir, "TCP", 80);
    // Claim that x/b may reach x/a on TCP 80.
    let wrong = actual.replacen("x/b    X", "x/b    .", 1);
    assert_ne!(wrong, actual);
    write(&dir.join("matrix-tcp-80.txt"), &wrong);
    let run = netpol_in(t.path(), &["test", "c"]);
    run.expect_code(1);
    let out = &run.stdout;
    assert!(out.contains("FAIL c\n"), "{out}");
    assert!(out.contains("--- matrix-tcp-80.txt (golden)"), "{out}");
    assert!(out.contains("+++ matrix-tcp-80.txt (actual)"), "{out}");
    assert!(out.contains("@@ "), "{out}");
    assert!(out.contains("-x/b    .   .   ."), "{out}");
    assert!(out.contains("+x/b    X   .   ."), "{out}");
    assert!(out.contains("netpol test --update"), "{out}");
    assert_eq!(last_line(out), "0 passed, 1 failed");
    assert_eq!(
        read(&dir.join("matrix-tcp-80.txt")),
        wrong,
        "never rewritten without --update"
    );
}

#[test]
fn bad_golden_name_fails_the_case() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    write(&dir.join("matrix-tcp-http.txt"), "");
    let run = netpol_in(t.path(), &["test", "c"]);
    run.expect_code(1);
    assert!(
        run.stdout.contains("matrix-<tcp|udp|sctp>-<port>.txt"),
        "{}",
        run.stdout
    );
}

#[test]
fn update_writes_goldens_then_they_pass() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    let expect = "assertions:\n  - {from: y/b, to: x/a, port: 81, allowed: true}\nmatrix:\n  - port: 80\n    grid: |\n      -   x/a x/b x/c y/a y/b y/c z/a z/b z/c\n      x/a .   .   .   .   .   .   .   .   .\n      x/b X   .   .   .   .   .   .   .   .\n      x/c X   .   .   .   .   .   .   .   .\n      y/a X   .   .   .   .   .   .   .   .\n      y/b X   .   .   .   .   .   .   .   .\n      y/c X   .   .   .   .   .   .   .   .\n      z/a X   .   .   .   .   .   .   .   .\n      z/b X   .   .   .   .   .   .   .   .\n      z/c X   .   .   .   .   .   .   .   .\n";
    write(&dir.join("expect.yaml"), expect);
    write(&dir.join("matrix-tcp-81.txt"), "stale\n");
    write(&dir.join("matrix-udp-80.txt"), ""); // an empty golden asks --update to fill it

    let before = netpol_in(t.path(), &["test", "c"]);
    before.expect_code(1);

    let run = netpol_in(t.path(), &["test", "--update", "c"]);
    run.expect_code(0);
    let out = &run.stdout;
    assert!(out.contains("updated matrix-tcp-80.txt (created)"), "{out}");
    assert!(
        out.contains("updated matrix-tcp-81.txt (rewritten)"),
        "{out}"
    );
    assert!(
        out.contains("updated matrix-udp-80.txt (rewritten)"),
        "{out}"
    );
    assert_eq!(last_line(out), "1 passed, 0 failed");
    assert_eq!(
        read(&dir.join("expect.yaml")),
        expect,
        "expect.yaml is never edited"
    );
    assert_eq!(
        read(&dir.join("matrix-tcp-80.txt")),
        matrix_text(&dir, "TCP", 80)
    );
    assert_eq!(
        read(&dir.join("matrix-tcp-81.txt")),
        matrix_text(&dir, "TCP", 81)
    );
    assert_eq!(
        read(&dir.join("matrix-udp-80.txt")),
        matrix_text(&dir, "UDP", 80)
    );
    assert!(
        !dir.join("matrix-sctp-80.txt").exists(),
        "only implied goldens are created"
    );

    let again = netpol_in(t.path(), &["test", "c"]);
    again.expect_code(0);
    assert!(!again.stdout.contains("updated"), "{}", again.stdout);
    assert_eq!(last_line(&again.stdout), "1 passed, 0 failed");
}

#[test]
fn update_does_not_hide_failed_assertions() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    write(
        &dir.join("expect.yaml"),
        "assertions:\n  - {from: x/b, to: x/a, port: 80, allowed: true}\n",
    );
    let run = netpol_in(t.path(), &["test", "--update", "c"]);
    run.expect_code(1);
    assert!(
        run.stdout.contains("expected allowed, got denied"),
        "{}",
        run.stdout
    );
}

#[test]
fn invalid_manifest_fails_its_case_only() {
    let t = tmp();
    copy_case(CASE, &t.path().join("good"));
    let bad = t.path().join("bad");
    copy_case(CASE, &bad);
    write(&bad.join("policies.yaml"), EXCEPT_OUTSIDE_CIDR);
    let run = netpol_in(t.path(), &["test", "."]);
    run.expect_code(1);
    let out = &run.stdout;
    assert!(out.contains("FAIL ./bad\n"), "{out}");
    assert!(out.contains("ok   ./good\n"), "{out}");
    assert!(out.contains("./bad/policies.yaml:17:11: error:"), "{out}");
    assert!(
        out.contains("spec.egress[0].to[0].ipBlock.except[0]"),
        "{out}"
    );
    assert!(
        out.contains("nothing else in this case was checked"),
        "{out}"
    );
    assert_eq!(last_line(out), "1 passed, 1 failed");
}

#[test]
fn manifests_in_plain_subdirectories_belong_to_the_case() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    std::fs::create_dir(dir.join("k8s")).unwrap();
    std::fs::rename(dir.join("policies.yaml"), dir.join("k8s/policies.yaml")).unwrap();
    // A nested directory with expect.yaml is a case of its own.
    copy_case(CASE, &dir.join("nested"));
    let run = netpol_in(t.path(), &["test", "c"]);
    run.expect_code(0);
    assert!(run.stdout.contains("ok   c\n"), "{}", run.stdout);
    assert!(run.stdout.contains("ok   c/nested\n"), "{}", run.stdout);
    assert_eq!(last_line(&run.stdout), "2 passed, 0 failed");
}

#[test]
fn usage_errors_exit_2() {
    let t = tmp();
    let missing = netpol_in(t.path(), &["test", "no-such-dir"]);
    missing.expect_code(2);
    assert!(missing.stderr.contains("no-such-dir"), "{}", missing.stderr);

    let empty = netpol_in(t.path(), &["test", "."]);
    empty.expect_code(2);
    assert!(empty.stderr.contains("no case found"), "{}", empty.stderr);

    netpol_in(t.path(), &["test"]).expect_code(2);
    netpol_in(t.path(), &["test", ".", "-o", "yaml"]).expect_code(2);
}

#[test]
fn json_output() {
    let t = tmp();
    copy_case(CASE, &t.path().join("good"));
    let bad = t.path().join("bad");
    copy_case(CASE, &bad);
    write(
        &bad.join("expect.yaml"),
        "assertions:\n  - {from: x/b, to: x/a, port: 80, allowed: true}\n",
    );
    let run = netpol_in(t.path(), &["test", ".", "-o", "json"]);
    run.expect_code(1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    assert_eq!(v["passed"], 1);
    assert_eq!(v["failed"], 1);
    let cases = v["suites"][0]["cases"].as_array().unwrap();
    let names: Vec<&str> = cases.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["bad", "good"]);
    assert_eq!(cases[0]["passed"], false);
    let failed = cases[0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "failed")
        .expect("a failed check");
    assert_eq!(failed["kind"], "expect");
    assert!(
        failed["report"]
            .as_str()
            .unwrap()
            .contains("expected allowed, got denied")
    );
    assert_eq!(last_line(&run.stderr), "1 passed, 1 failed");
}

/// A parsed element: name, attributes, text content, children.
#[derive(Debug, Default)]
struct El {
    name: String,
    attrs: Vec<(String, String)>,
    text: String,
    children: Vec<El>,
}

impl El {
    fn attr(&self, k: &str) -> &str {
        self.attrs
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{} has no attribute {k}", self.name))
    }
}

fn element(e: &quick_xml::events::BytesStart<'_>) -> El {
    El {
        name: e.name().as_ref().to_string(),
        attrs: e
            .attributes()
            .map(|a| {
                let a = a.expect("well-formed attribute");
                (
                    a.key.as_ref().to_string(),
                    a.normalized_value(quick_xml::XmlVersion::Explicit1_0)
                        .expect("valid attribute value")
                        .into_owned(),
                )
            })
            .collect(),
        ..El::default()
    }
}

/// Parses an XML document strictly (matching end tags, known entities) into a tree.
fn parse_xml(xml: &str) -> El {
    let mut r = Reader::from_str(xml);
    r.config_mut().check_end_names = true;
    let mut stack = vec![El::default()];
    loop {
        match r.read_event().expect("well-formed XML") {
            Event::Eof => break,
            Event::Start(e) => stack.push(element(&e)),
            Event::Empty(e) => {
                let el = element(&e);
                stack.last_mut().unwrap().children.push(el);
            }
            Event::End(_) => {
                let el = stack.pop().unwrap();
                stack.last_mut().expect("balanced tags").children.push(el);
            }
            Event::Text(t) => stack.last_mut().unwrap().text.push_str(&t.xml10_content()),
            Event::GeneralRef(g) => {
                let c = match g.xml10_content().as_ref() {
                    "lt" => "<",
                    "gt" => ">",
                    "amp" => "&",
                    "quot" => "\"",
                    "apos" => "'",
                    other => panic!("unknown entity {other}"),
                };
                stack.last_mut().unwrap().text.push_str(c);
            }
            _ => {}
        }
    }
    assert_eq!(stack.len(), 1, "every element closed");
    let mut root = stack.pop().unwrap();
    assert_eq!(root.children.len(), 1, "one root element");
    root.children.pop().unwrap()
}

#[test]
fn junit_report_is_well_formed() {
    let t = tmp();
    let suite_a = t.path().join("a");
    let suite_b = t.path().join("b");
    copy_case(CASE, &suite_a.join("good"));
    copy_case(CASE, &suite_b.join("good"));
    let bad = suite_b.join("bad<&>");
    copy_case(CASE, &bad);
    write(
        &bad.join("expect.yaml"),
        "assertions:\n  - {from: x/b, to: x/a, port: 80, allowed: true}\n",
    );
    let junit = t.path().join("report.xml");
    let run = netpol_in(t.path(), &["test", "a", "b", "--junit", "report.xml"]);
    run.expect_code(1);
    assert_eq!(last_line(&run.stdout), "2 passed, 1 failed");

    let root = parse_xml(&read(&junit));
    assert_eq!(root.name, "testsuites");
    assert_eq!(root.attr("tests"), "3");
    assert_eq!(root.attr("failures"), "1");
    let suites: Vec<(&str, &str, &str)> = root
        .children
        .iter()
        .map(|s| {
            assert_eq!(s.name, "testsuite");
            (s.attr("name"), s.attr("tests"), s.attr("failures"))
        })
        .collect();
    assert_eq!(suites, [("a", "1", "0"), ("b", "2", "1")]);
    let b = &root.children[1];
    let cases: Vec<&str> = b.children.iter().map(|c| c.attr("name")).collect();
    assert_eq!(cases, ["bad<&>", "good"]);
    assert!(
        b.children[1].children.is_empty(),
        "a passing case has no failure"
    );
    let failure = &b.children[0].children[0];
    assert_eq!(failure.name, "failure");
    assert_eq!(failure.attr("message"), "assertion 0: x/b -> x/a TCP 80");
    assert!(
        failure.text.contains("expected allowed, got denied"),
        "{}",
        failure.text
    );
    assert!(
        failure.text.contains("x/b -> x/a: TCP 80 denied"),
        "{}",
        failure.text
    );
}

#[test]
fn junit_unwritable_file_exits_2() {
    let t = tmp();
    copy_case(CASE, &t.path().join("c"));
    let run = netpol_in(
        t.path(),
        &["test", "c", "--junit", "no-such-dir/report.xml"],
    );
    run.expect_code(2);
    assert!(
        run.stderr.contains("cannot write JUnit report"),
        "{}",
        run.stderr
    );
}

#[test]
fn repository_case_path_is_shown_as_given() {
    let dir = case(CASE);
    let rel = dir.strip_prefix(repo_root()).unwrap();
    let run = netpol(&["test", rel.to_str().unwrap()]);
    run.expect_code(0);
    assert!(
        run.stdout
            .starts_with("ok   testdata/cases/upstream/port-81-only\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn nft_goldens_are_checked_and_filled_by_update() {
    let t = tmp();
    let dir = t.path().join("c");
    copy_case(CASE, &dir);
    // An empty golden is filled by --update with the Pod's ruleset.
    write(&dir.join("x_a.nft"), "");
    netpol_in(t.path(), &["test", "c"]).expect_code(1);
    netpol_in(t.path(), &["test", "c", "--update"]).expect_code(0);
    let golden = read(&dir.join("x_a.nft"));
    let compiled = netpol_in(
        t.path(),
        &[
            "compile",
            "--pod",
            "x/a",
            "-f",
            "c/cluster.yaml",
            "-f",
            "c/policies.yaml",
        ],
    );
    compiled.expect_code(0);
    assert_eq!(golden, compiled.stdout);
    assert!(golden.contains("table inet netpol"), "{golden}");
    // A hand edit is a failure with a diff.
    write(
        &dir.join("x_a.nft"),
        &golden.replace("group 100", "group 7"),
    );
    let run = netpol_in(t.path(), &["test", "c"]);
    run.expect_code(1);
    assert!(
        run.stdout.contains("--- x_a.nft (golden)"),
        "{}",
        run.stdout
    );
    // A golden naming no Pod of the case fails it.
    write(&dir.join("x_a.nft"), &golden);
    write(&dir.join("q_nobody.nft"), "");
    let run = netpol_in(t.path(), &["test", "c"]);
    run.expect_code(1);
    assert!(run.stdout.contains("no Pod q/nobody"), "{}", run.stdout);
}

#[test]
fn empty_expect_yaml_fails_the_case() {
    // See: #11 (an empty expect.yaml passed vacuously).
    for (i, text) in [
        "",
        "# nothing yet\n",
        "description: wip\n",
        "assertions: []\nmatrix: []\n",
    ]
    .into_iter()
    .enumerate()
    {
        let t = tmp();
        let dir = t.path().join("c");
        copy_case(CASE, &dir);
        write(&dir.join("expect.yaml"), text);
        let run = netpol_in(t.path(), &["test", "c"]);
        run.expect_code(1);
        assert!(
            run.stdout.contains("expect.yaml has no checks"),
            "{i}: {}",
            run.stdout
        );
        assert_eq!(last_line(&run.stdout), "0 passed, 1 failed", "{i}");
    }
}

/// What `netpol test -o json` ran under one DIR: per case (name relative to DIR), whether
/// it read `expect.yaml`, its golden file names and its manifest count.
fn ran_cases(dir: &Path) -> Vec<(String, bool, Vec<String>, String)> {
    let d = dir.to_str().expect("utf-8 path");
    let run = netpol(&["test", d, "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).expect("stdout is JSON");
    let cases = v["suites"][0]["cases"].as_array().expect("cases");
    cases
        .iter()
        .map(|c| {
            let checks = c["checks"].as_array().expect("checks");
            let kind = |c: &serde_json::Value| c["kind"].as_str().unwrap_or_default().to_owned();
            let what = |c: &serde_json::Value| c["what"].as_str().unwrap_or_default().to_owned();
            let manifests = checks
                .iter()
                .find(|c| kind(c) == "manifests")
                .map(what)
                .unwrap_or_default();
            let mut goldens: Vec<String> = checks
                .iter()
                .filter(|c| !["manifests", "expect"].contains(&kind(c).as_str()))
                .map(what)
                .collect();
            goldens.sort();
            let expect = checks.iter().any(|c| kind(c) == "expect");
            let name = c["name"].as_str().expect("name").to_owned();
            (name, expect, goldens, manifests)
        })
        .collect()
}

/// The same, by testkit's discovery (which the compiler's tests share).
fn discovered_cases(dir: &Path) -> Vec<(String, bool, Vec<String>, String)> {
    let name = |p: &Path| p.file_name().and_then(|n| n.to_str()).unwrap().to_owned();
    testkit::cases::discover(dir)
        .into_iter()
        .map(|c| {
            let rel = c.dir.strip_prefix(dir).expect("case under dir");
            let rel = if rel.as_os_str().is_empty() {
                ".".to_owned()
            } else {
                rel.display().to_string()
            };
            let mut goldens: Vec<String> = c.goldens.iter().map(|p| name(p)).collect();
            goldens.sort();
            let manifests = format!("{} manifest file(s)", c.manifests.len());
            (rel, c.expect.is_some(), goldens, manifests)
        })
        .collect()
}

/// `netpol test` and the test suites (testkit, the compiler's tests) see the same cases
/// with the same files: one definition of a case, `policy_compiler::case`. See: #9
#[test]
fn netpol_test_and_testkit_agree_on_cases() {
    let root = repo_root().join("testdata/cases");
    let ran = ran_cases(&root);
    assert!(ran.len() >= 100, "{} cases", ran.len());
    assert_eq!(ran, discovered_cases(&root));

    // Every rule on one tree: nested cases, plain and hidden subdirectories, a case of
    // goldens only, files that are neither manifests nor goldens.
    let t = tmp();
    let r = t.path();
    copy_case(CASE, &r.join("a"));
    write(
        &r.join("a/more/extra.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: extra\n",
    );
    write(&r.join("a/.hidden/broken.yaml"), "not: [valid");
    write(&r.join("a/notes.txt"), "not a manifest\n");
    copy_case(CASE, &r.join("a/inner"));
    copy_case(CASE, &r.join("g"));
    std::fs::remove_file(r.join("g/expect.yaml")).expect("remove expect.yaml");
    write(&r.join("g/matrix-tcp-80.txt"), "stale\n");
    write(&r.join("plain/only.yaml"), "not: [valid");
    let ran = ran_cases(r);
    assert_eq!(
        ran.iter().map(|c| c.0.as_str()).collect::<Vec<_>>(),
        ["a", "a/inner", "g"]
    );
    assert_eq!(ran, discovered_cases(r));
}
