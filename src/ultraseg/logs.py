"""Logging helpers the library shares (the CLI configures the handlers; the library logs)."""
from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Iterator

from .shared import while_held


@dataclass(frozen=True)
class LevelSet:
    """A level ultraseg set on ``logger`` (``to``, as the logger holds it), in place of
    ``before``."""

    logger: logging.Logger
    before: int
    to: int

    def put_back(self) -> None:
        """The level before, where the logger's level is still the one set: one set
        meanwhile by someone else (a caller's ``setLevel`` in another thread, or in a
        training's progress callback) is theirs, and stays. Every level ultraseg sets for a
        while and puts back follows this rule (:func:`quiet`, a run's ``train.log``, the
        command line's terminal log)."""
        if self.logger.level == self.to:
            self.logger.setLevel(self.before)


def set_level(logger: logging.Logger, level: int | str) -> LevelSet:
    """Set ``logger``'s level (as ``setLevel`` takes it); :meth:`LevelSet.put_back` puts the
    one before back."""
    before = logger.level
    logger.setLevel(level)
    return LevelSet(logger, before, logger.level)


@contextlib.contextmanager
def quiet(name: str, level: int = logging.CRITICAL + 1) -> Iterator[None]:
    """No records from logger ``name`` or the loggers below it inside the block (none below
    ``level`` where one is given): its level is raised (the effective level of loggers below
    it that set none; a filter on it would not see their records), and restored when the last
    block open on it ends, in whatever order blocks of several threads end
    (:func:`ultraseg.shared.while_held`; the first block's ``level`` holds until then), where
    no other level was set on it meanwhile (:meth:`LevelSet.put_back`). The level is the
    process's: while a block is open, other threads' records from these loggers are dropped
    too."""
    logger = logging.getLogger(name)
    with while_held(("logger level", name), lambda: set_level(logger, level),
                    LevelSet.put_back):
        yield


_warnings_lock = threading.RLock()


@contextlib.contextmanager
def caught_warnings(record: bool = False) -> Iterator[list[warnings.WarningMessage] | None]:
    """``warnings.catch_warnings`` under one lock for all of ultraseg's blocks. The warnings
    machinery is the process's, and two blocks of two threads that overlap restore each
    other's saved state in the wrong order: reading frames in a thread pool left every later
    warning of the session recorded into a dead list. The blocks wait on one another (a
    DICOM frame's decoding is one: DICOM frames decode one at a time across threads)."""
    with _warnings_lock, warnings.catch_warnings(record=record) as caught:
        yield caught
