"""Backbone forward throughput (images/s): timm eager against our FrozenBackbone's speed options, same weights.

    python -m bench.backbone_throughput                          # ViT-S/14 and ViT-B/14 at 224 and 518, batch 64
    python -m bench.backbone_throughput --models vits14 --sizes 518 --variants timm ours-bf16 ours-compiled
    python -m bench.backbone_throughput --quick                  # tiny model, CPU smoke run

One forward = all tokens after the final norm (timm ``forward_features``, our ``forward_features``), on one
random batch, weights random but shared: timm's model gets our weights and our position embedding resized
to its size, so the outputs are comparable. Rows give the median images/s over ``--repeats`` timings of
``--iters`` forwards after warm-up, the speed-up over timm eager, and the largest absolute and relative
(to the largest timm value) difference of the patch tokens against timm eager's.

Variants: timm (eager, bf16 autocast on CUDA), timm-dynamic (``dynamic_img_size=True``: one model for every
size, position embedding resized by timm on every call), ours (float32 weights, bf16 autocast on CUDA),
ours-bf16 (``dtype="bfloat16"``), ours-compiled (bf16 + ``torch.compile(mode=--compile-mode)``),
ours-graphs (bf16 + ``mode="reduce-overhead"``: CUDA graphs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from utils.argtypes import device_problem, non_negative_int, positive_int

MODELS = {"vits14": "dinov2_vits14", "vitb14": "dinov2_vitb14", "vitl14": "dinov2_vitl14", "vitg14": "dinov2_vitg14"}
VARIANTS = ("timm", "timm-dynamic", "ours", "ours-bf16", "ours-compiled", "ours-graphs")
TINY = {"embed_dim": 64, "depth": 2, "num_heads": 4}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["vits14", "vitb14"], choices=list(MODELS))
    parser.add_argument(
        "--sizes", nargs="+", type=positive_int, default=[224, 518], help="square input sides (multiples of 14)"
    )
    parser.add_argument("--batch", type=positive_int, default=64)
    parser.add_argument("--iters", type=positive_int, default=20, help="forwards per timing")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timings; the median is reported")
    parser.add_argument(
        "--warmup", type=non_negative_int, default=5, help="untimed forwards first (compilation, autotuning, cuDNN)"
    )
    parser.add_argument(
        "--variants", nargs="+", choices=VARIANTS, help="default: all (all but the compiled ones with --quick)"
    )
    parser.add_argument(
        "--compile-mode", default="max-autotune-no-cudagraphs", help="torch.compile mode of ours-compiled"
    )
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model, sizes 28 and 42, batch 2: a CPU smoke run")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import timm
import torch
from torch import Tensor

from backbones import COMPILE_MODES, FrozenBackbone
from backbones.dinov2 import DINOV2_SPECS, build_dinov2


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU with its thread count."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def images_per_second(
    forward: Callable[[], object], batch: int, iters: int, repeats: int, warmup: int, device: torch.device
) -> float:
    """Median images/s over ``repeats`` timings of ``iters`` calls, after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        forward()
    rates = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            for _ in range(iters):
                forward()
            end.record()
            end.synchronize()
            seconds = start.elapsed_time(end) / 1000
        else:
            begin = time.perf_counter()
            for _ in range(iters):
                forward()
            seconds = time.perf_counter() - begin
        rates.append(iters * batch / seconds)
    return statistics.median(rates)


def reference_weights(name: str, arch: dict[str, int], seed: int) -> dict[str, Tensor]:
    """A random state dict of our backbone, with layer scales drawn in [0.1, 0.5] so that every block matters.

    timm initialises layer scales at 1e-5, which would make any two implementations look equal.
    """
    torch.manual_seed(seed)
    backbone = build_dinov2(name, **arch)
    for key, value in backbone.state_dict().items():
        if key.endswith(".gamma"):
            value.uniform_(0.1, 0.5)
    return backbone.state_dict()


def our_backbone(
    name: str, arch: dict[str, int], weights: dict[str, Tensor], device: torch.device, **speed: object
) -> FrozenBackbone:
    backbone = build_dinov2(name, **arch)
    backbone.load_state_dict(weights)
    return backbone.to(device).configure_speed(**speed)


def timm_model(
    name: str, arch: dict[str, int], ours: FrozenBackbone, size: int, dynamic: bool, device: torch.device
) -> torch.nn.Module:
    """timm's model of the same architecture with our weights; position embedding resized our way unless ``dynamic``."""
    spec = DINOV2_SPECS[name]
    model = timm.create_model(
        spec.timm_name,
        pretrained=False,
        num_classes=0,
        img_size=518 if dynamic else size,
        dynamic_img_size=dynamic,
        **arch,
    )
    weights = {k.removeprefix("vit."): v for k, v in ours.state_dict().items() if k.startswith("vit.")}
    if not dynamic:
        grid = size // ours.patch_size
        with torch.no_grad():
            weights["pos_embed"] = torch.cat([weights["pos_embed"][:, :1], ours._patch_pos_embed(grid, grid)], dim=1)
    model.load_state_dict(weights)
    return model.to(device).eval().requires_grad_(False)


