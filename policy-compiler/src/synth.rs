//! Synthetic clusters: deterministic, realistic-looking manifests for benchmarks and
//! scale tests.
//!
//! [`generate`] writes multi-document YAML with Namespaces (labels `team`, `env`), Pods
//! (labels `app`, `tier`, `version`; named container ports; unique IPv4 Pod IPs from a
//! per-node /24, dual-stack on some nodes) and NetworkPolicies in the shapes real clusters
//! use: a default deny per namespace, DNS egress to kube-system, same-tier and
//! cross-namespace allows (namespaceSelector AND podSelector), ipBlocks with excepts,
//! named ports, `endPort` ranges and `matchExpressions`.
//!
//! The output depends only on [`SynthParams`]: the same parameters give byte-identical
//! text (a seeded ChaCha8 stream, no hash-ordered collections).
//!
//! ```
//! use policy_compiler::synth::{SynthParams, generate};
//! let p = SynthParams { namespaces: 3, pods: 20, policies: 4, seed: 1 };
//! assert_eq!(generate(&p), generate(&p));
//! ```

use std::collections::BTreeSet;
use std::fmt::Write as _;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthParams {
    /// Namespaces, `kube-system` included (it holds the DNS Pods). At least one is
    /// generated when there are Pods or policies.
    pub namespaces: usize,
    /// Pods, the DNS Pods included.
    pub pods: usize,
    /// NetworkPolicies.
    pub policies: usize,
    /// Seed of the random stream.
    pub seed: u64,
}

impl SynthParams {
    /// The benchmark shape: a namespace per 100 Pods and a policy per 10 Pods.
    pub fn scaled(pods: usize, seed: u64) -> Self {
        Self {
            namespaces: (pods / 100).max(1),
            pods,
            policies: pods / 10,
            seed,
        }
    }

    /// Namespaces actually generated.
    pub fn namespace_count(&self) -> usize {
        if self.pods == 0 && self.policies == 0 {
            self.namespaces
        } else {
            self.namespaces.max(1)
        }
    }
}

const TEAMS: [&str; 8] = [
    "payments", "checkout", "search", "identity", "platform", "data", "growth", "support",
];
const ENVS: [&str; 3] = ["prod", "staging", "dev"];

/// How an app is exposed: its tier and its container ports `(name, number)`.
struct AppKind {
    name: &'static str,
    tier: &'static str,
    ports: &'static [(&'static str, u16)],
}

const APPS: [AppKind; 12] = [
    AppKind {
        name: "web",
        tier: "frontend",
        ports: &[("http", 8080), ("metrics", 9090)],
    },
    AppKind {
        name: "gateway",
        tier: "frontend",
        ports: &[("http", 8080), ("https", 8443), ("metrics", 9090)],
    },
    AppKind {
        name: "api",
        tier: "backend",
        ports: &[("http", 8080), ("grpc", 9000), ("metrics", 9090)],
    },
    AppKind {
        name: "auth",
        tier: "backend",
        ports: &[("grpc", 9000), ("metrics", 9090)],
    },
    AppKind {
        name: "orders",
        tier: "backend",
        ports: &[("grpc", 9000), ("metrics", 9090)],
    },
    AppKind {
        name: "catalog",
        tier: "backend",
        ports: &[("http", 8080), ("grpc", 9000), ("metrics", 9090)],
    },
    AppKind {
        name: "billing",
        tier: "backend",
        ports: &[("grpc", 9000), ("metrics", 9090)],
    },
    AppKind {
        name: "worker",
        tier: "backend",
        ports: &[("metrics", 9090)],
    },
    AppKind {
        name: "postgres",
        tier: "db",
        ports: &[("postgres", 5432), ("metrics", 9187)],
    },
    AppKind {
        name: "redis",
        tier: "cache",
        ports: &[("redis", 6379), ("metrics", 9121)],
    },
    AppKind {
        name: "kafka",
        tier: "queue",
        ports: &[("kafka", 9092), ("metrics", 9308)],
    },
    AppKind {
        name: "search",
        tier: "backend",
        ports: &[("http", 9200), ("transport", 9300), ("metrics", 9114)],
    },
];

