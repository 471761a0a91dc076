#!/usr/bin/env python3
"""(kept gate mass, cross-node copies) of locmoe-opt over --cross-node-cost, of LocMoE+ over --tau,
and of the exact optimum (a linear program solved by SciPy's HiGHS), each against GShard top-k on
the same input (docs/PERFORMANCE.md "### locmoe-opt against the exact optimum").

  perf/router/opt_frontier.py --route build/router/locmoe-route --features X.npy --gate W.npy \\
      --nodes 2 --ranks-per-node 8 --experts-per-rank 4 --out docs/data/opt-frontier-synthetic.json \\
      [--plot docs/img/opt-frontier-synthetic.png] [--opt-capacity-factor 1.125]

The routers run in locmoe-route (one process emulating the ranks: rank r owns rows [r T/R,
(r+1) T/R), expert e lives on rank e / experts-per-rank, ranks fill nodes in order); their plans
come back through --out-experts. The probabilities of the LP are softmax(X W^T) in float64.

Every router point is compared with the LP "fewest cross-node (token, expert) pairs keeping at
least the point's gate mass, no expert above the point's largest load, at most k experts per
token"; the exact curve is that LP at the locmoe-opt points' masses and capacity (so it is the
optimum's frontier at the same load). The LPs see every pair with p >= --prune (default 1e-6); the
pruned pairs' mass bound is printed. Pairs, not copies, are what the LP counts (a copy is one per
(token, destination rank)); both are reported for the routers.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linprog


def run_route(a, extra, tmp):
    ex = os.path.join(tmp, "experts.npy")
    cmd = [a.route, "--features", a.features, "--gate", a.gate, "--nodes", str(a.nodes),
           "--ranks-per-node", str(a.ranks_per_node), "--experts-per-rank", str(a.experts_per_rank),
           "--k", str(a.k), "--json", "--out-experts", ex, *extra]
    doc = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    return doc["routers"][0], np.load(ex)


class Input:
    def __init__(self, a):
        x = np.load(a.features).astype(np.float64)
        w = np.load(a.gate).astype(np.float64)
        z = x @ w.T
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        self.p = p / p.sum(axis=1, keepdims=True)
        self.T, self.E = self.p.shape
        R = a.nodes * a.ranks_per_node
        # rank r owns rows [r T / R, (r + 1) T / R): the largest r with r T / R <= t
        self.rank_t = np.searchsorted((np.arange(R + 1) * self.T) // R, np.arange(self.T), side="right") - 1
        self.rank_e = np.arange(self.E) // a.experts_per_rank
        self.node_t = self.rank_t // a.ranks_per_node
        self.node_e = self.rank_e // a.ranks_per_node
        self.cross = self.node_t[:, None] != self.node_e[None, :]
        self.k = a.k
        self.lp_pairs = a.lp_pairs
        self.lp_log = []
        self.topk = np.sort(self.p, axis=1)[:, -a.k:].sum()
        keep = self.p >= a.prune
        self.pruned_mass = self.p[~keep].sum()
        self.ti, self.ei = np.nonzero(keep)
        self.pv = self.p[self.ti, self.ei]
        self.cv = self.cross[self.ti, self.ei].astype(np.float64)
        n = len(self.pv)
        cols = np.arange(n)
        self.A = sp.vstack([sp.csr_matrix((np.ones(n), (self.ti, cols)), shape=(self.T, n)),
                            sp.csr_matrix((np.ones(n), (self.ei, cols)), shape=(self.E, n))]).tocsc()

    def measure(self, experts):
        ex = experts.reshape(self.T, -1)
        t, j = np.nonzero(ex >= 0)
        e = ex[t, j]
        loads = np.bincount(e, minlength=self.E)
        copies = {(int(tt), int(self.rank_e[ee])) for tt, ee in zip(t, e) if self.cross[tt, ee]}
        return {"kept_mass": float(self.p[t, e].sum() / self.topk), "cross_pairs": int(self.cross[t, e].sum()),
                "cross_copies": len(copies), "max_load": int(loads.max())}

    def b(self, cap):
        return np.r_[np.full(self.T, self.k, dtype=np.float64), np.full(self.E, cap, dtype=np.float64)]

    def min_cross(self, mass, cap):
        """Fewest cross-node pairs keeping >= mass (fraction of the top-k mass) under capacity cap.

        Column generation, exact: the LP over a subset of the pairs (each token's --lp-pairs most
        probable experts on its node and as many overall), then every pair left out is priced with
        the restricted LP's duals; pairs whose reduced cost is negative join and the LP is solved
        again. When none is negative the restricted optimum is the optimum over every pair."""
        if self.lp_pairs <= 0:
            return self.solve_lp(np.arange(len(self.pv)), mass, cap)[0]
        L = min(self.lp_pairs, self.E)
        score = np.where(self.cross, -1.0, self.p)  # same-node experts first, by p
        cand = np.concatenate([np.argpartition(-self.p, L - 1, axis=1)[:, :L],
                               np.argpartition(-score, L - 1, axis=1)[:, :L]], axis=1)
        member = np.zeros((self.T, self.E), dtype=bool)
        member[np.repeat(np.arange(self.T), cand.shape[1]), cand.ravel()] = True
        index = np.full((self.T, self.E), -1, dtype=np.int64)
        index[self.ti, self.ei] = np.arange(len(self.pv))
        cols = index[member]
        cols = np.sort(cols[cols >= 0])
        for rnd in range(50):
            fun, y = self.solve_lp(cols, mass, cap)
            if fun is None:
                return None
            # reduced cost of every pair: c - y_t - y_e + p y_mass (duals <= 0 for <= rows)
            d = self.cv - y[self.ti] - y[self.T + self.ei] + self.pv * y[-1]
            d[cols] = 0.0
            bad = np.nonzero(d < 0.0)[0]
            # Lagrangian bound: the optimum over every pair is >= fun + sum of the negative reduced
            # costs (each x <= 1), so `gap` bounds how far the restricted optimum can be above it.
            gap = float(-d[bad].sum())
            self.lp_log.append({"mass": mass, "cap": int(cap), "round": rnd, "columns": int(len(cols)),
                                "objective": fun, "negative_reduced_costs": int(len(bad)), "gap": gap})
            print(f"  LP mass {mass:.4f} cap {cap}: round {rnd}, {len(cols)} columns, objective {fun:.3f}, "
                  f"{len(bad)} columns with negative reduced cost, gap <= {gap:.2e}", flush=True)
            if gap <= 1e-3:
                return fun
            cols = np.union1d(cols, bad)
        return None

    def solve_lp(self, cols, mass, cap):
        A = sp.vstack([self.A[:, cols], sp.csr_matrix(-self.pv[None, cols])]).tocsr()
        b = np.r_[self.b(cap), -mass * self.topk]
        r = linprog(self.cv[cols], A_ub=A, b_ub=b, bounds=(0, 1), method="highs")
        if r.status != 0:
            return None, None
        return float(r.fun), r.ineqlin.marginals


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--route", required=True)
    ap.add_argument("--features", required=True)
    ap.add_argument("--gate", required=True)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--ranks-per-node", type=int, default=8)
    ap.add_argument("--experts-per-rank", type=int, default=4)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--opt-capacity-factor", type=float, default=1.125,
                    help="locmoe-opt's capacity factor (1.125: 0.90x GShard's capacity at 1.25)")
    ap.add_argument("--mu", default="0.01,0.02,0.05,0.1,0.2")
    ap.add_argument("--tau", default="0.9,0.7,0.6,0.5")
    ap.add_argument("--opt-tau", default="", help="locmoe-opt points with --opt-tau-capacity at these tau (at --opt-tau-mu)")
    ap.add_argument("--opt-tau-mu", type=float, default=0.05)
    ap.add_argument("--prune", type=float, default=1e-6)
    ap.add_argument("--lp-pairs", type=int, default=8,
                    help="column generation's first columns: each token's L most probable experts and its L most "
                         "probable on its node (0: one LP over every pair)")
    ap.add_argument("--extra", default="", help="more locmoe-route flags for every run (space separated)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--plot")
    a = ap.parse_args()
    inp = Input(a)
    extra = a.extra.split()
    print(f"T={inp.T} E={inp.E} k={a.k}; LP pairs {len(inp.pv)} (pruned mass {inp.pruned_mass:.3g} of "
          f"top-k mass {inp.topk:.1f})", flush=True)
    out = {"input": vars(a), "lp_pairs": len(inp.pv), "pruned_mass": inp.pruned_mass}
    with tempfile.TemporaryDirectory() as tmp:
        g, ex = run_route(a, ["--router", "gshard", *extra], tmp)
        out["gshard"] = inp.measure(ex)
        print("gshard", out["gshard"], flush=True)
        rows = []
        for mu in filter(None, a.mu.split(",")):
            m, ex = run_route(a, ["--router", "locmoe-opt", "--cross-node-cost", mu,
                                  "--capacity-factor", str(a.opt_capacity_factor), *extra], tmp)
            pt = inp.measure(ex)
            pt.update(router="locmoe-opt", mu=float(mu), iterations=m["steps"][-1]["opt_iterations"],
                      converged=m["steps"][-1]["opt_converged"])
            rows.append(pt)
        for tau in filter(None, a.opt_tau.split(",")):
            m, ex = run_route(a, ["--router", "locmoe-opt", "--cross-node-cost", str(a.opt_tau_mu), "--opt-tau-capacity",
                                  "--tau", tau, *extra], tmp)
            pt = inp.measure(ex)
            pt.update(router="locmoe-opt", mu=a.opt_tau_mu, tau=float(tau), capacity=m["steps"][-1]["capacity"],
                      iterations=m["steps"][-1]["opt_iterations"], converged=m["steps"][-1]["opt_converged"])
            rows.append(pt)
        for tau in filter(None, a.tau.split(",")):
            m, ex = run_route(a, ["--router", "locmoe+", "--tau", tau, *extra], tmp)
            pt = inp.measure(ex)
            pt.update(router="locmoe+", tau=float(tau))
            rows.append(pt)
    for pt in rows:
        pt["lp_cross_pairs"] = inp.min_cross(pt["kept_mass"], pt["max_load"])
        pt["vs_lp"] = pt["cross_pairs"] / pt["lp_cross_pairs"] if pt["lp_cross_pairs"] else None
        print(pt, flush=True)
    out["points"] = rows
    out["lp_log"] = inp.lp_log
    cap = max((pt["max_load"] for pt in rows if pt["router"] == "locmoe-opt" and "tau" not in pt), default=None)
    out["exact_capacity"] = cap
    out["exact"] = [{"kept_mass": p["kept_mass"], "cross_pairs": p["lp_cross_pairs"]} for p in rows
                    if p["router"] == "locmoe-opt" and "tau" not in p and p["lp_cross_pairs"] is not None]
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        gs = out["gshard"]
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for name, marker in (("locmoe-opt", "o-"), ("locmoe+", "s-")):
            pts = [p for p in rows if p["router"] == name and (name != "locmoe-opt" or "tau" not in p)]
            ax.plot([p["cross_pairs"] / gs["cross_pairs"] for p in pts], [p["kept_mass"] / gs["kept_mass"] for p in pts],
                    marker, label=f"{name} (over {'mu' if name == 'locmoe-opt' else 'tau'})")
        tp = [p for p in rows if p["router"] == "locmoe-opt" and "tau" in p]
        if tp:
            ax.plot([p["cross_pairs"] / gs["cross_pairs"] for p in tp], [p["kept_mass"] / gs["kept_mass"] for p in tp],
                    "^:", label=f"locmoe-opt mu {a.opt_tau_mu} (C from tau)")
        ex_pts = out["exact"]
        ax.plot([p["cross_pairs"] / gs["cross_pairs"] for p in ex_pts], [p["kept_mass"] / gs["kept_mass"] for p in ex_pts],
                "k--", label=f"exact LP optimum (C = {cap})")
        ax.plot([1], [1], "r*", markersize=12, label="GShard top-2")
        ax.set_xlabel("cross-node (token, expert) pairs / GShard's")
        ax.set_ylabel("kept gate mass / GShard's")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
