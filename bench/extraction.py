"""End-to-end feature extraction throughput (images/s), from JPEG files to fp16 patch tokens on the host.

    python -m bench.extraction                               # 2,000 generated 640x480 JPEGs, ViT-S/14 at 518, bf16
    python -m bench.extraction --dir /data/jpegs --model vitb14 --compile max-autotune-no-cudagraphs
    python -m bench.extraction --quick                       # tiny model and images, CPU smoke run

Rows (median of ``--repeats`` passes over all files, after one warm-up pass):
  raw forward        the backbone alone on one batch already on the device (the ceiling);
  loader only        files -> normalised batches on the device, no backbone (is decoding fast enough?);
  end to end         files -> decoded -> resized -> backbone -> last-block patch tokens, fp16, in pinned host memory.
``decode cpu`` decodes and resizes in the DataLoader workers; ``decode gpu`` decodes with nvJPEG (CUDA only).
The files are read once before timing, so they come from the page cache, as on a second pass over a dataset.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from utils.argtypes import device_problem, non_negative_int, positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dir", type=Path, help="folder of the JPEGs (written if missing, kept); default: a temporary folder"
    )
    parser.add_argument("--images", type=positive_int, default=2000)
    parser.add_argument("--width", type=positive_int, default=640)
    parser.add_argument("--height", type=positive_int, default=480)
    parser.add_argument("--size", type=positive_int, default=518, help="extraction side (a multiple of 14)")
    parser.add_argument("--model", default="vits14", choices=["vits14", "vitb14", "vitl14", "vitg14"])
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--compile", default=None, help="a torch.compile mode for the backbone (default: eager)")
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--workers", type=non_negative_int, help="DataLoader workers (default: min(16, CPUs))")
    parser.add_argument("--decode", nargs="+", default=["cpu", "gpu"], choices=["cpu", "gpu"])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="16 tiny images, tiny model, size 28: a CPU smoke run")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from backbones import COMPILE_MODES, FrozenBackbone
from backbones.dinov2 import build_dinov2
from bench.backbone_throughput import MODELS, TINY, device_name
from datamodules.image_files import ImageFileLoader, default_workers
from utils.atomic import atomic_write


def save_jpeg(image: Image.Image, path: Path) -> None:
    image.save(path, format="JPEG", quality=90)


def write_jpegs(folder: Path, n: int, width: int, height: int, seed: int = 0) -> list[Path]:
    """``n`` JPEGs (quality 90) of noise under random ellipses and rectangles; existing files of the same names are kept."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        paths.append(path)
        if path.is_file():
            continue
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x0, y0 = int(rng.integers(0, width - 2)), int(rng.integers(0, height - 2))
            x1, y1 = int(rng.integers(x0 + 1, width)), int(rng.integers(y0 + 1, height))
            fill = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=fill)
        atomic_write(path, functools.partial(save_jpeg, image))
    return paths