def timm_forward(model: torch.nn.Module, x: Tensor) -> Tensor:
    """timm's normed tokens ``(B, 1 + h*w, C)`` under the same autocast as our float32 backbone."""
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
        return model.forward_features(x)


def differences(patches: Tensor, reference: Tensor) -> tuple[float, float]:
    """(max abs difference, max abs difference / max abs reference value) of two ``(B, h*w, C)`` tensors."""
    gap = (patches.float() - reference.float()).abs().max().item()
    return gap, gap / reference.float().abs().max().item()


def speed_options(variant: str, compile_mode: str) -> dict[str, object]:
    return {
        "ours": {},
        "ours-bf16": {"dtype": "bfloat16"},
        "ours-compiled": {"dtype": "bfloat16", "compile": compile_mode},
        "ours-graphs": {"dtype": "bfloat16", "compile": "reduce-overhead"},
    }[variant]


def forward_of(
    variant: str,
    name: str,
    arch: dict[str, int],
    size: int,
    base: FrozenBackbone,
    weights: dict[str, Tensor],
    x: Tensor,
    compile_mode: str,
) -> Callable[[], Tensor]:
    """The forward of one variant on ``x``, returning its normed patch tokens ``(B, h*w, C)``."""
    if variant.startswith("timm"):
        model = timm_model(name, arch, base, size, variant == "timm-dynamic", x.device)
        return lambda: timm_forward(model, x)[:, 1:]
    ours = (
        base
        if variant == "ours"
        else our_backbone(name, arch, weights, x.device, **speed_options(variant, compile_mode))
    )
    return lambda: ours.forward_features(x)["x_norm_patchtokens"]


def bench_one(
    name: str, arch: dict[str, int], size: int, args: argparse.Namespace, variants: Sequence[str], device: torch.device
) -> list[tuple]:
    """Rows ``(model, size, variant, images/s, speed-up, max abs diff, max rel diff)`` for one model and size; the
    speed-up is None before the timm variant has run (e.g. ``--variants ours``)."""
    weights = reference_weights(name, arch, args.seed)
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(args.seed)).to(device)
    base = our_backbone(name, arch, weights, device)
    reference = timm_forward(timm_model(name, arch, base, size, False, device), x)[:, 1:]
    rows, timm_rate = [], None
    for variant in variants:
        print(f"  {name} {size} {variant} ...", file=sys.stderr, flush=True)
        forward = forward_of(variant, name, arch, size, base, weights, x, args.compile_mode)
        gaps = differences(forward(), reference)
        rate = images_per_second(forward, args.batch, args.iters, args.repeats, args.warmup, device)
        timm_rate = rate if variant == "timm" else timm_rate
        rows.append((name, size, variant, rate, rate / timm_rate if timm_rate else None, *gaps))
        del forward
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def print_table(rows: Sequence[tuple], device: torch.device, args: argparse.Namespace) -> None:
    print(
        f"\nBackbone forward throughput on {device_name(device)}: batch {args.batch}, median of {args.repeats} x {args.iters} forwards"
    )
    print(
        f"torch {torch.__version__}, timm {timm.__version__}; differences: patch tokens against timm eager (same weights)"
    )
    print(
        f"{'model':<16}{'size':>5}  {'variant':<15}{'images/s':>10}{'vs timm':>9}{'max abs diff':>14}{'max rel diff':>14}"
    )
    for name, size, variant, rate, speedup, gap, relative in rows:
        versus = "-" if speedup is None else f"{speedup:.2f}x"
        print(f"{name:<16}{size:>5}  {variant:<15}{rate:>10.1f}{versus:>9}{gap:>14.2e}{relative:>14.2e}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    elif problem := device_problem(args.device):
        parser.error(problem)
    if args.compile_mode not in COMPILE_MODES:
        parser.error(
            f"--compile-mode {args.compile_mode!r} is not a torch.compile mode: use one of {', '.join(COMPILE_MODES)}."
        )
    if args.quick:
        args.sizes, args.batch, args.iters, args.repeats, args.warmup = [28, 42], 2, 2, 2, 1
        args.models = args.models[:1]
    if args.variants is None:
        args.variants = [v for v in VARIANTS if not (args.quick and v in ("ours-compiled", "ours-graphs"))]
    if bad := [s for s in args.sizes if s % 14]:
        parser.error(f"--sizes {bad} are not multiples of the patch size 14: use e.g. 224 or 518.")
    return args


def main(argv: Sequence[str] | None = None) -> list[tuple]:
    """Run the benchmark, print the table, and return its rows."""
    args = parse_args(argv)
    device = torch.device(args.device)
    arch = TINY if args.quick else {}
    rows = []
    for model in args.models:
        for size in args.sizes:
            rows += bench_one(MODELS[model], arch, size, args, args.variants, device)
    print_table(rows, device, args)
    return rows


if __name__ == "__main__":
    main()
