"""``bcat data build`` and ``bcat data pairs``: the bundled controlled-RAG data and training pairs.

    bcat data build [--output DIR] [--seed 0]
    bcat data pairs --input QA.jsonl --output PAIRS.jsonl \\
        [--mix grounding=0.5,language=0.25,hallucination=0.25] [--seed 0] [--sft]
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from pathlib import Path

from bcat.kb.build import build, default_output_dir, write_jsonl
from bcat.kb.pairs import DEFAULT_MIX, make_pairs, make_sft, parse_mix, read_qa

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


def add_cli(subparsers) -> None:
    """Register ``build`` and ``pairs`` under ``bcat data``."""
    p = subparsers.add_parser("build", help="regenerate the bundled multilingual controlled-RAG QA splits",
                              description=cmd_build.__doc__)
    p.add_argument("--output", type=Path, default=None,
                   help=f"output directory (default: the package's {default_output_dir()})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (0 gives the bundled files)")
    p.set_defaults(func=cmd_build)

    p = subparsers.add_parser("pairs", help="make preference pairs (or SFT records) from QA records",
                              description=cmd_pairs.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, type=Path, help="QA JSONL, e.g. bcat/resources/kb/train.jsonl")
    p.add_argument("--output", required=True, type=Path, help="output JSONL")
    p.add_argument("--mix", default=_DEFAULT_MIX_TEXT,
                   help="share of each rejected-answer type: grounding (a distractor passage's answer), "
                        "language (the English answer), hallucination (an answer in no passage)")
    p.add_argument("--seed", type=int, default=0, help="seed for drawing each group's pair type")
    p.add_argument("--sft", action="store_true", help="write prompt + completion (the gold answer) instead of pairs")
    p.set_defaults(func=cmd_pairs)
