"""Runs `locmoe-perf ep` on 4 ranks as 2 emulated nodes and checks its JSON against the plans.

usage: check_perf_ep.py MPIEXEC LOCMOE_PERF OUT_JSON

Not a timing test: it checks that the JSON is well-formed, that the bytes the tool reports for the
Dispatcher equal what the routing plans imply (every rank's rank_count, the token copies it sends to
each rank, times the row size; inter-node apart by node_of_rank), that the MPI_Alltoallv reference
agreed with the Dispatcher (#wrong = 0 in every phase), and that the step counters are present.
Then `--memory device` must either run (a GPU is present) or be refused with exit code 2 naming the
flag, never crash.
"""
import json
import os
import subprocess
import sys

R, HALF = 4, 2
FAILURES = []


def expect(cond, what):
    if not cond:
        FAILURES.append(what)


def main(mpiexec, exe, out):
    if os.path.exists(out):
        os.remove(out)
    args = [exe, "ep", "-b", "8", "-e", "32", "-f", "4", "-n", "2", "-w", "1", "-c", "1", "--hidden", "12",
            "--router", "gshard", "--algo", "flat", "-J", out]
    cmd = [mpiexec, "--oversubscribe", "--bind-to", "none", "-np", str(HALF), "-x", "LOCMOE_HOSTID=nodeA"] + args + \
          [":", "-np", str(HALF), "-x", "LOCMOE_HOSTID=nodeB"] + args
    run = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=240)
    print(run.stdout)
    expect(run.returncode == 0, f"locmoe-perf ep exited {run.returncode}")
    with open(out) as f:
        doc = json.load(f)
    for key in ("ranks", "nodes", "node_of_rank", "hidden", "transport", "algo", "router", "results",
                "memcpy_GBps_one_rank", "memcpy_GBps_per_rank_all_ranks", "mpi_reference"):
        expect(key in doc, f"JSON lacks {key}")
    expect(doc["ranks"] == R and doc["nodes"] == 2, f"ranks {doc['ranks']} nodes {doc['nodes']}, expected {R} and 2")
    expect(doc["mpi_reference"] is True, "no MPI reference ran")
    node = doc["node_of_rank"]
    expect([t["tokens"] for t in doc["results"]] == [8, 32], "sizes are not tokens 8 and 32")
    for res in doc["results"]:
        T, C, rb, k = res["tokens"], res["rank_count"], res["row_bytes"], res["k"]
        expect(rb == doc["hidden"] * 4, f"row_bytes {rb}, expected hidden x 4")
        expect(len(C) == R and all(len(row) == R for row in C), f"rank_count is not {R} x {R}")
        for key in ("metadata_rounds_per_step", "data_exchanges_per_step"):
            expect(isinstance(res.get(key), int) and res[key] >= 1, f"T {T}: {key} = {res.get(key)}")
        # Issue 14's budget: the dispatch negotiates once, every other call executes its plans, and
        # the weight gradients ride behind dispatch_backward's rows (--weight-grads-behind 1, the default).
        expect(doc["weight_grads_behind"] is True, "weight_grads_behind is not the default")
        expect(res["metadata_rounds_per_step"] == 1, f"T {T}: {res['metadata_rounds_per_step']} metadata rounds, expected 1")
        expect(res["data_exchanges_per_step"] == 4, f"T {T}: {res['data_exchanges_per_step']} data exchanges, expected 4")
        # Token copies each rank sends to other ranks (out) and receives from them (back), from the plans.
        out_rows = [sum(C[s][r] for r in range(R) if r != s) for s in range(R)]
        out_inter = [sum(C[s][r] for r in range(R) if node[r] != node[s]) for s in range(R)]
        back_rows = [sum(C[r][s] for r in range(R) if r != s) for s in range(R)]
        back_inter = [sum(C[r][s] for r in range(R) if node[r] != node[s]) for s in range(R)]
        expect(sum(out_inter) > 0, f"T {T}: no copy crosses the nodes (the check would be empty)")
        phases = {(p["impl"], p["phase"]): p for p in res["phases"]}
        expect(len(phases) == 8, f"T {T}: {len(phases)} phase rows, expected 4 phases x (locmoe, mpi)")
        for (impl, name), p in phases.items():
            where = f"T {T} {impl} {name}"
            expect(p["wrong"] == 0, f"{where}: {p['wrong']} outputs differ from the MPI reference")
            expect(p["time_us"] > 0, f"{where}: time {p['time_us']}")
            for s in range(R):  # flat: nothing is forwarded, so a byte goes to a peer on this node or the other
                expect(p["intranode_bytes_per_rank"][s] + p["internode_bytes_per_rank"][s] == p["bytes_per_rank"][s],
                       f"{where}: rank {s}: intra + inter != bytes")
        d = phases[("locmoe", "dispatch")]
        expect(d["row_bytes_per_rank"] == [n * rb for n in out_rows],
               f"T {T}: dispatch row bytes {d['row_bytes_per_rank']}, plans give {[n * rb for n in out_rows]}")
        expect(d["row_internode_bytes_per_rank"] == [n * rb for n in out_inter],
               f"T {T}: dispatch inter-node row bytes {d['row_internode_bytes_per_rank']}, plans give "
               f"{[n * rb for n in out_inter]}")
        expect(all(d["bytes_per_rank"][s] >= out_rows[s] * rb for s in range(R)), f"T {T}: dispatch moved fewer bytes than its rows")
        # combine sends the received rows back and nothing else; dispatch_backward the same rows with
        # the k weight gradients (fp32) of each row behind it.
        for name, per_row in (("combine", rb), ("dispatch_backward", rb + 4 * k)):
            p = phases[("locmoe", name)]
            expect(p["bytes_per_rank"] == [n * per_row for n in back_rows],
                   f"T {T}: {name} bytes {p['bytes_per_rank']}, plans give {[n * per_row for n in back_rows]}")
            expect(p["internode_bytes_per_rank"] == [n * per_row for n in back_inter],
                   f"T {T}: {name} inter-node bytes {p['internode_bytes_per_rank']}, plans give "
                   f"{[n * per_row for n in back_inter]}")
        cb = phases[("locmoe", "combine_backward")]
        expect(all(cb["bytes_per_rank"][s] >= out_rows[s] * rb for s in range(R)),
               f"T {T}: combine_backward moved fewer bytes than its gradient rows")
        # The MPI reference: rows plus k (id, weight) pairs per copy out; rows back; weight gradients back.
        want = {"dispatch": [n * (rb + 8 * k) for n in out_rows], "combine": [n * rb for n in back_rows],
                "combine_backward": [out_rows[s] * rb + back_rows[s] * 4 * k for s in range(R)],
                "dispatch_backward": [n * rb for n in back_rows]}
        for name, w in want.items():
            got = phases[("mpi", name)]["bytes_per_rank"]
            expect(got == w, f"T {T}: MPI {name} bytes {got}, plans give {w}")

    # Device memory: runs where there is a GPU, else a clear refusal (exit 2) naming the flag.
    dev = subprocess.run([mpiexec, "-np", "1", exe, "ep", "--memory", "device", "-b", "8", "-e", "8", "-n", "1",
                          "-w", "0", "--hidden", "12"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         timeout=120)
    print(dev.stdout)
    expect(dev.returncode == 0 or (dev.returncode == 2 and "--memory device:" in dev.stdout),
           f"--memory device: exit {dev.returncode}, expected 0 (GPU) or 2 with a refusal naming --memory device")

    for f in FAILURES:
        print("FAIL:", f)
    print(f"check_perf_ep: {'OK' if not FAILURES else str(len(FAILURES)) + ' failure(s)'}")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
