"""The batch plan: the sampler a run uses, built from its config, and what each micro-batch will hold.

One JSON object per micro-batch and rank::

    {"epoch": 0, "step": 3, "micro_step": 1, "rank": 0, "items": [{"group": "g7", "lang": "en"}, ...]}

``step`` is the optimizer step (0-based); with gradient accumulation several micro-batches
(``micro_step``) make one step. The plan is built from the same tokenized examples as training
(token lengths, not characters), so with ``batch.order_by_length`` it is exactly the batches a run
trains on.
"""

from __future__ import annotations

from typing import Iterator

from bcat.batching.sampler import GroupBatchSampler
from bcat.config import TrainConfig
from bcat.errors import ConfigError


def build_sampler(cfg: TrainConfig, examples, world_size: int = 1, rank: int = 0) -> GroupBatchSampler:
    """The group sampler of a run, for one rank; a config the data cannot satisfy is a ``ConfigError``."""
    n_groups = len({e.group for e in examples})
    if cfg.batch.groups_per_batch > n_groups:
        raise ConfigError(f"config key 'batch.groups_per_batch' is {cfg.batch.groups_per_batch} but the data has only "
                          f"{n_groups} group(s); use at most {n_groups}")
    try:
        return GroupBatchSampler(
            [(e.group, e.lang) for e in examples], cfg.batch.groups_per_batch, mode=cfg.batch.mode,
            anchor=cfg.data.anchor, languages_per_group=cfg.batch.languages_per_group,
            lengths=[e.length for e in examples], order_by_length=cfg.batch.order_by_length,
            seed=cfg.batch.seed, world_size=world_size, rank=rank,
        )
    except ValueError as e:
        raise ConfigError(f"batch: {e}") from None


def batch_plan(cfg: TrainConfig, examples, steps: int, world_size: int) -> Iterator[dict]:
    """The first ``steps`` optimizer steps of the run, as the training loop will see them.

    ``examples``: the run's tokenized examples (:func:`bcat.data.tokenization.tokenize_records` with the
    run's tokenizer and length settings), whose token lengths ``batch.order_by_length`` sorts by.
    """
    ga = cfg.training.gradient_accumulation_steps
    samplers = [build_sampler(cfg, examples, world_size, rank) for rank in range(world_size)]
    streams = [s.iter_micro_batches() for s in samplers]
    for step in range(steps):
        for micro in range(ga):
            for rank, stream in enumerate(streams):
                mb = next(stream)
                yield {"epoch": mb.epoch, "step": step, "micro_step": micro, "rank": rank,
                       "items": [{"group": examples[i].group, "lang": examples[i].lang} for i in mb.records]}
