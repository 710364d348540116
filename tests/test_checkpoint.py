"""Self-describing checkpoints: the round trip gives identical predictions, the metadata says
everything prediction needs, and every file that is not a sound ultraseg checkpoint is refused
with a CheckpointError -- above all a pickle that would run code, which must never run."""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ultraseg import __version__, cli
from ultraseg.checkpoint import (
    FORMAT,
    build_from_checkpoint,
    load_checkpoint,
    make_meta,
    save_checkpoint,
)
from ultraseg.config import (
    DataConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
    RunConfig,
    TrainConfig,
)
from ultraseg.errors import CheckpointError
from ultraseg.evaluate import evaluate
from ultraseg.model import build_model
from ultraseg.phantom import make_dataset
from ultraseg.predict import Predictor, load
from ultraseg.runtime import torch_runner
from ultraseg.train import train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch 'same' run on 30 phantom frames of 32 px: (data, run folder)."""
    root = tmp_path_factory.mktemp("ckpt")
    data = make_dataset(root / "data", n=30, size=32, seed=5)
    cfg = RunConfig(
        data=DataConfig(path=str(data), layout="folders", cache_dir=""),
        preprocess=PreprocessConfig(size=32, normalise="zscore"),
        model=ModelConfig(variant="same", width=4, depth=2),
        train=TrainConfig(epochs=2, batch_size=4, lr=3e-3, device="cpu", precision="fp32",
                          num_threads=1),
        preset="custom")
    train(cfg, root / "run")
    return data, root / "run"


def _model_with_statistics(cfg: ModelConfig, seed: int = 0) -> torch.nn.Module:
    """A model whose weights and batch-norm statistics are not the initial ones."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    if cfg.variant == "same":  # a few forward passes in train mode move the running stats
        model.train()
        for _ in range(3):
            model(torch.randn(2, 1, 32, 32) * 2 + 1)
    return model.eval()


def _save(path: Path, model: torch.nn.Module, cfg: ModelConfig, pre: PreprocessConfig,
          pp: PostprocessConfig | None = None) -> None:
    save_checkpoint(path, model.state_dict(), make_meta(cfg, pre, pp or PostprocessConfig(),
                                                        {"best_epoch": 1}))


# ------------------------------------------------------------------ round trip
@pytest.mark.parametrize("cfg, pre", [
    (ModelConfig(variant="same", width=4, depth=2), PreprocessConfig(size=32, normalise="zscore")),
    (ModelConfig(variant="valid", width=4, depth=2, tile=20), PreprocessConfig(size=40)),
], ids=["same", "valid"])
def test_round_trip_gives_identical_predictions(tmp_path, cfg, pre) -> None:
    model = _model_with_statistics(cfg)
    pp = PostprocessConfig(threshold=0.37)
    _save(tmp_path / "m.ckpt", model, cfg, pre, pp)
    loaded = load(tmp_path / "m.ckpt", device="cpu", precision="fp32")
    in_memory = Predictor(torch_runner(model, CPU, None), cfg, pre, pp)
    rng = np.random.default_rng(1)
    for shape in [(45, 70), (32, 32)]:
        image = rng.integers(0, 256, shape).astype(np.uint8)
        a, b = loaded.predict_proba(image), in_memory.predict_proba(image)
        assert a.shape == shape
        assert np.array_equal(a, b)
        assert a.std() > 0  # not a constant map that would match trivially
        assert np.array_equal(loaded.predict(image), b >= 0.37)  # the stored threshold is used
    assert loaded.model == cfg and loaded.preprocess == pre and loaded.postprocess == pp


def test_state_dict_survives_bit_for_bit(tmp_path) -> None:
    cfg = ModelConfig(variant="same", width=4, depth=2)
    model = _model_with_statistics(cfg)
    _save(tmp_path / "m.ckpt", model, cfg, PreprocessConfig(size=32))
    rebuilt = build_from_checkpoint(load_checkpoint(tmp_path / "m.ckpt"))
    assert not rebuilt.training
    ours, theirs = model.state_dict(), rebuilt.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


LOAD_AND_PREDICT = """
import sys
import numpy as np
from ultraseg.predict import load
predictor = load(sys.argv[1], device="cpu", precision="fp32")
predictor.predict(np.zeros((32, 32), np.uint8))
print("torch._dynamo" in sys.modules)
"""


