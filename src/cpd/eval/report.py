"""Reporting a whole experiment: a metric table with chance levels, its Markdown form, and a
training run's ``metrics.jsonl`` read back for plotting.

Every row carries the chance level of its figure (``None`` where there is none), so no number
is shown without the reference that tells whether it means anything.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

__all__ = ["Row", "format_table", "format_value", "markdown_table", "read_metrics"]

Unit = Literal["fraction", "rank", "points"]


@dataclass(frozen=True)
class Row:
    """One reported figure: ``value`` and ``chance`` in ``unit`` ("fraction": shown as a
    percentage; "rank": a 1-based rank; "points": a difference of percentages)."""

    metric: str
    value: float
    chance: float | None
    unit: Unit = "fraction"


def format_value(value: float | None, unit: Unit) -> str:
    """``0.125`` -> ``"12.5%"``, a rank as a plain number, points with their sign; NaN as ``nan``."""
    if value is None:
        return "-"
    if not math.isfinite(value):
        return "nan"
    if unit == "fraction":
        return f"{100 * value:.1f}%"
    if unit == "rank":
        return f"{value:g}"  # median ranks are whole or half numbers
    if unit == "points":
        return f"{value:+.1f} pt"
    raise ValueError(f"unknown unit {unit!r}")


def _cells(rows: Sequence[Row]) -> list[tuple[str, str, str]]:
    return [(r.metric, format_value(r.value, r.unit), format_value(r.chance, r.unit))
            for r in rows]  # fmt: skip


def format_table(rows: Sequence[Row], title: str | None = None) -> str:
    """A plain-text table ``metric | value | chance`` (values right-aligned)."""
    cells = [("metric", "value", "chance"), *_cells(rows)]
    w0 = max(len(c[0]) for c in cells)
    w1 = max(len(c[1]) for c in cells)
    w2 = max(len(c[2]) for c in cells)
    lines = [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in cells]
    lines.insert(1, "-" * len(lines[0]))
    if title:
        lines.insert(0, title)
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The same table in Markdown."""
    lines = ["| metric | value | chance |", "| --- | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in _cells(rows)]
    return "\n".join(lines)


# records of these kinds are keyed by their global step; a resumed run repeats the steps since
# its last checkpoint after a crash, and the later record is the one that counts
_KEYED = ("step", "epoch", "val")


def read_metrics(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """A run's ``metrics.jsonl`` as ``{kind: [records in global-step order]}``.

    Repeated global steps keep their last record (see :mod:`cpd.train.log`); a line that is not
    JSON (the torn last line of a killed run) is skipped. A missing file gives ``{}``.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    keyed: dict[str, dict[int, dict[str, Any]]] = {k: {} for k in _KEYED}
    other: dict[str, list[dict[str, Any]]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict) or "kind" not in record:
            continue
        kind = record["kind"]
        if kind in keyed and isinstance(record.get("global_step"), int):
            keyed[kind][record["global_step"]] = record
        else:
            other.setdefault(kind, []).append(record)
    out = {k: [v[s] for s in sorted(v)] for k, v in keyed.items() if v}
    return out | other
