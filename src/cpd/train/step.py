"""Optimizer steps: pretraining's and finetuning's, the guard both share, and the cache of
frozen text features pretraining uses in stage I.

Both steps run the forward and the loss, then :func:`guarded_update`: a NaN/Inf check agreed
by all ranks, backward, gradient clipping, optimizer step. A step whose loss is not finite on
any rank is skipped on every rank and leaves no trace (no update of weights, BatchNorm
statistics or memory banks).

The pretraining step, in order: text features (cached while the text encoder is frozen), video
forward, loss (outside the DDP-wrapped model), the guarded update, then the memory-bank update
with the detached features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cpd import dist
from cpd.train.amp import autocast_context


class TextFeatureCache:
    """Pooled features of a frozen text encoder, one row per caption index.

    A frozen encoder runs in eval mode (no dropout), so its pooled output for a caption cannot
    change: computing it once per caption and reusing it is exact, and it takes the text
    encoder out of every stage-I step after the first epoch. Clear it when the encoder unfreezes.
    Memory: ``N × hidden`` in ``dtype`` plus one flag byte per row (:attr:`nbytes`; 300k
    captions × 768 in fp16: 461 MB, 10M: 15.4 GB). The rows are allocated at the first call
    of :meth:`pooled`, uninitialised, so the operating system commits their pages as rows are
    filled: resident memory follows the captions seen, up to :attr:`nbytes`. Where that does
    not fit, do without a cache (``optim.cache_text_features=false``).
    """

    def __init__(self, num_data: int, hidden: int, dtype: torch.dtype = torch.float16) -> None:
        self.num_data, self.hidden, self.dtype = num_data, hidden, dtype
        self.features: torch.Tensor | None = None  # [N, hidden], allocated at first use
        self.filled = torch.zeros(num_data, dtype=torch.bool)

    @property
    def nbytes(self) -> int:
        """Bytes of a fully filled cache: the rows and their flags."""
        return self.num_data * (self.hidden * self.dtype.itemsize + 1)

    def clear(self) -> None:
        """Forget every cached row (after the text encoder changes)."""
        self.filled.zero_()

    @torch.no_grad()
    def pooled(
        self,
        text_encoder: nn.Module,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """Pooled features ``[B, hidden]`` (float32, on the ids' device), computing missing rows."""
        if self.features is None:
            # empty, not zeros: rows are read only once filled, and untouched pages cost nothing
            self.features = torch.empty(self.num_data, self.hidden, dtype=self.dtype)
        cpu_index = index.cpu()
        missing = ~self.filled[cpu_index]
        if missing.any():
            sel = missing.nonzero().squeeze(1)
            was_training = text_encoder.training
            text_encoder.eval()
            feats = text_encoder.encode_tokens(
                input_ids[sel.to(input_ids.device)], attention_mask[sel.to(input_ids.device)]
            )
            text_encoder.train(was_training)
            self.features[cpu_index[sel]] = feats.float().cpu().to(self.features.dtype)
            self.filled[cpu_index[sel]] = True
        return self.features[cpu_index].to(input_ids.device, torch.float32)


@dataclass
class StepResult:
    """What one step did: loss terms (floats), gradient norm, whether it clipped or was skipped."""

    terms: dict[str, float]
    grad_norm: float
    clipped: bool
    skipped: bool


def guarded_update(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    terms: dict[str, float],
    saved_buffers: list[torch.Tensor],
    *,
    scaler: torch.amp.GradScaler | None = None,
    clip_norm: float = 0.0,
) -> StepResult:
    """Finish a step whose forward and ``loss`` are done: skip it, or backward, clip, step.

    ``saved_buffers``: copies of ``model``'s buffers taken before the forward, put back when
    the step is skipped (BatchNorm updates its running statistics in the forward). ``terms``:
    the loss terms as floats, for the result. Collective under a process group.
    """
    # Every rank must agree to skip, or collectives in backward (and after) deadlock.
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    if dist.get_world_size() > 1:
        torch.distributed.all_reduce(bad)
    optimizer.zero_grad(set_to_none=True)
    if bad.item() > 0:
        with torch.no_grad():
            for buf, saved in zip(model.buffers(), saved_buffers, strict=True):
                buf.copy_(saved)
        return StepResult(terms, math.nan, False, True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    grad_norm = float(
        torch.nn.utils.clip_grad_norm_(params, clip_norm if clip_norm > 0 else math.inf)
    )
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return StepResult(terms, grad_norm, clip_norm > 0 and grad_norm > clip_norm, False)


def pretrain_step(
    model: nn.Module,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    *,
    generator: torch.Generator,
    text_cache: TextFeatureCache | None = None,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_norm: float = 0.0,
    hard_negatives: tuple[torch.Tensor, torch.Tensor] | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> StepResult:
    """One optimizer step of CPD pretraining on ``batch`` (tensors already on the device).

    ``model`` may be DDP-wrapped; ``model.module`` (or ``model``) must be a CPDModel.
    ``text_cache`` given: the text encoder is frozen and its pooled features come from the cache.
    ``hard_negatives``: ``(clips [B*M,3,T,H,W], valid [B,M])`` from ``temporal_negatives``.
    """
    core = model.module if hasattr(model, "module") else model
    video = batch["video"].contiguous(memory_format=memory_format)
    index = batch["index"]
    device = video.device
    batch_size = video.shape[0]
    if hard_negatives is not None:
        # One video forward for clips and their temporal negatives (one BN batch, as in eval).
        video = torch.cat([video, hard_negatives[0].contiguous(memory_format=memory_format)])
    # A skipped step must leave no trace: BatchNorm running statistics are updated in forward,
    # so keep a copy of the (small) buffers to put back if the loss turns out non-finite.
    saved_buffers = [b.detach().clone() for b in core.buffers()]
    with autocast_context(device, amp_dtype):
        pooled = None
        if text_cache is not None:
            pooled = text_cache.pooled(
                core.textual_encoder, batch["input_ids"], batch["attention_mask"], index
            )
        # Through the (possibly DDP) wrapper, so that DDP sees the forward.
        v, t = model(video, batch["input_ids"], batch["attention_mask"], text_pooled=pooled)
        hard_video = v[batch_size:] if hard_negatives is not None else None
        hard_valid = hard_negatives[1] if hard_negatives is not None else None
        v = v[:batch_size]
        terms = loss_fn(
            v.float(),
            t.float(),
            index,
            generator=generator,
            hard_video=hard_video,
            hard_valid=hard_valid,
            update_memory=False,
        )
    values = {k: float(x.detach()) for k, x in terms.items()}
    result = guarded_update(core, optimizer, terms["loss"], values, saved_buffers,
                            scaler=scaler, clip_norm=clip_norm)  # fmt: skip
    if not result.skipped:
        loss_fn.update_memory(v.detach().float(), t.detach().float(), index)
    return result


def finetune_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: dict[str, torch.Tensor],
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    clip_norm: float = 0.0,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> tuple[StepResult, float]:
    """One cross-entropy step of a classifier on ``batch`` (on the device); returns the
    result and the number of clips it classified correctly. ``model`` may be DDP-wrapped."""
    core = model.module if hasattr(model, "module") else model
    video = batch["video"].contiguous(memory_format=memory_format)
    saved_buffers = [b.detach().clone() for b in core.buffers()]
    with autocast_context(video.device, amp_dtype):
        logits = model(video)
    loss = F.cross_entropy(logits.float(), batch["label"])
    correct = float((logits.argmax(1) == batch["label"]).sum())
    result = guarded_update(core, optimizer, loss, {"loss": float(loss.detach())}, saved_buffers,
                            scaler=scaler, clip_norm=clip_norm)  # fmt: skip
    return result, correct
