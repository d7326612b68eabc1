"""``bcat demo``: the whole story on the built-in model and data, with the same commands a user runs.

1. ``bcat data pairs``: ORPO preference pairs from the bundled train split (seen languages only);
2. ``bcat eval``: the base model on a subset of the bundled test split (all eleven languages);
3. ``bcat train``: BCAT (ORPO, whole groups per micro-batch, English anchor, alignment terms on);
4. ``bcat eval``: the tuned model on the same items;
5. ``bcat compare`` and ``bcat report``: per-language verdicts and ``report.html``.

Every number the demo prints comes from those commands' output files in ``--output``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcat.kb.languages import ANCHOR, SEEN

DEMO_TRAIN_OVERRIDES = [
    "model.path=builtin:gemma3-270m",
    "objective.name=orpo",
    "batch.mode=grouped",
    "batch.groups_per_batch=1",
    "batch.languages_per_group=3",
    "alignment.hidden_loss=cosine",  # InfoNCE needs other groups in the micro-batch as negatives
    "data.max_length=384",
    "training.learning_rate=3e-4",
    "training.lr_scheduler=constant",
    "training.warmup_steps=0",
]


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="evaluate, train and re-evaluate the built-in model on the bundled data")
    p.add_argument("--output", default="runs/demo", help="directory for every artefact (default runs/demo)")
    p.add_argument("--eval-groups", type=int, default=20, help="test groups evaluated (x 11 languages; default 20)")
    p.add_argument("--steps", type=int, default=48, help="training steps (default 48)")
    p.add_argument("--batch-size", type=int, default=12, help="generation batch size (default 12)")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for the training config")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from bcat.cli import main

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    seen = ",".join((ANCHOR, *SEEN))
    pairs = out / "train_pairs.jsonl"
    steps = [
        ["data", "pairs", "--input", str(_resource("kb/train.jsonl")), "--output", str(pairs)],
        _eval("builtin:gemma3-270m", out / "eval_base", args),
        ["train", *DEMO_TRAIN_OVERRIDES, f"data.train={pairs}", f"data.languages=[{seen}]",
         f"training.max_steps={args.steps}", f"training.output_dir={out / 'train'}", *args.overrides],
        _eval(str(out / "train" / "model"), out / "eval_bcat", args),
        ["compare", str(out / "eval_base"), str(out / "eval_bcat"), "--output", str(out)],
        ["report", str(out / "eval_base"), str(out / "eval_bcat"), "--output", str(out)],
    ]
    for argv in steps:
        if argv[0] == "train" and (out / "train" / "training_summary.json").exists():
            print("bcat demo: reusing the finished training run in", out / "train")
            continue
        print("\n$ bcat " + " ".join(argv), flush=True)
        code = main(argv)
        if code:
            return code
    print_table(out / "eval_base" / "metrics.json", out / "eval_bcat" / "metrics.json")
    print(f"\nbcat demo: done in {(time.time() - started) / 60:.1f} min; report: {out / 'report.html'}")
    return 0


def _eval(model: str, output: Path, args) -> list[str]:
    return ["eval", "--model", model, "--data", "builtin", "--limit", str(args.eval_groups),
            "--batch-size", str(args.batch_size), "--max-new-tokens", "16", "--output", str(output)]


def _resource(name: str) -> Path:
    from importlib.resources import files

    return Path(str(files("bcat") / "resources" / name))


def print_table(before_path: Path, after_path: Path) -> None:
    """Per-language accuracy before and after, the gap, and the unseen-language mean."""
    before, after = (json.loads(p.read_text()) for p in (before_path, after_path))
    print(f"\n{'language':<10}{'base':>8}{'bcat':>8}")
    for lang in before["per_language"]:
        a, b = before["per_language"][lang]["accuracy"], after["per_language"][lang]["accuracy"]
        print(f"{lang:<10}{a:>8.2f}{b:>8.2f}")
    for key in ("english", "non_english_mean", "gap", "unseen_mean"):
        if before.get(key) is not None:
            print(f"{key:<18}{before[key]:>8.2f} -> {after[key]:.2f}")
