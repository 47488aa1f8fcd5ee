//! CNI `ADD`s beside a pass in flight, against the real kernel: while a pass is held in
//! the middle of its peer updates, a burst of `ADD`s through the plugin is answered,
//! each with its own table already in its namespace (listed from the kernel before the
//! pass goes on); the passes that follow bring every new Pod into its peers' tables.
//! See: #12

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CniConfig, CompiledRulesets};
use enforcer::applier::{Applier, ApplyError, NetlinkApplier};
use enforcer::manifests::ManifestDir;
use enforcer::netns;
use enforcer::nfnl::ElementOp;
use enforcer::state::PodKey;
use netpol_cni::plugin::NetpolCni;
use rscni_plugin::cni::Cni;
use rscni_plugin::test_util::ArgsBuilder;

use crate::kernel;

/// [`NetlinkApplier`] whose applies in one namespace stop, once armed, until the test
/// lets the first of them go (a pass held in flight: channels, no sleeps).
struct Gate {
    inner: NetlinkApplier,
    netns: String,
    armed: AtomicBool,
    entered: Mutex<mpsc::Sender<()>>,
    release: Mutex<mpsc::Receiver<()>>,
}

impl Gate {
    fn hold(&self, netns: &str) {
        if netns == self.netns && self.armed.swap(false, Ordering::SeqCst) {
            self.entered.lock().unwrap().send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
        }
    }
}

impl Applier for Gate {
    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        self.hold(netns);
        self.inner.apply(pod, netns, ruleset)
    }
    fn apply_ruleset(
        &self,
        pod: &PodKey,
        netns: &str,
        text: &str,
        ruleset: Option<&policy_compiler::ruleset::Ruleset>,
    ) -> Result<(), ApplyError> {
        self.hold(netns);
        self.inner.apply_ruleset(pod, netns, text, ruleset)
    }
    fn update(
        &self,
        pod: &PodKey,
        netns: &str,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        self.hold(netns);
        self.inner.update(pod, netns, ops, generation, ruleset)
    }
    fn generation(&self, pod: &PodKey, netns: &str) -> Result<Option<u32>, ApplyError> {
        self.inner.generation(pod, netns)
    }
    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        self.inner.remove(pod, netns)
    }
    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        self.inner.list(pod, netns)
    }
    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        self.inner.apply_node(ruleset)
    }
    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        self.inner.list_node()
    }
    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        self.inner.node_addresses()
    }
}

/// `a` (local, in `<p>-a`) accepts `app: new`; `n0..n3` are Pending Pods that accept
/// `app: a` and each other.
fn cluster(p: &str, adds: usize) -> String {
    let mut out = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: a}}, annotations: {{netpol.io/netns: {p}-a}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.0.0.1}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: a, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: new}}}}}}]}}]\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: new, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: new}}}}\n  ingress: [{{from: [{{podSelector: {{matchLabels: {{app: a}}}}}}, {{podSelector: {{matchLabels: {{app: new}}}}}}], ports: [{{port: 80}}]}}]\n"
    );
    for i in 0..adds {
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: n{i}, namespace: x, uid: u{i}, labels: {{app: new}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Pending}}\n"
        ));
    }
    out
}

fn ip(i: usize) -> String {
    format!("10.0.1.{}", i + 1)
}

/// One ADD of `n<i>` in `<p>-n<i>` through the plugin; true when answered ok.
fn add(socket: &std::path::Path, p: &str, i: usize) -> bool {
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "k8s", "type": "netpol-cni",
        "agentSocket": socket, "timeoutSeconds": 30,
        "prevResult": {"ips": [{"address": format!("{}/24", ip(i))}]}
    })
    .to_string();
    let args = ArgsBuilder::new()
        .container_id(&format!("sandbox-{i}"))
        .unwrap()
        .netns(&netns::path(&format!("{p}-n{i}")).display().to_string())
        .ifname("eth0")
        .unwrap()
        .args(&format!(
            "K8S_POD_NAMESPACE=x;K8S_POD_NAME=n{i};K8S_POD_UID=u{i}"
        ))
        .config(&conf)
        .unwrap()
        .build()
        .unwrap();
    NetpolCni::with_socket().add(args).is_ok()
}

