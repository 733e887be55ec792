"""Floor 4: the family-agnostic hook engine behind ``with method(model) as session:``."""

from vlmprune.session.capture import VisionCapture, capture_vision
from vlmprune.session.engine import PruningSession

__all__ = ["PruningSession", "VisionCapture", "capture_vision"]
