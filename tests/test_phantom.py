"""Phantom ultrasound frames and the phantom dataset writer."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from conftest import windows_holding
from ultraseg.errors import UltrasegError
from ultraseg.phantom import FRAMES_PER_SUBJECT, MIN_SIZE, make_dataset, make_frame


@pytest.fixture(scope="module")
def batch() -> list[tuple[np.ndarray, np.ndarray, dict]]:
    rng = np.random.default_rng(123)
    return [make_frame(rng, 96) for _ in range(50)]


def test_frame_shapes_dtypes_and_gray_levels(batch):
    for image, mask, meta in batch:
        assert image.shape == mask.shape == (96, 96)
        assert image.dtype == np.uint8 and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1}
        assert meta["size"] == 96
    tissue = np.concatenate([im[im > 0] for im, _, _ in batch])
    lo, med, hi = np.percentile(tissue, [5, 50, 95])
    assert 10 <= lo < med < hi <= 230 and 50 <= med <= 160  # log-compressed, mid-gray


def test_same_seed_same_frame_other_seed_other_frame():
    a = make_frame(np.random.default_rng(5), 64)
    b = make_frame(np.random.default_rng(5), 64)
    c = make_frame(np.random.default_rng(6), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert not np.array_equal(a[0], c[0])


def test_mask_matches_structure_count_and_empty_share(batch):
    empty = 0
    for _, mask, meta in batch:
        n_components = ndimage.label(mask)[1]
        assert meta["n_structures"] == len(meta["structures"])
        if meta["n_structures"] == 0:
            assert not mask.any()
            empty += 1
        else:
            assert 1 <= n_components <= meta["n_structures"]  # two may touch, none vanish
            assert sum(s["area"] for s in meta["structures"]) >= mask.sum()
    assert 0.10 <= empty / len(batch) <= 0.50
    assert any(m["n_structures"] == 2 for _, _, m in batch)


def test_structures_are_darker_than_the_tissue_around_them():
    rng = np.random.default_rng(7)
    seen = 0
    while seen < 8:
        image, mask, _ = make_frame(rng, 128)
        if not mask.any():
            continue
        m = mask.astype(bool)
        ring = ndimage.binary_dilation(m, iterations=8) & ~ndimage.binary_dilation(m, iterations=3)
        ring &= image > 0
        assert image[m].mean() < image[ring].mean() - 5
        seen += 1


def test_fan_keeps_structures_inside():
    rng = np.random.default_rng(11)
    fans = 0
    for _ in range(30):
        image, mask, meta = make_frame(rng, 64)
        if meta["fan"]:
            fans += 1
            assert (image == 0).mean() > 0.03  # black outside the fan
            assert not (mask.astype(bool) & (image == 0)).any()
    assert fans > 0
    linear = make_frame(np.random.default_rng(0), 64)
    assert linear[2]["fan"] or linear[0].min() >= 1  # 0 only marks outside the fan


def test_size_is_validated():
    with pytest.raises(UltrasegError):
        make_frame(np.random.default_rng(0), 16)


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_dataset_layout_names_and_masks(tmp_path):
    out = make_dataset(tmp_path / "ph", n=12, size=48, seed=3)
    assert out == tmp_path / "ph"
    images = sorted(p.name for p in (out / "images").iterdir())
    masks = sorted(p.name for p in (out / "masks").iterdir())
    expected = [f"{s}_{f}" for s, f in
                [(1, f) for f in range(1, FRAMES_PER_SUBJECT + 1)] + [(2, 1), (2, 2)]]
    assert images == sorted(f"{n}.png" for n in expected)
    assert masks == sorted(f"{n}_mask.png" for n in expected)
    for name in expected:
        img = Image.open(out / "images" / f"{name}.png")
        msk = Image.open(out / "masks" / f"{name}_mask.png")
        assert img.mode == "L" and msk.mode == "L" and img.size == msk.size == (48, 48)
        assert set(np.unique(np.asarray(msk))) <= {0, 255}
    assert not list(out.rglob(".*.tmp"))


def test_dataset_is_deterministic_and_subjects_are_sweeps(tmp_path):
    a = make_dataset(tmp_path / "a", n=10, size=48, seed=1)
    b = make_dataset(tmp_path / "b", n=10, size=48, seed=1)
    c = make_dataset(tmp_path / "c", n=10, size=48, seed=2)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)
    # consecutive frames of one subject share tissue geometry: far closer than other subjects
    f1, f2 = (np.asarray(Image.open(a / "images" / f"1_{i}.png"), float) for i in (1, 2))
    other = np.asarray(Image.open(c / "images" / "1_1.png"), float)
    smooth = lambda x: ndimage.gaussian_filter(x, 3)  # noqa: E731 - drop the speckle
    assert np.abs(smooth(f1) - smooth(f2)).mean() < np.abs(smooth(f1) - smooth(other)).mean()


def test_dataset_refuses_bad_requests(tmp_path):
    for n in (0, -3):
        with pytest.raises(UltrasegError, match="n must be"):
            make_dataset(tmp_path / "x", n=n)
    with pytest.raises(UltrasegError, match="size"):
        make_dataset(tmp_path / "x", n=2, size=16)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("name", "value", "words"), [
    ("n", 0, "phantom frame count n must be a whole number from 1, got 0"),
    ("n", 2.0, "phantom frame count n must be a whole number from 1, got 2.0"),
    ("n", True, "phantom frame count n must be a whole number from 1, got True"),
    ("seed", -1, "phantom seed must be a whole number from 0, got -1"),
    ("seed", 1.5, "phantom seed must be a whole number from 0, got 1.5"),
    ("seed", "3", "phantom seed must be a whole number from 0, got '3'")])
def test_a_count_or_seed_out_of_range_is_refused_in_the_cli_s_words(tmp_path, name, value,
                                                                     words) -> None:
    """make_dataset's n and seed were refused in older words ('must be an integer >= 1',
    'a non-negative integer') than `phantom --n` / `--seed` and the size's
    (config.whole_number's); a numpy integer is taken as the number it holds."""
    with pytest.raises(UltrasegError) as e:
        make_dataset(tmp_path / "x", **{"n": 1, name: value})
    assert str(e.value) == words
    assert not (tmp_path / "x").exists()
    make_dataset(tmp_path / "ok", n=np.int64(1), size=MIN_SIZE, seed=np.int64(0))


@pytest.mark.parametrize("size", [MIN_SIZE - 1, 0, 32.0, True])
def test_a_size_below_the_least_side_is_refused_in_the_cli_s_words(tmp_path, size) -> None:
    """phantom's least side is its MIN_SIZE (the CLI's --size takes it from there), refused in
    config.whole_number's words as `phantom --size` refuses it: 'must be an integer >= 32'
    said it otherwise."""
    words = f"phantom size must be a whole number from {MIN_SIZE}, got {size!r}"
    with pytest.raises(UltrasegError) as e:
        make_dataset(tmp_path / "x", n=1, size=size)
    assert str(e.value) == words
    with pytest.raises(UltrasegError) as e:
        make_frame(np.random.default_rng(0), size)
    assert str(e.value) == words
    assert not (tmp_path / "x").exists()
    assert make_frame(np.random.default_rng(0), MIN_SIZE)[0].shape == (MIN_SIZE, MIN_SIZE)
    out = make_dataset(tmp_path / "full", n=1, size=32)
    before = _digest(out)
    with pytest.raises(UltrasegError, match="already contains files"):
        make_dataset(out, n=1, size=32)
    assert _digest(out) == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(UltrasegError, match="not a folder"):
        make_dataset(tmp_path / "file", n=1, size=32)
    # a folder of the user's own images: the phantom's images/ would hide them from a scan
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "scan.png").write_bytes((out / "images").iterdir().__next__()
                                                 .read_bytes())
    with pytest.raises(UltrasegError, match="already holds images"):
        make_dataset(tmp_path / "mine", n=1, size=32)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["scan.png"]
    # ... in patient folders too (only the folder itself was looked at)
    (tmp_path / "scans" / "patientA").mkdir(parents=True)
    (tmp_path / "mine" / "scan.png").rename(tmp_path / "scans" / "patientA" / "a1.png")
    with pytest.raises(UltrasegError, match="already holds images .first: .*a1.png"):
        make_dataset(tmp_path / "scans", n=1, size=32)
    assert [p.name for p in (tmp_path / "scans").rglob("*")] == ["patientA", "a1.png"]
    # images in a folder ultraseg wrote (a run's figures) are none of the user's
    from ultraseg.io.outputs import OUTPUT_MARKER

    (tmp_path / "runs" / "run1").mkdir(parents=True)
    (tmp_path / "runs" / "run1" / OUTPUT_MARKER).write_text("train")
    (tmp_path / "scans" / "patientA" / "a1.png").rename(tmp_path / "runs" / "run1" / "curve.png")
    make_dataset(tmp_path / "runs", n=1, size=32)
    # images/ that is a file: refused before anything is written, not inside the staging
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "images").write_text("x")
    with pytest.raises(UltrasegError, match="exists and is not a folder"):
        make_dataset(tmp_path / "odd", n=1, size=32)
    assert [p.name for p in (tmp_path / "odd").iterdir()] == ["images"]


