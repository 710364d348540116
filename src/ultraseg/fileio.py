"""Writing files so that nothing is ever half-written: temp name in the same folder, then rename.

A reader (``evaluate`` on a run that is still training, a second ``predict`` writing into the
same folder) sees either the old file or the new one, never a mixture: the new content goes
to a temporary file beside the target, is flushed to disk, and replaces the target with one
atomic ``os.replace``. Writers of the same target race only over which complete file wins.

A write that fails for a reason outside the program -- disk full, permission denied, a
read-only file system, a missing folder -- raises :class:`WriteError`, a one-line
:class:`~ultraseg.errors.UltrasegError` naming the target (the CLI exits 2), which is also an
``OSError`` for callers that treat a failed write as something to log and survive.

Atomic files keep one file whole; they do not keep two commands apart. A command that writes an
output folder holds :func:`output_lock` on it for as long as it runs, so that a second one
(``train`` started twice into one ``--out``) is refused at once instead of mixing its files
with the first one's.
"""
from __future__ import annotations

import csv
import errno
import glob
import io
import json
import math
import os
import logging
import stat
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO, Any, Collection, Iterable, Iterator, Mapping, Sequence

from . import errors as _errors
from .errors import UltrasegError

try:                    # POSIX: flock
    import fcntl
except ImportError:     # pragma: no cover (Windows)
    fcntl = None        # type: ignore[assignment]
try:                    # Windows: a byte-range lock
    import msvcrt
except ImportError:
    msvcrt = None       # type: ignore[assignment]

log = logging.getLogger(__name__)

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
    errno.EPIPE: "its reader closed it (broken pipe)",
    errno.ENAMETOOLONG: "the name is too long for the file system",
}


class WriteError(UltrasegError, OSError):
    """An output file could not be written; the target was left as it was."""

    def __str__(self) -> str:  # the one-line message, not OSError's '[Errno N] ...'
        return str(self.args[0])


def as_path(path: Any, taker: str, hint: str = "", what: str = "a file") -> Path:
    """``path`` as a :class:`~pathlib.Path`; anything but a str or an ``os.PathLike`` (the
    bytes of an upload, a file object, None) is refused saying that ``taker`` takes
    ``what``'s path, and ``hint``, where to go instead."""
    if isinstance(path, (str, os.PathLike)):
        return Path(path)
    raise UltrasegError(f"{taker} takes {what}'s path (a str or a pathlib.Path), got "
                        f"{type(path).__name__}" + (f": {hint}" if hint else ""))


def home_expanded(name: str) -> str:
    """``name`` with a leading ``~`` (``~/scans``, ``~user/scans``) as that home folder's, as
    a shell takes it unquoted; any other name as it is (``a/~b``). A config's data.path and
    data.cache_dir take their names so, as the CLI's path arguments do (quoted, or from a
    script's variable, '~' was a folder of that name in the current one)."""
    return os.path.expanduser(name)


def failure_reason(e: OSError) -> str:
    """Why ``e`` stopped a write, in :data:`REASONS`' words where it has them (every command
    says 'read-only file system' alike), else the system's."""
    return REASONS.get(e.errno or 0) or e.strerror or str(e)


def write_error(e: OSError, path: str | Path, kept: str | None = "it was left as it was"
                ) -> WriteError:
    """A :class:`WriteError` for ``path`` from the ``OSError`` that stopped the write;
    ``kept``: what the file holds since (None: nothing can be said, a device or a pipe
    written in place; a name too long for the file system names no file, and says nothing)."""
    why = failure_reason(e)
    if e.errno == errno.ENAMETOOLONG:
        kept = None
    err = WriteError(f"cannot write the file: {why}" + (f"; {kept}" if kept else ""), path)
    err.errno, err.strerror = e.errno, why
    return err


