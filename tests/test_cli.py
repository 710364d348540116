"""The ``ultraseg`` command's own process set-up (``ultraseg.cli``)."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import pytest

from ultraseg.phantom import MIN_SIZE

# In a fresh interpreter: touch and free a 96 MB block, report resident memory before, with
# the block, and after freeing it (MB), and what keep_freed_memory() returned.
PROBE = """
import json, numpy as np
from ultraseg.cli import keep_freed_memory

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

applied = keep_freed_memory()
before = rss_mb()
block = np.ones(96 * 2 ** 20, dtype=np.uint8)
held = rss_mb()
del block
print(json.dumps({"applied": applied, "before": before, "held": held, "after": rss_mb()}))
"""


def _probe(keep: str) -> dict:
    env = {**os.environ, "ULTRASEG_KEEP_FREED_MEMORY": keep}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux")
def test_keep_freed_memory_keeps_a_large_freed_block_in_the_process():
    kept = _probe("1")
    if not kept["applied"]:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert kept["held"] - kept["before"] > 80
    assert kept["after"] - kept["before"] > 80     # freed, but still the process's to reuse


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator: Linux")
def test_keep_freed_memory_can_be_turned_off_from_the_environment():
    default = _probe("0")
    assert default["applied"] is False
    assert default["held"] - default["before"] > 80
    assert default["after"] - default["before"] < 16  # glibc's default: handed back at once


def test_the_command_sets_up_its_process_and_main_in_a_host_leaves_it(monkeypatch, tmp_path):
    """The ``ultraseg`` command (and ``python -m ultraseg``) owns its process and tells glibc
    to keep freed memory; ``cli.main()`` called by a host (a notebook, a service) changed the
    host's allocator for good: after one ``main(["inspect", ...])`` a 300 MB array freed
    later stayed resident (a review measured 28 -> 345 MB)."""
    from ultraseg import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append("kept") or True)
    assert cli.main(["phantom", str(tmp_path / "ph"), "--n", "2", "--size", "64"]) == 0
    assert calls == []
    monkeypatch.setattr(sys, "argv", ["ultraseg", "phantom", str(tmp_path / "ph2"), "--n", "2",
                                      "--size", "64"])
    assert cli.command() == 0
    assert calls == ["kept"] and (tmp_path / "ph2").is_dir()


def test_the_installed_command_and_python_m_go_through_the_command_entry():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    scripts = (root / "pyproject.toml").read_text().split("[project.scripts]")[1]
    assert scripts.split("[")[0].split() == ["ultraseg", "=", '"ultraseg.cli:command"']
    assert "sys.exit(command())" in (root / "src" / "ultraseg" / "__main__.py").read_text()


def test_importing_the_main_module_runs_nothing():
    """``python -m ultraseg`` runs the command; importing ``ultraseg.__main__`` (pydoc, a loop
    importing every module) does not: it ran the command and exited with code 2."""
    import importlib
    import sys

    sys.modules.pop("ultraseg.__main__", None)
    module = importlib.import_module("ultraseg.__main__")
    assert callable(module.command)


def test_the_version_is_written_once():
    """The package's metadata takes its version from ``ultraseg.__version__``: pyproject.toml
    and __init__.py each wrote 0.1.0, and nothing kept them equal."""
    import importlib.metadata
    from pathlib import Path

    import ultraseg

    project = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "\nversion =" not in project.split("[project]")[1].split("\n[")[0]
    assert importlib.metadata.version("ultraseg") == ultraseg.__version__


def _broken_inspect(a) -> int:
    raise RuntimeError("a bug")


@pytest.mark.parametrize("argv", [["--debug", "inspect", "DATA"], ["inspect", "DATA", "--debug"]])
def test_debug_shows_the_traceback_before_or_after_the_command(monkeypatch, argv) -> None:
    from ultraseg import cli

    monkeypatch.setattr(cli, "_cmd_inspect", _broken_inspect)
    with pytest.raises(RuntimeError, match="a bug"):
        cli.main(argv)


def test_without_debug_an_internal_error_is_one_line_and_exit_1(monkeypatch, capsys) -> None:
    from ultraseg import cli

    monkeypatch.setattr(cli, "_cmd_inspect", _broken_inspect)
    assert cli.main(["inspect", "DATA"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "internal error: RuntimeError: a bug (run with --debug for the traceback)"


def test_ctrl_c_exits_130_with_one_line(monkeypatch, capsys) -> None:
    from ultraseg import cli

    def interrupted(a) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_inspect", interrupted)
    assert cli.main(["inspect", "DATA"]) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_a_working_size_memory_cannot_hold_is_a_user_error(tmp_path, capsys,
                                                           monkeypatch) -> None:
    """Canvases memory cannot hold were 'internal error: MemoryError' (exit 1, a bug to
    report); it is the machine's limit, with the settings that need less. (--size 1000000,
    which asked for terabytes, is now refused before anything is read: beyond MAX_SIZE.)"""
    from ultraseg import cli
    from ultraseg import train as train_mod
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--preset", "demo",
                     "--size", "1000000", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: preprocess.size (--size) must be a whole number from 1 "
                              "to 16384, got 1000000"), err
    assert not (tmp_path / "run").exists()

    def too_large(cfg):     # numpy's own refusal of the canvases, as a size near the bound
        import numpy as np
        return np.zeros((4, 16384, 16384, 1 << 20), np.float32)

    monkeypatch.setattr(train_mod, "_load", too_large)
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--preset", "demo",
                     "--size", "16384", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not any("internal error" in line for line in err), err
    assert err[-1].startswith("error: out of memory (Unable to allocate"), err
    assert "a smaller --size or --batch-size needs less" in err[-1]
    assert not (tmp_path / "run").exists()       # a run refused before an epoch leaves nothing


@pytest.mark.parametrize("command, raised, code", [
    ("predict", RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
                             "can't allocate memory: you tried to allocate 10 bytes.\nmore"), 2),
    ("evaluate", MemoryError(), 2),
    ("inspect", RuntimeError("a bug"), 1),               # other runtime errors stay bugs
])
def test_torch_running_out_of_memory_is_a_user_error(monkeypatch, capsys, command, raised,
                                                      code) -> None:
    from ultraseg import cli

    def fails(a) -> int:
        raise raised

    parser = cli.build_parser()
    sub = next(act for act in parser._actions if isinstance(act, argparse._SubParsersAction))
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    sub.choices[command].set_defaults(func=fails)
    args = {"predict": ["predict", "M", "D", "--out", "O"], "evaluate": ["evaluate", "M", "D"],
            "inspect": ["inspect", "D"]}[command]
    assert cli.main(args) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    if code == 2:
        assert err[0].startswith("error: out of memory (")
        assert "--batch-size" in err[0] and "more" not in err[0]   # the first line only
    else:
        assert err[0].startswith("internal error: RuntimeError: a bug")


@pytest.mark.parametrize("argv", [["phantom", "{long}"], ["train", "{data}", "--out", "{long}"]])
def test_a_file_name_too_long_is_a_user_error(tmp_path, capsys, argv) -> None:
    from ultraseg import cli

    """ENAMETOOLONG from Path.exists() on --out was an internal error, exit 1."""
    long = str(tmp_path / ("x" * 300))
    args = [a.format(long=long, data=tmp_path) for a in argv]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "too long" in err[0], err


def test_a_closed_pipe_on_stdout_is_no_internal_error(tmp_path) -> None:
    """`ultraseg inspect DATA | head -1`: the reader goes away before the report is printed.
    That is no bug: exit 141 as a shell reports SIGPIPE, nothing on stderr (it used to say
    'internal error: BrokenPipeError')."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    read, write = os.pipe()
    os.close(read)                              # gone before the child prints anything
    proc = subprocess.run([sys.executable, "-m", "ultraseg", "inspect", str(data)],
                          stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert proc.stderr == ""


def test_ranks_after_the_first_of_a_torchrun_job_leave_warnings_to_rank_0(
        tmp_path, capsys, monkeypatch) -> None:
    """Each of a torchrun job's processes printed the same warnings (the split's, the
    layout's), those of rank 1 without its 'rank 1:' prefix; rank 0 says them for all."""
    from ultraseg import cli
    from ultraseg.phantom import make_dataset

    import logging

    data = make_dataset(tmp_path / "data", n=4, size=32, seed=0)
    (data / "loose.png").write_bytes((data / "images" / "1_1.png").read_bytes())
    # a fresh root handler, on the stderr capsys reads (an earlier test's is on its own);
    # the root level basicConfig sets is restored for the tests after this one
    monkeypatch.setattr(logging.root, "level", logging.root.level)
    monkeypatch.setattr(logging.root, "handlers", [])
    assert cli.main(["inspect", str(data)]) == 0
    assert "warning: " in capsys.readouterr().err           # rank 0 (or no torchrun) warns
    def training(a) -> int:             # a train command that warns, then fails
        logging.getLogger("ultraseg.train").warning("the split overshoots")
        logging.getLogger("pydicom").warning("a header is odd")   # another library's: named
        raise cli.UltrasegError("no labelled samples")

    parser = cli.build_parser()
    sub = next(act for act in parser._actions if isinstance(act, argparse._SubParsersAction))
    sub.choices["train"].set_defaults(func=training)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(logging.root, "handlers", [])
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    # a CLI user reads 'warning: ...', not a level in capitals and a module path
    err = "\n" + capsys.readouterr().err
    assert "\nwarning: the split overshoots\n" in err
    assert "\nwarning: pydicom: a header is odd\n" in err
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err                      # rank 0 warns for all; errors stay
    assert err == "rank 1: error: no labelled samples\n"
    # other commands run in no process group, so no rank 0 says theirs: a launcher's RANK
    # silenced every command's warnings
    monkeypatch.setattr(logging.root, "handlers", [])
    assert cli.main(["inspect", str(data)]) == 0
    assert "warning: " in capsys.readouterr().err


def test_a_name_that_is_no_utf8_prints_on_a_strict_utf8_stdout(tmp_path) -> None:
    """A folder named in Latin-1 reaches Python as surrogate escapes; printing it on a strict
    UTF-8 stdout (PYTHONIOENCODING=utf-8, as a UTF-8 locale's pipes) was an internal error,
    after the work was done."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / os.fsdecode(b"scans\xe9"), n=2, size=32, seed=0)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.run([sys.executable, "-m", "ultraseg", "inspect", str(data)],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert b"dataset     " + os.fsencode(data) in proc.stdout     # the bytes it was


def test_a_name_a_code_page_lacks_prints_on_a_cp1252_stdout(tmp_path) -> None:
    """On Windows, stdout redirected to a file is cp1252: a dataset under `数据` was inspected
    (or trained, or measured), then the command exited 1, "internal error:
    UnicodeEncodeError", while printing the path; its output file held nothing."""
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "数据", n=2, size=32, seed=0)
    env = {**os.environ, "PYTHONIOENCODING": "cp1252"}
    proc = subprocess.run([sys.executable, "-m", "ultraseg", "inspect", str(data)],
                          capture_output=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert b"\\u6570\\u636e" in proc.stdout          # 数据, escaped as the code page lacks it


@pytest.mark.parametrize("name, code, said", [("SIGTERM", 143, "terminated"),
                                              ("SIGHUP", 129, "hung up (SIGHUP)")])
def test_sigterm_and_sighup_are_handled_as_ctrl_c(monkeypatch, capsys, name, code,
                                                  said) -> None:
    """`timeout`, a batch scheduler's time limit and `docker stop` send SIGTERM; a terminal or
    ssh session closed under a run (no nohup), and some schedulers, send SIGHUP: the process
    died where it was (exit 143 or 129, nothing said, the lock file left), skipping the
    clean-up and the word on how to go on that Ctrl-C gets."""
    import signal
    import time

    from ultraseg import cli

    if not hasattr(signal, name):
        pytest.skip(f"no {name} here")
    signum = getattr(signal, name)
    cleaned: list[str] = []

    def signalled(a) -> int:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)
        except KeyboardInterrupt:        # as train's clean-up catches it
            cleaned.append("clean-up ran")
            raise
        return 0

    before = signal.getsignal(signum)
    monkeypatch.setattr(cli, "_cmd_inspect", signalled)
    assert cli.main(["inspect", "DATA"]) == code
    assert capsys.readouterr().err.strip() == said
    assert cleaned == ["clean-up ran"]
    assert signal.getsignal(signum) == before      # the caller's handler is back


