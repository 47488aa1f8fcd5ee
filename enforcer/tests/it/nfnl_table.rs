//! Whole tables loaded over netlink ([`NftSocket::replace_table`]) against the real
//! kernel: the same table as `nft -f` (in place) for every Pod and node table of every
//! case and of generated clusters, replaces in place equal fresh loads, a bad table
//! changes nothing, and an isolated Pod stays closed through replaces.
//! See: #12

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use enforcer::applier::{Applier, NftApplier};
use enforcer::netns;
use enforcer::nfnl::table::kept_maps;
use enforcer::nfnl::{NfnlError, NftSocket};
use enforcer::nft;
use enforcer::plan::element_ops;
use enforcer::state::PodKey;
use netpol_lab::probe::{Listener, Prober, Protocol as ProbeProtocol};
use netpol_lab::topology::{Host, Topology};
use policy_compiler::model::EndpointKind;
use policy_compiler::ruleset::{
    MapVerdict, NodeContext, PeerEntry, Ruleset, RulesetOptions, compile_node,
    compile_pod_with_audit,
};
use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{AllowGraph, AuditView, Model, SourceText, load};

use crate::cases::{self, case_dirs};
use crate::kernel;
use testkit::kernel::{ALLOW, v4, v6};

/// Removes namespaces when dropped, so a failing assertion still cleans up.
struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tag: &str, n: usize) -> Self {
        let p = kernel::prefix(tag);
        let names: Vec<String> = (0..n).map(|i| format!("{p}-{i}")).collect();
        for name in &names {
            netns::add(name).unwrap();
        }
        Namespaces(names)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = netns::delete(n);
        }
    }
}

/// What the kernel holds: `nft list table` (elements included) and the rules'
/// expressions as `nft --debug=netlink` prints them, anonymous set numbers dropped (they
/// count loads, not content).
fn state(ns: &str) -> String {
    let text = nft::list_table(ns, "inet", "netpol").unwrap();
    let out = netns::exec(
        ns,
        "nft",
        &["--debug=netlink", "list", "table", "inet", "netpol"],
        None,
    )
    .unwrap();
    assert!(out.success, "{}", out.stderr);
    let bytecode = bytecode(&String::from_utf8_lossy(&out.stdout));
    let s = format!("{text}\n{bytecode}");
    // `__set12` -> `__set`.
    let mut normal = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(at) = rest.find("__set") {
        normal.push_str(&rest[..at + 5]);
        rest = rest[at + 5..].trim_start_matches(|c: char| c.is_ascii_digit());
    }
    normal.push_str(rest);
    normal
}

/// `nft --debug=netlink` output without rule handles (`inet netpol ingress 12 11`) and
/// with each set's elements sorted (a hash set lists them in hash order), without the
/// listing nft appends.
fn bytecode(raw: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut elements: Vec<&str> = Vec::new();
    let flush = |out: &mut Vec<String>, elements: &mut Vec<&str>| {
        elements.sort_unstable();
        out.extend(elements.drain(..).map(str::to_owned));
    };
    // nft prints the listing again after the bytecode: `state` has it already.
    for line in raw.lines().take_while(|l| !l.starts_with("table ")) {
        if line.starts_with("\telement ") {
            elements.push(line);
            continue;
        }
        flush(&mut out, &mut elements);
        let words: Vec<&str> = line.split(' ').collect();
        if words.len() > 3
            && words[0] == "inet"
            && words[3..]
                .iter()
                .all(|w| w.bytes().all(|b| b.is_ascii_digit()))
        {
            out.push(words[..3].join(" "));
        } else {
            out.push(line.to_owned());
        }
    }
    flush(&mut out, &mut elements);
    out.join("\n")
}

