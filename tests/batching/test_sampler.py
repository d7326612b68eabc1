"""Property tests of the batch sampler over many seeds, world sizes and random group structures."""

from __future__ import annotations

import itertools
import json
import random
from collections import Counter

import pytest

from bcat.batching.sampler import MODES, GroupBatchSampler, MicroBatch

SEEDS = range(20)
WORLD_SIZES = (1, 2, 3, 4)
LANGS = ("en", "fr", "de", "es", "hi", "ja")


def random_keys(seed: int, n_groups: int | None = None) -> list[tuple[str, str]]:
    """Groups that all have English and a random subset of the other languages (some have none), in a
    shuffled dataset order so the anchor is not always stored first."""
    rng = random.Random(seed)
    n_groups = n_groups or rng.randint(8, 40)
    keys = []
    for g in range(n_groups):
        others = [lang for lang in LANGS[1:] if rng.random() < 0.7]
        keys += [(f"g{g}", lang) for lang in ["en", *others]]
    rng.shuffle(keys)
    return keys


def groups_of(keys) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, (g, _) in enumerate(keys):
        out.setdefault(g, []).append(i)
    return out


def flat(plan: list[list[MicroBatch]]) -> list[MicroBatch]:
    return [mb for rnd in plan for mb in rnd]


def take(sampler: GroupBatchSampler, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(sampler), n))


def check_whole_groups(plan, keys, *, anchor_first: bool, gpb: int) -> None:
    """Every group of a micro-batch is whole, contiguous, anchor first; at most gpb groups."""
    groups = groups_of(keys)
    for mb in flat(plan):
        runs = [g for g, _ in itertools.groupby(keys[i][0] for i in mb.records)]
        assert len(runs) == len(set(runs)), f"a group is not contiguous in {mb}"
        assert 1 <= len(runs) <= gpb
        for g in runs:
            mine = [i for i in mb.records if keys[i][0] == g]
            expected = [i for i in groups[g] if anchor_first or keys[i][1] != "en"]
            assert sorted(mine) == sorted(expected), f"group {g} split or incomplete in {mb}"
            if anchor_first:
                assert keys[mine[0]][1] == "en"
            else:
                assert all(keys[i][1] != "en" for i in mine)


def check_layout(plan, world_size: int, epoch: int, per_epoch: int) -> None:
    """The epoch's micro-batches in order, dealt round-robin over the ranks along the stream of epochs;
    a round holds at most one micro-batch per rank, in rank order."""
    assert plan, "empty plan"
    assert [mb.index for mb in flat(plan)] == list(range(per_epoch))
    assert [mb.rank for mb in flat(plan)] == [(epoch * per_epoch + i) % world_size for i in range(per_epoch)]
    for rnd in plan:
        assert [mb.rank for mb in rnd] == sorted({mb.rank for mb in rnd})
        assert all(mb.epoch == epoch and mb.records for mb in rnd)


# ------------------------------------------------------------------------------ core properties


