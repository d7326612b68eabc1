"""``bcat demo``: the whole story on the built-in model and data, with the same commands a user runs.

1. ``bcat data pairs``: ORPO preference pairs of ``--steps`` groups drawn from the bundled train
   split (training uses the seen languages only), so that training is exactly one epoch;
2. ``bcat eval``: the base model on a subset of the bundled test split (all eleven languages);
3. ``bcat train``: BCAT in the setting the reproduction study selected on dev
   (:data:`bcat.study.commands.SELECTED_SETTING`: ORPO, one group of English + 3 languages per
   micro-batch, no alignment terms);
4. ``bcat eval``: the tuned model on the same items;
5. ``bcat compare`` and ``bcat report``: per-language verdicts and ``report.html``.

``--baseline`` adds ordinary fine-tuning as a control: the same objective, pairs, steps and
micro-batch size, but records shuffled across groups (``batch.mode=shuffled``, what a stock trainer
does) and no alignment terms (the selected BCAT setting has none either, so the two differ only in
which records share a micro-batch). It is trained and evaluated on the same items, and
``bcat compare baseline bcat`` (in ``OUTPUT/bcat_vs_baseline``) says what the batch composition
adds over it.

Every number the demo prints comes from those commands' output files in ``--output``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcat.bundled import resource
from bcat.cli.arguments import positive
from bcat.study.commands import ORDINARY_FINE_TUNING, SELECTED_SETTING, eval_argv, pairs_argv, train_argv

BASELINE_OVERRIDES = ORDINARY_FINE_TUNING
"""Ordinary fine-tuning: records shuffled across groups, no alignment terms (all else as BCAT)."""


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="evaluate, train and re-evaluate the built-in model on the bundled data")
    p.add_argument("--output", default="runs/demo", help="directory for every artefact (default runs/demo)")
    p.add_argument("--eval-groups", type=positive, default=20, help="test groups evaluated (x 11 languages; default 20)")
    p.add_argument("--steps", type=positive, default=120,
                   help="training steps = groups of training pairs drawn (one epoch; default 120, as in the study)")
    p.add_argument("--batch-size", type=positive, default=12, help="generation batch size (default 12)")
    p.add_argument("--model", default="builtin:gemma3-270m", help="model to tune (default builtin:gemma3-270m)")
    p.add_argument("--baseline", action="store_true",
                   help="also train and evaluate ordinary fine-tuning (shuffled records, no alignment) as a control")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for the training config")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from bcat.cli import main

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pairs = out / "train_pairs.jsonl"

    def train(run_dir: Path, extra=()) -> list[str]:
        command, *rest = train_argv(args.model, pairs, run_dir, args.steps, [*SELECTED_SETTING, *args.overrides, *extra])
        return [command, "--resume-if-possible", *rest]  # a rerun after a kill continues the training

    evals = [out / "eval_base", out / "eval_bcat"]
    steps = [
        pairs_argv(resource("kb/train.jsonl"), pairs, groups=args.steps),
        _eval(args.model, evals[0], args),
        train(out / "train"),
        _eval(str(out / "train" / "model"), evals[1], args),
    ]
    if args.baseline:
        evals.insert(1, out / "eval_baseline")
        steps += [train(out / "train_baseline", BASELINE_OVERRIDES),
                  _eval(str(out / "train_baseline" / "model"), evals[1], args),
                  ["compare", str(evals[1]), str(evals[2]), "--output", str(out / "bcat_vs_baseline")]]
    steps += [["compare", str(evals[0]), str(evals[-1]), "--output", str(out)],
              ["report", *map(str, evals), "--output", str(out)]]
    for argv in steps:
        run_dir = Path(argv[-1].removeprefix("training.output_dir=")) if argv[0] == "train" else None
        if run_dir is not None and (run_dir / "training_summary.json").exists():
            print("bcat demo: reusing the finished training run in", run_dir)
            continue
        print("\n$ bcat " + " ".join(argv), flush=True)
        code = main(argv)
        if code:
            return code
    print_table([e / "metrics.json" for e in evals])
    print(f"\nbcat demo: done in {(time.time() - started) / 60:.1f} min; report: {out / 'report.html'}")
    return 0


def _eval(model: str, output: Path, args) -> list[str]:
    """The demo owns its output folder: a rerun evaluates again (its training may be new)."""
    return eval_argv(model, output, limit=args.eval_groups, batch_size=args.batch_size, max_new_tokens=16,
                     extra=["--overwrite"])


def print_table(metrics_files: list[Path]) -> None:
    """Per-language strict accuracy (the headline) of each run (base first, bcat last), the gap and
    the unseen-language mean."""
    runs = [json.loads(p.read_text()) for p in metrics_files]
    names = [p.parent.name.removeprefix("eval_") for p in metrics_files]
    print("\nstrict accuracy (headline)")
    print(f"{'language':<18}" + "".join(f"{n:>10}" for n in names))
    for lang in runs[0]["per_language"]:
        print(f"{lang:<18}" + "".join(f"{r['per_language'][lang]['strict_accuracy']:>10.2f}" for r in runs))
    for key in ("english", "non_english_mean", "gap", "unseen_mean"):
        if runs[0].get(key) is not None:
            print(f"{key:<18}" + "".join(f"{r[key]:>10.2f}" for r in runs))
