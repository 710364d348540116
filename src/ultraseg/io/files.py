"""Finding a dataset's files: which files are images (by their names), walking a folder's
tree, the files in formats ultraseg does not read (and what to do with them), and the
natural order of names.

Moved from :mod:`ultraseg.io.base` as it was; import its names from here.
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePath
from typing import Any, Iterator

from ..errors import command_line
from .dicom import is_dicom

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".jif", ".tif", ".tiff", ".bmp",
                    ".dcm", ".dicom")


def is_image_file(p: Path) -> bool:
    """An image file by its name (not hidden), or a link to one whose target is missing: kept,
    so that reading it says so, rather than dropped in silence."""
    return ((p.is_file() or (p.is_symlink() and not p.exists()))
            and (p.suffix.lower() in IMAGE_EXTENSIONS or is_dicom(p))
            and not p.name.startswith("."))


def image_stem(path: PurePath) -> str:
    """An image file's name without its ending, where the ending is an image file's
    (:data:`IMAGE_EXTENSIONS`); else its whole name: a DICOM file read by its marker
    (:func:`~ultraseg.io.dicom.is_dicom`) named by its UID, ``US.1.2.840.113619.2.1.1``, keeps
    its last UID part, which tells it from the other frames of its series (its mask is
    ``US.1.2.840.113619.2.1.1_mask.png``)."""
    name = path.name
    ending = path.suffix
    return name[: -len(ending)] if ending and ending.lower() in IMAGE_EXTENSIONS else name


#: Folders no dataset lives in: macOS's archive metadata (its ``._NAME`` files are no images).
NO_DATA_FOLDERS = ("__MACOSX",)


def iter_files(root: Path) -> Iterator[Path]:
    """Every file below ``root`` at any depth, as paths under ``root``, in the order found (a
    search can stop at the first it wants): linked folders are followed (each real folder
    once, so a link to a folder above ends no walk), hidden folders (``.ipynb_checkpoints``,
    ``.thumbnails``) and :data:`NO_DATA_FOLDERS` are not; broken links are kept as files, for
    reading them to say so."""
    seen: set[str] = set()
    links: list[str] = []

    def walk(top: str, follow: bool) -> Iterator[Path]:
        for folder, dirs, files in os.walk(top, followlinks=follow):
            real = os.path.realpath(folder)
            if real in seen:            # reached again through a link
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in NO_DATA_FOLDERS]
            if not follow:
                links.extend(os.path.join(folder, d) for d in dirs
                             if os.path.islink(os.path.join(folder, d)))
            yield from (Path(folder, f) for f in files)

    # the real folders first, then links to folders not reached that way: a frame keeps its
    # real folder's name where a link (latest -> 2024-06) leads there too
    yield from walk(str(root), follow=False)
    for link in sorted(links):
        yield from walk(link, follow=True)


#: Endings of video files: loops, whose frames ultraseg reads once extracted or exported.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".wmv", ".m4v", ".mpg", ".mpeg", ".webm")
#: Endings of image files ultraseg does not read: counted where a folder holds them
#: (:func:`unread_image_files`), so that they are not left out in silence.
UNREAD_IMAGE_EXTENSIONS = (".webp", ".gif", ".jp2", ".j2k", ".heic", ".heif", ".avif", ".jxl",
                           ".pgm", ".ppm", ".pnm", ".tga", ".dib", ".ico", ".psd", ".exr",
                           ".pcx", ".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", *VIDEO_EXTENSIONS)

#: Endings of medical volume formats (NIfTI, MetaImage, NRRD), named as such where one is
#: given on its own.
VOLUME_FORMATS = {".nii": "NIfTI", ".nii.gz": "NIfTI", ".mha": "MetaImage",
                  ".mhd": "MetaImage", ".nrrd": "NRRD"}

def video_advice(video: PurePath, their: str, loop: str) -> str:
    """How the frames of the video file ``video`` are read: an ffmpeg command for it (``their``
    and ``loop`` the words for one video or several)."""
    frames = video.with_name(f"{video.stem}_%03d.png")
    return (f"extract {their} frames ({command_line('ffmpeg', '-i', video, frames)}) or export "
            f"{loop} as multi-frame DICOM or TIFF, which predict and measure read frame by "
            "frame")


def convert_advice(counts: dict[str, int]) -> str:
    """What to do with the files :func:`unread_image_files` counted (``counts``): convert
    the images, get the videos' frames."""
    videos = [k for k in counts if k in VIDEO_EXTENSIONS]
    said = ([f"convert {'the images' if videos else 'them'} (to PNG, say)"]
            if len(videos) < len(counts) else [])
    if videos:
        said.append("videos: " + video_advice(PurePath(f"clip{videos[0]}"), "their",
                                              "the loops"))
    return "; ".join(said)


def unread_file_advice(path: Path) -> str | None:
    """Why the file ``path``, named on its own, is not read and what to do, where its ending
    is one of :data:`UNREAD_IMAGE_EXTENSIONS`; else None."""
    ending = unread_ending(path)
    if ending not in UNREAD_IMAGE_EXTENSIONS:
        return None
    if ending in VIDEO_EXTENSIONS:
        return "a video, which ultraseg does not read: " + video_advice(
            PurePath(path.name), "its", "the loop")
    if ending == ".gif":
        return "GIF is not read: convert it to PNG (a GIF loop: to a multi-page TIFF)"
    if ending in VOLUME_FORMATS:
        return (f"a {VOLUME_FORMATS[ending]} ({ending}) file, a format ultraseg does not read: "
                "convert it (each 2D frame to PNG, say; a label volume to PNG masks keeping its "
                "labels 1, 2, 3..., which --label K picks from)")
    return f"a {ending} file, a format ultraseg does not read: convert it (to PNG, say)"


def unread_ending(path: Path) -> str:
    """``path``'s ending as :data:`UNREAD_IMAGE_EXTENSIONS` spells it, in lower case:
    ``.nii.gz`` for a compressed NIfTI volume, else its last suffix."""
    return ".nii.gz" if path.name.lower().endswith(".nii.gz") else path.suffix.lower()


def unread_files_said(counts: dict[str, int]) -> str:
    """``N files in formats ultraseg does not read (.gif 1, .webp 2)``."""
    return (f"{sum(counts.values())} files in formats ultraseg does not read "
            f"({', '.join(f'{k} {n}' for k, n in sorted(counts.items()))})")


def unread_image_files(root: Path) -> dict[str, int]:
    """How many files below ``root`` (:func:`iter_files`) are images in a format ultraseg
    does not read, by ending (``.nii.gz`` for a compressed NIfTI volume; other ``.gz`` files
    are not counted)."""
    counts: dict[str, int] = {}
    for p in iter_files(root):
        ending = unread_ending(p)
        if ending in UNREAD_IMAGE_EXTENSIONS and not p.name.startswith("."):
            counts[ending] = counts.get(ending, 0) + 1
    return counts


def walk_files(root: Path) -> list[Path]:
    """:func:`iter_files`, sorted."""
    return sorted(iter_files(root))


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` (see :func:`is_image_file`), sorted by name."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_file(p))


def natural_key(name: str) -> list[Any]:
    """Sort key that orders 'a 2' before 'a 10'. The numbers are the runs ``\\d`` matches,
    decimal digits (str.isdecimal): a superscript '²' is a digit to str.isdigit, not to int(),
    and sorts as text."""
    return [int(t) if t.isdecimal() else t for t in re.split(r"(\d+)", name)]
