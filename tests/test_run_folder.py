"""The run folder: opening, resuming, the run's log and the clean-up of a refused run
(training itself: test_train.py)."""
from __future__ import annotations

import logging

import pytest

from ultraseg.config import preset
from ultraseg.errors import UltrasegError
from ultraseg.run_folder import (REFUSED_RUN_FILES, EarlyWarnings, holds_run, open_run,
                                 recipe_differences, remove_refused_run, remove_temporaries,
                                 run_log, with_execution)


class _Kept(logging.Handler):
    """A caller's handler: keeps the messages it is handed (``seen``)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage())


def test_overlapping_run_logs_put_the_logger_back_when_the_last_ends(tmp_path) -> None:
    pkg = logging.getLogger("ultraseg")
    before = (pkg.level, pkg.propagate, list(pkg.handlers))
    first = run_log(tmp_path / "a.log")
    second = run_log(tmp_path / "b.log")
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)            # the first to start ends first
    pkg.getChild("x").info("still logged")
    second.__exit__(None, None, None)
    assert (pkg.level, pkg.propagate, list(pkg.handlers)) == before
    assert "still logged" in (tmp_path / "b.log").read_text()


def test_a_level_set_while_run_logs_are_open_is_kept_when_the_last_ends(tmp_path) -> None:
    """The last run's log to end put back the ultraseg logger's level saved when the first
    opened, though a caller had set another meanwhile (setLevel in a progress callback, or in
    another thread): theirs was undone. Propagation and handlers are put back still."""
    pkg = logging.getLogger("ultraseg")
    before = (pkg.level, pkg.propagate, list(pkg.handlers))
    first = run_log(tmp_path / "a.log")
    second = run_log(tmp_path / "b.log")
    first.__enter__()
    second.__enter__()
    try:
        pkg.setLevel(logging.ERROR)
        first.__exit__(None, None, None)
        second.__exit__(None, None, None)
        assert (pkg.level, pkg.propagate, list(pkg.handlers)) == (logging.ERROR, *before[1:])
    finally:
        pkg.setLevel(before[0])


def test_a_runs_log_holds_its_own_threads_records_alone(tmp_path) -> None:
    """A service evaluating in one thread while it trained in another: 41 of the 58 lines of
    the run's train.log were the other thread's warnings (the file handler sat on the whole
    ultraseg logger). Training runs in the thread that opened the log."""
    import threading

    pkg = logging.getLogger("ultraseg")
    with run_log(tmp_path / "train.log"):
        pkg.getChild("train").info("the run's own")
        other = threading.Thread(
            target=lambda: pkg.getChild("evaluate").warning("another request's"))
        other.start()
        other.join()
    text = (tmp_path / "train.log").read_text()
    assert "the run's own" in text and "another request's" not in text


def test_a_run_log_collects_its_own_threads_warnings_each_once_in_order(tmp_path) -> None:
    """report.html left out the warnings training gave ('6 of the 6 masks look inverted'),
    though they change what its numbers mean. The run's log collects the records train.log
    gets at WARNING and above (the run's own thread's), each once, in order, for the report."""
    import threading

    pkg = logging.getLogger("ultraseg")
    with run_log(tmp_path / "train.log") as warned:
        pkg.getChild("data").warning("masks look %s", "inverted")
        pkg.getChild("train").info("epoch 1")
        other = threading.Thread(
            target=lambda: pkg.getChild("evaluate").warning("another request's"))
        other.start()
        other.join()
        pkg.getChild("train").error("a time limit")
        pkg.getChild("data").warning("masks look inverted")         # again: once
        assert list(warned) == ["masks look inverted", "a time limit"]
    text = (tmp_path / "train.log").read_text()
    assert "masks look inverted" in text and "a time limit" in text



def test_a_caller_s_level_on_a_module_s_logger_holds_inside_a_run_s_log(tmp_path) -> None:
    """A notebook's logging.getLogger("ultraseg.train").setLevel(INFO) showed that module's
    INFO records, but none of a training's epoch lines: inside the run's log the records
    were passed on at the ultraseg logger's former level (WARNING) whatever their own
    logger's level. The caller's handlers now get what they got before, record by record."""
    pkg = logging.getLogger("ultraseg")
    train_log = pkg.getChild("train")
    keep = _Kept()
    seen = keep.seen
    old = (pkg.level, train_log.level)
    pkg.addHandler(keep)
    try:
        pkg.setLevel(logging.WARNING)
        train_log.setLevel(logging.INFO)
        train_log.info("before the run")
        pkg.getChild("data").info("not shown before the run")
        with run_log(tmp_path / "train.log"):
            train_log.info("epoch 1")
            pkg.getChild("data").info("not shown in the run")
            pkg.getChild("data").warning("a warning")
        assert seen == ["before the run", "epoch 1", "a warning"]
        text = (tmp_path / "train.log").read_text()
        assert "epoch 1" in text and "not shown in the run" in text     # the file: all INFO
    finally:
        pkg.removeHandler(keep)
        pkg.setLevel(old[0])
        train_log.setLevel(old[1])

def test_a_folder_holding_a_run_is_refused_unless_resumed(tmp_path) -> None:
    cfg = preset("demo")
    assert open_run(tmp_path, cfg, resume=False) == (cfg, None)    # an empty folder: a new run
    (tmp_path / "metrics.csv").write_text("epoch\n")
    assert holds_run(tmp_path)
    with pytest.raises(UltrasegError, match="already holds a training run; use --resume") as e:
        open_run(tmp_path, cfg, resume=False)
    assert "train(None, out, resume=True)" in str(e.value)     # a Python caller's way too
    with pytest.raises(UltrasegError, match="nothing to resume"):
        open_run(tmp_path / "none", cfg, resume=True)


def test_a_refused_run_takes_away_only_what_it_wrote(tmp_path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")       # the user's, there before the run
    (out / "notes.txt").write_text("mine")
    for name in REFUSED_RUN_FILES:
        (out / name).write_text("")
    remove_refused_run(out, folder_existed=True, files_existed={"config.json"})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "notes.txt"]
    made = tmp_path / "made"
    made.mkdir()
    (made / "split.json").write_text("")
    remove_refused_run(made, folder_existed=False, files_existed=set())
    assert not made.exists()                     # the folder it made goes too
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("split.json", "last.ckpt"):     # an epoch was saved: everything stays
        (kept / name).write_text("")
    remove_refused_run(kept, folder_existed=False, files_existed=set())
    assert sorted(p.name for p in kept.iterdir()) == ["last.ckpt", "split.json"]


def test_temporaries_of_an_interrupted_write_are_removed(tmp_path) -> None:
    (tmp_path / ".last.ckpt.1234.tmp").write_text("half")
    (tmp_path / ".mine.tmp").write_text("not ours")
    (tmp_path / "last.ckpt").write_text("whole")
    remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".mine.tmp", "last.ckpt"]


def test_a_resumed_run_takes_anew_where_it_runs_and_nothing_else() -> None:
    cfg = preset("cpu")
    moved = with_execution(cfg, {"device": "cpu", "num_threads": 1, "cache_dir": ""})
    assert (moved.train.device, moved.train.num_threads, moved.data.cache_dir) == ("cpu", 1, "")
    assert moved.model == cfg.model and moved.train.lr == cfg.train.lr
    with pytest.raises(UltrasegError, match="epochs: not an execution setting"):
        with_execution(cfg, {"epochs": 3})


def test_a_setting_a_run_leaves_at_its_default_still_counts_as_a_difference() -> None:
    """fill_outlines is written only where set (an older ultraseg reads the file): a recipe
    that sets it differs from a run's own config that does not, and the other way round."""
    from dataclasses import replace

    own = preset("seed")
    filled = replace(own, preprocess=replace(own.preprocess, fill_outlines=True))
    assert recipe_differences(filled, own) == ["preprocess.fill_outlines"]
    assert recipe_differences(own, filled) == ["preprocess.fill_outlines"]
    assert recipe_differences(own, own) == []