def cannot_write_in(folder: str | Path) -> str | None:
    """Why no file can be made in ``folder``, in :data:`REASONS`' words (a read-only file
    system, permission denied), as a write there would say; None where one can."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:        # (os.access is False on both; no statvfs on Windows)
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except (AttributeError, OSError):
        read_only = False
    return REASONS[errno.EROFS if read_only else errno.EACCES]


def _umask() -> int:
    """The process's umask now (it can change: read each time). Linux says it in
    /proc/self/status; elsewhere the only way to read it is to set it and put it back."""
    try:
        for line in Path("/proc/self/status").read_text("utf-8", "replace").splitlines():
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


def _in_place(path: Path) -> bool:
    """Whether ``path`` (a link followed) is a file that is written in place, never replaced:
    a device (``/dev/null``), a FIFO or a socket, as a shell's ``>`` writes it. Renamed over,
    it became a regular file (run as root, a table linked to ``/dev/full`` replaced the
    system's device)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _sync(fd: int) -> None:
    """``os.fsync``, for a regular file: a device or FIFO written in place has nothing on disk
    to sync (and fsync refuses it)."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fsync(fd)


def name_max(folder: str | Path) -> int:
    """The longest file name, in bytes, the file system of ``folder`` takes (``NAME_MAX``;
    255, the common one, where the system does not say)."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):     # (no pathconf on Windows)
        return 255


#: What :func:`_temporary` adds to the (end of the) name of the file it will replace:
#: ``.`` before it, and ``.`` + mkstemp's 8 random characters + ``.tmp`` after it.
_TEMPORARY_ADDS = len(".") + len(".") + 8 + len(".tmp")


def _temporary_prefix(path: Path) -> str:
    """The prefix of the temporary name for ``path``: ``.NAME.``, where NAME is the end of
    the file's name that leaves room for what mkstemp adds within :func:`name_max` (a name
    the file system takes gives a temporary it takes; the end kept, as :func:`temporaries`
    finds a killed writer's by the name's end: ``*_mask.png``)."""
    name, room = path.name, name_max(path.parent) - _TEMPORARY_ADDS
    while name and len(os.fsencode(name)) > room:      # (whole characters dropped)
        name = name[max(1, (len(os.fsencode(name)) - room) // 4):]
    return f".{name}."


def _temporary(path: Path, permissions: int | None = None) -> tuple[int, str]:
    """A new temporary file beside ``path`` that will replace it (its descriptor and name),
    with the mode bits ``permissions`` (None: those ``open()`` would give a new file, or the
    replaced file's) from before a byte is written: mkstemp's 0600 would hide outputs from
    others. An ``OSError`` is a :class:`WriteError` naming ``path``."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temporary_prefix(path),
                                   suffix=".tmp")
    except OSError as e:
        raise write_error(e, path) from e
    try:
        mode = _new_file_mode(path) if permissions is None else permissions
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        else:       # Windows before Python 3.13: no fchmod (chmod sets the read-only bit)
            os.chmod(tmp, mode)
    except BaseException as e:      # (Ctrl-C too: no descriptor or file left behind)
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise write_error(e, path) from e
        raise
    return fd, tmp


#: Where a rename onto a file (or of a folder) is refused as another program holds it (or a
#: file in it) open (Windows: Excel showing predictions.csv), how many times it is tried, and
#: the seconds between tries.
REPLACE_TRIES, REPLACE_WAIT = 3, 0.2


def replace_retried(src: str | Path, dst: str | Path) -> None:
    """``os.replace(src, dst)``. On Windows (:data:`ultraseg.errors.WINDOWS`), where a file
    another program holds open cannot be replaced, nor a folder holding one moved (a
    PermissionError: Excel showing a table, an antivirus scanning a file just written), tried
    :data:`REPLACE_TRIES` times :data:`REPLACE_WAIT` s apart before the last PermissionError
    goes on; elsewhere it goes on at once (the folder's permissions). Its caller says it
    with :data:`OPEN_ELSEWHERE` where Windows is the system."""
    for tried in range(1, REPLACE_TRIES + 1):
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if not _errors.WINDOWS or tried == REPLACE_TRIES:
                raise
            time.sleep(REPLACE_WAIT)


#: What a write :func:`replace_retried` could not make on Windows asks, after ``is it`` (a
#: file) or ``is a file in it`` (a folder).
OPEN_ELSEWHERE = "open in another program? close it and run again"


def _replace(tmp: str, path: Path) -> None:
    """``os.replace(tmp, path)`` as :func:`replace_retried` tries it; on Windows a
    :class:`WriteError` asking whether it is open in another program where it was refused;
    elsewhere the PermissionError as it came."""
    try:
        replace_retried(tmp, path)
    except PermissionError as e:
        if not _errors.WINDOWS:
            raise
        raise write_error(e, path, f"it was left as it was; is it {OPEN_ELSEWHERE}") from e


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb", permissions: int | None = None
                ) -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` atomically.

    ``permissions``: the file's mode bits from its creation on (0o600: never readable by
    others, not even for a moment); None: those ``open()`` would give a new file, or the
    replaced file's.

    A text mode writes UTF-8, with the undecodable bytes of file names (surrogate escapes) as
    they were, and no line end translated: ``"\\n"`` is LF on every system. On any error the
    temporary file is removed and ``path`` is left as it was; an ``OSError`` (disk full,
    permissions, ...) becomes a :class:`WriteError` naming ``path``.

    A ``path`` that is a device or a FIFO (``/dev/null``, or a link to one) is written in
    place, as a shell's ``>`` writes it; it has no earlier content to keep.
    """
    path = Path(path)
    if os.path.islink(path):    # write the file it points to, and keep the link (a name
        # too long to be a file's is no link: os.path.islink, not Path.is_symlink, says so)
        path = Path(os.path.realpath(path))
    # text: UTF-8, and a file name's bytes that are no UTF-8 (surrogate escapes) written back
    # as they are on disk; lines end as written, LF (Windows' text mode made each CRLF)
    text = {} if "b" in mode else {"encoding": "utf-8", "errors": "surrogateescape",
                                   "newline": ""}
    if _in_place(path):
        try:
            with open(path, mode, **text) as f:
                yield f
        except WriteError:
            raise
        except OSError as e:
            raise write_error(e, path, kept=None) from e
        return
    fd, tmp = _temporary(path, permissions)
    try:
        with os.fdopen(fd, mode, **text) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, path)
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


class LineFile:
    """A file that grows by whole lines (a table written row by row, each row on disk as soon
    as it is made): made as :func:`atomic_open` makes a file, its ``first`` lines (a header)
    written under a temporary name and renamed into place (replacing an earlier file at once;
    where the system renames no file held open, as Windows, closed for the rename and opened
    again); :meth:`write` adds
    lines, each in one write, flushed to the system at once (a process killed with
    ``kill -9`` leaves every line written before). A reader finds whole
    lines: a line that fails to be written (a full disk) is cut off again, and the
    :class:`WriteError` says the file holds the lines written before. :meth:`close` syncs it
    to disk. A link at ``path`` is followed, and kept; a device or FIFO is written in place,
    as :func:`atomic_open` writes it."""

    def __init__(self, path: str | Path, first: str) -> None:
        path = Path(path)
        if os.path.islink(path):    # (as atomic_open: a name too long is no link)
            path = Path(os.path.realpath(path))
        self.path, self.size, self.in_place = path, 0, _in_place(path)
        tmp = None
        if self.in_place:
            try:
                self.f = open(path, "wb", buffering=0)
            except OSError as e:
                raise write_error(e, path, kept=None) from e
        else:
            fd, tmp = _temporary(path)
            self.f = os.fdopen(fd, "wb", buffering=0)
        try:
            self._write(first)
            if tmp is not None:
                try:    # renamed held open and written on (the mode it was made with, kept)
                    os.replace(tmp, path)
                    tmp = None
                except PermissionError:     # Windows renames no file held open: closed,
                    made = os.fstat(self.f.fileno())    # renamed, opened again
                    self.f.close()
                    _replace(tmp, path)
                    tmp = None
                    self._open_again(made)
        except BaseException as e:
            self.f.close()
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            if isinstance(e, OSError) and not isinstance(e, WriteError):
                raise write_error(e, path, None if self.in_place else
                                  "it was left as it was" if tmp is not None else
                                  self._kept()) from e
            raise

    def _open_again(self, made: os.stat_result) -> None:
        """Open the table again after its rename, closed (``made``: the file as it was made);
        a file another program put there meanwhile is refused, not written into."""
        self.f = open(self.path, "r+b", buffering=0)
        if not os.path.samestat(os.fstat(self.f.fileno()), made):
            raise WriteError("cannot write the file: another program replaced it as it was "
                             "made", self.path)
        self.f.seek(self.size)

    def _write(self, text: str) -> None:
        encoded = text.encode("utf-8", "surrogateescape")
        data = memoryview(encoded)
        while data:     # (a short write goes on where it stopped)
            data = data[self.f.write(data) or 0:]
        self.size += len(encoded)

    def write(self, text: str) -> None:
        """Add ``text`` (whole lines); where it cannot be written, none of it stays."""
        try:
            self._write(text)
        except OSError as e:
            with suppress(OSError):
                self.f.truncate(self.size)
                self.f.seek(self.size)
            raise write_error(e, self.path, self._kept()) from e

    def close(self) -> None:
        """Sync the file to disk and close it (a :class:`WriteError` where that fails)."""
        if self.f.closed:
            return
        try:
            _sync(self.f.fileno())
        except OSError as e:
            raise write_error(e, self.path, self._kept()) from e
        finally:
            self.f.close()

    def abandon(self) -> None:
        """Close the file without syncing it, after a write failed (it keeps the lines
        written before)."""
        with suppress(OSError):
            self.f.close()

    def _kept(self) -> str | None:
        """What the file holds after a failed write: the lines written before (nothing can
        be said of a device or a pipe written in place)."""
        return None if self.in_place else "it holds the lines written before"


def hash_file(digest: Any, f: IO[bytes]) -> None:
    """Feed the whole of the open binary file ``f``, from its start, to ``digest`` (a hashlib
    object): the file that was opened, whatever its name has come to name since."""
    f.seek(0)
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)


def atomic_write_texts(texts: Mapping[Path, str]) -> None:
    """Files that belong together (an evaluation's table and summary), written as one: each
    to its temporary file, and only once all are written and synced do they replace their
    files (renames, which need no room). A failure (a full disk) leaves every one as it was:
    one at a time, a failure at the second left the first new beside the second's old."""
    with ExitStack() as stack:
        for path, text in texts.items():
            f = stack.enter_context(atomic_open(path, "w"))
            f.write(text)
            f.flush()
            _sync(f.fileno())


def temporaries(folder: Path, name: str = "*") -> Iterator[Path]:
    """The temporary files :func:`atomic_open` makes in ``folder`` for a file called ``name``
    (a glob pattern) that a kill left behind, or that a writer is writing now. (Those of a
    name within 14 bytes of :func:`name_max` hold only its end: a pattern ``*END`` finds
    them, the whole name does not; :func:`temporaries_of` finds one file's.)"""
    return folder.glob(f".{name}.*.tmp")


def temporaries_of(path: Path) -> Iterator[Path]:
    """The temporary files :func:`atomic_open` makes for ``path``, as :func:`temporaries`
    (found by the name they have: the end of a name near :func:`name_max`)."""
    return temporaries(path.parent, glob.escape(_temporary_prefix(path)[1:-1]))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refusing a key given twice: ``json.loads`` keeps the last copy in
    silence (a config file's second ``"train"`` section dropped its first's settings)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice in one object (a JSON reader "
                             "keeps only the last: merge them into one)")
        out[key] = value
    return out


def parse_json(text: str | bytes) -> Any:
    """``json.loads``, with JSON nested deeper than Python reads (a file of 100 000 ``[``)
    raised as the ValueError any other unreadable JSON raises, not as a RecursionError, and
    a key given twice in one object refused as a ValueError too (:func:`_unique_keys`)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def read_json(path: str | Path) -> Any:
    """A JSON file's value: read as UTF-8, as JSON is, whatever the locale (a hand-edited
    config.json or split.json under LANG=C was refused, or misread under Latin-1), a BOM
    (Notepad's) let through. OSError where it cannot be read, ValueError where it is no JSON."""
    return parse_json(Path(path).read_text(encoding="utf-8-sig"))


#: What to do where a file name cannot be written or read under the current locale.
_LOCALE_HINT = ("run under a UTF-8 locale (PYTHONUTF8=1, or LC_ALL=C.UTF-8) to use "
                "non-ASCII file names")


def json_name(name: str) -> str:
    """A file name or path (as Python decodes it under the current locale) as ultraseg stores
    it in JSON (config.json's data.path, split.json's frame names): the UTF-8 reading of its
    bytes, so that the same file is stored the same under every locale. Under an ASCII locale
    ``'d\\udcc3\\udca9'`` is stored as ``'d\u00e9'``, as a UTF-8 locale stores it. A name the
    locale cannot encode (``'d\u00e9'`` given by hand under an ASCII locale) is an
    :class:`UltrasegError` saying to use a UTF-8 locale. Read back with :func:`name_from_json`."""
    try:
        return os.fsencode(name).decode("utf-8", "surrogateescape")
    except UnicodeError as e:
        raise UltrasegError(f"the file name {name!r} cannot be encoded under this locale "
                            f"({sys.getfilesystemencoding()}): {_LOCALE_HINT}") from e


def name_from_json(text: str) -> str:
    """A name :func:`json_name` stored (or a run from before it wrote: plain text, as UTF-8
    locales decode a name) as Python names that file under the current locale."""
    try:
        return os.fsdecode(text.encode("utf-8", "surrogateescape"))
    except UnicodeError as e:
        raise UltrasegError(f"the file name {text!r} cannot be read under this locale "
                            f"({sys.getfilesystemencoding()}): {_LOCALE_HINT}") from e


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


#: What starts a formula in Excel and LibreOffice (a tab or carriage return before one too).
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any, path: bool = False) -> Any:
    """``value`` as a CSV cell of ultraseg's tables: None and NaN empty, floats in the
    fewest digits that read back as the same float (a figure recomputed from the table is
    the summary's to the last bit; a whole number without its ``.0``), and text that a
    spreadsheet would run as a formula (a received frame named ``=HYPERLINK(...)``) after
    an apostrophe, which it shows as text. A ``path`` (a file a user opens: predict's mask)
    starting so is relative (an absolute one starts with ``/``) and gets ``./`` instead: the
    same file, where ``'-5_mask.png`` would name none."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        text = repr(float(value))       # (an np.float64's repr names its type)
        return text[:-2] if text.endswith(".0") else text
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return ("./" if path else "'") + value
    return value


def csv_text(columns: Sequence[str], rows: Iterable[Mapping[str, Any]], header: bool = True,
             paths: Collection[str] = ()) -> str:
    """``rows`` as the CSV text of ultraseg's tables: header ``columns`` (unless not
    ``header``), LF line ends, each cell through :func:`csv_cell` (a column a row lacks:
    empty), those of the columns ``paths`` as paths."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    if header:
        writer.writeheader()
    for r in rows:
        writer.writerow({k: csv_cell(r.get(k), path=k in paths) for k in columns})
    return buf.getvalue()


