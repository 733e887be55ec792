"""``bench.png``: speedup and FLOPs reduction against the budget, one line per method.

Optional dependency: matplotlib (``pip install 'vlmprune[bench]'``), used with the non-interactive
Agg backend. :func:`plot_bench` returns ``None`` (and says so on stderr) when it is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path


def plot_bench(result: dict, path) -> Path | None:
    """Two panels from a ``vlmprune bench`` result (``{"meta": ..., "rows": [...]}``): left the
    prefill speedup ``full / pruned`` (median of paired ratios, IQR as error bars) against the
    visual tokens kept per image, right the analytic LLM prefill FLOPs reduction. One line per
    method, the oracle (K tokens fed directly, no selection) dashed. Returns the written path."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_plot: matplotlib is not installed, skipping the plot", file=sys.stderr)
        return None

    meta, rows = result["meta"], result["rows"]
    series: dict[str, list[dict]] = {}
    for r in rows:
        if r["method"] == "full" or r.get("full_over_pruned") is None:
            continue
        series.setdefault(r["method"], []).append(r)
    fig, (ax_s, ax_f) = plt.subplots(1, 2, figsize=(11, 4.4))
    names = sorted(series, key=lambda n: (n == "oracle", n))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        pts = sorted(series[name], key=lambda r: r["budget"])
        x = [r["budget"] for r in pts]
        y = [r["full_over_pruned"] for r in pts]
        lo = [
            max(0.0, r["full_over_pruned"] - (r.get("full_over_pruned_q1") or r["full_over_pruned"]))
            for r in pts
        ]
        hi = [
            max(0.0, (r.get("full_over_pruned_q3") or r["full_over_pruned"]) - r["full_over_pruned"])
            for r in pts
        ]
        style = (
            {"color": "black", "linestyle": "--", "linewidth": 2} if name == "oracle" else {"color": cmap(i)}
        )
        ax_s.errorbar(x, y, yerr=[lo, hi], marker="o", markersize=4, capsize=2, label=name, **style)
        red = [100 * r["flops_reduction"] for r in pts]
        ax_f.plot(x, red, marker="o", markersize=4, label=name, **style)
    ax_s.axhline(1.0, color="grey", linewidth=0.8)
    ax_s.set_xlabel("visual tokens kept per image (K)")
    ax_s.set_ylabel("prefill speedup full / pruned (x)")
    ax_s.set_title("measured prefill (time to first token)")
    ax_f.set_xlabel("visual tokens kept per image (K)")
    ax_f.set_ylabel(f"LLM prefill FLOPs reduction (%), {meta.get('flops_convention', '')}")
    ax_f.set_title("analytic FLOPs (per-layer token schedule)")
    ax_f.text(
        0.98,
        0.98,
        "pre-LLM methods coincide with the oracle;\nin-LLM methods (FastV, DART) prune from layer K",
        transform=ax_f.transAxes,
        ha="right",
        va="top",
        fontsize=7,
        color="dimgrey",
    )
    for ax in (ax_s, ax_f):
        ax.grid(alpha=0.3)
    ax_f.legend(fontsize=7, ncol=2, loc="lower left")
    fig.suptitle(
        f"vlmprune bench: {meta['model']} ({meta.get('dtype', '')}), {meta.get('visual_tokens_per_image')} "
        f"visual tokens/image, {meta['device']}",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
