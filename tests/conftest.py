"""Shared fixtures: where the real datasets are, and their ``inspect`` results computed once."""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

#: ``../shared/datasets`` seen from the repository root (this file is ``ROOT/tests/conftest.py``):
#: where the real datasets are unless :data:`DATASETS_ENV` names another folder.
SHARED_DATASETS = (Path(__file__).resolve().parents[1] / ".." / "shared" / "datasets").resolve()
#: The environment variable naming the real datasets' folder (a clone elsewhere).
DATASETS_ENV = "ULTRASEG_DATASETS"


@pytest.fixture(autouse=True, scope="session")
def _nothing_written_to_the_users_home(tmp_path_factory: pytest.TempPathFactory
                                       ) -> Iterator[None]:
    """The session's cache folder (``XDG_CACHE_HOME``) is a temporary one, and ONNX Runtime
    is told to keep its telemetry off (ultraseg sets it where it imports it; some tests import
    it themselves): tests that train with the default cache left entries in the user's
    ``~/.cache/ultraseg`` on every run, and ONNX Runtime wrote its device id under ``~/.cache``
    or not depending on test order. Session-scoped, so module-scoped fixtures run inside it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        mp.setenv("ORT_DISABLE_TELEMETRY", os.environ.get("ORT_DISABLE_TELEMETRY", "1"))
        yield


def decoded_masks(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The mask files decoded from here on (``io.masks.decode_mask``'s calls, as the samples
    (``io.base``) and ``read_mask`` (``io.masks``) make them), in order."""
    from ultraseg.io import base, masks

    decoded: list[Path] = []
    decode = masks.decode_mask

    def spy(path: Any) -> Any:
        decoded.append(Path(path))
        return decode(path)

    for module in (base, masks):
        monkeypatch.setattr(module, "decode_mask", spy)
    return decoded


@contextlib.contextmanager
def ultraseg_warnings() -> Iterator[list[logging.LogRecord]]:
    """The warnings the ``ultraseg`` loggers emit inside the block, as records (whether or not
    a CLI call prints them: under pytest's logging plugin the root logger has pytest's
    handlers, and the CLI leaves a host's logging set-up as it finds it)."""
    warned: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warned.append                               # type: ignore[method-assign]
    logging.getLogger("ultraseg").addHandler(handler)
    try:
        yield warned
    finally:
        logging.getLogger("ultraseg").removeHandler(handler)


@contextlib.contextmanager
def held_elsewhere(folder: Path, command: str = "train") -> Iterator[None]:
    """``folder`` held by another thread (as by another command: see
    :func:`ultraseg.fileio.output_lock`) inside the block."""
    import threading

    from ultraseg.fileio import output_lock

    locked, done = threading.Event(), threading.Event()

    def holder() -> None:
        with output_lock(folder, command):
            locked.set()
            done.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert locked.wait(60)
        yield
    finally:
        done.set()
        thread.join()


def shared_datasets() -> Path:
    """The shared real-data folder (``$ULTRASEG_DATASETS``, else :data:`SHARED_DATASETS`), or
    skip the calling test with the reason."""
    named = os.environ.get(DATASETS_ENV)
    folder = Path(named).expanduser().resolve() if named else SHARED_DATASETS
    if not folder.is_dir():
        pytest.skip(f"shared datasets not found at {folder} ({DATASETS_ENV} names another "
                    "folder): real-data tests skipped")
    return folder


def shared_dataset(name: str) -> Path:
    """One real dataset folder (e.g. 'busi'), or skip with the reason."""
    path = shared_datasets() / name
    if not path.is_dir():
        pytest.skip(f"shared dataset {name!r} not found at {path}: real-data test skipped")
    return path


@pytest.fixture(scope="session")
def real_inspect() -> Callable[[str], tuple[dict[str, Any], list]]:
    """``real_inspect(name)`` -> ``inspect_dataset`` of a real dataset, decoded once per session."""
    from ultraseg.inspection import inspect_dataset

    cache: dict[str, tuple[dict[str, Any], list]] = {}

    def get(name: str) -> tuple[dict[str, Any], list]:
        if name not in cache:
            cache[name] = inspect_dataset(shared_dataset(name))
        return cache[name]

    return get


def assert_reads_each_frame(path: Path, frames: list[Any], unit: str) -> None:
    """``path`` (a loop) holds ``frames``, each read alone by ``read_image(path, frame=k)``,
    and a frame past its end is refused counting from 0 (``unit``: 'frames', 'pages')."""
    import numpy as np

    from ultraseg.errors import DataError
    from ultraseg.io import frame_count, read_image

    assert frame_count(path) == len(frames)
    for k, frame in enumerate(frames):
        assert np.array_equal(read_image(path, frame=k), frame), k
    n = len(frames)
    with pytest.raises(DataError, match=rf"holds {n} {unit}: no frame {n} \(frames count from 0\)"):
        read_image(path, frame=n)


