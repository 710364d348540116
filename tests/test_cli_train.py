"""``ultraseg train`` as a command: where settings come from (preset < --config < flags),
user errors (exit 2, one line, nothing written), --time-limit, --resume, the progress display."""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import held_elsewhere, outline_dataset, ultraseg_warnings
from ultraseg import cli
from ultraseg.checkpoint import load_checkpoint
from ultraseg.cli_run import ProgressPrinter, resolve_config
from ultraseg.config import PRESETS, PostprocessConfig, RunConfig, preset
from ultraseg.errors import UltrasegError
from ultraseg.fileio import LOCK_FILE
from ultraseg.phantom import make_dataset
from ultraseg.predict import load
from ultraseg.run_folder import RUN_FILES

TINY = ["--model", "same", "--width", "4", "--depth", "2", "--size", "32", "--device", "cpu",
        "--precision", "fp32", "--cache-dir", "", "--threads", "1"]


def _resolve(argv: list[str]) -> RunConfig:
    return resolve_config(cli.build_parser().parse_args(["train", *argv]))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("clitrain") / "data", n=40, size=32, seed=4)


# ------------------------------------------------------------------ where settings come from
@pytest.mark.parametrize("gpu, name", [(False, "cpu"), (True, "seed")])
def test_default_preset_is_cpu_without_a_gpu_and_seed_with_one(monkeypatch, gpu, name) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    cfg = _resolve(["DATA", "--out", "RUN"])
    want = preset(name)
    assert (cfg.model, cfg.preprocess, cfg.train) == (want.model, want.preprocess, want.train)
    assert cfg.data.path == "DATA"


def test_flags_win_over_config_file_over_preset(tmp_path) -> None:
    demo = PRESETS["demo"]
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({
        "preset": "cpu",  # --preset wins over the file's preset
        "model": {"width": 6},
        "train": {"epochs": 2, "lr": 0.01},
    }))
    cfg = _resolve(["DATA", "--out", "RUN", "--preset", "demo", "--config", str(conf),
                    "--width", "5", "--loss", "dice"])
    assert cfg.model.width == 5                                   # flag over file
    assert cfg.train.loss == "dice"                               # flag over preset
    assert (cfg.train.epochs, cfg.train.lr) == (2, 0.01)          # file over preset
    assert cfg.model.depth == demo["model"]["depth"]              # preset where nobody spoke
    assert cfg.preprocess.size == demo["preprocess"]["size"]
    assert cfg.train.augment == demo["train"]["augment"]
    assert cfg.preset == "demo"


def test_a_config_files_preset_is_the_base_when_no_flag_names_one(tmp_path) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"preset": "seed", "train": {"epochs": 2}}))
    cfg = _resolve(["DATA", "--out", "RUN", "--config", str(conf)])
    seed = preset("seed")
    assert cfg.preset == "seed" and cfg.train.epochs == 2
    assert (cfg.model, cfg.preprocess) == (seed.model, seed.preprocess)
    assert cfg.train.loss == seed.train.loss and cfg.train.lr == seed.train.lr


