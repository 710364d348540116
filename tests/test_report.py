"""Tests of the report stage: overlay colours, PNG figures, the self-contained HTML page."""
from __future__ import annotations

import html
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ultraseg import report
from ultraseg.report import (
    BOTH_COLOR,
    PRED_COLOR,
    TRUTH_COLOR,
    overlay,
    pick_examples,
    plot_curves,
    plot_predictions,
    plot_samples,
    write_html,
)


def _square(shape: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    m[top:top + size, left:left + size] = True
    return m


def _frames(n: int, shape: tuple[int, int] = (40, 48)) -> tuple[list, list, list]:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    truths = [_square(shape, 5 + i, 6, 15) for i in range(n)]
    preds = [_square(shape, 7 + i, 8, 15) for i in range(n)]
    return images, truths, preds


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.verify()
    assert not list(path.parent.glob(f".{path.name}.*.tmp"))


def test_overlay_outline_colours_of_known_squares() -> None:
    image = np.full((20, 20), 100, dtype=np.uint8)
    truth = _square(image.shape, 4, 4, 8)  # rows/cols 4..11
    pred = _square(image.shape, 4, 4, 6)  # rows/cols 4..9: shares the top-left corner edges
    out = overlay(image, pred, truth)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert np.array_equal(image, np.full((20, 20), 100))  # input left untouched

    t_edge = truth.copy()
    t_edge[5:11, 5:11] = False
    p_edge = pred.copy()
    p_edge[5:9, 5:9] = False
    both = t_edge & p_edge
    assert both.any()
    assert (out[both] == BOTH_COLOR).all()
    assert (out[p_edge & ~both] == PRED_COLOR).all()
    assert (out[t_edge & ~both] == TRUTH_COLOR).all()
    gray = ~(t_edge | p_edge)  # interiors and background
    assert (out[gray] == 100).all()


def test_overlay_colours_differ_in_lightness_and_agreement_is_no_grey() -> None:
    """Truth (sky blue) and prediction (orange) had one lightness, the same grey on a
    monochrome monitor or a print; pixels on both were white, lost on a bright echo."""
    image = np.full((20, 20), 230, dtype=np.uint8)          # a bright echo
    out = overlay(image, _square(image.shape, 4, 4, 6), _square(image.shape, 4, 4, 8))
    grey = np.asarray(Image.fromarray(out).convert("L")).astype(int)
    drawn = {name: grey[np.all(out == colour, axis=-1)]
             for name, colour in (("pred", PRED_COLOR), ("truth", TRUTH_COLOR),
                                  ("both", BOTH_COLOR))}
    assert all(v.size for v in drawn.values())
    levels = {name: int(v[0]) for name, v in drawn.items()}
    for a, b in (("pred", "truth"), ("pred", "both"), ("truth", "both")):
        assert abs(levels[a] - levels[b]) >= 40, levels        # apart in greyscale
    assert max(BOTH_COLOR) - min(BOTH_COLOR) >= 100            # a colour, not an echo's grey


def test_overlay_single_mask_none_and_edges() -> None:
    image = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(overlay(image, None), np.repeat(image[:, :, None], 3, axis=2))
    full = np.ones((8, 8), dtype=np.uint8)  # nonzero = inside; the array edge closes the outline
    out = overlay(image, full)
    assert (out[0, :] == PRED_COLOR).all() and (out[:, -1] == PRED_COLOR).all()
    assert np.array_equal(out[1:-1, 1:-1, 0], image[1:-1, 1:-1])
    thick = overlay(image, None, full, thickness=2)
    assert (thick[1, 1:-1] == TRUTH_COLOR).all() and (thick[2, 2] == image[2, 2]).all()
    with pytest.raises(ValueError, match="shape"):
        overlay(image, np.zeros((4, 4), dtype=bool))


@pytest.mark.parametrize("thickness", [1, 2])
def test_outline_equals_mask_minus_scipy_erosion(thickness: int) -> None:
    from scipy import ndimage

    rng = np.random.default_rng(thickness)
    for _ in range(10):
        m = ndimage.binary_opening(rng.random((23, 31)) > 0.4)
        expected = m & ~ndimage.binary_erosion(m, iterations=thickness, border_value=0)
        assert np.array_equal(report.outline(m, thickness), expected)
    assert not report.outline(np.zeros((5, 5), dtype=bool)).any()


def test_import_does_not_load_matplotlib() -> None:
    code = "import sys, ultraseg.report; print('matplotlib' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


@pytest.mark.parametrize(
    "history",
    [
        [{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.3}],
        [
            {"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.3, "lr": 1e-3},
            {"epoch": 2, "train_loss": 0.6, "val_loss": math.nan, "val_dice": 0.5},
            {"epoch": 3, "train_loss": 0.5, "val_loss": 0.55, "val_dice": None},
        ],
        [],
    ],
    ids=["one-epoch", "nan-values", "empty"],
)
def test_plot_curves_writes_png(tmp_path: Path, history: list[dict]) -> None:
    path = tmp_path / "curve.png"
    plot_curves(history, path)
    _assert_png(path)


def test_the_validation_side_s_size_tells_a_resumed_older_run_s_sampled_epoch(
        tmp_path: Path) -> None:
    """An older run's rows hold no val_frames; resumed, its one new epoch was validated on a
    sample of 2 of the 10 frames. Without the side's size that sample is the most any row
    records and reads as full (best epoch 2, drawn solid); curve.png is drawn with the size
    training knows, as training's own best rule reads it (a re-read of f08cc19)."""
    from ultraseg.report import best_row

    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_dice": 0.5},
               {"epoch": 2, "train_loss": 0.9, "val_loss": 0.9, "val_dice": 0.9,
                "val_frames": 2}]
    assert best_row(history) == 1 and best_row(history, 10) == 0
    plot_curves(history, tmp_path / "guess.png")
    plot_curves(history, tmp_path / "told.png", n_val=10)
    a, b = (np.asarray(Image.open(tmp_path / n).convert("L"), dtype=float)
            for n in ("guess.png", "told.png"))
    assert a.shape == b.shape and (a != b).sum() > 20


def test_plot_curves_draws_the_history_it_is_given(tmp_path: Path) -> None:
    """Two histories that differ in one validation Dice give different pictures (a figure that
    ignored its data, or dropped the Dice curve, would not)."""
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": 0.2 * e}
               for e in (1, 2, 3)]
    changed = [dict(r) for r in history]
    changed[1]["val_dice"] = 0.1
    plot_curves(history, tmp_path / "a.png")
    plot_curves(changed, tmp_path / "b.png")
    a, b = (np.asarray(Image.open(tmp_path / n).convert("L"), dtype=float)
            for n in ("a.png", "b.png"))
    assert a.shape == b.shape and (a != b).sum() > 20


