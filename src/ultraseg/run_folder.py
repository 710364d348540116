"""The run folder: what a training run writes there, how it is opened, resumed and logged, and
what a run refused before its first epoch takes away again.

:func:`ultraseg.train.train` drives it; nothing here trains.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

from .checkpoint import Checkpoint, load_checkpoint
from .config import RESOLVED, SECTIONS, ModelConfig, RunConfig, names_read
from .errors import CheckpointError, UltrasegError
from .fileio import atomic_write_text, failure_reason, read_json, temporaries
from .io.outputs import OUTPUT_MARKER, mark_output_folder
from .logs import set_level

log = logging.getLogger(__name__)

#: What a run writes in its folder.
RUN_FILES = ("config.json", "split.json", "metrics.csv", "best.ckpt", "last.ckpt", "train.log",
             "curve.png", "sample.png", "seg_sample.png", "report.html")

#: What ``last.ckpt``'s training state must hold for a run to resume.
RESUME_KEYS = ("epoch", "optimizer", "history_json", "best_dice", "best_epoch")


#: The settings a resumed run may take anew (where it runs, not what it learns): setting ->
#: its section of the config.
EXECUTION = {"device": "train", "precision": "train", "num_threads": "train",
             "cache_dir": "data"}


def execution_of(cfg: RunConfig) -> dict[str, Any]:
    """``cfg``'s execution settings (the keys of :data:`EXECUTION`)."""
    return {key: getattr(getattr(cfg, section), key) for key, section in EXECUTION.items()}


def with_execution(cfg: RunConfig, settings: Mapping[str, Any]) -> RunConfig:
    """``cfg`` with the execution ``settings`` (keys of :data:`EXECUTION`) in place of its
    own; any other key is refused, naming the allowed ones."""
    unknown = sorted(set(settings) - set(EXECUTION))
    if unknown:
        raise UltrasegError(f"{', '.join(unknown)}: not an execution setting a resumed run "
                            f"takes anew (those are {', '.join(EXECUTION)}); a changed recipe "
                            f"is a new run")
    for key, value in settings.items():
        section = EXECUTION[key]
        cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{key: value})})
    return cfg


def holds_run(out: Path) -> bool:
    """Whether the folder ``out`` holds (part of) a training run, one a new run would
    overwrite: not one stopped before its first epoch was saved (:func:`never_saved`)."""
    return not never_saved(out) and any((out / f).exists() for f in EPOCH_FILES)


#: What each epoch writes, in this order: last.ckpt last, so an epoch without it is unsaved.
EPOCH_FILES = ("metrics.csv", "best.ckpt", "last.ckpt")

#: What a finished run writes beside its checkpoints.
FINISHED_RUN_FILES = ("report.html", "curve.png")


def never_saved(out: Path) -> bool:
    """Whether ``out`` holds a run stopped (killed, out of room) before its first epoch was
    saved: its config.json (written first), no last.ckpt (an epoch's last write), at most
    one epoch in metrics.csv (an epoch's first write), and nothing a finished run writes.
    What it left (that epoch's metrics.csv or best.ckpt) is nothing to resume from, and a new
    run in the folder replaces it; a longer run whose last.ckpt was deleted is kept."""
    if not (out / "config.json").is_file() or (out / "last.ckpt").exists() \
            or any((out / f).exists() for f in FINISHED_RUN_FILES):
        return False
    try:
        rows = (out / "metrics.csv").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False
    return len([r for r in rows[1:] if r.strip()]) <= 1


