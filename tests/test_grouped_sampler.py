"""GroupedSampler: batches of whole groups, split across ranks like DistributedSampler."""

from __future__ import annotations

import pytest

from cpd.train.loader import GroupedSampler


def _groups(num_groups=12, size=4):
    # interleaved in the manifest, as a real file would be: group of index i is i % num_groups
    return [i % num_groups for i in range(num_groups * size)]


def _batches(sampler, batch_size):
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def test_every_batch_holds_whole_groups_and_every_pair_once():
    groups = _groups()
    sampler = GroupedSampler(groups, batch_size=8, rank=0, world_size=1, seed=3)
    batches = _batches(sampler, 8)
    assert sorted(i for b in batches for i in b) == list(range(len(groups)))
    for batch in batches:
        counts = {}
        for i in batch:
            counts[groups[i]] = counts.get(groups[i], 0) + 1
        assert all(c == 4 for c in counts.values()), batch


def test_order_is_a_function_of_seed_and_epoch():
    groups = _groups()
    a = GroupedSampler(groups, batch_size=8, rank=0, world_size=1, seed=3)
    b = GroupedSampler(groups, batch_size=8, rank=0, world_size=1, seed=3)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(a) != list(b)
    a.set_epoch(1)
    assert list(a) == list(b)


@pytest.mark.parametrize("num_groups", [12, 11])
def test_ranks_share_global_batches_of_whole_groups(num_groups):
    groups = _groups(num_groups)
    world, local = 2, 4
    ranks = [GroupedSampler(groups, batch_size=local, rank=r, world_size=world, seed=0)
             for r in range(world)]  # fmt: skip
    lists = [list(s) for s in ranks]
    assert all(
        len(x) == len(s) == -(-len(groups) // world) for x, s in zip(lists, ranks, strict=True)
    )
    full = len(groups) // (local * world)
    for step in range(full):
        global_batch = [i for x in lists for i in x[step * local : (step + 1) * local]]
        assert len(set(global_batch)) == local * world
        members = {
            g: sum(groups[i] == g for i in global_batch) for g in {groups[i] for i in global_batch}
        }
        assert all(c == 4 for c in members.values())
    covered = {i for x in lists for i in x}
    assert covered == set(range(len(groups)))
