"""Method options: one validator for every option, used by the methods, the CLI and the vLLM config.

A method declares each option with :func:`option` (its default and an :class:`Option` saying
its type and range); :class:`~vlmprune.core.method.Method` checks every declared field when it
is constructed and again on every assignment, so ``m.budget = 0`` raises as
``Method(budget=0)`` does. A bad value raises ``ValueError`` with one line naming the option.

Accepted values: NumPy scalars and 0-d tensors wherever a Python number is (stored as the Python
number); ``bool`` is refused for numeric options (``seed=True``); integer options refuse
non-integral floats; seeds lie in ``[0, 2**63 - 1]``.

Budget contract: a method's ``budget`` K is an int >= 1 (or ``ratio`` in (0, 1]); an image of N
tokens keeps ``min(K, N)`` (``max(1, round(ratio N))``) tokens, so never none. The pure
``select`` functions take that resolved count and accept any ``k >= 0`` (:func:`check_count`;
0 keeps nothing: a region given no share of an image's budget).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

MAX_SEED = 2**63 - 1
_NUMPY = "numpy"


def plain(value):
    """A NumPy scalar (or 0-d array) or a 0-d tensor as the Python scalar it holds; anything else
    unchanged."""
    if torch.is_tensor(value):
        return value.item() if value.dim() == 0 else value
    if type(value).__module__ == _NUMPY and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


@dataclass(frozen=True)
class Option:
    """What one option accepts: ``kind`` ``"int"``, ``"number"``, ``"bool"`` or ``"choice"``,
    bounds ``low``/``high`` (closed unless ``open_low``/``open_high``), ``choices``, and whether
    None is allowed (``optional``)."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    optional: bool = False

    def describe(self) -> str:
        """``"an int >= 1"``, ``"a number in (0, 1]"``, ``"one of ('a', 'b')"``, ..."""
        if self.kind == "bool":
            text = "a bool"
        elif self.kind == "choice":
            text = f"one of {self.choices}"
        else:
            text = "an int" if self.kind == "int" else "a number"
            lo, hi = self.low, self.high
            if lo is not None and hi is not None:
                text += f" in {'(' if self.open_low else '['}{_num(lo)}, {_num(hi)}{')' if self.open_high else ']'}"
            elif lo is not None:
                text += f" {'>' if self.open_low else '>='} {_num(lo)}"
            elif hi is not None:
                text += f" {'<' if self.open_high else '<='} {_num(hi)}"
        return text + (" or None" if self.optional else "")

    def check(self, name: str, value):
        """``value`` as stored (Python scalars), or ``ValueError`` naming ``name``."""
        value = plain(value)
        if value is None and self.optional:
            return None
        ok = value is not None and self._ok(value)
        if not ok:
            raise ValueError(f"`{name}` must be {self.describe()}, got {value!r}")
        if self.kind == "int":
            return int(value)
        if self.kind == "number":
            return float(value) if isinstance(value, float) else value
        return value

    def _ok(self, value) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "choice":
            return (
                isinstance(value, (str, int, float)) and not isinstance(value, bool) and value in self.choices
            )
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind == "int" and not isinstance(value, int):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        lo, hi = self.low, self.high
        if lo is not None and (value <= lo if self.open_low else value < lo):
            return False
        return not (hi is not None and (value >= hi if self.open_high else value > hi))


def _num(x) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def integer(low: int | None = None, high: int | None = None, optional: bool = False) -> Option:
    return Option("int", low, high, optional=optional)


def number(
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    open_high: bool = False,
    optional: bool = False,
) -> Option:
    return Option("number", low, high, open_low, open_high, optional=optional)


def choice(*choices, optional: bool = False) -> Option:
    return Option("choice", choices=tuple(choices), optional=optional)


def flag() -> Option:
    return Option("bool")


SEED = integer(0, MAX_SEED)
BUDGET = integer(1, optional=True)
RATIO = number(0.0, 1.0, open_low=True, optional=True)


def option(default, spec: Option):
    """A dataclass field declaring a method option: ``alpha: float = option(0.5, number(0, 1))``."""
    return dataclasses.field(default=default, metadata={"option": spec})


def options_of(cls) -> dict[str, Option]:
    """Every declared option of a dataclass (field name -> :class:`Option`)."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(cls) if "option" in f.metadata}


def check_count(k, name: str = "budget") -> int:
    """A resolved keep count for a pure ``select``: an int >= 0 (0 keeps nothing)."""
    return _COUNT.check(name, k)


_COUNT = integer(0)


def check_size(budget, ratio) -> tuple:
    """``(budget, ratio)`` checked: exactly one given, ``budget`` an int >= 1, ``ratio`` in (0, 1]."""
    budget, ratio = BUDGET.check("budget", budget), RATIO.check("ratio", ratio)
    if (budget is None) == (ratio is None):
        raise ValueError(
            "give exactly one of `budget` (tokens kept per image) or `ratio` (kept fraction); "
            f"got budget={budget!r}, ratio={ratio!r}"
        )
    return budget, ratio
