"""``bcat diagnose``: before training, does the hidden alignment term tell a translation from another item
on this model and data? (The logic is in :mod:`bcat.training.diagnose`.)

    bcat diagnose --model builtin:gemma3-270m --data pairs.jsonl [--layers all|9,12] [--groups 20] [--output F.json]
"""

from __future__ import annotations

from pathlib import Path

from bcat.cli.arguments import positive, positive_float
from bcat.config import AlignmentConfig, DataConfig
from bcat.errors import ConfigError


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("diagnose", help="parallel vs non-parallel hidden-state similarity before training")
    p.add_argument("--model", default="builtin:gemma3-270m", help="model directory or builtin:gemma3-270m")
    p.add_argument("--data", required=True, help="parallel records (training format: prompt + completion or chosen)")
    p.add_argument("--layers", default=None,
                   help="comma-separated indices into hidden_states, or 'all' (default: the middle layer, as training)")
    p.add_argument("--groups", type=positive, default=20,
                   help="groups used: half fit the statistics, half are measured (default 20, at least 4)")
    p.add_argument("--stats-records", type=int, default=AlignmentConfig.hidden_stats_records,
                   help="records the statistics are fitted on (default "
                        f"{AlignmentConfig.hidden_stats_records}, as alignment.hidden_stats_records)")
    p.add_argument("--max-length", type=positive, default=DataConfig.max_length,
                   help=f"most tokens of prompt + completion (default {DataConfig.max_length}, as data.max_length)")
    p.add_argument("--temperature", type=positive_float, default=AlignmentConfig.temperature,
                   help=f"InfoNCE temperature (default {AlignmentConfig.temperature}, as alignment.temperature)")
    p.add_argument("--seed", type=int, default=0, help="seed of the choice of groups and records (default 0)")
    p.add_argument("--output", type=Path, help="also write the result as JSON here")
    p.set_defaults(func=_main)


def _layers(text: str | None) -> list[int] | None:
    if text is None:
        return None
    if text == "all":
        return []
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers must be 'all' or comma-separated integers, got {text!r}") from None


def _main(args) -> int:
    from bcat.training.diagnose import diagnose, format_report, write_report

    if args.groups < 4 or args.stats_records < 2:
        raise ConfigError("--groups must be at least 4 and --stats-records at least 2")
    result = diagnose(args.model, args.data, _layers(args.layers), args.groups, args.stats_records, args.max_length,
                      args.temperature, args.seed)
    print(format_report(result))
    if args.output:
        write_report(result, args.output)
        print(f"bcat: written to {args.output}")
    return 0
