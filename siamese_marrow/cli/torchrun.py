"""How a command runs under ``torchrun`` (``WORLD_SIZE`` > 1 in its environment).

``train`` trains with DistributedDataParallel (it joins the process group itself, with the
run's ``scale.timeout_s``); ``bank build``, ``evaluate`` and ``classify`` run the same on every
rank with their embedding split across the ranks, and rank 0 writes what one process would. Other
commands are refused: they run in one process. Ranks other than 0 print nothing on standard
output and show no progress bars; an error that every rank raised is printed by rank 0 only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator

#: The commands that share their work across the ranks of a torchrun job.
SHARED_COMMANDS = ("train", "bank build", "evaluate", "classify")


def _under_torchrun() -> bool:
    """True when the environment says this process is one of several (no torch import)."""
    return os.environ.get("WORLD_SIZE", "").strip() not in ("", "1")


def error_prefix(error: BaseException) -> str | None:
    """What precedes this rank's error message (``"rank 1: "``), or None when rank 0 reports it
    for every rank."""
    if not _under_torchrun():
        return ""
    from ..engine.distributed import env_ranks
    from ..models.sharding import is_shared

    rank = env_ranks()[0]
    if rank == 0:
        return ""
    return None if is_shared(error) else f"rank {rank}: "


@contextlib.contextmanager
def session(command: str, args: argparse.Namespace) -> Iterator[None]:
    """Run ``command`` as this rank's part of a torchrun job (nothing changes without one)."""
    if not _under_torchrun():
        yield
        return
    import torch

    from ..config import ScaleConfig
    from ..engine.distributed import env_ranks, init_group, lost_rank_errors
    from ..errors import ConfigError
    from ..models.sharding import mark_shared, sharded_embedding

    rank, world, _ = env_ranks()
    if command not in SHARED_COMMANDS:
        raise mark_shared(
            ConfigError(
                f"siamese-marrow {command} runs in one process; under torchrun (WORLD_SIZE="
                f"{world}) only {', '.join(SHARED_COMMANDS)} share their work: run it without "
                "torchrun"
            )
        )
    with contextlib.ExitStack() as stack:
        if rank != 0:
            if hasattr(args, "quiet"):
                args.quiet = True
            devnull = stack.enter_context(open(os.devnull, "w"))
            stack.enter_context(contextlib.redirect_stdout(devnull))
        if command != "train":  # train joins the group itself, with the run's scale.timeout_s
            device = "cuda" if torch.cuda.is_available() else "cpu"
            init_group(device, ScaleConfig.timeout_s, stack)
            stack.enter_context(sharded_embedding())
            # every collective comes before the first write: nothing was written
            then = "Nothing was written: run the command again"
            stack.enter_context(lost_rank_errors(ScaleConfig.timeout_s, then))
        yield
