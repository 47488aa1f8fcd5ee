//! `netpol-cni` driven exactly as a container runtime drives it (`CNI_*` environment,
//! network configuration with `prevResult` on stdin, a real network namespace) against
//! a real agent (in this process) on a real kernel: a new Pod is enforced before ADD
//! returns, its IP is in its peers' sets at once (real packets prove both), DEL and
//! CHECK, fail closed and fail open, a namespace given as a `/proc` path.
// See: #5

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CniConfig, CompiledRulesets};
use enforcer::applier::NftApplier;
use enforcer::manifests::ManifestDir;
use enforcer::netns;
use netpol_lab::probe::{Listener, Prober};
use netpol_lab::topology::{HostSpec, Topology};
use policy_compiler::Protocol;
use serde_json::{Value, json};

use testkit::kernel::available;

const BIN: &str = env!("CARGO_BIN_EXE_netpol-cni");

/// One run of the plugin.
struct Cni {
    code: i32,
    stdout: String,
    stderr: String,
}

fn cni(command: &str, env: &[(&str, &str)], conf: &Value) -> Cni {
    let mut child = Command::new(BIN)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin that does not read its configuration (no command given) closes the pipe.
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    let out = child.wait_with_output().unwrap();
    Cni {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What a bridge + host-local plugin before us would have returned.
fn prev_result(netns_path: &str, ip4: &str, ip6: &str) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [
            {"name": "cni0", "mac": "0a:58:0a:00:00:01"},
            {"name": "eth0", "mac": "0a:58:0a:00:00:0d", "sandbox": netns_path}
        ],
        "ips": [
            {"address": format!("{ip4}/24"), "gateway": "10.0.0.1", "interface": 1},
            {"address": format!("{ip6}/64"), "interface": 1}
        ],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dns": {}
    })
}

fn conf(socket: &Path, prev: &Value, extra: &[(&str, Value)]) -> Value {
    let mut c = json!({
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "netpol-cni",
        "agentSocket": socket,
        "timeoutSeconds": 10,
        "prevResult": prev,
    });
    for (k, v) in extra {
        c[*k] = v.clone();
    }
    c
}

fn pod_args(ns: &str, name: &str, uid: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=sandbox-{name};K8S_POD_UID={uid}"
    )
}

/// Lab hosts `(name, IPv4, IPv6)` on one bridge, namespaces named `<tag><pid>-N`.
fn topology(tag: &str, hosts: &[(&str, &str, &str)]) -> Topology {
    let prefix = format!("{tag}{}", std::process::id() % 100_000);
    Topology::cleanup_stale(&prefix).unwrap();
    let specs: Vec<HostSpec> = hosts
        .iter()
        .map(|(name, v4, v6)| {
            HostSpec::new(
                *name,
                Some(format!("{v4}/24").parse().unwrap()),
                Some(format!("{v6}/64").parse().unwrap()),
            )
        })
        .collect();
    Topology::build(&prefix, &specs).unwrap()
}

fn table(netns: &str) -> Option<String> {
    let out = netns::exec(netns, "nft", &["list", "table", "inet", "netpol"], None).unwrap();
    out.success
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Lab {
    rt: tokio::runtime::Runtime,
    dir: tempfile::TempDir,
    socket: PathBuf,
    records: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("run/cni.sock");
        let records = dir.path().join("records");
        std::fs::create_dir_all(dir.path().join("manifests")).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        Self {
            rt,
            dir,
            socket,
            records,
        }
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("manifests")
    }

    fn config(&self) -> AgentConfig {
        AgentConfig {
            verify_interval: Duration::from_millis(500),
            drops: None,
            cni: Some(CniConfig {
                socket: self.socket.clone(),
                records: Some(self.records.clone()),
                chain: None,
            }),
            ..AgentConfig::default()
        }
    }

    fn start(&self) -> Agent {
        self.start_with(self.config())
    }

    fn start_with(&self, config: AgentConfig) -> Agent {
        let agent = self
            .rt
            .block_on(Agent::start(
                config,
                ManifestDir::new(self.manifests(), None),
                Arc::new(CompiledRulesets::default()),
                Arc::new(NftApplier),
            ))
            .unwrap();
        wait_until("the agent's first sync", || agent.ready());
        agent
    }

    fn stop(&self, agent: Agent) {
        self.rt.block_on(agent.stop()).unwrap();
    }
}