def test_a_config_files_unknown_preset_is_a_user_error(data, tmp_path, capsys) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"preset": "fastest"}))
    rc = cli.main(["train", str(data), "--out", str(tmp_path / "r"), "--config", str(conf)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "fastest" in err and "conf.json" in err


def test_a_runs_config_json_reproduces_its_settings(tmp_path) -> None:
    original = _resolve(["OLD", "--out", "RUN", "--preset", "cpu", "--width", "12", "--epochs",
                         "3", "--time-limit", "90s", "--seed", "4"])
    conf = tmp_path / "config.json"
    conf.write_text(original.to_json())
    again = _resolve(["NEW", "--out", "RUN2", "--config", str(conf)])
    assert (again.model, again.preprocess, again.train) == \
        (original.model, original.preprocess, original.train)
    assert again.data.path == "NEW"  # DATA on the command line names the data


def test_a_preset_beside_a_file_setting_every_value_keeps_the_files_name_and_says_so(
        tmp_path) -> None:
    """A run's config.json sets every value: --preset cpu beside a seed run's file trained the
    seed recipe labelled 'cpu', without a word."""
    conf = tmp_path / "config.json"
    conf.write_text(_resolve(["OLD", "--out", "RUN", "--preset", "seed"]).to_json())
    with ultraseg_warnings() as warned:
        cfg = _resolve(["NEW", "--out", "RUN2", "--preset", "cpu", "--config", str(conf)])
    seed = preset("seed")
    assert cfg.preset == "seed" and (cfg.model, cfg.train) == (seed.model, seed.train)
    assert any("--preset cpu changes none" in r.getMessage() for r in warned), warned
    with pytest.raises(UltrasegError, match="bogus"):      # a mistyped name is still refused
        _resolve(["NEW", "--out", "RUN2", "--preset", "bogus", "--config", str(conf)])
    partial = tmp_path / "partial.json"           # a file setting some values: preset first
    partial.write_text(json.dumps({"train": {"epochs": 2}}))
    assert _resolve(["D", "--out", "R", "--preset", "demo", "--config", str(partial)]
                    ).preset == "demo"


@pytest.mark.parametrize("gpu", [False, True])
@pytest.mark.parametrize("flag", [[], ["--preset", "seed"], ["--preset", "cpu"]])
def test_a_file_setting_every_value_but_no_preset_is_labelled_custom_as_warned(
        monkeypatch, tmp_path, gpu, flag) -> None:
    """A run's config.json without its "preset" beside --preset seed was warned of as
    'labelled custom, as the file is', but the run was labelled with the default preset (cpu,
    or seed on a GPU machine: config-files review, D2), which set_by_hand then compared the
    file's values with. Such a file is 'custom', as RunConfig.from_dict reads it, with or
    without --preset and on any machine; its values are the file's."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    doc = json.loads(_resolve(["OLD", "--out", "RUN", "--preset", "cpu"]).to_json())
    del doc["preset"]
    conf = tmp_path / "full.json"
    conf.write_text(json.dumps(doc))
    with ultraseg_warnings() as warned:
        cfg = _resolve(["NEW", "--out", "RUN2", "--config", str(conf), *flag])
    cpu = preset("cpu")
    assert cfg.preset == "custom" == RunConfig.load(conf).preset
    assert (cfg.model, cfg.preprocess, cfg.train) == (cpu.model, cpu.preprocess, cpu.train)
    said = [r.getMessage() for r in warned if "changes none" in r.getMessage()]
    assert len(said) == (1 if flag else 0) and all("labelled 'custom'" in m for m in said), said


def test_a_config_file_is_read_as_utf8_whatever_the_locale(tmp_path) -> None:
    """Read in the locale's encoding, a UTF-8 file was refused under LANG=C, and under Latin-1
    recorded a data path that no UTF-8 process finds ('donnÃ©es'); a BOM was refused."""
    import subprocess
    import sys

    conf = tmp_path / "conf.json"
    conf.write_bytes('{"data": {"path": "/x/données"}}'.encode("utf-8"))
    script = ("import sys; from ultraseg import cli; from ultraseg.cli_run import resolve_config; "
              "a = cli.build_parser().parse_args(['train', '--out', 'R', '--preset', 'demo', "
              "'--config', sys.argv[1]]); p = resolve_config(a).data.path; "
              "from ultraseg.fileio import json_name; print(ascii(p), ascii(json_name(p)))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0",
           "PYTHONCOERCECLOCALE": "0", "PYTHONIOENCODING": "ascii"}
    done = subprocess.run([sys.executable, "-c", script, str(conf)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    # the folder's bytes as this locale names them, stored in a run's config.json as UTF-8 text
    assert done.stdout.strip().split() == [ascii("/x/donn\udcc3\udca9es"), ascii("/x/données")]
    conf.write_bytes('\ufeff{"data": {"path": "/x/données"}}'.encode("utf-8"))  # Notepad's BOM
    assert _resolve(["--out", "R", "--preset", "demo", "--config", str(conf)]
                    ).data.path == "/x/données"


def test_an_empty_preset_or_a_folder_as_config_is_said_plainly(tmp_path) -> None:
    with pytest.raises(UltrasegError, match="--preset is empty"):
        _resolve(["D", "--out", "R", "--preset", ""])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(UltrasegError, match="a folder, not a config file.*config.json"):
        _resolve(["D", "--out", "R", "--config", str(run)])


def test_valid_model_settings_on_a_same_model_are_warned_about(data, tmp_path) -> None:
    """--tiles-per-image 4 --tile 5 on the cpu preset's 'same' model were taken without a
    word, recorded in config.json, and changed nothing."""
    from ultraseg.train import ignored_settings

    cfg = _resolve(["D", "--out", "R", "--preset", "cpu", "--tiles-per-image", "4",
                    "--tile", "5"])
    notes = ignored_settings(cfg)
    assert len(notes) == 2 and "tiles_per_image" in notes[1] and "model.tile" in notes[0]
    assert ignored_settings(_resolve(["D", "--out", "R", "--preset", "cpu"])) == []
    assert ignored_settings(_resolve(["D", "--out", "R", "--preset", "seed",
                                      "--tiles-per-image", "4"])) == []
    with ultraseg_warnings() as warned:
        assert cli.main(["train", str(data), "--out", str(tmp_path / "r"), *TINY, "--epochs",
                         "1", "--tiles-per-image", "3"]) == 0
    assert any("tiles_per_image" in r.getMessage() and "ignores it" in r.getMessage()
               for r in warned), [r.getMessage() for r in warned]


@pytest.mark.parametrize("label, recipe_weight", [
    ("cpu", 0.25), ("seed", 1.0), ("demo", 1.0),
    ("cpu+width-32", 0.25),         # a quality lever's run: the cpu recipe and one change
    ("custom", 1.0), ("mine", 1.0)])        # labels on the defaults
def test_a_value_set_by_hand_is_told_from_its_recipe_s_from_flags_files_and_labels(
        tmp_path, label, recipe_weight) -> None:
    """Pins what 'set by hand' means beside a recipe (train's notes about an ignored
    --presence-weight): the value the preset the label names gives, a 'PRESET+NAME' label's
    preset's, the defaults' for another label; the same from flags, from a --config file
    and from a run's config.json."""
    from ultraseg.config import merge
    from ultraseg.train import ignored_settings

    def noted(cfg: RunConfig) -> bool:
        return any("presence_weight" in n for n in ignored_settings(cfg))

    base = preset(label.split("+")[0]) if label.split("+")[0] in PRESETS else RunConfig()
    for weight in (recipe_weight, 0.5):
        by_hand = weight != recipe_weight
        cfg = merge(base, {"preset": label, "data": {"path": "D"},
                           "model": {"presence_head": False},
                           "train": {"presence_weight": weight}})
        assert noted(cfg) is by_hand, (label, weight)
        run = tmp_path / f"{weight}.json"            # a run's config.json: every value
        run.write_text(cfg.to_json())
        assert _resolve(["--config", str(run), "--out", "R"]) == cfg
        assert noted(_resolve(["--config", str(run), "--out", "R"])) is by_hand
        if label in PRESETS:                         # a partial file, and flags, on a preset
            part = tmp_path / "part.json"
            part.write_text(json.dumps({"preset": label, "model": {"presence_head": False},
                                        "train": {"presence_weight": weight}}))
            from_file = _resolve(["D", "--config", str(part), "--out", "R"])
            assert from_file == cfg == RunConfig.from_dict(
                {**json.loads(part.read_text()), "data": {"path": "D"}})
            flags = _resolve(["D", "--preset", label, "--no-presence-head",
                              "--presence-weight", str(weight), "--out", "R"])
            assert flags == cfg and noted(flags) is by_hand
            assert noted(_resolve(["D", "--config", str(part), "--presence-weight",
                                   str(recipe_weight), "--out", "R"])) is False


def test_a_split_seed_with_nothing_to_split_is_warned_about() -> None:
    """--split-seed with --val-fraction 0 and no --test-fraction seeds no split: it was taken
    in silence, where the other settings a run ignores are warned about (a review)."""
    from ultraseg.train import ignored_settings

    def notes(*flags: str) -> list[str]:
        return ignored_settings(_resolve(["D", "--out", "R", "--preset", "cpu", *flags]))

    said = notes("--val-fraction", "0", "--split-seed", "3")
    assert len(said) == 1 and "train.split_seed (--split-seed) 3" in said[0], said
    assert "ignores it" in said[0]
    assert notes("--val-fraction", "0", "--test-fraction", "0.2", "--split-seed", "3") == []
    assert notes("--split-seed", "3") == [] and notes("--val-fraction", "0") == []


def test_settings_that_do_nothing_for_the_run_are_warned_about(data, tmp_path) -> None:
    """--presence-weight with no presence head, --affine-scale with an augmentation that has
    no zoom or on the valid model (which warps nothing): taken, recorded in config.json, and
    silent, where --presence-mode in the same place is warned about."""
    from ultraseg.train import ignored_settings

    def notes(*flags: str) -> list[str]:
        return ignored_settings(_resolve(["D", "--out", "R", *flags]))

    said = notes("--preset", "cpu", "--no-presence-head", "--presence-weight", "3")
    assert len(said) == 1 and "presence_weight (--presence-weight) 3.0" in said[0], said
    assert notes("--preset", "cpu", "--no-presence-head") == []     # the preset's own 0.25
    assert notes("--preset", "cpu", "--presence-head", "--presence-weight", "3") == []
    for flags in (["--augment", "none"], ["--augment", "flip"], ["--model", "valid",
                                                                 "--augment", "strong"]):
        said = notes("--preset", "cpu", *flags, "--affine-scale", "0.5", "2")
        assert len(said) == 1 and "affine_scale (--affine-scale) 0.5 2.0" in said[0], (flags,
                                                                                        said)
    assert notes("--preset", "cpu", "--affine-scale", "0.5", "2") == []       # strong, same
    assert notes("--preset", "seed") == [] and notes("--preset", "demo") == []
    # presets that leave presence_weight at its default: set by hand all the same
    for flags in (["--preset", "seed"], ["--preset", "seed", "--model", "same"],
                  ["--preset", "demo"], ["--preset", "cpu", "--no-presence-head"]):
        said = notes(*flags, "--presence-weight", "0.5")
        assert len(said) == 1 and "presence_weight (--presence-weight) 0.5" in said[0], (flags,
                                                                                         said)
    with ultraseg_warnings() as warned:          # 'auto' builds no head on these frames
        assert cli.main(["train", str(data), "--out", str(tmp_path / "auto"), *TINY,
                         "--epochs", "1", "--preset", "cpu", "--presence-weight", "3",
                         "--augment", "none"]) == 0
    said = [r.getMessage() for r in warned if "presence" in r.getMessage()]
    assert len(said) == 1 and "--presence-weight" in said[0], said


@pytest.mark.parametrize("text, seconds", [("20m", 1200.0), ("90s", 90.0), ("1h30m", 5400.0)])
def test_time_limit_flag(text: str, seconds: float) -> None:
    assert _resolve(["D", "--out", "R", "--time-limit", text]).train.time_limit_s == seconds


def test_time_limit_none_lifts_a_presets_cap() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).train.time_limit_s == 1200.0
    assert _resolve(["D", "--out", "R", "--preset", "cpu", "--time-limit", "none"]
                    ).train.time_limit_s is None


@pytest.mark.parametrize("argv, words", [
    (["--preset", "fastest"], ["fastest", *PRESETS]),
    (["--time-limit", "soon"], ["soon", "20m"]),
    (["--time-limit", "0"], ["time"]),
    (["--lr", "-1"], ["lr"]),
    (["--val-fraction", "1.5"], ["--val-fraction", "1.5"]),
    (["--test-fraction", "1"], ["--test-fraction", "[0, 1)", "1.0"]),
    (["--test-fraction", "-0.2"], ["--test-fraction", "-0.2"]),
    (["--label", "5"], ["label 5", "inspect", "nothing to learn"]),   # binary masks: no 5
    (["--ema-decay", "1"], ["ema_decay", "--ema-decay", "[0, 1)"]),
    (["--affine-scale", "1.2", "0.8"], ["--affine-scale", "LO <= HI", "(1.2, 0.8)"]),
    (["--affine-scale", "0", "1"], ["--affine-scale", "0.25 <= LO"]),
    (["--affine-scale", "1e-6", "1e6"], ["--affine-scale", "0.25 <= LO <= HI <= 4"]),
    (["--device", "tpu"], ["tpu", "cpu"]),
    (["--size", "30"], ["preprocess.size (--size) 32"]),  # same U-Net, depth 2: a multiple of 4
    # (the cpu preset's head is 'auto': a mode applies to the head it may build)
    (["--no-presence-head", "--presence-mode", "classifier"], ["'classifier'", "--presence-head"]),
    (["--presence-weight", "-1"], ["--presence-weight", ">= 0", "-1"]),
    (["--presence-head", "--presence-mode", "classifier", "--presence-weight", "0"],
     ["classifier", "--presence-weight", "> 0"]),
])
def test_user_errors_exit_2_with_one_line_and_write_nothing(data, tmp_path, capsys, argv,
                                                            words) -> None:
    """(A count or seed out of its range is refused as the command is parsed, before this:
    test_cli.py's test_a_whole_number_flag_out_of_its_range_is_a_usage_error_naming_it.)"""
    run = tmp_path / "run"
    rc = cli.main(["train", str(data), "--out", str(run), *TINY, *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    last = err.splitlines()[-1]
    assert last.startswith("error:") and all(w in last for w in words), last
    # refused before training or before its first epoch ended: no run folder is left
    # (before, a refusal after the data were read left config.json, train.log, split.json)
    assert not run.exists(), sorted(p.name for p in run.iterdir())


@pytest.mark.parametrize("content, words", [
    ("{not json", ["conf.json", "config"]),
    ("[1, 2]", ["conf.json", "object"]),
    ('{"train": 3}', ["conf.json", "object"]),
    ('{"train": {"epochz": 3}}', ["conf.json", "epochz", "epochs", "batch_size"]),
    ('{"trian": {"epochs": 3}}', ["conf.json", "trian"]),
    ('{"train": {"epochs": "3"}}', ["epochs", "'3'"]),
    # a value outside a field's choices: 'step' trained a cosine schedule, 'focal' crashed
    ('{"train": {"schedule": "step"}}', ["conf.json", "schedule", "'cosine'", "'step'"]),
    ('{"train": {"loss": "focal"}}', ["conf.json", "loss", "'bce+dice'", "'focal'"]),
    ('{"preprocess": {"normalise": "minmax"}}', ["conf.json", "normalise", "'minmax'"]),
    ('{"model": {"variant": true}}', ["conf.json", "variant", "True"]),
    # a string for a switch: "false" turned batch Dice on
    ('{"train": {"batch_dice": "false"}}', ["conf.json", "batch_dice", "true or false", "'false'"]),
    ('{"preprocess": {"pad_to_square": "no"}}', ["conf.json", "pad_to_square", "'no'"]),
    # internal errors before: a ValueError from Adam, an AttributeError, a RuntimeError mid-run
    ('{"train": {"weight_decay": -1}}', ["train.weight_decay", ">= 0", "-1"]),
    ('{"train": {"weight_decay": "0.1"}}', ["train.weight_decay", "'0.1'"]),
    ('{"train": {"device": 5}}', ["train.device", "5"]),
    ('{"model": {"in_channels": 3}}', ["model.in_channels", "1", "grayscale"]),
    ('{"model": {"out_channels": 2}}', ["model.out_channels", "1"]),
    # JSON nested deeper than Python reads: RecursionError, an internal error
    ("[" * 100_000 + "]" * 100_000, ["conf.json", "nested too deeply"]),
])
def test_bad_config_file_is_a_user_error(data, tmp_path, capsys, content, words) -> None:
    conf = tmp_path / "conf.json"
    conf.write_text(content)
    rc = cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(conf),
                   "--model", "same", "--width", "4", "--depth", "2", "--size", "32",
                   "--cache-dir", ""])
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert not (tmp_path / "run" / "config.json").exists()   # refused before any file


@pytest.mark.parametrize("model, words", [({"width": 1000000000}, ["model.width", "4096"]),
                                         ({"depth": 60}, ["model.depth", "12"])])
def test_a_config_files_model_too_large_to_build_is_a_user_error(data, tmp_path, capsys, model,
                                                                 words) -> None:
    """'internal error: RuntimeError: Storage size calculation overflowed'."""
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"model": model}))
    rc = cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(conf),
                   "--model", "same", "--size", "32", "--cache-dir", ""])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "internal error" not in err, err
    assert all(w in err for w in words), err
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("name, content, line, yaml", [
    ("conf.yaml", "train:\n  epochs: 3\n", 1, True),
    ("conf.json", "# mine\ntrain:\n  epochs: 3\n", 1, True),    # looks like YAML
    ("conf.yml", '{"train": {"epochs": 3}},', 1, True),        # named so
    ("conf.json", '{"train": {"epochs": 3},\n}', 2, False),    # JSON with a slip
])
def test_a_config_file_that_is_no_json_says_so_and_that_yaml_is_not_read(
        tmp_path, name, content, line, yaml) -> None:
    """A YAML file as --config was refused with json's bare words: 'cannot read the config
    file (Expecting value: line 1 column 1 (char 0))'."""
    conf = tmp_path / name
    conf.write_text(content)
    with pytest.raises(UltrasegError) as e:
        _resolve(["D", "--out", "R", "--config", str(conf)])
    said = str(e.value)
    assert said.startswith(f"{conf}: config files are JSON (as a run's config.json); this is "
                           f"not JSON (line {line} column "), said
    assert ("YAML is not read" in said) == yaml, said


