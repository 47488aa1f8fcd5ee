use enforcer::nft::{self, NftError};
use netpol_lab::probe::Prober;
use netpol_lab::topology::Topology;
use policy_compiler::Protocol;

use crate::kernel;
use testkit::kernel::{ALLOW, DENY, INGRESS_TCP_80, listeners, v4, v6};

/// Egress drops TCP 81, UDP 80 and SCTP 80; everything else may leave.
const EGRESS_DROPS: &str = "
table inet netpol {
    chain egress {
        type filter hook output priority 0; policy accept;
        tcp dport 81 drop
        udp dport 80 drop
        sctp dport 80 drop
    }
}
";

/// Drops what conntrack finds invalid (e.g. an SCTP packet with a bad CRC32c or a wrong
/// verification tag) and counts what it accepts as new SCTP. Conntrack here does check
/// the CRC32c: writing the checksum big-endian instead makes this test fail.
const CONNTRACK_STRICT: &str = "
table inet netpol {
    counter sctp_new {}
    counter invalid {}
    chain ingress {
        type filter hook input priority 0; policy accept;
        ct state invalid counter name invalid drop
        ct state new meta l4proto sctp counter name sctp_new
    }
    chain egress {
        type filter hook output priority 0; policy accept;
        ct state invalid counter name invalid drop
    }
}
";

fn check_matrix(
    prober: &Prober,
    from: &str,
    to: &[std::net::IpAddr],
    want: &[(Protocol, u16, bool)],
) {
    for &addr in to {
        for &(p, port, allowed) in want {
            let timeout = if allowed { ALLOW } else { DENY };
            let r = prober.probe(from, addr, p, port, timeout).unwrap();
            assert_eq!(
                r.connected, allowed,
                "{from} -> {addr}:{port} {p}: {}",
                r.detail
            );
        }
    }
}

#[test]
fn ingress_ruleset_allows_only_tcp_80() {
    if !kernel::available("ingress_ruleset_allows_only_tcp_80") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("ingr"), &kernel::dual_stack(3)).unwrap();
    let server = &lab.hosts()[1];
    nft::apply(&server.netns, INGRESS_TCP_80).unwrap();
    let json = nft::list_json(&server.netns).unwrap();
    assert!(json.to_string().contains("\"netpol\""), "{json}");
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &[80, 81])).unwrap();
    let want = [
        (Protocol::Tcp, 80, true),
        (Protocol::Tcp, 81, false),
        (Protocol::Udp, 80, false),
        (Protocol::Sctp, 80, false),
    ];
    check_matrix(&prober, "h0", &[v4(server), v6(server)], &want);
    // The unfiltered host still takes everything.
    let open = [
        (Protocol::Tcp, 81, true),
        (Protocol::Udp, 80, true),
        (Protocol::Sctp, 80, true),
    ];
    check_matrix(
        &prober,
        "h0",
        &[v4(&lab.hosts()[2]), v6(&lab.hosts()[2])],
        &open,
    );
    // Replacing the ruleset: flush opens everything again.
    nft::flush(&server.netns).unwrap();
    check_matrix(&prober, "h0", &[v4(server), v6(server)], &open);
}

#[test]
fn egress_ruleset_drops_at_the_client() {
    if !kernel::available("egress_ruleset_drops_at_the_client") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("egr"), &kernel::dual_stack(3)).unwrap();
    let client = &lab.hosts()[0];
    nft::apply(&client.netns, EGRESS_DROPS).unwrap();
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &[80, 81])).unwrap();
    let want = [
        (Protocol::Tcp, 80, true),
        (Protocol::Tcp, 81, false),
        (Protocol::Udp, 80, false),
        (Protocol::Udp, 81, true),
        (Protocol::Sctp, 80, false),
        (Protocol::Sctp, 81, true),
    ];
    let server = &lab.hosts()[1];
    check_matrix(&prober, "h0", &[v4(server), v6(server)], &want);
    // Other clients are not affected.
    check_matrix(
        &prober,
        "h2",
        &[v4(server)],
        &[(Protocol::Udp, 80, true), (Protocol::Sctp, 80, true)],
    );
}

#[test]
fn sctp_probe_packets_are_valid_for_conntrack() {
    if !kernel::available("sctp_probe_packets_are_valid_for_conntrack") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("ctsctp"), &kernel::dual_stack(2)).unwrap();
    for h in lab.hosts() {
        nft::apply(&h.netns, CONNTRACK_STRICT).unwrap();
    }
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &[80])).unwrap();
    let server = &lab.hosts()[1];
    check_matrix(
        &prober,
        "h0",
        &[v4(server), v6(server)],
        &[(Protocol::Sctp, 80, true)],
    );
    let listing = nft::list_text(&server.netns).unwrap();
    assert!(
        listing.contains("counter invalid {\n\t\tpackets 0"),
        "{listing}"
    );
    assert!(
        !listing.contains("counter sctp_new {\n\t\tpackets 0"),
        "{listing}"
    );
}

