#!/usr/bin/env python3
"""Transcribes the upstream ClusterNetworkPolicy conformance suite into golden cases.

Reads kubernetes-sigs/network-policy-api's conformance tests (a copy at
../shared/conformance/network-policy-api, commit 0eec1b0e, Apache-2.0) and writes one case
directory per *state* of each test under testdata/cases/cnp/: the fixture (Namespaces,
Pods with IPs, Nodes), the test's manifests with the mutations the test applied before
that state (rule swaps, action changes, a priority change, a relabelled Namespace, a
prepended rule, a deleted NetworkPolicy), and expect.yaml with every PokeServer assertion
made in that state, in order. Expectations are the upstream tests' own `shouldConnect`
values: nothing here runs netpol.

Usage: python3 transcribe.py [UPSTREAM_DIR]   (rewrites testdata/cases/cnp/{admin,baseline})
"""

import copy
import os
import re
import shutil
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
UPSTREAM = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    HERE, "../../../../shared/conformance/network-policy-api")
CONF = os.path.join(UPSTREAM, "conformance")

# The suite's default host-network ports (suite.go): HostNetworkPorts[i] = 34345 + i.
HOST_PORTS = [34345 + i for i in range(8)]

HOUSES = [
    # (house, namespace suffix, statefulset, third octet)
    ("gryffindor", "gryffindor", "harry-potter", 1),
    ("slytherin", "slytherin", "draco-malfoy", 2),
    ("hufflepuff", "hufflepuff", "cedric-diggory", 3),
    ("ravenclaw", "ravenclaw", "luna-lovegood", 4),
]
NODES = [("node-a", "192.168.10.1"), ("node-b", "192.168.10.2")]
# The IPv6 single-stack variant (upstream runs the suite on IPv6 clusters too; the
# inline-CIDR tests then use /128 masks): the address-dependent tests only.
NODES_V6 = [("node-a", "fd00:192:168:10::1"), ("node-b", "fd00:192:168:10::2")]
IPV6_TESTS = {"egress-inline-cidr", "egress-node-peers"}
FAMILY = {"v6": False}


def nodes():
    return NODES_V6 if FAMILY["v6"] else NODES


def ns(h):
    return f"network-policy-conformance-{h}"


def pod_ip(sts, i):
    for _, _, s, o in HOUSES:
        if s == sts:
            return f"fd00:10:244:{o}::{10 + i}" if FAMILY["v6"] else f"10.244.{o}.{10 + i}"
    if sts == "centaur":
        return nodes()[i][1]
    raise KeyError(sts)


def fixture(ns_labels_override=None):
    """The objects of conformance/base/manifests.yaml as a cluster would hold them."""
    docs = []
    for h in [h[0] for h in HOUSES] + ["forbidden-forrest"]:
        labels = {"conformance-house": h}
        if ns_labels_override and h in ns_labels_override:
            labels = dict(ns_labels_override[h])
        labels["kubernetes.io/metadata.name"] = ns(h)
        docs.append({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": ns(h), "labels": labels}})
    for name, ip in nodes():
        docs.append({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {
                "kubernetes.io/os": "linux", "kubernetes.io/hostname": name}},
            "status": {"addresses": [{"type": "InternalIP", "address": ip},
                                     {"type": "Hostname", "address": name}]},
        })
    for house, _, sts, _ in HOUSES:
        for i in range(2):
            ip = pod_ip(sts, i)
            docs.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"{sts}-{i}", "namespace": ns(house),
                             "labels": {"conformance-house": house}},
                "spec": {"nodeName": nodes()[i][0], "containers": [
                    {"name": f"{sts}-client"},
                    {"name": f"{sts}-80", "ports": [
                        {"containerPort": 80, "protocol": "TCP", "name": "web"}]},
                    {"name": f"{sts}-8080"},
                    {"name": f"{sts}-5353"},
                    {"name": f"{sts}-53", "ports": [
                        {"containerPort": 53, "protocol": "UDP", "name": "dns"}]},
                    {"name": f"{sts}-9003"},
                    {"name": f"{sts}-9005"},
                ]},
                "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
            })
    p = HOST_PORTS
    for i in range(2):
        ip = pod_ip("centaur", i)
        docs.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"centaur-{i}", "namespace": ns("forbidden-forrest"),
                         "labels": {"conformance-house": "forbidden-forrest"}},
            "spec": {"nodeName": nodes()[i][0], "hostNetwork": True, "containers": [
                {"name": "centaur-client"},
                {"name": f"centaur-{p[0]}-tcp", "ports": [
                    {"containerPort": p[0], "protocol": "TCP", "name": f"web-{p[0]}"}]},
                {"name": f"centaur-{p[1]}-tcp", "ports": [
                    {"containerPort": p[1], "protocol": "TCP", "name": f"web-{p[1]}"}]},
                {"name": f"centaur-{p[2]}-udp", "ports": [
                    {"containerPort": p[2], "protocol": "UDP", "name": f"dns-{p[2]}"}]},
                {"name": f"centaur-{p[4]}-udp", "ports": [
                    {"containerPort": p[4], "protocol": "UDP", "name": f"dns-{p[4]}"}]},
                {"name": f"centaur-{p[6]}"},
                {"name": f"centaur-{p[7]}"},
            ]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                       "hostIP": ip},
        })
    return docs


