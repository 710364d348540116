"""What predict and measure share (:mod:`ultraseg.predict_files`,
:mod:`ultraseg.measure_files`): the frames streamed through the predictor
(:func:`iter_probabilities`, a frame that cannot be read or held skipped: :func:`or_skip`),
the output folder made and swept (:func:`prepare_out_dir`), each file written whole
(:func:`write`), the settings that made them (:func:`settings_record`), and the table a run
grows row by row (:class:`FrameTable`).

Everything streams: frames are decoded one by one as the predictor asks for them (it batches a
few), each result is written as soon as it is known, and nothing holds the whole input in
memory. Every output file goes through :mod:`ultraseg.fileio` (temporary name, then rename), so
an interrupted or failed run leaves complete files or none -- never half of one; the tables
(predictions.csv, measurements.csv) are made so, then grow row by row, each row whole, so that
a run killed outright (``kill -9``) leaves the rows it made.

Moved from :mod:`ultraseg.predict_files` as it was (the names other modules use made public).
Numpy/Pillow only: prediction from an ``.onnx`` file runs here without PyTorch.
"""
from __future__ import annotations

import contextlib
import errno
import os
import io
import logging
import time
from collections import deque
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image

from .errors import (NAME_TOO_LONG, DataError, OutputNameTooLong, UltrasegError,
                     frame_too_large, is_out_of_memory)
from .fileio import (LOCK_FILE, LineFile, atomic_write_bytes, csv_text, failure_reason,
                     json_text, name_max, temporaries, temporaries_of, write_error)
from .frames import Frame, real_path
from .io.grey import counting_colour, said_once
from .io.images import frame_loop, header_shape
from .io.outputs import OUTPUT_MARKER, mark_output_folder
from .predict import FrameOutOfMemory, Predictor
from .preprocess import PAD_TO_SQUARE_REMEDY, ThinFrames

#: These lines keep the name of the logger they were said on before they moved here
#: (:mod:`ultraseg.predict_files`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.predict_files")

Progress = Callable[[int, int], None]


# ------------------------------------------------------------------------------ streaming
#: What :func:`or_skip` returns for a frame it skipped.
SKIPPED: Any = object()


def or_skip(read: Callable[[], Any], failed: list[DataError] | None,
             frame: Frame | None = None, shape: tuple[int, ...] | None = None,
             on_skip: Callable[[DataError], None] | None = None) -> Any:
    """``read()``; where it raises a :class:`~ultraseg.errors.DataError` and ``failed`` is a
    list, the error is appended there (and given to ``on_skip``) and :data:`SKIPPED`
    returned (None: raised). Given the ``frame`` it works on (of ``shape``, else its
    header's), running out of memory is that frame's :func:`frame_too_large` error, skipped or
    raised alike."""
    try:
        return read()
    except DataError as e:
        if failed is None:
            raise
        _skip(failed, e, frame, on_skip)
        return SKIPPED
    except (MemoryError, RuntimeError) as e:
        if frame is None or not is_out_of_memory(e):
            raise
        err = frame_too_large(frame.image_path, shape or header_shape(frame.image_path),
                              frame.sample.frame)
        if failed is None:
            raise err from e
    _skip(failed, err, frame, on_skip)  # (out of the except block: the frame's arrays go)
    return SKIPPED


def _skip(failed: list[DataError], err: DataError, frame: Frame | None,
          on_skip: Callable[[DataError], None] | None = None) -> None:
    """Note ``frame`` skipped for ``err`` (the error keeps the frame: the outputs' tables
    name it), and tell ``on_skip``."""
    log.info("%s (skipped)", err)
    err.skipped_frame = frame
    failed.append(err)
    if on_skip is not None:
        on_skip(err)


