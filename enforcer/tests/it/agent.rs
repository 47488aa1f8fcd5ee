//! The node agent against the real kernel: a temp manifest directory, lab netns as Pods,
//! the real renderer (`compile_pod`) and nft, wrapped to count applies and inject
//! failures.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CompiledRulesets};
use enforcer::applier::{Applier, ApplyError, NftApplier};
use enforcer::manifests::{ManifestDir, WatchOptions};
use enforcer::netns;
use enforcer::plan::{BackoffPolicy, normalise_listing};
use enforcer::state::PodKey;
use netpol_lab::probe::{Prober, Protocol};
use netpol_lab::topology::{Host, Topology};

use crate::kernel;
use testkit::kernel::{ALLOW, DENY, listeners, v4, v6};

/// Bound on how long a change may take to reach the kernel.
pub(crate) const CONVERGE: Duration = Duration::from_secs(5);

/// The real applier, counting applies per Pod and failing for chosen Pods.
#[derive(Default)]
struct Counting {
    applies: Mutex<BTreeMap<PodKey, usize>>,
    failing: Mutex<BTreeSet<PodKey>>,
}

impl Counting {
    fn applies(&self, pod: &str) -> usize {
        let key = PodKey::parse(pod).unwrap();
        self.applies.lock().unwrap().get(&key).copied().unwrap_or(0)
    }

    fn set_failing(&self, pod: &str, fail: bool) {
        let key = PodKey::parse(pod).unwrap();
        let mut f = self.failing.lock().unwrap();
        if fail {
            f.insert(key);
        } else {
            f.remove(&key);
        }
    }
}

impl Applier for Counting {
    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        if self.failing.lock().unwrap().contains(pod) {
            return Err(ApplyError::Injected {
                pod: pod.clone(),
                op: "apply",
            });
        }
        NftApplier.apply(pod, netns, ruleset)?;
        *self.applies.lock().unwrap().entry(pod.clone()).or_default() += 1;
        Ok(())
    }

    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        NftApplier.remove(pod, netns)
    }

    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        NftApplier.list(pod, netns)
    }

    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        NftApplier.apply_node(ruleset)
    }

    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        NftApplier.list_node()
    }

    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        NftApplier.node_addresses()
    }
}

pub(crate) fn pod(name: &str, h: &Host) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: x\n  labels: {{app: {name}}}\n  annotations: {{netpol.io/netns: {netns}}}\nspec:\n  containers: [{{name: c, ports: [{{containerPort: 80}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip4}\n  podIPs: [{{ip: {ip4}}}, {{ip: '{ip6}'}}]\n---\n",
        netns = h.netns,
        ip4 = v4(h),
        ip6 = v6(h),
    )
}

/// b accepts TCP 80 from the Pods labelled `app: <from>` only.
fn policy(from: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b-ingress, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: {from}}}}}}}]\n    ports: [{{port: 80}}]\n"
    )
}

const ISOLATE_A: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-ingress, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n";

pub(crate) fn table(netns: &str) -> Option<String> {
    NftApplier
        .list(&PodKey::new("x", "t"), netns)
        .unwrap()
        .map(|l| normalise_listing(&l))
}

pub(crate) fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// `GET path` over HTTP/1.1; returns (status, body).
pub(crate) fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().unwrap();
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

pub(crate) fn metric(addr: SocketAddr, name: &str) -> f64 {
    let (_, body) = get(addr, "/metrics");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in\n{body}"))
}

pub(crate) fn config() -> AgentConfig {
    AgentConfig {
        verify_interval: Duration::from_millis(300),
        watch: WatchOptions {
            debounce: Duration::from_millis(50),
            rescan: Duration::from_secs(2),
        },
        backoff: BackoffPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..AgentConfig::default()
    }
}

