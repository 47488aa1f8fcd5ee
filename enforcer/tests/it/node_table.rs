//! The node table against the real kernel: peer changes reach it as netlink element
//! updates (the same table as a full replace, one commit), the safety net lists nothing
//! while the generation is the agent's, and tampering is found and repaired. The node
//! namespace is a lab host's, so the test never touches the real node. See: #12

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use enforcer::agent::{AgentConfig, CompiledRulesets, Reconciler};
use enforcer::applier::{Applier, ApplyError, NetlinkApplier};
use enforcer::manifests::ManifestDir;
use enforcer::metrics::Metrics;
use enforcer::nfnl::{ElementOp, NftSocket};
use enforcer::nft;
use enforcer::plan::normalise_listing;
use enforcer::state::PodKey;
use netpol_lab::topology::{Host, Topology};

use crate::agent::write;
use crate::kernel;
use testkit::kernel::v4;

/// [`NetlinkApplier`] with its node table in a lab namespace, counting node-table
/// listings (each one an `nft list` process) and replaces.
struct Counted {
    inner: NetlinkApplier,
    lists: AtomicUsize,
    replaces: AtomicUsize,
}

impl Applier for Counted {
    fn apply(&self, pod: &PodKey, netns: &str, ruleset: &str) -> Result<(), ApplyError> {
        self.inner.apply(pod, netns, ruleset)
    }
    fn remove(&self, pod: &PodKey, netns: &str) -> Result<(), ApplyError> {
        self.inner.remove(pod, netns)
    }
    fn list(&self, pod: &PodKey, netns: &str) -> Result<Option<String>, ApplyError> {
        self.inner.list(pod, netns)
    }
    fn apply_node(&self, ruleset: &str) -> Result<(), ApplyError> {
        self.replaces.fetch_add(1, Ordering::Relaxed);
        self.inner.apply_node(ruleset)
    }
    fn list_node(&self) -> Result<Option<String>, ApplyError> {
        self.lists.fetch_add(1, Ordering::Relaxed);
        self.inner.list_node()
    }
    fn node_addresses(&self) -> Result<Vec<std::net::IpAddr>, ApplyError> {
        self.inner.node_addresses()
    }
    fn generation(&self, pod: &PodKey, netns: &str) -> Result<Option<u32>, ApplyError> {
        self.inner.generation(pod, netns)
    }
    fn update(
        &self,
        pod: &PodKey,
        netns: &str,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        self.inner.update(pod, netns, ops, generation, ruleset)
    }
    fn node_generation(&self) -> Result<Option<u32>, ApplyError> {
        self.inner.node_generation()
    }
    fn update_node(
        &self,
        ops: &[ElementOp],
        generation: u32,
        ruleset: &str,
    ) -> Result<u32, ApplyError> {
        self.inner.update_node(ops, generation, ruleset)
    }
}

/// A Pod on host `h` (or remote, without a netns, when `h` is `None`).
fn pod(name: &str, app: &str, ip: &str, h: Option<&Host>) -> String {
    let (node, netns) = match h {
        Some(h) => (
            "n1",
            format!(", annotations: {{netpol.io/netns: {}}}", h.netns),
        ),
        None => ("n2", String::new()),
    };
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}{netns}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: {ip}}}\n---\n"
    )
}

/// a may send TCP `port` to the Pods labelled `app: b` only (its egress is judged in
/// the node table too).
fn policy(port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: e, namespace: x}}\nspec: {{podSelector: {{matchLabels: {{app: a}}}}, policyTypes: [Egress], egress: [{{to: [{{podSelector: {{matchLabels: {{app: b}}}}}}], ports: [{{port: {port}}}]}}]}}\n"
    )
}

/// The kernel's node table, normalised, without comments (an element added over
/// netlink carries none; `nft -f` keeps the provenance comments).
fn listing(netns: &str) -> String {
    let text = normalise_listing(&nft::list_table(netns, "inet", "netpol").unwrap());
    let mut out = String::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("comment \"") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "comment \"".len()..];
        rest = after.find('"').map_or("", |j| &after[j + 1..]);
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

struct Node {
    rec: Reconciler,
    src: ManifestDir,
    applier: Arc<Counted>,
    metrics: Arc<Metrics>,
}

impl Node {
    fn new(dir: &Path, node_netns: &str) -> Self {
        let applier = Arc::new(Counted {
            inner: NetlinkApplier::with_node_netns(node_netns),
            lists: AtomicUsize::new(0),
            replaces: AtomicUsize::new(0),
        });
        let metrics = Arc::new(Metrics::new());
        let rec = Reconciler::new(
            &AgentConfig {
                node_table: true,
                node: Some("n1".into()),
                ..AgentConfig::default()
            },
            Arc::new(CompiledRulesets::default()),
            applier.clone(),
            metrics.clone(),
        );
        Self {
            rec,
            src: ManifestDir::new(dir, None),
            applier,
            metrics,
        }
    }

