"""Rows, metadata, the text table and the files of a ``vlmprune bench`` result."""

from __future__ import annotations

import csv
import json
import math
import statistics
import time
from pathlib import Path

import torch

from vlmprune.apps.bench.oracle import ORACLE_DEFINITION
from vlmprune.apps.bench.timing import device_name, quartiles, summary
from vlmprune.core.flops import equivalent_tokens

MEMORY_NOTE_CPU = (
    "CPU: peak_mem_bytes = peak RSS of a process running only that configuration's generate() (weights and "
    "runtime included), mem_delta_bytes = that peak minus its RSS before the call (+MB); kv_cache_bytes is "
    "read from the cache object after prefill"
)
MEMORY_NOTE_CUDA = "CUDA: peak_mem_bytes = torch.cuda.max_memory_allocated during the run (weights included)"

CSV_FIELDS = (
    "model",
    "device",
    "dtype",
    "image_size",
    "method",
    "stage",
    "budget",
    "ratio",
    "tokens_before",
    "tokens_after",
    "seq_len",
    "full_seq_len",
    "prefill_ms",
    "prefill_ms_q1",
    "prefill_ms_q3",
    "prefill_ms_min",
    "prefill_ms_max",
    "full_prefill_ms",
    "full_prefill_ms_q1",
    "full_prefill_ms_q3",
    "oracle_prefill_ms",
    "oracle_prefill_ms_q1",
    "oracle_prefill_ms_q3",
    "pruned_over_oracle",
    "pruned_over_oracle_q1",
    "pruned_over_oracle_q3",
    "full_over_pruned",
    "full_over_pruned_q1",
    "full_over_pruned_q3",
    "prefill_cpu_ms",
    "full_prefill_cpu_ms",
    "oracle_prefill_cpu_ms",
    "pruned_over_oracle_cpu",
    "full_over_pruned_cpu",
    "selection_ms",
    "selection_ms_q1",
    "selection_ms_q3",
    "decode_tok_s",
    "full_decode_tok_s",
    "peak_mem_bytes",
    "mem_delta_bytes",
    "full_peak_mem_bytes",
    "kv_cache_bytes",
    "full_kv_cache_bytes",
    "flops",
    "full_flops",
    "flops_reduction",
    "flops_convention",
    "flops_unit",
    "vision_flops",
    "equivalent_tokens",
    "batch",
    "text_tokens",
    "repeats",
    "error",
)
PREFILL_NOTE = (
    "time to first token: generate() call -> first logits (logits processor, synchronised), median over repeats; "
    "ratios = median of per-repeat paired ratios (full/pruned/oracle interleaved in a rotating order inside each repeat)"
)


def _col(runs, key):
    return [r[key] for r in runs if r.get(key) is not None]


def _median(runs, key):
    vals = _col(runs, key)
    return statistics.median(vals) if vals else None


def _paired(num, den, key):
    return [a[key] / b[key] for a, b in zip(num, den) if a.get(key) and b.get(key)]


def _peak(runs):
    vals = _col(runs, "peak_mem_bytes")
    return max(vals) if vals else None


def timing(pruned: list, full: list, oracle: list | None) -> dict:
    """Timing fields of a row from its runs (``pruned``, ``full``, ``oracle``: per-repeat dicts,
    index i of each from the same repeat)."""
    out = {**summary(_col(pruned, "prefill_ms"), "prefill_ms")}
    out.update({f"full_{k}": v for k, v in summary(_col(full, "prefill_ms"), "prefill_ms").items()})
    out["prefill_cpu_ms"] = _median(pruned, "prefill_cpu_ms")
    out["full_prefill_cpu_ms"] = _median(full, "prefill_cpu_ms")
    for name, (num, den) in {
        "full_over_pruned": (full, pruned),
        "pruned_over_oracle": (pruned, oracle),
    }.items():
        if den is None:
            continue
        q1, med, q3 = quartiles(_paired(num, den, "prefill_ms")) if num else (None, None, None)
        out.update({name: med, f"{name}_q1": q1, f"{name}_q3": q3})
        cpu = _paired(num, den, "prefill_cpu_ms")
        out[f"{name}_cpu"] = statistics.median(cpu) if cpu else None
    if oracle is not None:
        out.update({f"oracle_{k}": v for k, v in summary(_col(oracle, "prefill_ms"), "prefill_ms").items()})
        out["oracle_prefill_cpu_ms"] = _median(oracle, "prefill_cpu_ms")
    out.update(
        decode_tok_s=_median(pruned, "decode_tok_s"),
        full_decode_tok_s=_median(full, "decode_tok_s"),
        peak_mem_bytes=_peak(pruned),
        full_peak_mem_bytes=_peak(full),
    )
    samples = {"prefill_ms": pruned, "full_prefill_ms": full, "oracle_prefill_ms": oracle or []}
    out["samples"] = {k: _col(v, "prefill_ms") for k, v in samples.items()}
    out["samples"].update(
        {k.replace("prefill_ms", "prefill_cpu_ms"): _col(v, "prefill_cpu_ms") for k, v in samples.items()}
    )
    return out