# In a fresh interpreter started with SIGHUP ignored (as nohup starts a command): a command
# that is sent SIGHUP while it runs, then says it went on.
HUNG_UP = """
import os, signal, sys
from ultraseg import cli

def hung_up(a):
    os.kill(os.getpid(), signal.SIGHUP)
    print("went on", flush=True)
    return 0

cli._cmd_inspect = hung_up
sys.exit(cli.main(["inspect", "DATA"]))
"""


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGHUP"), reason="no SIGHUP here")
def test_an_ignored_sighup_stays_ignored_as_nohup_asks(monkeypatch, capsys) -> None:
    """`nohup ultraseg train ...` (the way to leave a training running after logging out)
    starts the command with SIGHUP ignored: the handler that makes SIGHUP stop a command as
    SIGTERM does replaced that, so closing the session stopped the run (exit 129)."""
    import signal

    from ultraseg import cli

    def hung_up(a) -> int:
        os.kill(os.getpid(), signal.SIGHUP)
        print("went on")
        return 0

    monkeypatch.setattr(cli, "_cmd_inspect", hung_up)
    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        assert cli.main(["inspect", "DATA"]) == 0
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, before)
    assert capsys.readouterr().out == "went on\n"
    # as nohup runs it: a process started with SIGHUP ignored
    proc = subprocess.run([sys.executable, "-c", HUNG_UP], capture_output=True, text=True,
                          timeout=120,
                          preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    assert (proc.returncode, proc.stdout) == (0, "went on\n"), proc.stderr


@pytest.mark.parametrize("args", [["phantom", ""], ["inspect", " "],
                                  ["predict", "m.ckpt", "in", "--out", ""],
                                  ["train", "data", "--out", ""], ["demo", "--out", ""]])
def test_an_empty_path_is_refused_not_taken_as_the_current_folder(args, capsys) -> None:
    """`ultraseg phantom "$OUT"` with OUT unset wrote the phantom set into the current
    folder."""
    from ultraseg.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2 and "an empty path" in capsys.readouterr().err


def _levels_inside(monkeypatch) -> list[tuple[int, int, int]]:
    """(root level, the terminal handler's level, ultraseg's effective level) as each
    command of ``main`` ran, with no logging set up before it (as in a fresh process)."""
    import logging

    from ultraseg import cli

    seen: list[tuple[int, int, int]] = []
    real = cli._run

    def run(a):
        root = logging.getLogger()
        seen.append((root.level, root.handlers[0].level,
                     logging.getLogger("ultraseg").getEffectiveLevel()))
        return real(a)

    monkeypatch.setattr(cli, "_run", run)
    monkeypatch.setattr(logging.root, "handlers", [])
    return seen


def test_verbose_counts_before_and_after_the_command(tmp_path, monkeypatch) -> None:
    """-v -v CMD -v gave verbosity 1: the command's own -v count replaced the one before."""
    import logging

    from ultraseg.cli import main
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "d", n=2, size=32, seed=0)
    seen = _levels_inside(monkeypatch)
    for args, level in ((["-v", "-v", "inspect", str(data), "-v"], logging.DEBUG),
                        (["-v", "inspect", str(data)], logging.INFO),
                        (["inspect", str(data), "-v"], logging.INFO)):
        assert main(args) == 0
        assert seen[-1][2] == level, args