def test_a_runs_config_json_alone_repeats_it_from_anywhere(data, tmp_path, monkeypatch,
                                                           capsys) -> None:
    """DATA given relative to the working folder is recorded as an absolute path, so the run's
    config.json (with --config, and no DATA) and --resume work from another folder."""
    monkeypatch.chdir(data.parent)
    first = tmp_path / "first"
    assert cli.main(["train", data.name, "--out", str(first), *TINY, "--epochs", "1"]) == 0
    recorded = json.loads((first / "config.json").read_text())["data"]["path"]
    assert recorded == str(data.resolve())
    assert load_checkpoint(first / "best.ckpt").meta["run"]["data"]["path"] == recorded
    monkeypatch.chdir(tmp_path)
    again = tmp_path / "again"
    rc = cli.main(["train", "--config", str(first / "config.json"), "--out", str(again)])
    assert rc == 0, capsys.readouterr().err
    assert json.loads((again / "config.json").read_text()) == \
        json.loads((first / "config.json").read_text())
    assert cli.main(["train", "--resume", "--out", str(first)]) == 0, capsys.readouterr().err


def test_a_config_built_without_a_preset_can_be_given_back(data, tmp_path, capsys) -> None:
    """RunConfig.from_dict without a preset names it 'custom'; such a config.json is given
    back on the dataclasses' defaults, not refused as an unknown preset."""
    conf = tmp_path / "custom.json"
    conf.write_text(RunConfig.from_dict({"model": {"variant": "same", "width": 5}}).to_json())
    assert json.loads(conf.read_text())["preset"] == "custom"
    cfg = _resolve(["DATA", "--out", "RUN", "--config", str(conf)])
    assert cfg.preset == "custom" and cfg.model.width == 5
    assert cfg.train == RunConfig().train


def test_a_data_path_under_the_home_folder_trains(data, tmp_path, monkeypatch, capsys) -> None:
    """'~/data' in a config file (or DATA typed in quotes) was a folder named '~' in the
    current one: 'no such file or folder'."""
    monkeypatch.setenv("HOME", str(data.parent))
    monkeypatch.chdir(tmp_path)
    assert _resolve([f"~/{data.name}", "--out", "R"]).data.path == str(data)
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"data": {"path": f"~/{data.name}"}}))
    rc = cli.main(["train", "--config", str(conf), "--out", str(tmp_path / "run"), *TINY,
                   "--epochs", "1"])
    assert rc == 0, capsys.readouterr().err
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["data"]["path"]
    assert recorded == str(data.resolve())


