"""The benchmark scripts' records and the documents that cite them (``benchmarks/``).

Nothing here runs a benchmark or needs the datasets: the tests read the committed results and
the README text, or call the scripts' cheap parts."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
RESULTS = BENCHMARKS / "results"


def _agrees(text: str, value: float) -> bool:
    """``text`` (a figure as printed) is ``value`` rounded to the decimals ``text`` shows."""
    decimals = len(text.partition(".")[2])
    return float(text) == round(value, decimals)


def _xeon_column(readme: str) -> dict[str, str]:
    """The headline speed table's first machine column, by the row's label."""
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 5:
            rows[cells[0]] = cells[1]
    return rows


def test_readme_speed_figures_are_the_recorded_speed_json_s() -> None:
    """README's headline speed table (its Xeon column), the peaks above it and the prose that
    quotes the same run, and benchmarks/README.md's process ranges, say what
    ``benchmarks/results/speed.json`` holds: they had kept an overwritten run's figures."""
    rec = json.loads((RESULTS / "speed.json").read_text())
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Benchmarks (recorded figures)"):]
    section = section.split("\n## ")[0]  # the last section today; to the next, should one follow

    peak = re.search(r"bf16 convolution peak (\d+) GFLOP/s, fp32 (\d+)\)", section)
    assert peak, "README no longer gives the headline run's peaks"
    assert _agrees(peak[1], rec["peak_bf16_gflops"]) and _agrees(peak[2], rec["peak_fp32_gflops"])
    header = re.search(r"\| figure \| Xeon, AMX \((\d+)\) \|", section)
    assert header and _agrees(header[1], rec["peak_bf16_gflops"])

    col = _xeon_column(section)
    infer = col["whole-frame prediction (580x420), speed-up"]
    train = col["training at the original geometry (width 64, 252 -> 68, batch 4), speed-up"]
    assert infer.endswith("x") and _agrees(infer[:-1], rec["infer_speedup"])
    assert train.endswith("x") and _agrees(train[:-1], rec["train_speedup"])
    assert _agrees(col["training epoch from image files / the same steps in memory"],
                   rec["pipeline_overhead"])
    mem = re.fullmatch(r"([\d.]+) GB; ([\d.]+) GB",
                       col["peak memory: training the original network; predicting 500 frames"])
    assert mem and _agrees(mem[1], rec["train_peak_rss_gb"])
    assert _agrees(mem[2], rec["predict_peak_rss_gb"])
    agree = re.fullmatch(r"([\d.]+) % of pixels", col["masks identical to fp32"])
    assert agree and _agrees(agree[1], 100 * rec["infer_mask_agreement"])

    plain = rec["details"]["plain"]
    ours = [p["images_per_s"] for p in plain["ultraseg_processes"]]
    ref = [p["ref_images_per_s"] for p in plain["processes"]]
    prose = " ".join(section.split())
    spread = re.search(r"slowest ultraseg process against the fastest reference process still "
                       r"gives ([\d.]+)x \(([\d.]+) to ([\d.]+) images/s against ([\d.]+) to "
                       r"([\d.]+)\)", prose)
    assert spread, "README no longer gives the Xeon's process ranges"
    assert _agrees(spread[1], min(ours) / max(ref))
    assert [_agrees(t, v) for t, v in zip(spread.groups()[1:], (min(ours), max(ours), min(ref),
                                                                max(ref)))] == [True] * 4
    alone = re.search(r"computation alone is ([\d.]+)x \(training\) and ([\d.]+)x \(prediction\) "
                      r"faster on the Xeon", prose)
    assert alone and _agrees(alone[1], rec["train_speedup_same_allocator"])
    assert _agrees(alone[2], rec["infer_speedup_same_allocator"])
    share = re.search(r"on the Xeon prediction runs at (\d+) % of the cores' measured bf16 "
                      r"convolution peak and training at (\d+) %", prose)
    assert share and _agrees(share[1], 100 * rec["infer_gflops"] / rec["peak_bf16_gflops"])
    assert _agrees(share[2], 100 * rec["train_gflops"] / rec["peak_bf16_gflops"])

    bench = " ".join((BENCHMARKS / "README.md").read_text().split())
    ranges = re.search(r"`results/speed.json`, ([\d.]+)-([\d.]+) and ([\d.]+)-([\d.]+)\)", bench)
    assert ranges, "benchmarks/README.md no longer gives the recorded run's process ranges"
    assert [_agrees(t, v) for t, v in zip(ranges.groups(), (min(ref), max(ref), min(ours),
                                                            max(ours)))] == [True] * 4


