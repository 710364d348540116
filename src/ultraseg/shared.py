"""Process-wide settings changed for a block, by blocks that threads may open and close in
any order (a logger's level, cuDNN's autotuning): set when the first block on a setting
opens, restored when the last one ends. Saving and restoring per block is wrong there: a
block opened while another was open saves the changed value, and restores it last. Also the
cores the process may use, against which a thread count asked for is warned about."""
from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Callable, Hashable, Iterator

log = logging.getLogger(__name__)

_lock = threading.Lock()
_held: dict[Hashable, tuple[set[object], Any]] = {}  # setting -> (open blocks, its value before)


@contextlib.contextmanager
def while_held(key: Hashable, change: Callable[[], Any], restore: Callable[[Any], None]
               ) -> Iterator[None]:
    """Inside the block, the setting ``key`` is changed: ``change()`` (returning the value
    before) runs when the first block on ``key`` opens, ``restore(value before)`` when the
    last one ends. A block is counted inside its ``try``, by one store of its own token that
    the ``finally`` looks for: an interrupt (Ctrl-C) landing as it opens cannot leave it
    counted for good, which would leave no later block the last."""
    block = object()
    try:
        with _lock:
            open_blocks, before = _held.get(key, (set(), None))
            if not open_blocks:
                before = change()
            _held[key] = (open_blocks | {block}, before)
        yield
    finally:
        with _lock:
            open_blocks, before = _held.get(key, (set(), None))
            if block in open_blocks:
                if len(open_blocks) > 1:
                    _held[key] = (open_blocks - {block}, before)
                else:
                    del _held[key]
                    restore(before)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the platform tells it)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def warn_if_oversubscribed(n: int | None, flag: str = "--threads", in_python: str = "") -> None:
    """Warn where ``n`` threads are asked for (``flag``: the CLI's ``--threads``, or a Python
    argument's ``threads=``, which is written ``threads=N``; ``in_python``, the setting in
    Python beside a flag) and
    this process may use fewer cores: they take turns on them, slower than one a core. Not
    refused: a machine's cores can be shared on purpose. Said by train, by predict, measure
    and evaluate (:func:`ultraseg.cli_predict.loaded_model`) and, logged, by
    :func:`ultraseg.load` for an ONNX model's ``threads``; not by
    :func:`ultraseg.runtime.threads`, which sets what it is given (a Python caller's count,
    each rank's of a distributed run) in silence. Here, not in runtime: an ONNX model loads
    and runs without torch."""
    cores = usable_cores()
    if n and n > cores:
        sep = "" if flag.endswith("=") else " "
        log.warning("%s%s%d asks for more threads than the %d core%s this process may use: "
                    "they take turns on them, which is slower; %s%s%d or fewer uses each "
                    "once%s", flag, sep, n, cores, "s" * (cores != 1), flag, sep, cores,
                    f" (in Python, {in_python})" if in_python else "")