def test_a_running_writers_staging_folder_is_left_alone(tmp_path) -> None:
    """Two phantom runs into one folder: the second removed the first's staging folder while
    it was written. Only the folders of writers that have ended go."""
    import subprocess
    import sys

    out = tmp_path / "race"
    out.mkdir()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / f".phantom-{alive.pid}-abc.tmp").mkdir()
        ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                               capture_output=True, text=True, check=True).stdout.strip()
        (out / f".phantom-{ended}-def.tmp").mkdir()
        (out / ".phantom-old.tmp").mkdir()              # named before names carried a pid
        make_dataset(out, n=1, size=32)
        assert sorted(p.name for p in out.iterdir()) == [
            f".phantom-{alive.pid}-abc.tmp", "images", "masks"]
    finally:
        alive.kill()
        alive.wait()


def test_on_windows_a_writer_is_looked_for_without_os_kill(tmp_path, monkeypatch) -> None:
    """On Windows os.kill(pid, 0) is no probe: signal 0 is CTRL_C_EVENT, sent to the console
    group pid, and a pid that leads none fails with WinError 87, read as another user's
    running process: an ended run's staging folder was never removed, and a Ctrl-C could
    reach a process. There the process is looked up (OpenProcess)."""
    import os

    import ultraseg.phantom as phantom

    killed = []

    class WindowsOs:
        name = "nt"

        def kill(self, pid, sig):
            killed.append((pid, sig))
            raise OSError(22, "[WinError 87] The parameter is incorrect")

        def __getattr__(self, attr):
            return getattr(os, attr)

    monkeypatch.setattr(phantom, "os", WindowsOs())
    monkeypatch.setattr(phantom, "_windows_running", lambda pid: pid == 4000000,
                        raising=False)
    out = tmp_path / "win"
    (out / ".phantom-3999999-abc.tmp").mkdir(parents=True)       # its writer ended
    (out / ".phantom-4000000-def.tmp").mkdir()                   # its writer runs
    make_dataset(out, n=1, size=32)
    assert killed == []
    assert sorted(p.name for p in out.iterdir()) == [".phantom-4000000-def.tmp", "images",
                                                     "masks"]