const NAMESPACE: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n";

/// `srv` accepts port 80 from `app=web` only; `web` accepts nothing and may only reach
/// `srv` on 80.
const POLICIES: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: srv-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: srv}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-locked, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: srv}}}], ports: [{port: 80}]}]
";

#[test]
fn add_enforces_before_returning_and_updates_peers_within_a_pass() {
    if !available("add_enforces_before_returning_and_updates_peers_within_a_pass") {
        return;
    }
    let topo = topology(
        "npcni",
        &[
            ("srv", "10.0.0.11", "fd00::11"),
            ("web", "10.0.0.12", "fd00::12"),
        ],
    );
    let srv = topo.host("srv").unwrap().clone();
    let web = topo.host("web").unwrap().clone();

    let lab = Lab::new();
    // `srv` runs already (annotated netns, IP in its status); `web` was just scheduled:
    // the API knows its labels, not its IP, and no netns is known for it.
    let pods = format!(
        "{NAMESPACE}apiVersion: v1\nkind: Pod\nmetadata: {{name: srv, namespace: shop, labels: {{app: srv}}, annotations: {{netpol.io/netns: {}}}}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.11, podIPs: [{{ip: 10.0.0.11}}, {{ip: 'fd00::11'}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: shop, uid: web-uid-1, labels: {{app: web}}}}\nspec: {{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\nstatus: {{phase: Pending}}\n",
        srv.netns
    );
    std::fs::write(lab.manifests().join("pods.yaml"), pods).unwrap();
    std::fs::write(lab.manifests().join("policies.yaml"), POLICIES).unwrap();
    let agent = lab.start();
    let srv_table = table(&srv.netns).expect("srv enforced");
    assert!(
        !srv_table.contains("10.0.0.12"),
        "web's IP is not known yet:\n{srv_table}"
    );
    assert!(table(&web.netns).is_none(), "web not enforced before ADD");

    let listeners = [
        Listener::new("srv", Protocol::Tcp, 80),
        Listener::new("web", Protocol::Tcp, 80),
    ];
    let prober = Prober::start(&topo, &listeners).unwrap();
    let probe = |from: &str, to: &str| {
        let r = prober
            .probe(
                from,
                to.parse().unwrap(),
                Protocol::Tcp,
                80,
                Duration::from_millis(700),
            )
            .unwrap();
        r.connected
    };
    assert!(
        !probe("web", "10.0.0.11"),
        "srv does not know web yet: dropped"
    );

    let netns_path = netns::path(&web.netns).display().to_string();
    let prev = prev_result(&netns_path, "10.0.0.12", "fd00::12");
    let args = pod_args("shop", "web", "web-uid-1");
    let env = [
        ("CNI_CONTAINERID", "sandbox-web"),
        ("CNI_NETNS", netns_path.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args.as_str()),
    ];
    let add = cni("ADD", &env, &conf(&lab.socket, &prev, &[]));
    assert_eq!(add.code, 0, "ADD failed: {} {}", add.stdout, add.stderr);
    // Checked the moment ADD returned: no Pod runs a moment without its policy.
    let web_table = table(&web.netns).expect("web enforced when ADD returned");
    assert!(
        web_table.contains("10.0.0.11"),
        "web may reach srv:\n{web_table}"
    );
    // The peers learn web's IP in the pass that follows the answer (the CNI ADD fast
    // path answers once web's own table is enforced; docs/agent.md): until then srv
    // drops web, never the reverse. See: #12
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut srv_table = table(&srv.netns).unwrap();
    while !srv_table.contains("10.0.0.12") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        srv_table = table(&srv.netns).unwrap();
    }
    assert!(
        srv_table.contains("10.0.0.12"),
        "srv knows web's new IP within a pass:\n{srv_table}"
    );
    let result: Value = serde_json::from_str(&add.stdout).unwrap();
    // Passed through as the spec's result type; an all-empty `dns` is left out, as the
    // reference implementation does.
    let mut want = prev.clone();
    want.as_object_mut().unwrap().remove("dns");
    assert_eq!(result, want, "prevResult passed through");
    // Real packets: web -> srv:80 allowed (both sides know each other), srv -> web denied.
    assert!(probe("web", "10.0.0.11"), "web -> srv:80 allowed after ADD");
    assert!(!probe("srv", "10.0.0.12"), "web is isolated for ingress");
    let metrics = agent.metrics().encode();
    assert!(
        metrics.contains("netpol_cni_requests_total{command=\"ADD\",result=\"ok\"} 1"),
        "{metrics}"
    );

    // CHECK: in place.
    let check = cni("CHECK", &env, &conf(&lab.socket, &prev, &[]));
    assert_eq!(
        (check.code, check.stdout.as_str()),
        (0, ""),
        "{}",
        check.stderr
    );
    // The record is on disk for a restarted agent.
    assert!(lab.records.join("shop_web.json").exists());

    // A restarted agent knows web's netns and IP from the records: a policy change
    // reaches web's table without any new CNI call.
    drop(prober);
    lab.stop(agent);
    let agent = lab.start();
    assert!(
        !table(&web.netns).unwrap().contains("81"),
        "port 81 not allowed yet"
    );
    std::fs::write(
        lab.manifests().join("policies.yaml"),
        POLICIES.replace(
            "ports: [{port: 80}]}]\n",
            "ports: [{port: 80}, {port: 81}]}]\n",
        ),
    )
    .unwrap();
    wait_until("web's table to allow port 81 after the restart", || {
        table(&web.netns).is_some_and(|t| t.contains("81"))
    });
    assert!(
        table(&srv.netns).unwrap().contains("10.0.0.12"),
        "srv still knows web"
    );
    let prober = Prober::start(&topo, &listeners).unwrap();
    let probe = |from: &str, to: &str| {
        let r = prober
            .probe(
                from,
                to.parse().unwrap(),
                Protocol::Tcp,
                80,
                Duration::from_millis(700),
            )
            .unwrap();
        r.connected
    };
    assert!(probe("web", "10.0.0.11"), "still allowed after the restart");

    // A late DEL of an older sandbox changes nothing.
    let mut stale = env;
    stale[0] = ("CNI_CONTAINERID", "sandbox-old");
    assert_eq!(cni("DEL", &stale, &conf(&lab.socket, &prev, &[])).code, 0);
    std::thread::sleep(Duration::from_millis(300));
    assert!(table(&srv.netns).unwrap().contains("10.0.0.12"));

    // DEL: the record is gone, the IP leaves srv's sets (it may be reused by another Pod).
    let del = cni("DEL", &env, &conf(&lab.socket, &prev, &[]));
    assert_eq!((del.code, del.stdout.as_str()), (0, ""), "{}", del.stderr);
    wait_until("web's IP gone from srv's sets", || {
        !table(&srv.netns).unwrap().contains("10.0.0.12")
    });
    assert!(!lab.records.join("shop_web.json").exists());
    wait_until("web's own table removed (its sandbox is gone)", || {
        table(&web.netns).is_none()
    });
    let check = cni("CHECK", &env, &conf(&lab.socket, &prev, &[]));
    assert_eq!(check.code, 1, "CHECK after DEL fails: {}", check.stdout);

    // An unknown Pod is refused with the reason (after the short timeout), fail closed.
    let ghost_args = pod_args("shop", "ghost", "g-1");
    let ghost_env = [
        ("CNI_CONTAINERID", "sandbox-ghost"),
        ("CNI_NETNS", netns_path.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", ghost_args.as_str()),
    ];
    let ghost = cni(
        "ADD",
        &ghost_env,
        &conf(&lab.socket, &prev, &[("timeoutSeconds", json!(1))]),
    );
    assert_eq!(ghost.code, 1, "{}", ghost.stdout);
    let e: Value = serde_json::from_str(&ghost.stdout).unwrap();
    assert_eq!(e["code"], 100, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("not known"), "{e}");

    // STATUS (CNI 1.1): ready while the agent answers on its socket.
    let v11 = conf(&lab.socket, &prev, &[("cniVersion", json!("1.1.0"))]);
    let status = cni("STATUS", &[], &v11);
    assert_eq!(status.code, 0, "{} {}", status.stdout, status.stderr);

    drop(prober);
    lab.stop(agent);

    let status = cni("STATUS", &[], &v11);
    assert_ne!(status.code, 0, "not ready without the agent");
    let e: Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(e["code"], 50, "{e}");

    // Agent down: ADD fails closed (try again later), or passes with failOpen.
    let down = cni("ADD", &env, &conf(&lab.socket, &prev, &[]));
    assert_eq!(down.code, 1);
    let e: Value = serde_json::from_str(&down.stdout).unwrap();
    assert_eq!(e["code"], 11, "{e}");
    let open = cni(
        "ADD",
        &env,
        &conf(&lab.socket, &prev, &[("failOpen", json!(true))]),
    );
    assert_eq!(open.code, 0, "{}", open.stdout);
    assert!(open.stderr.contains("failOpen"), "{}", open.stderr);
    // DEL never fails, even without the agent.
    assert_eq!(cni("DEL", &env, &conf(&lab.socket, &prev, &[])).code, 0);

    topo.teardown().unwrap();
}