def manifests(path):
    text = open(os.path.join(CONF, path)).read()
    text = re.sub(r"\{\{\s*index \.HostNetworkPorts (\d+)\s*\}\}",
                  lambda m: str(HOST_PORTS[int(m.group(1))]), text)
    return [d for d in yaml.safe_load_all(text) if d]


def parse_tests(go_file):
    """[(ShortName, manifests, [event])]; event: ('run', title) | ('server', var, ns, pod)
    | ('mutate',) | ('poke', client_ns, client_pod, proto, server_var, port, expect)."""
    src = open(os.path.join(CONF, "tests", go_file)).read()
    tests = []
    for block in re.split(r"\nvar (?=\w+ = suite\.ConformanceTest\{)", src)[1:]:
        short = re.search(r'ShortName:\s*"([^"]+)"', block).group(1)
        mans = re.findall(r'"(base/[^"]+\.yaml)"', block.split("Test:")[0])
        events = []
        code = "\n".join(l for l in block.split("\n") if not l.strip().startswith("//"))
        tokens = re.finditer(
            r't\.Run\("([^"]+)"'
            r'|(\w+)\s*:?=\s*kubernetes\.GetPod\(t, s\.Client, "([^"]+)", "([^"]+)"'
            r'|(PatchClusterNetworkPolicy\(|PatchNamespace\(|Client\.Delete\(ctx, np\))'
            r'|PokeServer\(t, s\.ClientSet, &s\.KubeConfig, "([^"]+)", "([^"]+)", "(\w+)",\s*'
            r'(\w+)\.Status\.PodIP, int32\(([^)]+)\), s\.TimeoutConfig, (true|false)\)', code)
        for m in tokens:
            if m.group(1):
                events.append(("run", m.group(1)))
            elif m.group(2):
                events.append(("server", m.group(2), m.group(3), m.group(4)))
            elif m.group(5):
                events.append(("mutate",))
            else:
                port = m.group(10)
                hp = re.fullmatch(r"s\.HostNetworkPorts\[(\d+)\]", port)
                port = HOST_PORTS[int(hp.group(1))] if hp else int(port)
                events.append(("poke", m.group(6), m.group(7), m.group(8), m.group(9),
                               port, m.group(11) == "true"))
        tests.append((short, mans, events))
    return tests


def cnp_named(docs, name):
    for d in docs:
        if d.get("kind") == "ClusterNetworkPolicy" and d["metadata"]["name"] == name:
            return d
    raise KeyError(name)


def only_cnp(docs):
    c = [d for d in docs if d.get("kind") == "ClusterNetworkPolicy"]
    assert len(c) == 1
    return c[0]


def swap(direction, i, j):
    def f(state):
        rules = only_cnp(state["docs"])["spec"][direction]
        rules[i], rules[j] = rules[j], rules[i]
        return f"{direction} rules {i} and {j} swapped"
    return f


def swaps(*fs):
    def f(state):
        return "; ".join(g(state) for g in fs)
    return f


def named_port(direction, i, name):
    def f(state):
        only_cnp(state["docs"])["spec"][direction][i]["protocols"] = [
            {"destinationNamedPort": name}]
        return f"{direction} rule {i} protocols replaced by destinationNamedPort {name}"
    return f


def set_action(policy, direction, i, action):
    def f(state):
        cnp_named(state["docs"], policy)["spec"][direction][i]["action"] = action
        return f"{policy}: {direction} rule {i} action set to {action}"
    return f


def set_priority(policy, p):
    def f(state):
        cnp_named(state["docs"], policy)["spec"]["priority"] = p
        return f"{policy}: priority set to {p}"
    return f


def relabel(house, labels):
    def f(state):
        state["ns_labels"] = {house: labels}
        return f"Namespace {ns(house)} labels set to {labels}"
    return f


def unlabel(house):
    def f(state):
        state["ns_labels"] = None
        return f"Namespace {ns(house)} labels restored"
    return f


def prepend_pod_ip_rule(state):
    mask = "/128" if FAMILY["v6"] else "/32"
    rule = {"name": "allow-egress-to-specific-podIPs", "action": "Accept",
            "to": [{"networks": [pod_ip("luna-lovegood", 0) + mask,
                                 pod_ip("cedric-diggory", 0) + mask]}]}
    c = only_cnp(state["docs"])
    c["spec"]["egress"] = [rule] + c["spec"]["egress"]
    return f"egress rule allow-egress-to-specific-podIPs (networks luna-lovegood-0 and cedric-diggory-0 {mask}) prepended"