pub(crate) fn write(dir: &Path, file: &str, text: &str) {
    // Write-then-rename, as editors and ConfigMap updates do: never a half-written file.
    let tmp = dir.join(format!(".{file}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(file)).unwrap();
}

pub(crate) fn probe(prober: &Prober, from: &str, to: &Host, allowed: bool) {
    for addr in [v4(to), v6(to)] {
        let r = prober
            .probe(
                from,
                addr,
                Protocol::Tcp,
                80,
                if allowed { ALLOW } else { DENY },
            )
            .unwrap();
        assert_eq!(
            r.connected, allowed,
            "{from} -> {}:80: {}",
            to.name, r.detail
        );
    }
}

/// One agent run through the scenarios, in order: (1) start applies every table
/// and traffic follows the policy; (7) /metrics, /readyz; (2) a policy change re-applies
/// only the Pod it changes, within a bound; (3) an invalid file changes nothing;
/// (5) tampering is repaired and counted; (6) an injected apply failure keeps the last
/// good table, then the retry applies; (4) a deleted Pod's table is removed.
#[test]
fn agent_enforces_updates_fails_closed_and_repairs() {
    if !kernel::available("agent_enforces_updates_fails_closed_and_repairs") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("agent"), &kernel::dual_stack(3)).unwrap();
    let [ha, hb, hc] = [&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]];
    let dir = tempfile::tempdir().unwrap();
    let pods_yaml = format!("{}{}{}", pod("a", ha), pod("b", hb), pod("c", hc));
    write(dir.path(), "pods.yaml", &pods_yaml);
    write(dir.path(), "policy.yaml", &policy("a"));
    // A table left by an earlier agent stays until its replacement is loaded.
    nft_apply(
        &hb.netns,
        "table inet netpol {\n chain stale {\n type filter hook input priority 0; policy accept;\n }\n}\n",
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    let applier = Arc::new(Counting::default());
    let started = Instant::now();
    let agent = rt
        .block_on(Agent::start(
            config(),
            ManifestDir::new(dir.path(), None),
            Arc::new(CompiledRulesets::default()),
            applier.clone(),
        ))
        .unwrap();
    let addr = agent.local_addr().unwrap();
    assert_eq!(get(addr, "/healthz").0, 200);

    // (1) first full sync
    let took = wait_for("first sync", CONVERGE, || agent.ready());
    eprintln!(
        "first full sync of 3 Pods: {took:?} after start ({:?} incl. start)",
        started.elapsed()
    );
    for (p, h) in [("x/a", ha), ("x/b", hb), ("x/c", hc)] {
        assert_eq!(applier.applies(p), 1, "{p}");
        let t = table(&h.netns).unwrap();
        assert!(t.contains("chain ingress"), "{p}: {t}");
    }
    let b_allow_a = table(&hb.netns).unwrap();
    assert!(!b_allow_a.contains("stale"), "old table replaced");
    // Replaced in place: isolation is a final drop rule, never a chain policy. See: #12
    assert!(b_allow_a.contains("drop } chain"), "{b_allow_a}");
    assert!(!b_allow_a.contains("policy drop"), "{b_allow_a}");
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &[80])).unwrap();
    probe(&prober, "h0", hb, true);
    probe(&prober, "h2", hb, false);
    probe(&prober, "h1", ha, true);

    // (7) readiness and metrics
    let (status, body) = get(addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(addr, "netpol_applies_total"), 3.0);
    assert_eq!(metric(addr, "netpol_pods_enforced"), 3.0);
    let (_, body) = get(addr, "/metrics");
    for name in [
        "netpol_apply_errors_total",
        "netpol_drift_repairs_total",
        "netpol_apply_duration_seconds_bucket",
        "netpol_reconcile_duration_seconds_count",
        "netpol_compile_errors_total",
    ] {
        assert!(body.contains(name), "{name} missing:\n{body}");
    }

    // (2) b now accepts c instead of a: only b is re-applied
    write(dir.path(), "policy.yaml", &policy("c"));
    let took = wait_for("b updated", CONVERGE, || {
        table(&hb.netns).is_some_and(|t| t != b_allow_a)
    });
    eprintln!("policy change reached the kernel in {took:?}");
    let b_allow_c = table(&hb.netns).unwrap();
    assert!(b_allow_c.contains(&v4(hc).to_string()), "{b_allow_c}");
    std::thread::sleep(Duration::from_millis(400)); // a verify pass, any late applies
    assert_eq!(
        [
            applier.applies("x/a"),
            applier.applies("x/b"),
            applier.applies("x/c")
        ],
        [1, 2, 1]
    );
    probe(&prober, "h0", hb, false);
    probe(&prober, "h2", hb, true);

    // (3) invalid manifest: reported, nothing changes in the kernel
    write(
        dir.path(),
        "policy.yaml",
        &policy("c").replace("app: c", "app: '-not a label-'"),
    );
    wait_for("manifest error reported", CONVERGE, || {
        metric(addr, "netpol_manifest_errors_total") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(table(&hb.netns).unwrap(), b_allow_c);
    assert_eq!(applier.applies("x/b"), 2);
    probe(&prober, "h2", hb, true);
    probe(&prober, "h0", hb, false);
    write(dir.path(), "policy.yaml", &policy("c")); // valid again: same as last good

    // (5) tampering: flushed table is repaired and counted
    netns::exec_checked(
        &hb.netns,
        "nft",
        &["flush", "table", "inet", "netpol"],
        None,
    )
    .unwrap();
    let took = wait_for("drift repaired", CONVERGE, || {
        table(&hb.netns).is_some_and(|t| t == b_allow_c)
    });
    eprintln!("tampering repaired in {took:?} (verify interval 300ms)");
    wait_for("drift counted", CONVERGE, || {
        metric(addr, "netpol_drift_repairs_total") >= 1.0
    });
    probe(&prober, "h0", hb, false);

    // (6) injected apply failure: last good stays, retried with backoff
    let a_before = table(&ha.netns).unwrap();
    applier.set_failing("x/a", true);
    write(dir.path(), "isolate-a.yaml", ISOLATE_A);
    wait_for("apply error counted", CONVERGE, || {
        metric(addr, "netpol_apply_errors_total") >= 2.0
    });
    assert_eq!(table(&ha.netns).unwrap(), a_before, "last good table stays");
    assert!(metric(addr, "netpol_pods_enforced") < 3.0);
    probe(&prober, "h1", ha, true);
    applier.set_failing("x/a", false);
    // The apply is done when the gauge says so: an in-place replace that declares new
    // sets commits them first on their own, so a changed listing alone can be seen
    // before the rules arrive (#12).
    wait_for("all enforced", CONVERGE, || {
        metric(addr, "netpol_pods_enforced") == 3.0
    });
    assert_ne!(table(&ha.netns).unwrap(), a_before, "a applied after retry");
    probe(&prober, "h1", ha, false);

    // (4) Pod c deleted: its table is removed
    write(
        dir.path(),
        "pods.yaml",
        &format!("{}{}", pod("a", ha), pod("b", hb)),
    );
    wait_for("c's table removed", CONVERGE, || table(&hc.netns).is_none());
    wait_for("removal counted", CONVERGE, || {
        metric(addr, "netpol_removes_total") == 1.0
    });
    assert_eq!(metric(addr, "netpol_pods_enforced"), 2.0);

    let applies = metric(addr, "netpol_apply_duration_seconds_count");
    let secs = metric(addr, "netpol_apply_duration_seconds_sum");
    let passes = metric(addr, "netpol_reconcile_duration_seconds_count");
    let pass_secs = metric(addr, "netpol_reconcile_duration_seconds_sum");
    eprintln!(
        "apply latency: {:.1} ms mean over {applies} applies; reconcile pass: {:.1} ms mean over {passes} passes",
        secs / applies * 1e3,
        pass_secs / passes * 1e3
    );

    rt.block_on(agent.stop()).unwrap();
    assert!(
        table(&hb.netns).is_some(),
        "stopping leaves tables in place"
    );
    prober.stop().unwrap();
}

fn nft_apply(netns: &str, text: &str) {
    enforcer::nft::apply(netns, text).unwrap();
}

/// At start, a manifest that has never been valid means no compile: existing tables stay
/// untouched and the agent is not ready.
#[test]
fn agent_with_never_valid_manifests_touches_nothing() {
    if !kernel::available("agent_with_never_valid_manifests_touches_nothing") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("agbad"), &kernel::dual_stack(1)).unwrap();
    let h = &lab.hosts()[0];
    let old = "table inet netpol {\n chain ingress {\n type filter hook input priority 0; policy drop;\n iif lo accept\n }\n}\n";
    nft_apply(&h.netns, old);
    let before = table(&h.netns).unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "pods.yaml", &pod("a", h));
    write(dir.path(), "policy.yaml", "kind: [\n");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let applier = Arc::new(Counting::default());
    let agent = rt
        .block_on(Agent::start(
            config(),
            ManifestDir::new(dir.path(), None),
            Arc::new(CompiledRulesets::default()),
            applier.clone(),
        ))
        .unwrap();
    let addr = agent.local_addr().unwrap();
    wait_for("manifest error reported", CONVERGE, || {
        metric(addr, "netpol_manifest_errors_total") >= 1.0
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(get(addr, "/readyz").0, 503);
    assert_eq!(applier.applies("x/a"), 0);
    assert_eq!(table(&h.netns).unwrap(), before);

    // Fixed: the table is replaced (not flushed first) and the agent becomes ready.
    write(dir.path(), "policy.yaml", ISOLATE_A);
    wait_for("ready", CONVERGE, || agent.ready());
    assert_eq!(get(addr, "/readyz").0, 200);
    assert_ne!(table(&h.netns).unwrap(), before);
    rt.block_on(agent.stop()).unwrap();
}

/// The fail-closed table for a netns claimed by several Pods loads in the real kernel,
/// replaces whatever table was there (also itself), and drops on both hooks.
// See: #11
#[test]
fn shared_netns_deny_all_loads_and_replaces_the_table() {
    if !kernel::available("shared_netns_deny_all_loads_and_replaces_the_table") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("agdeny"), &kernel::dual_stack(1)).unwrap();
    let h = &lab.hosts()[0];
    let open = "table inet netpol {\n chain ingress {\n type filter hook input priority 0; policy accept;\n }\n}\n";
    nft_apply(&h.netns, open);
    nft_apply(&h.netns, enforcer::trust::DENY_ALL);
    nft_apply(&h.netns, enforcer::trust::DENY_ALL);
    let listed = table(&h.netns).unwrap();
    assert!(!listed.contains("policy accept"), "{listed}");
    assert_eq!(listed.matches("policy drop").count(), 2, "{listed}");
    assert!(listed.contains("hook output"), "{listed}");
}
