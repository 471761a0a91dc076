#!/usr/bin/python3
"""emu-bench.py: flat vs hierarchical all-to-all-v on the emulated cluster, side by side in one run.

For each host count (--hosts 2 4), sets up an emulated cluster (scripts/emu-cluster.sh run: removed
on any exit), then for every size and algorithm launches --ranks-per-host ranks of locmoe-emu-rank
(TCP bootstrap, UCX: shared memory inside a host, TCP on the shaped eth0 between hosts; with
--rails, every rank on its own NIC of a rail-optimized fabric), reads the hosts' NIC (and spine)
byte counters around each run, and asks locmoe-whatif for its prediction with the
emulated link figures. Prints one JSON document (--out FILE writes it too):
  time per exchange (slowest rank's mean over the iterations; the median of --repeats launches,
  the algorithms alternating, all launches' times beside it), algbw = bytes a rank sends / time, busbw = algbw x (n-1)/n
  (nccl-tests' all-to-all convention), inter-node payload and messages (communicator's counts),
  wire bytes (NIC counters; spine_wire_bytes: through the spine), predicted time and lower bound (locmoe-whatif).
Plain MPI_Alltoallv does not run here: mpirun's daemons reach their ranks over loopback/PMIx,
which do not cross network namespaces.
"""
import argparse, itertools, json, os, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
EMU = os.path.join(HERE, "emu-cluster.sh")


def sh(*args, **kw):
    return subprocess.run(list(args), check=True, text=True, capture_output=True, **kw).stdout


def tx_bytes():
    """Bytes sent so far by every host's NICs, and (rails) through the spine."""
    d = json.loads(sh(EMU, "counters", "--json"))
    return sum(h["tx_bytes"] for h in d["hosts"]), sum(s["tx_bytes"] for s in d.get("spine", []))


