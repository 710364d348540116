"""The ``ultraseg`` command: parse arguments, call the Python API, print, return an exit code.

Exit codes: 0 success, 2 bad input or usage (one line on stderr naming the file and the
problem; also a file the environment will not let us read or write: permissions, disk full),
1 internal error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, handled as Ctrl-C is),
129 hung up (SIGHUP, handled as SIGTERM is), 141 the reader of stdout went away (nothing
printed on stderr; train and demo go on to their run's end). Under torchrun every process
prints its own errors, those of ranks other than 0 prefixed with ``rank R:``.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import ctypes
import errno
import io
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, NoReturn, Sequence

from . import __version__
from .config import label_problem, whole_number_problem
from .errors import UltrasegError, command_line, escape_controls, is_out_of_memory
from .fileio import home_expanded, json_text
from .logs import LevelSet, set_level
from .shared import while_held

log = logging.getLogger("ultraseg")

EXIT_OK, EXIT_INTERNAL, EXIT_USAGE = 0, 1, 2
#: stdout's reader went away (a pipe into `head`): 128 + SIGPIPE, as a shell reports it
EXIT_BROKEN_PIPE = 141

#: An OSError with one of these is the environment's problem, not a bug: exit 2, one line.
USER_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS,
                         errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EFBIG,
                         errno.ENAMETOOLONG, errno.ELOOP})


#: Set to 0 to keep glibc's allocator as it is in ``ultraseg``'s own process.
KEEP_FREED_MEMORY_ENV = "ULTRASEG_KEEP_FREED_MEMORY"

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc's mallopt parameters (malloc.h)


def keep_freed_memory() -> bool:
    """Tell glibc's allocator to keep freed memory in the process for reuse. Process-wide:
    the ``ultraseg`` command calls it for its own process (:func:`command`); a program using
    the Python API or :func:`main` decides for its own (call this, or set the environment
    variables below).

    By default glibc gives every block over 32 MB (a width-64 U-Net's first activations on a
    580x420 frame are 58 MB) its own ``mmap`` and hands it back when freed, so each forward
    pass faults every page of those blocks in again: 8 % of a frame's prediction time on the
    2-core benchmark machine, and more for a loop of small batches. Afterwards freed blocks
    stay in the heap for the next pass (what ``MALLOC_MMAP_MAX_=0`` and a high
    ``MALLOC_TRIM_THRESHOLD_`` in the environment do), and resident memory stays near its peak
    instead of shrinking between passes.

    Returns True when applied; False off glibc, or when ``ULTRASEG_KEEP_FREED_MEMORY=0``.
    """
    if os.environ.get(KEEP_FREED_MEMORY_ENV, "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # a C library without mallopt
        return False
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
    log.debug("glibc allocator keeps freed memory: %s", ok)
    return ok


def path_arg(value: str) -> str:
    """An argument naming a file or folder: an empty one (an unset shell variable, ``$OUT``)
    is refused rather than taken as the current folder; a leading ``~`` is the home folder's,
    as a config's data.path takes it (:func:`~ultraseg.fileio.home_expanded`)."""
    if not value.strip():
        raise argparse.ArgumentTypeError("an empty path (an unset variable?)")
    return home_expanded(value)


def whole_number_arg(lo: int = 1, hi: int | None = None) -> Callable[[str], int]:
    """The argparse ``type`` of a whole-number flag from ``lo`` (to ``hi``): a value out of
    that range, or no whole number, is a usage error naming the flag in
    :func:`~ultraseg.config.whole_number`'s words (``argument --tile: must be a whole number
    from 1, got 0``, exit 2), as the command line is parsed, before any file is read. Every
    subcommand's counts, sizes and seeds take one; the Python API checks its own arguments."""
    return _checked_int(lambda value: whole_number_problem(value, lo, hi))