def recipe_differences(given: RunConfig, own: RunConfig) -> list[str]:
    """The settings (``section.key``) in which ``given`` asks for another recipe than a run's
    ``own`` config: all but where it runs (:data:`EXECUTION`), the processes it ran on, and the
    data's path spelt otherwise (relative, or through a link)."""
    differ = []
    for section in SECTIONS:
        # the settings themselves (to_dict leaves fill_outlines out where unset)
        mine, its = getattr(given, section), getattr(own, section)
        for key in (f.name for f in fields(its)):
            if key in EXECUTION or (section, key) == ("train", "world_size"):
                continue
            a, b = getattr(mine, key), getattr(its, key)
            if (section, key) == ("data", "path"):
                same = Path(a or "").resolve() == Path(b or "").resolve()
            else:
                same = a == b
            if not same:
                differ.append(f"{section}.{key}")
    return differ


def open_run(out: Path, cfg: RunConfig | None, resume: bool
             ) -> tuple[RunConfig, Checkpoint | None]:
    """``cfg``, or on resume the run's own config and its ``last.ckpt``; checks ``out``
    without writing (a damaged checkpoint fails here, before the data are read). A ``cfg``
    given on resume must ask for the run's own recipe (:func:`recipe_differences`): it was
    dropped in silence, a changed learning rate or epoch count with it."""
    if resume:
        if never_saved(out):
            raise UltrasegError("nothing to resume: the run was stopped before its first "
                                "epoch was saved (no last.ckpt); start it again: the same "
                                "command without --resume", out)
        if not (out / "last.ckpt").is_file() or not (out / "config.json").is_file():
            raise UltrasegError("nothing to resume: no last.ckpt and config.json", out)
        last = load_checkpoint(out / "last.ckpt")
        missing = [k for k in RESUME_KEYS if k not in last.train_state]
        if missing:
            raise UltrasegError(f"holds no training state to resume from (missing {missing})",
                                out / "last.ckpt")
        own = RunConfig.load(out / "config.json")
        _check_recorded_recipe(own, last, out)
        differ = [] if cfg is None else recipe_differences(cfg, own)
        if differ:
            raise UltrasegError(f"resuming continues the run with its own config.json; the "
                                f"config given asks for another recipe ({', '.join(differ)}): "
                                f"a changed recipe is a new run in another folder (pass no "
                                f"config, or the run's own, to resume)", out)
        cfg = _without_idle_dice_flags(own, out)
        want = recorded_presence_head(cfg.model, last)
        differ = [f"{k} {getattr(last.model, k)!r} vs {v!r}" for k, v in want.to_dict().items()
                  if getattr(last.model, k) != v]
        if differ:
            raise CheckpointError(f"holds another model than the run's config.json describes "
                                  f"({'; '.join(differ)}): not this run's checkpoint",
                                  out / "last.ckpt")
        return cfg, last
    if holds_run(out):
        raise UltrasegError("already holds a training run; use --resume to continue it (from "
                            "Python: train(None, out, resume=True)), or choose another --out",
                            out)
    if cfg is None:
        raise UltrasegError("a new run needs a RunConfig (only a resumed run takes its own)")
    return cfg, None


def recorded_presence_head(model: ModelConfig, last: Checkpoint) -> ModelConfig:
    """``model`` with a ``presence_head: "auto"`` as it was decided when the run started, on
    the training masks of then: as the run's ``last.ckpt`` was built. The masks may have
    changed since (corrected, or the data moved to a copy), and deciding again on them built
    another model than the checkpoint's. Any other value is returned as it is."""
    if model.presence_head != "auto":
        return model
    return replace(model, presence_head=last.model.presence_head,
                   presence_mode=last.model.presence_mode)


