"""Process-group helpers that also work when no process group exists.

Without ``torch.distributed`` initialised, every helper behaves as a single process: rank 0,
world size 1, gathers return their input. All gathers concatenate along dim 0 and accept a
different dim-0 size on each rank (e.g. a short last batch); the other dims must match.

Two gathers exist because they answer different needs:

* :func:`all_gather_no_grad` — for memory-bank updates, metrics and evaluation.
* :func:`all_gather_with_grad` — for losses computed over the global batch. Its backward
  all-reduces (sums) the incoming gradient and hands each rank the slice of its own rows.
  When every rank computes the same global loss ``L``, each rank therefore receives
  ``world_size * dL/d(own rows)``, and DDP's gradient *averaging* turns that into exactly the
  gradient of ``L`` — the same as one process holding the concatenated batch. Every rank must
  run the backward pass (the gradient all-reduce is a collective).
"""

from __future__ import annotations

import socket
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_no_grad",
    "all_gather_with_grad",
    "all_reduce_mean",
    "find_free_port",
    "get_rank",
    "get_world_size",
    "is_initialized",
]


def is_initialized() -> bool:
    """True when ``torch.distributed`` is available and a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank(group: Any = None) -> int:
    """Rank of this process in ``group`` (the default group if None); 0 when not distributed."""
    return dist.get_rank(group) if is_initialized() else 0


def get_world_size(group: Any = None) -> int:
    """Number of processes in ``group`` (the default group if None); 1 when not distributed."""
    return dist.get_world_size(group) if is_initialized() else 1


def _gather_sizes(x: torch.Tensor, group: Any, world_size: int) -> list[int]:
    size = torch.tensor([x.shape[0]], dtype=torch.int64, device=x.device)
    sizes = [torch.empty_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size, group=group)
    return [int(s.item()) for s in sizes]


def _gather_padded(x: torch.Tensor, group: Any, world_size: int) -> tuple[torch.Tensor, list[int]]:
    """All-gather rows of possibly different counts per rank; returns (concatenation, sizes)."""
    sizes = _gather_sizes(x, group, world_size)
    longest = max(sizes)
    # Collectives need equal shapes: pad to the longest, then cut the padding off again.
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(parts, padded.contiguous(), group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)], dim=0), sizes


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0 (rank order), without autograd history.

    Args:
        x: tensor ``[n_rank, ...]``; ``n_rank`` may differ between ranks.
        group: process group, default group if None.

    Returns:
        ``[sum(n_rank), ...]``, identical on every rank. Without a process group: ``x`` detached.
    """
    world_size = get_world_size(group)
    if world_size == 1:
        return x.detach()
    return _gather_padded(x.detach(), group, world_size)[0]


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, group: Any) -> torch.Tensor:
        world_size = get_world_size(group)
        gathered, sizes = _gather_padded(x, group, world_size)
        rank = get_rank(group)
        ctx.group = group
        ctx.start = sum(sizes[:rank])
        ctx.stop = ctx.start + sizes[rank]
        return gathered

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        # Sum what every rank's loss says about each row, then keep our own rows.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad[ctx.start : ctx.stop], None


def all_gather_with_grad(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Concatenate ``x`` from all ranks along dim 0, keeping autograd through the gather.

    The backward pass all-reduces (sums) the gradient of the gathered tensor and returns this
    rank's slice, so the gradient reaching ``x`` is the sum over all ranks' losses (see the
    module docstring for why this is what DDP needs). Every rank must call backward.

    Without a process group (or a world size of 1) this returns ``x`` itself.
    """
    if get_world_size(group) == 1:
        return x
    return _GatherWithGrad.apply(x, group)


def all_reduce_mean(x: torch.Tensor, group: Any = None) -> torch.Tensor:
    """Mean of ``x`` over ranks, as a new tensor (``x`` is left alone; no autograd).

    Floating tensors only. Without a process group: a detached copy of ``x``.
    """
    if not torch.is_floating_point(x):
        raise TypeError(f"all_reduce_mean needs a floating tensor, got {x.dtype}")
    out = x.detach().clone()
    world_size = get_world_size(group)
    if world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        out /= world_size
    return out


def find_free_port() -> int:
    """A TCP port on localhost that was free a moment ago (for ``MASTER_PORT`` in tests/launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_from_env(device: str) -> tuple[torch.device, bool]:
    """Join torchrun's process group (env:// variables) when ``WORLD_SIZE > 1``; pick the device.

    ``device`` is "cpu", "cuda" or "auto". NCCL with one GPU per process (``LOCAL_RANK``) on
    CUDA, gloo on CPUs. Returns the device and whether this call created the process group
    (the caller then destroys it at the end).
    """
    import os

    from cpd.errors import CPDError

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise CPDError("device 'cuda' requested but no CUDA device is available")
    owns = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_initialized():
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        owns = True
    dev = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    return dev, owns