def inner(a):
    state = os.environ.get("LOCMOE_EMU_STATE", "/run/locmoe-emu") + "/" + os.environ["LOCMOE_EMU_PREFIX"] + ".env"
    env = dict(l.strip().split("=", 1) for l in open(state) if "=" in l)
    hosts, bw = int(env["EMU_HOSTS"]), float(env["EMU_BW_BYTES"])
    rails, spine_bw = int(env.get("EMU_RAILS", "0")), float(env.get("EMU_SPINE_BW_BYTES", "0"))
    n = hosts * a.ranks_per_host
    rows = []
    port = itertools.count()  # a fresh rendezvous port per launch
    logs = f"/tmp/emu-bench-{os.getpid()}"
    for size in a.sizes:
        iters = max(2, min(a.iters, int(a.budget_bytes // max(1, size * n * n))))
        # The algorithms alternate, --repeats times: a slow spell of the shared machine then hits
        # both, and the median of each is compared.
        runs = {algo: [] for algo in a.algos}
        for rep in range(a.repeats):
            for algo in a.algos:
                before = tx_bytes()
                r = subprocess.run([EMU, "launch", "-r", str(a.ranks_per_host), "-p", str(29700 + next(port) % 1000),
                                    "-t", "180", "-o", logs, "--", a.rank_bin, "--bytes", str(size), "--iters", str(iters),
                                    "--warmup", "1", "--sync", "--algo", algo], text=True, capture_output=True)
                after = tx_bytes()
                wire, spine = after[0] - before[0], after[1] - before[1]
                res = []
                for k in range(n):
                    lines = [l for l in open(f"{logs}/rank{k}.log") if l.startswith("{")]
                    res.append(json.loads(lines[-1]) if lines else {"ok": False})
                if r.returncode != 0 or not all(x.get("ok") for x in res):
                    print(f"emu-bench: {hosts} hosts, {algo}, {size} B failed: {res}", file=sys.stderr)
                    continue
                runs[algo].append((max(x["seconds"] for x in res) / iters, res, wire, spine))
        for algo in a.algos:
            if not runs[algo]:
                continue
            times = sorted(x[0] for x in runs[algo])
            t = times[len(times) // 2]
            _, res, wire, spine = next(x for x in runs[algo] if x[0] == t)
            algbw = size * n / t
            pred = json.loads(sh(a.whatif, "--nodes", str(hosts), "--ranks-per-node", str(a.ranks_per_host),
                                 "--nics-per-node", str(max(1, rails)), "--spine-bw", str(spine_bw),
                                 "--inter-bw", str(bw), "--inter-latency", str(a.inter_latency),
                                 "--intra-bw", str(a.intra_bw), "--intra-latency", str(a.intra_latency),
                                 "--uniform-bytes", str(size), "--json"))
            p = next(x for x in pred["results"] if x["phase"] == "dispatch" and x["algo"] == algo)
            row = {"hosts": hosts, "ranks_per_host": a.ranks_per_host, "ranks": n, "algo": algo, "bytes_per_pair": size,
                   "iters": iters, "time_s": t, "time_runs_s": times, "algbw_Bps": algbw,
                   "busbw_Bps": algbw * (n - 1) / n,
                   "internode_payload_bytes": sum(x["internode_bytes_sent"] for x in res) // iters,
                   "internode_msgs": sum(x["internode_msgs_sent"] for x in res) // iters,
                   "wire_bytes": wire // (iters + 1), "link_bw_Bps": bw,
                   "rails": rails, "spine_bw_Bps": spine_bw, "spine_wire_bytes": spine // (iters + 1),
                   "predicted_s": p["seconds"], "lower_bound_s": p["lower_bound_seconds"]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    subprocess.run(["rm", "-rf", logs])
    print(json.dumps(rows))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--ranks-per-host", type=int, default=4)
    ap.add_argument("--bw", default="8gbit", help="shaped link rate (tc syntax); with --rails, per NIC")
    ap.add_argument("--rails", type=int, default=0, help="NICs per host on a rail-optimized fabric (emu-cluster.sh "
                    "up --rails; must equal --ranks-per-host); 0: one shared NIC per host")
    ap.add_argument("--spine-bw", help="with --rails: each rail's spine link rate (default: non-blocking)")
    ap.add_argument("--spine-oversub", type=float, help="with --rails, instead of --spine-bw: each rail's spine link "
                    "at hosts x --bw / this (1: non-blocking; 2: half of what the rail's NICs can send)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 65536, 262144, 1048576])
    ap.add_argument("--algos", nargs="+", default=["flat", "hier"])
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="launches per point, algorithms alternating; the median is kept")
    ap.add_argument("--budget-bytes", type=float, default=2e8, help="caps iters so each point moves about this much")
    ap.add_argument("--intra-bw", type=float, default=4e9, help="measured shared-memory bandwidth per rank (B/s)")
    ap.add_argument("--intra-latency", type=float, default=20e-6)
    ap.add_argument("--inter-latency", type=float, default=100e-6)
    ap.add_argument("--rank-bin", default=os.path.join(HERE, "../build/tests/emu/locmoe-emu-rank"))
    ap.add_argument("--whatif", default=os.path.join(HERE, "../build/perf/whatif/locmoe-whatif"))
    ap.add_argument("--out")
    ap.add_argument("--inner", action="store_true")
    a = ap.parse_args()
    os.environ.update({"LOCMOE_TIMEOUT_S": "60"})
    if a.inner:
        return inner(a)
    rows = []
    for h in a.hosts:
        env = dict(os.environ, LOCMOE_EMU_PREFIX=f"lmbench{os.getpid()}")
        args = [sys.executable, os.path.abspath(__file__), "--inner", "--ranks-per-host", str(a.ranks_per_host),
                "--sizes", *map(str, a.sizes), "--algos", *a.algos, "--iters", str(a.iters),
                "--repeats", str(a.repeats), "--budget-bytes", str(a.budget_bytes), "--intra-bw", str(a.intra_bw),
                "--intra-latency", str(a.intra_latency), "--inter-latency", str(a.inter_latency),
                "--rank-bin", a.rank_bin, "--whatif", a.whatif]
        up = (["--bw", a.bw] + (["--rails", str(a.rails)] if a.rails else []) +
              (["--spine-bw", a.spine_bw] if a.spine_bw else []) +
              (["--spine-oversub", str(a.spine_oversub)] if a.spine_oversub else []))
        out = subprocess.run([EMU, "run", str(h), *up, "--", *args], env=env, text=True,
                             stdout=subprocess.PIPE, check=True).stdout
        rows += json.loads(out.strip().splitlines()[-1])
    doc = {"bw": a.bw, "rails": a.rails, "spine_bw": a.spine_bw, "spine_oversub": a.spine_oversub, "rows": rows}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
