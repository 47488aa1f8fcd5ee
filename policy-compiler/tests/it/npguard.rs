//! np-guard conformance corpus: case discovery, golden parsing and analyzer-style endpoint
//! naming, independent of the compiler API.
//!
//! The 60 cases live outside the repository, in `shared/conformance/np-guard/` (see its
//! `README.md`); they are read at test time and never copied here. [`npguard_root`] finds
//! them through `$NETPOL_SHARED` (the `shared/` dir) or by walking up from
//! `CARGO_MANIFEST_DIR` looking for `<ancestor>/shared/conformance/np-guard` (covers both
//! `<X>/main` + `<X>/shared` and a CI clone with `shared/` beside it). Absent: tests print
//! `skipping ...` and pass, unless `NETPOL_REQUIRE_SHARED=1`.
//!
//! # Golden files (which one per case)
//! - `npa-*`: `expected/*_connlist_output.txt` (one per case). The `*.json` outputs repeat it.
//!   Two cases have no connlist (`npa-exposure_allow_all_two_workloads_test`, `npa-vm_example`):
//!   their `*_explain_output.txt` is parsed instead (union of the `Allowed ...` lines of each
//!   `Connections between` block, plus the `All Connections due to the system default` list).
//!   For the 5 cases having both, the test checks both parse to the same [`Golden`].
//! - `nca-*`: `derived/nca-2.1.0_txt_no_fw_rules.txt` (per-Pod pairs). The upstream
//!   `*-scheme_output.*` files are condensed fw-rules and are not used.
//!
//! Both golden kinds list only allowed ordered pairs; absent pairs are denied; an endpoint with
//! no allowed pair does not appear at all; self pairs (same endpoint name) are omitted.
//! Connections normalise to [`Conns`]: `All Connections` (npa), `All connections` (nca) and
//! `TCP, UDP, SCTP` (explain) are [`Conns::All`]; `TCP 80,8080-8081,UDP 53` (npa),
//! `TCP:[1-79,81-65535], UDP` (explain) and `{protocols:TCP, UDP,dst_ports:53}` (nca) become
//! merged port ranges per protocol. Pairs with an IP range (`a.b.c.d-e.f.g.h[External]`, nca:
//! bare `a.b.c.d-e.f.g.h`) go to [`Golden::external`]. `kube-system/kube-dns-livesim` (nca's
//! simulated DNS pod) is dropped and counted in [`Golden::ignored`].
//!
//! # Endpoint names (checked against all 60 goldens by `golden_names_match_manifests`)
//! Shape `ns/name[Kind]`; a missing `metadata.namespace` is `default` in both tools.
//! - npa, Pod: the first `ownerReferences` entry with `controller: true` names the endpoint
//!   `ns/<owner name>[<owner kind>]`: Pod -> ReplicaSet gives `[ReplicaSet]` with the
//!   ReplicaSet's name (hash suffix kept, the Deployment is never reached); DaemonSet,
//!   StatefulSet, Job likewise. An owner without `kind` gives `ns/<owner>[Pod]`; an owner of
//!   kind `Node` (static/mirror pods) and Pods without controller owner give `ns/<pod>[Pod]`.
//!   `generateName` and labels play no part (labels only split npa's internal "variants";
//!   Pods of one owner with different labels still share one name, see [`collapse`]).
//! - npa, workload manifest (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob,
//!   ReplicationController): `ns/<name>[<Kind>]`. npa makes 1 Pod (2 if replicas > 1) from the
//!   template; both carry that one name, so replica-to-replica traffic is a self pair.
//! - nca, Pod: per Pod, no owner merging; the txt output has bare `ns/pod`, normalised here to
//!   `ns/pod[Pod]`. Workload manifest: nca makes Pods `<name>-1..=<name>-n`,
//!   `n = min(spec.replicas (Job: spec.parallelism), 2)`, default 1, 0 -> none.
//! - hostNetwork Pods are ordinary endpoints in both goldens (no node endpoint appears).
//!
//! # Known legitimate differences ([`quirks`], checked by `known_quirks`)
//! - ipBlock vs Pod IPs: no case has an ipBlock covering a Pod IP declared in the manifests
//!   (every `status.podIPs` lies in an `except` or outside). But Deployments and IP-less Pods
//!   get whatever IP the harness picks: ipBlocks exist in `npa-exposure_allow_all_two_workloads_test`
//!   (0.0.0.0/0, harmless: same rule also has `namespaceSelector: {}`),
//!   `npa-semanticDiff-different-topologies-policy-{a,b}-with-ipblock` (10.0.0.0/8 except
//!   10.10.0.0/16 resp. 10.11.0.0/16, and 95-99.0.0.0/24), `npa-ipblockstest{,_2,_3,_4}`
//!   (0.0.0.0/0 except 10/8, 172.21/16, 172.30/16; _4: 638 blocks in 49-99.x) and
//!   `nca-cyclonus-simple-example` (0.0.0.0/24). Check synthetic IPs with [`IpBlockFacts::matches`].
//! - Names a real API server rejects: policies with `_` in the three
//!   `npa-example_pods_w_same_owner_and_labels_gap_with_*` cases; Deployments with upper case
//!   (`my-test-deployment-A`) in `nca-test25`; those cases' ownerReferences lack kind/uid.
//! - Pods without `status.podIPs`/`hostIP` (npa-core_pods_without_host_ip, -multiple_topology_*,
//!   -semanticDiff-*, -test_with_named_ports*, -with_end_port_*, -example_pods_*): the analyzers
//!   still treat them as running.
//! - hostNetwork Pods (all nca cases but test25; npa-ipblockstest*, -minikube_resources,
//!   -multiple_topology_*, -semanticDiff-same-*): policies do not isolate them in Kubernetes,
//!   several share one node IP, yet the goldens treat them as normal Pods.
//! - Namespaces without a Namespace object (nca-test25, npa-netpol-analysis-example-minimal,
//!   -new_online_boutique{,_synthesis}, -online_boutique_workloads_no_ns, -vm_example): implicit,
//!   labelled only `kubernetes.io/metadata.name`. Objects without `metadata.namespace` (those,
//!   plus -onlineboutique{,_workloads}, -example_pods_*) mean `default`.
//! - Services (npa-netpol-analysis-example-minimal, -online_boutique_workloads_no_ns,
//!   -onlineboutique_workloads) do not affect results.
//! - `List` items without `kind`/`apiVersion` (kind from `PodList`/`NamespaceList`): all nca
//!   cases but test25, and most npa Pod-based cases. nca `*-scheme.yaml` is test-driver config,
//!   not a manifest (excluded by [`input_files`]).
//! - nca prints one line per `{protocols:..}` item, so a pair can repeat (nca-port_aggregation);
//!   repeated pairs are unioned.
//! - `INVENTORY.tsv` has a second, unrelated table after a blank line (55 cyclonus-style rows);
//!   cases are discovered from the directories instead.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use ipnet::IpNet;
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Locating the corpus

/// The np-guard directory, if present. Panics when `$NETPOL_SHARED` is set but wrong: a
/// misconfigured CI must fail, not skip.
pub(crate) fn npguard_root() -> Option<PathBuf> {
    const SUB: &str = "conformance/np-guard";
    if let Some(shared) = std::env::var_os("NETPOL_SHARED") {
        let shared = PathBuf::from(shared);
        let dir = [shared.join(SUB), shared.clone()]
            .into_iter()
            .find(|d| d.join("INVENTORY.tsv").is_file());
        assert!(
            dir.is_some(),
            "NETPOL_SHARED={} has no {SUB}",
            shared.display()
        );
        return dir;
    }
    // `cargo test` sets it at run time too; prefer that over the build-time path.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .ancestors()
        .map(|a| a.join("shared").join(SUB))
        .find(|d| d.join("INVENTORY.tsv").is_file())
}

/// [`npguard_root`], printing a skip notice when absent (fails if `NETPOL_REQUIRE_SHARED=1`).
pub(crate) fn root_or_skip(test: &str) -> Option<PathBuf> {
    let root = npguard_root();
    if root.is_none() {
        let required = std::env::var_os("NETPOL_REQUIRE_SHARED").is_some_and(|v| v == "1");
        assert!(!required, "{test}: shared/conformance/np-guard not found");
        eprintln!("skipping {test}: shared/conformance/np-guard not found (set NETPOL_SHARED)");
    }
    root
}

