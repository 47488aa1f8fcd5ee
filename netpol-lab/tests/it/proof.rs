//! Kernel proof of the compiled rulesets: for every golden case, one lab host per Pod
//! (its own addresses, its own compiled `table inet netpol`), plus a host per external
//! address the assertions use; real TCP/UDP/SCTP probes for every ordered Pod pair, every
//! matrix (port, protocol) and both families of dual-stack Pods, and every assertion. The
//! kernel's answers must equal the compiler's ([`AllowGraph::reach_at`], the matrix and
//! the expectation).
// See: #3

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use enforcer::nft;
use netpol_lab::probe::{Listener, ProbeSpec, Prober};
use netpol_lab::topology::{HostSpec, Topology};
use policy_compiler::expect::parse_expectations;
use policy_compiler::model::EndpointKind;
use policy_compiler::ruleset::{RulesetOptions, compile_pod};
use policy_compiler::{
    AllowGraph, MatrixQuery, Model, PortQuery, Protocol, Subject, explain, matrix,
};

use crate::cases::{self, Case};
use crate::kernel;

/// First try: denied probes cost this much each, so keep it short.
const QUICK: Duration = Duration::from_millis(300);
/// Retry of a probe the kernel denied but the compiler allows (slow first packets).
const PATIENT: Duration = Duration::from_secs(2);

fn parse_protocol(p: &Option<String>) -> Protocol {
    p.as_deref().map_or(Protocol::Tcp, |s| s.parse().unwrap())
}

/// One probe and what the compiler says about it.
struct Check {
    spec: ProbeSpec,
    src: Subject,
    src_ip: IpAddr,
    dst: Subject,
    dst_ip: IpAddr,
    protocol: Protocol,
    port: u16,
    want: bool,
    what: String,
}

/// Per-case outcome.
pub(crate) struct Summary {
    pub(crate) probes: usize,
    pub(crate) denied: usize,
    pub(crate) failures: Vec<String>,
    pub(crate) notes: Vec<String>,
}

fn ip_of_family(model: &Model, s: Subject, v4: bool) -> Option<IpAddr> {
    match s {
        Subject::External(ip) => (ip.is_ipv4() == v4).then_some(ip),
        Subject::Endpoint(id) => model
            .endpoint(id)
            .ips
            .iter()
            .find(|i| i.is_ipv4() == v4)
            .copied(),
    }
}