def test_verbose_is_ultrasegs_own_log(tmp_path, monkeypatch) -> None:
    """`-v -v` set DEBUG on the root logger: 220 lines of matplotlib's font search and two of
    Pillow's per frame drowned ultraseg's three. Other libraries keep to their warnings."""
    import logging

    from ultraseg.cli import main
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "d", n=2, size=32, seed=0)
    seen = _levels_inside(monkeypatch)
    assert main(["-v", "-v", "inspect", str(data)]) == 0
    # the root (other libraries' records) at WARNING; the terminal and ultraseg at DEBUG
    assert seen == [(logging.WARNING, logging.DEBUG, logging.DEBUG)]


def test_each_call_of_main_logs_on_its_own_stderr_and_leaves_logging_as_it_was(
        tmp_path, monkeypatch, capsys) -> None:
    """main() set up logging once per process (logging.basicConfig) on the stderr of its
    first call: a second call in the process (a notebook's, a test's) printed its warnings
    there, and once that stream was closed each record printed logging's own traceback."""
    import io
    import logging

    from ultraseg.cli import main
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "d", n=2, size=32, seed=0)
    (data / "loose.png").write_bytes((data / "images" / "1_1.png").read_bytes())  # warns
    monkeypatch.setattr(logging.root, "handlers", [])
    root, package = logging.getLogger(), logging.getLogger("ultraseg")
    before = root.level, package.level
    for _ in range(2):
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        assert main(["-v", "inspect", str(data)]) == 0
        assert "warning: " in stream.getvalue()       # each call's on its own stderr
        stream.close()                     # as a finished test's capsys stream is
        assert root.handlers == [] and (root.level, package.level) == before
    monkeypatch.undo()
    logging.getLogger("ultraseg.data").warning("after the calls")
    assert "Logging error" not in capsys.readouterr().err


