#!/usr/bin/python3
"""Checks `locmoe-topo --cluster --json` of 8 ranks launched as 4 with LOCMOE_HOSTID=a then 4 with
LOCMOE_HOSTID=b: one JSON document, 2 nodes, local ranks 0..3 on each. Usage: check_cluster_json.py
MPIRUN [mpirun flags...] -- LOCMOE_TOPO (runs the job itself and checks its output)."""
import json
import subprocess
import sys

args = sys.argv[1:]
sep = args.index("--")
mpirun, topo = args[:sep], args[sep + 1]
cmd = mpirun + ["-np", "4", "-x", "LOCMOE_HOSTID=a", topo, "--cluster", "--json", ":",
                "-np", "4", "-x", "LOCMOE_HOSTID=b", topo, "--cluster", "--json"]
out = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)
if out.returncode != 0:
    sys.exit(f"FAIL: exit {out.returncode}\n{out.stderr}")
doc = json.loads(out.stdout)  # exactly one document: rank 0 alone prints
ranks = doc["ranks"]
assert len(ranks) == 8, ranks
assert doc["num_nodes"] == 2 and len(doc["nodes"]) == 2, doc["nodes"]
assert doc["uniform"] is True
for r in ranks:
    for key in ("rank", "node", "local_rank", "local_size", "host", "gpu", "nic"):
        assert key in r, (key, r)
    host = "a" if r["rank"] < 4 else "b"
    assert r["host"] == host, r
    assert r["node"] == (0 if host == "a" else 1), r
    assert r["local_rank"] == r["rank"] % 4, r
    assert r["local_size"] == 4, r
for node, host in ((0, "a"), (1, "b")):
    assert doc["nodes"][node]["host"] == host
    assert sorted(r["local_rank"] for r in ranks if r["node"] == node) == [0, 1, 2, 3]
print("ok: 2 nodes x 4 ranks, local ranks 0..3")
