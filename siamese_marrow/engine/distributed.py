"""Data-parallel training and shared commands under ``torchrun`` (torch.distributed).

``torchrun --nproc_per_node=N -m siamese_marrow.cli train ...`` starts N processes (ranks) with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in their environment. What
this module gives the trainer and the commands:

- :func:`join`: the process group (NCCL on CUDA, gloo on the CPU, chosen from the device, with a
  timeout on every collective) and this rank's device;
- :func:`on_main`: work that rank 0 alone does (take the run folder's lock, prepare the data),
  whose result or error every rank then gets;
- :class:`BatchForward` in :func:`training_forward`: one step's loss over the *global* batch:
  each rank embeds its own P x K share, the embeddings are all-gathered with their gradients
  (``torch.distributed.nn.functional.all_gather``), and every rank scores the same global batch,
  as one device would. Wrapped in DistributedDataParallel, it holds the model and the loss's own
  parameters (``ProxyLoss``), so the gradients of both are averaged over the ranks: all-gather's
  backward sums the W identical gradients of each share and DDP divides by W, so each step's
  gradient is that of one process on the union batch;
- :func:`sync_buffers`, :func:`lost_rank_errors`, :func:`train_loader` (the fast path: pinned
  memory, persistent workers).

Without torchrun everything here is a no-op and one process trains as before.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..config import Config
from ..data.datasets import collate_images
from ..errors import ConfigError, TrainingError
from ..models.sharding import describe, error_from, mark_shared, rank_and_world
from ..utils import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands in the job: ``rank`` of ``world`` processes, its ``local_rank``
    on its node, and its ``device`` (``cpu``, ``cuda`` alone, ``cuda:<local_rank>`` under
    torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, metrics and the summary."""
        return self.rank == 0


def env_ranks() -> tuple[int, int, int]:
    """``(RANK, WORLD_SIZE, LOCAL_RANK)`` as torchrun sets them; ``(0, 1, 0)`` without it."""
    values = []
    for name, default in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", None)):
        raw = os.environ.get(name)
        try:
            values.append(int(raw) if raw not in (None, "") else default)
        except ValueError:
            raise ConfigError(
                f"environment variable {name}={raw!r} is not a number; start the job with "
                "torchrun, which sets it"
            ) from None
    rank, world, local = values
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    return rank, world, rank if local is None else local


def is_main() -> bool:
    """True on rank 0 of a job, and in a process that is not part of one."""
    return rank_and_world()[0] == 0


def _cuda_device(local_rank: int) -> str:
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK={local_rank} but this node has {count} CUDA device(s): start at most "
            f"{count} processes per node (torchrun --nproc_per_node={count})"
        )
    torch.cuda.set_device(local_rank)
    return f"cuda:{local_rank}"


def init_group(device: str, timeout_s: float, stack: contextlib.ExitStack) -> Ranks:
    """Join the job's process group, initialising it from torchrun's environment unless it
    exists (then it is destroyed when ``stack`` closes): NCCL for ``cuda``, gloo for ``cpu``,
    every collective waiting at most ``timeout_s`` seconds. One process alone: no group."""
    if dist.is_available() and dist.is_initialized():
        rank, world = rank_and_world()
        local = env_ranks()[2] if world > 1 else 0
    else:
        rank, world, local = env_ranks()
        if world > 1:
            if device == "cuda":
                _cuda_device(local)
            dist.init_process_group(
                "nccl" if device == "cuda" else "gloo",
                timeout=datetime.timedelta(seconds=timeout_s),
            )
            stack.callback(dist.destroy_process_group)
    if world > 1 and device == "cuda":
        device = _cuda_device(local)
    return Ranks(rank, world, local, device)


def join(cfg: Config, stack: contextlib.ExitStack) -> Ranks:
    """The ranks of a training job and this rank's device (``train.device``), after checking
    the ``scale`` options against them (before any file is written)."""
    ranks = init_group(resolve_device(cfg.train.device), cfg.scale.timeout_s, stack)
    if cfg.scale.sync_bn and ranks.world > 1 and not ranks.device.startswith("cuda"):
        raise mark_shared(
            ConfigError(
                "scale.sync_bn=true needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); "
                "on the CPU leave it off (each rank then normalises by its own batch) or freeze "
                "the BatchNorm layers with train.freeze"
            )
        )
    return ranks


