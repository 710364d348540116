"""The words of messages: the command lines they suggest paste into a shell as they are."""
from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from ultraseg.errors import command_line, install_extra

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


def _windows_words(line: str) -> list[str]:
    """``line`` split as Windows programs split their command line (the C runtime's rules,
    which Python's own argv follows): whitespace outside double quotes parts words; 2n
    backslashes before a quote are n and the quote opens or closes, 2n+1 are n and a quote
    kept; other backslashes are kept as they are."""
    words, word, quoted, started, i = [], [], False, False, 0
    while i < len(line):
        c = line[i]
        if c == "\\":
            n = len(line[i:]) - len(line[i:].lstrip("\\"))
            if line[i + n:i + n + 1] == '"':
                word.append("\\" * (n // 2))
                if n % 2:
                    word.append('"')
                    i += n + 1
                else:
                    i += n
            else:
                word.append("\\" * n)
                i += n
            started = True
            continue
        if c == '"':
            quoted, started = not quoted, True
        elif c in " \t" and not quoted:
            if started:
                words.append("".join(word))
            word, started = [], False
        else:
            word.append(c)
            started = True
        i += 1
    if started:
        words.append("".join(word))
    return words


@pytest.mark.parametrize("name", [*AWKWARD, r"C:\My Scans", "C:\\My Scans\\", r"C:\R&D\run",
                                  r"a\\b", 'end\\"q', "%x%", ""])
def test_on_windows_a_suggested_command_is_quoted_as_its_shells_read_it(monkeypatch,
                                                                        name) -> None:
    """`ultraseg train --resume --out 'C:\\My Scans'` was suggested on Windows too, where
    cmd.exe takes single quotes for part of the path (the folder 'C:\\My and a word Scans'):
    there a word that needs quoting is put in double quotes as subprocess.list2cmdline puts
    it, and a Windows program (Python's own argv) reads the words back as they were."""
    import subprocess

    from ultraseg import errors

    monkeypatch.setattr(errors, "WINDOWS", True)
    line = command_line("ultraseg", "inspect", Path(name), ("--out", name), "--json")
    words = _windows_words(line)
    assert words[:2] == ["ultraseg", "inspect"] and words[-1] == "--json", line
    given = str(Path(name))
    assert words[2] in (given, f"./{given}"), line
    assert words[3:-1] in (["--out", name], [f"--out={name}"]), line
    assert "'" not in line.replace("it's", ""), line        # no POSIX quoting
    if " " in name:     # quoted as list2cmdline quotes a word with a space
        assert subprocess.list2cmdline([name]) in line, line
    assert command_line("ultraseg", "evaluate", "MODEL", "--split", "RUN/split.json") == \
        "ultraseg evaluate MODEL --split RUN/split.json"


@pytest.mark.parametrize("extra", ["onnx", "dicom"])
def test_the_install_advice_for_an_extra_is_the_readme_s(monkeypatch, extra) -> None:
    """export said "pip install 'ultraseg[onnx]'" where the README, whose set-up installs from a
    checkout, says "pip install -e '.[onnx]'": one wording, giving both, for the messages and the
    README alike; quoted for the shell, on Windows too (cmd.exe keeps single quotes)."""
    from ultraseg import errors

    installed, checkout = f"pip install 'ultraseg[{extra}]'", f"pip install -e '.[{extra}]'"
    assert install_extra(extra) == f"{installed} (from a checkout: {checkout})"
    readme = Path(__file__).resolve().parents[1] / "README.md"
    if readme.is_file():
        text = readme.read_text(encoding="utf-8")
        assert f"`{installed}` (from a checkout: `{checkout}`)" in text
        assert text.count(f"'.[{extra}]'") == text.count(f"'ultraseg[{extra}]'"), \
            "every checkout command beside the installed package's"
    monkeypatch.setattr(errors, "WINDOWS", True)
    assert install_extra(extra) == \
        f'pip install "ultraseg[{extra}]" (from a checkout: pip install -e ".[{extra}]")'
