"""Writing files so that nothing is ever half-written: temp name in the same folder, then rename.

A reader (``evaluate`` on a run that is still training, a second ``predict`` writing into the
same folder) sees either the old file or the new one, never a mixture: the new content goes
to a temporary file beside the target, is flushed to disk, and replaces the target with one
atomic ``os.replace``. Writers of the same target race only over which complete file wins.

A write that fails for a reason outside the program -- disk full, permission denied, a
read-only file system, a missing folder -- raises :class:`WriteError`, a one-line
:class:`~ultraseg.errors.UltrasegError` naming the target (the CLI exits 2), which is also an
``OSError`` for callers that treat a failed write as something to log and survive.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator

from .errors import UltrasegError

#: errno -> the words used in a :class:`WriteError`'s message.
REASONS = {
    errno.ENOSPC: "no space left on the device (disk full)",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOENT: "the folder does not exist",
    errno.ENOTDIR: "a parent of the path is not a folder",
    errno.EISDIR: "the path is a folder",
    errno.EFBIG: "file too large",
}


class WriteError(UltrasegError, OSError):
    """An output file could not be written; the target was left as it was."""

    def __str__(self) -> str:  # the one-line message, not OSError's '[Errno N] ...'
        return str(self.args[0])


def write_error(e: OSError, path: str | Path) -> WriteError:
    """A :class:`WriteError` for ``path`` from the ``OSError`` that stopped the write."""
    reason = REASONS.get(e.errno or 0) or e.strerror or str(e)
    err = WriteError(f"cannot write the file: {reason}; it was left as it was", path)
    err.errno, err.strerror = e.errno, reason
    return err


def _umask() -> int:
    """The process's umask now (it can change: read each time). Linux says it in
    /proc/self/status; elsewhere the only way to read it is to set it and put it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _new_file_mode(path: Path) -> int:
    """The mode ``open()`` would give a new file (0666 less the umask), or the replaced file's."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    A text mode writes UTF-8, with the undecodable bytes of file names (surrogate escapes) as
    they were. On any error the temporary file is removed and ``path`` is left as it was; an
    ``OSError`` (disk full, permissions, ...) becomes a :class:`WriteError` naming ``path``.
    """
    path = Path(path)
    if path.is_symlink():       # write the file it points to, and keep the link
        path = Path(os.path.realpath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise write_error(e, path) from e
    try:
        os.fchmod(fd, _new_file_mode(path))  # mkstemp's 0600 would hide outputs from others
        # text: UTF-8, and a file name's bytes that are no UTF-8 (surrogate escapes) written
        # back as they are on disk
        text = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape"}
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except WriteError:
        Path(tmp).unlink(missing_ok=True)
        raise
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(e, path) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def json_text(value: Any, indent: int | None = None) -> str:
    """``value`` as strict JSON: a nan or infinite float (an undefined figure) becomes ``null``,
    as does anything JSON has no type for, where ``json.dumps`` would write ``NaN``, which
    JSON readers refuse."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v
    return json.dumps(clean(value), indent=indent, allow_nan=False, default=lambda _: None)
