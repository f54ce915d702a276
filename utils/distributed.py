"""What the loops share under several processes (Lightning DDP): gathering Python objects, sums of counts, one result
computed on rank 0 and sent to the others, and BatchNorm synchronised across processes on the CPU too.

Every function here is a collective: under DDP every process must call it, in the same order. Outside DDP (one
process, or torch.distributed not initialised) each one is the plain single-process answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

T = TypeVar("T")


def world_size() -> int:
    """The number of processes of the running DDP job; 1 outside one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank; 0 outside DDP."""
    return dist.get_rank() if world_size() > 1 else 0


def all_gather(value: T) -> list[T]:
    """Every process's `value` (picklable), in rank order, on every process; `[value]` in one process."""
    if world_size() == 1:
        return [value]
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, value)
    return everyone


def gather_to_zero(value: T) -> list[T] | None:
    """Every process's `value`, in rank order, on rank 0; None on the other ranks."""
    if world_size() == 1:
        return [value]
    everyone: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(value, everyone, dst=0)
    return everyone


def from_rank_zero(compute: Callable[[], T]) -> T:
    """`compute()` run on rank 0 only (its files written and lines printed once), its result sent to every rank."""
    if world_size() == 1:
        return compute()
    sent: list[Any] = [compute() if rank() == 0 else None]
    dist.broadcast_object_list(sent, src=0)
    return sent[0]


def summed(counts: Mapping[str, float]) -> dict[str, float]:
    """`counts` added over the processes, key by key (a key missing on a process counts 0), in rank order."""
    total: dict[str, float] = {}
    for part in all_gather(dict(counts)):
        for key, value in part.items():
            total[key] = total.get(key, 0) + value
    return total


class _SumOverProcesses(torch.autograd.Function):
    """The sum of a tensor over the processes, differentiable: each process's gradient is the sum of every process's
    (each used the sum). torch.distributed.nn.functional.all_reduce does this but is deprecated, and its suggested
    replacement (torch.distributed._functional_collectives) is a private module."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


def sum_over_processes(tensor: Tensor) -> Tensor:
    """`tensor` summed over the processes, with autograd (each process's gradient is the sum of every process's);
    `tensor` itself in one process."""
    return _SumOverProcesses.apply(tensor) if world_size() > 1 else tensor


class ProcessSyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch over every process, on any device.

    torch's SyncBatchNorm runs on GPUs only (DDP refuses it on the CPU: "SyncBatchNorm layers only work with GPU
    modules"), so `trainer=ddp` on the CPU (gloo) uses this one: the per-channel sums are all-reduced (with autograd),
    first for the mean, then the squared deviations from it (the two-pass variance, in float64), so that B images
    split over P processes are normalised as one batch of B. Outside training, or in one process, it is the plain
    BatchNorm. Parameter and buffer names are BatchNorm's. Input `(N, C, ...)`, output the same shape and dtype.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and world_size() > 1):
            return super().forward(x)
        all_reduce = sum_over_processes
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        wide = x.double()
        sums = all_reduce(torch.cat([wide.sum(dims), wide.new_tensor([x.numel() // x.shape[1]])]))
        count, mean = sums[-1], sums[:-1] / sums[-1]
        variance = all_reduce(((wide - mean.view(shape)) ** 2).sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                unbiased = variance * count / (count - 1).clamp(min=1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        y = (wide - mean.view(shape)) * torch.rsqrt(variance.view(shape) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _swap_batchnorms(module: nn.Module, make: Callable[[_BatchNorm], _BatchNorm], kinds: tuple[type, ...]) -> nn.Module:
    """`module` with every submodule of a type in `kinds` replaced by `make(it)`, sharing its parameters and
    buffers."""
    if type(module) in kinds:
        new = make(module)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, _swap_batchnorms(child, make, kinds))
    return module


PLAIN_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class SyncBatchNormEverywhere(TorchSyncBatchNorm):
    """Lightning's `sync_batchnorm=True` plugin, on the CPU as well: torch's SyncBatchNorm on GPUs, the
    `ProcessSyncBatchNorm` above on the CPU (where torch refuses its own). Give it as `Trainer(plugins=[...])`."""

    def apply(self, model: nn.Module) -> nn.Module:
        trainer = getattr(model, "_trainer", None)
        if trainer is None or trainer.strategy.root_device.type != "cpu":
            return super().apply(model)

        def make(bn: _BatchNorm) -> _BatchNorm:
            synced = ProcessSyncBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
            synced.plain_type = type(bn)
            return synced

        return _swap_batchnorms(model, make, PLAIN_BATCHNORMS)

    def revert(self, model: nn.Module) -> nn.Module:
        def make(bn: _BatchNorm) -> _BatchNorm:
            return bn.plain_type(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)

        return super().revert(_swap_batchnorms(model, make, (ProcessSyncBatchNorm,)))
