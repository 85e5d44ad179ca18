"""CPD's cross-modal pair discrimination loss: NCE over two memory banks.

For a batch of video / text embeddings ``v, t`` (L2-normalised, ``[B, D]``) with sample
indices ``idx``, K noise indices per sample are drawn uniformly from ``[0, N)`` — one draw
shared by both banks — and the sample's own index goes in column 0. Then

* video side: ``P = exp(<text_bank[j], v> / T) / Z_v``
* text side:  ``P = exp(<video_bank[j], t> / T) / Z_t``

with ``Z`` fixed once, from the first batch, as ``mean(exp(score / T)) · N`` averaged over
ranks. With noise ``Pn = 1/N`` and ``m = K`` (``c = m·Pn``), each side contributes
``−log(P_0 / (P_0 + c))`` (``*_pos``) and ``−Σ_{j≥1} log(c / (P_j + c))`` (``*_neg``),
averaged over the batch; the loss is the sum of the four terms.

Both are evaluated as softplus of log-ratios, which is the same value without the official
code's ``1e-7`` epsilon and without overflow.

Memory update: by default :meth:`MemoryBankNCELoss.forward` ends by updating both banks, under
``no_grad`` with detached features, after the loss was computed from the old rows (the
official order). Pass ``update_memory=False`` and call :meth:`MemoryBankNCELoss.update_memory`
yourself to do it elsewhere (e.g. after the optimizer step); the result is the same because
the update uses only the detached features. Either way every rank must make the call: the
update all-gathers features and indices so that the banks stay identical on all ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cpd import dist
from cpd.errors import CheckpointError
from cpd.losses.hard_negatives import as_hard_batch
from cpd.losses.memory_bank import MemoryBank, sample_indices, seed_for

__all__ = ["MemoryBankNCELoss", "nce_terms"]


def nce_terms(log_p: torch.Tensor, log_noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample NCE terms from log-probabilities ``[B, 1 + K]`` (positive in column 0).

    ``log_noise = log(m·Pn) = log(K / N)``. Returns ``(pos [B], neg [B])`` with
    ``pos = −log(P_0/(P_0 + c))`` and ``neg = −Σ_j log(c/(P_j + c))``.
    """
    pos = F.softplus(log_noise - log_p[:, 0])
    neg = F.softplus(log_p[:, 1:] - log_noise).sum(dim=1)
    return pos, neg


