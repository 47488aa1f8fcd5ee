//! The lab library (`netpol lab`) against the real kernel: every Pod of a case in its own
//! namespace, rulesets applied by the agent's reconciler, every pair probed; the kernel
//! must agree with the compiler and every denied flow must come with a drop report that
//! names the right Pods, side and policies.
// See: #4

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Instant;

use enforcer::netns;
use netpol_lab::lab::plan::LabPlan;
use netpol_lab::lab::report::LabReport;
use netpol_lab::lab::{LabOptions, run};
use policy_compiler::{Direction, Inputs, SourceText, Subject, load};

use crate::cases::repo_root;
use crate::kernel;

/// cluster.yaml + policies.yaml of a case.
fn case_inputs(name: &str) -> Inputs {
    let dir = repo_root().join("testdata/cases").join(name);
    let files: Vec<(String, String)> = ["cluster.yaml", "policies.yaml"]
        .iter()
        .map(|f| {
            let p: PathBuf = dir.join(f);
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    inputs_of(&files)
}

fn inputs_of(files: &[(String, String)]) -> Inputs {
    let sources: Vec<SourceText<'_>> = files
        .iter()
        .map(|(n, t)| SourceText { name: n, text: t })
        .collect();
    let (inputs, diags) = load(&sources);
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    inputs
}

fn options(tag: &str) -> LabOptions {
    LabOptions {
        prefix: kernel::prefix(tag),
        ..LabOptions::default()
    }
}

fn leftovers(prefix: &str) -> Vec<String> {
    netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&format!("{prefix}-")))
        .collect()
}

/// Runs the lab; asserts agreement and that nothing is left behind.
fn run_case(plan: LabPlan, opts: &LabOptions, what: &str) -> (LabReport, LabPlan) {
    // The plan is consumed by the lab; keep a second one for the checks.
    let check = LabPlan::new(plan.inputs().clone()).unwrap();
    let t = Instant::now();
    let report = run(plan, opts).unwrap_or_else(|e| panic!("{what}: {e:?}"));
    eprintln!(
        "lab {what}: {} Pods, {} probes, {} drop flows in {:.2}s ({:?})",
        report.pods.len(),
        report.probes,
        report.drops.len(),
        t.elapsed().as_secs_f64(),
        report.timings_ms
    );
    assert!(
        report.agree,
        "{what}: kernel and compiler disagree:\n{}",
        report.to_text(false)
    );
    assert!(
        leftovers(&opts.prefix).is_empty(),
        "{what}: namespaces left: {:?}",
        leftovers(&opts.prefix)
    );
    (report, check)
}

/// Every denied probe (both families) has a drop report naming the source and
/// destination Pod, the protocol and port, the side that dropped (the source's egress
/// when its egress denies, else the destination's ingress) and that side's policies.
fn assert_drops_explain_denials(report: &LabReport, plan: &LabPlan, what: &str) {
    let (model, graph) = (plan.model(), plan.graph());
    let mut checked = 0;
    for p in plan.probes().iter().filter(|p| !p.expected) {
        let (src, dst) = (&plan.pods()[p.src], &plan.pods()[p.dst]);
        let reach = graph.reach_at(
            model,
            Subject::Endpoint(src.id),
            Some(p.src_ip),
            Subject::Endpoint(dst.id),
            Some(p.dst_ip),
        );
        let (at, dir) = if reach.egress.allowed.contains(p.protocol, p.port) {
            (dst, Direction::Ingress)
        } else {
            (src, Direction::Egress)
        };
        let want_policies: Vec<String> = graph
            .isolation(at.id)
            .by(dir)
            .iter()
            .map(|id| model.policy(*id).key())
            .collect();
        let found = report.drops.iter().find(|d| {
            d.src.ip == p.src_ip
                && d.dst.ip == p.dst_ip
                && d.protocol.policy_protocol() == Some(p.protocol)
                && d.dst_port == Some(p.port)
        });
        let Some(d) = found else {
            panic!(
                "{what}: no drop report for {} -> {} {} {} ({} -> {})",
                src.pod, dst.pod, p.protocol, p.port, p.src_ip, p.dst_ip
            );
        };
        assert_eq!(d.src.pod.as_deref(), Some(src.pod.as_str()), "{what}");
        assert_eq!(d.dst.pod.as_deref(), Some(dst.pod.as_str()), "{what}");
        assert_eq!(
            (d.pod.as_str(), d.direction),
            (at.pod.as_str(), dir.as_str())
        );
        assert_eq!(d.policies, want_policies, "{what}: {d:?}");
        assert!(d.count >= 1 && d.note.is_none(), "{what}: {d:?}");
        assert!(d.nearest_miss.is_some(), "{what}: {d:?}");
        checked += 1;
    }
    assert!(checked > 0, "{what}: the case denies nothing");
    // Allowed flows are never reported.
    for d in &report.drops {
        assert!(
            plan.probes().iter().any(|p| !p.expected
                && p.src_ip == d.src.ip
                && p.dst_ip == d.dst.ip
                && d.dst_port == Some(p.port)),
            "{what}: drop of an allowed flow: {d:?}"
        );
    }
}