def test_the_best_epoch_marked_is_the_one_training_keeps(tmp_path: Path) -> None:
    """On a tie in validation Dice training keeps the lower validation loss; the curve and
    the metrics table marked the first epoch reaching that Dice, not the checkpoint's."""
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": loss, "val_dice": d}
               for e, d, loss in ((1, 0.0, 0.9), (2, 0.0, 0.7), (3, 1.0, 0.45),
                                  (4, 1.0, 0.37), (5, 1.0, 0.40), (6, math.nan, 0.1))]
    assert report.best_row(history) == 3
    assert report.best_row(history[:2]) == 1          # Dice 0 throughout: the lower loss
    assert report.best_row([{"epoch": 1, "val_dice": None}]) == -1
    page = write_html(tmp_path, title="t", summary={}, config={}, history=history
                      ).read_text(encoding="utf-8")
    assert page.count("<tr class=best>") == 1
    assert "<tr class=best><td class=num>4</td>" in page
    # the Dice panel's star: the rule's epoch (4), not the first with the best Dice (3)
    marked = [dict(r) for r in history]
    plot_curves(history, tmp_path / "a.png")
    first = [dict(r) for r in history]
    first[3]["val_dice"] = first[4]["val_dice"] = 0.999999     # epoch 3 best outright
    last = [dict(r) for r in history]
    last[2]["val_dice"] = 0.999999                               # epoch 4 best outright
    plot_curves(first, tmp_path / "first.png")
    plot_curves(last, tmp_path / "last.png")
    a, f, g = (np.asarray(Image.open(tmp_path / n).convert("L"), dtype=float)
               for n in ("a.png", "first.png", "last.png"))
    right = slice(a.shape[1] // 2, None)                         # the Dice panel
    assert (a[:, right] != f[:, right]).sum() > 20
    assert (a[:, right] != g[:, right]).sum() < (a[:, right] != f[:, right]).sum()
    assert marked == history


def test_the_epoch_the_caller_kept_is_marked_where_it_is_given(tmp_path: Path) -> None:
    """A run whose validation could not choose keeps its last epoch; the curve and table
    marked another (the lowest validation loss of an all-zero Dice) as best."""
    history = [{"epoch": e, "train_loss": 1.0, "val_loss": loss, "val_dice": 0.0}
               for e, loss in ((1, 1.3), (2, 1.4), (3, 1.5))]
    assert report.kept_row(history, None) == report.best_row(history) == 0
    assert report.kept_row(history, 3) == 2
    page = write_html(tmp_path, title="t", summary={}, config={}, history=history,
                      best_epoch=3).read_text(encoding="utf-8")
    assert page.count("<tr class=best>") == 1 and "<tr class=best><td class=num>3</td>" in page
    plot_curves(history, tmp_path / "rule.png")
    plot_curves(history, tmp_path / "kept.png", best_epoch=3)
    a, b = (np.asarray(Image.open(tmp_path / n).convert("L"), dtype=float)
            for n in ("rule.png", "kept.png"))
    right = slice(a.shape[1] // 2, None)                         # the Dice panel moves
    assert (a[:, right] != b[:, right]).sum() > 20


def test_without_validation_both_panels_span_the_epochs(tmp_path: Path) -> None:
    """Without a validation split the Dice panel's axis read 0..1 while the loss panel's read
    the epochs: the panels share their epoch axis."""
    import unittest.mock

    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": None, "val_dice": None}
               for e in (1, 2, 3)]
    limits = []
    real = report._save

    def spy(fig, path):
        limits.extend(ax.get_xlim() for ax in fig.axes)
        real(fig, path)

    with unittest.mock.patch.object(report, "_save", spy):
        plot_curves(history, tmp_path / "c.png")
    loss, dice = limits[:2]
    assert dice == loss and loss[0] >= 0.5 and loss[1] <= 3.5


def test_frame_names_are_drawn_literally(tmp_path: Path) -> None:
    """Two '$' in a name made matplotlib parse it as math and fail, ending a finished training
    run at its report (exit 1, no report.html)."""
    images, truths, preds = _frames(2)
    titles = ["scan_$1_$2", "a$^$b"]
    plot_samples(images, truths, tmp_path / "s.png", titles=titles)
    plot_predictions(images, truths, preds, tmp_path / "p.png", titles)
    _assert_png(tmp_path / "s.png")
    _assert_png(tmp_path / "p.png")



def test_figures_are_drawn_alike_whatever_the_caller_s_matplotlib_settings(tmp_path) -> None:
    """A notebook's (or a matplotlibrc's) rcParams were the report's: with text.usetex on
    and no LaTeX installed, a finished training failed at its report (no report.html, and
    --resume failed the same way). The figures are now drawn in matplotlib's default style,
    the same whatever the caller set."""
    import matplotlib

    images, truths, preds = _frames(2)
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": 0.2 * e}
               for e in (1, 2)]

    def draw(folder: Path) -> list[bytes]:
        folder.mkdir()
        plot_curves(history, folder / "curve.png")
        plot_samples(images, truths, folder / "sample.png", titles=["a_1", "b"])
        plot_predictions(images, truths, preds, folder / "seg_sample.png", ["a_1", "b"])
        return [(folder / n).read_bytes() for n in ("curve.png", "sample.png", "seg_sample.png")]

    plain = draw(tmp_path / "plain")
    with matplotlib.rc_context({"font.size": 31, "lines.linewidth": 9,
                                "figure.facecolor": "red", "axes.grid": True}):
        assert draw(tmp_path / "styled") == plain
    with matplotlib.rc_context({"text.usetex": True}):
        assert draw(tmp_path / "usetex") == plain
    assert not matplotlib.rcParams["text.usetex"]      # the caller's settings are back

