#!/usr/bin/python3
"""locmoe-topo on bad input: non-zero exit and a message naming the file (or string) and the
reason; and --params prints the same registry as locmoe-info.
Usage: check_cli_errors.py LOCMOE_TOPO FIXTURE_DIR LOCMOE_INFO"""
import json
import os
import subprocess
import sys
import tempfile

topo, fixtures, info = sys.argv[1], sys.argv[2], sys.argv[3]
tmp_dir = tempfile.TemporaryDirectory(prefix="locmoe-topo-cli-")  # removed at exit
tmp = tmp_dir.name

def write(name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path

good = open(os.path.join(fixtures, "azure-ndv5.nccl.xml")).read()
cases = [  # (arguments, text the error must contain, besides the file)
    (["--file", os.path.join(tmp, "missing.xml")], "cannot be opened"),
    (["--file", write("empty.xml", "")], "is empty"),
    (["--file", write("truncated.xml", good[: len(good) // 3])], "not well-formed XML"),
    (["--file", write("malformed.xml", "<system><cpu></system>")], "not well-formed XML"),
    (["--file", write("unknown.xml", "<foo/>")], "unknown format"),
    (["--synthetic", "pack:2 bogus:1"], "rejected by hwloc"),
]
failures = 0
for args, reason in cases:
    p = subprocess.run([topo] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    named = args[1] if args[0] == "--file" else "'" + args[1] + "'"
    ok = p.returncode == 2 and named in p.stderr and reason in p.stderr
    print(("ok  " if ok else "FAIL") + f" {args}: exit {p.returncode}: {p.stderr.strip()}")
    failures += not ok
# Good input still works (exit 0), so the checks above are not passing for a broken tool.
p = subprocess.run([topo, "--file", os.path.join(fixtures, "azure-ndv5.nccl.xml"), "--json"],
                   stdout=subprocess.PIPE, text=True, timeout=60)
failures += p.returncode != 0
# --params: one registry, printed by both tools (LOCMOE_HOSTID set here shows up as "env").
env = dict(os.environ, LOCMOE_HOSTID="from-test")
mine = json.loads(subprocess.run([topo, "--params", "--json"], stdout=subprocess.PIPE, text=True, env=env).stdout)
theirs = json.loads(subprocess.run([info, "--json"], stdout=subprocess.PIPE, text=True, env=env).stdout)["params"]
names = [p["name"] for p in mine]
ok = mine == theirs and "LOCMOE_TOPO_FILE" in names and \
    any(p["name"] == "LOCMOE_HOSTID" and p["value"] == "from-test" and p["source"] == "env" for p in mine)
print(("ok  " if ok else "FAIL") + f" --params --json: {len(names)} parameters")
failures += not ok
sys.exit(1 if failures else 0)