def accounting(b, lengths: list[int], kv: int, text_len: int) -> dict:
    flops, full = b.flops(lengths), b.flops(b.full_lengths)
    return {
        "seq_len": lengths[-1] if lengths else None,
        "kv_cache_bytes": kv,
        "full_kv_cache_bytes": b.full_kv,
        "flops": flops,
        "full_flops": full,
        "flops_reduction": 1 - flops / full,
        "equivalent_tokens": equivalent_tokens(lengths, text_len),
        "tokens_per_layer": lengths,
    }


def _common(b, text_len: int) -> dict:
    common = {
        "model": b.bm.name,
        "device": device_name(b.device),
        "dtype": str(b.bm.model.dtype).replace("torch.", ""),
        "image_size": "x".join(str(v) for v in b.bm.image_size),
        "flops_convention": b.settings.convention,
        "flops_unit": "MACs (paper 'FLOPs'), LLM prefill, whole batch",
        "vision_flops": vision_flops(b),
        "batch": b.batch,
        "text_tokens": text_len,
        "repeats": b.settings.repeats,
        "full_seq_len": int(b.inputs["input_ids"].shape[1]),
    }
    return {**dict.fromkeys(CSV_FIELDS), **common}


def build_rows(b, text_len: int) -> list[dict]:
    """One row for the full model, one oracle row per kept count, one row per (method, budget)."""
    common = _common(b, text_len)
    live = [j for j in b.jobs if j["runs"]["pruned"] or j["error"] is None]
    all_full = [r for j in live for r in j["runs"]["full"]]
    n = b.n_tokens
    rows = [
        {**common, "method": "full", "stage": "none", "budget": n, "ratio": 1.0, "tokens_before": n,
         "tokens_after": n, **timing(all_full, all_full, None), **accounting(b, b.full_lengths, b.full_kv, text_len)}
    ]  # fmt: skip
    seen = set()
    for kind, value in b.configs:
        k = b.kept_of(kind, value)
        if k in seen:
            continue
        seen.add(k)
        o, o_jobs = b.oracles[k], [j for j in live if j["k"] == k]
        o_runs = [r for j in o_jobs for r in j["runs"]["oracle"]]
        f_runs = [r for j in o_jobs for r in j["runs"]["full"]]
        rows.append(
            {**common, "method": "oracle", "stage": "oracle", "budget": k, "ratio": value if kind == "ratio" else None,
             "tokens_before": n, "tokens_after": int(o["oracle"].visual_tokens[0]),
             **timing(o_runs, f_runs, o_runs), **accounting(b, o["lengths"], o["kv"], text_len)}
        )  # fmt: skip
    rows += [_method_row(b, job, common, text_len) for job in b.jobs]
    return rows


def _method_row(b, job, common: dict, text_len: int) -> dict:
    row = {
        **common,
        "method": job["name"],
        "budget": job["k"],
        "ratio": job["value"] if job["kind"] == "ratio" else None,
    }
    row.update(error=job["error"], tokens_before=job.get("tokens_before", b.n_tokens))
    runs = job["runs"]
    if job["error"] is not None and not runs["pruned"]:
        return row
    sel = _col(runs["pruned"], "selection_ms")
    selq = quartiles(sel) if sel else (None, None, None)
    row.update(stage=job["stage"], tokens_after=job["tokens_after"])
    row.update(timing(runs["pruned"], runs["full"], runs["oracle"]))
    row.update(accounting(b, job["lengths"], job["kv"], text_len))
    row.update(selection_ms=selq[1], selection_ms_q1=selq[0], selection_ms_q3=selq[2])
    row["samples"]["selection_ms"] = sel
    return row