#[test]
fn agent_that_never_answers_fails_closed_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("mute.sock");
    // Accepts and reads, never answers.
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let hold = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let prev = prev_result("/var/run/netns/none", "10.0.0.50", "fd00::50");
    let args = pod_args("shop", "web", "u");
    let env = [
        ("CNI_CONTAINERID", "c"),
        ("CNI_NETNS", "/var/run/netns/none"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args.as_str()),
    ];
    let start = Instant::now();
    let out = cni(
        "ADD",
        &env,
        &conf(&socket, &prev, &[("timeoutSeconds", json!(1))]),
    );
    let took = start.elapsed();
    assert_eq!(out.code, 1);
    let e: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(e["code"], 11, "{e}");
    assert!(e["details"].as_str().unwrap().contains("1000 ms"), "{e}");
    assert!(
        took < Duration::from_secs(3),
        "gave up at its deadline, not the agent's"
    );
    hold.join().unwrap();
}

#[test]
fn version_answers_without_an_agent() {
    let out = cni("VERSION", &[], &json!({"cniVersion": "0.3.1"}));
    assert_eq!(out.code, 0);
    let v: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(
        v["supportedVersions"],
        json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
    );
    // Without CNI_COMMAND (a person running it): the about text, as CNI's skel does.
    let out = cni("", &[], &json!({}));
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("netpol-cni"), "{}", out.stderr);
    // An unknown command: the CNI error object.
    let out = cni("RM", &[], &json!({}));
    assert_ne!(out.code, 0);
    let e: Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(e["code"].as_u64().is_some(), "{e}");
}

