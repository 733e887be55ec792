"""Floor 3: model families, one file each; importing this package registers them.

Adding a family: write ``adapters/<family>.py`` (an :class:`Adapter` subclass decorated with
:func:`register_adapter`) and import it below; see docs/contributing.md.
"""

from vlmprune.adapters.base import (
    Adapter,
    TokenGeometry,
    adapter_class,
    families,
    family,
    get_adapter,
    register_adapter,
    supported_model_types,
)

# isort: off
# Registration order is the order of the tools' listings; the first family's built-in model is
# their default (--model tiny-llava).
from vlmprune.adapters.llava import LlavaAdapter
from vlmprune.adapters.llava_next import LlavaNextAdapter
from vlmprune.adapters.llava_onevision import LlavaOnevisionAdapter
from vlmprune.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from vlmprune.adapters.qwen2_vl import Qwen2VLAdapter
from vlmprune.adapters.qwen3_vl import Qwen3VLAdapter
from vlmprune.adapters.qwen3_5 import Qwen3_5Adapter
from vlmprune.adapters.internvl import InternVLAdapter

# isort: on

__all__ = [
    "Adapter",
    "InternVLAdapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "LlavaOnevisionAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "Qwen3VLAdapter",
    "Qwen3_5Adapter",
    "TokenGeometry",
    "adapter_class",
    "families",
    "family",
    "get_adapter",
    "register_adapter",
    "supported_model_types",
]
