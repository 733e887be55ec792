"""Extensions of the tools by installed packages, through the ``vlmprune.plugins`` entry points.

A plugin is a callable taking the :class:`Registry`; it can add named models (``--model NAME``),
image sources (``--image PREFIX:ARG``) and evaluation tasks (``vlmprune eval --task NAME``). The
library never imports a plugin: the tools look them up here, once, when a name is not built in.
The bundled testbed registers itself this way (``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

GROUP = "vlmprune.plugins"


@dataclass
class Registry:
    """What the installed plugins added: ``models`` {name: (loader, help)} where ``loader(device,
    dtype, attn)`` returns ``(model, processor, description)``; ``images`` {prefix: (fn, help)}
    where ``fn(arg)`` returns ``(PIL image, description)``; ``tasks`` {name: task}."""

    models: dict[str, tuple[Callable, str]] = field(default_factory=dict)
    images: dict[str, tuple[Callable, str]] = field(default_factory=dict)
    tasks: dict[str, object] = field(default_factory=dict)

    def add_model(self, name: str, loader: Callable, help: str = "") -> None:
        self.models[name] = (loader, help)

    def add_image_source(self, prefix: str, fn: Callable, help: str = "") -> None:
        self.images[prefix] = (fn, help)

    def add_task(self, name: str, task) -> None:
        self.tasks[name] = task


_LOADED: list[Registry] = []


def registry() -> Registry:
    """The registry filled by every installed plugin (loaded on first use)."""
    if not _LOADED:
        from importlib.metadata import entry_points

        reg = Registry()
        for ep in entry_points(group=GROUP):
            ep.load()(reg)
        _LOADED.append(reg)
    return _LOADED[0]
