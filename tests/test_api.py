"""The Python API: the README example runs as written; ``import ultraseg`` stays cheap."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ultraseg
from ultraseg.checkpoint import make_meta, save_checkpoint
from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
from ultraseg.model import build_model

#: The five-line example of the README. When README.md holds a ```python block calling
#: ``ultraseg.load``, that block is what runs instead, so the two cannot drift apart.
README_EXAMPLE = """\
import ultraseg

predictor = ultraseg.load("run/best.ckpt")   # a checkpoint, or an exported model.onnx
image = ultraseg.read_image("frame.png")     # 2D numpy array (H, W) uint8, any size
mask = predictor.predict(image)              # bool (H, W), post-processed as trained
prob = predictor.predict_proba(image)        # float32 (H, W), probabilities in [0, 1]
"""

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    """The README's block calling ``ultraseg.load``; the built-in example where there is no
    README.md yet. A README without that block fails (it must not test the fallback)."""
    if not README.is_file():
        return README_EXAMPLE
    for block in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S):
        if "ultraseg.load(" in block:
            return block
    raise AssertionError(f"{README} holds no ```python block calling ultraseg.load(")


def make_run(folder: Path, variant: str = "valid") -> Path:
    torch.manual_seed(0)
    cfg = ModelConfig(variant=variant, width=4, depth=2, tile=20)
    (folder / "run").mkdir(parents=True, exist_ok=True)
    path = folder / "run" / "best.ckpt"
    save_checkpoint(path, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=48), PostprocessConfig()))
    return path


def test_readme_example_runs_and_returns_masks_of_the_images_size(tmp_path, monkeypatch):
    make_run(tmp_path)
    image = np.random.default_rng(0).integers(0, 256, (83, 117), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "frame.png")
    monkeypatch.chdir(tmp_path)
    env: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), env)
    assert env["image"].shape == (83, 117) and env["image"].dtype == np.uint8
    mask, prob = env["mask"], env["prob"]
    assert mask.shape == (83, 117) and mask.dtype == bool
    assert prob.shape == (83, 117) and prob.dtype == np.float32
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    np.testing.assert_array_equal(mask, prob >= env["predictor"].postprocess.threshold)


def test_readme_block_matches_the_tested_example_when_present():
    if not README.is_file():
        pytest.skip("no README.md yet: the example above is the one to paste into it")
    block = readme_example()
    assert "ultraseg.load(" in block and block in README.read_text()


def test_a_readme_without_the_example_fails_rather_than_running_the_built_in_one(
        tmp_path, monkeypatch):
    """With every ```python block of the README replaced, both README tests still passed: the
    example fell back to the built-in one. The fallback is for a missing README alone."""
    readme = tmp_path / "README.md"
    readme.write_text("# ultraseg\n\n```python\nimport ultraseg\n```\n")
    monkeypatch.setattr(sys.modules[__name__], "README", readme)
    with pytest.raises(AssertionError, match="ultraseg.load"):
        readme_example()
    readme.unlink()
    assert readme_example() == README_EXAMPLE


@pytest.mark.parametrize("variant", ["valid", "same"])
def test_predict_takes_uint8_or_float_and_any_size(tmp_path, variant):
    predictor = ultraseg.load(make_run(tmp_path, variant), device="cpu", precision="fp32")
    assert isinstance(predictor, ultraseg.Predictor)
    rng = np.random.default_rng(1)
    for shape in ((1, 1), (7, 300), (61, 45)):
        u8 = rng.integers(0, 256, shape, dtype=np.uint8)
        f01 = u8.astype(np.float32) / 255.0           # float in [0, 1] is read as x / 255
        f255 = u8.astype(np.float64)                  # float in [0, 255] as is
        want = predictor.predict_proba(u8)
        assert want.shape == shape
        np.testing.assert_allclose(predictor.predict_proba(f01), want, atol=1e-6)
        np.testing.assert_allclose(predictor.predict_proba(f255), want, atol=1e-6)
        assert predictor.predict(u8).shape == shape
    with pytest.raises(ultraseg.UltrasegError, match="2D image"):
        predictor.predict(np.zeros((2, 3, 4, 5)))


def test_import_ultraseg_does_not_import_torch():
    code = ("import sys, ultraseg; assert ultraseg.__version__; "
            "print('torch' in sys.modules, 'onnxruntime' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]


def test_public_names_resolve():
    for name in ultraseg.__all__:
        assert getattr(ultraseg, name) is not None
    assert set(ultraseg.__all__) <= set(dir(ultraseg))
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        ultraseg.nonsense  # noqa: B018


def test_the_submodules_the_readme_names_are_attributes_after_import_ultraseg():
    """The README names ``ultraseg.config.default_preset_name()``, ``ultraseg.postprocess.apply``
    and others after snippets that begin ``import ultraseg``; each raised AttributeError ("module
    'ultraseg' has no attribute 'config'") unless the submodule had been imported. They are now
    imported on first use (``postprocess`` still without PyTorch), and an unknown name is still
    an AttributeError."""
    named = sorted(set(re.findall(r"\bultraseg\.([a-z_]+)\.([A-Za-z_]+)", README.read_text())))
    assert ("config", "default_preset_name") in named and ("postprocess", "apply") in named
    code = (
        "import sys, ultraseg, numpy as np\n"
        "cfg = ultraseg.PostprocessConfig.from_dict({'threshold': 0.5})\n"
        "mask = ultraseg.postprocess.apply(np.full((4, 4), 0.9, np.float32), cfg)\n"
        "assert mask.shape == (4, 4) and mask.all()\n"
        "print('torch' in sys.modules)\n"       # (default_preset_name asks torch about CUDA)
        "assert ultraseg.config.default_preset_name() in ultraseg.config.PRESETS\n"
        f"for module, attr in {named!r}:\n"
        "    assert callable(getattr(getattr(ultraseg, module), attr)), (module, attr)\n"
        "names = dir(ultraseg)\n"
        "assert {'config', 'postprocess', 'io', 'model', 'train'} <= set(names), names\n"
        "assert '__main__' not in names\n"
        "for bad in ('nonsense', '__main__', '_private'):\n"
        "    try:\n"
        "        getattr(ultraseg, bad)\n"
        "    except AttributeError as e:\n"
        "        assert str(e) == f\"module 'ultraseg' has no attribute {bad!r}\", e\n"
        "    else:\n"
        "        raise AssertionError(bad)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False"]


def test_readme_training_block_runs_as_written(tmp_path, monkeypatch):
    """The README's train-then-evaluate block, on phantom frames at data/nerve, with the cpu
    preset shrunk to a tiny model and two epochs so it runs in seconds."""
    from ultraseg.config import PRESETS
    from ultraseg.phantom import make_dataset

    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
              if "train(cfg" in b]
    assert len(blocks) == 1, "README holds one training block"
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "data" / "nerve", n=60, size=48, seed=0)      # 6 subjects
    monkeypatch.setitem(PRESETS["cpu"], "model", {"variant": "same", "width": 4, "depth": 2})
    monkeypatch.setitem(PRESETS["cpu"], "preprocess", {"size": 32})
    monkeypatch.setitem(PRESETS["cpu"], "train", {"epochs": 2})   # the held-out side: README's
    scope: dict = {"ultraseg": ultraseg}
    exec(blocks[0], scope)
    assert scope["result"].best_epoch in (1, 2)
    assert (tmp_path / "runs" / "nerve" / "best.ckpt").is_file()
    assert scope["summary"]["n"] == len(scope["rows"]) > 0
    # the run folder as a path that holds after the notebook changes folder (it was the
    # relative 'runs/nerve' given)
    assert scope["result"].run_dir == (tmp_path / "runs" / "nerve").resolve()


def test_train_refuses_a_config_without_data_before_writing(tmp_path, monkeypatch):
    from ultraseg.train import train

    monkeypatch.chdir(tmp_path)                 # '' must not mean "the current folder"
    with pytest.raises(ultraseg.UltrasegError, match="data.path is empty"):
        train(ultraseg.preset("demo"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_python_callers_get_user_errors_not_tracebacks(tmp_path) -> None:
    """merge(cfg, {"train": 5}), train({...}, out) and measure_frames(pixel_size_mm="0.2")
    ended in TypeError or AttributeError from deep inside; evaluate("best.ckpt", data)
    raised AttributeError, where a path is what a notebook has at hand: it is loaded."""
    from ultraseg.evaluate import evaluate
    from ultraseg.frames import collect_frames
    from ultraseg.measure_files import measure_frames
    from ultraseg.train import train

    with pytest.raises(ultraseg.UltrasegError, match="section 'train' must be a dict"):
        ultraseg.merge(ultraseg.preset("demo"), {"train": 5})
    with pytest.raises(ultraseg.UltrasegError, match="train takes a RunConfig"):
        train({"data": {"path": "x"}}, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    with pytest.raises(ultraseg.UltrasegError, match="expected a Predictor"):
        evaluate(5, tmp_path)
    from ultraseg.phantom import make_dataset

    data = make_dataset(tmp_path / "d", n=4, size=32, seed=0)
    ckpt = make_run(tmp_path / "m", variant="same")
    predictor = ultraseg.load(ckpt)
    with pytest.raises(ultraseg.UltrasegError, match="--pixel-size must be a positive number"):
        measure_frames(predictor, collect_frames(data / "images"), pixel_size_mm="0.2")
    by_path, _ = evaluate(ckpt, data)
    by_object, _ = evaluate(predictor, data)
    assert by_path["dice_mean"] == by_object["dice_mean"]


def test_the_package_ships_its_types():
    """A user's type checker reads ultraseg's annotations only when the package carries a
    ``py.typed`` marker (PEP 561) that the build puts in the wheel."""
    tomllib = pytest.importorskip("tomllib")
    assert (Path(ultraseg.__file__).parent / "py.typed").is_file()
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    package_data = pyproject["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data["ultraseg"]


def test_the_names_a_type_checker_sees_are_the_names_served_on_first_use():
    """``ultraseg.load`` and the rest are imported on first use (``__getattr__``), which a type
    checker cannot follow; the ``if TYPE_CHECKING:`` imports give it the same names from the same
    modules, and ``__all__`` is written out so that checkers can read it."""
    import ast

    source = Path(ultraseg.__file__).read_text()
    tree = ast.parse(source)
    checked: dict[str, tuple[str, str]] = {}
    all_names = None
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 1, ast.dump(imp)
                for alias in imp.names:
                    checked[alias.asname or alias.name] = (imp.module or "", alias.name)
        if (isinstance(node, (ast.Assign, ast.AnnAssign)) and
                any(isinstance(t, ast.Name) and t.id == "__all__"
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
            try:
                all_names = ast.literal_eval(node.value)
            except ValueError:  # a computed list, which checkers cannot read
                all_names = None
    assert checked == ultraseg._API
    assert all_names is not None, "__all__ is not a literal list"
    assert sorted(all_names) == sorted(["__version__", *ultraseg._API])
    assert list(ultraseg.__all__) == all_names


def test_the_objects_a_notebook_shows_have_reprs_that_do_not_grow_with_the_data(tmp_path):
    """A notebook shows a cell's last value by its repr: a Dataset listed every Sample (190 KB
    for 1000 frames, and it had no len()), a Predictor its whole checkpoint meta (the epoch
    history) and its run_batch function, a TrainResult its history and summary, a
    PredictionSummary every path it wrote. Their reprs now stay one screen however large."""
    from ultraseg.io import Dataset, Sample
    from ultraseg.predict_files import PredictionSummary
    from ultraseg.train import TrainResult

    def dataset(n: int) -> Dataset:
        return Dataset(tmp_path / "data", "folders", tuple(
            Sample(f"frame_{i:04d}", tmp_path / "data" / "images" / f"frame_{i:04d}.png",
                   (tmp_path / "data" / "masks" / f"frame_{i:04d}.png",) if i % 20 else (),
                   subject=str(i // 4), meta={"split": "train"}) for i in range(n)))

    small, large = dataset(3), dataset(1000)
    assert len(small) == 3 and len(large) == 1000
    assert abs(len(repr(large)) - len(repr(small))) < 20
    assert str(tmp_path / "data") in repr(large) and "folders" in repr(large)
    assert "1000 samples" in repr(large) and "950 labelled" in repr(large)

    def predictor(epochs: int) -> ultraseg.Predictor:
        history = [{"epoch": e, "train_loss": 0.1234567, "val_dice": 0.7654321}
                   for e in range(epochs)]
        return ultraseg.Predictor(lambda x: x, ModelConfig(), PreprocessConfig(),
                                  meta={"metrics": {"history": history}}, source="run/best.ckpt",
                                  runtime={"device": "cpu", "precision": "fp32"})

    short, long = repr(predictor(3)), repr(predictor(300))
    assert len(short) == len(long) < 2000 and "run/best.ckpt" in long
    assert "function" not in long

    def result(epochs: int) -> TrainResult:
        history = [{"epoch": e, "train_loss": 0.1234567} for e in range(epochs)]
        return TrainResult(tmp_path / "run", 3, 0.75, epochs, 12.5, history=history,
                           summary={f"row {e}": "x" * 40 for e in range(epochs)})

    assert abs(len(repr(result(3))) - len(repr(result(300)))) < 5   # epochs_run=3 / 300
    assert len(repr(result(300))) < 2000
    assert "best_epoch=3" in repr(result(300))

    def written(n: int) -> PredictionSummary:
        return PredictionSummary(n, tmp_path / "out", masks=[tmp_path / f"m{i}.png"
                                                             for i in range(n)],
                                 overlays=[tmp_path / f"o{i}.png" for i in range(n)])

    assert abs(len(repr(written(3))) - len(repr(written(1000)))) < 12   # the counts' digits
    assert "n=1000" in repr(written(1000)) and "masks=1000 paths" in repr(written(1000))


@pytest.mark.parametrize("call", ["load", "open_dataset"])
def test_load_and_open_dataset_refuse_what_is_not_a_path_saying_what_they_take(call) -> None:
    """ultraseg.load(b"...") and open_dataset(b"...") gave pathlib's raw TypeError, where
    read_image says it takes a file's path."""
    import ultraseg
    from ultraseg.errors import UltrasegError

    with pytest.raises(UltrasegError,
                       match=rf"{call} takes a [a-z ]*(file|folder)'s path.*got bytes"):
        getattr(ultraseg, call)(b"model.ckpt")
