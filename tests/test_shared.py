"""ultraseg.shared: a process-wide setting held by blocks that end in any order."""
from __future__ import annotations

from typing import Callable

from ultraseg.shared import while_held


def _a_setting() -> tuple[dict[str, str], Callable[[], str], Callable[[str], None]]:
    """A setting ({"value": "mine"}) with the change and restore while_held takes."""
    setting = {"value": "mine"}

    def change() -> str:
        before, setting["value"] = setting["value"], "changed"
        return before

    def restore(before: str) -> None:
        setting["value"] = before

    return setting, change, restore


def test_the_setting_is_changed_once_and_restored_when_the_last_block_ends() -> None:
    setting = {"value": "mine"}
    calls: list[str] = []

    def change() -> str:
        calls.append("change")
        before, setting["value"] = setting["value"], "changed"
        return before

    def restore(before: str) -> None:
        calls.append("restore")
        setting["value"] = before

    first, second = while_held("x", change, restore), while_held("x", change, restore)
    first.__enter__()
    second.__enter__()                       # opened while the first is open
    first.__exit__(None, None, None)         # and the first ends first
    assert setting["value"] == "changed"
    second.__exit__(None, None, None)
    assert setting["value"] == "mine" and calls == ["change", "restore"]
    try:
        with while_held("x", change, restore):
            raise KeyError("an error inside")
    except KeyError:
        pass
    assert setting["value"] == "mine"


def test_an_interrupt_as_a_block_opens_leaves_nothing_held(monkeypatch) -> None:
    """The block was counted before its try began: a KeyboardInterrupt (Ctrl-C, or SIGTERM
    turned into one) landing between the two left it counted for the process's life, so no
    later block was ever the last and each left the setting at its own value (a review:
    threads(1) in a loop under interrupts, 2 of 3 runs). The interrupt is put where it
    landed: as the lock is released once the block is counted."""
    import threading

    import pytest

    from ultraseg import shared

    class InterruptedOnRelease:
        def __init__(self) -> None:
            self.lock, self.interrupt = threading.Lock(), True

        def __enter__(self) -> None:
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt

    setting, change, restore = _a_setting()

    monkeypatch.setattr(shared, "_lock", InterruptedOnRelease())
    with pytest.raises(KeyboardInterrupt):
        with while_held("x", change, restore):
            pass
    assert "x" not in shared._held and setting["value"] == "mine"
    first, second = while_held("x", change, restore), while_held("x", change, restore)
    first.__enter__()
    second.__enter__()
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)                # the last one: restored
    assert setting["value"] == "mine" and "x" not in shared._held


def test_a_block_interrupted_before_it_is_counted_leaves_an_open_block_held(monkeypatch) -> None:
    """A block's finally ends only its own hold (shared.while_held looks for the block's
    token): an interrupt (Ctrl-C) landing as a second block takes the lock, before that block
    is counted, must not delete the first block's hold and restore the setting (torch's thread
    count, cudnn.benchmark, a logger's level) under a first block still open."""
    import threading

    import pytest

    from ultraseg import shared

    class InterruptedOnAcquire:
        def __init__(self) -> None:
            self.lock, self.interrupt = threading.Lock(), True

        def __enter__(self) -> None:
            if self.interrupt:
                self.interrupt = False
                raise KeyboardInterrupt
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    setting, change, restore = _a_setting()

    first = while_held("x", change, restore)
    first.__enter__()
    try:
        monkeypatch.setattr(shared, "_lock", InterruptedOnAcquire())
        with pytest.raises(KeyboardInterrupt):
            with while_held("x", change, restore):
                pass
        assert setting["value"] == "changed" and "x" in shared._held
    finally:
        first.__exit__(None, None, None)                # the last one: restored
    assert setting["value"] == "mine" and "x" not in shared._held


def test_more_threads_than_the_cores_are_warned_about_and_as_many_are_not(monkeypatch) -> None:
    """warn_if_oversubscribed warns where the count asked for is over the cores the process
    may use, and says nothing at the cores' count itself, each used once (nor with no count
    asked for): the boundary was pinned only by test_cli_predict's CLI runs. The cores are
    faked to 4, the flag's and Python's words both read."""
    from conftest import ultraseg_warnings

    from ultraseg import shared

    monkeypatch.setattr(shared, "usable_cores", lambda: 4)
    for n, flag, words in ((5, "--threads", ["--threads 5", "4 cores", "--threads 4 or fewer"]),
                           (5, "threads=", ["threads=5", "4 cores", "threads=4 or fewer"]),
                           (4, "--threads", []), (1, "--threads", []), (None, "--threads", [])):
        with ultraseg_warnings() as warned:
            shared.warn_if_oversubscribed(n, flag)
        said = [r.getMessage() for r in warned]
        if words:
            assert len(said) == 1 and all(w in said[0] for w in words), (n, flag, said)
        else:
            assert said == [], (n, said)
