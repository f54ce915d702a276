"""Write scikit-learn's bundled digits (1797 8x8 greyscale images, 10 classes) as class folders of PNGs.

`python bench/digits_folder.py data/digits [--size 56]` gives data/digits/<digit>/<n>.png (a small real image set
for head=fewshot) and, with --split, data/digits/{train,val}/<digit>/ (for head=knn and head=linear_probe).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from utils.argtypes import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--size", type=positive_int, default=56, help="side of the written images (nearest upsampling)")
    parser.add_argument("--split", action="store_true", help="write train/ (80%%) and val/ (20%%) sub-folders")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before scikit-learn is imported

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    parser = build_parser()
    args = parser.parse_args()
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"{args.out} is a file: give a folder to write the class folders into.")
    digits = load_digits()
    # pixel values are 0..16
    images = (digits.images * (255 / 16)).astype(np.uint8)
    val = np.random.default_rng(0).random(len(images)) < 0.2
    for n, (pixels, label) in enumerate(zip(images, digits.target)):
        split = ("val" if val[n] else "train") if args.split else ""
        folder = args.out / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).resize((args.size, args.size), Image.NEAREST).save(folder / f"{n}.png")
    print(f"Wrote {len(images)} images to {args.out}")


if __name__ == "__main__":
    main()
