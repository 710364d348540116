"""Logging helpers the library shares (the CLI configures the handlers; the library logs)."""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator


@contextlib.contextmanager
def quiet(name: str) -> Iterator[None]:
    """No records from logger ``name`` or the loggers below it inside the block: its level is
    raised (the effective level of loggers below it that set none; a filter on it would not
    see their records), then restored."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)
