"""Run a study grid: every arm x seed through the real ``bcat`` commands, resumable at every step.

Order: the training pairs (``bcat data pairs``), then the runs in file order, then each selection on
dev (``selection.json``, or ``selection-NAME.json`` for named ones), then the arms that come from a
selection, then the report. Each run:

1. ``bcat train ... --resume`` into ``CACHE/train/KEY`` (checkpoints every ``training.save_steps``,
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
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

from bcat.errors import BcatError
from bcat.evaluation.scoring import file_sha256
from bcat.study import results as res
from bcat.study.commands import eval_argv, pairs_argv, train_argv
from bcat.study import grid
from bcat.study.grid import Estimate, Run, SelectionSpec, StudySpec, count_items, estimate, expand, resolve_data

Execute = Callable[[list, Path], int]
"""Runs one ``bcat`` argv with its output going to a log file; returns the exit code."""

TRAIN_FILES = ("config.yaml", "training_summary.json", "train_log.jsonl")
"""A training run's small outputs kept in the results (never weights or checkpoints)."""


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


def machine_info() -> dict:
    """Where a run ran: enough to tell CPU from GPU numbers and a busy machine from a quiet one."""
    import torch

    from bcat import __version__

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "bcat": __version__,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                            cwd=Path(__file__).parent).stdout.strip() or None
    except OSError:
        info["git_commit"] = None
    return info


