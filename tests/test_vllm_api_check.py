"""tools/check_vllm_api.py reads what the plugin relies on from its source and finds it, or not,
in a vLLM source tree: checked here on a small made-up tree and plugin, where it must fail."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_vllm_api.py"
spec = importlib.util.spec_from_file_location("check_vllm_api", TOOL)
check = sys.modules.setdefault(spec.name, importlib.util.module_from_spec(spec))
spec.loader.exec_module(check)

VLLM = {
    "vllm/__init__.py": "",
    "vllm/base.py": """
        class Processor:
            def _get_prompt_updates(self, mm_items, hf_kwargs, out_kwargs): ...
    """,
    "vllm/models/__init__.py": "from .impl import *\n",
    "vllm/models/impl.py": """
        from vllm.base import Processor as P
        class Model:
            def embed_multimodal(self, **kwargs): ...
            def forward(self, input_ids, positions): ...
        class ModelProcessor(P):
            pass
    """,
}
PLUGIN = """
    from vllm.models import Model, ModelProcessor
    class Mixin:
        def _get_prompt_updates(self, mm_items, hf_kwargs, out_kwargs):
            return super()._get_prompt_updates(mm_items, hf_kwargs, out_kwargs)
    class Pruned(Mixin, ModelProcessor):
        pass
    class PrunedModel(Model):
        def forward(self, input_ids, positions):
            return super().forward(input_ids, positions)
        def _vlmprune_private(self):
            return super().embed_multimodal()
"""


def write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def run(tmp_path, vllm: dict, plugin: str):
    src = check.VllmSource(write(tmp_path / "src", vllm))
    return check.check_plugin(src, write(tmp_path / "plugin", {"p.py": plugin}))


def test_a_matching_tree_passes(tmp_path):
    problems, checks = run(tmp_path, VLLM, PLUGIN)
    assert problems == [] and checks >= 6  # 2 imports, 2 overrides, 3 super() calls


def test_a_renamed_method_a_changed_signature_and_a_missing_name_fail(tmp_path):
    broken = dict(VLLM)
    broken["vllm/models/impl.py"] = (
        VLLM["vllm/models/impl.py"]
        .replace("def forward(self, input_ids, positions)", "def forward(self, input_ids, positions_ids)")
        .replace("def embed_multimodal", "def embed_multimodal_v2")
    )
    broken["vllm/base.py"] = VLLM["vllm/base.py"].replace("_get_prompt_updates", "_get_updates")
    problems, _ = run(tmp_path, broken, PLUGIN + "    from vllm.models import Gone\n")
    text = "\n".join(problems)
    assert "PrunedModel.forward('self', 'input_ids', 'positions') differs" in text
    assert "super().embed_multimodal, which vLLM lacks" in text
    assert "Mixin._get_prompt_updates overrides nothing" in text
    assert "vllm.models has no Gone" in text


def test_the_real_plugin_against_the_installed_vllm_when_there_is_one():
    """Where a vLLM is installed (the vLLM test environment), the plugin's own source checks clean
    against it."""
    vllm = pytest.importorskip("vllm")
    if getattr(vllm, "__file__", None) is None:  # tests/vllm, a directory, not the package
        pytest.skip("vLLM is not installed here")
    problems, checks = check.check_plugin(check.VllmSource(Path(vllm.__file__).parents[1]))
    assert problems == [] and checks > 50


def test_try_except_import_alternatives_pass_when_one_resolves(tmp_path):
    """A class that one build loads from another module: ``try: from A import X`` / ``except
    ImportError: from B import X`` passes when either has it, and fails naming both when neither."""
    alt = """
    try:
        from vllm.models.nvidia import Model
    except ImportError:
        from vllm.models import Model
    class Pruned(Model):
        def forward(self, input_ids, positions):
            return super().forward(input_ids, positions)
    """
    problems, _ = run(tmp_path, VLLM, alt)
    assert problems == []
    gone = dict(VLLM)
    gone["vllm/models/impl.py"] = VLLM["vllm/models/impl.py"].replace("class Model:", "class Other:")
    problems, _ = run(tmp_path / "gone", gone, alt)
    assert "vllm.models.nvidia is missing and vllm.models has no Model" in "\n".join(problems)