/// The kernel's listing of `table inet netpol` in `name`.
fn kernel_table(name: &str) -> Option<String> {
    NetlinkApplier::new()
        .list(&PodKey::new("x", "probe"), name)
        .unwrap()
}

#[test]
fn cni_adds_beside_a_held_pass_are_enforced_in_the_kernel() {
    const TEST: &str = "cni_adds_beside_a_held_pass_are_enforced_in_the_kernel";
    if !kernel::available(TEST) {
        return;
    }
    let p = kernel::prefix("fadd");
    let adds = 4;
    let names: Vec<String> = std::iter::once(format!("{p}-a"))
        .chain((0..adds).map(|i| format!("{p}-n{i}")))
        .collect();
    let _cleanup = Namespaces(names.clone());
    for n in &names {
        netns::add(n).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::write(manifests.join("cluster.yaml"), cluster(&p, adds)).unwrap();
    let socket = dir.path().join("cni.sock");
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    let gate = Arc::new(Gate {
        inner: NetlinkApplier::new(),
        netns: format!("{p}-a"),
        armed: AtomicBool::new(false),
        entered: Mutex::new(entered_tx),
        release: Mutex::new(release_rx),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = AgentConfig {
        drops: None,
        verify_interval: Duration::from_secs(3600),
        cni: Some(CniConfig {
            socket: socket.clone(),
            records: Some(dir.path().join("records")),
            chain: None,
        }),
        ..AgentConfig::default()
    };
    let agent: Agent = rt
        .block_on(Agent::start(
            config,
            ManifestDir::new(&manifests, None),
            Arc::new(CompiledRulesets::default()),
            gate.clone(),
        ))
        .unwrap();
    let start = Instant::now();
    while !agent.ready() {
        assert!(start.elapsed() < Duration::from_secs(30), "agent not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(kernel_table(&format!("{p}-a")).is_some());
    gate.armed.store(true, Ordering::SeqCst);

    // n0's ADD: its table, then the pass that puts n0 into a's table, held there.
    let first = {
        let (socket, p) = (socket.clone(), p.clone());
        std::thread::spawn(move || add(&socket, &p, 0))
    };
    entered.recv().unwrap();
    // The pass is held in a's table: a burst of ADDs is answered beside it, each with
    // its own table in the kernel.
    for i in 1..adds {
        assert!(add(&socket, &p, i), "ADD n{i} refused");
        let table = kernel_table(&format!("{p}-n{i}")).expect("own table before the answer");
        assert!(table.contains("table inet netpol"), "{table}");
        assert!(table.contains("10.0.0.1"), "a is its peer: {table}");
    }
    let a_held = kernel_table(&format!("{p}-a")).unwrap();
    assert!(
        !a_held.contains("10.0.1."),
        "the pass is still held: {a_held}"
    );
    release.send(()).unwrap();
    assert!(first.join().unwrap(), "ADD n0 refused");

    // The passes that follow bring every new Pod into a's and each other's tables.
    let start = Instant::now();
    loop {
        // The kernel merges the new Pods' addresses into one interval.
        let all = format!("{}-{}", ip(0), ip(adds - 1));
        let a = kernel_table(&format!("{p}-a")).unwrap();
        let peers_in =
            |i: usize| kernel_table(&format!("{p}-n{i}")).is_some_and(|t| t.contains(&all));
        if a.contains(&all) && (0..adds).all(peers_in) {
            break;
        }
        let tables: Vec<Option<String>> = (0..adds)
            .map(|i| kernel_table(&format!("{p}-n{i}")))
            .collect();
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "peers not updated: {a}\n{tables:#?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // n0 before the pass, n1.. beside it: every ADD took a fast path.
    assert_eq!(agent.metrics().cni_fast_adds.get(), adds as u64);
    rt.block_on(agent.stop()).unwrap();
}

/// Deletes the test's namespaces, also when it fails.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}