def iter_probabilities(predictor: Predictor, frames: Iterable[Frame],
                       failed: list[DataError] | None = None,
                       on_skip: Callable[[DataError], None] | None = None
                       ) -> Iterator[tuple[Frame, np.ndarray, np.ndarray]]:
    """Yield ``(frame, image (H, W) uint8, probabilities (H, W) float32)`` frame by frame.

    Images are decoded as the predictor asks for them; at most one batch is held at a time.
    An unreadable image raises :class:`~ultraseg.errors.DataError` naming the file; so does
    one whose decoding, canvas or probabilities at its full resolution run out of memory
    (:func:`frame_too_large`: a larger frame than the machine holds; running out on the
    network's batch raises as it came). Given a ``failed`` list, the error is appended there
    instead (and given to ``on_skip``, as it is skipped) and the frame skipped; the frames read
    with it are predicted again without it.
    """
    todo = iter(frames)
    pending: deque[tuple[Frame, np.ndarray]] = deque()
    thin = ThinFrames(predictor.preprocess)

    def images(again: list[tuple[Frame, np.ndarray]]) -> Iterator[np.ndarray]:
        for frame, image in again:
            pending.append((frame, image))
            yield image
        for frame in todo:
            image = or_skip(frame.sample.load_image, failed, frame, on_skip=on_skip)
            if image is SKIPPED:
                continue
            thin.add(frame.image_path, image)
            pending.append((frame, image))
            yield image

    again: list[tuple[Frame, np.ndarray]] = []
    # a loop's file is kept open from frame to frame, and closed when done or stopped;
    # a file's warnings are said once, the frames in colour in one line for all
    with said_once(), frame_loop(), counting_colour() as colour:
        try:
            while True:
                given = 0       # frames this pass of the predictor has given back
                run = predictor.predict_proba_many(images(again))
                try:
                    for prob in run:
                        frame, image = pending.popleft()
                        given += 1
                        yield frame, image, prob
                    return
                except FrameOutOfMemory as e:
                    culprit = e.index - given
                    frame = pending[culprit][0]
                    err = frame_too_large(frame.image_path, e.shape, frame.sample.frame)
                    if failed is None:
                        raise err from e
                run.close()
                _skip(failed, err, frame, on_skip)
                # the frames read with it, the culprit left out, start the next pass
                again = [item for k, item in enumerate(pending) if k != culprit]
                pending.clear()
        finally:
            thin.warn(log, PAD_TO_SQUARE_REMEDY)
            colour.warn(log)

def encode_png(rgb: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 image (an overlay) as PNG bytes: zlib level 3, 2.3-2.9 times faster
    to write than the default 6 on real frames, for a file of about the same size."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", compress_level=3)
    return buf.getvalue()


def prepare_out_dir(out: str | Path, names: Iterable[str] = (),
                    rle: Path | None = None) -> Path:
    """Create the output folder (and parents), marked as ultraseg's output
    (:func:`~ultraseg.io.outputs.mark_output_folder`); a path that cannot be one, or a folder that
    holds images of the user's, is a user error. Then (the folder held by the caller) remove
    the temporary files a killed run left where this one writes: see
    :func:`_remove_temporaries` (``names``: the frames' output names; ``rle``: a submission)."""
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise UltrasegError("cannot create the output folder: a file of that name exists",
                            out) from e
    except OSError as e:
        raise UltrasegError(f"cannot create the output folder ({failure_reason(e)})", out) from e
    if not out.is_dir():
        raise UltrasegError("the output path is not a folder", out)
    folders = {out / PurePosixPath(n).parent for n in names}
    top = real_path(out)
    for folder in sorted(folders):      # (each write, each sweep stays inside --out)
        if not real_path(folder).is_relative_to(top):
            raise UltrasegError(f"links outside the output folder (to {real_path(folder)}), where "
                                f"this run would write; remove the link or choose another "
                                f"--out", folder)
    earlier = (out / OUTPUT_MARKER).is_file() and any(     # (the lock file: this command's)
        p.name not in (OUTPUT_MARKER, LOCK_FILE) for p in out.iterdir())
    mark_output_folder(out, "predict/measure")
    _remove_temporaries(out, folders, rle)
    if earlier:     # old overlays or a submission may not match the new masks
        log.warning("%s holds an earlier run's outputs: the files this run writes replace "
                    "theirs, the others stay as they were", out)
    return out


