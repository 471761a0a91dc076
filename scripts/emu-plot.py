#!/usr/bin/python3
"""emu-plot.py: the emulated-cluster and cost-model figures of docs/PERFORMANCE.md, from the JSON of
scripts/emu-bench.py (docs/data/emu-a2a-*.json) and locmoe-whatif (docs/data/whatif-ndv5-n*.json).
Writes docs/img/emu-a2a-busbw.png (busbw against size per algorithm and host count, measured, with
the link's rate and the model's prediction) and docs/img/whatif-ndv5.png (predicted dispatch time
per stage class and inter-node bytes per router, 2/4/8 nodes of ND H100 v5)."""
import glob, json, os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA, IMG = os.path.join(ROOT, "docs/data"), os.path.join(ROOT, "docs/img")


def plot_a2a():
    files = sorted(glob.glob(os.path.join(DATA, "emu-a2a-*.json")))
    if not files:
        return
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4.2), squeeze=False)
    for ax, f in zip(axes[0], files):
        doc = json.load(open(f))
        rows = doc["rows"]
        for hosts in sorted({r["hosts"] for r in rows}):
            for algo, style in (("flat", "o-"), ("hier", "s--")):
                pts = sorted((r["bytes_per_pair"], r["busbw_Bps"] / 1e6, r) for r in rows
                             if r["hosts"] == hosts and r["algo"] == algo)
                if not pts:
                    continue
                n = pts[0][2]["ranks"]
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{hosts} hosts x {n // hosts}: {algo}")
                # The model's busbw for the same exchange: bytes a rank sends over the predicted time.
                ax.plot([p[0] for p in pts], [p[0] * n * (n - 1) / n / p[2]["predicted_s"] / 1e6 for p in pts],
                        style[0] + ":", alpha=0.4, color=ax.lines[-1].get_color())
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bytes per rank pair")
        ax.set_ylabel("busbw (MB/s)")
        ax.set_title(f"emulated links at {doc['bw']} (dotted: locmoe-whatif)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(IMG, "emu-a2a-busbw.png"), dpi=110)


def plot_whatif():
    files = sorted(glob.glob(os.path.join(DATA, "whatif-ndv5-n*.json")), key=lambda f: int(f.split("-n")[-1][:-5]))
    if not files:
        return
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    routers = []
    table = {}
    for f in files:
        doc = json.load(open(f))
        nodes = doc["cluster"]["nodes"]
        for r in doc["results"]:
            if r["phase"] != "dispatch":
                continue
            routers.append(r["traffic"]) if r["traffic"] not in routers else None
            table[(nodes, r["traffic"], r["algo"])] = r
    node_counts = sorted({k[0] for k in table})
    width = 0.8 / len(routers)
    for i, router in enumerate(routers):
        xs = [j + i * width for j in range(len(node_counts))]
        flat = [table[(n, router, "flat")] for n in node_counts]
        a1.bar(xs, [r["inter_seconds"] * 1e3 for r in flat], width, label=f"{router}: inter-node")
        a1.bar(xs, [r["intra_seconds"] * 1e3 for r in flat], width, bottom=[r["inter_seconds"] * 1e3 for r in flat],
               alpha=0.5, label=f"{router}: intra-node")
        a2.bar(xs, [r["internode_bytes"] / 1e9 for r in flat], width, label=router)
    for a in (a1, a2):
        a.set_xticks([j + 0.4 - width / 2 for j in range(len(node_counts))])
        a.set_xticklabels([f"{n} nodes" for n in node_counts])
        a.grid(True, axis="y", alpha=0.3)
    a1.set_ylabel("predicted flat dispatch (ms): inter + intra shares;\n time = the larger (they overlap)")
    a1.set_title("ND H100 v5, H=7168 bf16, 4096 tok/GPU, top-8 of 256")
    a1.legend(fontsize=6, ncol=2)
    a2.set_ylabel("inter-node bytes per dispatch (GB)")
    a2.set_title("bytes between nodes (whole cluster)")
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(IMG, "whatif-ndv5.png"), dpi=110)


if __name__ == "__main__":
    os.makedirs(IMG, exist_ok=True)
    plot_a2a()
    plot_whatif()