def _check_recorded_recipe(own: RunConfig, last: Checkpoint, out: Path) -> None:
    """The run's config.json must ask for the recipe its last.ckpt was trained with (the
    ``run`` it records): one edited by hand (a size, a learning rate) resumed the run on
    another recipe without a word, and best.ckpt's epochs were then described by it. The
    model is checked apart (``presence_head: auto`` is decided when a run starts); the data
    may have moved (said); where it runs may change."""
    recorded = last.meta.get("run") or {}
    if not recorded:                    # a checkpoint from before runs were recorded
        return
    try:
        trained = RunConfig.from_dict(names_read(recorded))
    except UltrasegError:
        return
    idle = {"train.batch_dice", "train.dice_skip_empty"} if own.train.dice_shaped else set()
    differ = [d for d in recipe_differences(own, trained)
              if not d.startswith("model.") and d != "data.path" and d not in idle]
    if differ:
        raise UltrasegError(f"its config.json asks for another recipe ({', '.join(differ)}) "
                            f"than the run's last.ckpt was trained with: a changed recipe is "
                            f"a new run in another folder; put the recorded values back to "
                            f"resume (only data.path, where the data now are, and where it "
                            f"runs may change)", out / "config.json")
    if Path(own.data.path).resolve() != Path(trained.data.path or "").resolve():
        log.warning("%s: the run was trained on %s; its config.json says %s: resuming on "
                    "those frames", out, trained.data.path, own.data.path)


def _without_idle_dice_flags(cfg: RunConfig, out: Path) -> RunConfig:
    """A run started before --batch-dice and --dice-skip-empty were refused with a loss that
    has no Dice term: they changed nothing then, and are dropped (said) so that it resumes."""
    t = cfg.train
    if not t.dice_shaped:
        return cfg
    log.warning("%s: its config asks for --batch-dice or --dice-skip-empty with --loss %s, "
                "which has no Dice term for them to shape: they changed nothing and are "
                "dropped", out, t.loss)
    return replace(cfg, train=replace(t, batch_dice=False, dice_skip_empty=False))


def mark_run_folder(out: Path) -> None:
    """Mark ``out`` as ultraseg's output (its figures are no frames for a later scan of a
    folder above it); its own figures do not count as the user's images."""
    mark_output_folder(out, "train", own=RUN_FILES)


def write_run_config(out: Path, cfg: RunConfig, resolved: Mapping[str, Any] | None = None
                     ) -> None:
    """The run folder, marked as ultraseg's output (its figures are no frames for a later
    scan of a folder above it), with the run's config.json; ``resolved`` (what its device,
    precision and threads became where it runs) beside the sections, as :data:`RESOLVED`."""
    text = cfg.to_json()
    if resolved is not None:
        text = json.dumps({**json.loads(text), RESOLVED: dict(resolved)}, indent=2,
                          sort_keys=True)
    try:
        out.mkdir(parents=True, exist_ok=True)
        mark_run_folder(out)
        atomic_write_text(out / "config.json", text)
    except OSError as e:
        raise UltrasegError(f"cannot write the run folder ({failure_reason(e)})", out) from e


def recorded_resolved(out: Path) -> Any:
    """The :data:`RESOLVED` block of ``out``'s config.json (None: none, or unreadable)."""
    try:
        doc = read_json(out / "config.json")
    except (OSError, ValueError):
        return None
    return doc.get(RESOLVED) if isinstance(doc, dict) else None


def remove_temporaries(out: Path) -> None:
    """Temporary files of a write that a kill -9 interrupted (see
    :func:`ultraseg.fileio.atomic_write_text`)."""
    for name in RUN_FILES:
        for tmp in temporaries(out, name):
            tmp.unlink(missing_ok=True)


class RunWarnings(logging.Handler):
    """The messages of the warnings (and errors) a run gave, each once, in the order given:
    what the run's ``train.log`` gets at WARNING and above, for its report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.said: dict[str, None] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.said.setdefault(record.getMessage(), None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self.said))


class EarlyWarnings(logging.Handler):
    """The package's warnings one thread gives before its run's log opens (shown as ever),
    kept for that log: those given while a run's folder and config are worked out (a setting
    it ignores, a resumed run's data moved) reached neither train.log nor the report. A
    context manager; :func:`run_log` takes what it kept (:meth:`taken`)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        own = threading.get_ident()
        self.addFilter(lambda record: record.thread == own)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> "EarlyWarnings":
        logging.getLogger("ultraseg").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("ultraseg").removeHandler(self)

    def taken(self) -> list[logging.LogRecord]:
        """What it kept; it keeps no more."""
        logging.getLogger("ultraseg").removeHandler(self)
        return self.records


