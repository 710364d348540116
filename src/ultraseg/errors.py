"""Exceptions. An :class:`UltrasegError` is the user's problem (bad data, bad flags):
the CLI prints its message, each line as ``error: ...``, and exits with code 2. Anything else is
a bug: exit 1."""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path, PurePath
from typing import Any, Union

_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_controls(text: str, keep: str = "") -> str:
    """``text`` with its control characters but those in ``keep`` written as ``\\xNN``: a file
    name that holds a newline or an escape sequence is shown as text, on one line."""
    return _CONTROLS.sub(lambda m: m.group() if m.group() in keep
                         else f"\\x{ord(m.group()):02x}", text)


#: Whether ultraseg runs on Windows: commands are suggested for its shells (cmd.exe,
#: PowerShell take single quotes for part of a word: :func:`shell_word` quotes with double
#: quotes there; folders are linked with ``mklink /J``), and a rename another program's open
#: file refuses is tried again and then said so (``fileio.replace_retried``). (A test sets
#: it, where setting ``os.name`` would change what pathlib makes.)
WINDOWS = os.name == "nt"

#: A word Windows' shells and programs read as it is, unquoted (no space, quote, ``&|<>^%!``,
#: parenthesis, ``;``, ``,``, ``$``, backtick or ``@``).
_WINDOWS_PLAIN = re.compile(r"[\w.:/\\+=-]+")


def shell_word(text: str) -> str:
    """``text`` as one word of a command line a user pastes: quoted as a POSIX shell reads it
    (``shlex.quote``: ``'C:/My Scans'``), on Windows (:data:`WINDOWS`) in double quotes as
    ``subprocess.list2cmdline`` writes them (a quote as ``\\"``, the backslashes before
    it and before the closing quote doubled), as cmd.exe, PowerShell and a Windows program's
    command line (Python's argv) read them: ``"C:\\My Scans"``. A word with nothing to
    quote is written as it is. (cmd.exe still expands ``%NAME%`` inside double quotes.)"""
    if not WINDOWS:
        return shlex.quote(text)
    if _WINDOWS_PLAIN.fullmatch(text):
        return text
    out, slashes = [], 0
    for c in text:
        if c == "\\":
            slashes += 1
            continue
        out.append("\\" * (2 * slashes + 1) + c if c == '"' else "\\" * slashes + c)
        slashes = 0
    return '"' + "".join(out) + "\\" * (2 * slashes) + '"'


#: A word of :func:`command_line`: a flag or placeholder (str), a path (PurePath), or an
#: option with its value.
Word = Union[str, PurePath, "tuple[str, str | PurePath]"]


def command_line(*words: Word) -> str:
    """A command line a user can paste into a shell, for a message to suggest: each word
    quoted as the shell needs (:func:`shell_word`: a path with a space or a quote stays one
    word, on Windows in double quotes; a flag or a placeholder such as ``MODEL`` is written
    as it is); an ``(option, value)`` pair whose
    value starts with a dash written ``--out=-run`` (``--out -run`` takes ``-run`` for a
    flag and is refused), and a path given alone that starts with a dash as ``./-run``, for
    the same reason."""
    said = []
    for word in words:
        if isinstance(word, tuple):
            option, value = word[0], str(word[1])
            said.append(f"{option}={shell_word(value)}" if value.startswith("-")
                        else f"{option} {shell_word(value)}")
            continue
        text = str(word)
        if isinstance(word, PurePath) and text.startswith("-"):
            text = f"./{text}"
        said.append(shell_word(text))
    return " ".join(said)


def install_extra(extra: str) -> str:
    """The commands that install ultraseg's optional ``extra`` (``onnx``, ``dicom``), for a
    message to suggest: the installed package's, and a checkout's, as the README's set-up
    installs from one: ``pip install 'ultraseg[onnx]' (from a checkout: pip install -e
    '.[onnx]')``, quoted as :func:`command_line` quotes (on Windows in double quotes)."""
    return (f"{command_line('pip', 'install', f'ultraseg[{extra}]')} (from a checkout: "
            f"{command_line('pip', 'install', '-e', f'.[{extra}]')})")


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

    #: where a command skipped the frame this error is about and went on (``predict``,
    #: ``measure``), that frame (:class:`ultraseg.frames.Frame`); else None
    skipped_frame: Any = None


class FrameTooLarge(DataError):
    """A frame this machine's memory does not hold at its full resolution."""


class OutputNameTooLong(DataError):
    """A frame read and predicted whose output's name (or path) is too long for the file
    system: that frame is skipped (``predict``'s status ``error``), the run goes on."""


#: What an :class:`OutputNameTooLong` says of the output's name or path (the CLI's count of the
#: frames skipped finds it so in measure's messages, kept as text).
NAME_TOO_LONG = "too long for the file system"


#: Memory a frame takes at its full resolution while it is predicted and written (its pixels,
#: probabilities, post-processing and encoding), measured on 8000x6000 frames.
FRAME_BYTES_PER_PIXEL = 20


def frame_too_large(path: str | Path, shape: tuple[int, ...] | None,
                    frame: int | None = None) -> FrameTooLarge:
    """The error for a frame (the ``frame``-th of a loop, from 0) that ran out of memory at
    its full resolution ``shape`` (H, W; None: unknown)."""
    which = "" if frame is None else f"frame {frame + 1}: "
    size = ""
    if shape:
        mpx = shape[0] * shape[1] / 1e6
        size = (f" ({shape[1]}x{shape[0]}, {mpx:.1f} Mpx: at about {FRAME_BYTES_PER_PIXEL} "
                f"bytes a pixel, {mpx * FRAME_BYTES_PER_PIXEL / 1000:.1f} GB)")
    return FrameTooLarge(f"{which}out of memory at its full resolution{size}; downscale the "
                         "image, or use a machine with more memory (--batch-size and --tile "
                         "size the network's batch, not this)", path)


#: How a run that diverged after a good epoch records its stop (``stopped``): its start.
DIVERGED = "training diverged"


def diverged_stop(what: str, kept: int) -> str:
    """The ``stopped`` of a run whose ``what`` went non-finite, finished from epoch ``kept``
    (recorded in its checkpoints; :func:`diverged_parts` reads it back)."""
    return f"{DIVERGED}: {what}; kept epoch {kept}; try a lower --lr"


def diverged_parts(stopped: str | None) -> tuple[str, str] | None:
    """What went non-finite and the epoch kept, of a ``stopped`` :func:`diverged_stop` wrote;
    None for any other stop (train's error and predict's hint both read it)."""
    if not (stopped or "").startswith(f"{DIVERGED}: "):
        return None
    what, _, rest = str(stopped).removeprefix(f"{DIVERGED}: ").partition("; kept epoch ")
    return what, rest.partition(";")[0]


class CheckpointError(UltrasegError):
    """A checkpoint or exported model that cannot be loaded."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is an allocation that failed: torch's CPU allocator ("can't allocate
    memory") or a GPU's (``torch.OutOfMemoryError``), as well as a plain MemoryError."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
        return True
    return isinstance(e, RuntimeError) and ("can't allocate memory" in str(e)
                                            or "out of memory" in str(e).lower())
