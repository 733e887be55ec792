"""vlmprune: training-free visual token pruning for stock Hugging Face VLMs.

import vlmprune
method = vlmprune.PromPrune(budget=64)
with method(model) as session:
    out = model.generate(**inputs, max_new_tokens=32)
session.selections[0].kept   # indices of the kept visual tokens of the first image
                             # (also method.last_selection, the alias)
"""

from vlmprune.core.errors import UnsupportedFeatureError, UnsupportedModelError
from vlmprune.core.method import Method, ScoringMethod
from vlmprune.core.registry import get_method, list_methods, method_class
from vlmprune.core.types import ImageTokens, Kept, LayerTokens, Region, Selection
from vlmprune.methods import *  # noqa: F403  (registers and exports every built-in method class)
from vlmprune.methods import __all__ as _method_names
from vlmprune.session import PruningSession

__version__ = "0.2.0"

__all__ = [
    "ImageTokens",
    "Kept",
    "LayerTokens",
    "Method",
    "PruningSession",
    "Region",
    "ScoringMethod",
    "Selection",
    "UnsupportedFeatureError",
    "UnsupportedModelError",
    "get_method",
    "list_methods",
    "method_class",
    *_method_names,
]
