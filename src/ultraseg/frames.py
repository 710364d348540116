"""The frames predict and measure take: the image files and folders a user names -> a
:class:`Frame` each (a cine loop's frames one each), every one with an output name of its
own (:func:`collect_frames`).

Moved from :mod:`ultraseg.predict_files` as it was, :func:`frames_of` (the frames or paths
predict and measure are given, as frames) after it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from .errors import DataError, UltrasegError
from .io import (IMAGE_EXTENSIONS, Sample, check_layout, file_sample, frame_tag, image_stem,
                 inspect_command, scan_dataset, split_frames)
from .io.dicom import is_dicom
from .io.files import unread_file_advice
from .io.folders import IMAGE_FOLDERS, subfolders
from .io.naming import Unpaired
from .io.outputs import in_output_folder, warn_outputs_left_out

#: Inputs are said on the logger they were said on before they moved here
#: (:mod:`ultraseg.predict_files`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.predict_files")

#: File endings of models (a run's checkpoints, exported graphs, PyTorch's own files).
MODEL_EXTENSIONS = (".ckpt", ".onnx", ".pt", ".pth")


@dataclass(frozen=True)
class Frame:
    """One image to predict.

    ``out_name``: where its outputs go below the output folder, without suffix (posix; the
    image's stem unless two inputs share it, see :func:`collect_frames`; a cine loop's frame
    adds ``_frame001``...). ``sample`` carries
    the ground-truth mask paths and metadata (pixel size, reference measurements) when the
    image came from a labelled dataset.
    """

    sample: Sample
    out_name: str
    #: The folder given that it came from (:func:`collect_frames`); None: a file named alone.
    #: A truth mask's white is decided over the frames of its folder.
    source: Path | None = None

    @property
    def image_path(self) -> Path:
        return self.sample.image_path

    @property
    def stem(self) -> str:
        return image_stem(self.sample.image_path)


# ------------------------------------------------------------------------------ inputs
def collect_frames(inputs: str | os.PathLike | Iterable[str | os.PathLike], layout: str = "auto",
                   subject_pattern: str | None = None, exclude: str | Path | None = None
                   ) -> list[Frame]:
    """Find every image named by ``inputs`` (files, or folders of any supported layout; one
    path alone is taken as a list of one).

    Everything that can be told without decoding is checked before anything is predicted: a
    missing path, a file whose name is no image file's, an empty folder or a dataset with
    structural problems raises one
    :class:`~ultraseg.errors.UltrasegError` (for a labelled dataset with problems, point at its
    images folder); so does an unknown ``layout`` or a ``subject_pattern`` that is no regex,
    whatever the inputs (:func:`ultraseg.io.check_layout`). Images a folder holds under
    ``exclude`` (the output folder) are skipped; an input folder that is the output folder, or
    inside it, is refused; a file named on its own is taken wherever it lies.
    Frames come in the order of ``inputs``, each folder in its reader's (natural) order.

    A file of several frames (a cine loop: a multi-frame DICOM, a multi-page TIFF, an animated
    PNG) gives one frame each (:func:`ultraseg.io.split_frames`), but not in a labelled
    dataset: its masks are one frame each.

    Output names: the file stem; where several files share a stem, the path below their input
    folder (``a/x``, ``b/x``); where that still collides, the input folder's name in front
    (``in1/x``), then the folders above it, one at a time, until the names differ
    (``siteA/images/x``, ``siteB/images/x``); files of one folder that differ only in their
    suffix add it, after that folder's name (``c/x.png``, ``c/x.jpg``: ``c/x_png``,
    ``c/x_jpg``), and only in case a short hash of the file's path (``c/X_png_911b48c4``):
    a name never depends on the file's place among the inputs, so it stays when files are
    added. A loop's frames add
    ``_frame001``, ``_frame002``... (from 1, as a viewer counts) to its file's name, by the
    same rule: a loop ``b/x.dcm`` beside ``a/x.dcm`` gives ``b/x_frame001``...
    """
    # one path (not a sequence of characters), or one thing that is no path (bytes, an array:
    # refused below as it is); any other iterable read once (a generator)
    one = isinstance(inputs, (str, bytes, os.PathLike)) or hasattr(inputs, "shape")
    named = [inputs] if one else list(inputs)
    if not named:
        raise UltrasegError("no input images given")
    wrong = next((g for g in named if not isinstance(g, (str, os.PathLike))), None)
    if wrong is not None:   # (pathlib's TypeError named no argument; bytes read as numbers)
        raise UltrasegError(f"collect_frames takes image paths (a file or folder, or several "
                            f"in a list), got {type(wrong).__name__}"
                            + ("; predict an image array with ultraseg.load(MODEL).predict"
                               if hasattr(wrong, "shape") else ""))
    check_layout(layout, subject_pattern)   # (files alone never reach a folder's reader)
    skip = real_path(Path(exclude)) if exclude is not None else None
    found: list[tuple[Sample, Path | None, PurePosixPath, tuple[str, ...]]] = []
    tables: dict[Path, Any] = {}        # pixel-size tables by folder, for files named alone
    for given in named:
        path = Path(given)
        if not path.exists():
            raise DataError("no such file or folder", path)
        if path.is_file():      # (named itself: a hidden name is the user's choice)
            if path.suffix.lower() not in IMAGE_EXTENSIONS and not is_dicom(path):
                model = path.suffix.lower() in MODEL_EXTENSIONS
                advice = unread_file_advice(path)
                if advice:
                    raise DataError(advice, path)
                raise DataError("not an image file" + (
                    " but a model: the model comes first, the images after it"
                    if model else "; supported: " + ", ".join(IMAGE_EXTENSIONS)), path)
            found.append((file_sample(path, tables), None, PurePosixPath(image_stem(path)),
                          _ancestors(real_path(path).parent)))
            continue
        if skip is not None and (real_path(path) == skip or skip in real_path(path).parents):
            raise UltrasegError("the output folder (--out) is this input folder or holds it: "
                                "its images would be left out as outputs; choose another --out",
                                path)
        ds, problems = scan_dataset(path, layout, subject_pattern, needs_labels=False)
        # an image without its mask is still an image to predict, and a mask without its image
        # none to predict (said: an overlay shows no truth for them)
        unpaired = [p for p in problems if isinstance(p, Unpaired)]
        if unpaired:
            log.warning("%s: %d images or masks without their partner (first: %s): their "
                        "images are predicted, with no truth on an overlay", path,
                        len(unpaired), unpaired[0])
        problems = [p for p in problems if not isinstance(p, Unpaired)]
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            # (not --layout images: it reads every image below the folder, masks included)
            images = next(iter(subfolders(path, IMAGE_FOLDERS)), None) \
                if ds.layout == "folders" else None
            hint = (f"; to predict its images anyway, point at {images}" if images else
                    f"; `{inspect_command(path, layout, subject_pattern)}` lists the problems "
                    "(layout found: "
                    f"{ds.layout})" if ds.layout != "images" else "")
            raise DataError(f"{problems[0]}{more}{hint}")
        root_names = _ancestors(real_path(path))
        marked: dict[Path, bool] = {}
        left_out = 0
        for s in ds.samples:
            if skip is not None and real_path(s.image_path).is_relative_to(skip):
                continue
            if in_output_folder(s.image_path, path, marked):
                left_out += 1
                continue
            rel = PurePosixPath(_relative(s.image_path, path).parent.as_posix(),
                                image_stem(s.image_path))
            found.append((s, path, rel, root_names))
        log.info("%s: %s layout, %d images", path, ds.layout, len(ds.samples))
        if left_out:
            warn_outputs_left_out(path, left_out)
    if not found:
        raise DataError("no images to predict (the only images are in the output folder)",
                        Path(named[0]))
    found = [(frame, *rest) for s, *rest in _once_each(found) for frame in split_frames(s)]
    names = _unique_names(found)
    return [Frame(s, name, source) for (s, source, _, _), name in zip(found, names)]


def frames_of(frames: Iterable[Frame] | str | os.PathLike | Iterable[str | os.PathLike]
              ) -> list[Frame]:
    """``frames`` as :class:`Frame` s: image files or folders (a path, or several, in any
    iterable: a list, a generator, a set) are collected by :func:`collect_frames`; anything
    else but frames is a user error."""
    if isinstance(frames, (str, os.PathLike)):
        return collect_frames(frames)
    given = list(frames)    # once: a generator's items are gone after
    paths = [f for f in given if isinstance(f, (str, os.PathLike))]
    if paths and len(paths) == len(given):
        return collect_frames(paths)
    found = [f for f in given if isinstance(f, Frame)]
    if paths and len(found) + len(paths) == len(given):
        raise UltrasegError(f"expected frames (ultraseg.collect_frames(PATHS)) or image paths, "
                            f"not both: got {len(found)} frame{'s' * (len(found) != 1)} and "
                            f"{len(paths)} path{'s' * (len(paths) != 1)}")
    if len(found) < len(given):
        wrong = next(f for f in given if not isinstance(f, (Frame, str, os.PathLike)))
        raise UltrasegError(f"expected frames (ultraseg.collect_frames(PATHS)) or image paths, "
                            f"got {type(wrong).__name__}")
    return found


def _relative(path: Path, folder: Path) -> Path:
    """``path`` below ``folder`` (symbolic links are not followed), else its name."""
    try:
        return path.relative_to(folder)
    except ValueError:
        try:
            return path.absolute().relative_to(folder.absolute())
        except ValueError:
            return Path(path.name)


def _ancestors(folder: Path) -> tuple[str, ...]:
    """The names of ``folder`` and the folders above it, nearest first (the root left out)."""
    return tuple(reversed([p for p in folder.parts if p != folder.anchor]))


def real_path(path: Path) -> Path:
    """``path`` absolute, its links followed as far as they go. Unlike ``Path.resolve()``, a
    link that loops does not raise (RuntimeError up to Python 3.12): such a frame is left in,
    its read fails and it is skipped and named like any unreadable frame."""
    return Path(os.path.realpath(path))


def _once_each(found: list[tuple[Sample, Path | None, PurePosixPath, tuple[str, ...]]]
               ) -> list[tuple[Sample, Path | None, PurePosixPath, tuple[str, ...]]]:
    """The frames, each file once: a file named twice (a folder and a file in it, or nested
    folders) was predicted twice under two made-up names. Its first mention is kept. A file
    is its real folder and its own name: two names linked to one stored file (a download
    cache's blobs) stay two frames."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for item in found:
        path = item[0].image_path
        key = (os.path.realpath(path.parent), path.name)
        if key not in seen:
            seen.add(key)
            kept.append(item)
    if len(kept) < len(found):
        log.warning("%d input images were given more than once (as files and in folders, or in "
                    "nested folders): each is predicted once", len(found) - len(kept))
    return kept


def _unique_names(found: list[tuple[Sample, Path | None, PurePosixPath, tuple[str, ...]]]
                  ) -> list[str]:
    """Output names, made longer only for the files whose frames would otherwise collide: two
    files of one stem (a loop's frames, ``x_frame001``..., beside another file ``x``, whose
    name is its path below the input folder) or of one output name. A name is made longer by
    the folders that tell it from the others (below its input folder, then the input folder
    and those above it), where they cannot (files of one folder) by its suffix, then by a
    hash of its path: never by its place in ``found``, so names stay as files are added."""
    def candidate(i: int, tagged: bool = True) -> str:
        s, _, rel, ancestors = found[i]
        level, suffixed, hashed = states[i]
        tag = frame_tag(s.frame, s.meta.get("frames", 1)) if tagged else ""
        if level == 0:
            name = image_stem(s.image_path)
        else:   # level 1: the path below the input folder; each level more, a folder above
            name = "/".join([*reversed(ancestors[:level - 1]), rel.as_posix()])
        if suffixed:
            ending = s.image_path.name[len(image_stem(s.image_path)) + 1:].lower()
            name += "_" * bool(ending) + ending
        if hashed:
            key = os.path.join(os.path.realpath(s.image_path.parent), s.image_path.name)
            name += "_" + hashlib.sha1(os.fsencode(key)).hexdigest()[:8]
        return name + tag

    # a loop's frames are made longer together: their names stay one series
    files = [item[0].image_path for item in found]
    # every folder of each file, from the root down (what more levels can add at most)
    folders = [_one_name("/".join([*reversed(anc), *rel.parts[:-1]])) for _, _, rel, anc in found]
    states = [(0, False, False)] * len(found)      # (level, suffix added, hash added)
    while True:
        names = [candidate(i) for i in range(len(found))]
        counts = Counter(_one_name(n) for n in names)
        stems = [_one_name(candidate(i, tagged=False)) for i in range(len(found))]
        owners: dict[str, set[Path]] = {}
        where: dict[str, set[str]] = {}     # the folders of the files of each name or stem
        for i, (f, stem) in enumerate(zip(files, stems)):
            owners.setdefault(stem, set()).add(f)
            where.setdefault(stem, set()).add(folders[i])
            where.setdefault(_one_name(names[i]), set()).add(folders[i])
        clashing = {files[i] for i, n in enumerate(names)
                    if counts[_one_name(n)] > 1 or len(owners[stems[i]]) > 1}
        if not clashing:
            return names
        changed = False
        for i, f in enumerate(files):
            if f not in clashing:
                continue
            level, suffixed, hashed = states[i]
            # a folder above tells it apart from a file of another folder, never of its own
            apart = len(where[_one_name(names[i])]) > 1 or len(where[stems[i]]) > 1
            deepest = len(found[i][3]) + 1
            if level < 2 or (apart and level < deepest):
                states[i] = (level + 1, suffixed, hashed)
            elif not suffixed:
                states[i] = (level, True, hashed)
            elif not hashed:
                states[i] = (level, suffixed, True)
            else:
                continue
            changed = True
        if not changed:         # (distinct files' hashes differ: not reached)
            return names


def _one_name(name: str) -> str:
    """What ``name`` is to a file system that ignores case (Windows, macOS) and Unicode's
    normal form (macOS: an accent written composed or decomposed): names with one such key
    are one file there."""
    return unicodedata.normalize("NFC", name).lower()
