//! The agent against the real kernel while traffic runs: live changes converge to the
//! compiler's truth table, drops are reported with the right identities, and a restart
//! never opens an isolated Pod.
// See: #4

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CompiledRulesets};
use enforcer::applier::NetlinkApplier;
use enforcer::drops::aggregate::AggregatorConfig;
use enforcer::drops::report::DropReport;
use enforcer::manifests::ManifestDir;
use enforcer::reporter::DropsConfig;
use netpol_lab::probe::{Listener, ProbeSpec, Prober, Protocol as ProbeProtocol};
use netpol_lab::topology::{Host, Topology};
use policy_compiler::{
    AllowGraph, MatrixQuery, Model, Protocol, SourceText, Subject, load, matrix,
};

use crate::agent::{CONVERGE, config, metric, wait_for, write};
use crate::kernel;
use testkit::kernel::{ALLOW, DENY, v4, v6};

/// A Pod on lab host `h` with these labels.
fn pod(ns: &str, name: &str, labels: &str, h: &Host) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\n  annotations: {{netpol.io/netns: {netns}}}\nspec:\n  containers: [{{name: c, ports: [{{containerPort: 80}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip4}\n  podIPs: [{{ip: {ip4}}}, {{ip: '{ip6}'}}]\n---\n",
        netns = h.netns,
        ip4 = v4(h),
        ip6 = v6(h),
    )
}

fn namespace(name: &str, team: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{team: {team}}}}}\n---\n"
    )
}

fn start_agent(rt: &tokio::runtime::Runtime, dir: &Path, config: AgentConfig) -> Agent {
    rt.block_on(Agent::start(
        config,
        ManifestDir::new(dir, None),
        Arc::new(CompiledRulesets::default()),
        Arc::new(NetlinkApplier::new()),
    ))
    .unwrap()
}

/// Model and graph of the manifest directory's files, as the agent compiles them.
fn compile_dir(dir: &Path) -> (Model, AllowGraph) {
    let mut files: Vec<(String, String)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.display().to_string(), text)
        })
        .collect();
    files.sort();
    let sources: Vec<SourceText> = files
        .iter()
        .map(|(name, text)| SourceText { name, text })
        .collect();
    let (inputs, diags) = load(&sources);
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    let (model, diags) = Model::build(&inputs);
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    let graph = AllowGraph::build(&model);
    (model, graph)
}

/// One probed cell: source host index, destination host index, IPv6?
type Cell = (usize, usize, bool);

/// Expected TCP 80 verdicts: Pod to Pod from `policy_compiler::matrix`; from a lab host
/// that is not a Pod (yet, or any more) by `reach` from its address.
fn expected(dir: &Path, hosts: &[Host], pods: &BTreeMap<usize, String>) -> BTreeMap<Cell, bool> {
    let (model, graph) = compile_dir(dir);
    let m = matrix(
        &model,
        &graph,
        MatrixQuery {
            protocol: Some(Protocol::Tcp),
            port: Some(80),
        },
    );
    let index = |key: &str| m.endpoints.iter().position(|e| e == key).unwrap();
    let mut out = BTreeMap::new();
    for (src, sh) in hosts.iter().enumerate() {
        for (&dst, dst_key) in pods {
            if src == dst {
                continue;
            }
            for six in [false, true] {
                let allowed = match pods.get(&src) {
                    Some(src_key) => m.allowed[index(src_key)][index(dst_key)],
                    None => {
                        let ip = if six { v6(sh) } else { v4(sh) };
                        let d = model.endpoint_by_key(dst_key).unwrap();
                        graph
                            .reach(&model, Subject::External(ip), Subject::Endpoint(d))
                            .allowed
                            .contains(Protocol::Tcp, 80)
                    }
                };
                out.insert((src, dst, six), allowed);
            }
        }
    }
    out
}

/// Tables the agent has loaded or removed so far.
fn kernel_ops(addr: std::net::SocketAddr) -> f64 {
    metric(addr, "netpol_applies_total") + metric(addr, "netpol_removes_total")
}

