#!/usr/bin/env python3
"""Compare `netpol list -o json` with `nca --connectivity -o txt_no_fw_rules`."""
import ipaddress, json, re, sys
from collections import defaultdict

def merge(iv):
    out = []
    for lo, hi in sorted(iv):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple(map(tuple, out))

def canon(ports):  # ports: list of (proto, lo, hi) or "all"
    if ports == "all":
        return "all"
    by = defaultdict(list)
    for p, lo, hi in ports:
        by[p].append((lo, hi))
    return tuple(sorted((p, merge(v)) for p, v in by.items()))

def party(s):
    """('pod', 'ns/name') or ('ip', [(lo, hi)])"""
    s = s.strip()
    m = re.match(r"^(.*)\[(\w+)\]$", s)
    if m:
        # NCA names workloads ns/name[Deployment]; netpol ns/deployment/name.
        name, kind = m.group(1), m.group(2)
        if kind != "Pod":
            ns, _, n = name.partition("/")
            name = f"{ns}/{kind.lower()}/{n}"
        return ("pod", name)
    try:
        n = ipaddress.ip_network(s, strict=False)
        return ("ip", [(int(n.network_address), int(n.broadcast_address))])
    except ValueError:
        pass
    if not re.match(r"^[0-9a-fA-F.:/,-]+$", s):
        return ("pod", s)
    ivs = []
    for r in s.split(","):
        if "-" in r:
            a, b = r.split("-", 1)
            ivs.append((int(ipaddress.ip_address(a)), int(ipaddress.ip_address(b))))
        else:
            n = ipaddress.ip_network(r, strict=False)
            ivs.append((int(n.network_address), int(n.broadcast_address)))
    if ivs:
        return ("ip", ivs)
    return ("pod", s)

def nca_conn(s):
    s = s.strip()
    if s == "All connections":
        return "all"
    out = []
    for m in re.finditer(r"\{([^}]*)\}", s):
        body = m.group(1)
        protos, _, ports = body.partition("dst_ports:")
        protos = [p.strip() for p in protos.replace("protocols:", "").split(",") if p.strip()]
        rng = []
        if ports:
            for r in ports.split(","):
                r = r.strip()
                if not r:
                    continue
                lo, _, hi = r.partition("-")
                rng.append((int(lo), int(hi or lo)))
        else:
            rng = [(0, 65535)]
        for p in protos:
            for lo, hi in rng:
                out.append((p, lo, hi))
    return out

def table(pairs):
    """pod pairs -> conn; (pod, dir, conn) -> merged address intervals"""
    pods, ips = {}, defaultdict(list)
    for (src, dst, conn) in pairs:
        # NCA adds simulated Pods (kube-dns-livesim, ...) where the input lacks them.
        if any(p[0] == "pod" and p[1].endswith("-livesim") for p in (src, dst)):
            continue
        c = canon(conn)
        if src[0] == "pod" and dst[0] == "pod":
            pods[(src[1], dst[1])] = c
        elif src[0] == "pod":
            ips[(src[1], "egress", c)] += dst[1]
        elif dst[0] == "pod":
            ips[(dst[1], "ingress", c)] += src[1]
    return pods, {k: merge(v) for k, v in ips.items()}

def netpol_pairs(path, v4only=True):
    j = json.load(open(path))
    out = []
    for c in j["connections"]:
        s, d = party(c["src"]), party(c["dst"])
        if v4only and any(p[0] == "ip" and ":" in x for p, x in ((s, c["src"]), (d, c["dst"]))):
            continue
        if s == d:
            continue
        conn = "all" if c["all"] else [(p["protocol"], p["from"], p["to"]) for p in c["ports"]]
        out.append((s, d, conn))
    return out

def nca_pairs(path):
    out = []
    for line in open(path):
        if " => " not in line or " : " not in line:
            continue
        lhs, conn = line.rstrip("\n").rsplit(" : ", 1)
        src, dst = lhs.split(" => ", 1)
        out.append((party(src), party(dst), nca_conn(conn)))
    return out

def main():
    a, b = table(netpol_pairs(sys.argv[1])), table(nca_pairs(sys.argv[2]))
    bad = 0
    for name, x, y in (("pod pairs", a[0], b[0]), ("address ranges", a[1], b[1])):
        for k in sorted(set(x) | set(y), key=str):
            if x.get(k) != y.get(k):
                bad += 1
                if bad <= 20:
                    print(f"{name}: {k}: netpol={x.get(k)} nca={y.get(k)}")
        print(f"{name}: netpol {len(x)}, nca {len(y)}")
    print("SAME" if bad == 0 else f"{bad} difference(s)")
    sys.exit(1 if bad else 0)

main()
