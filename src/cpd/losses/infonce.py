"""Symmetric in-batch InfoNCE (CLIP-style) with a learnable temperature.

An alternative to the memory-bank NCE: no per-sample state, so memory does not grow with the
dataset. Embeddings from all ranks are gathered with :func:`cpd.dist.all_gather_with_grad` and
every rank computes the same loss over the global batch. The gather's backward sums the
gradients of all ranks, so after DDP averages parameter gradients they equal those of one
process holding the concatenated batch (see :mod:`cpd.dist`).

The temperature is a trainable parameter of this module (or a fixed buffer with
``learn_temperature=False``), which lives outside the DDP-wrapped model: the training engine
must add ``loss_fn.parameters()`` to its optimizer. Its gradient is
already identical on every rank (each rank computes the full loss), so it needs no averaging.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cpd import dist
from cpd.losses.hard_negatives import as_hard_batch

__all__ = ["InfoNCELoss"]


class InfoNCELoss(nn.Module):
    """Cross-entropy over video→text and text→video similarity logits of the global batch.

    Args:
        init_temperature: starting temperature (CLIP: 0.07).
        learn_temperature: train ``log(1/T)`` (CLIP) or keep ``T`` fixed (as the paper's NCE).
        max_logit_scale: upper clamp of ``1/T`` (CLIP: 100); the lower clamp is 1 (T <= 1).
        world_size: None → the process group's size (1 when none); 1 → local batch only (no
            gather even under a process group); any other value must equal the group's size.
        group: process group (default group if None).

    ``logit_scale`` holds ``log(1/T)``. Its stored value is clamped to
    ``[0, log(max_logit_scale)]`` at the start of every forward pass, which is CLIP's clamp after
    each optimizer step without a hook in the training loop. Clamping only the value used would
    give the same logits but no gradient once the parameter has left the range, and a
    temperature pushed to 1 early (a loss above chance at initialisation does that under SGD)
    would then stay there for good.
    """

    def __init__(
        self,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        *,
        learn_temperature: bool = True,
        world_size: int | None = None,
        group: Any = None,
    ) -> None:
        super().__init__()
        if not 0 < init_temperature <= 1:
            raise ValueError(f"init_temperature must be in (0, 1], got {init_temperature}")
        value = torch.tensor(math.log(1.0 / init_temperature))
        if learn_temperature:
            self.logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("logit_scale", value)
        self.max_log_scale = math.log(max_logit_scale)
        self.world_size = world_size
        self.group = group

    @property
    def temperature(self) -> float:
        """The current (clamped) temperature ``T``."""
        return float(1.0 / self.logit_scale.detach().clamp(0.0, self.max_log_scale).exp())

    def _scale(self) -> torch.Tensor:
        return self.logit_scale.exp()

    def _world(self) -> int:
        actual = dist.get_world_size(self.group)
        if self.world_size is None:
            return actual
        if self.world_size not in (1, actual):
            raise ValueError(
                f"InfoNCELoss(world_size={self.world_size}) but the process group has {actual}"
            )
        return self.world_size

    def _gather(self, x: torch.Tensor) -> torch.Tensor:
        return x if self._world() == 1 else dist.all_gather_with_grad(x, self.group)

    def forward(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        *,
        hard_video: torch.Tensor | None = None,
        hard_valid: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss of the global batch (identical on every rank).

        Args:
            video, text: local ``[B, D]`` L2-normalised embeddings; row i of both is a pair.
            hard_video: temporal negatives ``[B*M, D]`` or ``[B, M, D]``: extra columns in the
                text→video logits of their own caption only.
            hard_valid: ``[B, M]`` bool; invalid negatives are masked out (logit −inf).

        Returns:
            ``video_to_text``, ``text_to_video`` (mean cross-entropies over the global batch) and
            ``loss`` = their mean.
        """
        if video.dim() != 2 or video.shape != text.shape:
            raise ValueError(
                f"video and text must be [B, D] of one shape, got {tuple(video.shape)} and "
                f"{tuple(text.shape)}"
            )
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, self.max_log_scale)
        all_v = self._gather(video.float())
        all_t = self._gather(text.float())
        scale = self._scale()
        logits_vt = scale * all_v @ all_t.T  # row i: video i against every caption
        target = torch.arange(all_v.shape[0], device=all_v.device)
        logits_tv = logits_vt.T
        if hard_video is not None:
            hard, valid = as_hard_batch(hard_video, hard_valid, video.shape[0])
            all_h = self._gather(hard.float().flatten(0, 1)).view(-1, hard.shape[1], hard.shape[2])
            all_valid = self._gather_mask(valid)
            extra = scale * (all_h * all_t.unsqueeze(1)).sum(dim=2)  # [Bg, M]: own caption only
            extra = extra.masked_fill(~all_valid, float("-inf"))
            logits_tv = torch.cat([logits_tv, extra], dim=1)
        v2t = F.cross_entropy(logits_vt, target)
        t2v = F.cross_entropy(logits_tv, target)
        return {"video_to_text": v2t, "text_to_video": t2v, "loss": (v2t + t2v) / 2}

    def _gather_mask(self, valid: torch.Tensor) -> torch.Tensor:
        if self._world() == 1:
            return valid
        return dist.all_gather_no_grad(valid.to(torch.uint8), self.group).bool()

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature:.4g}, max_logit_scale={math.exp(self.max_log_scale):g}"
        )