def vision_flops(b) -> int | None:
    """The vision tower's MACs for the bench inputs (the family adapter's FLOPs shape)."""
    from vlmprune.core.flops import vision_flops as count

    adapter, config = b.bm.adapter, b.bm.model.config
    return count(adapter.vision_shape(config), **adapter.vision_grids(config, b.inputs))


def build_meta(b, text_len: int, elapsed: float, loads: list) -> dict:
    import transformers

    import vlmprune

    s, model, shape = b.settings, b.bm.model, b.shape
    llm = {"layers": shape.num_layers, "d": shape.d, "m": shape.m, "heads": shape.num_heads}
    llm.update(kv_heads=shape.num_kv_heads, head_dim=shape.head_dim)
    return {
        "model": b.bm.name,
        "model_description": b.bm.description,
        "family": b.bm.family,
        "model_class": type(model).__name__,
        "device": device_name(b.device),
        "device_type": b.device.type,
        "dtype": str(model.dtype).replace("torch.", ""),
        "attn_implementation": s.attn,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vlmprune": vlmprune.__version__,
        "threads": torch.get_num_threads(),
        "batch": b.batch,
        "video_frames": s.video_frames,
        "image_size": list(b.bm.image_size),
        "visual_tokens_per_image": b.n_tokens,
        "grid": list(b.grid),
        "text_tokens": text_len,
        "prompt_length": int(b.inputs["input_ids"].shape[1]),
        "llm": llm,
        "repeats": s.repeats,
        "warmup": s.warmup,
        "decode_tokens": s.decode_tokens,
        "flops_convention": s.convention,
        "flops_unit": "MACs (the 'FLOPs' of FastV-style papers; true FLOPs are 2x), LLM prefill of the whole batch",
        "vision_flops": vision_flops(b),
        "oracle": ORACLE_DEFINITION,
        "memory": MEMORY_NOTE_CUDA if b.device.type == "cuda" else MEMORY_NOTE_CPU,
        "prefill": PREFILL_NOTE,
        "budgets": b.budgets,
        "ratios": b.ratios,
        "methods": b.methods,
        "elapsed_s": round(elapsed, 1),
        "load_average_start_end": loads,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


SIZE_FIELDS = (
    "image_size",
    "visual_tokens_per_image",
    "grid",
    "prompt_length",
    "vision_flops",
    "elapsed_s",
    "load_average_start_end",
)


def merge_sizes(parts: list[dict]) -> dict:
    """One result from the results of several image sizes: the rows in size order, the first
    size's meta, and every size's own fields under ``meta["sizes"]``."""
    meta = dict(parts[0]["meta"])
    meta["sizes"] = [{k: p["meta"][k] for k in SIZE_FIELDS} for p in parts]
    meta["elapsed_s"] = round(sum(p["meta"]["elapsed_s"] for p in parts), 1)
    return {"meta": meta, "rows": [r for p in parts for r in p["rows"]]}


def _fmt(v, spec: str, dash: str = "-") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return dash
    return format(v, spec)


def format_table(result: dict) -> str:
    """The result as a text table (one line per row, one block per image size; the accounting in
    the header)."""
    meta, rows = result["meta"], result["rows"]
    head = (
        f"{'method':<10} {'K':>5} {'tokens':>10} {'prefill ms [IQR]':>22} {'full ms':>8} {'oracle ms':>9} "
        f"{'pr/orc':>6} {'(cpu)':>6} {'speedup':>7} {'sel ms':>7} {'dec t/s':>7} {'KV MB':>6} {'peak MB':>7} "
        f"{'+MB':>6} {'FLOPs G':>8} {'red.':>6} {'eq.tok':>6}"
    )
    lines = [
        f"vlmprune bench: {meta['model']} ({meta['model_class']}, {meta['dtype']}, {meta['attn_implementation']}) "
        f"on {meta['device']}",
        f"batch {meta['batch']}, {meta['text_tokens']} text tokens; {meta['repeats']} repeats after "
        f"{meta['warmup']} warm-up; decode {meta['decode_tokens']} tokens",
        f"FLOPs: {meta['flops_convention']} convention, {meta['flops_unit']}; the vision tower apart "
        "(unchanged by pruning)",
    ]
    frames = meta.get("video_frames")
    media = f"video of {frames} frames at" if frames else "image"
    for size in meta.get("sizes") or [{k: meta.get(k) for k in SIZE_FIELDS}]:
        lines += [
            f"{media} {size['image_size'][0]}x{size['image_size'][1]}: {size['visual_tokens_per_image']} visual "
            f"tokens/{'video' if frames else 'image'} (grid {size['grid']}), prompt {size['prompt_length']}, vision tower "
            f"{_fmt(size['vision_flops'] and size['vision_flops'] / 1e9, '.2f')} G; load average (start, end) "
            f"{size.get('load_average_start_end')}",
            head,
            "-" * len(head),
        ]
        wanted = "x".join(str(v) for v in size["image_size"])
        lines += [_table_line(r) for r in rows if r.get("image_size") in (None, wanted)]
    lines.append(
        "pr/orc = pruned/oracle prefill (overhead of choosing), speedup = full/pruned prefill: medians of "
        "per-repeat paired ratios of wall-clock time to first token; (cpu) = the same ratio of process CPU "
        "time (robust to other processes on a shared CPU). " + meta["memory"] + "."
    )
    lines.append(meta["oracle"] + ".")
    return "\n".join(lines)


def _table_line(r: dict) -> str:
    if r.get("error") and r.get("prefill_ms") is None:
        return f"{r['method']:<10} {r['budget']:>5}  ERROR {r['error'][:100]}"
    iqr = f"{_fmt(r.get('prefill_ms'), '.1f')} [{_fmt(r.get('prefill_ms_q1'), '.1f')}-{_fmt(r.get('prefill_ms_q3'), '.1f')}]"
    tokens = f"{r['tokens_before']}->{r['tokens_after']}"
    kv, pk, dm = r.get("kv_cache_bytes"), r.get("peak_mem_bytes"), r.get("mem_delta_bytes")
    return (
        f"{r['method']:<10} {r['budget']:>5} {tokens:>10} {iqr:>22} {_fmt(r.get('full_prefill_ms'), '.1f'):>8} "
        f"{_fmt(r.get('oracle_prefill_ms'), '.1f'):>9} {_fmt(r.get('pruned_over_oracle'), '.3f'):>6} "
        f"{_fmt(r.get('pruned_over_oracle_cpu'), '.3f'):>6} "
        f"{_fmt(r.get('full_over_pruned'), '.2f'):>7} {_fmt(r.get('selection_ms'), '.2f'):>7} "
        f"{_fmt(r.get('decode_tok_s'), '.0f'):>7} {_fmt(kv and kv / 2**20, '.2f'):>6} "
        f"{_fmt(pk and pk / 2**20, '.0f'):>7} {_fmt(None if dm is None else dm / 2**20, '.1f'):>6} "
        f"{_fmt(r.get('flops') and r['flops'] / 1e9, '.2f'):>8} "
        f"{_fmt(r.get('flops_reduction') and 100 * r['flops_reduction'], '.1f') + '%':>6} "
        f"{_fmt(r.get('equivalent_tokens'), '.0f'):>6}"
    )


def write_results(result: dict, out_dir, plot: bool = True) -> dict:
    """Write ``bench.json`` (meta + rows with per-repeat samples), ``bench.csv`` (the scalar
    fields of :data:`CSV_FIELDS`) and, when matplotlib is installed, ``bench.png``. Returns
    ``{"json": path, "csv": path, "png": path or None}``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "csv": out / "bench.csv", "png": None}
    paths["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        writer.writeheader()
        for r in result["rows"]:
            writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    if plot:
        from vlmprune.apps.bench.plot import plot_bench, plot_scaling

        several = len(result["meta"].get("sizes") or []) > 1
        paths["png"] = (plot_scaling if several else plot_bench)(result, out / "bench.png")
    return paths
