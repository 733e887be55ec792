"""The plugin's configuration: a method, a size and the method's own options, as a plain dict.

Server-wide: ``hf_overrides={"vlmprune": {"method": "promprune", "budget": 64}}`` (the model's
config carries it as ``config.vlmprune``). Per request: ``mm_processor_kwargs={"vlmprune":
{...}}``; a request naming another method replaces the server's options, one naming only a size
(``budget`` or ``ratio``) keeps the server's method and options. No configuration keeps every
token (the stock model). Bad values raise ``ValueError`` with one line naming the key.

A resolved configuration travels from the prompt processor to the model as canonical JSON
bytes, per image, so both sides build the same method and agree on the kept count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache

import torch

from vlmprune.core.method import CAPABILITIES, Method, check_engine
from vlmprune.core.registry import list_methods, method_class

KEY = "vlmprune"
SIZE_KEYS = ("budget", "ratio")
SALIENCY = ("auto", "feature_norm")
ENGINE = frozenset(CAPABILITIES) - {"in_llm"}  # what the plugin does: every pre-LLM capability


class ConfigError(ValueError):
    """A bad ``vlmprune`` configuration (one line naming the key)."""


@dataclass(frozen=True)
class Spec:
    """A resolved configuration: ``method`` built from ``options``, and the saliency signal."""

    options: tuple  # sorted (key, value) pairs, the method's keyword arguments
    name: str
    saliency: str = "auto"
    seed: int = 0

    @property
    def method(self) -> Method:
        return _build(self.name, self.options)

    def keep_count(self, n: int) -> int:
        """Tokens kept of an image of ``n`` visual tokens."""
        return self.method.keep_count(n)

    def encode(self, seed: int = 0) -> torch.Tensor:
        """(L,) uint8: the canonical JSON of this spec, with the image's ``seed`` (its index in
        its request; seeded methods offset their seed by it)."""
        data = {"method": self.name, "saliency": self.saliency, "~seed": seed, **dict(self.options)}
        raw = json.dumps(data, sort_keys=True).encode()
        return torch.tensor(list(raw), dtype=torch.uint8)


@lru_cache(maxsize=256)
def _build(name: str, options: tuple) -> Method:
    return method_class(name)(**dict(options))


def pre_llm_methods() -> list[str]:
    return [n for n in list_methods() if method_class(n).pre_llm]


def check(method: Method) -> None:
    """``ConfigError`` when the plugin cannot run ``method`` as configured (one line naming the option)."""
    try:
        check_engine(method, "the vLLM plugin", ENGINE)
    except ValueError as err:
        raise ConfigError(f"vlmprune: {err}; pre-LLM methods: {', '.join(pre_llm_methods())}") from None


def _check_dict(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(
            f"vlmprune: {where} must be a dict like {{'method': 'promprune', 'budget': 64}}, got {value!r}"
        )
    return dict(value)


def merge(server, request) -> dict | None:
    """The effective options of one request: ``request`` over ``server`` (see the module doc)."""
    server = None if server is None else _check_dict(server, "the server configuration (hf_overrides)")
    request = None if request is None else _check_dict(request, "mm_processor_kwargs['vlmprune']")
    if request is None:
        return server
    if server is None or ("method" in request and request["method"] != server.get("method")):
        return request
    base = {k: v for k, v in server.items() if not (k in SIZE_KEYS and set(SIZE_KEYS) & set(request))}
    return {**base, **request}


def resolve(options: dict | None, positions: tuple[str, ...]) -> Spec | None:
    """A :class:`Spec` for ``options`` (None: keep everything). ``positions``: the policies the
    model family supports under vLLM."""
    if options is None:
        return None
    options = dict(options)
    name = options.pop("method", None)
    if name is None:
        raise ConfigError(f"vlmprune: 'method' is required; one of {', '.join(pre_llm_methods())}")
    try:
        cls = method_class(name)
    except KeyError:
        raise ConfigError(
            f"vlmprune: unknown method {name!r}; one of {', '.join(pre_llm_methods())}"
        ) from None
    saliency = options.pop("saliency", "auto")
    if saliency not in SALIENCY:
        raise ConfigError(f"vlmprune: 'saliency' must be one of {SALIENCY}, got {saliency!r}")
    if options.get("positions") is not None and options["positions"] not in positions:
        raise ConfigError(
            f"vlmprune: 'positions' must be one of {positions} for this model under vLLM, got {options['positions']!r}"
        )
    try:
        method = cls(**options)  # every option checked by the methods' one validator
    except TypeError as err:
        raise ConfigError(f"vlmprune: {name}: {err}") from None
    except ValueError as err:
        raise ConfigError(f"vlmprune: {err}") from None
    check(method)
    # the checked values (Python scalars: NumPy and tensor scalars are read as numbers)
    key = tuple(sorted((k, getattr(method, k)) for k in options))
    return Spec(key, name, saliency)


def decode(raw: torch.Tensor | None) -> Spec | None:
    """The :class:`Spec` of :meth:`Spec.encode` bytes (None or empty: keep everything)."""
    if raw is None or raw.numel() == 0:
        return None
    data = json.loads(bytes(raw.to(torch.uint8).tolist()).decode())  # trailing blanks pad a batch
    name, saliency, seed = data.pop("method"), data.pop("saliency", "auto"), data.pop("~seed", 0)
    return Spec(tuple(sorted(data.items())), name, saliency, seed)


def encode_rows(spec: Spec | None, seeds: list[int]) -> torch.Tensor:
    """(n, L) uint8: ``spec`` per image (with its seed), blank-padded to one length; (n, 0) for
    no configuration."""
    if spec is None:
        return torch.zeros(len(seeds), 0, dtype=torch.uint8)
    rows = [spec.encode(s) for s in seeds]
    width = max(r.numel() for r in rows)
    pad = ord(" ")
    return torch.stack(
        [torch.cat([r, torch.full((width - r.numel(),), pad, dtype=torch.uint8)]) for r in rows]
    )
