#!/usr/bin/python3
"""Every rank's place (GPU, rail NIC, CPUs, NUMA domain) in `locmoe-topo --cluster --json` of 8 ranks
emulating 2 nodes (LOCMOE_HOSTID=a for ranks 0-3, b for 4-7), each node given a real fixture through
LOCMOE_TOPO_FILE, checked against facts this script reads from the fixture files itself with
xml.etree (not locmoe's parser, not its path classes):
  NCCL files: a GPU is a <pci> of class 0x0302/0x0300, a NIC a <pci> of class 0x0207 (IB) or a
  <nic><net>; a GPU's CPUs are the bits of its <cpu affinity="..."> mask (32-bit hex words, most
  significant first) and its NUMA domain that <cpu>'s numaid; its rail NIC is the NIC under the
  same PCIe switch, paired in bus-id order (ND v4 holds two GPU+NIC pairs per switch); files with
  one NIC give it to every GPU.
  hwloc XML (DGX-2): a GPU is a PCIDev whose pci_type starts with 0302; its CPUs are the cpuset
  (0x-prefixed 32-bit words, most significant first) of its nearest non-I/O ancestor; no NICs.
Scenarios: ND v4 + ND v5 in PCI order (nodes flagged different); ND v5 on both with a permuted
placement on node a (LOCMOE_GPU=3,1,0,2: lanes pair ranks by NIC, not by local rank; not flagged);
DGX-2 + NC v4 with two ranks on one GPU (shared GPU and NIC flagged); and bad overrides refused
with the value named. Usage: check_cluster_places.py DATA_DIR MPIRUN [flags...] -- LOCMOE_TOPO"""
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

data, args = sys.argv[1], sys.argv[2:]
sep = args.index("--")
mpirun, topo = args[:sep], args[sep + 1]


def mask_bits(text):
    """CPUs of a comma-separated list of hex words, most significant word first."""
    cpus, words = [], [w.strip() for w in text.split(",")][::-1]
    for i, w in enumerate(words):
        v = int(w, 16)
        cpus += [32 * i + b for b in range(32) if v >> b & 1]
    return cpus


def norm_bus(b):
    d, rest = (b.split(":", 1) if b.count(":") == 2 else ("0000", b))
    bus, devfn = rest.split(":")
    dev, fn = devfn.split(".")
    return f"{int(d, 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{int(fn, 16):x}"


def nccl_facts(path):
    """GPUs in bus-id order: dicts of bus, cpus, numa, nic (bus id or name of its rail NIC)."""
    root = ET.parse(path).getroot()
    gpus, nics = [], []
    for cpu in root.iter("cpu"):
        cpus, numa = mask_bits(cpu.get("affinity")), int(cpu.get("numaid"))

        def walk(el, switch):
            for child in el:
                cls = child.get("class", "")
                if child.tag == "pci" and cls.startswith("0x0604"):
                    walk(child, child.get("busid"))
                elif child.tag == "pci" and (cls.startswith("0x0302") or cls.startswith("0x0300")):
                    gpus.append({"bus": norm_bus(child.get("busid")), "cpus": cpus, "numa": numa, "switch": switch})
                elif child.tag == "pci" and cls.startswith("0x0207"):
                    nics.append({"id": norm_bus(child.get("busid")), "switch": switch})
                elif child.tag == "nic":
                    for net in child.iter("net"):
                        nics.append({"id": net.get("name"), "switch": switch})
                else:
                    walk(child, switch)
        walk(cpu, None)
    gpus.sort(key=lambda g: g["bus"])
    for g in gpus:
        if len(nics) == 1:
            g["nic"] = nics[0]["id"]
            continue
        same = sorted(n["id"] for n in nics if n["switch"] == g["switch"])
        peers = sorted(x["bus"] for x in gpus if x["switch"] == g["switch"])
        assert len(same) == len(peers), f"{path}: fixture is not one NIC per GPU under a switch"
        g["nic"] = same[peers.index(g["bus"])]
    return gpus


