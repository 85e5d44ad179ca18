"""Temporal hard negatives: a clip played backwards (or shuffled) is not its caption's video.

Beyond the paper and off by default. The training step encodes the clips returned by
:func:`temporal_negatives` with the video tower and hands their embeddings to the loss
(``hard_video`` / ``hard_valid`` in :class:`~cpd.losses.MemoryBankNCELoss` and
:class:`~cpd.losses.InfoNCELoss`), where each scores as an extra negative for its OWN caption
only. A negative that equals its original clip — a still scene, a palindromic motion, a
one-frame clip — is marked invalid and ignored, so static content is never penalised.
"""

from __future__ import annotations

import torch

__all__ = ["as_hard_batch", "temporal_negatives"]


def temporal_negatives(
    clips: torch.Tensor,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    tolerance: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Time-reversed (and optionally frame-shuffled) copies of each clip, with a validity mask.

    Args:
        clips: ``[B, C, T, H, W]``.
        shuffle: also return a frame-shuffled copy (a random permutation per clip that is never
            the identity when ``T > 1``); needs ``generator``.
        generator: source of the permutations (seeded by the caller from (seed, epoch, step,
            rank)); its device may differ from ``clips``'.
        tolerance: a negative is invalid when the mean absolute difference between it and the
            original clip is at most this (in the clip's own units).

    Returns:
        ``neg_clips [B*M, C, T, H, W]``, sample-major (rows ``i*M .. i*M+M-1`` belong to clip
        ``i``: reversed first, then shuffled), and ``valid_mask [B, M]`` (bool), with ``M = 1``
        or ``2``.
    """
    if clips.dim() != 5:
        raise ValueError(f"clips must be [B, C, T, H, W], got shape {tuple(clips.shape)}")
    if shuffle and generator is None:
        raise ValueError("temporal_negatives(shuffle=True) needs an explicit generator")
    b, _, t = clips.shape[:3]
    negatives = [clips.flip(2)]
    if shuffle:
        perm = torch.rand(b, t, generator=generator, device=generator.device).argsort(dim=1)
        perm = perm.to(clips.device)
        identity = torch.arange(t, device=clips.device)
        # An identity permutation is no negative at all; rotating it by one frame always is.
        is_identity = (perm == identity).all(dim=1)
        perm[is_identity] = identity.roll(1)
        index = perm.view(b, 1, t, 1, 1).expand_as(clips)
        negatives.append(torch.gather(clips, 2, index))
    neg = torch.stack(negatives, dim=1)  # [B, M, C, T, H, W]
    diff = (neg.float() - clips.float().unsqueeze(1)).abs().flatten(2).mean(dim=2)
    valid = diff > tolerance
    return neg.flatten(0, 1), valid


def as_hard_batch(
    hard_video: torch.Tensor, hard_valid: torch.Tensor | None, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reshape hard-negative embeddings to ``[B, M, D]`` with a bool mask ``[B, M]``.

    ``hard_video`` is ``[B*M, D]`` (the order :func:`temporal_negatives` returns) or
    ``[B, M, D]``; ``hard_valid`` is ``[B, M]`` or None (all valid).
    """
    if hard_video.dim() == 2:
        if hard_video.shape[0] % max(batch, 1) != 0:
            raise ValueError(
                f"hard_video has {hard_video.shape[0]} rows, not a multiple of the batch {batch}"
            )
        hard_video = hard_video.view(batch, -1, hard_video.shape[1])
    if hard_video.dim() != 3 or hard_video.shape[0] != batch:
        raise ValueError(
            f"hard_video must be [B*M, D] or [B, M, D] with B={batch}, got "
            f"{tuple(hard_video.shape)}"
        )
    if hard_valid is None:
        hard_valid = torch.ones(hard_video.shape[:2], dtype=torch.bool, device=hard_video.device)
    if tuple(hard_valid.shape) != tuple(hard_video.shape[:2]):
        raise ValueError(
            f"hard_valid must be [B, M] = {tuple(hard_video.shape[:2])}, got "
            f"{tuple(hard_valid.shape)}"
        )
    return hard_video, hard_valid.to(device=hard_video.device, dtype=torch.bool)
