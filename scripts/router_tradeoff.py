#!/usr/bin/python3
"""LocMoE+ trade-off against GShard top-2 on the same input (docs/PERFORMANCE.md "## Router").

Runs `locmoe-route --json` once for GShard and once per (tau, locality margin) for LocMoE+, and
prints a markdown table: max tokens per expert, cross-node copies and kept gate mass, each also as
a ratio to GShard's.

  scripts/router_tradeoff.py build/router/locmoe-route --synthetic 16384,1024,1 \
      --nodes 2 --ranks-per-node 8 --experts-per-rank 4
"""
import json
import subprocess
import sys


def run(tool, args, extra):
    out = subprocess.run([tool, *args, *extra, "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)["routers"][0]["metrics"]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    tool, args = sys.argv[1], sys.argv[2:]
    g = run(tool, args, ["--router", "gshard"])
    print(f"GShard top-2: max tokens/expert {g['max_tokens_per_expert']}, cross-node copies "
          f"{g['copies_cross_node']}, kept gate mass {g['kept_gate_mass']:.4f}\n")
    print("| tau | lambda | C used | max tok/expert (x GShard) | cross-node copies (x GShard) "
          "| kept gate mass (x GShard) | tokens with no expert |")
    print("|---|---|---|---|---|---|---|")
    for tau in ["0.9", "0.75", "0.7", "0.6", "0.5"]:
        for lam in ["0", "0.02", "0.05", "0.1", "0.4"]:
            m = run(tool, args, ["--router", "locmoe+", "--tau", tau, "--locality-margin", lam])
            print(f"| {tau} | {lam} | {m['capacity']} "
                  f"| {m['max_tokens_per_expert']} ({m['max_tokens_per_expert'] / g['max_tokens_per_expert']:.2f}) "
                  f"| {m['copies_cross_node']} ({m['copies_cross_node'] / max(1, g['copies_cross_node']):.2f}) "
                  f"| {m['kept_gate_mass']:.4f} ({m['kept_gate_mass'] / g['kept_gate_mass']:.2f}) "
                  f"| {m['dropped_tokens']} |")


if __name__ == "__main__":
    main()