#: The names of predict's and measure's outputs whose temporary files
#: (:func:`ultraseg.fileio.temporaries`) a killed run leaves: a mask, an overlay, a probability
#: map, a table, a submission CSV, the settings.
_OUTPUT_NAMES = ("*_mask.png", "*_mask.tif", "*_overlay.png", "*_prob.png", "*_measure.png",
                 "*.csv", "*.settings.json")

#: A submission's temporary file outside the output folder that has not grown for this long
#: is a killed writer's (a live one adds a row a frame).
_STALE_S = 86400.0


def _remove_temporaries(out: Path, folders: Iterable[Path] = (),
                        rle: Path | None = None) -> None:
    """Remove what a killed (kill -9) predict or measure left in ``out``, held and checked
    (as train's :func:`ultraseg.run_folder.remove_temporaries`): the temporary files of its
    outputs, in ``out`` and in ``folders`` below it (those this run writes in), not in any
    other (a folder below may be another command's output folder, its writer at work), nor in
    one that another command marked or holds. Given ``rle``, its own temporaries in its
    folder; outside ``out`` (or in such a folder) only those a day untouched (that folder is
    no command's of ours: a younger one may be another run's, writing)."""
    found = {p for folder in {out, *folders}    # (one not made yet holds none: it may be a
             if os.path.isdir(folder) and not _held_elsewhere(folder, out)  # path too long)
             for name in _OUTPUT_NAMES for p in temporaries(folder, name)}
    if rle is not None:
        ours = not _held_elsewhere(rle.parent, out)
        now = time.time()
        for p in temporaries_of(rle):
            with contextlib.suppress(OSError):      # (gone meanwhile: its writer's rename)
                if ours or now - p.stat().st_mtime > _STALE_S:
                    found.add(p)
    found = sorted(found)
    for tmp in found:
        with contextlib.suppress(OSError):
            tmp.unlink()
    if found:
        log.info("removed %d temporary files a killed run left (first: %s)", len(found),
                 found[0])


def _held_elsewhere(folder: Path, out: Path) -> bool:
    """Whether ``folder``, below ``out``, or a folder between them is another command's: it
    holds an output marker or a lock of its own. A folder that leads outside ``out`` (through
    a link, or not below it at all) is never this command's: prepare_out_dir refuses the
    written folders that do before this is asked, so that guard acts for the --rle file's
    folder alone."""
    here, top = real_path(folder), real_path(out)
    if not here.is_relative_to(top):
        return True
    while here != top:
        if (here / OUTPUT_MARKER).exists() or (here / LOCK_FILE).exists():
            return True
        here = here.parent
    return False


def write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, making its folder; an error is a write error that is an
    ``OSError`` too (:func:`ultraseg.fileio.write_error`), its folder's as its own: a path too
    long for the system (ENAMETOOLONG) is the frame's, as a name too long is
    (:func:`if_name_too_long`), not the run's."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except UltrasegError:
        raise
    except OSError as e:    # (its folder: no file of that name was there)
        raise write_error(e, path, kept=None) from e


def if_name_too_long(e: BaseException, frame: Frame, path: Path) -> None:
    """Where ``e``, a write of ``frame``'s output ``path``, failed as the name is too long for
    the file system (ENAMETOOLONG), raise that frame's :class:`OutputNameTooLong`, for
    :func:`or_skip` to skip it (the input's name is, and only it can be shortened: the run
    goes on; a full disk stops it). Any other error: nothing."""
    if not (isinstance(e, OSError) and e.errno == errno.ENAMETOOLONG):
        return
    which = "" if frame.sample.frame is None else f"frame {frame.sample.frame + 1}: "
    size, limit = len(os.fsencode(path.name)), name_max(path.parent)
    if size > limit:
        why = (f"its output's name {path.name} is {NAME_TOO_LONG} ({size} bytes, over its "
               f"{limit}): rename the image to a shorter name")
    else:
        why = (f"its output's path {path} is {NAME_TOO_LONG}: rename the image (or its "
               "folders) to shorter names, or choose a shorter --out")
    raise OutputNameTooLong(which + why, frame.image_path) from e


#: The file beside predict's and measure's table that says what made its rows and files
#: (:func:`settings_record`), written before the first frame: one per command, so that
#: predict and measure into one folder keep each one's record.
SETTINGS_FILE = {"predict": "predictions.settings.json",
                 "measure": "measurements.settings.json"}


