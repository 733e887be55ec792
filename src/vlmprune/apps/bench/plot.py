"""``bench.png``: speedup and FLOPs reduction against the budget, one line per method; with
several image sizes, prefill time and the overhead of choosing against the visual tokens.

Optional dependency: matplotlib (``pip install 'vlmprune[bench]'``), used with the non-interactive
Agg backend. :func:`plot_bench` returns ``None`` (and says so on stderr) when it is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench_plot: matplotlib is not installed, skipping the plot", file=sys.stderr)
        return None
    return plt


def _label(row: dict) -> str:
    return f"q={row['ratio']:g}" if row.get("ratio") is not None else f"K={row['budget']}"


def plot_scaling(result: dict, path) -> Path | None:
    """Two panels from a several-size ``vlmprune bench`` result: left the median prefill time
    against the visual tokens per image (log-log): the full model, the oracle (K tokens fed
    directly) and each method; right ``pruned / oracle`` (the cost of choosing) against the same
    axis, with the break-even ``full / oracle``. One line per method and kept share. Returns the
    written path (None without matplotlib)."""
    plt = _pyplot()
    if plt is None:
        return None
    meta, rows = result["meta"], result["rows"]
    series: dict[str, list[dict]] = {}
    for r in rows:
        if r.get("prefill_ms") is None:
            continue
        name = "full" if r["method"] == "full" else f"{r['method']} {_label(r)}"
        series.setdefault(name, []).append(r)
    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(12, 4.8))
    names = sorted(series, key=lambda n: (not n.startswith("full"), not n.startswith("oracle"), n))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    for i, name in enumerate(names):
        pts = sorted(series[name], key=lambda r: r["tokens_before"])
        x = [r["tokens_before"] for r in pts]
        style = {"color": cmap(i), "marker": "o", "markersize": 4}
        if name == "full" or name.startswith("oracle"):
            style.update(color="black", linestyle="-" if name == "full" else "--", linewidth=2)
        ax_t.plot(x, [r["prefill_ms"] for r in pts], label=name, **style)
        if name != "full" and not name.startswith("oracle"):
            ax_r.plot(x, [r.get("pruned_over_oracle") for r in pts], label=name, **style)
    _full_over_oracle(ax_r, rows)
    sizes = sorted({r["tokens_before"] for r in rows if r.get("tokens_before")})
    for ax in (ax_t, ax_r):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sizes, [str(n) for n in sizes])
    ax_t.set_yscale("log")
    ax_t.set_xlabel("visual tokens per image before pruning (N)")
    ax_t.set_ylabel("prefill ms (time to first token, median)")
    ax_t.set_title("prefill time against the image's tokens")
    ax_r.axhline(1.0, color="grey", linewidth=0.8)
    ax_r.set_xlabel("visual tokens per image before pruning (N)")
    ax_r.set_ylabel("pruned / oracle prefill (median of paired ratios)")
    ax_r.set_title("cost of choosing; above the dotted line pruned is slower than full")
    for ax in (ax_t, ax_r):
        ax.grid(alpha=0.3, which="both")
    ax_t.legend(fontsize=7, ncol=2, loc="upper left")
    fig.suptitle(f"vlmprune bench: {meta['model']} ({meta.get('dtype', '')}), {meta['device']}", fontsize=9)
    fig.tight_layout()
    return _save(fig, plt, path)


def _full_over_oracle(ax, rows: list[dict]) -> None:
    """The break-even line: full / oracle per size (pruned above it is slower than full)."""
    pts = sorted((r for r in rows if r["method"] == "oracle" and r.get("full_over_pruned")),
                 key=lambda r: r["tokens_before"])  # fmt: skip
    if pts:
        ax.plot([r["tokens_before"] for r in pts], [r["full_over_pruned"] for r in pts], color="grey",
                linestyle=":", linewidth=1.5, label="break-even: full / oracle")  # fmt: skip
    ax.legend(fontsize=7, ncol=1, loc="upper left")


def _save(fig, plt, path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_bench(result: dict, path) -> Path | None:
    """Two panels from a ``vlmprune bench`` result (``{"meta": ..., "rows": [...]}``): left the
    prefill speedup ``full / pruned`` (median of paired ratios, IQR as error bars) against the
    visual tokens kept per image, right the analytic LLM prefill FLOPs reduction. One line per
    method, the oracle (K tokens fed directly, no selection) dashed. Returns the written path."""
    plt = _pyplot()
    if plt is None:
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
    return _save(fig, plt, path)
