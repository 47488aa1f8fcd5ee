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
