"""``vlmprune bench`` (vlmprune.apps.bench): rows, accounting, oracle, outputs, CLI. No timed assertions:
the timings themselves are only checked to exist and be positive."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from vlmprune.adapters import family
from vlmprune.apps.bench import (
    CSV_FIELDS,
    BenchSettings,
    build_oracle,
    default_budgets,
    format_table,
    load_bench_model,
    make_bench_inputs,
    run_bench,
    text_token_count,
    write_results,
)
from vlmprune.apps.cli import build_parser, entry
from vlmprune.apps.errors import UsageError

REQUIRED = (
    "model",
    "device",
    "method",
    "budget",
    "tokens_before",
    "tokens_after",
    "prefill_ms",
    "full_prefill_ms",
    "oracle_prefill_ms",
    "selection_ms",
    "decode_tok_s",
    "peak_mem_bytes",
    "flops",
    "full_flops",
    "flops_convention",
)


@pytest.fixture(scope="module")
def small_result():
    settings = BenchSettings(
        model="tiny-llava",
        tiny_arch=True,
        methods=["pool", "fastv"],
        budgets=[8],
        repeats=1,
        warmup=0,
        decode_tokens=2,
        text_tokens=20,
    )
    return run_bench(settings, progress=False)


def test_rows_have_the_required_fields(small_result):
    rows = {r["method"]: r for r in small_result["rows"]}
    assert set(rows) == {"full", "oracle", "pool", "fastv"}
    for r in rows.values():
        assert r.get("error") is None
        for key in REQUIRED:
            assert key in r, key
        assert r["prefill_ms"] > 0 and r["full_prefill_ms"] > 0
        assert r["flops_convention"] == "fastv"
        # CPU: the peak RSS of a process running only this configuration, and its rise during the call
        assert r["peak_mem_bytes"] > 50 * 2**20 and 0 <= r["mem_delta_bytes"] < r["peak_mem_bytes"]
        assert r["kv_cache_bytes"] > 0
    for name in ("pool", "fastv"):
        r = rows[name]
        assert r["tokens_before"] == 36 and r["tokens_after"] == 8  # 6x6 grid, budget 8
        assert r["flops"] < r["full_flops"]
        assert r["oracle_prefill_ms"] > 0 and r["selection_ms"] >= 0 and r["decode_tok_s"] > 0
        assert r["pruned_over_oracle"] > 0 and r["full_over_pruned"] > 0
        assert r["kv_cache_bytes"] < r["full_kv_cache_bytes"]
    meta = small_result["meta"]
    text = meta["text_tokens"]
    assert text == 20
    # pre-LLM: every layer sees text + K; FastV (layer 2): the first two layers see everything
    assert rows["pool"]["tokens_per_layer"] == [text + 8] * 4
    assert rows["fastv"]["tokens_per_layer"] == [text + 36] * 2 + [text + 8] * 2
    assert rows["oracle"]["tokens_per_layer"] == [text + 8] * 4
    assert rows["oracle"]["flops"] == rows["pool"]["flops"]
    assert rows["fastv"]["equivalent_tokens"] == pytest.approx((2 * 36 + 2 * 8) / 4)


def test_results_written(small_result, tmp_path):
    paths = write_results(small_result, tmp_path, plot=False)
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 4 and data["meta"]["model"] == "tiny-llava"
    with open(paths["csv"]) as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == CSV_FIELDS
        got = list(reader)
    assert [r["method"] for r in got] == ["full", "oracle", "pool", "fastv"]
    for key in REQUIRED:
        assert key in reader.fieldnames
    pool = next(r for r in got if r["method"] == "pool")
    assert int(pool["tokens_after"]) == 8 and int(pool["flops"]) < int(pool["full_flops"])


@pytest.mark.parametrize("family_model", ["tiny-llava", "tiny-llava-next", "tiny-qwen2.5-vl"])
def test_oracle_has_k_visual_tokens_and_stock_embeddings(family_model):
    bm = load_bench_model(family_model, tiny_arch=True)
    model = bm.model
    inputs = make_bench_inputs(bm, batch=2, text_tokens=16)
    assert text_token_count(model, inputs) == 16
    captured = {}

    def grab(module, args, kwargs):
        captured.update(kwargs)

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        handle.remove()
    k = 5
    oracle = build_oracle(model, inputs, k)
    assert oracle.visual_tokens.tolist() == [k, k]
    n_placeholders = int((inputs["input_ids"][0] == model.config.image_token_id).sum())
    with torch.no_grad():
        kw = oracle.prepare()
    length = inputs["input_ids"].shape[1] - n_placeholders + k
    assert kw["inputs_embeds"].shape[:2] == (2, length)
    # the oracle's embeddings are the stock ones at the surviving positions (text + first k per image)
    stock = captured["inputs_embeds"].gather(
        1, oracle.index.unsqueeze(-1).expand(-1, -1, captured["inputs_embeds"].shape[-1])
    )
    torch.testing.assert_close(kw["inputs_embeds"], stock)
    if bm.family.startswith("qwen"):
        pos = captured["position_ids"]
        torch.testing.assert_close(
            kw["position_ids"], pos.gather(2, oracle.index.expand(pos.shape[0], -1, -1))
        )
    with torch.no_grad():
        out = model(**kw, use_cache=True, logits_to_keep=1)
    assert out.past_key_values.get_seq_length() == length


def test_default_budgets():
    assert default_budgets(family("llava"), 576) == ([192, 128, 64], None)
    assert default_budgets(family("llava_next"), 2880) == ([640, 320], None)
    assert default_budgets(family("llava_next"), 720) == ([160, 80], None)
    assert default_budgets(family("qwen2_5_vl"), 576) == (None, [0.222])


def test_ratio_on_qwen_arch_and_token_map_at_several_sizes(tmp_path):
    """A real architecture shrunk (--tiny-arch): the offline tokenizer's ids are mapped onto the
    architecture's special ids; --ratios resolves to max(1, round(q*N)) tokens; several image
    sizes run one after the other, each with its rows, and the plot is drawn against N."""
    settings = BenchSettings(
        model="qwen2.5-vl-7b",
        tiny_arch=True,
        methods=["random"],
        ratios=[0.25],
        repeats=1,
        warmup=0,
        decode_tokens=1,
        text_tokens=12,
        image_size="112,168x112",
        memory=False,
    )
    result = run_bench(settings, progress=False)
    assert [s["image_size"] for s in result["meta"]["sizes"]] == [[112, 112], [168, 112]]
    by_size = {}
    for r in result["rows"]:
        by_size.setdefault(r["image_size"], {})[r["method"]] = r
    assert set(by_size) == {"112x112", "168x112"}
    for size, n in (("112x112", 16), ("168x112", 24)):  # 8x8 patches -> 4x4 merged; 12x8 -> 6x4
        rows = by_size[size]
        assert rows["full"]["tokens_before"] == n
        assert rows["random"]["tokens_after"] == max(1, round(0.25 * n)) == rows["random"]["budget"]
        assert rows["random"]["ratio"] == 0.25
        assert rows["random"]["flops"] < rows["random"]["full_flops"]
        assert rows["random"]["peak_mem_bytes"] is None  # memory=False
    table = format_table(result)
    assert "image 112x112: 16 visual tokens" in table and "image 168x112: 24 visual tokens" in table
    paths = write_results(result, tmp_path)
    assert paths["png"] is not None and paths["png"].stat().st_size > 0
    with pytest.raises(UsageError, match="--image-size"):
        run_bench(BenchSettings(image_size="112,big"), progress=False)


def test_cli_help_and_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "--help"])
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for opt in ("--model", "--methods", "--budgets", "--ratios", "--device", "--repeats", "--out", "--json"):
        assert opt in help_text
    out = tmp_path / "bench"
    code = entry(
        [
            "bench",
            "--tiny-arch",
            "--methods",
            "random",
            "--budgets",
            "4",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--decode-tokens",
            "1",
            "--text-tokens",
            "10",
            "--out",
            str(out),
            "--no-plot",
            "--no-memory",
            "--json",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert [r["method"] for r in printed["rows"]] == ["full", "oracle", "random"]
    assert (out / "bench.json").is_file() and (out / "bench.csv").is_file()
    assert entry(["bench", "--tiny-arch", "--methods", "nope", "--out", str(out)]) == 2
