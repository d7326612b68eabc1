"""``bcat plan``: print exactly what each micro-batch of a run will hold, without loading a model (only
its tokenizer: micro-batches ordered by length use the same token lengths as training)."""

from __future__ import annotations

import json
import sys

from bcat.batching.plan import batch_plan, build_sampler
from bcat.cli.arguments import positive
from bcat.config import CONFIG_HELP, load_config
from bcat.data.records import load_records
from bcat.data.tokenization import tokenize_records
from bcat.model.loading import load_tokenizer


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("plan", help="print the batch plan (which records each micro-batch holds)")
    p.add_argument("--config", help=CONFIG_HELP)
    p.add_argument("--steps", type=positive, default=None, help="optimizer steps to show (default: one epoch)")
    p.add_argument("--world-size", type=positive, default=1, help="processes the run is planned for (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per line (the default is a readable table)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    records, _ = load_records(cfg.data.train, cfg.objective.name, cfg.data.anchor, cfg.data.languages,
                              cfg.data.drop_groups_without_anchor)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    examples = tokenize_records(records, tokenizer, cfg.data.max_length, cfg.data.prompt_truncation_side)
    if args.steps is None:
        per_rank = len(build_sampler(cfg, examples, args.world_size, 0))
        args.steps = max(1, per_rank // cfg.training.gradient_accumulation_steps)
    for entry in batch_plan(cfg, examples, args.steps, args.world_size):
        if args.json:
            sys.stdout.write(json.dumps(entry, ensure_ascii=False) + "\n")
        else:
            items = " ".join(f"{it['group']}/{it['lang']}" for it in entry["items"])
            print(f"epoch {entry['epoch']} step {entry['step']} micro {entry['micro_step']} rank {entry['rank']}: {items}")
    return 0