@contextlib.contextmanager
def run_log(path: Path, earlier: EarlyWarnings | None = None) -> Iterator[RunWarnings]:
    """The package's INFO records go to the run's ``train.log`` inside the block, while the
    caller's handlers get only what they got before. The ``ultraseg`` logger is lowered to
    INFO for the file; its own handlers (the caller's) are taken off it and it stops
    propagating; one forwarding handler passes the records their loggers made before (at or
    above the level of the nearest one that sets a level, ultraseg's as it was) to those
    handlers and, where it propagated, to its ancestors' (as logging itself would).
    Overlapping blocks (trainings in threads) share that set-up; the last to leave puts level
    (unless another was set meanwhile: :meth:`ultraseg.logs.LevelSet.put_back`),
    propagation and handlers back. The file takes the records of the thread that
    opened the block alone. The block's value collects that thread's warnings
    (:class:`RunWarnings`: train.log's records at WARNING and above) for the run's report.
    ``earlier``: the run's warnings given before the block (:class:`EarlyWarnings`), written
    to the file and collected first, not shown again."""
    global _RUN_LOGS
    # UTF-8 as every text output (not the locale's code page); never an error over a name
    file_handler = _RunLogFile(path, encoding="utf-8", errors="backslashreplace")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: "
                                                "%(message)s"))
    # the run's thread's records alone (training runs in it): not another thread's work
    own = threading.get_ident()
    warned = RunWarnings()      # (what train.log gets at WARNING and above: the same filter)
    for handler in (file_handler, warned):
        handler.addFilter(lambda record: record.thread == own)
    pkg_log = logging.getLogger("ultraseg")
    with _RUN_LOG_LOCK:
        # (the keeper off the logger before its handlers are saved: put back with them, it
        # kept on keeping)
        early = earlier.taken() if earlier is not None else []
        if _RUN_LOGS == 0:
            handlers, propagate = list(pkg_log.handlers), pkg_log.propagate
            forward = _Forward(pkg_log.getEffectiveLevel(), list(handlers), propagate)
            for h in handlers:
                pkg_log.removeHandler(h)
            pkg_log.addHandler(forward)
            lowered = set_level(pkg_log, min(pkg_log.getEffectiveLevel(), logging.INFO))
            _RUN_LOG_STATE[:] = [lowered, propagate, handlers]
            pkg_log.propagate = False
        _RUN_LOGS += 1
        pkg_log.addHandler(file_handler)
        pkg_log.addHandler(warned)
    try:
        for record in early:
            file_handler.handle(record)
            warned.handle(record)
        yield warned
    except BaseException as e:
        _say_stopped(file_handler, e)
        raise
    finally:
        with _RUN_LOG_LOCK:
            pkg_log.removeHandler(file_handler)
            pkg_log.removeHandler(warned)
            with contextlib.suppress(OSError):  # (said once already): not the block's error
                file_handler.close()
            _RUN_LOGS -= 1
            if _RUN_LOGS == 0:
                lowered, propagate, handlers = _RUN_LOG_STATE
                for h in list(pkg_log.handlers):
                    if isinstance(h, _Forward):
                        pkg_log.removeHandler(h)
                for h in handlers:
                    pkg_log.addHandler(h)
                lowered.put_back()
                pkg_log.propagate = propagate


