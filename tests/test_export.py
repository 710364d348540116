"""ONNX export: graph shape contract, self-describing metadata, parity with PyTorch on real
frames, prediction without torch, and refusal of files that are not ultraseg exports."""
from __future__ import annotations

import json
import logging
import os
import re
import shlex
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import shared_dataset, ultraseg_warnings
from PIL import Image

from ultraseg.checkpoint import load_checkpoint, make_meta, save_checkpoint
from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
from ultraseg.errors import CheckpointError, UltrasegError
from ultraseg.export import META_KEY, export_onnx, onnx_predictor
from ultraseg.geometry import context_margin
from ultraseg.io import read_image
from ultraseg.model import build_model
from ultraseg.predict import Predictor, load

#: name -> (ModelConfig, PreprocessConfig): the variants exported once for this module.
MODELS = {
    "same": (ModelConfig(variant="same", width=4, depth=2), PreprocessConfig(size=96)),
    # frames at their own resolution: the graph takes the training tile, many tiles per frame
    # (the other tile choice, the working canvas of a resized model, is exported in
    # test_cli_predict.py)
    "valid": (ModelConfig(variant="valid", width=4, depth=2, tile=132),
              PreprocessConfig(size=None, normalise="zscore")),
    "same-instance": (ModelConfig(variant="same", width=4, depth=2, norm="instance"),
                      PreprocessConfig(size=96)),
    "same-presence": (ModelConfig(variant="same", width=4, depth=2, presence_head=True),
                      PreprocessConfig(size=96)),
    "same-classifier": (ModelConfig(variant="same", width=4, depth=2, presence_head=True,
                                    presence_mode="classifier"), PreprocessConfig(size=96)),
    # residual encoder blocks, unpadded: each shortcut crops its input (a negative Pad)
    "valid-residual": (ModelConfig(variant="valid", width=4, depth=2, tile=132,
                                   block="residual"), PreprocessConfig(size=None)),
    # attention gates on the skips (batch norm inside each gate)
    "same-attention": (ModelConfig(variant="same", width=4, depth=2, attention=True),
                       PreprocessConfig(size=96)),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """name -> (checkpoint, onnx file), random-initialised, exported once."""
    root = tmp_path_factory.mktemp("export")
    out = {}
    for i, (name, (model, pre)) in enumerate(MODELS.items()):
        torch.manual_seed(i)
        net = build_model(model)
        with torch.no_grad():  # spread the logits; no flat regions at exactly p = 0.5
            net.head.weight.mul_(4.0)
            net.head.bias.fill_(-0.25)
            if net.presence is not None:    # present (p ~ 0.95), a little unlike per frame
                net.presence.weight.normal_(0.0, 0.02)
                net.presence.bias.fill_(3.0)
                net.head.bias.fill_(0.2)    # gated masks cover 60-85 % of the real frames
        ckpt = root / f"{name}.ckpt"
        meta = make_meta(model, pre, PostprocessConfig(threshold=0.5))
        meta["measure"] = {"boundary_offset_px": 1.25}
        save_checkpoint(ckpt, net.state_dict(), meta)
        out[name] = (ckpt, export_onnx(ckpt, root / f"{name}.onnx"))
    return out


def real_frames() -> list[np.ndarray]:
    kaggle = shared_dataset("kaggle_nerve_sample")
    nerve = shared_dataset("nerve")
    frames = [read_image(kaggle / "train" / "1_1.tif"), read_image(kaggle / "test" / "1.tif")]
    frames += [read_image(p) for p in sorted((nerve / "images").glob("*.jpg"))[:3]]
    frames.append(frames[0][7:300, 11:468])               # odd, non-square crop
    assert frames[0].shape == (420, 580)
    return frames


# ------------------------------------------------------------------------ graph contract
def test_graph_input_output_and_metadata(exported):
    for name, (ckpt, path) in exported.items():
        model = onnx.load(str(path))
        (inp,) = model.graph.input
        (out,) = model.graph.output
        assert inp.name == "image" and out.name == "probability"
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        dims = inp.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_value == 1          # dynamic batch
        cfg = MODELS[name][0]
        if cfg.variant == "same":
            assert dims[2].dim_param and dims[3].dim_param           # dynamic H and W
        else:
            side = 132 + 2 * context_margin(cfg.depth)
            assert dims[2].dim_value == side and dims[3].dim_value == side
        meta = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
        assert meta["model"] == cfg.to_dict()
        assert meta["preprocess"] == MODELS[name][1].to_dict()
        assert meta["postprocess"]["threshold"] == 0.5 and "label" in meta
        assert meta["measure"] == {"boundary_offset_px": 1.25}
        assert meta["onnx"]["dynamic_hw"] == (cfg.variant == "same")


def test_dynamic_batch_and_size_run_on_onnxruntime(exported):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(exported["same"][1]), providers=["CPUExecutionProvider"])
    for shape in ((1, 1, 64, 96), (3, 1, 40, 24)):
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        (y,) = sess.run(None, {"image": x})
        assert y.shape == shape and 0.0 <= y.min() and y.max() <= 1.0   # probabilities
    sess = ort.InferenceSession(str(exported["valid"][1]), providers=["CPUExecutionProvider"])
    x = np.zeros((5, 1, 172, 172), np.float32)
    assert sess.run(None, {"image": x})[0].shape == (5, 1, 132, 132)


# ------------------------------------------------------------------------ parity
@pytest.mark.realdata
@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_matches_pytorch_on_real_frames(exported, name):
    frames = real_frames()
    ckpt, path = exported[name]
    ort_pred = load(path, batch_size=16)
    torch_pred = load(ckpt, device="cpu", precision="fp32", tile=ort_pred.tile, batch_size=16)
    want = [torch_pred.predict_proba(f) for f in frames]
    got = list(ort_pred.predict_proba_many(frames))
    diff = 0.0
    for f, a, b in zip(frames, want, got):
        assert a.shape == b.shape == f.shape
        diff = max(diff, float(np.abs(a - b).max()))
    # instance norm: ONNX Runtime computes each map's mean and variance in another order than
    # torch (1.4e-4 apart on these frames, with the head's weights scaled by 4)
    assert diff < (5e-4 if MODELS[name][0].norm == "instance" else 1e-4)
    # Masks: identical at the checkpoint's threshold, except where a probability lies closer
    # to it than the backends differ (there float rounding decides; such pixels are rare).
    thr = ort_pred.postprocess.threshold
    for f, a in zip(frames, want):
        m_t, m_o = torch_pred.predict(f), ort_pred.predict(f)
        assert 0.01 < m_t.mean() < 0.99                      # a mask with both classes
        undecided = np.abs(a - thr) <= diff
        assert undecided.mean() < 1e-3
        np.testing.assert_array_equal(m_t[~undecided], m_o[~undecided])


# ------------------------------------------------------------------------ no torch
def test_a_checkpoint_where_torch_cannot_be_imported_is_a_user_error(exported, tmp_path):
    """Without PyTorch a checkpoint given to predict was an internal error, exit 1."""
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "frame.png")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None
        from ultraseg.cli import main
        sys.exit(main(["predict", {str(exported["same"][0])!r}, {str(tmp_path / "frame.png")!r},
                       "--out", {str(tmp_path / "out")!r}]))
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "PyTorch is not installed" in lines[0] and ".onnx" in lines[0]