    fn pass(&mut self) {
        let scan = self.src.scan();
        if !scan.is_empty() {
            self.rec.handle_scan(scan);
        }
        self.rec.compile();
        let r = self.rec.sync(Instant::now());
        assert!(r.failed.is_empty(), "{r:?}");
    }
}

/// A peer appearing and leaving is one element-update commit in the node namespace,
/// no `nft -f`; the result lists as the full replace of the same desired table does;
/// a rule change replaces it. See: #12
#[test]
fn node_table_peer_changes_are_element_updates_in_the_kernel() {
    if !kernel::available("node_table_peer_changes_are_element_updates_in_the_kernel") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("ntbl"), &kernel::dual_stack(4)).unwrap();
    // a, b1, the node, and a scratch namespace for a full replace.
    let [ha, hb, hn, hs] = [
        &lab.hosts()[0],
        &lab.hosts()[1],
        &lab.hosts()[2],
        &lab.hosts()[3],
    ];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b1) = (
        pod("a", "a", &v4(ha).to_string(), Some(ha)),
        pod("b1", "b", &v4(hb).to_string(), Some(hb)),
    );
    write(d, "pods.yaml", &(a.clone() + &b1));
    write(d, "pol.yaml", &policy(80));
    let mut n = Node::new(d, &hn.netns);
    n.pass();
    assert!(n.rec.node_synced());
    assert_eq!(n.applier.replaces.load(Ordering::Relaxed), 1);
    let first = listing(&hn.netns);
    assert!(first.contains(&v4(hb).to_string()), "{first}");

    // b2 appears on another node: a's egress peers in the node table gain its address.
    let mut sock = NftSocket::open(&hn.netns).unwrap();
    let g0 = sock.generation().unwrap();
    write(
        d,
        "pods.yaml",
        &(a.clone() + &b1 + &pod("b2", "b", "10.77.0.9", None)),
    );
    n.pass();
    assert_eq!(n.applier.replaces.load(Ordering::Relaxed), 1, "no replace");
    assert_eq!(
        sock.generation().unwrap(),
        enforcer::nfnl::next_generation(g0),
        "one commit in the node namespace"
    );
    let updated = listing(&hn.netns);
    assert!(updated.contains("10.77.0.9"), "{updated}");
    // The same table as the agent's full replace of the desired text.
    NetlinkApplier::with_node_netns(&hs.netns)
        .apply_node(&n.rec.node_table().unwrap())
        .unwrap();
    assert_eq!(
        listing(&hs.netns),
        updated,
        "element update == full replace"
    );

    // b2 leaves: its elements are deleted, the table is the first one again.
    write(d, "pods.yaml", &(a.clone() + &b1));
    n.pass();
    assert_eq!(n.applier.replaces.load(Ordering::Relaxed), 1, "no replace");
    assert_eq!(listing(&hn.netns), first);
    assert!(n.metrics.element_updates.get() >= 2);

    // A rule change (another port) replaces the table.
    write(d, "pol.yaml", &policy(81));
    n.pass();
    assert_eq!(n.applier.replaces.load(Ordering::Relaxed), 2);
    assert!(listing(&hn.netns).contains("tcp . 81"));
}

/// The safety net on the node table: no listing while the generation is the agent's;
/// an element added behind the agent's back, or the table deleted, is found and the
/// table restored. See: #12
#[test]
fn node_table_tampering_is_found_and_repaired() {
    if !kernel::available("node_table_tampering_is_found_and_repaired") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("ntblt"), &kernel::dual_stack(2)).unwrap();
    let [ha, hn] = [&lab.hosts()[0], &lab.hosts()[1]];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "pods.yaml",
        &(pod("a", "a", &v4(ha).to_string(), Some(ha)) + &pod("b2", "b", "10.77.0.9", None)),
    );
    write(d, "pol.yaml", &policy(80));
    let mut n = Node::new(d, &hn.netns);
    n.pass();
    let good = listing(&hn.netns);
    // The first check takes the baseline; then steady state lists nothing.
    n.rec.verify();
    let lists = n.applier.lists.load(Ordering::Relaxed);
    for _ in 0..5 {
        n.rec.verify();
    }
    assert_eq!(
        n.applier.lists.load(Ordering::Relaxed),
        lists,
        "steady state lists nothing"
    );

    // An element that lets a out to 10.66.0.1: found, repaired.
    let map = good
        .split_whitespace()
        .find(|w| w.starts_with("egress_pod_") && w.ends_with("_v4"))
        .unwrap()
        .to_owned();
    nft::apply(
        &hn.netns,
        &format!("add element inet netpol {map} {{ 10.66.0.1 : accept }}\n"),
    )
    .unwrap();
    n.rec.verify();
    assert!(!n.rec.node_synced(), "drift found");
    n.pass();
    assert_eq!(listing(&hn.netns), good);
    assert_eq!(n.metrics.drift_repairs.get(), 1);

    // The table deleted: the same.
    n.rec.verify();
    nft::apply(&hn.netns, "delete table inet netpol\n").unwrap();
    n.rec.verify();
    n.pass();
    assert_eq!(listing(&hn.netns), good);
    assert_eq!(n.metrics.drift_repairs.get(), 2);
}
