//! `netpol lab`: JSON shape, agreement, drop reports, cleanup (also after a stale run,
//! `--keep` / `--down` and SIGINT), exit codes. Runs that need the kernel are skipped
//! without root, or fail under `NETPOL_REQUIRE_KERNEL=1` (as in the enforcer's tests).
// See: #4

use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use enforcer::netns;
use netpol_lab::lab::LAB_PREFIX;
use serde_json::Value;
use testkit::kernel::skip;

use crate::support::{EXCEPT_OUTSIDE_CIDR, case, netpol, netpol_stdin, repo_root};

/// Whether a kernel test runs: the test kit's one definition (skips print why; under
/// `NETPOL_REQUIRE_KERNEL=1` they fail instead).
pub(crate) use testkit::kernel::available;

/// The tests here assert that no lab namespace is left, so they run one at a time in
/// this process (each `netpol lab` has its own prefix, `netpollab<pid>`).
fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lab_namespaces() -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(LAB_PREFIX))
        .collect()
}

/// A pid no process has (so a lab named after it is a dead run's).
fn dead_pid() -> u32 {
    (1_000_000..4_000_000)
        .rev()
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
}

const SMALL: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {matchLabels: {app: a}}}
";

#[test]
fn lab_json_on_shop_agrees_reports_drops_and_cleans_up() {
    if !available("lab_json_on_shop_agrees_reports_drops_and_cleans_up") {
        return;
    }
    let _one = exclusive();
    let dir = case("apps/shop-multi-tier");
    let t = Instant::now();
    let run = netpol(&["lab", "-f", dir.to_str().unwrap(), "-o", "json"]);
    eprintln!(
        "netpol lab shop-multi-tier: {:.2}s",
        t.elapsed().as_secs_f64()
    );
    run.expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["agree"], true);
    let matrices = v["matrices"].as_array().unwrap();
    let services: Vec<String> = matrices
        .iter()
        .map(|m| format!("{}/{}", m["protocol"].as_str().unwrap(), m["port"]))
        .collect();
    assert_eq!(
        services,
        ["TCP/5432", "TCP/6379", "TCP/8080", "TCP/9090", "TCP/9121"],
        "every declared container port"
    );
    for m in matrices {
        let endpoints = m["endpoints"].as_array().unwrap();
        assert_eq!(endpoints.len(), 5, "{m}");
        assert_eq!(endpoints[0], "monitoring/prometheus");
        assert_eq!(m["allowed"], m["expected"], "{m}");
        assert_eq!(m["allowed"].as_array().unwrap().len(), 5);
    }
    // The same cells as `netpol matrix -o json`.
    let tcp8080 = matrices.iter().find(|m| m["port"] == 8080).unwrap();
    let compiler = netpol(&[
        "matrix",
        "--port",
        "8080",
        "-o",
        "json",
        "-f",
        dir.to_str().unwrap(),
    ]);
    let compiler: Value = serde_json::from_str(&compiler.stdout).unwrap();
    assert_eq!(tcp8080["expected"], compiler["allowed"]);
    assert_eq!(tcp8080["endpoints"], compiler["endpoints"]);

    let drops = v["drops"].as_array().unwrap();
    assert!(!drops.is_empty());
    assert!(drops.iter().all(|d| d["msg"] == "netpol drop"));
    // frontend -> db on 5432 is denied on both sides; it is dropped on the way out.
    let d = drops
        .iter()
        .find(|d| {
            d["src"]["pod"] == "shop/frontend"
                && d["dst"]["pod"] == "shop/db"
                && d["dst_port"] == 5432
        })
        .unwrap();
    assert_eq!(d["pod"], "shop/frontend");
    assert_eq!(d["direction"], "egress");
    assert_eq!(d["protocol"], "TCP");
    assert!(
        d["policies"]
            .as_array()
            .unwrap()
            .contains(&"shop/frontend".into())
    );
    assert_eq!(v["disagreements"], Value::Array(Vec::new()));
    assert_eq!(v["pods"].as_array().unwrap().len(), 5);
    assert!(v["timings_ms"]["total_ms"].as_u64().unwrap() > 0);
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
}