def test_onnx_prediction_runs_where_torch_cannot_be_imported(exported, tmp_path):
    _, path = exported["valid"]
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (57, 83), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "frame.png")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None          # any 'import torch' now raises ImportError
        import numpy as np, ultraseg
        from ultraseg.cli import main
        p = ultraseg.load({str(path)!r})
        image = ultraseg.read_image({str(tmp_path / "frame.png")!r})
        np.save({str(tmp_path / "prob.npy")!r}, p.predict_proba(image))
        rc = main(["predict", {str(path)!r}, {str(tmp_path / "frame.png")!r},
                   "--out", {str(tmp_path / "out")!r}, "--threads", "1"])
        assert sys.modules["torch"] is None
        print("rc", rc)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "rc 0" in done.stdout
    prob = np.load(tmp_path / "prob.npy")
    want = load(exported["valid"][0], device="cpu", precision="fp32", tile=132).predict_proba(image)
    assert prob.shape == (57, 83) and np.abs(prob - want).max() < 1e-4
    mask = np.asarray(Image.open(tmp_path / "out" / "frame_mask.png"))
    np.testing.assert_array_equal(mask == 255, prob >= 0.5)


ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


def test_the_readme_s_install_without_pytorch_lists_the_dependencies_but_torch():
    """The README's deployment install (ultraseg with --no-deps, then its dependencies by
    name) must name exactly pyproject.toml's dependencies less torch, plus onnxruntime: a
    dependency added to the package and not to that list broke the deployed predictor."""
    tomllib = pytest.importorskip("tomllib")              # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    want = [r for r in project["dependencies"] if _name(r) != "torch"]
    want += [r for r in project["optional-dependencies"]["onnx"] if _name(r) == "onnxruntime"]
    assert len(want) == len(project["dependencies"])      # torch left, onnxruntime come
    lines = (ROOT / "README.md").read_text().splitlines()
    assert "pip install --no-deps ." in lines
    after = lines[lines.index("pip install --no-deps .") + 1:]
    listed = shlex.split(next(ln for ln in after if ln.startswith("pip install ")))[2:]
    assert sorted(listed) == sorted(want)


#: name -> settings of the models the README's function without ultraseg is checked on:
#: both variants, trimmed bands and z-score, TTA, a stretched (not padded) canvas, a valid
#: model tiling frames at their own size, and rules the function leaves out.
STANDALONE = {
    "same": (ModelConfig(variant="same", width=4, depth=2),
             PreprocessConfig(size=48, crop_border=True, normalise="zscore"),
             PostprocessConfig(threshold=0.45, tta=True, keep_largest=True, fill_holes=True)),
    "same-stretched": (ModelConfig(variant="same", width=4, depth=3),
                       PreprocessConfig(size=40, pad_to_square=False), PostprocessConfig()),
    "valid": (ModelConfig(variant="valid", width=4, depth=2, tile=20),
              PreprocessConfig(size=48, crop_border=True),
              PostprocessConfig(threshold=0.55, min_area=5)),
    "valid-native": (ModelConfig(variant="valid", width=4, depth=2, tile=20),
                     PreprocessConfig(size=None, normalise="zscore"), PostprocessConfig(tta=True)),
}


def readme_function() -> str:
    """The README's ```python block defining ``segment``: the reference without ultraseg."""
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S)
    found = [b for b in blocks if "\ndef segment(session, frame):" in b]
    assert len(found) == 1, "README.md: no ```python block defining segment(session, frame)"
    return found[0]


def phantom_frames(folder: Path) -> dict[str, np.ndarray]:
    """Phantom frames that are not square: one with a grey band above and a black one at the
    left (crop_border trims them), one smaller than the canvas, one whose longer side is it."""
    from ultraseg.phantom import make_frame

    image = make_frame(np.random.default_rng(5), 64)[0]
    banded = np.zeros((58, 69), np.uint8)
    banded[:6] = 128
    banded[6:, 5:] = image[:52]
    frames = {"banded.png": banded, "small.png": image[10:51, 20:50].copy(),
              "edge.png": image[8:48, 8:56].copy()}
    folder.mkdir()
    for name, frame in frames.items():
        Image.fromarray(frame).save(folder / name)
    return frames


def half_foreground(path: Path, seed: int, model: ModelConfig, pre: PreprocessConfig,
                    post: PostprocessConfig, frames: dict[str, np.ndarray]) -> Path:
    """A random model's checkpoint whose masks of ``frames`` hold both classes: the head's
    weights spread the logits, its bias puts the threshold at their median."""
    torch.manual_seed(seed)
    net = build_model(model)
    with torch.no_grad():
        net.head.weight.mul_(20.0)
    save_checkpoint(path, net.state_dict(), make_meta(model, pre, post))
    predictor = load(path, device="cpu", precision="fp32")
    median = np.median(np.concatenate([predictor.predict_proba(f).ravel()
                                       for f in frames.values()]))
    with torch.no_grad():
        net.head.bias.add_(float(np.log(post.threshold / (1 - post.threshold))
                                 - np.log(median / (1 - median))))
    save_checkpoint(path, net.state_dict(), make_meta(model, pre, post))
    return path


@pytest.mark.slow
def test_the_readme_s_function_without_ultraseg_predicts_what_ultraseg_does(tmp_path):
    """An engineer running the .onnx with onnxruntime, numpy and Pillow alone had only the
    config names to go on (no resize filter, z-score region, padding or restore rule): a
    bilinear resize gave masks of Dice 0.57-0.92 against ultraseg's. The README's function,
    run from the README, gives ultraseg's probabilities and, thresholded, the masks of
    `ultraseg predict` with the rules it leaves out turned off."""
    import onnxruntime

    from ultraseg.cli import main
    from ultraseg.postprocess import apply

    code = readme_function()
    imports = {ln.split()[1].split(".")[0] for ln in code.splitlines()
               if ln.startswith(("import ", "from "))}
    assert imports <= {"json", "math", "warnings", "numpy", "PIL"}, imports
    env: dict = {}
    exec(compile(code, "README.md", "exec"), env)
    frames = phantom_frames(tmp_path / "in")
    for i, (name, (model, pre, post)) in enumerate(STANDALONE.items()):
        ckpt = half_foreground(tmp_path / f"{name}.ckpt", i, *STANDALONE[name], frames)
        path = export_onnx(ckpt, tmp_path / f"{name}.onnx", verify=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        plain = ["--min-area", "0", "--min-peak", "0", "--no-keep-largest", "--no-fill-holes"]
        for out, flags in (("plain", plain), ("rules", [])):
            assert main(["predict", str(path), str(tmp_path / "in"), "--out",
                         str(tmp_path / name / out), *flags]) == 0
        predictor = load(path)
        rules = (post.min_area > 1 or post.min_peak > post.threshold or post.keep_largest
                 or post.fill_holes)
        for file, frame in frames.items():
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                mask, prob = env["segment"](session, frame)
            assert bool(said) == rules, (name, file)
            np.testing.assert_array_equal(prob, predictor.predict_proba(frame), err_msg=name)
            stem = file[:-4]
            want = np.asarray(Image.open(tmp_path / name / "plain" / f"{stem}_mask.png")) == 255
            assert mask.shape == frame.shape and 0 < want.sum() < want.size, (name, file)
            np.testing.assert_array_equal(mask, want, err_msg=f"{name} {file}")
            want = np.asarray(Image.open(tmp_path / name / "rules" / f"{stem}_mask.png")) == 255
            np.testing.assert_array_equal(apply(prob, post), want, err_msg=f"{name} {file}")


#: Settings added to each section since the first checkpoints: an older build's checkpoint
#: lacks them (1e70402's lacked all five).
LATER_KEYS = {"model": ("attention", "dropout"), "preprocess": ("crop_border",),
              "postprocess": ("min_peak", "tta")}


def _old_style(path: Path, edit: Callable[[dict], None]) -> Path:
    """A random model's checkpoint whose metadata ``edit`` makes as an older build wrote it."""
    model, pre = ModelConfig(variant="same", width=4, depth=2), PreprocessConfig(size=64)
    torch.manual_seed(3)
    net = build_model(model)
    meta = make_meta(model, pre, PostprocessConfig(threshold=0.5))
    edit(meta)
    save_checkpoint(path, net.state_dict(), meta)
    return path


def _export_meta(path: Path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY])


