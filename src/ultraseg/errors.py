"""Exceptions. An :class:`UltrasegError` is the user's problem (bad data, bad flags):
the CLI prints its one-line message and exits with code 2. Anything else is a bug: exit 1."""
from __future__ import annotations

from pathlib import Path


class UltrasegError(Exception):
    """Bad input or usage. ``str(err)`` is one line that names the file and the problem."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
        self.message = message


class DataError(UltrasegError):
    """An image, mask or dataset folder that cannot be used."""


class CheckpointError(UltrasegError):
    """A checkpoint or exported model that cannot be loaded."""
