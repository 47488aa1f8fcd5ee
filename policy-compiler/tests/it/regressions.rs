//! Regression tests of issue #14 (a real-world trial): replicas, other policy engines,
//! Pods without IPs, IP literals in expect.yaml, ownerReferences, expect.yaml errors.

use policy_compiler::expect::{check, parse_expectations, parse_expectations_in};
use policy_compiler::{
    AllowGraph, Diagnostic, Inputs, Model, PortQuery, Protocol, Severity, SourceText, Subject,
    explain, load,
};

fn compile(text: &str) -> (Inputs, Model, AllowGraph, Vec<Diagnostic>) {
    let (inputs, mut diags) = load(&[SourceText {
        name: "t.yaml",
        text,
    }]);
    let (model, d) = Model::build(&inputs);
    diags.extend(d);
    let graph = AllowGraph::build(&model);
    (inputs, model, graph, diags)
}

const ETCD: &str = "\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: etcd, namespace: db}
spec:
  replicas: 3
  selector: {matchLabels: {app: etcd}}
  template:
    metadata: {labels: {app: etcd}}
    spec: {containers: [{name: etcd, ports: [{containerPort: 2380, name: peer}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: db}
spec:
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec: {containers: [{name: c}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent, namespace: db}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec: {containers: [{name: c}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-clients, namespace: db}
spec:
  podSelector: {}
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
";

fn tcp(port: u16) -> Option<PortQuery> {
    Some(PortQuery {
        protocol: Protocol::Tcp,
        port,
    })
}

// See: #14
#[test]
fn replicas_of_one_workload_are_two_distinct_pods() {
    let (_, model, graph, diags) = compile(ETCD);
    assert!(diags.is_empty(), "{diags:?}");
    let etcd = Subject::parse(&model, "db/statefulset/etcd").unwrap();
    let e = explain(&model, &graph, etcd, etcd, tcp(2380));
    assert!(!e.allowed, "the policy denies etcd peers: {e}");
    assert!(!e.to_self);
    assert_eq!(e.between_replicas.as_deref(), Some("3"));
    let text = e.to_string();
    assert!(
        text.contains("judged between two distinct replicas of db/statefulset/etcd (replicas: 3)"),
        "{text}"
    );
    assert!(!text.contains("to itself"), "{text}");
    // A DaemonSet's replica count is unknown: also two Pods.
    let agent = Subject::parse(&model, "db/daemonset/agent").unwrap();
    let e = explain(&model, &graph, agent, agent, tcp(80));
    assert!(!e.allowed);
    assert_eq!(e.between_replicas.as_deref(), Some("unknown"));
    // A Deployment without `replicas` has the API default, 1: self traffic.
    let client = Subject::parse(&model, "db/deployment/client").unwrap();
    let e = explain(&model, &graph, client, client, tcp(80));
    assert!(e.allowed && e.to_self && e.between_replicas.is_none());
    // The matrix diagonal is a real cell for the multi-replica workloads.
    let m = policy_compiler::matrix(&model, &graph, Default::default());
    let i = |k: &str| m.endpoints.iter().position(|e| e == k).unwrap();
    assert!(!m.allowed[i("db/statefulset/etcd")][i("db/statefulset/etcd")]);
    assert!(!m.allowed[i("db/daemonset/agent")][i("db/daemonset/agent")]);
    assert!(m.allowed[i("db/deployment/client")][i("db/deployment/client")]);
}

// See: #14
#[test]
fn other_policy_engines_are_warned_about_not_skipped() {
    let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {endpointSelector: {}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny}
spec: {selector: all()}
---
apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: calico, namespace: x}
spec: {}
---
apiVersion: crd.antrea.io/v1beta1
kind: ClusterNetworkPolicy
metadata: {name: acnp}
spec: {}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: cm, namespace: x}
";
    let (inputs, _, _, diags) = compile(text);
    let warnings: Vec<&Diagnostic> = diags
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .collect();
    assert_eq!(warnings.len(), 4, "{diags:?}");
    assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
    assert!(
        warnings[0]
            .to_string()
            .contains("not evaluated by netpol: Cilium enforces it too"),
        "{}",
        warnings[0]
    );
    assert_eq!(inputs.unevaluated.len(), 4);
    assert_eq!(
        inputs.unevaluated[2].to_string(),
        "crd.projectcalico.org/v1 NetworkPolicy x/calico"
    );
    // The ConfigMap is still only skipped.
    assert_eq!(inputs.skipped.len(), 1);
}

// See: #14
#[test]
fn pods_without_ip_are_endpoints_judged_by_labels_and_never_match_ip_blocks() {
    let text = "\
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: x, labels: {app: a}}
spec: {containers: [{name: c}]}
status: {phase: Pending}
---
apiVersion: v1
kind: Pod
metadata: {name: nostatus, namespace: x, labels: {app: a}}
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: s}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {matchLabels: {app: s}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: a}}}]
      ports: [{port: 80}]
    - from: [{ipBlock: {cidr: 0.0.0.0/0}}]
      ports: [{port: 443}]