def test_a_relative_data_path_found_beside_the_config_file_alone_is_said_so(
        tmp_path, monkeypatch) -> None:
    """A config file's relative data.path is read from the current folder (as ever: files
    rely on it); where only the file's folder holds it, 'no such file or folder' left the
    user to guess why."""
    (tmp_path / "exp" / "busi").mkdir(parents=True)
    conf = tmp_path / "exp" / "c.json"
    conf.write_text(json.dumps({"data": {"path": "busi"}}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UltrasegError) as e:
        _resolve(["--out", "R", "--config", "exp/c.json"])
    assert str(e.value) == (f"exp/c.json: data.path 'busi' is not found from the current "
                            f"folder {tmp_path}; the config file's folder "
                            f"({tmp_path / 'exp'}) holds it: run from there or give an "
                            "absolute path"), str(e.value)
    # from the file's folder, or with DATA named, it is read as ever
    monkeypatch.chdir(tmp_path / "exp")
    assert _resolve(["--out", "R", "--config", "c.json"]).data.path == "busi"
    monkeypatch.chdir(tmp_path)
    assert _resolve(["D", "--out", "R", "--config", "exp/c.json"]).data.path == "D"
    (tmp_path / "busi").mkdir()                 # the current folder's wins where both hold it
    assert _resolve(["--out", "R", "--config", "exp/c.json"]).data.path == "busi"


def test_a_world_size_set_by_hand_is_warned_of_as_ignored(data, tmp_path, capsys) -> None:
    """train.world_size is recorded by training (the processes torchrun started), not
    chosen: a config file's 4 was replaced by 1 without a word. A run's own config.json,
    given back, says nothing."""
    conf = tmp_path / "conf.json"
    conf.write_text(json.dumps({"train": {"world_size": 4}}))
    first = tmp_path / "first"
    with ultraseg_warnings() as warned:
        rc = cli.main(["train", str(data), "--out", str(first), "--config", str(conf), *TINY,
                       "--epochs", "1"])
    assert rc == 0, capsys.readouterr().err
    said = [r for r in warned if "train.world_size" in r.getMessage()]   # (not the folder's)
    assert len(said) == 1 and said[0].name == "ultraseg.train", [r.getMessage() for r in warned]
    assert "train.world_size 4" in said[0].getMessage() and "ignored" in said[0].getMessage()
    assert json.loads((first / "config.json").read_text())["train"]["world_size"] == 1
    with ultraseg_warnings() as warned:
        rc = cli.main(["train", "--config", str(first / "config.json"), "--out",
                       str(tmp_path / "again")])
    assert rc == 0, capsys.readouterr().err
    assert not [r for r in warned if "train.world_size" in r.getMessage()], \
        [r.getMessage() for r in warned]


def _structure_set(root: Path, subjects: range, holders: set[int], frames: int = 4,
                   draw: Callable[[np.ndarray, int], object] | None = None, size: int = 32
                   ) -> list[str]:
    """A folders-layout set of ``size`` px frames ``S_K`` (``frames`` per subject); the masks
    of the subjects in ``holders`` hold a square (or what ``draw(mask, subject)`` sets in the
    blank mask), the others are empty. The frames' subjects."""
    from PIL import Image

    names = [f"{subject}_{k}" for subject in subjects for k in range(frames)]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(
            root / "images" / f"{name}.png")
        mask = np.zeros((size, size), np.uint8)
        if int(name.split("_")[0]) in holders:
            if draw is None:
                mask[8:20, 10:22] = 255
            else:
                draw(mask, int(name.split("_")[0]))
        Image.fromarray(mask).save(root / "masks" / f"{name}_mask.png")
    return [n.split("_")[0] for n in names]


def test_a_training_side_without_foreground_is_refused(tmp_path, capsys) -> None:
    """Only subject 1's frames hold a structure: a split that trains on subject 2 alone has
    nothing to learn (before, it trained in silence and validated against subject 1)."""
    from ultraseg.data import run_split

    root = tmp_path / "data"
    subjects = _structure_set(root, range(1, 3), {1})
    seed = next(s for s in range(50)
                if {subjects[i] for i in run_split(subjects, 0.0, 0.5, s)[0]} == {"2"})
    rc = cli.main(["train", str(root), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1",
                   "--val-fraction", "0.5", "--seed", str(seed)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2
    assert "none of the 4 training masks" in err and "no --split-seed helps" in err, err
    assert "(the last epoch kept" in err and "in Python, train.val_fraction 0)" in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("cached", [False, True])
def test_masks_that_all_cover_their_whole_frame_are_refused(tmp_path, capsys, cached) -> None:
    """Every mask is the whole frame: nothing to segment. Training ran behind a 'look inverted'
    warning (the structure drawn black on white?) to a validation Dice of 0.995 (a review,
    diagnostics D5); it is refused as every mask empty is, from a cache entry too."""
    root = tmp_path / "data"
    _structure_set(root, range(1, 4), {1, 2, 3}, draw=lambda m, _: m.fill(255))
    cache = ["--cache-dir", str(tmp_path / "cache")] if cached else []
    for _ in range(2 if cached else 1):     # (the second reads the frames from the cache)
        rc = cli.main(["train", str(root), "--out", str(tmp_path / "run"), *TINY, *cache,
                       "--epochs", "1"])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert rc == 2, err
        assert "every one of the 12 masks covers its whole frame: nothing to segment" in err, err
        assert "--label" in err and "export" in err, err
        assert not (tmp_path / "run").exists()
    assert not cached or any((tmp_path / "cache").iterdir())


def _dots(squares: set[int]) -> Callable[[np.ndarray, int], None]:
    """What :func:`_structure_set` draws in a 128 px mask: the subjects in ``squares`` a
    square of 24 px, the others a dot of one pixel that a 32 px working size loses (nearest
    neighbour samples none of it)."""
    def draw(mask: np.ndarray, subject: int) -> None:
        if subject in squares:
            mask[40:64, 40:64] = 255
        else:
            mask[60, 60] = 255
    return draw


def test_structures_the_working_size_loses_are_warned_of_and_counted_by_the_presence_head(
        tmp_path, capsys) -> None:
    """Masks whose structure resizing to the working size loses trained as empty frames
    without a word, and 'auto' counted them as empty for the presence head (a review,
    diagnostics D1): a warning counts them and names --size, in train.log and the report;
    the presence head's line says how many are empty at the frames' own size."""
    from ultraseg.preprocess import resize

    dot = np.zeros((128, 128), np.uint8)
    _dots(set())(dot, 0)
    assert not resize(dot, (32, 32), "mask").any()      # (what the test stands on)
    root = tmp_path / "data"
    _structure_set(root, range(1, 10), set(range(1, 10)), frames=2, draw=_dots({1, 2, 3}),
                   size=128)
    run = tmp_path / "run"
    with ultraseg_warnings() as warned:
        rc = cli.main(["train", str(root), "--out", str(run), *TINY, "--epochs", "1",
                       "--val-fraction", "0.3"])
    assert rc == 0, capsys.readouterr().err
    said = "12 of the 18 masks that hold a structure at their own size hold none at the 32 px " \
           "working size"
    lost = [r.getMessage() for r in warned if said in r.getMessage()]
    assert len(lost) == 1 and "--size" in lost[0], [r.getMessage() for r in warned]
    log_text = (run / "train.log").read_text()
    assert said in log_text and said in (run / "report.html").read_text()
    presence = next(line for line in log_text.splitlines() if "presence head:" in line)
    assert "at the 32 px working size" in presence and "at their own size" in presence, presence


def test_masks_whose_structures_the_working_size_loses_are_refused_naming_size(
        tmp_path, capsys) -> None:
    """Every structure a dot that the 32 px working size loses: the refusal said none of the
    masks holds a foreground pixel, and the user had drawn one in each (a review,
    diagnostics D1). It says they are lost at the working size, and names --size."""
    root = tmp_path / "data"
    _structure_set(root, range(1, 4), {1, 2, 3}, draw=_dots(set()), size=128)
    rc = cli.main(["train", str(root), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2, err
    assert "none of the 12 masks holds a foreground pixel at the 32 px working size" in err, err
    assert "the 12 that hold one at their own size" in err and "larger --size" in err, err


def test_a_training_side_the_working_size_emptied_is_refused_naming_size(tmp_path,
                                                                        capsys) -> None:
    """The training side's structures are all dots the 32 px working size loses: the refusal
    blamed the split ('only subject 3 holds a structure ... label more subjects' frames'),
    though subjects 1 and 2 hold structures (a review, diagnostics D1). It names the loss at
    the working size and --size, not the split."""
    from ultraseg.data import run_split

    root = tmp_path / "data"
    subjects = _structure_set(root, range(1, 4), {1, 2, 3}, draw=_dots({3}), size=128)
    seed = next(s for s in range(50)
                if {subjects[i] for i in run_split(subjects, 0.0, 0.3, s)[1]} == {"3"})
    rc = cli.main(["train", str(root), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1",
                   "--val-fraction", "0.3", "--seed", str(seed)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2, err
    assert "none of the 8 training masks holds a foreground pixel at the 32 px working size" \
        in err, err
    assert "8 of them hold one at their own size" in err and "larger --size" in err, err
    assert "split" not in err and "label more" not in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("val_fraction", ["0", "0.5"])
def test_a_training_side_the_holdout_left_without_foreground_names_the_holdout(
        tmp_path, capsys, val_fraction) -> None:
    """The structures all held out for testing: the refusal said 'the 0 validation frames take
    the rest' and advised --val-fraction, already 0 (a review, oddsets 1: --test-fraction 0.9
    --val-fraction 0). It counts the held-out test frames and names --test-fraction."""
    from ultraseg.data import run_split

    root = tmp_path / "data"
    subjects = _structure_set(root, range(1, 9), {1, 2}, frames=1)
    seed = next(s for s in range(200)
                if {"1", "2"} <= {subjects[i] for i in run_split(subjects, 0.7,
                                                                 float(val_fraction), s)[2]})
    rc = cli.main(["train", str(root), "--out", str(tmp_path / "run"), *TINY, "--epochs", "1",
                   "--test-fraction", "0.7", "--val-fraction", val_fraction,
                   "--seed", str(seed)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "training masks" in err, err
    n_test = len(run_split(subjects, 0.7, float(val_fraction), seed)[2])
    assert f"{n_test} held-out test frames hold every structure" in err, err
    assert "a smaller --test-fraction" in err and "train.test_fraction" in err, err
    assert "take the rest" not in err and "--val-fraction" not in err, err


def test_one_subject_holding_every_structure_is_advised_what_works(tmp_path, capsys) -> None:
    """Only subject 1 holds a structure: a split that validates on it was refused advising
    another --split-seed, and one that trains on it was warned of advising another
    --split-seed, each leading to the other (a review, oddsets 2). Both now say no seed helps
    and give --val-fraction 0, which trains on it (the last epoch kept)."""
    from ultraseg.data import run_split

    root = tmp_path / "data"
    subjects = _structure_set(root, range(1, 9), {1}, frames=1)
    side = {s: next(seed for seed in range(200)
                    if "1" in {subjects[i] for i in run_split(subjects, 0.0, 0.2, seed)[k]})
            for s, k in (("train", 0), ("val", 1))}
    rc = cli.main(["train", str(root), "--out", str(tmp_path / "refused"), *TINY, "--epochs",
                   "1", "--seed", str(side["val"])])
    err = capsys.readouterr().err
    assert rc == 2, err
    for said in (err.strip().splitlines()[-1], None):
        if said is None:        # the run that trains on subject 1: its warning
            with ultraseg_warnings() as warned:     # (printed or not: pytest's logging)
                rc = cli.main(["train", str(root), "--out", str(tmp_path / "run"), *TINY,
                               "--epochs", "1", "--seed", str(side["train"])])
            assert rc == 0
            said = next(r.getMessage() for r in warned
                        if "validation masks holds" in r.getMessage())
        assert "only subject 1 holds a structure" in said and "no --split-seed" in said, said
        assert "another --split-seed" not in said, said
        assert "--val-fraction 0" in said and "train.val_fraction 0" in said, said
        assert "last epoch" in said, said
    # without a validation side a seed does help: it can keep subject 1 from the holdout
    seed = next(seed for seed in range(200)
                if "1" in {subjects[i] for i in run_split(subjects, 0.5, 0.0, seed)[2]})
    rc = cli.main(["train", str(root), "--out", str(tmp_path / "held"), *TINY, "--epochs", "1",
                   "--val-fraction", "0", "--test-fraction", "0.5", "--seed", str(seed)])
    said = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "another --split-seed or a smaller --test-fraction" in said, said


def test_the_figures_of_a_run_whose_validation_chose_nothing_say_the_last_epoch_was_kept(
        tmp_path, capsys, monkeypatch) -> None:
    """No validation mask holds a structure: curve.png's legend still said 'best 0.0000
    (epoch 2)' and seg_sample.png's title and caption said the validation frames 'chose the
    epoch and the post-processing', where the last epoch and the defaults were kept (a
    review, oddsets 8)."""
    from ultraseg import report
    from ultraseg.data import run_split

    texts: list[list[str]] = []
    save = report._save

    def keep(fig, path) -> None:
        found = [fig._suptitle.get_text()] if fig._suptitle is not None else []
        for ax in fig.axes:
            legend = ax.get_legend()
            found += [t.get_text() for t in legend.get_texts()] if legend else []
        texts.append(found)
        save(fig, path)

    monkeypatch.setattr(report, "_save", keep)
    root = tmp_path / "data"
    subjects = _structure_set(root, range(1, 9), {1}, frames=1)
    seed = next(s for s in range(200)
                if "1" in {subjects[i] for i in run_split(subjects, 0.0, 0.2, s)[0]})
    run = tmp_path / "run"
    assert cli.main(["train", str(root), "--out", str(run), *TINY, "--epochs", "2",
                     "--seed", str(seed)]) == 0
    said = [t for found in texts for t in found]
    star = [t for t in said if "(epoch 2)" in t]
    assert star and all(t.startswith("kept (the last") for t in star), said
    title = next(t for t in said if t.startswith("validation frames"))
    assert "chose the epoch" not in title and "chose nothing" in title, title
    page = (run / "report.html").read_text()
    caption = page.split("<figcaption>seg_sample.png")[1].split("</figcaption>")[0]
    assert "chose the epoch" not in caption and "last epoch" in caption, caption


def test_missing_config_file(data, tmp_path, capsys) -> None:
    rc = cli.main(["train", str(data), "--out", str(tmp_path / "r"), "--config",
                   str(tmp_path / "nope.json")])
    assert rc == 2 and "nope.json" in capsys.readouterr().err


def test_train_without_data(tmp_path, capsys) -> None:
    assert cli.main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "DATA" in capsys.readouterr().err


def test_resume_with_nothing_to_resume(tmp_path, capsys) -> None:
    assert cli.main(["train", "--out", str(tmp_path / "r"), "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


# ------------------------------------------------------------------ --time-limit cuts a run
@pytest.fixture(scope="module")
def stopped_run(data, tmp_path_factory):
    """50 epochs of 15 batches can't fit in 5 s (validation and the report are reserved
    60 s): the run stops inside epoch 1. (exit code, stdout, run folder)."""
    import ultraseg.budget as budget

    run = tmp_path_factory.mktemp("stopped") / "run"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget, "_RESERVE_SHARE", 1e9)   # the full 60 s, not a quarter of 5 s
        rc = cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "50",
                       "--batch-size", "2", "--time-limit", "5s"])
    return rc, out.getvalue(), run


def test_time_limit_ends_early_keeping_best_and_metrics(stopped_run) -> None:
    rc, stdout, run = stopped_run
    assert rc == 0
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert 1 <= len(rows) < 50
    assert rows[-1]["complete"] == "False"  # stopped inside an epoch, which was still validated
    best = load_checkpoint(run / "best.ckpt")
    reason = best.meta["metrics"]["stopped"]
    assert reason and "time limit" in reason
    assert best.meta["metrics"]["best_epoch"] == 1
    assert "time limit" in (run / "train.log").read_text()
    assert "stopped early" in (run / "report.html").read_text()
    assert "note: time limit" in stdout and "partial" in stdout


def test_training_into_an_existing_run_needs_resume(stopped_run, data, capsys) -> None:
    _, _, run = stopped_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    rc = cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and str(run) in err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # untouched


def test_resume_of_a_run_its_time_limit_stopped_trains_no_further(stopped_run, tmp_path,
                                                                  capsys, monkeypatch) -> None:
    """--time-limit caps the whole run: resumed, a run that used its limit up finishes (it
    used to get the whole limit again and train another epoch)."""
    import ultraseg.budget as budget

    monkeypatch.setattr(budget, "_RESERVE_SHARE", 1e9)   # as the stopped run: 60 s kept
    _, _, original = stopped_run
    run = tmp_path / "copy"
    shutil.copytree(original, run)
    n_before = load_checkpoint(run / "last.ckpt").train_state["epoch"]
    rc = cli.main(["train", "--out", str(run), "--resume"])  # its own config: no DATA, no flags
    assert rc == 0, capsys.readouterr().err
    # it had finished: nothing resumed (test_resume.py has a run killed after its limit)
    assert "already finished" in capsys.readouterr().out
    with open(run / "metrics.csv", newline="") as f:
        epochs = [int(r["epoch"]) for r in csv.DictReader(f)]
    assert epochs == list(range(1, n_before + 1))  # nothing appended
    assert load_checkpoint(run / "last.ckpt").train_state["epoch"] == n_before
    assert json.loads((run / "config.json").read_text()) == \
        json.loads((original / "config.json").read_text())


@pytest.mark.parametrize("extra, words", [
    (["--epochs", "9"], ["--epochs"]),
    (["--time-limit", "1h", "--lr", "0.1"], ["--time-limit", "--lr"]),
    (["--preset", "seed"], ["--preset"]),
    (["--no-presence-head"], ["--presence-head"]),
    (["--fill-outlines"], ["--fill-outlines"]),
    (["--config", "CONF"], ["--config"]),
    (["DATA_ELSEWHERE"], ["DATA", "config.json"]),
])
def test_resume_refuses_settings_it_would_ignore(stopped_run, tmp_path, capsys, extra,
                                                 words) -> None:
    _, _, run = stopped_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    (tmp_path / "conf.json").write_text("{}")
    extra = [{"DATA_ELSEWHERE": str(tmp_path), "CONF": str(tmp_path / "conf.json")}.get(x, x)
             for x in extra]
    rc = cli.main(["train", "--out", str(run), "--resume", *extra])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and err.startswith("error:") and all(w in err for w in words), err
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # untouched


# ------------------------------------------------------------------ one command per folder
def _in_use(run: Path) -> str:
    return (f"error: {run}: in use by another ultraseg command (train, pid {os.getpid()}); "
            f"wait for it to end or choose another --out")


def test_a_train_into_a_folder_in_use_is_refused_before_it_writes(data, tmp_path,
                                                                    capsys) -> None:
    """Two trains into one --out both ran to the end: best.ckpt was one run's, split.json
    and config.json the other's, and evaluating with that split scored the first run's
    training frames as validation; train.log held both runs."""
    run = tmp_path / "run"
    with held_elsewhere(run):
        rc = cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "1"])
        assert rc == 2
        assert capsys.readouterr().err.strip().splitlines() == [_in_use(run)]
        assert sorted(p.name for p in run.iterdir()) == [LOCK_FILE]    # nothing written
    assert not run.exists()             # the holder wrote nothing either


def test_a_resume_of_a_run_in_use_is_refused_leaving_it_untouched(stopped_run,
                                                                  capsys) -> None:
    _, _, run = stopped_run
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    with held_elsewhere(run):
        assert cli.main(["train", "--out", str(run), "--resume"]) == 2
        assert capsys.readouterr().err.strip().splitlines() == [_in_use(run)]
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == before  # untouched


def test_a_run_holds_its_folder_until_it_ends(data, tmp_path, monkeypatch) -> None:
    """The folder is locked from before the run is opened to after its report is written,
    and nothing of the lock is left in it."""
    import ultraseg.train as train_mod
    from ultraseg.fileio import output_lock

    seen = []
    real_open_run, real_train = train_mod.open_run, train_mod._train

    def probe(when: str) -> None:       # another command (a thread) asks for the folder
        answer = []

        def other() -> None:
            try:
                with output_lock(run, "predict"):
                    answer.append("got it")
            except UltrasegError as e:
                answer.append(str(e))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        seen.append((when, answer[0].split(": ", 1)[-1]))

    def open_run(*args):
        probe("open")
        return real_open_run(*args)

    def _train(*args):
        result = real_train(*args)
        probe("trained")
        return result

    monkeypatch.setattr(train_mod, "open_run", open_run)
    monkeypatch.setattr(train_mod, "_train", _train)
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "1"]) == 0
    held = f"in use by another ultraseg command (train, pid {os.getpid()}); wait for it " \
        f"to end or choose another --out"
    assert seen == [("open", held), ("trained", held)]
    assert LOCK_FILE not in {p.name for p in run.iterdir()}


# ------------------------------------------------------------------ progress display
class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_and_epoch_line(monkeypatch, capsys) -> None:
    monkeypatch.setenv("COLUMNS", "200")                # the whole bar
    stream = _Tty()
    show = ProgressPrinter(stream)
    show({"event": "batch", "epoch": 2, "epochs": 5, "batch": 3, "batches": 12, "loss": 0.4321,
          "elapsed": 6.0})
    bar = stream.getvalue()
    assert "epoch 2/5" in bar and "3/12" in bar and "loss 0.4321" in bar
    assert "ETA" in bar and "18s" in bar  # 3 of 12 batches in 6 s: 18 s to go
    show({"event": "epoch", "epoch": 2, "epochs": 5, "train_loss": 0.4, "val_loss": 0.5,
          "val_dice": 0.75, "seconds": 8.0, "complete": True})
    line = capsys.readouterr().out
    assert line.count("\n") == 1
    assert "train loss 0.4000" in line and "val loss 0.5000" in line and "val Dice 0.7500" in line


def test_progress_counts_to_the_epochs_a_time_limit_fits(monkeypatch, capsys) -> None:
    """Where the schedule's horizon is under --epochs, the bar and the epoch line count to it
    and name the cap; an epoch past it (the pace quickened) counts to itself."""
    monkeypatch.setenv("COLUMNS", "200")
    stream = _Tty()
    show = ProgressPrinter(stream)
    show({"event": "batch", "epoch": 3, "epochs": 300, "horizon": 11, "batch": 1,
          "batches": 4, "loss": 0.5, "elapsed": 1.0})
    assert "epoch 3/11 (time limit; cap 300) [" in stream.getvalue()
    for epoch, horizon in ((3, 11), (12, 11), (4, 300)):
        show({"event": "epoch", "epoch": epoch, "epochs": 300, "horizon": horizon,
              "train_loss": 0.4, "val_loss": 0.5, "val_dice": 0.75, "seconds": 8.0,
              "complete": True})
    assert [s.split("  ")[0] for s in capsys.readouterr().out.splitlines()] == [
        "epoch 3/11 (time limit; cap 300)", "epoch 12/12 (time limit; cap 300)", "epoch 4/300"]


def test_no_bar_when_not_a_terminal(capsys) -> None:
    stream = io.StringIO()
    ProgressPrinter(stream)({"event": "batch", "epoch": 1, "epochs": 1, "batch": 1,
                             "batches": 2, "loss": 0.5, "elapsed": 1.0})
    assert stream.getvalue() == ""  # logs and pipes get the per-epoch lines only


def _screen(text: str, columns: int) -> list[str]:
    """The rows a terminal ``columns`` wide shows for ``text``, as xterm autowraps: ``\\r``
    back to its row's start, ``\\n`` a new row, a character past the last column on a new
    row (trailing blanks dropped)."""
    rows: list[list[str]] = [[]]
    col = 0
    for ch in text:
        if ch in "\r\n":
            if ch == "\n":
                rows.append([])
            col = 0
            continue
        if col == columns:
            rows.append([])
            col = 0
        row = rows[-1]
        if col < len(row):
            row[col] = ch
        else:
            row.append(ch)
        col += 1
    return ["".join(r).rstrip() for r in rows]


@pytest.mark.parametrize("columns", [40, 80])
def test_the_bar_and_its_clear_fit_a_narrow_terminal(monkeypatch, capsys, columns) -> None:
    """The batch bar (72 characters and more) and its clear (90 spaces) wrapped on a terminal
    narrower than them, and a `\\r` returns to the start of the last row only: at 40 columns
    every batch left a row of its own, at 80 every epoch line had a blank row before it (a
    review). Each status is cut to the width less one column (a character in the last column
    wraps on some terminals) and the clear blanks only what was written."""
    monkeypatch.setenv("COLUMNS", str(columns))
    stream = _Tty()
    show = ProgressPrinter(stream)
    for b in range(1, 4):
        show({"event": "batch", "epoch": 1, "epochs": 2, "batch": b, "batches": 3,
              "loss": 0.4321, "elapsed": 2.0 * b})
        assert len(_screen(stream.getvalue(), columns)) == 1       # one row, redrawn
    show({"event": "epoch", "epoch": 1, "epochs": 2, "train_loss": 0.4, "val_loss": 0.5,
          "val_dice": 0.75, "seconds": 8.0, "complete": True})
    written = stream.getvalue()
    assert _screen(written, columns) == [""]                        # taken off, no row left
    drawn = [s for s in written.split("\r") if s.strip()]
    assert drawn and max(map(len, drawn)) <= columns - 1
    assert drawn[0].startswith("epoch 1/2 [")
    assert written.endswith("\r" + " " * max(map(len, drawn)) + "\r")   # no wider than drawn
    assert capsys.readouterr().out.startswith("epoch 1/2  train loss 0.4000")


def test_deep_supervision_flag() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu", "--deep-supervision"]
                    ).model.deep_supervision is True
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).model.deep_supervision is False


def test_norm_flag() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu", "--norm", "instance"]
                    ).model.norm == "instance"
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).model.norm == "batch"


