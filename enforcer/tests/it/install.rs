//! The deployable manifests in `manifests/`: every document is its k8s-openapi type, the
//! RBAC grants exactly the calls the kube source makes, and the DaemonSet carries the
//! settings docs/kubernetes.md promises. See: #5

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use enforcer::kube::api_calls;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use netpol_cni::install::{self, InstallArgs, PluginConfig, parse_args};
use serde_json::Value;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests")
}

/// Every document of every `manifests/*.yaml`, as (file, kind, value).
fn documents() -> Vec<(String, String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".yaml"),
            "{name}: only YAML here (`kubectl apply -f manifests/` reads every file)"
        );
        let text = std::fs::read_to_string(&f).unwrap();
        let docs: Vec<Value> =
            serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        for d in docs.into_iter().filter(|d| !d.is_null()) {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no kind"))
                .to_owned();
            out.push((name.clone(), kind, d));
        }
    }
    out
}

struct Install {
    daemonset: DaemonSet,
    account: ServiceAccount,
    role: ClusterRole,
    binding: ClusterRoleBinding,
    cni: ConfigMap,
}

fn typed<T: serde::de::DeserializeOwned>(file: &str, v: Value) -> T {
    serde_path_to_error::deserialize(v).unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn install() -> Install {
    let mut by_kind: BTreeMap<String, Vec<(String, Value)>> = BTreeMap::new();
    for (file, kind, v) in documents() {
        by_kind.entry(kind).or_default().push((file, v));
    }
    let mut one = |kind: &str| {
        let mut docs = by_kind.remove(kind).unwrap_or_default();
        assert_eq!(docs.len(), 1, "exactly one {kind}");
        docs.remove(0)
    };
    let (f, ds) = one("DaemonSet");
    let daemonset = typed(&f, ds);
    let (f, sa) = one("ServiceAccount");
    let account = typed(&f, sa);
    let (f, r) = one("ClusterRole");
    let role = typed(&f, r);
    let (f, b) = one("ClusterRoleBinding");
    let binding = typed(&f, b);
    let (f, c) = one("ConfigMap");
    let cni = typed(&f, c);
    assert!(by_kind.is_empty(), "unexpected kinds: {:?}", by_kind.keys());
    Install {
        daemonset,
        account,
        role,
        binding,
        cni,
    }
}

#[test]
fn every_manifest_is_its_typed_object() {
    let i = install();
    assert_eq!(i.account.metadata.name.as_deref(), Some("netpol"));
}

#[test]
fn rbac_grants_exactly_the_calls_of_the_kube_source() {
    let i = install();
    let mut granted = BTreeSet::new();
    for rule in i.role.rules.iter().flatten() {
        assert!(rule.resource_names.is_none() && rule.non_resource_urls.is_none());
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for v in &rule.verbs {
                    granted.insert((g.clone(), r.clone(), v.clone()));
                }
            }
        }
    }
    let wanted: BTreeSet<(String, String, String)> = api_calls()
        .into_iter()
        .map(|(g, r, v)| (g.to_owned(), r.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(granted, wanted);

    assert_eq!(i.binding.role_ref.kind, "ClusterRole");
    assert_eq!(
        Some(&i.binding.role_ref.name),
        i.role.metadata.name.as_ref()
    );
    let subjects = i.binding.subjects.unwrap_or_default();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].kind, "ServiceAccount");
    assert_eq!(Some(&subjects[0].name), i.account.metadata.name.as_ref());
    assert_eq!(subjects[0].namespace, i.account.metadata.namespace);
}

