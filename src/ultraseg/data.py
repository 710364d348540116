"""From a dataset to training arrays: decode once into a cache, split by subject.

The cache holds the frames already placed on the working canvas (padded, resized), as uint8,
keyed by the dataset's files and the preprocessing settings, so epochs never decode files.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import time
from collections import Counter
from dataclasses import astuple, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import __version__
from .config import PreprocessConfig
from .duplicates import THUMB, digest, exact_pairs, first, near_blocks, unit_thumbnail
from .errors import DataError, UltrasegError
from .fileio import (atomic_open, atomic_write_text, json_name, name_from_json, read_json,
                     temporaries)
from .io import Dataset, DataProblems, Sample, said_once, select_label, white_for
from .io.grey import ColourFrames, counting_colour
from .preprocess import ThinFrames, looks_like_outline, outline_note, to_canvas

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arrays:
    """Labelled frames on the working canvas: images uint8 (N, S, S), masks uint8 (N, S, S) in {0, 1}."""

    images: np.ndarray
    masks: np.ndarray
    names: tuple[str, ...]
    subjects: tuple[str, ...]
    #: The non-zero labels the masks hold before the target is chosen (``(1,)``: binary masks).
    labels: tuple[int, ...] = ()
    #: Each frame's fingerprints as decoded, before the canvas (:mod:`ultraseg.duplicates`): a
    #: hash of its pixels (N, 32) uint8 and its unit thumbnail (N, 1024) float32; what the split
    #: is checked by for one scan under two subjects. None: not known.
    pixels: np.ndarray | None = None
    thumbs: np.ndarray | None = None
    #: What the masks look like at their own size (:class:`MaskTally`). None: not known.
    tally: MaskTally | None = None
    #: The label a black-and-white mask's white takes in ``masks``: the one :func:`load_arrays`
    #: decided over the set where asked (``white_as_set``), for the samples' later reads at
    #: their own size (:func:`ultraseg.io.with_white`); else the samples' own.
    white: int = 1
    #: Where the frames came from or went: "hit" (read from a cache entry), "written" (this
    #: load wrote the entry, so the next load of the same files and settings decodes
    #: nothing), "" (no cache, or its entry could not be written).
    cached: str = ""
    #: Whether each frame's mask holds a structure at its own size, (N,) bool: a structure
    #: that resizing to the working size loses leaves its frame's ``masks`` empty. None: not
    #: known.
    held_own: np.ndarray | None = None


def union_note(labels: Sequence[int], label: int | None) -> str | None:
    """What training does with masks holding several labels when no ``label`` is chosen:
    trains their union as one structure (a lesion and its organ, or an 'ignore' band at 255,
    become one foreground), and how to train one instead; None where that is no question."""
    if label is not None or len(labels) < 2:
        return None
    return (f"masks hold labels {list(labels)}: training on their union as one structure; "
            "--label K (preprocess.label in a config) trains label K alone")


def looks_inverted(target: np.ndarray) -> bool:
    """Whether a binary target (H, W) looks like a mask drawn inverted (the structure black on
    white): its foreground covers over half the frame and touches all four borders. A
    structure that large leaves a border free (an ultrasound image's black margin, the cone's
    sides); none of BUSI's, HC18's or the nerve set's masks is both."""
    fg = target.astype(bool)
    return bool(fg.mean() > 0.5 and fg[0].any() and fg[-1].any() and fg[:, 0].any()
                and fg[:, -1].any())


def inverted_note(inverted: int, masks: int) -> str | None:
    """The warning where most of ``masks`` (over half) look inverted (``inverted`` of them,
    :func:`looks_inverted`); None where they do not."""
    if not masks or 2 * inverted <= masks:
        return None
    return (f"{inverted} of the {masks} masks look inverted: their foreground covers over half "
            "the frame and touches all four borders (the structure drawn black on white?); "
            "training would learn the background as the structure. If so, invert them "
            "(255 - mask, or 1 - mask for 0/1 masks)")


def constant_note(names: Sequence[str], n: int | None = None, shown: int = 3) -> str | None:
    """The warning of constant (blank) frames, every pixel the same: ``n`` of them (None: as
    many as ``names``), the first ``shown`` of ``names`` named; None where there are none."""
    n = len(names) if n is None else n
    if not n:
        return None
    return (f"{n} constant (blank) frame{'s' * (n != 1)}, every pixel the same: "
            f"{', '.join(names[:shown])}{', ...' if n > shown else ''}; check the export")


@dataclass(frozen=True)
class MaskTally:
    """How many of a set's ``masks`` (binary targets, each at its own size: the canvas's
    padding would hide its borders) are non-empty, look like drawn closed contours
    (:func:`~ultraseg.preprocess.looks_like_outline`), look inverted (:func:`looks_inverted`)
    and cover their whole frame (``full``): what inspect, train and evaluate warn by.
    :meth:`of` judges one mask, the one place either look is taken; tallies add up."""

    masks: int = 0
    nonempty: int = 0
    outlined: int = 0
    inverted: int = 0
    full: int = 0

    @classmethod
    def of(cls, target: np.ndarray) -> MaskTally:
        """The tally of one binary target (H, W)."""
        fg = np.asarray(target, dtype=bool)
        return cls(1, int(fg.any()), int(looks_like_outline(fg)), int(looks_inverted(fg)),
                   int(fg.size > 0 and fg.all()))

    def __add__(self, other: MaskTally) -> MaskTally:
        return MaskTally(self.masks + other.masks, self.nonempty + other.nonempty,
                         self.outlined + other.outlined, self.inverted + other.inverted,
                         self.full + other.full)

    def outline_note(self) -> str | None:
        """:func:`~ultraseg.preprocess.outline_note` of these masks."""
        return outline_note(self.outlined, self.nonempty)

    def inverted_note(self) -> str | None:
        """:func:`inverted_note` of these masks."""
        return inverted_note(self.inverted, self.masks)


