"""Atomic output files: the mode a plain open() would give, and links written through."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ultraseg.fileio import atomic_write_text, json_text


def test_a_new_file_takes_the_umask_in_force_now(tmp_path: Path) -> None:
    """The umask was read once and cached: after os.umask(0o077) new outputs stayed 0644,
    more readable than the user asked for."""
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "a")
        os.umask(0o077)
        atomic_write_text(tmp_path / "b.txt", "b")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_writing_to_a_link_replaces_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    target = tmp_path / "real" / "config.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "config.json"
    link.symlink_to(target)
    atomic_write_text(link, "new")
    assert link.is_symlink() and target.read_text() == "new"


def test_json_text_is_strict_json() -> None:
    """json.dumps writes an undefined figure as NaN, which JSON readers refuse (`--json`
    promises one JSON object)."""
    value = {"a": math.nan, "b": [1.0, math.inf, (-math.inf, 2)], "c": {"d": math.nan},
             "e": Path("x")}
    text = json_text(value)
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {text}")) == {
        "a": None, "b": [1.0, None, [None, 2]], "c": {"d": None}, "e": None}


def test_text_with_a_file_names_undecodable_bytes_is_written_as_they_were(tmp_path) -> None:
    """A frame named with bytes that are no UTF-8 ended evaluate, measure and predict --rle
    in an internal error (UnicodeEncodeError) when their CSV was written."""
    name = b"scan_\xfe".decode("utf-8", "surrogateescape")
    atomic_write_text(tmp_path / "t.csv", f"name\n{name}\n")
    assert (tmp_path / "t.csv").read_bytes() == b"name\nscan_\xfe\n"
