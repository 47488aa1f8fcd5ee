//! Drop reports from a real kernel: rulesets that `log group 100` and drop, an NFLOG
//! listener in the dropping namespace, real packets from the prober.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use enforcer::drops::aggregate::{Aggregator, AggregatorConfig, DropSummary};
use enforcer::drops::{DropEvent, DropListener, DropsError, L4Proto, NflogConfig};
use enforcer::nft;
use netpol_lab::probe::Prober;
use netpol_lab::topology::Topology;
use policy_compiler::Direction;
use policy_compiler::Protocol;

use crate::kernel;
use testkit::kernel::{DENY, v4, v6};

/// The ingress chain of Pod x/b: TCP, UDP and SCTP to port 81 are logged and dropped.
const B_INGRESS: &str = r#"
table inet netpol {
    chain ingress {
        type filter hook input priority filter; policy accept;
        ct state established,related accept
        iif lo accept
        tcp dport 81 counter log group 100 prefix "netpol:x/b:ingress " drop
        udp dport 81 counter log group 100 prefix "netpol:x/b:ingress " drop
        sctp dport 81 counter log group 100 prefix "netpol:x/b:ingress " drop
    }
}
"#;

/// The egress chain of Pod x/a: TCP and UDP to port 82 are logged and dropped.
const A_EGRESS: &str = r#"
table inet netpol {
    chain egress {
        type filter hook output priority filter; policy accept;
        ct state established,related accept
        oif lo accept
        tcp dport 82 counter log group 100 prefix "netpol:x/a:egress " drop
        udp dport 82 counter log group 100 prefix "netpol:x/a:egress " drop
    }
}
"#;

/// Waits up to 3 s for an event matching `want`; returns it and everything else seen.
fn wait_for(
    listener: &DropListener,
    want: impl Fn(&DropEvent) -> bool,
) -> (Option<DropEvent>, Vec<DropEvent>) {
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match listener.recv_timeout(left) {
            Some(ev) if want(&ev) => return (Some(ev), seen),
            Some(ev) => seen.push(ev),
            None => break,
        }
    }
    (None, seen)
}

/// Feeds everything the listener delivers within 500 ms of quiet into an aggregator with
/// a 10 s window (on a fake clock), checks nothing is emitted early, and flushes.
fn aggregate(listener: &DropListener) -> Vec<DropSummary> {
    let mut agg = Aggregator::new(AggregatorConfig {
        window: Duration::from_secs(10),
        max_keys: 16,
    });
    let t0 = Instant::now();
    let mut n = 0u64;
    while let Some(ev) = listener.recv_timeout(Duration::from_millis(500)) {
        agg.record(&ev, t0 + Duration::from_millis(n));
        n += 1;
    }
    assert!(agg.flush(t0 + Duration::from_secs(9)).summaries.is_empty());
    let flushed = agg.flush(t0 + Duration::from_secs(10) + Duration::from_millis(n));
    assert_eq!(flushed.suppressed, 0);
    assert_eq!(flushed.summaries.iter().map(|s| s.count).sum::<u64>(), n);
    flushed.summaries
}

/// Probes `from -> to:port` (expecting it blocked) and returns the matching drop event.
#[allow(clippy::too_many_arguments)]
fn probe_and_expect(
    prober: &Prober,
    listener: &DropListener,
    from: &str,
    src: IpAddr,
    to: IpAddr,
    protocol: Protocol,
    port: u16,
    dir: Direction,
) -> DropEvent {
    let started = SystemTime::now();
    let r = prober.probe(from, to, protocol, port, DENY).unwrap();
    assert!(
        !r.connected,
        "{from} -> {to}:{port} {protocol}: {}",
        r.detail
    );
    let want = match protocol {
        Protocol::Tcp => L4Proto::Tcp,
        Protocol::Udp => L4Proto::Udp,
        Protocol::Sctp => L4Proto::Sctp,
    };
    let (ev, seen) = wait_for(listener, |e| {
        e.src_ip == src && e.dst_ip == to && e.protocol == want && e.dst_port == Some(port)
    });
    let ev = ev.unwrap_or_else(|| {
        panic!(
            "no drop event for {src} -> {to}:{port} {protocol} in {}; saw {seen:?}; stats {:?}",
            listener.netns(),
            listener.stats()
        )
    });
    assert_eq!(ev.netns, listener.netns());
    assert_eq!(ev.prefix.direction, dir);
    assert!(ev.src_port.is_some_and(|p| p != 0), "{ev:?}");
    let slack = Duration::from_secs(5);
    assert!(
        ev.ts + slack >= started && ev.ts <= SystemTime::now() + slack,
        "timestamp {:?} far from the probe at {started:?}",
        ev.ts
    );
    ev
}

