"""A memory bank: an ``N x D`` table holding a slowly updated embedding per training sample.

Memory is O(N·D): N = 300k samples, D = 256, fp32 → 300_000·256·4 B = 307 MB per bank (CPD
keeps two). ``dtype=torch.float16`` or ``torch.bfloat16`` halves that; rows are always
converted to fp32 before scores or updates are computed, and only the stored copy is rounded.
Nothing else of size N is allocated: the initial values are drawn in fp32 in chunks of
:data:`INIT_CHUNK_ELEMENTS` and rounded chunk by chunk, and a step gathers the ``B·(1 + K)``
sampled rows (the whole-bank scoring of :meth:`MemoryBank.scores`, which makes an fp32 copy of
a 16-bit bank, runs only where ``N < B·(1 + K)``, i.e. where that copy is the smaller one).

The bank is a buffer (it is in ``state_dict()``, so checkpoints carry it) and never receives
gradients. It lives in the loss module, outside the DDP-wrapped model, so DDP does not
broadcast it every step (a defect of the official code).
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INIT_CHUNK_ELEMENTS",
    "MemoryBank",
    "bank_init_bound",
    "negative_generator",
    "sample_indices",
    "seed_for",
]

#: Values drawn per chunk at bank initialisation (64 MiB of fp32): a 16-bit bank never holds
#: an fp32 copy of itself, which at N = 10M rows of 256 would be 10.2 GB per bank.
INIT_CHUNK_ELEMENTS = 1 << 24


def bank_init_bound(dim: int) -> float:
    """Half-width ``s = 1/sqrt(D/3)`` of the uniform initialisation (rows have E|row|² = 1).

    The rows are *not* normalised at initialisation — as in the official code.
    """
    return 1.0 / math.sqrt(dim / 3)


def seed_for(*parts: int) -> int:
    """A 63-bit seed mixed from integers, e.g. ``seed_for(seed, epoch, step, rank)``.

    A hash (not ``seed + step``) so that nearby tuples do not give overlapping streams.
    """
    data = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def negative_generator(
    seed: int, epoch: int, step: int, rank: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    """The generator for one step's negative draws, seeded from ``(seed, epoch, step, rank)``.

    Each rank draws different negatives; a resumed run redraws the same ones.
    """
    return torch.Generator(device=device).manual_seed(seed_for(seed, epoch, step, rank))


def sample_indices(
    idx: torch.Tensor, num_data: int, num_negatives: int, generator: torch.Generator
) -> torch.Tensor:
    """Bank rows to score for each sample: ``[B, 1 + K]``, the sample's own index in column 0.

    Negatives are uniform over ``[0, N)`` with replacement; like the official sampler they may
    hit the positive's own index. One draw serves both banks, which halves the sampling cost.
    The draw happens on ``generator``'s device and is moved to ``idx``'s device.
    """
    if idx.dim() != 1:
        raise ValueError(f"sample indices must be 1-D [B], got shape {tuple(idx.shape)}")
    negatives = torch.randint(
        num_data, (idx.shape[0], num_negatives), generator=generator, device=generator.device
    )
    return torch.cat([idx.view(-1, 1), negatives.to(idx.device)], dim=1)


def _uniform_rows(
    num_data: int, dim: int, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """``num_data x dim`` values uniform in ``[-s, s]``, drawn in fp32 chunk by chunk.

    Drawn in fp32 on CPU whatever the storage type, so the seed fixes the values; a CPU
    generator fills a tensor element after element, so the chunks hold exactly the values of
    one ``torch.rand(num_data, dim)`` call, rounded to ``dtype`` as ``.to(dtype)`` would.
    """
    s = bank_init_bound(dim)
    out = torch.empty(num_data, dim, dtype=dtype)
    rows = max(1, INIT_CHUNK_ELEMENTS // dim)
    scratch = None if dtype == torch.float32 else torch.empty(min(rows, num_data), dim)
    for start in range(0, num_data, rows):
        stop = min(start + rows, num_data)
        chunk = out[start:stop] if scratch is None else scratch[: stop - start]
        chunk.uniform_(generator=generator).mul_(2 * s).sub_(s)
        if scratch is not None:
            out[start:stop].copy_(chunk)
    return out


class MemoryBank(nn.Module):
    """``num_data x dim`` rows, uniform in ``[-s, s]`` (:func:`bank_init_bound`) at start.

    Args:
        num_data: N, the number of training samples (one row each).
        dim: D, the embedding size.
        generator: source of the initial values (CPU generator); every rank must pass an
            identically seeded one so that all ranks start with the same bank.
        dtype: storage type: float32, float16 or bfloat16.
    """

    def __init__(
        self,
        num_data: int,
        dim: int,
        *,
        generator: torch.Generator,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if num_data < 1 or dim < 1:
            raise ValueError(
                f"a memory bank needs num_data >= 1 and dim >= 1, got {num_data}, {dim}"
            )
        if dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ValueError(f"bank dtype must be float32, float16 or bfloat16, got {dtype}")
        self.register_buffer("memory", _uniform_rows(num_data, dim, generator, dtype))

    @property
    def num_data(self) -> int:
        """N, the number of rows."""
        return self.memory.shape[0]

    @property
    def dim(self) -> int:
        """D, the row size."""
        return self.memory.shape[1]

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """Rows at ``indices`` (any shape ``S``) as fp32 ``[*S, D]``, without autograd history."""
        rows = self.memory.index_select(0, indices.reshape(-1))
        return rows.float().view(*indices.shape, self.dim)

    def scores(
        self, rows: torch.Tensor, query: torch.Tensor, *, allow_dense: bool = True
    ) -> torch.Tensor:
        """Dot products ``<memory[rows[b, j]], query[b]>`` as fp32 ``[B, J]``.

        ``rows`` is ``[B, J]``, ``query`` ``[B, D]``; gradients flow to ``query`` only. Of two
        equal ways (up to float rounding), the one that moves less memory runs: gather the
        ``B·J`` rows and take dot products, or score every row once (one ``[B, N]`` matrix
        product) and pick the ``B·J`` entries. The second wins when ``N < B·J``, as with CPD's
        16384 negatives for each sample of a batch: it reads the bank instead of writing and
        reading ``B·J`` row copies (537 MB per bank at B = 32, N = 300k). Its backward pass
        needs the bank as it was: an fp32 bank is kept by reference, so pass
        ``allow_dense=False`` where the bank is updated before the backward pass (autograd
        would refuse the changed bank). Scores are fp32 also under autocast: at T = 0.07 a
        bf16 score would be off by up to 0.03 in the logit.
        """
        q = query.float()
        with torch.autocast(q.device.type, enabled=False):
            if allow_dense and self.num_data < rows.numel():
                return torch.mm(q, self.memory.float().t()).gather(1, rows)
            return torch.bmm(self.gather(rows), q.unsqueeze(2)).squeeze(2)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
        """``row = normalize(momentum·row + (1 − momentum)·feature)`` for each index.

        Duplicate indices (the same sample twice in a gathered batch, e.g. from a padding
        sampler): their features are averaged and the row is updated once with the mean, so
        the result does not depend on write order and stays identical on all ranks. Rows not
        in ``indices`` are untouched.
        """
        if indices.dim() != 1 or features.dim() != 2 or features.shape[0] != indices.shape[0]:
            raise ValueError(
                f"update needs indices [n] and features [n, D]; got {tuple(indices.shape)} "
                f"and {tuple(features.shape)}"
            )
        features = features.detach().float()
        uniq, inverse, counts = torch.unique(indices, return_inverse=True, return_counts=True)
        # With unique destinations index_copy_ is exact and order-free.
        mean = features.new_zeros(uniq.shape[0], features.shape[1]).index_copy_(
            0, inverse, features
        )
        if uniq.shape[0] != indices.shape[0]:
            # Rare: average duplicates one group at a time. A scatter-add would be shorter, but
            # its float atomics on GPU sum in a run-dependent order and ranks could drift apart.
            for group in torch.nonzero(counts > 1).flatten().tolist():
                mean[group] = features[inverse == group].mean(dim=0)
        old = self.memory.index_select(0, uniq).float()
        new = F.normalize(old.mul_(momentum).add_(mean, alpha=1.0 - momentum), dim=1)
        self.memory.index_copy_(0, uniq, new.to(self.memory.dtype))

    def extra_repr(self) -> str:
        return f"num_data={self.num_data}, dim={self.dim}, dtype={self.memory.dtype}"
