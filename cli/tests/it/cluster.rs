//! `--cluster [--context C]`: explain, matrix and test read live state from the fake API
//! server (enforcer/tests/it/apiserver.rs) through a generated kubeconfig. See: #5

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

use crate::apiserver::{ApiServer, COLLECTIONS};
use crate::support::{case, copy_case, manifests_of, netpol, repo_root};

/// Loads a repository case's cluster.yaml and policies.yaml into the server, as the API
/// server would hold them (namespaced objects always carry their namespace).
fn load_case(server: &ApiServer, name: &str) {
    for f in ["cluster.yaml", "policies.yaml"] {
        let text = std::fs::read_to_string(case(name).join(f)).unwrap();
        let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
        for mut d in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = d["kind"].as_str().unwrap().to_owned();
            let (path, _, _) = COLLECTIONS
                .iter()
                .find(|(_, k, _)| *k == kind)
                .unwrap_or_else(|| panic!("no collection for {kind}"));
            let cluster_scoped =
                matches!(kind.as_str(), "Namespace" | "Node" | "ClusterNetworkPolicy");
            if !cluster_scoped && d["metadata"]["namespace"].is_null() {
                d["metadata"]["namespace"] = json!("default");
            }
            server.add(path, d);
        }
    }
}

/// Runs `netpol ARGS` with KUBECONFIG set (and HOME elsewhere, so ~/.kube is not read).
fn netpol_kube(kubeconfig: &Path, args: &[&str]) -> crate::support::Run {
    let o = Command::new(env!("CARGO_BIN_EXE_netpol"))
        .args(args)
        .current_dir(repo_root())
        .env("KUBECONFIG", kubeconfig)
        .env("HOME", kubeconfig.parent().unwrap())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    crate::support::Run::from_output(o)
}

