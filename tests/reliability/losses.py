"""The fused GPU loss and the DINOv3 loader: faults that gave silent wrong results."""

from __future__ import annotations

from pathlib import Path

from tests.reliability import FIXTURES, Case

TINY_DINOV3 = FIXTURES / "dinov3" / "tiny_vit16_dinov3.pth"


def load_dinov3_with_wrong_heads(tmp: Path) -> None:
    """No weight shape depends on num_heads: before, the file loaded and every feature was silently wrong."""
    import backbones

    backbones.load_backbone("dinov3_vits16", checkpoint=TINY_DINOV3, embed_dim=64, depth=4, num_heads=2)


CASES = [
    Case(
        "loss-dinov3-wrong-num-heads",
        "silent",
        call=load_dinov3_with_wrong_heads,
        names=("num_heads=4", str(TINY_DINOV3)),
        needs_fixtures=True,
    ),
]