def settings_record(predictor: Predictor, command: str,
                    overrides: Mapping[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What made an output folder's files, as its ``SETTINGS_FILE[command]`` records it:
    ``command`` (predict, measure); ``checkpoint``, the model file as evaluate's
    ``summary.json`` records it (:meth:`Predictor.record`: path, sha256, versions; None for a
    predictor built by hand); the ``ultraseg_version`` predicting;
    ``backend`` (``torch``, ``onnx``; None for one built by hand) and the predictor's runtime
    (``torch_version`` or ``onnxruntime_version``, ``device`` and ``precision`` as resolved);
    ``postprocess``, the threshold and rules applied with ``tta`` as used (as in
    ``summary.json``); ``extra`` (measure's ``boundary_offset_px``, ``offset_frame_side_px``);
    ``overrides``, the command line's options given (by their names: ``threshold``,
    ``device``, ...; None from Python, where nothing says which were). No date: the same
    command writes the same bytes, as evaluate's ``summary.json``."""
    from . import __version__

    runtime = predictor.runtime
    backend = ("torch" if "torch_version" in runtime else
               "onnx" if "onnxruntime_version" in runtime else None)
    return {"command": command, "checkpoint": predictor.record(),
            "ultraseg_version": __version__, "backend": backend, **runtime,
            "postprocess": predictor.applied,
            **extra, "overrides": None if overrides is None else dict(overrides)}


def write_settings(out: Path, record: dict[str, Any]) -> Path:
    """``OUT/predictions.settings.json`` or ``OUT/measurements.settings.json``, by
    ``record['command']`` (strict JSON, written atomically as every output); its path."""
    path = out / SETTINGS_FILE[record["command"]]
    write(path, (json_text(record, indent=2) + "\n").encode())
    return path


def overlay_thickness(shape: tuple[int, ...]) -> int:
    """Outline width for a full-resolution overlay: 1 px up to ~600 px frames, then more."""
    return max(1, round(max(shape[:2]) / 500))


# ------------------------------------------------------------------------------ tables
def frame_cells(frame: Frame) -> dict[str, Any]:
    """The cells every table row of ``frame`` starts with: its output name, its image and its
    frame number in a multi-frame file (from 1; empty for a file of one frame)."""
    return {"name": frame.out_name, "image": str(frame.image_path),
            "frame": None if frame.sample.frame is None else frame.sample.frame + 1}


class FrameTable:
    """The table of a run over ``frames``, one row per frame handled: predict's
    ``predictions.csv`` and measure's ``measurements.csv``.

    A frame done is :meth:`add` ed with its row, a frame skipped is :meth:`skip` ped with its
    error (its row made by ``skipped_row``); the rows go in the inputs' order, whatever order
    they came in, the cells through :func:`~ultraseg.fileio.csv_cell`, header ``columns``.
    Each frame handled, done or skipped, is counted to ``progress`` as it is (``done, total``:
    the count reaches N/N). The file (``path``; None: none) is made anew with its header at
    once, and each row reaches it as soon as the frames before it have theirs (a
    :class:`~ultraseg.fileio.LineFile`: whole rows, a run killed with ``kill -9`` leaves
    those it made). A file that cannot be written does not stop the run: :meth:`close` raises
    its error at the end, naming the files the rows it does not hold list (cells of the
    columns ``files``: predict's masks and overlays, written, listed nowhere else). A run that
    stops calls :meth:`stopped`. The ``image`` cells and those of ``files`` are paths a user
    opens (:func:`~ultraseg.fileio.csv_cell`'s ``path``: ``./-5.png``, not ``'-5.png``).
    """

    def __init__(self, path: Path | None, columns: Sequence[str], frames: Sequence[Frame],
                 skipped_row: Callable[[Frame, DataError], dict[str, Any]],
                 progress: Progress | None = None, files: Sequence[str] = ()) -> None:
        self.path, self.columns, self.progress = path, list(columns), progress
        self.order = [f.out_name for f in frames]
        self.skipped_row = skipped_row
        self.held: dict[str, dict[str, Any]] = {}   # rows waiting for a frame before them
        self.next = 0                               # the first frame whose row is not out
        self.n_done = self.n_skipped = 0
        self.file: LineFile | None = None
        self.error: UltrasegError | None = None     # why the file could not be written
        self.files = tuple(files)
        self.paths = ("image", *self.files)
        self.unlisted: list[str] = []               # files of rows the file does not hold
        if path is not None:
            try:
                self.file = LineFile(path, csv_text(self.columns, ()))
            except UltrasegError as e:
                self.error = e

    def add(self, frame: Frame, row: dict[str, Any]) -> None:
        """``frame`` done: its row."""
        self.n_done += 1
        self._put(frame.out_name, row)
        self._count()

    def skip(self, err: DataError) -> None:
        """A frame skipped for ``err`` (:func:`_skip` keeps the frame on it)."""
        self.n_skipped += 1
        if err.skipped_frame is not None:
            self._put(err.skipped_frame.out_name, self.skipped_row(err.skipped_frame, err))
        self._count()

    def _count(self) -> None:
        if self.progress is not None:
            self.progress(self.n_done + self.n_skipped, len(self.order))

    def _put(self, name: str, row: dict[str, Any]) -> None:
        if self.file is None:
            self._lost([row])
            return
        self.held[name] = row
        ready = []
        while self.next < len(self.order) and self.order[self.next] in self.held:
            ready.append(self.held.pop(self.order[self.next]))
            self.next += 1
        self._write(ready)

    def _write(self, rows: list[dict[str, Any]]) -> None:
        if self.file is None or not rows:
            return
        try:
            self.file.write(csv_text(self.columns, rows, header=False, paths=self.paths))
        except UltrasegError as e:
            self.error = e
            self._drop()
            self._lost(rows)

    def _lost(self, rows: list[dict[str, Any]]) -> None:
        """``rows`` are not in the file: their files (:attr:`files`) are kept to be named."""
        if self.path is not None:
            self.unlisted += [str(row[c]) for row in rows for c in self.files if row.get(c)]

    def _drop(self) -> None:
        """Stop writing the file (it keeps the rows it holds)."""
        if self.file is not None:
            self.file.abandon()
            self.file = None

    def close(self) -> None:
        """Write the rows held (those of the frames after one the run did not get to), and
        close the file; where it could not be written, its error is raised now."""
        if self.file is not None:
            self._write([self.held[n] for n in self.order[self.next:] if n in self.held])
            self.held.clear()
            try:
                if self.file is not None:
                    self.file.close()
            except UltrasegError as e:
                self.error = e
            self.file = None
        if self.error is not None:
            error, self.error = self.error, None
            if self.unlisted:
                shown = ", ".join(self.unlisted[:5]) + (
                    f" and {len(self.unlisted) - 5} more" if len(self.unlisted) > 5 else "")
                raise _with_note(error, f"it does not list {len(self.unlisted)} files "
                                        f"written in its folder: {shown}") from error
            raise error

    def stopped(self, e: BaseException, verb: str) -> None:
        """The run stops with ``e`` (Ctrl-C, SIGTERM, an error): the rows so far are written
        (a table that cannot be, said: ``e`` goes on), and a line counts the frames ``verb``
        (a warning after Ctrl-C or SIGTERM; an error says its own line)."""
        kept, loud = "", isinstance(e, KeyboardInterrupt)
        if self.path is not None:
            try:
                self.close()
                kept = f": their rows are in {self.path}"
            except UltrasegError as failed:
                kept, loud = f"; their rows could not be written ({failed})", True
        log.log(logging.WARNING if loud else logging.INFO, "%s %d of %d frames, %s%s", verb,
                self.n_done, len(self.order),
                "interrupted" if isinstance(e, KeyboardInterrupt) else "stopped", kept)


def _with_note(error: UltrasegError, note: str) -> UltrasegError:
    """``error`` (its kind, path, errno and result kept) with ``note`` after its message."""
    new = type(error)(f"{error.message}; {note}", error.path)
    for name in ("errno", "strerror", "result"):
        if getattr(error, name, None) is not None:
            setattr(new, name, getattr(error, name))
    return new