def hwloc_facts(path):
    root = ET.parse(path).getroot()
    gpus = []

    def walk(el, cpus):
        for child in el:
            if child.tag != "object":
                continue
            here = cpus
            if child.get("type") not in ("Bridge", "PCIDev", "OSDev", "Misc") and child.get("cpuset"):
                here = mask_bits(child.get("cpuset").replace("0x", ""))
            if child.get("type") == "PCIDev" and child.get("pci_type", "").startswith("0302"):
                gpus.append({"bus": norm_bus(child.get("pci_busid")), "cpus": here, "nic": None})
            walk(child, here)
    walk(root, [])
    gpus.sort(key=lambda g: g["bus"])
    return gpus


def cpu_list(cpus):
    out, i, cpus = [], 0, sorted(cpus)
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


FIX = {"ndv4": "azure-ndv4.nccl.xml", "ndv5": "azure-ndv5.nccl.xml", "ncv4": "azure-ncv4.nccl.xml",
       "dgx2": "nvidia-dgx2.hwloc.xml"}
FACTS = {k: (hwloc_facts if v.endswith("hwloc.xml") else nccl_facts)(os.path.join(data, v)) for k, v in FIX.items()}
# Facts read by hand from the files, so the parser above is itself checked: ND v5 GPU 0001:00:00.0
# and NIC 0101:00:00.0 share a switch under NUMA 0, affinity ffffffff,ffff0000,00000000 = CPUs
# 48-95; ND v4 GPU 0003:00:00.0 pairs with NIC 0103:00:00.0 on NUMA 0 (CPUs 0-23); DGX-2's first
# GPU 0000:34:00.0 sits in Package 0, cpuset 0x00000003 = CPUs 0-1.
assert FACTS["ndv5"][0] == {"bus": "0001:00:00.0", "cpus": list(range(48, 96)), "numa": 0,
                            "switch": "ffff:ff:01.0", "nic": "0101:00:00.0"}, FACTS["ndv5"][0]
assert [(g["bus"], g["nic"], g["numa"]) for g in FACTS["ndv4"][:2]] == [
    ("0001:00:00.0", "0101:00:00.0", 1), ("0002:00:00.0", "0102:00:00.0", 1)], FACTS["ndv4"][:2]
assert FACTS["ndv4"][2]["bus"] == "0003:00:00.0" and FACTS["ndv4"][2]["cpus"] == list(range(24))
assert len(FACTS["dgx2"]) == 16 and FACTS["dgx2"][0] == {"bus": "0000:34:00.0", "cpus": [0, 1], "nic": None}


def run(nodes, np_=4, expect_ok=True):
    """nodes: [(fixture, extra env dict)] for host a, b. Returns the JSON document (or the result)."""
    cmd = list(mpirun)
    for i, (fix, env) in enumerate(nodes):
        if i:
            cmd.append(":")
        cmd += ["-np", str(np_), "-x", f"LOCMOE_HOSTID={'ab'[i]}", "-x", f"LOCMOE_TOPO_FILE={os.path.join(data, FIX[fix])}"]
        for k, v in env.items():
            cmd += ["-x", f"{k}={v}"]
        cmd += [topo, "--cluster", "--json"]
    env = dict(os.environ)
    for k in ("LOCMOE_GPU", "LOCMOE_NIC", "LOCMOE_CPUS", "LOCMOE_BIND", "CUDA_VISIBLE_DEVICES"):
        env.pop(k, None)
    out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    if not expect_ok:
        return out
    if out.returncode != 0:
        sys.exit(f"FAIL: {' '.join(cmd)}: exit {out.returncode}\n{out.stderr}")
    return json.loads(out.stdout)


