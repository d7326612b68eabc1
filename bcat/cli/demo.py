"""``bcat demo``: the whole story on the built-in model and data, with the same commands a user runs.

1. ``bcat data pairs``: ORPO preference pairs of ``--steps`` groups drawn from the bundled train
   split (training uses the seen languages only), so that training is exactly one epoch;
2. ``bcat eval``: the base model on a subset of the bundled test split (all eleven languages);
3. ``bcat train``: ordinary fine-tuning, ``bcat train``'s default batch composition (records
   shuffled across groups), in the reproduction study's setting at one group per step
   (:data:`bcat.study.commands.STUDY_SETTING`: ORPO, 4 records per micro-batch, no alignment terms),
   into ``OUTPUT/train_shuffled``;
4. ``bcat eval``: the tuned model on the same items;
5. ``bcat compare`` and ``bcat report``: per-language verdicts and ``report.html``.

``--grouped`` adds BCAT's batch composition, the A/B of the reproduction study: the same objective,
pairs, steps and micro-batch size, but one whole group per micro-batch, English first, into
``OUTPUT/train_grouped``. It is evaluated on the same items, and ``bcat compare`` of the two (in
``OUTPUT/grouped_vs_shuffled``) says what grouping adds over ordinary fine-tuning.

Every number the demo prints comes from those commands' output files in ``--output``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from bcat.bundled import resource
from bcat.cli.arguments import positive
from bcat.study.commands import STUDY_SETTING, eval_argv, pairs_argv, train_argv

ARMS = {mode: [f"batch.mode={mode}", *STUDY_SETTING] for mode in ("shuffled", "grouped")}
"""The demo's trainings: ordinary fine-tuning (always) and BCAT's grouped batches (``--grouped``), which
differ only in which records share a micro-batch (the study's ``orpo_shuffled`` and ``orpo_best`` arms)."""


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("demo", help="evaluate, train and re-evaluate the built-in model on the bundled data")
    p.add_argument("--output", default="runs/demo", help="directory for every artefact (default runs/demo)")
    p.add_argument("--eval-groups", type=positive, default=20, help="test groups evaluated (x 11 languages; default 20)")
    p.add_argument("--steps", type=positive, default=120,
                   help="training steps = groups of training pairs drawn (one epoch; default 120, as in the study)")
    p.add_argument("--batch-size", type=positive, default=12, help="generation batch size (default 12)")
    p.add_argument("--model", default="builtin:gemma3-270m", help="model to tune (default builtin:gemma3-270m)")
    p.add_argument("--grouped", action="store_true",
                   help="also train and evaluate BCAT's grouped batches (whole groups per micro-batch) and compare "
                        "them with ordinary fine-tuning")
    p.add_argument("overrides", nargs="*", help="extra key=value overrides for the training config")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from bcat.cli import main

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    pairs = out / "train_pairs.jsonl"
    arms = ["shuffled", "grouped"] if args.grouped else ["shuffled"]
    evals = [out / "eval_base", *(out / f"eval_{arm}" for arm in arms)]
    steps = [pairs_argv(resource("kb/train.jsonl"), pairs, groups=args.steps), _eval(args.model, evals[0], args)]
    for arm, evaluation in zip(arms, evals[1:]):
        run_dir = out / f"train_{arm}"
        command, *rest = train_argv(args.model, pairs, run_dir, args.steps, [*ARMS[arm], *args.overrides])
        steps += [[command, "--resume-if-possible", *rest],  # a rerun after a kill continues the training
                  _eval(str(run_dir / "model"), evaluation, args)]
    steps.append(["compare", str(evals[0]), str(evals[1]), "--output", str(out)])
    if args.grouped:
        steps.append(["compare", str(evals[1]), str(evals[2]), "--output", str(out / "grouped_vs_shuffled")])
    steps.append(["report", *map(str, evals), "--output", str(out)])
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
    """Per-language strict accuracy (the headline) of each run (the base model first), the gap and
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
