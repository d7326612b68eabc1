"""``bcat train``: parse the command line, run :func:`bcat.training.loop.train`."""

from __future__ import annotations

import json
from pathlib import Path

from bcat.config import CONFIG_HELP, load_config
from bcat.model.loading import TRAINED_MODEL_SUBDIR
from bcat.training.loop import train


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model with batch-level cross-lingual alignment")
    p.add_argument("--config", help=CONFIG_HELP)
    resume = p.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true",
                        help="continue from the newest complete checkpoint (refused if there is none)")
    resume.add_argument("--resume-if-possible", action="store_true",
                        help="continue from the newest checkpoint if there is one, else start (for scripts that "
                             "rerun the same command after a kill)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, applied after the config file in the order "
                                                "given (before or after the options), e.g. objective.name=dpo")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume="if-possible" if args.resume_if_possible else args.resume)
    print(json.dumps({k: summary[k] for k in ("steps", "tokens", "wall_time_s", "final_terms")}, indent=1))
    print(f"bcat: model written to {Path(cfg.training.output_dir) / TRAINED_MODEL_SUBDIR}")
    return 0
