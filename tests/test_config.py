"""Configuration: dict/JSON round trips, refusal of unknown keys, presets, merge, durations."""
from __future__ import annotations

import dataclasses
import json
import re

import numpy as np
import pytest

from ultraseg.augment import AUGMENTS
from ultraseg.config import (
    MAX_DEPTH,
    MAX_WIDTH,
    PRESETS,
    DataConfig,
    ModelConfig,
    PostprocessConfig,
    PreprocessConfig,
    RunConfig,
    TrainConfig,
    merge,
    model_problem,
    parse_duration,
    preset,
    size_problem,
)
from ultraseg.errors import UltrasegError
from ultraseg.geometry import nearest_valid_output
from ultraseg.losses import LOSSES

SECTIONS = [DataConfig, PreprocessConfig, ModelConfig, TrainConfig, PostprocessConfig]


# ------------------------------------------------------------------ round trips
@pytest.mark.parametrize("cls", SECTIONS)
def test_section_round_trips_through_dict_and_json(cls) -> None:
    default = cls()
    assert cls.from_dict(default.to_dict()) == default
    assert cls.from_dict(json.loads(json.dumps(default.to_dict()))) == default
    assert cls.from_dict(None) == default and cls.from_dict({}) == default


def test_run_config_round_trip_with_non_default_values() -> None:
    cfg = RunConfig(
        data=DataConfig(path="/data/x", layout="folders", subject_pattern=r"(\d+)_", cache_dir=""),
        preprocess=PreprocessConfig(size=96, normalise="zscore", label=2),
        model=ModelConfig(variant="same", width=8, depth=3, tile=20),
        train=TrainConfig(epochs=3, lr=0.01, loss="bce+dice", time_limit_s=90.0,
                          augment="strong", num_threads=2),
        preset="custom",
    )
    again = RunConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert again.train.time_limit_s == 90.0 and again.preprocess.label == 2


def test_fill_outlines_is_written_only_where_set_so_an_older_ultraseg_reads_the_file() -> None:
    """to_dict always wrote fill_outlines: a checkpoint or ONNX file made without it was
    refused by the build before the setting ('unknown PreprocessConfig keys')."""
    assert "fill_outlines" not in PreprocessConfig().to_dict()
    assert "fill_outlines" not in json.loads(preset("seed").to_json())["preprocess"]
    filled = PreprocessConfig(size=64, fill_outlines=True)
    assert filled.to_dict()["fill_outlines"] is True
    assert PreprocessConfig.from_dict(filled.to_dict()) == filled
    # a file that names the default (written by a build in between) reads as before
    assert PreprocessConfig.from_dict({"fill_outlines": False}) == PreprocessConfig()
    run = RunConfig(preprocess=filled)
    assert RunConfig.from_dict(json.loads(run.to_json())) == run


def test_to_json_is_human_readable() -> None:
    text = preset("seed").to_json()
    assert "\n" in text and '  "model"' in text  # indented, one key per line
    d = json.loads(text)
    assert set(d) == {"preset", "data", "preprocess", "model", "train"}
    assert d["model"]["variant"] == "valid" and d["preset"] == "seed"


def test_configs_are_frozen() -> None:
    cfg = ModelConfig()
    with pytest.raises(Exception):
        cfg.width = 3  # type: ignore[misc]


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("cls", SECTIONS)
def test_unknown_keys_are_refused_with_the_valid_ones_named(cls) -> None:
    with pytest.raises(UltrasegError) as e:
        cls.from_dict({"no_such_key": 1})
    msg = str(e.value)
    assert "no_such_key" in msg
    for f in cls().to_dict():
        assert f in msg


def test_typo_in_a_known_section_names_the_right_key() -> None:
    with pytest.raises(UltrasegError, match="epochs"):
        RunConfig.from_dict({"train": {"epoch": 3}})