def test_names_with_bytes_that_are_no_utf8_are_shown(tmp_path: Path) -> None:
    """A frame or folder name with bytes that are no UTF-8 (Python's surrogate escapes) ended a
    finished run at its report: matplotlib refused the title, the page could not be encoded."""
    name = b"scan_\xfe".decode("utf-8", "surrogateescape")
    images, truths, preds = _frames(1)
    plot_samples(images, truths, tmp_path / "sample.png", titles=[name])
    plot_predictions(images, truths, preds, tmp_path / "seg_sample.png", [name])
    out = write_html(tmp_path, title=f"run {name}", summary={"dataset": f"/data/{name}"},
                     config={"data": {"path": f"/data/{name}"}}, history=[])
    page = out.read_text(encoding="utf-8")
    assert "/data/scan_\ufffd" in page and "run scan_\ufffd" in page
    assert page.count('<img src="data:image/png;base64,') == 2


def test_plot_samples_and_predictions_write_png(tmp_path: Path) -> None:
    images, truths, preds = _frames(3)
    images[1] = images[1].astype(np.float32) / 255.0  # float frames are scaled for display
    plot_samples(images, truths, tmp_path / "sample.png", titles=["a", "b", "c"])
    _assert_png(tmp_path / "sample.png")
    plot_predictions(images, truths, preds, tmp_path / "seg_sample.png")
    _assert_png(tmp_path / "seg_sample.png")
    with pytest.raises(ValueError, match="length"):
        plot_samples(images, truths[:2], tmp_path / "bad.png")


