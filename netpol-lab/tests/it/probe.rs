use std::time::{Duration, Instant};

use enforcer::nft;
use netpol_lab::probe::{ProbeSpec, Prober};
use netpol_lab::topology::Topology;
use policy_compiler::Protocol;
use testkit::kernel::{self, ALLOW, DENY, listeners, v4, v6};

#[test]
fn all_protocols_connect_over_v4_and_v6_without_rules() {
    if !kernel::available("all_protocols_connect_over_v4_and_v6_without_rules") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("open"), &kernel::dual_stack(3)).unwrap();
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &[80])).unwrap();
    let mut specs = Vec::new();
    for from in lab.hosts() {
        for to in lab.hosts() {
            for addr in [v4(to), v6(to)] {
                for p in Protocol::ALL {
                    specs.push(ProbeSpec::new(from.name.clone(), addr, p, 80));
                }
            }
        }
    }
    let start = Instant::now();
    let results = prober.probe_all(&specs, ALLOW);
    eprintln!("{} open probes in {:?}", specs.len(), start.elapsed());
    for (spec, r) in specs.iter().zip(results) {
        let r = r.unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(r.connected, "{spec}: {}", r.detail);
    }
    // A port without a server: TCP is refused at once, UDP gets ICMP port unreachable,
    // SCTP gets no answer.
    let h1 = &lab.hosts()[1];
    for (addr, p) in [
        (v4(h1), Protocol::Tcp),
        (v6(h1), Protocol::Udp),
        (v4(h1), Protocol::Sctp),
    ] {
        let r = prober.probe("h0", addr, p, 9, DENY).unwrap();
        assert!(!r.connected, "{p} to closed port: {}", r.detail);
        if p != Protocol::Sctp {
            assert!(r.detail.starts_with("refused"), "{p}: {}", r.detail);
        }
    }
    assert!(
        prober
            .probe("nosuch", v4(h1), Protocol::Tcp, 80, DENY)
            .is_err()
    );
    prober.stop().unwrap();
}

/// 9 hosts, TCP/UDP/SCTP on ports 80 and 81 each; odd hosts accept only TCP 80.
/// Probes every ordered pair (self included) on both ports and all protocols over IPv4
/// and IPv6: 9 x 9 x 2 x 3 x 2 = 972 probes.
#[test]
fn nine_host_matrix_is_fast_and_matches_the_rules() {
    if !kernel::available("nine_host_matrix_is_fast_and_matches_the_rules") {
        return;
    }
    let lab = Topology::build(&kernel::prefix("mx"), &kernel::dual_stack(9)).unwrap();
    for (i, h) in lab.hosts().iter().enumerate() {
        if i % 2 == 1 {
            nft::apply(&h.netns, kernel::INGRESS_TCP_80).unwrap();
        }
    }
    let ports = [80, 81];
    let prober = Prober::start(&lab, &listeners(lab.hosts(), &ports)).unwrap();
    let mut specs = Vec::new();
    let mut expected = Vec::new();
    for from in lab.hosts() {
        for (i, to) in lab.hosts().iter().enumerate() {
            for port in ports {
                for (p, addr) in Protocol::ALL
                    .into_iter()
                    .flat_map(|p| [(p, v4(to)), (p, v6(to))])
                {
                    specs.push(ProbeSpec::new(from.name.clone(), addr, p, port));
                    let allowed =
                        i % 2 == 0 || from.name == to.name || (p == Protocol::Tcp && port == 80);
                    expected.push(allowed);
                }
            }
        }
    }
    let start = Instant::now();
    let results = prober.probe_all(&specs, DENY);
    let took = start.elapsed();
    let denied = expected.iter().filter(|a| !**a).count();
    eprintln!(
        "9-host matrix: {} probes ({denied} denied, timeout {DENY:?}) in {took:?}",
        specs.len()
    );
    for ((spec, r), want) in specs.iter().zip(results).zip(expected) {
        let r = r.unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(r.connected, want, "{spec}: {}", r.detail);
    }
    assert!(took < Duration::from_secs(20), "matrix took {took:?}");
}
