//! Hostile input and a hostile agent, through the built binary: DEL never fails, and
//! `timeoutSeconds` bounds the whole call. No kernel needed. See: #11

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_netpol-cni");

/// Runs the plugin with exactly `env` (plus `CNI_COMMAND`) and `stdin`; kills it and
/// fails past 20 s.
fn run(command: &str, env: &[(&str, &str)], stdin: &[u8]) -> (i32, String, String, Duration) {
    let start = Instant::now();
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let deadline = start + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("netpol-cni {command} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = start.elapsed();
    let out = child.wait_with_output().unwrap();
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    )
}

fn full_env(args: &str) -> Vec<(&'static str, String)> {
    vec![
        ("CNI_CONTAINERID", "c1".to_string()),
        ("CNI_NETNS", "/var/run/netns/none".to_string()),
        ("CNI_IFNAME", "eth0".to_string()),
        ("CNI_PATH", "/opt/cni/bin".to_string()),
        ("CNI_ARGS", args.to_string()),
    ]
}

fn conf(socket: &str, extra: &[(&str, Value)]) -> Vec<u8> {
    let mut c = json!({
        "cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
        "agentSocket": socket,
        "prevResult": {"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.9/24"}]},
    });
    for (k, v) in extra {
        c[*k] = v.clone();
    }
    c.to_string().into_bytes()
}

#[test]
fn del_never_fails_on_junk_input() {
    // See: #11 (DEL failed on junk stdin or a missing environment).
    let dir = tempfile::tempdir().unwrap();
    let absent = dir.path().join("no-agent.sock").display().to_string();
    let args = "K8S_POD_NAMESPACE=x;K8S_POD_NAME=a";
    let env = full_env(args);
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let good = conf(&absent, &[]);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>);
    let cases: Vec<Case<'_>> = vec![
        (
            "junk stdin",
            env_ref.clone(),
            b"\x00\xff not json {{{".to_vec(),
        ),
        ("empty stdin", env_ref.clone(), Vec::new()),
        ("json null", env_ref.clone(), b"null".to_vec()),
        ("no environment", Vec::new(), good.clone()),
        ("no container id", env_ref[1..].to_vec(), good.clone()),
        (
            "unsupported version",
            env_ref.clone(),
            conf(&absent, &[("cniVersion", json!("9.9.9"))]),
        ),
        (
            "invalid settings",
            env_ref.clone(),
            conf(&absent, &[("timeoutSeconds", json!(0))]),
        ),
        ("no agent", env_ref.clone(), good.clone()),
        ("huge stdin", env_ref.clone(), vec![b'{'; 4 << 20]),
    ];
    for (what, env, stdin) in cases {
        let (code, _, stderr, _) = run("DEL", &env, &stdin);
        assert_eq!(code, 0, "{what}: {stderr}");
        assert!(
            stderr.contains("netpol-cni: DEL"),
            "{what} is logged: {stderr}"
        );
    }
    // ADD still fails closed on the same junk.
    let (code, stdout, _, _) = run("ADD", &env_ref, b"junk");
    assert_ne!(code, 0);
    assert!(stdout.contains("\"code\""), "{stdout}");
}

#[test]
fn trickling_agent_cannot_outlive_the_timeout() {
    // See: #11 (`timeoutSeconds` was per read: an agent trickling one byte every 0.9 s
    // kept the plugin alive 40 s with a 2 s timeout).
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("slow.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let agent = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut req = [0u8; 4096];
        let _ = s.read(&mut req);
        // Never a newline: one byte every 200 ms, for up to 15 s.
        for _ in 0..75 {
            if stop2.load(Ordering::Relaxed) || s.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let env = full_env("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a");
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr, took) = run(
        "ADD",
        &env_ref,
        &conf(
            &socket.display().to_string(),
            &[("timeoutSeconds", json!(1))],
        ),
    );
    stop.store(true, Ordering::Relaxed);
    agent.join().unwrap();
    assert_eq!(code, 1, "{stdout} {stderr}");
    let e: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(e["code"], 11, "{e}");
    assert!(
        took < Duration::from_secs(5),
        "the 1 s deadline holds for the whole call: took {took:?}"
    );
}

/// One stdin through every command: no panic (exit 101), no hang; DEL exits 0; ADD and
/// CHECK either fail with a CNI error object on stdout or (a config good enough to reach
/// an absent agent) fail closed the same way.
fn every_command(stdin: &[u8], socket: &str) {
    let env = full_env("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a");
    let mut env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    env_ref.push(("CNI_NETNS", socket));
    for cmd in ["ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION", "BOGUS"] {
        let (code, stdout, stderr, _) = run(cmd, &env_ref, stdin);
        assert_ne!(code, 101, "{cmd} panicked: {stderr}");
        match cmd {
            "DEL" => assert_eq!(code, 0, "DEL: {stderr}"),
            "VERSION" => assert_eq!(code, 0, "VERSION: {stderr}"),
            "ADD" | "CHECK" | "BOGUS" => {
                assert_eq!(code, 1, "{cmd}: {stdout} {stderr}");
                let e: Value = serde_json::from_str(&stdout).unwrap();
                assert!(e["code"].as_u64().is_some(), "{cmd}: {e}");
            }
            _ => {}
        }
    }
}

#[test]
fn cni_stdin_corpus_replays() {
    // See: #11. Junk, empty, null, arrays, missing prevResult, bad settings, future
    // versions, deep nesting, duplicate keys.
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/fuzz/cni-stdin");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 8, "corpus walk found {} files", files.len());
    for f in files {
        every_command(&std::fs::read(&f).unwrap(), "/var/run/netns/none");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 12, .. Default::default() })]

    /// Arbitrary stdin: raw bytes, or a config with arbitrary values in the plugin's fields.
    #[test]
    fn cni_arbitrary_stdin_never_panics(
        raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        timeout in proptest::prelude::any::<i64>(),
        socket in "\\PC{0,20}",
    ) {
        every_command(&raw, "/var/run/netns/none");
        let conf = json!({
            "cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
            "agentSocket": socket, "timeoutSeconds": timeout,
            "prevResult": {"ips": [{"address": "10.0.0.9/24"}]},
        });
        every_command(conf.to_string().as_bytes(), "/var/run/netns/none");
    }
}

#[test]
fn full_accept_queue_cannot_outlive_the_timeout() {
    // See: #11 (the whole-call deadline covers `connect` too: a unix socket whose accept
    // queue is full blocks it).
    use socket2::{Domain, SockAddr, Socket, Type};
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("full.sock");
    let listener = Socket::new(Domain::UNIX, Type::STREAM, None).unwrap();
    listener.bind(&SockAddr::unix(&socket).unwrap()).unwrap();
    listener.listen(0).unwrap();
    // Backlog 0: one pending connection fills the queue; nobody ever accepts.
    let _pending = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    let env = full_env("K8S_POD_NAMESPACE=x;K8S_POD_NAME=a");
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (code, stdout, stderr, took) = run(
        "ADD",
        &env_ref,
        &conf(
            &socket.display().to_string(),
            &[("timeoutSeconds", json!(1))],
        ),
    );
    assert_eq!(code, 1, "{stdout} {stderr}");
    let e: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(e["code"], 11, "{e}");
    assert!(
        took < Duration::from_secs(5),
        "the 1 s deadline holds while connecting: took {took:?}"
    );
    drop(listener);
}