def test_write_html_self_contained_and_escaped(tmp_path: Path) -> None:
    history = [
        {"epoch": 1, "train_loss": 0.91, "val_loss": 0.82, "val_dice": 0.3125},
        {"epoch": 2, "train_loss": 0.61, "val_loss": math.nan, "val_dice": 0.5625},
    ]
    plot_curves(history, tmp_path / "curve.png")
    images, truths, preds = _frames(1)
    plot_predictions(images, truths, preds, tmp_path / "seg_sample.png")
    # sample.png deliberately missing: skipped without error
    summary = {"best epoch": 2, "best val Dice": 0.5625, "device": "cpu",
               "checkpoint": "runs/x/best.pt"}
    config = {"data": {"root": "<script>alert(1)</script>"}, "train": {"epochs": 2}}
    out = write_html(tmp_path, title="Run <x>", summary=summary, config=config,
                     history=history, evaluation={"dice_mean": 0.71, "n": 12})
    assert out == tmp_path / "report.html"
    page = out.read_text(encoding="utf-8")
    assert page.count('<img src="data:image/png;base64,') == 2
    for value in ("best epoch", "0.5625", "cpu", "runs/x/best.pt", "dice_mean", "0.71"):
        assert value in page
    assert "<td class=num>0.91</td>" in page and "<td class=num>0.61</td>" in page
    assert "<tr class=best>" in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Run &lt;x&gt;" in page
    assert '"epochs": 2' in page


def test_write_html_says_yes_or_no_for_a_boolean(tmp_path: Path) -> None:
    """The report's tables showed Python's True / False (`outline masks filled: False`)."""
    page = write_html(tmp_path, title="t", summary={"stopped": True}, config={}, history=[],
                      evaluation={"outline masks filled": False}).read_text(encoding="utf-8")
    assert "<tr><th>stopped</th><td>yes</td></tr>" in page
    assert "<tr><th>outline masks filled</th><td>no</td></tr>" in page
    assert "True" not in page and "False" not in page


def test_write_html_without_figures_or_evaluation(tmp_path: Path) -> None:
    out = write_html(tmp_path, title="t", summary={}, config={}, history=[])
    page = out.read_text(encoding="utf-8")
    assert "data:image" not in page and "Evaluation" not in page
    assert "No epochs recorded" in page


def test_write_html_shows_the_run_s_warnings_near_the_top_escaped(tmp_path: Path) -> None:
    """The warnings training gave ('val Dice 0.8 is the empty frames' alone') change what the
    page's numbers mean: they stand in a section of their own before the summary, escaped,
    each once; a page with none has no such section."""
    warned = ["6 of the 6 masks look <inverted>", "the empty frames' alone",
              "6 of the 6 masks look <inverted>"]
    page = write_html(tmp_path, title="t", summary={"best val Dice": 0.8}, config={},
                      history=[], warnings=warned).read_text(encoding="utf-8")
    section = page[page.index("<h2>Warnings</h2>"):page.index("<h2>Summary</h2>")]
    assert section.count("<li>") == 2
    assert section.index("&lt;inverted&gt;") < section.index("the empty frames&#x27; alone")
    assert "<inverted>" not in page
    clean = write_html(tmp_path, title="t", summary={}, config={}, history=[],
                       warnings=[]).read_text(encoding="utf-8")
    assert "Warnings" not in clean


def test_write_html_ends_with_the_intended_use(tmp_path: Path) -> None:
    """A report looked like finished clinical output: nothing said research use only."""
    page = write_html(tmp_path, title="t", summary={"a": 1}, config={"b": 2},
                      history=[]).read_text(encoding="utf-8")
    footer = page.rindex("<footer")
    assert footer > page.index("Configuration")
    assert "research use only" in page[footer:].lower()
    assert "not a medical device" in page[footer:] and "diagnosis" in page[footer:]


def test_pick_examples_shows_the_best_median_and_worst_frames_and_the_worst_empty_one() -> None:
    dices = [0.5, 0.9, 0.1, 0.7, 0.3, 1.0, 0.0]
    empty = [False, False, False, False, False, True, True]
    areas = [10, 10, 10, 10, 10, 0, 40]
    assert pick_examples(dices, empty, areas) == [
        (1, "best"), (0, "median"), (2, "worst"), (6, "empty truth")]
    # no empty truths: every slot goes to the ranking, at evenly spaced ranks
    assert pick_examples([i / 10 for i in range(10)], [False] * 10, [1] * 10) == [
        (9, "best"), (6, "rank 4 of 10"), (3, "rank 7 of 10"), (0, "worst")]
    # fewer frames than slots; ties keep the earlier frame first
    assert pick_examples([0.4, 0.4], [False, False], [1, 1]) == [(0, "best"), (1, "worst")]
    # every empty frame predicted empty: still one shown (the first), as Dice 1
    assert pick_examples([0.2, 1.0, 1.0], [False, True, True], [5, 0, 0], n=2) == [
        (0, "median"), (1, "empty truth")]
    assert pick_examples([], [], []) == []
    with pytest.raises(ValueError, match="length"):
        pick_examples([0.1], [False, True], [1])


