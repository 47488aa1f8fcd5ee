//! The np-guard corpus as a conformance test of the compiler: every case's manifests are
//! compiled, every ordered endpoint pair is answered with [`AllowGraph::reach`], the
//! answers are renamed and merged the way each analyzer names endpoints, and compared with
//! the analyzer's golden connectivity.
//!
//! Pairs are compared only where Kubernetes semantics and the analyzers' model agree on
//! what an endpoint is:
//! - pairs with a hostNetwork Pod are left out: netpol follows Kubernetes (pod selectors
//!   never select hostNetwork Pods, they are node endpoints), the analyzers treat them as
//!   ordinary Pods;
//! - cases with names an API server rejects must be rejected by netpol with a
//!   `metadata.name` diagnostic (they are checked for that, not for connectivity).
//! - two cases declare a container port as `containerport` (lower case): the API server
//!   rejects them (containerPort is required), so netpol must too;
//! - Succeeded/Failed Pods are not endpoints in netpol (they have no network), the analyzers
//!   keep them: their pairs are left out.
//!
//! External (IP range) endpoints are not compared here; ipBlock semantics for Pod IPs are
//! covered by the golden cases in testdata.

use std::collections::{BTreeMap, BTreeSet};

use policy_compiler::model::EndpointKind;
use policy_compiler::{PortSet, Protocol, Subject};

use crate::npguard::{
    self, Case, Conns, Manifests, PortRange, Protocol as NpProtocol, Quirk, collapse, pod_endpoint,
    quirks, workload_endpoints,
};
use crate::support::compile_files;

fn conns_of(set: &PortSet) -> Conns {
    let mut items: Vec<(NpProtocol, PortRange)> = Vec::new();
    for (p, np) in [
        (Protocol::Tcp, NpProtocol::Tcp),
        (Protocol::Udp, NpProtocol::Udp),
        (Protocol::Sctp, NpProtocol::Sctp),
    ] {
        for &(lo, hi) in set.get(p).ranges() {
            // Port 0 is no port; the analyzers count ports from 1.
            let lo = lo.max(1);
            if lo <= hi {
                items.push((np, (lo, hi)));
            }
        }
    }
    Conns::from_ranges(items)
}

/// Analyzer names of each (namespace, kind, name) object.
fn names(case: &Case, m: &Manifests) -> BTreeMap<(String, String, String), Vec<String>> {
    let mut out = BTreeMap::new();
    for pod in m.of_kind("Pod") {
        let meta = Manifests::pod_meta(pod);
        let ns = meta.namespace.unwrap_or("default").to_string();
        out.insert(
            (ns, "Pod".to_string(), meta.name.to_string()),
            vec![pod_endpoint(case.analyzer, &meta)],
        );
    }
    for kind in npguard::WORKLOAD_KINDS {
        for w in m.of_kind(kind) {
            let meta = Manifests::workload_meta(w);
            let ns = meta.namespace.unwrap_or("default").to_string();
            out.insert(
                (ns, kind.to_string(), meta.name.to_string()),
                workload_endpoints(case.analyzer, &meta),
            );
        }
    }
    out
}

/// Cases whose manifests an API server rejects for another reason than names, and the
/// field netpol must name (in any case: these cases misspell `containerPort` as
/// `containerport`, an unknown field, and leave the port 0).
const KNOWN_INVALID: &[(&str, &str)] = &[
    ("npa-netpol_named_port_test", "containerPort"),
    ("npa-netpol_named_port_test_2", "containerPort"),
];

struct Outcome {
    compared: usize,
    skipped: usize,
    diffs: Vec<String>,
}