def test_an_older_checkpoint_exports_every_setting_the_readme_s_function_reads(tmp_path):
    """export copied a checkpoint's settings as stored: one from a build before crop_border,
    min_peak, tta, attention and dropout gave an ONNX file without them, and the README's
    segment() (a program without ultraseg) failed on every frame with KeyError 'crop_border'.
    The file now holds the settings as this build reads them, and this build's version; the
    version of the build that trained the model, which that dropped, is kept beside it."""
    import onnxruntime

    def older(meta: dict) -> None:
        for section, keys in LATER_KEYS.items():
            for key in keys:
                del meta[section][key]
        meta["ultraseg_version"] = "0.0.1"

    ckpt = load_checkpoint(_old_style(tmp_path / "old.ckpt", older))
    path = export_onnx(tmp_path / "old.ckpt", tmp_path / "old.onnx", verify=False)
    meta = _export_meta(path)
    for section, keys in LATER_KEYS.items():
        assert set(keys) <= set(meta[section]), section
    assert meta["model"] == ckpt.model.to_dict()
    assert meta["preprocess"] == ckpt.preprocess.to_dict()
    assert meta["postprocess"] == ckpt.postprocess.to_dict()
    from ultraseg import __version__
    assert meta["ultraseg_version"] == __version__
    assert meta["trained_with_version"] == "0.0.1"   # the training build's, kept beside it
    env: dict = {}
    exec(compile(readme_function(), "README.md", "exec"), env)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frame = phantom_frames(tmp_path / "in")["banded.png"]
    mask, prob = env["segment"](session, frame)
    np.testing.assert_array_equal(prob, load(path).predict_proba(frame))


def test_a_checkpoint_that_stored_fill_outlines_false_exports_without_it(tmp_path):
    """Builds 5bdc52d..329e89a wrote ``fill_outlines: false`` into every checkpoint; export
    copied it into the ONNX file, which the builds before the setting refuse (unknown
    PreprocessConfig keys), though a file made now leaves it out where it is not set."""
    def stored_false(meta: dict) -> None:
        meta["preprocess"]["fill_outlines"] = False

    path = export_onnx(_old_style(tmp_path / "f.ckpt", stored_false), tmp_path / "f.onnx",
                       verify=False)
    assert "fill_outlines" not in _export_meta(path)["preprocess"]

    def stored_true(meta: dict) -> None:
        meta["preprocess"]["fill_outlines"] = True

    path = export_onnx(_old_style(tmp_path / "t.ckpt", stored_true), tmp_path / "t.onnx",
                       verify=False)
    assert _export_meta(path)["preprocess"]["fill_outlines"] is True


def test_the_export_states_the_rules_around_the_graph(exported):
    """The rules the settings leave unsaid are in the file, as the README's function reads
    them."""
    for name, (_, path) in exported.items():
        model = onnx.load(str(path))
        graph = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])["onnx"]
        valid = MODELS[name][0].variant == "valid"
        assert graph["crop_border_tolerance"] == 2 and graph["pad_mode"] == "reflect"
        assert graph["zscore_over"] == "canvas"
        assert graph["resize"] == {"shrink": "box", "enlarge": "bilinear",
                                   "probability": "bilinear"}
        assert graph["connectivity"] == {"components": 8, "holes": 4}
        assert graph["tile_align"] == (2**MODELS[name][0].depth if valid else None)


# ------------------------------------------------------------------------ refusals
def test_files_that_are_not_ultraseg_exports_are_one_line_checkpoint_errors(exported, tmp_path):
    garbled = tmp_path / "garbled.onnx"
    garbled.write_bytes(b"\x08\x07garbage" * 40)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    foreign = tmp_path / "foreign.onnx"                    # valid ONNX, no ultraseg metadata
    model = onnx.load(str(exported["valid"][1]))
    del model.metadata_props[:]
    onnx.save(model, str(foreign))
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(exported["valid"][1].read_bytes()[:5000])
    for path, words in ((garbled, "cannot load"), (empty, "empty"),
                        (foreign, "not an ultraseg export"), (truncated, "cannot load"),
                        (tmp_path / "missing.onnx", "no such")):
        with pytest.raises(CheckpointError, match=words) as err:
            onnx_predictor(path)
        assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_export_in_a_folder_whose_name_is_not_utf8_loads_back(exported, tmp_path):
    """A folder named in Latin-1 (an old NAS, a Windows zip; or any non-ASCII name where
    Python's file system encoding is ASCII) reaches Python as text with surrogate escapes,
    which ONNX Runtime's path argument refuses: export wrote and checked the file, then
    predict, evaluate and load called it one ONNX Runtime 'cannot load'."""
    folder = tmp_path / os.fsdecode(b"d\xe9p")
    try:
        folder.mkdir()
    except OSError:
        pytest.skip("this file system refuses names that are not UTF-8")
    ckpt, onnx_file = exported["same"]
    written = export_onnx(ckpt, folder / "m.onnx")
    frame = np.random.default_rng(0).integers(0, 255, (40, 52), dtype=np.uint8)
    want = onnx_predictor(onnx_file).predict(frame)
    np.testing.assert_array_equal(load(written).predict(frame), want)


def _recorded_sha256(path: Path | Predictor, **options) -> str:
    """The sha256 an evaluation's summary records for the model loaded from ``path``."""
    from types import SimpleNamespace

    from ultraseg.evaluate import provenance

    ds = SimpleNamespace(root=Path.cwd(), layout="folders")     # (provenance reads these)
    predictor = path if isinstance(path, Predictor) else load(path, **options)
    return provenance(predictor, ds)["checkpoint"]["sha256"]


def test_an_evaluation_of_an_exported_model_records_the_training_build_s_version(tmp_path):
    """evaluate's summary of an .onnx recorded the exporting build's ultraseg_version alone:
    the version of the build that trained the model (the file's trained_with_version) was
    nowhere in it. A checkpoint's is the ultraseg_version that wrote it."""
    from types import SimpleNamespace

    from ultraseg import __version__
    from ultraseg.evaluate import provenance

    def older(meta: dict) -> None:
        meta["ultraseg_version"] = "0.0.1"

    ckpt = _old_style(tmp_path / "old.ckpt", older)
    onnx_file = export_onnx(ckpt, tmp_path / "old.onnx", verify=False)
    ds = SimpleNamespace(root=tmp_path, layout="folders")
    block = provenance(load(onnx_file), ds)["checkpoint"]
    assert block["ultraseg_version"] == __version__ and block["trained_with_version"] == "0.0.1"
    block = provenance(load(ckpt), ds)["checkpoint"]
    assert block["ultraseg_version"] == block["trained_with_version"] == "0.0.1"


