"""Contrastive losses between video and text embeddings.

* :class:`MemoryBankNCELoss` — CPD's NCE over video and text memory banks (the paper's loss).
* :class:`InfoNCELoss` — symmetric in-batch InfoNCE with a learnable temperature.
* :func:`temporal_negatives` — time-reversed / shuffled clips as extra negatives (optional).

Losses take embeddings (and sample indices) and live outside the DDP-wrapped model; they find
rank and world size through :mod:`cpd.dist`.
"""

from cpd.losses.hard_negatives import as_hard_batch, temporal_negatives
from cpd.losses.infonce import InfoNCELoss
from cpd.losses.memory_bank import (
    MemoryBank,
    bank_init_bound,
    negative_generator,
    sample_indices,
    seed_for,
)
from cpd.losses.nce import MemoryBankNCELoss, nce_terms

__all__ = [
    "InfoNCELoss",
    "MemoryBank",
    "MemoryBankNCELoss",
    "as_hard_batch",
    "bank_init_bound",
    "negative_generator",
    "nce_terms",
    "sample_indices",
    "seed_for",
    "temporal_negatives",
]