/// A kubeconfig whose current context points nowhere and whose `live` context points at
/// the server.
fn kubeconfig(server: &ApiServer, dir: &Path) -> std::path::PathBuf {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: live\n  cluster: {{server: \"{}\"}}\n- name: nowhere\n  cluster: {{server: \"http://127.0.0.1:1\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: live\n  context: {{cluster: live, user: u}}\n- name: nowhere\n  context: {{cluster: nowhere, user: u}}\ncurrent-context: nowhere\n",
        server.url()
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, text).unwrap();
    path
}

const CASE: &str = "apps/shop-multi-tier";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_and_explain_of_the_live_cluster_equal_the_files() {
    let server = ApiServer::start().await;
    load_case(&server, CASE);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());

    let mut args = vec!["matrix".to_owned(), "--port".into(), "5432".into()];
    args.extend(manifests_of(CASE));
    let from_files = netpol(&args);
    from_files.expect_code(0);
    let live = netpol_kube(
        &kc,
        &["matrix", "--port", "5432", "--cluster", "--context", "live"],
    );
    live.expect_code(0);
    assert_eq!(live.stdout, from_files.stdout);

    let mut args = vec![
        "explain".to_owned(),
        "shop/api".into(),
        "shop/db".into(),
        "--port".into(),
        "5432".into(),
    ];
    args.extend(manifests_of(CASE));
    let from_files = netpol(&args);
    let live = netpol_kube(
        &kc,
        &[
            "explain",
            "shop/api",
            "shop/db",
            "--port",
            "5432",
            "--cluster",
            "--context",
            "live",
        ],
    );
    live.expect_code(0);
    assert_eq!(live.stdout, from_files.stdout);

    // Only list calls, all GETs.
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.method == "GET" && !r.is_watch())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_command_checks_expectations_against_the_cluster() {
    let server = ApiServer::start().await;
    load_case(&server, CASE);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());
    let dir = tmp.path().join("case");
    copy_case(CASE, &dir);
    // The case's own manifests are ignored with --cluster: break them to prove it.
    std::fs::write(dir.join("policies.yaml"), "kind: NetworkPolicy\n").unwrap();
    let run = netpol_kube(
        &kc,
        &[
            "test",
            dir.to_str().unwrap(),
            "--cluster",
            "--context",
            "live",
        ],
    );
    run.expect_code(0);
    assert!(
        run.stdout.ends_with("1 passed, 0 failed\n"),
        "{}",
        run.stdout
    );

    let json_args = [
        "test",
        dir.to_str().unwrap(),
        "--cluster",
        "--context",
        "live",
        "-o",
        "json",
    ];
    let run = netpol_kube(&kc, &json_args);
    run.expect_code(0);
    assert!(run.stdout.contains("\"live cluster\""), "{}", run.stdout);

    // A policy deleted in the cluster makes the expectations fail.
    server.delete("/apis/networking.k8s.io/v1/networkpolicies", "shop", "api");
    let run = netpol_kube(
        &kc,
        &[
            "test",
            dir.to_str().unwrap(),
            "--cluster",
            "--context",
            "live",
        ],
    );
    run.expect_code(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workloads_are_listed_without_owned_controllers() {
    let server = ApiServer::start().await;
    let template = json!({"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "c", "image": "nginx", "ports": [{"containerPort": 80}]}]}});
    server.add("/api/v1/namespaces", json!({"metadata": {"name": "shop"}}));
    server.add(
        "/apis/apps/v1/deployments",
        json!({"metadata": {"name": "web", "namespace": "shop", "uid": "d1"},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}}),
    );
    server.add(
        "/apis/apps/v1/replicasets",
        json!({"metadata": {"name": "web-1", "namespace": "shop",
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]},
               "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}}),
    );
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());
    let run = netpol_kube(
        &kc,
        &["matrix", "--cluster", "--context", "live", "-o", "json"],
    );
    run.expect_code(0);
    assert!(run.stdout.contains("shop/deployment/web"), "{}", run.stdout);
    assert!(!run.stdout.contains("replicaset"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_cluster_and_bad_flags_exit_2() {
    let server = ApiServer::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());
    // The current context points at a closed port.
    let run = netpol_kube(&kc, &["matrix", "--cluster"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("cannot read the cluster"),
        "{}",
        run.stderr
    );
    let run = netpol_kube(&kc, &["matrix", "--cluster", "--context", "missing"]);
    run.expect_code(2);
    assert!(run.stderr.contains("missing"), "{}", run.stderr);
    let run = netpol_kube(&kc, &["matrix", "--cluster", "-f", "x.yaml"]);
    run.expect_code(2);
    let run = netpol_kube(&kc, &["matrix", "--context", "live", "-f", "x.yaml"]);
    run.expect_code(2);
}

/// ClusterNetworkPolicies are listed from `policy.networking.k8s.io/v1alpha2` and decide
/// the answer as from files; without the CRD (404) there are none. See: #13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_network_policies_are_listed_when_served() {
    const CNP_CASE: &str = "cnp/admin/ingress-tcp/1-initial";
    let server = ApiServer::start().await;
    load_case(&server, CNP_CASE);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());
    let query = [
        "explain",
        "network-policy-conformance-hufflepuff/cedric-diggory-1",
        "network-policy-conformance-gryffindor/harry-potter-1",
        "--port",
        "8080",
    ];
    let mut args: Vec<String> = query.iter().map(|s| s.to_string()).collect();
    args.extend(manifests_of(CNP_CASE));
    let from_files = netpol(&args);
    from_files.expect_code(0);
    assert!(
        from_files.stdout.contains("TCP 8080 denied"),
        "{}",
        from_files.stdout
    );
    let mut live_args = query.to_vec();
    live_args.extend(["--cluster", "--context", "live"]);
    let live = netpol_kube(&kc, &live_args);
    live.expect_code(0);
    assert_eq!(live.stdout, from_files.stdout);
    assert!(
        server
            .requests()
            .iter()
            .any(|r| r.path.contains("/clusternetworkpolicies"))
    );

    // A server without the CRD: no ClusterNetworkPolicy, no error.
    let bare = ApiServer::start().await;
    bare.remove_collection(crate::apiserver::CLUSTER_POLICIES);
    load_case(&bare, "apps/shop-multi-tier");
    let kc = kubeconfig(&bare, tmp.path());
    let run = netpol_kube(
        &kc,
        &["matrix", "--port", "5432", "--cluster", "--context", "live"],
    );
    run.expect_code(0);
    assert!(
        bare.requests()
            .iter()
            .any(|r| r.path == crate::apiserver::CLUSTER_POLICIES)
    );
}

const CILIUM: &str = "/apis/cilium.io/v2/ciliumnetworkpolicies";
const CALICO_GLOBAL: &str = "/apis/crd.projectcalico.org/v1/globalnetworkpolicies";
const ANP_V1ALPHA1: &str = "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies";

/// Other engines' policies in the cluster warn as from files, in every command, and
/// explain's answer carries the caveat; they are found through discovery and listed as
/// metadata only. See: #14
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_engines_policies_in_the_cluster_warn_as_from_files() {
    let server = ApiServer::start().await;
    load_case(&server, CASE);
    server.add_crd(CILIUM, "CiliumNetworkPolicy", false);
    server.add_crd(CALICO_GLOBAL, "GlobalNetworkPolicy", true);
    server.add_crd(ANP_V1ALPHA1, "AdminNetworkPolicy", true);
    let cnp = json!({"metadata": {"name": "lock-db", "namespace": "shop"},
                     "spec": {"endpointSelector": {}, "ingressDeny": [{}]}});
    let gnp = json!({"metadata": {"name": "deny-all"}, "spec": {"selector": "all()", "types": ["Ingress"]}});
    let anp = json!({"metadata": {"name": "old"}, "spec": {"priority": 1, "subject": {"namespaces": {}}}});
    server.add(CILIUM, cnp.clone());
    server.add(CALICO_GLOBAL, gnp.clone());
    server.add(ANP_V1ALPHA1, anp);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());

    // The same objects in a file give the same warnings (minus the file position).
    let cnp_file = tmp.path().join("cilium.json");
    let gnp_file = tmp.path().join("calico.json");
    let mut cnp_doc = cnp.clone();
    cnp_doc["apiVersion"] = json!("cilium.io/v2");
    cnp_doc["kind"] = json!("CiliumNetworkPolicy");
    let mut gnp_doc = gnp.clone();
    gnp_doc["apiVersion"] = json!("crd.projectcalico.org/v1");
    gnp_doc["kind"] = json!("GlobalNetworkPolicy");
    std::fs::write(&cnp_file, cnp_doc.to_string()).unwrap();
    std::fs::write(&gnp_file, gnp_doc.to_string()).unwrap();
    let mut args = vec!["matrix".to_owned(), "--port".into(), "5432".into()];
    args.extend(manifests_of(CASE));
    for f in [&cnp_file, &gnp_file] {
        args.extend(["-f".to_owned(), f.display().to_string()]);
    }
    let from_files = netpol(&args);
    from_files.expect_code(0);

    let live = netpol_kube(
        &kc,
        &["matrix", "--port", "5432", "--cluster", "--context", "live"],
    );
    live.expect_code(0);
    for warning in [
        "warning: CiliumNetworkPolicy shop/lock-db: kind: not evaluated by netpol: Cilium enforces it too, so real connectivity may differ from netpol's answers (value \"cilium.io/v2 CiliumNetworkPolicy\")",
        "warning: GlobalNetworkPolicy deny-all: kind: not evaluated by netpol: Calico enforces it too, so real connectivity may differ from netpol's answers (value \"crd.projectcalico.org/v1 GlobalNetworkPolicy\")",
    ] {
        assert!(live.stderr.contains(warning), "{warning}\n{}", live.stderr);
        // Files get a wrapped snippet: compare without whitespace and frame characters.
        let squeeze = |t: &str| -> String {
            t.chars()
                .filter(|c| !c.is_whitespace() && *c != '│')
                .collect()
        };
        assert!(
            squeeze(&from_files.stderr).contains(&squeeze(warning)),
            "{warning}\n{}",
            from_files.stderr
        );
    }
    assert!(
        live.stderr.contains("warning: AdminNetworkPolicy old: kind: AdminNetworkPolicy (policy.networking.k8s.io/v1alpha1) is not evaluated: the network-policy-api v1alpha2 replaced it with a ClusterNetworkPolicy with `tier: Admin`"),
        "{}",
        live.stderr
    );
    assert_eq!(live.stdout, from_files.stdout);

    // explain says the answer may differ, naming the objects.
    let explain = [
        "explain",
        "shop/api",
        "shop/db",
        "--port",
        "5432",
        "--cluster",
        "--context",
        "live",
    ];
    let run = netpol_kube(&kc, &explain);
    run.expect_code(0);
    assert!(
        run.stdout.contains("the input holds 3 policies netpol does not evaluate (cilium.io/v2 CiliumNetworkPolicy shop/lock-db, crd.projectcalico.org/v1 GlobalNetworkPolicy deny-all, policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy old): the answer may differ in the cluster"),
        "{}",
        run.stdout
    );
    // test --cluster warns too.
    let dir = tmp.path().join("case");
    copy_case(CASE, &dir);
    let run = netpol_kube(
        &kc,
        &[
            "test",
            dir.to_str().unwrap(),
            "--cluster",
            "--context",
            "live",
        ],
    );
    run.expect_code(0);
    assert!(
        run.stderr.contains("CiliumNetworkPolicy shop/lock-db"),
        "{}",
        run.stderr
    );

    // Discovery, then metadata-only lists of the served foreign kinds; nothing else of
    // those groups, no watch.
    let reqs = server.requests();
    assert!(reqs.iter().any(|r| r.path == "/apis"));
    for path in [CILIUM, CALICO_GLOBAL, ANP_V1ALPHA1] {
        let lists: Vec<_> = reqs.iter().filter(|r| r.path == path).collect();
        assert!(!lists.is_empty(), "{path} not listed");
        assert!(
            lists
                .iter()
                .all(|r| !r.is_watch() && r.accept.contains("as=PartialObjectMetadataList")),
            "{lists:?}"
        );
    }
    assert!(
        !reqs
            .iter()
            .any(|r| r.path.starts_with("/apis/projectcalico.org")),
        "a group the server does not have is not asked for"
    );
}

/// A foreign kind whose list fails (403, 500) is a warning naming it, not silence and not
/// an error; without the CRDs there is no warning at all. See: #14
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_kinds_absent_or_forbidden() {
    let server = ApiServer::start().await;
    load_case(&server, CASE);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(&server, tmp.path());
    let args = ["matrix", "--port", "5432", "--cluster", "--context", "live"];
    let run = netpol_kube(&kc, &args);
    run.expect_code(0);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    let explain = [
        "explain",
        "shop/api",
        "shop/db",
        "--port",
        "5432",
        "--cluster",
        "--context",
        "live",
    ];
    let run = netpol_kube(&kc, &explain);
    run.expect_code(0);
    assert!(!run.stdout.contains("does not evaluate"), "{}", run.stdout);

    server.add_crd(CILIUM, "CiliumNetworkPolicy", false);
    server.add_crd(CALICO_GLOBAL, "GlobalNetworkPolicy", true);
    server.fail(CILIUM, 403);
    server.fail(CALICO_GLOBAL, 500);
    let run = netpol_kube(&kc, &args);
    run.expect_code(0);
    for kind in [
        "cannot list CiliumNetworkPolicy (cilium.io/v2)",
        "cannot list GlobalNetworkPolicy (crd.projectcalico.org/v1)",
    ] {
        assert!(run.stderr.contains(kind), "{kind}\n{}", run.stderr);
    }
}
