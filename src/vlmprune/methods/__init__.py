"""Built-in methods. Importing this package registers each of them (see ``vlmprune.core.registry``)."""

from vlmprune.methods.cdpruner import CDPruner
from vlmprune.methods.dart import DART
from vlmprune.methods.divprune import DivPrune
from vlmprune.methods.fastv import FastV
from vlmprune.methods.pool import Pool
from vlmprune.methods.promprune import PromPrune
from vlmprune.methods.random import RandomPrune
from vlmprune.methods.sppruner import SPPruner
from vlmprune.methods.temporal import TemporalPrune
from vlmprune.methods.visionzip import VisionZip
from vlmprune.methods.vispruner import VisPruner

__all__ = ["FastV", "Pool", "RandomPrune"]
__all__ += ["CDPruner", "DART", "DivPrune", "VisionZip", "VisPruner"]
__all__ += ["PromPrune", "SPPruner", "TemporalPrune"]