def test_loading_a_checkpoint_to_predict_does_not_import_torch_s_compiler(tmp_path) -> None:
    """The model is built on the meta device and given the checkpoint's weights: its random
    initial weights, drawn on meta tensors, imported torch._dynamo (and sympy with it), about
    1.8 s, more than torch itself, and a quarter of a small predict, evaluate or measure."""
    import subprocess
    import sys

    cfg = ModelConfig(variant="same", width=4, depth=2)
    _save(tmp_path / "m.ckpt", _model_with_statistics(cfg), cfg, PreprocessConfig(size=32))
    done = subprocess.run([sys.executable, "-c", LOAD_AND_PREDICT, str(tmp_path / "m.ckpt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


def test_weights_of_the_models_dtypes_are_taken_uncopied_others_cast(tmp_path) -> None:
    """A predictor held the checkpoint's weights and a copy of them while it was built (about
    120 MB more at width 64): weights already of the model's dtypes are now its own. A
    checkpoint written in another precision is still loaded, cast to the model's dtypes."""
    cfg = ModelConfig(variant="same", width=4, depth=2)
    model = _model_with_statistics(cfg)
    _save(tmp_path / "m.ckpt", model, cfg, PreprocessConfig(size=32))
    ckpt = load_checkpoint(tmp_path / "m.ckpt")
    rebuilt = build_from_checkpoint(ckpt)
    for name, value in rebuilt.state_dict().items():
        assert value.data_ptr() == ckpt.state_dict[name].data_ptr(), name    # not copied
    assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad
               for p in rebuilt.parameters())

    half = {k: (v.to(torch.bfloat16) if v.is_floating_point() else v)
            for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path / "h.ckpt", half, make_meta(cfg, PreprocessConfig(size=32),
                                                         PostprocessConfig(), {}))
    cast = build_from_checkpoint(load_checkpoint(tmp_path / "h.ckpt"))
    ours = cast.state_dict()
    assert all(ours[k].dtype == v.dtype for k, v in model.state_dict().items())
    assert all(torch.equal(ours[k], v.to(ours[k].dtype)) for k, v in half.items())
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert cast(x).dtype == torch.float32
        torch.testing.assert_close(cast(x), model.eval()(x), rtol=0.05, atol=0.05)


def test_loading_a_checkpoint_leaves_the_callers_random_state_alone(tmp_path) -> None:
    """The model is built (drawing initial weights) before its weights are loaded: a seeded
    script's later draws must not depend on whether it loaded a model."""
    cfg = ModelConfig(variant="same", width=4, depth=2)
    _save(tmp_path / "m.ckpt", _model_with_statistics(cfg), cfg, PreprocessConfig(size=32))
    torch.manual_seed(0)
    without = torch.rand(3)
    torch.manual_seed(0)
    load(tmp_path / "m.ckpt", device="cpu")
    assert torch.equal(torch.rand(3), without)


def test_loading_draws_nothing_from_the_shared_random_generator(tmp_path, monkeypatch) -> None:
    """Loading saved torch's global generator, drew initial weights from it, and put it back:
    a training or a seeded script in another thread lost or repeated draws meanwhile (2 of 4
    trainings beside a thread loading models learnt other weights). The model is now built
    with no weights at all (on the meta device) before its own are loaded."""
    for cfg in (ModelConfig(variant="same", width=4, depth=2, presence_head=True,
                            norm="instance", attention=True),
                ModelConfig(variant="valid", width=4, depth=2, tile=20, block="residual")):
        _save(tmp_path / "m.ckpt", _model_with_statistics(cfg), cfg, PreprocessConfig(size=32))
        # what another thread sees meanwhile: fork_rng's putting the state back does not
        # give it back the draws it lost
        monkeypatch.setattr(torch.random, "fork_rng",
                            lambda *a, **k: contextlib.nullcontext())
        before = torch.get_rng_state()
        ckpt = load_checkpoint(tmp_path / "m.ckpt")
        model = build_from_checkpoint(ckpt)
        assert torch.equal(torch.get_rng_state(), before)
        monkeypatch.undo()
        for name, value in model.state_dict().items():   # every tensor the checkpoint's
            assert torch.equal(value, ckpt.state_dict[name]), name
        x = torch.rand(1, 1, 40, 40) if cfg.variant == "same" else torch.rand(1, 1, 60, 60)
        assert torch.isfinite(model(x)).all()


def test_trained_run_checkpoint_reproduces_the_run(tiny_run) -> None:
    data, run = tiny_run
    # the run's config.json and best.ckpt's weights rebuild exactly the loaded predictor
    cfg = RunConfig.load(run / "config.json")
    ckpt = load_checkpoint(run / "best.ckpt")
    model = build_model(cfg.model)
    model.load_state_dict(ckpt.state_dict)
    in_memory = Predictor(torch_runner(model, CPU, None), cfg.model, cfg.preprocess,
                          ckpt.postprocess)
    loaded = load(run / "best.ckpt", device="cpu", precision="fp32")  # no architecture given
    image = np.asarray(Image.open(next((data / "images").glob("*.png"))))
    assert np.array_equal(loaded.predict_proba(image), in_memory.predict_proba(image))
    # and evaluating it on the validation frames gives the Dice the run recorded
    summary, rows = evaluate(loaded, data, "folders", split_file=run / "split.json",
                             subset="val")
    assert summary["raw"]["dice_mean"] == pytest.approx(ckpt.meta["metrics"]["val_dice_original"],
                                                        abs=1e-9)


def test_meta_describes_everything_prediction_needs(tiny_run) -> None:
    _, run = tiny_run
    ckpt = load_checkpoint(run / "best.ckpt")
    meta = ckpt.meta
    json.dumps(meta)  # plain JSON
    assert meta["ultraseg_version"] == __version__
    assert meta["model"] == {**ModelConfig().to_dict(), "variant": "same", "width": 4, "depth": 2}
    assert meta["preprocess"]["size"] == 32 and meta["preprocess"]["normalise"] == "zscore"
    assert 0 < meta["postprocess"]["threshold"] < 1
    assert ckpt.postprocess == PostprocessConfig.from_dict(meta["postprocess"])
    assert meta["label"]["value"] is None and "foreground" in meta["label"]["meaning"]
    m = meta["metrics"]
    assert m["best_epoch"] in (1, 2)
    assert [h["epoch"] for h in m["history"]] == list(range(1, m["best_epoch"] + 1))  # so far
    assert m["best_val_dice"] == max(h["val_dice"] for h in m["history"])
    assert 0 <= m["best_val_dice"] <= 1 and "val_dice_original" in m
    assert RunConfig.from_dict(meta["run"]) == RunConfig.load(run / "config.json")
    assert ckpt.train_state == {}  # best.ckpt carries no optimiser state
    last = load_checkpoint(run / "last.ckpt")
    assert last.train_state["epoch"] == 2 and "optimizer" in last.train_state


def test_label_meaning_follows_the_label(tmp_path) -> None:
    meta = make_meta(ModelConfig(), PreprocessConfig(label=3), PostprocessConfig())
    assert meta["label"]["value"] == 3 and "3" in meta["label"]["meaning"]


# ------------------------------------------------------------------ refusals
def test_missing_and_empty_files_refused(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no such"):
        load_checkpoint(tmp_path / "nope.ckpt")
    (tmp_path / "zero.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "zero.ckpt")
    with pytest.raises(CheckpointError):
        load(tmp_path / "zero.ckpt", device="cpu")


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.999])
def test_truncated_checkpoint_refused(tiny_run, tmp_path, keep: float) -> None:
    _, run = tiny_run
    whole = (run / "best.ckpt").read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole[: int(len(whole) * keep)])
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(cut)
    assert "cut.ckpt" in str(e.value) and "\n" not in str(e.value)


def test_random_bytes_refused(tmp_path) -> None:
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError):
        load_checkpoint(junk)