// ---------------------------------------------------------------------------------------------
// Cases

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Analyzer {
    /// np-guard/netpol-analyzer (Go): workload-level names.
    Npa,
    /// np-guard/network-config-analyzer (Python): Pod-level names.
    Nca,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GoldenFormat {
    NpaConnlist,
    NpaExplain,
    NcaPairs,
}

#[derive(Clone, Debug)]
pub(crate) struct Case {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) analyzer: Analyzer,
    /// Manifests under `input/`, recursively, sorted; nca `*-scheme.yaml` excluded.
    pub(crate) inputs: Vec<PathBuf>,
    pub(crate) golden_file: PathBuf,
    pub(crate) golden_format: GoldenFormat,
}

impl Case {
    pub(crate) fn golden(&self) -> Result<Golden, String> {
        let text = std::fs::read_to_string(&self.golden_file)
            .map_err(|e| format!("{}: {e}", self.golden_file.display()))?;
        let parsed = match self.golden_format {
            GoldenFormat::NpaConnlist => parse_connlist(&text),
            GoldenFormat::NpaExplain => parse_explain(&text),
            GoldenFormat::NcaPairs => parse_nca_pairs(&text),
        };
        parsed.map_err(|e| format!("{}: {e}", self.golden_file.display()))
    }

    pub(crate) fn manifests(&self) -> Result<Manifests, String> {
        read_manifests(&self.inputs)
    }
}

/// All case directories (those holding `CASE.yaml`), sorted by name.
pub(crate) fn discover(root: &Path) -> Result<Vec<Case>, String> {
    let mut cases = Vec::new();
    for dir in sorted_entries(root)? {
        if dir.join("CASE.yaml").is_file() {
            cases.push(load_case(&dir)?);
        }
    }
    Ok(cases)
}

pub(crate) fn load_case(dir: &Path) -> Result<Case, String> {
    let name = file_name(dir);
    let analyzer = if name.starts_with("npa-") {
        Analyzer::Npa
    } else if name.starts_with("nca-") {
        Analyzer::Nca
    } else {
        return Err(format!("{name}: neither npa- nor nca-"));
    };
    let (golden_file, golden_format) = match analyzer {
        Analyzer::Nca => (
            dir.join("derived/nca-2.1.0_txt_no_fw_rules.txt"),
            GoldenFormat::NcaPairs,
        ),
        Analyzer::Npa => {
            let expected = sorted_entries(&dir.join("expected"))?;
            let pick = |suffix: &str| -> Result<Option<PathBuf>, String> {
                let mut hits = expected.iter().filter(|p| file_name(p).ends_with(suffix));
                let first = hits.next().cloned();
                match hits.next() {
                    Some(more) => Err(format!("{name}: several {suffix}: {}", more.display())),
                    None => Ok(first),
                }
            };
            if let Some(f) = pick("_connlist_output.txt")? {
                (f, GoldenFormat::NpaConnlist)
            } else if let Some(f) = pick("_explain_output.txt")? {
                (f, GoldenFormat::NpaExplain)
            } else {
                return Err(format!("{name}: no connlist or explain output"));
            }
        }
    };
    if !golden_file.is_file() {
        return Err(format!("{name}: missing {}", golden_file.display()));
    }
    Ok(Case {
        inputs: input_files(&dir.join("input"))?,
        name,
        dir: dir.to_path_buf(),
        analyzer,
        golden_file,
        golden_format,
    })
}

/// `*.yaml`, `*.yml`, `*.json` under `dir`, recursively, sorted; nca scheme files excluded.
pub(crate) fn input_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in sorted_entries(dir)? {
        if p.is_dir() {
            out.extend(input_files(&p)?);
        } else {
            let n = file_name(&p);
            let manifest = [".yaml", ".yml", ".json"].iter().any(|s| n.ends_with(s));
            if manifest && !is_nca_scheme(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// nca test-driver config (`namespaceList`, `podList`, `queries`), not a Kubernetes manifest.
pub(crate) fn is_nca_scheme(path: &Path) -> bool {
    file_name(path).ends_with("-scheme.yaml")
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut v = rd
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    v.sort();
    Ok(v)
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Connection sets

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub(crate) const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }
}

/// Inclusive port range.
pub(crate) type PortRange = (u16, u16);
pub(crate) const FULL_RANGE: PortRange = (1, 65535);

/// Normalised connection set. `Ports` holds, per protocol present, sorted disjoint
/// non-adjacent ranges; an empty map is "no connections"; TCP+UDP+SCTP on all ports is `All`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Conns {
    All,
    Ports(BTreeMap<Protocol, Vec<PortRange>>),
}

impl Conns {
    pub(crate) fn none() -> Self {
        Conns::Ports(BTreeMap::new())
    }

    pub(crate) fn is_empty(&self) -> bool {
        matches!(self, Conns::Ports(m) if m.is_empty())
    }

    pub(crate) fn from_ranges(items: impl IntoIterator<Item = (Protocol, PortRange)>) -> Self {
        let mut map: BTreeMap<Protocol, Vec<PortRange>> = BTreeMap::new();
        for (p, r) in items {
            map.entry(p).or_default().push(r);
        }
        for ranges in map.values_mut() {
            ranges.sort_unstable();
            let mut merged: Vec<PortRange> = Vec::with_capacity(ranges.len());
            for &(lo, hi) in ranges.iter() {
                match merged.last_mut() {
                    Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => {
                        last.1 = last.1.max(hi);
                    }
                    _ => merged.push((lo, hi)),
                }
            }
            *ranges = merged;
        }
        let full = Protocol::ALL
            .iter()
            .all(|p| map.get(p).is_some_and(|r| r.as_slice() == [FULL_RANGE]));
        if full { Conns::All } else { Conns::Ports(map) }
    }

    fn ranges(&self) -> Vec<(Protocol, PortRange)> {
        match self {
            Conns::All => Protocol::ALL.iter().map(|&p| (p, FULL_RANGE)).collect(),
            Conns::Ports(m) => m
                .iter()
                .flat_map(|(&p, rs)| rs.iter().map(move |&r| (p, r)))
                .collect(),
        }
    }

    pub(crate) fn union(&self, other: &Conns) -> Conns {
        Conns::from_ranges(self.ranges().into_iter().chain(other.ranges()))
    }
}

/// npa style: `All Connections`, `TCP 80,8080-8081,UDP 53`, `No Connections`.
impl fmt::Display for Conns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = match self {
            Conns::All => return f.write_str("All Connections"),
            Conns::Ports(m) if m.is_empty() => return f.write_str("No Connections"),
            Conns::Ports(m) => m,
        };
        let mut parts = Vec::new();
        for (p, ranges) in map {
            let ports: Vec<String> = ranges
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            parts.push(format!("{} {}", p.as_str(), ports.join(",")));
        }
        f.write_str(&parts.join(","))
    }
}

fn parse_port_range(s: &str) -> Result<PortRange, String> {
    let s = s.trim();
    let (lo, hi) = s.split_once('-').unwrap_or((s, s));
    let port = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("bad port {t:?}")),
            Ok(p) => Ok(p),
        }
    };
    let (lo, hi) = (port(lo)?, port(hi)?);
    if lo > hi {
        return Err(format!("bad port range {s:?}"));
    }
    Ok((lo, hi))
}

/// npa connlist: `All Connections` or `TCP 80,8080-8081,UDP 53` (a token starting with a
/// protocol switches protocol; a bare protocol token means all its ports).
pub(crate) fn parse_npa_conns(s: &str) -> Result<Conns, String> {
    let s = s.trim();
    if s == "All Connections" {
        return Ok(Conns::All);
    }
    let mut items = Vec::new();
    let mut proto = None;
    for tok in s.split(',') {
        let tok = tok.trim();
        let (p, ports) = match tok.split_once(' ') {
            Some((p, rest)) => (Some(p), Some(rest)),
            None if Protocol::parse(tok).is_some() => (Some(tok), None),
            None => (None, Some(tok)),
        };
        if let Some(p) = p {
            proto = Some(Protocol::parse(p).ok_or_else(|| format!("bad protocol {p:?}"))?);
        }
        let p = proto.ok_or_else(|| format!("port before protocol in {s:?}"))?;
        let range = ports.map_or(Ok(FULL_RANGE), parse_port_range)?;
        items.push((p, range));
    }
    Ok(Conns::from_ranges(items))
}

