"""ultraseg.shared: a process-wide setting held by blocks that end in any order."""
from __future__ import annotations

from ultraseg.shared import while_held


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
