"""The HC18 layout (fetal heads: outlined annotations) and its pixel-size tables."""
from __future__ import annotations

import csv
import glob
import logging
import math
import os
from pathlib import Path

from ..errors import DataError
from .base import Reader, Sample
from .files import list_images
from .naming import _group, _nfc, _pair

#: These warnings keep the name of the logger they were said on before they moved here
#: (:mod:`ultraseg.io.readers`'s), so that a filter or level set on it still reaches them.
log = logging.getLogger("ultraseg.io.readers")


def _tables_beside(folder: Path) -> list[Path]:
    """The pixel-size tables one level up named after ``folder``
    (``training_set_pixel_size_and_HC.csv`` beside ``training_set/``): found from its absolute
    path ('.' given from inside it has no name and no parent), else, for a link to the folder
    under another name, from its real one."""
    found: list[Path] = []
    for here in dict.fromkeys((Path(os.path.abspath(folder)), Path(os.path.realpath(folder)))):
        found = sorted(here.parent.glob(f"{glob.escape(here.name)}*pixel_size*.csv"))
        if found:
            break
    return found


def table_key(path: Path) -> str:
    """The name an image file goes by in a pixel-size table (composed Unicode)."""
    return _nfc(path.name)


class Hc18Reader(Reader):
    """HC18 fetal heads: ``NNN_HC.png`` / ``NNN_2HC.png`` + ``..._Annotation.png``, a one-pixel
    ellipse outline that is filled into a solid mask. Subject: the exam NNN. Pixel size (mm) and
    reference head circumference from ``*pixel_size*.csv`` beside the images or one level up.
    The unannotated ``test_set`` (images and ``test_set_pixel_size.csv`` only) is recognised too,
    so ``predict``/``measure`` on it get the pixel sizes."""

    name = "hc18"
    description = "training_set/NNN_HC.png + NNN_HC_Annotation.png (outline), pixel-size CSV"

    @classmethod
    def detect(cls, root: Path) -> bool:
        for d in (root, root / "training_set", root / "test_set"):
            if not d.is_dir():
                continue
            if any(d.glob("*HC_Annotation.png")):
                return True
            if any(d.glob("*HC.png")) and (any(d.glob("*pixel_size*.csv"))
                                           or any(_tables_beside(d))):
                return True
        return False

    def scan(self, root: Path) -> tuple[list[Sample], list[DataError]]:
        folders = [d for d in (root / "training_set", root / "test_set") if d.is_dir()] or [root]
        samples: list[Sample] = []
        problems: list[DataError] = []
        for folder in folders:
            meta = self._read_csvs(folder, problems)
            images, masks = _group(list_images(folder), "_Annotation")
            _warn_unmatched_table(meta, [_nfc(paths[0].name) for paths in images.values()],
                                  folder)
            pairs, found = _pair(images, masks, labelled=bool(masks), folder=folder)
            problems += found
            samples += [Sample(name, image, mask, self.leading_subject(name),
                               dict(meta.get(_nfc(image.name), {})), mask_kind="outline")
                        for name, image, mask in pairs]
        return samples, problems

    @classmethod
    def folder_table(cls, folder: Path) -> dict[str, dict[str, float]]:
        """Pixel size and reference head circumference by image name, where ``folder`` is an
        HC18 set (for its files named on their own: ``measure MODEL
        training_set/000_HC.png``); {} elsewhere. Look a name up with :func:`table_key`."""
        return cls._read_csvs(folder, []) if cls.detect(folder) else {}

    @staticmethod
    def _read_csvs(folder: Path, problems: list[DataError]) -> dict[str, dict[str, float]]:
        """Pixel size and reference head circumference per image name. A value that is no
        positive, finite number is a problem naming its row (a 0, negative or nan pixel size
        would turn every mm figure of that frame into nonsense)."""
        meta: dict[str, dict[str, float]] = {}
        # (not macOS's ._NAME copy of a table: hidden files are no tables)
        for csv_path in [p for p in sorted(folder.glob("*pixel_size*.csv"))
                         + _tables_beside(folder) if not p.name.startswith(".")]:
            try:
                with open(csv_path, newline="", encoding="utf-8-sig") as f:   # Excel's BOM
                    reader = csv.DictReader(f)
                    names = [n for n in reader.fieldnames or []
                             if (n or "").strip().lower() == "filename"]
                    if not names:
                        problems.append(DataError("pixel-size table without a 'filename' column",
                                                  csv_path))
                        continue
                    for row in reader:
                        entry: dict[str, float] = {}
                        for key, value in row.items():
                            k = (key or "").lower()
                            field = ("pixel_size_mm" if "pixel size" in k
                                     else "hc_mm" if "circumference" in k else None)
                            if field is None:
                                continue
                            number = _positive_number(value)
                            if number is None:
                                problems.append(DataError(
                                    f"line {reader.line_num}: {key.strip()} must be a positive "
                                    f"number, got {value!r}", csv_path))
                            else:
                                entry[field] = number
                        meta[_nfc((row.get(names[0]) or "").strip())] = entry
            except (OSError, ValueError, KeyError) as e:
                problems.append(DataError(f"cannot read pixel-size table ({e})", csv_path))
        return meta


def _positive_number(value: object) -> float | None:
    """``value`` as a positive, finite float, or None where it is not one."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _warn_unmatched_table(meta: dict[str, dict[str, float]], names: list[str],
                          folder: Path) -> None:
    """Say when a pixel-size table was found but leaves images without a row: they get no mm
    figures (no pixel size) and no reference head circumference."""
    if not meta or not names:
        return
    missing = [n for n in names if n not in meta]
    if missing:
        log.warning("%s: %d of %d images have no row in the pixel-size table (first: %s): no "
                    "pixel size or reference head circumference from it (for measure and "
                    "evaluate, --pixel-size gives one)", folder, len(missing), len(names),
                    missing[0])