class Study:
    """One study grid on disk: its cache, its results, and how to run what is missing."""

    def __init__(self, spec: StudySpec, *, execute: Execute = subprocess_execute, commit: bool = False,
                 echo: Callable[[str], None] = print):
        self.spec = spec
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
            self.cache / f"pairs-{_digest([d.train_qa, d.pairs_seed, d.train_groups, str(resolve_data(d.train_qa))])}.jsonl"
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
        made = ((sel.name, self.selection(sel)) for sel in self.spec.selection)
        return {name: result["selected"] for name, result in made if result is not None}

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
        if waiting or missing:
            self.echo(f"bcat study: not complete: {', '.join(waiting + missing)} still to run; run it again later")
            return 3
        self.echo(f"bcat study: complete; report in {self.results / 'REPORT.md'}")
        return 0

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
                                               self.spec.data.train_languages), "--resume"], tdir, run)
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
        self.record(run)
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

    # -- recording -----------------------------------------------------------------------------------
    def commands_for(self, outputs: list[Path]) -> list[dict]:
        wanted = {str(p) for p in outputs}
        path = self.cache / "commands.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
        return [e for e in map(json.loads, lines) if e["output"] in wanted]

    def record(self, run: Run) -> None:
        """Copy the run's small outputs into the results and write ``RUN.json`` (last)."""
        dest = self.result_dir(run)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        outputs: list[Path] = []
        result: dict = {"run": run.name, "arm": run.arm, "seed": run.seed, "key": run.key(self.spec),
                        "eval_key": self.eval_key,
                        "selected_from": run.selected, "overrides": run.overrides, "splits": {}}
        if run.trained:
            tdir = self.train_dir(run)
            outputs.append(tdir)
            (tmp / "train").mkdir()
            for name in TRAIN_FILES:
                shutil.copy2(tdir / name, tmp / "train" / name)
            result["training"] = res.train_summary(tmp / "train")
            sharing = [r.name for r in self.runs() if r.key(self.spec) == run.key(self.spec) and r.name != run.name]
            if sharing:
                result["same_training_as"] = sharing
        for step in self.eval_steps(run):
            split, out = step.split, step.output
            outputs.append(out)
            (tmp / split).mkdir()
            shutil.copy2(out / "metrics.json", tmp / split / "metrics.json")
            if (out / "predictions.jsonl").is_file():
                res.copy_predictions(out / "predictions.jsonl", tmp / split / "predictions.jsonl")
            if (out / "ADOPTED_FROM").is_file():
                shutil.copy2(out / "ADOPTED_FROM", tmp / split / "ADOPTED_FROM")
            if not split.startswith("curve-"):
                result["splits"][split] = res.split_summary(tmp / split)
        if run.curve_steps:
            result["curve"] = self.curve(run, tmp)
        commands = self.commands_for(outputs)
        result["commands"] = commands
        result["wall_time_s"] = {"total": round(sum(c["seconds"] for c in commands), 1),
                                 "train": round(sum(c["seconds"] for c in commands if c["argv"][1] == "train"), 1),
                                 "eval": round(sum(c["seconds"] for c in commands if c["argv"][1] == "eval"), 1)}
        result["machine"] = machine_info()
        result["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp.rename(dest)
        final = self.result_json(run)
        final.with_suffix(".json.tmp").write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n",
                                                  encoding="utf-8")
        final.with_suffix(".json.tmp").replace(final)
        self.echo(f"bcat study: {run.name} finished -> {final}")
        if self.commit:
            git_commit([final, dest], f"study: {run.name}", self.results)

    def curve(self, run: Run, copied: Path) -> list[dict]:
        """Dev learning curve on the first ``curve.groups`` groups: step 0 (the base model's dev run,
        when the study has one), the snapshots, the final step (the run's own dev run)."""
        from bcat.data.rag import load_items

        groups = list(dict.fromkeys(i.group for i in load_items(self.dev, limit_groups=self.spec.curve.groups)))
        points = []
        base = next((r for r in expand(self.spec) if not r.trained and r.dev), None)
        if base is not None:  # the base run may still wait for an adopted test evaluation: its dev one is enough
            found = [d for d in (self.result_dir(base) / "dev", self.eval_dir(base, "dev")) if (d / "metrics.json").is_file()]
            if found:
                points.append(res.curve_point(found[0], 0, groups))
        points += [res.curve_point(copied / f"curve-{s}", s, groups) for s in run.curve_steps]
        steps = json.loads((copied / "train" / "training_summary.json").read_text())["steps"]
        points.append(res.curve_point(copied / "dev", steps, groups))
        return points

    # -- selection -----------------------------------------------------------------------------------
    def selection_file(self, sel: SelectionSpec) -> Path:
        return self.results / (f"selection-{sel.name}.json" if sel.name else "selection.json")

    def selection(self, sel: SelectionSpec) -> Optional[dict]:
        """The setting ``sel`` picks on dev among its candidates (their first seeds), once they have finished.

        Rule: candidates whose dev English is at most ``english_tolerance`` below the reference are
        eligible (the reference: the baseline arm's dev English, or without a baseline the best dev
        English among the candidates); the eligible one with the highest dev ``metric`` wins. If none is
        eligible, the highest ``metric`` wins and ``english_constraint_met`` is false (the report says
        so). Written to :meth:`selection_file`.
        """
        feeding = [*sel.candidates, *([sel.baseline] if sel.baseline else [])]
        first = {r.arm: r for r in expand(self.spec) if r.trained and r.arm in feeding
                 and r.name == f"{r.arm}-s{self.spec_arm_by_name(r.arm).seeds[0]}"}
        if not all(self.finished(first[a]) for a in feeding):
            return None

        def dev(arm: str) -> dict:
            return json.loads(self.result_json(first[arm]).read_text())["splits"]["dev"]

        if sel.baseline:
            reference_en, reference = dev(sel.baseline)["english"], f"{sel.baseline}'s"
        else:
            reference_en, reference = max(dev(a)["english"] for a in sel.candidates), "the best candidate's"
        table = {}
        for arm in sel.candidates:
            d = dev(arm)
            table[arm] = {"run": first[arm].name, sel.metric: d[sel.metric], "english": d["english"],
                          "english_vs_reference": d["english"] - reference_en,
                          "eligible": d["english"] >= reference_en - sel.english_tolerance - 1e-12}
        eligible = [a for a in sel.candidates if table[a]["eligible"]]
        pool = eligible or list(sel.candidates)
        best = max(pool, key=lambda a: (table[a][sel.metric], -sel.candidates.index(a)))
        out = {"name": sel.name, "split": "dev", "metric": sel.metric, "english_tolerance": sel.english_tolerance,
               "reference": ({"arm": sel.baseline, "run": first[sel.baseline].name, "english": reference_en,
                              sel.metric: dev(sel.baseline)[sel.metric]} if sel.baseline
                             else {"arm": None, "english": reference_en}),
               "candidates": table, "selected": best, "english_constraint_met": bool(eligible),
               "rule": (f"highest dev {sel.metric} among the candidates whose dev English is at most "
                        f"{sel.english_tolerance:g} below {reference} ; ties: the earlier candidate").replace(" ;", ";")}
        path = self.selection_file(sel)
        text = json.dumps(out, indent=1) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            self.echo(f"bcat study: selected on dev{' (' + sel.name + ')' if sel.name else ''}: {best}"
                      + ("" if eligible else " (no candidate kept English within the tolerance: picked on the metric alone)"))
            if self.commit:
                git_commit([path], f"study: selection on dev{' (' + sel.name + ')' if sel.name else ''}", self.results)
        return out

    def spec_arm_by_name(self, name: str):
        return next(a for a in self.spec.arms if a.name == name)

    # -- plan ------------------------------------------------------------------------------------------
    def plan(self) -> tuple[list[dict], str]:
        """Every run with its status and estimated CPU time; the text prints it, arithmetic included."""
        spec = self.spec
        counts = {"dev": count_items(self.dev, spec.data.dev_groups), "test": count_items(self.test, spec.data.test_groups),
                  "curve": count_items(self.dev, spec.curve.groups)}
        runs = self.runs()
        estimated_as = {}
        if self.pending_selection():  # stand in each pending selection's first candidate, in the order they will run
            picks = self.picks()
            runs = expand(spec, {sel.name: picks.get(sel.name, sel.candidates[0]) for sel in spec.selection})
            estimated_as = {r.name: r.selected for r in runs if r.selected and r.selected not in picks.values()}
        rows, seen_keys, seen_evals = [], set(), set()
        for run in runs:
            est: Estimate = estimate(spec, run, counts)
            key = run.key(spec)
            status = "done" if self.finished(run) else "to do"
            if status != "done" and any(Path(d).is_dir() and not (Path(d) / "metrics.json").is_file()
                                        for d in self.spec_arm(run).adopt.values()):
                status = "waits"  # for an adopted evaluation still being written
            cost = 0.0
            if status != "done":
                if run.trained and key not in seen_keys and not (self.train_dir(run) / "training_summary.json").is_file():
                    cost += est.train_s
                for split, s in est.eval_s.items():
                    out = self.eval_dir(run, split)
                    adopted = self.spec_arm(run).adopt.get(split) if not run.trained else None
                    adopted = adopted if adopted and Path(adopted).exists() else None
                    if (key, split) in seen_evals or (out / "metrics.json").is_file() or adopted:
                        continue
                    cost += s
            if run.trained:
                seen_keys.add(key)
            seen_evals.update((key, s) for s in est.eval_s)
            rows.append({"run": run.name, "status": status, "estimate_s": est.total_s, "remaining_s": cost,
                         "train_s": est.train_s, "eval_s": est.eval_s, "estimated_as": estimated_as.get(run.name),
                         "shared": [r["run"] for r in rows if r.get("key") == key], "key": key})
        return rows, self._plan_text(rows, counts)

    def _plan_text(self, rows: list[dict], counts: dict) -> str:
        t, spec = self.spec.timing, self.spec
        lines = [f"bcat study plan: {spec.source} ({len(rows)} runs)", "",
                 f"{'run':<28}{'status':<8}{'train min':>10}{'eval min':>10}{'left min':>10}  evaluations"]
        for r in rows:
            evals = ", ".join(f"{k} {v / 60:.0f}" for k, v in r["eval_s"].items())
            note = f"  (as {r['estimated_as']}: selection pending)" if r["estimated_as"] else ""
            note += f"  (shares training with {', '.join(r['shared'])})" if r["shared"] else ""
            lines.append(f"{r['run']:<28}{r['status']:<8}{r['train_s'] / 60:>10.1f}{sum(r['eval_s'].values()) / 60:>10.1f}"
                         f"{r['remaining_s'] / 60:>10.1f}  {evals}{note}")
        left = sum(r["remaining_s"] for r in rows)
        lines += ["", f"remaining: {left / 3600:.2f} CPU-hours (shared trainings and evaluations counted once; "
                      "done, cached or adopted steps not counted)", "",
                  "arithmetic: train = max_steps x step_s[batch.mode] x records per step / "
                  f"{t.reference_records} x objective factor + {t.command_s:g} s start-up;",
                  f"  step_s = {json.dumps(t.step_s)}, objective factor = {json.dumps(t.objective_factor)};",
                  f"  eval = items x {t.eval_item_s:g} s (+{t.command_s:g} s): dev {counts['dev']} items, test "
                  f"{counts['test']}, one curve point {counts['curve']};",
                  f"  OOD = {spec.eval.ood_limit} items x 11 languages x 3 x {t.ood_item_s:g} s."]
        return "\n".join(lines)

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


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:12]


def git_commit(paths: list[Path], message: str, where: Path) -> None:
    """Commit exactly ``paths`` (nothing else that may be staged) in the repository holding ``where``."""
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                         cwd=where).stdout.strip()
    if not top:
        raise BcatError(f"--commit: {where} is not inside a git repository")
    rel = [str(Path(p).resolve().relative_to(Path(top).resolve())) for p in paths if Path(p).exists()]
    subprocess.run(["git", "add", "--", *rel], cwd=top, check=True)
    if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *rel], cwd=top).returncode == 0:
        return  # nothing new
    subprocess.run(["git", "commit", "-q", "-m", message, "--only", "--", *rel], cwd=top, check=True)
