//! The one-machine lab behind `netpol lab`: the manifests' Pods as network namespaces,
//! enforced by the real agent code, probed with real packets, compared with the compiler.
//!
//! ```text
//!  Inputs ──LabPlan::new (pure)──▶ Pods + addresses (assigned ones written into status),
//!                                  services (container ports), probes with expectations
//!     │
//!  Lab::start: cleanup_stale(prefix) ─▶ Topology (netns per Pod, bridge in the hub)
//!            ─▶ agent::Reconciler fed the inputs + a netns map ─▶ NftApplier per Pod
//!            ─▶ DropListener per Pod netns ─▶ Prober listeners (every Pod, every service)
//!     │
//!  Lab::probe: Prober::probe_all (every ordered pair, service and family; retries)
//!            ─▶ LabReport: kernel matrix beside `netpol matrix`, disagreements, drops
//!     │
//!  Lab::teardown (or Lab::keep) — and Drop: servers and listeners stop, namespaces go
//! ```
//!
//! The rulesets are applied by [`crate::agent::Reconciler`] with the real
//! [`crate::applier::NftApplier`], fed the plan's objects and a Pod-to-netns map as one
//! [`Scan`]: the same compile / render / plan / apply path as `netpol agent`.
//!
//! # Example
//!
//! ```no_run
//! use netpol_lab::lab::{Lab, LabOptions, plan::LabPlan};
//! use policy_compiler::{SourceText, load};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let text = std::fs::read_to_string("manifests.yaml")?;
//! let (inputs, _diags) = load(&[SourceText { name: "manifests.yaml", text: &text }]);
//! let plan = LabPlan::new(inputs)?;
//! let mut lab = Lab::start(plan, &LabOptions::default())?;
//! let report = lab.probe()?;
//! lab.teardown()?;
//! print!("{}", report.to_text(false));
//! assert!(report.agree);
//! # Ok(())
//! # }
//! ```

pub mod dns;
pub mod kubeproxy;
pub mod plan;
pub mod report;
pub mod services;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::{Ipv4Net, Ipv6Net};
use policy_compiler::explain::explain_reach;
use policy_compiler::ruleset::RulesetOptions;
use policy_compiler::{PortQuery, Subject};

use crate::agent::{AgentConfig, CompiledRulesets, Reconciler};
use crate::applier::NodeNetnsApplier;
use crate::drops::aggregate::{Aggregator, AggregatorConfig};
use crate::drops::report::describe_in;
use crate::drops::{DropListener, NflogConfig};
use crate::manifests::Scan;
use crate::metrics::Metrics;
use crate::probe::{Listener, ProbeError, ProbeSpec, Prober};
use crate::state::{Event, Object, PodKey};
use crate::topology::{HostSpec, NodeSpec, Topology, TopologyError};
use plan::LabPlan;
use report::{
    Disagreement, DnsCell, LabMatrix, LabPodInfo, LabReport, NodeCell, ServiceCell, Timings,
};

/// Probes of a Service cell whose backends' verdicts differ: all outcomes must show
/// (with two backends, 16 tries miss one with probability 2^-15).
pub const SERVICE_TRIES: usize = 16;

/// The start of every `netpol lab` namespace prefix: a run uses [`lab_prefix`] of its
/// process, `netpollab<pid>` (`netpollab4711-hub`, `netpollab4711-0`, …), so labs of
/// different processes never touch each other's namespaces; [`cleanup_dead_labs`]
/// removes the labs whose process is gone (kept or crashed runs).
pub const LAB_PREFIX: &str = "netpollab";

/// The namespace prefix of the lab run by process `pid`: `netpollab<pid>` (at most 16
/// characters: pids stay below 2^22).
pub fn lab_prefix(pid: u32) -> String {
    format!("{LAB_PREFIX}{pid}")
}

