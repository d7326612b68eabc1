"""``bcat data check|build|pairs``: validate a data file; the bundled controlled-RAG data and training pairs.

    bcat data check FILE [--objective sft|dpo|orpo] [--tokenizer DIR] [--json]
    bcat data build [--output DIR] [--seed 0]
    bcat data pairs --input QA.jsonl --output PAIRS.jsonl \\
        [--mix grounding=0.5,language=0.25,hallucination=0.25] [--seed 0] [--groups N] [--sft]
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path

from bcat.cli.arguments import positive
from bcat.config import DataConfig
from bcat.data.kb.build import build, default_output_dir, write_jsonl
from bcat.data.kb.pairs import DEFAULT_MIX, make_pairs, make_sft, parse_mix, read_qa, sample_groups
from bcat.data.rag import load_items
from bcat.data.records import DataReport, Settings, load_records, objective_kind, read_rows
from bcat.errors import DataError
from bcat.data.tokenization import length_stats, tokenize_records
from bcat.model.loading import load_tokenizer

log = logging.getLogger(__name__)

_DEFAULT_MIX_TEXT = ",".join(f"{k}={v:g}" for k, v in DEFAULT_MIX.items())


def cmd_build(args) -> int:
    """Regenerate train/dev/test QA files (the bundled ones with the default output and seed)."""
    paths = build(args.output, seed=args.seed)
    for split, path in paths.items():
        lines = path.read_text(encoding="utf-8").count("\n")
        log.info("%s: %d records -> %s", split, lines, path)
    return 0


def cmd_pairs(args) -> int:
    """Turn QA records into preference pairs (or SFT records with --sft)."""
    mix = None if args.sft else parse_mix(args.mix)  # a bad --mix fails before any reading
    records = read_qa(args.input)
    if args.groups is not None:
        records = sample_groups(records, args.groups, args.seed)
    out = make_sft(records) if args.sft else make_pairs(records, mix, seed=args.seed)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, out)
    if args.sft:
        log.info("%d SFT records -> %s", len(out), output)
    else:
        counts = Counter(r["pair_type"] for r in out)
        log.info("%d pairs (%s) -> %s", len(out), ", ".join(f"{k} {counts[k]}" for k in sorted(counts)), output)
    return 0


KINDS = {
    "sft": "SFT records (prompt, completion)",
    "preference": "preference records (prompt, chosen, rejected: DPO, ORPO)",
    "eval": "evaluation records (question, passages, answers: bcat eval)",
}

CHECK_SETTINGS = Settings(objective="--objective {}", drop_groups_without_anchor="--drop-groups-without-anchor")
"""``bcat data check``'s hints name its own flags."""