def _checked_int(problem_of: Callable[[Any], str | None]) -> Callable[[str], int]:
    """The argparse ``type`` of a whole number that ``problem_of`` (given the int, or the text
    where it is none) says what is wrong with: a usage error in its words."""
    def parse(text: str) -> int:
        try:
            value: Any = int(text)
        except ValueError:
            value = text
        problem = problem_of(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return parse


#: The type of a count: a whole number from 1 (--tile, --batch-size, --threads, --epochs...).
positive_int = whole_number_arg(1)

#: --label's type: a structure's label, 1 to config.MAX_LABEL, refused in the API's words.
label_arg = _checked_int(label_problem)


def _phantom_size(text: str) -> int:
    """phantom --size's type: a side from :data:`ultraseg.phantom.MIN_SIZE`, the least
    make_dataset takes (imported as the flag is read: phantom's scipy would slow every
    command's start)."""
    from .phantom import MIN_SIZE

    return whole_number_arg(MIN_SIZE)(text)


class _Parser(argparse.ArgumentParser):
    commands: tuple[str, ...] = ()     # the subcommands' names (the top-level parser's)

    def error(self, message: str) -> NoReturn:  # usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _layout_args(p: argparse.ArgumentParser,
                 label: str | None = "segment label K of a label mask (default: any non-zero "
                                     "label)",
                 fill: str = "the masks are drawn closed contours (outlines): fill each into "
                             "a solid mask, in any layout (the hc18 layout always does; "
                             "kept in the checkpoint)") -> None:
    """--layout and --subject-pattern; --label with ``label`` as its help and --fill-outlines
    with ``fill`` as its (label None: neither, for a command that reads no ground truth)."""
    p.add_argument("--layout", default="auto",
                   help="dataset layout: auto (default), kaggle, folders, busi, hc18, images")
    p.add_argument("--subject-pattern", metavar="REGEX",
                   help="regex whose first group (else whole match) is the subject id of a file "
                   "stem (matching no name: refused; names it misses keep the layout's subject)")
    if label is not None:
        p.add_argument("--label", type=label_arg, metavar="K", help=label)
        p.add_argument("--fill-outlines", action=argparse.BooleanOptionalAction, default=None,
                       help=fill)


def error_lines(e: UltrasegError | OSError) -> list[str]:
    """The lines an error that stops a command says (each printed after ``error:``)."""
    if isinstance(e, UltrasegError):
        return str(e).splitlines() or [""]
    return [f"{e.filename}: {e.strerror or e}" if e.filename else str(e)]


@contextlib.contextmanager
def json_on_failure(a: argparse.Namespace, path: str) -> Iterator[None]:
    """With ``--json``, an error that stops the command inside the block still prints one
    JSON object on stdout (a script piping it to ``jq`` gets input): ``{"path", "failed":
    true, "problems", "problem_lines"}``, the lines as ``inspect --json``'s; the error goes
    on to stderr as for any command."""
    try:
        yield
    except (UltrasegError, OSError) as e:
        if a.json and not (isinstance(e, UltrasegError) and e.result is not None):
            lines = error_lines(e)   # (an error with a result printed that result's object)
            print(json_text({"path": str(path), "failed": True, "problems": len(lines),
                             "problem_lines": lines}))
        raise


# ---------------------------------------------------------------- inspect
def _cmd_inspect(a: argparse.Namespace) -> int:
    from .inspection import failed_report, format_report, inspect_dataset

    try:
        report, problems = inspect_dataset(a.data, a.layout, a.subject_pattern, a.label,
                                           bool(a.fill_outlines))
    except (UltrasegError, OSError) as e:
        if a.json:        # a script reading stdout gets its JSON object, saying what failed
            print(json_text(failed_report(a.data, error_lines(e))))
        raise            # and stderr its error lines, as for any command
    if a.json:
        report["problem_lines"] = [str(p) for p in problems]
        print(json_text(report))
    else:
        print(format_report(report))
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return EXIT_USAGE if problems else EXIT_OK


# ---------------------------------------------------------------- phantom
def _cmd_phantom(a: argparse.Namespace) -> int:
    from .phantom import make_dataset

    out = make_dataset(a.out or a.out_flag, n=a.n, size=a.size, seed=a.seed)
    print(f"wrote {a.n} phantom frames to {out} (layout: folders)")
    return EXIT_OK


