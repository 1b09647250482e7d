"""Command line: argument parsing (:mod:`.parser`) and wiring to the engine (:mod:`.commands`)
only. ``main`` turns every user error into one line on stderr and exit status 2. Under torchrun
(:mod:`.torchrun`) each rank runs its part of the command."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from ..errors import SiameseMarrowError
from . import torchrun
from .parser import build_parser

__all__ = ["build_parser", "main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:  # torchrun ... -m siamese_marrow.cli -- bank build --run RUN
        argv = argv[1:]
    args = parser.parse_args(argv)
    with contextlib.suppress(AttributeError, ValueError):  # file names that are not UTF-8
        sys.stdout.reconfigure(errors="surrogateescape")  # type: ignore[union-attr]
    func: Callable[[argparse.Namespace], int] = args.func
    command = " ".join(filter(None, (args.command, getattr(args, "bank_command", None))))
    try:
        with torchrun.session(command, args):  # a no-op without torchrun
            return func(args)
    except SiameseMarrowError as e:
        where = torchrun.error_prefix(e)
        if where is not None:  # None: every rank raised it, and rank 0 says it once
            print(f"siamese-marrow {command}: error: {where}{e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"siamese-marrow {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as e:  # a read-only target, a full disk, a missing permission: one line
        from ..utils import describe_os_error

        command = " ".join(filter(None, (args.command, getattr(args, "bank_command", None))))
        print(f"siamese-marrow {command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
