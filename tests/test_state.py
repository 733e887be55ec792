"""A method holds its configuration only: no model, session or hook data survives a block; it
pickles and copies cheaply; one instance serves two models in two threads at once; entering the
same model from two threads is refused atomically."""

from __future__ import annotations

import copy
import gc
import pickle
import sys
import threading
import weakref

import pytest
import torch
from conftest import batch_inputs, cached_model

import vlmprune
from vlmprune.session import PruningSession
from vlmprune.testing import tiny_model

METHODS = vlmprune.list_methods()
PAIR = ("llava", "qwen2_vl")  # two families: two layouts, two position schemes


def n_hooks(model) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def reachable(root, limit: int = 200_000) -> list:
    """Every object reachable from ``root`` through ``gc.get_referents`` (classes and modules
    excluded: a class is shared configuration, not per-call data)."""
    seen, stack, out = {id(root)}, [root], []
    while stack and len(out) < limit:
        obj = stack.pop()
        out.append(obj)
        for ref in gc.get_referents(obj):
            if isinstance(ref, type) or type(ref).__name__ == "module" or id(ref) in seen:
                continue
            seen.add(id(ref))
            stack.append(ref)
    return out


def run(method, family: str):
    model, proc = cached_model(family)
    inputs = batch_inputs(family, proc)
    with method(model), torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    return out, [(s.kept.clone(), s.stage) for s in method.last_selection]


@pytest.mark.parametrize("name", METHODS)
def test_method_holds_configuration_only(name):
    method = vlmprune.get_method(name, budget=5)
    run(method, "llava")
    assert method.last_selection  # the record of the call is there ...
    for obj in reachable(method):  # ... and nothing of the model or the session
        assert not isinstance(obj, (torch.nn.Module, PruningSession)), type(obj)
        if torch.is_tensor(obj):
            assert obj.device.type == "cpu"
    blob = pickle.dumps(method)
    assert len(blob) < 2048
    for clone in (pickle.loads(blob), copy.deepcopy(method), copy.copy(method)):
        assert clone == method and clone.last_selection == []
        with pytest.raises(ValueError, match="budget"):
            clone.budget = 0  # validation survives the copy


def interleaved(threads: list) -> None:
    """Run ``threads`` to the end, switching between them as finely as the interpreter allows."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)


def test_no_model_alive_after_the_block(family):
    """Every method on a fresh model of every family: once the block and the model are gone, no
    reference keeps the model alive (the methods hold only their options and CPU selections)."""
    model, proc = tiny_model(family)
    inputs = batch_inputs(family, proc, "single")
    methods = [vlmprune.get_method(name, budget=4) for name in METHODS]
    for method in methods:
        with method(model) as session, torch.no_grad():
            model(**inputs)
    with methods[0](model), torch.no_grad():
        model.generate(**inputs, max_new_tokens=2)
    ref = weakref.ref(model)
    del model, session
    gc.collect()
    assert ref() is None
    assert all(len(m.last_selection) == 1 for m in methods)


@pytest.mark.parametrize("name", METHODS)
def test_one_instance_two_models_two_threads(name):
    method = vlmprune.get_method(name, budget=5)
    sequential = {family: run(method, family) for family in PAIR}
    results, errors = {}, []
    barrier = threading.Barrier(len(PAIR))

    def worker(family):
        try:
            barrier.wait()
            for _ in range(2):
                results[family] = run(method, family)
        except BaseException as err:  # reported below
            errors.append(err)

    interleaved([threading.Thread(target=worker, args=(f,)) for f in PAIR])
    assert not errors, errors
    for family in PAIR:
        out, sels = results[family]
        ref_out, ref_sels = sequential[family]
        assert torch.equal(out, ref_out)
        assert len(sels) == len(ref_sels)
        assert all(torch.equal(a, b) and sa == sb for (a, sa), (b, sb) in zip(sels, ref_sels))


def test_same_model_from_two_threads_is_refused_atomically():
    model, proc = cached_model("llava")
    before = n_hooks(model)
    outcomes, inside = [], []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        try:
            with vlmprune.Pool(budget=4)(model):
                inside.append(n_hooks(model))
                threading.Event().wait(0.3)  # hold the model while the others try
            outcomes.append("ran")
        except RuntimeError as err:
            outcomes.append("already applied" in str(err))

    interleaved([threading.Thread(target=worker) for _ in range(8)])
    assert outcomes.count("ran") == 1 and outcomes.count(True) == 7
    installed = inside[0] - before
    with vlmprune.Pool(budget=4)(model):
        assert n_hooks(model) - before == installed  # the one that ran installed one set of hooks
    assert n_hooks(model) == before
    assert not hasattr(model, "_vlmprune_session")