fn run_case(case: &Case) -> Result<Outcome, String> {
    let golden = case.golden()?;
    let manifests = case.manifests()?;
    let (model, graph, diags) = compile_files(&case.inputs);
    let errors: Vec<_> = diags.iter().filter(|d| d.is_error()).collect();
    let invalid_names: Vec<String> = quirks(&manifests)
        .into_iter()
        .filter_map(|q| match q {
            Quirk::InvalidName(n) => Some(n),
            _ => None,
        })
        .collect();
    if let Some(field) = KNOWN_INVALID
        .iter()
        .find(|(name, _)| *name == case.name)
        .map(|(_, f)| *f)
    {
        if errors.is_empty()
            || !errors.iter().all(|d| {
                d.field.as_deref().is_some_and(|f| {
                    f.to_ascii_lowercase()
                        .ends_with(&field.to_ascii_lowercase())
                })
            })
        {
            return Err(format!("expected only {field} errors, got {errors:?}"));
        }
        return Ok(Outcome {
            compared: 0,
            skipped: 0,
            diffs: Vec::new(),
        });
    }
    if !invalid_names.is_empty() {
        // An API server rejects these objects; so must netpol, naming the field.
        if errors.is_empty()
            || !errors
                .iter()
                .all(|d| d.field.as_deref() == Some("metadata.name"))
        {
            return Err(format!(
                "expected only metadata.name errors for {invalid_names:?}, got: {}",
                errors
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            ));
        }
        return Ok(Outcome {
            compared: 0,
            skipped: 0,
            diffs: Vec::new(),
        });
    }
    if !errors.is_empty() {
        return Err(format!(
            "invalid input: {}",
            errors
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    let names = names(case, &manifests);
    let mut host_network_names = BTreeSet::new();
    // Terminated Pods are not endpoints in netpol.
    let mut terminated_names = BTreeSet::new();
    for pod in manifests.of_kind("Pod") {
        let phase = pod
            .value
            .get("status")
            .and_then(|s| s.get("phase"))
            .and_then(|p| p.as_str());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            terminated_names.insert(pod_endpoint(case.analyzer, &Manifests::pod_meta(pod)));
        }
    }
    let mut named: Vec<(policy_compiler::EndpointId, Vec<String>)> = Vec::new();
    for e in &model.endpoints {
        let kind = match e.kind {
            EndpointKind::Pod => "Pod".to_string(),
            EndpointKind::Workload(k) => k.kind().to_string(),
            EndpointKind::Declared => policy_compiler::declared::KIND.to_string(),
        };
        let key = (e.namespace.clone(), kind, e.name.clone());
        let n = names
            .get(&key)
            .ok_or_else(|| format!("no analyzer name for {key:?}"))?
            .clone();
        if e.host_network {
            host_network_names.extend(n.iter().cloned());
        }
        named.push((e.id, n));
    }
    let mut pairs = Vec::new();
    for (s, s_names) in &named {
        for (d, d_names) in &named {
            let r = graph.reach(&model, Subject::Endpoint(*s), Subject::Endpoint(*d));
            // Two replicas of one workload are two Pods: not self traffic.
            let between = if s == d {
                r.egress.allowed.intersect(&r.ingress.allowed)
            } else {
                r.allowed.clone()
            };
            let c = conns_of(&between);
            for sn in s_names {
                for dn in d_names {
                    pairs.push((sn.clone(), dn.clone(), c.clone()));
                }
            }
        }
    }
    let ours = collapse(pairs);
    let mut keys: BTreeSet<&(String, String)> = golden.pairs.keys().collect();
    keys.extend(ours.pairs.keys());
    let mut out = Outcome {
        compared: 0,
        skipped: 0,
        diffs: Vec::new(),
    };
    let all_names: BTreeSet<String> = named.iter().flat_map(|(_, n)| n.iter().cloned()).collect();
    for key in keys {
        if host_network_names.contains(&key.0) || host_network_names.contains(&key.1) {
            out.skipped += 1;
            continue;
        }
        if terminated_names.contains(&key.0) || terminated_names.contains(&key.1) {
            out.skipped += 1;
            continue;
        }
        if !all_names.contains(&key.0) || !all_names.contains(&key.1) {
            out.diffs.push(format!(
                "{} => {}: endpoint unknown to netpol",
                key.0, key.1
            ));
            continue;
        }
        out.compared += 1;
        let none = Conns::none();
        let want = golden.pairs.get(key).unwrap_or(&none);
        let got = ours.pairs.get(key).unwrap_or(&none);
        if want != got {
            out.diffs.push(format!(
                "{} => {}: golden {want}, netpol {got}",
                key.0, key.1
            ));
        }
    }
    Ok(out)
}

#[test]
fn npguard_cases_agree_with_netpol() {
    let Some(root) = npguard::root_or_skip("npguard_cases_agree_with_netpol") else {
        return;
    };
    let cases = npguard::discover(&root).unwrap();
    assert!(cases.len() >= 60, "found {} cases", cases.len());
    let mut failures = Vec::new();
    let (mut compared, mut skipped) = (0, 0);
    for case in &cases {
        match run_case(case) {
            Ok(o) => {
                compared += o.compared;
                skipped += o.skipped;
                println!(
                    "{:<75} compared {:>5}  skipped {:>4}  diffs {}",
                    case.name,
                    o.compared,
                    o.skipped,
                    o.diffs.len()
                );
                if !o.diffs.is_empty() {
                    failures.push(format!("{}:\n  {}", case.name, o.diffs.join("\n  ")));
                }
            }
            Err(e) => failures.push(format!("{}: {e}", case.name)),
        }
    }
    println!(
        "{} cases, {compared} pairs compared, {skipped} pairs skipped (hostNetwork or terminated Pods)",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} case(s) disagree:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
