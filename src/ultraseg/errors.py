"""Exceptions. An :class:`UltrasegError` is the user's problem (bad data, bad flags):
the CLI prints its message, each line as ``error: ...``, and exits with code 2. Anything else is
a bug: exit 1."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with its control characters but those in ``keep`` written as ``\\xNN``: a file
    name that holds a newline or an escape sequence is shown as text, on one line."""
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep
                         else f"\\x{ord(m.group()):02x}", text)


class UltrasegError(Exception):
    """Bad input or usage. ``str(err)`` names the file and the problem: one line (several only
    for :class:`~ultraseg.io.DataProblems`, one per problem).

    ``result``: where the work was done and only writing its files failed (a full disk), what
    the function would have returned (``evaluate``'s and ``measure_frames``' (summary, rows)),
    for the caller to show; else None."""

    result: Any = None

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else str(path)
        super().__init__(f"{escape_controls(self.path)}: {message}" if self.path else message)
        self.message = message


class DataError(UltrasegError):
    """An image, mask or dataset folder that cannot be used."""


class CheckpointError(UltrasegError):
    """A checkpoint or exported model that cannot be loaded."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed: torch's CPU allocator ("can't allocate
    memory") or a GPU's (``torch.OutOfMemoryError``), as well as a plain MemoryError."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e)
                                            or "out of memory" in str(e).lower())
