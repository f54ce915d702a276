"""Time the BSDS500 edge benchmark (`metrics.edges.image_counts`: 99 thresholds, thinning, the minimum-cost
matching to each annotator) on generated 321x481 images (`datamodules.synthetic.bsds`), and pyEdgeEval's
`evaluate_boundaries_threshold_multiple_gts` (the original `correspondPixels` C++) on the same images when it is
importable here, then extrapolate to BSDS500's 200 test images.

    python -m bench.bsds_benchmark                  # 3 images
    python -m bench.bsds_benchmark --images 10 --cores 2

Times are CPU seconds of this process (`time.process_time`, one thread: the solvers are single-threaded), so a
machine shared with other jobs inflates them less than wall time; the extrapolation spreads the images over
--cores processes. "same counts" compares the two implementations' per-threshold counts.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from utils.argtypes import positive_int

BSDS500_TEST_IMAGES = 200


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=positive_int, default=3, help="generated images (seeds 0, 1, ...)")
    parser.add_argument("--cores", type=positive_int, default=2, help="processes for the 200-image extrapolation")
    return parser


def pyedgeeval_counts():
    """pyEdgeEval's per-image counts function, or None when it is not installed here."""
    try:
        from pyEdgeEval.common.binary_label.evaluate_boundaries import evaluate_boundaries_threshold_multiple_gts
    except ImportError:
        return None

    def counts(edges: np.ndarray, truth: np.ndarray, levels: np.ndarray) -> np.ndarray:
        out = evaluate_boundaries_threshold_multiple_gts(levels, edges, truth.astype(float), max_dist=0.0075)
        return np.stack(out, 1).astype(np.int64)

    return counts


def cpu_seconds(fn, *args) -> tuple[float, np.ndarray]:
    start = time.process_time()
    out = fn(*args)
    return time.process_time() - start, out


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from datamodules.synthetic.bsds import synthetic_image  # after --help: these import torch
    from metrics.edges import image_counts, thresholds

    levels = thresholds(99)
    reference = pyedgeeval_counts()
    print("| image | annotators | ours (CPU s) | pyEdgeEval (CPU s) | same counts |")
    print("| --- | --- | --- | --- | --- |")
    ours_total, theirs_total = 0.0, 0.0
    for seed in range(args.images):
        edges, truth = synthetic_image(seed)
        ours, counts = cpu_seconds(image_counts, edges / 255.0, truth, levels)
        ours_total += ours
        theirs, same = "-", "-"
        if reference is not None:
            seconds, theirs_counts = cpu_seconds(reference, edges / 255.0, truth, levels)
            theirs_total += seconds
            theirs, same = f"{seconds:.1f}", str(bool(np.array_equal(counts, theirs_counts)))
        print(f"| {seed} | {len(truth)} | {ours:.1f} | {theirs} | {same} |")
    per_image = ours_total / args.images
    minutes = per_image * BSDS500_TEST_IMAGES / args.cores / 60
    print(
        f"\nours: {per_image:.1f} CPU s an image; BSDS500's {BSDS500_TEST_IMAGES} test images on {args.cores} "
        f"cores: about {minutes:.0f} minutes"
    )
    if reference is not None:
        print(f"pyEdgeEval: {theirs_total / args.images:.1f} CPU s an image ({theirs_total / ours_total:.1f}x ours)")


if __name__ == "__main__":
    main()
