"""Run a study grid: every arm x seed through the real ``bcat`` commands, resumable at every step.

Order: the training pairs (``bcat data pairs``), then the runs in file order, then each selection on
dev (``selection.json``, or ``selection-NAME.json`` for named ones), then the arms that come from a
selection, then the report. Each run:

1. ``bcat train ... --resume-if-possible`` into ``CACHE/train/KEY`` (checkpoints every ``training.save_steps``,
   snapshots at the curve steps); skipped once ``training_summary.json`` is there;
2. ``bcat eval`` of the final model on dev, on test and the OOD suite as the arm asks, and of the
   snapshots on the curve's dev groups, each into ``CACHE/eval/KEY/SPLIT``; skipped once that
   directory's ``metrics.json`` is there (``bcat eval`` writes it last);
3. the run's small outputs copied into ``RESULTS/runs/RUN/`` (configs, logs, metrics, predictions;
   never weights) and ``RESULTS/RUN.json`` written last, the mark of a finished run: a rerun skips
   it, whatever happened to the cache. With ``commit`` both are committed at once.

KEY identifies the training (model, data, overrides with the seed), so two runs of the same setting
(the selected arm's first seed and the candidate it came from) share one training and its evaluations.
Every command's argv, exit code and seconds are appended to ``CACHE/commands.jsonl`` and its output
to ``CACHE/logs/``; a run's JSON lists the commands that made it.

Killed at any point, a rerun continues: a finished run is skipped, a training resumes from its last
checkpoint, an evaluation that did not finish starts again. A lost cache costs only the unfinished
run (and the pairs, rebuilt identically).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import operator
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from bcat.config import load_config, valid_keys
from bcat.errors import BcatError
from bcat.evaluation.scoring import file_sha256
from bcat.study import planning, recording, selection
from bcat.study.commands import eval_argv, pairs_argv, train_argv
from bcat.study import grid
from bcat.study.grid import Run, SelectionSpec, StudySpec, expand, resolve_data
from bcat.study.recording import git_commit

Execute = Callable[[list, Path], int]
"""Runs one ``bcat`` argv with its output going to a log file; returns the exit code."""

def subprocess_execute(argv: list, log: Path) -> int:
    """``python -m bcat.cli ARGV`` in a child process (its memory is freed when it ends), output to ``log``."""
    with log.open("a", encoding="utf-8") as f:
        return subprocess.run([sys.executable, "-m", "bcat.cli", *map(str, argv)], stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL).returncode


@dataclasses.dataclass
class EvalStep:
    """One ``bcat eval`` of a run."""

    split: str
    """``dev``, ``test``, ``ood`` or ``curve-STEP``: also the name of its output folder."""
    argv: list
    output: Path
    model: str
    suite: str
    data: Optional[Path]
    limit: Optional[int]


class Waiting(Exception):
    """A step waits for something outside the runner (an adopted evaluation still being written)."""


class Study:
    """One study grid on disk: its cache, its results, and how to run what is missing."""

    def __init__(self, spec: StudySpec, *, execute: Execute = subprocess_execute, commit: bool = False,
                 echo: Callable[[str], None] = print, read_only: bool = False):
        self.spec = spec
        self.read_only = read_only
        """Write nothing (``--plan``): a selection that can be made is made in memory, not written."""
        self.cache = Path(spec.cache or Path("runs") / "study" / spec.name)
        self.results = Path(spec.results)
        self.execute = execute
        self.commit = commit
        self.echo = echo
        self._stale: set[str] = set()
        self.dev = resolve_data(spec.data.dev)
        self.test = resolve_data(spec.data.test)
        d = spec.data
        self.pairs = Path(d.train) if d.train else \
            self.cache / f"pairs-{_digest([file_sha256(resolve_data(d.train_qa)), d.pairs_seed, d.train_groups])}.jsonl"
        """The training pairs made from ``data.train_qa``, named by its content, not its path, so that a
        checkout elsewhere finds the pairs it would make."""
        self.eval_key = "e" + _digest([dataclasses.asdict(spec.eval), d.dev, d.dev_groups, d.test, d.test_groups,
                                       spec.curve.groups, file_sha256(self.dev)[:12], file_sha256(self.test)[:12]])
        """Identity of the evaluation settings: a change re-evaluates instead of reusing the cache. The
        data enter by content, not path, so a checkout elsewhere still recognises its finished runs."""

    # -- paths ---------------------------------------------------------------------------------------
    def train_dir(self, run: Run) -> Path:
        return self.cache / "train" / run.key(self.spec)

    def eval_dir(self, run: Run, split: str) -> Path:
        return self.cache / "eval" / f"{run.key(self.spec)}-{self.eval_key}" / split

    def result_json(self, run: Run) -> Path:
        return self.results / f"{run.name}.json"

    def result_dir(self, run: Run) -> Path:
        return self.results / "runs" / run.name

    def finished(self, run: Run) -> bool:
        """Whether the run's JSON is there, made with the run's current training and evaluation settings."""
        path = self.result_json(run)
        if not path.is_file():
            return False
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return False
        if (data.get("run"), data.get("key"), data.get("eval_key")) == (run.name, run.key(self.spec), self.eval_key):
            return True
        if run.name not in self._stale:
            self._stale.add(run.name)
            self.echo(f"bcat study: {path} was made with other settings: {run.name} runs again")
        return False

    # -- the grid ------------------------------------------------------------------------------------
    def runs(self) -> list[Run]:
        """Every run known now: those from the selection only once it can be made."""
        return expand(self.spec, self.picks())

    def picks(self) -> dict[str, str]:
        """Selection name -> the candidate arm it picked, for the selections that can be made now."""
        made = ((sel, self.selection(sel)) for sel in self.spec.selection)
        return {sel.name: out["selected"] for sel, out in made if out is not None and selection.holds(sel, out)}

    def run_all(self, max_runs: Optional[int] = None) -> int:
        """Run what is missing; 0 when the grid is complete, 3 when something waits, else the failing exit code."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self.cache / ".lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BcatError(f"another `bcat study` is running on {self.cache} (lock {self.cache / '.lock'})") from None
            return self._run_all(max_runs)

    def _run_all(self, max_runs: Optional[int]) -> int:
        done_now, waiting = 0, []
        while True:
            todo = [r for r in self.runs() if not self.finished(r) and r.name not in waiting]
            if not todo:
                break
            if max_runs is not None and done_now >= max_runs:
                self.echo(f"bcat study: stopping after {done_now} run(s) (--max-runs); {len(todo)} left")
                return 0
            run = todo[0]
            try:
                code = self.run_one(run)
            except Waiting as e:
                self.echo(f"bcat study: {run.name} waits: {e}")
                waiting.append(run.name)
                continue
            if code:
                return code
            done_now += 1
        self.write_report()
        missing = self.pending_selection()
        for line in self.held_back():
            self.echo(f"bcat study: {line}")
        if waiting or missing:
            self.echo(f"bcat study: not complete: {', '.join(waiting + missing)} still to run; run it again later")
            return 3
        self.echo(f"bcat study: complete; report in {self.results / 'REPORT.md'}")
        return 0

    def held_back(self) -> list[str]:
        """A line for each selection whose pick lies at an end of the grid and holds its arms back."""
        made = ((sel, self.selection(sel)) for sel in self.spec.selection)
        return [f"selection{' ' + sel.name if sel.name else ''}: {selection.edge_note(sel, out)}"
                for sel, out in made if out is not None and not selection.holds(sel, out)]

    def pending_selection(self) -> list[str]:
        """Arms that come from a selection that cannot be made yet."""
        picks = self.picks()
        return [a.name for a in self.spec.arms
                if a.from_selection is not None and grid.selection_of(self.spec, a).name not in picks]

    # -- one run -------------------------------------------------------------------------------------
    def _command(self, argv: list, output: Path, run: Run) -> None:
        log_dir = self.cache / "logs" / run.name
        log_dir.mkdir(parents=True, exist_ok=True)
        log = log_dir / f"{output.name}.log"
        self.echo(f"$ bcat {shlex.join(map(str, argv))}")
        started = time.time()
        load = os.getloadavg()
        code = self.execute(list(map(str, argv)), log)
        seconds = round(time.time() - started, 1)
        entry = {"output": str(output), "argv": ["bcat", *map(str, argv)], "rc": code, "seconds": seconds,
                 "started": _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds"),
                 "loadavg_1min_start": round(load[0], 2), "loadavg_1min_end": round(os.getloadavg()[0], 2)}
        with (self.cache / "commands.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.echo(f"  -> exit {code} in {seconds / 60:.1f} min (log {log})")
        if code:
            tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:] if log.exists() else []
            raise CommandFailed(code, "\n".join(tail))

    def ensure_pairs(self, run: Run) -> None:
        if self.pairs.is_file():
            return
        tmp = self.pairs.with_suffix(".tmp.jsonl")
        d = self.spec.data
        self._command(pairs_argv(resolve_data(d.train_qa), tmp, d.pairs_seed, d.train_groups), tmp, run)
        tmp.replace(self.pairs)

    def eval_steps(self, run: Run) -> list[EvalStep]:
        """Every evaluation of the run."""
        spec, ev = self.spec, self.spec.eval
        model = str(self.train_dir(run)) if run.trained else spec.model
        steps = []

        def add(split: str, model: str, suite: str, data: Optional[Path], limit: Optional[int], extra=()) -> None:
            out = self.eval_dir(run, split)
            argv = eval_argv(model, out, data=str(data) if data else "builtin", suite=suite, limit=limit,
                             batch_size=ev.batch_size, max_new_tokens=ev.max_new_tokens, extra=[*ev.extra, *extra])
            steps.append(EvalStep(split, argv, out, model, suite, data, limit))

        if run.dev:
            add("dev", model, "rag", self.dev, spec.data.dev_groups)
        if run.test:
            add("test", model, "rag", self.test, spec.data.test_groups)
        if run.ood:
            add("ood", model, "ood", None, ev.ood_limit, ["--ood-tasks", ",".join(ev.ood_tasks)] if ev.ood_tasks else [])
        for step in run.curve_steps:
            snapshot = self.train_dir(run) / "snapshots" / f"step-{step:08d}"
            add(f"curve-{step}", str(snapshot), "rag", self.dev, spec.curve.groups)
        return steps

    def run_one(self, run: Run) -> int:
        """Train (or resume), evaluate, copy and write the run's JSON. Raises :class:`Waiting`."""
        self.echo(f"\n== bcat study: {run.name}" + (f" (setting of {run.selected}, selected on dev)" if run.selected else ""))
        try:
            if run.trained:
                self.ensure_pairs(run)
                tdir = self.train_dir(run)
                if not (tdir / "training_summary.json").is_file():
                    self._command([*train_argv(self.spec.model, self.pairs, tdir, None, run.overrides,
                                               self.spec.data.train_languages), "--resume-if-possible"], tdir, run)
            for step in self.eval_steps(run):
                if (step.output / "metrics.json").is_file():
                    continue
                adopted = self.spec_arm(run).adopt.get(step.split)
                if adopted and not Path(adopted).exists():
                    self.echo(f"  {adopted} does not exist (another machine?): evaluating {step.split} in the study")
                    adopted = None
                if adopted:
                    self.adopt(Path(adopted), step, run)
                    continue
                self._command(step.argv, step.output, run)
        except CommandFailed as e:
            self.echo(f"bcat study: {run.name} failed (exit {e.code}); the last lines of its log:\n{e.tail}")
            return e.code
        recording.record(self, run)
        return 0

    def spec_arm(self, run: Run):
        return next(a for a in self.spec.arms if a.name == run.arm)

    def adopt(self, source: Path, step: EvalStep, run: Run) -> None:
        """Use an evaluation made outside the study, if it is the one the study would make.

        Its RAG answers are scored again with ``bcat score`` (this bcat's scorer, whatever scored
        them first), so adopted and fresh evaluations are comparable; the OOD suite is copied.
        """
        from bcat.evaluation.evaluate import RagOptions

        metrics_file = source / "metrics.json"
        if not metrics_file.is_file():
            raise Waiting(f"{source} has no metrics.json yet (is its `bcat eval` still running?)")
        if self.spec.eval.extra:
            raise BcatError(f"cannot adopt {source}: the study passes eval.extra options ({' '.join(self.spec.eval.extra)}), "
                            "which adoption cannot check; evaluate in the study instead")
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        problems = []
        if metrics.get("model") != step.model:
            problems.append(f"model {metrics.get('model')!r}, not {step.model!r}")
        if step.suite not in (metrics.get("suites") or []):
            problems.append(f"no {step.suite} results")
        if step.suite == "rag":
            if metrics.get("data_fingerprint") != file_sha256(step.data):
                problems.append(f"data {metrics.get('data')} is not {step.data}")
            defaults = RagOptions()
            expected = {"limit": step.limit, "max_new_tokens": self.spec.eval.max_new_tokens,
                        "batch_size": self.spec.eval.batch_size, "shots": defaults.shots,
                        "chat_template": defaults.chat_template, "trim_vocab": defaults.trim_vocab, "languages": None}
            options = metrics.get("options") or {}
            problems += [f"--{k.replace('_', '-')} {options.get(k)!r}, the study's is {v!r}"
                         for k, v in expected.items() if options.get(k) != v]
        if problems:
            raise BcatError(f"cannot adopt {source} for {step.split}: " + "; ".join(problems))
        out = step.output
        tmp = out.with_name(out.name + ".adopting")
        shutil.rmtree(tmp, ignore_errors=True)
        if step.suite == "rag":
            self._command(["score", "--data", str(step.data), "--predictions", str(source / "predictions.jsonl"),
                           "--output", str(tmp)], out, run)
            note = f"{source.resolve()}\nits answers re-scored with `bcat score` (this bcat's scorer)\n"
        else:
            shutil.copytree(source, tmp)
            note = f"{source.resolve()}\ncopied\n"
        (tmp / "ADOPTED_FROM").write_text(note, encoding="utf-8")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
        self.echo(f"  adopted {source} as {out}")

    # -- selection -----------------------------------------------------------------------------------
    def selection(self, sel: SelectionSpec) -> Optional[dict]:
        """The pick of ``sel`` (:func:`bcat.study.selection.pick`) once its candidates' first seeds have
        finished, written to :func:`~bcat.study.selection.selection_file`; ``None`` before."""
        feeding = [*sel.candidates, *([sel.baseline] if sel.baseline else [])]
        first = {r.arm: r for r in expand(self.spec) if r.trained and r.arm in feeding
                 and r.name == f"{r.arm}-s{self.spec_arm_by_name(r.arm).seeds[0]}"}
        if not all(self.finished(first[a]) for a in feeding):
            return None
        dev = {arm: json.loads(self.result_json(run).read_text())["splits"]["dev"] for arm, run in first.items()}
        settings = {arm: _settings([*self.spec.shared, *self.spec_arm_by_name(arm).overrides]) for arm in sel.candidates}
        out = selection.pick(sel, dev, {arm: run.name for arm, run in first.items()}, settings)
        path = selection.selection_file(self.results, sel)
        text = json.dumps(out, indent=1) + "\n"
        if not self.read_only and (not path.is_file() or path.read_text(encoding="utf-8") != text):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            self.echo(f"bcat study: selected on dev{' (' + sel.name + ')' if sel.name else ''}: {out['selected']}"
                      + ("" if out["english_constraint_met"] else
                         " (no candidate kept English within the tolerance: picked on the metric alone)")
                      + (f"\n  {selection.edge_note(sel, out)}" if out["at_edge"] else ""))
            if self.commit:
                git_commit([path], f"study: selection on dev{' (' + sel.name + ')' if sel.name else ''}", self.results)
        return out

    def spec_arm_by_name(self, name: str):
        return next(a for a in self.spec.arms if a.name == name)

    def plan(self) -> tuple[list[dict], str]:
        """Every run with its status and estimated CPU time (:func:`bcat.study.planning.plan`)."""
        return planning.plan(self)

    # -- report ----------------------------------------------------------------------------------------
    def write_report(self) -> None:
        from bcat.study.report import build_study_report

        paths = build_study_report(self.spec, self.results)
        self.echo(f"bcat study: report -> {paths[0]} and {paths[1]}")
        if self.commit:
            git_commit([self.results / "REPORT.md", self.results / "REPORT.html", self.results / "report"],
                       "study: report", self.results)


class CommandFailed(Exception):
    def __init__(self, code: int, tail: str):
        super().__init__(f"exit {code}")
        self.code, self.tail = code, tail


def _settings(overrides: list[str]) -> dict:
    """The training config these overrides make, as ``{dotted key: value}``."""
    cfg = load_config(None, overrides)
    return {key: operator.attrgetter(key)(cfg) for key in valid_keys()}


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]