def build_parser() -> _Parser:
    parser = _Parser(prog="ultraseg", description="U-Net segmentation of 2D ultrasound images.")
    parser.add_argument("--version", action="version", version=f"ultraseg {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("inspect", help="validate and summarise a dataset",
                       description="Decode every sample, report every problem and a summary. "
                                   "How to lay out your own data (DATA/images/ + DATA/masks/, "
                                   "mask values, subjects) and the commands that follow: "
                                   "the README's 'Your own data' section.")
    p.add_argument("data", type=path_arg, help="dataset folder")
    _layout_args(p, label="check and summarise label K of a label mask (default: any non-zero "
                          "label)",
                 fill="the masks are drawn closed contours (outlines): summarise them filled, "
                      "as train --fill-outlines trains them (the hc18 layout always fills)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object, of the "
                   "same keys whether or not the folder could be read (once the arguments "
                   "parse)")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("phantom", help="write synthetic ultrasound frames (folders layout)",
                       description="Synthetic B-mode frames with hypoechoic structures and masks.")
    where = p.add_mutually_exclusive_group(required=True)   # --out, as the other commands
    where.add_argument("out", nargs="?", type=path_arg,
                       help="output folder (created; must not already hold images)")
    where.add_argument("--out", dest="out_flag", metavar="OUT", type=path_arg,
                       help="the output folder, as the other commands name theirs")
    p.add_argument("--n", type=positive_int, default=200,
                   help="number of frames (default 200)")
    p.add_argument("--size", type=_phantom_size, default=256,   # (help: phantom.MIN_SIZE)
                   help="frame side in pixels, at least 32 (default 256)")
    p.add_argument("--seed", type=whole_number_arg(0), default=0,
                   help="random seed of the frames (default 0)")
    p.set_defaults(func=_cmd_phantom)

    from . import cli_run  # train, evaluate, predict, export, measure, demo

    cli_run.add_commands(sub, _layout_args)
    for command in sub.choices.values():    # also after the command, where users type them
        g = command.add_argument_group("output")
        # (its own count: a command's flags are parsed apart and would replace the count
        # given before the command, -v -v CMD -v giving 1)
        g.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       dest="verbose_after", help="more log output (also before the command)")
        g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks of internal errors")
    parser.commands = tuple(sub.choices)
    return parser


def _print_any_path() -> None:
    """A file name that is no valid UTF-8 (an old archive's Latin-1 name) reaches Python as
    surrogate escapes; printed on a strict UTF-8 stdout it failed (an internal error, after
    the work was done). stdout writes it back as the bytes it was; stderr already escapes.
    On a stdout of another encoding (Windows' cp1252 when redirected to a file) a name's
    characters it lacks (CJK, or an escaped byte) are written as backslash escapes: a
    training into `数据/run` finished, then exited 1 with "internal error: UnicodeEncodeError"
    while printing where its checkpoint lay."""
    if isinstance(sys.stdout, io.TextIOWrapper) and sys.stdout.errors == "strict":
        utf8 = codecs.lookup(sys.stdout.encoding or "ascii").name == "utf-8"
        sys.stdout.reconfigure(errors="surrogateescape" if utf8 else "backslashreplace")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, a batch scheduler's time limit, `docker stop`) or SIGHUP (the
    terminal or ssh session closed, some schedulers), raised where the process is, as
    Ctrl-C's KeyboardInterrupt is: the same clean-up and the same word on how to go on, exit
    128 + the signal's number (143, 129) as a shell reports a process the signal ended."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__()
        self.signum = signum


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


