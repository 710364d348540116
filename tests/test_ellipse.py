"""The direct least-squares ellipse fit (ultraseg.ellipse), checked against ellipses whose
centre, semi-axes and angle are known: points on the curve itself, and the boundary pixels of
a rasterised ellipse; the circumference measure takes from the fit, against the exact one."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ultraseg.ellipse import MAX_FIT_SPREAD, fit_ellipse
from ultraseg.measure import ellipse_circumference


def _on_curve(cx, cy, a, b, angle_deg, n=50, start=0.0, stop=2 * math.pi) -> np.ndarray:
    """Points (x, y) on the ellipse, at parameters from ``start`` to ``stop``."""
    t = np.linspace(start, stop, n, endpoint=False)
    th = math.radians(angle_deg)
    x, y = a * np.cos(t), b * np.sin(t)
    return np.column_stack([cx + x * math.cos(th) - y * math.sin(th),
                            cy + x * math.sin(th) + y * math.cos(th)])


def _raster(cx, cy, a, b, angle_deg, shape=(120, 140)) -> np.ndarray:
    """A filled ellipse: the pixels whose centres lie inside it, bool (H, W)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    th = math.radians(angle_deg)
    u = (xx - cx) * math.cos(th) + (yy - cy) * math.sin(th)
    v = -(xx - cx) * math.sin(th) + (yy - cy) * math.cos(th)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def _boundary(mask: np.ndarray) -> np.ndarray:
    """(x, y) of the mask's pixels with a 4-neighbour outside it."""
    pad = np.pad(mask, 1)
    inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    ys, xs = np.nonzero(mask & ~inner)
    return np.column_stack([xs, ys]).astype(np.float64)


def _angle_apart(a: float, b: float) -> float:
    """Degrees between two axis directions (angles mod 180)."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


@pytest.mark.parametrize("cx, cy, a, b, angle", [
    (50.0, 40.0, 30.0, 12.0, 0.0),
    (10.5, -3.0, 8.0, 5.0, 37.0),
    (200.0, 150.0, 90.0, 60.0, 120.0),
    (0.0, 0.0, 3.0, 2.9, 170.0),
])
def test_points_on_an_ellipse_give_it_back(cx, cy, a, b, angle) -> None:
    got = fit_ellipse(_on_curve(cx, cy, a, b, angle))
    assert got is not None
    gcx, gcy, ga, gb, gangle = got
    assert (gcx, gcy, ga, gb) == pytest.approx((cx, cy, a, b), rel=1e-7, abs=1e-7)
    assert 0.0 <= gangle < 180.0 and _angle_apart(gangle, angle) < 1e-5


def test_an_arc_of_an_ellipse_gives_the_whole_ellipse() -> None:
    """A head cut by the frame's edge: the visible arc alone fixes the ellipse."""
    got = fit_ellipse(_on_curve(60.0, 50.0, 40.0, 25.0, 20.0, n=40, start=0.3, stop=4.0))
    assert got is not None
    assert got[:4] == pytest.approx((60.0, 50.0, 40.0, 25.0), rel=1e-6)
    assert _angle_apart(got[4], 20.0) < 1e-4


def test_a_circle_gives_equal_axes() -> None:
    cx, cy, a, b, _ = fit_ellipse(_on_curve(5.0, 7.0, 11.0, 11.0, 0.0))
    assert (cx, cy, a, b) == pytest.approx((5.0, 7.0, 11.0, 11.0), rel=1e-7)


