"""argparse ``type=`` functions that range-check numeric options while the command line is parsed.

A bad value stops the command with argparse's usage line and one line naming the option, the
value and the allowed range, before any work starts (exit status 2).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

from .utils import brief


def number(
    kind: type = int,
    low: float | None = None,
    high: float | None = None,
    *,
    low_strict: bool = False,
    high_strict: bool = False,
) -> Callable[[str], float]:
    """A ``type=`` function parsing ``kind`` (int or float) within ``[low, high]`` (or the open
    ends when ``low_strict`` / ``high_strict``); floats must be finite."""

    if low is not None and high is not None:
        allowed = f"in {'(' if low_strict else '['}{low:g}, {high:g}{')' if high_strict else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_strict else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if high_strict else '<='} {high:g}"
    else:
        allowed = "any"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {brief(text)}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {brief(text)}")
        too_low = low is not None and (value < low or (low_strict and value == low))
        too_high = high is not None and (value > high or (high_strict and value == high))
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{value} is out of range: must be {allowed}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def int_list(low: int = 1) -> Callable[[str], list[int]]:
    """A ``type=`` function for a comma-separated list of integers ``>= low``, e.g. ``1,5``."""
    item = number(int, low)

    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        if not any(parts) or not all(parts):
            raise argparse.ArgumentTypeError(
                f"expected comma-separated integers >= {low} like 1,5, got {brief(text)}"
            )
        values: list[int] = []
        for p in parts:
            try:
                values.append(int(item(p)))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"{brief(text)}: {e}") from None
        return values

    parse.__name__ = "list of integers"
    return parse


#: Shared instances for the usual cases.
count = number(int, 1)  # how many of something: at least 1
workers = number(int, 0, 256)  # worker processes: 0 = in the main process
seed = number(int, 0, 2**63 - 1)
probability = number(float, 0, 1)
