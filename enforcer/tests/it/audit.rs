//! Audit (staged) policies in a real kernel (#12): a flow an audit policy would deny
//! passes with real packets and is reported as would drop (audit), naming the policy,
//! and counted in `netpol_audit_drops_total`; a flow an enforced policy denies is still
//! dropped and reported as a drop.

use std::collections::BTreeSet;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use enforcer::drops::L4Proto;
use enforcer::drops::report::{AUDIT_DROP_MSG, DROP_MSG};
use enforcer::metrics::Metrics;
use enforcer::nft;
use enforcer::reporter::{CompiledModel, DropReporter, DropsConfig};
use netpol_lab::probe::{Listener, Prober};
use netpol_lab::topology::Topology;
use policy_compiler::ruleset::{RulesetOptions, compile_pod};
use policy_compiler::{AllowGraph, Model, Protocol, SourceText, load};

use crate::kernel;
use testkit::kernel::{ALLOW, DENY, v4};

/// x/a on h0 (10.0.0.11), x/b on h1 (10.0.0.12). Enforced: x/b admits x/a on TCP 80
/// only. Audit: x/a may send only to x/b on TCP 81 (so TCP 80 would drop at x/a's
/// egress). Ruleset logs go to group 100 (`RulesetOptions::default`).
const MANIFESTS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.11, podIPs: [{ip: 10.0.0.11}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {pod: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}, {containerPort: 81}]}]}
status: {phase: Running, podIP: 10.0.0.12, podIPs: [{ip: 10.0.0.12}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-allow, namespace: x}
spec:
  podSelector: {matchLabels: {pod: b}}
  policyTypes: [Ingress]
  ingress:
  - from: [{podSelector: {matchLabels: {pod: a}}}]
    ports: [{port: 80}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: a-egress
  namespace: x
  annotations: {netpol.io/mode: audit}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress:
  - to: [{podSelector: {matchLabels: {pod: b}}}]
    ports: [{port: 81}]
";

#[test]
fn audit_policy_logs_would_drop_and_passes_real_packets() {
    // See: #12
    if !kernel::available("audit_policy_logs_would_drop_and_passes_real_packets") {
        return;
    }
    let (inputs, d) = load(&[SourceText {
        name: "audit.yaml",
        text: MANIFESTS,
    }]);
    assert!(d.is_empty(), "{d:?}");
    let (model, d) = Model::build(&inputs);
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(model.audit_policies.len(), 1);
    let graph = AllowGraph::build(&model);
    let id = |k: &str| model.endpoint_by_key(k).unwrap();
    let opts = RulesetOptions::default();
    let rs_a = compile_pod(&model, &graph, id("x/a"), &opts).to_nft();
    let rs_b = compile_pod(&model, &graph, id("x/b"), &opts).to_nft();
    assert!(rs_a.contains("chain audit_egress"), "{rs_a}");
    assert!(
        !rs_b.contains("audit_"),
        "the audit policy changes nothing for x/b: {rs_b}"
    );

    let lab = Topology::build(&kernel::prefix("audit"), &kernel::dual_stack(2)).unwrap();
    let (a, b) = (&lab.hosts()[0], &lab.hosts()[1]);
    assert_eq!(v4(a).to_string(), "10.0.0.11");
    assert_eq!(v4(b).to_string(), "10.0.0.12");
    nft::apply(&a.netns, &rs_a).unwrap();
    nft::apply(&b.netns, &rs_b).unwrap();

    let metrics = Arc::new(Metrics::new());
    let (sink, reports) = mpsc::channel();
    let reporter = DropReporter::start(
        DropsConfig {
            sink: Some(sink),
            ..DropsConfig::default()
        },
        Arc::clone(&metrics),
    )
    .unwrap();
    reporter.track(
        Arc::new(CompiledModel {
            model: model.clone(),
            graph: graph.clone(),
        }),
        BTreeSet::from([a.netns.clone(), b.netns.clone()]),
    );
    let prober = Prober::start(
        &lab,
        &[
            Listener::new(&b.name, Protocol::Tcp, 80),
            Listener::new(&b.name, Protocol::Tcp, 81),
        ],
    )
    .unwrap();

    // Audit would deny, enforced allows: real packets pass.
    let r = prober
        .probe(&a.name, v4(b), Protocol::Tcp, 80, ALLOW)
        .unwrap();
    assert!(r.connected, "x/a -> x/b:80 must pass: {}", r.detail);
    // Enforced denies (x/b admits 80 only): still dropped, audit or not.
    let r = prober
        .probe(&a.name, v4(b), Protocol::Tcp, 81, DENY)
        .unwrap();
    assert!(!r.connected, "x/a -> x/b:81 must be dropped: {}", r.detail);

    std::thread::sleep(Duration::from_millis(700));
    reporter.stop();
    let reports: Vec<_> = reports.try_iter().collect();
    let would = reports
        .iter()
        .find(|r| r.audit && r.dst_port == Some(80))
        .unwrap_or_else(|| panic!("no would-drop report for TCP 80: {reports:#?}"));
    assert_eq!(would.msg, AUDIT_DROP_MSG);
    assert_eq!(would.pod, "x/a");
    assert_eq!(would.direction, "egress");
    assert_eq!(would.policies, vec!["x/a-egress (audit)".to_owned()]);
    assert_eq!(would.dst.pod.as_deref(), Some("x/b"));
    assert!(would.to_json_line().contains("would drop (audit)"));
    let dropped = reports
        .iter()
        .find(|r| !r.audit && r.dst_port == Some(81))
        .unwrap_or_else(|| panic!("no drop report for TCP 81: {reports:#?}"));
    assert_eq!(dropped.msg, DROP_MSG);
    assert_eq!(dropped.pod, "x/b");
    assert_eq!(dropped.direction, "ingress");
    assert_eq!(dropped.policies, vec!["x/b-allow".to_owned()]);
    // The audit chain at x/a let 81 through (the audit policy allows it): no
    // would-drop for it. (Other would-drops are the netns's own IPv6 chatter, e.g. MLD
    // reports, which an egress-isolating policy would drop too.)
    assert!(
        reports
            .iter()
            .filter(|r| r.audit && r.protocol == L4Proto::Tcp)
            .all(|r| r.dst_port == Some(80)),
        "{reports:#?}"
    );

    let text = metrics.encode();
    let audit_line = text
        .lines()
        .find(|l| {
            l.starts_with(
                r#"netpol_audit_drops_total{namespace="x",pod="a",direction="egress",tier="networkpolicy"}"#,
            )
        })
        .unwrap_or_else(|| panic!("no audit drop counter: {text}"));
    let n: u64 = audit_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1, "{audit_line}");
    assert!(
        text.contains(
            r#"netpol_drops_total{namespace="x",pod="b",direction="ingress",tier="networkpolicy"}"#
        ),
        "{text}"
    );
    assert!(
        !text.contains(r#"netpol_drops_total{namespace="x",pod="a""#),
        "x/a dropped nothing: {text}"
    );
}
