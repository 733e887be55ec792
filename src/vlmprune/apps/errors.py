"""Errors the command line reports as one line: ``vlmprune <command>: <argument>: <message>``."""

from __future__ import annotations


class UsageError(ValueError):
    """A wrong argument: ``argument`` names it (``--model``), ``message`` says what is wrong and
    what is allowed."""

    def __init__(self, argument: str, message: str):
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message