#[test]
fn lab_text_keep_then_down() {
    if !available("lab_text_keep_then_down") {
        return;
    }
    let _one = exclusive();
    let run = netpol_stdin(&["lab", "-f", "-", "--keep"], SMALL);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("TCP/80: kernel agrees with netpol matrix"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains("x/b -> x/a TCP 80 dropped (ingress at x/a, isolated by x/deny-all)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("(assigned)"), "{}", run.stdout);
    // The run's own prefix: `netpollab<pid>`.
    let at = run.stderr.find("ip netns exec ").unwrap() + "ip netns exec ".len();
    let prefix = run.stderr[at..].split("-0 ").next().unwrap().to_owned();
    assert!(prefix.starts_with(LAB_PREFIX), "{prefix}");
    assert!(
        prefix[LAB_PREFIX.len()..].parse::<u32>().is_ok(),
        "{prefix}"
    );
    assert!(run.stderr.contains("netpol lab --down"), "{}", run.stderr);
    let kept = lab_namespaces();
    assert_eq!(kept.len(), 4, "node, two Pods, the lab's DNS Pod: {kept:?}");
    assert!(kept.iter().all(|n| n.starts_with(&format!("{prefix}-"))));
    // The table is still enforced in the kept namespace.
    let listing = netns::exec(
        &format!("{prefix}-0"),
        "nft",
        &["list", "table", "inet", "netpol"],
        None,
    )
    .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("x/deny-all"), "{listing}");

    let down = netpol(&["lab", "--down"]);
    down.expect_code(0);
    assert!(
        down.stderr.contains(&format!("{prefix}-hub")),
        "{}",
        down.stderr
    );
    assert!(lab_namespaces().is_empty());
}

#[test]
fn lab_removes_a_stale_lab_first() {
    if !available("lab_removes_a_stale_lab_first") {
        return;
    }
    let _one = exclusive();
    // A dead run's lab, a lab of the fixed prefix older versions used, and the lab of a
    // process that runs (this one): only the first two are leftovers. See: #9, #10
    let dead = format!("{LAB_PREFIX}{}", dead_pid());
    let live = format!("{LAB_PREFIX}{}", std::process::id());
    for n in ["hub", "0", "4"] {
        netns::add(&format!("{dead}-{n}")).unwrap();
    }
    netns::add(&format!("{LAB_PREFIX}-hub")).unwrap();
    netns::add(&format!("{live}-hub")).unwrap();
    let run = netpol_stdin(&["lab", "-f", "-", "-o", "json"], SMALL);
    let still = lab_namespaces();
    let _ = netns::delete(&format!("{live}-hub"));
    run.expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let notes = v["notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("removed 4 namespace(s) left by an earlier lab")),
        "{notes:?}"
    );
    assert_eq!(
        still,
        [format!("{live}-hub")],
        "a running lab's namespace stays"
    );
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
}

#[test]
fn two_labs_run_at_once() {
    // See: #9, #10 — each run has its own prefix and removes only its own namespaces.
    if !available("two_labs_run_at_once") {
        return;
    }
    let _one = exclusive();
    let dir = case("upstream/pod-selector");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_netpol"))
            .args(["lab", "-f", dir.to_str().unwrap(), "-o", "json"])
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let mut prefixes = Vec::new();
    for out in [a, b] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stderr}
{v}"
        );
        assert_eq!(v["agree"], true, "{v}");
        assert_eq!(v["disagreements"], Value::Array(Vec::new()));
        assert!(
            v["notes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| !n.as_str().unwrap().starts_with("removed")),
            "neither run removed the other's namespaces: {v}"
        );
        prefixes.push(v["prefix"].as_str().unwrap().to_owned());
    }
    assert_ne!(prefixes[0], prefixes[1]);
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
}

#[test]
fn lab_tears_down_on_sigint() {
    if !available("lab_tears_down_on_sigint") {
        return;
    }
    let _one = exclusive();
    let dir = case("upstream/pod-selector");
    let child = Command::new(env!("CARGO_BIN_EXE_netpol"))
        .args(["lab", "-f", dir.to_str().unwrap()])
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Only this child's namespaces: other labs (another test binary, a user's run) may
    // exist at the same time.
    let own = format!("{LAB_PREFIX}{}-", child.id());
    let mine = || -> Vec<String> {
        lab_namespaces()
            .into_iter()
            .filter(|n| n.starts_with(&own))
            .collect()
    };
    // Wait until the lab is being built, then interrupt it.
    let start = Instant::now();
    while !mine().iter().any(|n| n.ends_with("-8")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "lab never came up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(mine().is_empty(), "{:?}", mine());
}

