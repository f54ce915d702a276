"""Time the official "lin." ADE20k training step with the naive and the fused upsample + cross-entropy.

    python -m bench.probe_step            # official sizes on CUDA (batch 16, 150 classes, 512 crops, ViT-S/14)
    python -m bench.probe_step --quick    # small sizes, any device: a smoke run
    python -m bench.probe_step --tiles    # also time the Triton kernel's tile shapes

Table 1, the loss alone (forward + backward): median time, peak memory, and the relative error of value and
gradient against float64 interpolate + cross-entropy on the same logits.
Table 2, the whole step (BatchNorm + 1x1 conv head, loss, backward, AdamW), with the frozen backbone recomputed
or its features already on the device (a feature cache), and the official 40k-step schedule at that rate.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from functools import partial

from utils.argtypes import positive_int


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=positive_int, default=16)
    parser.add_argument("--classes", type=positive_int, default=150)
    parser.add_argument("--size", type=positive_int, default=512)
    parser.add_argument("--model", default="dinov2_vits14")
    parser.add_argument("--repeats", type=positive_int, default=10)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="batch 2, 21 classes, 112 px: a smoke run on any device",
    )
    parser.add_argument(
        "--tiles",
        action="store_true",
        help="time the Triton kernel's tile shapes too (CUDA)",
    )
    parser.add_argument("--no-step", action="store_true", help="only the loss table")
    return parser


if __name__ == "__main__":
    build_parser().parse_args()  # --help and option errors answer here, before torch is imported

import torch
import torch.nn.functional as F
from torch import Tensor

from heads.linear_seg import LinearSegHead
from ops.losses import upsample_cross_entropy, use_triton

SCHEDULE_STEPS = 40_000
TILES = [
    (16, 64, 32, 4),
    (8, 64, 32, 4),
    (16, 64, 16, 4),
    (16, 128, 32, 8),
    (32, 64, 32, 4),
    (16, 32, 32, 4),
]


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after warm-up (CUDA: triton's event timer, L2 flushed between calls)."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=100, rep=max(200, 20 * repeats), return_mode="median"))
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def peak_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak device memory of one fn() call above what was allocated before it, in MiB (None on the CPU)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def naive_loss(logits: Tensor, labels: Tensor) -> Tensor:
    up = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(up, labels, ignore_index=255)


def fused_loss(backend: str) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda logits, labels: upsample_cross_entropy(logits, labels, 255, backend=backend)


def random_batch(args: argparse.Namespace, device: torch.device) -> tuple[Tensor, Tensor]:
    generator = torch.Generator(device).manual_seed(0)
    labels = torch.randint(
        0,
        args.classes,
        (args.batch, args.size, args.size),
        device=device,
        generator=generator,
    )
    labels[torch.rand(labels.shape, device=device, generator=generator) < 0.1] = 255
    grid = -(-args.size // 14)
    logits = 3 * torch.randn(args.batch, args.classes, grid, grid, device=device, generator=generator)
    return logits, labels


def forward_backward(loss_fn: Callable, leaf: Tensor, labels: Tensor) -> None:
    leaf.grad = None
    loss_fn(leaf, labels).backward()


def relative_error(a: Tensor, b: Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def loss_table(args: argparse.Namespace, device: torch.device, losses: dict[str, Callable]) -> None:
    logits32, labels = random_batch(args, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    logits = logits32.to(dtype)
    reference = logits.double().requires_grad_()
    naive_loss(reference, labels).backward()
    reference_value = naive_loss(reference.detach(), labels)
    print(f"\nLoss forward + backward: logits {tuple(logits.shape)} {str(dtype)[6:]}, labels {tuple(labels.shape)}")
    print(f"{'loss':<14}{'ms':>9}{'peak MiB':>10}{'value err':>11}{'grad err':>10}")
    for name, loss_fn in losses.items():
        leaf = logits.detach().requires_grad_()
        run = partial(forward_backward, loss_fn, leaf, labels)
        run()
        value_err = relative_error(loss_fn(leaf.detach(), labels).detach().view(1), reference_value.view(1))
        grad_err = relative_error(leaf.grad.float(), reference.grad)
        ms, peak = median_ms(run, device, args.repeats), peak_mib(run, device)
        print(f"{name:<14}{ms:>9.2f}{'-' if peak is None else f'{peak:.0f}':>10}{value_err:>11.1e}{grad_err:>10.1e}")


def step_table(args: argparse.Namespace, device: torch.device, losses: dict[str, Callable]) -> None:
    from backbones import load_backbone

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = load_backbone(args.model, random_fallback=True).to(device)
    _, labels = random_batch(args, device)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device)
    with torch.no_grad():
        cached = backbone.get_intermediate_layers(images, n=1, reshape=True, norm=True)
    head = LinearSegHead(backbone.embed_dim, args.classes).to(device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-3, weight_decay=1e-4)

    def step(loss_fn: Callable, recompute: bool) -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            features = backbone.get_intermediate_layers(images, n=1, reshape=True, norm=True) if recompute else cached
            loss = loss_fn(head(features), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print(
        f"\n'lin.' training step: {args.model}, batch {args.batch}, {args.classes} classes, {args.size}x{args.size} crops"
    )
    print(f"{'loss':<14}{'features':<11}{'ms/step':>9}{'speed-up':>10}{'peak MiB':>10}{'40k steps':>11}")
    baseline = None
    for recompute in (True, False):
        for name, loss_fn in losses.items():
            run = partial(step, loss_fn, recompute)
            ms, peak = median_ms(run, device, args.repeats), peak_mib(run, device)
            baseline = baseline or ms
            minutes = ms * SCHEDULE_STEPS / 60_000
            print(
                f"{name:<14}{'recomputed' if recompute else 'cached':<11}{ms:>9.2f}{baseline / ms:>9.1f}x"
                f"{'-' if peak is None else f'{peak:.0f}':>10}{minutes:>9.1f} min"
            )


def tile_table(args: argparse.Namespace, device: torch.device) -> None:
    from ops.upsample_ce_triton import upsample_cross_entropy_triton

    logits, labels = random_batch(args, device)
    logits = logits.bfloat16()
    print("\nTriton tile shapes (ROWS, COLS, BLOCK_K, warps), loss + gradient:")
    for tile in TILES:
        run = partial(upsample_cross_entropy_triton, logits, labels, 255, True, tile=tile)
        print(f"{tile!s:<20}{median_ms(run, device, args.repeats):>9.3f} ms")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.batch, args.classes, args.size, args.repeats = 2, 21, 112, 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    losses = {"naive": naive_loss, "fused (torch)": fused_loss("torch")}
    if use_triton(torch.empty(0, device=device)):
        losses["fused (triton)"] = fused_loss("triton")
    print(f"Device: {device_name(device)}; torch {torch.__version__}")
    loss_table(args, device, losses)
    if not args.no_step:
        step_table(args, device, losses)
    if args.tiles and "fused (triton)" in losses:
        tile_table(args, device)


if __name__ == "__main__":
    main()