/// [`state`] in an order that does not depend on when each object was created: an
/// in-place replace keeps the old base chains first, a fresh load lists chains without
/// a hook first (both as `nft::in_place` does). Top-level blocks of the listing and the
/// per-chain and per-set entries of the bytecode are sorted; rules keep their order.
fn canonical(state: &str) -> String {
    let mut blocks: Vec<String> = Vec::new();
    let mut entries: Vec<(String, String)> = Vec::new();
    let mut in_bytecode = false;
    for line in state.lines() {
        if line.starts_with("inet netpol ") {
            in_bytecode = true;
            entries.push((line.to_owned(), String::new()));
        } else if in_bytecode {
            if let Some((_, body)) = entries.last_mut().filter(|_| !line.is_empty()) {
                body.push_str(line);
                body.push('\n');
            }
        } else if line.starts_with("\tchain ")
            || line.starts_with("\tset ")
            || line.starts_with("\tmap ")
        {
            blocks.push(format!("{line}\n"));
        } else if line.starts_with('\t')
            && let Some(b) = blocks.last_mut()
        {
            b.push_str(line);
            b.push('\n');
        }
    }
    blocks.sort();
    // Stable: the rules of a chain keep their order.
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = blocks.concat();
    for (h, b) in entries {
        out.push_str(&h);
        out.push('\n');
        out.push_str(&b);
    }
    out
}

/// Model and graph of manifests text.
fn compile_text(text: &str) -> (Model, AllowGraph) {
    let sources = [SourceText {
        name: "manifests.yaml",
        text,
    }];
    let (inputs, diags) = load(&sources);
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    let (model, diags) = Model::build(&inputs);
    assert!(!diags.iter().any(|d| d.is_error()), "{diags:?}");
    let graph = AllowGraph::build(&model);
    (model, graph)
}

/// Every Pod table (with its audit chains) and node table of a compiled cluster.
fn tables_of(name: &str, model: &Model, graph: &AllowGraph, all: &mut Vec<(String, Ruleset)>) {
    let audit = AuditView::of(model);
    for e in model
        .endpoints
        .iter()
        .filter(|e| e.kind == EndpointKind::Pod && !e.host_network)
    {
        let rs = compile_pod_with_audit(
            model,
            graph,
            audit.as_ref(),
            e.id,
            &RulesetOptions::default(),
        );
        all.push((format!("{name} {}", e.key()), rs));
    }
    for node in model.node_names() {
        let ctx = NodeContext::new(model, node, model.node_addresses(node));
        let rs = compile_node(model, graph, &ctx, &RulesetOptions::default());
        all.push((format!("{name} node {node}"), rs));
    }
}

/// Every table of every case, and of two generated clusters.
fn all_tables() -> Vec<(String, Ruleset)> {
    let mut all = Vec::new();
    for dir in case_dirs() {
        let case = cases::compile(&dir);
        tables_of(&case.name, &case.model, &case.graph, &mut all);
    }
    for seed in [1, 2] {
        let text = generate(&SynthParams {
            namespaces: 4,
            pods: 30,
            policies: 16,
            seed,
        });
        let (model, graph) = compile_text(&text);
        tables_of(&format!("synth seed {seed}"), &model, &graph, &mut all);
    }
    all
}

fn load_nft(ns: &str, rs: &Ruleset) {
    NftApplier
        .apply(&PodKey::new("t", "t"), ns, &rs.to_nft())
        .unwrap_or_else(|e| panic!("nft: {}", netpol_common::ErrorChain(&e)));
}

fn load_netlink(socket: &mut NftSocket, rs: &Ruleset) {
    socket
        .replace_table("netpol", rs)
        .unwrap_or_else(|e| panic!("netlink: {}", netpol_common::ErrorChain(&e)));
}

#[test]
fn netlink_and_nft_load_identical_tables_for_every_case_in_place_and_fresh() {
    if !kernel::available("netlink_and_nft_load_identical_tables_for_every_case_in_place_and_fresh")
    {
        return;
    }
    let ns = Namespaces::new("nltab", 3);
    let (by_nft, by_netlink, fresh) = (&ns.0[0], &ns.0[1], &ns.0[2]);
    let mut netlink = NftSocket::open(by_netlink).unwrap();
    let mut fresh_socket = NftSocket::open(fresh).unwrap();
    let tables = all_tables();
    assert!(
        tables.len() >= 100,
        "expected every Pod and node table of testdata/cases, found {}",
        tables.len()
    );
    // 1. Case by case, each table replacing the one before in place, in both namespaces.
    for (name, rs) in &tables {
        load_nft(by_nft, rs);
        load_netlink(&mut netlink, rs);
        assert_eq!(
            state(by_nft),
            state(by_netlink),
            "{name}: nft and netlink load differently\n{}",
            rs.to_nft()
        );
    }
    // 2. Random pairs A -> B: B replacing A in place over netlink equals B loaded into
    // a namespace without the table.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        usize::try_from(x % tables.len() as u64).unwrap()
    };
    for _ in 0..60 {
        let (a, b) = (&tables[next()], &tables[next()]);
        load_netlink(&mut netlink, &a.1);
        load_netlink(&mut netlink, &b.1);
        let _ = nft::delete_table(fresh, "inet", "netpol");
        load_netlink(&mut fresh_socket, &b.1);
        let (x, y) = (canonical(&state(by_netlink)), canonical(&state(fresh)));
        let first = x.lines().zip(y.lines()).position(|(l, r)| l != r);
        assert!(
            x == y,
            "{} -> {}: the in-place replace differs from a fresh load at line {first:?}: {:?} vs {:?}",
            a.0,
            b.0,
            first.map(|i| x
                .lines()
                .skip(i.saturating_sub(12))
                .take(16)
                .collect::<Vec<_>>()
                .join("\n")),
            first.map(|i| y
                .lines()
                .skip(i.saturating_sub(12))
                .take(16)
                .collect::<Vec<_>>()
                .join("\n")),
        );
    }
    eprintln!("netlink/nft parity: {} tables", tables.len());
}

