#!/usr/bin/env python3
"""Draw docs/performance.png from the JSON that bench.py writes (--json).

    python benchmarks/bench.py big.pcap --json results.json
    python benchmarks/chart.py results.json docs/performance.png

Needs matplotlib (``pip install 'maildissect[bench]'``).
"""

from __future__ import annotations

import json
import sys


def main():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.load(open(sys.argv[1]))
    out = sys.argv[2] if len(sys.argv) > 2 else "docs/performance.png"
    labels = [r.get("label") or r["suite"] for r in results]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(len(results))
    w = 0.38
    ax_t.bar([i - w / 2 for i in x], [r["maildissect_s"] for r in results], w, label="maildissect", color="#2b6cb0")
    ax_t.bar([i + w / 2 for i in x], [r["tshark_s"] or 0 for r in results], w, label="tshark", color="#a0aec0")
    ax_t.set_xticks(list(x), labels)
    ax_t.set_ylabel("seconds (lower is better)")
    ax_t.set_title("time")
    for i, r in enumerate(results):
        if r.get("ratio"):
            ax_t.annotate(f"×{r['ratio']}", (i - w / 2, r["maildissect_s"]), ha="center", va="bottom", fontsize=9)
    ax_t.legend(frameon=False)
    ax_m.bar([i - w / 2 for i in x], [r.get("maildissect_tree_rss_mb", r["maildissect_rss_mb"]) for r in results], w,
             color="#2b6cb0")
    ax_m.bar([i + w / 2 for i in x], [r["tshark_rss_mb"] or 0 for r in results], w, color="#a0aec0")
    ax_m.set_xticks(list(x), labels)
    ax_m.set_ylabel("peak RSS of all processes, MB")
    ax_m.set_title("memory")
    for ax in (ax_t, ax_m):
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(f"{results[0]['capture_mb']} MB capture, 2 cores")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