def test_recipe_differences_names_each_setting_asked_otherwise_in_the_config_s_order(
        tmp_path, monkeypatch) -> None:
    """Pins recipe_differences: every section's settings in their order, where it runs
    (device, precision, threads, cache), the processes it ran on and the data's path spelt
    otherwise left out."""
    from ultraseg.config import merge

    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    own = merge(preset("cpu"), {"data": {"path": str(tmp_path / "d")}})
    given = merge(own, {
        "data": {"path": "link", "cache_dir": "", "layout": "busi"},
        "preprocess": {"fill_outlines": True, "size": 160},
        "model": {"width": 8, "variant": "valid", "tile": 100},
        "train": {"device": "cpu", "precision": "fp32", "num_threads": 1, "world_size": 2,
                  "lr": 1e-3, "epochs": 3},
        "preset": "mine"})
    assert recipe_differences(given, own) == [
        "data.layout", "preprocess.size", "preprocess.fill_outlines", "model.variant",
        "model.width", "model.tile", "train.epochs", "train.lr"]
    assert recipe_differences(own, given) == recipe_differences(given, own)
    assert recipe_differences(merge(own, {"data": {"path": "d"}}), own) == []
    assert recipe_differences(merge(own, {"data": {"path": "e"}}), own) == ["data.path"]


