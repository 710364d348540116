"""Synthetic B-mode ultrasound frames ("phantoms") for the demo and for fast tests.

A frame is rendered the way a scanner forms one, in miniature:

1. an echogenicity map: roughly horizontal tissue layers (skin, fat, muscle, deeper tissue)
   with wavy boundaries, bright fascia lines and fibre texture, a bright near-field band;
2. 0, 1 or 2 hypoechoic structures (perturbed, rotated ellipses) with their own contrast,
   a bright echogenic rim on some and posterior acoustic enhancement or shadowing below some;
3. depth attenuation;
4. speckle: a complex Gaussian scatterer field weighted by the echogenicity, blurred by a
   point-spread function that is wider laterally than axially; its envelope is Rayleigh;
5. log compression to 8 bits, and on some frames the fan of a curvilinear probe (black outside).

The mask is the union of the structures; about 27% of ``make_frame``'s frames have none (in
``make_dataset``'s, one subject in each 5 has none, so about a quarter from 50 frames up).
Structures are kept inside the image and inside the fan.

``make_frame`` draws one independent frame. ``make_dataset`` writes a ``folders``-layout dataset
of subjects, each a short sweep (10 frames) sharing tissue geometry, with the structure drifting
slightly from frame to frame, so that a subject-grouped split is meaningful.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from . import errors as _errors
from .config import whole_number
from .errors import UltrasegError
from .fileio import OPEN_ELSEWHERE, WriteError, as_path, failure_reason, replace_retried
from .io.files import is_image_file, walk_files
from .io.outputs import in_output_folder

__all__ = ["make_frame", "make_dataset", "FRAMES_PER_SUBJECT"]

log = logging.getLogger(__name__)

FRAMES_PER_SUBJECT = 10
"""Frames per subject (one sweep) written by :func:`make_dataset`."""

_STRUCTURE_COUNT_P = (0.27, 0.48, 0.25)   # P(0), P(1), P(2) structures in a frame
# structure counts of each block of 5 subjects (shuffled per block): a dataset's share of
# empty frames stays near 25% (one empty subject in five, plus frames that a sweep's structure
# has left) rather than varying with the luck of a few subject-level draws
_SUBJECT_COUNTS = (0, 1, 1, 1, 2)
#: The least frame side (pixels) phantom draws; `ultraseg phantom --size` takes it from here.
MIN_SIZE = 32


# ----------------------------------------------------------------------------- scene


@dataclass
class _Structure:
    cx: float            # centre, pixels (x = column, y = row) at frame 0
    cy: float
    a: float             # semi-axes, pixels
    b: float
    angle: float         # rotation, radians
    harmonics: list[tuple[int, float, float]]  # (order k, amplitude, phase) of r(theta)
    contrast: float      # interior echogenicity relative to the surrounding tissue
    heterogeneity: float  # strength of smooth interior texture
    rim: float           # amplitude of the echogenic rim (0: none)
    posterior: float     # echogenicity factor below it (>1 enhancement, <1 shadow, 1 none)
    vx: float            # drift, pixels per frame
    vy: float
    pulse_amp: float     # relative size change along the sweep
    pulse_phase: float
    window: tuple[int, int] | None = None  # frames (inclusive) where the sweep crosses it

    def r_max(self) -> float:
        bump = 1.0 + sum(abs(c) for _, c, _ in self.harmonics)
        return max(self.a, self.b) * bump * (1.0 + self.pulse_amp)

    def at(self, t: int) -> tuple[float, float, float]:
        """Centre x, centre y and size scale at frame ``t`` (scale 0: not in this frame)."""
        s = 1.0 + self.pulse_amp * math.sin(self.pulse_phase + 0.5 * t)
        if self.window is not None:
            lo, hi = self.window
            if not lo <= t <= hi:
                s = 0.0
            else:  # out of plane: smaller towards the ends of the window
                u = (t - (lo + hi) / 2.0) / max((hi - lo) / 2.0, 1.0)
                s *= 1.0 - 0.3 * u * u
        return self.cx + self.vx * t, self.cy + self.vy * t, s


@dataclass
class _Scene:
    size: int
    fan: tuple[float, float] | None          # (apex distance above row 0, half angle) or None
    boundaries: list[tuple[float, list[tuple[float, float, float]]]]  # (depth, sinusoids)
    echo: list[float]                        # echogenicity per layer (len(boundaries) + 1)
    fibres: list[float]                      # brightness of fibres/septa per layer
    slopes: list[float]                      # tilt of the fibres per layer (d depth / d lat)
    fascia: list[float]                      # fascia line amplitude per boundary
    texture_fine: np.ndarray                 # (size, width) float32, std ~1, streaky
    texture_coarse: np.ndarray               # (size, width) float32, std ~1, blobby
    fascia_mod: np.ndarray                   # (width,) float32 in [0, 1]
    lat_drift: float                         # lateral probe motion, pixels per frame
    near_field: tuple[float, float]          # (amplitude, decay length in pixels)
    attenuation_db: float                    # total over the image depth
    psf: tuple[float, float]                 # speckle blur sigma (axial, lateral), pixels
    looks: int                               # compounded speckle realisations
    dynamic_range_db: float
    gain: float                              # gray level of a mean-intensity-1 pixel
    structures: list[_Structure] = field(default_factory=list)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...],
                  sigma: tuple[float, ...] | float) -> np.ndarray:
    """White noise blurred by ``sigma`` and rescaled to zero mean, unit std (float32)."""
    g = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma,
                                mode="wrap")
    g -= g.mean()
    return g / (g.std() + 1e-8)


def _geometry(scene: _Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pixel beam coordinates: depth (px), lateral position (px) and the fan's inside.

    Linear probe: depth = row, lateral = column. Curvilinear probe: depth is the distance from
    the transducer face along the beam, lateral the arc length at mid depth."""
    n = scene.size
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    if scene.fan is None:
        return yy, xx, np.ones((n, n), bool)
    r0, half = scene.fan
    dx, dy = xx - n / 2.0, yy + r0
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dx, dy)
    depth = rho - r0
    lateral = (r0 + n / 2.0) * theta + n / 2.0
    inside = (np.abs(theta) <= half) & (depth >= 0) & (depth <= n - 1)
    return depth, lateral, inside