# ------------------------------------------------------------------ one command per folder
#: The file a command holds locked in its output folder while it runs (:func:`output_lock`):
#: hidden, no image and no run file, and gone again when the command ends.
LOCK_FILE = ".ultraseg-lock"

#: The locks this process holds: (the folder's real path, thread) -> the lock file's descriptor.
_HELD: dict[tuple[str, int], int] = {}

#: Where the Windows lock sits in the lock file: a byte past its text, which stays readable.
_WINDOWS_LOCK_AT = 1 << 16

#: How often a lock file removed under a command's hands (by the holder before it, as it
#: ended) is made again before the command goes on without a lock.
_TRIES = 10


@contextmanager
def output_lock(folder: str | Path, command: str) -> Iterator[None]:
    """Hold ``folder`` (made, with its parents, where missing) for ``command`` (``'train'``)
    inside the block: a second command that asks for it meanwhile, in this process or another,
    is refused at once with an :class:`~ultraseg.errors.UltrasegError` naming the holder
    (``OUT: in use by another ultraseg command (train, pid N); ...``).

    The lock is advisory: ``fcntl.flock`` on :data:`LOCK_FILE` in the folder (on Windows
    ``msvcrt.locking``; elsewhere none), which the system lets go when the process ends, a
    ``kill -9`` included: a lock file such a process leaves is taken over by the next command.
    The same thread may take it again inside the block (``demo`` holds its folder and trains
    into it); a child process forked inside it does not hold it. On the way out the lock file
    goes, and so do the folders it made where the command left nothing in them (a command
    refused before it wrote anything leaves no folder behind). A folder that cannot hold the
    lock file (a path through a file, a read-only disk) is not locked: the command's own
    first write says what is wrong with it."""
    folder = Path(folder)
    key = (os.path.realpath(folder), threading.get_ident())
    if key in _HELD:
        yield
        return
    made = _make_folder(folder)
    fd = None
    try:
        if made is not None:
            fd = _lock(folder, command)
        if fd is not None:
            _HELD[key] = fd
        yield
    finally:
        if fd is not None and _HELD.pop(key, None) == fd:     # (not in a forked child)
            _unlock(folder / LOCK_FILE, fd)
        for made_folder in made or ():      # deepest first; one holding anything stays
            with suppress(OSError):
                made_folder.rmdir()


