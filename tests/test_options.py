"""Method options: one validator (type, range, one line naming the option), at construction and on
every assignment, over every registered method; the CLI and the vLLM configuration use it too."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pytest
import torch

import vlmprune
from vlmprune.apps import options as cli_options
from vlmprune.core.options import MAX_SEED, Option, check_count, options_of
from vlmprune.integrations.vllm.config import ConfigError, resolve

METHODS = vlmprune.list_methods()


def _bad_values(spec: Option) -> list:
    """Values ``spec`` must refuse."""
    bad = ["x", [1]]
    if spec.kind in ("int", "number"):
        bad += [True, np.bool_(False), float("nan"), torch.tensor([1.0, 2.0])]
        if spec.low is not None:
            bad.append(spec.low - 1)
        if spec.high is not None:
            bad.append(spec.high + 1)
        if spec.kind == "int":
            bad.append(1.5)
    elif spec.kind == "bool":
        bad += [1, 0, None]
    else:
        bad += ["not-a-choice", True]
    if not spec.optional and spec.kind != "bool":
        bad.append(None)
    return bad


@pytest.mark.parametrize("name", METHODS)
def test_every_field_is_a_declared_option(name):
    cls = vlmprune.method_class(name)
    declared = options_of(cls)
    assert [f.name for f in dataclasses.fields(cls)] == list(declared)


@pytest.mark.parametrize("name", METHODS)
def test_bad_values_refused_at_construction_and_on_assignment(name):
    cls = vlmprune.method_class(name)
    for field, spec in options_of(cls).items():
        if field in ("budget", "ratio"):
            continue
        for value in _bad_values(spec):
            with pytest.raises(ValueError, match=f"`{field}`") as err:
                cls(budget=4, **{field: value})
            assert "\n" not in str(err.value)
            m = cls(budget=4)
            before = dataclasses.asdict(m)
            with pytest.raises(ValueError, match=f"`{field}`"):
                setattr(m, field, value)
            assert dataclasses.asdict(m) == before  # nothing half-applied


@pytest.mark.parametrize("name", METHODS)
def test_budget_contract(name):
    cls = vlmprune.method_class(name)
    m = cls(budget=4)
    for bad in (0, -1, True, 2.5, np.float64(3.0), "4"):
        with pytest.raises(ValueError, match="budget"):
            cls(budget=bad)
        with pytest.raises(ValueError, match="budget"):
            m.budget = bad
    assert m.budget == 4
    m.budget = np.int64(7)
    assert type(m.budget) is int and m.budget == 7
    m.budget = torch.tensor(3)
    assert type(m.budget) is int and m.budget == 3
    with pytest.raises(ValueError, match="exactly one"):
        m.ratio = 0.5  # both given: refused, the budget stays
    assert (m.budget, m.ratio) == (3, None)
    assert dataclasses.replace(m, budget=None, ratio=np.float32(0.25)).ratio == 0.25
    for bad in (0.0, 1.5, True, float("nan")):
        with pytest.raises(ValueError, match="ratio"):
            cls(ratio=bad)
    assert cls(ratio=torch.tensor(0.5)).ratio == 0.5
    assert cls(ratio=np.float32(0.25)).keep_count(36) == 9


def test_scalars_and_seeds():
    assert vlmprune.PromPrune(ratio=np.float32(0.25), kr_max=np.float64(0.7)).kr_max == 0.7
    assert vlmprune.FastV(budget=4, layer=np.int32(3)).layer == 3
    assert vlmprune.RandomPrune(budget=2, seed=torch.tensor(5)).seed == 5
    assert vlmprune.RandomPrune(budget=2, seed=MAX_SEED).seed == MAX_SEED
    for bad in (True, 2**63, 2**70, -1, 1.0):
        with pytest.raises(ValueError, match="`seed`"):
            vlmprune.RandomPrune(budget=2, seed=bad)
    with pytest.raises(ValueError, match="`kr_max` must be in \\[kr_min, 1\\]"):
        vlmprune.PromPrune(budget=4, kr_min=0.5, kr_max=0.2)
    m = vlmprune.PromPrune(budget=4, kr_min=0.5)
    with pytest.raises(ValueError, match="kr_max"):
        m.kr_max = 0.1  # a rule between options, checked on assignment too
    assert m.kr_max == 1.0
    m = vlmprune.DART(budget=4)
    m.pivots_image = 0
    with pytest.raises(ValueError, match="pivots"):
        m.pivots_text = 0
    assert (m.pivots_image, m.pivots_text) == (0, 4)


def test_pure_select_counts():
    assert check_count(np.int64(0)) == 0
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="budget"):
            check_count(bad)
    from vlmprune.core.ops import top_sorted
    from vlmprune.methods import fastv, pool, random

    assert top_sorted(torch.rand(5), 0).numel() == 0
    assert fastv.select(torch.rand(5), 0).numel() == 0
    assert random.select(5, 0).numel() == 0
    kept, merged, assignment = pool.select(torch.rand(6, 3), (2, 3), 0)
    assert kept.numel() == 0 and merged.shape == (0, 3) and (assignment == -1).all()


def test_cli_uses_the_validator():
    assert cli_options.ratio("0.25") == 0.25
    assert cli_options.positive_int("3") == 3
    for fn, text in ((cli_options.ratio, "0"), (cli_options.ratio, "nan"), (cli_options.positive_int, "0")):
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            fn(text)


def test_vllm_config_uses_the_validator():
    spec = resolve(
        {"method": "promprune", "ratio": np.float32(0.25), "kr_max": torch.tensor(0.5)}, ("compact",)
    )
    assert dict(spec.options) == {"ratio": 0.25, "kr_max": 0.5}
    assert spec.encode().numel() > 0  # plain JSON
    with pytest.raises(ConfigError, match="`seed`"):
        resolve({"method": "random", "budget": 2, "seed": True}, ("compact",))
    with pytest.raises(ConfigError, match="`budget`"):
        resolve({"method": "random", "budget": 0}, ("compact",))
