"""Data-parallel training under ``torchrun``: the process-group plumbing, in one place.

``torchrun --nproc_per_node=N -m ultraseg train ...`` starts N copies of the command and gives
each the environment variables ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` (and the rendezvous
address). :func:`session` reads them when training starts (never at import), joins the process
group (``nccl`` on GPUs, ``gloo`` on CPUs) and leaves it afterwards. Without those variables,
or with ``WORLD_SIZE=1``, everything here is a no-op and training runs as one process.

How the ranks stay in step (the rules :mod:`ultraseg.train` follows):

* **Batches.** ``--batch-size`` is the *global* batch. Every rank draws the same global batch
  (the same seeded permutation, crops and augmentation as a single process) and trains on its
  own rows of it, rows ``rank, rank + N, ...`` (:meth:`Dist.shard`). The global batch order is
  therefore reproducible and independent of N, and a run can be resumed with another N.
* **Gradients** are averaged by DistributedDataParallel; each rank's loss is the mean over
  equally many rows, so the average equals the single-process gradient of the global batch
  (up to summation order; batch-norm statistics are per rank, as in any DDP run).
* **Validation** frames are sharded the same way and the sums (loss, Dice, count) are
  all-reduced: every rank gets the same metrics, so every rank makes the same decisions.
* **Stopping.** Whatever ends training early (the time limit, a non-finite loss) is agreed
  with an all-reduce, so no rank waits forever for a collective the others never reach.
* **The same data.** Before the first batch the ranks compare what they read (each split's
  frame names, each frame's pixels as a digest (:func:`frame_digests`), batches an epoch,
  working size, epochs done and to train, learning rate: :meth:`Dist.same_data`) and all
  refuse where one differs, rather than stop matching or mix scores of other pixels.
* **The end.** After the last epoch every rank leaves the group together (:meth:`Dist.leave`);
  rank 0 then chooses the post-processing and writes the report alone, the others done,
  so no collective's timeout runs while it works.
* **Files.** Only rank 0 writes (config, split, metrics, checkpoints, log, report).
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist

from .errors import UltrasegError

log = logging.getLogger(__name__)

#: How long a collective may wait for the other ranks before the run fails.
TIMEOUT = timedelta(minutes=30)
#: How long :func:`cleanup` lets the process group's worker threads run after leaving it.
GRACE_S = 0.2


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world_size``; ``local_rank`` on its
    machine (its GPU)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    #: :func:`session` joined the group for this process (and leaves it: :meth:`leave`)
    joined: bool = field(default=False, compare=False, repr=False)

    @property
    def enabled(self) -> bool:
        """True when there is more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0, the one process that writes files and prints."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """The device this rank uses: ``cuda:LOCAL_RANK`` when training on GPUs."""
        if device.type == "cuda" and self.enabled:
            return torch.device("cuda", self.local_rank)
        return device

    def shard(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a global batch: rows ``rank, rank + N, ...``.

        A batch whose length is not a multiple of N is first padded by repeating its first
        rows (as ``torch.utils.data.DistributedSampler`` does with an epoch), so that every
        rank gets the same number of rows and DDP's gradient average weighs rows equally.
        """
        if not self.enabled:
            return batch
        n = batch.shape[0]
        pad = -n % self.world_size
        if pad:
            reps = torch.arange(n + pad) % n
            batch = batch[reps]
        return batch[self.rank::self.world_size]

    def rows(self, n: int) -> slice:
        """This rank's share of ``n`` items (validation frames): a strided slice."""
        return slice(self.rank, n, self.world_size)

    def all_reduce_sum(self, values: Sequence[float], device: torch.device) -> list[float]:
        """Element-wise sums of ``values`` over all ranks (float64); the input when alone."""
        if not self.enabled:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def all_reduce_mean(self, value: float, device: torch.device) -> float:
        """The mean of ``value`` over all ranks."""
        return self.all_reduce_sum([value], device)[0] / self.world_size

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every rank when ``flag`` is true on at least one (an agreed decision)."""
        if not self.enabled:
            return bool(flag)
        return self.all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.enabled:
            dist.barrier()

    def same_data(self, read: Mapping[str, Any]) -> None:
        """Refuse, on every rank, when what the ranks read differs (:func:`data_differences`
        names how). ``read``: what this rank loaded, each item a list of frame names, a mapping
        of frame name to pixel digest (:func:`frame_digests`) or a value; one collective, made
        before the first batch, by every rank."""
        if not self.enabled:
            return
        every: list[Any] = [None] * self.world_size
        dist.all_gather_object(every, dict(read))
        differences = data_differences(every)
        if differences:
            raise UltrasegError(differences)

    def leave(self) -> None:
        """Leave the group :func:`session` joined, all processes together: each waits here for
        the others, then leaves (:func:`cleanup`), and no collective follows. Rank 0 then
        works on alone (post-processing, report) for as long as it needs, while the others
        are done: waiting for it inside a collective, they failed after :data:`TIMEOUT`.
        A group the caller initialised stays open (and its processes do not wait here)."""
        if self.enabled and self.joined and dist.is_initialized():
            dist.barrier()
            cleanup()

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm running statistics) to every rank.

        DDP trains each rank's batch-norm statistics on its own rows; before validation the
        ranks take rank 0's, which are also the ones rank 0 saves in the checkpoint.
        """
        if not self.enabled:
            return
        for buf in model.buffers():
            dist.broadcast(buf.data, src=0)

    def wrap(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model`` in DistributedDataParallel (gradients averaged over ranks), or as it is."""
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)


SINGLE = Dist()


def frame_digests(names: Sequence[str], images: np.ndarray, masks: np.ndarray
                  ) -> dict[str, str]:
    """Each frame's image and mask as read (the working canvas), as a short digest by name
    (blake2b, 8 bytes, in hex): what :meth:`Dist.same_data` compares, since a machine whose
    copy of the dataset holds other pixels under the same names agrees on every name and
    count. About a second a gigabyte, once, before the first batch."""
    digests = {}
    for name, image, mask in zip(names, images, masks):
        h = hashlib.blake2b(np.ascontiguousarray(image), digest_size=8)
        h.update(np.ascontiguousarray(mask))
        digests[name] = h.hexdigest()
    return digests


def data_differences(every: Sequence[Mapping[str, Any]]) -> str | None:
    """What each rank read (``every[r]``, as given to :meth:`Dist.same_data`) that differs
    from rank 0's, or None where all agree: "process 1 read other data than process 0: 22
    training frames against 24 (2_10, 2_9 only in process 0's)". Ranks that read other data
    would stop matching each other's collectives (another number of batches) and wait for
    good, or mix validation scores of other frames without a word. A mapping
    (``"pixels (image or mask)"``: :func:`frame_digests`) names the frames both read whose
    values differ ("other pixels (image or mask) in 1 frame of the same name (2_3)"); those
    one alone read, the frame lists name."""
    first, said = every[0], []
    for rank, read in enumerate(every[1:], 1):
        parts = []
        for what, value in read.items():
            theirs = first.get(what)
            if value == theirs:
                continue
            if isinstance(value, Mapping) and isinstance(theirs, Mapping):
                other = sorted(n for n in value.keys() & theirs.keys() if value[n] != theirs[n])
                if other:
                    parts.append(f"other {what} in {len(other)} frame"
                                 f"{'s' if len(other) > 1 else ''} of the same name "
                                 f"({_some(other)})")
            elif isinstance(value, (list, tuple)) and isinstance(theirs, (list, tuple)):
                only = [(sorted(set(theirs) - set(value)), "0"),
                        (sorted(set(value) - set(theirs)), str(rank))]
                names = "; ".join(f"{_some(names)} only in process {who}'s"
                                  for names, who in only if names)
                parts.append((f"{len(value)} {what} against {len(theirs)}"
                              if len(value) != len(theirs) else f"other {what}")
                             + (f" ({names})" if names else ""))
            else:
                parts.append(f"{value} {what} against {theirs}" if isinstance(value, int)
                             else f"{what} {value} against {theirs}")
        if parts:
            said.append(f"process {rank} read other data than process 0: {', '.join(parts)}")
    if not said:
        return None
    pixels = any("other pixels" in s for s in said)
    return ("; ".join(said) + "; the dataset must be the same on every machine (the same files "
            "at the same path, read with the same settings), and so must the run folder a "
            "--resume starts from" + ("; pixels are compared as decoded and resized, so the "
                                      "same files read by other ultraseg, Pillow or numpy "
                                      "versions may differ too" if pixels else ""))


def _some(names: Sequence[str]) -> str:
    """The first three of ``names``, and how many more: "1_10, 1_9, 2_3 and 4 more"."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UltrasegError(f"environment variable {name}={value!r} is not an integer "
                            "(set by torchrun)") from None


def from_env() -> Dist:
    """The rank, world size and local rank torchrun put in the environment (defaults: alone)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise UltrasegError(f"bad torchrun environment: RANK={rank}, WORLD_SIZE={world}")
    return Dist(rank, world, local)


def is_main() -> bool:
    """True unless this process is a non-zero rank of a distributed job."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return from_env().rank == 0


#: Words of a collective that failed because another process of the job went away: gloo's
#: (its TCP pair closed or reset) and NCCL's (the communicator aborted, a remote process gone).
PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
             "remote process exited", "communicator was aborted", "NCCL communicator")