def on_main(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 only; every rank returns its result (sent by pickling), or raises its
    error (a shared one, :func:`..models.sharding.is_shared`, on the other ranks). Every rank
    must call it at the same point. In one process, just ``fn()``."""
    rank, world = rank_and_world()
    if world == 1:
        return fn()
    box: list[Any] = [None]
    if rank == 0:
        try:
            box[0] = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - the others must not wait for a result
            box[0] = ("error", describe(e))
            dist.broadcast_object_list(box, src=0)
            raise mark_shared(e) from None
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        raise error_from(box[0][1], f"rank 0 of {world}: ")
    return box[0][1]


def from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (e.g. validation metrics, so that every rank takes the
    same early-stopping decision even where floating point differs); in one process, ``value``."""
    if rank_and_world()[1] == 1:
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class BatchForward(nn.Module):
    """One training step's loss: ``forward(x (B, 3, H, W), y (B,), loss_fn)`` embeds this rank's
    batch on ``device`` (non-blocking copy; channels_last and bf16 autocast on CUDA when asked),
    all-gathers the embeddings ``(B, D)`` with their gradients and the labels from every rank
    into the global batch ``(W B, D)``, in rank order, and returns ``loss_fn(emb, y)`` on it.

    ``model`` and ``extra`` (a loss with parameters, or None) are submodules, so wrapping this
    module in DistributedDataParallel averages the gradients of both over the ranks.
    """

    def __init__(
        self,
        model: nn.Module,
        extra: nn.Module | None,
        device: str,
        amp: bool = True,
        channels_last: bool = True,
        compile_backend: str = "none",
    ) -> None:
        super().__init__()
        self.model = model
        self.extra = extra
        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.amp = amp and cuda
        self.memory_format = (
            torch.channels_last if channels_last and cuda else torch.preserve_format
        )
        embed = model.embed
        self._embed = (
            embed if compile_backend == "none" else torch.compile(embed, backend=compile_backend)
        )

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], T]
    ) -> T:
        rank, world = rank_and_world()
        if rank:  # a rank's own dropout masks: step seed + rank (rank 0 keeps the step seed)
            torch.manual_seed(torch.initial_seed() + rank)
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            emb = self._embed(x).float()
        if world > 1:
            from torch.distributed.nn.functional import all_gather

            with warnings.catch_warnings():  # deprecated in newer torch for a private module
                warnings.simplefilter("ignore", FutureWarning)
                emb = torch.cat(all_gather(emb))
            labels = [torch.empty_like(y) for _ in range(world)]
            dist.all_gather(labels, y)
            y = torch.cat(labels)
        return loss_fn(emb, y)


def training_forward(
    model: nn.Module, extra: nn.Module | None, ranks: Ranks, cfg: Config
) -> nn.Module:
    """The :class:`BatchForward` of a training run, in DistributedDataParallel under torchrun.
    Converts the backbone's BatchNorm to SyncBatchNorm first (``scale.sync_bn``, timm's
    converter, which keeps the activations of its fused BatchNorm layers) and, on CUDA, the
    weights to channels_last (``scale.channels_last``). Parameters are not copied: the optimizer
    and checkpoints keep using ``model`` and ``extra``."""
    sc = cfg.scale
    cuda = ranks.device.startswith("cuda")
    if sc.sync_bn and ranks.world > 1:
        from timm.layers import convert_sync_batchnorm

        model.backbone.model = convert_sync_batchnorm(model.backbone.model)
    if cuda and sc.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = BatchForward(model, extra, ranks.device, cfg.train.amp, sc.channels_last, sc.compile)
    if ranks.world == 1:
        return forward
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(forward, device_ids=[ranks.local_rank] if cuda else None)


def sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, which each rank updates
    from its own share between DDP's broadcasts), so that all ranks hold the model rank 0
    checkpoints; a no-op in one process."""
    if rank_and_world()[1] > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def train_loader(dataset: Dataset, batch_sampler: Any, num_workers: int, device: str) -> DataLoader:
    """The training DataLoader of a whole run: workers persist across epochs (the sampler is
    re-iterated each epoch in this process, so ``set_epoch`` reaches it), and batches are
    pinned for non-blocking copies on CUDA."""
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        collate_fn=collate_images,
        persistent_workers=num_workers > 0,
        pin_memory=device.startswith("cuda"),
    )


#: Words in the messages of collectives that failed because another rank is gone.
_LOST = ("connection", "closed", "reset", "broken pipe", "timed out", "timeout", "gloo", "nccl")


def resume_hint(out: str | Path) -> str:
    """What to do after a training job lost a rank."""
    return (
        f"Rank 0 keeps the last checkpoint in {out}: continue with the same torchrun command "
        f"and train --resume {out}"
    )


@contextlib.contextmanager
def lost_rank_errors(timeout_s: float, then: str) -> Iterator[None]:
    """Turn a failed collective (another rank died, was killed or hangs) into one
    :class:`TrainingError` that says what happened and, in ``then``, how to go on."""
    try:
        yield
    except (RuntimeError, dist.DistError) as e:
        rank, world = rank_and_world()
        text = " ".join(str(e).split())
        if world == 1 or not (
            isinstance(e, dist.DistError) or any(w in text.lower() for w in _LOST)
        ):
            raise
        # "[.../gloo/transport/tcp/pair.cc:561] Connection closed by peer [...]:port. This is..."
        said = re.sub(r"^\[[^\]]*\]\s*", "", text).split(". ")[0][:200]
        raise TrainingError(
            f"rank {rank} of {world} lost the other ranks ({said}): one of them died, was "
            f"killed or did not answer for scale.timeout_s={timeout_s:g} s. {then}"
        ) from None


def check_resume(saved_world: int, ranks: Ranks, out: Path) -> None:
    """Refuse to resume a run with another number of processes than trained it: its batch
    sequence and learning-rate schedule depend on it."""
    if saved_world != ranks.world:
        launch = (
            "one process (no torchrun)"
            if saved_world == 1
            else f"{saved_world} processes in all (torchrun: --nnodes times --nproc_per_node)"
        )
        raise mark_shared(
            ConfigError(
                f"{out} was trained by {saved_world} process(es) and this job has {ranks.world}: "
                f"resume it with {launch}; its batches and learning-rate schedule depend on the "
                "number of processes"
            )
        )