/// Timeout of a probe the background loop expects may be blocked.
const ROUND_DENY: Duration = Duration::from_millis(250);

/// One round of the background prober: every cell once.
struct Round {
    start: Instant,
    end: Instant,
    results: BTreeMap<Cell, bool>,
}

/// Probes every (host, Pod) cell over and over on its own thread.
struct Background {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    /// Destination Pods: host index -> `ns/name`.
    pods: Arc<Mutex<BTreeMap<usize, String>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(prober: Arc<Prober>, hosts: Vec<Host>, pods: BTreeMap<usize, String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let pods = Arc::new(Mutex::new(pods));
        let (s, r, p) = (stop.clone(), rounds.clone(), pods.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let dsts: Vec<usize> = p.lock().unwrap().keys().copied().collect();
                let mut cells = Vec::new();
                let mut specs = Vec::new();
                for (src, sh) in hosts.iter().enumerate() {
                    for &dst in &dsts {
                        if src == dst {
                            continue;
                        }
                        for six in [false, true] {
                            let to = if six {
                                v6(&hosts[dst])
                            } else {
                                v4(&hosts[dst])
                            };
                            cells.push((src, dst, six));
                            specs.push(ProbeSpec::new(sh.name.clone(), to, ProbeProtocol::Tcp, 80));
                        }
                    }
                }
                let start = Instant::now();
                let results = prober.probe_all(&specs, ROUND_DENY);
                let end = Instant::now();
                let results = cells
                    .into_iter()
                    .zip(results)
                    .map(|(c, r)| (c, r.unwrap().connected))
                    .collect();
                r.lock().unwrap().push(Round {
                    start,
                    end,
                    results,
                });
            }
        });
        Self {
            stop,
            rounds,
            pods,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn diff(got: &BTreeMap<Cell, bool>, want: &BTreeMap<Cell, bool>, hosts: &[Host]) -> String {
    let mut out = String::new();
    for (c @ (s, d, six), w) in want {
        let g = got.get(c);
        if g != Some(w) {
            out.push_str(&format!(
                "\n  {} -> {} ({}): kernel {:?}, compiler {w}",
                hosts[*s].name,
                hosts[*d].name,
                if *six { "v6" } else { "v4" },
                g
            ));
        }
    }
    out
}

/// Live changes while traffic runs: after each change the kernel's truth table (every
/// host to every Pod, TCP 80, both families) equals the compiler's within 5 s, and no
/// probe during the change sees a verdict that neither the old nor the new state gives
/// (the policies are ingress only, so each cell depends on one table, replaced
/// atomically).
#[test]
fn live_changes_converge_to_the_matrix_while_traffic_runs() {
    if !kernel::available("live_changes_converge_to_the_matrix_while_traffic_runs") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("live"), &kernel::dual_stack(5)).unwrap();
    let hosts = lab.hosts().to_vec();
    let h = |i: usize| &hosts[i];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pods_file = |a_app: &str, e: bool| {
        let mut s = pod("x", "a", &format!("app: {a_app}"), h(0))
            + &pod("x", "b", "app: db", h(1))
            + &pod("y", "c", "app: web", h(2))
            + &pod("y", "d", "app: client", h(3));
        if e {
            s += &pod("z", "e", "app: client", h(4));
        }
        s
    };
    let namespaces =
        |y_team: &str| namespace("x", "red") + &namespace("y", y_team) + &namespace("z", "blue");
    let policy = |from: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: db, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress:\n  - from: [{from}]\n    ports: [{{port: 80}}]\n"
        )
    };
    write(d, "namespaces.yaml", &namespaces("blue"));
    write(d, "pods.yaml", &pods_file("web", false));
    let mut pods: BTreeMap<usize, String> = [(0, "x/a"), (1, "x/b"), (2, "y/c"), (3, "y/d")]
        .into_iter()
        .map(|(i, k)| (i, k.to_owned()))
        .collect();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = start_agent(&rt, d, config());
    let addr = agent.local_addr().unwrap();
    wait_for("first sync", CONVERGE, || agent.ready());
    let listeners: Vec<Listener> = hosts
        .iter()
        .map(|h| Listener::new(h.name.clone(), ProbeProtocol::Tcp, 80))
        .collect();
    let prober = Arc::new(Prober::start(&lab, &listeners).unwrap());
    let mut want = expected(d, &hosts, &pods);
    let bg = Background::start(prober.clone(), hosts.clone(), pods.clone());

    type Change<'a> = (
        &'a str,
        Box<dyn Fn() + 'a>,
        Option<(usize, Option<&'a str>)>,
    );
    let changes: Vec<Change> = vec![
        (
            "add policy x/db (b <- namespaces team=blue)",
            Box::new(|| {
                write(
                    d,
                    "policy.yaml",
                    &policy("{namespaceSelector: {matchLabels: {team: blue}}}"),
                )
            }),
            None,
        ),
        (
            "modify x/db (b <- team=blue AND app=client)",
            Box::new(|| {
                write(
                    d,
                    "policy.yaml",
                    &policy(
                        "{namespaceSelector: {matchLabels: {team: blue}}, podSelector: {matchLabels: {app: client}}}",
                    ),
                )
            }),
            None,
        ),
        (
            "relabel Pod x/a app=web -> db (now selected)",
            Box::new(|| write(d, "pods.yaml", &pods_file("db", false))),
            None,
        ),
        (
            "relabel Namespace y team=blue -> red (peer gone)",
            Box::new(|| write(d, "namespaces.yaml", &namespaces("red"))),
            None,
        ),
        (
            "add Pod z/e (client in a blue namespace: a, b <- e)",
            Box::new(|| write(d, "pods.yaml", &pods_file("db", true))),
            Some((4, Some("z/e"))),
        ),
        (
            "delete Pod z/e (its address is nobody's peer again)",
            Box::new(|| write(d, "pods.yaml", &pods_file("db", false))),
            Some((4, None)),
        ),
        (
            "delete policy x/db",
            Box::new(|| std::fs::remove_file(d.join("policy.yaml")).unwrap()),
            None,
        ),
    ];

    let mut checked = 0usize;
    for (what, apply, pod_change) in &changes {
        // Settled on the old state: the latest complete round matches it.
        let old = want.clone();
        let ops_before = kernel_ops(addr);
        let t0 = Instant::now();
        apply();
        if let Some((i, key)) = pod_change {
            match key {
                Some(k) => pods.insert(*i, (*k).to_owned()),
                None => pods.remove(i),
            };
            *bg.pods.lock().unwrap() = pods.clone();
        }
        want = expected(d, &hosts, &pods);
        assert_ne!(old, want, "{what}: the change must be visible");
        let deadline = t0 + CONVERGE;
        let mut applied = None;
        let (took, round) = loop {
            std::thread::sleep(Duration::from_millis(10));
            if applied.is_none() && kernel_ops(addr) > ops_before {
                applied = Some(t0.elapsed());
            }
            let rounds = bg.rounds.lock().unwrap();
            if let Some(r) = rounds.iter().find(|r| r.end > t0 && r.results == want) {
                break (r.end - t0, r.end - r.start);
            }
            if Instant::now() >= deadline {
                let last = rounds.last().unwrap();
                panic!(
                    "{what}: not converged in {CONVERGE:?}:{}",
                    diff(&last.results, &want, &hosts)
                );
            }
        };
        // Every probe since the change gave the old or the new verdict.
        for r in bg.rounds.lock().unwrap().iter().filter(|r| r.end > t0) {
            for (c, got) in &r.results {
                checked += 1;
                let ok = want.get(c) == Some(got) || old.get(c).is_none_or(|o| o == got);
                assert!(
                    ok,
                    "{what}: {} -> {} ({}) gave {got}: neither old {:?} nor new {:?}",
                    hosts[c.0].name,
                    hosts[c.1].name,
                    if c.2 { "v6" } else { "v4" },
                    old.get(c),
                    want.get(c)
                );
            }
            if r.results == want {
                break;
            }
        }
        let applied = applied.unwrap_or(took);
        eprintln!(
            "{what}: first table replaced after {applied:?}; kernel == matrix by the end of a probe round {took:?} after the change (round {round:?})"
        );
        // Stays converged: the next round matches too.
        let n = bg.rounds.lock().unwrap().len();
        wait_for("one more round", CONVERGE, || {
            bg.rounds.lock().unwrap().len() > n + 1
        });
        let rounds = bg.rounds.lock().unwrap();
        let last = rounds.last().unwrap();
        assert_eq!(
            last.results,
            want,
            "{what}: not stable:{}",
            diff(&last.results, &want, &hosts)
        );
    }
    bg.finish();
    eprintln!("{checked} probe verdicts checked during changes");
    rt.block_on(agent.stop()).unwrap();
    drop(prober);
}