#[test]
fn daemonset_runs_the_kube_agent_with_least_privilege() {
    let i = install();
    let ds = i.daemonset;
    assert_eq!(ds.metadata.namespace, i.account.metadata.namespace);
    let spec = ds.spec.unwrap();
    let pod = spec.template.spec.unwrap();
    assert_eq!(pod.service_account_name, i.account.metadata.name);
    assert_eq!(pod.host_network, Some(true));
    assert_ne!(
        pod.host_pid,
        Some(true),
        "netns are files under /var/run/netns"
    );
    let labels = spec.template.metadata.unwrap().labels.unwrap();
    for (k, v) in spec.selector.match_labels.unwrap() {
        assert_eq!(labels.get(&k), Some(&v), "selector matches the template");
    }

    let [agent] = &pod.containers[..] else {
        panic!("one container")
    };
    let args = agent.args.clone().unwrap_or_default();
    for want in ["agent", "--kubernetes", "--node=$(NODE_NAME)"] {
        assert!(args.iter().any(|a| a == want), "{want} in {args:?}");
    }
    // The agent serves the socket the plugin entry names, and keeps its CNI records, on
    // hostPath mounts (the plugin runs on the host; records outlive the container).
    let flag = |name: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {args:?}"))
            .to_owned()
    };
    let socket = flag("--cni-socket");
    // It keeps the plugin chained in the same directory the init container chains into,
    // with the same entry.
    let conf_dir = flag("--cni-conf-dir");
    let entry = flag("--cni-entry");
    let init = pod.init_containers.clone().unwrap_or_default();
    let init_command = init[0].command.clone().unwrap_or_default();
    let InstallArgs::Install(o) = parse_args(&init_command[1..]).unwrap() else {
        panic!("init container: not install")
    };
    assert_eq!(Path::new(&conf_dir), o.conf_dir.as_path());
    assert_eq!(Some(Path::new(&entry)), o.entry_file.as_deref());
    assert_eq!(
        Path::new(&socket),
        PluginConfig::default().agent_socket.as_path()
    );
    for path in [socket, flag("--cni-records"), conf_dir] {
        let m = agent
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| Path::new(&path).starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("{path} is not on a mount"));
        assert_ne!(m.read_only, Some(true), "{path} must be writable");
        let v = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .unwrap();
        // Mounted at the host path, or under /host for a host directory the agent
        // writes into (the CNI configuration).
        let host = &v.host_path.as_ref().unwrap().path;
        assert!(
            m.mount_path == *host || m.mount_path == format!("/host{host}"),
            "{path}: hostPath {host} mounted at {}",
            m.mount_path
        );
    }
    let env = agent.env.clone().unwrap_or_default();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .unwrap()
        .field_ref
        .as_ref()
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");

    let sc = agent.security_context.clone().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(
        caps.add,
        Some(vec!["NET_ADMIN".to_owned(), "SYS_ADMIN".to_owned()])
    );

    // Probes and metrics on the port the agent listens on.
    let port = agent
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .unwrap();
    assert!(args.contains(&format!("--listen=0.0.0.0:{}", port.container_port)));
    let probe_path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&agent.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&agent.readiness_probe).as_deref(),
        Some("/readyz")
    );
    let res = agent.resources.as_ref().unwrap();
    assert!(
        res.requests
            .as_ref()
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    );
    assert!(
        res.limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );

    // Netns directories mounted read-only from the host.
    let mounts = agent.volume_mounts.clone().unwrap_or_default();
    for path in ["/var/run/netns", "/run/netns"] {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == path)
            .unwrap_or_else(|| panic!("{path}"));
        assert_eq!(m.read_only, Some(true), "{path}");
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .unwrap();
        assert_eq!(vol.host_path.as_ref().unwrap().path, path);
    }
    // Every mount names a volume.
    let vols: BTreeSet<&str> = pod
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    for c in pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten())
    {
        for m in c.volume_mounts.iter().flatten() {
            assert!(vols.contains(m.name.as_str()), "{}: {}", c.name, m.name);
        }
    }
    assert_eq!(
        pod.init_containers.map(|c| c.len()),
        Some(1),
        "install-cni only"
    );
}

#[test]
fn cni_snippet_is_the_default_plugin_entry() {
    let data = install().cni.data.unwrap();
    let key = "netpol.conflist-entry.json";
    let entry = install::parse_entry(&data[key], Path::new(key)).unwrap();
    assert_eq!(entry, PluginConfig::default());
}

/// The init container's command is one `netpol-cni install` accepts, writing the host's
/// CNI directories through its hostPath mounts, with the ConfigMap's entry, as uid 0
/// without capabilities.
#[test]
fn install_cni_runs_netpol_cni_install_with_the_configmap_entry() {
    let i = install();
    let pod = i.daemonset.spec.unwrap().template.spec.unwrap();
    let init = pod.init_containers.clone().unwrap_or_default();
    let [c] = &init[..] else {
        panic!("one init container")
    };
    assert_eq!(c.name, "install-cni");
    let command = c.command.clone().unwrap_or_default();
    assert_eq!(command.first().map(String::as_str), Some("netpol-cni"));
    let InstallArgs::Install(o) = parse_args(&command[1..]).unwrap() else {
        panic!("{command:?}: not install")
    };
    let mounts = c.volume_mounts.clone().unwrap_or_default();
    let volume = |name: &str| {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .unwrap_or_else(|| panic!("volume {name}"))
            .clone()
    };
    for (dir, host) in [
        (&o.bin_dir, "/opt/cni/bin"),
        (&o.conf_dir, "/etc/cni/net.d"),
    ] {
        let m = mounts
            .iter()
            .find(|m| Path::new(&m.mount_path) == dir.as_path())
            .unwrap_or_else(|| panic!("{} is not mounted", dir.display()));
        assert_ne!(m.read_only, Some(true), "{} must be writable", m.mount_path);
        assert_eq!(volume(&m.name).host_path.unwrap().path, host);
    }

    let entry_file = o.entry_file.clone().expect("--entry");
    let m = mounts
        .iter()
        .find(|m| entry_file.starts_with(&m.mount_path))
        .unwrap_or_else(|| panic!("{} is not mounted", entry_file.display()));
    let cm = volume(&m.name).config_map.unwrap();
    assert_eq!(Some(&cm.name), i.cni.metadata.name.as_ref());
    let key = entry_file.file_name().unwrap().to_str().unwrap();
    assert!(
        i.cni.data.unwrap_or_default().contains_key(key),
        "{key} in the ConfigMap"
    );

    let sc = c.security_context.clone().unwrap();
    assert_eq!(
        sc.run_as_user,
        Some(0),
        "the host directories are root-owned"
    );
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.unwrap();
    assert_eq!(caps.drop, Some(vec!["ALL".to_owned()]));
    assert_eq!(caps.add, None);
}
