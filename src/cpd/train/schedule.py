"""Learning-rate schedules and the text-encoder curriculum as pure functions of the epoch.

Nothing here holds state: a resumed run recomputes the same learning rate from (epoch, step),
and the curriculum does not depend on whether validation runs (the official code only advanced
both inside its validation branch).

Epochs are 0-based here: epoch ``e`` is the official code's epoch ``e + 1``. The official
``adjuest_learning_rate(optimizer, i, opt)`` runs after its epoch ``i`` (1-based), so its decay
"at epoch m" first applies to its epoch ``m + 1``, which is our epoch ``m``: the milestones keep
their official numbers ([100, 201, 250]).
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


def text_step_lr(
    base_lr: float,
    epoch: float,
    milestones: Sequence[int],
    unfreeze_epoch: int | None,
    gamma: float = 0.1,
    warmup_epochs: float = 0.0,
) -> float:
    """The text encoder's multi-step lr, by the official rule.

    The official code keeps the text encoder's lr at 0 in stage I, then (``main.py``,
    ``adjuest_learning_rate``) *sets* it to ``lr_bert * 0.1`` as an absolute value after its
    epoch ``ft_bert_ep - 1`` and multiplies it by 0.1 at each later milestone. It applies the
    milestone of that same call after setting the lr, so the milestones that reach the text
    encoder are those ``>= unfreeze_epoch - 1`` (the official code switches the lr on one epoch
    before the encoder gets gradients, at ``epoch > ft_bert_ep``); decays before that are never
    seen. The paper's run (unfreeze 150, milestones [100, 201, 250]): ``base_lr`` = 3e-5 from
    epoch 150, 3e-6 from 201, 3e-7 from 250.

    A linear warmup (``warmup_epochs``; none in the official recipe) ramps this lr as it ramps
    the main one, should the encoder unfreeze before the warmup ends. ``unfreeze_epoch`` None
    or negative: every milestone counts (the lr is then unused: the encoder never trains).
    """
    start = 0 if unfreeze_epoch is None or unfreeze_epoch < 0 else unfreeze_epoch
    later = [m for m in milestones if m >= start - 1]
    return step_lr(base_lr, epoch, later, gamma, warmup_epochs)


def text_cosine_lr(
    base_lr: float,
    epoch: float,
    total_epochs: float,
    unfreeze_epoch: int | None,
    warmup_epochs: float = 0.0,
    final_lr: float = 0.0,
) -> float:
    """The text encoder's cosine lr: the official rule carried over to a cosine schedule.

    As with steps, the encoder starts at ``base_lr`` when it unfreezes and takes only the decay
    that comes after: it rides the rest of the main lr's cosine curve, rescaled to run from
    ``base_lr`` at ``unfreeze_epoch`` down to ``final_lr * base_lr`` at ``total_epochs``:
    ``base_lr * (final + (1 - final) * (c(epoch) - final) / (c(ref) - final))`` with ``c`` the
    main cosine factor and ``ref = max(unfreeze_epoch, warmup_epochs)``. Before the warmup ends
    it is the warmup ramp (``base_lr * epoch / warmup_epochs``), as for the main lr.
    """
    start = 0 if unfreeze_epoch is None or unfreeze_epoch < 0 else unfreeze_epoch
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return cosine_lr(base_lr, epoch, total_epochs, warmup_epochs, final_lr)
    ref = cosine_lr(1.0, max(float(start), warmup_epochs), total_epochs, warmup_epochs, final_lr)
    now = cosine_lr(1.0, epoch, total_epochs, warmup_epochs, final_lr)
    span = ref - final_lr
    if span <= 1e-12:  # unfreezes at (or after) the end: nothing left to decay
        return base_lr * final_lr
    return base_lr * (final_lr + (1.0 - final_lr) * min((now - final_lr) / span, 1.0))
