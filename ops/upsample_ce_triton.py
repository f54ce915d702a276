"""The fused bilinear-upsample + cross-entropy as one Triton kernel (CUDA); `ops.losses` decides when it runs.

Each program owns `ROWS` output rows by `COLS` output columns of one image. An output row blends two source rows
(`y0`, `y1`); blending them first leaves a row of source logits `(BLOCK_K, NJ)` whose columns the tile reads
(NJ: the tile's column span, 16 at most when upsampling by 8 or more), so the tile row's logits are one small
matrix product with the column weights `(NJ, COLS)`. A first pass over the classes gets each pixel's
log-sum-exp (online, as flash attention does) and the loss; a second pass forms softmax minus one-hot, pulls it
back through the column weights with the transposed product, and accumulates it per source row `(NI, NJ,
BLOCK_K)` over the tile's rows before one atomic add to the gradient (neighbouring tiles share source rows and
columns). Nothing of size `(B, K, H, W)` exists; the scratch is one float per output pixel (the log-sum-exp).

Why rows and not square tiles: a product reducing over a square tile's pixels needs the whole weight matrix in
every warp's registers (ptxas on sm_90 reported 255 registers and kilobytes of spills); reducing over one row's
columns keeps each operand small, and the rows are summed in registers.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from torch import Tensor

from ops.upsample_ce_torch import bilinear_taps, upsample_cross_entropy_torch

DEFAULT_TILE = (16, 64, 32, 4)
"""(ROWS, COLS, BLOCK_K, num_warps): the largest tile that ptxas (sm_90) fits in 250 registers without spills.
Not timed on a GPU yet; `bench/probe_step.py --tiles` times the alternatives."""
MAX_WINDOW = (8, 32)
"""Largest source spans (rows, columns) one tile may read; more (strong downsampling) goes to the PyTorch path."""


@triton.jit
def _source_index(index, scale, size_in):
    """Source index `i0` and weight of `i0 + 1` for output `index`, as F.interpolate(align_corners=False)."""
    source = tl.maximum((index.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
    first = tl.minimum(source.to(tl.int32), size_in - 1)
    return first, source - first.to(tl.float32)


@triton.jit
def _row_logits(source, mask, y, scale_y, height_in, width_in, weight_x_t, PRECISION: tl.constexpr):
    """Logits `(BLOCK_K, COLS)` of output row `y`: its two source rows blended, then spread over the columns.

    Also returns the source rows `y0`, `y1` and the weight of `y1`.
    """
    y0, wy1 = _source_index(y, scale_y, height_in)
    y1 = tl.minimum(y0 + 1, height_in - 1)
    upper = tl.load(source + y0 * width_in, mask=mask, other=0.0).to(tl.float32)
    lower = tl.load(source + y1 * width_in, mask=mask, other=0.0).to(tl.float32)
    return tl.dot((1.0 - wy1) * upper + wy1 * lower, weight_x_t, input_precision=PRECISION), y0, y1, wy1


@triton.jit
def _upsample_ce_kernel(
    logits_ptr,
    labels_ptr,
    grad_ptr,
    log_norm_ptr,
    partial_ptr,
    num_classes,
    height_in,
    width_in,
    height,
    width,
    scale_y,
    scale_x,
    ignore_index,
    tiles_y,
    tiles_x,
    NEED_GRAD: tl.constexpr,
    ROWS: tl.constexpr,
    COLS: tl.constexpr,
    NI: tl.constexpr,
    NJ: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    pid = tl.program_id(0)
    image = (pid // (tiles_y * tiles_x)).to(tl.int64)
    tile = pid % (tiles_y * tiles_x)
    top = (tile // tiles_x) * ROWS
    left = (tile % tiles_x) * COLS
    plane = height_in * width_in
    logits_ptr += image * num_classes * plane
    grad_ptr += image * num_classes * plane
    labels_ptr += image * height * width
    log_norm_ptr += image * height * width

    # Column weights of the tile, (COLS, NJ): output column x reads source columns col0 + slot.
    x = left + tl.arange(0, COLS)
    x_in = x < width
    x0, wx1 = _source_index(x, scale_x, width_in)
    x1 = tl.minimum(x0 + 1, width_in - 1)
    col0, _ = _source_index(left, scale_x, width_in)
    slot = tl.arange(0, NJ)
    weight_x = tl.where(slot[None, :] == (x0 - col0)[:, None], 1.0 - wx1[:, None], 0.0)
    weight_x += tl.where(slot[None, :] == (x1 - col0)[:, None], wx1[:, None], 0.0)
    weight_x = tl.where(x_in[:, None], weight_x, 0.0)
    weight_x_t = tl.trans(weight_x)
    cols = col0 + slot
    col_in = cols < width_in
    row0, _ = _source_index(top, scale_y, height_in)

    loss = tl.zeros([COLS], tl.float32)
    for r in range(ROWS):
        y = top + r
        inside = x_in & (y < height)
        labels = tl.load(labels_ptr + y * width + x, mask=inside, other=ignore_index).to(tl.int32)
        running_max = tl.full([COLS], float("-inf"), tl.float32)
        running_sum = tl.zeros([COLS], tl.float32)
        target_logit = tl.zeros([COLS], tl.float32)
        for k_start in range(0, num_classes, BLOCK_K):
            k = k_start + tl.arange(0, BLOCK_K)
            k_in = k < num_classes
            source = logits_ptr + k[:, None] * plane + cols[None, :]
            mask = k_in[:, None] & col_in[None, :]
            z, _, _, _ = _row_logits(source, mask, y, scale_y, height_in, width_in, weight_x_t, PRECISION)
            z = tl.where(k_in[:, None], z, float("-inf"))
            new_max = tl.maximum(running_max, tl.max(z, axis=0))
            running_sum = running_sum * tl.exp(running_max - new_max) + tl.sum(tl.exp(z - new_max[None, :]), axis=0)
            running_max = new_max
            target_logit += tl.sum(tl.where(k[:, None] == labels[None, :], z, 0.0), axis=0)
        log_norm = running_max + tl.log(running_sum)
        tl.store(log_norm_ptr + y * width + x, log_norm, mask=inside)
        loss += tl.where(inside & (labels != ignore_index), log_norm - target_logit, 0.0)
    tl.store(partial_ptr + pid, tl.sum(loss, axis=0))

    if NEED_GRAD:
        source_row = tl.arange(0, NI)
        rows_in = (row0 + source_row) < height_in
        for k_start in range(0, num_classes, BLOCK_K):
            k = k_start + tl.arange(0, BLOCK_K)
            k_in = k < num_classes
            source = logits_ptr + k[:, None] * plane + cols[None, :]
            mask = k_in[:, None] & col_in[None, :]
            grad_rows = tl.zeros([NI, NJ, BLOCK_K], tl.float32)
            for r in range(ROWS):
                y = top + r
                inside = x_in & (y < height)
                labels = tl.load(labels_ptr + y * width + x, mask=inside, other=ignore_index).to(tl.int32)
                log_norm = tl.load(log_norm_ptr + y * width + x, mask=inside, other=0.0)
                z, y0, y1, wy1 = _row_logits(source, mask, y, scale_y, height_in, width_in, weight_x_t, PRECISION)
                grad_z = tl.exp(z - log_norm[None, :]) - tl.where(k[:, None] == labels[None, :], 1.0, 0.0)
                valid = inside & (labels != ignore_index)
                grad_z = tl.where(k_in[:, None] & valid[None, :], grad_z, 0.0)
                # (NJ, BLOCK_K): the big operand (grad_z) is split across warps rather than copied into each.
                grad_row = tl.dot(weight_x_t, tl.trans(grad_z), input_precision=PRECISION)
                row_weight = tl.where(source_row == y0 - row0, 1.0 - wy1, 0.0)
                row_weight += tl.where(source_row == y1 - row0, wy1, 0.0)
                row_weight = tl.where(y < height, row_weight, 0.0)
                grad_rows += row_weight[:, None, None] * grad_row[None, :, :]
            target = grad_ptr + k[None, None, :] * plane + (row0 + source_row)[:, None, None] * width_in
            target += cols[None, :, None]
            tl.atomic_add(
                target,
                grad_rows,
                mask=rows_in[:, None, None] & tl.trans(mask)[None, :, :],
            )


@functools.lru_cache(maxsize=64)
def window_span(size_in: int, size_out: int, tile: int) -> int:
    """The most source indices one tile of `tile` output indices reads: `max(i1[last]) - i0[first] + 1`."""
    i0, i1, _, _ = bilinear_taps(size_in, size_out, torch.device("cpu"))
    starts = i0[::tile]
    ends = i1[torch.arange(tile - 1, size_out + tile - 1, tile).clamp(max=size_out - 1)]
    return int((ends - starts).max()) + 1


def upsample_cross_entropy_triton(
    logits: Tensor,
    labels: Tensor,
    ignore_index: int,
    need_grad: bool,
    tile: tuple[int, int, int, int] = DEFAULT_TILE,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The contract of `ops.upsample_ce_torch.upsample_cross_entropy_torch`: summed loss, float32 gradient, count."""
    rows, cols, block_k, num_warps = tile
    batch, classes, height_in, width_in = logits.shape
    height, width = labels.shape[-2:]
    span_y = triton.next_power_of_2(window_span(height_in, height, rows))
    span_x = max(16, triton.next_power_of_2(window_span(width_in, width, cols)))  # tl.dot: sizes of 16 or more
    if span_y > MAX_WINDOW[0] or span_x > MAX_WINDOW[1]:
        return upsample_cross_entropy_torch(logits, labels, ignore_index, need_grad)

    logits, labels = logits.detach().contiguous(), labels.contiguous()
    tiles_y, tiles_x = triton.cdiv(height, rows), triton.cdiv(width, cols)
    grid = (batch * tiles_y * tiles_x,)
    partial = torch.empty(grid[0], device=logits.device, dtype=torch.float32)
    grad = torch.zeros(logits.shape, device=logits.device, dtype=torch.float32) if need_grad else partial
    log_norm = torch.empty(labels.shape, device=logits.device, dtype=torch.float32)
    _upsample_ce_kernel[grid](
        logits,
        labels,
        grad,
        log_norm,
        partial,
        classes,
        height_in,
        width_in,
        height,
        width,
        height_in / height,
        width_in / width,
        ignore_index,
        tiles_y,
        tiles_x,
        NEED_GRAD=need_grad,
        ROWS=rows,
        COLS=cols,
        NI=span_y,
        NJ=span_x,
        BLOCK_K=block_k,
        PRECISION="tf32x3",
        num_warps=num_warps,
    )
    count = (labels != ignore_index).sum().float()
    return partial.sum(), grad if need_grad else None, count
