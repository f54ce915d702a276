"""Time SAM box-to-mask on one image: SamBoxPredictor's batched decoder calls against SamPredictor box by box.

    python -m bench.sam_box_to_mask                       # tiny random SAM, CPU (and GPU when there is one)
    python -m bench.sam_box_to_mask --model-type vit_b --full-size --boxes 100 --size 480 640
    python -m bench.sam_box_to_mask --model-type vit_h --full-size --device cuda   # the GPU only (gpu_check)

Both ways encode the image once; the times are for the whole image (encoder + all boxes), best of --repeats.
On CUDA the batched path also runs in bf16 autocast (SamPredictor.predict cannot: it returns numpy).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

from utils.argtypes import device_problem, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-type", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument(
        "--full-size", action="store_true", help="the official architecture (random weights) instead of a tiny one"
    )
    parser.add_argument("--boxes", type=positive_int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--size", type=positive_int, nargs=2, default=[480, 640], metavar=("H", "W"))
    parser.add_argument("--chunk-size", type=positive_int, default=64)
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument(
        "--device",
        nargs="+",
        dest="devices",
        metavar="DEVICE",
        help="cpu, cuda, cuda:N (default: cpu, and cuda when there is one)",
    )
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import numpy as np
import torch
from segment_anything import SamPredictor

from sam import SamBoxPredictor, build_sam

TINY = {"encoder_embed_dim": 64, "encoder_depth": 2, "encoder_num_heads": 4, "prompt_embed_dim": 64, "image_size": 256}


def best_time(fn, repeats: int) -> float:
    """Fastest of `repeats` runs of fn() in seconds, after one warm-up run (CUDA synchronised)."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def box_by_box(predictor: SamPredictor, image: np.ndarray, boxes: np.ndarray) -> None:
    predictor.set_image(image)
    for box in boxes:
        predictor.predict(box=box, multimask_output=False)


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    for device in args.devices or ():
        if problem := device_problem(device):
            parser.error(problem)

    torch.manual_seed(0)
    sam = build_sam(args.model_type, **({} if args.full_size else TINY))
    rng = np.random.default_rng(0)
    h, w = args.size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    devices = args.devices or ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
    arch = f"{args.model_type}{'' if args.full_size else ' (tiny)'}"
    print(f"SAM {arch}, image {h}x{w}, chunk {args.chunk_size}, best of {args.repeats}")
    print(f"{'device':<7}{'boxes':>7}{'batched s':>12}{'box-by-box s':>15}{'speed-up':>10}")
    for device in devices:
        sam.to(device)
        batched, reference = SamBoxPredictor(sam, args.chunk_size), SamPredictor(sam)
        for n in args.boxes:
            xy = rng.uniform(0, [w * 0.8, h * 0.8], (n, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(8, [w * 0.2, h * 0.2], (n, 2))], 1).astype(np.float32)
            fast = best_time(partial(batched.predict, image, boxes), args.repeats)
            slow = best_time(partial(box_by_box, reference, image, boxes), args.repeats)
            print(f"{device:<7}{n:>7}{fast:>12.3f}{slow:>15.3f}{slow / fast:>9.1f}x")


if __name__ == "__main__":
    main()
