"""``bcat plan``: print exactly what each micro-batch of a run will hold, without loading a model.

One JSON object per micro-batch and rank::

    {"epoch": 0, "step": 3, "micro_step": 1, "rank": 0, "items": [{"group": "g7", "lang": "en"}, ...]}

``step`` is the optimizer step (0-based); with gradient accumulation several micro-batches
(``micro_step``) make one step.
"""

from __future__ import annotations

import json
import sys
from typing import Iterator

from bcat.config import TrainConfig, load_config
from bcat.data import Record, load_records


def batch_plan(cfg: TrainConfig, records: list[Record], steps: int, world_size: int) -> Iterator[dict]:
    """The first ``steps`` optimizer steps of the run, as the training loop will see them."""
    from bcat.train import build_sampler

    keys = _KeyOnly(records)
    ga = cfg.training.gradient_accumulation_steps
    samplers = [build_sampler(cfg, keys, world_size, rank) for rank in range(world_size)]
    streams = [s.iter_micro_batches() for s in samplers]
    for step in range(steps):
        for micro in range(ga):
            for rank, stream in enumerate(streams):
                mb = next(stream)
                yield {"epoch": mb.epoch, "step": step, "micro_step": micro, "rank": rank,
                       "items": [{"group": records[i].group, "lang": records[i].lang} for i in mb.records]}


class _KeyOnly(list):
    """Records seen through the ``Example`` fields the sampler needs (no tokenizer: lengths = chars)."""

    def __init__(self, records: list[Record]):
        super().__init__(_Item(r) for r in records)


class _Item:
    def __init__(self, r: Record):
        self.group, self.lang = r.group, r.lang
        self.length = len(str(r.prompt)) + max(len(str(c)) for c in r.completions)


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("plan", help="print the batch plan (which records each micro-batch holds)")
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps to show (default: one epoch)")
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--json", action="store_true", help="one JSON object per line (the default is a readable table)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    records, _ = load_records(cfg.data.train, cfg.objective.name, cfg.data.anchor, cfg.data.languages,
                              cfg.data.drop_groups_without_anchor)
    if args.steps is None:
        from bcat.train import build_sampler

        per_rank = len(build_sampler(cfg, _KeyOnly(records), args.world_size, 0))
        args.steps = max(1, per_rank // cfg.training.gradient_accumulation_steps)
    for entry in batch_plan(cfg, records, args.steps, args.world_size):
        if args.json:
            sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
        else:
            items = " ".join(f"{it['group']}/{it['lang']}" for it in entry["items"])
            print(f"epoch {entry['epoch']} step {entry['step']} micro {entry['micro_step']} rank {entry['rank']}: {items}")
    return 0