def test_attention_flag() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu", "--attention"]).model.attention
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).model.attention is False


def test_dropout_flag() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu", "--dropout", "0.5"]
                    ).model.dropout == 0.5
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).model.dropout == 0.0


def test_crop_border_and_stretch_flags_train_and_predict_at_the_frames_size(data, tmp_path
                                                                          ) -> None:
    plain = _resolve(["D", "--out", "R", "--preset", "cpu"]).preprocess
    assert plain.pad_to_square and not plain.crop_border
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "1",
                     "--crop-border", "--no-pad-to-square"]) == 0
    pre = load_checkpoint(run / "best.ckpt").preprocess
    assert pre.crop_border and not pre.pad_to_square
    frame = np.full((60, 44), 128, np.uint8)  # grey bands above and below a textured middle
    frame[10:50] = np.random.default_rng(0).integers(0, 256, (40, 44))
    # every pixel of the kept middle scores above 1e-6; the trimmed bands are given exactly 0
    mask = load(run / "best.ckpt", device="cpu").predict(frame, PostprocessConfig(threshold=1e-6))
    assert mask.shape == (60, 44)
    assert not mask[:10].any() and not mask[50:].any() and mask[10:50].all()


def test_fill_outlines_trains_on_the_filled_contours_and_is_kept_in_the_checkpoint(tmp_path
                                                                                 ) -> None:
    """Outline masks outside the hc18 layout trained as rings; --fill-outlines fills them in
    any layout, and the checkpoint records it (evaluate and predict read truth so)."""
    assert _resolve(["D", "--out", "R"]).preprocess.fill_outlines is False
    root, ring, disk = outline_dataset(tmp_path / "d", n=6)
    run, cache = tmp_path / "run", tmp_path / "cache"
    argv = [a for a in TINY if a not in ("--cache-dir", "")]
    assert cli.main(["train", str(root), "--out", str(run), *argv, "--cache-dir", str(cache),
                     "--epochs", "1", "--fill-outlines"]) == 0
    assert load_checkpoint(run / "best.ckpt").preprocess.fill_outlines is True
    assert json.loads((run / "config.json").read_text())["preprocess"]["fill_outlines"] is True
    (entry,) = cache.glob("*.npz")
    with np.load(entry) as z:
        masks = z["masks"]
    assert all(np.array_equal(m > 0, disk) for m in masks)