#[test]
fn lab_agrees_with_compiler_and_reports_drops_on_pod_selector() {
    if !kernel::available("lab_agrees_with_compiler_and_reports_drops_on_pod_selector") {
        return;
    }
    let plan = LabPlan::new(case_inputs("upstream/pod-selector")).unwrap();
    assert_eq!(plan.pods().len(), 9);
    assert_eq!(plan.services().len(), 6, "80 and 81 over TCP, UDP, SCTP");
    let (report, check) = run_case(plan, &options("lps"), "upstream/pod-selector");
    assert_eq!(report.matrices.len(), 6);
    assert_eq!(report.probes, 6 * 81);
    let tcp80 = &report.matrices[0];
    assert_eq!(tcp80.endpoints[0], "x/a");
    assert!(tcp80.allowed[1][0], "x/b -> x/a");
    assert!(!tcp80.allowed[2][0], "x/c -> x/a");
    assert_drops_explain_denials(&report, &check, "upstream/pod-selector");
    // x/c -> x/a TCP 80 is reported as dropped at x/a's ingress by x-a-allows-x-b.
    let line = report
        .drops
        .iter()
        .map(|d| netpol_lab::lab::report::drop_line(d, false))
        .find(|l| l.starts_with("x/c -> x/a TCP 80 "))
        .unwrap();
    assert!(
        line.starts_with(
            "x/c -> x/a TCP 80 dropped (ingress at x/a, isolated by x/x-a-allows-x-b)"
        ),
        "{line}"
    );
}

#[test]
fn lab_agrees_with_compiler_in_both_families_on_dual_stack() {
    if !kernel::available("lab_agrees_with_compiler_in_both_families_on_dual_stack") {
        return;
    }
    let plan = LabPlan::new(case_inputs("semantics/ipv6-dual-stack")).unwrap();
    let primary = plan.probes().iter().filter(|p| p.primary).count();
    let (report, check) = run_case(plan, &options("lds"), "semantics/ipv6-dual-stack");
    assert_eq!(report.probes, 2 * primary, "both families of every pair");
    assert_drops_explain_denials(&report, &check, "semantics/ipv6-dual-stack");
    assert!(
        report.drops.iter().any(|d| d.dst.ip.is_ipv6()),
        "IPv6 denials reported"
    );
}