def _add_check(subparsers) -> None:
    p = subparsers.add_parser("check", help="validate a data file (training or evaluation) and print a summary",
                              description="Validate a data file and print a summary. What the file is for (SFT, "
                                          "preference pairs for DPO/ORPO, or evaluation) is read from its first "
                                          "record unless --objective says it.")
    p.add_argument("file", help="JSONL or Parquet file, or a directory saved with datasets")
    p.add_argument("--objective", default=None, choices=["sft", "dpo", "orpo"],
                   help="check the file as training data for this objective (default: inferred from the records)")
    p.add_argument("--anchor", default=DataConfig.anchor,
                   help=f"anchor language of training data (default {DataConfig.anchor}, as data.anchor)")
    p.add_argument("--drop-groups-without-anchor", action="store_true",
                   help="drop groups that lack the anchor language instead of refusing the file")
    p.add_argument("--tokenizer", help="a local model or tokenizer directory: also print token-length statistics "
                                       "(training data)")
    p.add_argument("--max-length", type=positive, default=DataConfig.max_length,
                   help=f"with --tokenizer: most tokens of prompt + completion, prompts trimmed on the left "
                        f"(default {DataConfig.max_length}, as data.max_length)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_check_main)


def record_kind(path: str) -> str:
    """What a data file's first record is for: ``sft``, ``preference`` or ``eval`` (the rest is
    checked against it)."""
    for line, obj in read_rows(path):
        if not isinstance(obj, dict):
            raise DataError(path, line, None, f"each line must be a JSON object, got {type(obj).__name__}")
        if "chosen" in obj or "rejected" in obj:
            return "preference"
        if "completion" in obj:
            return "sft"
        if "question" in obj or "passages" in obj:
            return "eval"
        raise DataError(path, line, None, "cannot tell what the records are for: give 'completion' (SFT), 'chosen' "
                                          "and 'rejected' (DPO, ORPO), or 'question', 'passages' and 'answers' "
                                          "(evaluation)")
    raise DataError(path, None, None, "no records (empty file)")


def _check_main(args) -> int:
    kind = objective_kind(args.objective) if args.objective else record_kind(args.file)
    if kind == "eval":
        if args.tokenizer:
            raise DataError(args.file, None, None, "holds evaluation records; --tokenizer measures training data")
        report = _eval_report(args.file)
    else:
        records, report = load_records(args.file, args.objective or ("sft" if kind == "sft" else "orpo"), args.anchor,
                                       None, args.drop_groups_without_anchor, CHECK_SETTINGS)
        if args.tokenizer:
            tokenizer = load_tokenizer(args.tokenizer)
            examples = tokenize_records(records, tokenizer, args.max_length)
            report.token_lengths = length_stats(examples)
    if args.json:
        print(json.dumps({"kind": kind, **asdict(report)}, ensure_ascii=False, indent=2))
        return 0
    inferred = "" if args.objective else " (read from the first record)"
    print(f"{report.path}: OK, {KINDS[kind]}{inferred}")
    print(f"  records {report.records}, groups {report.groups}, languages {len(report.records_per_language)}")
    print("  records per language: " + ", ".join(f"{k} {v}" for k, v in report.records_per_language.items()))
    print(f"  groups missing some language: {report.groups_missing_languages}")
    if report.dropped_groups_without_anchor:
        print(f"  dropped groups without the anchor: {report.dropped_groups_without_anchor}")
    for name, stats in (report.token_lengths or {}).items():
        print(f"  tokens {name}: " + ", ".join(f"{k} {v:g}" for k, v in stats.items()))
    return 0


def _eval_report(path: str) -> DataReport:
    """An evaluation file, validated as ``bcat eval`` reads it."""
    items = load_items(path)
    langs_of: dict[str, set[str]] = {}
    for item in items:
        langs_of.setdefault(item.group, set()).add(item.lang)
    per_lang = Counter(item.lang for item in items)
    return DataReport(path=str(path), records=len(items), groups=len(langs_of),
                      records_per_language=dict(sorted(per_lang.items())),
                      groups_missing_languages=sum(1 for langs in langs_of.values() if langs != set(per_lang)))


def add_cli(subparsers) -> None:
    """Register ``check``, ``build`` and ``pairs`` under ``bcat data``."""
    _add_check(subparsers)
    p = subparsers.add_parser("build", help="regenerate the bundled multilingual controlled-RAG QA splits",
                              description=cmd_build.__doc__)
    p.add_argument("--output", type=Path, default=None,
                   help=f"output directory (default: the package's {default_output_dir()})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (0 gives the bundled files)")
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("pairs", help="make preference pairs (or SFT records) from QA records",
                              description=cmd_pairs.__doc__)
    p.add_argument("--input", required=True, type=Path, help="QA JSONL, e.g. bcat/resources/kb/train.jsonl")
    p.add_argument("--output", required=True, type=Path, help="output JSONL")
    p.add_argument("--mix", default=_DEFAULT_MIX_TEXT,
                   help="share of each rejected-answer type: grounding (a distractor passage's answer), language "
                        f"(the English answer), hallucination (an answer in no passage) (default {_DEFAULT_MIX_TEXT})")
    p.add_argument("--seed", type=int, default=0,
                   help="seed for drawing each group's pair type (and --groups; default 0)")
    p.add_argument("--groups", type=positive, default=None,
                   help="keep only N groups, drawn at random with --seed (default: all), e.g. so that a short run "
                        "covers whole epochs")
    p.add_argument("--sft", action="store_true", help="write prompt + completion (the gold answer) instead of pairs")
    p.set_defaults(func=cmd_pairs)