/// A tier and the port names its clients use.
const TIER_PORTS: [(&str, &str); 5] = [
    ("frontend", "http"),
    ("backend", "grpc"),
    ("db", "postgres"),
    ("cache", "redis"),
    ("queue", "kafka"),
];

/// Pods per node, on average; every node has a /24 of Pod addresses.
const PODS_PER_NODE: usize = 30;
/// Every `DUAL_STACK_EVERY`th node is dual-stack.
const DUAL_STACK_EVERY: usize = 8;

struct Namespace {
    name: String,
    team: &'static str,
    env: &'static str,
    /// Indices into [`APPS`] of the apps deployed here.
    apps: Vec<usize>,
}

/// Pod addresses: each node has `10.<hi>.<lo>.0/24` (and `fd00:10:<node>::/64` when
/// dual-stack); a full node hands its Pods to the next one.
struct Ipam {
    nodes: usize,
    used: Vec<u8>,
}

impl Ipam {
    fn new(pods: usize) -> Self {
        // Enough room that nodes stay well below their 254 addresses.
        let nodes = (pods / PODS_PER_NODE).max(1);
        Self {
            nodes,
            used: vec![0; nodes],
        }
    }

    /// `(node, v4, optional v6)` for a new Pod preferring `node`.
    fn assign(&mut self, mut node: usize) -> (usize, String, Option<String>) {
        while self.used[node] >= 254 {
            node = (node + 1) % self.nodes;
        }
        self.used[node] += 1;
        let host = self.used[node];
        let v4 = format!("10.{}.{}.{host}", node / 256, node % 256);
        let v6 = node
            .is_multiple_of(DUAL_STACK_EVERY)
            .then(|| format!("fd00:10:{node:x}::{host:x}"));
        (node, v4, v6)
    }
}

/// Writes the manifests for `p`. Pure and deterministic.
pub fn generate(p: &SynthParams) -> String {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut out = String::with_capacity(p.pods * 700 + p.policies * 900 + 256);
    let n_ns = p.namespace_count();
    if n_ns == 0 {
        return out;
    }

    // Namespaces: kube-system first, then application namespaces.
    let mut namespaces = vec![Namespace {
        name: "kube-system".into(),
        team: "platform",
        env: "prod",
        apps: Vec::new(),
    }];
    for i in 1..n_ns {
        let team = TEAMS[rng.random_range(0..TEAMS.len())];
        let env = ENVS[weighted(&mut rng, &[6, 3, 1])];
        let n_apps = rng.random_range(3..=7);
        let mut apps = BTreeSet::new();
        while apps.len() < n_apps {
            apps.insert(rng.random_range(0..APPS.len()));
        }
        namespaces.push(Namespace {
            name: format!("{team}-{env}-{i}"),
            team,
            env,
            apps: apps.into_iter().collect(),
        });
    }
    for ns in &namespaces {
        write_namespace(&mut out, ns);
    }

    // Pods: the DNS Pods in kube-system, the rest spread evenly over the app namespaces.
    let mut ipam = Ipam::new(p.pods);
    let dns = p.pods.min(2);
    for i in 0..dns {
        let (node, v4, v6) = ipam.assign(rng.random_range(0..ipam.nodes));
        write_dns_pod(&mut out, i, node, &v4, v6.as_deref());
    }
    let app_ns = if n_ns > 1 { 1..n_ns } else { 0..1 };
    let rest = p.pods - dns;
    for (k, ni) in app_ns.clone().enumerate() {
        let count = share(rest, app_ns.len(), k);
        let ns = &namespaces[ni];
        let mut names = BTreeSet::new();
        for _ in 0..count {
            let app = match ns.apps.len() {
                0 => &APPS[0],
                n => &APPS[ns.apps[rng.random_range(0..n)]],
            };
            let version = ["v1", "v2", "canary"][weighted(&mut rng, &[14, 5, 1])];
            let name = loop {
                let n = format!(
                    "{}-{}-{}",
                    app.name,
                    token(&mut rng, 10, HASH_ALPHABET),
                    token(&mut rng, 5, HASH_ALPHABET)
                );
                if names.insert(n.clone()) {
                    break n;
                }
            };
            let (node, v4, v6) = ipam.assign(rng.random_range(0..ipam.nodes));
            write_pod(
                &mut out,
                &ns.name,
                &name,
                app,
                version,
                node,
                &v4,
                v6.as_deref(),
            );
        }
    }

    // Policies: per namespace a default deny, DNS egress, then a mix of allows.
    for (k, ni) in app_ns.clone().enumerate() {
        let count = share(p.policies, app_ns.len(), k);
        for j in 0..count {
            write_policy(&mut out, &mut rng, &namespaces, ni, j);
        }
    }
    out
}