def _drawn(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the report stage draws, kept instead of written."""
    figures: list = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    return figures


def test_long_names_are_cut_to_the_panel_and_the_dice_gets_a_line(monkeypatch) -> None:
    """A clinic's file names (IM_0000_20230101_093012_LT) ran the four panel titles of
    seg_sample.png into each other, the Dice and the reason unreadable."""
    figures = _drawn(monkeypatch)
    images, truths, preds = _frames(2)
    long = "IM_0000_20230101_093012_LT_" * 3
    plot_predictions(images, truths, preds, "x.png", [f"{long}\n(best)", "short (worst)"])
    titles = [ax.get_title() for ax in figures[0].axes if ax.get_title()]
    first = titles[0].split("\n")
    assert len(first) == 2 and all(len(line) <= report.TITLE_CHARS for line in first)
    assert first[0].startswith("IM_0000_") and first[0].endswith("_LT_") and "\u2026" in first[0]
    assert first[1].startswith("(best)  Dice ")
    assert titles[1].startswith("short (worst)\nDice ")          # one line: the Dice its own
    assert report._fit("a" * 40) == "a" * 40 and len(report._fit("a" * 41)) == 40


def test_the_sample_figure_shows_frames_with_a_structure_and_one_empty() -> None:
    """sample.png showed the first four training frames, all with empty masks on a set
    sorted by subject: no outline to check against its frame."""
    assert report.pick_samples([False] * 6) == [0, 1, 2, 3]
    assert report.pick_samples([False, False, True, False, True, True, True]) == [0, 2, 4, 5]
    assert report.pick_samples([True] * 6) == [0, 1, 2, 3]
    assert report.pick_samples([False, True]) == [0, 1]
    assert report.pick_samples([False, True], n=1) == [1]
    assert report.pick_samples([]) == []


def test_curves_keep_a_least_dice_span_and_take_a_log_loss_axis(monkeypatch) -> None:
    """A Dice wobble of 0.005 filled the whole axis, looking like a peak; a first epoch's loss
    of 0.8 against 0.035 later flattened every epoch after it."""
    figures = _drawn(monkeypatch)
    history = [{"epoch": e, "train_loss": 0.8 / e ** 1.5, "val_loss": 0.9 / e ** 1.5,
                "val_dice": 0.970 + 0.005 * (e == 3)} for e in range(1, 6)]
    plot_curves(history, "c.png")
    loss_ax, dice_ax = figures[0].axes[:2]
    lo, hi = dice_ax.get_ylim()
    assert hi - lo >= report.MIN_DICE_SPAN and lo <= 0.970 and hi >= 0.975 and hi <= 1.01
    assert loss_ax.get_yscale() == "log"
    flat = [{**r, "train_loss": 0.5, "val_loss": 0.6, "val_dice": 0.3 + 0.1 * r["epoch"]}
            for r in history]
    plot_curves(flat, "d.png")
    loss_ax, dice_ax = figures[1].axes[:2]
    assert loss_ax.get_yscale() == "linear" and dice_ax.get_ylim()[1] >= 0.8


def test_an_ellipse_is_drawn_closed_on_its_curve_and_cut_to_the_frame() -> None:
    on = report.ellipse_pixels((60, 80), (40.0, 30.0, 25.0, 12.0, 30.0))
    from scipy import ndimage

    assert ndimage.label(on, structure=np.ones((3, 3)))[1] == 1        # closed, no gaps
    filled = ndimage.binary_fill_holes(on)
    assert filled.sum() == pytest.approx(math.pi * 25 * 12, rel=0.1)   # its area inside
    cut = report.ellipse_pixels((20, 80), (40.0, 30.0, 25.0, 12.0, 30.0))   # half off-frame
    assert cut.shape == (20, 80) and cut.any()
    assert report.ellipse_pixels((60, 80), (40, 30, 25, 12, 30), thickness=3).sum() > on.sum()


def _drawn_texts(monkeypatch) -> list[list[str]]:
    """Each figure saved from now on: its title and every axis title and legend entry."""
    texts: list[list[str]] = []
    save = report._save

    def keep(fig, path) -> None:
        found = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        for ax in fig.axes:
            found.append(ax.get_title())
            legend = ax.get_legend()
            found += [t.get_text() for t in legend.get_texts()] if legend else []
        texts.append(found)
        save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    return texts


def test_an_epoch_cut_short_is_drawn_hollow_and_named_partial(tmp_path, monkeypatch) -> None:
    """A time-limited run's last epoch (batch 2 of 5) was drawn as a complete one; only the
    table's `complete` column told. It is drawn hollow and the legends name it partial."""
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": 0.2 * e,
                "complete": e < 3} for e in (1, 2, 3)]
    texts = _drawn_texts(monkeypatch)
    plot_curves(history, tmp_path / "partial.png")
    plot_curves([{**r, "complete": True} for r in history], tmp_path / "whole.png")
    partial, whole = texts
    assert sum("epoch 3 (partial" in t for t in partial) == 2     # the losses' and the Dice's
    assert not any("partial" in t for t in whole)
    a, b = (np.asarray(Image.open(tmp_path / n).convert("L"), dtype=float)
            for n in ("partial.png", "whole.png"))
    assert a.shape == b.shape and np.abs(a - b).max() > 0


