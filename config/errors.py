"""The error every teambot layer raises for problems a user can act on.

Each error carries a message that names what is at fault (a file, a setting, a value) and a
hint that says what to do. Front ends print both without a traceback.
"""

from __future__ import annotations


class TeambotError(Exception):
    """A problem the user can fix: bad input, bad configuration, a service that is down."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class ConfigError(TeambotError):
    """A setting is missing, malformed or out of range."""


class StoreError(TeambotError):
    """A store teambot keeps its data in (the Chroma store, an SQLite file of the data dir) cannot be read or written."""
