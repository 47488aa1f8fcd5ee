//! Memory of the agent on the Kubernetes source at scale: the fake API server (the one
//! of the integration tests) runs in a child process serving a synthetic cluster
//! (`policy_compiler::synth`, a namespace per 100 Pods, a policy per 10 Pods) whose Pods
//! carry what real API objects carry (managedFields, last-applied-configuration, status
//! conditions and container statuses, images, env, volumes: about 4 KB of JSON each);
//! this process runs the agent (`--kubernetes --node node-0`, recording applier, no
//! drops) until its first full sync, then reports its own peak and current RSS.
//!
//! ```text
//! cargo run --release -p enforcer --example kube_memory -- [--pods 1000,10000,50000]
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use enforcer::agent::{Agent, AgentConfig, CompiledRulesets};
use enforcer::applier::RecordingApplier;
use enforcer::kube::KubeSource;
use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{SourceText, load};
use serde_json::{Value, json};

use testkit::apiserver::{ApiServer, NAMESPACES, PODS, POLICIES};

/// What the API server adds to a Pod that netpol does not read.
fn bloat(pod: &mut Value, i: usize) {
    let name = pod["metadata"]["name"].as_str().unwrap_or("p").to_owned();
    pod["metadata"]["uid"] = json!(format!("0b8f6a1e-4d2c-4a7b-9c1d-{i:012}"));
    pod["metadata"]["creationTimestamp"] = json!("2026-11-26T10:00:00Z");
    pod["metadata"]["generateName"] = json!(format!("{name}-"));
    pod["metadata"]["annotations"] = json!({
        "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(900),
        "prometheus.io/scrape": "true",
    });
    if pod["spec"]["nodeName"] == "node-0" {
        // This node's Pods: the agent compiles and applies their rulesets.
        pod["metadata"]["annotations"]["netpol.io/netns"] = json!(format!("cni-{i}"));
    }
    pod["metadata"]["managedFields"] = json!([
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-26T10:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:labels": {"f:app": {}, "f:tier": {}}}, "f:spec": {"f:containers": {"k:{\"name\":\"c\"}": {".": {}, "f:image": {}, "f:ports": {}}}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-26T10:00:05Z", "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:hostIP": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}
    ]);
    let spec = &mut pod["spec"];
    spec["serviceAccountName"] = json!("default");
    spec["volumes"] = json!([{"name": "kube-api-access", "projected": {"sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}]);
    if let Some(cs) = spec["containers"].as_array_mut() {
        for c in cs {
            c["env"] = json!([{"name": "LOG_LEVEL", "value": "info"}, {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
            c["resources"] = json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}});
            c["readinessProbe"] =
                json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 10});
            c["volumeMounts"] = json!([{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]);
        }
    }
    let ip = format!("10.{}.{}.{}", 64 + i / 65536, (i / 256) % 256, i % 256);
    pod["status"] = json!({
        "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": "192.168.0.10",
        "startTime": "2026-11-26T10:00:01Z", "qosClass": "Burstable",
        "conditions": [
            {"type": "Initialized", "status": "True", "lastTransitionTime": "2026-11-26T10:00:01Z"},
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-26T10:00:05Z"},
            {"type": "ContainersReady", "status": "True", "lastTransitionTime": "2026-11-26T10:00:05Z"},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-11-26T10:00:00Z"}],
        "containerStatuses": [{"name": "c", "ready": true, "restartCount": 0, "started": true,
            "image": "registry.example.com/app:v1", "imageID": format!("registry.example.com/app@sha256:{}", "0".repeat(64)),
            "containerID": format!("containerd://{}", "a".repeat(64)),
            "state": {"running": {"startedAt": "2026-11-26T10:00:04Z"}}}]
    });
}

fn serve(pods: usize) {
    let text = generate(&SynthParams::scaled(pods, 7));
    let (inputs, diags) = load(&[SourceText {
        name: "synth.yaml",
        text: &text,
    }]);
    assert!(diags.iter().all(|d| !d.is_error()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let server = rt.block_on(ApiServer::start());
    let mut bytes = 0usize;
    for ns in &inputs.namespaces {
        server.add(NAMESPACES, serde_json::to_value(&ns.object).unwrap());
    }
    for (i, p) in inputs.pods.iter().enumerate() {
        let mut v = serde_json::to_value(&p.object).unwrap();
        bloat(&mut v, i);
        bytes += v.to_string().len();
        server.add(PODS, v);
    }
    for p in &inputs.policies {
        server.add(POLICIES, serde_json::to_value(&p.object).unwrap());
    }
    let kubeconfig = std::env::temp_dir().join(format!("kube_memory_{}.yaml", std::process::id()));
    std::fs::write(&kubeconfig, server.kubeconfig("fake")).unwrap();
    println!(
        "{} {} {} {}",
        kubeconfig.display(),
        inputs.pods.len(),
        inputs.policies.len(),
        bytes / inputs.pods.len().max(1)
    );
    std::io::stdout().flush().unwrap();
    // Serve until the parent closes our stdin.
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let _ = std::fs::remove_file(&kubeconfig);
    drop(server);
}

fn status_kb(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn measure(pods: usize) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["serve", &pods.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let parts: Vec<&str> = first.split_whitespace().collect();
    let (kubeconfig, n_pods, n_pol, per_pod) = (parts[0], parts[1], parts[2], parts[3]);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let before = status_kb("VmRSS:");
    let start = Instant::now();
    if std::env::var_os("STATE_ONLY").is_some() {
        // The source into a plain State: what the objects themselves cost.
        let (objects, rss, hwm) = rt.block_on(async {
            let client = enforcer::kube::client(Some(std::path::Path::new(kubeconfig)), None)
                .await
                .unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel(16);
            let task = tokio::spawn(enforcer::kube::run_source(client, tx));
            let mut state = enforcer::state::State::new();
            while let Some(scan) = rx.recv().await {
                for e in scan.events {
                    state.handle(e);
                }
                if scan.complete {
                    break;
                }
            }
            task.abort();
            tokio::time::sleep(Duration::from_millis(500)).await;
            (state.len(), status_kb("VmRSS:"), status_kb("VmHWM:"))
        });
        drop(child.stdin.take());
        let _ = child.wait();
        return format!(
            "| {n_pods} (state only: {objects} objects) | {n_pol} | | {:.2} s | | {:.0} MiB | {:.0} MiB | {:.1} KB |",
            start.elapsed().as_secs_f64(),
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0,
            (rss.saturating_sub(before)) as f64 / n_pods.parse::<f64>().unwrap_or(1.0)
        );
    }
    let (took, applies, rss, hwm) = rt.block_on(async {
        let client = enforcer::kube::client(Some(std::path::Path::new(kubeconfig)), None)
            .await
            .unwrap();
        let applier = Arc::new(RecordingApplier::new());
        let config = AgentConfig {
            node: Some("node-0".into()),
            drops: None,
            ..AgentConfig::default()
        };
        let agent = Agent::start_with_source(
            config,
            Box::new(KubeSource::new(client)),
            Arc::new(CompiledRulesets::default()),
            applier.clone(),
        )
        .await
        .unwrap();
        while !agent.ready() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let took = start.elapsed();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out = (
            took,
            applier
                .calls()
                .iter()
                .filter(|c| matches!(c, enforcer::applier::Recorded::Apply { .. }))
                .count(),
            status_kb("VmRSS:"),
            status_kb("VmHWM:"),
        );
        agent.stop().await.unwrap();
        out
    });
    drop(child.stdin.take());
    let _ = child.wait();
    format!(
        "| {n_pods} | {n_pol} | {:.1} KB | {:.2} s | {applies} | {:.0} MiB | {:.0} MiB | {:.1} KB |",
        per_pod.parse::<f64>().unwrap_or(0.0) / 1024.0,
        took.as_secs_f64(),
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        (rss.saturating_sub(before)) as f64 / n_pods.parse::<f64>().unwrap_or(1.0)
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("serve") => return serve(args[2].parse().unwrap()),
        Some("one") => return println!("{}", measure(args[2].parse().unwrap())),
        _ => {}
    }
    let sizes: Vec<usize> = args
        .iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || vec![1_000, 10_000, 50_000],
            |v| v.split(',').map(|n| n.parse().expect("a number")).collect(),
        );
    println!(
        "| Pods | policies | API JSON per Pod | list to first sync | tables applied (node-0) | RSS after sync | peak RSS | RSS growth per Pod |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        // Each size in a fresh process, so peaks do not carry over.
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["one", &n.to_string()])
            .output()
            .unwrap();
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
}
