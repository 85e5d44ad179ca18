"""Evaluation: retrieval, classification metrics, multi-view aggregation, exact DDP gathering.

* :mod:`cpd.eval.retrieval`: text<->video recall@k, median / mean rank, computed in chunks.
* :mod:`cpd.eval.metrics`: top-k and per-class accuracy, confusion matrix, view averaging.
* :mod:`cpd.eval.gather`: embeddings of all ranks with their indices, padding duplicates dropped.
"""

from cpd.eval.gather import gather_embeddings
from cpd.eval.metrics import (
    aggregate_views,
    class_ranks,
    confusion_matrix,
    mean_std,
    per_class_accuracy,
    topk_accuracy,
)
from cpd.eval.retrieval import RetrievalRanks, retrieval_metrics, retrieval_ranks

__all__ = [
    "RetrievalRanks",
    "aggregate_views",
    "class_ranks",
    "confusion_matrix",
    "gather_embeddings",
    "mean_std",
    "per_class_accuracy",
    "retrieval_metrics",
    "retrieval_ranks",
    "topk_accuracy",
]