/// The `k`th of `parts` near-equal shares of `total`.
fn share(total: usize, parts: usize, k: usize) -> usize {
    total / parts + usize::from(k < total % parts)
}

/// An index drawn with the given weights.
fn weighted(rng: &mut ChaCha8Rng, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = rng.random_range(0..total);
    for (i, w) in weights.iter().enumerate() {
        if x < *w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// The alphabet of Kubernetes-generated name suffixes (no vowels).
const HASH_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn token(rng: &mut ChaCha8Rng, len: usize, alphabet: &[u8]) -> String {
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

fn write_namespace(out: &mut String, ns: &Namespace) {
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    team: {}\n    env: {}\n",
        ns.name, ns.team, ns.env
    );
}

fn write_status(out: &mut String, v4: &str, v6: Option<&str>) {
    let _ = write!(
        out,
        "status:\n  phase: Running\n  podIP: {v4}\n  podIPs:\n  - ip: {v4}\n"
    );
    if let Some(v6) = v6 {
        let _ = writeln!(out, "  - ip: '{v6}'");
    }
}

fn write_dns_pod(out: &mut String, i: usize, node: usize, v4: &str, v6: Option<&str>) {
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: coredns-7db6d8ff4d-{i}\n  namespace: kube-system\n  labels:\n    k8s-app: kube-dns\n    pod-template-hash: 7db6d8ff4d\nspec:\n  nodeName: node-{node}\n  containers:\n  - name: coredns\n    image: registry.k8s.io/coredns/coredns:v1.11.1\n    ports:\n    - {{name: dns, containerPort: 53, protocol: UDP}}\n    - {{name: dns-tcp, containerPort: 53, protocol: TCP}}\n    - {{name: metrics, containerPort: 9153, protocol: TCP}}\n"
    );
    write_status(out, v4, v6);
}

#[allow(clippy::too_many_arguments)] // one Pod's fields, written in one place
fn write_pod(
    out: &mut String,
    ns: &str,
    name: &str,
    app: &AppKind,
    version: &str,
    node: usize,
    v4: &str,
    v6: Option<&str>,
) {
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\n    tier: {tier}\n    version: {version}\nspec:\n  nodeName: node-{node}\n  containers:\n  - name: {app}\n    image: registry.example.com/{app}:{version}\n    ports:\n",
        app = app.name,
        tier = app.tier,
    );
    for (pname, port) in app.ports {
        let _ = writeln!(out, "    - name: {pname}\n      containerPort: {port}");
    }
    write_status(out, v4, v6);
}