def delete_np(state):
    state["docs"] = [d for d in state["docs"] if d.get("kind") != "NetworkPolicy"]
    return "NetworkPolicy allow-gress-from-to-slytherin-to-gryffindor deleted"


STD = lambda d: [swap(d, 0, 1), swap(d, 0, 2), swap(d, 3, 4)]  # noqa: E731
GRESS = [swaps(swap("egress", 0, 1), swap("ingress", 0, 1)),
         swaps(swap("egress", 0, 2), swap("ingress", 0, 2)),
         swaps(swap("egress", 3, 4), swap("ingress", 3, 4))]
CIDR = [relabel("slytherin", {"conformance-house": "denied-namespace-label"}),
        unlabel("slytherin"), prepend_pod_ip_rule]

# (go file, tier dir, case name, channel, mutations in the order the test applies them)
TESTS = [
    ("admin-network-policy-standard-ingress-tcp-rules.go", "admin", "ingress-tcp", "standard", STD("ingress")),
    ("admin-network-policy-standard-ingress-udp-rules.go", "admin", "ingress-udp", "standard", STD("ingress")),
    ("admin-network-policy-standard-ingress-sctp-rules.go", "admin", "ingress-sctp", "standard", STD("ingress")),
    ("admin-network-policy-standard-egress-tcp-rules.go", "admin", "egress-tcp", "standard", STD("egress")),
    ("admin-network-policy-standard-egress-udp-rules.go", "admin", "egress-udp", "standard", STD("egress")),
    ("admin-network-policy-standard-egress-sctp-rules.go", "admin", "egress-sctp", "standard", STD("egress")),
    ("admin-network-policy-standard-gress-rules.go", "admin", "gress", "standard", GRESS),
    ("admin-network-policy-standard-egress-inline-cidr-rules.go", "admin", "egress-inline-cidr", "standard", CIDR),
    ("admin-network-policy-standard-integration.go", "admin", "integration", "standard",
     [set_action("pass-example", "ingress", 0, "Pass"),
      set_action("pass-example", "egress", 0, "Pass"), delete_np]),
    ("admin-network-policy-standard-priority.go", "admin", "priority", "standard",
     [set_priority("old-priority-60-new-priority-40-example", 40)]),
    ("admin-network-policy-experimental-egress-rules.go", "admin", None, "experimental", None),
    ("admin-network-policy-experimental-ingress-rules.go", "admin", "ingress-named-port", "experimental",
     [named_port("ingress", 5, "dns")]),
    ("baseline-admin-network-policy-standard-ingress-tcp-rules.go", "baseline", "ingress-tcp", "standard", [swap("ingress", 0, 1)]),
    ("baseline-admin-network-policy-standard-ingress-udp-rules.go", "baseline", "ingress-udp", "standard", [swap("ingress", 0, 1)]),
    ("baseline-admin-network-policy-standard-ingress-sctp-rules.go", "baseline", "ingress-sctp", "standard", [swap("ingress", 0, 1)]),
    ("baseline-admin-network-policy-standard-egress-tcp-rules.go", "baseline", "egress-tcp", "standard", [swap("egress", 0, 1)]),
    ("baseline-admin-network-policy-standard-egress-udp-rules.go", "baseline", "egress-udp", "standard", [swap("egress", 0, 1)]),
    ("baseline-admin-network-policy-standard-egress-sctp-rules.go", "baseline", "egress-sctp", "standard", [swap("egress", 0, 1)]),
    ("baseline-admin-network-policy-standard-gress-rules.go", "baseline", "gress", "standard", GRESS[:1]),
    ("baseline-admin-network-policy-standard-egress-inline-cidr-rules.go", "baseline", "egress-inline-cidr", "standard", CIDR),
    ("baseline-admin-network-policy-experimental-egress-rules.go", "baseline", None, "experimental", None),
    ("baseline-admin-network-policy-experimental-ingress-rules.go", "baseline", "ingress-named-port", "experimental",
     [named_port("ingress", 3, "web")]),
]

# Files holding two tests: per ShortName.
SPLIT = {
    "CNPAdminTierEgressNamedPort": ("egress-named-port", [named_port("egress", 5, "web")]),
    "CNPAdminTierEgressNodePeers": ("egress-node-peers", []),
    "CNPBaselineTierEgressNamedPort": ("egress-named-port", [named_port("egress", 3, "dns")]),
    "CNPBaselineTierEgressNodePeers": ("egress-node-peers", []),
}


def dump_yaml(docs):
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, default_flow_style=False)
                        for d in docs)