#[test]
fn rejected_ruleset_reports_nft_stderr_and_changes_nothing() {
    if !kernel::available("rejected_ruleset_reports_nft_stderr_and_changes_nothing") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("bad"), &kernel::dual_stack(1)).unwrap();
    let ns = &lab.hosts()[0].netns;
    nft::apply(ns, INGRESS_TCP_80).unwrap();
    let before = nft::list_text(ns).unwrap();
    // Valid first table, broken second one: the whole batch must be refused.
    let bad = "flush ruleset\ntable inet other { }\ntable inet netpol { chain c { tcp dport bogus accept } }\n";
    let err = nft::apply(ns, bad).unwrap_err();
    assert!(matches!(err, NftError::Rejected { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(ns.as_str()) && msg.contains("bogus"), "{msg}");
    assert_eq!(
        nft::list_text(ns).unwrap(),
        before,
        "failed apply must not change rules"
    );
    assert!(nft::check(ns, INGRESS_TCP_80).is_ok());
}

/// Compiled tables replace each other in place through the applier, in every
/// transition (open, isolated, another peer, another port, open again), and the
/// kernel then holds exactly the last one: no stale chain, set or map, no policy drop.
/// See: #12
#[test]
fn compiled_tables_replace_each_other_in_place() {
    use enforcer::applier::{Applier, NftApplier};
    use enforcer::state::PodKey;
    use policy_compiler::ruleset::{RulesetOptions, compile_pod};
    use policy_compiler::{AllowGraph, Model, SourceText, load};
    if !kernel::available("compiled_tables_replace_each_other_in_place") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("inpl"), &kernel::dual_stack(1)).unwrap();
    let netns = lab.hosts()[0].netns.clone();
    let pods = "apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.12}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x, labels: {app: c}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIPs: [{ip: 10.0.0.13}, {ip: 'fd00::13'}]}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\nspec: {containers: [{name: c}]}\nstatus: {phase: Running, podIP: 10.0.0.11}\n";
    let policy = |from: &str, port: u16| {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b, namespace: x}}\nspec:\n  podSelector: {{matchLabels: {{app: b}}}}\n  ingress: [{{from: [{{podSelector: {{matchExpressions: [{{key: app, operator: In, values: [{from}]}}]}}}}], ports: [{{port: {port}}}]}}]\n"
        )
    };
    let compiled = |extra: &str| {
        let text = format!("{pods}{extra}");
        let (inputs, _) = load(&[SourceText {
            name: "t.yaml",
            text: &text,
        }]);
        let (model, _) = Model::build(&inputs);
        let graph = AllowGraph::build(&model);
        let b = model.endpoint_by_key("x/b").unwrap();
        compile_pod(&model, &graph, b, &RulesetOptions::default()).to_nft()
    };
    let pod = PodKey::new("x", "b");
    let fresh = &lab.hosts()[0].netns;
    let states = [
        String::new(),
        policy("c", 80),
        policy("c, a", 80),
        policy("c", 81),
        String::new(),
        policy("a", 80),
    ];
    for (i, s) in states.iter().enumerate() {
        let text = compiled(s);
        NftApplier
            .apply(&pod, &netns, &text)
            .unwrap_or_else(|e| panic!("state {i}: {}", netpol_common::ErrorChain(&e)));
        let listed = nft::list_table(&netns, "inet", "netpol").unwrap();
        assert!(!listed.contains("policy drop"), "state {i}: {listed}");
        // The same objects as the compiled table loaded into an empty namespace.
        let names = |l: &str| -> Vec<String> {
            let mut v: Vec<String> = l
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.starts_with("chain ") || l.starts_with("map ") || l.starts_with("set ")
                })
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        let want: Vec<String> = {
            let mut v: Vec<String> = text
                .lines()
                .map(str::trim)
                .filter(|l| {
                    l.starts_with("chain ") || l.starts_with("map ") || l.starts_with("set ")
                })
                .map(str::to_owned)
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&listed), want, "state {i}: {listed}");
        let _ = fresh;
        if text.contains("10.0.0.13") {
            assert!(listed.contains("10.0.0.13"), "state {i}: {listed}");
        }
        if !s.contains("a") || s.is_empty() {
            assert!(
                !listed.contains("10.0.0.11"),
                "state {i}: stale element: {listed}"
            );
        }
    }
}