def test_a_set_goes_into_empty_folders_of_its_names_where_no_folder_is_replaced(
        tmp_path, monkeypatch) -> None:
    """Windows replaces no folder (MoveFileEx: access denied): `ultraseg phantom` into a
    folder holding an empty images/ failed there, naming the hidden staging folder. The
    empty folders are removed before the set's are moved in."""
    import os

    real = os.replace

    def windows_replace(src, dst):
        if os.path.isdir(dst):
            raise PermissionError(13, "[WinError 5] Access is denied", str(src))
        real(src, dst)

    monkeypatch.setattr(os, "replace", windows_replace)
    out = tmp_path / "emptyimg"
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    make_dataset(out, n=2, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks"]
    assert len(list((out / "images").iterdir())) == len(list((out / "masks").iterdir())) == 2


def test_a_staging_folder_named_with_a_superscript_digit_is_a_stale_one(tmp_path) -> None:
    """A hidden folder `.phantom-²-x.tmp` in --out stopped `ultraseg phantom` with a
    ValueError: '²' passed str.isdigit as a process id, and int() refused it. No writer's
    name: a stale folder, removed."""
    out = tmp_path / "odd"
    (out / ".phantom-²-x.tmp").mkdir(parents=True)
    make_dataset(out, n=1, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks"]


@pytest.mark.parametrize("pid", ["99999999999", "0"])
def test_a_staging_folder_named_with_a_process_id_no_system_has_is_a_stale_one(
        tmp_path, pid: str) -> None:
    """A hidden folder `.phantom-99999999999-x.tmp` (a number past any process id) stopped
    `ultraseg phantom` with an internal error: os.kill raised OverflowError; one named 0 was
    kept for good, os.kill(0, 0) probing this process's own group. No process has either id:
    a stale folder, removed."""
    out = tmp_path / "odd"
    (out / f".phantom-{pid}-x.tmp").mkdir(parents=True)
    make_dataset(out, n=1, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks"]


@pytest.mark.parametrize("stop", [KeyboardInterrupt, OSError])
def test_a_stopped_phantom_run_leaves_no_hidden_half_set(tmp_path, monkeypatch, stop) -> None:
    """Ctrl-C (or a full disk) while the frames were written left the hidden staging folder
    (``.phantom-PID-*.tmp``, growing with --n and --size) for good unless a later run wrote
    into the same folder. It is removed as the run stops; the error goes on."""
    import ultraseg.phantom as phantom

    real, calls = phantom._write_png, []

    def stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise stop("stopped")
        return real(*args, **kwargs)

    monkeypatch.setattr(phantom, "_write_png", stopped)
    out = tmp_path / "ph"
    with pytest.raises(stop):
        make_dataset(out, n=8, size=32)
    assert list(out.iterdir()) == []


def test_every_50_frames_hold_a_subject_with_no_structure(tmp_path):
    """What the README promises of a phantom set's empty frames: in each 50 frames (a block
    of 5 subjects) one subject's 10 frames hold no structure, whatever the seed; a set of
    fewer frames is promised none (the review's 40 frames, 128 px, seed 3 had none)."""
    for seed in (0, 3):
        out = make_dataset(tmp_path / str(seed), n=100, size=32, seed=seed)
        empty = {p.name[:-len("_mask.png")]: not np.asarray(Image.open(p)).any()
                 for p in (out / "masks").glob("*_mask.png")}
        assert len(empty) == 100
        subjects = {int(name.split("_")[0]) for name in empty}
        for block in (range(1, 6), range(6, 11)):
            assert any(all(empty[f"{s}_{t}"] for t in range(1, FRAMES_PER_SUBJECT + 1))
                       for s in block), (seed, block)
        assert subjects == set(range(1, 11))


@pytest.mark.parametrize("out", [None, 5])
def test_an_output_folder_that_is_no_path_is_refused_naming_it(out) -> None:
    """make_dataset(None) raised pathlib's TypeError, naming no argument (an API misuse
    review, item 7)."""
    with pytest.raises(UltrasegError, match=rf"make_dataset \(out\) takes .*path.*got "
                                            rf"{type(out).__name__}"):
        make_dataset(out, n=2, size=32)


@pytest.mark.parametrize("held", ["images", "masks", "1_1.png"])
def test_a_set_another_program_holds_on_windows_is_tried_again_then_said_so(
        tmp_path, monkeypatch, held) -> None:
    """On Windows a folder holding a file another program has open (an antivirus scanning the
    frames just written, a file browser) cannot be moved, nor a file so held replaced: the
    staging folder's move into --out, and a frame's rename, raised the system's
    'permission denied' naming the hidden staging folder, at once. As an output file's
    replace is (fileio), each is tried again a few times, then refused saying it may be open
    in another program; nothing is left in --out. Elsewhere the error is as it was."""
    from ultraseg import errors, fileio

    until: list[int | None] = [None]            # refused from the first try on, or this many
    tries = windows_holding(monkeypatch, lambda dst, n: dst.name == held
                            and (until[0] is None or n < until[0]))
    out = tmp_path / "win"
    with pytest.raises(fileio.WriteError) as caught:
        make_dataset(out, n=2, size=32)
    said = str(caught.value)
    assert "permission denied" in said and "open in another program? close it and run " \
        "again" in said, said
    assert ".phantom-" not in said, said                # not the hidden folder's name
    assert len(tries) > 2                               # tried again, not at once refused
    assert list(out.iterdir()) == []

    tries.clear()                                       # the program lets go as it is retried
    until[0] = 2
    make_dataset(out, n=2, size=32)
    assert len(tries) == 2
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks"]
    assert len(list((out / "images").iterdir())) == len(list((out / "masks").iterdir())) == 2

    tries.clear()                                       # elsewhere: the folder's permissions
    monkeypatch.setattr(errors, "WINDOWS", False)
    until[0] = None
    with pytest.raises(PermissionError) as caught:
        make_dataset(tmp_path / "posix", n=2, size=32)
    assert "another program" not in str(caught.value) and len(tries) == 1
    assert list((tmp_path / "posix").iterdir()) == []


def test_a_set_whose_masks_cannot_be_moved_in_leaves_no_images_behind(tmp_path,
                                                                     monkeypatch) -> None:
    """Where images/ was moved into --out and masks/ then could not be (a PermissionError:
    on Windows, a mask another program held), the error left images/ full in --out beside
    no masks: a half set, which the next run refused ('already contains files'). The
    folders moved in are taken out again, and empty folders that were there put back."""
    import os

    real = os.replace

    def masks_refused(src, dst):
        if Path(dst).name == "masks":
            raise PermissionError(13, "Permission denied", str(src))
        real(src, dst)

    out = tmp_path / "ph"
    (out / "images").mkdir(parents=True)
    (out / "masks").mkdir()
    monkeypatch.setattr(os, "replace", masks_refused)
    with pytest.raises(PermissionError):
        make_dataset(out, n=2, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks"]
    assert list((out / "images").iterdir()) == list((out / "masks").iterdir()) == []
    monkeypatch.setattr(os, "replace", real)
    make_dataset(out, n=2, size=32)                 # the next run is not refused
    assert len(list((out / "masks").iterdir())) == 2


def test_a_staging_folder_of_another_user_s_running_writer_is_left_alone(tmp_path,
                                                                         monkeypatch) -> None:
    """os.kill(pid, 0) refused (EPERM: a process of another user, in a shared --out) means
    the writer runs: its staging folder, being written, is kept, not removed under it. The
    answers are faked: an ended writer's folder beside it still goes."""
    import errno
    import os

    if os.name == "nt":
        pytest.skip("Windows looks a writer up without os.kill")
    probed = []

    def kill(pid: int, sig: int) -> None:
        probed.append((pid, sig))
        if pid == 4000000:
            raise PermissionError(errno.EPERM, "Operation not permitted")
        raise ProcessLookupError(errno.ESRCH, "No such process")

    monkeypatch.setattr(os, "kill", kill)
    out = tmp_path / "shared"
    (out / ".phantom-4000000-abc.tmp").mkdir(parents=True)      # another user's, running
    (out / ".phantom-3999999-def.tmp").mkdir()                   # no such process
    make_dataset(out, n=1, size=32)
    assert sorted(probed) == [(3999999, 0), (4000000, 0)]
    assert sorted(p.name for p in out.iterdir()) == [".phantom-4000000-abc.tmp", "images",
                                                     "masks"]


def test_a_staging_folder_of_this_process_is_a_stale_one(tmp_path) -> None:
    """A staging folder named with this process's id is one an earlier call in it left (an
    interrupted make_dataset in a notebook or service), not a writer running now: removed,
    though os.kill finds this process running."""
    import os

    out = tmp_path / "again"
    (out / f".phantom-{os.getpid()}-abc.tmp").mkdir(parents=True)
    make_dataset(out, n=1, size=32)
    assert sorted(p.name for p in out.iterdir()) == ["images", "masks"]