/// The pid in a lab namespace name `netpollab<pid>-…` (`Some(None)` for the fixed
/// `netpollab-…` names of older versions), `None` when the name is no lab's.
fn lab_owner(name: &str) -> Option<Option<u32>> {
    let rest = name.strip_prefix(LAB_PREFIX)?;
    let (digits, tail) = rest.split_at(rest.bytes().take_while(u8::is_ascii_digit).count());
    let tail = tail.strip_prefix('-')?;
    if tail != "hub" && (tail.is_empty() || !tail.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if digits.is_empty() {
        return Some(None);
    }
    digits.parse().ok().map(Some)
}

/// Whether process `pid` runs (on this machine's pid namespace).
fn process_runs(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the namespaces of every lab whose process no longer runs (`netpollab<pid>-*`
/// of a kept or crashed run, and the fixed-prefix `netpollab-*` of older versions);
/// labs of running processes (another `netpol lab`, a test) stay. Returns the removed
/// names, sorted.
pub fn cleanup_dead_labs() -> Result<Vec<String>, TopologyError> {
    let names = crate::netns::list().map_err(|source| TopologyError::Netns {
        prefix: LAB_PREFIX.to_owned(),
        step: "list namespaces".to_owned(),
        source: Box::new(source),
    })?;
    let mut removed = Vec::new();
    for name in names {
        let dead = match lab_owner(&name) {
            Some(None) => true,
            Some(Some(pid)) => !process_runs(pid),
            None => false,
        };
        if !dead {
            continue;
        }
        // Two labs starting at once may both remove the same dead lab: a namespace
        // that is gone already is no error.
        match crate::netns::delete(&name) {
            Ok(()) => removed.push(name),
            Err(_) if !crate::netns::exists(&name) => {}
            Err(source) => {
                return Err(TopologyError::Netns {
                    prefix: LAB_PREFIX.to_owned(),
                    step: format!("remove {name}"),
                    source: Box::new(source),
                });
            }
        }
    }
    removed.sort();
    Ok(removed)
}

/// The running labs other than this process's: `(prefix, namespaces)`.
pub fn running_labs() -> Vec<(String, usize)> {
    let mut out: BTreeMap<String, usize> = BTreeMap::new();
    for name in crate::netns::list().unwrap_or_default() {
        if let Some(Some(pid)) = lab_owner(&name)
            && pid != std::process::id()
            && process_runs(pid)
        {
            *out.entry(lab_prefix(pid)).or_default() += 1;
        }
    }
    out.into_iter().collect()
}

/// How a lab runs.
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Namespace prefix (1..=16 ASCII letters or digits); by default [`lab_prefix`] of
    /// this process.
    pub prefix: String,
    /// How long one probe waits for an answer (a denied probe costs this much).
    pub timeout: Duration,
    /// Second, patient try of a probe the compiler allows but the kernel did not
    /// answer in `timeout` (first packets can be slow).
    pub retry_timeout: Duration,
    /// NFLOG group of the rulesets' drop rules and of the drop listeners.
    pub log_group: u16,
    /// How long the agent may take to apply every ruleset.
    pub ready_timeout: Duration,
    /// Probes run at once.
    pub parallelism: usize,
}

impl Default for LabOptions {
    fn default() -> Self {
        Self {
            prefix: lab_prefix(std::process::id()),
            timeout: Duration::from_millis(300),
            retry_timeout: Duration::from_secs(2),
            log_group: RulesetOptions::default().log_group,
            ready_timeout: Duration::from_secs(20),
            parallelism: crate::probe::DEFAULT_PARALLELISM,
        }
    }
}

/// Errors of a lab run. Everything here is about the kernel or the environment; input
/// problems are [`plan::PlanError`]s.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// Removing the namespaces of an earlier run failed.
    #[error("cannot remove the leftovers of an earlier lab with prefix {prefix}")]
    Cleanup {
        /// The prefix.
        prefix: String,
        /// The failing step.
        #[source]
        source: Box<TopologyError>,
    },
    /// Creating the namespaces, links or addresses failed.
    #[error("cannot build the lab topology")]
    Topology(#[source] Box<TopologyError>),
    /// The agent did not apply every Pod's ruleset in time (nft missing or failing).
    #[error("the agent did not apply every ruleset within {timeout:?}: {detail}")]
    NotReady {
        /// The wait.
        timeout: Duration,
        /// Which Pods are missing, with the last failure.
        detail: String,
    },
    /// A probe server could not be started.
    #[error("cannot start the probe listeners")]
    Listeners(#[source] Box<ProbeError>),
    /// A probe could not be run at all (this says nothing about the ruleset).
    #[error("probe {probe} could not run")]
    Probe {
        /// The probe.
        probe: String,
        /// Why.
        #[source]
        source: Box<ProbeError>,
    },
    /// The kube-proxy equivalent could not be loaded into the node.
    #[error("cannot load the kube-proxy equivalent into the node: {detail}")]
    KubeProxy {
        /// nft's error.
        detail: String,
    },
    /// The lab's DNS responder could not be started.
    #[error("cannot start the lab's cluster DNS: {detail}")]
    Dns {
        /// Why.
        detail: String,
    },
    /// Removing the lab's namespaces failed.
    #[error("lab teardown failed")]
    Teardown(#[source] Box<TopologyError>),
}

/// A lab left running by [`Lab::keep`]: its namespaces and tables stay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptLab {
    /// Namespace prefix; `netpol lab --down` (or `Topology::cleanup_stale`) removes it.
    pub prefix: String,
    /// The hub namespace.
    pub hub: String,
    /// `(ns/name, netns)` of every Pod, the lab's DNS Pod last (when it has one).
    pub pods: Vec<(String, String)>,
}

/// A running lab. Dropping it stops the probe servers and drop listeners and removes
/// the namespaces; [`Lab::teardown`] does the same and reports errors.
pub struct Lab {
    // Field order is drop order: servers and listeners stop before the namespaces go.
    prober: Prober,
    drops: Vec<DropListener>,
    dns_server: Option<dns::DnsServer>,
    topology: Topology,
    plan: LabPlan,
    opts: LabOptions,
    netns: Vec<String>,
    notes: Vec<String>,
    timings: Timings,
    started: Instant,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("prefix", &self.opts.prefix)
            .field("pods", &self.netns.len())
            .finish()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn host_spec(p: &plan::LabPod) -> HostSpec {
    let v4 = p.ips.iter().find_map(|i| match i {
        // Prefix lengths 16 and 64 are always valid.
        IpAddr::V4(a) => Ipv4Net::new(*a, 16).ok(),
        IpAddr::V6(_) => None,
    });
    let v6 = p.ips.iter().find_map(|i| match i {
        IpAddr::V6(a) => Ipv6Net::new(*a, 64).ok(),
        IpAddr::V4(_) => None,
    });
    HostSpec::new(p.pod.clone(), v4, v6)
}

/// The lab's node: `lab-node`, 172.18.0.2/16 (and fd00:18::2/64 when a Pod has IPv6),
/// the addresses a kind node typically has.
pub const LAB_NODE: &str = "lab-node";

fn lab_node(hosts: &[HostSpec]) -> NodeSpec {
    // Both literals are valid networks.
    let v4 = Ipv4Net::new(std::net::Ipv4Addr::new(172, 18, 0, 2), 16).unwrap_or_default();
    let v6 = hosts
        .iter()
        .any(|h| h.ipv6.is_some())
        .then(|| Ipv6Net::new(std::net::Ipv6Addr::new(0xfd00, 0x18, 0, 0, 0, 0, 0, 2), 64).ok())
        .flatten();
    NodeSpec::new(LAB_NODE, v4, v6)
}

impl Lab {
    /// Builds the lab and waits until the agent has applied every Pod's ruleset:
    /// removes leftovers of `opts.prefix`, creates one namespace per Pod, runs the
    /// agent's reconciler, starts a drop listener per Pod namespace (a failure there is
    /// a note, not an error) and the probe servers. On error everything made so far is
    /// removed again.
    pub fn start(plan: LabPlan, opts: &LabOptions) -> Result<Lab, LabError> {
        let started = Instant::now();
        let mut notes = plan.notes().to_vec();
        let cleanup = |source| LabError::Cleanup {
            prefix: opts.prefix.clone(),
            source: Box::new(source),
        };
        // Our own leftovers (a reused pid), then the labs of processes that are gone;
        // never a running lab's.
        let mut removed = Topology::cleanup_stale(&opts.prefix).map_err(cleanup)?;
        removed.extend(cleanup_dead_labs().map_err(cleanup)?);
        if !removed.is_empty() {
            notes.push(format!(
                "removed {} namespace(s) left by an earlier lab: {}",
                removed.len(),
                removed.join(", ")
            ));
        }
        // The lab's DNS Pod last, so the probed Pods keep `<prefix>-0..`.
        let hosts: Vec<HostSpec> = plan
            .pods()
            .iter()
            .chain(plan.dns().map(|d| &d.pod))
            .map(host_spec)
            .collect();
        let node = lab_node(&hosts);
        // From here on, an early return drops `topology`, which removes the namespaces.
        let topology = Topology::build_routed(&opts.prefix, &node, &hosts)
            .map_err(|e| LabError::Topology(Box::new(e)))?;
        let mut netns: Vec<String> = topology.hosts().iter().map(|h| h.netns.clone()).collect();
        let dns_netns = plan.dns().and_then(|_| netns.pop());
        let mut timings = Timings {
            topology_ms: ms(started.elapsed()),
            ..Timings::default()
        };

        let t = Instant::now();
        enforce(&plan, &netns, dns_netns.as_deref(), topology.hub(), opts)?;
        let node_ips: Vec<IpAddr> = topology
            .node()
            .map(|n| {
                n.ipv4
                    .map(|a| IpAddr::V4(a.addr()))
                    .into_iter()
                    .chain(n.ipv6.map(|a| IpAddr::V6(a.addr())))
                    .collect()
            })
            .unwrap_or_default();
        let proxy = services::kube_proxy(plan.model());
        if !proxy.is_empty() {
            kubeproxy::apply(topology.hub(), &proxy, &node_ips).map_err(|e| {
                LabError::KubeProxy {
                    detail: ErrorChain(&e).to_string(),
                }
            })?;
        }
        let dns_server = match (plan.dns(), &dns_netns) {
            (Some(d), Some(ns)) => {
                let mut zone = dns::Zone::new();
                for s in plan.model().services.iter().filter(|s| s.proxied()) {
                    zone.add_service(&s.namespace, &s.name, &s.cluster_ips);
                }
                Some(
                    dns::DnsServer::start(ns, &d.pod.ips, plan::DNS_PORT, zone).map_err(|e| {
                        LabError::Dns {
                            detail: ErrorChain(&e).to_string(),
                        }
                    })?,
                )
            }
            _ => None,
        };
        timings.agent_ms = ms(t.elapsed());

        let config = NflogConfig {
            group: opts.log_group,
            ..NflogConfig::default()
        };
        let mut drops = Vec::new();
        // The node's listener reads the node table's drops (after DNAT).
        for ns in netns
            .iter()
            .chain(std::iter::once(&topology.hub().to_owned()))
        {
            match DropListener::start(ns, &config) {
                Ok(l) => drops.push(l),
                Err(e) => {
                    notes.push(format!("no drop reports: {}", ErrorChain(&e)));
                    drops.clear();
                    break;
                }
            }
        }
        let mut listeners: Vec<Listener> = plan
            .pods()
            .iter()
            .flat_map(|p| {
                plan.services()
                    .iter()
                    .map(|&(proto, port)| Listener::new(p.pod.clone(), proto, port))
            })
            .collect();
        // Service backends also listen on their target ports.
        for (i, proto, port) in services::backend_listeners(&plan) {
            if !plan.services().contains(&(proto, port)) {
                listeners.push(Listener::new(plan.pods()[i].pod.clone(), proto, port));
            }
        }
        let prober = Prober::start(&topology, &listeners)
            .map_err(|e| LabError::Listeners(Box::new(e)))?
            .with_parallelism(opts.parallelism);
        Ok(Lab {
            prober,
            drops,
            dns_server,
            topology,
            plan,
            opts: opts.clone(),
            netns,
            notes,
            timings,
            started,
        })
    }

    /// The plan the lab was built from.
    pub fn plan(&self) -> &LabPlan {
        &self.plan
    }

    /// `(ns/name, netns)` of every Pod.
    pub fn pods(&self) -> Vec<(String, String)> {
        self.plan
            .pods()
            .iter()
            .map(|p| p.pod.clone())
            .zip(self.netns.iter().cloned())
            .collect()
    }

    /// Probes every ordered pair of Pods on every service (both address families of
    /// dual-stack pairs), retries allowed-but-unanswered probes once, collects the drop
    /// reports, and compares with the compiler.
    pub fn probe(&mut self) -> Result<LabReport, LabError> {
        let t = Instant::now();
        let prober = &self.prober;
        let planned = self.plan.probes();
        let pods = self.plan.pods();
        let specs: Vec<ProbeSpec> = planned
            .iter()
            .map(|p| ProbeSpec::new(pods[p.src].pod.clone(), p.dst_ip, p.protocol, p.port))
            .collect();
        let run = |specs: &[ProbeSpec], timeout| -> Result<Vec<(bool, String)>, LabError> {
            prober
                .probe_all(specs, timeout)
                .into_iter()
                .zip(specs)
                .map(|(r, s)| {
                    r.map(|r| (r.connected, r.detail))
                        .map_err(|source| LabError::Probe {
                            probe: s.to_string(),
                            source: Box::new(source),
                        })
                })
                .collect()
        };
        let mut results = run(&specs, self.opts.timeout)?;
        let retry: Vec<usize> = (0..planned.len())
            .filter(|&i| planned[i].expected && !results[i].0)
            .collect();
        if !retry.is_empty() {
            let again: Vec<ProbeSpec> = retry.iter().map(|&i| specs[i].clone()).collect();
            for (&i, r) in retry
                .iter()
                .zip(run(&again, self.opts.retry_timeout.max(self.opts.timeout))?)
            {
                results[i] = r;
            }
        }
        let (services, node_probes) = self.probe_services()?;
        let dns = self.probe_dns();
        let drops = collect_drops(
            &self.drops,
            &self.plan,
            self.topology.hub(),
            &mut self.notes,
        );

        let model = self.plan.model();
        let graph = self.plan.graph();
        let n = pods.len();
        let mut matrices = Vec::new();
        for &(protocol, port) in self.plan.services() {
            let expected = self.plan.expected(protocol, port);
            let mut allowed = vec![vec![false; n]; n];
            for (p, (connected, _)) in planned.iter().zip(&results) {
                if p.primary && p.protocol == protocol && p.port == port {
                    allowed[p.src][p.dst] = *connected;
                }
            }
            matrices.push(LabMatrix {
                port,
                protocol,
                endpoints: expected.endpoints,
                allowed,
                expected: expected.allowed,
            });
        }
        let mut disagreements = Vec::new();
        for (p, (connected, detail)) in planned.iter().zip(&results) {
            if *connected == p.expected {
                continue;
            }
            let (s, d) = (
                Subject::Endpoint(pods[p.src].id),
                Subject::Endpoint(pods[p.dst].id),
            );
            let reach = graph.reach_at(model, s, Some(p.src_ip), d, Some(p.dst_ip));
            let query = Some(PortQuery {
                protocol: p.protocol,
                port: p.port,
            });
            disagreements.push(Disagreement {
                src: pods[p.src].pod.clone(),
                dst: pods[p.dst].pod.clone(),
                src_ip: p.src_ip,
                dst_ip: p.dst_ip,
                protocol: p.protocol,
                port: p.port,
                kernel: *connected,
                expected: p.expected,
                primary: p.primary,
                detail: detail.clone(),
                explanation: explain_reach(model, graph, &reach, query).to_string(),
            });
        }
        self.timings.probes_ms = ms(t.elapsed());
        self.timings.total_ms = ms(self.started.elapsed());
        Ok(LabReport {
            agree: disagreements.is_empty()
                && services.iter().all(|c| c.agree)
                && node_probes.iter().all(|c| c.connected)
                && dns.iter().all(|c| c.agree),
            services,
            node_probes,
            dns,
            prefix: self.opts.prefix.clone(),
            hub: format!("{}-hub", self.opts.prefix),
            pods: pods
                .iter()
                .zip(&self.netns)
                .map(|(p, ns)| LabPodInfo {
                    pod: p.pod.clone(),
                    netns: ns.clone(),
                    ips: p.ips.clone(),
                    assigned: p.assigned,
                })
                .collect(),
            skipped: self.plan.skipped().to_vec(),
            notes: self.notes.clone(),
            matrices,
            disagreements,
            drops,
            probes: planned.len(),
            timings_ms: self.timings,
        })
    }

    /// Probes every Service cell (through the kube-proxy equivalent) and every
    /// kubelet-style node probe. A cell whose backends' verdicts differ is probed
    /// [`SERVICE_TRIES`] times; an allowed one that did not connect is retried once with
    /// the patient timeout.
    fn probe_services(&self) -> Result<(Vec<ServiceCell>, Vec<NodeCell>), LabError> {
        let pods = self.plan.pods();
        let node = self
            .topology
            .node()
            .map(|n| n.name.clone())
            .unwrap_or_default();
        let cells = services::service_probes(&self.plan);
        let mut specs = Vec::new();
        let mut owner = Vec::new();
        for (i, c) in cells.iter().enumerate() {
            let tries = if c.expected.len() > 1 {
                SERVICE_TRIES
            } else {
                1
            };
            for _ in 0..tries {
                specs.push(ProbeSpec::new(
                    pods[c.src_index].pod.clone(),
                    c.address,
                    c.protocol,
                    c.port,
                ));
                owner.push(i);
            }
        }
        let nodes = services::node_probes(&self.plan);
        let node_specs: Vec<ProbeSpec> = nodes
            .iter()
            .map(|n| ProbeSpec::new(node.clone(), n.ip, n.protocol, n.port))
            .collect();
        let run = |specs: &[ProbeSpec], timeout| -> Result<Vec<(bool, String)>, LabError> {
            self.prober
                .probe_all(specs, timeout)
                .into_iter()
                .zip(specs)
                .map(|(r, s)| {
                    r.map(|r| (r.connected, r.detail))
                        .map_err(|source| LabError::Probe {
                            probe: s.to_string(),
                            source: Box::new(source),
                        })
                })
                .collect()
        };
        let mut results = run(&specs, self.opts.timeout)?;
        let patient = self.opts.retry_timeout.max(self.opts.timeout);
        let retry: Vec<usize> = (0..specs.len())
            .filter(|&k| cells[owner[k]].expected == [true] && !results[k].0)
            .collect();
        if !retry.is_empty() {
            let again: Vec<ProbeSpec> = retry.iter().map(|&k| specs[k].clone()).collect();
            for (&k, r) in retry.iter().zip(run(&again, patient)?) {
                results[k] = r;
            }
        }
        let mut out: Vec<ServiceCell> = cells
            .into_iter()
            .map(|probe| ServiceCell {
                probe,
                observed: Vec::new(),
                agree: false,
                detail: String::new(),
            })
            .collect();
        for (k, (connected, detail)) in results.into_iter().enumerate() {
            let c = &mut out[owner[k]];
            if !c.observed.contains(&connected) {
                c.observed.push(connected);
            }
            c.detail = detail;
        }
        for c in &mut out {
            c.observed.sort_unstable();
            c.agree = c.observed == c.probe.expected;
        }
        let mut node_results = run(&node_specs, self.opts.timeout)?;
        let retry: Vec<usize> = (0..node_specs.len())
            .filter(|&k| !node_results[k].0)
            .collect();
        if !retry.is_empty() {
            let again: Vec<ProbeSpec> = retry.iter().map(|&k| node_specs[k].clone()).collect();
            for (&k, r) in retry.iter().zip(run(&again, patient)?) {
                node_results[k] = r;
            }
        }
        let node_cells = nodes
            .into_iter()
            .zip(node_results)
            .map(|(probe, (connected, detail))| NodeCell {
                probe,
                connected,
                detail,
            })
            .collect();
        Ok((out, node_cells))
    }

    /// Looks every proxied Service's name up from every lab Pod through the lab's
    /// kube-dns ClusterIP of the Pod's family (UDP), as an application does before
    /// connecting; the compiler's answer is whether the Pod may reach kube-dns on UDP 53
    /// after DNAT. One thread per Pod; a lookup the compiler allows that got no answer is
    /// retried once with the patient timeout.
    fn probe_dns(&self) -> Vec<DnsCell> {
        let (Some(lab_dns), Some(_)) = (self.plan.dns(), &self.dns_server) else {
            return Vec::new();
        };
        let model = self.plan.model();
        let graph = self.plan.graph();
        let Some(kube_dns) = model.service(&format!("{}/{}", plan::KUBE_DNS.0, plan::KUBE_DNS.1))
        else {
            return Vec::new();
        };
        let udp = kube_dns
            .ports
            .iter()
            .position(|p| p.protocol == policy_compiler::Protocol::Udp);
        let targets: Vec<&policy_compiler::model::Service> = model
            .services
            .iter()
            .filter(|s| s.proxied() && !s.cluster_ips.is_empty())
            .collect();
        let patient = self.opts.retry_timeout.max(self.opts.timeout);
        let quick = self.opts.timeout;
        let targets = &targets;
        let per_pod = |(src, netns): (&plan::LabPod, &String)| -> Vec<DnsCell> {
            let v6 = src.ips.first().is_some_and(IpAddr::is_ipv6);
            let Some(server) = lab_dns.cluster_ips.iter().find(|a| a.is_ipv6() == v6) else {
                return Vec::new();
            };
            let server = std::net::SocketAddr::new(*server, plan::DNS_PORT);
            let expected = udp.is_some_and(|u| {
                let flows =
                    graph.reach_service_at(model, Subject::Endpoint(src.id), kube_dns, u, v6);
                !flows.is_empty() && flows.iter().all(|f| f.allowed)
            });
            let mut out = Vec::new();
            for svc in targets {
                let name = dns::service_fqdn(&svc.namespace, &svc.name);
                let mut want: Vec<IpAddr> = svc
                    .cluster_ips
                    .iter()
                    .filter(|a| a.is_ipv6() == v6)
                    .copied()
                    .collect();
                want.sort_unstable();
                let ask = |timeout| {
                    dns::resolve_in(netns, &name, v6, server, dns::Transport::Udp, timeout)
                };
                let mut got = ask(quick);
                if expected && got.is_err() {
                    got = ask(patient);
                }
                let (resolved, mut answer, detail) = match got {
                    Ok(Some(ips)) => (true, ips, "answered".to_owned()),
                    Ok(None) => (true, Vec::new(), "NXDOMAIN".to_owned()),
                    Err(e) => (false, Vec::new(), ErrorChain(&e).to_string()),
                };
                answer.sort_unstable();
                let agree = resolved == expected && (!resolved || answer == want);
                out.push(DnsCell {
                    src: src.pod.clone(),
                    name,
                    server,
                    expected,
                    resolved,
                    answer,
                    agree,
                    detail,
                });
            }
            out
        };
        let pods: Vec<(&plan::LabPod, &String)> =
            self.plan.pods().iter().zip(&self.netns).collect();
        std::thread::scope(|scope| {
            let handles: Vec<_> = pods
                .iter()
                .map(|&p| scope.spawn(move || per_pod(p)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        })
    }

    /// Stops the servers and listeners and removes every namespace of the lab.
    pub fn teardown(self) -> Result<(), LabError> {
        let Lab {
            prober,
            drops,
            dns_server,
            topology,
            ..
        } = self;
        if let Some(d) = dns_server {
            d.stop();
        }
        stop_servers(prober, drops);
        topology
            .teardown()
            .map_err(|e| LabError::Teardown(Box::new(e)))
    }

    /// Stops the servers and listeners but leaves the namespaces, with their tables,
    /// in place (`ip netns exec <netns> …`); the next lab run with the same prefix
    /// (or [`Topology::cleanup_stale`]) removes them.
    pub fn keep(self) -> KeptLab {
        let mut pods = self.pods();
        // The DNS Pod's namespace is the topology's last host.
        if let (Some(d), Some(h)) = (self.plan.dns(), self.topology.hosts().last()) {
            pods.push((d.pod.pod.clone(), h.netns.clone()));
        }
        let kept = KeptLab {
            prefix: self.opts.prefix.clone(),
            hub: self.topology.hub().to_owned(),
            pods,
        };
        let Lab {
            prober,
            drops,
            dns_server,
            topology,
            ..
        } = self;
        if let Some(d) = dns_server {
            d.stop();
        }
        stop_servers(prober, drops);
        // Dropping a Topology removes its namespaces; keeping them is the point.
        std::mem::forget(topology);
        kept
    }
}

/// Reads what the drop listeners have until they are quiet, one report per flow.
fn collect_drops(
    listeners: &[DropListener],
    plan: &LabPlan,
    hub: &str,
    notes: &mut Vec<String>,
) -> Vec<crate::drops::report::DropReport> {
    if listeners.is_empty() {
        return Vec::new();
    }
    // One window longer than any run: one summary per flow, with its count.
    let mut agg = Aggregator::new(AggregatorConfig {
        window: Duration::from_secs(3600),
        max_keys: 1 << 16,
    });
    let quiet = Duration::from_millis(150);
    let give_up = Instant::now() + Duration::from_secs(2);
    let mut last = Instant::now();
    while Instant::now() < give_up {
        let mut got = false;
        for l in listeners {
            for ev in l.try_iter() {
                agg.record(&ev, Instant::now());
                got = true;
            }
        }
        if got {
            last = Instant::now();
        } else if last.elapsed() >= quiet {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let lost: u64 = listeners.iter().map(|l| l.stats().lost).sum();
    if lost > 0 {
        notes.push(format!(
            "{lost} drop log message(s) lost (socket buffer overrun)"
        ));
    }
    let flushed = agg.drain();
    if flushed.suppressed > 0 {
        notes.push(format!(
            "{} drop(s) not reported (too many flows)",
            flushed.suppressed
        ));
    }
    // Only traffic between the lab's Pods: the namespaces also send packets of their
    // own (IPv6 multicast listener reports when an interface comes up), which isolated
    // egress chains drop too.
    let pod_ips: std::collections::BTreeSet<IpAddr> = plan
        .pods()
        .iter()
        .chain(plan.dns().map(|d| &d.pod))
        .flat_map(|p| p.ips.iter().copied())
        .collect();
    let (between, background): (Vec<_>, Vec<_>) = flushed
        .summaries
        .iter()
        .partition(|s| pod_ips.contains(&s.key.src_ip) && pod_ips.contains(&s.key.dst_ip));
    if !background.is_empty() {
        let packets: u64 = background.iter().map(|s| s.count).sum();
        notes.push(format!(
            "{packets} dropped packet(s) not between lab Pods not shown (e.g. IPv6 multicast listener reports to ff02::16 from isolated egress)"
        ));
    }
    let mut reports: Vec<_> = between
        .into_iter()
        .map(|s| describe_in(s, plan.model(), plan.graph(), s.netns == hub))
        .collect();
    reports.sort_by(|a, b| {
        let key = |r: &crate::drops::report::DropReport| {
            (
                r.src.pod.clone(),
                r.dst.pod.clone(),
                r.protocol.number(),
                r.dst_port,
                r.dst.ip,
                r.pod.clone(),
                r.direction,
            )
        };
        key(a).cmp(&key(b))
    });
    reports
}

fn stop_servers(prober: Prober, drops: Vec<DropListener>) {
    if let Err(e) = prober.stop() {
        tracing::warn!(error = %e, "lab probe server failed");
    }
    for l in drops {
        if let Err(e) = l.stop() {
            tracing::warn!(error = %e, "lab drop listener failed");
        }
    }
}

/// Runs the agent's reconciler (real renderer, real `nft` applier) on the plan's objects
/// and a Pod-to-netns map until every Pod's table is applied.
fn enforce(
    plan: &LabPlan,
    netns: &[String],
    dns_netns: Option<&str>,
    node: &str,
    opts: &LabOptions,
) -> Result<(), LabError> {
    let renderer = Arc::new(CompiledRulesets {
        options: RulesetOptions {
            log_group: opts.log_group,
            ..RulesetOptions::default()
        },
    });
    // The node table too, in the lab's node namespace (the lab runs outside it).
    let mut rec = Reconciler::new(
        &AgentConfig {
            node_table: true,
            ..AgentConfig::default()
        },
        renderer,
        Arc::new(NodeNetnsApplier {
            node: node.to_owned(),
        }),
        Arc::new(Metrics::new()),
    );
    let dns = plan.dns().map(|d| &d.pod).zip(dns_netns.map(str::to_owned));
    let map: BTreeMap<PodKey, String> = plan
        .pods()
        .iter()
        .zip(netns.iter().cloned())
        .chain(dns)
        .filter_map(|(p, ns)| PodKey::parse(&p.pod).map(|k| (k, ns)))
        .collect();
    let keys: Vec<PodKey> = map.keys().cloned().collect();
    rec.handle_scan(Scan {
        events: vec![
            Event::Reset(
                Object::all(plan.inputs().clone())
                    .into_iter()
                    .map(std::sync::Arc::new)
                    .collect(),
            ),
            Event::NetnsMap(map),
        ],
        complete: true,
        ..Scan::default()
    });
    rec.compile();
    let enforced = |rec: &Reconciler, k: &PodKey| {
        rec.desired().get(k).is_some_and(|d| {
            rec.actual()
                .get(k)
                .is_some_and(|a| a.checksum == Some(d.checksum))
        })
    };
    let deadline = Instant::now() + opts.ready_timeout;
    let mut failed: Vec<PodKey> = Vec::new();
    loop {
        let report = rec.sync(Instant::now());
        if !report.failed.is_empty() {
            failed = report.failed;
        }
        if rec.synced() && keys.iter().all(|k| enforced(&rec, k)) {
            return Ok(());
        }
        let now = Instant::now();
        // Synced but a Pod has no ruleset: waiting will not change that.
        if now >= deadline || (rec.synced() && report.retry_at.is_none()) {
            let missing: Vec<String> = keys
                .iter()
                .filter(|k| !enforced(&rec, k))
                .map(ToString::to_string)
                .collect();
            let failed: Vec<String> = failed.iter().map(ToString::to_string).collect();
            return Err(LabError::NotReady {
                timeout: opts.ready_timeout,
                detail: format!(
                    "not enforced: {}; failed applies: {} (RUST_LOG=warn shows the nft errors)",
                    missing.join(", "),
                    if failed.is_empty() {
                        "none".to_owned()
                    } else {
                        failed.join(", ")
                    }
                ),
            });
        }
        let wait = report
            .retry_at
            .map_or(Duration::from_millis(50), |at| {
                at.saturating_duration_since(now)
            })
            .min(deadline - now);
        std::thread::sleep(wait);
    }
}

/// Builds a lab, probes it and tears it down (also when probing fails).
pub fn run(plan: LabPlan, opts: &LabOptions) -> Result<LabReport, LabError> {
    let mut lab = Lab::start(plan, opts)?;
    let report = lab.probe();
    let down = lab.teardown();
    let report = report?;
    down?;
    Ok(report)
}

pub use crate::agent::ErrorChain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_namespaces_name_their_process() {
        assert_eq!(lab_prefix(4_194_303), "netpollab4194303");
        assert!(lab_prefix(4_194_303).len() <= 16);
        assert_eq!(lab_owner("netpollab42-hub"), Some(Some(42)));
        assert_eq!(lab_owner("netpollab42-7"), Some(Some(42)));
        assert_eq!(lab_owner("netpollab-hub"), Some(None));
        assert_eq!(lab_owner("netpollab-3"), Some(None));
        for other in [
            "netpollab42",
            "netpollab42-x",
            "netpollab42-",
            "np42pfa-0",
            "netpollabx-0",
        ] {
            assert_eq!(lab_owner(other), None, "{other}");
        }
        assert!(process_runs(std::process::id()));
    }
}