fn drops_config(sink: mpsc::Sender<DropReport>) -> AgentConfig {
    AgentConfig {
        drops: Some(DropsConfig {
            aggregator: AggregatorConfig {
                window: Duration::from_millis(300),
                ..AggregatorConfig::default()
            },
            sink: Some(sink),
            ..DropsConfig::default()
        }),
        ..config()
    }
}

fn next_report(
    rx: &mpsc::Receiver<DropReport>,
    what: &str,
    want: impl Fn(&DropReport) -> bool,
) -> DropReport {
    let deadline = Instant::now() + CONVERGE;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(r) if want(&r) => return r,
            Ok(r) => seen.push(r.to_json_line()),
            Err(_) => break,
        }
    }
    panic!("no drop report {what}; saw {seen:#?}")
}

/// Drops of the agent's own rulesets are reported with both Pods' names, the port,
/// protocol, direction and the isolating policy, and counted on /metrics; a Pod that
/// goes away loses its listener.
#[test]
fn agent_reports_drops_with_identities_and_policies() {
    if !kernel::available("agent_reports_drops_with_identities_and_policies") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("agdrop"), &kernel::dual_stack(3)).unwrap();
    let [ha, hb, hc] = [&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pods =
        pod("x", "a", "app: a", ha) + &pod("x", "b", "app: b", hb) + &pod("x", "c", "app: c", hc);
    write(d, "pods.yaml", &pods);
    // b accepts TCP 80 from a only; a may only send to b on TCP 80.
    write(
        d,
        "policies.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a-out, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: a}}\n  policyTypes: [Egress]\n  egress: [{to: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let agent = start_agent(&rt, d, drops_config(tx));
    let addr = agent.local_addr().unwrap();
    wait_for("first sync", CONVERGE, || agent.ready());
    assert_eq!(metric(addr, "netpol_drop_listeners"), 3.0);
    let listeners: Vec<Listener> = lab
        .hosts()
        .iter()
        .map(|h| Listener::new(h.name.clone(), ProbeProtocol::Tcp, 80))
        .collect();
    let prober = Prober::start(&lab, &listeners).unwrap();
    let probe = |from: &Host, to: IpAddr, allowed: bool| {
        let r = prober
            .probe(
                &from.name,
                to,
                ProbeProtocol::Tcp,
                80,
                if allowed { ALLOW } else { DENY },
            )
            .unwrap();
        assert_eq!(r.connected, allowed, "{} -> {to}: {}", from.name, r.detail);
    };
    probe(ha, v4(hb), true);

    // Ingress: c -> b is dropped by b's ruleset.
    probe(hc, v4(hb), false);
    let r = next_report(&rx, "x/b ingress from x/c", |r| {
        r.pod == "x/b" && r.src.ip == v4(hc)
    });
    eprintln!("{}", r.to_json_line());
    assert_eq!(r.direction, "ingress");
    assert_eq!(r.src.pod.as_deref(), Some("x/c"));
    assert_eq!((r.dst.ip, r.dst.pod.as_deref()), (v4(hb), Some("x/b")));
    assert_eq!(r.protocol.to_string(), "TCP");
    assert_eq!(r.dst_port, Some(80));
    assert_eq!(r.policies, ["x/b-web"]);
    assert!(
        r.nearest_miss
            .as_deref()
            .is_some_and(|m| m.contains("x/b-web")),
        "{r:?}"
    );
    assert_eq!(r.note, None);
    assert_eq!(r.netns, hb.netns);
    assert!(r.count >= 1);

    // Egress over IPv6: a -> c is dropped by a's ruleset.
    probe(ha, v6(hc), false);
    let r = next_report(&rx, "x/a egress to x/c", |r| {
        r.pod == "x/a" && r.dst.ip == v6(hc)
    });
    eprintln!("{}", r.to_json_line());
    assert_eq!(r.direction, "egress");
    assert_eq!((r.src.ip, r.src.pod.as_deref()), (v6(ha), Some("x/a")));
    assert_eq!(r.dst.pod.as_deref(), Some("x/c"));
    assert_eq!(
        (r.protocol.to_string().as_str(), r.dst_port),
        ("TCP", Some(80))
    );
    assert_eq!(r.policies, ["x/a-out"]);
    assert!(
        r.nearest_miss
            .as_deref()
            .is_some_and(|m| m.contains("x/a-out")),
        "{r:?}"
    );

    let ingress =
        r#"netpol_drops_total{namespace="x",pod="b",direction="ingress",tier="networkpolicy"}"#;
    let egress =
        r#"netpol_drops_total{namespace="x",pod="a",direction="egress",tier="networkpolicy"}"#;
    assert!(metric(addr, ingress) >= 1.0);
    let before = metric(addr, egress);
    assert!(before >= 1.0);
    probe(ha, v4(hc), false);
    wait_for("drops_total grows", CONVERGE, || {
        metric(addr, egress) > before
    });

    // See: #13 — a ClusterNetworkPolicy Admin Deny beats b-web's allow for a; its drop
    // names the tier, the policy and the rule, and is counted under tier="admin".
    write(
        d,
        "cnp.yaml",
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: guard}\nspec:\n  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: b}}}}\n  ingress:\n  - {name: no-a, action: Deny, from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}]}\n",
    );
    wait_for("a -> b denied by the Admin tier", CONVERGE, || {
        !prober
            .probe(&ha.name, v4(hb), ProbeProtocol::Tcp, 80, DENY)
            .unwrap()
            .connected
    });
    let r = next_report(&rx, "x/b ingress from x/a, Admin tier", |r| {
        r.pod == "x/b" && r.src.ip == v4(ha) && r.tier == "admin"
    });
    eprintln!("{}", r.to_json_line());
    assert_eq!(r.cluster_policy.as_deref(), Some("guard"));
    assert_eq!(r.cluster_rule.as_deref(), Some("no-a"));
    assert_eq!(r.note, None, "{r:?}");
    let admin = r#"netpol_drops_total{namespace="x",pod="b",direction="ingress",tier="admin"}"#;
    assert!(metric(addr, admin) >= 1.0);

    // c goes away: its listener is stopped (its netns is not enforced any more).
    write(
        d,
        "pods.yaml",
        &(pod("x", "a", "app: a", ha) + &pod("x", "b", "app: b", hb)),
    );
    wait_for("listener of c stopped", CONVERGE, || {
        metric(addr, "netpol_drop_listeners") == 2.0
    });
    rt.block_on(agent.stop()).unwrap();
    drop(prober);
}

