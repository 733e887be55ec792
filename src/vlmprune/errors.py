"""Exceptions raised by vlmprune."""


class UnsupportedModelError(TypeError):
    """The model is not one of the families vlmprune has an adapter for."""