/// npa explain: `TCP, UDP, SCTP`, `TCP:[80]`, `TCP:[1-79,81-65535], UDP, SCTP`.
pub(crate) fn parse_explain_conns(s: &str) -> Result<Conns, String> {
    let s = s.trim();
    if s == "All Connections" {
        return Ok(Conns::All);
    }
    let mut items = Vec::new();
    for tok in split_top_level(s, ',', '[', ']') {
        let tok = tok.trim();
        let (p, ports) = match tok.split_once(':') {
            Some((p, rest)) => {
                let inner = rest
                    .strip_prefix('[')
                    .and_then(|r| r.strip_suffix(']'))
                    .ok_or_else(|| format!("bad port list {rest:?}"))?;
                (p, Some(inner))
            }
            None => (tok, None),
        };
        let p = Protocol::parse(p).ok_or_else(|| format!("bad protocol {p:?}"))?;
        match ports {
            None => items.push((p, FULL_RANGE)),
            Some(list) => {
                for r in list.split(',') {
                    items.push((p, parse_port_range(r)?));
                }
            }
        }
    }
    Ok(Conns::from_ranges(items))
}

/// nca: `All connections`, `No connections`, or `{protocols:TCP, UDP,dst_ports:53}` items
/// (separated by `;`/`,`/spaces); no `dst_ports` means all ports; other keys are rejected.
pub(crate) fn parse_nca_conns(s: &str) -> Result<Conns, String> {
    let s = s.trim();
    match s {
        "All connections" => return Ok(Conns::All),
        "No connections" => return Ok(Conns::none()),
        _ => {}
    }
    let mut items = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let body_start = rest
            .strip_prefix('{')
            .ok_or_else(|| format!("expected '{{' in {s:?}"))?;
        let end = body_start
            .find('}')
            .ok_or_else(|| format!("unclosed '{{' in {s:?}"))?;
        let body = &body_start[..end];
        rest = body_start[end + 1..].trim_start_matches([';', ',', ' ']);
        let body = body
            .strip_prefix("protocols:")
            .ok_or_else(|| format!("expected protocols: in {body:?}"))?;
        let (protos, ports) = match body.split_once(",dst_ports:") {
            Some((p, ports)) => (p, Some(ports)),
            None => (body, None),
        };
        if protos.contains(':') || ports.is_some_and(|p| p.contains(':')) {
            return Err(format!("unsupported key in {body:?}"));
        }
        for p in protos.split(',') {
            let p = p.trim();
            let p = Protocol::parse(p).ok_or_else(|| format!("bad protocol {p:?}"))?;
            match ports {
                None => items.push((p, FULL_RANGE)),
                Some(list) => {
                    for r in list.split(',') {
                        items.push((p, parse_port_range(r)?));
                    }
                }
            }
        }
    }
    if items.is_empty() {
        return Err(format!("empty connection set {s:?}"));
    }
    Ok(Conns::from_ranges(items))
}

fn split_top_level(s: &str, sep: char, open: char, close: char) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, c) in s.char_indices() {
        if c == open {
            depth += 1;
        } else if c == close {
            depth = depth.saturating_sub(1);
        } else if c == sep && depth == 0 {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

// ---------------------------------------------------------------------------------------------
// Endpoints and goldens

/// Inclusive IP range, as analyzers print cluster-external peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct IpRange {
    pub(crate) first: IpAddr,
    pub(crate) last: IpAddr,
}

impl IpRange {
    /// `a.b.c.d-e.f.g.h` or a single address.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let ip = |t: &str| IpAddr::from_str(t).map_err(|_| format!("bad IP {t:?} in {s:?}"));
        let (first, last) = (ip(a)?, ip(b)?);
        if first.is_ipv4() != last.is_ipv4() || first > last {
            return Err(format!("bad IP range {s:?}"));
        }
        Ok(IpRange { first, last })
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        self.first <= ip && ip <= self.last && ip.is_ipv4() == self.first.is_ipv4()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Peer {
    /// `ns/name[Kind]`.
    Endpoint(String),
    External(IpRange),
}

/// npa: `ns/name[Kind]` or `<range>[External]`.
pub(crate) fn parse_npa_peer(s: &str) -> Result<Peer, String> {
    let s = s.trim();
    if let Some(r) = s.strip_suffix("[External]") {
        return IpRange::parse(r).map(Peer::External);
    }
    let ok = s.split_once('/').is_some_and(|(ns, rest)| {
        !ns.is_empty()
            && rest
                .strip_suffix(']')
                .and_then(|r| r.split_once('['))
                .is_some_and(|(name, kind)| !name.is_empty() && !kind.is_empty())
    });
    if ok {
        Ok(Peer::Endpoint(s.to_string()))
    } else {
        Err(format!("bad endpoint {s:?}"))
    }
}

/// nca: bare `<range>` or `ns/pod`, normalised to `ns/pod[Pod]`.
pub(crate) fn parse_nca_peer(s: &str) -> Result<Peer, String> {
    let s = s.trim();
    if let Ok(r) = IpRange::parse(s) {
        return Ok(Peer::External(r));
    }
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(['[', '/']) => {
            Ok(Peer::Endpoint(format!("{s}[Pod]")))
        }
        _ => Err(format!("bad endpoint {s:?}")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Direction {
    /// External range -> endpoint.
    FromExternal,
    /// Endpoint -> external range.
    ToExternal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ExternalConn {
    pub(crate) endpoint: String,
    pub(crate) direction: Direction,
    pub(crate) range: IpRange,
    pub(crate) conns: Conns,
}

/// Expected connectivity of one case.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Golden {
    /// Allowed (src, dst) endpoint pairs; never empty conns, never src == dst.
    pub(crate) pairs: BTreeMap<(String, String), Conns>,
    /// Pairs with a cluster-external IP range, sorted by (endpoint, direction, range).
    pub(crate) external: Vec<ExternalConn>,
    /// Pairs dropped because they involve nca's simulated `kube-system/kube-dns-livesim`.
    pub(crate) ignored: usize,
}

pub(crate) const LIVESIM: &str = "kube-system/kube-dns-livesim";

impl Golden {
    fn add(&mut self, src: Peer, dst: Peer, conns: Conns) -> Result<(), String> {
        let is_sim = |p: &Peer| matches!(p, Peer::Endpoint(e) if e.starts_with(LIVESIM));
        if is_sim(&src) || is_sim(&dst) {
            self.ignored += 1;
            return Ok(());
        }
        if conns.is_empty() {
            return Err("empty connection set".into());
        }
        match (src, dst) {
            (Peer::Endpoint(s), Peer::Endpoint(d)) => {
                if s == d {
                    return Err(format!("self pair {s}"));
                }
                if self.pairs.insert((s.clone(), d.clone()), conns).is_some() {
                    return Err(format!("duplicate pair {s} => {d}"));
                }
            }
            (Peer::External(range), Peer::Endpoint(endpoint)) => self.external.push(ExternalConn {
                endpoint,
                direction: Direction::FromExternal,
                range,
                conns,
            }),
            (Peer::Endpoint(endpoint), Peer::External(range)) => self.external.push(ExternalConn {
                endpoint,
                direction: Direction::ToExternal,
                range,
                conns,
            }),
            (Peer::External(_), Peer::External(_)) => return Err("external to external".into()),
        }
        Ok(())
    }

    fn finish(mut self) -> Result<Self, String> {
        self.external.sort_by(|a, b| {
            (&a.endpoint, a.direction, a.range).cmp(&(&b.endpoint, b.direction, b.range))
        });
        for w in self.external.windows(2) {
            if (&w[0].endpoint, w[0].direction, w[0].range)
                == (&w[1].endpoint, w[1].direction, w[1].range)
            {
                return Err(format!("duplicate external pair for {}", w[0].endpoint));
            }
        }
        Ok(self)
    }

    /// Every endpoint name mentioned (internal pairs and external pairs).
    pub(crate) fn endpoints(&self) -> BTreeSet<&str> {
        let mut s: BTreeSet<&str> = self
            .pairs
            .keys()
            .flat_map(|(a, b)| [a.as_str(), b.as_str()])
            .collect();
        s.extend(self.external.iter().map(|e| e.endpoint.as_str()));
        s
    }
}

#[derive(Debug)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) text: String,
    pub(crate) msg: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {:?}", self.line, self.msg, self.text)
    }
}

impl std::error::Error for ParseError {}

fn at(line: usize, text: &str) -> impl FnOnce(String) -> ParseError + '_ {
    move |msg| ParseError {
        line,
        text: text.to_string(),
        msg,
    }
}

/// A pair being assembled, with the line it came from (for errors).
struct Pending<'a> {
    src: Peer,
    dst: Peer,
    conns: Conns,
    line: usize,
    text: &'a str,
}