/// Changes the table in `socket`'s namespace from `a` (there now, by the last commit)
/// to `b` keeping the peer maps ([`NftSocket::rewrite_table`]), sent as the agent sends
/// it: without the kept maps' elements; the number of maps kept (not reloaded).
fn rewrite_netlink(socket: &mut NftSocket, a: &Ruleset, b: &Ruleset) -> usize {
    let old: BTreeSet<PeerEntry> = a.peer_entries().into_iter().collect();
    let new: BTreeSet<PeerEntry> = b.peer_entries().into_iter().collect();
    let ops = element_ops(&old, &new);
    let keep = kept_maps(&old, &new);
    let mut slim = b.clone();
    for m in slim.maps.iter_mut().filter(|m| keep.contains(&m.name)) {
        m.elements.clear();
    }
    let g = socket.generation().unwrap();
    let after = socket
        .rewrite_table("netpol", &slim, &old, &new, &ops, g)
        .unwrap_or_else(|e| panic!("rewrite: {}", netpol_common::ErrorChain(&e)));
    assert_eq!(
        socket.generation().unwrap(),
        after,
        "the generation returned"
    );
    keep.len()
}

/// Asserts that the table in `ns` equals the one in `fresh` (chain order aside).
fn assert_same_table(ns: &str, fresh: &str, what: &str) {
    let (x, y) = (canonical(&state(ns)), canonical(&state(fresh)));
    let first = x.lines().zip(y.lines()).position(|(l, r)| l != r);
    assert!(
        x == y,
        "{what}: differs from a fresh load at line {first:?}: {:?} vs {:?}",
        first.map(|i| x
            .lines()
            .skip(i.saturating_sub(12))
            .take(16)
            .collect::<Vec<_>>()
            .join("\n")),
        first.map(|i| y
            .lines()
            .skip(i.saturating_sub(12))
            .take(16)
            .collect::<Vec<_>>()
            .join("\n")),
    );
}

/// Every Pod table of a generated cluster by Pod, before and after a change of the
/// rules only: the `metrics` container port moves (named ports resolve elsewhere, the
/// peers stay), and policy ports change (DNS, a named port, a numbered one).
fn rule_change_pairs(seed: u64) -> Vec<(String, Ruleset, Ruleset)> {
    let text = generate(&SynthParams {
        namespaces: 4,
        pods: 30,
        policies: 16,
        seed,
    });
    let changed = text
        .replace("containerPort: 9090", "containerPort: 9190")
        .replace("port: 53\n", "port: 5353\n")
        .replace("port: metrics\n", "port: http\n")
        .replace("port: 8443\n", "port: 8444\n");
    assert_ne!(text, changed, "the change must change something");
    let mut before = Vec::new();
    let mut after = Vec::new();
    let (m, g) = compile_text(&text);
    tables_of("before", &m, &g, &mut before);
    let (m, g) = compile_text(&changed);
    tables_of("after", &m, &g, &mut after);
    before
        .into_iter()
        .zip(after)
        .map(|((name, a), (_, b))| (name, a, b))
        .collect()
}