def test_text_file_named_ckpt_refused_as_user_error(tmp_path) -> None:
    text = tmp_path / "notes.ckpt"
    text.write_text("hello world, this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(text)


def test_what_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "frame.png")
    (tmp_path / "run").mkdir()
    onnx_like = tmp_path / "exported_model"                 # protobuf: field 1 (ir_version)
    onnx_like.write_bytes(b"\x08\x08\x12\x07pytorch" + bytes(64))
    for path, words in ((tmp_path / "frame.png", "an image file"),
                        (tmp_path / "run", "a folder, not a checkpoint file"),
                        (onnx_like, "an ONNX model? (ultraseg tells one by its name")):
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        assert words in str(e.value) and "could run code" not in str(e.value), str(e.value)


def test_plain_state_dict_of_another_model_refused(tmp_path) -> None:
    other = tmp_path / "resnet-ish.pth"
    torch.save(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(),
                                   torch.nn.Linear(8, 2)).state_dict(), other)
    with pytest.raises(CheckpointError, match="not an ultraseg checkpoint"):
        load_checkpoint(other)
    # an ultraseg model's own bare state_dict is not self-describing either
    torch.save(build_model(ModelConfig(variant="same", width=4, depth=2)).state_dict(),
               tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match="not an ultraseg checkpoint"):
        load_checkpoint(tmp_path / "bare.pth")


