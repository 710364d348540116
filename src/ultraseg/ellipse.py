"""Direct least-squares ellipse fit (Fitzgibbon, Pilu & Fisher 1999, in the numerically
stable form of Halir & Flusser 1998): :func:`fit_ellipse`.

A module of its own because two stages use it: :mod:`ultraseg.measure` fits heads with it,
and :mod:`ultraseg.preprocess` fills an outline cut by the frame with it, which decides the
masks the training cache holds (:data:`ultraseg.data.DECODING_CODE` hashes this file, not
the whole of measure). Numpy only.
"""

from __future__ import annotations

import math

import numpy as np


#: How much larger than its points a fitted ellipse may be (:func:`fit_ellipse`): the visible
#: arc of a head cut at both sides spans most of its width; nearly straight lines do not.
MAX_FIT_SPREAD = 5.0


def fit_ellipse(points: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Direct least-squares ellipse fit to points float (K, 2) of (x, y).

    Halir & Flusser's stable form of Fitzgibbon's fit, on centred and scaled coordinates.
    Returns ``(cx, cy, a, b, angle_deg)`` with semi-axes ``a >= b`` and the angle of the major
    axis from +x towards +y in [0, 180), or ``None`` with fewer than 6 points, no ellipse, or
    an ellipse whose major semi-axis exceeds :data:`MAX_FIT_SPREAD` times the points' largest
    distance from their mean: a degenerate fit to nearly straight lines (a band crossing the
    frame, its ends cut off) that rounding lets pass as an ellipse kilometres long.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 6:
        return None
    mean = pts.mean(axis=0)
    scale = float(np.sqrt(((pts - mean) ** 2).sum(axis=1).mean()))
    if not np.isfinite(scale) or scale <= 0:
        return None
    x = (pts[:, 0] - mean[0]) / scale
    y = (pts[:, 1] - mean[1]) / scale
    d1 = np.column_stack([x * x, x * y, y * y])
    d2 = np.column_stack([x, y, np.ones_like(x)])
    s1, s2, s3 = d1.T @ d1, d1.T @ d2, d2.T @ d2
    try:
        t = -np.linalg.solve(s3, s2.T)
    except np.linalg.LinAlgError:
        return None
    m = s1 + s2 @ t
    # Multiply by the inverse of the constraint matrix [[0, 0, 2], [0, -1, 0], [2, 0, 0]].
    m = np.vstack([m[2] / 2.0, -m[1], m[0] / 2.0])
    with np.errstate(all="ignore"):
        _, vecs = np.linalg.eig(m)
    vecs = np.real(vecs)
    cond = 4.0 * vecs[0] * vecs[2] - vecs[1] ** 2
    ok = np.nonzero(cond > 0)[0]
    if len(ok) == 0:
        return None
    a1 = vecs[:, ok[np.argmax(cond[ok])]]
    conic = np.concatenate([a1, t @ a1])
    geom = _conic_to_geometric(conic)
    if geom is None:
        return None
    cx, cy, a, b, angle = geom
    if a > MAX_FIT_SPREAD * float(np.sqrt(x * x + y * y).max()):
        return None
    return (float(cx * scale + mean[0]), float(cy * scale + mean[1]), a * scale, b * scale, angle)


def _conic_to_geometric(c: np.ndarray) -> tuple[float, float, float, float, float] | None:
    """Conic ``A x^2 + B xy + C y^2 + D x + E y + F = 0`` -> (cx, cy, a, b, angle_deg)."""
    A, B, C, D, E, F = (float(v) for v in c)
    q = np.array([[A, B / 2.0], [B / 2.0, C]])
    try:
        centre = np.linalg.solve(2.0 * q, [-D, -E])
    except np.linalg.LinAlgError:
        return None
    f0 = F + (D * centre[0] + E * centre[1]) / 2.0
    lam, vec = np.linalg.eigh(q)
    # Normalise the sign so the quadratic form is positive definite.
    if lam[0] < 0 and lam[1] < 0:
        lam, f0 = -lam, -f0
    if not (lam[0] > 0 and lam[1] > 0 and f0 < 0):
        return None
    order = np.argsort(lam)            # smallest eigenvalue <-> major axis
    lam, vec = lam[order], vec[:, order]
    axes = np.sqrt(-f0 / lam)
    major = vec[:, 0]
    angle = math.degrees(math.atan2(major[1], major[0])) % 180.0
    return float(centre[0]), float(centre[1]), float(axes[0]), float(axes[1]), angle
