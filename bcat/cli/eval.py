"""Command-line wiring of ``bcat eval``, ``bcat score``, ``bcat compare`` and ``bcat report``.

Examples::

    bcat eval --model runs/bcat --data test.jsonl --output out/bcat        # a `bcat train` output directory
    bcat eval --model builtin:gemma3-270m --data builtin --output out/base --shots 2
    accelerate launch --multi_gpu --num_processes 2 -m bcat.cli eval ...   # items split across processes
    bcat score --data test.jsonl --predictions out/bcat/predictions.jsonl --output out/bcat_rescored
    bcat compare out/base out/bcat --output out/bcat_vs_base
    bcat report out/base out/bcat --output out/report --train-run runs/bcat
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bcat.cli.arguments import non_negative, options_from, positive
from bcat.evaluation.compare import CompareOptions, run_compare
from bcat.evaluation.evaluate import EvalOptions, GenerationOptions, run_eval
from bcat.evaluation.ood import DEFAULT_OOD_TASKS, OOD_TASKS
from bcat.evaluation.scoring import BootstrapOptions, read_metrics, rescore
from bcat.languages import ANCHOR
from bcat.output import claim_output
from bcat.report.render import ReportOptions, run_report


def _codes(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


def _positive_or_auto(text: str) -> int | None:
    return None if text == "auto" else positive(text)


def _alpha(text: str) -> float:
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def _add_stats_options(p: argparse.ArgumentParser, with_alpha: bool, resampled: str = "groups",
                       seeded: str = "the bootstrap") -> None:
    p.add_argument("--bootstrap", type=positive, default=BootstrapOptions.bootstrap, metavar="N",
                   help=f"bootstrap resamples (over {resampled}) for the 95%% intervals "
                        f"(default {BootstrapOptions.bootstrap})")
    p.add_argument("--seed", type=int, default=BootstrapOptions.seed,
                   help=f"seed of {seeded} (default {BootstrapOptions.seed})")
    if with_alpha:
        p.add_argument("--alpha", type=_alpha, default=ReportOptions.alpha,
                       help=f"significance level of the verdicts (default {ReportOptions.alpha})")


def _number(value, absent: str, signed: bool = False) -> str:
    """A headline number for people: three decimals, or why there is none.

    >>> _number(0.16666666666666666, ""), _number(-0.05, "", signed=True), _number(None, "no unseen languages")
    ('0.167', '-0.050', 'n/a (no unseen languages)')
    """
    if value is None:
        return f"n/a ({absent})"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def headline_lines(metrics: dict) -> list[str]:
    """What ``bcat eval`` and ``bcat score`` print: the headline numbers and where the language split came from."""
    info = metrics.get("languages") or {}
    anchor = info.get("anchor", "en")
    others = [l for l in info.get("seen", []) if l != anchor]
    unseen = info.get("unseen", [])
    lines = [f"strict accuracy (headline): {anchor} {_number(metrics['english'], f'no {anchor} items')}  "
             f"non-{anchor} mean {_number(metrics['non_english_mean'], 'no seen non-anchor languages')}  "
             f"gap {_number(metrics['gap'], f'needs {anchor} and a seen non-anchor language', signed=True)}  "
             f"unseen mean {_number(metrics['unseen_mean'], 'no unseen languages')}",
             f"languages: anchor {anchor}; seen {', '.join(others) or 'none'}; unseen {', '.join(unseen) or 'none'} "
             f"(from {info.get('source', 'unknown')})"]
    derived = sum(v.get("n_derived_candidates", 0) for v in (metrics.get("per_language") or {}).values())
    if derived:
        lines.append(f"wrong values derived from the passages for {derived} of {len(metrics.get('items', []))} items "
                     "(the data lists none for them)")
    return lines


def _print_headline(metrics: dict, output: str) -> None:
    """The headline numbers to 3 decimals; one that does not exist here says why (no unseen language)."""
    if "gap" in metrics:
        print("\n".join(headline_lines(metrics)))
    print(f"wrote {output}/metrics.json")


def cmd_eval(args) -> int:
    _print_headline(run_eval(options_from(EvalOptions, args)), args.output)
    return 0


def cmd_score(args) -> int:
    metrics = rescore(Path(args.data), Path(args.predictions), Path(args.output), anchor=args.anchor,
                      seen=args.seen, unseen=args.unseen, bootstrap=args.bootstrap, seed=args.seed)
    _print_headline(metrics, args.output)
    return 0


def _add_language_options(p: argparse.ArgumentParser, source: str, otherwise: str) -> None:
    p.add_argument("--anchor", default=None, metavar="CODE",
                   help=f"the anchor language (default: {source}; else {ANCHOR})")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--seen", type=_codes, default=None, metavar="CODES",
                       help=f"languages seen in training; the other evaluated ones are reported as unseen "
                            f"(default: {source}; {otherwise})")
    split.add_argument("--unseen", type=_codes, default=None, metavar="CODES",
                       help="languages NOT seen in training (instead of --seen)")


def cmd_compare(args) -> int:
    options = CompareOptions(runs_a=args.run_a.split(","), runs_b=args.run_b.split(","), output=args.output,
                             bootstrap=args.bootstrap, seed=args.seed, alpha=args.alpha, data=args.data)
    with claim_output(Path(options.output), "output"):
        for run in map(Path, options.runs_a + options.runs_b):
            if (run / "metrics.json").is_file():
                read_metrics(run / "metrics.json")
        run_compare(options)
    return 0


def cmd_report(args) -> int:
    run_report(options_from(ReportOptions, args))
    return 0


def add_eval_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="evaluate a model: multilingual RAG QA (and the out-of-domain suite)",
                       description="Generate answers for a multilingual RAG QA file and score them per language; "
                                   "writes OUTPUT/metrics.json and OUTPUT/predictions.jsonl.")
    p.add_argument("--model", required=True, help="local model or adapter directory, or builtin:NAME")
    p.add_argument("--data", default=EvalOptions.data,
                   help="RAG QA JSONL (group, lang, question, passages, answers), or 'builtin' (default)")
    p.add_argument("--suite", type=_codes, default=EvalOptions.suite,
                   help=f"comma-separated suites: rag, ood (default {','.join(EvalOptions.suite)})")
    p.add_argument("--output", required=True, help="directory for metrics.json and predictions.jsonl")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the finished evaluation in --output (by default a folder with metrics.json is refused)")
    p.add_argument("--limit", type=positive, default=None, metavar="N",
                   help="evaluate the first N groups only (all their languages)")
    p.add_argument("--languages", type=_codes, default=None, metavar="CODES",
                   help="comma-separated languages to evaluate (default: all in the file)")
    _add_language_options(p, "the model's training run (config.yaml next to its model/: data.anchor, "
                             "data.languages), which these may repeat but not contradict",
                          "without one, bcat's seen/unseen split for the built-in model on the bundled data, "
                          "else every evaluated language counts as seen")
    p.add_argument("--instructions", default=None, metavar="FILE.tsv",
                   help="prompt wording per language, tab-separated with the columns lang, passage, question, answer, "
                        "instruction (the format of bcat/resources/eval/instructions.tsv); its rows come before the "
                        "bundled ones. A tag without a row uses its language subtag's (pt-BR -> pt)")
    p.add_argument("--batch-size", type=_positive_or_auto, default=None,
                   help=f"most prompts decoded together, or auto (default: {GenerationOptions.batch_size} on the CPU, "
                        "sized to the free memory on a GPU)")
    p.add_argument("--max-new-tokens", type=positive, default=EvalOptions.max_new_tokens,
                   help=f"generation budget per answer (default {EvalOptions.max_new_tokens})")
    p.add_argument("--shots", type=non_negative, default=EvalOptions.shots,
                   help=f"solved examples in each prompt (default {EvalOptions.shots})")
    p.add_argument("--chat-template", choices=["auto", "on", "off"], default=EvalOptions.chat_template,
                   help="render prompts with the tokenizer's chat template: auto (if it has one), on, off (default)")
    p.add_argument("--ood-tasks", type=_codes, default=None, metavar="TASKS",
                   help=f"comma-separated tasks of the ood suite, from {', '.join(OOD_TASKS)} "
                        f"(default: {','.join(DEFAULT_OOD_TASKS)}). mgsm: real GSM8K problems in 11 languages, "
                        "solved step by step (long generations); arith: short templated arithmetic, opt-in")
    p.add_argument("--trim-vocab", action="store_true",
                   help="generate with the vocabulary restricted to the ids of the prompts (faster with a large "
                        "vocabulary; the model can then only answer with those ids)")
    p.add_argument("--device", default=EvalOptions.device, help=f"torch device (default {EvalOptions.device})")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], default=EvalOptions.dtype,
                   help="weights and compute: auto (default) is fp32 on the CPU and bf16 on a GPU that has it")
    p.add_argument("--trust-remote-code", action="store_true", help="run Python code shipped with the model")
    _add_stats_options(p, with_alpha=False, seeded="the bootstrap and of the choice of shots")
    p.set_defaults(func=cmd_eval)
    return p


def add_score_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("score", help="re-score saved answers without a model (metrics.json from predictions)",
                       description="Score saved answers (JSONL with group, lang, prediction) against a RAG QA file "
                                   "with the same code as `bcat eval`; writes OUTPUT/metrics.json and "
                                   "OUTPUT/predictions.jsonl. When PRED.jsonl lies in a `bcat eval` directory, its "
                                   "metrics.json supplies the model, the generation options and the scoring options "
                                   "it used: re-scoring an eval's own predictions gives the same metrics.json.")
    p.add_argument("--data", required=True, help="the RAG QA JSONL the answers belong to")
    p.add_argument("--predictions", required=True, metavar="PRED.jsonl", help="saved answers: group, lang, prediction")
    p.add_argument("--output", required=True, help="directory for metrics.json and predictions.jsonl")
    _add_language_options(p, "what the eval's metrics.json next to PRED.jsonl recorded, else the training run of "
                             "its model", "without either, every scored language counts as seen")
    p.add_argument("--bootstrap", type=positive, default=None, metavar="N",
                   help="bootstrap resamples (default: the eval's, else 2000)")
    p.add_argument("--seed", type=int, default=None, help="seed of the bootstrap (default: the eval's, else 0)")
    p.set_defaults(func=cmd_score)
    return p


def add_cli(sub) -> None:
    """Register ``eval``, ``score``, ``compare`` and ``report``."""
    add_eval_parser(sub)
    add_score_parser(sub)

    p = sub.add_parser("compare", help="compare two eval runs per language (paired bootstrap; seeds counted)",
                       description="Compare run B against baseline A on the same items. Verdict per language: "
                                   "better/worse when the paired 95% CI of B - A excludes 0 AND the Holm-adjusted "
                                   "p < alpha (over the languages); otherwise no significant change. With one seed "
                                   "per side the interval resamples groups (training noise left out) and p is exact "
                                   "McNemar; with several (comma-separated, paired by position) both come from a "
                                   "bootstrap over seeds and groups.")
    p.add_argument("run_a", metavar="DIR_A", help="baseline eval directory, or several separated by commas (one per "
                                                  "training seed)")
    p.add_argument("run_b", metavar="DIR_B", help="eval directory to judge against the baseline, or several "
                                                  "separated by commas (paired with DIR_A's by position)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="the evaluated data file, for the breakdown by the records' 'kind' field (default: the "
                        "file named in DIR_A's metrics.json, if it is there unchanged)")
    p.add_argument("--output", required=True, metavar="DIR",
                   help="directory for comparison.json (never a default: an eval directory is an input)")
    _add_stats_options(p, with_alpha=True, resampled="groups, and seeds where several are given")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("report", help="Markdown + HTML report of one or more eval runs",
                       description="Write report.md and a self-contained report.html (charts embedded).")
    p.add_argument("runs", nargs="+", metavar="DIR", help="eval directories, baseline first")
    p.add_argument("--output", default=None, help="report directory (default: the run for one run, else ./report)")
    p.add_argument("--train-run", action="append", default=None, metavar="DIR",
                   help="a `bcat train` output directory whose per-language loss curves (train_log.jsonl) to draw; "
                        "repeat for several (default: the training runs found next to the evaluated models)")
    _add_stats_options(p, with_alpha=True)
    p.set_defaults(func=cmd_report)
