"""Shared test fixtures: the official-format tiny DINOv2 checkpoints in tests/fixtures/dinov2."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixture_paths import DINOV2, TINY_CHECKPOINT, listed, require

TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}
# A tiny randomly initialised SAM: every call builds one in well under a second.
TINY_SAM = {
    "encoder_embed_dim": 32,
    "encoder_depth": 2,
    "encoder_num_heads": 2,
    "prompt_embed_dim": 32,
    "image_size": 128,
}


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """tests/fixtures/dinov2, after checking that every fixture file is there (a missing one fails, naming it)."""
    require(*listed())
    return DINOV2


@pytest.fixture(scope="session")
def tiny_checkpoint(fixtures_dir: Path) -> Path:
    return TINY_CHECKPOINT
