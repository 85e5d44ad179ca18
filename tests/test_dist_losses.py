"""Two gloo processes on CPU: gathers, identical banks and Z, InfoNCE equal to one process.

Each worker checks its own assertions; a failure in either process fails the test (spawn
re-raises it here). Every random tensor comes from a generator seeded by (step, rank), so each
rank can rebuild the other rank's batch for the single-process references.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
import torch.nn.functional as F

from cpd import dist
from cpd.losses import InfoNCELoss, MemoryBankNCELoss, negative_generator, sample_indices

WORLD = 2
N, D, K, T = 12, 8, 5, 0.07
LOCAL_IDX = {  # index 2 on both ranks in step 0: a duplicate in the gathered batch
    0: [[0, 1, 2], [4, 5, 6], [9, 10, 11]],
    1: [[2, 3], [7, 8], [11, 0]],
}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    # torch.allclose, not torch.testing: its first call costs seconds of imports per process.
    return a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def _batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 * step + rank)
    n = len(LOCAL_IDX[rank][step])
    video = F.normalize(torch.randn(n, D, generator=g), dim=1)
    text = F.normalize(torch.randn(n, D, generator=g), dim=1)
    return video, text, torch.tensor(LOCAL_IDX[rank][step])


def _check_helpers(rank: int) -> None:
    assert dist.is_initialized() and dist.get_rank() == rank and dist.get_world_size() == WORLD
    x = torch.full((3 - rank, 2), float(rank))  # uneven: 3 rows on rank 0, 2 on rank 1
    gathered = dist.all_gather_no_grad(x)
    assert gathered.tolist() == [[0.0, 0.0]] * 3 + [[1.0, 1.0]] * 2
    assert dist.all_reduce_mean(torch.tensor([2.0 * rank])).item() == 1.0
    x = torch.ones(3 - rank, 2, requires_grad=True)
    weights = torch.arange(10.0).view(5, 2)
    (dist.all_gather_with_grad(x) * weights).sum().backward()
    mine = weights[:3] if rank == 0 else weights[3:]
    # Both ranks computed the same loss; the gather's backward sums their gradients.
    assert torch.equal(x.grad, WORLD * mine)


def _check_nce(rank: int) -> None:
    loss = MemoryBankNCELoss(N, D, num_negatives=K, temperature=T, seed=0)
    ref = MemoryBankNCELoss(N, D, num_negatives=K, temperature=T, seed=0)  # driven by hand
    for step in range(3):
        video, text, idx = _batch(step, rank)
        if step == 0:
            # Z reference: each rank's mean(exp(score/T))·N on its first batch, then averaged.
            z_v = z_t = 0.0
            for r in range(WORLD):
                v, t, i = _batch(0, r)
                rows = sample_indices(i, N, K, negative_generator(0, 0, 0, r))
                s_v = torch.bmm(ref.text_bank.gather(rows), v.unsqueeze(2)).double() / T
                s_t = torch.bmm(ref.video_bank.gather(rows), t.unsqueeze(2)).double() / T
                z_v += s_v.exp().mean().item() * N / WORLD
                z_t += s_t.exp().mean().item() * N / WORLD
        out = loss(video, text, idx, generator=negative_generator(0, 0, step, rank))
        assert math.isfinite(out["loss"].item())
        parts = [_batch(step, r) for r in range(WORLD)]
        all_idx = torch.cat([p[2] for p in parts])
        ref.video_bank.update(all_idx, torch.cat([p[0] for p in parts]), 0.5)
        ref.text_bank.update(all_idx, torch.cat([p[1] for p in parts]), 0.5)
        for bank, ref_bank in ((loss.video_bank, ref.video_bank), (loss.text_bank, ref.text_bank)):
            both = dist.all_gather_no_grad(bank.memory)
            assert torch.equal(both[:N], both[N:]), f"banks differ between ranks after {step}"
            assert _close(bank.memory, ref_bank.memory)
        zs = dist.all_gather_no_grad(torch.cat([loss.z_video, loss.z_text]).view(1, 2))
        assert torch.equal(zs[0], zs[1])
        assert zs[0, 0].item() == pytest.approx(z_v, rel=1e-5)
        assert zs[0, 1].item() == pytest.approx(z_t, rel=1e-5)


def _encoders() -> tuple[torch.nn.Linear, torch.nn.Linear]:
    torch.manual_seed(0)  # only to build identical toy encoders in both processes
    return torch.nn.Linear(6, D), torch.nn.Linear(6, D)


def _infonce_run(x_video, x_text, x_hard, valid, world_size=None):
    video_enc, text_enc = _encoders()
    loss_fn = InfoNCELoss(world_size=world_size)
    out = loss_fn(
        F.normalize(video_enc(x_video), dim=1),
        F.normalize(text_enc(x_text), dim=1),
        hard_video=F.normalize(video_enc(x_hard), dim=1),
        hard_valid=valid,
    )
    out["loss"].backward()
    grads = [p.grad for p in [*video_enc.parameters(), *text_enc.parameters()]]
    return out, grads, loss_fn.logit_scale.grad


def _check_infonce(rank: int) -> None:
    g = torch.Generator().manual_seed(7)
    x_video, x_text, x_hard = (torch.randn(5, 6, generator=g) for _ in range(3))
    valid = torch.tensor([[True], [False], [True], [True], [False]])
    ref_out, ref_grads, ref_scale_grad = _infonce_run(x_video, x_text, x_hard, valid, world_size=1)
    local = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven split of the 5 pairs
    out, grads, scale_grad = _infonce_run(
        x_video[local], x_text[local], x_hard[local], valid[local]
    )
    for key in ref_out:
        assert out[key].item() == pytest.approx(ref_out[key].item(), rel=1e-5), key
    # DDP averages parameter gradients over ranks; after that they equal one process's.
    for grad, ref_grad in zip(grads, ref_grads, strict=True):
        assert _close(dist.all_reduce_mean(grad), ref_grad)
    assert _close(scale_grad, ref_scale_grad)


def _worker(rank: int, port: int) -> None:
    tdist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        torch.set_num_threads(1)
        _check_helpers(rank)
        _check_nce(rank)
        _check_infonce(rank)
    finally:
        tdist.destroy_process_group()


@pytest.mark.dist
def test_losses_across_two_gloo_processes():
    mp.spawn(_worker, args=(dist.find_free_port(),), nprocs=WORLD, join=True)


def test_helpers_without_process_group():
    x = torch.randn(3, 2, requires_grad=True)
    assert dist.get_rank() == 0 and dist.get_world_size() == 1 and not dist.is_initialized()
    assert dist.all_gather_with_grad(x) is x
    assert (
        torch.equal(dist.all_gather_no_grad(x), x) and not dist.all_gather_no_grad(x).requires_grad
    )
    assert torch.equal(dist.all_reduce_mean(x), x.detach())