def test_an_unknown_key_names_the_section_the_file_and_the_key_meant(tmp_path,
                                                                      capsys) -> None:
    """'unknown TrainConfig keys ['epoch']' named a class, not the section the file has, and
    left the user to find 'epochs' in the list of valid keys."""
    from ultraseg import cli

    conf = tmp_path / "c.json"
    conf.write_text('{"train": {"epoch": 3}}')
    with pytest.raises(UltrasegError) as e:
        RunConfig.load(conf)
    said = str(e.value)
    assert said.startswith(f"unknown keys in section \"train\" of {conf}: ['epoch'] (did you "
                           "mean 'epochs'?; valid: ['affine_scale', "), said
    assert "TrainConfig" not in said
    assert cli.main(["train", str(tmp_path), "--config", str(conf), "--out",
                     str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"unknown keys in section \"train\" of {conf}: ['epoch'] (did you mean 'epochs'?" \
        in err, err
    with pytest.raises(UltrasegError) as e:         # two keys: which is meant for which
        RunConfig.from_dict({"model": {"widht": 4, "zzz": 1}})
    assert str(e.value).startswith("unknown keys in section \"model\": ['widht', 'zzz'] "
                                   "(did you mean 'width' for 'widht'?; valid: ["), str(e.value)
    with pytest.raises(UltrasegError) as e:         # nothing close: no guess
        TrainConfig.from_dict({"zzz": 1})
    assert str(e.value).startswith("unknown keys in section \"train\": ['zzz'] (valid: ["), \
        str(e.value)


@pytest.mark.parametrize("section, key, value, words", [
    ("model", "width", "16", ["model.width", "whole number", "'16'"]),
    ("model", "width", 16.0, ["model.width", "whole number", "16.0"]),
    ("model", "width", True, ["model.width", "True"]),       # was a width-1 network
    ("model", "dropout", "0.5", ["model.dropout", "a number", "'0.5'"]),
    ("model", "tile", "68", ["model.tile", "'68'"]),
    ("model", "presence_head", "yes", ["model.presence_head", "true or false or 'auto'"]),
    ("preprocess", "label", "1", ["preprocess.label", "or null", "'1'"]),  # was "no mask
    ("preprocess", "label", 1.5, ["preprocess.label", "1.5"]),            # holds label 1"
    ("preprocess", "size", "252", ["preprocess.size"]),
    ("data", "layout", 5, ["data.layout", "a string"]),
    ("train", "world_size", "x", ["train.world_size"]),
    ("train", "affine_scale", [0.9], ["train.affine_scale", "a list of 2"]),
    ("train", "affine_scale", [0.9, "1.1"], ["train.affine_scale"]),
    ("train", "lr", False, ["train.lr", "a number", "False"]),
    ("train", "schedule", "step", ["train.schedule", "'cosine'", "'step'"]),
])
def test_value_of_the_wrong_type_is_refused_naming_the_setting(section, key, value,
                                                               words) -> None:
    with pytest.raises(UltrasegError) as e:
        RunConfig.from_dict({section: {key: value}})
    assert all(w in str(e.value) for w in words), str(e.value)


def test_right_types_pass() -> None:
    from pathlib import Path

    cfg = RunConfig.from_dict({"train": {"lr": 1, "time_limit_s": 60, "affine_scale": [1, 2],
                                         "split_seed": None},
                               "model": {"presence_head": "auto"},
                               "data": {"path": Path("/data/x")}})   # ints where numbers go
    assert cfg.train.lr == 1 and cfg.train.affine_scale == (1, 2)
    assert cfg.data.path == "/data/x"                   # a Path where a path string goes


def test_a_tilde_in_a_data_setting_is_the_users_home_folder(tmp_path, monkeypatch) -> None:
    """A config file's "path": "~/data/busi" (or DATA typed quoted) was read as a folder
    named '~' in the current one, and refused as not found; data.cache_dir likewise."""
    monkeypatch.setenv("HOME", str(tmp_path))
    home = str(tmp_path)
    cfg = RunConfig.from_dict({"data": {"path": "~/data/busi", "cache_dir": "~/cache"}})
    assert (cfg.data.path, cfg.data.cache_dir) == (f"{home}/data/busi", f"{home}/cache")
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"data": {"path": "~/d"}}))
    assert RunConfig.load(conf).data.path == f"{home}/d"
    assert merge(preset("demo"), {"data": {"path": "~"}}).data.path == home
    assert DataConfig(path="a/~b").path == "a/~b"            # only a leading ~ is the home
    assert DataConfig(cache_dir="").cache_dir == "" and DataConfig().cache_dir is None


@pytest.mark.parametrize("cls, key, valid", [
    (ModelConfig, "variant", "'valid', 'same'"),
    (ModelConfig, "norm", "'batch', 'instance'"),
    (ModelConfig, "block", "'plain', 'residual'"),
    (ModelConfig, "presence_mode", "'gate', 'classifier', 'detached'"),
    (PreprocessConfig, "normalise", "'zscore', 'unit'"),
    (TrainConfig, "loss", "'bce', 'dice', 'bce+dice'"),
    (TrainConfig, "augment", "'none', 'flip', 'strong', 'elastic'"),
    (TrainConfig, "schedule", "'constant', 'cosine'"),
    (TrainConfig, "precision", "'auto', 'fp32', 'bf16'"),
])
def test_a_section_built_in_python_refuses_an_unknown_name_listing_the_valid_ones(
        cls, key, valid) -> None:
    """ModelConfig(variant="nope") was built, and refused only inside train(), which
    checked the types of a config built in Python (a design review, B1): predict's and
    export's callers, and a script building its configs first, learnt late or not at all."""
    prefix = cls.__name__.removesuffix("Config").lower()
    with pytest.raises(UltrasegError) as e:
        cls(**{key: "nope"})
    assert str(e.value) == f"{prefix}.{key} must be one of {valid}; got 'nope'"


