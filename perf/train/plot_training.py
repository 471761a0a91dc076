#!/usr/bin/env python3
"""Plots train_moe_lm.py runs: held-out loss per router, C_lb (and the capacity used) over steps,
bytes across nodes per step; prints a summary table (JSON) of the runs.
Usage: plot_training.py RESULTS_DIR IMG_DIR   (reads RESULTS_DIR/<router>.jsonl)"""
import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(d):
    runs = {}
    for f in sorted(glob.glob(os.path.join(d, "*.jsonl"))):
        recs = [json.loads(line) for line in open(f) if line.strip()]
        if recs:
            runs[recs[0]["router"]] = recs
    return runs


def mean(xs):
    return sum(xs) / len(xs) if xs else float("nan")


def summary(runs):
    out = {}
    for r, recs in runs.items():
        ev = [x for x in recs if "heldout_loss" in x]
        L = len(recs[0]["layers"])
        out[r] = {
            "steps": len(recs),
            "final_heldout_loss": ev[-1]["heldout_loss"] if ev else None,
            "final_train_loss_mean_last10": mean([x["train_loss"] for x in recs[-10:]]),
            "internode_bytes_per_step": mean([sum(l["internode_bytes"] for l in x["layers"]) for x in recs]),
            "max_tokens_per_expert_mean": mean([mean([l["max_tokens_per_expert"] for l in x["layers"]]) for x in recs]),
            "dropped_slots_per_step": mean([sum(l["dropped_slots"] for l in x["layers"]) for x in recs]),
            "kept_gate_mass": mean([mean([l["kept_gate_mass"] for l in x["layers"]]) for x in recs]),
            "capacity_first10": mean([mean([l["capacity"] for l in x["layers"]]) for x in recs[:10]]),
            "capacity_last10": mean([mean([l["capacity"] for l in x["layers"]]) for x in recs[-10:]]),
            "c_lb_first10": mean([mean([l["capacity_lower_bound"] for l in x["layers"]]) for x in recs[:10]]),
            "c_lb_last10": mean([mean([l["capacity_lower_bound"] for l in x["layers"]]) for x in recs[-10:]]),
            "step_s_median": sorted(x["step_s"] for x in recs[5:] or recs)[len(recs[5:] or recs) // 2],
            "layers": L,
            "conserved": all(x["conserved"] for x in recs),
        }
    return out


def main():
    d, img = sys.argv[1], sys.argv[2]
    os.makedirs(img, exist_ok=True)
    runs = load(d)
    fig, ax = plt.subplots(figsize=(6, 4))
    for r, recs in runs.items():
        ev = [x for x in recs if "heldout_loss" in x]
        ax.plot([x["step"] + 1 for x in ev], [x["heldout_loss"] for x in ev], marker="o", label=r)
    ax.set(xlabel="step", ylabel="held-out loss (nats/byte)", title="Byte-level MoE LM, 8 ranks / 2 nodes")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "train_heldout_loss.png"), dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r, recs in runs.items():
        steps = [x["step"] for x in recs]
        if any(l["capacity_lower_bound"] for x in recs for l in x["layers"]):
            ax.plot(steps, [mean([l["capacity_lower_bound"] for l in x["layers"]]) for x in recs], label=f"{r} C_lb")
        if any(l["capacity"] for x in recs for l in x["layers"]):
            ax.plot(steps, [mean([l["capacity"] for l in x["layers"]]) for x in recs], ls="--", label=f"{r} capacity used")
    ax.set(xlabel="step", ylabel="slots per expert (mean over layers)", title="Capacity lower bound over training")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "train_clb.png"), dpi=110)

    fig, ax = plt.subplots(figsize=(6, 4))
    for r, recs in runs.items():
        ax.plot([x["step"] for x in recs], [sum(l["internode_bytes"] for l in x["layers"]) / 1e6 for x in recs], label=r)
    ax.set(xlabel="step", ylabel="MB across nodes per step (dispatch payload, all layers)",
           title="Bytes across nodes")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(os.path.join(img, "train_internode_bytes.png"), dpi=110)
    print(json.dumps(summary(runs), indent=1))


if __name__ == "__main__":
    main()