def test_the_curves_keep_their_colours_whether_or_not_an_epoch_was_cut_short(
        tmp_path, monkeypatch) -> None:
    """The partial epoch's marker took the next colour of matplotlib's cycle: validation loss
    was green in one run, orange (the best epoch's star) in another."""
    from matplotlib.colors import to_hex

    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": 0.2 * e,
                "complete": e < 3} for e in (1, 2, 3)]
    colours: list[dict[str, str]] = []
    save = report._save

    def keep(fig, path) -> None:
        colours.append({line.get_label(): to_hex(line.get_color())
                        for ax in fig.axes for line in ax.get_lines()})
        save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    plot_curves(history, tmp_path / "partial.png")
    plot_curves([{**r, "complete": True} for r in history], tmp_path / "whole.png")
    partial, whole = colours
    for label in ("train loss", "validation loss", "validation Dice"):
        assert partial[label] == whole[label], label
    star = next(c for name, c in whole.items() if name.startswith("best"))
    assert len({whole["train loss"], whole["validation loss"], whole["validation Dice"],
                star}) == 4


def test_the_curves_dice_says_it_is_before_post_processing(tmp_path, monkeypatch) -> None:
    """curve.png's 'validation Dice' (0.37) was taken for the report's post-processed Dice
    (0.65) once the PNG left the page whose caption tells them apart."""
    texts = _drawn_texts(monkeypatch)
    plot_curves([{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.3}],
                tmp_path / "curve.png")
    (found,) = texts
    assert any(t.startswith("validation Dice") and "training resolution" in t
               and "before post-processing" in t for t in found), found


def test_the_prediction_figure_s_title_says_the_predicted_area_is_tinted(tmp_path,
                                                                         monkeypatch) -> None:
    """seg_sample.png tints the predicted area orange, which its title did not say (the
    report's caption alone did): the PNG on its own showed an unexplained orange wash."""
    images, truths, preds = _frames(2)
    texts = _drawn_texts(monkeypatch)
    plot_predictions(images, truths, preds, tmp_path / "seg_sample.png", ["a", "b"],
                     what=report.VALIDATION_TITLE)
    plot_predictions(images, truths, preds, tmp_path / "p.png", ["a", "b"])
    for found in texts:
        assert "predicted area tinted orange" in found[0], found[0]
        assert found[0].count("tinted") == 1 and found[0].count(report.COLOURS) == 1, found[0]


def test_the_report_s_figures_say_what_they_show(tmp_path, monkeypatch) -> None:
    """The prediction figure's title said "predictions" and each caption was the file's name:
    nothing said these were validation frames, which chose the epoch and the post-processing,
    shown after that post-processing."""
    images, truths, preds = _frames(2)
    texts = _drawn_texts(monkeypatch)
    plot_predictions(images, truths, preds, tmp_path / "seg_sample.png", ["a", "b"],
                     what=report.VALIDATION_TITLE)
    assert texts[0][0].startswith("validation frames") and "post-processing" in texts[0][0]
    plot_predictions(images, truths, preds, tmp_path / "p.png", ["a", "b"])
    assert texts[1][0].startswith(f"predictions ({report.COLOURS})")  # the default stays
    plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_dice": 0.5}],
                tmp_path / "curve.png")
    page = write_html(tmp_path, title="t", summary={}, config={}, history=[]).read_text()
    captions = page.split("<figcaption>")[1:]
    assert [c.split(":")[0] for c in captions] == ["curve.png", "seg_sample.png"]
    assert "Validation frames" in captions[1] and "chose the epoch and the post-processing" \
        in captions[1] and "Learning curves" in captions[0]
    # each figure's alt text says what it shows (the caption's first sentence), not its name
    alts = [html.unescape(a.split('"')[0]) for a in page.split(' alt="')[1:]]
    assert alts == [report.CAPTIONS["curve.png"].split(". ")[0].rstrip("."),
                    report.CAPTIONS["seg_sample.png"].split(". ")[0].rstrip(".")]
    assert alts[0].startswith("Learning curves") and alts[1].startswith("Validation frames")
    page = write_html(tmp_path, title="t", summary={}, config={}, history=[],
                      captions={}).read_text()
    assert ' alt="curve.png"' in page                       # no caption: its name is all