def outline_dataset(root: Path, n: int = 6, size: int = 32, mask_name: str = "{}_mask"
                    ) -> tuple[Path, Any, Any]:
    """A folders-layout set (``images/S_1.png``, ``masks/`` named by ``mask_name``) whose
    masks are one-pixel closed circles drawn around a bright disk, as contour annotations
    (HC18's) are: returns (root, the outline, the disk it encloses), bool (size, size)."""
    import numpy as np
    from PIL import Image, ImageDraw

    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    ring, disk = Image.new("L", (size, size)), Image.new("L", (size, size))
    ImageDraw.Draw(ring).ellipse(box, outline=255)
    ImageDraw.Draw(disk).ellipse(box, fill=255)
    outline, filled = np.asarray(ring) > 0, np.asarray(disk) > 0
    rng = np.random.default_rng(0)
    for d in ("images", "masks"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.integers(0, 60, (size, size)).astype(np.uint8)
        image[filled] += 150
        Image.fromarray(image).save(root / "images" / f"s{i}_1.png")
        Image.fromarray(np.asarray(ring)).save(root / "masks" /
                                               f"{mask_name.format(f's{i}_1')}.png")
    return root, outline, filled


def onnx_session_threads(monkeypatch: Any) -> list[int]:
    """The intra-op threads of each ONNX Runtime session ultraseg makes from here on, in the
    order made (0: ONNX Runtime's default, one per core)."""
    from ultraseg import export

    made, real = [], export._session

    def session(model, providers=None, threads=None):
        sess = real(model, providers, threads)
        made.append(sess.get_session_options().intra_op_num_threads)
        return sess

    monkeypatch.setattr(export, "_session", session)
    return made


def pasted(text: str, program: str = "ultraseg") -> list[str]:
    """The words a shell gives the first command line ``text`` suggests in backticks that
    starts with ``program``, pasted as written (AssertionError: none)."""
    import re
    import shlex

    for span in re.findall(r"`([^`]*)`", text):
        if span.startswith(program + " "):
            return shlex.split(span)
    raise AssertionError(f"no `{program} ...` in {text!r}")


#: The environment of a POSIX (ASCII) locale, as cron, ``ssh host cmd`` or systemd often give:
#: plain ``LC_ALL=C`` is coerced to UTF-8 since Python 3.7, so coercion and UTF-8 mode are off.
ASCII_LOCALE = {"LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0"}


def under_ascii_locale(*args: str, cwd: Path | None = None) -> Any:
    """``python -m ultraseg ARGS`` run under :data:`ASCII_LOCALE` (the test is skipped where
    such a process does not get an ASCII file-system encoding): its CompletedProcess, the
    output read with bytes escaped."""
    import subprocess
    import sys

    env = {**os.environ, **ASCII_LOCALE}
    env.pop("LANG", None)
    env.pop("LC_CTYPE", None)
    probe = subprocess.run([sys.executable, "-c",
                            "import sys; print(sys.getfilesystemencoding())"],
                           env=env, capture_output=True, text=True)
    if probe.stdout.strip() != "ascii":
        pytest.skip(f"LC_ALL=C PYTHONCOERCECLOCALE=0 PYTHONUTF8=0 gives the file-system "
                    f"encoding {probe.stdout.strip()!r} here, not 'ascii'")
    return subprocess.run([sys.executable, "-m", "ultraseg", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, errors="surrogateescape")


def windows_holding(monkeypatch: Any, holds: Callable[[Path, int], bool]) -> list[Path]:
    """Run as on Windows (``errors.WINDOWS``, no wait between retries) where another program
    holds a file open: ``os.replace`` onto a ``dst`` for which ``holds(dst, refused so
    far)`` is true raises Windows' 'being used by another process' PermissionError (naming
    the source, as the system does), else replaces. Returns the refused targets, in order
    (clear it to count afresh; ``holds`` may read state the test changes)."""
    from ultraseg import errors, fileio

    real, refused = os.replace, []

    def replace(src: Any, dst: Any) -> None:
        if holds(Path(dst), len(refused)):
            refused.append(Path(dst))
            raise PermissionError(13, "[WinError 32] The process cannot access the file "
                                  "because it is being used by another process", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(fileio, "REPLACE_WAIT", 0, raising=False)
    monkeypatch.setattr(errors, "WINDOWS", True)
    return refused