def _sha256(*paths: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for p in paths:
        digest.update(p.read_bytes())
    return digest.hexdigest()


def test_the_recorded_hash_of_an_onnx_model_is_of_the_file_that_was_loaded(exported,
                                                                             tmp_path):
    """The hash was of the file at the predictor's path when evaluate scored, read a second
    time: an export replaced after the load was recorded as the model that gave the figures."""
    path = tmp_path / "m.onnx"
    path.write_bytes(exported["same"][1].read_bytes())
    assert _recorded_sha256(path) == _sha256(path)      # a whole file: its own sha256sum
    predictor = load(path)
    path.write_bytes(exported["same-instance"][1].read_bytes())     # another model there
    assert _recorded_sha256(predictor) == _sha256(exported["same"][1])


def test_an_onnx_model_replaced_while_it_loads_is_refused(exported, tmp_path, monkeypatch):
    """What ONNX Runtime opens by name and what is hashed are two reads of the path: a file
    replaced between them would be hashed as another model than the one that runs."""
    import ultraseg.export as ex

    path = tmp_path / "m.onnx"
    path.write_bytes(exported["same"][1].read_bytes())
    real = ex._session

    def replaced_first(source, providers=None, threads=None):
        other = tmp_path / "other.onnx"
        other.write_bytes(exported["same-instance"][1].read_bytes())
        os.replace(other, path)
        return real(source, providers, threads)

    monkeypatch.setattr(ex, "_session", replaced_first)
    with pytest.raises(CheckpointError, match="changed while it was loaded"):
        load(path)


def _external(source: Path, folder: Path, scale: float = 1.0) -> Path:
    """``source`` saved in ``folder`` as model.onnx with its weights in model.onnx.data beside
    it (every float initializer; shapes and pads stay in the graph, where ONNX Runtime's shape
    inference reads them), the weights times ``scale``."""
    from onnx import numpy_helper
    from onnx.external_data_helper import set_external_data

    model = onnx.load(str(source))
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32:
            t.CopyFrom(numpy_helper.from_array(a * np.float32(scale), t.name))
            set_external_data(t, "model.onnx.data")
    folder.mkdir()
    onnx.save_model(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes: POSIX")
@pytest.mark.parametrize("entry", ["fifo", "link-to-fifo", "dot-dot", "absolute"])
def test_external_data_that_is_no_plain_file_in_the_model_s_folder_is_refused(
        exported, tmp_path, entry):
    """An ONNX file whose external data entry named a FIFO (or a link to one) blocked predict
    for ever, in the open() that hashes it, before ONNX Runtime's own check of the path (a
    security review, D6); one naming a file outside the model's folder ('../', an absolute
    path) was read and hashed before ONNX Runtime refused it. Each is refused, naming the
    model and the entry: a name leading out before anything is opened, a FIFO once opened
    without waiting on it; the load runs in a process of its own, so that a regression fails
    on its timeout."""
    path = _external(exported["same"][1], tmp_path / "m")
    data = tmp_path / "m" / "model.onnx.data"
    name = "model.onnx.data"
    if entry == "fifo":
        data.unlink()
        os.mkfifo(data)
    elif entry == "link-to-fifo":
        data.unlink()
        os.mkfifo(tmp_path / "w.fifo")
        data.symlink_to(Path("..") / "w.fifo")
    else:
        data.rename(tmp_path / "w.data")
        name = "../w.data" if entry == "dot-dot" else str(tmp_path / "w.data")
        model = onnx.load(str(path), load_external_data=False)
        for t in model.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = name
        path.write_bytes(model.SerializeToString())
    code = textwrap.dedent(f"""
        from ultraseg.errors import CheckpointError
        from ultraseg.export import onnx_predictor
        try:
            onnx_predictor({str(path)!r})
        except CheckpointError as e:
            print(e)
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    said = done.stdout.strip()
    assert said.startswith(f"{path}: ") and repr(name) in said and "\n" not in said
    if "fifo" in entry:
        assert "is not a plain file (a named pipe, a device or a folder)" in said
    else:
        assert "names a file outside the model's folder" in said


def test_external_data_linked_into_a_blob_store_loads(exported, tmp_path):
    """A model whose files are links into a blob store (the Hugging Face hub cache's
    snapshots/REV/model.onnx.data -> ../../blobs/SHA, git-annex, DVC) loads, as ONNX Runtime
    loads it: its entries' names stay inside the model's folder, and what they lead to is a
    plain file. It was refused as 'not a plain file inside the model's folder' (b8d512b)."""
    blobs = _external(exported["same"][1], tmp_path / "blobs").parent
    (blobs / "model.onnx").rename(blobs / "h1")
    (blobs / "model.onnx.data").rename(blobs / "h2")
    snap = tmp_path / "snapshots" / "rev"
    snap.mkdir(parents=True)
    (snap / "model.onnx").symlink_to(Path("..") / ".." / "blobs" / "h1")
    (snap / "model.onnx.data").symlink_to(Path("..") / ".." / "blobs" / "h2")
    frame = np.random.default_rng(0).integers(0, 255, (40, 52), dtype=np.uint8)
    np.testing.assert_array_equal(load(snap / "model.onnx").predict(frame),
                                  load(exported["same"][1]).predict(frame))
    assert _recorded_sha256(snap / "model.onnx") == _sha256(blobs / "h1", blobs / "h2")


def test_the_recorded_hash_of_an_onnx_model_covers_its_external_data(exported, tmp_path):
    """Weights saved beside the graph (onnx's external data: model.onnx.data) were outside
    the hash: two models with other weights in the same graph were recorded as one."""
    a = _external(exported["same"][1], tmp_path / "a")
    b = _external(exported["same"][1], tmp_path / "b", scale=1.5)
    assert a.read_bytes() == b.read_bytes()     # one graph file, other weights
    frame = np.random.default_rng(0).integers(0, 255, (40, 52), dtype=np.uint8)
    np.testing.assert_array_equal(load(a).predict(frame),
                                  load(exported["same"][1]).predict(frame))
    first = _recorded_sha256(a)
    (tmp_path / "a" / "model.onnx.data").write_bytes((tmp_path / "b" / "model.onnx.data")
                                                     .read_bytes())
    second = _recorded_sha256(a)
    assert first != second
    # the graph's file, then its external data files in the order of their names
    assert second == _sha256(a, tmp_path / "a" / "model.onnx.data")


def test_valid_export_refuses_another_tile(exported):
    with pytest.raises(UltrasegError, match="takes tile 132 only"):
        load(exported["valid"][1], tile=100)
    predictor = load(exported["valid"][1], tile=132)
    assert predictor.tile == 132
    # with_options skipped the check, and ONNX Runtime's own error came out of predict
    for tile in (None, 20):
        with pytest.raises(UltrasegError, match="takes tile 132 only"):
            predictor.with_options(tile=tile)
    assert predictor.with_options(batch_size=2).tile == 132


def _with_meta(source: Path, path: Path, edit: Callable[[dict], object]) -> Path:
    """A copy of the ONNX file ``source`` at ``path`` whose ultraseg metadata ``edit`` changed
    in place."""
    model = onnx.load(str(source))
    entry = next(e for e in model.metadata_props if e.key == "ultraseg")
    meta = json.loads(entry.value)
    edit(meta)
    entry.value = json.dumps(meta)
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("change", [{"output_tile": None}, {"output_tile": 20}, "drop"])
def test_valid_export_whose_tile_metadata_does_not_fit_its_graph(exported, tmp_path, change):
    """A missing, null or wrong output_tile was a KeyError, a TypeError or ONNX Runtime's
    INVALID_ARGUMENT at the first frame: internal errors."""
    def edit(meta: dict) -> None:
        if change == "drop":
            del meta["onnx"]["output_tile"]
        else:
            meta["onnx"].update(change)

    path = _with_meta(exported["valid"][1], tmp_path / "m.onnx", edit)
    with pytest.raises(CheckpointError, match="output_tile") as err:
        load(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)



@pytest.mark.parametrize("name, depth, words", [
    ("same", 3, "multiple_of"), ("same", 10, "multiple_of"), ("same", 20, "model.depth"),
    ("same", 1000, "model.depth"), ("valid", 1000, "model.depth")])
def test_an_export_whose_model_depth_does_not_fit_its_graph_is_refused(exported, tmp_path,
                                                                        name, depth, words):
    """Depth 20 in the metadata of a depth-2 export: frames padded to multiples of 2**20,
    'Unable to allocate 4.00 TiB' with advice about --batch-size; depth 1000: 'internal
    error: TypeError: pad_width'."""
    path = _with_meta(exported[name][1], tmp_path / "m.onnx",
                      lambda meta: meta["model"].update(depth=depth))
    with pytest.raises(CheckpointError, match="damaged ultraseg metadata") as err:
        load(path)
    assert words in str(err.value)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_export_whose_working_size_is_beyond_any_frame_is_refused(exported, tmp_path):
    """preprocess.size 200000 in a shared ONNX file's metadata loaded, and predict then asked
    for a 200000 x 200000 canvas (160 GB as floats), its out-of-memory error blaming the
    64 x 64 image (a security review, D5): refused on loading, as a checkpoint's is."""
    from ultraseg.config import MAX_SIZE

    path = _with_meta(exported["same"][1], tmp_path / "m.onnx",
                      lambda meta: meta["preprocess"].update(size=200_000))
    with pytest.raises(CheckpointError, match="preprocess.size") as err:
        load(path)
    said = str(err.value)
    assert str(path) in said and "200000" in said and f"1 to {MAX_SIZE}" in said
    assert "\n" not in said


def test_an_export_with_a_setting_this_ultraseg_lacks_is_called_newer_not_damaged(exported,
                                                                                  tmp_path):
    """An export made by a later build (a preprocess setting added since) was refused as
    'damaged ultraseg metadata in the ONNX file', though both builds said 0.1.0."""
    path = _with_meta(exported["same"][1], tmp_path / "m.onnx",
                      lambda meta: meta["preprocess"].update(a_later_setting=True))
    with pytest.raises(CheckpointError, match="written by a newer ultraseg") as err:
        load(path)
    assert "damaged" not in str(err.value) and "a_later_setting" in str(err.value)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_an_export_whose_metadata_is_nested_too_deeply_is_refused(exported, tmp_path):
    """JSON nested deeper than Python reads: 'internal error: RecursionError'."""
    model = onnx.load(str(exported["same"][1]))
    entry = next(e for e in model.metadata_props if e.key == "ultraseg")
    entry.value = '{"onnx": {}, "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(CheckpointError, match="damaged ultraseg metadata.*nested too deeply"
                       ) as err:
        onnx_predictor(path)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_failed_export_leaves_the_target_untouched(tmp_path):
    target = tmp_path / "m.onnx"
    target.write_bytes(b"previous")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        export_onnx(bad, target)
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.ckpt", "m.onnx"]
    with pytest.raises(UltrasegError, match="does not exist"):
        export_onnx(bad, tmp_path / "no" / "m.onnx")


@pytest.fixture
def torchscript_only(monkeypatch) -> None:
    """torch.onnx.export refuses the torch.export-based exporter, as it does some graphs."""
    real_export = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", True):
            raise RuntimeError("torch.export cannot take this graph")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)


def test_falls_back_to_the_torchscript_exporter(tmp_path, torchscript_only):
    cfg = ModelConfig(variant="valid", width=4, depth=2, tile=20)
    ckpt = tmp_path / "v.ckpt"
    torch.manual_seed(0)
    save_checkpoint(ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=None), PostprocessConfig()))
    path = export_onnx(ckpt, tmp_path / "v.onnx")           # verified against torch inside
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY])
    assert meta["onnx"]["exporter"] == "torchscript" and meta["onnx"]["output_tile"] == 20
    image = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
    want = load(ckpt, device="cpu", precision="fp32", tile=20).predict_proba(image)
    assert np.abs(load(path).predict_proba(image) - want).max() < 1e-4