";
    let (_, model, graph, diags) = compile(text);
    assert!(diags.is_empty(), "{diags:?}");
    for src in ["x/pending", "x/nostatus"] {
        let s = Subject::parse(&model, src).unwrap();
        let d = Subject::parse(&model, "x/server").unwrap();
        assert!(explain(&model, &graph, s, d, tcp(80)).allowed, "{src}");
        let e = explain(&model, &graph, s, d, tcp(443));
        assert!(!e.allowed, "{src}: no IP, so no ipBlock matches: {e}");
    }
}

// See: #14
#[test]
fn ip_literals_in_expect_yaml_name_the_pod_that_has_the_ip() {
    let text = "\
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: x, labels: {app: s}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
    - from: [{ipBlock: {cidr: 192.0.2.0/24}}]
";
    let (_, model, graph, diags) = compile(text);
    assert!(diags.is_empty(), "{diags:?}");
    // 10.0.0.9 is x/server: a Pod to itself is allowed. An external host is judged by
    // the ipBlock.
    let exp = parse_expectations(
        "assertions:\n\
         - {from: 10.0.0.9, to: x/server, port: 80, allowed: true}\n\
         - {from: 192.0.2.1, to: 10.0.0.9, port: 80, allowed: true}\n\
         - {from: 198.51.100.1, to: x/server, port: 80, allowed: false}\n",
    )
    .unwrap();
    let failures = check(&model, &graph, &exp);
    assert!(failures.is_empty(), "{failures:?}");
}

const OWNED: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, uid: d1}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-5d4f
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: web, uid: d1, controller: true}]
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5d4f-a
  namespace: shop
  labels: {app: web}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f, uid: r1, controller: true}]
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-5d4f-b
  namespace: shop
  labels: {app: web}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-5d4f, uid: r1, controller: true}]
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.1.0.2}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: orphan
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: gone, uid: g1, controller: true}]
spec:
  selector: {matchLabels: {app: orphan}}
  template:
    metadata: {labels: {app: orphan}}
    spec: {containers: [{name: c}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: backup, namespace: shop}
spec:
  schedule: '@daily'
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: backup}}
        spec: {containers: [{name: c}], restartPolicy: Never}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: backup-1
  namespace: shop
  ownerReferences: [{apiVersion: batch/v1, kind: CronJob, name: backup, uid: c1, controller: true}]
spec:
  template:
    metadata: {labels: {app: backup}}
    spec: {containers: [{name: c}], restartPolicy: Never}
";

// See: #14
#[test]
fn owner_references_make_every_pod_count_once() {
    let (_, model, _, diags) = compile(OWNED);
    assert!(diags.is_empty(), "{diags:?}");
    let keys: Vec<String> = model.endpoints.iter().map(|e| e.key()).collect();
    // The Deployment is represented by its Pods, its ReplicaSet by the Deployment; the
    // Job by its CronJob; a ReplicaSet whose owner is not in the input stays.
    assert_eq!(
        keys,
        [
            "shop/cronjob/backup",
            "shop/replicaset/orphan",
            "shop/web-5d4f-a",
            "shop/web-5d4f-b"
        ]
    );
    let a = model.endpoint(model.endpoint_by_key("shop/web-5d4f-a").unwrap());
    assert_eq!(a.owner, Some(("Deployment".into(), "web".into())));
    assert_eq!(
        model.replaced_by("shop/deployment/web"),
        Some(&["shop/web-5d4f-a".to_string(), "shop/web-5d4f-b".to_string()][..])
    );
    let err = Subject::parse(&model, "shop/deployment/web").unwrap_err();
    assert!(
        err.contains("represented by its Pods in the input (ownerReferences): shop/web-5d4f-a, shop/web-5d4f-b"),
        "{err}"
    );
    assert!(Subject::parse(&model, "shop/replicaset/web-5d4f").is_err());
    // A Job of a CronJob given without Pods: the CronJob stands for it.
    assert_eq!(
        Subject::parse(&model, "shop/job/backup-1"),
        Ok(Subject::Endpoint(
            model.endpoint_by_key("shop/cronjob/backup").unwrap()
        ))
    );
}

