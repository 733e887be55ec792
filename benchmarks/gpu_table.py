"""Combine the GPU benchmark's outputs into one JSON and one Markdown table.

    python benchmarks/gpu_table.py OUT_DIR     # reads OUT_DIR/selection.json and OUT_DIR/*/bench.json

Writes ``OUT_DIR/gpu_bench.json`` (everything) and ``OUT_DIR/table.md``: per architecture and
budget, each method's prefill (median ms), full / pruned and pruned / oracle (medians of paired
ratios), and the selection micro-benchmark.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def prefill_table(bench: dict) -> list[str]:
    meta = bench["meta"]
    lines = [f"### {meta['model']} ({meta['device']}, {meta['dtype']}, {meta['attn_implementation']})", ""]
    lines += ["| method | kept | prefill ms | full ms | full / pruned | pruned / oracle | selection ms |"]
    lines += ["|---|---:|---:|---:|---:|---:|---:|"]
    for r in bench["rows"]:
        if r.get("error"):
            lines.append(f"| {r['method']} | {r.get('tokens_after')} | error: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['tokens_after']} | {_fmt(r['prefill_ms'], '.1f')} | {_fmt(r['full_prefill_ms'], '.1f')}"
            f" | {_fmt(r['full_over_pruned'], '.2f')} | {_fmt(r.get('pruned_over_oracle'), '.3f')}"
            f" | {_fmt(r.get('selection_ms'), '.2f')} |"
        )
    return lines + [""]


def selection_table(sel: dict) -> list[str]:
    lines = [f"### Selection, one image (N={sel['N']}, D={sel['D']}, K={sel['K']}, {sel['device']})", ""]
    lines += ["| method | median ms | compiled ms | operations | host syncs |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['method']} | {r['ms']:.3f} | {_fmt(r.get('ms_compiled'), '.3f')} | {r['ops']} | {r['syncs']} |"
        for r in sel["rows"]
    ]
    return lines + [""]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python benchmarks/gpu_table.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    sel = json.loads((out / "selection.json").read_text()) if (out / "selection.json").exists() else None
    benches = {p.parent.name: json.loads(p.read_text()) for p in sorted(out.glob("*/bench.json"))}
    (out / "gpu_bench.json").write_text(json.dumps({"selection": sel, "prefill": benches}, indent=1))
    lines = selection_table(sel) if sel else []
    for bench in benches.values():
        lines += prefill_table(bench)
    (out / "table.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
