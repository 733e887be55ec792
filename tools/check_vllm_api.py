"""Check the vLLM API the plugin relies on against a vLLM source tree, by reading it (no import).

    python tools/check_vllm_api.py SRC        # SRC: a vLLM wheel, or a directory holding ``vllm/``
    make check-vllm-api VLLM=vllm==0.34.0     # downloads that wheel (no dependencies) and runs this

What the plugin (``src/vlmprune/integrations/vllm``) relies on is read from its own source, not
listed by hand:

- every name it imports from ``vllm...`` must be defined (or imported) in that vLLM module;
- every class it derives from a vLLM class: each method it overrides must exist in the vLLM
  class or its bases (followed through vLLM's own imports) with the same positional parameter
  names, and every ``super().name(...)`` it calls must resolve there too;
- every ``@MULTIMODAL_REGISTRY.register_processor(..., info=..., dummy_inputs=...)`` argument is
  an import, so it is checked as one.

Prints one line per problem and exits 1 if there is any; otherwise prints what it checked.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "src" / "vlmprune" / "integrations" / "vllm"


@dataclass
class VllmSource:
    """Parsed modules of a vLLM source tree (a directory or a wheel), read lazily."""

    root: Path
    _trees: dict = field(default_factory=dict)
    _zip: object = None

    def __post_init__(self):
        if self.root.is_file():
            import zipfile

            self._zip = zipfile.ZipFile(self.root)
            self._names = set(self._zip.namelist())

    def path(self, module: str) -> Path | None:
        base = Path(*module.split("."))
        for p in (base.with_suffix(".py"), base / "__init__.py"):
            if (p.as_posix() in self._names) if self._zip else (self.root / p).is_file():
                return p
        return None

    def read(self, rel: str) -> str | None:
        if self._zip is not None:
            return self._zip.read(rel).decode() if rel in self._names else None
        p = self.root / rel
        return p.read_text() if p.is_file() else None

    def tree(self, module: str) -> ast.Module | None:
        if module not in self._trees:
            p = self.path(module)
            self._trees[module] = ast.parse(self.read(p.as_posix())) if p else None
        return self._trees[module]

    def imports(self, module: str) -> dict[str, tuple[str, str]]:
        """``{local name: (module, name)}`` of a module's ``from X import Y`` statements."""
        out = {}
        tree = self.tree(module)
        for node in ast.walk(tree) if tree else ():
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                src = _absolute(module, node.module, node.level, self.path(module))
                for alias in node.names:
                    out[alias.asname or alias.name] = (src, alias.name)
        return out

    def defines(self, module: str, name: str, depth: int = 0) -> bool:
        """Whether ``name`` is defined in ``module``, imported into it, or (a package) a submodule."""
        tree = self.tree(module)
        if tree is None or depth > 8:
            return False
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return True
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets if t is not None):
                return True
        if name in self.imports(module) or self.path(f"{module}.{name}") is not None:
            return True
        if any(self.defines(other, name, depth + 1) for other in self._star_imports(module)):
            return True
        return "__getattr__" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}  # lazy exports

    def find_class(self, module: str, name: str, depth: int = 0) -> tuple[str, ast.ClassDef] | None:
        """The class ``name`` as seen from ``module``: defined there, or followed through imports."""
        tree = self.tree(module)
        if tree is None or depth > 8:
            return None
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return module, node
        src = self.imports(module).get(name)
        if src is not None:
            return self.find_class(src[0], src[1], depth + 1)
        for other in self._star_imports(module):
            found = self.find_class(other, name, depth + 1)
            if found is not None:
                return found
        return None

    def _star_imports(self, module: str) -> list[str]:
        """The modules ``module`` imports everything from (``from .x import *``)."""
        tree = self.tree(module)
        return [
            _absolute(module, n.module, n.level, self.path(module))
            for n in (tree.body if tree else ())
            if isinstance(n, ast.ImportFrom) and n.module and [a.name for a in n.names] == ["*"]
        ]

    def method(self, module: str, cls: ast.ClassDef, name: str, depth: int = 0):
        """The ``def name`` of ``cls`` or its first base that has it (following vLLM's imports)."""
        for node in cls.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return node
        if depth > 12:
            return None
        for base in cls.bases:
            base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
            if isinstance(base, ast.Subscript):  # Generic[...] bases
                inner = base.value
                base_name = inner.id if isinstance(inner, ast.Name) else getattr(inner, "attr", None)
            found = self.find_class(module, base_name) if base_name else None
            if found is not None:
                hit = self.method(found[0], found[1], name, depth + 1)
                if hit is not None:
                    return hit
        return None


def _absolute(module: str, target: str, level: int, path: Path | None) -> str:
    if level == 0:
        return target
    parts = module.split(".")
    package = parts if path is not None and path.name == "__init__.py" else parts[:-1]
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def positional(fn) -> list[str]:
    return [a.arg for a in fn.args.posonlyargs + fn.args.args]