def test_training_on_masks_that_look_like_outlines_is_warned_about(tmp_path) -> None:
    """Contours in images/ + masks/ trained as rings with no word (val Dice 0.026)."""
    root, _, _ = outline_dataset(tmp_path / "d", n=6)
    cache = tmp_path / "cache"
    argv = [a for a in TINY if a not in ("--cache-dir", "")]
    for k in range(2):          # built, then a cache hit: said both times
        with ultraseg_warnings() as warned:
            assert cli.main(["train", str(root), "--out", str(tmp_path / f"run{k}"), *argv,
                             "--cache-dir", str(cache), "--epochs", "1"]) == 0
        said = [r.getMessage() for r in warned if "closed contours" in r.getMessage()]
        assert len(said) == 1 and "6 of the 6 non-empty masks" in said[0], said
        assert "--fill-outlines" in said[0]


def test_residual_block_run_trains_and_predicts(data, tmp_path) -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).model.block == "plain"
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "2",
                     "--block", "residual"]) == 0
    ckpt = load_checkpoint(run / "best.ckpt")
    assert ckpt.model.block == "residual" and any(".shortcut." in k for k in ckpt.state_dict)
    prob = load(run / "best.ckpt", device="cpu").predict_proba(np.full((30, 44), 90, np.uint8))
    assert prob.shape == (30, 44) and ((prob >= 0) & (prob <= 1)).all()


def test_deep_supervision_run_trains_and_predicts(data, tmp_path) -> None:
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "2",
                     "--deep-supervision"]) == 0
    ckpt = load_checkpoint(run / "best.ckpt")
    assert ckpt.model.deep_supervision and "aux_heads.0.weight" in ckpt.state_dict
    prob = load(run / "best.ckpt", device="cpu").predict_proba(np.full((30, 44), 90, np.uint8))
    assert prob.shape == (30, 44) and ((prob >= 0) & (prob <= 1)).all()


def test_affine_scale_flag_reaches_the_config_and_survives_its_json() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).train.affine_scale == (0.85, 1.15)
    cfg = _resolve(["D", "--out", "R", "--affine-scale", "0.7", "1.4"])
    assert cfg.train.affine_scale == (0.7, 1.4)
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_dice_skip_empty_flag_reaches_the_config() -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).train.dice_skip_empty is False
    assert _resolve(["D", "--out", "R", "--dice-skip-empty"]).train.dice_skip_empty is True


def test_batch_dice_flag_reaches_the_run(data, tmp_path) -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).train.batch_dice is False
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "2",
                     "--loss", "bce+dice", "--batch-dice"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["batch_dice"] is True
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and all(0 < float(r["val_loss"]) < 3 for r in rows)


@pytest.mark.parametrize("flags", [["--batch-dice"], ["--dice-skip-empty"],
                                   ["--batch-dice", "--dice-skip-empty"]])
def test_dice_term_flags_without_a_dice_term_are_refused(data, tmp_path, capsys, flags) -> None:
    """With --loss bce (the seed recipe's) they were ignored in silence."""
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "1",
                     "--loss", "bce", *flags]) == 2
    err = capsys.readouterr().err
    assert all(f in err for f in flags) and "(--loss) bce has none" in err
    assert not run.exists()


@pytest.mark.parametrize("mode", ["gate", "classifier", "detached"])
def test_presence_head_run_trains_and_predicts(data, tmp_path, mode) -> None:
    assert _resolve(["D", "--out", "R", "--preset", "cpu"]).model.presence_head == "auto"
    assert _resolve(["D", "--out", "R", "--preset", "cpu", "--no-presence-head"]
                    ).model.presence_head is False
    assert _resolve(["D", "--out", "R", "--presence-weight", "0"]).train.presence_weight == 0.0
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "2",
                     "--presence-head", "--presence-mode", mode]) == 0
    ckpt = load_checkpoint(run / "best.ckpt")
    assert ckpt.model.presence_head and "presence.weight" in ckpt.state_dict
    assert ckpt.model.presence_mode == mode
    assert ckpt.state_dict["presence.weight"].abs().sum() > 0      # trained, not left at 0
    prob = load(run / "best.ckpt", device="cpu").predict_proba(np.full((30, 44), 90, np.uint8))
    assert prob.shape == (30, 44) and ((prob >= 0) & (prob <= 1)).all()


def test_ema_run_keeps_the_average_in_best_ckpt_and_its_state_in_last_ckpt(data, tmp_path) -> None:
    """One epoch, so the best epoch is the last: best.ckpt holds the moving average (the
    module inside last.ckpt's ``ema`` state), not the weights training went on with."""
    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--epochs", "1",
                     "--ema-decay", "0.9"]) == 0
    best, last = load_checkpoint(run / "best.ckpt"), load_checkpoint(run / "last.ckpt")
    assert best.meta["run"]["train"]["ema_decay"] == 0.9
    ema = last.train_state["ema"]
    assert int(ema["n_averaged"]) >= 2  # one update per step
    differs = 0
    for key, value in best.state_dict.items():
        torch.testing.assert_close(value, ema[f"module.{key}"], msg=key)
        differs += not torch.equal(value, last.state_dict[key])
    assert differs > 0


def test_split_seed_holds_the_split_while_seed_changes_the_training(data, tmp_path) -> None:
    def run(name: str, *flags: str) -> tuple[dict, dict]:
        out = tmp_path / name
        assert cli.main(["train", str(data), "--out", str(out), *TINY, "--epochs", "1",
                         "--test-fraction", "0.2", *flags]) == 0
        split = json.loads((out / "split.json").read_text())
        return {k: split[k] for k in ("train", "val", "test", "seed")}, \
            load_checkpoint(out / "best.ckpt").state_dict

    base, base_w = run("seed0")
    same, same_w = run("seed1-split0", "--seed", "1", "--split-seed", "0")
    other, _ = run("seed1", "--seed", "1")
    assert same == base                      # the same held-out, validation, training frames
    assert any(not torch.equal(base_w[k], same_w[k]) for k in base_w)  # other weights
    assert (other["val"], other["test"]) != (base["val"], base["test"])  # --seed alone: both
    assert other["seed"] == 1 and same["seed"] == 0


