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



def test_reading_frames_in_threads_leaves_the_warnings_machinery_as_it_was(tmp_path) -> None:
    """Two threads reading PNGs at once (each read's Image.open in catch_warnings) restored
    each other's saved state in the wrong order: a filter stayed added for good, and every
    later warning of the session went into a dead list."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from PIL import Image

    from ultraseg.io import read_image

    files = []
    for i in range(24):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((64, 64), i, np.uint8)).save(files[-1])
    before = (list(warnings.filters), warnings.showwarning, warnings._showwarnmsg_impl)
    for _ in range(5):
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(read_image, files))
    assert (list(warnings.filters), warnings.showwarning,
            warnings._showwarnmsg_impl) == before


def test_a_level_set_while_blocks_are_open_is_kept_when_the_last_ends() -> None:
    """A level someone else set on the logger while quiet's blocks were open (a caller's
    setLevel in another thread) was undone by the last block, which put back the one saved
    when the first opened. It is theirs, and stays; blocks that end in any order change
    nothing there."""
    logger = logging.getLogger("ultraseg.test_logs3")
    logger.setLevel(logging.INFO)
    first, second = quiet(logger.name), quiet(logger.name)
    first.__enter__()
    second.__enter__()
    logger.setLevel(logging.WARNING)                 # someone else's, while both are open
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert logger.level == logging.WARNING
    with quiet(logger.name):                        # and none set meanwhile: put back
        pass
    assert logger.level == logging.WARNING


def test_a_level_set_is_put_back_only_where_it_is_still_the_one_set() -> None:
    """The rule each of ultraseg's level changes follows (quiet, the run's log, the command
    line's terminal log): put back the level before unless another was set meanwhile."""
    from ultraseg.logs import set_level

    logger = logging.getLogger("ultraseg.test_logs4")
    logger.setLevel(logging.ERROR)
    change = set_level(logger, "INFO")              # (a name is taken, as setLevel takes it)
    assert logger.level == logging.INFO and change.before == logging.ERROR
    change.put_back()
    assert logger.level == logging.ERROR
    change = set_level(logger, logging.DEBUG)
    logger.setLevel(logging.WARNING)                # another's, meanwhile
    change.put_back()
    assert logger.level == logging.WARNING
    change = set_level(logger, logging.WARNING)     # the level it had: nothing to tell apart
    change.put_back()
    assert logger.level == logging.WARNING