class MemoryBankNCELoss(nn.Module):
    """Memory-bank NCE of CPD, with optional temporal hard negatives.

    Args:
        num_data: N, the training-set size (bank rows).
        dim: embedding size D.
        num_negatives: K noise samples per sample (the paper: 16384).
        temperature: T.
        momentum: bank momentum, ``row = normalize(m·row + (1 − m)·feature)``.
        bank_dtype: bank storage type (float32, float16, bfloat16); scores are fp32.
        seed: seeds the bank initialisation; must be the same on all ranks.
        group: process group for the Z average and the bank update (default group if None).
        dense_scores: score the whole bank in one matrix product where that moves less memory
            than gathering the sampled rows (see :meth:`MemoryBank.scores`); False always
            gathers, as the official code does.

    ``state_dict()`` holds ``video_bank.memory``, ``text_bank.memory``, ``z_video``, ``z_text``
    (``-1`` while Z is not set yet): everything needed to resume. The module has no parameters.
    """

    def __init__(
        self,
        num_data: int,
        dim: int = 256,
        *,
        num_negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
        bank_dtype: torch.dtype = torch.float32,
        seed: int = 0,
        group: Any = None,
        dense_scores: bool = True,
    ) -> None:
        super().__init__()
        if num_negatives < 1:
            raise ValueError(f"num_negatives must be >= 1, got {num_negatives}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.group = group
        self.dense_scores = dense_scores
        self.video_bank = MemoryBank(
            num_data,
            dim,
            generator=torch.Generator().manual_seed(seed_for(seed, 0)),
            dtype=bank_dtype,
        )
        self.text_bank = MemoryBank(
            num_data,
            dim,
            generator=torch.Generator().manual_seed(seed_for(seed, 1)),
            dtype=bank_dtype,
        )
        # Shape [1] and -1 for "not set", like the official buffers.
        self.register_buffer("z_video", torch.tensor([-1.0]))
        self.register_buffer("z_text", torch.tensor([-1.0]))
        self._z_ready = False  # cache of "z > 0", so steps after the first need no host sync
        self.register_load_state_dict_post_hook(_forget_z_cache)

    @property
    def num_data(self) -> int:
        """N, the number of bank rows."""
        return self.video_bank.num_data

    @property
    def z_is_set(self) -> bool:
        """Whether the normalising constants have been fixed (from a first batch or a load)."""
        return bool(self.z_video.item() > 0 and self.z_text.item() > 0)

    def forward(
        self,
        video: torch.Tensor,
        text: torch.Tensor,
        idx: torch.Tensor,
        *,
        generator: torch.Generator,
        hard_video: torch.Tensor | None = None,
        hard_valid: torch.Tensor | None = None,
        update_memory: bool = True,
    ) -> dict[str, torch.Tensor]:
        """The NCE loss for one local batch.

        Args:
            video, text: ``[B, D]`` L2-normalised embeddings (B = 1 works).
            idx: ``[B]`` int64 dataset indices of the pairs (bank rows), in ``[0, N)``.
            generator: draws the negatives; seed it per step, e.g.
                :func:`~cpd.losses.negative_generator` ``(seed, epoch, step, rank)``, so that a
                resumed run draws the same negatives.
            hard_video: embeddings of temporal negatives (``[B*M, D]`` or ``[B, M, D]``); each
                is an extra noise sample for its own caption, scored with ``Z_t``.
            hard_valid: ``[B, M]`` bool; invalid negatives contribute nothing.
            update_memory: update the banks at the end (see the module docstring).

        Returns:
            ``video_pos``, ``video_neg``, ``text_pos``, ``text_neg`` (, ``text_hard``) and their
            sum ``loss``; scalars, averaged over the local batch.
        """
        self._check_batch(video, text, idx)
        n, k, temp = self.num_data, self.num_negatives, self.temperature
        rows = sample_indices(idx, n, k, generator)  # [B, 1 + K]
        t = text.float()
        # scoring the whole bank keeps it for backward: only when the update comes later
        dense = self.dense_scores and not update_memory
        score_v = self.text_bank.scores(rows, video, allow_dense=dense) / temp
        score_t = self.video_bank.scores(rows, text, allow_dense=dense) / temp
        if not self._z_ready:
            if not self.z_is_set:
                self._set_z(score_v, score_t)
            # A non-finite first batch leaves Z unset (the loss is NaN and the step skipped);
            # the next batch tries again.
            self._z_ready = self.z_is_set
        log_p_v = score_v - torch.log(self.z_video)
        log_p_t = score_t - torch.log(self.z_text)
        log_noise = math.log(k) - math.log(n)
        v_pos, v_neg = nce_terms(log_p_v, log_noise)
        t_pos, t_neg = nce_terms(log_p_t, log_noise)
        terms = {
            "video_pos": v_pos.mean(),
            "video_neg": v_neg.mean(),
            "text_pos": t_pos.mean(),
            "text_neg": t_neg.mean(),
        }
        if hard_video is not None:
            hard, valid = as_hard_batch(hard_video, hard_valid, video.shape[0])
            score_h = (hard.float() * t.unsqueeze(1)).sum(dim=2) / temp  # [B, M]
            log_p_h = score_h - torch.log(self.z_text)
            per_neg = F.softplus(log_p_h - log_noise) * valid
            terms["text_hard"] = per_neg.sum(dim=1).mean()
        terms["loss"] = torch.stack(list(terms.values())).sum()
        if update_memory:
            self._update(video, text, idx)
        return terms

    @torch.no_grad()
    def update_memory(self, video: torch.Tensor, text: torch.Tensor, idx: torch.Tensor) -> None:
        """Momentum-update both banks with the features of all ranks (all-gathered).

        Collective: every rank must call it with its local batch. Duplicate indices in the
        gathered batch are averaged (see :meth:`MemoryBank.update`).
        """
        self._check_batch(video, text, idx)
        self._update(video, text, idx)

    @torch.no_grad()
    def _update(self, video: torch.Tensor, text: torch.Tensor, idx: torch.Tensor) -> None:
        all_idx = dist.all_gather_no_grad(idx, self.group)
        self.video_bank.update(all_idx, dist.all_gather_no_grad(video, self.group), self.momentum)
        self.text_bank.update(all_idx, dist.all_gather_no_grad(text, self.group), self.momentum)

    @torch.no_grad()
    def _set_z(self, score_v: torch.Tensor, score_t: torch.Tensor) -> None:
        # mean(exp(score)) via logsumexp in float64: exp(score) reaches ~1e8 at T = 0.07.
        def z_of(score: torch.Tensor) -> torch.Tensor:
            s = score.double().flatten()
            return torch.exp(torch.logsumexp(s, 0) - math.log(s.numel())) * self.num_data

        z = dist.all_reduce_mean(torch.stack([z_of(score_v), z_of(score_t)]), self.group)
        if not torch.isfinite(z).all():  # same verdict on every rank: z is the all-reduced mean
            return
        self.z_video.fill_(float(z[0]))
        self.z_text.fill_(float(z[1]))

    def _check_batch(self, video: torch.Tensor, text: torch.Tensor, idx: torch.Tensor) -> None:
        dim = self.video_bank.dim
        if video.dim() != 2 or video.shape != text.shape or video.shape[1] != dim:
            raise ValueError(
                f"video and text must both be [B, {dim}], got {tuple(video.shape)} and "
                f"{tuple(text.shape)}"
            )
        if idx.shape != (video.shape[0],) or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"idx must be integer [B={video.shape[0]}], got {tuple(idx.shape)} {idx.dtype}"
            )
        bad = (idx < 0) | (idx >= self.num_data)
        if bool(bad.any()):
            raise ValueError(
                f"sample indices out of range [0, {self.num_data}): {idx[bad][:5].tolist()}"
            )

    @classmethod
    def from_official(cls, checkpoint: Mapping[str, Any], **kwargs: Any) -> MemoryBankNCELoss:
        """Build the loss from an official CPD pretraining checkpoint's banks and Z.

        ``checkpoint`` is the loaded file (with a ``state_dict`` entry) or the state dict
        itself; keys may carry DDP's ``module.`` prefix. Uses ``vis_memory`` → video bank,
        ``text_memory`` → text bank, ``Z_v`` → ``z_video``, ``Z_t`` → ``z_text``. ``kwargs`` go to
        the constructor (``num_negatives``, ``temperature``, ``momentum``, ``bank_dtype``, ...);
        N and D come from the banks.

        Raises:
            CheckpointError: a key is missing or a tensor has the wrong shape.
        """
        state = checkpoint.get("state_dict", checkpoint)
        state = {k.removeprefix("module."): v for k, v in state.items()}
        for key in ("vis_memory", "text_memory", "Z_v", "Z_t"):
            if key not in state:
                raise CheckpointError(
                    f"official checkpoint has no key {key!r} (nor 'module.{key}')"
                )
        vis, txt = state["vis_memory"], state["text_memory"]
        if vis.dim() != 2 or vis.shape != txt.shape:
            raise CheckpointError(
                f"'vis_memory' {tuple(vis.shape)} and 'text_memory' {tuple(txt.shape)} must be "
                "two [N, D] banks of one shape"
            )
        for key in ("Z_v", "Z_t"):
            if state[key].numel() != 1:
                raise CheckpointError(
                    f"{key!r} must hold one value, got shape {tuple(state[key].shape)}"
                )
        loss = cls(vis.shape[0], vis.shape[1], **kwargs)
        with torch.no_grad():
            loss.video_bank.memory.copy_(vis)
            loss.text_bank.memory.copy_(txt)
            loss.z_video.fill_(float(state["Z_v"].reshape(())))
            loss.z_text.fill_(float(state["Z_t"].reshape(())))
        loss._z_ready = False
        return loss

    def extra_repr(self) -> str:
        return (
            f"num_negatives={self.num_negatives}, temperature={self.temperature}, "
            f"momentum={self.momentum}"
        )


def _forget_z_cache(module: nn.Module, incompatible_keys: Any) -> None:
    # A loaded state may carry a different Z (or none yet): look at the buffers again.
    module._z_ready = False