#: The signals that stop a command as Ctrl-C does (SIGHUP where the system has it).
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                      if hasattr(signal, name))


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` inside the block, and Windows' SIGBREAK (a
    console's Ctrl-Break) a KeyboardInterrupt, as Ctrl-C does: its clean-up and its word on
    how to go on (it ended the process where it was). Main thread only: elsewhere a handler
    cannot be installed, and the caller's handling stays as it was; the caller's handlers are
    put back after. A signal the process was started ignoring stays ignored: `nohup` ignores
    SIGHUP so that the command outlives the session that started it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = {signum: _raise_terminated for signum in _STOP_SIGNALS}
    ctrl_break = getattr(signal, "SIGBREAK", None)      # (looked up now: Windows alone has it)
    if ctrl_break is not None:
        handlers[ctrl_break] = _raise_interrupt
    before = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()
              if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler)


def _how_to_go_on(a: argparse.Namespace) -> str:
    """After Ctrl-C: ": " and :func:`_going_on`, else nothing."""
    going_on = _going_on(a)
    return f": {going_on}" if going_on else ""


def _going_on(a: argparse.Namespace) -> str:
    """The command that goes on with an interrupted train or demo whose run saved an epoch
    ("`...` goes on from the last saved epoch"), else nothing. A train run that had finished
    goes on too (``--resume`` writes a report it stopped at again); a demo whose evaluation
    was written does not (the demo refuses a finished demo's folder)."""
    out = getattr(a, "out", None) if a.command in ("train", "demo") else None
    try:
        if out is None or not (Path(out) / "last.ckpt").is_file():
            return ""
    except OSError:     # --out itself the trouble (a name too long): nothing to go on from
        return ""
    from .demo import goes_on, minutes_arg

    if a.command == "demo" and not goes_on(out):
        return ""

    # `--out=-run`: a folder whose name starts with a dash, given as `--out -run`, is taken
    # for a flag and refused
    where = command_line(("--out", str(out)))
    again = (f"ultraseg train --resume {where}" if a.command == "train"
             else f"ultraseg demo {where} --minutes {minutes_arg(a.minutes)}")
    if _torchrun_train(a):
        # a torchrun job: go on as one (the plain command would go on in one process)
        local = os.environ.get("LOCAL_WORLD_SIZE") or os.environ["WORLD_SIZE"]
        again = (f"torchrun --nproc_per_node={local} -m ultraseg train --resume {where}` "
                 "(with the rest of the torchrun options the job was started with")
        return f"`{again}) goes on from the last saved epoch"
    return f"`{again}` goes on from the last saved epoch"


def _then_resume(a: argparse.Namespace) -> str:
    """After a write that failed (a full disk), or another process of a torchrun job, in a
    train or demo whose run saved an epoch: "; then `...` goes on from the last saved epoch",
    as after SIGTERM; else nothing."""
    going_on = _going_on(a)
    return f"; then {going_on}" if going_on else ""


def to_null(stream: Any) -> None:
    """Point ``stream``'s file descriptor at the null device, once its reader has gone: what
    is still buffered for it, and whatever is written later (by print, or a log handler
    holding it), goes nowhere instead of failing again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):     # not a file (a test's capture)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)

def terminal_columns(stream: Any) -> int:
    """How many columns the terminal ``stream`` writes to has: ``$COLUMNS`` where it is a
    positive number (as :func:`shutil.get_terminal_size` takes it), else the stream's own
    terminal's (stderr's, where stdout is redirected), else stdout's, else 80."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(stream.fileno()).columns
        except (AttributeError, OSError, ValueError):    # not a file (a test's capture)
            columns = 0
    return columns if columns > 0 else shutil.get_terminal_size().columns