#: The loggers the exporter's chatter comes from, raised to ERROR during an export.
EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@pytest.fixture
def exporter_levels():
    """The exporter's loggers at levels of their own (DEBUG, INFO, unset), put back after."""
    import logging

    loggers = [logging.getLogger(n) for n in EXPORTER_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg, level in zip(loggers, (logging.DEBUG, logging.INFO, logging.NOTSET)):
        lg.setLevel(level)
    yield [lg.level for lg in loggers]
    for lg, level in zip(loggers, before):
        lg.setLevel(level)


def test_an_export_leaves_the_exporter_s_logger_levels_as_it_found_them(tmp_path,
                                                                        exporter_levels):
    import logging

    cfg = ModelConfig(variant="same", width=4, depth=2)
    ckpt = tmp_path / "s.ckpt"
    save_checkpoint(ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    export_onnx(ckpt, tmp_path / "s.onnx")
    assert [logging.getLogger(n).level for n in EXPORTER_LOGGERS] == exporter_levels


def test_overlapping_exports_restore_the_exporter_s_logger_levels(exporter_levels):
    """Two exports in two threads (A opens, B opens, A ends, B ends) left the exporter's
    loggers at ERROR for the rest of the process: B had saved the level A raised."""
    import logging

    from ultraseg.export import _quiet_logs

    first, second = _quiet_logs(), _quiet_logs()
    first.__enter__()
    second.__enter__()
    assert all(logging.getLogger(n).level >= logging.ERROR for n in EXPORTER_LOGGERS)
    first.__exit__(None, None, None)
    assert all(logging.getLogger(n).level >= logging.ERROR for n in EXPORTER_LOGGERS)
    second.__exit__(None, None, None)
    assert [logging.getLogger(n).level for n in EXPORTER_LOGGERS] == exporter_levels


def test_ctrl_c_during_the_first_exporter_stops_the_export(tmp_path, monkeypatch) -> None:
    """torch wraps a KeyboardInterrupt in its exporter's error: Ctrl-C during the
    torch.export-based exporter fell back to the TorchScript one and exited 0, exported."""
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(kwargs.get("dynamo", True))
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Failed to export the model with torch.export") from e

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    cfg = ModelConfig(variant="same", width=4, depth=2)
    ckpt = tmp_path / "s.ckpt"
    save_checkpoint(ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    with pytest.raises(KeyboardInterrupt):
        export_onnx(ckpt, tmp_path / "s.onnx")
    assert calls == [True] and not (tmp_path / "s.onnx").exists()


def test_presence_head_exports_with_the_torchscript_exporter_too(exported, tmp_path,
                                                                 torchscript_only):
    ckpt = exported["same-presence"][0]
    path = export_onnx(ckpt, tmp_path / "p.onnx")           # verified against torch inside
    meta = json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}[META_KEY])
    assert meta["onnx"]["exporter"] == "torchscript"
    image = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
    want = load(ckpt, device="cpu", precision="fp32").predict_proba(image)
    assert np.abs(load(path).predict_proba(image) - want).max() < 1e-4


@pytest.mark.parametrize("exporter", ["default", "torchscript"])
def test_a_frame_a_classifier_head_calls_absent_exports_empty(exported, tmp_path, exporter,
                                                               request):
    if exporter == "torchscript":
        request.getfixturevalue("torchscript_only")
    present = exported["same-classifier"][0]            # its head says present (bias 3)
    ckpt = load_checkpoint(present)
    weights = {**ckpt.state_dict, "presence.bias": torch.full((1,), -3.0)}
    absent = tmp_path / "absent.ckpt"
    save_checkpoint(absent, weights, make_meta(ckpt.model, ckpt.preprocess, ckpt.postprocess))
    image = np.random.default_rng(0).integers(0, 256, (50, 70), dtype=np.uint8)
    for path, empty in ((present, False), (absent, True)):
        onnx_path = export_onnx(path, tmp_path / f"{path.stem}-{exporter}.onnx")
        want = load(path, device="cpu", precision="fp32").predict_proba(image)
        got = load(onnx_path).predict_proba(image)
        assert np.abs(got - want).max() < 1e-4
        assert (got.max() == 0.0) if empty else (got.max() > 0.5)


@pytest.mark.parametrize("opset", [13, 17])
def test_the_opset_asked_for_is_the_opset_written(exported, tmp_path, opset):
    """torch's own exporter raises an opset under 18 to 18; ultraseg then takes the
    TorchScript exporter rather than hand back another opset than the one asked for."""
    path = export_onnx(exported["same"][0], tmp_path / "m.onnx", opset=opset)  # verified inside
    model = onnx.load(str(path))
    assert [op.version for op in model.opset_import if op.domain in ("", "ai.onnx")] == [opset]
    meta = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])
    assert meta["onnx"]["opset"] == opset