def test_calls_of_main_in_threads_at_once_keep_the_terminal_log_until_the_last_ends(
        monkeypatch) -> None:
    """The first of two main() calls in threads to end took the terminal handler off while
    the other, started after it, ran: that one's warnings came out bare (no 'warning:',
    control characters not escaped) and its -v lines were lost."""
    import io
    import logging
    import threading

    from ultraseg import cli

    second_running, first_done, logged = (threading.Event() for _ in range(3))

    def command(a) -> int:
        if a.data == "first":
            second_running.wait(10)
            return 0
        second_running.set()
        first_done.wait(10)
        logging.getLogger("ultraseg.data").warning("second\x1b[2J call")
        logging.getLogger("ultraseg.data").info("second call's -v line")
        logged.set()
        return 0

    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(logging.root, "handlers", [])
    monkeypatch.setattr(cli, "_cmd_inspect", command)
    first = threading.Thread(target=cli.main, args=(["-v", "inspect", "first"],))
    first.start()
    while not logging.root.handlers:            # the first call's handler is on
        threading.Event().wait(0.01)
    second = threading.Thread(target=cli.main, args=(["-v", "inspect", "second"],))
    second.start()
    first.join(10)
    first_done.set()
    second.join(10)
    assert logged.is_set()
    lines = stream.getvalue().splitlines()
    assert "warning: second\\x1b[2J call" in lines, lines
    assert "info: second call's -v line" in lines, lines
    assert logging.root.handlers == []           # the last call to end took it off


