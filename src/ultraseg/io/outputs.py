"""The folders ultraseg writes its outputs to: marked (:data:`OUTPUT_MARKER`), so that a
later scan of a folder above them leaves their images out, and refused where they hold
images of the user's.

Moved from :mod:`ultraseg.io.base` as it was; import its names from here.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Collection

from ..errors import DataError
from .files import is_image_file, natural_key


#: The file ``predict``, ``measure`` and ``train`` leave in their output folder: images in a
#: folder that holds it are outputs, which a later scan of a folder above it leaves out.
OUTPUT_MARKER = ".ultraseg-output"


def mark_output_folder(folder: Path, by: str, own: Collection[str] = ()) -> None:
    """Leave :data:`OUTPUT_MARKER` in ``folder`` (which exists), naming the command ``by``.

    A folder that already holds image files ultraseg did not write (a user's images, in it or
    one level below) is a user error: marking it would hide those images from every later
    scan of a folder above it, and the outputs would mix with them. ``own``: names of files
    directly in ``folder`` that are the command's own (a run folder from before the marker
    existed holds its figures)."""
    from ..fileio import atomic_write_text

    marker = folder / OUTPUT_MARKER
    if marker.exists():
        return
    check_no_foreign_images(folder, own)
    atomic_write_text(marker, f"written by ultraseg {by}: its images are outputs, which "
                              "scans of the folders above leave out\n")


def check_no_foreign_images(folder: Path, own: Collection[str] = ()) -> None:
    """Refuse an output ``folder`` that holds image files ultraseg did not write, in it or one
    level below (in folders not marked as ultraseg's): see :func:`mark_output_folder`, which
    calls it; a command that writes elsewhere first (``demo``) calls it before that."""
    if not folder.is_dir() or (folder / OUTPUT_MARKER).exists():
        return
    theirs = [p for p in folder.iterdir() if is_image_file(p) and p.name not in own]
    theirs += [p for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
               and not (d / OUTPUT_MARKER).exists() for p in d.iterdir() if is_image_file(p)]
    theirs.sort(key=lambda q: natural_key(str(q)))
    if theirs:
        raise DataError(f"the output folder already holds {len(theirs)} image file"
                        f"{'s' * (len(theirs) > 1)} ultraseg did not write (first: "
                        f"{theirs[0].name}); choose a new or empty folder", folder)


def in_output_folder(image: Path, root: Path, marked: dict[Path, bool]) -> bool:
    """Whether a folder between ``image`` and the scanned folder ``root`` (not ``root`` itself:
    an output folder named as input is read) holds :data:`OUTPUT_MARKER`. ``marked`` caches
    the answer per folder."""
    for folder in image.parents:
        if folder == root or root not in folder.parents:
            return False
        if folder not in marked:
            marked[folder] = (folder / OUTPUT_MARKER).is_file()
        if marked[folder]:
            return True
    return False


def warn_outputs_left_out(root: Path, n: int) -> None:
    """Say that ``n`` images under ``root`` were left out as ultraseg's own outputs."""
    logging.getLogger("ultraseg.io").warning(
        "%s: left out %d images in folders ultraseg wrote (%s marks them)", root, n,
        OUTPUT_MARKER)