def test_a_refused_run_keeps_what_was_in_its_folder_before(data, tmp_path, capsys) -> None:
    """Only what the refused run wrote goes: a folder it did not make stays, with its files."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    assert cli.main(["train", str(data), "--out", str(run), *TINY, "--label", "5"]) == 2
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_a_run_folder_inside_the_data_is_no_part_of_the_data(tmp_path, capsys) -> None:
    """train --out DATA/images/run was accepted and its figures (curve.png, sample.png...)
    then broke the dataset: resume and evaluate refused it, predict took them for frames."""
    from ultraseg.io import scan_dataset
    from ultraseg.io.outputs import OUTPUT_MARKER

    data = make_dataset(tmp_path / "data", n=40, size=32, seed=4)
    run = data / "images" / "run"
    assert cli.main(["train", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    capsys.readouterr()
    assert (run / OUTPUT_MARKER).is_file() and (run / "curve.png").is_file()
    ds, problems = scan_dataset(data)
    assert problems == [] and len(ds.samples) == 40
    assert cli.main(["train", "--resume", "--out", str(run)]) == 0


@pytest.mark.parametrize("world_size", [1, 2])
def test_a_run_from_before_the_output_marker_resumes_and_is_marked(data, tmp_path,
                                                                  world_size) -> None:
    """Its own figures (curve.png...) were taken for the user's images: the resume of a run
    recorded with another process count (which rewrites config.json) was refused."""
    from ultraseg.io.outputs import OUTPUT_MARKER

    run = tmp_path / "run"
    assert cli.main(["train", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    (run / OUTPUT_MARKER).unlink()                      # as a run of an earlier version
    conf = json.loads((run / "config.json").read_text())
    conf["train"]["world_size"] = world_size
    (run / "config.json").write_text(json.dumps(conf))
    assert cli.main(["train", "--resume", "--out", str(run)]) == 0
    assert (run / OUTPUT_MARKER).is_file()


def test_label_0_is_refused_before_training(data, tmp_path, capsys) -> None:
    """--label 0 trained the background as the structure and reported Dice 0.97 (a usage
    error as the command line is parsed; a config's preprocess.label 0 before training)."""
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--label", "0", *TINY])
    assert stop.value.code == 2
    assert "0 is the background" in capsys.readouterr().err
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"preprocess": {"label": 0}}))
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), "--config", str(conf),
                     *TINY]) == 2
    assert "0 is the background" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_ctrl_c_during_training_says_how_to_go_on(tmp_path, capsys, monkeypatch) -> None:
    """`interrupted` alone did not say that the run goes on with --resume from its last
    saved epoch (its best.ckpt meanwhile holds the default post-processing)."""
    import ultraseg.train as train_module

    def interrupted_after_an_epoch(cfg, out, **kw):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "last.ckpt").write_bytes(b"an epoch was saved")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted_after_an_epoch)
    data = make_dataset(tmp_path / "data", n=4, size=32, seed=1)
    out = tmp_path / "my run"
    assert cli.main(["train", str(data), "--out", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and f"ultraseg train --resume --out '{out}'" in err


def test_ctrl_break_during_training_is_handled_as_ctrl_c(data, tmp_path, capsys,
                                                        monkeypatch) -> None:
    """On Windows a console's Ctrl-Break sends SIGBREAK, not SIGINT: it ended a training
    where it was, without Ctrl-C's clean-up and the --resume command that goes on. Here an
    unused signal stands for SIGBREAK (Linux has none), sent after the first saved epoch; the
    test's own handler, which only counts it, is what the command found and puts back."""
    import signal

    if not hasattr(signal, "SIGUSR1"):
        pytest.skip("no SIGUSR1 here to stand for SIGBREAK")
    monkeypatch.setattr(signal, "SIGBREAK", signal.SIGUSR1, raising=False)
    not_taken: list[int] = []

    def counted(signum, frame) -> None:
        not_taken.append(signum)

    shown = ProgressPrinter.__call__

    def break_after_the_first_epoch(self, e) -> None:
        shown(self, e)
        if e["event"] == "epoch" and e["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGBREAK)

    monkeypatch.setattr(ProgressPrinter, "__call__", break_after_the_first_epoch)
    out = tmp_path / "my run"
    before = signal.signal(signal.SIGUSR1, counted)
    try:
        code = cli.main(["train", str(data), "--out", str(out), "--epochs", "3", *TINY])
        assert signal.getsignal(signal.SIGUSR1) is counted      # the caller's handler is back
    finally:
        signal.signal(signal.SIGUSR1, before)
    err = capsys.readouterr().err
    assert (code, not_taken) == (130, []), err
    assert "interrupted" in err and f"ultraseg train --resume --out '{out}'" in err, err
    assert (out / "last.ckpt").is_file()


def test_the_go_on_command_keeps_a_folder_named_with_a_dash(tmp_path, capsys,
                                                            monkeypatch) -> None:
    """`--out=-run` was printed back as `--resume --out -run`, which argparse refuses
    ("expected one argument"): a dash-led name goes as `--out=-run`."""
    import ultraseg.train as train_module

    def interrupted_after_an_epoch(cfg, out, **kw):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "last.ckpt").write_bytes(b"an epoch was saved")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train", interrupted_after_an_epoch)
    monkeypatch.chdir(tmp_path)
    data = make_dataset(tmp_path / "data", n=4, size=32, seed=1)
    assert cli.main(["train", str(data), "--out=-run", *TINY]) == 130
    err = capsys.readouterr().err
    assert "ultraseg train --resume --out=-run`" in err
    with pytest.raises(SystemExit):           # what was printed before
        cli.build_parser().parse_args(["train", "--resume", "--out", "-run"])
    a = cli.build_parser().parse_args(["train", "--resume", "--out=-run"])
    assert a.out == "-run" or str(a.out) == "-run"


class _GonePipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


#: An epoch line as training's progress callback gives it.
FIRST_EPOCH = {"event": "epoch", "epoch": 1, "epochs": 3, "train_loss": 0.4, "val_loss": 0.5,
               "val_dice": 0.75, "seconds": 8.0, "complete": True}


def test_progress_goes_quiet_when_stdout_s_reader_goes(monkeypatch) -> None:
    """`ultraseg train ... | head -1`: the second epoch line met a closed pipe and the
    BrokenPipeError stopped training in silence (exit 141, no resume command). The printer
    now says once, on stderr, that training goes on, and prints nothing more."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", _GonePipe())
    show = ProgressPrinter(stream)
    epoch = dict(FIRST_EPOCH)
    show(epoch)
    show({**epoch, "epoch": 2})
    said = stream.getvalue()
    assert said.count("training goes on") == 1, said
    show({"event": "stage", "message": "writing the report"})  # stderr itself still works
    assert stream.getvalue().endswith("writing the report ...\n")
    gone = ProgressPrinter(_GonePipe())                # `2>&1 | head`: both streams gone
    gone({"event": "stage", "message": "reading and caching the dataset"})
    gone(epoch)
    gone({"event": "stage", "message": "writing the report"})
    assert gone.quiet and gone.err_quiet


@pytest.mark.slow
@pytest.mark.parametrize("both", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_train_finishes_when_stdout_is_a_closed_pipe(tmp_path: Path, both: bool) -> None:
    """The same from outside: stdout (and, as `2>&1 | head` makes it, stderr) is a pipe whose
    reader has gone before the first line. The run trains to its end, writes its report and
    exits 0."""
    import subprocess
    import sys

    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(cli.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-m", "ultraseg", "train", str(data), "--out", str(run), "--preset",
         "demo", "--width", "4", "--depth", "2", "--size", "32", "--epochs", "2", "--device",
         "cpu", "--precision", "fp32", "--cache-dir", "", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT if both else subprocess.PIPE, env=env)
    child.stdout.close()                                   # the reader is gone at once
    err = "" if both else child.stderr.read().decode()
    assert child.wait(timeout=300) == 0, err
    assert both or "training goes on" in err
    assert (run / "report.html").is_file()
    with open(run / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]


def test_validation_frames_show_on_a_terminal_only(monkeypatch, capsys) -> None:
    """The frames scored while the post-processing is chosen show as a line rewritten in
    place on a terminal, cleared after the last; logs and pipes get nothing per frame."""
    monkeypatch.setenv("COLUMNS", "200")
    stream = _Tty()
    show = ProgressPrinter(stream)
    show({"event": "validation", "frame": 2, "frames": 5, "elapsed": 61.2})
    assert stream.getvalue() == "\rvalidation frame 2/5 (61 s) "
    show({"event": "validation", "frame": 5, "frames": 5, "elapsed": 90.0})
    assert stream.getvalue().endswith("\r" + " " * len("validation frame 2/5 (61 s) ") + "\r")
    piped = io.StringIO()
    ProgressPrinter(piped)({"event": "validation", "frame": 1, "frames": 5, "elapsed": 1.0})
    assert piped.getvalue() == "" and capsys.readouterr().out == ""


def rank_of_two_stopping_after_an_epoch(tmp_path: Path, monkeypatch, rank: str,
                                        raised: BaseException) -> Path:
    """Process ``rank`` of a 2-process torchrun job (its environment) whose training saves
    an epoch in ``tmp_path / 'run'`` and then raises ``raised``; ``tmp_path / 'data'`` holds a
    dataset to name. Returns the run folder."""
    import ultraseg.train as train_module

    def stops_after_an_epoch(cfg, out, **kw):
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "last.ckpt").write_bytes(b"an epoch was saved")
        raise raised

    monkeypatch.setattr(train_module, "train", stops_after_an_epoch)
    for name, value in (("RANK", rank), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    make_dataset(tmp_path / "data", n=4, size=32, seed=1)
    return tmp_path / "run"


@pytest.mark.parametrize("rank", ["0", "1"])
def test_ctrl_c_in_a_torchrun_job_names_its_process_and_torchrun(tmp_path, capsys, monkeypatch,
                                                                 rank: str) -> None:
    """Under torchrun every process printed the same unprefixed 'interrupted' line (one read
    as rank 0's after rank 0 was killed), suggesting the one-process command: each line now
    names its process (as errors do), and the command is torchrun's. Rank 0 alone gives it:
    every rank printed the whole --resume command, N copies of one hint (a DDP review, O1)."""
    out = rank_of_two_stopping_after_an_epoch(tmp_path, monkeypatch, rank, KeyboardInterrupt())
    assert cli.main(["train", str(tmp_path / "data"), "--out", str(out), *TINY]) == 130
    err = capsys.readouterr().err
    hint = f"torchrun --nproc_per_node=2 -m ultraseg train --resume --out {out}`"
    if rank == "0":
        assert err.startswith("interrupted: `torchrun") and hint in err, err
    else:
        assert err == "rank 1: interrupted\n"


GLOO_PEER_CLOSED = ("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by "
                    "peer [127.0.0.1]:29871. This is typically caused by a remote worker "
                    "crashing. Check the logs of the remote worker before reporting an error. "
                    "GLHF! \N{BEACH WITH UMBRELLA}\N{VARIATION SELECTOR-16}")


@pytest.mark.parametrize("rank", ["0", "1"])
@pytest.mark.parametrize("failure, said", [
    (RuntimeError(GLOO_PEER_CLOSED), "stopped (its message is above)"),
    (torch.distributed.DistBackendError("NCCL error: remote process exited"),
     "stopped (its message is above)"),
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] Timed out "
                  "waiting 1800000ms for recv operation to complete"),
     "did not answer within 0:30:00")], ids=["gloo", "nccl", "timeout"])
def test_a_collective_failing_for_another_process_is_no_internal_error(
        tmp_path, capsys, monkeypatch, rank: str, failure: RuntimeError, said: str) -> None:
    """When one process of a torchrun job failed (an out-of-memory on its GPU), the others'
    collectives raised gloo's 'Connection closed by peer' (NCCL: 'remote process exited'),
    which rank 0 printed as an internal error of ultraseg, exit 1, with no word of the epoch
    saved (a DDP review, D3). It says another process stopped, exit 2, and rank 0 gives the
    --resume command as an interruption does."""
    out = rank_of_two_stopping_after_an_epoch(tmp_path, monkeypatch, rank, failure)
    assert cli.main(["train", str(tmp_path / "data"), "--out", str(out), *TINY]) == 2
    err = capsys.readouterr().err
    prefix = "" if rank == "0" else "rank 1: "
    assert err.startswith(f"{prefix}error: another process of this run {said}"), err
    assert "internal error" not in err and len(err.splitlines()) == 1
    assert "before reporting an error" not in err   # gloo's words to a bug report: not this
    hint = f"torchrun --nproc_per_node=2 -m ultraseg train --resume --out {out}`"
    assert (hint in err) == (rank == "0"), err


def test_a_runtime_error_of_one_process_alone_is_still_an_internal_error(
        tmp_path, capsys, monkeypatch) -> None:
    """Outside torchrun, the words of a peer's failure are no reason to blame another process."""
    import ultraseg.train as train_module

    def fails(cfg, out, **kw):
        raise RuntimeError(GLOO_PEER_CLOSED)

    monkeypatch.setattr(train_module, "train", fails)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    data = make_dataset(tmp_path / "data", n=4, size=32, seed=1)
    assert cli.main(["train", str(data), "--out", str(tmp_path / "run"), *TINY]) == 1
    assert capsys.readouterr().err.startswith("internal error: RuntimeError")


class _FullDisk(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError(28, "No space left on device")


class _ClosedLater(io.StringIO):
    def write(self, text: str) -> int:
        raise ValueError("I/O operation on closed file.")


def test_progress_goes_quiet_when_a_stream_cannot_be_written(monkeypatch) -> None:
    """stdout on a full disk (`>/dev/full`) or an I/O error: the ENOSPC of the first epoch
    line stopped training (exit 2, "No space left on device", no file named); a stream closed
    under it (ValueError) did too. Either goes quiet as a gone reader does."""
    stream = io.StringIO()
    monkeypatch.setattr("sys.stdout", _FullDisk())
    show = ProgressPrinter(stream)
    epoch = dict(FIRST_EPOCH)
    show(epoch)
    show({**epoch, "epoch": 2})
    said = stream.getvalue()
    assert said.count("training goes on") == 1 and "No space left" in said, said
    quiet = ProgressPrinter(_ClosedLater())              # stderr closed under it
    quiet({"event": "stage", "message": "writing the report"})
    assert quiet.err_quiet


@pytest.mark.slow
@pytest.mark.parametrize("redirect", [">&-", "2>&-", ">&- 2>&-", ">/dev/full", "2>/dev/full"])
def test_train_finishes_when_stdout_or_stderr_is_closed_or_full(tmp_path: Path,
                                                                 redirect: str) -> None:
    """A stream closed at start (`cmd >&-`, some daemons: Python's sys.stdout is None) or
    one that cannot be written (`>/dev/full`): training stopped after its first epoch line,
    or before its first epoch (exit 1 "internal error" or 2 "No space left on device"). A
    display is no reason to lose a run: it trains every epoch and exits 0."""
    import subprocess
    import sys

    if "/dev/full" in redirect and not Path("/dev/full").exists():
        pytest.skip("no /dev/full here")
    data = make_dataset(tmp_path / "data", n=20, size=32, seed=3)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(cli.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ultraseg", "train", str(data), "--out", str(run),
               "--preset", "demo", "--width", "4", "--depth", "2", "--size", "32", "--epochs",
               "2", "--device", "cpu", "--precision", "fp32", "--cache-dir", "", "--threads",
               "1"]
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *command],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (run / "report.html").is_file()
    with open(run / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]


@pytest.mark.parametrize("redirect, code", [("2>&-", 2), (">&- 2>&-", 2)])
def test_a_user_error_with_stderr_closed_still_exits_2(tmp_path: Path, redirect: str,
                                                       code: int) -> None:
    """`2>&-`: the error line could not be printed to a stream that is None, and the user
    error came out as exit 1 (an internal error's code)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(cli.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "ultraseg", "train", str(tmp_path / "nothing"), "--out",
               str(tmp_path / "run"), "--cache-dir", ""]
    proc = subprocess.run(["sh", "-c", f'exec "$@" {redirect}', "sh", *command],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == code


def test_a_config_file_s_non_ascii_data_path_trains_under_an_ascii_locale(tmp_path: Path) -> None:
    """A --config whose data.path (JSON text, as a UTF-8 locale writes it) names a non-ASCII
    folder ended train in an internal UnicodeEncodeError under a POSIX locale: the name is
    the folder's bytes read as UTF-8, and names the folder there too."""
    from conftest import under_ascii_locale

    make_dataset(tmp_path / "d\u00e9\u4e2d\U0001f600", n=12, size=32, seed=0)
    (tmp_path / "cfgu.json").write_text(json.dumps({"data": {"path": "d\u00e9\u4e2d\U0001f600"}}))
    done = under_ascii_locale("train", "--config", "cfgu.json", "--out", "cfgrun", "--preset",
                              "demo", "--epochs", "1", "--size", "32", "--width", "2",
                              "--depth", "2", "--threads", "1", "--cache-dir", "",
                              "--device", "cpu", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "cfgrun" / "config.json").read_text(encoding="utf-8")
                      )["data"]["path"] == str(tmp_path / "d\u00e9\u4e2d\U0001f600")


def test_a_data_path_the_locale_cannot_encode_is_a_user_error(monkeypatch) -> None:
    """From Python, a data.path given as text ('d\u00e9') under an ASCII locale, where no
    file has that name: a user error saying to use a UTF-8 locale, not UnicodeEncodeError."""
    from ultraseg.train import check_config

    monkeypatch.setattr(os, "fsencode", lambda n: os.fspath(n).encode("ascii",
                                                                       "surrogateescape"))
    cfg = preset("demo")
    with pytest.raises(UltrasegError, match="PYTHONUTF8=1"):
        check_config(RunConfig(data=type(cfg.data)(path="d\u00e9"), preprocess=cfg.preprocess,
                               model=cfg.model, train=cfg.train, preset=cfg.preset))


def test_a_structure_lost_at_the_working_size_chose_nothing_in_title_and_caption_alike(
        tmp_path, monkeypatch) -> None:
    """Training decides on its canvases whether validation chooses; seg_sample.png's title
    decided again on the frames at their own size. A validation mask of one pixel, lost on
    a 32-px canvas: the caption said the frames chose nothing, the title that they 'chose
    the epoch and the post-processing' (a fresh-eyes read). Both now follow training."""
    from PIL import Image

    from ultraseg import report
    from ultraseg.data import run_split

    root = tmp_path / "data"
    names = [f"{s}_0" for s in range(1, 9)]
    for i, n in enumerate(names):
        frame = np.random.default_rng(i).integers(0, 256, (96, 96), dtype=np.uint8)
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "masks").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(root / "images" / f"{n}.png")
        m = np.zeros((96, 96), np.uint8)
        if n.startswith("1_"):
            m[3, 3] = 255                   # one pixel: the 32-px canvas loses it
        else:
            m[24:60, 30:66] = 255
        Image.fromarray(m).save(root / "masks" / f"{n}_mask.png")
    subjects = [n.split("_")[0] for n in names]
    seed = next(s for s in range(200)
                if [subjects[i] for i in run_split(subjects, 0.0, 0.125, s)[1]] == ["1"])
    titles: list[str] = []
    plot = report.plot_predictions
    monkeypatch.setattr(report, "plot_predictions",
                        lambda *a, **k: (titles.append(k.get("what")), plot(*a, **k))[1])
    run = tmp_path / "run"
    assert cli.main(["train", str(root), "--out", str(run), *TINY, "--epochs", "1",
                     "--split-seed", str(seed), "--val-fraction", "0.125"]) == 0
    assert titles == [report.VALIDATION_TITLE_NOT_CHOSEN], titles
    page = (run / "report.html").read_text()
    caption = page.split("<figcaption>seg_sample.png")[1].split("</figcaption>")[0]
    assert "chose nothing" in caption, caption
