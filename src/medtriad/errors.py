"""Typed errors raised by the library; only the CLI turns them into messages and exit codes."""

from __future__ import annotations

from pathlib import Path


class MedtriadError(Exception):
    """Base class of every error medtriad raises on purpose."""


class DataError(MedtriadError):
    """A file that cannot be used: carries the offending path and the reason."""

    def __init__(self, path: str | Path | None, reason: str) -> None:
        self.path = None if path is None else str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}" if self.path else reason)


class ConfigError(MedtriadError):
    """A configuration value that is missing, unknown or of the wrong type (names its dotted key)."""

    def __init__(self, key: str | None, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"config '{key}': {reason}" if key else f"config: {reason}")