@pytest.mark.parametrize("values, words", [
    ({"epochs": 0}, "train.epochs (--epochs) must be a whole number from 1, got 0"),
    ({"batch_size": -2}, "train.batch_size (--batch-size) must be a whole number from 1, got -2"),
    ({"tiles_per_image": 0}, "train.tiles_per_image (--tiles-per-image) must be a whole"),
    ({"num_threads": 0}, "train.num_threads (--threads) must be a whole number from 1, got 0"),
    ({"seed": -1}, "train.seed (--seed) must be a whole number from 0 to 4294967295, got -1"),
    ({"split_seed": 2**40}, "train.split_seed (--split-seed) must be a whole number from 0"),
    ({"lr": 0.0}, "train.lr (--lr) must be a number > 0, got 0.0"),
    ({"lr": float("inf")}, "train.lr (--lr) must be a number > 0, got inf"),
    ({"time_limit_s": -5.0}, "train.time_limit_s (--time-limit) must be a number > 0"),
    ({"val_fraction": 1.0}, "train.val_fraction (--val-fraction) must be a number in [0, 1)"),
    ({"test_fraction": -0.1}, "train.test_fraction (--test-fraction) must be a number in"),
    ({"weight_decay": -1.0}, "train.weight_decay must be a number >= 0, got -1.0"),
    ({"ema_decay": 1.0}, "train.ema_decay (--ema-decay) must be a number in [0, 1), got 1.0"),
    ({"presence_weight": -1.0}, "train.presence_weight (--presence-weight) must be a number"),
    ({"affine_scale": (1.2, 0.8)}, "train.affine_scale (--affine-scale) must be two numbers"),
    ({"cutmix": -0.1}, "train.cutmix (--cutmix) must be a number in [0, 1], got -0.1"),
    ({"cutmix": 1.5}, "train.cutmix (--cutmix) must be a number in [0, 1], got 1.5"),
    ({"cutmix": float("nan")}, "train.cutmix (--cutmix) must be a number in [0, 1], got nan"),
])
def test_a_training_setting_out_of_its_range_is_refused_when_built(values, words) -> None:
    """TrainConfig(epochs=0) or TrainConfig(lr=0.0) was built and refused only inside
    train() (a design review, B1): the range is the setting's own, so the section refuses
    it, in the words train used, from a file, merge or Python alike."""
    with pytest.raises(UltrasegError) as e:
        TrainConfig(**values)
    assert str(e.value).startswith(words), str(e.value)
    with pytest.raises(UltrasegError):
        merge(preset("seed"), {"train": values})


def test_cutmix_is_off_in_every_preset_and_takes_0_to_1() -> None:
    """CutMix is a lever to measure, not a recipe: no preset turns it on."""
    for name in PRESETS:
        assert preset(name).train.cutmix == 0.0, name
    assert TrainConfig(cutmix=1).cutmix == 1 and TrainConfig(cutmix=0.5).cutmix == 0.5


def test_config_built_in_python_is_type_checked_when_it_is_built() -> None:
    with pytest.raises(UltrasegError, match="model.width"):
        ModelConfig(width="16")  # type: ignore[arg-type]
    base = ModelConfig()
    with pytest.raises(UltrasegError, match="model.width"):     # replace builds it anew
        dataclasses.replace(base, width="16")


def test_a_list_for_a_tuple_setting_built_in_python_is_taken_as_merge_takes_it() -> None:
    """TrainConfig(affine_scale=[0.9, 1.1]) was refused by check_config as 'must be a list of
    2 ...; got [0.9, 1.1]' (merge makes the list a tuple, a config built in Python kept it), and
    the frozen config holding the list could not be hashed."""
    import dataclasses

    from ultraseg.train import check_config

    base = RunConfig(data=DataConfig(path="x"))
    for cfg in (RunConfig(data=DataConfig(path="x"), train=TrainConfig(affine_scale=[0.9, 1.1])),
                dataclasses.replace(base, train=dataclasses.replace(
                    base.train, affine_scale=[0.9, 1.1]))):
        assert cfg.train.affine_scale == (0.9, 1.1)
        check_config(cfg)
        hash(cfg)
        assert cfg == merge(base, {"train": {"affine_scale": [0.9, 1.1]}})


@pytest.mark.parametrize("scale, ok", [
    ((1e-6, 1e6), False), ((0.1, 1.0), False), ((1.0, 5.0), False), ((0.2, 0.24), False),
    ((0.25, 4.0), True), ((0.7, 1.4), True), ((1.0, 1.0), True)])
def test_the_zoom_range_is_refused_outside_a_quarter_to_four_times(scale, ok) -> None:
    """--affine-scale 1e-6 1e6 trained: a zoom of 1e6 fills the canvas with one pixel's value,
    1e-6 with its replicated border (every mask all or nothing), and nothing said so."""
    from ultraseg.train import check_config

    if ok:
        check_config(RunConfig(data=DataConfig(path="x"), train=TrainConfig(affine_scale=scale)))
        return
    with pytest.raises(UltrasegError) as e:
        TrainConfig(affine_scale=scale)
    for word in ("train.affine_scale (--affine-scale)", "0.25", "4", repr(scale)):
        assert word in str(e.value), (word, str(e.value))


def test_a_path_for_a_path_setting_built_in_python_is_taken_as_merge_takes_it(tmp_path) -> None:
    """DataConfig(path=Path(...)) or dataclasses.replace(cfg.data, path=Path(...)) was refused
    by check_config as 'data.path must be a string; got PosixPath(...)', though merge takes a
    Path there (it made it a string, a config built in Python kept the Path)."""
    import dataclasses

    from ultraseg.train import check_config

    base = RunConfig(data=DataConfig(path="x"))
    for cfg in (RunConfig(data=DataConfig(path=tmp_path)),
                dataclasses.replace(base, data=dataclasses.replace(base.data, path=tmp_path))):
        assert cfg.data.path == str(tmp_path)
        check_config(cfg)
        assert cfg == merge(base, {"data": {"path": tmp_path}})


