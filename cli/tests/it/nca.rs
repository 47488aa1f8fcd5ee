//! `netpol list` against IBM's network-config-analyzer (NCA 2.1.0): the connections NCA
//! lists for the manifests of each `testdata/nca/<case>/` are recorded in `nca.txt`
//! (`nca --connectivity -o txt_no_fw_rules`); netpol must give the same allowed port
//! set for every ordered Pod pair, and the same address ranges. See testdata/nca/README.md.
// See: #14

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::support::{netpol, repo_root};

/// An allowed set: `None` for everything, else (protocol, merged port intervals).
type Conn = Option<Vec<(String, Vec<(u32, u32)>)>>;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Party {
    Pod(String),
    Ips(Vec<(u128, u128)>),
}

fn merge<T: Ord + Copy + Into<u128>>(mut v: Vec<(T, T)>) -> Vec<(T, T)> {
    v.sort();
    let mut out: Vec<(T, T)> = Vec::new();
    for (lo, hi) in v {
        if let Some(last) = out.last_mut()
            && lo.into() <= last.1.into() + 1
        {
            if hi > last.1 {
                last.1 = hi;
            }
            continue;
        }
        out.push((lo, hi));
    }
    out
}

fn canon(ports: Vec<(String, u32, u32)>) -> Conn {
    let mut by: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for (p, lo, hi) in ports {
        by.entry(p).or_default().push((lo, hi));
    }
    Some(by.into_iter().map(|(p, v)| (p, merge(v))).collect())
}

fn ip(s: &str) -> u128 {
    match s.parse::<IpAddr>().unwrap() {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => u128::from(a),
    }
}

/// A netpol party: `ns/name` or a CIDR.
fn netpol_party(s: &str) -> Option<Party> {
    match s.split_once('/') {
        Some((addr, len)) if addr.parse::<IpAddr>().is_ok() => {
            if addr.contains(':') {
                return None; // NCA lists IPv6 only with --print_ipv6
            }
            let base = ip(addr);
            let len: u32 = len.parse().unwrap();
            let size = 1u128 << (32 - len);
            Some(Party::Ips(vec![(base, base + size - 1)]))
        }
        _ => Some(Party::Pod(s.to_string())),
    }
}

/// An NCA party: `ns/name[Pod]` or `a-b` ranges separated by commas.
fn nca_party(s: &str) -> Party {
    if let Some(open) = s.rfind('[')
        && s.ends_with(']')
    {
        return Party::Pod(s[..open].to_string());
    }
    Party::Ips(
        s.split(',')
            .map(|r| {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                (ip(a.trim()), ip(b.trim()))
            })
            .collect(),
    )
}

/// `All connections` or `{protocols:TCP, UDP,dst_ports:53},{...}`.
fn nca_conn(s: &str) -> Conn {
    if s.trim() == "All connections" {
        return None;
    }
    let mut out = Vec::new();
    for part in s.split('}') {
        let Some(body) = part.trim_start_matches(',').trim().strip_prefix('{') else {
            continue;
        };
        let (protos, ports) = body.split_once("dst_ports:").unwrap_or((body, ""));
        let protos: Vec<&str> = protos
            .trim_start_matches("protocols:")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .collect();
        let mut ranges = Vec::new();
        for r in ports.split(',').map(str::trim).filter(|r| !r.is_empty()) {
            let (lo, hi) = r.split_once('-').unwrap_or((r, r));
            ranges.push((lo.parse().unwrap(), hi.parse().unwrap()));
        }
        if ranges.is_empty() {
            ranges.push((0, 65535));
        }
        for p in protos {
            for (lo, hi) in &ranges {
                out.push((p.to_string(), *lo, *hi));
            }
        }
    }
    canon(out)
}

