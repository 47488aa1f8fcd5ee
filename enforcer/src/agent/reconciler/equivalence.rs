//! The incremental compile equals a full compile: random event sequences (deterministic
//! seeds) applied to a generated cluster, and after every event each local Pod's desired
//! ruleset (netns, text, checksum, skeleton, entries) of a reconciler that keeps
//! unchanged renders is compared with one that renders every table. See: #12

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use super::*;
use crate::agent::CompiledRulesets;
use crate::applier::RecordingApplier;
use crate::manifests::ManifestDir;

/// SplitMix64: a small deterministic generator (the test needs reproducible sequences,
/// not statistical quality).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const NAMESPACES: [&str; 3] = ["ns0", "ns1", "ns2"];
const APPS: [&str; 4] = ["web", "db", "api", "new"];

#[derive(Clone)]
struct GenPod {
    namespace: &'static str,
    app: &'static str,
    /// `None`: Pending, no IP.
    ip: Option<u32>,
    local: bool,
    named_port: Option<u16>,
}

/// The generated cluster: one file per object, so an event rewrites one file.
struct Cluster {
    rng: Rng,
    pods: BTreeMap<String, GenPod>,
    next_ip: u32,
    next_pod: usize,
    node_table: bool,
}

impl Cluster {
    fn ip(v: u32) -> String {
        format!("10.0.{}.{}", v / 200, v % 200 + 1)
    }