def _fits(scene: _Scene, x: float, y: float, r: float, top: float) -> bool:
    """Whether a disc of radius ``r`` at (x, y) lies inside the image, below ``top`` (depth)
    and above 90% of the depth, and inside the fan with a margin."""
    n = scene.size
    m = 3.0 * n / 256.0 + 2.0
    if x - r < m or x + r > n - 1 - m or y + r > n - 1 - m:
        return False
    if scene.fan is None:
        return y - r >= top and y + r <= 0.9 * n
    r0, half = scene.fan
    rho = math.hypot(x - n / 2.0, y + r0)
    if rho - r - r0 < top or rho + r - r0 > 0.9 * n:
        return False
    return abs(math.atan2(x - n / 2.0, y + r0)) + math.asin(min(1.0, (r + m) / rho)) <= half


def _draw_structure(rng: np.random.Generator, scene: _Scene, top: float, n_frames: int,
                    others: list[_Structure]) -> _Structure | None:
    n = scene.size
    s = n / 256.0
    for attempt in range(60):
        shrink = 0.85 ** (attempt // 15)
        a = rng.uniform(0.055, 0.15) * n * shrink
        b = a * rng.uniform(0.5, 1.0)
        if rng.random() < 0.5:
            a, b = b, a
        harmonics = [(k, float(rng.uniform(0.0, 0.09 / (k - 1))), float(rng.uniform(0, 2 * np.pi)))
                     for k in (2, 3, 4)]
        anechoic = rng.random() < 0.4
        contrast = float(np.exp(rng.uniform(np.log(0.005), np.log(0.03)))) if anechoic \
            else float(np.exp(rng.uniform(np.log(0.03), np.log(0.16))))
        u = rng.random()
        if anechoic:
            posterior = rng.uniform(1.5, 2.6) if u < 0.65 else 1.0
        else:
            posterior = rng.uniform(0.2, 0.5) if u < 0.35 else (
                rng.uniform(1.3, 1.8) if u < 0.5 else 1.0)
        speed = rng.uniform(0.0, 1.0) * s
        heading = rng.uniform(0, 2 * np.pi)
        st = _Structure(
            cx=float(rng.uniform(0, n)), cy=float(rng.uniform(top, 0.9 * n)),
            a=float(a), b=float(b), angle=float(rng.uniform(0, np.pi)), harmonics=harmonics,
            contrast=contrast,
            heterogeneity=0.0 if anechoic else float(rng.uniform(0.0, 0.35)),
            rim=float(rng.uniform(2.0, 6.0)) if rng.random() < 0.4 else 0.0,
            posterior=float(posterior),
            vx=float(speed * math.cos(heading)), vy=float(0.5 * speed * math.sin(heading)),
            pulse_amp=float(rng.uniform(0.0, 0.08)), pulse_phase=float(rng.uniform(0, 2 * np.pi)),
        )
        if n_frames > 1 and rng.random() < 0.3:
            length = int(rng.integers(max(n_frames // 2, 1), n_frames))
            lo = int(rng.integers(0, n_frames - length + 1))
            st.window = (lo, lo + length - 1)
        r = st.r_max() + 2.0 * s + 1.0
        ends = [(st.cx + st.vx * t, st.cy + st.vy * t) for t in (0, max(n_frames - 1, 0))]
        if not all(_fits(scene, x, y, r, top) for x, y in ends):
            continue
        gap = r + 4.0 * s + s * n_frames  # both may drift towards each other
        if any(math.hypot(st.cx - o.cx, st.cy - o.cy) < gap + o.r_max() for o in others):
            continue
        return st
    return None


def _draw_scene(rng: np.random.Generator, size: int, n_frames: int = 1,
                n_structures: int | None = None) -> _Scene:
    """Draw everything a subject's frames share: probe, tissue layers, structures."""
    n = size
    s = n / 256.0
    fan = None
    if rng.random() < 0.35:
        fan = (float(rng.uniform(0.35, 0.8) * n), float(np.deg2rad(rng.uniform(30, 40))))

    n_layers = int(rng.integers(4, 6))
    depths = [rng.uniform(0.04, 0.08), rng.uniform(0.15, 0.28)]
    rest = np.sort(rng.uniform(0.35, 0.85, size=n_layers - 3))
    depths += [float(d) for d in rest]
    boundaries = []
    for d in depths:
        waves = [(float(rng.uniform(1.0, 6.0) * s), float(rng.uniform(0.4, 2.0) * n),
                  float(rng.uniform(0, 2 * np.pi))) for _ in range(2)]
        boundaries.append((float(d * n), waves))
    # layer 0 skin (bright), 1 subcutaneous fat (dark lobules, bright septa), then muscle/deep
    echo = [float(rng.uniform(1.5, 2.5)), float(rng.uniform(0.25, 0.45))]
    echo += [float(rng.uniform(0.5, 1.0)) for _ in range(n_layers - 2)]
    fibres = [1.5, float(rng.uniform(3.0, 6.0))] + [float(rng.uniform(2.0, 7.0))
                                                    for _ in range(n_layers - 2)]
    slopes = [0.0, float(rng.uniform(-0.15, 0.15))] + [float(rng.uniform(-0.3, 0.3))
                                                       for _ in range(n_layers - 2)]
    fascia = [float(rng.uniform(5.0, 16.0)) for _ in boundaries]
    width = int(1.8 * n) + 2 * int(math.ceil(s * n_frames)) + 8  # the fan's width, the drift

    scene = _Scene(
        size=n, fan=fan, boundaries=boundaries, echo=echo, fibres=fibres, slopes=slopes,
        fascia=fascia,
        texture_fine=_smooth_noise(rng, (n, width), (0.9 * s, 6.0 * s)),
        texture_coarse=_smooth_noise(rng, (n, width), (4.0 * s, 8.0 * s)),
        fascia_mod=np.clip(_smooth_noise(rng, (width,), 12.0 * s) * 0.5 + 0.75, 0.1, 1.0),
        lat_drift=float(rng.uniform(-1.0, 1.0) * s),
        near_field=(float(rng.uniform(3.0, 8.0)), float(rng.uniform(4.0, 9.0) * s)),
        attenuation_db=float(rng.uniform(6.0, 14.0)),
        psf=(float(rng.uniform(0.7, 1.0) * s), float(rng.uniform(1.3, 1.9) * s)),
        looks=int(rng.integers(2, 4)),
        dynamic_range_db=float(rng.uniform(42.0, 52.0)),
        gain=float(rng.uniform(125.0, 145.0)),
    )
    if n_structures is None:
        n_structures = int(rng.choice(3, p=_STRUCTURE_COUNT_P))
    top = boundaries[1][0] + 5.0 * s + 4.0
    for _ in range(n_structures):
        st = _draw_structure(rng, scene, top, n_frames, scene.structures)
        if st is not None:
            scene.structures.append(st)
    return scene


# ----------------------------------------------------------------------------- rendering


def _soft_step(x: np.ndarray, width: float) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(x / max(width, 1e-3)))


def _render(scene: _Scene, t: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                      dict[str, Any]]:
    n = scene.size
    s = n / 256.0
    depth, lateral, inside = _geometry(scene)
    width = scene.texture_fine.shape[1]
    lat = lateral + scene.lat_drift * t + (width - n) / 2.0

    # -- tissue layers: wavy boundaries, per-layer echogenicity and fibre texture that follows
    #    the boundary above it (tilted by the layer's slope), bright fascia on every boundary
    bounds = []
    prev = None
    for d, waves in scene.boundaries:
        b = np.full(lat.shape, d, np.float32)
        for amp, period, phase in waves:
            b += amp * np.sin(2 * np.pi * lat / period + phase)
        if prev is not None:
            b = np.maximum(b, prev + 3.0 * s)
        bounds.append(b)
        prev = b
    base = np.full((n, n), scene.echo[0], np.float32)
    fibre = np.full((n, n), scene.fibres[0], np.float32)
    warp = np.zeros((n, n), np.float32)
    for k, b in enumerate(bounds):
        w = _soft_step(depth - b, 0.8 * s)
        base += w * (scene.echo[k + 1] - scene.echo[k])
        fibre += w * (scene.fibres[k + 1] - scene.fibres[k])
        offset = (b - scene.boundaries[k][0]) + scene.slopes[k + 1] * (lat - width / 2.0)
        prev_off = 0.0 if k == 0 else (bounds[k - 1] - scene.boundaries[k - 1][0]) \
            + scene.slopes[k] * (lat - width / 2.0)
        warp += w * (offset - prev_off)
    coords = np.stack([depth - warp, lat])
    fine = ndimage.map_coordinates(scene.texture_fine, coords, order=1, mode="grid-wrap")
    coarse = ndimage.map_coordinates(scene.texture_coarse, coords, order=1, mode="grid-wrap")
    fmod = np.interp(lat, np.arange(width), scene.fascia_mod)
    tissue_mean = base * np.exp(0.45 * coarse)
    echo = tissue_mean * (0.5 + fibre * np.maximum(fine - 0.9, 0.0) ** 1.5)
    for k, b in enumerate(bounds):
        sig = (1.0 + 0.6 * (k % 2)) * s
        echo += scene.fascia[k] * fmod * np.exp(-0.5 * ((depth - b) / sig) ** 2)
    nf_amp, nf_len = scene.near_field
    echo += nf_amp * np.exp(-np.maximum(depth, 0) / nf_len)

    # -- structures
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    mask = np.zeros((n, n), bool)
    posterior = np.ones((n, n), np.float32)
    meta_structs = []
    for st in scene.structures:
        cx, cy, sc = st.at(t)
        if sc <= 0:
            continue
        dx, dy = xx - cx, yy - cy
        ca, sa = math.cos(st.angle), math.sin(st.angle)
        u, v = ca * dx + sa * dy, -sa * dx + ca * dy
        rho = np.hypot(u, v)
        phi = np.arctan2(v, u)
        a, b = st.a * sc, st.b * sc
        r = a * b / np.sqrt((b * np.cos(phi)) ** 2 + (a * np.sin(phi)) ** 2)
        mod = np.ones_like(r)
        for k, c, ph in st.harmonics:
            mod += c * np.cos(k * phi + ph)
        r *= mod
        inner = rho <= r
        signed = rho - r
        soft = 1.0 - _soft_step(signed, 0.7 * s)
        interior = st.contrast * tissue_mean * np.exp(st.heterogeneity * coarse)
        echo = echo * (1 - soft) + interior * soft
        if st.rim > 0:
            beam_angle = np.arctan2(dy, dx)  # rim brightest where the wall faces the beam
            facing = 0.35 + 0.65 * np.sin(beam_angle) ** 2
            echo += st.rim * facing * np.exp(-0.5 * ((signed - 1.2 * s) / (1.1 * s)) ** 2)
        if st.posterior != 1.0 and inner.any():
            lat_c = float(lateral[inner].mean())
            half_w = 0.5 * float(lateral[inner].max() - lateral[inner].min()) * 0.85
            d_mid = float(depth[inner].mean())
            band = (1 - _soft_step(np.abs(lateral - lat_c) - half_w, 2.0 * s)) \
                * _soft_step(depth - d_mid, 3.0 * s)
            posterior *= 1.0 + (st.posterior - 1.0) * band * (1.0 - soft)
        mask |= inner
        meta_structs.append({
            "center": [round(cx, 3), round(cy, 3)], "axes": [round(a, 3), round(b, 3)],
            "angle": round(st.angle, 4), "contrast": round(st.contrast, 4),
            "rim": st.rim > 0, "posterior": round(st.posterior, 3),
            "area": int(inner.sum()),
        })
    echo *= posterior

    # -- attenuation, speckle, log compression
    echo *= 10.0 ** (-scene.attenuation_db * np.clip(depth, 0, None) / n / 10.0)
    amp = np.sqrt(np.maximum(echo, 0)).astype(np.float32)
    delta = np.zeros((31, 31), np.float32)
    delta[15, 15] = 1.0
    norm = 2.0 * float((ndimage.gaussian_filter(delta, scene.psf) ** 2).sum()) * scene.looks
    intensity = np.full((n, n), 1e-4, np.float32)
    for _ in range(2 * scene.looks):  # real and imaginary part of each look
        part = ndimage.gaussian_filter(amp * rng.standard_normal((n, n), dtype=np.float32),
                                       scene.psf, mode="reflect")
        intensity += part * part / norm
    db = ndimage.gaussian_filter(10.0 * np.log10(intensity), 0.5 * s)  # scanner smoothing
    gray = scene.gain + db * (255.0 / scene.dynamic_range_db)
    image = np.where(inside, np.clip(np.rint(gray), 1, 255), 0).astype(np.uint8)
    mask_u8 = (mask & inside).astype(np.uint8)
    meta = {"size": n, "fan": scene.fan is not None, "n_structures": len(meta_structs),
            "structures": meta_structs, "frame_index": t}
    return image, mask_u8, meta


# ----------------------------------------------------------------------------- public API


def _check_size(size: int) -> None:
    """Refuse a side below :data:`MIN_SIZE` in the words `phantom --size` uses
    (:func:`~ultraseg.config.whole_number`'s)."""
    whole_number("phantom size", size, MIN_SIZE)


def make_frame(rng: np.random.Generator, size: int = 256
               ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one synthetic B-mode frame.

    Args:
        rng: the random generator (advanced; same state -> same frame).
        size: side in pixels (at least :data:`MIN_SIZE`, 32).

    Returns:
        ``(image, mask, meta)``: image ``(size, size)`` uint8 (log-compressed gray levels
        1..255; 0 only outside the fan), mask ``(size, size)`` uint8 in {0, 1} (union of the
        hypoechoic structures; empty on about 27% of frames), and a JSON-able dict ``meta`` with
        ``n_structures``, ``fan`` and per-structure ``center``/``axes``/``contrast``/...
    """
    _check_size(size)
    scene = _draw_scene(rng, int(size))
    return _render(scene, 0, rng)


def _write_png(array: np.ndarray, path: Path, out: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(array, mode="L").save(tmp, format="PNG")
    _move(tmp, path, out)


def _move(src: Path, dst: Path, out: Path) -> None:
    """``os.replace(src, dst)``, a frame's rename in the staging folder or one of its folders
    moved into ``out``, as :func:`~ultraseg.fileio.replace_retried` tries it: on Windows,
    where another program holds the file, or a file in the folder, open (an antivirus
    scanning the frames just written, a file browser), tried again, then a
    :class:`~ultraseg.fileio.WriteError` naming ``out`` and the file or folder by the name it
    was to have there, asking whether it is open in another program (the hidden staging
    folder says nothing to the user); elsewhere the PermissionError as it came."""
    try:
        replace_retried(src, dst)
    except PermissionError as e:
        if not _errors.WINDOWS:
            raise
        folder = src.is_dir()
        name = f"{dst.name}/" if folder else f"{dst.parent.name}/{dst.name}"
        raise WriteError(f"cannot write {name}: {failure_reason(e)}; is "
                         f"{'a file in it' if folder else 'it'} {OPEN_ELSEWHERE}", out) from e


def frame_name(i: int) -> str:
    """The stem of the ``i``-th frame (from 0) :func:`make_dataset` writes: ``SUBJECT_FRAME``,
    both from 1, :data:`FRAMES_PER_SUBJECT` frames a subject."""
    return f"{i // FRAMES_PER_SUBJECT + 1}_{i % FRAMES_PER_SUBJECT + 1}"


def _running(pid: str) -> bool:
    """Whether the process ``pid`` (a staging folder's writer) still runs, writing it; a name
    without one (written before names carried it), or this process's (an interrupted call
    before this one), is a stale folder's (a pid is ASCII digits: '²' is a digit to
    str.isdigit, not to int()), as is one no system gives (0, or past 32 bits)."""
    if not (pid.isascii() and pid.isdecimal()) or int(pid) in (os.getpid(), 0) \
            or int(pid) > 0xFFFFFFFF:       # (no system's process id: os.kill overflows)
        return False
    if os.name == "nt":     # (signal 0 is CTRL_C_EVENT there, sent to a console group)
        return _windows_running(int(pid))
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:                 # another user's process: running
        return True
    return True


def _windows_running(pid: int) -> bool:  # pragma: no cover (Windows)
    """Windows: whether the process ``pid`` runs. One that cannot be opened for another
    reason than being gone (another user's: access denied) runs."""
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)   # type: ignore[attr-defined]
    kernel32.OpenProcess.restype = ctypes.c_void_p                 # (a HANDLE: 64 bits)
    kernel32.OpenProcess.argtypes = [ctypes.c_ulong, ctypes.c_int, ctypes.c_ulong]
    kernel32.GetExitCodeProcess.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong)]
    kernel32.CloseHandle.argtypes = [ctypes.c_void_p]
    handle = kernel32.OpenProcess(0x1000, False, pid)   # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() != 87    # ERROR_INVALID_PARAMETER: no such process
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259                # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def make_dataset(out: str | Path, n: int = 200, size: int = 256, seed: int = 0) -> Path:
    """Write ``n`` phantom frames in the ``folders`` layout and return ``out``.

    Files: ``out/images/{subject}_{frame}.png`` (8-bit grayscale) and
    ``out/masks/{subject}_{frame}_mask.png`` (0/255), subjects numbered from 1 with
    :data:`FRAMES_PER_SUBJECT` frames each (the last may have fewer), frames from 1.
    A subject's frames are one sweep: shared tissue layers and structures, which drift
    slightly between frames. The same ``seed`` gives the same bytes; subject ``k`` does not
    depend on ``n``.

    Raises:
        UltrasegError: ``n < 1``, ``size`` below :data:`MIN_SIZE`, a negative seed, ``out``
        is a file or holds images, or ``out/images`` or ``out/masks`` already holds files.
    """
    # (in the words `phantom --n` and `--seed` refuse them: config.whole_number's)
    n = whole_number("phantom frame count n", n, 1)
    _check_size(size)
    seed = whole_number("phantom seed", seed, 0)
    out = as_path(out, "make_dataset (out)", what="a dataset folder")
    if out.exists() and not out.is_dir():
        raise UltrasegError("phantom output exists and is not a folder", out)
    for folder in (out / "images", out / "masks"):
        if folder.exists() and not folder.is_dir():
            raise UltrasegError("exists and is not a folder: choose a new or empty folder",
                                folder)
        if folder.is_dir() and any(folder.iterdir()):
            raise UltrasegError(
                "already contains files; refusing to overwrite: choose a new or empty folder",
                folder)
    # at any depth (patient folders): the folders layout would leave them unread
    marked: dict[Path, bool] = {}     # (ultraseg's own output folders hold none of theirs)
    theirs = [p for p in walk_files(out) if is_image_file(p)
              and not in_output_folder(p, out, marked)] if out.is_dir() else []
    if theirs:
        raise UltrasegError(f"already holds images (first: {theirs[0]}); the phantom set would "
                            "hide them: choose a new or empty folder", out)
    # written into a hidden folder and moved into place at the end: an interrupted run
    # leaves no half set in the way of the next (the hidden folder's readers skip; removed
    # as the run stops, or, where a kill left it, by the next run once its writer has ended)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".phantom-*.tmp"):
        if not _running(stale.name.split("-")[1]):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".phantom-{os.getpid()}-", suffix=".tmp", dir=out))
    emptied, moved = [], []
    try:
        n_subjects, n_empty = _write_set(staging, int(n), int(size), int(seed))
        for name in ("images", "masks"):  # onto an empty folder of the name, if one is there
            if (out / name).is_dir() and not (out / name).is_symlink():
                (out / name).rmdir()        # (empty, checked above: Windows replaces no folder)
                emptied.append(out / name)
            _move(staging / name, out / name, out)
            moved.append(out / name)
    except BaseException:   # Ctrl-C, a full disk: no hidden half set left behind for good
        shutil.rmtree(staging, ignore_errors=True)
        for folder in moved:    # nor images/ without masks/, which the next run would refuse
            shutil.rmtree(folder, ignore_errors=True)
        for folder in emptied:  # and the empty folders that were there, there again
            with contextlib.suppress(OSError):
                folder.mkdir()
        raise
    staging.rmdir()
    log.info("wrote %d phantom frames (%d subjects, %d with an empty mask, %dx%d px, seed %d) "
             "to %s", n, n_subjects, n_empty, size, size, seed, out)
    return out


