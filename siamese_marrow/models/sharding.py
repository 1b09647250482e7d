"""Embedding split across the ranks of a torch.distributed job (launched by ``torchrun``).

Inside :func:`sharded_embedding`, :func:`~.embed.embed_dataset` on each of the W ranks embeds one
contiguous block of the dataset (rank r takes items ``[r n // W, (r + 1) n // W)``) on its own
device and all-gathers the blocks, so that every rank returns the embeddings of the whole dataset
in dataset order: what one process returns. The code runs the same on every rank, so every rank
makes the same embedding calls in the same order; outside the context, or without a process group
of more than one rank, embedding stays in the process.

An error on one rank (an image that does not decode) is raised on every rank, naming the rank,
instead of leaving the others waiting: such an error is marked as shared (:func:`is_shared`), so
that only rank 0 needs to print it.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset

from ..errors import SiameseMarrowError

_SHARDING = False

#: The attribute that marks an error raised on every rank of a job (printed by rank 0 only).
SHARED_MARK = "siamese_marrow_shared"


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group; ``(0, 1)`` when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@contextlib.contextmanager
def sharded_embedding(enabled: bool = True) -> Iterator[None]:
    """Split every :func:`~.embed.embed_dataset` call inside across the job's ranks (all of
    which must make the same calls in the same order)."""
    global _SHARDING
    previous, _SHARDING = _SHARDING, enabled
    try:
        yield
    finally:
        _SHARDING = previous


def is_sharding() -> bool:
    """True inside :func:`sharded_embedding` in a job of more than one rank."""
    return _SHARDING and rank_and_world()[1] > 1


def block(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous share of ``n`` items (sizes differ by at
    most one, in rank order)."""
    return n * rank // world, n * (rank + 1) // world


def comm_device() -> torch.device:
    """Where tensors for collectives live: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's block ``(n_r, ...)`` of ``n`` rows (as :func:`block` splits them) gathered
    into ``(n, ...)`` on the CPU, in rank order, on every rank."""
    rank, world = rank_and_world()
    sizes = [stop - start for start, stop in (block(n, r, world) for r in range(world))]
    if local.shape[0] != sizes[rank]:
        raise ValueError(f"rank {rank} holds {local.shape[0]} rows; its block has {sizes[rank]}")
    padded = local.new_zeros((max(sizes), *local.shape[1:]), device=comm_device())
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s].cpu() for p, s in zip(parts, sizes, strict=True)])


def mark_shared(error: BaseException) -> BaseException:
    """Mark ``error`` as raised on every rank of the job (see :func:`is_shared`)."""
    setattr(error, SHARED_MARK, True)
    return error


def is_shared(error: BaseException) -> bool:
    """True for an error that every rank of the job raised: rank 0 reports it for all."""
    return bool(getattr(error, SHARED_MARK, False))


def describe(error: BaseException) -> tuple[bool, str]:
    """What another rank needs to know of ``error`` (plain values, picklable whatever the error
    is): whether it is a user error, and its message."""
    return isinstance(error, SiameseMarrowError), str(error)


def error_from(described: tuple[bool, str], prefix: str = "") -> BaseException:
    """Another rank's error (:func:`describe`), rebuilt here: a :class:`SiameseMarrowError`
    for a user error (its message says what to do), else a ``RuntimeError``; marked as shared."""
    user, text = described
    return mark_shared((SiameseMarrowError if user else RuntimeError)(prefix + text))


def raise_if_any_failed(error: BaseException | None) -> None:
    """Collective: every rank says whether it failed; if any did, every rank raises (its own
    error where it failed, else the first failed rank's message, naming the rank)."""
    rank, world = rank_and_world()
    told: list[Any] = [None] * world
    dist.all_gather_object(told, None if error is None else describe(error))
    for r, got in enumerate(told):
        if got is None:
            continue
        if error is not None:
            raise mark_shared(error)
        raise error_from(got, f"rank {r} of {world}: ")


def _on(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` itself when it is on ``device``, else a copy there (channels_last on CUDA)."""
    here = next(model.parameters()).device
    if here == device:
        return model
    twin = copy.deepcopy(model).to(device)
    return twin.to(memory_format=torch.channels_last) if device.type == "cuda" else twin


def embed_in_shards(
    embed_here: Callable[..., tuple[np.ndarray, np.ndarray]],
    model: torch.nn.Module,
    dataset: Dataset,
    dim: int,
    device: torch.device,
    progress: bool,
    **options: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``embed_here(model, this rank's block, device=..., progress=..., **options)``
    on every rank, gathered: embeddings ``(N, D)`` float32 and labels ``(N,)`` int64 of the
    whole dataset, in order, on every rank. Under NCCL each rank embeds on its own GPU (a copy
    of the model when it is elsewhere); progress is shown by rank 0 only."""
    rank, world = rank_and_world()
    n = len(dataset)
    start, stop = block(n, rank, world)
    if dist.get_backend() == "nccl":
        device = comm_device()
    emb, labels = np.zeros((0, dim), np.float32), np.zeros((0,), np.int64)
    error = None
    try:
        emb, labels = embed_here(
            _on(model, device),
            Subset(dataset, range(start, stop)),
            device=device,
            progress=progress and rank == 0,
            **options,
        )
    except Exception as e:  # noqa: BLE001 - every rank must hear of it, whatever it is
        error = e
    raise_if_any_failed(error)
    emb_all = gather_rows(torch.from_numpy(np.ascontiguousarray(emb, np.float32)), n)
    labels_all = gather_rows(torch.from_numpy(np.ascontiguousarray(labels, np.int64)), n)
    return emb_all.numpy(), labels_all.numpy()
