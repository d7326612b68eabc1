"""``bcat study CONFIG``: run a reproduction-study grid (arms x seeds), resumably; see ``bcat.study``.

    bcat study configs/study/grid.yaml --plan           # every run, its status and estimated CPU time
    bcat study configs/study/grid.yaml --detach --commit  # run in the background, commit run by run
    bcat study configs/study/grid.yaml --report         # rebuild REPORT.md/.html from the results only
    bcat study configs/study/grid.yaml --rescore        # judge recorded answers with this bcat's scorer
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bcat.cli.arguments import positive


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("study", help="run a study grid (arms x seeds) through train/eval/compare, resumably",
                              description="Train and evaluate every arm x seed of a study file with the ordinary "
                                          "bcat commands; finished runs are skipped, unfinished ones resumed. "
                                          "Writes RESULTS/<run>.json per run and RESULTS/REPORT.md/.html.")
    p.add_argument("config", help="study YAML file (see configs/study/)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                      help="print every run, its status and estimated CPU time, and the total (also at the rates the "
                           "finished runs measured); run nothing")
    what.add_argument("--report", action="store_true", help="only rebuild the report from the results folder")
    what.add_argument("--rescore", action="store_true",
                      help="judge the recorded answers again with this bcat's scorer (no model runs), rewrite "
                           "the evaluations whose judgements changed, and rebuild the report")
    p.add_argument("--commit", action="store_true", help="git-commit each finished run's results as it finishes")
    p.add_argument("--max-runs", type=positive, default=None, metavar="N", help="stop after N runs finish")
    p.add_argument("--detach", action="store_true",
                   help="run in the background (output to CACHE/study.log); prints the process id and returns")
    p.set_defaults(func=_main)


def _main(args) -> int:
    from bcat.study.grid import load_study
    from bcat.study.runner import Study

    spec = load_study(args.config)
    study = Study(spec, commit=args.commit, read_only=args.plan)
    if args.plan:
        print(study.plan()[1])
        return 0
    if args.rescore:
        from bcat.study.recording import rescore

        print("\n".join(rescore(study)) or "bcat study: every recorded answer is judged as recorded")
    if args.report or args.rescore:
        study.write_report()
        return 0
    if args.detach:
        return _detach(args, study.cache)
    return study.run_all(max_runs=args.max_runs)


def _detach(args, cache: Path) -> int:
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "study.log"
    argv = [sys.executable, "-m", "bcat.cli", "study", args.config] + (["--commit"] if args.commit else []) \
        + (["--max-runs", str(args.max_runs)] if args.max_runs is not None else [])
    with log.open("a", encoding="utf-8") as out:
        child = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
    (cache / "study.pid").write_text(f"{child.pid}\n")
    print(f"bcat study: running in the background, process {child.pid}; log {log}\n"
          f"  stop it with: kill -- -{child.pid}   (a rerun resumes where it stopped)")
    return 0