def _say_stopped(handler: logging.Handler, e: BaseException) -> None:
    """The run's log ends saying why the run stopped (it ended on its last epoch line, as a
    run still going would): interrupted, refused (ultraseg's error), or a crash with its
    traceback. To the file alone: the caller (the command line) says the error itself."""
    if isinstance(e, KeyboardInterrupt):        # (SIGTERM too: cli.Terminated)
        level, msg, exc_info = logging.WARNING, "training stopped: interrupted", None
    elif isinstance(e, UltrasegError):
        level, msg, exc_info = logging.ERROR, f"training stopped: {e}", None
    else:
        level, msg = logging.ERROR, f"training stopped by an error: {type(e).__name__}: {e}"
        exc_info = (type(e), e, e.__traceback__)
    handler.handle(logging.LogRecord("ultraseg.train", level, __file__, 0, msg, None,
                                     exc_info))


class _RunLogFile(logging.FileHandler):
    """The run's log file. The first write that fails (a full disk) is said once, in a
    warning naming the file and why, and the file is written no more: logging's own
    handling printed a traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if self.failed or not isinstance(error, OSError):
            super().handleError(record)     # a bug (a record's bad arguments): as logging does
            return
        self.failed = True
        log.warning("%s: cannot write the run's log: %s; logging to it stopped",
                    self.baseFilename, failure_reason(error))


_RUN_LOG_LOCK = threading.Lock()
_RUN_LOGS = 0                       # run_log blocks open now
_RUN_LOG_STATE: list[Any] = []      # the ultraseg logger's LevelSet, propagate, handlers before


class _Forward(logging.Handler):
    """Hands a record on to ``handlers`` (those taken off the ``ultraseg`` logger) and, where
    ``propagate``, to the handlers of its ancestors, as propagation does
    (``logging.lastResort`` where there are none at all)."""

    def __init__(self, level: int, handlers: list[logging.Handler], propagate: bool) -> None:
        super().__init__()
        self.former = level         # the ultraseg logger's effective level before the block
        self.handlers = handlers
        self.propagate = propagate

    def shown_before(self, record: logging.LogRecord) -> bool:
        """Whether ``record``'s logger made it before the block lowered the ultraseg logger:
        the level of the nearest logger from the record's up to ultraseg's that sets one (a
        caller's ``ultraseg.train`` at INFO), else ultraseg's former level."""
        name = record.name
        while name.startswith("ultraseg."):
            level = getattr(logging.root.manager.loggerDict.get(name), "level", logging.NOTSET)
            if level:
                return record.levelno >= level
            name = name.rpartition(".")[0]
        return record.levelno >= self.former

    def emit(self, record: logging.LogRecord) -> None:
        if not self.shown_before(record):
            return
        found = 0
        for h in self.handlers:
            found += 1
            if record.levelno >= h.level:
                h.handle(record)
        logger = logging.getLogger("ultraseg").parent if self.propagate else None
        while logger is not None:
            for h in logger.handlers:
                found += 1
                if record.levelno >= h.level:
                    h.handle(record)
            logger = logger.parent if logger.propagate else None
        if not found and logging.lastResort and record.levelno >= logging.lastResort.level:
            logging.lastResort.handle(record)


#: The files a new run writes before its first epoch ends.
REFUSED_RUN_FILES = ("config.json", "split.json", "train.log", OUTPUT_MARKER)


def remove_refused_run(out: Path, folder_existed: bool, files_existed: set[str]) -> None:
    """A new run refused before any epoch was saved (a --label no mask holds, a split with no
    foreground, a full disk at epoch 1's checkpoints...) leaves nothing behind: the files it
    wrote go, and the folder if it made it. Once last.ckpt exists (a later error, such as a
    diverged loss) everything is kept."""
    if (out / "last.ckpt").exists():
        return
    for name in REFUSED_RUN_FILES:
        if name not in files_existed:
            (out / name).unlink(missing_ok=True)
    for name in EPOCH_FILES:        # an epoch not saved to the end (a full disk): this run's
        (out / name).unlink(missing_ok=True)    # (a folder holding a run's was refused)
    if not folder_existed:
        with contextlib.suppress(OSError):          # not empty: something else is in it
            out.rmdir()
