"""The words of messages: the command lines they suggest paste into a shell as they are."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ultraseg.errors import command_line

#: path names that a shell splits, or reads as a flag, where put in raw
AWKWARD = ["p h", "it's", 'say "x"', "tab\there", "-dm", "a b/-c"]


@pytest.mark.parametrize("name", AWKWARD)
def test_a_suggested_command_line_gives_back_its_paths(name) -> None:
    """A path with a space put into a suggested `ultraseg evaluate MODEL p h --split ...` was
    refused as pasted ('unrecognized arguments: h'): each word is quoted as the shell needs,
    and a path starting with a dash is not taken for a flag."""
    line = command_line("ultraseg", "inspect", Path(name), ("--out", Path(name)), "--json")
    words = shlex.split(line)
    assert words[:2] == ["ultraseg", "inspect"] and words[-1] == "--json", line
    assert Path(words[2]) == Path(name) and not words[2].startswith("-"), line
    out = words[3:-1]
    assert out in (["--out", name], [f"--out={name}"]), line
    assert name.startswith("-") == (len(out) == 1), line     # --out -dm: -dm taken for a flag


def test_plain_words_are_written_as_they_are() -> None:
    assert command_line("ultraseg", "evaluate", "MODEL", Path("/data/set"), "--split",
                        "RUN/split.json") == \
        "ultraseg evaluate MODEL /data/set --split RUN/split.json"
