"""Learning-rate schedule: linear warm-up, then cosine decay to zero."""

from __future__ import annotations

import math

import torch


def warmup_cosine(opt: torch.optim.Optimizer, total_steps: int, warmup_share: float = 0.05
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """Each group's learning rate rises linearly over the first ``warmup_share`` of ``total_steps``, then follows
    half a cosine down to 0 at ``total_steps``."""
    total = max(1, total_steps)
    warmup = max(1, int(total * warmup_share))

    def factor(step: int) -> float:
        return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / total)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