def test_main_without_v_leaves_ultrasegs_level_to_whoever_set_it(monkeypatch) -> None:
    """main() put the 'ultraseg' logger's level back when it ended though it had not changed
    it: a training run through the API in another thread, which had set INFO for its
    train.log meanwhile, lost its log lines from then on."""
    import logging

    from ultraseg import cli

    package = logging.getLogger("ultraseg")
    monkeypatch.setattr(package, "level", package.level)     # put back after the test
    monkeypatch.setattr(logging.root, "handlers", [])

    def command(a) -> int:
        package.setLevel(logging.INFO)      # as a training in another thread does
        return 0

    monkeypatch.setattr(cli, "_cmd_inspect", command)
    assert cli.main(["inspect", "DATA"]) == 0
    assert package.level == logging.INFO


def test_levels_set_while_main_runs_are_kept_when_it_ends(monkeypatch) -> None:
    """main() -v put back the 'ultraseg' logger's level (and the root logger's, where it set
    the terminal's handler) when it ended, though a caller had set another meanwhile (a
    notebook's setLevel in another thread): theirs was undone. A level set meanwhile stays;
    one left alone is put back."""
    import logging

    from ultraseg import cli

    package, root = logging.getLogger("ultraseg"), logging.getLogger()
    monkeypatch.setattr(package, "level", logging.NOTSET)   # put back after the test
    monkeypatch.setattr(root, "level", logging.ERROR)
    monkeypatch.setattr(logging.root, "handlers", [])

    def command(a) -> int:
        assert (package.level, root.level) == (logging.INFO, logging.WARNING)  # -v's
        if a.data == "set":
            package.setLevel(logging.CRITICAL)
            root.setLevel(logging.DEBUG)
        return 0

    monkeypatch.setattr(cli, "_cmd_inspect", command)
    assert cli.main(["-v", "inspect", "set"]) == 0
    assert (package.level, root.level) == (logging.CRITICAL, logging.DEBUG)
    assert root.handlers == []                  # the terminal's handler is taken off still
    package.setLevel(logging.NOTSET)
    root.setLevel(logging.ERROR)
    assert cli.main(["-v", "inspect", "left"]) == 0
    assert (package.level, root.level) == (logging.NOTSET, logging.ERROR)


