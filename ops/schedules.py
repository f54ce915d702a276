"""Learning-rate schedules of the official DINOv2 probes, as `LambdaLR` factors."""

from __future__ import annotations


def warmup_poly(step: int, warmup_steps: int, max_steps: int, power: float = 1.0, warmup_ratio: float = 1e-6) -> float:
    """LR factor at `step`: mmcv's `poly` policy with `warmup='linear'`.

    Poly decay `(1 - step / max_steps) ** power` down to 0 at `max_steps`; during the first
    `warmup_steps` it is scaled by a linear ramp from `warmup_ratio` to 1 (as mmcv does, so the
    factor at `warmup_steps` is the poly value there, just under 1).
    """
    factor = (1 - min(step, max_steps) / max_steps) ** power
    if step < warmup_steps:
        factor *= 1 - (1 - step / warmup_steps) * (1 - warmup_ratio)
    return factor