/// A rule change that keeps the peer maps (their element changes sent in the same
/// transaction) gives exactly the table a fresh load of the new ruleset gives: for a
/// change of rules only on every table of two generated clusters (both ways), and for
/// random pairs of every case's and cluster's tables (maps and rules both change).
/// See: #12
#[test]
fn a_rewrite_keeping_peer_maps_equals_a_fresh_load() {
    if !kernel::available("a_rewrite_keeping_peer_maps_equals_a_fresh_load") {
        return;
    }
    let ns = Namespaces::new("nlkeep", 2);
    let (kept, fresh) = (&ns.0[0], &ns.0[1]);
    let mut socket = NftSocket::open(kept).unwrap();
    let mut fresh_socket = NftSocket::open(fresh).unwrap();
    let mut check = |a: &Ruleset, b: &Ruleset, what: &str| -> usize {
        load_netlink(&mut socket, a);
        let n = rewrite_netlink(&mut socket, a, b);
        let _ = nft::delete_table(fresh, "inet", "netpol");
        load_netlink(&mut fresh_socket, b);
        assert_same_table(kept, fresh, what);
        n
    };
    // 1. Rules changed, peers the same.
    let mut rule_changes = 0;
    let mut kept_maps = 0;
    for seed in [1, 2] {
        for (name, a, b) in rule_change_pairs(seed) {
            if a == b {
                continue;
            }
            rule_changes += 1;
            kept_maps += check(&a, &b, &format!("seed {seed} {name} forth"));
            kept_maps += check(&b, &a, &format!("seed {seed} {name} back"));
        }
    }
    assert!(
        rule_changes >= 20 && kept_maps >= 20,
        "too few rule changes ({rule_changes}) or kept maps ({kept_maps})"
    );
    // 2. Random pairs: anything may change.
    let tables = all_tables();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        usize::try_from(x % tables.len() as u64).unwrap()
    };
    for _ in 0..150 {
        let (a, b) = (&tables[next()], &tables[next()]);
        kept_maps += check(&a.1, &b.1, &format!("{} -> {}", a.0, b.0));
    }
    eprintln!("rewrites: {rule_changes} rule changes, {kept_maps} maps kept");
}

/// A rewrite conditional on a generation that is no longer the namespace's (something
/// else committed) is refused whole: nothing changes. See: #12
#[test]
fn a_rewrite_after_a_foreign_commit_is_refused_and_changes_nothing() {
    if !kernel::available("a_rewrite_after_a_foreign_commit_is_refused_and_changes_nothing") {
        return;
    }
    let ns = Namespaces::new("nlkst", 1);
    let pairs = rule_change_pairs(1);
    let (_, a, b) = pairs
        .iter()
        .find(|(_, a, b)| a != b && a.maps.iter().any(|m| !m.elements.is_empty()))
        .unwrap();
    let mut s = NftSocket::open(&ns.0[0]).unwrap();
    load_netlink(&mut s, a);
    let g = s.generation().unwrap();
    // A foreign commit: an unrelated table.
    nft::apply(&ns.0[0], "add table inet other\n").unwrap();
    let before = state(&ns.0[0]);
    let after_foreign = s.generation().unwrap();
    assert_ne!(after_foreign, g);
    let old: BTreeSet<PeerEntry> = a.peer_entries().into_iter().collect();
    let new: BTreeSet<PeerEntry> = b.peer_entries().into_iter().collect();
    let err = s
        .rewrite_table("netpol", b, &old, &new, &element_ops(&old, &new), g)
        .unwrap_err();
    assert!(matches!(err, NfnlError::Stale { .. }), "{err}");
    assert_eq!(s.generation().unwrap(), after_foreign);
    assert_eq!(state(&ns.0[0]), before);
}

