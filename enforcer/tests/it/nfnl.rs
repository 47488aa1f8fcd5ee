//! nf_tables over netlink against the real kernel: element updates in one transaction
//! give the same table as a full replace; a stale generation changes nothing; events
//! announce commits. See: #12

use std::collections::BTreeSet;
use std::net::IpAddr;

use enforcer::nfnl::{ElementOp, EventSocket, NfnlError, NftSocket};
use enforcer::nft;
use enforcer::plan::{element_ops, normalise_listing};
use netpol_lab::topology::Topology;
use policy_compiler::ruleset::{Family, MapVerdict, PeerEntry};

use crate::kernel;

/// A table with the two interval maps and a class chain, elements from `entries`.
fn table(entries: &[PeerEntry]) -> String {
    let mut maps = String::new();
    for (name, ty) in [("ingress_v4", "ipv4_addr"), ("ingress_v6", "ipv6_addr")] {
        let elems: Vec<String> = entries
            .iter()
            .filter(|e| e.map == name)
            .map(|e| {
                let verdict = match &e.verdict {
                    MapVerdict::Accept => "accept".to_owned(),
                    MapVerdict::Jump(c) => format!("jump {c}"),
                };
                format!("{}-{} : {verdict}", e.first, e.last)
            })
            .collect();
        let elements = if elems.is_empty() {
            String::new()
        } else {
            format!("elements = {{ {} }}", elems.join(", "))
        };
        maps.push_str(&format!(
            "map {name} {{\ntype {ty} : verdict\nflags interval\n{elements}\n}}\n"
        ));
    }
    format!(
        "add table inet netpol\ndelete table inet netpol\ntable inet netpol {{\n{maps}\
         chain ingress_class_0 {{\ntcp dport 80 accept\n}}\n\
         chain ingress {{\ntype filter hook input priority filter; policy drop;\n\
         ip saddr vmap @ingress_v4\nip6 saddr vmap @ingress_v6\n}}\n}}\n"
    )
}

fn e(map: &str, first: &str, last: &str, jump: bool) -> PeerEntry {
    let first: IpAddr = first.parse().unwrap();
    PeerEntry {
        map: map.into(),
        family: Family::of(&first),
        first,
        last: last.parse().unwrap(),
        verdict: if jump {
            MapVerdict::Jump("ingress_class_0".into())
        } else {
            MapVerdict::Accept
        },
    }
}

fn listing(netns: &str) -> String {
    normalise_listing(&nft::list_table(netns, "inet", "netpol").unwrap())
}