@pytest.mark.parametrize("opset", [None, 17])
def test_a_graph_that_cannot_refuse_a_size_off_the_multiple_says_so(exported, tmp_path, opset):
    """The TorchScript exporter's graph (opset 17 and lower) declared free 'height' and
    'width' and, given 66 x 64 on a depth-2 model, returned 64 x 64 without an error: a
    program sizing its input from the graph got probabilities off its canvas. Its axes now
    name the multiple, the metadata says the graph does not enforce it, and export warns."""
    import onnxruntime as ort

    with ultraseg_warnings() as warned:
        path = export_onnx(exported["same"][0], tmp_path / "m.onnx", opset=opset)
    model = onnx.load(str(path))
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    graph = json.loads({p.key: p.value for p in model.metadata_props}[META_KEY])["onnx"]
    assert graph["multiple_of"] == 4 and graph["multiple_of_enforced"] == (opset is None)
    said = [r.getMessage() for r in warned if "multiple of 4" in r.getMessage()]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.zeros((1, 1, 66, 64), np.float32)
    if opset is None:                                   # torch.export's graph refuses it
        assert graph["exporter"] == "dynamo" and not said
        with pytest.raises(Exception):
            sess.run(None, {"image": x})
    else:
        assert graph["exporter"] == "torchscript"
        assert dims[2:] == ["height_multiple_of_4", "width_multiple_of_4"]
        assert len(said) == 1 and str(path) in said[0] and "opset 18" in said[0]
        assert sess.run(None, {"image": x})[0].shape == (1, 1, 64, 64)   # cropped, no error


def test_an_opset_no_exporter_writes_is_a_user_error(exported, tmp_path, capfd):
    with pytest.raises(UltrasegError, match="opset 9"):
        export_onnx(exported["same"][0], tmp_path / "m.onnx", opset=9)
    assert not (tmp_path / "m.onnx").exists()
    # torch's C++ side dumped its whole graph (26-56 kB) to file descriptor 1 on the way
    assert capfd.readouterr().out == ""
    print("stdout still works")
    assert capfd.readouterr().out == "stdout still works\n"


def test_a_valid_model_at_native_resolution_exports_a_tile_with_its_values(tmp_path) -> None:
    """The checkpoint predicts each native-size frame in one window; its ONNX graph has one
    fixed tile (model.tile). The tiles start on the pooling grid, so the graph gives the one
    window's values (they met the grid elsewhere before, and the export warned)."""
    cfg = ModelConfig(variant="valid", width=4, depth=2, tile=20)
    ckpt = tmp_path / "v.ckpt"
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)                # a network whose output depends on the grid
    save_checkpoint(ckpt, model.state_dict(),
                    make_meta(cfg, PreprocessConfig(size=None), PostprocessConfig()))
    with ultraseg_warnings() as warned:
        export_onnx(ckpt, tmp_path / "v.onnx")
    assert warned == []
    image = np.random.default_rng(2).integers(0, 256, (61, 47), dtype=np.uint8)
    one = load(ckpt, device="cpu", precision="fp32").predict_proba(image)
    onnx_pred = load(tmp_path / "v.onnx")
    assert onnx_pred.tile == 20 and one.std() > 0.01
    np.testing.assert_allclose(onnx_pred.predict_proba(image), one, atol=1e-5)


def test_export_rounds_a_tile_up_as_prediction_does(tmp_path) -> None:
    """--tile 4 is a valid output side at depth 4, but its windows cannot start on the 16-px
    pooling grid (the graph predicted 0.3 away from the checkpoint): it is rounded up to the
    smallest that can, 20, as predict rounds it. --tile 21, which export refused while predict
    took it as 36, is rounded up too; the log says so."""
    from ultraseg.export import export_tile

    model = ModelConfig(variant="valid", width=2, depth=4)
    pre = PreprocessConfig(size=None)
    assert [export_tile(model, pre, t) for t in (4, 20, 21, 36)] == [20, 20, 36, 36]
    ckpt = tmp_path / "d4.ckpt"
    save_checkpoint(ckpt, build_model(model).state_dict(),
                    make_meta(model, pre, PostprocessConfig()))
    said: list[logging.LogRecord] = []
    logger, handler = logging.getLogger("ultraseg.export"), logging.Handler(logging.INFO)
    handler.emit = said.append                                 # type: ignore[method-assign]
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        export_onnx(ckpt, tmp_path / "t4.onnx", tile=4)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert any("--tile 4 rounded up to 20" in r.getMessage() for r in said), [
        r.getMessage() for r in said]
    assert load(tmp_path / "t4.onnx").tile == 20


def test_a_small_tile_export_rounded_up_is_taken_by_predict_as_by_a_checkpoint(tmp_path
                                                                               ) -> None:
    """`export --tile 3` wrote a tile-12 graph (depth 3) saying so at info level alone, then
    `predict model.onnx --tile 3` was refused with a hint to re-export (which gave 12 again),
    while the checkpoint took --tile 3 as 12. Both paths round a tile up to the smallest that
    starts on the pooling grid, and the rounding of a tile given is a warning."""
    model = ModelConfig(variant="valid", width=2, depth=3)
    pre = PreprocessConfig(size=48, normalise="unit")
    torch.manual_seed(0)
    net = build_model(model)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)
    ckpt = tmp_path / "d3.ckpt"
    save_checkpoint(ckpt, net.state_dict(), make_meta(model, pre, PostprocessConfig()))
    with ultraseg_warnings() as warned:
        export_onnx(ckpt, tmp_path / "t3.onnx", tile=3)
    assert [r.getMessage() for r in warned if "--tile 3 rounded up to 12" in r.getMessage()]
    frame = np.random.default_rng(2).integers(0, 256, (40, 52), dtype=np.uint8)
    with ultraseg_warnings() as warned:
        graph = load(tmp_path / "t3.onnx", tile=3)
        checkpoint = load(ckpt, device="cpu", precision="fp32", tile=3)
    said = [r.getMessage() for r in warned]
    assert sum("tile (--tile) 3 rounded up to 12" in m for m in said) == 2, said
    one = checkpoint.predict_proba(frame)
    assert one.std() > 0.01
    np.testing.assert_allclose(graph.predict_proba(frame), one, atol=1e-5)
    with pytest.raises(UltrasegError, match="takes tile 12 only"):
        load(tmp_path / "t3.onnx", tile=13)                     # a 20 window: another graph


