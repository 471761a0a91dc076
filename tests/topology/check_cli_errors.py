#!/usr/bin/python3
"""locmoe-topo on bad input: non-zero exit and a message naming the file (or string) and the
reason. Usage: check_cli_errors.py LOCMOE_TOPO FIXTURE_DIR"""
import os
import subprocess
import sys
import tempfile

topo, fixtures = sys.argv[1], sys.argv[2]
tmp = tempfile.mkdtemp(prefix="locmoe-topo-cli-")

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
sys.exit(1 if failures else 0)