/// Writes one policy; `j` is its index within the namespace.
fn write_policy(
    out: &mut String,
    rng: &mut ChaCha8Rng,
    namespaces: &[Namespace],
    ni: usize,
    j: usize,
) {
    let ns = &namespaces[ni];
    let app = match ns.apps.len() {
        0 => &APPS[0],
        n => &APPS[ns.apps[rng.random_range(0..n)]],
    };
    let header = |out: &mut String, name: &str| {
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {}\nspec:\n",
            ns.name
        );
    };
    let client_port = |tier: &str| {
        TIER_PORTS
            .iter()
            .find(|(t, _)| *t == tier)
            .map_or("http", |(_, p)| *p)
    };
    match j {
        0 => {
            header(out, "default-deny-all");
            out.push_str("  podSelector: {}\n  policyTypes:\n  - Ingress\n  - Egress\n");
        }
        1 => {
            header(out, "allow-dns");
            out.push_str(
                "  podSelector: {}\n  policyTypes:\n  - Egress\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: kube-system\n      podSelector:\n        matchLabels:\n          k8s-app: kube-dns\n    ports:\n    - protocol: UDP\n      port: 53\n    - protocol: TCP\n      port: 53\n",
            );
        }
        _ => match rng.random_range(0..7) {
            // Same tier talks to itself (replication, gossip) on any of its ports.
            0 => {
                header(out, &format!("{}-allow-same-tier-{j}", app.name));
                let _ = write!(
                    out,
                    "  podSelector:\n    matchLabels:\n      tier: {t}\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          tier: {t}\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          tier: {t}\n  policyTypes:\n  - Ingress\n  - Egress\n",
                    t = app.tier
                );
            }
            // Clients in other teams' namespaces (namespaceSelector AND podSelector).
            1 => {
                let team = TEAMS[rng.random_range(0..TEAMS.len())];
                let from_tier = ["frontend", "backend"][rng.random_range(0..2)];
                header(out, &format!("{}-allow-from-{team}-{j}", app.name));
                let _ = write!(
                    out,
                    "  podSelector:\n    matchLabels:\n      app: {a}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          team: {team}\n      podSelector:\n        matchLabels:\n          tier: {from_tier}\n    - podSelector:\n        matchLabels:\n          tier: frontend\n    ports:\n    - port: {p}\n",
                    a = app.name,
                    p = client_port(app.tier),
                );
            }
            // Load balancers and the internet, minus private ranges.
            2 => {
                let lb = rng.random_range(0..=255u8);
                header(out, &format!("{}-allow-external-{j}", app.name));
                let _ = write!(
                    out,
                    "  podSelector:\n    matchLabels:\n      app: {a}\n  policyTypes:\n  - Ingress\n  - Egress\n  ingress:\n  - from:\n    - ipBlock:\n        cidr: 172.16.0.0/12\n        except:\n        - 172.16.{lb}.0/24\n    - ipBlock:\n        cidr: 192.168.0.0/16\n    ports:\n    - protocol: TCP\n      port: 8080\n    - protocol: TCP\n      port: 8443\n  egress:\n  - to:\n    - ipBlock:\n        cidr: 0.0.0.0/0\n        except:\n        - 10.0.0.0/8\n        - 172.16.0.0/12\n        - 192.168.0.0/16\n        - 169.254.169.254/32\n    ports:\n    - protocol: TCP\n      port: 443\n",
                    a = app.name,
                );
            }
            // Scraping: monitoring-like Pods in prod/staging namespaces, named port.
            3 => {
                header(out, &format!("allow-metrics-{j}"));
                out.push_str(
                    "  podSelector:\n    matchExpressions:\n    - key: app\n      operator: Exists\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchExpressions:\n        - key: env\n          operator: In\n          values: [prod, staging]\n      podSelector:\n        matchLabels:\n          app: worker\n    ports:\n    - port: metrics\n",
                );
            }
            // Egress to a port range (node ports, a service mesh range).
            4 => {
                let lo = [8000u16, 30000, 15000][rng.random_range(0..3)];
                let hi = lo + [99u16, 2767, 20][rng.random_range(0..3)];
                header(out, &format!("{}-allow-egress-range-{j}", app.name));
                let _ = write!(
                    out,
                    "  podSelector:\n    matchLabels:\n      app: {a}\n  policyTypes:\n  - Egress\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          env: {env}\n      podSelector:\n        matchLabels:\n          tier: backend\n    ports:\n    - protocol: TCP\n      port: {lo}\n      endPort: {hi}\n",
                    a = app.name,
                    env = ns.env,
                );
            }
            // Stable versions of some tiers accept traffic from a set of apps.
            5 => {
                let a = APPS[rng.random_range(0..APPS.len())].name;
                let b = APPS[rng.random_range(0..APPS.len())].name;
                let (a, b) = if a <= b { (a, b) } else { (b, a) };
                let apps = if a == b {
                    a.to_string()
                } else {
                    format!("{a}, {b}")
                };
                header(out, &format!("allow-stable-backends-{j}"));
                let _ = write!(
                    out,
                    "  podSelector:\n    matchExpressions:\n    - key: tier\n      operator: In\n      values: [backend, db, cache]\n    - key: version\n      operator: NotIn\n      values: [canary]\n  ingress:\n  - from:\n    - podSelector:\n        matchExpressions:\n        - key: app\n          operator: In\n          values: [{apps}]\n    ports:\n    - port: grpc\n    - port: postgres\n    - port: redis\n    - protocol: TCP\n      port: 9090\n",
                );
            }
            // Frontends call this namespace's backends; the app calls its dependency.
            _ => {
                let dep = APPS[rng.random_range(0..APPS.len())].tier;
                header(out, &format!("{}-allow-to-{dep}-{j}", app.name));
                let _ = write!(
                    out,
                    "  podSelector:\n    matchLabels:\n      app: {a}\n  policyTypes:\n  - Ingress\n  - Egress\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          tier: frontend\n    ports:\n    - port: {p}\n  egress:\n  - to:\n    - podSelector:\n        matchLabels:\n          tier: {dep}\n    - namespaceSelector:\n        matchLabels:\n          team: {team}\n      podSelector:\n        matchLabels:\n          tier: {dep}\n    ports:\n    - port: {dp}\n",
                    a = app.name,
                    p = client_port(app.tier),
                    team = ns.team,
                    dp = client_port(dep),
                );
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::AllowGraph;
    use crate::load::{SourceText, load};
    use crate::model::Model;

    fn params(seed: u64) -> SynthParams {
        SynthParams {
            namespaces: 12,
            pods: 1000,
            policies: 100,
            seed,
        }
    }

    #[test]
    fn same_params_same_bytes() {
        let a = generate(&params(7));
        assert_eq!(a, generate(&params(7)));
        assert_ne!(a, generate(&params(8)));
    }

    #[test]
    fn loads_cleanly_with_requested_counts() {
        for p in [
            params(1),
            SynthParams::scaled(3000, 2),
            SynthParams {
                namespaces: 1,
                pods: 5,
                policies: 6,
                seed: 3,
            },
            SynthParams {
                namespaces: 0,
                pods: 0,
                policies: 0,
                seed: 4,
            },
        ] {
            let text = generate(&p);
            let (inputs, diags) = load(&[SourceText {
                name: "synth.yaml",
                text: &text,
            }]);
            assert!(diags.is_empty(), "{p:?}: {diags:?}");
            assert!(inputs.skipped.is_empty());
            let (model, diags) = Model::build(&inputs);
            assert!(diags.is_empty(), "{p:?}: {diags:?}");
            assert_eq!(model.namespaces.len(), p.namespace_count(), "{p:?}");
            assert_eq!(model.endpoints.len(), p.pods, "{p:?}");
            assert_eq!(model.policies.len(), p.policies, "{p:?}");
            assert!(model.namespaces.values().all(|n| n.declared));
            let graph = AllowGraph::build(&model);
            if p.pods > 100 {
                // Policies select Pods and resolve peers: the graph is not trivial.
                assert!(graph.graph().edge_count() > p.pods, "{p:?}");
                assert!(model.endpoints.iter().any(|e| e.ips.len() == 2));
            }
        }
    }

    #[test]
    fn every_shape_appears() {
        let text = generate(&params(1));
        for needle in [
            "default-deny-all",
            "kubernetes.io/metadata.name: kube-system",
            "except:",
            "endPort:",
            "matchExpressions:",
            "port: metrics",
            "namespaceSelector:",
            "protocol: UDP",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
    }
}
