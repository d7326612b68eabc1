"""The batch sampler: which records go into which micro-batch, on which rank, in which order.

BCAT's alignment terms compare the language variants of one item with each other (the hidden state of
the French record is pulled toward the English anchor's, the anchors of the *other* groups are the
InfoNCE negatives). So they can only be computed when the whole group sits in the same forward pass.
This module decides the batches; it knows nothing of models or tokens, only of record indices and their
``(group, lang)`` keys.

Vocabulary
    *record*: one row of the dataset, identified by its index; *group*: all language variants of one
    item (records sharing ``group``); *anchor*: the language every group is aligned toward (``en``);
    *micro-batch*: what one rank feeds through one forward/backward; *stream*: the micro-batches of
    epoch 0, then those of epoch 1, and so on; *round*: one micro-batch per rank, taken together (the
    ranks of a DDP job step through rounds in lock-step).

Modes (``batch.mode``)
    ``grouped`` (BCAT): whole groups, at most ``groups_per_batch`` of them per micro-batch, anchor
    first inside each group. ``no_anchor``: the same with the anchor records removed. ``shuffled``: the
    same records, shuffled freely across groups (what a stock trainer does; ``bcat train``'s default).
    ``monolingual``: every micro-batch holds one language only.

    To make the ablations comparable with ``grouped``, ``shuffled`` and ``monolingual`` use the same
    records per epoch (the anchor included, the same ``languages_per_group`` draw) and the same number of
    micro-batches per epoch as ``grouped`` does. A micro-batch therefore holds on average as many records
    as a ``grouped`` one, about ``groups_per_batch x languages per group``, and a run of ``max_steps``
    covers the same number of epochs whatever the mode. (``monolingual`` gets more micro-batches only
    when there are more languages than ``grouped`` micro-batches, since every language needs one.)

Gradient accumulation and data parallelism
    With group-internal losses, one micro-batch of 8 records is NOT equivalent to 8 micro-batches of 1
    (nor to 2 ranks x 4): the alignment terms need the whole group in one forward, and the InfoNCE
    negatives are the other groups of the same micro-batch. So the sampler never splits a group across
    micro-batches or ranks, and accumulating gradients over micro-batches is the same as one larger
    batch only for the per-record terms (SFT/DPO/ORPO), not for the alignment terms. What IS guaranteed:

    * every record of the epoch is seen exactly once per epoch, summed over all ranks;
    * every group is whole inside one micro-batch (so inside one rank), anchor first;
    * the stream does not depend on the world size: rank ``r`` of ``W`` takes its micro-batches
      ``r, r + W, r + 2W, ...``, running on into the next epoch without a break. So ``W`` ranks with
      gradient accumulation ``k`` see, step by step, the same records as one process with accumulation
      ``W * k``, whatever the number of groups; a step may hold the end of one epoch and the start of
      the next, in one process as in several;
    * the stream never ends, so every rank always has a next micro-batch and DDP never waits on a rank
      that has run out of data;
    * the order depends only on ``(seed, epoch)``, so every rank computes the same stream without
      talking to the others, and a resumed run continues with exactly the micro-batches an uninterrupted
      run would have seen.

Randomness comes from :class:`random.Random` seeded with strings such as ``"bcat-order:0:3"``: Python
hashes string seeds with SHA-512, so the plan is the same on every machine and in every process.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from bcat.config import BATCH_MODES
from bcat.errors import ConfigError
from bcat.languages import ANCHOR

MODES = BATCH_MODES

LENGTH_SORT_CHUNK = 50
"""With ``order_by_length``, units are length-sorted within windows of this many micro-batches' worth,
so micro-batches hold similar lengths while the order across windows stays random."""

T = TypeVar("T")


class SamplerError(ConfigError, ValueError):
    """Impossible batch settings for this data. A :class:`ValueError`, and a ``ConfigError`` so that the
    command line prints it as one line."""


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of the global plan of an epoch."""

    epoch: int
    index: int
    """Position within the epoch's global list of micro-batches."""
    rank: int
    """The rank that takes it: position ``epoch * micro_batches_per_epoch + index`` of the stream, modulo
    the world size."""
    records: list[int]
    """Record indices. The records of one group are contiguous, the anchor first within its group."""