@pytest.mark.parametrize("tile, side", [(3, 12), (13, 20), (12, 12), (20, 20)])
def test_a_tile_given_is_warned_of_wherever_it_is_rounded(tmp_path, tile, side) -> None:
    """export --tile 25 (depth 4) warned that it became 36, where predict --tile 25 took it
    as 36 in silence (load warned only below the smallest tile on the pooling grid). One
    rule for both: a tile given that is rounded is warned of, by export and load alike; a
    valid side given is kept in silence."""
    from ultraseg.export import export_tile

    model = ModelConfig(variant="valid", width=2, depth=3)
    pre = PreprocessConfig(size=48, normalise="unit")
    ckpt = tmp_path / "d3.ckpt"
    save_checkpoint(ckpt, build_model(model).state_dict(),
                    make_meta(model, pre, PostprocessConfig()))
    with ultraseg_warnings() as warned:
        assert export_tile(model, pre, tile) == side
        load(ckpt, device="cpu", precision="fp32", tile=tile)
    said = [r.getMessage() for r in warned if "rounded up" in r.getMessage()]
    if side == tile:
        assert said == []
    else:
        assert len(said) == 2, said
        assert f"--tile {tile} rounded up to {side}" in said[0]
        assert f"tile (--tile) {tile} rounded up to {side}" in said[1]


@pytest.mark.parametrize("variant", ["valid", "same"])
@pytest.mark.parametrize("tile", [0, -3])
def test_export_refuses_a_tile_below_one_in_its_own_words(tmp_path, variant, tile) -> None:
    """--tile -3 was refused as "not a valid output side ...; nearest: 4" on the valid model
    and taken without a check on the same model."""
    model = ModelConfig(variant=variant, width=2, depth=2)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, build_model(model).state_dict(),
                    make_meta(model, PreprocessConfig(size=32), PostprocessConfig()))
    with pytest.raises(UltrasegError,
                       match=rf"^tile must be a whole number from 1 \(or None\), got {tile}$"):
        export_onnx(ckpt, tmp_path / "t.onnx", tile=tile)
    assert not (tmp_path / "t.onnx").exists()


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_an_exported_model_names_no_folder(tmp_path, request, exporter) -> None:
    """The export meant to keep no paths (it drops the run's config) but kept the training
    report's dataset folder and checkpoint path (`Patients/Smith_John_MRN12345`), and the
    exporter's stack traces named the install's folders on every node."""
    import re

    if exporter == "torchscript":
        request.getfixturevalue("torchscript_only")

    cfg = ModelConfig(variant="same", width=4, depth=2)
    folder = tmp_path / "Patients" / "Smith_John_MRN12345"
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig(),
                     metrics={"best_epoch": 2, "report": {
                         "dataset": f"{folder} (folders)", "best epoch": 2,
                         "checkpoint": str(tmp_path / "Studies" / "Doe_Jane" / "best.ckpt")}},
                     run={"data": {"path": str(folder)}})
    ckpt = tmp_path / "Smith_John_MRN123.ckpt"             # a file named after a patient too
    save_checkpoint(ckpt, build_model(cfg).state_dict(), meta)
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    raw = path.read_bytes()
    assert b"Smith_John" not in raw and b"Doe_Jane" not in raw
    assert not re.search(rb"(/tmp|/work|/home|/root|site-packages|[A-Z]:\\\\)", raw)
    kept = load(path).meta["metrics"]
    assert kept["best_epoch"] == 2 and kept["report"]["best epoch"] == 2   # the figures stay


# The variables by which ONNX Runtime takes a process for a CI job, where it sends nothing
# (.ci/run sets CI): taken out of the probes' environment, or the check could not fail there.
_CI_VARIABLES = ("CI", "TF_BUILD", "GITHUB_ACTIONS", "GITLAB_CI", "CIRCLECI", "TRAVIS",
                 "JENKINS_URL", "CODEBUILD_BUILD_ID", "BUILDKITE", "TEAMCITY_VERSION",
                 "APPVEYOR", "BITBUCKET_BUILD_NUMBER")


def _telemetry_files(tmp_path: Path, name: str, code: str) -> list[str]:
    """The files a fresh interpreter running ``code`` leaves under a home folder of its own."""
    from ultraseg.export import TELEMETRY_SWITCH

    home = tmp_path / name
    home.mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in _CI_VARIABLES and k != TELEMETRY_SWITCH and not k.startswith("XDG_")}
    env["HOME"] = str(home)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    return sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())


def test_onnx_runtime_is_imported_with_its_telemetry_off(tmp_path) -> None:
    """ONNX Runtime 1.32 starts telemetry on import: a device id and an event store under
    ~/.cache/Microsoft/DeveloperTools, events for Microsoft's collector, and a coloured
    warning on stderr where HOME cannot be written. Predicting on patients' frames from an
    .onnx file did all that."""
    if not _telemetry_files(tmp_path, "plain", "import onnxruntime"):
        pytest.skip("this onnxruntime writes no telemetry files on import: nothing to check")
    assert _telemetry_files(tmp_path, "ultraseg",
                            "from ultraseg.export import _onnxruntime; _onnxruntime()") == []


def test_an_unfinished_run_s_export_is_strict_json_and_says_it_is_unfinished(exported,
                                                                            tmp_path) -> None:
    """A run trained with --val-fraction 0 (the README's recipe for the final model) has NaN
    validation figures; the ONNX file's metadata carried them as `NaN`, which JSON.parse,
    Java's and C#'s readers refuse. And an export of a checkpoint saved during training
    warned once, at export; predicting with the .onnx never said its post-processing is
    the defaults, though the same checkpoint says so each time it is loaded."""
    ckpt = load_checkpoint(exported["same"][0])
    meta = dict(ckpt.meta, metrics={"history": [{"epoch": 1, "train_loss": 0.5,
                                                 "val_loss": float("nan"),
                                                 "val_dice": float("nan")}],
                                    "best_epoch": 1, "best_val_dice": float("inf")})
    save_checkpoint(tmp_path / "epoch1.ckpt", ckpt.state_dict, meta)

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} is not JSON")

    payload = torch.load(tmp_path / "epoch1.ckpt", weights_only=True)
    json.loads(payload["meta_json"], parse_constant=refuse)
    with ultraseg_warnings() as warned:
        path = export_onnx(tmp_path / "epoch1.ckpt", tmp_path / "epoch1.onnx")
    assert [r for r in warned if "saved during training" in r.getMessage()]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props[META_KEY], parse_constant=refuse)["metrics"]["history"][0][
        "val_loss"] is None
    with ultraseg_warnings() as warned:
        onnx_predictor(path)
    (said,) = [r.getMessage() for r in warned if "saved during training" in r.getMessage()]
    assert str(path) in said and "post-processing is the defaults" in said
    with ultraseg_warnings() as warned:                  # a finished run's export: no word
        onnx_predictor(exported["same"][1])
    assert not [r for r in warned if "saved during training" in r.getMessage()]