@pytest.mark.parametrize("redirect, what, code", [
    (">&-", "data", 0), ("2>&-", "data", 0), (">&- 2>&-", "data", 0),
    ("2>&-", "nothing", 2), (">&-", "nothing", 2), (">/dev/full", "nothing", 2)])
def test_a_stream_closed_at_start_is_no_internal_error(tmp_path, redirect, what,
                                                       code) -> None:
    """`ultraseg inspect DATA >&-`: Python makes a stream closed at start None, and printing
    to it was "internal error: AttributeError" (exit 1), a user error's exit 2 too. What is
    printed to a stream closed at start goes nowhere; the exit code is the command's own."""
    from ultraseg.phantom import make_dataset

    make_dataset(tmp_path / "data", n=2, size=32, seed=0)
    command = [sys.executable, "-m", "ultraseg", "inspect", str(tmp_path / what)]
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *command],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


def test_phantom_takes_its_folder_as_out_too(tmp_path, capsys) -> None:
    """Every other command that writes a folder takes --out; `phantom --out x` failed with
    "unrecognized arguments: --out". Either form is taken, not both, and --seed says its
    default."""
    from ultraseg import cli

    assert cli.main(["phantom", "--out", str(tmp_path / "a"), "--n", "2", "--size", "32"]) == 0
    assert len(list((tmp_path / "a" / "images").iterdir())) == 2
    assert cli.main(["phantom", str(tmp_path / "b"), "--n", "2", "--size", "32"]) == 0
    capsys.readouterr()
    for argv in (["phantom"], ["phantom", str(tmp_path / "c"), "--out", str(tmp_path / "d")]):
        with pytest.raises(SystemExit) as stop:
            cli.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--out" in err[0], err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["phantom"]
                    .format_help().split())
    assert "random seed of the frames (default 0)" in text


def _help(command: str) -> str:
    from ultraseg import cli

    sub = cli.build_parser()._subparsers._group_actions[0].choices[command]
    return " ".join(sub.format_help().split())


def test_help_shows_the_defaults_a_preset_or_the_predictor_sets(monkeypatch) -> None:
    """The cpu preset (the default without a GPU) stops every run at 20 minutes, and
    `train --help` never said so: a scripted long run ended early with exit 0. Neither did it
    give --size/--width/--depth's values, nor predict/evaluate/measure theirs for
    --batch-size, nor predict --format's. The presets' values are read from the presets."""
    from ultraseg.config import PRESETS
    from ultraseg.predict import Predictor

    train = _help("train")
    assert "'none' lifts a preset's cap (seed none, cpu 20m, demo 150s)" in train, train
    assert "resized; seed 252, cpu 192, demo 128)" in train
    assert "(64 in the paper; seed 64, cpu 16, demo 8)" in train
    assert "(4 in the paper; seed 4, cpu 4, demo 3)" in train
    assert "random tiles per image per epoch (1)" in train        # as their neighbours do
    assert "torch intra-op threads (default: torch's, every core)" in train
    assert "0.5 is common; default 0: none)" in train
    monkeypatch.setitem(PRESETS["cpu"], "train", {**PRESETS["cpu"]["train"],
                                                  "time_limit_s": 5400.0})
    assert "(seed none, cpu 1h30m, demo 150s)" in _help("train")
    batch = f"at least one a batch (default {Predictor.batch_size})"
    for command in ("predict", "evaluate", "measure"):
        assert batch in _help(command), command
    assert "mask file format (default png)" in _help("predict")


def test_time_limit_help_says_what_the_limit_covers() -> None:
    """`train --help` gave --time-limit as 'cap on the whole run' alone (a budgets review):
    not that the command's start-up comes on top, that a step under way finishes and the
    end of the run is kept inside it or cut short, nor that a resumed run gets what is left."""
    train = _help("train")
    assert "the command's start-up on top" in train, train
    assert "a step under way finishes" in train
    assert "a resumed run gets what is left of it" in train


def test_no_command_is_a_usage_error_on_stderr(capsys) -> None:
    """`ultraseg` alone printed the whole help on stdout (exit 2): a usage error goes to
    stderr, as argparse's own do, with a line saying what is missing."""
    from ultraseg import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: ultraseg")
    last = captured.err.strip().splitlines()[-1]
    assert last.startswith("ultraseg: error: a command is required") and "train" in last