def _make_folder(folder: Path) -> list[Path] | None:
    """Make ``folder`` and its missing parents; returns the folders made, deepest first
    (None: it cannot be made, or is no folder)."""
    missing, p = [], folder
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return missing


def _lock(folder: Path, command: str) -> int | None:
    """The descriptor of ``folder``'s lock file, locked and naming this process and
    ``command``; None where it cannot be locked. Raises where another command holds it."""
    if fcntl is None and msvcrt is None:
        return None             # no lock on this platform (see the README)
    path = folder / LOCK_FILE
    for _ in range(_TRIES):
        try:
            fd = _open_lock_file(path)
        except FileNotFoundError:   # the holder before removed the folder it had made
            with suppress(OSError):
                folder.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as e:
            if e.errno == errno.ELOOP:      # a link (or a FIFO) put there: left alone
                log.warning("%s: not locked: its %s is a link or no plain file", folder,
                            LOCK_FILE)
            else:       # (no room for it: the command's own first write says what is wrong)
                log.debug("%s: not locked: %s", folder, e)
            return None
        try:
            locked = _try_lock(fd)
        except OSError as e:
            os.close(fd)
            log.warning("%s: cannot be locked (%s): another ultraseg command writing into it "
                        "at the same time would not be stopped", folder, e.strerror or e)
            return None
        if not locked:
            holder = _holder(fd)
            os.close(fd)
            raise UltrasegError(f"in use by another ultraseg command{holder}; wait for it to "
                                f"end or choose another --out", folder)
        if _same_file(fd, path):
            with suppress(OSError):     # only the message of a refused command needs it
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                os.write(fd, f"{os.getpid()} {command}\n".encode())
            return fd
        os.close(fd)    # locked a file its holder removed as it ended: lock the new one
    log.warning("%s: not locked: its lock file kept changing", folder)
    return None


