"""Process state that a checkpoint carries or a run reacts to: RNG states and stop signals.

RNG states are stored as plain tensors / lists so that ``torch.load(weights_only=True)`` reads
them. The training loop does not rely on them for reproducibility (every draw comes from a
generator seeded by (seed, epoch, step, ...)); they are saved so that code outside our control
that touches the global generators continues from the same state after a resume.
"""

from __future__ import annotations

import random
import signal
import threading
from types import FrameType
from typing import Any

import numpy as np
import torch

from cpd import dist

__all__ = ["StopSignal", "capture_rng_state", "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """The global torch / CUDA / numpy / python RNG states, in checkpoint-safe types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": py_version, "state": list(py_state), "gauss": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned (CUDA only where devices match)."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class StopSignal:
    """Turns SIGTERM / SIGINT into a request to stop at the next step boundary.

    Use as a context manager around the loop (handlers are installed only in the main thread
    and restored on exit). :meth:`should_stop` is collective under a process group: every rank
    calls it once per step and all get True as soon as any rank was signalled, so all ranks stop
    after the same step. A second signal while stopping is left to the previous handler (a
    second Ctrl-C interrupts at once).
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:  # second signal: hand over to the original behaviour
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            signal.raise_signal(signum)
            return
        self.received = signum

    def should_stop(self, device: torch.device) -> bool:
        """Whether any rank was signalled (one small all-reduce per call under DDP)."""
        flag = torch.tensor([0.0 if self.received is None else 1.0], device=device)
        if dist.get_world_size() > 1:
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        if flag.item() > 0 and self.received is None:
            self.received = int(signal.SIGTERM)  # another rank's signal: stop the same way
        return bool(flag.item() > 0)

    @property
    def name(self) -> str:
        """Name of the signal received ("SIGTERM"), or "" if none."""
        return signal.Signals(self.received).name if self.received is not None else ""