#: Each subcommand's whole-number flags with a value below (or above) what they take, and the
#: span the refusal names: (the command before the flag, flag, value, span).
_WHOLE_NUMBER_FLAGS = [
    *[(["phantom", "OUT"], flag, value, span) for flag, value, span in [
        # (phantom's least side is its own: phantom.MIN_SIZE)
        ("--n", "0", "from 1"), ("--size", str(MIN_SIZE - 1), f"from {MIN_SIZE}"),
        ("--seed", "-1", "from 0")]],
    *[(["train", "DATA", "--out", "RUN"], flag, value, span) for flag, value, span in [
        ("--width", "0", "from 1 to 4096"), ("--depth", "13", "from 1 to 12"),
        ("--tile", "0", "from 1"), ("--size", "-8", "from 1"), ("--epochs", "0", "from 1"),
        ("--batch-size", "0", "from 1"), ("--tiles-per-image", "0", "from 1"),
        ("--seed", "-1", "from 0 to 4294967295"),
        # (torch's 64-bit seeds overflowed after files were written: an internal error)
        ("--seed", "1000000000000000", "from 0 to 4294967295"),
        ("--split-seed", "4294967296", "from 0 to 4294967295"), ("--threads", "0", "from 1")]],
    *[(command, flag, value, span) for command in (["predict", "M.ckpt", "IN", "--out", "O"],
                                                   ["evaluate", "M.ckpt", "DATA"],
                                                   ["measure", "M.ckpt", "DATA"])
      for flag, value, span in [("--batch-size", "0", "from 1"), ("--tile", "-5", "from 1"),
                                ("--threads", "0", "from 1"), ("--min-area", "-1", "from 0")]],
    *[(["export", "M.ckpt", "--onnx", "M.onnx"], flag, value, span) for flag, value, span in [
        ("--tile", "0", "from 1"), ("--opset", "0", "from 1")]],
]


@pytest.mark.parametrize("command, flag, value, span", _WHOLE_NUMBER_FLAGS,
                         ids=[f"{c[0]}{f}={v}" for c, f, v, _ in _WHOLE_NUMBER_FLAGS])
