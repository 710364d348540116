"""ultraseg.logs: silencing a logger for a block."""
from __future__ import annotations

import logging

from ultraseg.logs import quiet


def test_blocks_that_end_out_of_order_restore_the_level() -> None:
    """Two threads' blocks overlapping (the second opened while the first was open, the first
    ended first) left the logger silenced for good: the second had saved the raised level."""
    logger = logging.getLogger("ultraseg.test_logs")
    logger.setLevel(logging.INFO)
    first, second = quiet(logger.name), quiet(logger.name)
    first.__enter__()
    second.__enter__()
    assert logger.level > logging.CRITICAL
    first.__exit__(None, None, None)
    assert logger.level > logging.CRITICAL          # the second block is still open
    second.__exit__(None, None, None)
    assert logger.level == logging.INFO


def test_records_below_the_logger_are_dropped_inside_and_kept_after() -> None:
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    parent = logging.getLogger("ultraseg.test_logs2")
    child = logging.getLogger("ultraseg.test_logs2.decoder")
    keep = Keep()
    child.addHandler(keep)
    try:
        with quiet(parent.name):
            child.error("inside")
        child.error("after")
    finally:
        child.removeHandler(keep)
    assert seen == ["after"]

