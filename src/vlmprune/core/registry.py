"""The method registry (timm style): ``@register`` on a method class makes it visible to
``list_methods``/``get_method`` and to the test matrix, which iterates the registry.

Importing ``vlmprune`` imports ``vlmprune.methods``, which registers every built-in method.
"""

from __future__ import annotations

_REGISTRY: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: register a method class under its ``name``."""
    name = cls.name
    if not name:
        raise ValueError(f"{cls.__name__} has no `name`")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"method name {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def list_methods() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_REGISTRY)


def method_class(name: str) -> type:
    """The class registered as ``name``; ``KeyError`` listing the known names otherwise."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; known methods: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def get_method(name: str, **kwargs):
    """``get_method("promprune", budget=64)`` is ``PromPrune(budget=64)``."""
    return method_class(name)(**kwargs)