@pytest.mark.parametrize("fake, said", [
    ("raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')",
     "ONNX support is not installed: pip install 'ultraseg[onnx]' "
     "(from a checkout: pip install -e '.[onnx]')"),
    # onnxruntime 1.18.0 built on NumPy 1 under NumPy 2: installed, but it cannot be imported
    ("raise ImportError('numpy.core.multiarray failed to import')",
     "onnxruntime is installed but cannot be imported (numpy.core.multiarray failed to "
     "import)"),
])
def test_onnx_runtime_not_installed_is_told_from_one_that_fails_to_import(
        tmp_path, monkeypatch, fake, said) -> None:
    """Every ImportError was 'ONNX support is not installed: pip install ...', which answers
    'Requirement already satisfied' where onnxruntime is installed but fails to import."""
    from ultraseg import export

    (tmp_path / "onnxruntime").mkdir()
    (tmp_path / "onnxruntime" / "__init__.py").write_text(fake + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    with pytest.raises(UltrasegError) as e:
        export._onnxruntime()
    assert str(e.value) == said


def test_an_onnx_predictor_names_its_engine_for_an_evaluations_record(exported):
    """summary.json names the engine that gave the figures: ONNX Runtime's version, its CPU
    provider and fp32 for an exported model."""
    import onnxruntime as ort

    from ultraseg.export import onnx_predictor

    assert onnx_predictor(exported["same"][1]).runtime == {
        "onnxruntime_version": ort.__version__, "device": "cpu", "precision": "fp32"}


def test_load_gives_threads_to_an_onnx_session_and_warns_a_checkpoint_s(exported,
                                                                        monkeypatch):
    """An ONNX session takes its threads when it is made, so load passes them on; a
    checkpoint's torch threads are the process's, and load says so rather than drop them."""
    from conftest import onnx_session_threads, ultraseg_warnings

    made = onnx_session_threads(monkeypatch)
    ckpt, path = exported["same"]
    load(path, threads=1)
    assert made == [1]
    with ultraseg_warnings() as warned:
        load(ckpt, device="cpu", threads=1)
    assert any("runtime.threads(1)" in r.getMessage() for r in warned)


@pytest.mark.parametrize("n", [0, -1])
def test_load_refuses_fewer_than_one_thread_as_the_cli_does(exported, n):
    """`--threads 0` is refused by the CLI; load(onnx, threads=0 or -1) went through, ONNX
    Runtime quietly taking its default (one per core) for a caller who asked for fewer."""
    ckpt, path = exported["same"]
    for model in (path, ckpt):
        with pytest.raises(UltrasegError,
                           match=rf"threads must be a whole number from 1 \(or None\), got {n}$"):
            load(model, device="cpu", threads=n)


@pytest.mark.parametrize("n", [1.0, 1.5, "2", True], ids=["1.0", "1.5", "str", "bool"])
def test_load_refuses_threads_that_are_not_a_whole_number(exported, n):
    """threads=1.0 or 1.5 for an .onnx was blamed on the file ('ONNX Runtime cannot load this
    file'), "2" raised a raw TypeError, and a checkpoint took 1.5 (its warning said 1)."""
    ckpt, path = exported["same"]
    for model in (path, ckpt):
        with pytest.raises(UltrasegError,
                           match=r"threads must be a whole number from 1 \(or None\), got "):
            load(model, device="cpu", threads=n)


def test_load_takes_a_numpy_integer_for_threads(exported, monkeypatch):
    from conftest import onnx_session_threads

    made = onnx_session_threads(monkeypatch)
    load(exported["same"][1], threads=np.int64(2))
    assert made == [2]


def test_a_model_with_external_data_loads_where_only_onnxruntime_is_installed(
        exported, tmp_path, monkeypatch):
    """Telling a model's external data files apart needs the onnx package, which a deployment
    with ONNX Runtime alone lacks: loading such a model raised 'install the onnx extra'
    (any .onnx whose bytes held the word 'location', a data path's folder name included)."""
    import sys

    from conftest import ultraseg_warnings

    a = _external(exported["same"][1], tmp_path / "a")
    monkeypatch.setitem(sys.modules, "onnx", None)      # any 'import onnx' raises ImportError
    frame = np.random.default_rng(0).integers(0, 255, (40, 52), dtype=np.uint8)
    with ultraseg_warnings() as warned:
        predictor = load(a)
    np.testing.assert_array_equal(predictor.predict(frame),
                                  load(exported["same"][1]).predict(frame))
    assert _recorded_sha256(predictor) == _sha256(a)      # the graph's file alone, and said
    assert any("without the onnx package" in r.getMessage() for r in warned)


def test_load_warns_where_an_onnx_session_s_threads_exceed_the_cores(exported, monkeypatch):
    """load(model.onnx, threads=N) gives the session N threads; N above the cores this
    process may use oversubscribed them in silence (train and the CLI's --threads warn).
    load warns once, naming its threads= as a Python caller writes it (threads=2, threads=1
    or fewer), not the CLI's --threads, which it named first; a checkpoint's threads, not
    applied, get load's note alone. The cores are faked to 1."""
    from ultraseg import shared

    monkeypatch.setattr(shared, "usable_cores", lambda: 1)
    ckpt, path = exported["same"]
    for model, n, expected in ((path, 2, 1), (path, 1, 0), (ckpt, 2, 0)):
        with ultraseg_warnings() as warned:
            load(model, device="cpu", threads=n)
        said = [r.getMessage() for r in warned if "more threads than" in r.getMessage()]
        assert len(said) == expected, (model, n, said)
        assert all("threads=2 " in s and "threads=1 or fewer" in s and "1 core" in s
                   and "--threads" not in s for s in said), said


@pytest.mark.parametrize("args", [{"tile": "20"}, {"tile": 20.5}, {"tile": 0}, {"opset": "17"},
                                  {"opset": 17.0}, {"opset": 0}, {"checkpoint_path": 5}])
def test_export_refuses_a_tile_opset_or_path_of_the_wrong_type_naming_it(tmp_path,
                                                                        args) -> None:
    """export_onnx(..., tile="20") raised TypeError ("'<' not supported between 'str' and
    'int'"); opset="17" ran both exporters and blamed the opset ('cannot export at opset
    17 ('>' not supported ...)'); a Predictor for the checkpoint, pathlib's TypeError (an API
    misuse review, item 7)."""
    ckpt = tmp_path / "best.ckpt"
    cfg = ModelConfig(variant="same", width=2, depth=1)
    save_checkpoint(ckpt, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=16), PostprocessConfig()))
    name, value = next(iter(args.items()))
    words = ("export_onnx takes a checkpoint's path" if name == "checkpoint_path"
             else f"{name} must be a whole number")
    with pytest.raises(UltrasegError, match=words):
        export_onnx(**{"checkpoint_path": ckpt, "onnx_path": tmp_path / "m.onnx", **args})
    assert not (tmp_path / "m.onnx").exists()


def test_an_export_inside_a_callers_autocast_block_is_the_fp32_graph(tmp_path) -> None:
    """export_onnx inside a notebook's torch.autocast("cpu", bfloat16) block traced the casts
    to bf16 into the graph, which ONNX Runtime refused (InvalidGraph, a raw error). The graph
    exported inside is the one exported outside: the same probabilities."""
    torch.manual_seed(0)
    cfg = ModelConfig(variant="same", width=8, depth=2)
    net = build_model(cfg)
    with torch.no_grad():
        net.head.weight.mul_(4.0)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, net.state_dict(),
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    outside = export_onnx(ckpt, tmp_path / "outside.onnx")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = export_onnx(ckpt, tmp_path / "inside.onnx")
        assert torch.is_autocast_enabled("cpu")
    frame = np.random.default_rng(0).integers(0, 256, (40, 48), dtype=np.uint8)
    np.testing.assert_array_equal(load(inside).predict_proba(frame),
                                  load(outside).predict_proba(frame))