def test_the_display_stretch_is_not_named_as_the_reading_rule() -> None:
    """report.to_uint8 (a min-max stretch for display) shared its name with io.base.to_uint8
    (the reading rule: [0, 1] floats times 255): importing the wrong one read a [0, 1] frame
    stretched, in silence. The display one is display_uint8."""
    from ultraseg.io.grey import to_uint8

    frame = np.array([[0.2, 0.4]])
    assert not hasattr(report, "to_uint8")
    np.testing.assert_array_equal(report.display_uint8(frame), [[0, 255]])
    np.testing.assert_array_equal(to_uint8(frame), [[51, 102]])


def test_a_prediction_filling_the_frame_shows_in_the_report_s_panels(tmp_path,
                                                                    monkeypatch) -> None:
    """A prediction that fills the frame was drawn as its outline alone, a 1-px orange border
    along the panel's edge that read as a picture frame: the report's panels tint the
    prediction's area lightly orange (the image still shows through; the outside and the
    truth's outline untouched). overlay itself keeps interiors grey unless asked."""
    image = np.full((20, 24), 100, dtype=np.uint8)
    full = np.ones(image.shape, dtype=bool)
    truth = _square(image.shape, 6, 6, 6)
    drawn: list[list[np.ndarray]] = []
    monkeypatch.setattr(report, "_draw_panels", lambda panels, *a: drawn.append(panels))
    plot_predictions([image, image], [truth, truth], [full, _square(image.shape, 2, 2, 4)],
                     tmp_path / "seg_sample.png")
    panel = drawn[0][0].astype(int)
    inside = panel[5:15, 15:20]                              # the prediction's, off the truth
    assert (inside != 100).any(axis=-1).all()                # tinted, every pixel
    assert (np.abs(inside - np.asarray(PRED_COLOR)) < np.abs(100 - np.asarray(PRED_COLOR))).all()
    assert (np.abs(inside - 100) <= 60).all()                # light: the image shows through
    t_edge = truth & ~_square(image.shape, 7, 7, 4)
    assert (drawn[0][0][t_edge] == TRUTH_COLOR).all()
    outside = drawn[0][1].astype(int)[10:, 10:]              # beyond the small prediction
    small_truth = truth[10:, 10:]
    assert (outside[~small_truth] == 100).all()
    assert (overlay(image, full)[1:-1, 1:-1] == 100).all()   # overlay's default: outline only


def test_the_report_s_raw_dice_and_time_rows_say_what_they_cover() -> None:
    """report.html's 'val Dice, original size' is the threshold-0.5 Dice of the network's plain
    output, while evaluate's raw Dice takes the test-time flip where it was chosen (0.2365
    against 0.228, a review), and its 'training time (s)' was the whole run (4.7 s, loading,
    epochs and the post-processing choice, against 0.89 s in the epochs). The rows now say
    so, and the epochs' own time (metrics.csv's seconds summed) stands beside the run's."""
    from ultraseg.report import RAW_DICE_ROW, time_rows

    assert "threshold 0.5" in RAW_DICE_ROW and "no flip" in RAW_DICE_ROW
    history = [{"epoch": 1, "seconds": 0.31}, {"epoch": 2, "seconds": 0.58}]
    rows = time_rows(4.74, history)
    assert list(rows.values()) == [4.7, 0.9]
    run_row, epochs_row = rows
    assert run_row.startswith("run time (s)") and "post-processing" in run_row
    assert epochs_row.startswith("epochs' time (s)")
    # a history that does not time every epoch (from an older run) gives the run's alone
    assert list(time_rows(4.74, [{"epoch": 1}, {"epoch": 2, "seconds": 0.5}])) == [run_row]