@pytest.mark.parametrize("model, words", [
    ({"width": 10**9}, ["model.width", "4096", "1000000000"]),
    ({"width": 4097}, ["model.width", "4096"]),
    ({"depth": 60}, ["model.depth", "12", "60"]),
    ({"depth": 13}, ["model.depth", "12"]),
    ({"width": 0}, ["model.width", "0"]),
    ({"tile": 0}, ["model.tile", "from 1", "0"]),
    ({"tile": -3}, ["model.tile", "from 1", "-3"]),
])
def test_model_width_and_depth_have_bounds(model, words) -> None:
    """Width 1e9 or depth 60 overflowed torch's storage size as the model was built:
    'internal error: RuntimeError: Storage size calculation overflowed'. Refused as the
    section is built (train's check_config and build_model met it later). A tile of 0 or
    less, refused on the command line, passed from a config file or merge (a 'same' model
    took it with a note that it ignores it; a valid one met the model builder)."""
    from types import SimpleNamespace

    with pytest.raises(UltrasegError) as e:
        ModelConfig(variant="same", **model)
    assert all(w in str(e.value) for w in words), str(e.value)
    assert model_problem(SimpleNamespace(**{**ModelConfig().to_dict(), **model})) is not None


@pytest.mark.parametrize("size, canvas", [(0, None), (-3, None), (200_000, "160.0 GB")])
def test_a_working_size_out_of_bounds_says_why_only_where_it_is_too_large(size, canvas):
    """size_problem said 'got 0: a canvas of 0 x 0 pixels, 0.0 GB as floats a frame' (and
    '-3 x -3 pixels'): the canvas is the reason only above MAX_SIZE (a re-read)."""
    from types import SimpleNamespace

    setting, said = size_problem(SimpleNamespace(size=size))
    assert setting == "size" and said.startswith("must be a whole number from 1 to ")
    assert said.endswith(f"got {size}") if canvas is None else canvas in said
    assert ("canvas" in said) == (canvas is not None)
    assert size_problem(PreprocessConfig(size=1)) is None
    with pytest.raises(UltrasegError, match=f"^preprocess.size \\(--size\\) {said}$"):
        PreprocessConfig(size=size)


def test_the_largest_model_the_bounds_allow_builds_without_memory() -> None:
    import torch

    from ultraseg.model import build_model

    model = ModelConfig(variant="same", width=MAX_WIDTH, depth=MAX_DEPTH)
    assert model_problem(model) is None
    with torch.device("meta"):
        build_model(model)


@pytest.mark.parametrize("doc, words", [
    (5, ["c.json", "JSON object of sections"]),
    ({"model": 5}, ["c.json", "'model'", "JSON object"]),
    ({"model": "abc"}, ["c.json", "'model'"]),
    ({"preset": 3}, ["c.json", "preset"]),
])
def test_load_of_a_config_of_the_wrong_shape_is_a_user_error(tmp_path, doc, words) -> None:
    """`train --resume` read a damaged config.json into internal errors."""
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(UltrasegError) as e:
        RunConfig.load(path)
    assert all(w in str(e.value) for w in words), str(e.value)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UltrasegError, match="c.json"):
        RunConfig.load(path)


def test_a_config_that_is_no_json_is_said_to_be_no_json(tmp_path) -> None:
    """A YAML file given as a config was refused with json's bare 'Expecting value: line 1
    column 1 (char 0)'. The column stays (a re-read: a one-line file's line alone says
    nothing)."""
    conf = tmp_path / "c.yaml"
    conf.write_text("train:\n  epochs: 3\n")
    with pytest.raises(UltrasegError) as e:
        RunConfig.load(conf)
    assert str(e.value).startswith(f"{conf}: config files are JSON (as a run's config.json); "
                                   "this is not JSON (line 1 column 1: Expecting value)"
                                   ), str(e.value)
    assert "YAML is not read" in str(e.value)


def test_unknown_section_refused() -> None:
    """A misspelt section is refused with the section meant, as a misspelt key is (a re-read:
    'unknown config sections ['trian']' alone)."""
    with pytest.raises(UltrasegError, match="trian.*did you mean 'train'"):
        RunConfig.from_dict({"trian": {"epochs": 3}})
    with pytest.raises(UltrasegError, match="trian.*did you mean 'train'"):
        merge(RunConfig(), {"trian": {"epochs": 3}})
    with pytest.raises(UltrasegError, match=r"\['zzz'\] \(valid: "):
        RunConfig.from_dict({"zzz": {}})


def test_load_of_bad_json_is_a_user_error(tmp_path) -> None:
    bad = tmp_path / "c.json"
    bad.write_text("{not json")
    with pytest.raises(UltrasegError, match="c.json"):
        RunConfig.load(bad)
    bad.write_text("[" * 100_000 + "]" * 100_000)    # was: RecursionError, an internal error
    with pytest.raises(UltrasegError, match="c.json") as e:
        RunConfig.load(bad)
    assert "nested too deeply" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UltrasegError):
        RunConfig.load(tmp_path / "missing.json")


