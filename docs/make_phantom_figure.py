"""Draw ``docs/phantom.png``: four phantom frames (top) and the same frames with their masks
outlined in red (bottom). Run: ``python docs/make_phantom_figure.py [out.png]``."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ultraseg.phantom import make_frame  # noqa: E402


def pick_frames(seed: int = 7, size: int = 256) -> list[tuple[np.ndarray, np.ndarray, dict]]:
    """The first frames of ``seed`` showing, in order: one structure (linear probe), two
    structures, a curvilinear (fan) frame with a structure, and an empty frame."""
    wanted = [
        lambda m: m["n_structures"] == 1 and not m["fan"],
        lambda m: m["n_structures"] == 2,
        lambda m: m["n_structures"] >= 1 and m["fan"],
        lambda m: m["n_structures"] == 0,
    ]
    rng = np.random.default_rng(seed)
    chosen: list = [None] * len(wanted)
    for _ in range(200):
        frame = make_frame(rng, size)
        for i, ok in enumerate(wanted):
            if chosen[i] is None and ok(frame[2]):
                chosen[i] = frame
                break
        if all(c is not None for c in chosen):
            break
    return [c for c in chosen if c is not None]


def main(out: Path) -> None:
    frames = pick_frames()
    fig, axes = plt.subplots(2, len(frames), figsize=(2.6 * len(frames), 5.6))
    for col, (image, mask, meta) in enumerate(frames):
        for row in (0, 1):
            ax = axes[row, col]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 1 and mask.any():
                ax.contour(mask, levels=[0.5], colors="red", linewidths=0.9)
        probe = "curvilinear" if meta["fan"] else "linear"
        axes[0, col].set_title(f"{meta['n_structures']} structure(s), {probe}", fontsize=9)
    axes[0, 0].set_ylabel("phantom frame", fontsize=9)
    axes[1, 0].set_ylabel("mask outline", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=66)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).with_name("phantom.png"))