#[test]
fn netns_given_as_a_proc_path_is_enforced() {
    if !available("netns_given_as_a_proc_path_is_enforced") {
        return;
    }
    // A sandbox whose namespace is not bind-mounted under /var/run/netns: only
    // /proc/<pid>/ns/net names it.
    let mut holder = Command::new("unshare")
        .args(["--net", "sleep", "60"])
        .spawn()
        .unwrap();
    let path = format!("/proc/{}/ns/net", holder.id());
    wait_until("the unshared namespace", || {
        std::fs::read_link(&path).ok() != std::fs::read_link("/proc/self/ns/net").ok()
    });
    let lab = Lab::new();
    let pods = format!(
        "{NAMESPACE}apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: shop, labels: {{app: web}}}}\nspec: {{containers: [{{name: c}}]}}\n"
    );
    std::fs::write(lab.manifests().join("pods.yaml"), pods).unwrap();
    std::fs::write(lab.manifests().join("policies.yaml"), POLICIES).unwrap();
    let agent = lab.start();
    let prev = prev_result(&path, "10.0.0.77", "fd00::77");
    let args = pod_args("shop", "web", "u-proc");
    let env = [
        ("CNI_CONTAINERID", "sandbox-proc"),
        ("CNI_NETNS", path.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args.as_str()),
    ];
    let add = cni("ADD", &env, &conf(&lab.socket, &prev, &[]));
    assert_eq!(add.code, 0, "{} {}", add.stdout, add.stderr);
    let listed = table(&path).expect("table in the /proc-named namespace");
    assert!(listed.contains("chain ingress"), "{listed}");
    assert!(
        table(&format!("/proc/{}/ns/net", std::process::id())).is_none(),
        "host untouched"
    );
    lab.stop(agent);
    holder.kill().unwrap();
    holder.wait().unwrap();
}

