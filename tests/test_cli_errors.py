"""Every wrong argument ends in one line, ``vlmprune <command>: <argument>: <what is wrong>``,
exit status 2 and no traceback; library errors name the unsupported feature."""

from __future__ import annotations

import pytest
import torch
from conftest import batch_inputs, cached_model

import vlmprune
from vlmprune.apps.cli import entry

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A text file, a directory and a saved checkpoint of an unsupported family."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("files")
    (root / "notes.txt").write_text("not an image")
    (root / "folder").mkdir()
    cfg = LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=40
    )
    LlamaForCausalLM(cfg).save_pretrained(root / "llama")
    return root


CASES = [
    (["run", "--model", "no-such-model"], "--model"),
    (["run", "--model", "some-org/no-such-model"], "--model"),
    (["run", "--model", "{llama}"], "--model"),
    (["run", "--image", "{notes.txt}"], "--image"),
    (["run", "--image", "{folder}"], "--image"),
    (["run", "--image", "missing.png"], "--image"),
    (["run", "--image", "skimage:nope"], "--image"),
    (["run", "--image", "testbed:-1"], "--image"),
    (["run", "--image", "testbed:x"], "--image"),
    (["run", "--repeats", "0"], "--repeats"),
    (["run", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["run", "--prompt", "<image>\nwhat is it?"], "--prompt"),
    (["run", "--prompt", " "], "--prompt"),
    (["run", "--viz", "out"], "--viz"),
    (["run", "--method", "nope"], "--method"),
    (["run", "--budget", "0"], "--budget"),
    (["run", "--budget", "many"], "--budget"),
    (["run", "--ratio", "1.5"], "--ratio"),
    (["run", "--dtype", "int8"], "--dtype"),
    (["compare", "--out", "grid"], "--out"),
    (["compare", "--methods", "promprune,nope"], "--methods"),
    (["compare", "--methods", ","], "--methods"),
    (["bench", "--budgets", "-5"], "--budgets"),
    (["bench", "--tiny-arch", "--budgets", "64", "--methods", "random"], "--budgets"),
    (["bench", "--budgets", "8", "--ratios", "0.5"], "--budgets"),
    (["bench", "--model", "nope"], "--model"),
    (["bench", "--repeats", "0"], "--repeats"),
    (["bench", "--image-size", "axb", "--tiny-arch", "--methods", "random"], "--image-size"),
    (["eval", "--samples", "0"], "--samples"),
    (["eval", "--samples", "-5"], "--samples"),
    (["eval", "--task", "nope"], "--task"),
    (["eval", "--model", "{folder}"], "--model"),
    (["eval", "--budgets", "0"], "--budgets"),
    (["run", "--bogus"], "--bogus"),
]
CUDA_CASES = [["run", "--device", "cuda"], ["compare", "--device", "cuda"], ["eval", "--device", "cuda"]]
CUDA_CASES += [["bench", "--device", "cuda", "--tiny-arch", "--methods", "random"]]


def _check(argv, files, capsys, argument):
    argv = [str(files / a[1:-1]) if a.startswith("{") else a for a in argv]
    assert entry(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    prefix = "vlmprune" if argument == "--bogus" else f"vlmprune {argv[0]}"
    assert lines[0].startswith(f"{prefix}: {argument}: "), lines[0]


@pytest.mark.parametrize("argv,argument", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_wrong_argument_is_one_line(argv, argument, files, capsys):
    _check(argv, files, capsys, argument)


@NO_CUDA
@pytest.mark.parametrize("argv", CUDA_CASES, ids=[c[0] for c in CUDA_CASES])
def test_cuda_without_a_gpu_is_one_line(argv, files, capsys):
    _check(argv, files, capsys, "--device")


def test_version_and_help(capsys):
    assert entry(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"vlmprune {vlmprune.__version__}"
    for command in ("run", "compare", "bench", "eval", "list"):
        assert entry([command, "--help"]) == 0
        out = capsys.readouterr().out
        assert "--debug" in out and ("(default:" in out or command == "list"), command


def test_debug_shows_the_traceback(capsys):
    from vlmprune.apps.errors import UsageError

    with pytest.raises(UsageError):
        entry(["run", "--model", "no-such-model", "--debug"])


def test_labels_under_pruning_name_the_feature():
    model, proc = cached_model("llava")
    inputs = batch_inputs("llava", proc, "single")
    with pytest.raises(vlmprune.UnsupportedFeatureError, match="labels"):
        with vlmprune.Pool(budget=4)(model):
            model(**inputs, labels=inputs["input_ids"])


def test_static_cache_names_the_feature():
    model, proc = cached_model("llava")
    inputs = batch_inputs("llava", proc, "single")
    with pytest.raises(vlmprune.UnsupportedFeatureError, match="static"):
        with vlmprune.Pool(budget=4)(model), torch.no_grad():
            model.generate(**inputs, max_new_tokens=2, cache_implementation="static")