/// Runs one case in its own topology.
pub(crate) fn prove_case(case: &Case, dir: &Path, tag: &str) -> Summary {
    let model = &case.model;
    let graph: &AllowGraph = &case.graph;
    let exp =
        parse_expectations(&std::fs::read_to_string(dir.join("expect.yaml")).unwrap()).unwrap();
    let mut notes = Vec::new();

    // Hosts: one per Pod with addresses (not hostNetwork), one per external address.
    let mut hosts: Vec<HostSpec> = Vec::new();
    let mut host_of: BTreeMap<Subject, String> = BTreeMap::new();
    let mut pods = Vec::new();
    for e in &model.endpoints {
        if e.kind != EndpointKind::Pod || e.ips.is_empty() {
            continue;
        }
        if e.host_network {
            notes.push(format!(
                "skipped hostNetwork Pod {} (it shares its node's IP and netns)",
                e.key()
            ));
            continue;
        }
        let v4 = e.ips.iter().find_map(|i| match i {
            IpAddr::V4(a) => Some(ipnet::Ipv4Net::new(*a, 16).unwrap()),
            IpAddr::V6(_) => None,
        });
        let v6 = e.ips.iter().find_map(|i| match i {
            IpAddr::V6(a) => Some(ipnet::Ipv6Net::new(*a, 64).unwrap()),
            IpAddr::V4(_) => None,
        });
        hosts.push(HostSpec::new(e.key(), v4, v6));
        host_of.insert(Subject::Endpoint(e.id), e.key());
        pods.push(e.id);
    }
    let pod_hosts: BTreeSet<Subject> = host_of.keys().copied().collect();
    let skipped_host = |s: &Subject| match s {
        Subject::Endpoint(_) => !pod_hosts.contains(s),
        Subject::External(_) => false,
    };
    let mut assertions = Vec::new();
    for (i, a) in exp.assertions.iter().enumerate() {
        let (Ok(s), Ok(d)) = (Subject::parse(model, &a.from), Subject::parse(model, &a.to)) else {
            // Through a Service or from a node: needs the node netns with kube-proxy-style
            // DNAT, which this Pod-to-Pod proof does not build (#10).
            let via_service = matches!(
                policy_compiler::parse_destination(model, &a.to),
                Ok(policy_compiler::Destination::Service(_))
            );
            let from_node = a.from.starts_with("node/")
                && policy_compiler::parse_source(model, &a.from).is_ok();
            if via_service || from_node {
                notes.push(format!(
                    "skipped assertion {i} ({} -> {}): via a Service or from a node",
                    a.from, a.to
                ));
                continue;
            }
            panic!("{}: assertion {i} does not resolve", case.name);
        };
        if skipped_host(&s) || skipped_host(&d) {
            notes.push(format!(
                "skipped assertion {i} ({} -> {}): hostNetwork Pod",
                a.from, a.to
            ));
            continue;
        }
        for subj in [s, d] {
            if let Subject::External(ip) = subj
                && !host_of.contains_key(&subj)
            {
                let name = format!("ext-{ip}");
                let (v4, v6) = match ip {
                    IpAddr::V4(a) => (Some(ipnet::Ipv4Net::new(a, 16).unwrap()), None),
                    IpAddr::V6(a) => (None, Some(ipnet::Ipv6Net::new(a, 64).unwrap())),
                };
                hosts.push(HostSpec::new(name.clone(), v4, v6));
                host_of.insert(subj, name);
            }
        }
        assertions.push((i, a, s, d));
    }

    // Listeners: every (protocol, port) the expectations mention, on every host.
    let mut services: BTreeSet<(Protocol, u16)> = BTreeSet::new();
    for m in &exp.matrix {
        services.insert((parse_protocol(&m.protocol), m.port));
    }
    for (_, a, _, _) in &assertions {
        services.insert((parse_protocol(&a.protocol), a.port));
    }

    // Probes.
    let mut checks: Vec<Check> = Vec::new();
    let mut seen: BTreeSet<ProbeSpec> = BTreeSet::new();
    let mut add = |checks: &mut Vec<Check>, c: Check| {
        if seen.insert(c.spec.clone()) {
            checks.push(c);
        }
    };
    for m in &exp.matrix {
        let p = parse_protocol(&m.protocol);
        let compiled = matrix(
            model,
            graph,
            MatrixQuery {
                protocol: Some(p),
                port: Some(m.port),
            },
        );
        for &s in &pods {
            for &d in &pods {
                for v4 in [true, false] {
                    let (Some(sip), Some(dip)) = (
                        ip_of_family(model, s.into(), v4),
                        ip_of_family(model, d.into(), v4),
                    ) else {
                        continue;
                    };
                    let want = graph
                        .reach_at(model, s.into(), Some(sip), d.into(), Some(dip))
                        .allowed
                        .contains(p, m.port);
                    // The primary family's answer is the matrix cell.
                    let (_, primary) = AllowGraph::addresses(model, s.into(), d.into());
                    if primary.is_some_and(|a| a.is_ipv4() == v4) {
                        let cell = compiled.allowed[s.0 as usize][d.0 as usize];
                        assert_eq!(
                            cell,
                            want,
                            "{}: matrix and reach_at disagree for {} -> {}",
                            case.name,
                            model.endpoint(s).key(),
                            model.endpoint(d).key()
                        );
                    }
                    add(
                        &mut checks,
                        Check {
                            spec: ProbeSpec::new(
                                host_of[&Subject::Endpoint(s)].clone(),
                                dip,
                                p,
                                m.port,
                            ),
                            src: s.into(),
                            src_ip: sip,
                            dst: d.into(),
                            dst_ip: dip,
                            protocol: p,
                            port: m.port,
                            want,
                            what: format!("matrix {p}/{}", m.port),
                        },
                    );
                }
            }
        }
    }
    for (i, a, s, d) in &assertions {
        let p = parse_protocol(&a.protocol);
        // The family of an IP literal, else the primary family of the pair.
        let v4 = match (s, d) {
            (Subject::External(ip), _) | (_, Subject::External(ip)) => ip.is_ipv4(),
            _ => AllowGraph::addresses(model, *s, *d)
                .1
                .is_none_or(|ip| ip.is_ipv4()),
        };
        let (Some(sip), Some(dip)) = (ip_of_family(model, *s, v4), ip_of_family(model, *d, v4))
        else {
            notes.push(format!(
                "skipped assertion {i} ({} -> {}): no common address family",
                a.from, a.to
            ));
            continue;
        };
        let want = graph
            .reach_at(model, *s, Some(sip), *d, Some(dip))
            .allowed
            .contains(p, a.port);
        assert_eq!(
            want, a.allowed,
            "{}: assertion {i} ({} -> {} {p}/{}): compiler says {want}",
            case.name, a.from, a.to, a.port
        );
        add(
            &mut checks,
            Check {
                spec: ProbeSpec::new(host_of[s].clone(), dip, p, a.port),
                src: *s,
                src_ip: sip,
                dst: *d,
                dst_ip: dip,
                protocol: p,
                port: a.port,
                want,
                what: format!("assertion {i}"),
            },
        );
    }

    let lab = Topology::build(&kernel::prefix(tag), &hosts)
        .unwrap_or_else(|e| panic!("{}: topology: {e}", case.name));
    for &id in &pods {
        let rs = compile_pod(model, graph, id, &RulesetOptions::default());
        let host = lab.host(&model.endpoint(id).key()).unwrap();
        nft::apply(&host.netns, &rs.to_nft())
            .unwrap_or_else(|e| panic!("{} {}: {e}", case.name, model.endpoint(id).key()));
    }
    let listeners: Vec<Listener> = lab
        .hosts()
        .iter()
        .flat_map(|h| {
            services
                .iter()
                .map(|(p, port)| Listener::new(h.name.clone(), *p, *port))
        })
        .collect();
    let prober = Prober::start(&lab, &listeners).unwrap();
    let specs: Vec<ProbeSpec> = checks.iter().map(|c| c.spec.clone()).collect();
    let mut results: Vec<(bool, String)> = prober
        .probe_all(&specs, QUICK)
        .into_iter()
        .zip(&specs)
        .map(|(r, s)| {
            let r = r.unwrap_or_else(|e| panic!("{}: {s}: {e}", case.name));
            (r.connected, r.detail)
        })
        .collect();
    // Retry "denied but should be allowed" patiently: a first packet can be slow.
    let retry: Vec<usize> = (0..checks.len())
        .filter(|&i| checks[i].want && !results[i].0)
        .collect();
    if !retry.is_empty() {
        let again: Vec<ProbeSpec> = retry.iter().map(|&i| specs[i].clone()).collect();
        for (&i, r) in retry.iter().zip(prober.probe_all(&again, PATIENT)) {
            let r = r.unwrap_or_else(|e| panic!("{}: {}: {e}", case.name, specs[i]));
            results[i] = (r.connected, r.detail);
        }
    }
    drop(prober);

    let mut failures = Vec::new();
    for (c, (connected, detail)) in checks.iter().zip(&results) {
        if *connected == c.want {
            continue;
        }
        let e = explain(
            model,
            graph,
            c.src,
            c.dst,
            Some(PortQuery {
                protocol: c.protocol,
                port: c.port,
            }),
        );
        let mut msg = format!(
            "{}: {} {} ({} -> {}): kernel {} ({detail}), compiler {}\n",
            case.name,
            c.what,
            c.spec,
            c.src_ip,
            c.dst_ip,
            if *connected { "allowed" } else { "denied" },
            if c.want { "allowed" } else { "denied" },
        );
        for line in e.to_string().lines() {
            let _ = writeln!(msg, "    {line}");
        }
        failures.push(msg);
    }
    lab.teardown().unwrap();
    Summary {
        probes: checks.len(),
        denied: checks.iter().filter(|c| !c.want).count(),
        failures,
        notes,
    }
}

