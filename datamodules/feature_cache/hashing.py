"""The hashes in a feature cache's key: of the backbone's weights and of the ordered file list."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..files import LabelMap


def weights_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def files_sha256(samples: Sequence[Sequence[Any]]) -> str:
    """SHA-256 of an ordered sample list: each file's absolute path, size and mtime, and each label map."""
    digest = hashlib.sha256()
    for sample in samples:
        for part in sample:
            if isinstance(part, Path):
                stat = part.stat()
                digest.update(f"{os.path.abspath(part)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            elif isinstance(part, LabelMap):
                digest.update(part.lut.tobytes())
            else:
                digest.update(f"{part!r}\n".encode())
    return digest.hexdigest()
