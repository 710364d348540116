"""Overlap-tile geometry: a valid U-Net's output for a tile is the CENTRAL out_tile x out_tile
of its input, so an identity-like network (centre crop) must give the image back exactly."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import ultraseg.tiling as tiling
from ultraseg.tiling import (
    crop_with_context,
    extract_tiles,
    pad_for_tiles,
    plan_tiles,
    predict_tiled,
    predict_tiled_many,
    stitch_tiles,
)


def centre_crop_batch(margin: int):
    """Stand-in for a valid U-Net: (n, C, t + 2m, t + 2m) -> (n, C, t, t), the central window."""

    def run(batch: np.ndarray) -> np.ndarray:
        return batch[:, :, margin : batch.shape[2] - margin, margin : batch.shape[3] - margin]

    return run


def test_plan_tiles_hand_computed():
    assert plan_tiles(10, 10, 4) == [(y, x) for y in (0, 4, 6) for x in (0, 4, 6)]
    assert plan_tiles(8, 4, 4) == [(0, 0), (4, 0)]
    assert plan_tiles(3, 9, 4) == [(0, 0), (0, 4), (0, 5)]  # h < tile: one row at 0


def test_plan_tiles_aligned_hand_computed():
    # starts on multiples of 4: 10-px windows step by 8, the last reaches past the image
    assert plan_tiles(30, 10, 10, align=4) == [(0, 0), (8, 0), (16, 0), (24, 0)]
    assert plan_tiles(10, 26, (10, 12), align=4) == [(0, 0), (0, 12), (0, 24)]
    assert plan_tiles(5, 5, 10, align=4) == [(0, 0)]
    assert plan_tiles(10, 10, 3, align=4) == plan_tiles(10, 10, 3)  # narrower than align


@pytest.mark.parametrize(
    "shape",
    [(5, 7), (1, 1), (20, 20), (23, 41), (68, 68), (100, 37)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
@pytest.mark.parametrize("out_tile,margin,align", [(20, 12, 1), (8, 30, 1), (20, 12, 8),
                                                   ((12, 20), 9, 4), (8, 30, 16)])
def test_identity_network_returns_image_exactly(shape, out_tile, margin, align):
    rng = np.random.default_rng(0)
    image = rng.random(shape, dtype=np.float32)
    got = predict_tiled(centre_crop_batch(margin), image, out_tile, margin, batch_size=3,
                        align=align)
    assert got.shape == (1, *shape)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got[0], image)


@pytest.mark.parametrize("top_left", [(0, 0), (0, 30), (31, 0), (31, 39), (13, 17), (20, 22)])
def test_bright_square_comes_back_in_place(top_left):
    h, w, side = 37, 45, 6
    image = np.zeros((h, w), np.float32)
    y, x = top_left
    image[y : y + side, x : x + side] = 1.0
    got = predict_tiled(centre_crop_batch(9), image, out_tile=16, margin=9)[0]
    ys, xs = np.nonzero(got)
    assert (ys.min(), xs.min(), ys.max(), xs.max()) == (y, x, y + side - 1, x + side - 1)
    np.testing.assert_array_equal(got, image)


def test_multichannel_image_and_output_channels():
    rng = np.random.default_rng(1)
    image = rng.random((2, 19, 26), dtype=np.float32)
    tiles, plan = extract_tiles(image, out_tile=10, margin=3)
    assert tiles.shape == (len(plan.positions), 2, 16, 16)
    outputs = tiles[:, :, 3:-3, 3:-3]
    np.testing.assert_array_equal(stitch_tiles(outputs, plan), image)


def test_windows_are_cut_a_batch_at_a_time():
    """Every input window of a canvas was built in memory at once: with a 20-px tile and 92 px
    of context (depth 4) about 160x the canvas (a 1000 x 1000 frame: 430 -> 945 MB peak), so a
    smaller --tile, which the out-of-memory hint recommends, took more host memory. Windows are
    cut batch_size at a time and their outputs added in as they come."""
    import tracemalloc

    image = np.random.default_rng(3).random((200, 200), dtype=np.float32)
    margin, out_tile = 92, 20
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return centre_crop_batch(margin)(batch)

    every = len(plan_tiles(200, 200, out_tile, align=16))
    window = (out_tile + 2 * margin) ** 2 * 4                 # bytes of one float32 window
    tracemalloc.start()
    try:
        got = predict_tiled(run, image, out_tile, margin, batch_size=4, align=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got[0], image)
    assert sum(sizes) == every and max(sizes) == 4
    assert every * window > 25e6                               # all at once: 28 MB
    assert peak < 10 * image.nbytes + 8 * window, peak         # the canvas's buffers, 4 windows


def test_the_windows_of_several_images_are_batched_together():
    """Windows of several images of one shape run batch_size at a time across the images (a
    batch may hold the last windows of one and the first of the next), each image's outputs
    stitched into its own map."""
    images = np.random.default_rng(4).random((3, 2, 30, 40), dtype=np.float32)
    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        sizes.append(len(batch))
        return centre_crop_batch(7)(batch)

    got = predict_tiled_many(run, images, (20, 24), 7, batch_size=4, align=4)
    assert len(plan_tiles(30, 40, (20, 24), align=4)) == 4      # 12 windows in all
    assert sizes == [4, 4, 4]
    np.testing.assert_array_equal(np.stack(got), images)
    sizes.clear()
    got = predict_tiled_many(run, images, 20, 7, batch_size=5)   # 3 x 4 windows, unaligned
    assert sizes == [5, 5, 2]
    np.testing.assert_array_equal(np.stack(got), images)
    with pytest.raises(ValueError, match="one shape"):
        predict_tiled_many(run, [images[0], images[1][:, :20]], 20, 7)


def test_extract_tiles_mirror_context():
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    tiles, plan = extract_tiles(image, out_tile=4, margin=2)
    assert plan.positions == ((0, 0),)
    assert plan.padded_shape == (4, 4) and plan.in_shape == (8, 8)
    # Reflect padding (edge pixel not repeated): row -1 is row 1, column -1 is column 1.
    assert tiles.shape == (1, 1, 8, 8)
    assert tiles[0, 0, 1, 1] == image[1, 1]
    assert tiles[0, 0, 2, 1] == image[0, 1]
    np.testing.assert_array_equal(tiles[0, 0, 2:5, 2:6], image)


def test_stitch_averages_overlaps():
    _, plan = extract_tiles(np.zeros((1, 6), np.float32), out_tile=4, margin=0)
    assert plan.positions == ((0, 0), (0, 2))
    outputs = np.stack([np.full((1, 4, 4), 1.0), np.full((1, 4, 4), 3.0)]).astype(np.float32)
    np.testing.assert_array_equal(stitch_tiles(outputs, plan)[0, 0], [1, 1, 2, 2, 3, 3])


def test_stitch_rejects_wrong_shape():
    _, plan = extract_tiles(np.zeros((10, 10), np.float32), out_tile=4, margin=1)
    with pytest.raises(ValueError, match=r"\(9, C, 4, 4\)"):
        stitch_tiles(np.zeros((9, 1, 5, 5), np.float32), plan)


@pytest.mark.parametrize("y,x", [(0, 0), (0, 25), (12, 3), (24, 25)])
def test_crop_with_context_centre_is_the_window(y, x):
    rng = np.random.default_rng(2)
    image = rng.random((32, 33), dtype=np.float32)
    t, m = 8, 11  # margin larger than the distance to the border
    padded = pad_for_tiles(image, m)
    assert padded.shape == (32 + 2 * m, 33 + 2 * m)
    window = crop_with_context(padded, y, x, t, m)
    assert window.shape == (t + 2 * m, t + 2 * m)
    np.testing.assert_array_equal(window[m : m + t, m : m + t], image[y : y + t, x : x + t])


def test_crop_with_context_out_of_bounds():
    padded = pad_for_tiles(np.zeros((10, 10), np.float32), 2)
    with pytest.raises(ValueError, match="does not fit"):
        crop_with_context(padded, 5, 0, 8, 2)


def test_pad_for_tiles_margin_larger_than_image():
    padded = pad_for_tiles(np.array([[0.0, 1.0, 2.0]]), 4)
    assert padded.shape == (9, 11)
    np.testing.assert_array_equal(padded[4], [0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2])


def test_tiling_does_not_import_torch():
    tree = ast.parse(Path(tiling.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert "torch" not in imported


@pytest.mark.parametrize("depth, shape, tile", [(2, (45, 61), 12), (3, (36, 36), 12),
                                                (3, (50, 29), 20), (2, (17, 23), 8)])
def test_aligned_tiles_give_one_windows_values_for_a_valid_unet(depth, shape, tile):
    """Tiles stepping by their own side met the max-pooling grid at another offset each: 0.47
    apart from one window on a random depth-3 net. Starting every window on the grid gives the
    values of one window over the whole image."""
    torch = pytest.importorskip("torch")
    from ultraseg.config import ModelConfig
    from ultraseg.geometry import context_margin, nearest_valid_output
    from ultraseg.model import build_model

    torch.manual_seed(0)
    net = build_model(ModelConfig(variant="valid", width=2, depth=depth)).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.ascontiguousarray(batch))).numpy()

    m, tile = context_margin(depth), nearest_valid_output(tile, depth)
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    one = predict_tiled(run, image, (nearest_valid_output(shape[0], depth),
                                     nearest_valid_output(shape[1], depth)), m)
    tiled = predict_tiled(run, image, tile, m, batch_size=2, align=2**depth)
    assert len(plan_tiles(*shape, tile, align=2**depth)) > 1
    np.testing.assert_allclose(tiled, one, atol=1e-5)