class HostSink:
    """Copies ``(B, N, C)`` device tensors into a ring of pinned fp16 host buffers without blocking the host.

    A buffer is reused only once the copy that last filled it has finished; the consumer of a real
    extraction (a feature cache writer) would read each buffer before that.
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device, slots: int = 3):
        pin = device.type == "cuda"
        self.buffers = [torch.empty(shape, dtype=torch.float16, pin_memory=pin) for _ in range(slots)]
        self.events = [torch.cuda.Event() if pin else None for _ in range(slots)]
        self.next = 0

    def put(self, tokens: Tensor) -> None:
        slot, self.next = self.next, (self.next + 1) % len(self.buffers)
        if self.events[slot] is not None:
            self.events[slot].synchronize()
        self.buffers[slot][: len(tokens)].copy_(tokens, non_blocking=True)
        if self.events[slot] is not None:
            self.events[slot].record()

    def flush(self) -> None:
        for event in self.events:
            if event is not None:
                event.synchronize()


def patch_tokens(backbone: FrozenBackbone, images: Tensor) -> Tensor:
    """Normed last-block patch tokens ``(B, h*w, C)`` in fp16, on the device."""
    return backbone.get_intermediate_layers(images, n=1)[0].half()


def timed(run: Callable[[], int], repeats: int, device: torch.device) -> float:
    """Median images/s of ``run()`` (which returns how many images it did) over ``repeats`` runs, after one warm-up run."""
    run()
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        n = run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def load_only(loader: ImageFileLoader) -> int:
    """One pass over the files without the backbone; returns the number of images."""
    return sum(len(index) for index, _ in loader)


def end_to_end(loader: ImageFileLoader, backbone: FrozenBackbone, sink: HostSink) -> int:
    """One pass: files -> patch tokens in host memory; returns the number of images."""
    n = 0
    for index, images in loader:
        sink.put(patch_tokens(backbone, images))
        n += len(index)
    sink.flush()
    return n


def bench(args: argparse.Namespace, folder: Path) -> list[tuple[str, float | None, str]]:
    """Rows ``(what, images/s or None, note)``; the JPEGs are written to (or reused from) ``folder``."""
    device = torch.device(args.device)
    print(f"Writing/reusing {args.images} JPEGs in {folder} ...", file=sys.stderr, flush=True)
    paths = write_jpegs(folder, args.images, args.width, args.height)
    for path in paths:
        path.read_bytes()
    torch.manual_seed(0)
    backbone = build_dinov2(MODELS[args.model], **(TINY if args.quick else {})).to(device)
    backbone.configure_speed(dtype=args.dtype, compile=args.compile)
    grid = args.size // backbone.patch_size
    sink = HostSink((args.batch, grid * grid, backbone.embed_dim), device)
    batch = torch.randn(args.batch, 3, args.size, args.size, device=device)
    steps = max(1, len(paths) // args.batch)

    def raw() -> int:
        for _ in range(steps):
            patch_tokens(backbone, batch)
        return steps * args.batch

    print("  raw forward ...", file=sys.stderr, flush=True)
    rows: list[tuple[str, float | None, str]] = [
        ("raw forward (batch on the device)", timed(raw, args.repeats, device), "")
    ]
    workers = default_workers() if args.workers is None else args.workers
    for decode in args.decode:
        if decode == "gpu" and device.type != "cuda":
            rows.append((f"end to end, decode {decode}", None, "needs CUDA"))
            continue
        print(f"  decode {decode} ...", file=sys.stderr, flush=True)
        loader = ImageFileLoader(
            paths, args.size, batch_size=args.batch, num_workers=workers, decode=decode, device=device
        )
        note = f"{workers} workers"
        rows.append(
            (f"loader only, decode {decode}", timed(functools.partial(load_only, loader), args.repeats, device), note)
        )
        rows.append(
            (
                f"end to end, decode {decode}",
                timed(functools.partial(end_to_end, loader, backbone, sink), args.repeats, device),
                note,
            )
        )
    return rows


def print_table(rows: Sequence[tuple[str, float | None, str]], args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    raw = rows[0][1]
    arch = f"{args.model}{' (tiny)' if args.quick else ''}"
    print(
        f"\nFeature extraction on {device_name(device)}, {os.cpu_count()} CPUs: {args.images} JPEGs {args.width}x{args.height} -> {args.size}x{args.size}"
    )
    print(
        f"backbone {arch}, dtype {args.dtype}, compile {args.compile}, batch {args.batch}; median of {args.repeats} passes"
    )
    print(f"{'what':<36}{'images/s':>10}{'/ raw':>8}  note")
    for what, rate, note in rows:
        if rate is None:
            print(f"{what:<36}{'-':>10}{'-':>8}  {note}")
        else:
            print(f"{what:<36}{rate:>10.1f}{rate / raw:>7.0%}  {note}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif problem := device_problem(args.device):
        parser.error(problem)
    if args.compile not in (None, *COMPILE_MODES):
        parser.error(f"--compile {args.compile!r} is not a torch.compile mode: use one of {', '.join(COMPILE_MODES)}.")
    if args.dir is not None and args.dir.exists() and not args.dir.is_dir():
        parser.error(f"--dir {args.dir} is a file: give a folder (written if missing), or leave --dir out.")
    if args.quick:
        args.images, args.width, args.height, args.size, args.batch, args.repeats = 16, 64, 48, 28, 4, 1
        args.workers = 2 if args.workers is None else args.workers
    if args.size % 14:
        parser.error(f"--size {args.size} is not a multiple of the patch size 14: use e.g. 224 or 518.")
    return args


def main(argv: Sequence[str] | None = None) -> list[tuple[str, float | None, str]]:
    """Run the benchmark, print the table, and return its rows."""
    args = parse_args(argv)
    if args.dir is not None:
        rows = bench(args, args.dir)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_extraction_") as folder:
            rows = bench(args, Path(folder))
    print_table(rows, args)
    return rows


if __name__ == "__main__":
    main()
