"""Model adapters, one family per file. Importing this package registers them."""

from vlmprune.adapters.base import Adapter, get_adapter, supported_model_types
from vlmprune.adapters.llava import LlavaAdapter
from vlmprune.adapters.llava_next import LlavaNextAdapter
from vlmprune.adapters.qwen2_5_vl import Qwen2_5_VLAdapter
from vlmprune.adapters.qwen2_vl import Qwen2VLAdapter

__all__ = [
    "Adapter",
    "LlavaAdapter",
    "LlavaNextAdapter",
    "Qwen2VLAdapter",
    "Qwen2_5_VLAdapter",
    "get_adapter",
    "supported_model_types",
]
