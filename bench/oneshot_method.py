"""Targets per second of the one-shot segmenter, per method: `python -m bench.oneshot_method`.

The reference is read once, then --targets targets are segmented (one backbone pass, one SAM encoding and one
batched decoder call each). By default the tiny fixture backbone (tests/fixtures) and a tiny random SAM on
the CPU, so only the pipeline's own cost is timed; --checkpoint and --sam-model-type/--sam-full-size time real
sizes (random SAM weights: the timing does not depend on them). Images are noise with a square reference mask.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tests.fixture_paths import TINY_CHECKPOINT
from utils.argtypes import positive_int

FIXTURE = TINY_CHECKPOINT


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--targets", type=positive_int, default=20)
    parser.add_argument("--size", type=positive_int, nargs=2, default=[224, 224], metavar=("H", "W"))
    parser.add_argument("--image-size", type=positive_int, default=224, help="long side of the DINOv2 input")
    parser.add_argument("--checkpoint", default=str(FIXTURE), help="a dinov2_vits14 checkpoint (default: tiny)")
    parser.add_argument("--sam-model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--sam-full-size", action="store_true", help="the official SAM architecture, not a tiny one")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import numpy as np
import torch

from backbones import load_backbone
from oneshot import OneShotSegmenter
from sam import build_sam
from sam.predictor import SamBoxPredictor

TINY = {"embed_dim": 64, "depth": 4, "num_heads": 4}
TINY_SAM = {"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "prompt_embed_dim": 32}


def main() -> None:
    args = build_parser().parse_args()
    tiny = Path(args.checkpoint) == FIXTURE
    backbone = load_backbone("dinov2_vits14", args.checkpoint, **(TINY if tiny else {})).to(args.device)
    torch.manual_seed(0)
    sam = build_sam(args.sam_model_type, **({} if args.sam_full_size else TINY_SAM | {"image_size": 256}))
    predictor = SamBoxPredictor(sam.to(args.device))
    rng = np.random.default_rng(0)
    h, w = args.size
    reference_image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4 : h // 2, w // 4 : w // 2] = True
    targets = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(args.targets)]
    sam_name = f"{args.sam_model_type}{'' if args.sam_full_size else ' (tiny)'}"
    print(f"backbone {'tiny fixture' if tiny else args.checkpoint}, SAM {sam_name}, {args.device}, image {h}x{w}, ")
    print(f"DINOv2 input long side {args.image_size}, {args.targets} targets after one warm-up")
    # an evaluation episode is one reference (its supports) and one target (its query)
    print(f"{'method':<10}{'reference s':>13}{'targets s':>11}{'targets/s':>11}{'episodes/s':>12}{'empty':>7}")
    for method in OneShotSegmenter.METHODS:
        segmenter = OneShotSegmenter(backbone, predictor, method, image_size=args.image_size)
        segmenter.segment(segmenter.reference([reference_image], [mask]), reference_image)  # warm-up
        start = time.perf_counter()
        reference = segmenter.reference([reference_image], [mask])
        read = time.perf_counter() - start
        start = time.perf_counter()
        empty = sum(segmenter.segment(reference, target).note is not None for target in targets)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        took = time.perf_counter() - start
        episodes = 1 / (read + took / args.targets)
        print(f"{method:<10}{read:>13.3f}{took:>11.3f}{args.targets / took:>11.1f}{episodes:>12.1f}{empty:>7}")


if __name__ == "__main__":
    main()