#: ... and of one that waited :data:`TIMEOUT` for the others.
PEER_SILENT = ("Timed out waiting", "Watchdog caught collective operation timeout")


def peer_failure(e: BaseException) -> str | None:
    """What a collective's error says of the other processes, or None where it is no such
    error: "stopped" (one went away: its own message says why) or "silent" (none answered
    within :data:`TIMEOUT`). Meant for a process of a distributed job (the caller knows)."""
    if not isinstance(e, RuntimeError):
        return None
    text = str(e)
    if any(words in text for words in PEER_GONE):
        return "stopped"
    if any(words in text for words in PEER_SILENT):
        return "silent"
    if isinstance(e, getattr(dist, "DistError", ())):
        return "stopped"
    return None


def backend_for(device: torch.device) -> str:
    """``nccl`` for GPUs, ``gloo`` for CPUs."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def session(device: torch.device) -> Iterator[Dist]:
    """Join the process group torchrun describes for the block, and leave it after (where
    :meth:`Dist.leave` has not left it already, after the last epoch).

    A process group the caller already initialised is used as it is and left open. Outside
    torchrun (no ``WORLD_SIZE``, or 1) this yields :data:`SINGLE` and does nothing.
    """
    if dist.is_available() and dist.is_initialized():
        yield Dist(dist.get_rank(), dist.get_world_size(), from_env().local_rank,
                   dist.get_backend())
        return
    ctx = from_env()
    if not ctx.enabled:
        yield SINGLE
        return
    if not dist.is_available():
        raise UltrasegError("this PyTorch build has no torch.distributed; cannot run under "
                            "torchrun with WORLD_SIZE > 1")
    backend = backend_for(device)
    if device.type == "cuda":
        if ctx.local_rank >= torch.cuda.device_count():
            raise UltrasegError(f"LOCAL_RANK {ctx.local_rank} but only "
                                f"{torch.cuda.device_count()} GPUs on this machine; use "
                                "--nproc_per_node <= the number of GPUs")
        torch.cuda.set_device(ctx.local_rank)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:     # WORLD_SIZE left in the environment, outside torchrun
        raise UltrasegError(f"WORLD_SIZE is {ctx.world_size} but {' and '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} not set: start several "
                            "processes with torchrun, or unset WORLD_SIZE to train in one")
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world_size, timeout=TIMEOUT)
    log.info("joined the process group: rank %d of %d (%s)", ctx.rank, ctx.world_size, backend)
    joined = Dist(ctx.rank, ctx.world_size, ctx.local_rank, backend, joined=True)
    try:
        yield joined
    except BaseException:
        cleanup()
        raise
    # Leave together (a rank tearing the group down while another still holds it aborts, in
    # gloo), unless the block left already (Dist.leave, before rank 0 finishes alone)
    joined.leave()


def cleanup() -> None:
    """Leave the process group (when in one), then wait :data:`GRACE_S` with the GIL released.

    Why the wait: gloo's worker threads free each finished collective themselves, and a
    collective launched during a backward pass (DDP's gradient all-reduce) captures a thread
    state that holds a Python object (torch 2.13 stashes the autograd context there), so
    freeing it needs the GIL. If the process reaches interpreter shutdown first, such a thread
    cannot take the GIL, is unwound inside C++ code that may not throw, and the process aborts
    ("terminate called without an active exception", SIGABRT) after its work is done: 2 of 60
    two-process runs of the collectives test's script here, traced with gdb to
    ``ProcessGroupGloo::runLoop`` freeing the last barrier, which held the all-reduce; 0 of 100
    with the wait. The threads outlive ``destroy_process_group`` (gloo's shutdown does not join
    them), so the remedy from outside torch is to let them take the GIL before the process
    ends.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        time.sleep(GRACE_S)
