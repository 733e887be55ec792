"""The headline FLOPs reduction table of the real-size architectures (``docs/benchmarks.md``)."""

from __future__ import annotations

from vlmprune.adapters import families
from vlmprune.apps.archs import load_config
from vlmprune.core.flops import FlopsReport, equivalent_tokens, token_schedule, vision_flops


def _table():
    """``(adapter, (arch, label, visual tokens, budgets, crops))`` of every family's ``flops_table``."""
    return [(cls, row) for cls in families() for row in cls.flops_table]


#: Text tokens assumed by the headline tables. 64 reproduces the published reductions of the
#: families' tables (e.g. 60.8 / 70.7 / 80.5% at 192 / 128 / 64 of 576 visual tokens, 88.5% at 2880 -> 320).
DEFAULT_TEXT_TOKENS = 64


def reduction_rows(text_tokens: int = DEFAULT_TEXT_TOKENS, fastv_layer: int = 2) -> list[dict]:
    """Rows of the reduction table: every family's ``flops_table`` entries (real-size
    architectures), pre-LLM pruning and FastV-style in-LLM pruning at ``fastv_layer``, under the
    ``"fastv"`` and ``"swiglu"`` conventions."""
    rows = []
    for cls, (arch, label, full_visual, budgets, crops) in _table():
        config = load_config(arch)
        shape = cls.llm_shape(config)
        vflops = vision_flops(cls.vision_shape(config), num_crops=crops)
        full = token_schedule(shape.num_layers, text_tokens, full_visual)
        for kept in budgets:
            for where, layer in (("pre-LLM", 0), (f"in-LLM K={fastv_layer}", fastv_layer)):
                sched = token_schedule(shape.num_layers, text_tokens, full_visual, kept, layer=layer)
                row = {
                    "model": label,
                    "arch": arch,
                    "text_tokens": text_tokens,
                    "visual_full": full_visual,
                    "visual_kept": kept,
                    "where": where,
                    "equivalent_visual_tokens": equivalent_tokens(sched, text_tokens),
                    "vision_tflops_macs": vflops / 1e12,
                }
                for conv in ("fastv", "swiglu"):
                    rep = FlopsReport.compute(shape, sched, full, conv, vision_flops=vflops)
                    row[f"{conv}_full_tflops"] = rep.full_flops / 1e12
                    row[f"{conv}_tflops"] = rep.flops / 1e12
                    row[f"{conv}_reduction"] = rep.reduction
                rows.append(row)
    return rows


def format_reduction_table(rows: list[dict] | None = None) -> str:
    """The reduction table as text (see :func:`reduction_rows`)."""
    rows = reduction_rows() if rows is None else rows
    head = (
        f"{'model':<14} {'visual':>11} {'where':<12} {'eq.tok':>7}  "
        f"{'FastV T':>8} {'full':>7} {'red.':>6}  {'SwiGLU T':>8} {'full':>7} {'red.':>6}"
    )
    lines = [
        "LLM prefill compute, text tokens = "
        f"{rows[0]['text_tokens'] if rows else DEFAULT_TEXT_TOKENS}; T = 1e12 MACs (the 'FLOPs' of "
        "FastV-style papers; true FLOPs are 2x); vision tower not included",
        "FastV: 4nd^2 + 2n^2d + 2ndm per layer; SwiGLU: 4nd^2 + 2n^2d + 3ndm",
        head,
        "-" * len(head),
    ]
    for r in rows:
        lines.append(
            f"{r['model']:<14} {r['visual_full']:>5}->{r['visual_kept']:<5} {r['where']:<12} "
            f"{r['equivalent_visual_tokens']:>7.1f}  "
            f"{r['fastv_tflops']:>8.3f} {r['fastv_full_tflops']:>7.3f} {100 * r['fastv_reduction']:>5.1f}%  "
            f"{r['swiglu_tflops']:>8.3f} {r['swiglu_full_tflops']:>7.3f} {100 * r['swiglu_reduction']:>5.1f}%"
        )
    seen = {}
    for r in rows:
        seen.setdefault(r["model"], r["vision_tflops_macs"])
    lines.append(
        "vision tower + projector (unchanged by these methods, all layers as stock runs them): "
        + ", ".join(f"{m} {v:.3f} T" for m, v in seen.items())
    )
    return "\n".join(lines)


def print_reduction_table() -> None:
    """Print the reduction table under both conventions."""
    print(format_reduction_table())


if __name__ == "__main__":
    print_reduction_table()
