"""ultraseg.runtime: which precision a CPU gets, and the device rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ultraseg import runtime
from ultraseg.errors import UltrasegError
from ultraseg.runtime import cpu_has_avx512, cpu_has_bf16, resolve_device, resolve_precision

CPU = torch.device("cpu")


def fake_cpu(monkeypatch, *, machine="x86_64", onednn_bf16=True, avx512_bf16=False,
             amx=False, probes=True, flags=()):
    """Make this process see a CPU with the given features."""
    monkeypatch.setattr(runtime.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16,
                        raising=False)
    for name, value in (("_is_avx512_bf16_supported", avx512_bf16),
                        ("_is_amx_tile_supported", amx)):
        if probes:
            monkeypatch.setattr(torch.cpu, name, lambda v=value: v, raising=False)
        else:
            monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(runtime, "_x86_cpu_flags", lambda: set(flags))


def test_avx512_without_bf16_counts_as_without_bf16(monkeypatch):
    # oneDNN emulates bf16 on Skylake / Cascade Lake (3x slower than fp32): auto stays fp32
    fake_cpu(monkeypatch, onednn_bf16=True, avx512_bf16=False, amx=False)
    assert not cpu_has_bf16()
    assert resolve_precision("auto", CPU) is None


@pytest.mark.parametrize("feature", ["avx512_bf16", "amx"])
def test_native_bf16_on_x86_is_used(monkeypatch, feature):
    fake_cpu(monkeypatch, **{feature: True})
    assert cpu_has_bf16()
    assert resolve_precision("auto", CPU) is torch.bfloat16


def test_without_onednn_bf16_there_is_none(monkeypatch):
    fake_cpu(monkeypatch, onednn_bf16=False, avx512_bf16=True)
    assert not cpu_has_bf16()


def test_cpu_flags_decide_where_torch_has_no_probes(monkeypatch):
    fake_cpu(monkeypatch, probes=False, flags={"avx512f", "avx512bw"})
    assert not cpu_has_bf16()
    fake_cpu(monkeypatch, probes=False, flags={"avx512f", "avx512_bf16"})
    assert cpu_has_bf16()


def test_arm_follows_onednn(monkeypatch):
    fake_cpu(monkeypatch, machine="aarch64", onednn_bf16=True)
    assert cpu_has_bf16()
    fake_cpu(monkeypatch, machine="aarch64", onednn_bf16=False)
    assert not cpu_has_bf16()


@pytest.mark.parametrize("has", [False, True])
def test_avx512_from_torch_or_the_flags(monkeypatch, has):
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: has, raising=False)
    assert cpu_has_avx512() is has
    monkeypatch.delattr(torch.cpu, "_is_avx512_supported", raising=False)
    monkeypatch.setattr(runtime, "_x86_cpu_flags", lambda: {"avx2", "avx512f"} if has else {"avx2"})
    assert cpu_has_avx512() is has


def test_explicit_precisions(monkeypatch):
    fake_cpu(monkeypatch)  # a CPU without native bf16
    assert resolve_precision("fp32", CPU) is None
    assert resolve_precision("bf16", CPU) is torch.bfloat16  # asked for: given, with a warning
    with pytest.raises(UltrasegError, match="unknown precision"):
        resolve_precision("fp16", CPU)


def test_bf16_asked_for_without_native_support_names_the_faster_precision(monkeypatch):
    """The warning said bf16 would be slow, not what to use instead (a review on an AVX2-only
    CPU)."""
    from conftest import ultraseg_warnings

    fake_cpu(monkeypatch)  # a CPU without native bf16
    with ultraseg_warnings() as warned:
        resolve_precision("bf16", CPU)
    said = [r.getMessage() for r in warned]
    assert len(said) == 1 and "not supported natively on cpu" in said[0]
    assert "--precision auto or fp32 is faster here" in said[0]


def test_the_real_flags_are_read():
    flags = runtime._x86_cpu_flags()
    if runtime.platform.machine().lower() in ("x86_64", "amd64"):
        assert "sse2" in flags  # every x86-64 CPU has it


def test_devices():
    assert resolve_device("cpu") == CPU
    with pytest.raises(UltrasegError, match="unknown device"):
        resolve_device("tpu")
    # a torch.device is taken by its name; None (load(path, device=None)) was an AttributeError
    assert resolve_device(torch.device("cpu")) == CPU
    with pytest.raises(UltrasegError, match="device must be a name"):
        resolve_device(None)
    if not torch.cuda.is_available():   # the way out said; where it was asked for, by whom
        with pytest.raises(UltrasegError, match=r"\(by --device; in Python, device=\), .*"
                                                r"--device cpu .*\(in Python, device='cpu'\)"):
            resolve_device("cuda")          # (ultraseg.load(path, device='cuda') named --device)
        with pytest.raises(UltrasegError, match=r"\(by --device, or the run's config\.json\)"):
            resolve_device("cuda", asked_by="--device, or the run's config.json")


MPS = torch.device("mps")


def test_mps_is_taken_where_the_machine_has_it_in_fp32_unless_bf16_is_asked(monkeypatch):
    """`--device mps` (a Mac's Apple-silicon GPU) was refused as 'unknown device' where
    torch has it: it is taken there, in fp32 under 'auto' (the CPU's bf16 is not the
    GPU's), bf16 only where asked for; without it the refusal says so and the way out.
    'auto' keeps to CUDA, else the CPU (MPS is untested hardware here)."""
    fake_cpu(monkeypatch, avx512_bf16=True)            # a CPU with native bf16: not MPS's
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(UltrasegError, match=r"device mps asked for \(by --device; in Python, "
                                            r"device=\), but .*MPS.* not available.*"
                                            r"--device cpu runs on the CPU"):
        resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == MPS
    assert resolve_device(torch.device("mps")) == MPS
    assert resolve_device("auto") == CPU
    assert resolve_precision("auto", MPS) is None
    assert runtime.precision_name("auto", MPS) == "fp32"
    assert resolve_precision("fp32", MPS) is None
    assert resolve_precision("bf16", MPS) is torch.bfloat16     # asked for: given
    with pytest.raises(UltrasegError, match=r"unknown device 'tpu'; valid: auto, cpu, cuda, "
                                            r"cuda:N, mps"):
        resolve_device("tpu")


@pytest.fixture
def one_gpu(monkeypatch):
    """torch.cuda as a machine with one GPU would answer (this one has none)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_a_gpu_index_the_machine_lacks_is_a_user_error(one_gpu):
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(UltrasegError, match=r"cuda:7.*1 CUDA GPU"):
        resolve_device("cuda:7")
    with pytest.raises(UltrasegError, match="unknown device 'cuda:x'"):
        resolve_device("cuda:x")



@pytest.mark.parametrize("name", ["cudax", "cuda:", "cuda: 0", "cuda:-1", "cuda:007"])
def test_a_name_that_is_no_device_is_said_so_with_or_without_a_gpu(monkeypatch, name) -> None:
    """A misspelt name is an unknown device on every machine: without a GPU, one starting
    with 'cuda' was answered 'no CUDA GPU is available' (predict, evaluate and export reach
    resolve_device without the training config's check of the name)."""
    for gpus in (0, 1):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
        with pytest.raises(UltrasegError, match=f"unknown device '{name}'; valid: "):
            resolve_device(name)

def test_the_gpu_index_one_past_the_last_is_a_user_error(one_gpu):
    """GPU indices run from 0 to the count less 1: on a one-GPU machine cuda:1 is refused as
    the machine lacking it, not passed on to fail inside torch in its own words. The
    boundary was untested (cuda:7 alone), so 'index > count' passed."""
    with pytest.raises(UltrasegError, match=r"cuda:1.*1 CUDA GPU"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("capability, want", [((7, 0), None), ((7, 5), None),
                                              ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_auto_precision_takes_bf16_only_on_gpus_that_have_it_natively(one_gpu, monkeypatch,
                                                                      capability, want):
    """A V100 (7.0) or T4 (7.5) only emulates bf16, though torch.cuda.is_bf16_supported()
    says yes for it; from Ampere (8.0) it is native."""
    asked: list = []
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability",
                        lambda d=None: asked.append(d) or capability)
    assert resolve_precision("auto", torch.device("cuda:0")) is want
    assert asked == [torch.device("cuda:0")]           # the device asked for, not the current


def test_cudnn_autotunes_inside_the_block_on_a_gpu_and_is_restored_after():
    """ultraseg's GPU training and prediction left cuDNN's autotuning off (PyTorch's default),
    while the speed benchmark turned it on for ultraseg's side: the GPU figures credited
    ultraseg with a setting it never used."""
    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        with runtime.cudnn_autotune(torch.device("cuda", 0)):
            assert torch.backends.cudnn.benchmark is True
        assert torch.backends.cudnn.benchmark is False
        with pytest.raises(RuntimeError), runtime.cudnn_autotune(torch.device("cuda")):
            raise RuntimeError("out of memory")
        assert torch.backends.cudnn.benchmark is False
        with runtime.cudnn_autotune(CPU):                  # elsewhere: nothing
            assert torch.backends.cudnn.benchmark is False
        # two threads' blocks ending out of order (a predictor in a thread pool) left it on
        first, second = (runtime.cudnn_autotune(torch.device("cuda")) for _ in range(2))
        first.__enter__()
        second.__enter__()
        first.__exit__(None, None, None)
        assert torch.backends.cudnn.benchmark is True
        second.__exit__(None, None, None)
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.backends.cudnn.benchmark = before


def test_training_and_prediction_run_inside_cudnn_autotune(tmp_path, monkeypatch):
    """A runner's model calls of a shape seen before, and train's whole run, are inside the
    block (here on the CPU, where the block changes nothing: entered with the run's
    device)."""
    import contextlib

    from test_train import make_dataset

    from ultraseg import train as train_mod
    from ultraseg.config import ModelConfig, merge, preset
    from ultraseg.model import build_model

    inside: list[str] = []

    @contextlib.contextmanager
    def spy(device):
        inside.append(device.type)
        yield
        inside.append("out")

    monkeypatch.setattr(runtime, "cudnn_autotune", spy)
    monkeypatch.setattr(train_mod, "cudnn_autotune", spy)
    run = runtime.torch_runner(build_model(ModelConfig(variant="same", width=2, depth=2)),
                               CPU, None)
    # from a shape's second batch on: a folder of frames of many sizes (one window each)
    # would pay cuDNN's search for every frame
    for side in (16, 16, 32, 16, 32, 48):
        inside.append(side)
        run(np.zeros((1, 1, side, side), np.float32))
    assert inside == [16, 16, "cpu", "out", 32, 16, "cpu", "out", 32, "cpu", "out", 48]
    inside.clear()
    data = make_dataset(tmp_path / "data", n=12, size=32, seed=0)
    cfg = merge(preset("demo"), {
        "data": {"path": str(data), "cache_dir": ""}, "model": {"width": 2, "depth": 2},
        "preprocess": {"size": 32},
        "train": {"epochs": 1, "seed": 0, "device": "cpu", "precision": "fp32",
                  "num_threads": 1, "time_limit_s": None}})
    train_mod.train(cfg, tmp_path / "run")
    assert inside[0] == "cpu" and inside[-1] == "out"


def _seen_by_a_new_thread() -> int:
    """The thread count a thread started now takes on its first torch call."""
    import threading

    seen: list[int] = []
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    return seen[0]


def test_overlapping_thread_blocks_put_the_caller_s_count_back_when_the_last_ends() -> None:
    """threads() saved and restored torch's thread count block by block: a block in one
    worker (1 thread) overlapped by a block in another (3), the first ending first, left
    the process at 1 thread for good where the caller had set 2 (a review: two overlapping
    trainings with num_threads 1 and 3 in a service). The count the first block found is put
    back when the last one ends."""
    import threading

    from ultraseg.runtime import threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def first() -> None:
            with threads(1):
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def second() -> None:
            a_in.wait(10)
            with threads(3):
                b_in.set()
                a_out.wait(10)

        workers = [threading.Thread(target=first), threading.Thread(target=second)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert _seen_by_a_new_thread() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_a_thread_whose_block_another_thread_s_block_overlaps_gets_its_own_count_back() -> None:
    """torch's count (OpenMP, torch's wheels) is each thread's, and the default a thread
    takes on its first torch call is the last one set: threads() kept one count for the
    process, restored in whichever thread closed last, so the main thread's threads(1)
    (a train(num_threads=1)) overlapped by a worker's left the main thread at 1 for good
    where it had 2 (a review: the main thread's training beside a worker's). Each thread
    gets its own count back, and new threads the count the first block found."""
    import threading

    from ultraseg.runtime import threads

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        worker_in, main_out = threading.Event(), threading.Event()
        worker_after: list[int] = []

        def worker() -> None:
            torch.get_num_threads()                     # it has run torch work
            with threads(1):
                worker_in.set()
                main_out.wait(10)
            worker_after.append(torch.get_num_threads())

        w = threading.Thread(target=worker)
        w.start()
        worker_in.wait(10)
        with threads(1):                                # opened second, closed first
            pass
        main_out.set()
        w.join()
        assert torch.get_num_threads() == 2
        assert worker_after == [2] and _seen_by_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)


def test_the_thread_whose_block_ends_last_keeps_its_own_count_not_the_first_block_s() -> None:
    """The count new threads take is put back from a thread of its own when the last block
    ends (runtime._set_new_threads_count): torch.set_num_threads there would also set the
    calling thread's, so a worker with its own count (3) whose threads(1) ends after the main
    thread's would be left at the count the main thread's block found (2), not its own. The
    blocks are ordered by events: the main thread's opens first and ends first."""
    import threading

    from ultraseg.runtime import threads

    if not runtime._count_per_thread():
        pytest.skip("torch's thread count is the process's here, not each thread's")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ready, main_in = threading.Event(), threading.Event()
        worker_in, main_out = threading.Event(), threading.Event()
        worker_after: list[int] = []

        def worker() -> None:
            torch.get_num_threads()                     # its first torch call takes the default
            torch.set_num_threads(3)                    # then its own count,
            torch.zeros(4).sum()                        # kept through its torch work
            ready.set()
            main_in.wait(10)
            with threads(1):                            # opened second, ends last
                worker_in.set()
                main_out.wait(10)
            worker_after.append(torch.get_num_threads())

        w = threading.Thread(target=worker)
        w.start()
        ready.wait(10)
        with threads(1):                                # opened first: it finds 2
            main_in.set()
            worker_in.wait(10)
        main_out.set()
        w.join()
        assert worker_after == [3]
        assert torch.get_num_threads() == 2 and _seen_by_a_new_thread() == 2
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("precision,callers", [("fp32", torch.bfloat16),
                                               ("bf16", torch.float16)])
def test_a_callers_autocast_block_changes_no_prediction(tmp_path, precision, callers) -> None:
    """A notebook's torch.autocast("cpu", bfloat16) block around an fp32 predictor ran it in
    bf16 (probabilities 0.019 off, a mask pixel flipped), the runtime still saying fp32; a
    float16 block ran a bf16 predictor in float16. Each computes at its own precision, the
    caller's autocast still open after."""
    from ultraseg.checkpoint import make_meta, save_checkpoint
    from ultraseg.config import ModelConfig, PostprocessConfig, PreprocessConfig
    from ultraseg.model import build_model
    from ultraseg.predict import load

    torch.manual_seed(0)
    cfg = ModelConfig(variant="same", width=8, depth=2)
    net = build_model(cfg)
    with torch.no_grad():           # logits spread around 0, not all at one side of p = 0.5
        net.head.weight.mul_(4.0)
    ckpt = tmp_path / "m.ckpt"
    save_checkpoint(ckpt, net.state_dict(),
                    make_meta(cfg, PreprocessConfig(size=32), PostprocessConfig()))
    predictor = load(ckpt, device="cpu", precision=precision)
    frames = [np.random.default_rng(k).integers(0, 256, (40, 48), dtype=np.uint8)
              for k in range(3)]
    want = [predictor.predict_proba(f) for f in frames]
    want_many = list(predictor.predict_proba_many(frames))
    with torch.autocast("cpu", dtype=callers):
        got = [predictor.predict_proba(f) for f in frames]
        many = list(predictor.predict_proba_many(frames))
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == callers
    for g, w in zip(got + many, want + want_many):
        np.testing.assert_array_equal(g, w)