def test_a_whole_number_flag_out_of_its_range_is_a_usage_error_naming_it(
        command, flag, value, span, capsys) -> None:
    """Every subcommand refuses a count, size or seed flag out of its range as it parses,
    naming the flag in config.whole_number's words, before any file is read: `export --opset
    0` said 'opset must be a whole number from 1 (or None)', `phantom --n 0` 'phantom frame
    count n must be an integer >= 1' (no flag named), `train --tile 0` on a same model was
    taken, and predict's --tile 0 was refused only once the frames were listed."""
    from ultraseg.cli import main

    with pytest.raises(SystemExit) as stop:
        main([*command, flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.strip().splitlines()[-1] == (f"ultraseg {command[0]}: error: argument {flag}: "
                                            f"must be a whole number {span}, got {value}"), err


@pytest.mark.parametrize("value", ["2.5", "x", ""])
def test_a_whole_number_flag_that_is_no_number_says_what_it_takes(value, capsys) -> None:
    """Not argparse's 'invalid int value': the words of a number out of range."""
    from ultraseg.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["predict", "M.ckpt", "IN", "--out", "O", "--batch-size", value])
    assert stop.value.code == 2
    assert (f"argument --batch-size: must be a whole number from 1, got {value!r}"
            in capsys.readouterr().err)


#: Each command taking --label, as far as its DATA (or model and inputs).
_LABEL_COMMANDS = [["inspect", "DATA"], ["train", "DATA", "--out", "RUN"],
                   ["evaluate", "M.ckpt", "DATA"],
                   ["predict", "M.ckpt", "IN", "--out", "O", "--overlay"]]


@pytest.mark.parametrize("command", _LABEL_COMMANDS, ids=[c[0] for c in _LABEL_COMMANDS])
@pytest.mark.parametrize("value", ["0", "-1", "256", "2.5", "x"])
def test_a_label_that_names_no_structure_is_a_usage_error_naming_the_flag(command, value,
                                                                        capsys) -> None:
    """--label K is a structure's label, 1 to 255 (0 the background; masks hold no label past
    255: one is refused as the mask is read): `--label 2.5` said argparse's 'invalid int
    value', and 256 read every mask to say no mask holds it. Refused as the command line is
    parsed in config.whole_number's words, and as the API's check_label refuses it."""
    from ultraseg.cli import main
    from ultraseg.config import MAX_LABEL
    from ultraseg.errors import UltrasegError
    from ultraseg.io.masks import check_label

    given = int(value) if value.lstrip("-").isdigit() else value
    problem = (f"must be a whole number from 1 to {MAX_LABEL}, got {given!r} (a structure's "
               f"label: 0 is the background, and masks hold labels up to {MAX_LABEL})")
    with pytest.raises(SystemExit) as stop:
        main([*command, "--label", value])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.strip().splitlines()[-1] == (f"ultraseg {command[0]}: error: argument --label: "
                                            f"{problem}"), err
    with pytest.raises(UltrasegError) as e:
        check_label(given)
    assert str(e.value) == f"--label (preprocess.label) {problem}"


@pytest.mark.parametrize("command", _LABEL_COMMANDS, ids=[c[0] for c in _LABEL_COMMANDS])
def test_label_takes_1_to_the_most_a_mask_holds(command) -> None:
    from ultraseg.cli import build_parser
    from ultraseg.config import MAX_LABEL
    from ultraseg.io.masks import check_label

    for value in (1, MAX_LABEL):
        assert build_parser().parse_args([*command, "--label", str(value)]).label == value
        check_label(value)


def test_whole_number_flags_take_their_least_and_the_phantoms_least_size_is_its_own() -> None:
    """The least value each flag takes parses (as an int); phantom's --size takes what
    make_dataset takes (phantom.MIN_SIZE, which its help names)."""
    from ultraseg.cli import build_parser

    parser = build_parser()
    parse = parser.parse_args
    a = parse(["phantom", "OUT", "--n", "1", "--size", str(MIN_SIZE), "--seed", "0"])
    assert (a.n, a.size, a.seed) == (1, MIN_SIZE, 0)
    phantom = parser._subparsers._group_actions[0].choices["phantom"]
    assert f"at least {MIN_SIZE} " in " ".join(phantom.format_help().split())
    a = parse(["train", "DATA", "--out", "RUN", "--width", "4096", "--depth", "12",
               "--seed", "0", "--split-seed", "4294967295", "--epochs", "1"])
    assert (a.width, a.depth, a.seed, a.split_seed, a.epochs) == (4096, 12, 0, 2**32 - 1, 1)
    a = parse(["predict", "M", "IN", "--out", "O", "--tile", "1", "--batch-size", " 2",
               "--threads", "1", "--min-area", "0"])
    assert (a.tile, a.batch_size, a.threads, a.min_area) == (1, 2, 1, 0)
    assert parse(["export", "M", "--onnx", "X", "--opset", "17"]).opset == 17


def test_a_path_argument_starting_with_a_tilde_is_the_home_folder_s(tmp_path, monkeypatch,
                                                                     capsys) -> None:
    """A leading `~` in DATA, --out or any path argument is the home folder's, as config's
    data.path and data.cache_dir take it: typed quoted (`"~/scans"`, or from a script's
    variable) it was a folder named '~' in the current one (--out made one)."""
    from ultraseg.cli import build_parser, main

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    home = str(tmp_path)
    assert main(["phantom", "--out", "~/x", "--n", "3", "--size", str(MIN_SIZE)]) == 0
    assert (tmp_path / "x" / "images").is_dir()
    capsys.readouterr()
    assert main(["inspect", "~/x", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)
    parse = build_parser().parse_args
    a = parse(["train", "~/x", "--out", "~/run", "--config", "~/c.json"])
    assert (a.data, a.out, a.config) == (f"{home}/x", f"{home}/run", f"{home}/c.json")
    a = parse(["predict", "~/m.ckpt", "~/in", "a/~b", "--out", "~", "--rle", "~/s.csv"])
    assert (a.model, a.inputs, a.out, a.rle) == (f"{home}/m.ckpt", [f"{home}/in", "a/~b"],
                                                 home, f"{home}/s.csv")
    a = parse(["evaluate", "~/m.ckpt", "~/x", "--split", "~/split.json", "--out", "~/e"])
    assert (a.model, a.data, a.split, a.out) == (f"{home}/m.ckpt", f"{home}/x",
                                                 f"{home}/split.json", f"{home}/e")
    assert not (tmp_path / "work" / "~").exists()