/// A Pod that started before the plugin (no CNI record, no annotation) is found by its
/// IPs and enforced; real packets prove the table.
#[test]
fn pods_started_before_the_plugin_are_found_by_ip() {
    if !available("pods_started_before_the_plugin_are_found_by_ip") {
        return;
    }
    // Addresses no other test uses: discovery scans every namespace of the machine.
    let topo = topology(
        "npold",
        &[
            ("old", "10.77.0.21", "fd00:77::21"),
            ("cli", "10.77.0.22", "fd00:77::22"),
        ],
    );
    let old = topo.host("old").unwrap().clone();
    let lab = Lab::new();
    let pods = format!(
        "{NAMESPACE}apiVersion: v1\nkind: Pod\nmetadata: {{name: old, namespace: shop, labels: {{app: web}}}}\nspec: {{nodeName: n1, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.77.0.21, podIPs: [{{ip: 10.77.0.21}}, {{ip: 'fd00:77::21'}}]}}\n"
    );
    std::fs::write(lab.manifests().join("pods.yaml"), pods).unwrap();
    std::fs::write(lab.manifests().join("policies.yaml"), POLICIES).unwrap();
    let config = AgentConfig {
        node: Some("n1".into()),
        discovery: Some(enforcer::discovery::DiscoveryOptions::default()),
        ..lab.config()
    };
    let agent = lab.start_with(config);
    wait_until("the old Pod's table", || table(&old.netns).is_some());
    let listeners = [Listener::new("old", Protocol::Tcp, 80)];
    let prober = Prober::start(&topo, &listeners).unwrap();
    let r = prober
        .probe(
            "cli",
            "10.77.0.21".parse().unwrap(),
            Protocol::Tcp,
            80,
            Duration::from_millis(700),
        )
        .unwrap();
    assert!(
        !r.connected,
        "the old Pod is isolated for ingress: {}",
        r.detail
    );
    drop(prober);
    lab.stop(agent);
    topo.teardown().unwrap();
}

/// The init container's command and its undo, through the binary.
#[test]
fn install_and_uninstall_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let (bin, conf) = (dir.path().join("bin"), dir.path().join("net.d"));
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::create_dir_all(&conf).unwrap();
    let list = conf.join("10-containerd-net.conflist");
    let original = r#"{"cniVersion":"1.0.0","name":"containerd-net","plugins":[{"type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}]]}},{"type":"portmap","capabilities":{"portMappings":true}}]}"#;
    std::fs::write(&list, original).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (b, c) = (bin.to_str().unwrap(), conf.to_str().unwrap());
    let (code, out, err) = run(&[
        "install",
        "--bin-dir",
        b,
        "--conf-dir",
        c,
        "--timeout-seconds",
        "20",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        std::fs::read(bin.join("netpol-cni")).unwrap(),
        std::fs::read(BIN).unwrap()
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&list).unwrap()).unwrap();
    let last = v["plugins"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "netpol-cni");
    assert_eq!(last["timeoutSeconds"], 20);
    // The installed binary answers VERSION as a runtime would call it.
    let installed = Command::new(bin.join("netpol-cni"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&installed.stdout).contains("supportedVersions"));
    let (code, out, err) = run(&[
        "install",
        "--bin-dir",
        b,
        "--conf-dir",
        c,
        "--timeout-seconds",
        "20",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["uninstall", "--bin-dir", b, "--conf-dir", c]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!bin.join("netpol-cni").exists());
    let back: Value = serde_json::from_str(&std::fs::read_to_string(&list).unwrap()).unwrap();
    assert_eq!(back, serde_json::from_str::<Value>(original).unwrap());
    // Usage errors (clap's) exit 2 naming the flag, with the usage; `--help` exits 0.
    // See: #9
    let (code, _, err) = run(&["install", "--bogus"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("'--bogus'") && err.contains("Usage: netpol-cni install"),
        "{err}"
    );
    let (code, _, err) = run(&["install", "--timeout-seconds", "601"]);
    assert_eq!(code, 2);
    assert!(err.contains("'--timeout-seconds <N>'"), "{err}");
    for help in [&["install", "--help"][..], &["--help"], &["-h"]] {
        let (code, out, err) = run(help);
        assert_eq!(code, 0, "{help:?}: {err}");
        assert!(out.contains("install"), "{help:?}: {out}");
    }
    // A failure of the installation itself (no configuration directory): the error
    // naming the directory, exit 2.
    let missing = dir.path().join("missing");
    let (code, out, err) = run(&[
        "install",
        "--bin-dir",
        b,
        "--conf-dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        err.starts_with("netpol-cni: ") && err.contains("missing"),
        "{err}"
    );
}