@pytest.mark.parametrize("world_size", WORLD_SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_every_record_once_per_epoch(mode, world_size):
    for seed in SEEDS:
        keys = random_keys(seed)
        gpb = 1 + seed % 4
        samplers = [GroupBatchSampler(keys, gpb, mode=mode, seed=seed, world_size=world_size, rank=r)
                    for r in range(world_size)]
        assert len({len(s) for s in samplers}) == 1, "ranks disagree on the number of micro-batches"
        for epoch in (0, 1):
            plan = samplers[0].epoch_plan(epoch)
            assert all(s.epoch_plan(epoch) == plan for s in samplers[1:]), "ranks disagree on the plan"
            check_layout(plan, world_size, epoch, samplers[0].micro_batches_per_epoch)
            seen = Counter(i for mb in flat(plan) for i in mb.records)
            expected = {i for i, (_, lang) in enumerate(keys) if mode != "no_anchor" or lang != "en"}
            assert set(seen) == expected and set(seen.values()) == {1}


@pytest.mark.parametrize("mode", MODES)
def test_the_stream_does_not_depend_on_the_world_size(mode):
    """W ranks taking turns see the micro-batches one process sees, in the same order, whatever the number
    of groups (odd counts included): W ranks with accumulation k train on what 1 process with W*k does."""
    for seed in SEEDS:
        keys = random_keys(seed, n_groups=5 + seed % 4)
        gpb = 1 + seed % 3
        kwargs = dict(mode=mode, seed=seed, languages_per_group=1 + seed % 3)
        one = take(GroupBatchSampler(keys, gpb, **kwargs), 24)
        for world_size in (2, 3, 4):
            ranks = [take(GroupBatchSampler(keys, gpb, world_size=world_size, rank=r, **kwargs), 24 // world_size)
                     for r in range(world_size)]
            assert [ranks[r][k] for k in range(24 // world_size) for r in range(world_size)] == one, world_size


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_grouped_whole_groups_anchor_first_and_balanced(world_size):
    for seed in SEEDS:
        keys = random_keys(seed)
        gpb = 1 + seed % 4
        s = GroupBatchSampler(keys, gpb, seed=seed, world_size=world_size)
        plan = s.epoch_plan(seed % 3)
        check_whole_groups(plan, keys, anchor_first=True, gpb=gpb)
        # Group counts per micro-batch differ by at most one (that is how ranks stay equal).
        counts = [len({keys[i][0] for i in mb.records}) for mb in flat(plan)]
        assert max(counts) - min(counts) <= 1


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_no_anchor_removes_anchor_keeps_groups(world_size):
    for seed in SEEDS:
        keys = random_keys(seed) + [("only_en", "en")]  # a group with nothing left once English goes
        s = GroupBatchSampler(keys, 3, mode="no_anchor", seed=seed, world_size=world_size)
        plan = s.epoch_plan(0)
        check_whole_groups(plan, keys, anchor_first=False, gpb=3)
        assert all(keys[i][0] != "only_en" for mb in flat(plan) for i in mb.records)


def test_rank_iteration_follows_the_plan():
    keys = random_keys(1)
    for world_size in WORLD_SIZES:
        for rank in range(world_size):
            s = GroupBatchSampler(keys, 2, seed=5, world_size=world_size, rank=rank)
            want = [mb.records for e in (0, 1, 2) for mb in flat(s.epoch_plan(e)) if mb.rank == rank]
            assert take(s, 2 * len(s)) == want[:2 * len(s)]


# ------------------------------------------------------------------------- determinism, shuffling


def test_same_seed_same_plan_different_seed_or_epoch_different_order():
    for seed in SEEDS:
        keys = random_keys(seed, n_groups=30)
        for mode in MODES:
            a = GroupBatchSampler(keys, 2, mode=mode, seed=seed)
            b = GroupBatchSampler(keys, 2, mode=mode, seed=seed)
            c = GroupBatchSampler(keys, 2, mode=mode, seed=seed + 100)
            assert a.epoch_plan(0) == b.epoch_plan(0) and a.epoch_plan(3) == b.epoch_plan(3)
            assert a.epoch_plan(0) != c.epoch_plan(0), "the seed does not change the order"
            assert a.epoch_plan(0) != a.epoch_plan(1), "epochs are not reshuffled"


def test_plan_does_not_depend_on_rank_or_call_order():
    keys = random_keys(3)
    s = GroupBatchSampler(keys, 2, seed=1, world_size=2, rank=1)
    later_first = s.epoch_plan(2)
    s.epoch_plan(0)
    assert s.epoch_plan(2) == later_first == GroupBatchSampler(keys, 2, seed=1, world_size=2).epoch_plan(2)


# ----------------------------------------------------------------------------------------- resume


@pytest.mark.parametrize("mode", MODES)
def test_resume_continues_the_uninterrupted_sequence(mode):
    for seed in SEEDS:
        keys = random_keys(seed)
        world_size = 1 + seed % 4
        rank = seed % world_size
        kwargs = dict(mode=mode, seed=seed, world_size=world_size, rank=rank, languages_per_group=2)
        full = GroupBatchSampler(keys, 2, **kwargs)
        n = len(full)
        reference = take(full, 3 * n)
        # Stop inside the first epoch, exactly at its end, and inside the second epoch.
        for k in {0, seed % n, n - 1, n, n + 1 + seed % n}:
            first = GroupBatchSampler(keys, 2, **kwargs)
            head = take(first, k)
            state = json.loads(json.dumps(first.state_dict()))  # must survive a JSON checkpoint
            assert state == first.state_for(k)
            resumed = GroupBatchSampler(keys, 2, **kwargs)
            resumed.load_state_dict(state)
            assert head + take(resumed, 3 * n - k) == reference, f"resume at {k} diverged"


def test_state_counts_and_rolls_over():
    s = GroupBatchSampler(random_keys(0), 2)
    n = len(s)
    assert s.state_dict() == {"epoch": 0, "position": 0}
    take(s, n - 1)
    assert s.state_dict() == {"epoch": 0, "position": n - 1}
    take(s, 1)
    assert s.state_dict() == {"epoch": 1, "position": 0}
    s.load_state_dict({"epoch": 4, "position": n})  # saved just after an epoch's last micro-batch
    assert s.state_dict() == {"epoch": 5, "position": 0}
    s.set_epoch(2)
    assert take(s, 1) == [s.epoch_plan(2)[0][0].records]
    for bad in ({"epoch": 0}, {"epoch": 0, "position": n + 1}, {"epoch": -1, "position": 0}):
        with pytest.raises(ValueError):
            s.load_state_dict(bad)


# -------------------------------------------------------------------------------------- ablations


def test_shuffled_mixes_groups_with_grouped_sizes():
    for seed in SEEDS:
        keys = random_keys(seed, n_groups=30)
        for world_size in WORLD_SIZES:
            g = GroupBatchSampler(keys, 4, seed=seed, world_size=world_size)
            s = GroupBatchSampler(keys, 4, mode="shuffled", seed=seed, world_size=world_size)
            assert len(s) == len(g), "shuffled must take as many steps per epoch as grouped"
            sizes = [len(mb.records) for mb in flat(s.epoch_plan(0))]
            assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(keys)
            groups = groups_of(keys)
            partial = any(
                0 < sum(keys[i][0] == name for i in mb.records) < len(members)
                for mb in flat(s.epoch_plan(0)) for name, members in groups.items()
            )
            assert partial, "shuffled kept every group whole"


def test_every_mode_trains_the_same_records_per_epoch():
    """What lets the study compare batch modes at whole epochs: with a ``languages_per_group`` draw,
    grouped, shuffled and monolingual cover exactly the same records in each epoch (no_anchor: the
    same without the anchor), in the same number of steps (monolingual: unless languages outnumber them)."""
    for seed in SEEDS:
        keys = random_keys(seed, n_groups=12)
        for epoch in (0, 1):
            seen = {}
            for mode in ("grouped", "shuffled", "monolingual", "no_anchor"):
                sampler = GroupBatchSampler(keys, 1, mode=mode, languages_per_group=2, seed=seed)
                records = [i for mb in flat(sampler.epoch_plan(epoch)) for i in mb.records]
                assert len(records) == len(set(records))
                seen[mode] = set(records)
            assert seen["grouped"] == seen["shuffled"] == seen["monolingual"]
            assert seen["no_anchor"] == {i for i in seen["grouped"] if keys[i][1] != "en"}


def test_monolingual_one_language_per_micro_batch():
    for seed in SEEDS:
        keys = random_keys(seed)
        for world_size in WORLD_SIZES:
            g = GroupBatchSampler(keys, 3, seed=seed, world_size=world_size)
            m = GroupBatchSampler(keys, 3, mode="monolingual", seed=seed, world_size=world_size)
            plan = flat(m.epoch_plan(1))
            assert all(len({keys[i][1] for i in mb.records}) == 1 for mb in plan)
            assert {keys[i][1] for mb in plan for i in mb.records} == {lang for _, lang in keys}
            # Same step count as grouped unless there are more languages than grouped micro-batches.
            n_langs = len({lang for _, lang in keys})
            assert len(m) * world_size == world_size * -(-max(len(g) * world_size, n_langs) // world_size)
            # Languages are interleaved, not one block after another.
            order = [keys[mb.records[0]][1] for mb in plan]
            assert len(plan) < 8 or order != sorted(order)


def test_monolingual_micro_batches_match_grouped_record_count():
    keys = [(f"g{g}", lang) for g in range(48) for lang in ("en", "fr", "de")]
    m = GroupBatchSampler(keys, 4, mode="monolingual", seed=0)
    assert {len(mb.records) for mb in flat(m.epoch_plan(0))} == {12}  # 4 groups x 3 languages
    assert len(m) == len(GroupBatchSampler(keys, 4, seed=0)) == 12
    # When the languages do not divide the micro-batches evenly, sizes stay as close as they can.
    m = GroupBatchSampler(keys[:120], 4, mode="monolingual", seed=0)  # 40 per language, 10 micro-batches
    assert sorted(len(mb.records) for mb in flat(m.epoch_plan(0))) == [10] * 4 + [13] * 4 + [14] * 2


@pytest.mark.parametrize("mode", MODES)
def test_languages_per_group_keeps_anchor_and_k_others(mode):
    varied = 0
    for seed in SEEDS:
        keys = random_keys(seed)
        groups = groups_of(keys)
        k = 1 + seed % 3
        s = GroupBatchSampler(keys, 2, mode=mode, languages_per_group=k, seed=seed, world_size=1 + seed % 2)
        picks = []
        for epoch in (0, 1, 2):
            plan = flat(s.epoch_plan(epoch))
            if mode in ("grouped", "no_anchor"):
                check_partial_groups(plan, keys, anchor=mode == "grouped")
            seen = Counter(i for mb in plan for i in mb.records)
            assert set(seen.values()) == {1}
            chosen: dict[str, set[str]] = {}
            for i in seen:
                chosen.setdefault(keys[i][0], set()).add(keys[i][1])
            for g, members in groups.items():
                others = len(members) - 1
                langs = chosen.get(g, set())
                assert ("en" in langs) == (mode != "no_anchor")
                assert len(langs - {"en"}) == min(k, others)
            picks.append(chosen)
        varied += picks[0] != picks[1] or picks[1] != picks[2]
    assert varied >= len(SEEDS) // 2, "the language draw does not change between epochs"


def check_partial_groups(plan, keys, *, anchor: bool) -> None:
    """With a language draw: each group appears in one micro-batch only, contiguous, anchor first."""
    where: dict[str, int] = {}
    for mb in plan:
        runs = [g for g, _ in itertools.groupby(keys[i][0] for i in mb.records)]
        assert len(runs) == len(set(runs))
        for g in runs:
            assert where.setdefault(g, mb.index) == mb.index, f"group {g} in two micro-batches"
            first = next(i for i in mb.records if keys[i][0] == g)
            assert (keys[first][1] == "en") == anchor


def test_same_language_draw_in_every_mode():
    keys = random_keys(7)
    contents = []
    for mode in ("grouped", "shuffled", "monolingual"):
        s = GroupBatchSampler(keys, 2, mode=mode, languages_per_group=1, seed=3)
        contents.append(sorted(i for mb in flat(s.epoch_plan(0)) for i in mb.records))
    assert contents[0] == contents[1] == contents[2]


# ---------------------------------------------------------------------------------- length order


def padded_cost(plan, lengths) -> int:
    return sum(max(lengths[i] for i in mb.records) * len(mb.records) for mb in flat(plan))


@pytest.mark.parametrize("mode", MODES)
def test_order_by_length_reduces_padding(mode):
    for seed in range(5):
        keys = random_keys(seed, n_groups=60)
        rng = random.Random(seed)
        base = {g: rng.randint(10, 500) for g in groups_of(keys)}  # spread lengths, similar within a group
        lengths = [base[g] + rng.randint(0, 20) for g, _ in keys]
        kwargs = dict(mode=mode, lengths=lengths, seed=seed, world_size=2)
        plain = GroupBatchSampler(keys, 3, **kwargs)
        ordered = GroupBatchSampler(keys, 3, order_by_length=True, **kwargs)
        assert padded_cost(ordered.epoch_plan(0), lengths) < padded_cost(plain.epoch_plan(0), lengths)
        if mode in ("grouped", "no_anchor"):
            check_whole_groups(ordered.epoch_plan(0), keys, anchor_first=mode == "grouped", gpb=3)
        seen = Counter(i for mb in flat(ordered.epoch_plan(0)) for i in mb.records)
        assert set(seen.values()) == {1}
        # Batch order stays random: not a monotone run of lengths.
        maxima = [max(lengths[i] for i in mb.records) for mb in flat(ordered.epoch_plan(0))]
        assert maxima != sorted(maxima)


# -------------------------------------------------------------------------- edge cases, errors


def test_groups_not_a_multiple_of_the_ranks_are_seen_once_and_run_on_into_the_next_epoch():
    """groups_per_batch=1 and 7 groups on 3 ranks: 7 micro-batches per epoch, each group once; the third
    round is rank 0's last of epoch 0 and ranks 1 and 2's first of epoch 1."""
    keys = [(f"g{g}", lang) for g in range(7) for lang in ("en", "fr")]
    ranks = [GroupBatchSampler(keys, 1, world_size=3, rank=r) for r in range(3)]
    assert ranks[0].micro_batches_per_epoch == 7 and len(ranks[0]) == 3
    plan = flat(ranks[0].epoch_plan(0))
    seen = Counter(keys[mb.records[0]][0] for mb in plan)
    assert set(seen) == {f"g{g}" for g in range(7)} and set(seen.values()) == {1}
    check_whole_groups(ranks[0].epoch_plan(0), keys, anchor_first=True, gpb=1)
    third = [next(itertools.islice(s.iter_micro_batches(), 2, None)) for s in ranks]
    assert [(mb.epoch, mb.index) for mb in third] == [(0, 6), (1, 0), (1, 1)]
    assert [s.state_dict() for s in ranks] == [{"epoch": 1, "position": 2}] * 3


def test_too_few_groups_for_world_size():
    keys = [(f"g{g}", lang) for g in range(3) for lang in ("en", "fr")]
    with pytest.raises(ValueError, match=r"3 group\(s\) for world size 4 leaves a rank with no group"):
        GroupBatchSampler(keys, 2, world_size=4)
    GroupBatchSampler(keys, 2, world_size=3)  # exactly one group per rank is fine
    with pytest.raises(ValueError, match="0 group"):  # nothing but anchors, and the anchor is removed
        GroupBatchSampler([("a", "en")], 1, mode="no_anchor")


@pytest.mark.parametrize(
    ("keys", "kwargs", "message"),
    [
        ([], {}, "no records"),
        ([("a", "en")], {"groups_per_batch": 0}, "groups_per_batch"),
        ([("a", "en"), ("a", "fr"), ("a", "en")], {}, r"duplicate \(group, lang\) = \('a', 'en'\) at records 0 and 2"),
        ([("a", "en")], {"mode": "mixed"}, "unknown batch mode 'mixed'"),
        ([("a", "fr")], {}, "no record in the anchor language 'en'"),
        ([("a", "en")], {"languages_per_group": 0}, "languages_per_group"),
        ([("a", "en")], {"order_by_length": True}, "lengths"),
        ([("a", "en")], {"lengths": [1, 2]}, "lengths has 2 entries"),
        ([("a", "en")], {"rank": 1}, "rank"),
    ],
)
def test_validation(keys, kwargs, message):
    kwargs = {"groups_per_batch": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        GroupBatchSampler(keys, **kwargs)


def test_modes_match_the_config():
    from bcat.batching.sampler import SamplerError
    from bcat.config import BATCH_MODES
    from bcat.errors import ConfigError

    assert tuple(MODES) == tuple(BATCH_MODES)
    assert issubclass(SamplerError, ConfigError) and issubclass(SamplerError, ValueError)
