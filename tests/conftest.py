"""Shared test fixtures: the official-format tiny DINOv2 checkpoints in ../shared/fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "dinov2"
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
    if not FIXTURES.is_dir():
        pytest.skip(
            f"conformance fixtures not found at {FIXTURES} (they sit in ../shared/fixtures beside the checkout)"
        )
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_checkpoint(fixtures_dir: Path) -> Path:
    return fixtures_dir / "tiny_vit14.pth"
