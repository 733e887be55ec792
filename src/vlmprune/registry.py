"""The method registry (timm style): ``@register`` on a method class makes it visible to
``list_methods``/``get_method`` and to the test matrix, which iterates the registry."""

from __future__ import annotations

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method name {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def _ensure_loaded() -> None:
    # Importing the package registers every built-in method.
    import vlmprune.methods  # noqa: F401


def list_methods() -> list[str]:
    """Sorted names of every registered method."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    _ensure_loaded()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_method(name: str, **kwargs):
    """``get_method("promprune", budget=64)`` is ``PromPrune(budget=64)``."""
    return method_class(name)(**kwargs)