#: Said where there is no cache folder: no XDG_CACHE_HOME and no home folder.
NO_CACHE_FOLDER = ("no home folder to cache the decoded frames in (HOME unset, and no passwd "
                   "entry for this user): set XDG_CACHE_HOME or --cache-dir (data.cache_dir)")


def default_cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/ultraseg`` or ``~/.cache/ultraseg`` (read when called, not at import);
    None where neither names a folder: HOME unset and the uid in no passwd entry (a
    container's ``--user N``), where ``Path.home()`` raises."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except (RuntimeError, KeyError):
            return None
    return Path(base) / "ultraseg"


#: The package's files whose code decides what is cached: reading images and masks, the
#: layouts, placing a frame on the canvas (and ellipse.py, whose fit fills an HC18
#: outline), and each frame's fingerprints (hash, thumbnail). tests/test_data.py checks the
#: list against these modules' own imports.
DECODING_CODE = ("io/base.py", "io/images.py", "io/grey.py", "io/masks.py", "io/files.py",
                 "io/outputs.py", "io/dicom.py", "io/readers.py", "io/naming.py", "io/folders.py",
                 "io/hc18.py", "preprocess.py", "duplicates.py", "ellipse.py")


@functools.lru_cache(maxsize=1)
def decoding_code_digest() -> str:
    """A digest of :data:`DECODING_CODE`'s source: any change to it, a comment's included,
    makes cache keys anew (one rebuild, never a stale frame)."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for name in DECODING_CODE:
        try:
            h.update((root / name).read_bytes())
        except OSError:                 # (a zipped install): the version alone
            h.update(name.encode())
    return h.hexdigest()[:16]


def decoding_libraries() -> dict[str, str]:
    """The versions of the libraries that decode and resize the frames (Pillow; pydicom where
    installed): an upgrade of either may read a file otherwise."""
    import PIL

    versions = {"Pillow": str(PIL.__version__)}
    try:            # (its installed version, without importing it)
        versions["pydicom"] = importlib.metadata.version("pydicom")
    except importlib.metadata.PackageNotFoundError:
        pass
    return versions


def _shaping(cfg: PreprocessConfig) -> dict[str, object]:
    """The settings that shape the canvases (not ``normalise``, applied after the cache)."""
    return {k: v for k, v in cfg.to_dict().items() if k != "normalise"}


def _header_json(ds: Dataset, cfg: PreprocessConfig, white_as_set: bool = False) -> str:
    """What :func:`entry_prefix` and :func:`cache_key` both hash, whatever the files' state:
    the version, the entries' format (:data:`CACHE_FORMAT`) and arrays (:data:`CACHED`),
    the decoding code and libraries, the layout, the root, how the samples' masks are read and
    the settings that shape the canvases. (One dict: the two must agree for
    :func:`_remove_superseded`.)"""
    # "decode": the code files are decoded by, so frames that changed code reads otherwise
    # are decoded again (a number bumped by hand was forgotten once); "masks": the samples'
    # mask kinds (outlines filled or not, open_dataset's fill_outlines), which a caller of the
    # API need not keep in step with cfg.fill_outlines: an entry of each stays; and a 0/255
    # mask's white, label 1 or 255 (io.white_for), chosen by the caller too, or decided over
    # the set on a build (white_as_set: the choice, not the white, so a hit decodes no mask):
    # the distinct ones, how the set is read, not one line a sample, so that a frame added or
    # removed keeps the prefix and its new entry removes the old (cache_key hashes each
    # sample's); "arrays": the names of what an entry holds, so one added or dropped changes
    # the name even where CACHE_FORMAT was not bumped
    kinds = hashlib.sha256(("white as the set has it\n" if white_as_set else "").encode()
                           + "".join(sorted({_mask_reading(s) for s in ds.labelled})).encode())
    return json.dumps({"v": __version__, "format": CACHE_FORMAT,
                       "arrays": list(CACHED), "decode": decoding_code_digest(),
                       "libraries": decoding_libraries(), "layout": ds.layout,
                       "root": str(ds.root.resolve()), "pre": _shaping(cfg),
                       "masks": kinds.hexdigest()[:16]}, sort_keys=True)


def _mask_reading(s: Sample) -> str:
    """How ``s``'s masks are read, as :func:`_header_json` and :func:`cache_key` hash it."""
    return f"{s.mask_kind}\n" if s.white == 1 else f"{s.mask_kind} white {s.white}\n"


def entry_prefix(ds: Dataset, cfg: PreprocessConfig, white_as_set: bool = False) -> str:
    """Digest of the dataset's folder, its layout, the settings that shape the canvases and
    the code and libraries that decode them: the start of the name of each cache entry made
    for them, whatever the files' state (:func:`cache_key`). An entry with the same prefix and
    another key is one made for an earlier state of the files, which no later run can hit
    (:func:`_remove_superseded`). The code's version and the entries' format are in it so
    that two installs sharing a cache folder (a development clone beside a release) do not
    remove each other's entries on every run: an upgrade's leftovers stay until the folder is
    deleted."""
    text = _header_json(ds, cfg, white_as_set)
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def cache_entry(ds: Dataset, cfg: PreprocessConfig, cache_dir: str | Path | None = None,
                white_as_set: bool = False) -> Path:
    """The cache file of ``ds`` under ``cfg``: ``<entry_prefix>.u<uid>-<cache_key>.npz`` in
    ``cache_dir`` (None: :func:`default_cache_dir`, an :class:`UltrasegError` where there is
    none). The user's id (where the system has one) keeps users who share a cache folder
    off each other's entries: each 0600, another's could be neither read nor kept."""
    folder = cache_dir or default_cache_dir()
    if folder is None:
        raise UltrasegError(NO_CACHE_FOLDER)
    uid = _uid()
    owner = "" if uid is None else f".u{uid}"
    return Path(folder) / (f"{entry_prefix(ds, cfg, white_as_set)}{owner}-"
                           f"{cache_key(ds, cfg, white_as_set)}.npz")


def _uid() -> int | None:
    """This process's user id; None where the system has none (Windows)."""
    getuid = getattr(os, "getuid", None)
    return None if getuid is None else getuid()


def _owned(path: Path) -> bool:
    """Whether ``path`` exists and is this user's (any file, where there are no user ids)."""
    uid = _uid()
    try:
        return uid is None or path.stat().st_uid == uid
    except OSError:
        return False


def cache_key(ds: Dataset, cfg: PreprocessConfig, white_as_set: bool = False) -> str:
    """Hash of the files (names, sizes, inodes, modification and status-change times), how each
    sample's masks are read, and the settings that shape the canvases (not ``normalise``,
    applied after the cache).

    The status-change time moves on every write and no tool sets it back, so an edit that
    keeps a file's size and restores its modification time (``touch -r``, ``cp -p`` over it,
    an uncompressed format) still makes a new key; so does a chmod, at the cost of one
    rebuild."""
    h = hashlib.sha256()
    h.update(_header_json(ds, cfg, white_as_set).encode("utf-8", "surrogateescape"))
    for s in ds.labelled:
        h.update(_mask_reading(s).encode())
        for p in (s.image_path, *s.mask_paths):
            st = p.stat()
            # (a name with undecodable bytes arrives as surrogate escapes: hashed as its bytes)
            h.update(f"{s.name}|{p}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|"
                     f"{st.st_ino}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


@said_once()
def load_arrays(ds: Dataset, cfg: PreprocessConfig, cache_dir: str | Path | None = None,
                white_as_set: bool = False) -> Arrays:
    """Decode every labelled sample of ``ds`` onto the working canvas, through the cache.

    ``cfg.size`` must be set (training works on a fixed canvas). Every problem is collected and
    raised together as :class:`DataProblems`. ``cache_dir=None`` uses :func:`default_cache_dir`;
    pass ``False``-y empty string to disable caching. ``white_as_set``: a black-and-white
    mask's white is decided over the set for ``cfg.label`` (:func:`ultraseg.io.white_for`),
    when the frames are decoded (a cache hit keeps the white its build decided: no mask is
    decoded), and given as :attr:`Arrays.white`; else the samples' own (the first's, where a
    dataset made by hand mixes them: :func:`ultraseg.io.with_white` gives a set one).
    """
    if cfg.size is None:
        raise UltrasegError("training needs a working size: preprocess.size (--size) is None, "
                            "which only prediction takes (each frame at its own resolution)")
    samples = ds.labelled
    if not samples:
        from .io import READERS, dataset_hint

        expects = READERS[ds.layout].description if ds.layout in READERS else ds.layout
        raise DataError(f"no labelled samples to train on: read as the {ds.layout!r} layout "
                        f"({expects}){dataset_hint(ds.root)}; `ultraseg inspect` shows what was "
                        "found, and the README's layout table what each layout expects "
                        "(--layout names one)", ds.root)
    # names and subjects come from the dataset as scanned now, never from the cache: the
    # subject pattern is not in the key (it does not change a pixel)
    names, subjects = tuple(s.name for s in samples), tuple(s.subject for s in samples)
    cache_path = None
    if cache_dir is None and default_cache_dir() is None:
        log.warning("%s; training without a cache", NO_CACHE_FOLDER)
    elif cache_dir != "":
        try:
            cache_path = cache_entry(ds, cfg, cache_dir, white_as_set)
        except OSError as e:    # a broken link, a file gone: the decoding lists every problem
            log.info("not caching the frames: %s", e)
        cached = None if cache_path is None else _read_cache(cache_path, len(samples), cfg.size)
        if cached is not None:
            log.info("cache hit: %s", cache_path)
            _thin_frames(cfg, cached["thin"]).warn(log, THIN_REMEDY)   # as when it was built
            ColourFrames.from_record(cached["colour"]).warn(log, ds.root)
            tally = MaskTally(*(int(v) for v in cached["tally"]))
            _warn_outlines(ds, tally)
            _warn_constant(ds, names, cached["constant"])
            return Arrays(cached["images"], cached["masks"], names, subjects,
                          tuple(int(v) for v in cached["labels"]), cached["pixels"],
                          cached["thumbs"], tally,
                          int(cached["white"][0]) if white_as_set else samples[0].white,
                          cached="hit", held_own=cached["held_own"].astype(bool))
    white = white_for(cfg.label, samples) if white_as_set else samples[0].white
    if white_as_set:
        samples = tuple(replace(s, white=white) for s in samples)
    images = np.empty((len(samples), cfg.size, cfg.size), np.uint8)
    masks = np.empty_like(images)
    pixels = np.zeros((len(samples), 32), np.uint8)
    thumbs = np.zeros((len(samples), THUMB * THUMB), np.float32)
    tally = MaskTally()
    problems: list[DataError] = []
    labels: set[int] = set()
    thin = ThinFrames(cfg)
    constant = np.zeros(len(samples), bool)     # blank frames, every pixel the same
    held_own = np.zeros(len(samples), bool)     # a structure at its own size
    with counting_colour() as colour:     # one warning for the frames in colour
        for i, s in enumerate(samples):
            try:
                image, mask = s.load()
            except DataError as e:
                problems.append(e)
                continue
            thin.add(s.image_path, image)
            constant[i] = image.min() == image.max()
            pixels[i] = np.frombuffer(digest(image), np.uint8)
            thumbs[i] = unit_thumbnail(image)
            labels.update(int(v) for v in np.unique(mask) if v)
            images[i], geom = to_canvas(image, cfg, "image")
            target = select_label(mask, cfg.label).astype(np.uint8)
            tally += MaskTally.of(target)       # at its own size: no canvas padding
            held_own[i] = target.any()
            masks[i], _ = to_canvas(target, cfg, "mask", box=geom.box)
    if problems:
        raise DataProblems(problems)
    thin_record = np.array([] if thin.first is None else [thin.n, *thin.first], dtype=str)
    thin.warn(log, THIN_REMEDY)
    colour.warn(log, ds.root)
    _warn_outlines(ds, tally)
    _warn_constant(ds, names, constant)
    checked, written = time.time_ns(), False
    if cache_path is not None and _still_current(ds, cfg, cache_path, white_as_set):
        # the superseded entries are dead whatever the write does: removed first, so that on
        # a disk they fill the new one finds their room
        _remove_superseded(cache_path, checked)
        try:
            _save_npz(cache_path, images=images, masks=masks,
                      labels=np.array(sorted(labels), np.int64), pixels=pixels, thumbs=thumbs,
                      thin=thin_record, tally=np.array(astuple(tally), np.int64),
                      colour=colour.record(), constant=constant, held_own=held_own,
                      white=np.array([white], np.int64))
            written = True
            _remove_superseded(cache_path)
        except OSError as e:
            log.warning("could not write cache %s (%s)", cache_path, e)
    return Arrays(images, masks, names, subjects, tuple(sorted(labels)), pixels, thumbs,
                  tally, white, cached="written" if written else "", held_own=held_own)


def _still_current(ds: Dataset, cfg: PreprocessConfig, entry: Path,
                   white_as_set: bool = False) -> bool:
    """Whether the files are in the state ``entry`` was named for as their decoding began.
    Where they changed meanwhile (a chmod, an rsync) the frames may mix both states, and a
    run since may have cached the new one, which :func:`_remove_superseded` would take for
    older and remove: such a build is not cached (and removes nothing)."""
    try:
        if cache_entry(ds, cfg, entry.parent, white_as_set) == entry:
            return True
    except OSError:                     # a file gone meanwhile
        pass
    log.info("not caching %s: the files changed while they were decoded", entry)
    return False


#: What a cache entry holds; one written before it held all of them is rebuilt.
CACHED = ("images", "masks", "labels", "pixels", "thumbs", "thin", "tally", "colour", "white",
          "constant", "held_own")
#: The format of a cache entry, in its name (:func:`_header_json`): bump it whenever what an
#: entry holds changes in a way :data:`CACHED`'s names do not show (an array's meaning or
#: shape; the names are in the name themselves), so that two builds of one version sharing a
#: cache folder each keep their own entry rather than replacing the other's on every run.
CACHE_FORMAT = 2       # 2: the tally counts the masks covering their whole frame


def _warn_outlines(ds: Dataset, tally: MaskTally) -> None:
    """Warn where most of the non-empty training masks look like drawn closed contours
    (:func:`~ultraseg.preprocess.outline_note`)."""
    note = tally.outline_note()
    if note:
        log.warning("%s: %s", ds.root, note)


def _warn_constant(ds: Dataset, names: Sequence[str], constant: np.ndarray) -> None:
    """Warn of the constant (blank) frames, as inspect does (:func:`constant_note`), once."""
    note = constant_note([names[i] for i in np.flatnonzero(constant)])
    if note:
        log.warning("%s: %s", ds.root, note)


def _read_cache(path: Path, n: int, size: int) -> dict[str, np.ndarray] | None:
    """The arrays of the cache entry ``path`` (:data:`CACHED`) for ``n`` frames on a ``size``
    canvas; None where there is none to use: no such file (or removed meanwhile, superseded
    by another process's entry), an entry written before it kept all of them, or a damaged
    one (warned about; whatever the damage, it is rebuilt over)."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if not set(CACHED) <= set(z.files):
                return None
            arrays = {k: z[k] for k in CACHED}
        want = {"images": (n, size, size), "masks": (n, size, size), "pixels": (n, 32),
                "thumbs": (n, THUMB * THUMB), "tally": (len(fields(MaskTally)),),
                "white": (1,), "constant": (n,), "held_own": (n,)}
        wrong = {k: arrays[k].shape for k, shape in want.items() if arrays[k].shape != shape}
        if wrong:
            raise ValueError(f"arrays of {wrong} cached for {n} frames of {size} px")
        images, masks = arrays["images"], arrays["masks"]
        if images.dtype != np.uint8 or masks.dtype != np.uint8 or masks.max() > 1:
            raise ValueError(f"{images.dtype} frames and {masks.dtype} masks up to "
                             f"{masks.max()} cached, not uint8 frames and 0/1 masks")
        return arrays
    except FileNotFoundError:
        return None
    except PermissionError as e:    # whole, maybe, but not ours to read: no damage to report
        log.warning("cannot read the cache entry %s (%s); decoding the frames again", path,
                    e.strerror)
        return None
    except Exception as e:  # noqa: BLE001  (a truncated npz raises BadZipFile, an empty one
        # EOFError...)
        log.warning("ignoring damaged cache %s (%s: %s)", path, type(e).__name__, e)
        return None


#: What helps training on the frames :class:`~ultraseg.preprocess.ThinFrames` counts.
THIN_REMEDY = ("--no-pad-to-square stretches such frames onto the canvas instead (or a larger "
               "--size)")


def _thin_frames(cfg: PreprocessConfig, record: np.ndarray | None) -> ThinFrames:
    """The tally of thin frames a cache entry keeps (``[count, first name, height, width]``;
    empty or None: none, or an entry written before it kept them), to warn on a hit as the
    build did."""
    thin = ThinFrames(cfg)
    if record is not None and len(record) == 4:
        thin.n, thin.first = int(record[0]), (str(record[1]), int(record[2]), int(record[3]))
    return thin


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write the cache file readable by its owner alone: it holds the frames (patients'
    images), decoded, outside the dataset's own folder."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _sweep_stale_cache_writes(path.parent)
    with atomic_open(path, "wb", permissions=0o600) as f:      # 0600 from its creation on
        np.savez(f, **arrays)


def _remove_superseded(entry: Path, before_ns: int | None = None) -> None:
    """Remove the cache entries of ``entry``'s dataset, settings, code and user (its prefix)
    finished before it (before ``before_ns``, a ``time.time_ns()``, where given: called
    before ``entry`` is written, once the files were found in its state): made for an
    earlier state of the files (a chmod, an edit, an rsync, a frame added or removed), no run
    hits them again, and each is a full copy of the frames. Another dataset's, setting's,
    version's or user's entries are left, and so is a write not finished (its temporary,
    :func:`_sweep_stale_cache_writes`'s business)."""
    prefix = entry.name.split("-", 1)[0]
    if before_ns is not None:
        written = before_ns
    else:
        try:
            written = entry.stat().st_mtime_ns
        except OSError:
            return
    for old in entry.parent.glob(f"{prefix}-*.npz"):
        if old.name == entry.name:
            continue
        with contextlib.suppress(OSError):      # removed by another run meanwhile
            if old.stat().st_mtime_ns <= written:
                old.unlink()
                log.info("removed the superseded cache entry %s", old)


#: Seconds without a write after which a cache file's temporary is a killed writer's.
STALE_CACHE_WRITE_S = 600.0


def _sweep_stale_cache_writes(folder: Path) -> None:
    """Remove the temporaries of cache writes a kill -9 stopped (``atomic_open``'s
    ``.NAME.npz.XXXX.tmp``, each a copy of a dataset's frames): those not written to for
    :data:`STALE_CACHE_WRITE_S`; a writer still at work keeps touching its own."""
    now = time.time()
    for tmp in temporaries(folder, "*.npz"):
        with contextlib.suppress(OSError):      # gone meanwhile, or not ours to remove
            if now - tmp.stat().st_mtime > STALE_CACHE_WRITE_S:
                tmp.unlink()


def split_by_subject(subjects: Sequence[str], val_fraction: float = 0.2, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) such that no subject has frames on both sides.

    Subjects are shuffled with ``seed`` and given to validation until it holds at least
    ``val_fraction`` of the frames; with two or more subjects each side gets at least one.
    """
    if not 0 < val_fraction < 1:
        raise UltrasegError(f"val fraction must be between 0 and 1, got {val_fraction}")
    subjects = np.asarray(subjects)
    unique = np.unique(subjects)
    if unique.size < 2:
        raise UltrasegError("a subject-grouped split needs at least two subjects; "
                            f"found {unique.size}")
    order = np.random.default_rng(seed).permutation(unique)
    counts = {s: int(c) for s, c in zip(*np.unique(subjects, return_counts=True))}
    target = val_fraction * len(subjects)
    val_subjects: list[str] = []
    n_val = 0
    for s in order[:-1]:  # the last subject always stays in training
        if n_val >= target:
            break
        val_subjects.append(s)
        n_val += counts[s]
    is_val = np.isin(subjects, val_subjects)
    last = counts[val_subjects[-1]]
    if n_val > 1.5 * target and last > min(counts.values()):
        # a subject larger than others drawn last; the draw stays as it is
        log.warning("the subjects drawn aside hold %.2f of the frames against the %.2g asked "
                    "(one large subject, %d frame%s, came last): another --split-seed (in "
                    "Python, train.split_seed) draws another split", n_val / len(subjects),
                    val_fraction, last, "s" * (last != 1))
    elif n_val > 1.5 * target:      # no smaller subject to draw: whole subjects come no nearer
        log.info("the subjects drawn aside hold %.2f of the frames against the %.2g asked: the "
                 "nearest whole subjects of %d frame%s or more come", n_val / len(subjects),
                 val_fraction, last, "s" * (last != 1))
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def write_split(path: str | Path, names: Sequence[str], subjects: Sequence[str],
                train_idx: np.ndarray, val_idx: np.ndarray, seed: int, val_fraction: float,
                test_idx: np.ndarray | None = None) -> None:
    """Write the split as JSON (names and subjects of each side) so a run can be reproduced.

    ``test`` lists frames held out from training *and* from model selection and tuning
    (``test_subjects`` their subjects; files written before it had none, and are read all the
    same).
    """
    test_idx = test_idx if test_idx is not None else np.arange(0)
    doc = {
        "seed": seed, "val_fraction": val_fraction,
        "train": [names[i] for i in train_idx], "val": [names[i] for i in val_idx],
        "test": [names[i] for i in test_idx],
        "train_subjects": sorted({subjects[i] for i in train_idx}),
        "val_subjects": sorted({subjects[i] for i in val_idx}),
        "test_subjects": sorted({subjects[i] for i in test_idx}),
    }
    # each name as its file's bytes read as UTF-8 (fileio.json_name): the same under any locale
    doc = {k: [json_name(n) for n in v] if isinstance(v, list) else v for k, v in doc.items()}
    atomic_write_text(path, json.dumps(doc, indent=1))


def holdout_by_subject(subjects: Sequence[str], fraction: float, seed: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (kept, held_out): ``fraction`` of the frames, by subject, set aside for testing.

    Uses a generator seeded differently from :func:`split_by_subject`'s, so the held-out
    subjects do not depend on the validation fraction. ``fraction == 0`` holds out nothing.
    """
    if fraction <= 0:
        return np.arange(len(subjects)), np.arange(0)
    n_subjects = np.unique(np.asarray(subjects)).size
    if n_subjects < 2:
        raise UltrasegError(f"holding out test subjects (--test-fraction) needs at least two "
                            f"subjects; found {n_subjects} (--test-fraction 0 holds none out; "
                            "in Python, train.test_fraction 0)")
    kept, held = split_by_subject(subjects, fraction, seed + 7919)
    return kept, held


def run_split(subjects: Sequence[str], test_fraction: float, val_fraction: float, seed: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices (train, val, test) of a training run: ``test_fraction`` of the frames held out
    by subject (:func:`holdout_by_subject`), then ``val_fraction`` of the rest for validation
    (:func:`split_by_subject`), both seeded with ``seed``; no subject on two sides.
    ``val_fraction == 0``: no validation side, every frame not held out trains."""
    if not 0 <= val_fraction < 1:
        raise UltrasegError("val fraction must be 0 (no validation) or between 0 and 1, got "
                            f"{val_fraction}")
    if not 0 <= test_fraction < 1:      # (NaN fails both comparisons, so it is refused too)
        raise UltrasegError("test fraction must be 0 (nothing held out) or between 0 and 1, "
                            f"got {test_fraction}")
    kept, test_idx = holdout_by_subject(subjects, test_fraction, seed)
    if val_fraction == 0:
        return kept, np.arange(0), test_idx
    n_subjects = np.unique(np.asarray(subjects)[kept]).size
    if n_subjects < 2:
        n_all = np.unique(np.asarray(subjects)).size
        held = (f" after --test-fraction held out {n_all - n_subjects} of the {n_all} subjects "
                "(a smaller --test-fraction leaves more, or " if len(test_idx) else " (")
        raise UltrasegError("a subject-grouped validation split needs at least two subjects; "
                            f"found {n_subjects}{held}--val-fraction 0 trains without "
                            "validation; in Python, train."
                            + ("test_fraction or train." if len(test_idx) else "")
                            + "val_fraction 0)")
    tr, va = split_by_subject([subjects[i] for i in kept], val_fraction, seed)
    return kept[tr], kept[va], test_idx


@dataclass(frozen=True)
class SplitCopies:
    """Frame pairs a split put on two sides though they are copies of one scan."""

    identical: int
    near: int
    #: Of those pairs, the ones with a frame of the first side (training): a validation or
    #: test frame the model trained on a copy of. The rest pair validation and test frames.
    trained: int
    #: The warning: how many, the subjects and first pairs by name, what it means, what to do.
    message: str

    def __str__(self) -> str:
        return self.message

    def consequence(self) -> str:
        """What the pairs do to the figures, in a few words (the report's row)."""
        if self.trained:
            return (f"{self.trained} pair a training frame with a validation or test one, whose "
                    "Dice so flatters the model")
        return ("each pairs a validation frame with a test one: the frames that chose the "
                "epoch and post-processing copy held-out ones (no training frame)")


#: Subject pairs the split check keeps a count of while it counts the pairs of frames on two
#: sides: exact up to this many subject pairs (the message names the most counted), else the
#: most counted so far are kept (a cine loop's frames, each its own subject, are millions).
SUBJECT_PAIRS_KEPT = 4096


def _most_counted(kept: tuple[np.ndarray, np.ndarray, np.ndarray], keys: np.ndarray,
                  places: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` keys counted most (keys, counts, each key's smallest place), ties by place
    (as Counter.most_common names the first met), of those ``kept`` and a batch's ``keys``
    (one each, at ``places``)."""
    keys, places = np.concatenate([kept[0], keys]), np.concatenate([kept[2], places])
    counts = np.concatenate([kept[1], np.ones(len(keys) - len(kept[0]), np.int64)])
    if not len(keys):
        return keys, counts, places
    order = np.lexsort((places, keys))
    keys, counts, places = keys[order], counts[order], places[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    keys, counts, places = keys[starts], np.add.reduceat(counts, starts), places[starts]
    top = np.lexsort((places, -counts))[:k]
    return keys[top], counts[top], places[top]


def duplicates_across_split(arrays: Arrays, sides: dict[str, np.ndarray], shown: int = 3
                            ) -> SplitCopies | None:
    """The pixel-identical and near-duplicate frames (``inspect``'s tests) that the split put
    on two of its ``sides`` (name: frame indices, the trained side first), through their
    subjects: the same scan filed under two subjects. None where there are none (or the
    fingerprints are not known)."""
    if arrays.pixels is None or arrays.thumbs is None:
        return None
    n = len(arrays.names)
    side = np.full(n, -1, np.int64)
    names = list(sides)
    for k, idx in enumerate(sides.values()):
        side[idx] = k
    keys = [bytes(row) for row in arrays.pixels]
    # each subject's index in name order: a subject pair (lo, hi) is named "lo and hi"
    subject_names, subject = np.unique(np.asarray(arrays.subjects, dtype=str),
                                       return_inverse=True)
    s = len(subject_names)
    # the pairs are counted a batch at a time (a cine loop across the split is millions):
    # each pair's place in the order they are named in, a training frame's first, then the
    # identical before the near ones, each by index; of the SUBJECT_PAIRS_KEPT subject pairs
    # counted most, how many pairs and the first's place (ties are named in that order)
    counts, trained = [0, 0], 0
    named = np.zeros(0, np.int64)
    tally = (np.zeros(0, np.int64),) * 3
    for kind, batches in ((0, [exact_pairs(keys)]),
                          (1, near_blocks(arrays.thumbs, keys, sides=side))):
        for i, j in batches:
            cross = (side[i] >= 0) & (side[j] >= 0) & (side[i] != side[j])
            i, j = i[cross], j[cross]
            with_training = np.minimum(side[i], side[j]) == 0
            counts[kind] += len(i)
            trained += int(np.count_nonzero(with_training))
            # (an identical pair (i, j) is placed by j: each frame with the first of its group)
            by, then = (i, j) if kind else (j, i)
            place = np.ravel_multi_index((~with_training, kind, by, then), (2, 2, n, n))
            named = first(np.concatenate([named, place]), shown)
            lo, hi = np.minimum(subject[i], subject[j]), np.maximum(subject[i], subject[j])
            tally = _most_counted(tally, np.ravel_multi_index((lo, hi), (s, s)), place,
                                  SUBJECT_PAIRS_KEPT)
    if not sum(counts):
        return None
    total = sum(counts)
    subjects = ", ".join(f"{subject_names[lo]} and {subject_names[hi]}"
                         for lo, hi in zip(*np.unravel_index(tally[0][:shown], (s, s))))
    _, kinds, by, then = np.unravel_index(named, (2, 2, n, n))
    pairs = [(b, t, "~") if k else (t, b, "=") for k, b, t in zip(kinds, by, then)]
    named_pairs = ", ".join(f"{arrays.names[a]} ({names[side[a]]}) {sign} {arrays.names[b]} "
                            f"({names[side[b]]})" for a, b, sign in pairs)
    what = " and ".join(f"{c} {kind}" for c, kind in zip(counts, ("identical", "near-duplicate"))
                        if c)
    more = ", ..." if len(tally[0]) > shown else ""
    copies = SplitCopies(counts[0], counts[1], trained, "")
    return replace(copies, message=(
        f"{what} frame {'pairs lie' if total != 1 else 'pair lies'} on two sides of the "
        f"split, copies of one scan filed under two subjects ({subjects}{more}): {named_pairs}"
        f"{', ...' if total > shown else ''}; {copies.consequence()}. Where such "
        "subjects are one patient, give their frames one subject (--subject-pattern) or remove "
        "the copies (`ultraseg inspect DATA` lists them)"))


def read_split(path: str | Path, names: Sequence[str], dataset: str | Path | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) from a split file written by :func:`write_split`; a file that is
    no such split, or lists a frame twice or on both sides, is an :class:`UltrasegError`, and
    so is one that lists frames ``names`` (the frames of ``dataset`` now) lacks. Frames of
    ``names`` the split lists nowhere (added since it was written) are left out, with a
    warning."""
    try:
        doc = read_split_doc(path)
        train, val, test = doc["train"], doc["val"], doc.get("test") or []
    except (ValueError, KeyError) as e:
        raise UltrasegError(f"not a split file ({type(e).__name__}: {e})", path) from e
    both = sorted(set(train) & set(val))
    if both:
        raise UltrasegError(f"the split lists {len(both)} frames on both sides: {both[0]}", path)
    twice = [n for n, k in Counter(train + val).items() if k > 1]
    if twice:
        raise UltrasegError(f"the split lists {len(twice)} frames twice: {twice[0]}", path)
    where = f" {dataset}" if dataset is not None else ""
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in train + val if n not in index]
    if missing:
        raise UltrasegError(f"split names {_frames(missing)} not in the dataset{where} "
                            f"(first: {_first(missing)}): removed or renamed since the run "
                            f"started? A resumed run trains on the frames it started with: "
                            f"put them back to resume, or start a new run in another --out",
                            path)
    listed = set(train) | set(val) | set(test)
    added = [n for n in names if n not in listed]
    if added:
        log.warning("%s: %s of the dataset%s %s in none of its sides (first: %s): added "
                    "since the run started? This run goes on without them, on the frames it "
                    "started with; a new run (another --out) uses them", path, _frames(added),
                    where, "is" if len(added) == 1 else "are", _first(added))
    return (np.array([index[n] for n in train], dtype=np.int64),
            np.array([index[n] for n in val], dtype=np.int64))


#: The sides of a split.json, each a list of frame names.
SPLIT_SIDES = ("train", "val", "test")


def read_split_doc(path: str | Path) -> dict[str, Any]:
    """A split.json's contents (as :func:`write_split` writes it), its sides' names as this
    locale names the frames (:func:`split_names`), its other keys as they are. OSError where it
    cannot be read; ValueError where it is no JSON, or no split: not an object, or a side that
    is no list (``test`` may be null); :class:`UltrasegError` where a name cannot
    be read under this locale. A side missing is the caller's to refuse."""
    doc = read_json(path)
    if not isinstance(doc, dict) or not all(isinstance(doc[k], list) or k == "test" and
                                            doc[k] is None for k in SPLIT_SIDES if k in doc):
        raise ValueError("not a split.json: its sides are lists of frame names")
    return {k: split_names(v) if k in SPLIT_SIDES and isinstance(v, list) else v
            for k, v in doc.items()}


def split_names(side: Any) -> list[Any]:
    """One side of a split.json, its names as this locale names the frames (they are stored as
    their bytes read as UTF-8: :func:`ultraseg.fileio.name_from_json`); what is no name, as
    it is (the reader says the file is no split)."""
    return [name_from_json(n) if isinstance(n, str) else n for n in side]


def _held_out(split_file: Path, names: Sequence[str]) -> np.ndarray:
    """Indices of the frames ``split_file`` holds out for testing (those of ``names`` now)."""
    index = {n: i for i, n in enumerate(names)}
    test = read_split_doc(split_file).get("test") or []
    return np.array([index[n] for n in test if n in index], np.int64)


def _held(masks: np.ndarray) -> np.ndarray:
    """Whether each of the masks ``masks`` (N, ...) holds a structure: (N,) bool, worked out
    once per run for what asks it of a frame or a side (indexing it copies no masks)."""
    masks = np.asarray(masks)
    return masks.reshape(len(masks), -1).any(axis=1) if len(masks) else np.zeros(0, bool)


def _lost(arrays: Arrays, held: np.ndarray) -> np.ndarray:
    """Whether each frame's mask holds a structure at its own size but none at the working
    size (``held``: :func:`_held` of ``arrays.masks``): (N,) bool, none where the frames' own
    are not known."""
    own = arrays.held_own
    if own is None or len(own) != len(held):
        return np.zeros(len(held), bool)
    return own & ~held


def lost_note(lost: int, holding: int, size: int | None) -> str | None:
    """The warning where resizing to the ``size`` px working size emptied ``lost`` of the
    ``holding`` masks that hold a structure at their own size; None where it emptied none."""
    if not lost:
        return None
    return (f"{lost} of the {holding} masks that hold a structure at their own size hold none "
            f"at the {size} px working size: their structures shrink below a pixel when "
            "resized, so those frames train as empty frames; a larger --size (preprocess.size) "
            "keeps them")


def _holders_row(held: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray) -> str:
    """Where a split that trains on no structure put them: 'the 2 validation and 6 held-out
    test frames hold every structure' (a side that holds none is left out); ``held``:
    :func:`_held` of every frame."""
    sides = [f"{len(idx)} {side}" for idx, side in ((val_idx, "validation"),
                                                     (test_idx, "held-out test"))
             if len(idx) and held[idx].any()]
    return f"the {' and '.join(sides)} frames hold every structure"


def _holders(held: np.ndarray, subjects: Sequence[str]) -> list[str]:
    """The subjects some of whose frames hold a structure (``held``: :func:`_held`), sorted."""
    return sorted({subjects[i] for i in np.flatnonzero(held)})


def no_validation(trains: str = "trains without validation") -> str:
    """What --val-fraction 0 does (``trains``), where one subject holds every structure."""
    return (f"--val-fraction 0 {trains} (the last epoch kept and post-processing at its "
            "defaults; in Python, train.val_fraction 0), or label more subjects' frames")


def _one_holder(holders: list[str]) -> str:
    return (f"only subject {holders[0]} holds a structure, so no split both trains and "
            "validates on it and no --split-seed helps")


def _other_split(held: np.ndarray, val_idx: np.ndarray, test_idx: np.ndarray,
                 subjects: Sequence[str]) -> str:
    """The advice of a split that trains on no structure: another seed, and the fraction of
    each side that holds one (the validation side's, the held-out test side's); where one
    of ``subjects`` alone holds a structure and a validation side is asked for no seed helps:
    no held-out test side, and no validation side, train on it."""
    holders = _holders(held, subjects)
    if len(holders) == 1 and len(val_idx):      # (without validation a seed can help)
        in_test = bool(len(test_idx) and held[test_idx].any())
        return _one_holder(holders) + ": " + (
            "--test-fraction 0 keeps it for training (nothing held out to test on; in Python, "
            "train.test_fraction 0), and " if in_test else "") + no_validation()
    flags, names = ["--split-seed"], ["train.split_seed"]
    if len(val_idx) and held[val_idx].any():
        flags.append("--val-fraction")
        names.append("train.val_fraction")
    if len(test_idx) and held[test_idx].any():
        flags.append("a smaller --test-fraction")
        names.append("train.test_fraction")
    return (f"another {' or '.join(flags)} (in Python, {' or '.join(names)}) draws another "
            "split")


#: Fewer validation frames than this choose the kept epoch and the post-processing on what is
#: mostly noise: a warning says so (:func:`few_validation_note`).
FEW_VALIDATION_FRAMES = 5


def few_validation_note(frames: int, subjects: int, val_fraction: float) -> str | None:
    """The warning for a validation side of ``frames`` frames (of ``subjects`` subjects) that
    chooses the epoch and the post-processing, where they are fewer than
    :data:`FEW_VALIDATION_FRAMES`; None for more, or for no validation (0 frames)."""
    if not 0 < frames < FEW_VALIDATION_FRAMES:
        return None
    return (f"only {frames} validation frame{'s' * (frames != 1)} choose{'s' * (frames == 1)} "
            f"({subjects} subject{'s' * (subjects != 1)}): the kept epoch and the "
            "post-processing are chosen on so few frames that their Dice is mostly noise; a "
            f"larger --val-fraction (now {val_fraction:g}; in Python, train.val_fraction) "
            "draws more, or --val-fraction 0 keeps the last epoch and the default "
            "post-processing")


def few_subjects_note(val_subjects: int, split_subjects: int, val_frames: int, frames: int
                      ) -> str | None:
    """The warning for a validation split of ``split_subjects`` subjects (``frames`` frames, those
    held out for testing aside) that puts ``val_subjects`` (``val_frames`` frames) in
    validation, where the split holds 2 subjects, the fewest it draws: one patient chooses the
    kept epoch and the post-processing, the other alone trains. None for more subjects, or
    for no validation. (A side of few frames is said by :func:`few_validation_note`.)"""
    if val_subjects == 0 or split_subjects > 2:
        return None
    return (f"validation holds {val_subjects} of the {split_subjects} subjects ({val_frames} of "
            f"{frames} frames): the epoch kept and the post-processing are chosen on one "
            "subject's frames and the model trains on the other's alone, so its validation "
            "figures say little of other patients; more subjects help (if they are in the "
            "names, 'ultraseg inspect' says how they were found), or --val-fraction 0 (in "
            "Python, train.val_fraction) trains on both, keeping the last epoch and the default "
            "post-processing")


def _frames(names: Sequence[str]) -> str:
    return f"{len(names)} frame" + "s" * (len(names) != 1)


def _first(names: Sequence[str], n: int = 3) -> str:
    """The first ``n`` of ``names``, and how many more."""
    more = len(names) - n
    return ", ".join(names[:n]) + (f" and {more} more" if more > 0 else "")