@pytest.mark.parametrize("text, value, expected", [
    ("4.51", 4.513, True), ("4.5", 4.513, True), ("4.38", 4.513, False), ("23.4", 23.352, True),
    ("1937", 1937.2, True), ("2477", 1937.2, False)])
def test_a_printed_figure_agrees_with_the_record_to_the_decimals_it_shows(
        text: str, value: float, expected: bool) -> None:
    assert _agrees(text, value) is expected


@pytest.fixture
def quality(monkeypatch: pytest.MonkeyPatch):
    """``benchmarks/quality.py`` as a module (it imports ``host`` from beside it)."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("quality")


def test_quality_md_is_what_write_markdown_makes_of_the_committed_records(quality,
                                                                          tmp_path) -> None:
    """``quality.py --markdown-only`` (and ``--record``) rebuild QUALITY.md from quality.json,
    levers.json and the script's NOTES: what is committed must be exactly that, or the next
    regeneration deletes what was written into QUALITY.md by hand (three sections had been)."""
    out = tmp_path / "QUALITY.md"
    quality.write_markdown(json.loads((RESULTS / "quality.json").read_text()), out)
    assert out.read_text() == (BENCHMARKS / "QUALITY.md").read_text()


STAMP = ("time_limit", "machine", "date")


@pytest.fixture
def bench_copy(quality, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """quality.py pointed at a copy of benchmarks/'s records and at empty dataset folders (its
    training and scoring are stubbed by each test), its process-wide settings left alone."""
    import logging
    import shutil

    here = tmp_path / "benchmarks"
    shutil.copytree(RESULTS, here / "results")
    shutil.copy(BENCHMARKS / "QUALITY.md", here / "QUALITY.md")
    data = tmp_path / "datasets"
    for name in quality.LAYOUTS:
        (data / name).mkdir(parents=True)
    monkeypatch.setattr(quality, "HERE", here)
    monkeypatch.setattr(quality, "DATA", data)
    monkeypatch.setattr("ultraseg.cli.keep_freed_memory", lambda: True)
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: None)
    return here


def _sections(markdown: str) -> dict[str, str]:
    return {s.split("\n", 1)[0]: s for s in markdown.split("\n## ")[1:]}


def test_every_recorded_quality_run_says_its_own_time_limit_machine_and_date() -> None:
    doc = json.loads((RESULTS / "quality.json").read_text())
    assert [sorted(k for k in STAMP if e.get(k)) for e in doc["runs"]] == [sorted(STAMP)] * len(
        doc["runs"])


def test_a_record_that_redoes_one_run_keeps_the_others_time_limit_machine_and_date(
        quality, bench_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--datasets busi --time-limit 6m --record`` relabelled every kept run with 6m and this
    host and day: QUALITY.md then said 'time limit 6m' beside a kept run's --time-limit 20m."""
    import time

    before = json.loads((RESULTS / "quality.json").read_text())
    old = {(e["dataset"], e["preset"]): e for e in before["runs"]}

    def run_one(dataset, preset_name, time_limit, runs, train_missing=True):
        e = {k: v for k, v in old[dataset, preset_name].items() if k not in STAMP}
        e["command"] = e["command"].replace("--time-limit 20m", f"--time-limit {time_limit}")
        return {**e, "train_minutes": 5.9, "time_limit": time_limit,  # stamped as trained here
                "machine": quality.this_host(), "date": time.strftime("%Y-%m-%d")}

    monkeypatch.setattr(quality, "run_one", run_one)
    monkeypatch.setattr("sys.argv", ["quality.py", "--datasets", "busi", "--time-limit", "6m",
                                     "--runs", str(tmp_path / "runs"), "--record"])
    assert quality.main() == 0
    after = {(e["dataset"], e["preset"]): e
             for e in json.loads((bench_copy / "results" / "quality.json").read_text())["runs"]}
    assert after.keys() == old.keys()
    redone = after.pop(("busi", "cpu"))
    assert (redone["time_limit"], redone["date"]) == ("6m", time.strftime("%Y-%m-%d"))
    for key, e in after.items():
        assert {k: e[k] for k in STAMP} == {k: old[key][k] for k in STAMP}, key
    sections = _sections((bench_copy / "QUALITY.md").read_text())
    assert "(time limit 6m" in sections["busi — preset `cpu`"]
    for (dataset, preset), e in after.items():
        text = sections[f"{dataset} — preset `{preset}`"]
        assert f"(time limit {e['time_limit']}" in text and "(time limit 6m" not in text
        assert f"{e['date']} on {e['machine']}" in text