def _write_set(staging: Path, n: int, size: int, seed: int) -> tuple[int, int]:
    """Write the ``n`` frames and masks into ``staging``'s ``images`` and ``masks``; return
    the number of subjects and of frames with an empty mask."""
    images, masks = staging / "images", staging / "masks"
    out = staging.parent        # (staging is made in the set's folder)
    images.mkdir()
    masks.mkdir()
    n_subjects = -(-n // FRAMES_PER_SUBJECT)
    n_empty = 0
    written = 0
    for subject in range(1, n_subjects + 1):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), subject]))
        frames = min(FRAMES_PER_SUBJECT, int(n) - written)
        block = (subject - 1) // len(_SUBJECT_COUNTS)
        counts = np.random.default_rng(np.random.SeedSequence([int(seed), 0, block])) \
            .permutation(_SUBJECT_COUNTS)
        count = int(counts[(subject - 1) % len(_SUBJECT_COUNTS)])
        scene = _draw_scene(rng, int(size), FRAMES_PER_SUBJECT, n_structures=count)
        for t in range(frames):
            image, mask, _ = _render(scene, t, rng)
            name = frame_name(written)
            _write_png(image, images / f"{name}.png", out)
            _write_png(mask * np.uint8(255), masks / f"{name}_mask.png", out)
            n_empty += int(not mask.any())
            written += 1
    return n_subjects, n_empty