# ------------------------------------------------------------------ presets
def test_seed_preset_is_the_original_recipe() -> None:
    cfg = preset("seed")
    assert (cfg.model.variant, cfg.model.width, cfg.model.depth, cfg.model.tile) == \
        ("valid", 64, 4, 68)
    assert cfg.preprocess.size == 252
    t = cfg.train
    assert (t.epochs, t.lr, t.loss, t.val_fraction) == (5, 1e-3, "bce", 0.2)
    # README: "batch 4, no augmentation, one random tile per image per epoch", Adam 1e-3 flat
    assert (t.batch_size, t.augment, t.tiles_per_image, t.schedule) == (4, "none", 1,
                                                                          "constant")


def test_cpu_preset_is_the_recipe_the_readme_describes() -> None:
    """README: same U-Net, width 16, 192 px, per-image z-score, BCE + Dice, strong
    augmentation, Adam 2e-3 with a cosine schedule, a presence head decided at the start
    ('auto') with weight 0.25, a 20-minute budget."""
    cfg = preset("cpu")
    m, p, t = cfg.model, cfg.preprocess, cfg.train
    assert (m.variant, m.width, m.depth, m.presence_head) == ("same", 16, 4, "auto")
    assert (p.size, p.normalise) == (192, "zscore")
    assert (t.loss, t.augment, t.lr, t.schedule, t.presence_weight, t.time_limit_s) == \
        ("bce+dice", "strong", 2e-3, "cosine", 0.25, 1200.0)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_are_valid(name: str) -> None:
    cfg = preset(name)
    assert cfg.preset == name
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.train.loss in LOSSES
    assert cfg.train.augment in AUGMENTS
    assert cfg.train.epochs >= 1 and cfg.train.lr > 0 and cfg.train.batch_size >= 1
    assert 0 < cfg.train.val_fraction < 1
    size, m = cfg.preprocess.size, cfg.model
    assert size is not None
    if m.variant == "same":
        assert size % 2**m.depth == 0
    else:
        assert m.variant == "valid"
        assert nearest_valid_output(m.tile, m.depth) == m.tile  # the tile is a valid output
        assert size >= m.tile


def test_unknown_preset_lists_the_valid_ones() -> None:
    with pytest.raises(UltrasegError) as e:
        preset("fastest")
    for name in PRESETS:
        assert name in str(e.value)


def test_merge_overrides_only_what_is_named() -> None:
    base = preset("demo")
    cfg = merge(base, {"train": {"epochs": 2}, "model": {"width": 4}})
    assert cfg.train.epochs == 2 and cfg.model.width == 4
    assert cfg.train.lr == base.train.lr and cfg.model.depth == base.model.depth
    assert base.train.epochs == PRESETS["demo"]["train"]["epochs"]  # the input is not changed
    with pytest.raises(UltrasegError, match="valid"):
        merge(base, {"train": {"epochz": 2}})


