"""vlmprune: training-free visual token pruning for stock Hugging Face VLMs.

import vlmprune
method = vlmprune.PromPrune(budget=64)
with method(model):
    out = model.generate(**inputs, max_new_tokens=32)
method.last_selection[0].kept   # indices of the kept visual tokens of the first image
"""

from vlmprune.core.base import ImageTokens, Kept, LayerTokens, Method, Region, Selection
from vlmprune.core.session import PruningSession
from vlmprune.errors import UnsupportedModelError
from vlmprune.methods import *  # noqa: F403  (registers and exports every built-in method class)
from vlmprune.methods import __all__ as _method_names
from vlmprune.registry import get_method, list_methods

__version__ = "0.1.0"

__all__ = [
    "ImageTokens",
    "Kept",
    "LayerTokens",
    "Method",
    "PruningSession",
    "Region",
    "Selection",
    "UnsupportedModelError",
    "get_method",
    "list_methods",
    *_method_names,
]