// See: #14
#[test]
fn expect_yaml_errors_name_the_file_and_leak_no_library_hint() {
    let e = parse_expectations_in(
        "cases/a/expect.yaml",
        "assertions:\n  - {from: x/a, from: x/b, to: x/b, port: 80, allowed: true}\n",
    )
    .unwrap_err();
    assert_eq!(e, "cases/a/expect.yaml:2:17: duplicate mapping key: from");
    let e = parse_expectations_in(
        "e.yaml",
        "assertions:\n  - {from: x/a, to: x/b, port: 80, allowed: maybe}\n",
    )
    .unwrap_err();
    assert_eq!(e, "e.yaml:2:45: invalid boolean");
    assert!(!e.contains("<input>"));
}

/// expect.yaml asserts the audited verdict: `audited:` on a point assertion (also
/// through a Service) and `A`/`a` grid cells; a wrong audited expectation fails with a
/// report that names it, and `.`/`X` keep asserting the enforced verdict only. See: #12
#[test]
fn expect_yaml_asserts_the_audited_verdict() {
    let text = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {containers: [{name: c}]}
status: {phase: Running, podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
status: {phase: Running, podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {clusterIP: 10.96.0.10, selector: {app: b}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: lockdown, namespace: x, annotations: {netpol.io/mode: audit}}
spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}
";
    let (_, model, graph, diags) = compile(text);
    assert!(diags.is_empty(), "{diags:?}");
    let holds = parse_expectations(
        "assertions:\n\
         - {from: x/a, to: x/b, port: 80, allowed: true, audited: false}\n\
         - {from: x/a, to: x/service/web, port: 80, allowed: true, audited: false}\n\
         - {from: x/b, to: x/a, port: 80, allowed: true, audited: true}\n\
         matrix:\n\
         - port: 80\n\
         \x20 grid: |\n\
         \x20   -   x/a x/b\n\
         \x20   x/a .   A\n\
         \x20   x/b .   .\n",
    )
    .unwrap();
    let failures = check(&model, &graph, &holds);
    assert!(failures.is_empty(), "{failures:?}");

    let wrong = parse_expectations(
        "assertions:\n\
         - {from: x/a, to: x/b, port: 80, allowed: true, audited: true}\n\
         - {from: x/a, to: x/service/web, port: 80, allowed: true, audited: true}\n\
         matrix:\n\
         - port: 80\n\
         \x20 grid: |\n\
         \x20   -   x/a x/b\n\
         \x20   x/a .   a\n\
         \x20   x/b .   .\n",
    )
    .unwrap();
    let failures = check(&model, &graph, &wrong);
    let whats: Vec<&str> = failures.iter().map(|f| f.what.as_str()).collect();
    assert_eq!(
        whats,
        [
            "assertion 0: x/a -> x/b TCP 80 (audited)",
            "assertion 1: x/a -> x/service/web TCP 80 (audited)",
            "matrix TCP/80",
        ],
        "{failures:?}"
    );
    assert!(
        failures[0]
            .report
            .starts_with("expected audited allowed, got denied")
    );
    // `x/a -> x/b` is `a`: enforced allowed (not denied) and audited denied (not
    // allowed), both halves wrong; `x/b -> x/b` is `.`, the enforced verdict only.
    let report = &failures[2].report;
    assert!(report.contains("1 cell(s) differ"), "{report}");
    assert!(report.contains("1 audited cell(s) differ"), "{report}");
    assert!(
        report.contains("x/a -> x/b: expected audited allowed, got denied"),
        "{report}"
    );
}