#: Open flags that do not follow a link in the last part of the path, where the OS has them.
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


#: Open flags that do not wait (a FIFO planted as the lock file), where the OS has them.
_NO_WAIT = getattr(os, "O_NONBLOCK", 0)


def _open_lock_file(path: Path) -> int:
    """``path`` opened (made where missing) without following a link or waiting; for reading
    alone where it is another user's (a shared folder): a lock needs no writing. Anything but
    a plain file there raises ``OSError(ELOOP)``, as a link does."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW | _NO_WAIT, 0o666)
    except PermissionError:
        if not os.path.lexists(path):
            raise
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW | _NO_WAIT)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, "not a plain file", str(path))
    return fd


def _try_lock(fd: int) -> bool:
    """Lock ``fd`` without waiting: False where another holds it."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    os.lseek(fd, _WINDOWS_LOCK_AT, os.SEEK_SET)
    try:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError as e:
        if e.errno in (errno.EACCES, getattr(errno, "EDEADLOCK", errno.EDEADLK)):
            return False
        raise
    return True


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file ``path`` and let go of ``fd``. Under flock it is removed while
    still held, and only if it is still the file ``fd`` locked: a command that opened it
    meanwhile finds it gone once it gets the lock, and makes a new one (:func:`_lock`)."""
    try:
        if fcntl is not None:
            if _same_file(fd, path):
                with suppress(OSError):
                    path.unlink()
        else:
            os.lseek(fd, _WINDOWS_LOCK_AT, os.SEEK_SET)
            with suppress(OSError):
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    finally:
        os.close(fd)
    if fcntl is None:       # Windows removes no file another has open: one being locked stays
        with suppress(OSError):
            path.unlink()


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` (not a link's target) is the file open as ``fd``."""
    try:
        st, own = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _holder(fd: int) -> str:
    """`` (train, pid N)``: what the lock file open as ``fd`` says of its holder; empty where
    it says nothing (yet)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid, command = os.read(fd, 200).decode().split(None, 1)
        if fcntl is not None and not _running(int(pid)):   # (a holder that could not write)
            return ""
        return f" ({command.strip()}, pid {int(pid)})"
    except (OSError, ValueError):
        return ""


def _running(pid: int) -> bool:
    """Whether a process ``pid`` exists here (POSIX: signal 0 checks without sending)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):     # (no such process, or no pid at all)
        return False
    except PermissionError:                         # another user's
        return True
    return True


def _forget_locks() -> None:
    """In a forked child (a data loader's worker): close the parent's lock files, so that the
    lock ends with the parent, not with the last of its children."""
    for fd in _HELD.values():
        with suppress(OSError):
            os.close(fd)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_locks)
