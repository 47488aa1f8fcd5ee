//! Regression tests of issue #14 through the binary: closed stdout, other policy engines.

use std::io::Read as _;
use std::process::{Command, Stdio};

use crate::support::{manifests_of, netpol};

// See: #14
#[test]
fn closed_stdout_exits_quietly_for_every_command() {
    let mut cases: Vec<Vec<String>> = Vec::new();
    for cmd in [
        vec!["matrix"],
        vec!["explain", "x/a", "x/b"],
        vec!["compile", "--all"],
    ] {
        let mut args: Vec<String> = cmd.iter().map(ToString::to_string).collect();
        args.extend(manifests_of("upstream/pod-selector"));
        cases.push(args);
    }
    cases.push(
        ["gen", "--pods", "2000", "--policies", "100"]
            .iter()
            .map(ToString::to_string)
            .collect(),
    );
    for args in cases {
        // stdout is a pipe whose reader is gone before netpol writes.
        let mut child = Command::new(env!("CARGO_BIN_EXE_netpol"))
            .args(&args)
            .current_dir(crate::support::repo_root())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

// See: #14
#[test]
fn other_policy_engines_warn_and_explain_says_the_answer_may_differ() {
    let dir = tempfile::TempDir::new().unwrap();
    let cilium = dir.path().join("cilium.yaml");
    std::fs::write(
        &cilium,
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {endpointSelector: {}}\n",
    )
    .unwrap();
    let mut args: Vec<String> = ["explain", "x/a", "x/b", "--port", "80"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(manifests_of("upstream/pod-selector"));
    args.extend(["-f".to_string(), cilium.display().to_string()]);
    let run = netpol(&args);
    run.expect_code(0);
    assert!(
        run.stderr
            .contains("not evaluated by netpol: Cilium enforces it too"),
        "{}",
        run.stderr
    );
    assert!(
        run.stdout.contains(
            "warning: the input holds 1 policy netpol does not evaluate (cilium.io/v2 CiliumNetworkPolicy x/deny): the answer may differ in the cluster"
        ),
        "{}",
        run.stdout
    );
    args[0] = "matrix".into();
    args.drain(1..5);
    let run = netpol(&args);
    run.expect_code(0);
    assert!(run.stderr.contains("CiliumNetworkPolicy"), "{}", run.stderr);
}

/// `netpol compile` says that its rulesets do not enforce ClusterNetworkPolicy tiers yet,
/// while `explain` answers with them. See: #13
#[test]
fn compile_warns_that_rulesets_do_not_enforce_cluster_network_policies_yet() {
    let mut args: Vec<String> = ["compile", "--all"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(manifests_of("cnp/admin/ingress-tcp/1-initial"));
    let run = netpol(&args);
    run.expect_code(0);
    assert!(
        run.stderr.contains(
            "warning: the input holds 1 ClusterNetworkPolicy: the rulesets below do not enforce"
        ),
        "{}",
        run.stderr
    );
    let mut args: Vec<String> = ["compile", "--all"]
        .iter()
        .map(ToString::to_string)
        .collect();
    args.extend(manifests_of("upstream/pod-selector"));
    assert!(!netpol(&args).stderr.contains("ClusterNetworkPolic"));
}
