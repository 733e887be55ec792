"""Exceptions raised by vlmprune."""


class UnsupportedModelError(TypeError):
    """The model is not one of the families vlmprune has an adapter for."""


class UnsupportedFeatureError(NotImplementedError):
    """A feature of the call (``labels``, a static cache, ...) that pruning does not support."""