class StatusLine:
    """A progress display's line on stderr (``stream``): rewritten in place on a terminal
    (``tty``; :meth:`status` draws it, :meth:`clear` takes it off), and written guarded: a
    stream that cannot be written (its reader gone, a full disk, closed under it) stops
    nothing, the display goes quiet (``quiet``) and the stream is sent to the null device
    (:func:`to_null`). Predict's and measure's bar and training's printer both write through
    it (the printer's epoch lines on stdout too)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.quiet = False
        self.shown = 0      # the columns the status on the terminal's line holds

    def write(self, text: str) -> OSError | ValueError | None:
        """Write ``text``; the error that made this write go quiet, else None."""
        if self.quiet:
            return None
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError) as e:  # (BrokenPipeError; a closed stream's ValueError)
            self.quiet = True
            to_null(self.stream)
            return e
        return None

    def status(self, text: str) -> None:
        """On a terminal, show ``text`` (one line, one column a character) in place of the
        status shown: cut to the terminal's width less one column, since a line that wraps
        is not redrawn in place (``\\r`` goes back to the start of its last row only) and a
        character in the last column wraps on some terminals; padded over what the last
        status left. No escape sequences: a TERM=dumb terminal shows them as text."""
        if not self.tty:
            return
        room = max(terminal_columns(self.stream) - 1, 0)
        text = text[:room].ljust(min(self.shown, room))
        self.write("\r" + text)
        self.shown = len(text)

    def clear(self) -> None:
        """On a terminal, blank what the status line shows and go back to its start (a line
        printed on stdout goes there; a progress bar's next call draws it again)."""
        if self.tty and self.shown:     # (no wider than the terminal, if it has narrowed)
            self.write("\r" + " " * min(self.shown, terminal_columns(self.stream) - 1) + "\r")
            self.shown = 0


def bar(done: float, total: float = 1.0) -> str:
    """A 30-character bar, ``done`` of ``total`` of it filled."""
    return f"[{'#' * int(30 * done / total):<30}]"


def terminal_safe(text: str) -> str:
    """``text`` with the characters a terminal acts on rather than shows (ESC, which starts a
    sequence that clears the screen or sets the window title, BEL, backspace, C1 controls)
    written as ``\\xNN``; tab, newline and carriage return (the progress bar's) are kept."""
    return escape_controls(text, keep="\t\n\r")


class _OneLine(logging.Formatter):
    """A log line as the CLI prints its own: ``warning: MESSAGE`` (the level in lower case, as
    ``error: ...``; ultraseg's module path left out, another library's logger named), whose
    message (a file name in it) holds no control character, a newline included: a frame
    named 'f\\nerror: fake.tif' printed a warning and a faked error line. (train.log keeps
    the level and module of each record: run_folder's file handler.)"""

    def formatMessage(self, record: logging.LogRecord) -> str:
        ours = record.name == "ultraseg" or record.name.startswith("ultraseg.")
        source = "" if ours else f"{record.name}: "
        return escape_controls(f"{record.levelname.lower()}: {source}{record.message}",
                               keep="\t")


class _Printable:
    """A text stream that writes through :func:`terminal_safe`; anything else is the
    stream's own."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(terminal_safe(text))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


@contextlib.contextmanager
def _printable_streams() -> Iterator[None]:
    """stdout and stderr write file names as text, never as terminal commands: a received
    frame named ``a\\x1b[2J.png`` cleared the screen (and could set the window title, or hide
    the error lines above it) when its error was printed.

    A stream closed when the process started (``cmd >&-``, some daemons and cron set-ups) is
    None in Python: it is written to the null device, so that printing to it is no
    "internal error" (after the work was done, or in place of a user error's exit 2)."""
    out, err = sys.stdout, sys.stderr
    opened: list[Any] = []

    def usable(stream: Any) -> Any:
        if stream is None:
            opened.append(open(os.devnull, "w", encoding="utf-8"))
            return opened[-1]
        return stream

    sys.stdout, sys.stderr = _Printable(usable(out)), _Printable(usable(err))
    try:
        yield
    finally:
        sys.stdout, sys.stderr = out, err
        for stream in opened:
            stream.close()


def command() -> int:
    """The ``ultraseg`` command and ``python -m ultraseg``: this process is ultraseg's own, so
    glibc keeps the memory it frees (:func:`keep_freed_memory`), then :func:`main` runs
    ``sys.argv``. A host calling :func:`main` keeps its allocator as it is."""
    keep_freed_memory()  # this process is ours: no page faults on every pass's large blocks
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):   # a usage error: on stderr, as argparse's own are
        if sys.stderr is not None:     # (argparse would print a None stderr's to stdout)
            parser.print_usage(sys.stderr)
        parser.error(f"a command is required: {', '.join(parser.commands)} (`ultraseg --help` "
                     "says what each does)")
    _print_any_path()
    with _printable_streams():
        return _main(a)


def _main(a: argparse.Namespace) -> int:
    a.verbose += getattr(a, "verbose_after", 0)
    level = logging.WARNING - 10 * min(a.verbose, 2)
    if _torchrun_train(a) and _rank_prefix() and not a.verbose:
        level = logging.ERROR     # ranks > 0 of a torchrun job: rank 0 says what all would
    # -v is ultraseg's own INFO, -v -v its DEBUG; other libraries keep to their warnings
    # (at DEBUG, matplotlib's font search and Pillow's chunk-by-chunk reading drowned ours)
    with _terminal_log(level):
        return _run(a)


def _terminal_log(level: int) -> ContextManager[None]:
    """Log records on the call's stderr, one line each (``warning: ...``), for the call
    alone: the handler is taken off and the levels put back after, so a later ``main()`` in
    one process (a notebook, a test) prints on its own stderr, not on the first call's (kept
    by ``logging.basicConfig``, once closed, each record printed logging's own traceback). A
    host that set up logging itself (handlers on the root logger) keeps its set-up. Calls in
    threads at once share the first one's handler and levels, its ``-v`` included, until the
    last one ends (:func:`~ultraseg.shared.while_held`). ``ultraseg``'s level is set and put
    back for ``-v`` alone: a training in another thread sets it for its ``train.log``. A level
    set meanwhile by someone else is theirs, and stays
    (:meth:`~ultraseg.logs.LevelSet.put_back`)."""
    root, package = logging.getLogger(), logging.getLogger("ultraseg")

    def change() -> tuple[logging.Handler | None, LevelSet | None, LevelSet | None]:
        handler: logging.Handler | None = None
        root_set = package_set = None
        if not root.handlers:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_OneLine())
            handler.setLevel(level)     # training logs INFO to its run's train.log; the
            root.addHandler(handler)    # terminal shows only what -v asks for
            root_set = set_level(root, max(level, logging.WARNING))
        if level < logging.WARNING:     # (else not ours to put back: a training in another
            package_set = set_level(package, level)     # thread may set it)
        return handler, root_set, package_set

    def restore(held: tuple[logging.Handler | None, LevelSet | None, LevelSet | None]
                ) -> None:
        handler, root_set, package_set = held
        if handler is not None:
            root.removeHandler(handler)
        for changed in (root_set, package_set):
            if changed is not None:
                changed.put_back()

    return while_held("cli terminal log", change, restore)


def _run(a: argparse.Namespace) -> int:
    try:
        with _sigterm_as_interrupt():
            return a.func(a)
    except UltrasegError as e:  # one line per problem (DataProblems holds several)
        lines = str(e).splitlines() or [""]
        if isinstance(e, OSError):  # a full disk: a run with a saved epoch goes on from it
            lines[-1] += _then_resume(a)
        for line in lines:
            print(f"{_rank_prefix()}error: {line}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader of stdout went away (`ultraseg inspect DATA | head -1`): no bug, nothing
        # more to say; stdout goes to devnull so that its flush at exit does not fail again
        to_null(sys.stdout)
        return EXIT_BROKEN_PIPE
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            return _internal(e, a.debug)
        where = f"{e.filename}: " if e.filename else ""
        print(f"{_rank_prefix()}error: {where}{e.strerror or e}{_then_resume(a)}",
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt as e:
        signum = e.signum if isinstance(e, Terminated) else None
        said = {None: "interrupted", signal.SIGTERM: "terminated"}.get(signum, "hung up (SIGHUP)")
        with contextlib.suppress(OSError):      # (after SIGHUP the terminal may be gone)
            # (a torchrun job's command to go on: once, from rank 0, not from every process)
            print(_rank_prefix() + said + ("" if _rank_prefix() else _how_to_go_on(a)),
                  file=sys.stderr)
        return 130 if signum is None else 128 + signum
    except (MemoryError, RuntimeError) as e:   # numpy's "Unable to allocate 74.5 GiB...",
        if not is_out_of_memory(e):            # torch's allocator; other RuntimeErrors: bugs
            peer = _peer_failure(e, a)         # (or another process's of a torchrun job)
            if peer:
                print(peer, file=sys.stderr)
                return EXIT_USAGE
            return _internal(e, a.debug)
        return _out_of_memory((str(e) or type(e).__name__).splitlines()[0], a)
    except ImportError as e:
        if e.name != "torch":
            return _internal(e, a.debug)
        # an install without it (torch is a dependency): only .onnx prediction runs there
        print(f"{_rank_prefix()}error: PyTorch is not installed: `ultraseg {a.command}` needs "
              "it for this (checkpoints, training and export run on it; predict, evaluate and "
              "measure run without it from an exported .onnx file)", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:  # a bug: say so in one line, traceback on --debug
        return _internal(e, a.debug)


#: What makes a command need less memory, by command (the others: the generic line).
_LESS_MEMORY = {
    "train": "a smaller --size or --batch-size needs less",
    **{c: "a smaller --batch-size (for a valid model also --tile) makes the network's batch "
          "need less; each frame also takes about 20 bytes a pixel at its full size"
       for c in ("predict", "evaluate", "measure")},
}


def _out_of_memory(detail: str, a: argparse.Namespace) -> int:
    """Running out of memory is the machine's limit meeting the settings, not a bug: exit 2,
    naming the settings that need less, and in a train or demo whose run saved an epoch the
    command that goes on from it (with the run's own settings, once the memory is free;
    rank 0 alone in a torchrun job, as after Ctrl-C)."""
    hint = _LESS_MEMORY.get(a.command, "a machine with more memory, or smaller inputs, needed")
    going_on = "" if _rank_prefix() else _going_on(a)
    if going_on:        # (--resume refuses a changed recipe: less memory is a new run's)
        hint += (" in a new run" if a.command == "train" else "") \
            + f"; or {going_on} once the memory is free"
    print(f"{_rank_prefix()}error: out of memory ({detail.strip()}); {hint}", file=sys.stderr)
    return EXIT_USAGE


def _peer_failure(e: BaseException, a: argparse.Namespace) -> str | None:
    """The line for a collective that failed in a process of a torchrun job because another
    process went away (its own message, printed by it, says why) or stopped answering, else
    None: no bug of this process's. Rank 0 adds the --resume command where an epoch was
    saved (once for the job, as after Ctrl-C)."""
    if not _torchrun_train(a):
        return None
    from .distributed import TIMEOUT, peer_failure

    what = peer_failure(e)
    if what is None:
        return None
    said = ("another process of this run stopped (its message is above)" if what == "stopped"
            else f"another process of this run did not answer within {TIMEOUT} (stuck, or "
                 "stopped without a word)")
    # (the collective's own words, to their first sentence: gloo goes on to ask for the
    # remote worker's logs "before reporting an error", which this line is not)
    detail = (str(e).splitlines() or [""])[0].split(". ")[0].rstrip(".")
    return (f"{_rank_prefix()}error: {said}: {detail}"
            + ("" if _rank_prefix() else _then_resume(a)))


def _internal(e: Exception, debug: bool) -> int:
    if debug:
        raise e
    print(f"{_rank_prefix()}internal error: {type(e).__name__}: {e} (run with --debug for the "
          "traceback)", file=sys.stderr)
    return EXIT_INTERNAL


def _torchrun_train(a: argparse.Namespace) -> bool:
    """Whether this is ``train`` in a torchrun job of several processes (``WORLD_SIZE``)."""
    return a.command == "train" and os.environ.get("WORLD_SIZE", "1") not in ("", "1")


def _rank_prefix() -> str:
    """'' normally; 'rank R: ' in a non-zero process of a torchrun job (each process prints)."""
    rank = os.environ.get("RANK", "0")
    return "" if rank in ("", "0") else f"rank {rank}: "


if __name__ == "__main__":
    sys.exit(main())