@pytest.mark.parametrize("cx, cy, a, b, angle", [
    (70.0, 60.0, 40.0, 25.0, 0.0),
    (68.3, 57.6, 45.0, 20.0, 30.0),
    (71.0, 59.5, 35.0, 30.0, 105.0),
    (70.0, 60.0, 25.0, 25.0, 0.0),      # a disc
])
def test_a_rasterised_ellipse_gives_its_centre_axes_and_angle_within_a_pixel(
        cx, cy, a, b, angle) -> None:
    """The boundary pixels lie up to a pixel inside the true curve: the centre comes back
    within half a pixel, the semi-axes within one, the angle of an elongated one within a
    degree or two."""
    got = fit_ellipse(_boundary(_raster(cx, cy, a, b, angle)))
    assert got is not None
    gcx, gcy, ga, gb, gangle = got
    assert abs(gcx - cx) < 0.5 and abs(gcy - cy) < 0.5
    assert abs(ga - a) < 1.0 and abs(gb - b) < 1.0 and ga >= gb
    if a / b > 1.1:
        assert _angle_apart(gangle, angle) < 2.0


def test_the_major_axis_comes_first_and_the_angle_is_its_direction() -> None:
    """An ellipse taller than wide: a is the vertical semi-axis, at 90 degrees."""
    cx, cy, a, b, angle = fit_ellipse(_on_curve(0.0, 0.0, 4.0, 9.0, 0.0))
    assert (a, b) == pytest.approx((9.0, 4.0)) and angle == pytest.approx(90.0)


@pytest.mark.parametrize("points", [
    np.zeros((5, 2)) + np.arange(5)[:, None],                 # fewer than 6 points
    np.column_stack([np.arange(10.0), 2 * np.arange(10.0)]),  # a straight line
    np.ones((8, 2)),                                          # one point, repeated
    np.zeros((6, 3)),                                         # not (x, y)
])
def test_no_ellipse_is_none(points) -> None:
    assert fit_ellipse(points) is None


def test_nearly_straight_points_give_none_not_an_ellipse_kilometres_long() -> None:
    """A band crossing the frame: two almost straight edges."""
    x = np.linspace(0.0, 100.0, 30)
    points = np.concatenate([np.column_stack([x, 1e-6 * (x - 50) ** 2]),
                             np.column_stack([x, 10.0 - 1e-6 * (x - 50) ** 2])])
    got = fit_ellipse(points)
    spread = float(np.sqrt(((points - points.mean(0)) ** 2).sum(1)).max())
    assert got is None or got[2] <= MAX_FIT_SPREAD * spread


def _exact_circumference(a: float, b: float) -> float:
    """The arc length of the ellipse, by the trapezoid rule over a whole period (exact to
    rounding for a smooth periodic integrand at this many points)."""
    t = np.linspace(0.0, 2 * math.pi, 20000, endpoint=False)
    return float(np.mean(np.hypot(a * np.sin(t), b * np.cos(t))) * 2 * math.pi)


@pytest.mark.parametrize("a, b, rel", [
    (10.0, 10.0, 1e-12), (10.0, 8.0, 1e-10), (50.0, 30.0, 1e-8), (40.0, 10.0, 1e-6),
    (100.0, 1.0, 5e-4)])
def test_circumference_is_ramanujans_second_approximation(a, b, rel) -> None:
    """Ramanujan's second approximation: exact for a circle, within 4e-4 of the arc length
    even for a segment (b -> 0: pi 14/11 a for 4 a), far closer for head-like shapes."""
    h = (a - b) ** 2 / (a + b) ** 2
    ramanujan = math.pi * (a + b) * (1 + 3 * h / (10 + math.sqrt(4 - 3 * h)))
    got = ellipse_circumference(a, b)
    assert isinstance(got, float) and got == pytest.approx(ramanujan, rel=1e-15)
    assert got == pytest.approx(_exact_circumference(a, b), rel=rel)
    assert ellipse_circumference(b, a) == pytest.approx(got, rel=1e-15)


def test_circumference_takes_arrays_and_is_zero_for_a_point() -> None:
    got = ellipse_circumference(np.array([3.0, 0.0]), np.array([[3.0], [0.0]]))
    assert got.shape == (2, 2) and got[1, 1] == 0.0
    assert got[0, 0] == pytest.approx(2 * math.pi * 3.0)