#[test]
fn element_updates_equal_a_full_replace_and_are_conditional() {
    if !kernel::available("element_updates_equal_a_full_replace_and_are_conditional") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("nfnl"), &kernel::dual_stack(1)).unwrap();
    let netns = lab.hosts()[0].netns.clone();
    // Edges: a range from 0.0.0.0, one to the last address, adjacent ranges, a single
    // address, IPv6, a verdict change, a range growing into its neighbour's old end.
    let before: BTreeSet<PeerEntry> = [
        e("ingress_v4", "0.0.0.0", "10.0.1.1", false),
        e("ingress_v4", "10.0.1.2", "10.0.1.2", true),
        e("ingress_v4", "10.0.1.3", "10.0.1.9", true),
        e("ingress_v4", "10.0.2.0", "255.255.255.255", false),
        e("ingress_v6", "fd00::1", "fd00::1", true),
    ]
    .into();
    let after: BTreeSet<PeerEntry> = [
        e("ingress_v4", "0.0.0.0", "10.0.1.2", false),
        e("ingress_v4", "10.0.1.3", "10.0.1.9", false),
        e("ingress_v4", "10.0.1.20", "10.0.1.20", true),
        e("ingress_v4", "10.0.3.0", "255.255.255.255", false),
        e("ingress_v6", "fd00::2", "fd00::2", true),
        e(
            "ingress_v6",
            "fd00::100",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            false,
        ),
    ]
    .into();
    let before_v: Vec<_> = before.iter().cloned().collect();
    let after_v: Vec<_> = after.iter().cloned().collect();
    nft::apply(&netns, &table(&before_v)).unwrap();
    let mut sock = NftSocket::open(&netns).unwrap();
    let g = sock.generation().unwrap();
    let ops = element_ops(&before, &after);
    assert!(ops.iter().any(|o| matches!(o, ElementOp::Delete(_))));
    let g2 = sock.update_elements("netpol", &ops, g).unwrap();
    assert_eq!(sock.generation().unwrap(), g2, "one commit");
    assert_ne!(g2, g);
    let incremental = listing(&netns);
    nft::apply(&netns, &table(&after_v)).unwrap();
    assert_eq!(incremental, listing(&netns), "same as a full replace");

    // A stale generation: refused, nothing changed.
    let now = sock.generation().unwrap();
    let back = element_ops(&after, &before);
    match sock.update_elements("netpol", &back, g) {
        Err(NfnlError::Stale {
            expected, found, ..
        }) => {
            assert_eq!((expected, found), (g, now));
        }
        other => panic!("expected Stale, got {other:?}"),
    }
    assert_eq!(incremental, listing(&netns));
    assert_eq!(sock.generation().unwrap(), now);

    // A refused batch (no such map) changes nothing either, even its valid part.
    let mut bad = back.clone();
    bad.push(ElementOp::Add(e(
        "no_such_map",
        "10.9.9.9",
        "10.9.9.9",
        false,
    )));
    let err = sock.update_elements("netpol", &bad, now).unwrap_err();
    assert!(matches!(err, NfnlError::Refused { .. }), "{err}");
    assert_eq!(incremental, listing(&netns));
    assert_eq!(sock.generation().unwrap(), now);

    // Events: a commit by anyone is announced.
    let mut events = EventSocket::open(&netns).unwrap();
    assert!(!events.drain().unwrap());
    sock.update_elements("netpol", &back, now).unwrap();
    assert!(events.drain().unwrap());
    assert!(!events.drain().unwrap());
    nft::apply(&netns, &table(&after_v)).unwrap();
    assert!(events.drain().unwrap());
}

