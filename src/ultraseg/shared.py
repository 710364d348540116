"""Process-wide settings changed for a block, by blocks that threads may open and close in
any order (a logger's level, cuDNN's autotuning): set when the first block on a setting
opens, restored when the last one ends. Saving and restoring per block is wrong there: a
block opened while another was open saves the changed value, and restores it last."""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Hashable, Iterator

_lock = threading.Lock()
_held: dict[Hashable, tuple[int, Any]] = {}     # setting -> (blocks open, its value before)


@contextlib.contextmanager
def while_held(key: Hashable, change: Callable[[], Any], restore: Callable[[Any], None]
               ) -> Iterator[None]:
    """Inside the block, the setting ``key`` is changed: ``change()`` (returning the value
    before) runs when the first block on ``key`` opens, ``restore(value before)`` when the
    last one ends."""
    with _lock:
        open_blocks, before = _held.get(key, (0, None))
        if not open_blocks:
            before = change()
        _held[key] = (open_blocks + 1, before)
    try:
        yield
    finally:
        with _lock:
            open_blocks, before = _held.pop(key)
            if open_blocks > 1:
                _held[key] = (open_blocks - 1, before)
            else:
                restore(before)