impl Pending<'_> {
    fn add_to(self, g: &mut Golden) -> Result<(), ParseError> {
        g.add(self.src, self.dst, self.conns)
            .map_err(at(self.line, self.text))
    }
}

/// `src => dst : conns` lines; blank lines ignored. With `nca`, the `global:` header is
/// skipped and repeated pairs are unioned (nca prints one line per `{protocols:..}` item).
fn parse_pairs(
    text: &str,
    peer: fn(&str) -> Result<Peer, String>,
    conns: fn(&str) -> Result<Conns, String>,
    nca: bool,
) -> Result<Golden, ParseError> {
    let mut seen: BTreeMap<(&str, &str), Pending<'_>> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || (nca && line.starts_with("global: ")) {
            continue;
        }
        let parsed = (|| {
            let (pair, c) = line.split_once(" : ").ok_or("expected ' : '")?;
            let (s, d) = pair.split_once(" => ").ok_or("expected ' => '")?;
            let c = conns(c)?;
            match seen.get_mut(&(s, d)) {
                Some(prev) if nca => prev.conns = prev.conns.union(&c),
                Some(_) => return Err(format!("duplicate pair {s} => {d}")),
                None => {
                    let (src, dst) = (peer(s)?, peer(d)?);
                    let line_no = i + 1;
                    let p = Pending {
                        src,
                        dst,
                        conns: c,
                        line: line_no,
                        text: line,
                    };
                    seen.insert((s, d), p);
                }
            }
            Ok(())
        })();
        parsed.map_err(at(i + 1, line))?;
    }
    let mut g = Golden::default();
    for p in seen.into_values() {
        p.add_to(&mut g)?;
    }
    g.finish().map_err(at(0, ""))
}

/// netpol-analyzer `*_connlist_output.txt`.
pub(crate) fn parse_connlist(text: &str) -> Result<Golden, ParseError> {
    parse_pairs(text, parse_npa_peer, parse_npa_conns, false)
}

/// NCA `-o txt_no_fw_rules` (the `derived/` files).
pub(crate) fn parse_nca_pairs(text: &str) -> Result<Golden, ParseError> {
    parse_pairs(text, parse_nca_peer, parse_nca_conns, true)
}

/// netpol-analyzer `*_explain_output.txt`: allowed conns of a pair = union of its
/// `\tAllowed <conns> due to ...` lines; after the `# All Connections due to the system
/// default` banner, bare `src => dst` lines are `All`.
pub(crate) fn parse_explain(text: &str) -> Result<Golden, ParseError> {
    let mut g = Golden::default();
    let mut current: Option<Pending<'_>> = None;
    let mut system_default = false;
    let flush = |g: &mut Golden, cur: Option<Pending<'_>>| match cur {
        Some(p) if !p.conns.is_empty() => p.add_to(g),
        _ => Ok(()),
    };
    for (i, line) in text.lines().enumerate() {
        let err = at(i + 1, line);
        if let Some(rest) = line.strip_prefix("Connections between ") {
            flush(&mut g, current.take())?;
            let pair = rest.strip_suffix(':').ok_or("expected ':'".to_string());
            let parsed = pair.and_then(|p| {
                let (s, d) = p.split_once(" => ").ok_or("expected ' => '")?;
                Ok((parse_npa_peer(s)?, parse_npa_peer(d)?))
            });
            let (src, dst) = parsed.map_err(err)?;
            let conns = Conns::none();
            current = Some(Pending {
                src,
                dst,
                conns,
                line: i + 1,
                text: line,
            });
        } else if line.starts_with("# All Connections due to the system default") {
            flush(&mut g, current.take())?;
            system_default = true;
        } else if let Some(rest) = line.strip_prefix("\tAllowed ") {
            let c = rest
                .split_once(" due to ")
                .ok_or("expected ' due to '".to_string())
                .and_then(|(c, _)| parse_explain_conns(c))
                .map_err(at(i + 1, line))?;
            let cur = current.as_mut().ok_or("Allowed outside a pair".to_string());
            let cur = cur.map_err(err)?;
            cur.conns = cur.conns.union(&c);
        } else if system_default && line.contains(" => ") {
            let parsed = line
                .split_once(" => ")
                .ok_or_else(String::new)
                .and_then(|(s, d)| g.add(parse_npa_peer(s)?, parse_npa_peer(d)?, Conns::All));
            parsed.map_err(err)?;
        }
    }
    flush(&mut g, current.take())?;
    g.finish().map_err(at(0, ""))
}

// ---------------------------------------------------------------------------------------------
// Analyzer-style endpoint names

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OwnerRef<'a> {
    /// May be empty (some npa inputs omit it).
    pub(crate) kind: &'a str,
    pub(crate) name: &'a str,
    pub(crate) controller: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodMeta<'a> {
    pub(crate) namespace: Option<&'a str>,
    pub(crate) name: &'a str,
    pub(crate) owners: Vec<OwnerRef<'a>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct WorkloadMeta<'a> {
    pub(crate) namespace: Option<&'a str>,
    /// Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController.
    pub(crate) kind: &'a str,
    pub(crate) name: &'a str,
    /// `spec.replicas` (Job: `spec.parallelism`); `None` when absent.
    pub(crate) replicas: Option<i64>,
}

pub(crate) const WORKLOAD_KINDS: [&str; 7] = [
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "CronJob",
    "ReplicationController",
];

/// The name under which `analyzer` reports a Pod given as a Pod manifest.
pub(crate) fn pod_endpoint(analyzer: Analyzer, pod: &PodMeta<'_>) -> String {
    let ns = pod.namespace.unwrap_or("default");
    if analyzer == Analyzer::Npa {
        let owner = pod.owners.iter().find(|o| o.controller);
        if let Some(o) = owner.filter(|o| o.kind != "Node") {
            let kind = if o.kind.is_empty() { "Pod" } else { o.kind };
            return format!("{ns}/{}[{kind}]", o.name);
        }
    }
    format!("{ns}/{}[Pod]", pod.name)
}

/// The names under which `analyzer` reports the Pods it makes from a workload manifest:
/// npa one workload name, nca `min(replicas, 2)` Pod names (possibly none).
pub(crate) fn workload_endpoints(analyzer: Analyzer, w: &WorkloadMeta<'_>) -> Vec<String> {
    let ns = w.namespace.unwrap_or("default");
    match analyzer {
        Analyzer::Npa => vec![format!("{ns}/{}[{}]", w.name, w.kind)],
        Analyzer::Nca => {
            let n = match w.kind {
                "DaemonSet" | "CronJob" => 1,
                _ => w.replicas.unwrap_or(1).clamp(0, 2),
            };
            (1..=n)
                .map(|i| format!("{ns}/{}-{i}[Pod]", w.name))
                .collect()
        }
    }
}

/// Result of mapping per-Pod results onto analyzer names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Collapsed {
    /// Non-empty connections per named pair, self pairs dropped (as in the goldens).
    pub(crate) pairs: BTreeMap<(String, String), Conns>,
    /// Named pairs whose member Pod pairs disagree: (src, dst, distinct conns seen).
    pub(crate) conflicts: Vec<(String, String, Vec<Conns>)>,
}