type Pairs = BTreeMap<(String, String), Conn>;
type Ranges = BTreeMap<(String, &'static str, Conn), Vec<(u128, u128)>>;

fn tables(conns: Vec<(Party, Party, Conn)>) -> (Pairs, Ranges) {
    let mut pairs = Pairs::new();
    let mut ranges = Ranges::new();
    for (src, dst, conn) in conns {
        match (src, dst) {
            (Party::Pod(s), Party::Pod(d)) if s != d => {
                pairs.insert((s, d), conn);
            }
            (Party::Pod(_), Party::Pod(_)) => {}
            (Party::Pod(s), Party::Ips(v)) => {
                ranges.entry((s, "egress", conn)).or_default().extend(v)
            }
            (Party::Ips(v), Party::Pod(d)) => {
                ranges.entry((d, "ingress", conn)).or_default().extend(v)
            }
            (Party::Ips(_), Party::Ips(_)) => {}
        }
    }
    for v in ranges.values_mut() {
        *v = merge(std::mem::take(v));
    }
    (pairs, ranges)
}

fn netpol_conns(path: &str) -> Vec<(Party, Party, Conn)> {
    let run = netpol(&["list", "-f", path, "-o", "json"]);
    run.expect_code(0);
    let j: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    j["connections"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| {
            let src = netpol_party(c["src"].as_str().unwrap())?;
            let dst = netpol_party(c["dst"].as_str().unwrap())?;
            let conn = if c["all"].as_bool().unwrap() {
                None
            } else {
                canon(
                    c["ports"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|p| {
                            (
                                p["protocol"].as_str().unwrap().to_string(),
                                p["from"].as_u64().unwrap() as u32,
                                p["to"].as_u64().unwrap() as u32,
                            )
                        })
                        .collect(),
                )
            };
            Some((src, dst, conn))
        })
        .collect()
}

fn nca_conns(text: &str) -> Vec<(Party, Party, Conn)> {
    text.lines()
        .filter_map(|l| {
            let (lhs, conn) = l.rsplit_once(" : ")?;
            let (src, dst) = lhs.split_once(" => ")?;
            Some((nca_party(src.trim()), nca_party(dst.trim()), nca_conn(conn)))
        })
        .collect()
}

#[test]
fn netpol_list_gives_ncas_port_sets() {
    let root = repo_root().join("testdata/nca");
    let mut cases: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("nca.txt").is_file())
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 8,
        "expected the recorded cases under {root:?}"
    );
    let mut failed = Vec::new();
    let mut pairs_checked = 0;
    for dir in &cases {
        let path = std::fs::read_to_string(dir.join("manifests")).unwrap();
        let nca = tables(nca_conns(
            &std::fs::read_to_string(dir.join("nca.txt")).unwrap(),
        ));
        let ours = tables(netpol_conns(path.trim()));
        assert!(!nca.0.is_empty(), "{dir:?}: no Pod pair in nca.txt");
        pairs_checked += nca.0.len();
        if ours.0 != nca.0 {
            let diff: Vec<String> = ours
                .0
                .keys()
                .chain(nca.0.keys())
                .filter(|k| ours.0.get(*k) != nca.0.get(*k))
                .take(5)
                .map(|k| format!("{k:?}: netpol {:?}, nca {:?}", ours.0.get(k), nca.0.get(k)))
                .collect();
            failed.push(format!("{}: Pod pairs differ: {diff:#?}", dir.display()));
        }
        if ours.1 != nca.1 {
            failed.push(format!(
                "{}: address ranges differ:\nnetpol {:?}\nnca {:?}",
                dir.display(),
                ours.1,
                nca.1
            ));
        }
    }
    assert!(pairs_checked > 800, "{pairs_checked} pairs");
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[test]
fn the_comparison_sees_a_difference() {
    // One port more on one pair must fail the comparison: it is not vacuous.
    let nca = "x/a[Pod] => x/b[Pod] : {protocols:TCP,dst_ports:80}\n";
    let a = tables(nca_conns(nca));
    let b = tables(nca_conns(
        "x/a[Pod] => x/b[Pod] : {protocols:TCP,dst_ports:80-81}\n",
    ));
    assert_ne!(a, b);
    let ranges = tables(nca_conns(
        "10.0.0.0-10.0.0.255,10.0.1.0-10.0.1.255 => x/b[Pod] : All connections\n",
    ));
    let cidr = tables(vec![(
        netpol_party("10.0.0.0/23").unwrap(),
        Party::Pod("x/b".into()),
        None,
    )]);
    assert_eq!(ranges, cidr, "adjacent ranges merge into the CIDR");
}
