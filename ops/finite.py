"""The one guard against non-finite training losses and gradients, shared by every trained head.

A NaN or inf loss, back-propagated, turns every weight it reaches into NaN, and Lightning would go on to save those
weights as `last.ckpt` and `best-*.ckpt` and test them. `check_loss` stops before the backward pass with one
paragraph naming the step, which input was not finite (the likely cause) and the fix; `probes.guard.NonFiniteGuard`
calls it for every probe trained by Lightning, and `ops.linear_classifiers.train_grid` for the linear-probe grid.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from utils.errors import UserError, option


class NonFiniteLossError(UserError):
    """The training loss (or its gradient) is NaN or inf: stopped before any weight was changed by it."""


def _tensors(value: Any) -> Iterable[Tensor]:
    """Every floating-point tensor in a tensor, or a (nested) mapping, list or tuple of them."""
    if isinstance(value, Tensor):
        if value.is_floating_point():
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _tensors(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _tensors(item)


def nonfinite_inputs(inputs: Mapping[str, Any]) -> list[str]:
    """The names of `inputs` (tensors or nested containers of them) that hold a NaN or inf."""
    return [name for name, value in inputs.items() if any(not t.isfinite().all() for t in _tensors(value))]


def is_finite(value: Tensor) -> bool:
    """Whether every element of `value` is finite (one host sync)."""
    return bool(value.isfinite().all())


def loss_error(
    what: str, value: float, where: str, inputs: Mapping[str, Any], causes: Mapping[str, str], skip_option: bool
) -> NonFiniteLossError:
    """The error for a non-finite `what` ("loss", "gradient") at `where` ("step 12 (batch 3 of epoch 0)").

    `causes` says, per input name, why that input would not be finite and how to fix it; the inputs found non-finite
    pick the message's cause, and with none of them the loss itself diverged (fixed as `causes["diverged"]` says,
    by default with a lower `head.lr`).
    """
    bad = nonfinite_inputs(inputs)
    if bad:
        found = "; ".join(
            f"the {name} hold NaN or inf: {causes.get(name, 'check where they come from')}" for name in bad
        )
        cause = f"Likely cause: {found}."
    else:
        fix = causes.get("diverged") or (
            f"lower the learning rate ({option('head', 'lr')}), keep gradient clipping "
            f"({option('trainer', 'gradient_clip_val')}) or train in float32"
        )
        cause = f"Its inputs are finite, so the training itself diverged. Fix: {fix}."
    skip = (
        f" To skip such batches instead (counted in train/skipped_nonfinite), set {option('head', 'skip_nonfinite', True)}."
        if skip_option
        else ""
    )
    return NonFiniteLossError(
        f"The training {what} is {value} at {where}: stopped before it could change a weight, so no checkpoint holds "
        f"NaN weights. {cause}{skip}"
    )


def check_loss(loss: Tensor, where: str, inputs: Mapping[str, Any], causes: Mapping[str, str]) -> None:
    """Raise `NonFiniteLossError` (see `loss_error`) when `loss` is not finite; no skip option is offered."""
    if not is_finite(loss):
        raise loss_error("loss", float(loss.detach()), where, inputs, causes, skip_option=False)


def nonfinite_gradients(params: Iterable[torch.nn.Parameter]) -> bool:
    """Whether any gradient of `params` holds a NaN or inf (one host sync)."""
    grads = [p.grad for p in params if p.grad is not None]
    return bool(grads) and not bool(torch.stack([g.isfinite().all() for g in grads]).all())