def check_ranks(doc, nodes, gpu_of_local):
    for r in doc["ranks"]:
        fix = nodes[r["node"]][0]
        g = FACTS[fix][gpu_of_local[r["node"]][r["local_rank"]]]
        got = (r["gpu"], r["nic"], r["cpus"])
        want = (g["bus"], g["nic"], cpu_list(g["cpus"]) or None)
        assert got == want, f"rank {r['rank']} on {fix}: got GPU/NIC/CPUs {got}, the file says {want}"
        if "numa" in g:
            assert r["numa"] == g["numa"], (r, g)


# 1. ND v4 and ND v5, ranks in PCI order: GPU l for local rank l; the nodes differ.
nodes = [("ndv4", {}), ("ndv5", {})]
doc = run(nodes)
check_ranks(doc, nodes, [[0, 1, 2, 3], [0, 1, 2, 3]])
assert doc["findings"] == {"nodes_differing": [1], "shared_gpus": [], "shared_nics": []}, doc["findings"]
assert [n["topology_differs"] for n in doc["nodes"]] == [False, True]
assert [n["lanes"] for n in doc["nodes"]] == [[0, 1, 2, 3], [4, 5, 6, 7]]

# 2. ND v5 on both nodes, node a placed out of PCI order: lane l holds the rank with the l-th NIC on
# each node, so lane peers (the ranks the hierarchical exchange pairs) share a rail NIC.
perm = [3, 1, 0, 2]
nodes = [("ndv5", {"LOCMOE_GPU": ",".join(map(str, perm))}), ("ndv5", {})]
doc = run(nodes)
check_ranks(doc, nodes, [perm, [0, 1, 2, 3]])
assert doc["findings"] == {"nodes_differing": [], "shared_gpus": [], "shared_nics": []}, doc["findings"]
ranks = doc["ranks"]
lanes = [n["lanes"] for n in doc["nodes"]]
assert lanes[0] == sorted(range(4), key=lambda l: perm[l]), lanes  # local rank with NIC 0 first...
for a, b in zip(*lanes):
    assert ranks[a]["nic"] == ranks[b]["nic"] and ranks[a]["nic_index"] == ranks[b]["nic_index"], (ranks[a], ranks[b])
assert any(ranks[a]["local_rank"] != ranks[b]["local_rank"] for a, b in zip(*lanes)), "the permutation must matter"

# 3. DGX-2 (no NICs) and NC v4 (one Ethernet NIC) with local ranks 0 and 1 on one GPU: flagged.
nodes = [("dgx2", {}), ("ncv4", {"LOCMOE_GPU": "0,0,1,2"})]
doc = run(nodes)
check_ranks(doc, nodes, [[0, 1, 2, 3], [0, 0, 1, 2]])
assert doc["findings"] == {"nodes_differing": [1], "shared_gpus": [[4, 5]], "shared_nics": [[4, 5, 6, 7]]}, doc["findings"]
assert all(r["nic"] is None and r["nic_index"] is None for r in doc["ranks"][:4]), doc["ranks"][:4]

# 4. Bad overrides: refused on every rank, the value named.
for env, needle in (({"LOCMOE_GPU": "8"}, "LOCMOE_GPU='8'"),
                    ({"LOCMOE_GPU": "0,1"}, "lists 2 entries"),
                    ({"LOCMOE_NIC": "mlx5_9"}, "'mlx5_9' is not a NIC"),
                    ({"LOCMOE_CPUS": "0-3;4-7;200;8"}, "CPUs 200 are not CPUs")):
    out = run([("ndv5", env), ("ndv5", {})], expect_ok=False)
    # Exactly the tool's own exit code: with every rank of a node failing at once, concurrent
    # MPI_Abort calls made mpirun segfault (rc 139) or hang until this script's timeout.
    assert out.returncode == 2, (env, out.returncode, out.stderr[-2000:])
    assert needle in out.stderr, (env, needle, out.stderr)
print("ok: ND v4/ND v5, permuted ND v5 (lanes by NIC), DGX-2/NC v4 (shared GPU, NIC), bad overrides refused")