class _RunsCode:
    """Unpickling this calls os.system (here: creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _writers():
    def torch_zip(path: Path, obj) -> None:
        torch.save(obj, path)

    def legacy_pickle(path: Path, obj) -> None:
        with open(path, "wb") as f:
            pickle.dump(obj, f)

    return [torch_zip, legacy_pickle]


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", _writers(), ids=["torch.save", "pickle.dump"])
@pytest.mark.parametrize("where", ["top", "meta_json", "state_dict"])
def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, writer, where) -> None:
    marker = tmp_path / "PWNED"
    evil = _RunsCode(marker)
    payload = {
        "top": evil,
        "meta_json": {"format": FORMAT, "meta_json": evil, "state_dict": {}, "train_state": {}},
        "state_dict": {"format": FORMAT, "meta_json": "{}", "state_dict": {"w": evil},
                       "train_state": {}},
    }[where]
    path = tmp_path / "evil.ckpt"
    writer(path, payload)
    assert not marker.exists()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert not marker.exists(), "loading a checkpoint ran code from it"
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError):
        load(path, device="cpu")
    assert not marker.exists()
    assert "could run code" in str(e.value)
    # the control: the payload is live, an unsafe load does run it
    if zipfile.is_zipfile(path):
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as f:
            pickle.load(f)
    assert marker.exists()


def test_weights_that_do_not_fit_the_described_model_refused(tmp_path, capsys) -> None:
    small = ModelConfig(variant="same", width=4, depth=2)
    model = build_model(small)
    claimed = ModelConfig(variant="same", width=8, depth=2)
    save_checkpoint(tmp_path / "lies.ckpt", model.state_dict(),
                    make_meta(claimed, PreprocessConfig(size=32), PostprocessConfig()))
    ckpt = load_checkpoint(tmp_path / "lies.ckpt")  # readable ...
    with pytest.raises(CheckpointError, match="do not fit") as e:
        build_from_checkpoint(ckpt, tmp_path / "lies.ckpt")  # ... but not usable
    assert "size mismatch for" in str(e.value)               # what does not fit, not a header
    with pytest.raises(CheckpointError, match="lies.ckpt"):
        load(tmp_path / "lies.ckpt", device="cpu")
    # a weight missing from an otherwise right state_dict
    sd = dict(model.state_dict())
    sd.pop(next(iter(sd)))
    save_checkpoint(tmp_path / "holes.ckpt", sd,
                    make_meta(small, PreprocessConfig(size=32), PostprocessConfig()))
    with pytest.raises(CheckpointError):
        load(tmp_path / "holes.ckpt", device="cpu")
    # the CLI says so in one line and exits 2
    data = make_dataset(tmp_path / "data", n=2, size=32, seed=0)
    assert cli.main(["evaluate", str(tmp_path / "lies.ckpt"), str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lies.ckpt" in err


def test_damaged_metadata_refused(tmp_path) -> None:
    good = make_meta(ModelConfig(variant="same", width=4, depth=2), PreprocessConfig(size=32),
                     PostprocessConfig())
    sd = build_model(ModelConfig(variant="same", width=4, depth=2)).state_dict()
    cases = {
        "not-json": "{model: ",
        "no-model": json.dumps({k: v for k, v in good.items() if k != "model"}),
        "unknown-key": json.dumps({**good, "model": {**good["model"], "heads": 3}}),
        # wrong types and ranges crashed prediction with internal errors, or were used:
        "width-string": json.dumps({**good, "model": {**good["model"], "width": "4"}}),
        "size-float": json.dumps({**good, "preprocess": {**good["preprocess"], "size": 32.0}}),
        "size-zero": json.dumps({**good, "preprocess": {**good["preprocess"], "size": 0}}),
        "threshold-string": json.dumps(
            {**good, "postprocess": {**good["postprocess"], "threshold": "0.5"}}),
        "threshold-nan": json.dumps(
            {**good, "postprocess": {**good["postprocess"], "threshold": float("nan")}}),
        "min-area-negative": json.dumps(
            {**good, "postprocess": {**good["postprocess"], "min_area": -3}}),
        "preprocess-null": json.dumps({**good, "preprocess": None}),   # was: the defaults
    }
    for name, meta_json in cases.items():
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "meta_json": meta_json, "state_dict": sd,
                    "train_state": {}}, buf)
        (tmp_path / f"{name}.ckpt").write_bytes(buf.getvalue())
        with pytest.raises(CheckpointError, match="metadata"):
            load_checkpoint(tmp_path / f"{name}.ckpt")


def test_a_working_size_beyond_any_frame_is_refused_naming_the_model(tmp_path) -> None:
    """A shared checkpoint whose preprocess.size was 200000 loaded, and predict then asked
    for a 200000 x 200000 canvas (160 GB as floats), its out-of-memory error blaming the
    64 x 64 image (a security review, D5)."""
    from ultraseg.config import MAX_SIZE

    cfg = ModelConfig(variant="same", width=4, depth=2)
    sd = build_model(cfg).state_dict()
    for size in (MAX_SIZE, 200_000):
        meta = make_meta(cfg, PreprocessConfig(size=MAX_SIZE), PostprocessConfig())
        meta["preprocess"]["size"] = size       # (PreprocessConfig refuses it when built)
        path = tmp_path / f"s{size}.ckpt"
        torch.save({"format": FORMAT, "meta_json": json.dumps(meta), "state_dict": sd,
                    "train_state": {}}, path)
        if size == MAX_SIZE:
            assert load_checkpoint(path).preprocess.size == MAX_SIZE
            continue
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path)
        said = str(err.value)
        assert str(path) in said and "preprocess.size" in said and "200000" in said
        assert f"1 to {MAX_SIZE}" in said and "\n" not in said


def test_newer_format_refused(tmp_path) -> None:
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig())
    meta["format_version"] = 99
    save_checkpoint(tmp_path / "future.ckpt", build_model(cfg).state_dict(), meta)
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "future.ckpt")


def test_newer_format_with_a_new_model_field_is_called_newer_not_damaged(tmp_path) -> None:
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig())
    meta["format_version"] = 99
    meta["model"]["a_field_of_the_future"] = 1          # what a newer format may well bring
    save_checkpoint(tmp_path / "future.ckpt", build_model(cfg).state_dict(), meta)
    with pytest.raises(CheckpointError, match="newer") as e:
        load_checkpoint(tmp_path / "future.ckpt")
    assert "damaged" not in str(e.value)


def test_save_is_atomic_and_overwrites(tmp_path) -> None:
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig())
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, build_model(cfg).state_dict(), meta)
    meta2 = {**meta, "metrics": {"best_epoch": 7}}
    save_checkpoint(path, build_model(cfg).state_dict(), meta2)
    assert load_checkpoint(path).meta["metrics"] == {"best_epoch": 7}
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary files left


def test_weights_that_are_not_named_tensors_are_a_damaged_checkpoint(tmp_path) -> None:
    cfg = ModelConfig(variant="same", width=4, depth=2)
    torch.save({"format": FORMAT, "train_state": {}, "state_dict": [1, 2],
                "meta_json": json.dumps(make_meta(cfg, PreprocessConfig(size=32),
                                                  PostprocessConfig()))}, tmp_path / "l.ckpt")
    with pytest.raises(CheckpointError, match="damaged checkpoint: its weights are a list"):
        build_from_checkpoint(load_checkpoint(tmp_path / "l.ckpt"), tmp_path / "l.ckpt")


def test_unreadable_checkpoint_is_a_checkpoint_error_simulated(tmp_path, monkeypatch) -> None:
    """Permission denied on open (simulated: root ignores file modes)."""
    import errno

    from ultraseg import checkpoint as module

    cfg = ModelConfig(variant="same", width=4, depth=2)
    path = tmp_path / "locked.ckpt"
    save_checkpoint(path, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(module, "open", denied, raising=False)
    with pytest.raises(CheckpointError, match="permission denied"):
        load_checkpoint(path)


def test_a_checkpoint_of_a_model_this_version_does_not_build_names_the_file(tmp_path) -> None:
    """A presence head on the valid U-Net (trained before that combination was withdrawn)
    failed as 'bad model config: ...' naming no file and no way out."""
    cfg = ModelConfig(variant="valid", width=4, depth=2, tile=20)
    meta = make_meta(cfg, PreprocessConfig(size=None), PostprocessConfig())
    meta["model"]["presence_head"] = True
    path = tmp_path / "old.ckpt"
    save_checkpoint(path, {"w": torch.zeros(1)}, meta)
    with pytest.raises(CheckpointError) as e:
        build_from_checkpoint(load_checkpoint(path), path)
    assert str(e.value).startswith(f"{path}: describes a model this version of ultraseg")
    assert "presence head needs the 'same' variant" in str(e.value) and "retrain" in str(e.value)


def test_a_checkpoint_saved_during_training_says_its_post_processing_is_the_defaults(
        tiny_run) -> None:
    """An interrupted run's best.ckpt (or any last.ckpt) holds the default post-processing,
    not the one a finished run chooses on validation, and was used without a word (Dice 0.33
    at threshold 0.5 where the finished run scored 0.875 with its rules)."""
    from conftest import ultraseg_warnings
    from ultraseg.predict import load

    _, run = tiny_run
    with ultraseg_warnings() as warned:
        load(run / "best.ckpt", device="cpu")
    assert not [r for r in warned if "saved during training" in r.getMessage()]
    with ultraseg_warnings() as warned:
        load(run / "last.ckpt", device="cpu")
    (said,) = [r.getMessage() for r in warned if "saved during training" in r.getMessage()]
    assert "after epoch 2" in said and "post-processing is the defaults" in said
    assert "--resume" in said


def test_a_checkpoint_of_a_diverged_run_says_it_diverged(tmp_path) -> None:
    """A diverged run's checkpoints were hinted as an interrupted run's: '--resume finishes an
    interrupted run', which replayed the divergence. Where the checkpoint records the run's
    divergence the hint names it, that --resume finishes it without training on, and a lower
    --lr for a new run."""
    from conftest import ultraseg_warnings
    from ultraseg.predict import warn_if_saved_during_training

    stopped = ("training diverged: the loss is nan at epoch 2, batch 1; kept epoch 1; "
               "try a lower --lr")
    meta = {"metrics": {"history": [{"epoch": 1}], "stopped": stopped}}
    with ultraseg_warnings() as warned:
        warn_if_saved_during_training(meta, tmp_path / "last.ckpt")
    (said,) = [r.getMessage() for r in warned]
    assert "the loss is nan at epoch 2, batch 1" in said and "lower --lr" in said, said
    assert "without training on" in said and "interrupted run" not in said, said


def test_unknown_settings_are_called_a_newer_ultrasegs_not_damage(tmp_path) -> None:
    """A checkpoint of a later ultraseg (same format number, a model setting added since)
    was called 'damaged checkpoint metadata'."""
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig())
    meta["model"]["a_later_setting"] = False
    meta["ultraseg_version"] = "9.9.9"
    save_checkpoint(tmp_path / "later.ckpt", build_model(cfg).state_dict(), meta)
    with pytest.raises(CheckpointError, match="newer ultraseg") as e:
        load_checkpoint(tmp_path / "later.ckpt")
    assert "damaged" not in str(e.value) and "9.9.9" in str(e.value)
    assert "a_later_setting" in str(e.value)


def test_a_byte_flipped_in_the_weights_is_a_damaged_checkpoint(tmp_path) -> None:
    """One corrupted byte inside a tensor (a bad disk, a copy gone wrong) loaded in silence:
    one weight changed, and every prediction with it. The zip's checksums say so."""
    import struct
    import zipfile

    cfg = ModelConfig(variant="same", width=4, depth=2)
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, build_model(cfg).state_dict(),
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    load_checkpoint(path)                                   # whole: loads
    with zipfile.ZipFile(path) as z:
        entry = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[entry.header_offset + 26:
                                                    entry.header_offset + 30])
    start = entry.header_offset + 30 + name_len + extra_len
    raw[start + 8] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="damaged checkpoint.*checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize("where, value", [("encoder.0.block.0.weight", float("inf")),
                                          ("encoder.0.block.1.running_var", float("nan"))])