def test_a_run_log_that_cannot_be_written_says_so_once_and_keeps_the_real_error(tmp_path,
                                                                                 capsys) -> None:
    """train.log on a full disk: every record printed a '--- Logging error ---' traceback,
    and the file's close() at the end raised a bare OSError that replaced the error on its
    way out (a WriteError naming split.json) and left the ultraseg logger not propagating.
    Now one warning names the file and why, the file is no longer written, and the error
    that stopped the block is the one that comes out."""
    from conftest import ultraseg_warnings

    import ultraseg.run_folder as run_folder

    pkg = logging.getLogger("ultraseg")
    (tmp_path / "train.log").symlink_to("/dev/full")          # every write: ENOSPC
    with ultraseg_warnings() as warned:
        before = (pkg.level, pkg.propagate, list(pkg.handlers))
        with pytest.raises(UltrasegError, match="the real error"):
            with run_log(tmp_path / "train.log"):
                for i in range(3):
                    pkg.getChild("train").info("epoch %d", i)
                pkg.getChild("train").warning("a warning")
                raise UltrasegError("the real error")
        assert (pkg.level, pkg.propagate, list(pkg.handlers)) == before
    assert run_folder._RUN_LOGS == 0
    assert "Logging error" not in capsys.readouterr().err
    said = [r.getMessage() for r in warned if "train.log" in r.getMessage()]
    assert len(said) == 1, said
    assert "no space left on the device" in said[0] and "stopped" in said[0], said
    assert [r.getMessage() for r in warned if "train.log" not in r.getMessage()] == [
        "a warning"]                                         # the other records still shown
    with run_log(tmp_path / "train.log"):                     # and no error at its end
        pkg.getChild("train").info("epoch")


@pytest.mark.parametrize("stop,said", [
    (KeyboardInterrupt(), "training stopped: interrupted"),
    (UltrasegError("split.json: cannot write"), "training stopped: split.json: cannot write"),
    (RuntimeError("a bug"), "training stopped by an error: RuntimeError: a bug")])
def test_a_run_s_log_ends_saying_why_the_run_stopped(tmp_path, stop, said) -> None:
    """train.log of a run stopped by Ctrl-C, an error or a crash ended on its last epoch line,
    as a run still going would: read the next day it did not say the run had stopped, nor
    why. Its last record now says so (a crash with its traceback, for a bug report); the
    caller's handlers get nothing more, as the command line prints the error itself."""
    pkg = logging.getLogger("ultraseg")
    keep = _Kept()
    seen = keep.seen
    pkg.addHandler(keep)
    try:
        with pytest.raises(type(stop)):
            with run_log(tmp_path / "train.log"):
                pkg.getChild("train").warning("epoch 3 saved")
                raise stop
    finally:
        pkg.removeHandler(keep)
    assert seen == ["epoch 3 saved"]
    text = (tmp_path / "train.log").read_text()
    lines = text.splitlines()
    assert lines[0].endswith("epoch 3 saved")
    assert said in lines[1], text
    assert ("Traceback" in text) == isinstance(stop, RuntimeError), text


def test_early_warnings_leave_the_logger_once_a_run_s_log_takes_them(tmp_path) -> None:
    """The warnings kept before a run's log opens stopped being kept only where nothing else
    had the package's handlers saved: run_log saved them (the keeper among them) before it
    took the keeper off, so it went on keeping every warning of the run, and where two runs'
    logs overlapped (threads) the one left last put the other's keeper back on the logger for
    good. Now each keeps what came before its log alone and leaves no handler behind."""
    log = logging.getLogger("ultraseg.train")
    pkg = logging.getLogger("ultraseg")
    before = list(pkg.handlers)
    first, second = EarlyWarnings(), EarlyWarnings()
    first.__enter__()
    log.warning("before the first")
    first_log = run_log(tmp_path / "a.log", first)
    first_log.__enter__()
    second.__enter__()
    log.warning("before the second")
    second_log = run_log(tmp_path / "b.log", second)
    second_log.__enter__()
    log.warning("during both")
    first_log.__exit__(None, None, None)       # the first run's log closes before the second's
    first.__exit__(None, None, None)
    second_log.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert [r.getMessage() for r in first.records] == ["before the first"]
    assert [r.getMessage() for r in second.records] == ["before the second"]
    assert pkg.handlers == before
    assert "before the first" in (tmp_path / "a.log").read_text()


def test_a_run_log_is_utf_8_under_a_windows_code_page(tmp_path, monkeypatch, capsys) -> None:
    """train.log was opened in the locale's encoding: under a Windows code page (cp1252) a
    record naming a path such as Łódź数据 printed a '--- Logging error ---' traceback and was
    lost from the file. It is UTF-8, as every other text output."""
    import io

    real = io.text_encoding
    monkeypatch.setattr(io, "text_encoding", lambda encoding, stacklevel=2: (
        "cp1252" if encoding in (None, "locale") else real(encoding)))
    pkg = logging.getLogger("ultraseg")
    with run_log(tmp_path / "train.log"):
        pkg.getChild("train").info("%s: 3 samples", "Łódź数据")
        pkg.getChild("train").info("undecodable \udcff")
    assert "Logging error" not in capsys.readouterr().err
    text = (tmp_path / "train.log").read_text(encoding="utf-8")
    assert "Łódź数据: 3 samples" in text and "undecodable" in text