    fn pod_yaml(name: &str, p: &GenPod) -> String {
        let (node, netns) = if p.local {
            (
                "n0",
                format!(", annotations: {{netpol.io/netns: ns-{name}}}"),
            )
        } else {
            ("n1", String::new())
        };
        let ports = p.named_port.map_or(String::new(), |port| {
            format!(", ports: [{{name: http, containerPort: {port}}}]")
        });
        let status = match p.ip {
            Some(v) => format!("{{phase: Running, podIP: {}}}", Self::ip(v)),
            None => "{phase: Pending}".to_owned(),
        };
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {}, labels: {{app: {}}}{netns}}}\nspec: {{nodeName: {node}, containers: [{{name: c{ports}}}]}}\nstatus: {status}\n",
            p.namespace, p.app
        )
    }

    fn new_pod(&mut self) -> (String, GenPod) {
        let name = format!("p{}", self.next_pod);
        self.next_pod += 1;
        let rng = &mut self.rng;
        let namespace = NAMESPACES[rng.below(NAMESPACES.len())];
        let app = APPS[rng.below(APPS.len())];
        let local = rng.chance(40);
        let named_port = rng.chance(50).then(|| 8000 + rng.below(3) as u16);
        let ip = if rng.chance(85) {
            self.next_ip += 1;
            Some(self.next_ip)
        } else {
            None
        };
        (
            name,
            GenPod {
                namespace,
                app,
                ip,
                local,
                named_port,
            },
        )
    }

    fn namespace_yaml(&mut self, name: &str) -> String {
        let team = self.rng.pick(&["a", "b"]);
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n"
        )
    }

    fn peer(&mut self) -> String {
        let rng = &mut self.rng;
        match rng.below(5) {
            0 => format!(
                "{{podSelector: {{matchLabels: {{app: {}}}}}}}",
                rng.pick(&APPS)
            ),
            1 => format!(
                "{{namespaceSelector: {{matchLabels: {{team: {}}}}}}}",
                rng.pick(&["a", "b"])
            ),
            2 => format!(
                "{{namespaceSelector: {{matchLabels: {{team: {}}}}}, podSelector: {{matchLabels: {{app: {}}}}}}}",
                rng.pick(&["a", "b"]),
                rng.pick(&APPS)
            ),
            3 => "{ipBlock: {cidr: 10.0.0.0/23, except: [10.0.0.0/26]}}".to_owned(),
            _ => "{podSelector: {}}".to_owned(),
        }
    }

    fn ports(&mut self) -> String {
        match self.rng.below(4) {
            0 => String::new(),
            1 => format!(", ports: [{{port: {}}}]", 80 + self.rng.below(3)),
            2 => ", ports: [{port: http}]".to_owned(),
            _ => ", ports: [{port: 1000, endPort: 2000}, {protocol: UDP, port: 53}]".to_owned(),
        }
    }

    fn rules(&mut self, side: &str, word: &str) -> String {
        let n = self.rng.below(3);
        if n == 0 {
            return format!("  {side}: []\n");
        }
        let mut s = format!("  {side}:\n");
        for _ in 0..n {
            if self.rng.chance(15) {
                // No peers: anyone.
                let ports = self.ports();
                let _ = writeln!(s, "  - {{{}}}", ports.trim_start_matches(", "));
            } else {
                let (a, b) = (self.peer(), self.peer());
                let ports = self.ports();
                let _ = writeln!(s, "  - {{{word}: [{a}, {b}]{ports}}}");
            }
        }
        s
    }

    fn policy_yaml(&mut self, name: &str) -> String {
        let namespace = self.rng.pick(&NAMESPACES);
        let selector = if self.rng.chance(25) {
            "{}".to_owned()
        } else {
            format!("{{matchLabels: {{app: {}}}}}", self.rng.pick(&APPS))
        };
        let types = self
            .rng
            .pick(&["[Ingress]", "[Egress]", "[Ingress, Egress]"]);
        // Some policies are audit policies: their tables gain audit chains (#12).
        let mode = if self.rng.chance(15) {
            ", annotations: {netpol.io/mode: audit}"
        } else {
            ""
        };
        let mut s = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {namespace}{mode}}}\nspec:\n  podSelector: {selector}\n  policyTypes: {types}\n"
        );
        s += &self.rules("ingress", "from");
        s += &self.rules("egress", "to");
        s
    }

    fn cluster_policy_yaml(&mut self, name: &str) -> String {
        let rng = &mut self.rng;
        let tier = rng.pick(&["Admin", "Baseline"]);
        let priority = rng.below(5);
        let team = rng.pick(&["a", "b"]);
        let action = rng.pick(&["Accept", "Deny", "Pass"]);
        let peer_team = rng.pick(&["a", "b"]);
        format!(
            "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n  tier: {tier}\n  priority: {priority}\n  subject:\n    namespaces:\n      matchLabels: {{team: {team}}}\n  ingress:\n  - name: r\n    action: {action}\n    from:\n    - namespaces:\n        matchLabels: {{team: {peer_team}}}\n"
        )
    }

    fn service_yaml(&mut self, name: &str) -> String {
        let app = self.rng.pick(&APPS);
        let ip = 10 + self.rng.below(5);
        let port = 80 + self.rng.below(2);
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns0}}\nspec: {{clusterIP: 10.96.0.{ip}, selector: {{app: {app}}}, ports: [{{port: {port}}}]}}\n"
        )
    }
}

/// Two reconcilers over one directory: incremental, and rendering every table.
struct Pair {
    dir: tempfile::TempDir,
    inc: (ManifestDir, Reconciler),
    full: (ManifestDir, Reconciler),
    /// Incremental tables whose text was made on demand (`TableText::Spliced`) and
    /// compared with the full compile's held text.
    spliced: usize,
}

impl Pair {
    fn new(node_table: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let make = |incremental: bool| {
            let config = AgentConfig {
                node: Some("n0".into()),
                node_table,
                incremental,
                ..AgentConfig::default()
            };
            let rec = Reconciler::new(
                &config,
                Arc::new(CompiledRulesets::default()),
                Arc::new(RecordingApplier::with_generations()),
                Arc::new(Metrics::new()),
            );
            (ManifestDir::new(dir.path(), None), rec)
        };
        let (inc, full) = (make(true), make(false));
        Self {
            dir,
            inc,
            full,
            spliced: 0,
        }
    }