/// Merge per-Pod-pair results already renamed with [`pod_endpoint`]/[`workload_endpoints`].
/// Pass denied pairs too (empty [`Conns`]) so that disagreement between Pods of one name is
/// seen; a conflicting pair keeps the union.
pub(crate) fn collapse(pairs: impl IntoIterator<Item = (String, String, Conns)>) -> Collapsed {
    let mut seen: BTreeMap<(String, String), Vec<Conns>> = BTreeMap::new();
    for (s, d, c) in pairs {
        if s != d {
            let v = seen.entry((s, d)).or_default();
            if !v.contains(&c) {
                v.push(c);
            }
        }
    }
    let mut out = Collapsed::default();
    for ((s, d), v) in seen {
        let union = v.iter().fold(Conns::none(), |a, c| a.union(c));
        if v.len() > 1 {
            out.conflicts.push((s.clone(), d.clone(), v));
        }
        if !union.is_empty() {
            out.pairs.insert((s, d), union);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Manifest peek (for naming checks and quirks; not a compiler)

#[derive(Clone, Debug)]
pub(crate) struct Object {
    pub(crate) file: PathBuf,
    /// From the object, else from its `XxxList` container.
    pub(crate) kind: String,
    /// True when the kind came from the container (item without `kind`).
    pub(crate) kind_inferred: bool,
    pub(crate) value: Value,
}

impl Object {
    fn meta(&self, field: &str) -> Option<&str> {
        self.value.get("metadata")?.get(field)?.as_str()
    }

    pub(crate) fn name(&self) -> &str {
        self.meta("name").unwrap_or("")
    }

    pub(crate) fn namespace(&self) -> Option<&str> {
        self.meta("namespace")
    }
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Manifests {
    pub(crate) objects: Vec<Object>,
}

pub(crate) fn read_manifests(files: &[PathBuf]) -> Result<Manifests, String> {
    let mut m = Manifests::default();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let docs: Vec<Value> = if file_name(f).ends_with(".json") {
            vec![serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?]
        } else {
            serde_saphyr::from_multiple::<Value>(&text)
                .map_err(|e| format!("{}: {e}", f.display()))?
        };
        for d in docs {
            flatten(f, d, None, &mut m.objects);
        }
    }
    Ok(m)
}

fn flatten(file: &Path, v: Value, container: Option<&str>, out: &mut Vec<Object>) {
    match v {
        Value::Array(items) => items
            .into_iter()
            .for_each(|i| flatten(file, i, container, out)),
        Value::Object(_) => {
            let own = v.get("kind").and_then(Value::as_str).map(str::to_string);
            let kind = own.clone().or_else(|| container.map(str::to_string));
            let kind = kind.unwrap_or_default();
            if let (Some(list), Some(Value::Array(_))) = (kind.strip_suffix("List"), v.get("items"))
            {
                let list = list.to_string();
                if let Some(Value::Array(items)) = v.get("items").cloned() {
                    for i in items {
                        flatten(file, i, Some(&list), out);
                    }
                }
                return;
            }
            out.push(Object {
                file: file.to_path_buf(),
                kind_inferred: own.is_none() && !kind.is_empty(),
                kind,
                value: v,
            });
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
pub(crate) struct IpBlockFacts {
    pub(crate) policy: String,
    pub(crate) cidr: IpNet,
    pub(crate) except: Vec<IpNet>,
}

impl IpBlockFacts {
    pub(crate) fn matches(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl Manifests {
    pub(crate) fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    pub(crate) fn pod_ips(pod: &Object) -> Vec<IpAddr> {
        let status = pod.value.get("status");
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.get("podIPs"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|i| i.get("ip")?.as_str()?.parse().ok())
            .collect();
        let single: Option<IpAddr> = status.and_then(|s| s.get("podIP")?.as_str()?.parse().ok());
        if ips.is_empty() {
            ips.extend(single);
        }
        ips
    }

    pub(crate) fn pod_meta(pod: &Object) -> PodMeta<'_> {
        let owners = pod
            .value
            .get("metadata")
            .and_then(|m| m.get("ownerReferences"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|o| OwnerRef {
                kind: o.get("kind").and_then(Value::as_str).unwrap_or(""),
                name: o.get("name").and_then(Value::as_str).unwrap_or(""),
                controller: o.get("controller").and_then(Value::as_bool) == Some(true),
            })
            .collect();
        PodMeta {
            namespace: pod.namespace(),
            name: pod.name(),
            owners,
        }
    }

    pub(crate) fn workload_meta(w: &Object) -> WorkloadMeta<'_> {
        let spec = w.value.get("spec");
        let field = if w.kind == "Job" {
            "parallelism"
        } else {
            "replicas"
        };
        WorkloadMeta {
            namespace: w.namespace(),
            kind: &w.kind,
            name: w.name(),
            replicas: spec.and_then(|s| s.get(field)).and_then(Value::as_i64),
        }
    }

    /// Every name `analyzer` could print for these manifests.
    pub(crate) fn endpoint_names(&self, analyzer: Analyzer) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .of_kind("Pod")
            .map(|p| pod_endpoint(analyzer, &Self::pod_meta(p)))
            .collect();
        for k in WORKLOAD_KINDS {
            for w in self.of_kind(k) {
                out.extend(workload_endpoints(analyzer, &Self::workload_meta(w)));
            }
        }
        out
    }

    pub(crate) fn ip_blocks(&self) -> Vec<IpBlockFacts> {
        let mut out = Vec::new();
        for np in self.of_kind("NetworkPolicy") {
            let spec = np.value.get("spec");
            for (dir, peers) in [("ingress", "from"), ("egress", "to")] {
                let rules = spec.and_then(|s| s.get(dir)).and_then(Value::as_array);
                for rule in rules.into_iter().flatten() {
                    let peers = rule.get(peers).and_then(Value::as_array);
                    for ib in peers.into_iter().flatten().filter_map(|p| p.get("ipBlock")) {
                        let net = |v: &Value| v.as_str().and_then(|s| IpNet::from_str(s).ok());
                        let Some(cidr) = ib.get("cidr").and_then(net) else {
                            continue;
                        };
                        let except = ib.get("except").and_then(Value::as_array);
                        out.push(IpBlockFacts {
                            policy: np.name().to_string(),
                            cidr,
                            except: except.into_iter().flatten().filter_map(net).collect(),
                        });
                    }
                }
            }
        }
        out
    }
}

/// Case properties under which our (Kubernetes-faithful) results may legitimately differ
/// from the golden, or which the harness must handle.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Quirk {
    /// An object name a real API server rejects (`Kind/name`).
    InvalidName(String),
    /// An ipBlock matches a Pod IP declared in `status.podIPs` (`policy cidr pod`).
    IpBlockCoversPodIp(String),
    /// ipBlocks exist and some Pods/workloads have no declared IP: results depend on the
    /// IPs the harness assigns (check them with [`IpBlockFacts::matches`]).
    IpBlocksWithIplessPods(usize),
    HostNetworkPods(usize),
    /// Pods without `status.podIPs`/`podIP`.
    PodsWithoutIp(usize),
    /// Pods sharing an IP with another Pod (hostNetwork on one node).
    SharedPodIps(usize),
    /// Namespaced objects without `metadata.namespace`.
    MissingNamespace(usize),
    /// Namespaces used but not defined by a Namespace object.
    ImplicitNamespaces(Vec<String>),
    OwnerRefWithoutKind(usize),
    NodeOwnedPods(usize),
    /// List items without `kind` (inferred from `XxxList`).
    KindlessItems(usize),
    Workloads(usize),
    Services(usize),
    /// Objects with no kind at all (not manifests).
    NotManifests(usize),
}

impl fmt::Display for Quirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Quirk::InvalidName(n) => write!(f, "invalid-name:{n}"),
            Quirk::IpBlockCoversPodIp(s) => write!(f, "ipblock-covers-pod:{s}"),
            Quirk::IpBlocksWithIplessPods(n) => write!(f, "ipblocks-vs-ipless-pods:{n}"),
            Quirk::HostNetworkPods(n) => write!(f, "hostNetwork:{n}"),
            Quirk::PodsWithoutIp(n) => write!(f, "no-pod-ip:{n}"),
            Quirk::SharedPodIps(n) => write!(f, "shared-ip:{n}"),
            Quirk::MissingNamespace(n) => write!(f, "no-ns:{n}"),
            Quirk::ImplicitNamespaces(v) => write!(f, "implicit-ns:{}", v.join(",")),
            Quirk::OwnerRefWithoutKind(n) => write!(f, "ownerref-no-kind:{n}"),
            Quirk::NodeOwnedPods(n) => write!(f, "node-owned:{n}"),
            Quirk::KindlessItems(n) => write!(f, "kindless-items:{n}"),
            Quirk::Workloads(n) => write!(f, "workloads:{n}"),
            Quirk::Services(n) => write!(f, "services:{n}"),
            Quirk::NotManifests(n) => write!(f, "not-manifests:{n}"),
        }
    }
}

/// RFC 1123 subdomain, as the API server requires of these names.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(ok_char)
        && alnum(s.chars().next())
        && alnum(s.chars().last())
}

pub(crate) fn quirks(m: &Manifests) -> Vec<Quirk> {
    let mut q = BTreeSet::new();
    let count = |n: usize, f: fn(usize) -> Quirk| (n > 0).then(|| f(n));
    let pods: Vec<&Object> = m.of_kind("Pod").collect();
    let workloads = m
        .objects
        .iter()
        .filter(|o| WORKLOAD_KINDS.contains(&o.kind.as_str()))
        .count();
    let named = ["Pod", "NetworkPolicy", "Namespace", "Service"];
    for o in &m.objects {
        let checked = named.contains(&o.kind.as_str()) || WORKLOAD_KINDS.contains(&o.kind.as_str());
        if checked && !is_dns_subdomain(o.name()) {
            q.insert(Quirk::InvalidName(format!("{}/{}", o.kind, o.name())));
        }
    }
    let ipless = pods
        .iter()
        .filter(|p| Manifests::pod_ips(p).is_empty())
        .count();
    let mut by_ip: BTreeMap<IpAddr, usize> = BTreeMap::new();
    for p in &pods {
        for ip in Manifests::pod_ips(p) {
            *by_ip.entry(ip).or_default() += 1;
        }
    }
    let shared = by_ip.values().filter(|&&n| n > 1).sum();
    let blocks = m.ip_blocks();
    for b in &blocks {
        for p in &pods {
            if Manifests::pod_ips(p).into_iter().any(|ip| b.matches(ip)) {
                let s = format!("{} {} {}", b.policy, b.cidr, p.name());
                q.insert(Quirk::IpBlockCoversPodIp(s));
            }
        }
    }
    if !blocks.is_empty() && ipless + workloads > 0 {
        q.insert(Quirk::IpBlocksWithIplessPods(blocks.len()));
    }
    let host_net = pods
        .iter()
        .filter(|p| p.value.pointer("/spec/hostNetwork") == Some(&Value::Bool(true)))
        .count();
    let owners: Vec<OwnerRef<'_>> = pods
        .iter()
        .flat_map(|p| Manifests::pod_meta(p).owners)
        .collect();
    let namespaced = |o: &&Object| !o.kind.is_empty() && o.kind != "Namespace";
    let no_ns = m
        .objects
        .iter()
        .filter(namespaced)
        .filter(|o| o.namespace().is_none());
    let defined: BTreeSet<&str> = m.of_kind("Namespace").map(Object::name).collect();
    let used: BTreeSet<&str> = m
        .objects
        .iter()
        .filter(namespaced)
        .map(|o| o.namespace().unwrap_or("default"))
        .collect();
    let implicit: Vec<String> = used.difference(&defined).map(|s| s.to_string()).collect();
    if !implicit.is_empty() {
        q.insert(Quirk::ImplicitNamespaces(implicit));
    }
    q.extend(
        [
            count(host_net, Quirk::HostNetworkPods),
            count(ipless, Quirk::PodsWithoutIp),
            count(shared, Quirk::SharedPodIps),
            count(no_ns.count(), Quirk::MissingNamespace),
            count(
                owners.iter().filter(|o| o.kind.is_empty()).count(),
                Quirk::OwnerRefWithoutKind,
            ),
            count(
                owners.iter().filter(|o| o.kind == "Node").count(),
                Quirk::NodeOwnedPods,
            ),
            count(
                m.objects.iter().filter(|o| o.kind_inferred).count(),
                Quirk::KindlessItems,
            ),
            count(workloads, Quirk::Workloads),
            count(m.of_kind("Service").count(), Quirk::Services),
            count(m.of_kind("").count(), Quirk::NotManifests),
        ]
        .into_iter()
        .flatten(),
    );
    q.into_iter().collect()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(lo: u16, hi: u16) -> (Protocol, PortRange) {
        (Protocol::Tcp, (lo, hi))
    }

    #[test]
    fn conns_normalise() {
        let c = Conns::from_ranges([tcp(81, 90), tcp(80, 80), tcp(85, 100), tcp(102, 102)]);
        assert_eq!(c.to_string(), "TCP 80-100,102");
        let all = Conns::from_ranges(Protocol::ALL.map(|p| (p, FULL_RANGE)));
        assert_eq!(all, Conns::All);
        let split = Conns::from_ranges([tcp(1, 79), tcp(80, 65535)])
            .union(&Conns::from_ranges([(Protocol::Udp, FULL_RANGE)]))
            .union(&Conns::from_ranges([(Protocol::Sctp, FULL_RANGE)]));
        assert_eq!(split, Conns::All);
        assert!(Conns::none().is_empty() && !Conns::All.is_empty());
        assert_eq!(Conns::none().to_string(), "No Connections");
        assert_eq!(Conns::All.to_string(), "All Connections");
    }

    #[test]
    fn npa_conns_forms() {
        let p = |s| parse_npa_conns(s).unwrap();
        assert_eq!(p("All Connections"), Conns::All);
        assert_eq!(p("TCP 80"), Conns::from_ranges([tcp(80, 80)]));
        assert_eq!(
            p("TCP 10053-10054,UDP 10053").to_string(),
            "TCP 10053-10054,UDP 10053"
        );
        assert_eq!(
            p("TCP 8080,9090,UDP 8080").to_string(),
            "TCP 8080,9090,UDP 8080"
        );
        assert_eq!(
            p("SCTP 7070,TCP 8080-8081,UDP 9090").to_string(),
            "TCP 8080-8081,UDP 9090,SCTP 7070"
        );
        assert_eq!(p("TCP 1-65535").to_string(), "TCP 1-65535");
        assert_eq!(p("TCP,UDP,SCTP"), Conns::All);
        for bad in ["80", "TCP 0", "TCP 90-80", "ICMP 1", "TCP x", ""] {
            assert!(parse_npa_conns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn explain_conns_forms() {
        let p = |s| parse_explain_conns(s).unwrap();
        assert_eq!(p("TCP, UDP, SCTP"), Conns::All);
        assert_eq!(p("TCP:[80]"), Conns::from_ranges([tcp(80, 80)]));
        assert_eq!(
            p("TCP:[1-79,81-65535], UDP, SCTP").to_string(),
            "TCP 1-79,81-65535,UDP 1-65535,SCTP 1-65535"
        );
        assert_eq!(
            p("TCP:[8080,9090], UDP:[8080]"),
            parse_npa_conns("TCP 8080,9090,UDP 8080").unwrap()
        );
        assert!(parse_explain_conns("TCP:80").is_err());
    }

    #[test]
    fn nca_conns_forms() {
        let p = |s| parse_nca_conns(s).unwrap();
        assert_eq!(p("All connections"), Conns::All);
        assert_eq!(
            p("{protocols:TCP, UDP,dst_ports:53}").to_string(),
            "TCP 53,UDP 53"
        );
        assert_eq!(
            p("{protocols:UDP,dst_ports:11-16,21-23,42}").to_string(),
            "UDP 11-16,21-23,42"
        );
        assert_eq!(
            p("{protocols:TCP}; {protocols:UDP,dst_ports:53}").to_string(),
            "TCP 1-65535,UDP 53"
        );
        assert_eq!(p("{protocols:TCP, UDP, SCTP}"), Conns::All);
        for bad in [
            "",
            "{protocols:TCP,src_ports:1}",
            "{protocols:ICMP}",
            "TCP 80",
        ] {
            assert!(parse_nca_conns(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn peers() {
        assert_eq!(
            parse_npa_peer("ns/a-b[ReplicaSet]").unwrap(),
            Peer::Endpoint("ns/a-b[ReplicaSet]".into())
        );
        let Peer::External(r) = parse_npa_peer("0.0.0.0-9.255.255.255[External]").unwrap() else {
            panic!("not external")
        };
        assert!(r.contains("9.1.2.3".parse().unwrap()) && !r.contains("10.0.0.1".parse().unwrap()));
        assert!(parse_npa_peer("2001:db8::-2001:db8::ff[External]").is_ok());
        assert!(parse_npa_peer("10.0.0.9-10.0.0.1[External]").is_err());
        assert!(parse_npa_peer("ns/name").is_err() && parse_npa_peer("name[Pod]").is_err());
        assert_eq!(
            parse_nca_peer("y/pod-a").unwrap(),
            Peer::Endpoint("y/pod-a[Pod]".into())
        );
        assert!(matches!(
            parse_nca_peer("0.0.1.0-255.255.255.255"),
            Ok(Peer::External(_))
        ));
        assert!(parse_nca_peer("pod-a").is_err());
    }

    #[test]
    fn connlist_inline() {
        let g = parse_connlist(
            "0.0.0.0-255.255.255.255[External] => d/a[Deployment] : All Connections\n\
             d/a[Deployment] => d/b[Pod] : TCP 90\n\
             d/b[Pod] => 0.0.0.0-255.255.255.255[External] : UDP 53\n",
        )
        .unwrap();
        assert_eq!(g.pairs.len(), 1);
        assert_eq!(
            g.pairs[&("d/a[Deployment]".into(), "d/b[Pod]".into())].to_string(),
            "TCP 90"
        );
        assert_eq!(g.external.len(), 2);
        assert_eq!(g.external[0].endpoint, "d/a[Deployment]");
        assert_eq!(g.external[0].direction, Direction::FromExternal);
        assert_eq!(g.external[1].direction, Direction::ToExternal);
        assert_eq!(
            g.external[1].range,
            IpRange::parse("0.0.0.0-255.255.255.255").unwrap()
        );
        assert_eq!(g.endpoints().len(), 2);
        let e = parse_connlist("a/b[Pod] => a/c[Pod] : TCP 80\nbroken line\n").unwrap_err();
        assert_eq!((e.line, e.text.as_str()), (2, "broken line"));
        assert!(!e.msg.is_empty() && e.to_string().starts_with("line 2"));
        assert!(parse_connlist("a/b[Pod] => a/b[Pod] : TCP 80").is_err());
        assert!(
            parse_connlist("a/b[Pod] => a/c[Pod] : TCP 80\na/b[Pod] => a/c[Pod] : TCP 80").is_err()
        );
    }

    #[test]
    fn nca_inline() {
        let g = parse_nca_pairs(
            "global: cluster has 3 unique endpoints, 2 namespaces\n\
             0.0.0.0-255.255.255.255 => y/pod-a : All connections\n\
             y/pod-b => y/pod-a : {protocols:TCP,dst_ports:80}\n\
             kube-system/kube-dns-livesim => y/pod-a : All connections\n\
             y/pod-b => y/pod-a : {protocols:UDP,dst_ports:53}\n",
        )
        .unwrap();
        assert_eq!(
            g.pairs.values().next().unwrap().to_string(),
            "TCP 80,UDP 53"
        );
        assert_eq!(
            g.pairs.keys().next().unwrap(),
            &("y/pod-b[Pod]".into(), "y/pod-a[Pod]".into())
        );
        assert_eq!((g.external.len(), g.ignored), (1, 1));
    }

    #[test]
    fn explain_inline() {
        let text = "\
Connections between d/a[Pod] => d/b[Pod]:

Allowed connections:
\tAllowed TCP:[80] due to the following policies and rules:
\t\tEgress (Allowed) due to the system default (Allow all)
\tAllowed UDP:[53] due to the following policies and rules:

Denied connections:
\tDenied TCP:[1-79,81-65535], SCTP due to the following policies and rules:
----
Connections between d/b[Pod] => d/a[Pod]:

Denied connections:
\tDenied TCP, UDP, SCTP due to the following policies and rules:

#########################################################
# All Connections due to the system default (Allow all) #
#########################################################
0.0.0.0-255.255.255.255[External] => d/a[Pod]
";
        let g = parse_explain(text).unwrap();
        assert_eq!(g.pairs.len(), 1);
        assert_eq!(
            g.pairs[&("d/a[Pod]".into(), "d/b[Pod]".into())].to_string(),
            "TCP 80,UDP 53"
        );
        assert_eq!(g.external.len(), 1);
        assert!(parse_explain("\tAllowed TCP due to x\n").is_err());
    }

    #[test]
    fn naming_rules() {
        let owner = |kind, name| OwnerRef {
            kind,
            name,
            controller: true,
        };
        let pod = |ns, owners: Vec<OwnerRef<'static>>| PodMeta {
            namespace: ns,
            name: "p-x1",
            owners,
        };
        let npa = |p: &PodMeta<'_>| pod_endpoint(Analyzer::Npa, p);
        assert_eq!(npa(&pod(Some("n"), vec![])), "n/p-x1[Pod]");
        assert_eq!(npa(&pod(None, vec![])), "default/p-x1[Pod]");
        assert_eq!(
            npa(&pod(Some("n"), vec![owner("ReplicaSet", "rs-1a")])),
            "n/rs-1a[ReplicaSet]"
        );
        assert_eq!(npa(&pod(Some("n"), vec![owner("", "sec")])), "n/sec[Pod]");
        assert_eq!(
            npa(&pod(Some("n"), vec![owner("Node", "minikube")])),
            "n/p-x1[Pod]"
        );
        let not_ctl = OwnerRef {
            controller: false,
            ..owner("DaemonSet", "ds")
        };
        assert_eq!(
            npa(&pod(Some("n"), vec![not_ctl, owner("Job", "j")])),
            "n/j[Job]"
        );
        let p = pod(Some("n"), vec![owner("ReplicaSet", "rs-1a")]);
        assert_eq!(pod_endpoint(Analyzer::Nca, &p), "n/p-x1[Pod]");

        let w = |kind, replicas| WorkloadMeta {
            namespace: None,
            kind,
            name: "web",
            replicas,
        };
        let names = |a, w: WorkloadMeta<'_>| workload_endpoints(a, &w);
        assert_eq!(
            names(Analyzer::Npa, w("Deployment", Some(3))),
            ["default/web[Deployment]"]
        );
        assert_eq!(
            names(Analyzer::Nca, w("Deployment", Some(3))),
            ["default/web-1[Pod]", "default/web-2[Pod]"]
        );
        assert_eq!(
            names(Analyzer::Nca, w("StatefulSet", None)),
            ["default/web-1[Pod]"]
        );
        assert!(names(Analyzer::Nca, w("Job", Some(0))).is_empty());
        assert_eq!(names(Analyzer::Nca, w("DaemonSet", None)).len(), 1);
    }

    #[test]
    fn collapse_merges_and_flags_conflicts() {
        let t = |p| Conns::from_ranges([tcp(p, p)]);
        let c = collapse([
            ("n/rs[ReplicaSet]".into(), "n/b[Pod]".into(), t(80)),
            ("n/rs[ReplicaSet]".into(), "n/b[Pod]".into(), t(80)),
            (
                "n/rs[ReplicaSet]".into(),
                "n/rs[ReplicaSet]".into(),
                Conns::All,
            ),
            ("n/b[Pod]".into(), "n/rs[ReplicaSet]".into(), t(90)),
            ("n/b[Pod]".into(), "n/rs[ReplicaSet]".into(), Conns::none()),
            ("n/b[Pod]".into(), "n/c[Pod]".into(), Conns::none()),
        ]);
        assert_eq!(c.pairs.len(), 2);
        assert_eq!(c.conflicts.len(), 1);
        assert_eq!(c.conflicts[0].0, "n/b[Pod]");
        assert_eq!(c.conflicts[0].2.len(), 2);
        assert_eq!(
            c.pairs[&("n/b[Pod]".into(), "n/rs[ReplicaSet]".into())],
            t(90)
        );
    }

    #[test]
    fn manifests_inline() {
        let dir = std::env::temp_dir().join(format!("npguard-it-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("input/policies")).unwrap();
        let pods = r#"{"kind":"PodList","items":[{"metadata":{"name":"a","namespace":"x",
            "ownerReferences":[{"kind":"DaemonSet","name":"ds","controller":true}]},
            "spec":{"hostNetwork":true},"status":{"podIPs":[{"ip":"10.0.0.1"}]}}]}"#;
        std::fs::write(dir.join("input/pods.json"), pods).unwrap();
        let np = "kind: NetworkPolicy\nmetadata: {name: bad_name}\nspec:\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}\n---\n";
        std::fs::write(dir.join("input/policies/np.yaml"), np).unwrap();
        std::fs::write(dir.join("input/t-scheme.yaml"), "queries: []\n").unwrap();
        std::fs::write(dir.join("input/notes.txt"), "x").unwrap();
        let files = input_files(&dir.join("input")).unwrap();
        assert_eq!(files.len(), 2, "{files:?}");
        let m = read_manifests(&files).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(m.objects.len(), 2);
        assert!(m.objects[0].kind_inferred && m.objects[0].file.ends_with("pods.json"));
        let names = m.endpoint_names(Analyzer::Npa);
        assert_eq!(names.into_iter().collect::<Vec<_>>(), ["x/ds[DaemonSet]"]);
        let b = &m.ip_blocks()[0];
        assert!(b.matches("10.2.0.1".parse().unwrap()) && !b.matches("10.1.0.1".parse().unwrap()));
        let q: Vec<String> = quirks(&m).iter().map(ToString::to_string).collect();
        assert_eq!(
            q,
            [
                "invalid-name:NetworkPolicy/bad_name",
                "ipblock-covers-pod:bad_name 10.0.0.0/8 a",
                "hostNetwork:1",
                "no-ns:1",
                "implicit-ns:default,x",
                "kindless-items:1",
            ]
        );
        assert!(is_dns_subdomain("a.b-c") && !is_dns_subdomain("A") && !is_dns_subdomain("-a"));
    }

    // ---- against the shared corpus -----------------------------------------------------------

    fn corpus(test: &str) -> Option<Vec<Case>> {
        let root = root_or_skip(test)?;
        let cases = discover(&root).unwrap();
        assert_eq!(cases.len(), 60, "cases under {}", root.display());
        Some(cases)
    }

    fn case<'a>(cases: &'a [Case], name: &str) -> &'a Case {
        cases.iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn real_files_parse() {
        let Some(cases) = corpus("real_files_parse") else {
            return;
        };
        let vm = case(&cases, "npa-vm_example");
        assert_eq!(vm.golden_format, GoldenFormat::NpaExplain);
        let g = vm.golden().unwrap();
        let key = (
            "default/new-vm-1[Pod]".to_string(),
            "default/new-vm-2[Pod]".to_string(),
        );
        assert_eq!(g.pairs[&key].to_string(), "TCP 80");

        let t25 = case(&cases, "nca-test25").golden().unwrap();
        assert_eq!(t25.pairs.len(), 4);
        assert!(t25.pairs.values().all(|c| *c == Conns::All));
        assert!(
            t25.endpoints()
                .contains("default/my-test-deployment-C-1[Pod]")
        );

        let ipb = case(&cases, "npa-ipblockstest");
        assert_eq!(ipb.golden_format, GoldenFormat::NpaConnlist);
        let g = ipb.golden().unwrap();
        let udp53 = parse_npa_conns("UDP 53").unwrap();
        assert!(
            g.external
                .iter()
                .any(|e| e.conns == udp53 && e.range.first.to_string() == "0.0.0.0")
        );

        let cyc = case(&cases, "nca-cyclonus-simple-example");
        assert!(cyc.inputs.iter().all(|p| !is_nca_scheme(p)));
        assert_eq!(cyc.inputs.len(), 9, "{:?}", cyc.inputs);
        let g = cyc.golden().unwrap();
        assert!(
            g.external
                .iter()
                .any(|e| e.range == IpRange::parse("0.0.0.0-0.0.0.255").unwrap())
        );
    }

    #[test]
    fn explain_agrees_with_connlist() {
        let Some(cases) = corpus("explain_agrees_with_connlist") else {
            return;
        };
        let mut n = 0;
        for c in cases
            .iter()
            .filter(|c| c.golden_format == GoldenFormat::NpaConnlist)
        {
            let explain = sorted_entries(&c.dir.join("expected")).unwrap();
            let Some(f) = explain
                .iter()
                .find(|p| file_name(p).ends_with("_explain_output.txt"))
            else {
                continue;
            };
            let e = parse_explain(&std::fs::read_to_string(f).unwrap()).unwrap();
            assert_eq!(e, c.golden().unwrap(), "{}", c.name);
            n += 1;
        }
        assert_eq!(n, 5);
    }

    /// Every golden endpoint is a name [`pod_endpoint`]/[`workload_endpoints`] gives.
    #[test]
    fn golden_names_match_manifests() {
        let Some(cases) = corpus("golden_names_match_manifests") else {
            return;
        };
        for c in &cases {
            let names = c.manifests().unwrap().endpoint_names(c.analyzer);
            let golden = c.golden().unwrap();
            let unknown: Vec<&str> = golden
                .endpoints()
                .into_iter()
                .filter(|e| !names.contains(*e))
                .collect();
            assert!(
                unknown.is_empty(),
                "{}: {unknown:?} not in {names:?}",
                c.name
            );
        }
    }

    #[test]
    fn known_quirks() {
        let Some(cases) = corpus("known_quirks") else {
            return;
        };
        let with = |pred: fn(&Quirk) -> bool| -> Vec<String> {
            let mut v = Vec::new();
            for c in &cases {
                if quirks(&c.manifests().unwrap()).iter().any(pred) {
                    v.push(c.name.clone());
                }
            }
            v
        };
        let bad_policies =
            with(|q| matches!(q, Quirk::InvalidName(n) if n.starts_with("NetworkPolicy/")));
        assert_eq!(
            bad_policies,
            [
                "npa-example_pods_w_same_owner_and_labels_gap_with_good_match_expression",
                "npa-example_pods_w_same_owner_and_labels_gap_with_good_match_expression2",
                "npa-example_pods_w_same_owner_and_labels_gap_with_policy_selector_not_in_gap",
            ]
        );
        assert_eq!(
            with(|q| matches!(q, Quirk::InvalidName(n) if n.starts_with("Deployment/"))),
            ["nca-test25"]
        );
        assert!(with(|q| matches!(q, Quirk::IpBlockCoversPodIp(_))).is_empty());
        assert_eq!(
            with(|q| matches!(q, Quirk::IpBlocksWithIplessPods(_))),
            [
                "npa-exposure_allow_all_two_workloads_test",
                "npa-semanticDiff-different-topologies-policy-a-with-ipblock",
                "npa-semanticDiff-different-topologies-policy-b-with-ipblock",
            ]
        );
        assert_eq!(
            with(|q| matches!(q, Quirk::Services(_))),
            [
                "npa-netpol-analysis-example-minimal",
                "npa-online_boutique_workloads_no_ns",
                "npa-onlineboutique_workloads",
            ]
        );
        assert_eq!(
            with(|q| matches!(q, Quirk::NotManifests(_))),
            Vec::<String>::new()
        );
    }

    /// `cargo test -p policy-compiler --test it npguard::tests::summary -- --nocapture`
    #[test]
    fn summary() {
        let Some(cases) = corpus("summary") else {
            return;
        };
        let mut failures = Vec::new();
        println!(
            "{:<76} {:>5} {:>5} {:>3} {:>3}  notes",
            "case", "pairs", "ext", "ign", "in"
        );
        for c in &cases {
            let g = match c.golden() {
                Ok(g) => g,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            let text = std::fs::read_to_string(&c.golden_file).unwrap();
            if c.golden_format != GoldenFormat::NpaExplain {
                let lines = text
                    .lines()
                    .filter_map(|l| l.split_once(" : ").map(|(pair, _)| pair))
                    .filter(|pair| pair.contains(" => "))
                    .collect::<BTreeSet<_>>()
                    .len();
                assert_eq!(
                    lines,
                    g.pairs.len() + g.external.len() + g.ignored,
                    "{}",
                    c.name
                );
            }
            let mut notes: Vec<String> = match c.manifests() {
                Ok(m) => quirks(&m).iter().map(ToString::to_string).collect(),
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            if c.golden_format == GoldenFormat::NpaExplain {
                notes.insert(0, "explain-golden".into());
            }
            let an = if c.analyzer == Analyzer::Npa {
                ""
            } else {
                "(pods)"
            };
            println!(
                "{:<76} {:>5} {:>5} {:>3} {:>3}  {an}{}",
                c.name,
                g.pairs.len(),
                g.external.len(),
                g.ignored,
                c.inputs.len(),
                notes.join(" ")
            );
        }
        println!(
            "parsed {} of {} cases",
            cases.len() - failures.len(),
            cases.len()
        );
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