/// A restart never opens an isolated Pod: with probes hammering b's denied port, the
/// agent is stopped and a new one started on the same directory; no denied probe ever
/// connects (tables stay, and are replaced atomically), allowed probes keep working,
/// and the new agent's drop listeners bind (the old one released the groups).
#[test]
fn agent_restart_never_opens_an_isolated_pod() {
    if !kernel::available("agent_restart_never_opens_an_isolated_pod") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("agrest"), &kernel::dual_stack(3)).unwrap();
    let [ha, hb, hc] = [&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]];
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "pods.yaml",
        &(pod("x", "a", "app: a", ha)
            + &pod("x", "b", "app: b", hb)
            + &pod("x", "c", "app: c", hc)),
    );
    write(
        d,
        "policy.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-web, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: 80}]}]\n",
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = start_agent(&rt, d, config());
    wait_for("first sync", CONVERGE, || agent.ready());
    let mut listeners = Vec::new();
    for port in [80, 81] {
        listeners.push(Listener::new(hb.name.clone(), ProbeProtocol::Tcp, port));
    }
    let prober = Arc::new(Prober::start(&lab, &listeners).unwrap());

    // Denied: c -> b:80 and a -> b:81 (both families). Allowed: a -> b:80.
    let denied: Vec<(String, IpAddr, u16)> = vec![
        (hc.name.clone(), v4(hb), 80),
        (hc.name.clone(), v6(hb), 80),
        (ha.name.clone(), v4(hb), 81),
        (ha.name.clone(), v6(hb), 81),
    ];
    let stop = Arc::new(AtomicBool::new(false));
    let (denied_probes, denied_connected) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // Allowed probes: (time, connected).
    let allowed_log: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
    let mut threads = Vec::new();
    for (from, to, port) in denied {
        let (p, s, n, c) = (
            prober.clone(),
            stop.clone(),
            denied_probes.clone(),
            denied_connected.clone(),
        );
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = p
                    .probe(
                        &from,
                        to,
                        ProbeProtocol::Tcp,
                        port,
                        Duration::from_millis(50),
                    )
                    .unwrap();
                n.fetch_add(1, Ordering::Relaxed);
                if r.connected {
                    c.fetch_add(1, Ordering::Relaxed);
                    eprintln!("DENIED PROBE CONNECTED: {from} -> {to}:{port}");
                }
            }
        }));
    }
    {
        let (p, s, log, from, to) = (
            prober.clone(),
            stop.clone(),
            allowed_log.clone(),
            ha.name.clone(),
            v4(hb),
        );
        threads.push(std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let r = p.probe(&from, to, ProbeProtocol::Tcp, 80, ALLOW).unwrap();
                log.lock().unwrap().push((Instant::now(), r.connected));
                std::thread::sleep(Duration::from_millis(10));
            }
        }));
    }

    std::thread::sleep(Duration::from_millis(500));
    let window = Instant::now();
    rt.block_on(agent.stop()).unwrap();
    std::thread::sleep(Duration::from_millis(300)); // no agent at all
    let agent = start_agent(&rt, d, config());
    let addr = agent.local_addr().unwrap();
    let took = wait_for("second agent ready", CONVERGE, || agent.ready());
    let ready = Instant::now();
    assert_eq!(
        metric(addr, "netpol_applies_total"),
        3.0,
        "the new agent replaced every table"
    );
    wait_for("new agent's listeners bound", CONVERGE, || {
        metric(addr, "netpol_drop_listeners") == 3.0
    });
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let window = window.elapsed();
    let (n, connected) = (
        denied_probes.load(Ordering::Relaxed),
        denied_connected.load(Ordering::Relaxed),
    );
    let log = allowed_log.lock().unwrap();
    let after_ready: Vec<bool> = log
        .iter()
        .filter(|(t, _)| *t > ready)
        .map(|(_, c)| *c)
        .collect();
    let failed_total = log.iter().filter(|(_, c)| !c).count();
    eprintln!(
        "restart window {window:?} (new agent ready {took:?} after start): {n} denied probes ({:.0}/s), {connected} connected; {} allowed probes, {failed_total} failed",
        n as f64 / window.as_secs_f64(),
        log.len()
    );
    assert_eq!(connected, 0, "a denied probe connected during the restart");
    assert!(n > 100, "too few denied probes ({n}) to mean anything");
    assert!(
        !after_ready.is_empty() && after_ready.iter().all(|c| *c),
        "allowed probes fail after the restart"
    );
    assert_eq!(failed_total, 0, "allowed probes failed during the restart");
    rt.block_on(agent.stop()).unwrap();
}
