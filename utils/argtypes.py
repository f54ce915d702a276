"""argparse ``type=`` converters for numbers with a range, so that a bad value is argparse's one-line usage error
(exit 2) at parse time, not a traceback once the slow work has started. Imports nothing heavy (``--help`` stays fast).

argparse itself only checks that a value parses as ``int`` or ``float``; the range is the tool's to state.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def int_at_least(least: int) -> Callable[[str], int]:
    """A converter accepting whole numbers ``>= least``: ``type=int_at_least(1)``."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} is too small: give a whole number of at least {least}")
        return value

    convert.__name__ = f"int >= {least}"  # argparse names the type in some messages
    return convert


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def finite_float(text: str) -> float:
    """A converter accepting finite floats (``float()`` also takes ``nan`` and ``inf``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def device_problem(text: str) -> str | None:
    """Why ``--device text`` cannot be used here (not a torch device, or a CUDA device on a machine without
    one, or an index past the GPUs there are), or None. Imports torch: call it once the arguments are parsed."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        return f"--device {text!r} is not a device: use cpu, cuda or cuda:N"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"--device {text} was asked for but no CUDA GPU is available: use --device cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"--device {text}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}"
    return None
