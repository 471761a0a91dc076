#!/usr/bin/python3
"""emu-plot.py: the emulated-cluster and cost-model figures of docs/PERFORMANCE.md, from the JSON of
scripts/emu-bench.py (docs/data/emu-a2a-*.json) and locmoe-whatif (docs/data/whatif-ndv5-n*.json).
Writes docs/img/emu-a2a-busbw.png (busbw against size per algorithm and host count, measured, with
the model's prediction; a panel per file: one shared link per host, or rails with their spine) and docs/img/whatif-ndv5.png (predicted dispatch time
per stage class and inter-node bytes per router, 2/4/8 nodes of ND H100 v5), and from
scripts/emu-moe.py (docs/data/emu-moe-*.json) docs/img/emu-moe-layer.png (moe_layer step time per
stage and bytes per link class, per router and host count), and from `locmoe-perf a2a -J` run on
the emulated cluster (docs/data/emu-perf-a2a-*.json) docs/img/emu-perf-a2a.png (busbw against
size per algorithm)."""
import glob, json, os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA, IMG = os.path.join(ROOT, "docs/data"), os.path.join(ROOT, "docs/img")


def save(fig, name):
    fig.tight_layout()
    fig.savefig(os.path.join(IMG, name), dpi=110)


def plot_a2a():
    files = sorted(glob.glob(os.path.join(DATA, "emu-a2a-*.json")))
    if not files:
        return
    cols = min(2, len(files))
    rows_ = (len(files) + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(6 * cols, 4.2 * rows_), squeeze=False)
    for ax in axes.flat[len(files):]:
        ax.set_visible(False)
    for ax, f in zip(axes.flat, files):
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
        if doc.get("rails"):
            spine = f"spine {doc['spine_oversub'] or 1:g}:1" if not doc.get("spine_bw") else f"spine {doc['spine_bw']}"
            ax.set_title(f"{doc['rails']} rails, NICs at {doc['bw']}, {spine} (dotted: locmoe-whatif)", fontsize=10)
        else:
            ax.set_title(f"one link per host at {doc['bw']} (dotted: locmoe-whatif)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, "emu-a2a-busbw.png")


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
    save(fig, "whatif-ndv5.png")


def plot_moe():
    files = sorted(glob.glob(os.path.join(DATA, "emu-moe-*.json")))
    doc = json.load(open(files[0])) if files else None
    if doc is None:
        return
    rows = doc["rows"]
    args = doc["layer"].split()
    arg = lambda name: int(args[args.index(name) + 1])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    labels = [f"{r['hosts']}x{r['ranks_per_host']}\n{r['router']}" for r in rows]
    xs = range(len(rows))
    bottom = [0.0] * len(rows)
    for stage in ("route", "dispatch", "experts", "combine", "backward"):
        v = [r["seconds"][stage] for r in rows]
        a1.bar(xs, v, 0.6, bottom=bottom, label=stage)
        bottom = [b + x for b, x in zip(bottom, v)]
    a1.set_ylabel("seconds per forward+backward step (max over ranks)")
    a1.set_title(f"moe_layer on emulated hosts, links {doc['bw']}")
    # Rows of a step: every (token, slot) row crosses 4 times (dispatch, combine, 2 backward).
    inter = [4 * r["dispatch_internode_bytes_per_step"] / 1e6 for r in rows]
    total = [4 * r["hosts"] * r["ranks_per_host"] * arg("--tokens") * arg("--k") * arg("--hidden") * 4 / 1e6
             for r in rows]
    w = 0.27
    a2.bar([x - w for x in xs], inter, w, label="between hosts (plan payload x 4)")
    a2.bar(xs, [t - i for t, i in zip(total, inter)], w, label="inside a host (shared memory, incl. self)")
    a2.bar([x + w for x in xs], [r["wire_bytes_per_step"] / 1e6 for r in rows], w,
           label="host eth0 counters (incl. the example's check)")
    a2.set_ylabel("MB per step")
    a2.set_title("bytes per link class")
    for a in (a1, a2):
        a.set_xticks(list(xs))
        a.set_xticklabels(labels, fontsize=8)
        a.grid(True, axis="y", alpha=0.3)
        a.legend(fontsize=7)
    save(fig, "emu-moe-layer.png")


def plot_perf_a2a():
    files = sorted(glob.glob(os.path.join(DATA, "emu-perf-a2a-*.json")))
    if not files:
        return
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for f in files:
        doc = json.load(open(f))
        tag = f"{doc['nodes']} hosts x {doc['ranks'] // doc['nodes']}"
        for algo, style in (("flat", "o-"), ("hier", "s--")):
            pts = sorted((r["bytes"], r["busbw"] * 1e3) for r in doc["results"] if r["algo"] == algo)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=f"{tag}: {algo}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("bytes each rank sends (per exchange)")
    ax.set_ylabel("busbw (MB/s)")
    ax.set_title("locmoe-perf a2a on the emulated cluster")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    save(fig, "emu-perf-a2a.png")


if __name__ == "__main__":
    os.makedirs(IMG, exist_ok=True)
    plot_a2a()
    plot_whatif()
    plot_moe()
    plot_perf_a2a()
