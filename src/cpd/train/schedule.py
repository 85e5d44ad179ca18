"""Learning-rate schedules and the text-encoder curriculum as pure functions of the epoch.

Nothing here holds state: a resumed run recomputes the same learning rate from (epoch, step),
and the curriculum does not depend on whether validation runs (the official code only advanced
both inside its validation branch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def step_lr(
    base_lr: float,
    epoch: float,
    milestones: Sequence[int],
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """Multi-step decay: ``base_lr * gamma ** (number of milestones <= epoch)``.

    ``epoch`` may be fractional (epoch + step / steps_per_epoch). An optional linear warmup
    ramps from ``base_lr / warmup_epochs``-ish to ``base_lr`` over the first epochs.
    """
    lr = base_lr * gamma ** sum(1 for m in milestones if epoch >= m)
    if warmup_epochs > 0 and epoch < warmup_epochs:
        lr *= (epoch + 1e-8) / warmup_epochs
    return lr


def cosine_lr(
    base_lr: float,
    epoch: float,
    total_epochs: float,
    warmup_epochs: float = 0.0,
    final_lr: float = 0.0,
) -> float:
    """Cosine decay from ``base_lr`` to ``final_lr`` over ``total_epochs`` after a linear warmup."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return base_lr * (epoch + 1e-8) / warmup_epochs
    span = max(total_epochs - warmup_epochs, 1e-8)
    progress = min(max((epoch - warmup_epochs) / span, 0.0), 1.0)
    return final_lr + 0.5 * (base_lr - final_lr) * (1.0 + math.cos(math.pi * progress))


def text_encoder_trainable(epoch: int, unfreeze_epoch: int | None) -> bool:
    """Stage II of the curriculum: the text encoder trains from ``unfreeze_epoch`` on.

    ``None`` (or a negative value) keeps it frozen for the whole run.
    """
    return unfreeze_epoch is not None and unfreeze_epoch >= 0 and epoch >= unfreeze_epoch