#[test]
fn lab_refuses_invalid_input_and_inputs_without_pods() {
    // Input is checked before the kernel: no root needed.
    let bad = netpol_stdin(&["lab", "-f", "-"], EXCEPT_OUTSIDE_CIDR);
    bad.expect_code(2);
    assert!(
        bad.stderr.contains("must be a strict subset"),
        "{}",
        bad.stderr
    );
    let none = netpol_stdin(
        &["lab", "-f", "-"],
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: w, namespace: x}\nspec: {selector: {matchLabels: {a: b}}, template: {metadata: {labels: {a: b}}, spec: {containers: [{name: c}]}}}\n",
    );
    none.expect_code(2);
    assert!(
        none.stderr.contains("no Pods to put in a lab"),
        "{}",
        none.stderr
    );
    assert!(none.stderr.contains("x/deployment/w"), "{}", none.stderr);
    let dup = netpol_stdin(
        &["lab", "-f", "-"],
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.0.0.1}\n",
    );
    dup.expect_code(2);
    assert!(
        dup.stderr.contains("both have IP 10.0.0.1"),
        "{}",
        dup.stderr
    );
}

#[test]
fn lab_without_root_exits_3() {
    // As root, drop to nobody with setpriv; without root, run as is.
    let dir = case("upstream/pod-selector");
    let args = ["lab", "-f", dir.to_str().unwrap()];
    let out = if nix_is_root() {
        let o = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_netpol"))
            .args(args)
            .current_dir("/")
            .output();
        match o {
            Ok(o) if matches!(o.status.code(), Some(126 | 127)) || o.status.code().is_none() => {
                skip(
                    "lab_without_root_exits_3",
                    "setpriv cannot run netpol as nobody",
                );
                return;
            }
            Ok(o) => o,
            Err(e) => {
                skip("lab_without_root_exits_3", &format!("no setpriv ({e})"));
                return;
            }
        }
    } else {
        Command::new(env!("CARGO_BIN_EXE_netpol"))
            .args(args)
            .output()
            .unwrap()
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("cannot read path") {
        skip(
            "lab_without_root_exits_3",
            "nobody cannot read the repository",
        );
        return;
    }
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("needs root"), "{stderr}");
}

fn nix_is_root() -> bool {
    // /proc/self/status "Uid:" real effective saved fs.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[test]
fn lab_resolves_names_through_its_own_kube_dns() {
    // See: #10 — a default-deny namespace with the common allow-DNS policy resolves
    // Service names through the lab's kube-dns; without that policy it cannot.
    if !available("lab_resolves_names_through_its_own_kube_dns") {
        return;
    }
    let _one = exclusive();
    let dir = case("services/default-deny-allow-dns");
    let run = netpol(&["lab", "-f", dir.to_str().unwrap(), "-o", "json"]);
    run.expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["agree"], true, "{v}");
    let dns = v["dns"].as_array().unwrap();
    // Two Pods x two Services (app/server, kube-system/kube-dns).
    assert_eq!(dns.len(), 4, "{dns:?}");
    for c in dns {
        assert_eq!(c["server"], "10.96.0.10:53", "{c}");
        assert_eq!(c["expected"], true, "{c}");
        assert_eq!(c["resolved"], true, "{c}");
        assert_eq!(c["agree"], true, "{c}");
    }
    let server = dns
        .iter()
        .find(|c| c["src"] == "app/client" && c["name"] == "server.app.svc.cluster.local")
        .unwrap();
    assert_eq!(server["answer"], serde_json::json!(["10.96.0.50"]));
    // The DNS Pod is no probed Pod; the Service cells and the hairpin drop are there.
    assert_eq!(v["pods"].as_array().unwrap().len(), 2);
    let cells = v["services"].as_array().unwrap();
    assert!(
        cells.iter().all(|c| c["service"] != "kube-system/kube-dns"),
        "{cells:?}"
    );
    let hairpin = cells.iter().find(|c| c["src"] == "app/server").unwrap();
    assert_eq!(hairpin["expected"], serde_json::json!([false]));
    assert!(
        v["drops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["src"]["pod"] == "app/server"
                && d["dst"]["pod"] == "app/server"
                && d["direction"] == "ingress"
                && d["netns"] == v["hub"]
                && d["services"] == serde_json::json!(["app/server"])),
        "{}",
        v["drops"]
    );

    // Without the allow-DNS policy, no name resolves, as the compiler says.
    let cluster = std::fs::read_to_string(dir.join("cluster.yaml")).unwrap();
    let deny = "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: default-deny, namespace: app}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n";
    let run = netpol_stdin(
        &["lab", "-f", "-", "-o", "json"],
        &format!("{cluster}{deny}"),
    );
    run.expect_code(0);
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    let dns = v["dns"].as_array().unwrap();
    assert_eq!(dns.len(), 4);
    for c in dns {
        assert_eq!(c["expected"], false, "{c}");
        assert_eq!(c["resolved"], false, "{c}");
        assert_eq!(c["agree"], true, "{c}");
    }
    assert!(lab_namespaces().is_empty(), "{:?}", lab_namespaces());
}
