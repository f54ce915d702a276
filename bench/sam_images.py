"""Time SAM's image encoder on many images: one image at a time (SamBoxPredictor.set_image) against
sam.batched.encode_images, one encoder call per --batch images.

    python -m bench.sam_images                                   # tiny random SAM on the CPU
    python -m bench.sam_images --device cuda --model-type vit_b --full-size --images 32 --batch 1,4,8,16

The images alternate --size H W and W x H (landscape and portrait); each way prepares them as
SamPredictor.set_image does (resize, normalise, pad). Times are best of --repeats after one warm-up;
max |dfeat| is the largest difference between a batched embedding and the one-at-a-time one (bf16 on CUDA).
"""

from __future__ import annotations

import argparse
import time

from utils.argtypes import positive_int


def batch_sizes(text: str) -> list[int]:
    """'1,4,8' -> [1, 4, 8]: whole numbers of at least 1."""
    try:
        return [positive_int(part) for part in text.split(",")]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"--batch {text!r}: {err}; give batch sizes like 1,4,8") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument(
        "--full-size", action="store_true", help="the official architecture (random weights) instead of a tiny one"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--images", type=positive_int, default=16, help="images per timed run")
    parser.add_argument("--batch", type=batch_sizes, default=[1, 4, 8], help="images per encoder call, e.g. 1,4,8")
    parser.add_argument("--size", type=positive_int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--repeats", type=positive_int, default=3)
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import numpy as np
import torch

from sam import SamBoxPredictor, build_sam
from sam.batched import encode_images
from utils.argtypes import device_problem

TINY = {"encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 4, "prompt_embed_dim": 64, "image_size": 256}


def best_time(fn, repeats: int, device: torch.device) -> float:
    """Fastest of `repeats` runs of fn() in seconds, after one warm-up run (CUDA synchronised)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def one_at_a_time(predictor: SamBoxPredictor, images: list[np.ndarray]) -> list[torch.Tensor]:
    features = []
    for image in images:
        predictor.set_image(image)
        features.append(predictor.predictor.features)
    return features


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if problem := device_problem(args.device):
        parser.error(problem)
    device = torch.device(args.device)
    torch.manual_seed(0)
    sam = build_sam(args.model_type, **({} if args.full_size else TINY)).to(device).eval()
    rng = np.random.default_rng(0)
    h, w = args.size
    images = [rng.integers(0, 256, (h, w, 3) if i % 2 == 0 else (w, h, 3), dtype=np.uint8) for i in range(args.images)]
    predictor = SamBoxPredictor(sam)
    reference = one_at_a_time(predictor, images)
    single = best_time(lambda: one_at_a_time(predictor, images), args.repeats, device)
    arch = f"{args.model_type}{'' if args.full_size else ' (tiny)'}"
    print(f"SAM {arch} on {device}, {args.images} images {h}x{w} / {w}x{h}, best of {args.repeats}")
    print(f"{'way':<16}{'images/s':>10}{'speed-up':>10}{'max |dfeat|':>13}")
    print(f"{'one at a time':<16}{args.images / single:>10.2f}{'1.0x':>10}{'-':>13}")
    for batch in args.batch:
        embeddings = encode_images(sam, images, batch_size=batch)
        diff = max((e.features.float() - r.float()).abs().max().item() for e, r in zip(embeddings, reference))
        seconds = best_time(lambda b=batch: encode_images(sam, images, batch_size=b), args.repeats, device)
        print(f"{f'batched {batch}':<16}{args.images / seconds:>10.2f}{single / seconds:>9.2f}x{diff:>13.1e}")


if __name__ == "__main__":
    main()