def test_a_checkpoint_holding_nan_or_inf_weights_is_refused(tmp_path, capsys, where,
                                                            value) -> None:
    """A diverged training's weights (inf, or a batch-norm running variance of inf) loaded
    in silence: predict wrote every frame empty, evaluate scored Dice 0, predict_proba gave
    NaN and export blamed the exported graph. Loading it now says what it is."""
    cfg = ModelConfig(variant="same", width=4, depth=2)
    state = build_model(cfg).state_dict()
    state[where][0] = value
    path = tmp_path / "m.ckpt"
    save_checkpoint(path, state, make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    with pytest.raises(CheckpointError, match=r"holds NaN/inf weights \(its training "
                                              r"diverged\)") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value) and where in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="NaN/inf"):
        load(path, device="cpu")
    image = tmp_path / "f.png"
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(image)
    rc = cli.main(["predict", str(path), str(image), "--out", str(tmp_path / "p"),
                   "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN/inf weights" in err and "Traceback" not in err, err


def _tiny_checkpoint(path: Path, **extra: torch.Tensor) -> Path:
    cfg = ModelConfig(variant="same", width=4, depth=2)
    save_checkpoint(path, {**build_model(cfg).state_dict(), **extra},
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    return path


def _rewrite_zip(src: Path, dst: Path, compression: int) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


def test_torch_save_writes_its_entries_stored_not_compressed(tmp_path) -> None:
    """What the refusal of compressed entries below rests on."""
    path = _tiny_checkpoint(tmp_path / "m.ckpt")
    with zipfile.ZipFile(path) as z:
        assert {i.compress_type for i in z.infolist()} == {zipfile.ZIP_STORED}
        assert sum(i.file_size for i in z.infolist()) <= path.stat().st_size


def test_a_compressed_checkpoint_is_refused_before_anything_is_inflated(tmp_path,
                                                                       monkeypatch) -> None:
    """A checkpoint rewritten with deflate holding a 1.5 GB zero tensor is a 1.5 MB file:
    torch.load inflated all of it (1.79 GB of memory) before 'weights do not fit', and an
    unused 4 GiB entry cost seconds of checksum inflation on every load."""
    from ultraseg import checkpoint as module

    plain = _tiny_checkpoint(tmp_path / "plain.ckpt", junk=torch.zeros(200_000, dtype=torch.uint8))
    bomb = tmp_path / "bomb.ckpt"
    _rewrite_zip(plain, bomb, zipfile.ZIP_DEFLATED)
    assert bomb.stat().st_size * 4 < plain.stat().st_size     # 200 kB of zeros, deflated

    def never(*args, **kwargs):
        raise AssertionError("torch.load reached")

    monkeypatch.setattr(module.torch, "load", never)
    with pytest.raises(CheckpointError, match="compressed") as e:
        load_checkpoint(bomb)
    assert str(e.value).startswith(f"{bomb}: ") and "\n" not in str(e.value)


def test_a_checkpoint_whose_entries_claim_more_than_the_file_holds_is_refused(tmp_path) -> None:
    """An entry's size (in the zip's directory) is what a reader makes room for."""
    import struct

    path = _tiny_checkpoint(tmp_path / "m.ckpt")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")              # the first central directory record
    raw[at + 24:at + 28] = struct.pack("<I", 0x7FFF0000)    # its uncompressed size
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="more than the file") as e:
        load_checkpoint(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


@pytest.mark.parametrize("change", [{"width": 10**9}, {"depth": 60}, {"depth": 13},
                                    {"width": 4097}])
def test_a_checkpoint_describing_an_impossibly_large_model_is_refused(tmp_path, capsys,
                                                                      change) -> None:
    """Width 1e9 or depth 60 in a checkpoint's meta: 'internal error: RuntimeError: Storage
    size calculation overflowed' from building the model."""
    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig())
    meta["model"].update(change)
    path = tmp_path / "big.ckpt"
    save_checkpoint(path, build_model(cfg).state_dict(), meta)
    with pytest.raises(CheckpointError, match="damaged checkpoint metadata") as e:
        load(path, device="cpu")
    (name,) = change
    assert str(e.value).startswith(f"{path}: ") and f"model.{name}" in str(e.value)
    image = tmp_path / "f.png"
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(image)
    rc = cli.main(["predict", str(path), str(image), "--out", str(tmp_path / "p"),
                   "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "internal error" not in err and str(path) in err, err


def test_a_large_model_described_beside_small_weights_is_refused_before_room_is_made(
        tmp_path) -> None:
    """The largest model the bounds allow, described beside a tiny model's weights: room
    for the described model's weights (hundreds of terabytes) was asked before its weights
    were compared."""
    from ultraseg.config import MAX_DEPTH, MAX_WIDTH

    cfg = ModelConfig(variant="same", width=4, depth=2)
    meta = make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig())
    meta["model"].update(width=MAX_WIDTH, depth=MAX_DEPTH)
    path = tmp_path / "big.ckpt"
    save_checkpoint(path, build_model(cfg).state_dict(), meta)
    with pytest.raises(CheckpointError, match="weights do not fit") as e:
        build_from_checkpoint(load_checkpoint(path), path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_a_checkpoint_rewritten_in_place_while_it_loads_is_refused(tmp_path, monkeypatch) -> None:
    """One open file covered a replacement by rename, not a rewrite of the same file (`cp
    other.ckpt best.ckpt`, a torch.save to its path) during the load: the weights were the
    old file's and the recorded sha256 the new file's, and nothing refused, where the README
    says a file changed while it loads is refused."""
    cfg, pre = ModelConfig(variant="same", width=4, depth=2), PreprocessConfig(size=32)
    path, other = tmp_path / "best.ckpt", tmp_path / "other.ckpt"
    _save(path, _model_with_statistics(cfg, seed=0), cfg, pre)
    _save(other, _model_with_statistics(cfg, seed=1), cfg, pre)
    real = torch.load

    def load_then_rewrite(*args, **kwargs):
        payload = real(*args, **kwargs)
        with open(path, "r+b") as f:      # the same file, new bytes: as cp does
            f.write(other.read_bytes())
            f.truncate()
        return payload

    for read in (load_checkpoint, lambda p: load(p, device="cpu", precision="fp32")):
        _save(path, _model_with_statistics(cfg, seed=0), cfg, pre)
        os.utime(path, (1e9, 1e9))   # saved before this clock tick, as a file being loaded is
        monkeypatch.setattr(torch, "load", load_then_rewrite)
        with pytest.raises(CheckpointError, match="changed while it was loaded"):
            read(path)
        monkeypatch.undo()
    assert load_checkpoint(path).meta["metrics"] == {"best_epoch": 1}   # unchanged: loads


def test_only_a_predictor_hashes_its_checkpoint(tiny_run, tmp_path, monkeypatch) -> None:
    """Every load hashed the whole file (0.33 s on a 372 MB checkpoint, more than torch.load
    took), where only a Predictor records the hash: resume, the end of training and export
    never use it. The Predictor's sha256 is still the file's sha256sum."""
    import hashlib

    import ultraseg.checkpoint as checkpoint
    from ultraseg.export import export_onnx
    from ultraseg.run_folder import open_run

    _, run = tiny_run
    hashed: list[object] = []
    real = checkpoint.hash_file
    monkeypatch.setattr(checkpoint, "hash_file", lambda *a: hashed.append(a) or real(*a))
    assert load_checkpoint(run / "best.ckpt").sha256 == ""
    _, last = open_run(run, None, resume=True)
    assert last is not None and last.sha256 == ""
    export_onnx(run / "best.ckpt", tmp_path / "m.onnx")
    assert hashed == []
    predictor = load(run / "best.ckpt", device="cpu", precision="fp32")
    assert len(hashed) == 1
    assert predictor.sha256 == hashlib.sha256((run / "best.ckpt").read_bytes()).hexdigest()
    assert load_checkpoint(run / "best.ckpt", sha256=True).sha256 == predictor.sha256