def write_case(dirpath, short, go_file, channel, step, what, docs, ns_labels, asserts):
    os.makedirs(dirpath, exist_ok=True)
    with open(os.path.join(dirpath, "cluster.yaml"), "w") as f:
        f.write("# The conformance fixture (conformance/base/manifests.yaml) as a cluster holds it.\n")
        f.write("# Generated by testdata/cases/cnp/transcribe.py; see testdata/cases/cnp/README.md.\n")
        f.write(dump_yaml(fixture(ns_labels)))
    with open(os.path.join(dirpath, "policies.yaml"), "w") as f:
        f.write(f"# {short} ({go_file}), state {step}: {what}.\n")
        f.write("# Generated by testdata/cases/cnp/transcribe.py from the upstream manifests.\n")
        f.write(dump_yaml(docs))
    with open(os.path.join(dirpath, "expect.yaml"), "w") as f:
        v6 = " IPv6 single-stack variant." if FAMILY["v6"] else ""
        desc = (f"Upstream network-policy-api conformance test {short} ({channel} channel, "
                f"conformance/tests/{go_file}), state {step}: {what}. Every PokeServer "
                f"assertion the test makes in this state, in order, with its shouldConnect.{v6}")
        f.write("description: >-\n")
        line = "  "
        for word in desc.split():
            if len(line) + len(word) + 1 > 92:
                f.write(line.rstrip() + "\n")
                line = "  "
            line += word + " "
        f.write(line.rstrip() + "\n")
        f.write("assertions:\n")
        for run, (cns, cpod, proto, (sns, spod), port, expect) in asserts:
            f.write(f"  # t.Run: {run}\n")
            f.write(f"  - from: {ns(cns)}/{cpod}\n")
            f.write(f"    to: {sns}/{spod}\n")
            f.write(f"    port: {port}\n")
            f.write(f"    protocol: {proto.upper()}\n")
            f.write(f"    allowed: {'true' if expect else 'false'}\n")


def transcribe():
    for v6 in (False, True):
        FAMILY["v6"] = v6
        transcribe_family()


def transcribe_family():
    v6 = FAMILY["v6"]
    base = os.path.join(HERE, "ipv6") if v6 else HERE
    for tier in ("admin", "baseline"):
        shutil.rmtree(os.path.join(base, tier), ignore_errors=True)
    counts = []
    for go_file, tier, case, channel, muts in TESTS:
        for short, mans, events in parse_tests(go_file):
            if case is None:
                cname, cmuts = SPLIT[short]
            else:
                cname, cmuts = case, muts
            if v6 and cname not in IPV6_TESTS:
                continue
            docs = []
            for m in mans:
                docs += manifests(m)
            state = {"docs": docs, "ns_labels": None}
            step, what = 1, "as applied"
            servers, run = {}, ""
            asserts = []
            cases = 0
            total = 0

            def flush():
                nonlocal cases
                if asserts:
                    d = os.path.join(base, tier, cname, f"{step}-{slug(what)}")
                    write_case(d, short, go_file, channel, step, what,
                               copy.deepcopy(state["docs"]), state["ns_labels"], list(asserts))
                    cases += 1
                asserts.clear()

            mi = 0
            for ev in events:
                if ev[0] == "run":
                    run = ev[1]
                elif ev[0] == "server":
                    servers[ev[1]] = (ev[2], ev[3])
                elif ev[0] == "mutate":
                    flush()
                    what = cmuts[mi](state)
                    mi += 1
                    step += 1
                else:
                    _, cns, cpod, proto, svar, port, expect = ev
                    asserts.append((run, (cns.removeprefix("network-policy-conformance-"),
                                          cpod, proto, servers[svar], port, expect)))
                    total += 1
            flush()
            assert mi == len(cmuts), (short, mi, len(cmuts))
            counts.append((short, channel, tier, cname, cases, total))
    print("IPv6 single-stack variant" if v6 else "IPv4")
    for c in counts:
        print("%-40s %-12s %-8s %-22s %d states %3d assertions" % c)
    print("total assertions:", sum(c[5] for c in counts))


def slug(s):
    s = s.lower()
    if "swapped" in s:
        return "swap-" + "-".join(dict.fromkeys(re.findall(r"\d+", s)))
    if "action set to pass" in s:
        return "pass-" + ("ingress" if "ingress" in s else "egress")
    if "priority set" in s:
        return "priority-40"
    if "restored" in s:
        return "label-restored"
    if "labels set" in s:
        return "namespace-relabelled"
    if "prepended" in s:
        return "pod-ip-rule-prepended"
    if "deleted" in s:
        return "networkpolicy-deleted"
    if "destinationnamedport" in s:
        return "named-port"
    return "initial"


if __name__ == "__main__":
    transcribe()