# ------------------------------------------------------------------ durations
@pytest.mark.parametrize("text, seconds", [
    ("20m", 1200.0), ("90s", 90.0), ("1h30m", 5400.0), ("45", 45.0), ("2h", 7200.0),
    ("1m30s", 90.0), (" 5S ", 5.0), ("1.5h", 5400.0),
    # spaces inside and 'min' (a budgets review: refused as unreadable before)
    ("20 m", 1200.0), ("1h 30m", 5400.0), ("20min", 1200.0), ("1h 30 min", 5400.0),
    ("90 s", 90.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-5", "-5m", " -1h30m"])
def test_a_negative_duration_is_refused_as_such(text: str) -> None:
    """'-5' was refused as unreadable ('cannot read duration'): it reads, as a duration
    that must be positive."""
    with pytest.raises(UltrasegError, match="duration .* must be positive"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["", "soon", "20 minutes", "m20", "1h30", "-5m", "20x", "1d"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(UltrasegError, match="duration"):
        parse_duration(text)


def test_a_config_file_naming_a_preset_is_the_same_recipe_in_python_and_on_the_cli(
        tmp_path) -> None:
    """{"preset": "demo", "train": {"epochs": 1}} trained the demo recipe from the CLI but,
    through RunConfig.load, the 31M-parameter seed U-Net labelled 'demo'."""
    from ultraseg.cli import build_parser
    from ultraseg.cli_run import resolve_config
    from ultraseg.config import merge, preset

    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"preset": "demo", "data": {"path": "d"},
                                "train": {"epochs": 1}}))
    loaded = RunConfig.load(path)
    assert loaded == merge(preset("demo"), {"data": {"path": "d"}, "train": {"epochs": 1}})
    assert loaded.model.variant == "same" and loaded.model.width == 8
    args = build_parser().parse_args(["train", "--config", str(path), "--out", "run"])
    assert resolve_config(args) == loaded
    written = RunConfig.from_dict(json.loads(loaded.to_json()))      # a run's config.json
    assert written == loaded
    assert RunConfig.from_dict({"preset": "cpu+width-32", "model": {"width": 32}}).model.width \
        == 32                                                         # a label: the defaults


def test_a_run_config_whose_preset_is_a_label_repeats_on_the_cli(tmp_path) -> None:
    """A run built in Python with merge(preset("demo"), {"preset": "mine"}) (or a quality
    lever's 'cpu+NAME') could not be repeated with `train --config RUN/config.json`:
    'unknown preset'. Its config.json names every value, so the label stands; a hand-written
    partial file with an unknown name (a typo) is still refused."""
    from ultraseg.cli import build_parser
    from ultraseg.cli_run import resolve_config
    from ultraseg.config import merge, preset

    cfg = merge(preset("demo"), {"preset": "mine", "data": {"path": "d"},
                                 "train": {"epochs": 2}})
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    args = build_parser().parse_args(["train", "--config", str(path), "--out", "run"])
    assert resolve_config(args) == cfg == RunConfig.load(path)
    path.write_text(json.dumps({"preset": "cpuu", "train": {"epochs": 2}}))
    args = build_parser().parse_args(["train", "d", "--config", str(path), "--out", "run"])
    with pytest.raises(UltrasegError, match="unknown preset 'cpuu'"):
        resolve_config(args)


@pytest.mark.parametrize("section, value", [
    ("model", {"width": 4, "depth": 2}), ("train", {"epochs": 3}), ("data", None),
    ("preprocess", ModelConfig())])
def test_a_run_config_refuses_a_section_that_is_not_its_config(section, value) -> None:
    """RunConfig(model={"width": 4, "depth": 2}) was built, and train failed later with
    AttributeError: 'dict' object has no attribute 'to_dict' (an API misuse review). Each
    section must be its dataclass, refused when built as sections refuse their values; a
    dict is pointed to from_dict and merge."""
    words = f"RunConfig.{section} must be a {type(getattr(RunConfig(), section)).__name__}"
    if isinstance(value, dict):
        words += r".*RunConfig\.from_dict.*ultraseg\.merge"
    with pytest.raises(UltrasegError, match=words):
        RunConfig(**{section: value})
    with pytest.raises(UltrasegError, match=words):
        dataclasses.replace(RunConfig(), **{section: value})
    with pytest.raises(UltrasegError, match="RunConfig.preset must be a string"):
        RunConfig(preset=5)
    assert RunConfig(model=ModelConfig(width=4)).model.width == 4


# ------------------------------------------------------------------ whole numbers
@pytest.mark.parametrize("args, said", [
    (("n", 0), "n must be a whole number from 1, got 0"),
    (("n", 1.0), "n must be a whole number from 1, got 1.0"),
    (("n", "2"), "n must be a whole number from 1, got '2'"),
    (("n", True), "n must be a whole number from 1, got True"),
    (("n", None), "n must be a whole number from 1, got None"),
    (("n", 13, 1, 12), "n must be a whole number from 1 to 12, got 13"),
    (("n", -1, 0, None, True), "n must be a whole number from 0 (or None), got -1"),
    (("n", np.int64(0)), "n must be a whole number from 1, got 0"),
])
def test_whole_number_refuses_in_one_wording(args, said) -> None:
    """One check and one wording for every whole-number argument (predict's batch_size, tile
    and threads, export's tile and opset, read_image's frame, the config's counts and seeds),
    where each had its own ('>= 1', 'at least 1', 'from 0')."""
    from ultraseg.config import whole_number

    with pytest.raises(UltrasegError) as e:
        whole_number(*args)
    assert str(e.value) == said


def test_whole_number_gives_a_python_int_or_none() -> None:
    from ultraseg.config import whole_number

    assert whole_number("n", np.int64(5)) == 5 and type(whole_number("n", np.int64(5))) is int
    assert whole_number("n", 12, hi=12) == 12 and whole_number("n", 0, lo=0) == 0
    assert whole_number("n", None, none_ok=True) is None


# ------------------------------------------------------------------ ranges, when built
@pytest.mark.parametrize("cls, values, said", [
    (ModelConfig, {"width": 0}, "model.width (--width) must be a whole number from 1 to 4096, "
                                "got 0"),
    (ModelConfig, {"width": 4097}, "model.width (--width) must be a whole number from 1 to "
                                   "4096, got 4097"),
    (ModelConfig, {"depth": 0}, "model.depth (--depth) must be a whole number from 1 to 12, "
                                "got 0"),
    (ModelConfig, {"depth": 60}, "model.depth (--depth) must be a whole number from 1 to 12, "
                                 "got 60"),
    (PreprocessConfig, {"size": 0}, "preprocess.size (--size) must be a whole number from 1 to "
                                    "16384, got 0"),
    (PreprocessConfig, {"size": 200_000}, "preprocess.size (--size) must be a whole number from "
                                          "1 to 16384, got 200000: a canvas of 200000 x 200000 "
                                          "pixels, 160.0 GB as floats a frame"),
    (PostprocessConfig, {"threshold": 1.5}, "postprocess.threshold must lie in [0, 1], got 1.5"),
    (PostprocessConfig, {"threshold": float("nan")},
     "postprocess.threshold must lie in [0, 1], got nan"),
    (PostprocessConfig, {"min_peak": -0.1}, "postprocess.min_peak must lie in [0, 1], got -0.1"),
    (PostprocessConfig, {"min_area": -3}, "postprocess.min_area must be >= 0, got -3"),
])
def test_a_model_preprocess_or_postprocess_value_out_of_range_is_refused_when_built(
        cls, values, said) -> None:
    """ModelConfig(width=0), PreprocessConfig(size=0) and PostprocessConfig(threshold=1.5)
    were built, and refused only later (train's check_config, the predictor, a checkpoint's
    load), where TrainConfig refuses its ranges as it is built: each section now refuses its
    own, in the words used later, from Python, a file, merge or dataclasses.replace alike."""
    with pytest.raises(UltrasegError) as e:
        cls(**values)
    assert str(e.value) == said
    with pytest.raises(UltrasegError) as e:
        dataclasses.replace(cls(), **values)
    assert str(e.value) == said
    with pytest.raises(UltrasegError) as e:
        cls.from_dict(values)
    assert str(e.value) == said
    if cls is not PostprocessConfig:
        section = cls.__name__.removesuffix("Config").lower()
        with pytest.raises(UltrasegError) as e:
            merge(preset("seed"), {section: values})
        assert str(e.value) == said


def test_the_bounds_themselves_are_taken_when_built() -> None:
    assert ModelConfig(width=MAX_WIDTH, depth=MAX_DEPTH).depth == MAX_DEPTH
    assert ModelConfig(width=1, depth=1).width == 1
    assert PreprocessConfig(size=1).size == 1 and PreprocessConfig(size=None).size is None
    assert PostprocessConfig(threshold=0.0, min_peak=1.0, min_area=0).min_peak == 1.0


# ------------------------------------------------------------------ merge and preset misuse
@pytest.mark.parametrize("cfg, overrides, words", [
    ("seed", [("train", {"epochs": 2})], "merge's overrides must be a dict of sections"),
    ("seed", "train", "merge's overrides must be a dict of sections"),
    ("seed", None, "merge's overrides must be a dict of sections"),
    ({"train": {}}, {"train": {"epochs": 2}}, "merge takes a RunConfig"),
])
def test_merge_refuses_what_is_no_config_or_overrides_naming_it(cfg, overrides, words) -> None:
    """merge(cfg, [...]) or merge(cfg, "train") raised AttributeError ("'list' object has no
    attribute 'items'"), merge({...}, ...) "'dict' object has no attribute 'to_dict'"."""
    with pytest.raises(UltrasegError, match=f"^{words}"):
        merge(preset(cfg) if isinstance(cfg, str) else cfg, overrides)


def test_merge_refuses_switching_preset_by_its_label_and_keeps_a_label_of_the_users() -> None:
    """merge(preset("cpu"), {"preset": "seed"}) relabelled cpu's values 'seed' (a review of
    config files, D4): set_by_hand then compared them with seed's and train warned of a
    --presence-weight 0.25 the user never set. A preset is chosen with preset(NAME); a label
    that names no preset ('mine', 'cpu+NAME') or the config's own stays allowed."""
    cpu = preset("cpu")
    for other in ("seed", "demo"):
        with pytest.raises(UltrasegError, match=rf"preset\({other!r}\)"):
            merge(cpu, {"preset": other, "train": {"epochs": 2}})
    with pytest.raises(UltrasegError, match=r"preset\('cpu'\)"):
        merge(RunConfig(preset="custom"), {"preset": "cpu"})
    assert merge(cpu, {"preset": "cpu", "train": {"epochs": 2}}).preset == "cpu"
    mine = merge(cpu, {"preset": "mine"})
    assert mine.preset == "mine" and (mine.model, mine.train) == (cpu.model, cpu.train)
    assert merge(cpu, {"preset": "cpu+width-32"}).preset == "cpu+width-32"
    # every value given (a demo run's config.json, as `train --config RUN/config.json` reads
    # it): the values are the label's own, kept with it (the first version of the refusal
    # refused such a file, failing tests/test_train.py in CI)
    demo = preset("demo")
    assert merge(cpu, demo.to_dict()) == demo


@pytest.mark.parametrize("name", [["seed"], ("cpu",), {"demo": 1}])
def test_preset_refuses_what_is_no_name_listing_the_names(name) -> None:
    """preset(["seed"]) raised TypeError ('unhashable type: list')."""
    with pytest.raises(UltrasegError, match=r"^a preset is a name \(seed, cpu, demo\), got "):
        preset(name)


def test_a_key_given_twice_in_a_config_file_is_refused_naming_it(tmp_path, capsys) -> None:
    """JSON keeps the last copy of a repeated key in silence: a --config file with a second
    "train" section ({"lr": 0.01} after one setting epochs and threads) trained with the
    preset's epochs and threads, no warning (a config-file review, D1). Refused, naming the
    key and the file, by RunConfig.load and `ultraseg train --config` alike."""
    from ultraseg import cli

    dup = tmp_path / "dup.json"
    dup.write_text('{"train": {"epochs": 1, "num_threads": 1}, "train": {"lr": 0.01}}')
    with pytest.raises(UltrasegError, match="dup.json") as e:
        RunConfig.load(dup)
    assert "'train' is given twice" in str(e.value)
    inner = tmp_path / "inner.json"
    inner.write_text('{"train": {"epochs": 1, "epochs": 2}}')
    with pytest.raises(UltrasegError, match="'epochs' is given twice"):
        RunConfig.load(inner)
    assert cli.main(["train", str(tmp_path), "--config", str(dup), "--out",
                     str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "dup.json" in err and "'train' is given twice" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("section, values, said", [
    ("model", {"dropout": 1.5}, "model.dropout (--dropout) must be a number in [0, 1)"),
    ("model", {"dropout": -0.5}, "model.dropout"),
    ("model", {"dropout": float("nan")}, "model.dropout"),
    ("train", {"device": "gpu"},
     "train.device (--device) must be one of auto, cpu, cuda, cuda:N, mps"),
    ("data", {"layout": "bsui"}, "unknown layout 'bsui'"),
    ("data", {"subject_pattern": "(["}, "bad subject pattern"),
], ids=["dropout-high", "dropout-negative", "dropout-nan", "device", "layout", "pattern"])
def test_a_setting_checked_only_by_training_is_refused_when_built(tmp_path, section, values,
                                                                   said) -> None:
    """Dropout 1.5 or NaN, device 'gpu', layout 'bsui' and a subject pattern that is no regex
    passed a config file's check and merge, refused only once training started (after the
    dataset was read), naming neither the setting nor the file; a NaN dropout's to_json
    wrote invalid JSON (a config-file review, D3). Refused when the section is built, so a
    --config file's error names the file."""
    with pytest.raises(UltrasegError, match=re.escape(said)):
        merge(RunConfig(), {section: values})
    if values != {"dropout": float("nan")}:         # (NaN is no JSON to write)
        path = tmp_path / "c.json"
        path.write_text(json.dumps({section: values}))
        with pytest.raises(UltrasegError, match="c.json"):
            RunConfig.load(path)


def test_a_training_device_of_mps_is_a_setting_a_config_takes() -> None:
    """train.device 'mps' (a Mac's Apple-silicon GPU, --device mps) was refused as no device
    name; whether the machine has it is asked when training starts, as for cuda."""
    assert merge(RunConfig(), {"train": {"device": "mps"}}).train.device == "mps"


@pytest.mark.parametrize("gpu, name", [(False, "cpu"), (True, "seed")])
def test_the_default_preset_is_cpu_without_a_gpu_and_seed_with_one(monkeypatch, gpu,
                                                                    name) -> None:
    """The preset `ultraseg train` uses where none is named, for Python users too (the rule
    lived in the CLI alone)."""
    import torch

    from ultraseg.config import default_preset_name

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert default_preset_name() == name


def test_a_dropout_of_1_is_refused_and_one_just_under_is_taken() -> None:
    """model.dropout lies in [0, 1): dropout 1 zeroes every feature in training. Only 1.5,
    -0.5 and NaN were tried, so a bound of [0, 1] passed every test; both ends are pinned."""
    with pytest.raises(UltrasegError, match=re.escape("must be a number in [0, 1), got 1.0")):
        merge(RunConfig(), {"model": {"dropout": 1.0}})
    for taken in (0.0, 0.999):
        assert merge(RunConfig(), {"model": {"dropout": taken}}).model.dropout == taken


def test_a_run_s_resolved_block_is_a_record_no_setting(tmp_path) -> None:
    """A run's config.json holds a 'resolved' block beside its sections (what 'auto' device,
    precision and threads became where it ran): a record, read as no setting and not refused
    as an unknown section, by from_dict, load and merge alike. Pinned only by test_cli_train
    (a run's config.json given back) before."""
    resolved = {"device": "cuda:0", "precision": "bf16", "num_threads": 7}
    doc = {"preset": "cpu", "train": {"epochs": 3}}
    plain = RunConfig.from_dict(doc)
    assert RunConfig.from_dict({**doc, "resolved": resolved}) == plain
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**json.loads(plain.to_json()), "resolved": resolved}))
    assert RunConfig.load(path) == plain
    assert merge(plain, {"resolved": resolved}) == plain


def test_a_section_name_that_is_no_string_is_refused_as_unknown() -> None:
    """A Python caller's section name that is no string (no JSON file has one) is an unknown
    section, said beside a misspelt one, not a TypeError: the unknown names are sorted as
    text and only strings are matched against the valid names ('did you mean')."""
    with pytest.raises(UltrasegError, match=re.escape(
            "unknown config sections [1, 'trian'] (did you mean 'train' for 'trian'?")):
        RunConfig.from_dict({1: {}, "trian": {}})


def test_unknown_keys_of_mixed_types_are_named_not_a_type_error() -> None:
    """A Python caller's section with a non-string key beside a misspelt one gets the
    unknown-settings error: the keys were sorted as they are, and 1 < 'pth' raised a bare
    TypeError (an internal error at the CLI) from from_dict and merge alike."""
    from ultraseg.config import UnknownSettings

    for build in (lambda: DataConfig.from_dict({1: "x", "pth": "y"}),
                  lambda: merge(preset("demo"), {"data": {1: "x", "pth": "y"}})):
        with pytest.raises(UnknownSettings) as e:
            build()
        assert "1" in str(e.value) and "'pth'" in str(e.value)