/// Proves the cases whose index is `shard` modulo `shards` (tests run in parallel).
fn prove_shard(test: &str, shard: usize, shards: usize, tag: &str) {
    if !kernel::available(test) {
        return;
    }
    let start = Instant::now();
    let mut failures = Vec::new();
    let mut total = 0;
    for (i, dir) in cases::case_dirs().iter().enumerate() {
        if i % shards != shard {
            continue;
        }
        let t = Instant::now();
        let case = cases::compile(dir);
        if !case.model.cluster_policies.is_empty() {
            // The per-Pod ruleset does not enforce ClusterNetworkPolicy tiers yet (#13,
            // kernel part): these cases are proven against expect.yaml by the compiler only.
            eprintln!(
                "kernel proof {:<45} skipped: ClusterNetworkPolicy",
                case.name
            );
            continue;
        }
        let s = prove_case(&case, dir, tag);
        total += s.probes;
        for n in &s.notes {
            eprintln!("  {}: note: {n}", case.name);
        }
        eprintln!(
            "kernel proof {:<45} {:>5} probes {:>5} denied {:>6.2}s{}",
            case.name,
            s.probes,
            s.denied,
            t.elapsed().as_secs_f64(),
            if s.failures.is_empty() {
                String::new()
            } else {
                format!("  {} DISAGREEMENTS", s.failures.len())
            }
        );
        failures.extend(s.failures);
    }
    eprintln!(
        "kernel proof shard {shard}/{shards}: {total} probes in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "{} kernel/compiler disagreement(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn kernel_agrees_with_compiler_on_every_case_shard_0() {
    prove_shard(
        "kernel_agrees_with_compiler_on_every_case_shard_0",
        0,
        3,
        "pfa",
    );
}

#[test]
fn kernel_agrees_with_compiler_on_every_case_shard_1() {
    prove_shard(
        "kernel_agrees_with_compiler_on_every_case_shard_1",
        1,
        3,
        "pfb",
    );
}

#[test]
fn kernel_agrees_with_compiler_on_every_case_shard_2() {
    prove_shard(
        "kernel_agrees_with_compiler_on_every_case_shard_2",
        2,
        3,
        "pfc",
    );
}