/// The agent with the netlink applier and commit events: a peer change reaches the
/// kernel as an element update (no table replace) and traffic follows; tampering with
/// the table (a deleted element, a flush) is announced by an nftables event, found by
/// the generation and repaired without waiting for the (hour-long) verify interval; a
/// foreign commit that leaves the table alone is not drift. See: #12
#[test]
fn agent_updates_peers_in_place_and_repairs_tampering() {
    use std::sync::Arc;
    use std::time::Duration;

    use enforcer::agent::{Agent, CompiledRulesets};
    use enforcer::applier::NetlinkApplier;
    use enforcer::manifests::ManifestDir;
    use enforcer::netns;
    use netpol_lab::probe::Prober;
    use testkit::kernel::{listeners, v4};

    use crate::agent::{CONVERGE, config, metric, pod, probe, table, wait_for, write};

    if !kernel::available("agent_updates_peers_in_place_and_repairs_tampering") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("nfag"), &kernel::dual_stack(3)).unwrap();
    let [ha, hb, hc] = [&lab.hosts()[0], &lab.hosts()[1], &lab.hosts()[2]];
    let dir = tempfile::tempdir().unwrap();
    // b accepts TCP 80 from Pods labelled `peer: "yes"`; a is one, c is not (yet).
    let labelled = |name: &str, h, peer: bool| {
        let p = pod(name, h);
        if peer {
            p.replace(
                &format!("app: {name}}}"),
                &format!("app: {name}, peer: 'yes'}}"),
            )
        } else {
            p
        }
    };
    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b-ingress, namespace: x}\nspec:\n  podSelector: {matchLabels: {app: b}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {peer: 'yes'}}}]\n    ports: [{port: 80}]\n";
    write(
        dir.path(),
        "pods.yaml",
        &[
            labelled("a", ha, true),
            pod("b", hb),
            labelled("c", hc, false),
        ]
        .concat(),
    );
    write(dir.path(), "policy.yaml", POLICY);
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Commit events, and a safety-net pass too slow to matter here: every repair below
    // is driven by an nftables event.
    let cfg = enforcer::agent::AgentConfig {
        nft_events: true,
        verify_interval: Duration::from_secs(3600),
        ..config()
    };
    let agent = rt
        .block_on(Agent::start(
            cfg,
            ManifestDir::new(dir.path(), None),
            Arc::new(CompiledRulesets::default()),
            Arc::new(NetlinkApplier::new()),
        ))
        .unwrap();
    let addr = agent.local_addr().unwrap();
    wait_for("first sync", CONVERGE, || agent.ready());
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &[80])).unwrap();
    probe(&prober, "h0", hb, true);
    probe(&prober, "h2", hb, false);
    let applies = metric(addr, "netpol_applies_total");

    // c becomes a peer: b's map gains c's addresses in place.
    write(
        dir.path(),
        "pods.yaml",
        &[
            labelled("a", ha, true),
            pod("b", hb),
            labelled("c", hc, true),
        ]
        .concat(),
    );
    let c_ip = v4(hc).to_string();
    wait_for("c in b's map", CONVERGE, || {
        table(&hb.netns).is_some_and(|t| t.contains(&c_ip))
    });
    wait_for("counted as an element update", CONVERGE, || {
        metric(addr, "netpol_element_updates_total") >= 1.0
    });
    assert_eq!(metric(addr, "netpol_applies_total"), applies + 1.0);
    probe(&prober, "h2", hb, true);
    let good = table(&hb.netns).unwrap();

    // Right after the pass the agent lists the updated table while the generation
    // proves it is its own (the baseline); the probe above took longer than that.
    // Tampering: an element deleted behind the agent's back.
    netns::exec_checked(
        &hb.netns,
        "nft",
        &[
            "delete",
            "element",
            "inet",
            "netpol",
            "ingress_v4",
            &format!("{{ {c_ip} }}"),
        ],
        None,
    )
    .unwrap();
    wait_for("deleted element repaired", CONVERGE, || {
        table(&hb.netns).is_some_and(|t| t == good)
    });
    probe(&prober, "h2", hb, true);
    // A flush, once the agent has listed the replaced table (right after its pass).
    std::thread::sleep(Duration::from_millis(300));
    netns::exec_checked(
        &hb.netns,
        "nft",
        &["flush", "table", "inet", "netpol"],
        None,
    )
    .unwrap();
    wait_for("flush repaired", CONVERGE, || {
        table(&hb.netns).is_some_and(|t| t == good)
    });
    // The element deletion came after an element update: no listing to compare, the
    // table was replaced (not counted); the flush came after that replace and its
    // baseline listing: counted as drift.
    wait_for("drift counted", CONVERGE, || {
        metric(addr, "netpol_drift_repairs_total") >= 1.0
    });
    // A foreign commit that leaves the table alone is not drift.
    let repairs = metric(addr, "netpol_drift_repairs_total");
    netns::exec_checked(&hb.netns, "nft", &["add", "table", "inet", "other"], None).unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(metric(addr, "netpol_drift_repairs_total"), repairs);
    // c leaves the peers: removed in place, c is denied again.
    write(
        dir.path(),
        "pods.yaml",
        &[
            labelled("a", ha, true),
            pod("b", hb),
            labelled("c", hc, false),
        ]
        .concat(),
    );
    wait_for("c out of b's map", CONVERGE, || {
        table(&hb.netns).is_some_and(|t| !t.contains(&c_ip))
    });
    probe(&prober, "h2", hb, false);
    probe(&prober, "h0", hb, true);
    rt.block_on(agent.stop()).unwrap();
    prober.stop().unwrap();
}

/// The names of a table's chains, sets and maps come over netlink (what an in-place
/// replace deletes when the new ruleset lacks them); none without the table. See: #12
#[test]
fn table_objects_are_read_over_netlink() {
    if !kernel::available("table_objects_are_read_over_netlink") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("nfobj"), &kernel::dual_stack(1)).unwrap();
    let netns = lab.hosts()[0].netns.clone();
    let mut s = NftSocket::open(&netns).unwrap();
    assert_eq!(s.objects("netpol").unwrap(), Default::default());
    nft::apply(
        &netns,
        &table(&[e("ingress_v4", "10.0.1.3", "10.0.1.9", true)]),
    )
    .unwrap();
    nft::apply(&netns, "table inet other {\nchain x {\n}\n}\n").unwrap();
    let o = s.objects("netpol").unwrap();
    assert_eq!(o.chains, ["ingress", "ingress_class_0"]);
    assert_eq!(o.sets, ["ingress_v4", "ingress_v6"]);
}
