"""The structure of the package, checked from its source (docs/contributing.md, "The house").

Floors, each importing only from the floors below it (or its own): core, methods, adapters,
session (and the package's face), integrations, apps, and on top the test fixtures and the
testbed. No import cycle between modules; only the adapters name a model family; modules stay
under 500 lines and functions under 80 (the testbed's training script aside); ``import vlmprune``
loads none of the tools.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "vlmprune"
FLOORS = {
    "core": 1,
    "methods": 2,
    "adapters": 3,
    "session": 4,
    "__init__": 4.5,  # the package's face: core, methods and session
    "integrations": 5,
    "apps": 6,
    "testing": 7,
    "testbed": 7,
}
EXEMPT_SIZE = {"testbed/train.py"}  # the testbed's training script


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def floor(module: str) -> float:
    parts = module.split(".")
    return FLOORS["__init__"] if len(parts) == 1 else FLOORS[parts[1]]


def sources() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def imports(path: Path, module: str) -> set[str]:
    """Every ``vlmprune`` module ``path`` imports, at any depth of the file (function-level too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "vlmprune"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative imports are not used in this package
                raise AssertionError(f"{path}: relative import")
            if node.module and node.module.split(".")[0] == "vlmprune":
                out.add(node.module)
    return out


def resolve(name: str, known: dict[str, Path]) -> str:
    """The module of an imported name (``from vlmprune.apps import zoo`` imports vlmprune.apps.zoo)."""
    return name if name in known else name.rsplit(".", 1)[0]


def test_every_import_goes_down_or_sideways():
    known = sources()
    upward = []
    for module, path in known.items():
        for name in imports(path, module):
            target = resolve(name, known)
            if floor(target) > floor(module):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_no_import_cycle():
    known = sources()
    graph = {m: {resolve(n, known) for n in imports(p, m)} - {m} for m, p in known.items()}
    # a package imports its own submodules in its __init__; a submodule importing the package face
    # of its own package is the same edge reversed: count only edges between distinct files
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]):
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(n) :] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_only_adapters_name_a_family():
    offenders = []
    for module, path in sources().items():
        part = module.split(".")[1] if "." in module else ""
        if part in ("adapters", "testbed", "integrations"):
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"(?i)llava|qwen", line) or re.search(r"model_type\b", line):
                offenders.append(f"{path.relative_to(PKG)}:{i}: {line.strip()}")
    assert not offenders, offenders


def test_modules_and_functions_stay_small():
    big = []
    for path in PKG.rglob("*.py"):
        rel = str(path.relative_to(PKG))
        if rel in EXEMPT_SIZE:
            continue
        text = path.read_text()
        if len(text.splitlines()) > 500:
            big.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    big.append(f"{rel}:{node.name}: {n} lines")
    assert not big, big


@pytest.mark.parametrize("statement", ["import vlmprune", "import vlmprune; vlmprune.PromPrune(budget=4)"])
def test_import_loads_no_tool(statement):
    code = (
        f"{statement}\nimport sys\n"
        "bad = [m for m in sys.modules if m.startswith(('vlmprune.testbed', 'vlmprune.testing', 'vlmprune.apps',"
        " 'vlmprune.integrations', 'matplotlib', 'transformers'))]\nprint(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_family_registry_drives_the_matrix():
    """Each registered family declares what the tools and tests build it from."""
    from vlmprune import testing
    from vlmprune.adapters import families

    assert testing.FAMILIES == tuple(c.family for c in families())
    for cls in families():
        for attr in ("label", "model_class", "config_class", "image_token", "tiny_name", "saliency_doc"):
            assert getattr(cls, attr), (cls.family, attr)
        assert callable(cls.tiny_config) and callable(cls.tiny_processor) and callable(cls.vision_shape)


def _adapter_members() -> set[str]:
    """Every member an adapter class declares (the family contract and the fixtures)."""
    from vlmprune.adapters import families
    from vlmprune.adapters.base import Adapter

    names = set(dir(Adapter))
    for cls in families():
        names |= set(vars(cls))
    return {n for n in names if not n.startswith("__")}


def test_no_module_outside_the_adapters_probes_an_adapter():
    """Outside ``adapters/``, no ``hasattr``/``getattr`` names an adapter member: what a family
    offers is declared (``adapters/base.py``, ``adapters/fixtures.py``), never probed."""
    members = _adapter_members()
    found = []
    for module, path in sources().items():
        if module.startswith("vlmprune.adapters"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            if node.func.id not in ("hasattr", "getattr") or len(node.args) < 2:
                continue
            target, name = ast.unparse(node.args[0]), node.args[1]
            if not (target == "cls" or "adapter" in target or "family" in target):
                continue  # an object that is not a family (a config, a processor, ...)
            if isinstance(name, ast.Constant) and name.value in members:
                found.append(f"{module}:{node.lineno} {node.func.id}(..., {name.value!r})")
    assert not found, found


def test_one_image_tokens_builder_and_no_attention_math_in_the_vllm_plugin():
    """``ImageTokens`` is built in one function (``core/tokens.py``) for both engines, and the vLLM
    plugin computes no attention of its own (it calls ``adapters/signals.py``)."""
    built = []
    for module, path in sources().items():
        text = path.read_text()
        if re.search(r"\bImageTokens\(", text) and module not in (
            "vlmprune.core.types",
            "vlmprune.core.tokens",
        ):
            built.append(module)
        if module.startswith("vlmprune.integrations.vllm"):
            assert "softmax" not in text, module
    assert not built, built