def _dice_panel(figure):
    """The Dice axes of a drawn curve figure, its legend's box, the kept epoch's star and the
    Dice curve, laid out as the PNG is (in display coordinates)."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    ax = figure.axes[1]
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    curve = next(line for line in ax.get_lines() if line.get_label() == "validation Dice")
    return ax, ax.get_legend().get_window_extent(renderer), star, curve, renderer


@pytest.mark.parametrize("dices, chosen", [([0.6, 0.8, 0.85, 0.84, 0.2], True),
                                           ([0.01, 0.0151], True),
                                           ([0.0, 0.0], False)])
def test_the_dice_legend_leaves_the_kept_epoch_and_the_last_epochs_in_sight(
        monkeypatch, dices, chosen) -> None:
    """The Dice legend sat at the lower right whatever the curve: a Dice collapsing after the
    best epoch (0.85 then 0.2), or staying low (the axis 0 to 0.1), ran under it, the kept
    epoch's star hidden; a Dice of 0 put the star half under the axis' edge."""
    figures = _drawn(monkeypatch)
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": d,
                "complete": True} for e, d in enumerate(dices, 1)]
    plot_curves(history, "c.png", chosen=chosen)
    ax, legend, star, curve, renderer = _dice_panel(figures[0])
    drawn = star.get_window_extent(renderer)
    assert not legend.overlaps(drawn), (legend, drawn)
    for x, y in ax.transData.transform(curve.get_xydata()[-2:]):
        assert not legend.padded(3).contains(x, y), (legend, x, y)
    frame = ax.get_window_extent(renderer)
    assert frame.y0 <= drawn.y0 and drawn.y1 <= frame.y1, (frame, drawn)


def test_the_kept_epoch_s_star_is_drawn_over_a_partial_epoch_s_hollow_marker(monkeypatch) -> None:
    """A time-limited run keeping its last, cut epoch showed a hollow circle with five star
    tips: the white-faced partial marker (zorder 3) was drawn over the star (zorder 2)."""
    figures = _drawn(monkeypatch)
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.1 / e, "val_dice": 0.2 * e,
                "complete": e < 3} for e in (1, 2, 3)]
    plot_curves(history, "c.png")
    ax = figures[0].axes[1]
    star = next(line for line in ax.get_lines() if line.get_marker() == "*")
    assert star.get_xydata().tolist() == [[3.0, pytest.approx(0.6)]]
    at_star = [line for line in ax.get_lines() if line is not star
               and any(np.allclose(p, star.get_xydata()[0]) for p in line.get_xydata())]
    hollow = [line for line in at_star if "partial" in line.get_label()]
    assert hollow and all(star.get_zorder() > line.get_zorder() for line in at_star)


@pytest.mark.parametrize("validated, chosen, expected", [
    (False, True, "CAPTIONS_NO_VALIDATION"), (False, False, "CAPTIONS_NO_VALIDATION"),
    (True, False, "CAPTIONS_NOT_CHOSEN"), (True, True, "CAPTIONS")])
def test_a_run_s_captions_are_chosen_in_one_place(validated, chosen, expected) -> None:
    """The end of training and a report written again on resume chose the caption set each by
    its own copy of the choice (the latter lacked the one of validation that chose nothing);
    both take :func:`report.captions_for`: no validation split wins over choosing nothing."""
    assert report.captions_for(validated, chosen) is getattr(report, expected)


def test_a_run_without_validation_has_its_own_curve_caption(tmp_path) -> None:
    """--val-fraction 0: report.html's caption and alt text said the figure showed the
    validation loss and Dice with the kept epoch starred; it shows the training loss alone."""
    caption = report.CAPTIONS_NO_VALIDATION["curve.png"]
    assert "training loss" in caption and "no validation split" in caption
    assert "validation loss" not in caption.replace("no validation loss", "")
    assert "starred" not in caption and "last epoch" in caption
    assert report.CAPTIONS_NO_VALIDATION["sample.png"] == report.CAPTIONS["sample.png"]
    plot_curves([{"epoch": 1, "train_loss": 1.0, "val_loss": None, "val_dice": None}],
                tmp_path / "curve.png")
    page = write_html(tmp_path, title="t", summary={}, config={}, history=[],
                      captions=report.CAPTIONS_NO_VALIDATION).read_text()
    (alt,) = [html.unescape(a.split('"')[0]) for a in page.split(' alt="')[1:]]
    assert alt.startswith("Learning curve") and "validation Dice" not in alt


def test_the_sample_figure_shows_frames_of_different_subjects_first() -> None:
    """sample.png showed the first four structure-holding training frames in split order:
    2_1 to 2_4 on phantom data, 1_1 to 1_4 on nerve, near-duplicates of one subject, where a
    mix-up of frames and masks elsewhere would not show. One frame per subject first (in order),
    then a second of each; the same rule for the empty frame among them."""
    subjects = ["a", "a", "a", "a", "b", "b", "c", "c"]
    assert report.pick_samples([True] * 8, subjects=subjects) == [0, 1, 4, 6]
    assert report.pick_samples([True] * 8, n=3, subjects=subjects) == [0, 4, 6]
    assert report.pick_samples([True] * 8, n=6, subjects=subjects) == [0, 1, 4, 5, 6, 7]
    held = [True, True, True, False, False, True, False, True]
    assert report.pick_samples(held, subjects=subjects) == [0, 3, 5, 7]   # a, b, c; one empty
    # no subjects: each frame its own, as before
    assert report.pick_samples([True] * 8) == [0, 1, 2, 3]
    assert report.pick_samples(held) == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="length"):
        report.pick_samples([True, True], subjects=["a"])