#[test]
fn ingress_drops_are_reported_with_addresses_ports_and_prefix() {
    if !kernel::available("ingress_drops_are_reported_with_addresses_ports_and_prefix") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("dropin"), &kernel::dual_stack(2)).unwrap();
    let (a, b) = (&lab.hosts()[0], &lab.hosts()[1]);
    nft::apply(&b.netns, B_INGRESS).unwrap();
    let listener = DropListener::start(&b.netns, &NflogConfig::default()).unwrap();
    let prober = Prober::start(&lab, &[]).unwrap();

    for (src, dst, protocol) in [
        (v4(a), v4(b), Protocol::Tcp),
        (v6(a), v6(b), Protocol::Tcp),
        (v4(a), v4(b), Protocol::Udp),
        (v6(a), v6(b), Protocol::Udp),
        (v4(a), v4(b), Protocol::Sctp),
    ] {
        let ev = probe_and_expect(
            &prober,
            &listener,
            &a.name,
            src,
            dst,
            protocol,
            81,
            Direction::Ingress,
        );
        assert_eq!(ev.prefix.namespace, "x");
        assert_eq!(ev.prefix.pod, "b");
    }
    // The UDP client resends every 100 ms into the drop: several drops, one summary.
    // (First forget the resent SCTP INITs and TCP SYNs of the probes above.)
    while listener.recv_timeout(Duration::from_millis(300)).is_some() {}
    let r = prober
        .probe(
            &a.name,
            v6(b),
            Protocol::Udp,
            81,
            Duration::from_millis(700),
        )
        .unwrap();
    assert!(!r.connected, "{}", r.detail);
    let summaries = aggregate(&listener);
    let [s] = summaries.as_slice() else {
        panic!("want one summary: {summaries:?}")
    };
    assert!(s.count >= 3, "{s:?}");
    assert_eq!((s.key.src_ip, s.key.dst_ip), (v6(a), v6(b)));
    assert_eq!((s.key.protocol, s.key.dst_port), (L4Proto::Udp, Some(81)));
    assert_eq!(s.key.pod.pod_key(), "x/b");

    // Traffic that is not dropped is not reported (port 80 has no log rule).
    let _ = prober
        .probe(&a.name, v4(b), Protocol::Tcp, 80, DENY)
        .unwrap();
    let (ev, _) = wait_for(&listener, |e| e.dst_port == Some(80));
    assert!(ev.is_none(), "{ev:?}");

    let stats = listener.stop().unwrap();
    assert!(stats.events >= 5, "{stats:?}");
    assert_eq!((stats.malformed, stats.foreign), (0, 0), "{stats:?}");
}

#[test]
fn egress_drops_are_reported_in_the_source_namespace_and_aggregate() {
    if !kernel::available("egress_drops_are_reported_in_the_source_namespace_and_aggregate") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("dropeg"), &kernel::dual_stack(2)).unwrap();
    let (a, b) = (&lab.hosts()[0], &lab.hosts()[1]);
    nft::apply(&a.netns, A_EGRESS).unwrap();
    let listener = DropListener::start(&a.netns, &NflogConfig::default()).unwrap();
    let prober = Prober::start(&lab, &[]).unwrap();

    let ev = probe_and_expect(
        &prober,
        &listener,
        &a.name,
        v4(a),
        v4(b),
        Protocol::Tcp,
        82,
        Direction::Egress,
    );
    assert_eq!(ev.prefix.pod_key(), "x/a");
    probe_and_expect(
        &prober,
        &listener,
        &a.name,
        v6(a),
        v6(b),
        Protocol::Tcp,
        82,
        Direction::Egress,
    );

    // Output drops fail `connect` at once (EPERM), so each probe is one drop, each from
    // a new source port: still one flow, one summary.
    for _ in 0..4 {
        let r = prober
            .probe(&a.name, v4(b), Protocol::Tcp, 82, DENY)
            .unwrap();
        assert!(!r.connected, "{}", r.detail);
    }
    let summaries = aggregate(&listener);
    let [s] = summaries.as_slice() else {
        panic!("want one summary: {summaries:?}")
    };
    assert_eq!(s.count, 4);
    assert_eq!((s.key.src_ip, s.key.dst_ip), (v4(a), v4(b)));
    assert_eq!((s.key.protocol, s.key.dst_port), (L4Proto::Tcp, Some(82)));
    assert_eq!(s.key.pod.direction, Direction::Egress);
    listener.stop().unwrap();
}

#[test]
fn one_listener_per_group_and_namespace() {
    if !kernel::available("one_listener_per_group_and_namespace") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("dropbz"), &kernel::dual_stack(2)).unwrap();
    let (a, b) = (&lab.hosts()[0], &lab.hosts()[1]);
    let cfg = NflogConfig::default();
    let first = DropListener::start(&a.netns, &cfg).unwrap();
    // Groups are per namespace: B may bind the same group.
    let other_ns = DropListener::start(&b.netns, &cfg).unwrap();
    // The same group twice in one namespace is refused by the kernel (EPERM: the group
    // belongs to another socket).
    let err = DropListener::start(&a.netns, &cfg).unwrap_err();
    assert!(
        matches!(&err, DropsError::Bind { group: 100, source, .. } if source.raw_os_error() == Some(1)),
        "{err:?}"
    );
    // Closing the socket releases the group.
    first.stop().unwrap();
    let again = DropListener::start(&a.netns, &cfg).unwrap();
    drop(again);
    drop(other_ns);
    assert!(matches!(
        DropListener::start("npnosuchns", &cfg),
        Err(DropsError::Netns { .. })
    ));
}