@pytest.fixture
def rescoring(quality, bench_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """quality.py finding busi/cpu finished in tmp_path/runs (trained 19.2 min), its scoring
    stubbed with the committed record's figures; the recorded entry's command made the one
    ``run_one`` builds for that folder. Returns the run folder."""
    import types

    import ultraseg.checkpoint

    doc = json.loads((bench_copy / "results" / "quality.json").read_text())
    old = {(e["dataset"], e["preset"]): e for e in doc["runs"]}
    run = tmp_path / "runs" / "busi-cpu"
    old["busi", "cpu"]["command"] = (f"ultraseg train {quality.DATA / 'busi'} --out {run} "
                                     "--preset cpu --time-limit 20m --test-fraction 0.2 --seed 0")
    (bench_copy / "results" / "quality.json").write_text(json.dumps(doc, indent=2))
    monkeypatch.setattr(quality, "finished_run", lambda run, cfg, what: {"train_seconds": 1152})
    monkeypatch.setattr(quality, "score_test", lambda run, d, tta=None: dict(
        old[d, "cpu"]["plain" if tta is None else "tta"]))
    monkeypatch.setattr(quality, "epochs_run", lambda run: 1)
    monkeypatch.setattr(quality, "host_speed", lambda: {"host_bf16_gflops": 5})
    # ultraseg.train's modules (run_folder, finish) take load_checkpoint by name as they are
    # imported: imported here first, they keep the real one, not the fake below for the session
    import ultraseg.train  # noqa: F401

    monkeypatch.setattr(ultraseg.checkpoint, "load_checkpoint", lambda p: types.SimpleNamespace(
        meta={"metrics": {"val_dice_postprocessed": .7, "best_val_dice": .69}}))
    return run


def test_a_rescored_run_keeps_the_host_and_date_it_was_trained_on(
        quality, bench_copy: Path, rescoring: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--no-train --record`` (or any rerun finding RUN/best.ckpt) labelled a run it only
    re-scored with the machine that scored it and today's date, and dropped its convolution
    peak: QUALITY.md then said 'recorded <today> on <this host>', no peak."""
    import time

    old = {(e["dataset"], e["preset"]): e
           for e in json.loads((bench_copy / "results" / "quality.json").read_text())["runs"]}
    kept = ("time_limit", "machine", "date", "host_bf16_gflops")
    monkeypatch.setattr("sys.argv", ["quality.py", "--datasets", "busi", "--no-train",
                                     "--record", "--runs", str(rescoring.parent)])
    assert quality.main() == 0  # no RUN/bench-host.json: the recorded entry of its command
    after = {(e["dataset"], e["preset"]): e
             for e in json.loads((bench_copy / "results" / "quality.json").read_text())["runs"]}
    assert {k: after["busi", "cpu"].get(k) for k in kept} == {k: old["busi", "cpu"][k]
                                                              for k in kept}
    text = _sections((bench_copy / "QUALITY.md").read_text())["busi — preset `cpu`"]
    assert f"recorded {old['busi', 'cpu']['date']} on {old['busi', 'cpu']['machine']}" in text

    trained = {"machine": "Some CPU, 64 cores, torch 2.0", "date": "2026-01-02",
               "host_bf16_gflops": 3000}  # RUN/bench-host.json comes first
    rescoring.mkdir(parents=True)
    (rescoring / "bench-host.json").write_text(json.dumps(trained))
    e = quality.run_one("busi", "cpu", "20m", rescoring.parent, train_missing=False)
    assert {k: e.get(k) for k in trained} == trained and e["time_limit"] == "20m"
    assert "rescored" not in e

    (rescoring / "bench-host.json").unlink()  # neither: this host, today, said as re-scored
    e = quality.run_one("busi", "cpu", "6m", rescoring.parent, train_missing=False)
    assert e["date"] == time.strftime("%Y-%m-%d") and e["machine"] == quality.this_host()
    assert e["rescored"] is True and "host_bf16_gflops" not in e
    out = bench_copy / "Q.md"
    quality.write_markdown({"machine": e["machine"], "date": e["date"], "runs": [e]}, out)
    assert f"re-scored {e['date']} on {e['machine']}" in out.read_text()
    assert "recorded" not in _sections(out.read_text())["busi — preset `cpu`"]


def test_a_run_trained_here_saves_its_host_and_date_beside_it(
        quality, rescoring: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a later re-scoring reads back: RUN/bench-host.json, the entry's machine, date and
    convolution peak."""
    import types

    import ultraseg.train

    monkeypatch.setattr(quality, "finished_run", lambda run, cfg, what: None)
    monkeypatch.setattr(ultraseg.train, "train", lambda cfg, run: (
        run.mkdir(parents=True), types.SimpleNamespace(seconds=60))[1])
    e = quality.run_one("busi", "cpu", "20m", rescoring.parent)
    saved = json.loads((rescoring / "bench-host.json").read_text())
    assert saved == {"machine": quality.this_host(), "date": e["date"], "host_bf16_gflops": 5}
    assert {k: e[k] for k in saved} == saved and "rescored" not in e


def test_a_reused_lever_run_keeps_the_peak_it_was_trained_with(
        quality, bench_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_lever recorded the convolution peak (host_bf16_gflops) only where it trained: a
    finished lever run it reused without its lever.json (scoring stopped after training, a
    rerun) got none, so same_speed() took it for a record from before peaks were kept and
    compared it with those. A run it trains leaves its machine, date and peak in
    RUN/bench-host.json, as run_one's; a reused one is recorded with that peak, not this
    machine's (host_speed is not asked), and with none where nothing says it."""
    import time
    import types

    import ultraseg.train

    run = tmp_path / "runs" / "lever-busi-base"
    monkeypatch.setattr(quality, "score_test", lambda run, d, tta=None: {"dice_mean": .7})
    monkeypatch.setattr(quality, "epochs_run", lambda run: 3)
    monkeypatch.setattr(quality, "host_speed", lambda: {"host_bf16_gflops": 5})
    monkeypatch.setattr(quality, "finished_run", lambda run, cfg, what: None)
    monkeypatch.setattr(ultraseg.train, "train", lambda cfg, run: (
        run.mkdir(parents=True), types.SimpleNamespace(
            seconds=60, epochs_run=3, best_epoch=2, val_dice_postprocessed=.7,
            best_dice=.69))[1])
    trained = quality.run_lever("busi", "base", "6m", run.parent)
    assert trained["host_bf16_gflops"] == 5
    saved = json.loads((run / "bench-host.json").read_text())
    assert saved == {"machine": quality.this_host(), "date": time.strftime("%Y-%m-%d"),
                     "host_bf16_gflops": 5}

    (run / "lever.json").unlink()       # reused: its recorded peak, not this machine's
    (run / "bench-host.json").write_text(json.dumps({"machine": "Some CPU", "date": "2026-01-02",
                                                     "host_bf16_gflops": 3000}))
    monkeypatch.setattr(quality, "finished_run", lambda run, cfg, what: {
        "best_epoch": 2, "val_dice_postprocessed": .7, "best_val_dice": .69,
        "train_seconds": 360})
    monkeypatch.setattr(quality, "host_speed", lambda: pytest.fail("this machine measured"))
    reused = quality.run_lever("busi", "base", "6m", run.parent)
    assert reused["host_bf16_gflops"] == 3000
    assert json.loads((run / "lever.json").read_text())["host_bf16_gflops"] == 3000

    (run / "lever.json").unlink()
    (run / "bench-host.json").unlink()  # nothing says: no peak, rather than a wrong one
    assert "host_bf16_gflops" not in quality.run_lever("busi", "base", "6m", run.parent)


def test_a_record_that_redoes_nothing_writes_nothing(quality, bench_copy: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    """``--no-train --record`` without a finished run left out every dataset, and still wrote
    quality.json and QUALITY.md anew under this invocation's host, day and time limit."""
    written = {p: p.read_bytes() for p in (bench_copy / "results" / "quality.json",
                                           bench_copy / "QUALITY.md")}
    monkeypatch.setattr(quality, "run_one", lambda *a, **kw: None)
    monkeypatch.setattr("sys.argv", ["quality.py", "--no-train", "--datasets", "busi",
                                     "--time-limit", "6m", "--runs", str(tmp_path / "runs"),
                                     "--record"])
    assert quality.main() == 1
    assert {p: p.read_bytes() for p in written} == written
    assert "no run was redone" in capsys.readouterr().err


@pytest.fixture
def speed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``benchmarks/speed.py`` as a module, writing into a copy of benchmarks/ (``HERE``), its
    temporary folders under tmp_path, the process's allocator left alone."""
    import importlib
    import shutil
    import tempfile

    monkeypatch.syspath_prepend(str(BENCHMARKS))
    module = importlib.import_module("speed")
    here = tmp_path / "benchmarks"
    shutil.copytree(RESULTS, here / "results")
    shutil.copy(BENCHMARKS / "RESULTS.md", here / "RESULTS.md")
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(module, "HERE", here)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr("ultraseg.cli.keep_freed_memory", lambda: True)
    return module


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("flag", ["--quick", "--no-write"])
def test_a_quick_or_unwritten_gpu_run_leaves_benchmarks_results_alone(
        speed, flag: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """Without --out, ``--device cuda --quick`` (or ``--no-write``) wrote its speed-cuda.json
    into benchmarks/results, over any recorded GPU run, as the CPU path never does."""
    import torch

    before = _files(speed.HERE)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(speed, "measure_cuda",
                        lambda s, out_dir, quick: {"quick": quick, "stub": True})
    assert speed.main(["--device", "cuda", flag]) == 0
    assert _files(speed.HERE) == before
    out = capsys.readouterr()
    assert json.loads(out.out.splitlines()[-1])["stub"] is True
    written = list(Path(speed.tempfile.gettempdir()).rglob("speed-cuda.json"))
    assert len(written) == 1 and str(written[0].parent) in out.err


def test_record_cuda_refuses_a_quick_run(speed, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    """``--record-cuda`` put a --quick smoke test's width-8 figures into results/ and RESULTS.md
    as the GPU record, without a word."""
    quick = tmp_path / "speed-cuda.json"
    quick.write_text(json.dumps({"quick": True, "seconds": 5, "machine": {
        "date": "2026-12-07", "torch": "2.13.0", "python": "3.11.7"}}))
    before = _files(speed.HERE)
    assert speed.main(["--record-cuda", str(quick)]) == 2
    assert _files(speed.HERE) == before
    assert "--quick" in capsys.readouterr().err


def _speed_rows(speed, rec: dict) -> dict[str, list[str]]:
    """The Speed table ``write_results`` makes of the run ``rec``: each row's cells by key."""
    speed.write_results(rec, "python benchmarks/speed.py")
    section = (speed.HERE / "RESULTS.md").read_text().split("## Speed")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in section.splitlines() if line.startswith("| `")]
    return {cells[0].strip("`"): cells[1:] for cells in rows}


def test_the_speed_table_says_where_bf16_was_not_native(speed) -> None:
    """A review of speed-no-bf16.json (an AVX2-only CPU): its bf16 rows looked real. Both
    sides of infer_mask_agreement ran fp32 there (its 1.0 compares no precision, its target
    met by construction), and peak_bf16_gflops is oneDNN's emulated path. The table now says
    so; a CPU with bf16 keeps its rows. (The recorded run, as such a CPU records it.)"""
    rec = json.loads((RESULTS / "speed.json").read_text())
    rec["machine"]["cpu_bf16"] = False
    for side in ("train", "infer"):
        rec["details"][side]["precision"] = "fp32"
    rows = _speed_rows(speed, {**rec, "infer_mask_agreement": 1.0, "ceiling_precision": "fp32"})
    value, target, what = rows["infer_mask_agreement"]
    assert value == "1.0000" and target == "n/a (fp32 both sides)"
    assert what.startswith("fp32 both sides: no native bf16")
    assert "emulated (no native bf16)" in rows["peak_bf16_gflops"][2]
    native = _speed_rows(speed, json.loads((RESULTS / "speed.json").read_text()))
    assert native["infer_mask_agreement"][1] == ">= 0.995"
    assert native["infer_mask_agreement"][2].startswith("vs fp32 with the same windows")
    assert "emulated" not in native["peak_bf16_gflops"][2]


def _fake_datasets(folder: Path, nerve_frames: int) -> Path:
    """The files speed.py reads at --data, empty: it looks for them before reading any."""
    for rel in ("kaggle_nerve_sample/train/1_1.tif", "kaggle_nerve_sample/test/1.tif"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).touch()
    (folder / "nerve" / "images").mkdir(parents=True)
    for i in range(nerve_frames):
        (folder / "nerve" / "images" / f"{i}.jpg").touch()
    return folder


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_speed_says_when_phantom_frames_stand_in_for_missing_datasets(
        speed, device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Without the datasets at --data (or the default ../shared/datasets), speed.py measured on
    phantom frames and said nothing: figures that do not compare with the recorded ones."""
    import torch

    monkeypatch.setattr(speed, "DATA", speed.DATA)  # main() sets it from --data
    monkeypatch.setattr(speed, "benchmark", lambda s, quick: {"stub": True})
    monkeypatch.setattr(speed, "measure_cuda", lambda s, out_dir, quick: {"stub": True})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    nowhere = tmp_path / "nowhere"
    assert speed.main(["--quick", "--device", device, "--data", str(nowhere)]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "phantom frames" in line]
    assert len(said) == 1 and str(nowhere) in said[0]
    assert "will not compare with the recorded ones" in said[0]

    data = _fake_datasets(tmp_path / "datasets", speed.QUICK.predict_frames)
    assert speed.main(["--quick", "--device", device, "--data", str(data)]) == 0
    assert "phantom frames" not in capsys.readouterr().err


def test_quality_reads_the_datasets_at_data_and_its_refusal_names_the_option(
        quality, bench_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """quality.py's datasets folder was fixed beside the script (speed.py has --data): a clone
    elsewhere was told 'shared datasets not found' with no way to point it at them."""
    nowhere = tmp_path / "nowhere"
    monkeypatch.setattr("sys.argv", ["quality.py", "--data", str(nowhere)])
    assert quality.main() == 2
    err = capsys.readouterr().err
    assert str(nowhere) in err and "--data" in err

    data = tmp_path / "elsewhere"
    (data / "busi").mkdir(parents=True)
    seen = []
    monkeypatch.setattr(quality, "run_one", lambda *a, **kw: seen.append(quality.DATA))
    monkeypatch.setattr("sys.argv", ["quality.py", "--data", str(data), "--datasets", "busi",
                                     "--runs", str(tmp_path / "runs")])
    assert quality.main() == 0
    assert seen == [data.resolve()]