    fn write(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join(file), text).unwrap();
    }

    fn remove(&self, file: &str) {
        let _ = std::fs::remove_file(self.dir.path().join(file));
    }

    /// Scans, compiles and syncs both; returns the incremental side's compile stats.
    fn pass(&mut self, what: &str) -> CompileStats {
        for (src, rec) in [&mut self.inc, &mut self.full] {
            let scan = src.scan();
            if !scan.is_empty() {
                rec.handle_scan(scan);
            }
            rec.compile();
            rec.sync(Instant::now());
        }
        let (inc, full) = (self.inc.1.desired(), self.full.1.desired());
        assert_eq!(
            inc.keys().collect::<Vec<_>>(),
            full.keys().collect::<Vec<_>>(),
            "{what}: the same Pods have tables"
        );
        for (pod, want) in &full {
            let got = &inc[pod];
            // Made on demand from the shared lookups, compared with the text a whole
            // render held. See: #12
            if matches!(got.text, crate::plan::TableText::Spliced(_)) {
                self.spliced += 1;
                assert_eq!(got.text.get(), want.text.get(), "{what}: {pod}");
            }
            assert_eq!(
                got.text, want.text,
                "{what}: {pod}: incremental text differs from a full compile"
            );
            assert_eq!(
                got, want,
                "{what}: {pod}: checksum, netns or entries differ"
            );
        }
        // The model the incremental side patched from the event is the one built
        // from every object, and so is its graph. See: #12
        if let (Some(a), Some(b)) = (self.inc.1.compiled(), self.full.1.compiled()) {
            assert_eq!(
                format!("{:?}", a.model),
                format!("{:?}", b.model),
                "{what}: the patched model differs from a build"
            );
            assert_eq!(
                a.graph.dump(&a.model),
                b.graph.dump(&b.model),
                "{what}: the graph of the patched model differs"
            );
        }
        self.inc.1.last_compile()
    }
}

