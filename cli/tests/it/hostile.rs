//! Hostile input to the `netpol` binary: every class of input found by the hostile-input
//! campaign of #11 has a test named after it. No input may panic (exit 101) or hang.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::support::{Run, copy_case, netpol_in};

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

/// stderr with miette's wrapping undone: one line, frame characters removed.
fn flat(s: &str) -> String {
    s.lines()
        .map(|l| l.trim().trim_start_matches(['│', '×', '⚠']).trim())
        .collect::<Vec<_>>()
        .join(" ")
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

/// Runs `netpol ARGS` in `cwd`, killing it (and failing) if it runs past 20 s: the inputs
/// here used to hang it.
fn netpol_bounded(cwd: &Path, args: &[&str]) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netpol"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netpol");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return Run::from_output(child.wait_with_output().expect("output"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("netpol {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A directory with the manifests of a small valid cluster.
fn valid_dir(t: &TempDir) -> std::path::PathBuf {
    let dir = t.path().join("m");
    std::fs::create_dir_all(&dir).expect("mkdir");
    copy_case("upstream/port-81-only", &dir);
    std::fs::remove_file(dir.join("expect.yaml")).expect("no expect.yaml");
    dir
}

fn mkfifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o644)).expect("mkfifo");
}

#[test]
fn fifo_input_never_blocks() {
    // See: #11 (`-f` on a FIFO, or a directory holding one, hung forever).
    let t = tmp();
    let fifo = t.path().join("pipe.yaml");
    mkfifo(&fifo);
    let f = fifo.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &f]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("pipe.yaml: a FIFO: netpol reads only regular files"),
        "{}",
        run.stderr
    );

    let dir = valid_dir(&t);
    mkfifo(&dir.join("zz.yaml"));
    let d = dir.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &d]);
    run.expect_code(2);
    assert!(run.stderr.contains("zz.yaml: a FIFO"), "{}", run.stderr);

    // `netpol test` on a case holding one fails that case, without hanging.
    std::fs::write(
        dir.join("expect.yaml"),
        "assertions:\n  - {from: x/a, to: x/b, port: 81, allowed: true}\n",
    )
    .expect("write");
    let run = netpol_bounded(t.path(), &["test", &d]);
    run.expect_code(1);
    assert!(run.stdout.contains("zz.yaml: a FIFO"), "{}", run.stdout);
}

#[test]
fn device_input_fails_fast() {
    // See: #11 (`-f /dev/zero` grew until allocation failed).
    let t = tmp();
    for dev in ["/dev/zero", "/dev/null", "/dev/urandom"] {
        let run = netpol_bounded(t.path(), &["explain", "x/a", "x/b", "-f", dev]);
        run.expect_code(2);
        assert!(
            run.stderr.contains(&format!("{dev}: a character device")),
            "{}",
            run.stderr
        );
    }
    // A socket in a directory.
    let dir = valid_dir(&t);
    let _sock = std::os::unix::net::UnixListener::bind(dir.join("s.json")).expect("bind");
    let d = dir.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &d]);
    run.expect_code(2);
    assert!(run.stderr.contains("s.json: a socket"), "{}", run.stderr);
}

#[test]
fn oversized_input_fails_fast() {
    // See: #11 (no input size cap).
    let t = tmp();
    let big = t.path().join("big.yaml");
    let f = std::fs::File::create(&big).expect("create");
    f.set_len(65 * 1024 * 1024).expect("sparse file"); // over the default 64 MiB
    drop(f);
    let b = big.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &b]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("big.yaml: larger than the input cap of 64 MiB per file"),
        "{}",
        run.stderr
    );

    // The cap holds for all inputs together, and for stdin.
    let dir = valid_dir(&t);
    let pad = format!("# {}\n", "x".repeat(700 * 1024));
    for n in ["a.yaml", "b.yaml"] {
        std::fs::write(dir.join(n), &pad).expect("write");
    }
    let d = dir.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "--max-input-mib", "1", "-f", &d]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("inputs together are larger than the cap of 1 MiB"),
        "{}",
        run.stderr
    );
    let run = netpol_bounded(t.path(), &["matrix", "--max-input-mib", "2", "-f", &d]);
    run.expect_code(0);
    let mut child = Command::new(env!("CARGO_BIN_EXE_netpol"))
        .args(["matrix", "--max-input-mib", "1", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netpol");
    let mut stdin = child.stdin.take().expect("piped");
    // netpol stops reading at the cap: the rest of the write sees a closed pipe.
    let writer = std::thread::spawn(move || {
        use std::io::Write as _;
        let _ = stdin.write_all("#".repeat(4 * 1024 * 1024).as_bytes());
    });
    let run = Run::from_output(child.wait_with_output().expect("wait"));
    writer.join().expect("writer");
    run.expect_code(2);
    assert!(
        run.stderr.contains("-: larger than the input cap"),
        "{}",
        run.stderr
    );
}

#[test]
fn dangling_symlink_is_skipped_with_a_warning() {
    // See: #11 (an editor's `.#file.yaml` lock failed the whole run naming the directory).
    let t = tmp();
    let dir = valid_dir(&t);
    let d = dir.display().to_string();
    let before = netpol_bounded(t.path(), &["matrix", "--port", "81", "-f", &d]);
    before.expect_code(0);
    std::os::unix::fs::symlink("user@host.1234:1700000000", dir.join(".#policies.yaml"))
        .expect("symlink");
    let run = netpol_bounded(t.path(), &["matrix", "--port", "81", "-f", &d]);
    run.expect_code(0);
    assert_eq!(run.stdout, before.stdout);
    assert!(
        run.stderr
            .contains(".#policies.yaml: warning: skipped: dangling symlink"),
        "{}",
        run.stderr
    );
    // Named explicitly, it is an error.
    let l = dir.join(".#policies.yaml").display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &l]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("cannot follow symlink"),
        "{}",
        run.stderr
    );
    // `netpol test` skips it too.
    std::fs::write(
        dir.join("expect.yaml"),
        "assertions:\n  - {from: x/a, to: x/b, port: 81, allowed: true}\n",
    )
    .expect("write");
    let run = netpol_bounded(t.path(), &["test", &d]);
    run.expect_code(0);
}

