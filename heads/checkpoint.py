"""Reading heads released as mmseg checkpoints (`decode_head.*` keys)."""

from __future__ import annotations

import os

import torch
from torch import Tensor


class CheckpointError(ValueError):
    """A released head checkpoint does not fit the module it is loaded into."""


def read_decode_head(path: str | os.PathLike) -> dict[str, Tensor]:
    """The head tensors of an mmseg checkpoint, with the `decode_head.` prefix stripped.

    Accepts `{"state_dict": {...}, "meta": {...}}` (as mmseg saves) or a bare state dict.
    """
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint)
    return {key.removeprefix("decode_head."): value for key, value in state.items()}


def state_mismatches(state: dict[str, Tensor], expected: dict[str, Tensor]) -> list[str]:
    """Missing keys, unexpected keys and shape mismatches (file vs model), one line each."""
    problems = [f"missing key {key!r}" for key in expected if key not in state]
    problems += [f"unexpected key {key!r}" for key in state if key not in expected]
    problems += [
        f"{key}: {tuple(state[key].shape)} in the file vs {tuple(value.shape)} in the model"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    return problems