#[test]
fn lab_assigns_addresses_to_pods_without_ips() {
    if !kernel::available("lab_assigns_addresses_to_pods_without_ips") {
        return;
    }
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
spec: {containers: [{name: c, ports: [{containerPort: 8080, name: http}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop}
spec: {containers: [{name: c, ports: [{containerPort: 53, protocol: UDP}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template: {metadata: {labels: {app: api}}, spec: {containers: [{name: c}]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: http}]}]
";
    let plan = LabPlan::new(inputs_of(&[("t.yaml".into(), yaml.into())])).unwrap();
    assert!(plan.pods().iter().all(|p| p.assigned));
    assert_eq!(plan.skipped().len(), 1, "the Deployment");
    let (report, check) = run_case(plan, &options("lip"), "assigned addresses");
    let ips: Vec<IpAddr> = report.pods.iter().flat_map(|p| p.ips.clone()).collect();
    assert!(
        ips.iter().all(|ip| ip.to_string().starts_with("10.244.")),
        "{ips:?}"
    );
    let tcp = report.matrices.iter().find(|m| m.port == 8080).unwrap();
    // client -> web allowed, other -> web denied (endpoints: client, other, web).
    assert!(tcp.allowed[0][2]);
    assert!(!tcp.allowed[1][2]);
    assert_drops_explain_denials(&report, &check, "assigned addresses");
}

#[test]
fn lab_removes_a_stale_lab_first() {
    if !kernel::available("lab_removes_a_stale_lab_first") {
        return;
    }
    let opts = options("lst");
    // What a crashed run leaves: the hub and a host namespace, by hand.
    for n in ["hub", "0", "7"] {
        netns::add(&format!("{}-{n}", opts.prefix)).unwrap();
    }
    let plan = LabPlan::new(case_inputs("upstream/default-deny-ingress")).unwrap();
    let (report, _) = run_case(plan, &opts, "stale lab");
    assert!(
        report
            .notes
            .iter()
            .any(|n| n.starts_with("removed 3 namespace(s) left by an earlier lab")),
        "{:?}",
        report.notes
    );
}

/// The lab as a real node: Service cells through the kube-proxy equivalent agree with
/// the compiler's per-backend verdicts (a mixed cell shows both outcomes), kubelet-style
/// probes from the node connect to every declared port, and a node-table drop names the
/// Service fronting the backend. See: #10
#[test]
fn lab_probes_services_and_node_on_the_routed_node() {
    if !kernel::available("lab_probes_services_and_node_on_the_routed_node") {
        return;
    }
    for (i, case) in [
        "services/allow-dns",
        "services/ipblock-except-backend",
        "services/external-ips",
        "services/endpointslices-preferred",
    ]
    .into_iter()
    .enumerate()
    {
        let plan = LabPlan::new(case_inputs(case)).unwrap();
        let tag = ["lsa", "lsb", "lsc", "lsd"][i];
        let (report, _) = run_case(plan, &options(tag), case);
        assert!(!report.services.is_empty(), "{case}: Service cells probed");
        assert!(!report.node_probes.is_empty(), "{case}: node probes run");
        assert!(report.node_probes.iter().all(|c| c.connected), "{case}");
        if case == "services/ipblock-except-backend" {
            let cell = report
                .services
                .iter()
                .find(|c| c.probe.src == "shop/client")
                .unwrap();
            assert_eq!(
                cell.probe.expected,
                [false, true],
                "db-0 denied, db-1 allowed"
            );
            assert_eq!(cell.observed, [false, true], "{}", report.to_text(false));
            assert!(
                report.drops.iter().any(|d| d.pod == "shop/client"
                    && d.direction == "egress"
                    && d.dst.pod.as_deref() == Some("shop/db-0")
                    && d.services == ["shop/db"]),
                "node-table drop naming the Service: {:?}",
                report.drops
            );
        }
    }
}

/// Audit (staged) policies in the lab: real packets that only audit policies would deny
/// pass (the kernel agrees with the enforced matrix) and are reported as would drop
/// (audit), naming the audit policy (a NetworkPolicy at the destination's ingress, a
/// ClusterNetworkPolicy Deny rule at the source's egress); a flow an enforced policy
/// denies is still dropped. See: #12
#[test]
fn lab_shows_audit_policies_passing_and_reported() {
    if !kernel::available("lab_shows_audit_policies_passing_and_reported") {
        return;
    }
    let plan = LabPlan::new(case_inputs("audit/staged-policies")).unwrap();
    assert_eq!(plan.pods().len(), 3);
    let (report, check) = run_case(plan, &options("laud"), "audit/staged-policies");
    let ip = |pod: &str| {
        check
            .pods()
            .iter()
            .find(|p| p.pod == pod)
            .unwrap()
            .ips
            .iter()
            .copied()
            .find(IpAddr::is_ipv4)
            .unwrap()
    };
    let (scanner, web, db) = (ip("ops/scanner"), ip("shop/web"), ip("shop/db"));
    // ops/scanner -> shop/web TCP 80 passed in the kernel (the matrix agrees: allowed).
    let web_col = report.matrices[0]
        .endpoints
        .iter()
        .position(|e| e == "shop/web")
        .unwrap();
    let scanner_row = report.matrices[0]
        .endpoints
        .iter()
        .position(|e| e == "ops/scanner")
        .unwrap();
    assert_eq!(report.matrices[0].port, 80);
    assert!(report.matrices[0].allowed[scanner_row][web_col]);
    let find = |audit: bool, src: IpAddr, dst: IpAddr, port: u16| {
        report
            .drops
            .iter()
            .find(|d| {
                d.audit == audit && d.src.ip == src && d.dst.ip == dst && d.dst_port == Some(port)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no {} report {src} -> {dst}:{port}:\n{}",
                    if audit { "audit" } else { "drop" },
                    report.to_text(false)
                )
            })
    };
    let w = find(true, scanner, web, 80);
    assert_eq!((w.pod.as_str(), w.direction), ("shop/web", "ingress"));
    assert_eq!(w.policies, vec!["shop/web-from-shop (audit)".to_owned()]);
    assert_eq!(w.msg, "netpol would drop (audit)");
    assert!(w.note.is_none(), "{w:?}");
    // The audit ClusterNetworkPolicy at the source's egress names its rule.
    let c = find(true, scanner, db, 5432);
    assert_eq!(
        (c.pod.as_str(), c.direction, c.tier),
        ("ops/scanner", "egress", "admin")
    );
    assert_eq!(
        c.cluster_policy.as_deref(),
        Some("ops-egress-lockdown (audit)")
    );
    assert_eq!(c.cluster_rule.as_deref(), Some("no-shop-db"));
    // Enforced: still dropped at shop/db, by the enforced policy only.
    let d = find(false, scanner, db, 5432);
    assert_eq!((d.pod.as_str(), d.direction), ("shop/db", "ingress"));
    assert_eq!(d.policies, vec!["shop/db-from-web".to_owned()]);
    // shop/web -> shop/db TCP 5432: allowed and no audit policy objects: not reported.
    assert!(
        !report
            .drops
            .iter()
            .any(|d| d.src.ip == web && d.dst.ip == db && d.dst_port == Some(5432)),
        "{}",
        report.to_text(false)
    );
    let text = report.to_text(false);
    assert!(
        text.contains("would drop (audit), accepted where logged"),
        "{text}"
    );
    assert!(
        text.contains(
            "would drop (audit) (ingress at shop/web, isolated by shop/web-from-shop (audit))"
        ),
        "{text}"
    );
}