/// The netlink fingerprint the agent compares a table with after a foreign commit (no
/// `nft list`): equal for the same table loaded in two namespaces and after a foreign
/// commit that leaves the table alone; changed by a rule added, an element deleted, a
/// chain flushed, the table made dormant. See: #12
#[test]
fn the_netlink_fingerprint_sees_tampering_and_nothing_else() {
    if !kernel::available("the_netlink_fingerprint_sees_tampering_and_nothing_else") {
        return;
    }
    let ns = Namespaces::new("nlfp", 2);
    let (one, two) = (&ns.0[0], &ns.0[1]);
    let pairs = rule_change_pairs(1);
    let (name, rs, _) = pairs
        .iter()
        .find(|(_, a, _)| {
            a.maps.iter().any(|m| !m.elements.is_empty())
                && a.chains.iter().any(|c| c.base.is_some_and(|b| !b.accept))
        })
        .unwrap();
    let mut s1 = NftSocket::open(one).unwrap();
    let mut s2 = NftSocket::open(two).unwrap();
    assert_eq!(s1.fingerprint("netpol").unwrap(), None, "no table");
    let fresh = |s: &mut NftSocket, ns: &str| {
        let _ = nft::delete_table(ns, "inet", "netpol");
        load_netlink(s, rs);
        s.fingerprint("netpol").unwrap().unwrap()
    };
    let f = fresh(&mut s1, one);
    assert_eq!(
        f,
        fresh(&mut s2, two),
        "{name}: same table, same fingerprint"
    );
    assert_eq!(s1.fingerprint("netpol").unwrap(), Some(f), "stable");
    nft::apply(one, "add table inet other\n").unwrap();
    assert_eq!(
        s1.fingerprint("netpol").unwrap(),
        Some(f),
        "a foreign table"
    );
    let map = rs.maps.iter().find(|m| !m.elements.is_empty()).unwrap();
    let e = &map.elements[0];
    let element = if e.first == e.last {
        e.first.to_string()
    } else {
        format!("{}-{}", e.first, e.last)
    };
    let chain = &rs.chains.iter().find(|c| !c.rules.is_empty()).unwrap().name;
    let tampers = [
        format!("add rule inet netpol {chain} accept\n"),
        format!("delete element inet netpol {} {{ {element} }}\n", map.name),
        format!("flush chain inet netpol {chain}\n"),
        "add table inet netpol { flags dormant; }\n".to_owned(),
    ];
    for tamper in &tampers {
        let f = fresh(&mut s1, one);
        nft::apply(one, tamper).unwrap_or_else(|e| panic!("{tamper}: {e}"));
        assert_ne!(
            s1.fingerprint("netpol").unwrap(),
            Some(f),
            "{name}: not seen: {tamper}"
        );
    }
}

#[test]
fn a_bad_table_is_refused_whole_and_changes_nothing() {
    if !kernel::available("a_bad_table_is_refused_whole_and_changes_nothing") {
        return;
    }
    let ns = Namespaces::new("nlbad", 1);
    let mut s = NftSocket::open(&ns.0[0]).unwrap();
    let tables = all_tables();
    let (_, good) = tables
        .iter()
        .find(|(_, rs)| rs.maps.iter().any(|m| !m.elements.is_empty()))
        .unwrap();
    load_netlink(&mut s, good);
    let (before, generation) = (state(&ns.0[0]), s.generation().unwrap());

    // Refused before sending: an over-long chain name.
    let mut long = good.clone();
    long.chains[0].name = "c".repeat(300);
    let err = s.replace_table("netpol", &long).unwrap_err();
    assert!(matches!(err, NfnlError::Invalid { .. }), "{err}");
    assert!(
        netpol_common::ErrorChain(&err)
            .to_string()
            .contains("not a valid nf_tables name"),
        "{}",
        netpol_common::ErrorChain(&err)
    );

    // Refused by the kernel: a map element jumping to a chain that does not exist. The
    // message before it (flushes, set declarations) were in the same batch: undone.
    let mut dangling = good.clone();
    let e = dangling
        .maps
        .iter_mut()
        .find_map(|m| m.elements.first_mut())
        .unwrap();
    e.verdict = MapVerdict::Jump("no_such_chain".into());
    let err = s.replace_table("netpol", &dangling).unwrap_err();
    let NfnlError::RefusedAt { what, .. } = &err else {
        panic!("{}", netpol_common::ErrorChain(&err));
    };
    assert!(what.starts_with("elements of map "), "{what}");

    // Nothing changed: no commit, same table.
    assert_eq!(s.generation().unwrap(), generation);
    assert_eq!(state(&ns.0[0]), before);
}

/// A Pod on lab host `h`.
fn lab_pod(name: &str, h: &Host) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: x\n  labels: {{app: {name}}}\nspec:\n  containers: [{{name: c, ports: [{{containerPort: 80}}]}}]\nstatus:\n  phase: Running\n  podIP: {ip4}\n  podIPs: [{{ip: {ip4}}}, {{ip: '{ip6}'}}]\n---\n",
        ip4 = v4(h),
        ip6 = v6(h),
    )
}

