"""What a run reports: a progress bar, ``metrics.jsonl``, TensorBoard, a final table.

Only the main process (rank 0) writes anything; other ranks get a logger that does nothing,
so the loop calls it unconditionally. ``metrics.jsonl`` holds one JSON object per line with a
``"kind"`` of ``"step"``, ``"epoch"``, ``"val"`` or ``"event"`` and the ``global_step`` it
belongs to; a resumed run appends to the same file (steps are not repeated after a SIGTERM
stop, which checkpoints exactly where it stopped; after a crash, the steps since the last
checkpoint appear twice: the later lines are the ones that count).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "format_table"]


def _clean(value: Any) -> Any:
    """JSON-safe numbers: NaN / inf become strings rather than invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class RunLogger:
    """Rank-0 reporting of one run; ``enabled=False`` turns every method into a no-op."""

    def __init__(
        self, run_dir: Path, *, enabled: bool, progress: bool = True, tensorboard: bool = True
    ) -> None:
        self.enabled = enabled
        self.show_progress = progress and enabled
        self.run_dir = run_dir
        # held open for the run (closed in close()): one line per logged step
        self._file = (
            open(run_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            if enabled
            else None
        )
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self._bar: Any = None
        self._epoch_start = 0.0
        self._clips = 0

    def write(self, kind: str, global_step: int, **values: Any) -> None:
        """One metrics.jsonl line, and its numbers as TensorBoard scalars ``kind/name``."""
        if not self.enabled:
            return
        record = {"kind": kind, "global_step": global_step, "time": round(time.time(), 3)}
        record.update({k: _clean(v) for k, v in values.items()})
        assert self._file is not None
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{kind}/{name}", value, global_step)

    def start_epoch(self, epoch: int, epochs: int, total: int, done: int) -> None:
        """Open the bar of an epoch of ``total`` steps, ``done`` of them already done."""
        self._epoch_start = time.perf_counter()
        self._clips = 0
        if not self.show_progress:
            return
        from tqdm import tqdm

        self._bar = tqdm(
            total=total,
            initial=done,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=True,
        )

    def step(self, clips: int, loss: float, lr: float) -> float:
        """Advance the bar by one step of ``clips`` clips (all ranks); returns clips/s so far."""
        self._clips += clips
        elapsed = max(time.perf_counter() - self._epoch_start, 1e-9)
        rate = self._clips / elapsed
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", clips_s=f"{rate:.1f}")
            self._bar.update(1)
        return rate

    def end_epoch(self) -> float:
        """Close the bar; returns the epoch's wall seconds."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        return time.perf_counter() - self._epoch_start

    def message(self, text: str) -> None:
        """A line for the user (kept clear of the progress bar)."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        """Flush and close files (idempotent)."""
        self.end_epoch()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def format_table(metrics: dict[str, Any], title: str = "final metrics") -> str:
    """A two-column text table of ``metrics`` (floats with 4 significant decimals)."""
    rows = [(k, f"{v:.4f}" if isinstance(v, float) else str(v)) for k, v in metrics.items()]
    width = max((len(k) for k, _ in rows), default=10)
    lines = [title, "-" * (width + 14)]
    lines += [f"{k:<{width}}  {v:>12}" for k, v in rows]
    return "\n".join(lines)
