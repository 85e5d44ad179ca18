"""Evaluation: retrieval, multi-view testing, zero-shot classification, metrics."""
