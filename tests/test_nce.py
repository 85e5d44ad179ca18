"""Memory-bank NCE: equals the plain formulas, updates banks as specified, resumes exactly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cpd.errors import CheckpointError
from cpd.losses import (
    MemoryBankNCELoss,
    bank_init_bound,
    negative_generator,
    sample_indices,
)

N, D, K, T = 20, 8, 6, 0.07


def unit(b: int, seed: int, requires_grad: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, D, generator=g), dim=1).requires_grad_(requires_grad)


def gen(step: int = 0) -> torch.Generator:
    return negative_generator(seed=1, epoch=0, step=step, rank=0)


def naive_rows(idx: torch.Tensor, step: int = 0) -> list[list[int]]:
    negatives = torch.randint(N, (idx.shape[0], K), generator=gen(step))
    return [[int(i)] + negatives[b].tolist() for b, i in enumerate(idx)]


def naive_z(anchors, bank, rows) -> float:
    scores = [
        math.exp(float(bank[r] @ a) / T) for a, rs in zip(anchors, rows, strict=True) for r in rs
    ]
    return sum(scores) / len(scores) * N


def naive_terms(video, text, rows, video_bank, text_bank, z_v, z_t) -> dict[str, float]:
    """Plain loops: P = exp(<bank row, anchor>/T)/Z, c = K/N, −log P/(P+c), −Σ log c/(P+c)."""
    c = K / N
    out = dict.fromkeys(("video_pos", "video_neg", "text_pos", "text_neg"), 0.0)
    for b, rs in enumerate(rows):
        for side, anchor, bank, z in (
            ("video", video[b], text_bank, z_v),
            ("text", text[b], video_bank, z_t),
        ):
            for j, r in enumerate(rs):
                p = math.exp(float(bank[r].double() @ anchor.double()) / T) / z
                if j == 0:
                    out[f"{side}_pos"] += -math.log(p / (p + c))
                else:
                    out[f"{side}_neg"] += -math.log(c / (p + c))
    out = {k: v / len(rows) for k, v in out.items()}
    out["loss"] = sum(out.values())
    return out


def make(**kw) -> MemoryBankNCELoss:
    return MemoryBankNCELoss(N, D, num_negatives=K, temperature=T, **kw)


def assert_terms(got: dict[str, torch.Tensor], want: dict[str, float], rtol=1e-4) -> None:
    for key, value in want.items():
        assert float(got[key]) == pytest.approx(value, rel=rtol), key


@pytest.mark.parametrize("batch", [1, 4])
def test_loss_equals_naive_formula(batch):
    loss = make()
    video, text = unit(batch, 1), unit(batch, 2)
    idx = torch.arange(batch) * 3
    vb, tb = loss.video_bank.memory.clone(), loss.text_bank.memory.clone()
    out = loss(video, text, idx, generator=gen())
    rows = naive_rows(idx)
    z_v, z_t = naive_z(video, tb, rows), naive_z(text, vb, rows)
    assert float(loss.z_video) == pytest.approx(z_v, rel=1e-5)
    assert float(loss.z_text) == pytest.approx(z_t, rel=1e-5)
    assert_terms(out, naive_terms(video, text, rows, vb, tb, z_v, z_t))
    assert all(v.dim() == 0 for v in out.values())


def test_z_fixed_by_first_batch_only_and_second_step_uses_updated_banks():
    loss = make()
    loss(unit(3, 1), unit(3, 2), torch.tensor([0, 1, 2]), generator=gen(0))
    z = (float(loss.z_video), float(loss.z_text))
    assert loss.z_is_set
    vb, tb = loss.video_bank.memory.clone(), loss.text_bank.memory.clone()
    video, text, idx = unit(3, 5), unit(3, 6), torch.tensor([7, 8, 0])
    out = loss(video, text, idx, generator=gen(1))
    assert (float(loss.z_video), float(loss.z_text)) == z
    assert_terms(out, naive_terms(video, text, naive_rows(idx, 1), vb, tb, *z))


def test_bank_init_uniform_not_normalised_and_seeded():
    a, b, c = make(seed=3), make(seed=3), make(seed=4)
    s = bank_init_bound(D)
    assert s == pytest.approx(1 / math.sqrt(D / 3))
    mem = a.video_bank.memory
    assert mem.abs().max() <= s and mem.min() < -0.9 * s and mem.max() > 0.9 * s
    assert not torch.allclose(mem.norm(dim=1), torch.ones(N))
    assert torch.equal(mem, b.video_bank.memory) and torch.equal(
        a.text_bank.memory, b.text_bank.memory
    )
    assert not torch.equal(mem, c.video_bank.memory)
    assert not torch.equal(mem, a.text_bank.memory)
    assert float(a.z_video) == -1.0 and not a.z_is_set


def test_memory_update_rows_unit_norm_untouched_rows_unchanged():
    loss = make()
    old_v, old_t = loss.video_bank.memory.clone(), loss.text_bank.memory.clone()
    video, text, idx = unit(3, 1), unit(3, 2), torch.tensor([4, 9, 13])
    loss(video, text, idx, generator=gen())
    new_v, new_t = loss.video_bank.memory, loss.text_bank.memory
    for bank_new, bank_old, feats in ((new_v, old_v, video), (new_t, old_t, text)):
        for b, i in enumerate(idx.tolist()):
            want = F.normalize(0.5 * bank_old[i] + 0.5 * feats[b], dim=0)
            torch.testing.assert_close(bank_new[i], want)
            assert float(bank_new[i].norm()) == pytest.approx(1.0, abs=1e-6)
        others = torch.ones(N, dtype=torch.bool)
        others[idx] = False
        assert torch.equal(bank_new[others], bank_old[others])


def test_duplicate_indices_update_once_with_mean_feature():
    loss = make(momentum=0.25)
    old = loss.video_bank.memory.clone()
    video, text, idx = unit(3, 1), unit(3, 2), torch.tensor([5, 11, 5])
    loss.update_memory(video, text, idx)
    want = F.normalize(0.25 * old[5] + 0.75 * (video[0] + video[2]) / 2, dim=0)
    torch.testing.assert_close(loss.video_bank.memory[5], want)
    torch.testing.assert_close(
        loss.video_bank.memory[11], F.normalize(0.25 * old[11] + 0.75 * video[1], dim=0)
    )


def test_update_memory_false_leaves_banks_then_manual_update_matches():
    auto, manual = make(), make()
    # 4 x (1 + K) = 28 rows > N: the deferred update lets the loss score the whole bank
    video, text, idx = unit(4, 1), unit(4, 2), torch.tensor([3, 4, 9, 12])
    out_a = auto(video, text, idx, generator=gen())
    before = manual.video_bank.memory.clone()
    out_m = manual(video, text, idx, generator=gen(), update_memory=False)
    assert torch.equal(manual.video_bank.memory, before)
    manual.update_memory(video, text, idx)
    assert torch.equal(manual.video_bank.memory, auto.video_bank.memory)
    assert torch.equal(manual.text_bank.memory, auto.text_bank.memory)
    for key, value in out_a.items():
        assert float(out_m[key]) == pytest.approx(float(value), rel=1e-6), key
    gathered = make(dense_scores=False)  # the official way: always gather the sampled rows
    out_g = gathered(video, text, idx, generator=gen(), update_memory=False)
    assert float(out_g["loss"]) == pytest.approx(float(out_m["loss"]), rel=1e-6)


def test_gradients_reach_features_not_banks():
    loss = make()
    assert list(loss.parameters()) == []
    video, text = unit(3, 1, requires_grad=True), unit(3, 2, requires_grad=True)
    out = loss(video, text, torch.tensor([1, 2, 3]), generator=gen(), update_memory=False)
    banks = loss.video_bank.memory.clone(), loss.text_bank.memory.clone()
    out["loss"].backward()
    assert video.grad is not None and video.grad.abs().sum() > 0
    assert text.grad is not None and text.grad.abs().sum() > 0
    assert not loss.video_bank.memory.requires_grad and loss.video_bank.memory.grad is None
    assert torch.equal(loss.video_bank.memory, banks[0])
    assert torch.equal(loss.text_bank.memory, banks[1])


def test_state_dict_round_trip_restores_identical_loss():
    a = make(seed=1)
    a(unit(4, 1), unit(4, 2), torch.tensor([0, 5, 6, 7]), generator=gen(0))
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert set(state) == {"video_bank.memory", "text_bank.memory", "z_video", "z_text"}
    b = make(seed=2)
    b.load_state_dict(state)
    batch = unit(4, 3), unit(4, 4), torch.tensor([5, 1, 2, 19])
    out_a, out_b = a(*batch, generator=gen(1)), b(*batch, generator=gen(1))
    for key in out_a:
        assert float(out_a[key]) == float(out_b[key]), key
    assert torch.equal(a.video_bank.memory, b.video_bank.memory)


def test_loading_unset_z_state_makes_next_batch_set_it_again():
    fresh_state = {k: v.clone() for k, v in make(seed=1).state_dict().items()}
    loss = make(seed=1)
    loss(unit(2, 1), unit(2, 2), torch.tensor([0, 1]), generator=gen(0))
    loss.load_state_dict(fresh_state)
    assert not loss.z_is_set
    video, text, idx = unit(2, 3), unit(2, 4), torch.tensor([2, 3])
    loss(video, text, idx, generator=gen(1))
    rows = naive_rows(idx, 1)
    want = naive_z(video, fresh_state["text_bank.memory"], rows)
    assert float(loss.z_video) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_bank_storage(dtype):
    full, half = make(seed=1), make(seed=1, bank_dtype=dtype)
    assert half.video_bank.memory.dtype == dtype
    torch.testing.assert_close(
        half.video_bank.memory.float(), full.video_bank.memory, atol=1e-2, rtol=0
    )
    video, text, idx = unit(3, 1, True), unit(3, 2), torch.tensor([1, 2, 3])
    out_f = full(video, text, idx, generator=gen())
    out_h = half(video, text, idx, generator=gen())
    assert out_h["loss"].dtype == torch.float32
    assert float(out_h["loss"].detach()) == pytest.approx(float(out_f["loss"].detach()), rel=0.02)
    out_h["loss"].backward()
    assert torch.isfinite(video.grad).all()
    norms = half.video_bank.memory[idx].float().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(3), atol=1e-2, rtol=0)


def test_negative_draws_reproducible_per_rank_and_column_zero_is_the_sample():
    idx = torch.tensor([3, 7])
    a = sample_indices(idx, N, K, negative_generator(5, 1, 2, 0))
    b = sample_indices(idx, N, K, negative_generator(5, 1, 2, 0))
    c = sample_indices(idx, N, K, negative_generator(5, 1, 2, 1))
    assert a.shape == (2, K + 1) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a[:, 0], idx) and a.min() >= 0 and a.max() < N


def test_bad_inputs_raise():
    loss = make()
    with pytest.raises(ValueError, match="out of range"):
        loss(unit(2, 1), unit(2, 2), torch.tensor([0, N]), generator=gen())
    with pytest.raises(ValueError, match="idx"):
        loss(unit(2, 1), unit(2, 2), torch.tensor([0]), generator=gen())
    with pytest.raises(ValueError, match="video and text"):
        loss(unit(2, 1), unit(3, 2), torch.tensor([0, 1]), generator=gen())


def test_from_official_checkpoint():
    g = torch.Generator().manual_seed(0)
    vis, txt = torch.rand(N, D, generator=g), torch.rand(N, D, generator=g)
    ckpt = {
        "epoch": 3,
        "state_dict": {
            "module.vis_memory": vis,
            "module.text_memory": txt,
            "module.Z_v": torch.tensor([123.0]),
            "module.Z_t": torch.tensor([456.0]),
            "module.vis_emb.weight": torch.zeros(2, 2),
        },
    }
    loss = MemoryBankNCELoss.from_official(ckpt, num_negatives=K, bank_dtype=torch.float16)
    assert loss.num_data == N and loss.video_bank.dim == D
    assert torch.equal(loss.video_bank.memory, vis.half())
    assert torch.equal(loss.text_bank.memory, txt.half())
    assert float(loss.z_video) == 123.0 and float(loss.z_text) == 456.0 and loss.z_is_set
    del ckpt["state_dict"]["module.Z_t"]
    with pytest.raises(CheckpointError, match="Z_t"):
        MemoryBankNCELoss.from_official(ckpt)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("num_rows", [3, 40])  # 4·3 rows < N = 20 gathers; 4·40 > N scores all
def test_bank_scores_equal_row_dot_products_both_ways(dtype, num_rows):
    from cpd.losses.memory_bank import MemoryBank

    bank = MemoryBank(N, D, generator=torch.Generator().manual_seed(0), dtype=dtype)
    rows = torch.randint(N, (4, num_rows), generator=torch.Generator().manual_seed(1))
    query = unit(4, 3, requires_grad=True)
    got = bank.scores(rows, query)
    table = bank.memory.float()
    want = torch.stack([table[rows[b]] @ query[b] for b in range(4)])
    assert got.dtype == torch.float32 and got.shape == (4, num_rows)
    assert torch.allclose(got, want, atol=1e-6)
    weights = torch.randn(4, num_rows, generator=torch.Generator().manual_seed(2))
    (grad,) = torch.autograd.grad((got * weights).sum(), query)
    (grad_want,) = torch.autograd.grad((want * weights).sum(), query)
    assert torch.allclose(grad, grad_want, atol=1e-5)
    assert not bank.memory.requires_grad
    if num_rows == 40 and dtype == torch.float32:
        # the dense way reads the bank in backward: changing it first is refused, not wrong
        got = bank.scores(rows, query)
        bank.update(torch.tensor([0]), unit(1, 4), 0.5)
        with pytest.raises(RuntimeError, match="inplace"):
            got.sum().backward()
        assert torch.allclose(bank.scores(rows, query, allow_dense=False), bank.scores(rows, query),
                              atol=1e-6)  # fmt: skip


def test_bank_scores_stay_fp32_under_autocast():
    from cpd.losses.memory_bank import MemoryBank

    bank = MemoryBank(N, D, generator=torch.Generator().manual_seed(0))
    query = unit(4, 3)
    for num_rows in (3, 40):  # both ways
        rows = torch.randint(N, (4, num_rows), generator=torch.Generator().manual_seed(1))
        want = bank.scores(rows, query)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = bank.scores(rows, query)
        assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-6)