/// b's table with `policy` (a NetworkPolicy selecting b) among the lab's Pods.
fn compile_b(pods: &str, policy: &str) -> Ruleset {
    let (model, graph) = compile_text(&format!("{pods}{policy}"));
    let b = model
        .endpoints
        .iter()
        .find(|e| e.key().ends_with("x/b"))
        .unwrap()
        .id;
    compile_pod_with_audit(&model, &graph, None, b, &RulesetOptions::default())
}

#[test]
fn an_isolated_pod_stays_closed_while_its_table_is_replaced_over_netlink() {
    if !kernel::available("an_isolated_pod_stays_closed_while_its_table_is_replaced_over_netlink") {
        return;
    }
    isolated_pod_stays_closed("nlpkt", false);
}

/// The same with the rules changed by rewrites that keep the peer maps (their element
/// changes in the same transaction). See: #12
#[test]
fn an_isolated_pod_stays_closed_while_its_rules_change_with_kept_maps() {
    if !kernel::available("an_isolated_pod_stays_closed_while_its_rules_change_with_kept_maps") {
        return;
    }
    isolated_pod_stays_closed("nlkpkt", true);
}

fn isolated_pod_stays_closed(tag: &str, rewrite: bool) {
    let lab = Topology::build(&kernel::prefix(tag), &kernel::dual_stack(3)).unwrap();
    let [ha, hb, hc] = [&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]];
    let pods = lab_pod("a", ha) + &lab_pod("b", hb) + &lab_pod("c", hc);
    let policy = |extra: &str| {
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: c}}}}}}]\n    ports: [{{port: 80}}]\n{extra}"
        )
    };
    // Two isolated tables for b: c on port 80; and c on port 80 plus a block on 443 (a
    // second class chain and set, created and deleted by every other replace).
    let tables = [
        compile_b(&pods, &policy("")),
        compile_b(
            &pods,
            &policy("  - from: [{ipBlock: {cidr: 192.0.2.0/24}}]\n    ports: [{port: 443}]\n"),
        ),
    ];
    assert_ne!(tables[0].chains.len(), tables[1].chains.len());
    let mut socket = NftSocket::open(&hb.netns).unwrap();
    load_netlink(&mut socket, &tables[0]);
    let prober = Arc::new(
        Prober::start(
            &lab,
            &[Listener::new(hb.name.clone(), ProbeProtocol::Tcp, 80)],
        )
        .unwrap(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let bad: Arc<Mutex<Vec<String>>> = Arc::default();
    let probes = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    // a is never allowed: a probe must never connect. c always is: at its first SYN.
    for (from, allowed) in [(ha.name.clone(), false), (hc.name.clone(), true)] {
        for to in [v4(hb), v6(hb)] {
            let (p, s, bad, n, from) = (
                prober.clone(),
                stop.clone(),
                bad.clone(),
                probes.clone(),
                from.clone(),
            );
            threads.push(std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(2));
                    // A denied SYN is dropped at once: a short wait sends many of them.
                    let timeout = if allowed {
                        ALLOW
                    } else {
                        Duration::from_millis(50)
                    };
                    let r = p.probe(&from, to, ProbeProtocol::Tcp, 80, timeout).unwrap();
                    n.fetch_add(1, Ordering::Relaxed);
                    let wrong = if allowed {
                        !r.connected || r.elapsed >= Duration::from_secs(1)
                    } else {
                        r.connected
                    };
                    if wrong {
                        bad.lock().unwrap().push(format!(
                            "{from} -> {to}: {} after {:?}",
                            r.detail, r.elapsed
                        ));
                    }
                }
            }));
        }
    }
    let replaces = 400;
    for i in 0..replaces {
        let (from, to) = (&tables[i % 2], &tables[(i + 1) % 2]);
        if rewrite {
            let kept = rewrite_netlink(&mut socket, from, to);
            assert!(kept > 0, "the rewrite kept no map");
        } else {
            load_netlink(&mut socket, to);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let probes = probes.load(Ordering::Relaxed);
    // Each batch was one commit, or two when it first declared the new class set.
    eprintln!("{replaces} netlink replaces of b's table, {probes} probes");
    assert!(probes >= 100, "too few probes ran: {probes}");
    let bad = bad.lock().unwrap();
    assert!(
        bad.is_empty(),
        "{} wrong probes: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}