@dataclass
class _Group:
    key: Hashable
    anchor: int | None  # record index of the anchor-language record
    others: list[int]  # record indices of the other languages, in dataset order


class GroupBatchSampler:
    """Deterministic, resumable, distributed batch sampler that keeps language groups together.

    ``keys[i]`` is the ``(group, lang)`` of record ``i``. Iterating yields this rank's micro-batches of the
    stream as lists of record indices, epoch after epoch, forever; the training loop stops at ``max_steps``. Use it
    as a DataLoader ``batch_sampler``, or index the dataset directly.

    A tiny plan: three items, ``q3`` lacks German, two groups per micro-batch. Two micro-batches result,
    one with two groups and one with one (sizes differ by at most one group); the English anchor leads
    every group.

    >>> keys = [("q1", "en"), ("q1", "fr"), ("q1", "de"),
    ...         ("q2", "fr"), ("q2", "en"), ("q2", "de"),
    ...         ("q3", "fr"), ("q3", "en")]
    >>> sampler = GroupBatchSampler(keys, groups_per_batch=2, seed=0)
    >>> for (mb,) in sampler.epoch_plan(0):
    ...     print(mb.index, [keys[i] for i in mb.records])
    0 [('q2', 'en'), ('q2', 'fr'), ('q2', 'de'), ('q1', 'en'), ('q1', 'fr'), ('q1', 'de')]
    1 [('q3', 'en'), ('q3', 'fr')]
    >>> len(sampler), sampler.state_dict()
    (2, {'epoch': 0, 'position': 0})

    Args:
        keys: ``(group, lang)`` per record index. Every group must contain the anchor language.
        groups_per_batch: most groups in one micro-batch.
        mode: ``grouped``, ``shuffled``, ``monolingual`` or ``no_anchor`` (see the module docstring).
        anchor: anchor language code.
        languages_per_group: each epoch, keep the anchor and this many other languages per group, drawn
            from ``(seed, epoch)``; ``None`` keeps all.
        lengths: token length per record; needed by ``order_by_length``.
        order_by_length: put records (groups, in ``grouped``) of similar length together to cut padding.
        seed: seed of the order; each epoch is reshuffled from ``(seed, epoch)``.
        world_size, rank: data-parallel layout; every rank builds the same global plan.
    """

    def __init__(
        self,
        keys: Sequence[tuple[str, str]],
        groups_per_batch: int,
        *,
        mode: str = "grouped",
        anchor: str = ANCHOR,
        languages_per_group: int | None = None,
        lengths: Sequence[int] | None = None,
        order_by_length: bool = False,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if mode not in MODES:
            raise SamplerError(f"unknown batch mode {mode!r}; expected one of {', '.join(MODES)}")
        if len(keys) == 0:
            raise SamplerError("cannot build batches: the dataset has no records")
        if not isinstance(groups_per_batch, int) or groups_per_batch < 1:
            raise SamplerError(f"groups_per_batch must be a positive integer, got {groups_per_batch!r}")
        if languages_per_group is not None and (not isinstance(languages_per_group, int) or languages_per_group < 1):
            raise SamplerError(f"languages_per_group must be a positive integer or None, got {languages_per_group!r}")
        if not isinstance(world_size, int) or world_size < 1:
            raise SamplerError(f"world_size must be a positive integer, got {world_size!r}")
        if not isinstance(rank, int) or not 0 <= rank < world_size:
            raise SamplerError(f"rank must be in [0, {world_size - 1}] for world size {world_size}, got {rank!r}")
        if lengths is not None and len(lengths) != len(keys):
            raise SamplerError(f"lengths has {len(lengths)} entries but there are {len(keys)} records")
        if order_by_length and lengths is None:
            raise SamplerError("order_by_length needs the token length of every record (lengths=...)")

        self.mode, self.anchor, self.seed = mode, anchor, seed
        self.groups_per_batch, self.languages_per_group = groups_per_batch, languages_per_group
        self.world_size, self.rank = world_size, rank
        self.order_by_length = order_by_length
        self._langs = [str(lang) for _, lang in keys]
        self._lengths = [int(n) for n in lengths] if lengths is not None else None
        self._groups = self._build_groups(keys)

        # Groups that put at least one record into a batch; in no_anchor, an anchor-only group has none.
        # Whether a group is active never depends on the epoch (the draw keeps at least one language).
        keep_anchor = mode != "no_anchor"
        self._active = [g for g, grp in enumerate(self._groups) if keep_anchor or grp.others]
        n_groups = len(self._active)
        if n_groups < world_size:
            raise SamplerError(
                f"{n_groups} group(s) for world size {world_size} leaves a rank with no group; "
                f"use at most {n_groups} rank(s) or more data"
            )
        k = languages_per_group
        self.records_per_epoch = sum(
            int(keep_anchor) + (len(grp.others) if k is None else min(k, len(grp.others)))
            for grp in (self._groups[g] for g in self._active)
        )

        # As few micro-batches as the groups need, whatever the world size (ranks share one stream).
        # Splitting the groups evenly over them (sizes differ by at most one group) never repeats or
        # drops a group; monolingual needs at least one micro-batch per language.
        self.micro_batches_per_epoch = math.ceil(n_groups / groups_per_batch)
        """Micro-batches of one epoch, summed over all ranks; never depends on the world size."""
        if mode == "monolingual":
            n_langs = len({self._langs[i] for grp in self._groups for i in self._content_candidates(grp)})
            self.micro_batches_per_epoch = max(self.micro_batches_per_epoch, n_langs)

        self._taken = 0  # micro-batches this rank has taken from the stream
        self._cache: dict[int, list[list[int]]] = {}

    # ----------------------------------------------------------------------------------------- set-up

    def _build_groups(self, keys: Sequence[tuple[str, str]]) -> list[_Group]:
        """Groups in order of first appearance; checks duplicates and the anchor."""
        groups: dict[Hashable, _Group] = {}
        seen: dict[tuple[Hashable, str], int] = {}
        for i, key in enumerate(keys):
            if not isinstance(key, (tuple, list)) or len(key) != 2:
                raise SamplerError(f"record {i}: key must be a (group, lang) pair, got {key!r}")
            group, lang = key[0], str(key[1])
            if (group, lang) in seen:
                raise SamplerError(
                    f"duplicate (group, lang) = ({group!r}, {lang!r}) at records {seen[group, lang]} and {i}: "
                    "a group holds one record per language"
                )
            seen[group, lang] = i
            grp = groups.setdefault(group, _Group(group, None, []))
            if lang == self.anchor:
                grp.anchor = i
            else:
                grp.others.append(i)
        missing = [g.key for g in groups.values() if g.anchor is None]
        if missing:
            raise SamplerError(
                f"{len(missing)} of {len(groups)} group(s) have no record in the anchor language "
                f"{self.anchor!r} (first: {missing[0]!r}); drop them (data.drop_groups_without_anchor=true) "
                "or choose another anchor"
            )
        return list(groups.values())

    def _content_candidates(self, grp: _Group) -> list[int]:
        """Every record of a group that this mode can ever put in a batch."""
        return ([grp.anchor] if self.mode != "no_anchor" else []) + grp.others  # type: ignore[list-item]

    # ---------------------------------------------------------------------------------- the plan

    def _rng(self, purpose: str, epoch: int) -> random.Random:
        # A string seed is hashed with SHA-512: the same stream in every process and on every machine.
        return random.Random(f"bcat-{purpose}:{self.seed}:{epoch}")

    def _epoch_content(self, epoch: int) -> list[list[int]]:
        """The records of each active group this epoch, anchor first, in canonical group order.

        The language draw has its own random stream and visits every group whatever the mode, so that
        ``grouped``, ``shuffled``, ``monolingual`` and ``no_anchor`` see the same languages per group
        for the same ``(seed, epoch)``.
        """
        k = self.languages_per_group
        rng = self._rng("languages", epoch)
        chosen: list[list[int]] = []
        for grp in self._groups:
            others = grp.others
            if k is not None and k < len(others):
                # Keep dataset order among the chosen ones: only the set is random.
                others = [others[j] for j in sorted(rng.sample(range(len(others)), k))]
            chosen.append(([grp.anchor] if self.mode != "no_anchor" else []) + others)  # type: ignore[list-item]
        return [chosen[g] for g in self._active]

    def _global_batches(self, epoch: int) -> list[list[int]]:
        """The epoch's global list of micro-batches (record lists), identical on every rank."""
        if epoch in self._cache:
            return self._cache[epoch]
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        content = self._epoch_content(epoch)
        rng = self._rng("order", epoch)
        if self.mode in ("grouped", "no_anchor"):
            batches = self._grouped_batches(content, rng)
        elif self.mode == "shuffled":
            batches = self._shuffled_batches(content, rng)
        else:
            batches = self._monolingual_batches(content, rng)
        assert len(batches) == self.micro_batches_per_epoch
        # Random micro-batch order: otherwise the larger micro-batches of an even split would all come
        # first, and length-sorted windows would run short-to-long.
        rng.shuffle(batches)
        self._cache = {epoch: batches}  # one epoch is all iteration needs; keeps memory flat
        return batches

    def _length_sorted(self, units: list[T], key: Callable[[T], int], per_batch: int) -> list[T]:
        """Sort by length inside windows of ``LENGTH_SORT_CHUNK`` micro-batches' worth of units."""
        if not self.order_by_length:
            return units
        window = LENGTH_SORT_CHUNK * max(1, per_batch)
        # sorted() is stable: equal lengths keep the random order of the shuffle.
        return [u for s in range(0, len(units), window) for u in sorted(units[s : s + window], key=key)]

    def _max_len(self, records: list[int]) -> int:
        assert self._lengths is not None
        return max(self._lengths[i] for i in records)

    def _grouped_batches(self, content: list[list[int]], rng: random.Random) -> list[list[int]]:
        groups = list(content)
        rng.shuffle(groups)
        groups = self._length_sorted(groups, self._max_len, self.groups_per_batch)
        return [[i for grp in part for i in grp] for part in _even_split(groups, self.micro_batches_per_epoch)]

    def _shuffled_batches(self, content: list[list[int]], rng: random.Random) -> list[list[int]]:
        records = [i for grp in content for i in grp]
        rng.shuffle(records)
        per_batch = math.ceil(len(records) / self.micro_batches_per_epoch)
        records = self._length_sorted(records, lambda i: self._lengths[i], per_batch)  # type: ignore[index]
        return _even_split(records, self.micro_batches_per_epoch)

    def _monolingual_batches(self, content: list[list[int]], rng: random.Random) -> list[list[int]]:
        by_lang: dict[str, list[int]] = {}
        for grp in content:
            for i in grp:
                by_lang.setdefault(self._langs[i], []).append(i)
        langs = sorted(by_lang)  # a fixed visiting order, independent of dict insertion
        counts = _apportion({lang: len(by_lang[lang]) for lang in langs}, self.micro_batches_per_epoch)
        batches: list[list[int]] = []
        for lang in langs:
            records = by_lang[lang]
            rng.shuffle(records)
            per_batch = math.ceil(len(records) / counts[lang])
            records = self._length_sorted(records, lambda i: self._lengths[i], per_batch)  # type: ignore[index]
            batches += _even_split(records, counts[lang])
        return batches

    def epoch_plan(self, epoch: int) -> list[list[MicroBatch]]:
        """The micro-batches of an epoch in stream order, as rounds: those taken together, in rank order.

        Rank ``r`` takes stream positions ``r, r + W, r + 2W, ...``; when an epoch's micro-batches are not
        a multiple of the world size, its first and last rounds are shared with the neighbouring epochs
        (they hold only this epoch's part). Does not change the state.
        """
        batches = self._global_batches(epoch)
        W, first = self.world_size, epoch * self.micro_batches_per_epoch
        rounds: dict[int, list[MicroBatch]] = {}
        for index, records in enumerate(batches):
            position = first + index
            rounds.setdefault(position // W, []).append(MicroBatch(epoch, index, position % W, list(records)))
        return list(rounds.values())

    def micro_batch(self, taken: int) -> MicroBatch:
        """This rank's micro-batch after it has taken ``taken`` of them from the stream. Does not change the state."""
        if taken < 0:
            raise ValueError(f"taken must be >= 0, got {taken}")
        epoch, index = divmod(taken * self.world_size + self.rank, self.micro_batches_per_epoch)
        return MicroBatch(epoch, index, self.rank, list(self._global_batches(epoch)[index]))

    # ------------------------------------------------------------------------------ iteration, state

    def __len__(self) -> int:
        """Micro-batches per epoch for this rank, rounded up (rounds per epoch; the same on every rank)."""
        return math.ceil(self.micro_batches_per_epoch / self.world_size)

    def iter_micro_batches(self) -> Iterator[MicroBatch]:
        """Like ``iter(sampler)`` but yields :class:`MicroBatch` objects (with epoch and index)."""
        while True:
            # Read the state afresh each time, so load_state_dict/set_epoch take effect immediately.
            mb = self.micro_batch(self._taken)
            # Advance before yielding: the state then counts this micro-batch as consumed.
            self._taken += 1
            yield mb

    def __iter__(self) -> Iterator[list[int]]:
        """This rank's micro-batches from the saved position on, epoch after epoch, forever.

        The state advances as micro-batches are yielded. A DataLoader with worker processes pulls
        batches ahead of the training loop; save :meth:`state_for` of the micro-batches actually
        consumed rather than :meth:`state_dict` in that case.
        """
        for mb in self.iter_micro_batches():
            yield mb.records

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "position": k}``: the ranks together have taken ``k`` micro-batches of epoch ``e``
        (the same on every rank, which steps in lock-step with the others)."""
        return self.state_for(self._taken)

    def state_for(self, micro_batches_seen: int) -> dict[str, int]:
        """The state after this rank has consumed ``micro_batches_seen`` micro-batches since the start of
        training (optimizer steps x gradient accumulation): what to save when a loader prefetches."""
        if micro_batches_seen < 0:
            raise ValueError(f"micro_batches_seen must be >= 0, got {micro_batches_seen}")
        epoch, position = divmod(micro_batches_seen * self.world_size, self.micro_batches_per_epoch)
        return {"epoch": epoch, "position": position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where the sampler that saved ``state`` stopped."""
        try:
            epoch, position = int(state["epoch"]), int(state["position"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"sampler state must look like {{'epoch': int, 'position': int}}, got {state!r}") from None
        n = self.micro_batches_per_epoch
        taken, off_round = divmod(epoch * n + position, self.world_size)
        if epoch < 0 or not 0 <= position <= n or off_round:
            raise ValueError(
                f"sampler state {state!r} does not fit {n} micro-batches per epoch on {self.world_size} rank(s); "
                "were the data, world size or batch settings changed since it was saved?"
            )
        self._taken = taken

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first micro-batch (the ``DistributedSampler`` idiom); the epoch must
        start a round (always so on one rank)."""
        self.load_state_dict({"epoch": epoch, "position": 0})


def _even_split(items: list[T], parts: int) -> list[list[T]]:
    """``parts`` contiguous slices whose sizes differ by at most one (``parts <= len(items)``)."""
    size, larger = divmod(len(items), parts)
    out, start = [], 0
    for p in range(parts):
        end = start + size + (p < larger)
        out.append(items[start:end])
        start = end
    return out


def _apportion(sizes: dict[str, int], total: int) -> dict[str, int]:
    """Micro-batches per language: at least one each, ``total`` in all where possible, never more than
    the language has records, and each new one to the language whose micro-batches are currently the
    largest (so sizes end up as even as they can be)."""
    counts = {lang: 1 for lang in sizes}
    heap = [(-n, lang) for lang, n in sizes.items() if n > 1]
    heapq.heapify(heap)
    for _ in range(total - len(counts)):
        if not heap:
            break  # every record is its own micro-batch already (more micro-batches than records)
        _, lang = heapq.heappop(heap)
        counts[lang] += 1
        if counts[lang] < sizes[lang]:
            heapq.heappush(heap, (-sizes[lang] / counts[lang], lang))
    return counts