/// The incremental side's compile stats summed, how many of its compiles patched
/// the model, and how many of its texts were made on demand.
fn run(seed: u64, node_table: bool, events: usize) -> (CompileStats, usize, usize) {
    let mut pair = Pair::new(node_table);
    let mut c = Cluster {
        rng: Rng(seed),
        pods: BTreeMap::new(),
        next_ip: 0,
        next_pod: 0,
        node_table,
    };
    for ns in NAMESPACES {
        let y = c.namespace_yaml(ns);
        pair.write(&format!("ns-{ns}.yaml"), &y);
    }
    for _ in 0..24 {
        let (name, p) = c.new_pod();
        pair.write(&format!("pod-{name}.yaml"), &Cluster::pod_yaml(&name, &p));
        c.pods.insert(name, p);
    }
    for i in 0..3 {
        let y = c.policy_yaml(&format!("pol{i}"));
        pair.write(&format!("pol{i}.yaml"), &y);
    }
    if c.node_table {
        let y = c.service_yaml("svc0");
        pair.write("svc0.yaml", &y);
    }
    pair.pass(&format!("seed {seed}: initial"));
    let mut total = CompileStats::default();
    let mut patched = 0;
    for step in 0..events {
        let names: Vec<String> = c.pods.keys().cloned().collect();
        let some_pod = names[c.rng.below(names.len())].clone();
        let what = match c.rng.below(12) {
            0 | 1 => {
                let (name, p) = c.new_pod();
                pair.write(&format!("pod-{name}.yaml"), &Cluster::pod_yaml(&name, &p));
                c.pods.insert(name.clone(), p);
                format!("add Pod {name}")
            }
            2 if c.pods.len() > 4 => {
                c.pods.remove(&some_pod);
                pair.remove(&format!("pod-{some_pod}.yaml"));
                format!("delete Pod {some_pod}")
            }
            3 | 4 => {
                let app = APPS[c.rng.below(APPS.len())];
                let p = c.pods.get_mut(&some_pod).unwrap();
                p.app = app;
                pair.write(
                    &format!("pod-{some_pod}.yaml"),
                    &Cluster::pod_yaml(&some_pod, p),
                );
                format!("relabel Pod {some_pod} app={app}")
            }
            5 | 6 => {
                c.next_ip += 1;
                let ip = c.next_ip;
                let p = c.pods.get_mut(&some_pod).unwrap();
                p.ip = Some(ip);
                pair.write(
                    &format!("pod-{some_pod}.yaml"),
                    &Cluster::pod_yaml(&some_pod, p),
                );
                format!("Pod {some_pod} IP {}", Cluster::ip(ip))
            }
            7 => {
                let port = 8000 + c.rng.below(3) as u16;
                let p = c.pods.get_mut(&some_pod).unwrap();
                p.named_port = if p.named_port.is_some() {
                    None
                } else {
                    Some(port)
                };
                pair.write(
                    &format!("pod-{some_pod}.yaml"),
                    &Cluster::pod_yaml(&some_pod, p),
                );
                format!("Pod {some_pod} ports")
            }
            8 => {
                let ns = NAMESPACES[c.rng.below(NAMESPACES.len())];
                let y = c.namespace_yaml(ns);
                pair.write(&format!("ns-{ns}.yaml"), &y);
                format!("relabel Namespace {ns}")
            }
            9 => {
                let i = c.rng.below(4);
                if c.rng.chance(25) {
                    pair.remove(&format!("pol{i}.yaml"));
                    format!("delete policy pol{i}")
                } else {
                    let y = c.policy_yaml(&format!("pol{i}"));
                    pair.write(&format!("pol{i}.yaml"), &y);
                    format!("write policy pol{i}")
                }
            }
            10 => {
                if c.rng.chance(30) {
                    pair.remove("cnp.yaml");
                    "delete ClusterNetworkPolicy".to_owned()
                } else {
                    let y = c.cluster_policy_yaml("cnp");
                    pair.write("cnp.yaml", &y);
                    "write ClusterNetworkPolicy".to_owned()
                }
            }
            _ => {
                let y = c.service_yaml("svc0");
                pair.write("svc0.yaml", &y);
                "write Service".to_owned()
            }
        };
        let s = pair.pass(&format!("seed {seed} step {step}: {what}"));
        total.kept += s.kept;
        total.rendered += s.rendered;
        total.sweeps += s.sweeps;
        total.lookups += s.lookups;
        patched += usize::from(s.model == ModelSource::Patched);
    }
    (total, patched, pair.spliced)
}

/// After every random event the incremental compile's tables are the full compile's,
/// with and without a node table (Service sets), over Pod add/delete/relabel/IP and
/// port changes, Namespace relabels, policy writes and deletes, ClusterNetworkPolicy
/// writes and deletes, and Service writes. See: #12
#[test]
fn incremental_equals_full_compile() {
    let mut total = CompileStats::default();
    let mut patched = 0;
    let mut spliced = 0;
    for seed in 0..4 {
        for node_table in [false, true] {
            let (s, p, n) = run(seed, node_table, 50);
            patched += p;
            spliced += n;
            total.kept += s.kept;
            total.rendered += s.rendered;
            total.sweeps += s.sweeps;
            total.lookups += s.lookups;
        }
    }
    // The comparison means something only if both paths were taken often.
    assert!(total.kept > 300, "kept only {} renders", total.kept);
    assert!(total.rendered > 100, "rendered only {}", total.rendered);
    // Models patched from Pod and Namespace events were compared too. See: #12
    assert!(patched > 100, "patched only {patched} models");
    // Shared peer lookups (one sweep serving several tables) were compared too, not
    // only one sweep per table. See: #12
    assert!(
        total.sweeps > 50 && total.lookups > total.sweeps + 50,
        "{} lookups from {} sweeps",
        total.lookups,
        total.sweeps
    );
    // Texts made on demand from shared lookups (not held) were compared with the held
    // texts of whole renders. See: #12
    assert!(spliced > 100, "only {spliced} texts made on demand");
}
