#!/usr/bin/python3
"""emu-moe.py: moe_layer (forward + backward) on the emulated cluster, LocMoE+ vs GShard top-2.

For each host count (--hosts 2 4): up an emulated cluster (removed on any exit), then per router
launch --ranks-per-host ranks of examples/moe_layer (TCP bootstrap, UCX: shared memory inside a
host, TCP on the shaped eth0 between hosts) with the same --seed (same weights, same tokens), read
every host's eth0 tx byte counter around the run. Per router it records the mean per step of
route, dispatch, experts, combine and backward times (max over ranks), the dispatch's inter-host
payload (the plan's bytes, DispatchStats::internode_bytes_sent summed over ranks), and the wire
bytes. A step moves the dispatch payload 4 times across hosts (dispatch, combine, and their two
backward passes); the wire also carries the example's own check (bootstrap all-reduces of the
reference gradients, over TCP) and the TCP/UCX headers. Prints one JSON document (--out FILE).
"""
import argparse, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
EMU = os.path.join(HERE, "emu-cluster.sh")


def tx_bytes():
    d = json.loads(subprocess.run([EMU, "counters", "--json"], check=True, text=True, capture_output=True).stdout)
    return sum(h["tx_bytes"] for h in d["hosts"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--ranks-per-host", type=int, default=4)
    ap.add_argument("--bw", default="100mbit", help="shaped link rate (tc syntax)")
    ap.add_argument("--routers", nargs="+", default=["locmoe+", "gshard"])
    ap.add_argument("--layer", default="--tokens 128 --hidden 1024 --ffn 32 --experts-per-rank 2 --k 2 --steps 3",
                    help="moe_layer arguments (the same for every router)")
    ap.add_argument("--moe-layer", default=os.path.join(HERE, "../build/examples/moe_layer"))
    ap.add_argument("--out")
    a = ap.parse_args()
    os.environ.update({"LOCMOE_TIMEOUT_S": "60",
                       "LOCMOE_EMU_PREFIX": f"lmmoe{os.getpid()}",
                       "LOCMOE_EMU_STATE": f"/tmp/locmoe-emu-moe{os.getpid()}"})
    logs = f"/tmp/emu-moe-{os.getpid()}"
    rows = []
    for hosts in a.hosts:
        subprocess.run([EMU, "up", str(hosts), "--bw", a.bw], check=True, capture_output=True)
        try:
            for router in a.routers:
                before = tx_bytes()
                r = subprocess.run([EMU, "launch", "-r", str(a.ranks_per_host), "-p", str(29800 + len(rows)), "-t",
                                    "240", "-o", logs, "--", a.moe_layer, *a.layer.split(), "--router", router,
                                    "--json"], text=True, capture_output=True)
                wire = tx_bytes() - before
                text = open(f"{logs}/rank0.log").read()
                if r.returncode != 0:
                    print(f"emu-moe: {hosts} hosts, {router} failed:\n{text}", file=sys.stderr)
                    continue
                doc = json.loads(text[text.index("{"):])
                steps = doc["steps"]
                mean = lambda key: sum(s["seconds"][key] for s in steps) / len(steps)
                row = {"hosts": hosts, "ranks_per_host": a.ranks_per_host, "router": router, "bw": a.bw,
                       "steps": len(steps), "ok": doc["ok"], "slots_dropped": doc["slots_dropped"],
                       "seconds": {k: mean(k) for k in ("route", "dispatch", "experts", "combine", "backward")},
                       "dispatch_internode_bytes_per_step": doc["internode_bytes"] / len(steps),
                       "wire_bytes_per_step": wire / len(steps)}
                row["step_s"] = sum(row["seconds"].values())
                rows.append(row)
                print(json.dumps(row), file=sys.stderr)
        finally:
            subprocess.run([EMU, "down"], capture_output=True)
            subprocess.run(["rm", "-rf", logs, os.environ["LOCMOE_EMU_STATE"]])
    text = json.dumps({"layer": a.layer, "bw": a.bw, "rows": rows}, indent=1)
    if a.out:
        open(a.out, "w").write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