#[test]
fn directory_symlink_loop_is_read_once() {
    // See: #11 (two symlinks to `.` made every walk fail; one read each file 41 times).
    let t = tmp();
    let dir = valid_dir(&t);
    let d = dir.display().to_string();
    let before = netpol_bounded(t.path(), &["matrix", "--port", "81", "-f", &d]);
    before.expect_code(0);
    std::os::unix::fs::symlink(".", dir.join("loop1")).expect("symlink");
    std::os::unix::fs::symlink(".", dir.join("loop2")).expect("symlink");
    std::fs::create_dir(dir.join("sub")).expect("mkdir");
    std::os::unix::fs::symlink("..", dir.join("sub/up")).expect("symlink");
    let run = netpol_bounded(t.path(), &["matrix", "--port", "81", "-f", &d]);
    run.expect_code(0);
    assert_eq!(run.stdout, before.stdout, "each file read once");
    assert!(
        run.stderr
            .contains("loop1: warning: skipped: directory already read"),
        "{}",
        run.stderr
    );
    std::fs::write(
        dir.join("expect.yaml"),
        "assertions:\n  - {from: x/a, to: x/b, port: 81, allowed: true}\n",
    )
    .expect("write");
    let run = netpol_bounded(t.path(), &["test", &d]);
    run.expect_code(0);
    assert!(run.stdout.contains("1 passed, 0 failed"), "{}", run.stdout);
}

#[test]
fn unknown_field_is_rejected_with_suggestion() {
    // See: #11 (`podSelector: {matchLabel: ...}` in a peer read as "every Pod", exit 0).
    let t = tmp();
    let dir = valid_dir(&t);
    let typo = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: typo, namespace: x}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabel: {pod: nobody}\n";
    std::fs::write(dir.join("typo.yaml"), typo).expect("write");
    let d = dir.display().to_string();
    let run = netpol_bounded(t.path(), &["explain", "x/b", "x/a", "-f", &d]);
    run.expect_code(2);
    assert!(
        flat(&run.stderr).contains("typo.yaml:9:21: error: NetworkPolicy x/typo: spec.ingress[0].from[0].podSelector.matchLabel: unknown field `matchLabel`, did you mean `matchLabels`?"),
        "{}",
        run.stderr
    );
    // `netpol test` fails the case.
    std::fs::write(
        dir.join("expect.yaml"),
        "assertions:\n  - {from: x/b, to: x/a, port: 81, allowed: true}\n",
    )
    .expect("write");
    let run = netpol_bounded(t.path(), &["test", &d]);
    run.expect_code(1);
    assert!(
        run.stdout.contains("unknown field `matchLabel`"),
        "{}",
        run.stdout
    );
}

#[test]
fn json_duplicate_key_is_rejected() {
    // See: #11 (JSON duplicate keys kept the last value silently; YAML's were refused).
    let t = tmp();
    let f = write(
        t.path(),
        "dup.json",
        r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "podSelector": {}}}"#,
    );
    let run = netpol_bounded(t.path(), &["matrix", "-f", &f]);
    run.expect_code(2);
    assert!(
        flat(&run.stderr).contains("duplicate mapping key: podSelector"),
        "{}",
        run.stderr
    );
}

#[test]
fn misspelled_kind_warns_with_nearest_kind() {
    // See: #11 (`NetworkPolcy`, `networkpolicy` and empty kinds were skipped silently).
    let t = tmp();
    let dir = valid_dir(&t);
    std::fs::write(
        dir.join("kinds.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: networkpolicy\nmetadata: {name: a, namespace: x}\n---\napiVersion: v1\nkind: ''\nmetadata: {name: b, namespace: x}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c, namespace: x}\n",
    )
    .expect("write");
    let d = dir.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &d]);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("unknown kind `networkpolicy` is skipped, did you mean `NetworkPolicy`?"),
        "{}",
        run.stderr
    );
    assert!(flat(&run.stderr).contains("empty `kind`"), "{}", run.stderr);
    assert!(
        !flat(&run.stderr).contains("ConfigMap"),
        "known kinds skip quietly: {}",
        run.stderr
    );
}

#[test]
fn yaml11_boolean_label_value_warns() {
    // See: #11 (`app: yes` is a string here, YAML 1.2, and `true` for kubectl, YAML 1.1).
    let t = tmp();
    let dir = valid_dir(&t);
    std::fs::write(
        dir.join("labels.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: z, namespace: x, labels: {plain: on, quoted: 'on'}}\nspec: {containers: [{name: c}]}\n",
    )
    .expect("write");
    let d = dir.display().to_string();
    let run = netpol_bounded(t.path(), &["matrix", "-f", &d]);
    run.expect_code(0);
    assert!(
        flat(&run.stderr).contains("metadata.labels.plain: plain `on` is the string \"on\" here (YAML 1.2) but the boolean true for kubectl (YAML 1.1)"),
        "{}",
        run.stderr
    );
    assert!(
        !flat(&run.stderr).contains("labels.quoted"),
        "{}",
        run.stderr
    );
}