def check_plugin(src: VllmSource, plugin: Path = PLUGIN) -> tuple[list[str], int]:
    """Problems found (one line each) and the number of checks made."""
    problems, checks = [], 0
    classes: dict[str, tuple[str, ast.ClassDef, dict]] = {}  # plugin class -> (file, class, its vllm imports)
    for path in sorted(plugin.glob("*.py")):
        tree = ast.parse(path.read_text())
        vllm_names = {}
        for local, options in _vllm_imports(tree).items():
            checks += 1
            found = [(m, n) for m, n in options if src.tree(m) is not None and src.defines(m, n)]
            vllm_names[local] = found[0] if found else options[0]
            if not found:
                missing = [f"{m} has no {n}" if src.tree(m) else f"module {m} is missing" for m, n in options]
                problems.append(f"{path.name}: {' and '.join(missing)}")
        for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
            classes[cls.name] = (path.name, cls, vllm_names)
    for name, (where, cls, vllm_names) in classes.items():
        bases = [vllm_names[b.id] for b in cls.bases if isinstance(b, ast.Name) and b.id in vllm_names]
        if not bases:
            continue
        found = [src.find_class(*b) for b in bases]
        for (mod, base), hit in zip(bases, found):
            if hit is None:
                problems.append(f"{where}: class {mod}.{base} is missing")
        for mixin in [cls, *_plugin_bases(cls, classes)]:
            n, probs = _check_methods(
                src, f"{classes[mixin.name][0]} ({name})", mixin, [f for f in found if f]
            )
            checks += n
            problems += probs
    return problems, checks


def _vllm_imports(tree: ast.Module) -> dict[str, list[tuple[str, str]]]:
    """``{local name: [(module, name), ...]}`` of a plugin file's ``from vllm... import``s. A name
    imported in a ``try`` and again in its ``except`` handlers has each of them as an alternative
    (one build or another has it): it passes when any of them resolves."""
    out: dict[str, list[tuple[str, str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "vllm":
            for alias in node.names:
                options = out.setdefault(alias.asname or alias.name, [])
                if (node.module, alias.name) not in options:
                    options.append((node.module, alias.name))
    return out


def _plugin_bases(cls: ast.ClassDef, classes: dict) -> list[ast.ClassDef]:
    """The plugin's own classes among ``cls``'s bases, recursively (its mixins)."""
    out = []
    for b in cls.bases:
        if isinstance(b, ast.Name) and b.id in classes:
            out.append(classes[b.id][1])
            out += _plugin_bases(classes[b.id][1], classes)
    return out


def _check_methods(src: VllmSource, where: str, cls: ast.ClassDef, bases) -> tuple[int, list[str]]:
    """Overrides and ``super()`` calls of a plugin class against its vLLM bases."""
    checks, problems = 0, []

    def lookup(name):
        for module, base in bases:
            fn = src.method(module, base, name)
            if fn is not None:
                return fn
        return None

    for fn in (n for n in cls.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_vlmprune")):
        if fn.name.startswith("__") and fn.name != "__init__":
            continue
        parent = lookup(fn.name)
        if fn.name == "__init__" and parent is None:
            continue
        checks += 1
        if parent is None:
            problems.append(f"{where}: {cls.name}.{fn.name} overrides nothing in vLLM")
            continue
        mine, theirs = positional(fn), positional(parent)
        if fn.args.vararg is None and mine != theirs[: len(mine)]:
            problems.append(f"{where}: {cls.name}.{fn.name}{tuple(mine)} differs from vLLM's {tuple(theirs)}")
    for node in ast.walk(cls):
        is_super = (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Call)
            and getattr(node.func.value.func, "id", None) == "super"
        )
        if is_super:
            checks += 1
            # object's own, or the plugin's
            internal = node.func.attr in ("__init__", "__new__") or node.func.attr.startswith("_vlmprune")
            if not internal and lookup(node.func.attr) is None:
                problems.append(f"{where}: {cls.name} calls super().{node.func.attr}, which vLLM lacks")
    return checks, problems


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if len(argv) == 1 else None
    if root is None or not (root.is_file() or (root / "vllm").is_dir()):
        print(
            "usage: python tools/check_vllm_api.py SRC  (a vLLM wheel, or a directory holding vllm/)",
            file=sys.stderr,
        )
        return 2
    src = VllmSource(root)
    problems, checks = check_plugin(src)
    for p in problems:
        print(p)
    version = src.read("vllm/_version.py") or ""
    label = version.split("version = ")[-1].split("\n")[0].strip() if "version = " in version else "?"
    print(f"{checks} checks against vllm {label} ({root.name}): {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
