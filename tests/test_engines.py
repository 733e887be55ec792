"""Every method x engine combination runs as configured or is refused, in one line naming the
option, before anything runs: each method declares what it needs of the engine
(``Method.engine_needs``), each engine what it provides."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_inputs, cached_model

import vlmprune
from vlmprune.core.method import CAPABILITIES
from vlmprune.core.options import options_of
from vlmprune.integrations.vllm import config as vllm_config
from vlmprune.session import engine as hf_engine

ENGINES = {"hf": hf_engine.ENGINE, "vllm": vllm_config.ENGINE}


def configurations():
    """Each method at its defaults, and with each optional stage switched on."""
    out = []
    for name in vlmprune.list_methods():
        cls = vlmprune.method_class(name)
        out.append((name, {"budget": 5}))
        opt = cls.in_llm_option
        if opt is not None and options_of(cls)[opt].optional:  # an in-LLM stage that is optional
            out.append((name, {"budget": 5, opt: 2}))
    return out


CONFIGS = configurations()


def test_capabilities_declared():
    for name, options in CONFIGS:
        needs = vlmprune.get_method(name, **options).engine_needs()
        assert needs and set(needs) <= set(CAPABILITIES)
        assert ("pre_llm" in needs) or ("in_llm" in needs)
    assert ("sppruner", {"budget": 5, "llm_layer": 2}) in CONFIGS
    assert set(ENGINES["hf"]) == set(CAPABILITIES) and "in_llm" not in ENGINES["vllm"]


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{'-'.join(map(str, o))}" for n, o in CONFIGS])
def test_vllm_runs_or_refuses(name, options):
    method = vlmprune.get_method(name, **options)
    lacking = set(method.engine_needs()) - ENGINES["vllm"]
    request = {"method": name, **options}
    if not lacking:
        spec = vllm_config.resolve(request, ("compact", "original"))
        assert spec.method == method
        return
    option = method.engine_needs()[lacking.pop()]
    with pytest.raises(vllm_config.ConfigError) as err:
        vllm_config.resolve(request, ("compact", "original"))
    line = str(err.value)
    assert "\n" not in line and f"`{option}`=2" in line and "vLLM plugin does not do" in line
    # a request naming only a size keeps the server's options: refused the same way per request
    with pytest.raises(vllm_config.ConfigError, match=f"`{option}`"):
        vllm_config.resolve(vllm_config.merge(request, {"budget": 3}), ("compact",))


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{'-'.join(map(str, o))}" for n, o in CONFIGS])
def test_hf_session_runs_as_configured(name, options):
    model, proc = cached_model("llava")
    method = vlmprune.get_method(name, **options)
    with method(model), torch.no_grad():
        model(**batch_inputs("llava", proc))
    sels = method.last_selection
    stage = "in_llm" if "in_llm" in method.engine_needs() else "pre_llm"
    assert sels and {s.stage for s in sels} == {stage}
    for s in sels:  # a second stage after the pre-LLM one may keep fewer (SPPruner's llm_keep)
        assert 0 < s.kept.numel() <= min(5, s.num_tokens)
        assert s.kept.numel() == min(5, s.num_tokens) or "pre_llm" in method.engine_needs()


def test_hf_session_refuses_its_limits_in_one_line():
    model, _ = cached_model("llava")
    qwen, _ = cached_model("qwen2_vl")
    cases = [
        (vlmprune.FastV(budget=4, layer=99), model, "`layer` must be in"),
        (vlmprune.SPPruner(budget=4, llm_layer=99), model, "`layer` must be in"),
        (vlmprune.Pool(budget=4, positions="compact"), qwen, "`positions`='compact' is not supported"),
    ]
    for method, target, message in cases:
        with pytest.raises(ValueError, match=message) as err:
            method(target)
        assert "\n" not in str(err.value)
        assert not hasattr(target, "_vlmprune_session")


def test_an_engine_lacking_a_capability_refuses():
    from vlmprune.core.method import check_engine

    method = vlmprune.VisionZip(budget=4)
    check_engine(method, "an engine", frozenset(CAPABILITIES))
    with pytest.raises(
        ValueError, match="visionzip: needs the vision tower's keys, which an engine does not do"
    ):
        check_engine(method, "an engine", frozenset(CAPABILITIES) - {"keys"})
