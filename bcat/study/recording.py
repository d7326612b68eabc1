"""Recording a finished run: its small outputs copied into the results folder, ``<run>.json`` written
last (the mark of a finished run), and, with ``--commit``, both committed at once.

Everything recorded can be read back without the cache (:mod:`bcat.study.results`), so the report
can be rebuilt from committed files alone. Weights and checkpoints are never copied.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from bcat.errors import BcatError
from bcat.study import results as res
from bcat.study.grid import Run, expand

TRAIN_FILES = ("config.yaml", "training_summary.json", "train_log.jsonl")
"""A training run's small outputs kept in the results (never weights or checkpoints)."""


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


def commands_for(cache: Path, outputs: list[Path]) -> list[dict]:
    """The entries of ``CACHE/commands.jsonl`` that wrote ``outputs``."""
    wanted = {str(p) for p in outputs}
    path = cache / "commands.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [e for e in map(json.loads, lines) if e["output"] in wanted]

def record(study, run: Run) -> None:
    """Copy the run's small outputs into the results and write ``RUN.json`` (last)."""
    dest = study.result_dir(run)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    outputs: list[Path] = []
    result: dict = {"run": run.name, "arm": run.arm, "seed": run.seed, "key": run.key(study.spec),
                    "eval_key": study.eval_key,
                    "selected_from": run.selected, "overrides": run.overrides, "splits": {}}
    if run.trained:
        tdir = study.train_dir(run)
        outputs.append(tdir)
        (tmp / "train").mkdir()
        for name in TRAIN_FILES:
            shutil.copy2(tdir / name, tmp / "train" / name)
        result["training"] = res.train_summary(tmp / "train")
        sharing = [r.name for r in study.runs() if r.key(study.spec) == run.key(study.spec) and r.name != run.name]
        if sharing:
            result["same_training_as"] = sharing
    for step in study.eval_steps(run):
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
        result["curve"] = curve(study, run, tmp)
    commands = commands_for(study.cache, outputs)
    result["commands"] = commands
    result["wall_time_s"] = {"total": round(sum(c["seconds"] for c in commands), 1),
                             "train": round(sum(c["seconds"] for c in commands if c["argv"][1] == "train"), 1),
                             "eval": round(sum(c["seconds"] for c in commands if c["argv"][1] == "eval"), 1)}
    result["machine"] = machine_info()
    result["finished"] = _dt.datetime.now().isoformat(timespec="seconds")
    shutil.rmtree(dest, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(dest)
    final = study.result_json(run)
    _write_result(final, result)
    study.echo(f"bcat study: {run.name} finished -> {final}")
    if study.commit:
        git_commit([final, dest], f"study: {run.name}", study.results)

def _write_result(path: Path, result: dict) -> None:
    """Write a run's JSON whole or not at all (its presence marks a finished run)."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def curve(study, run: Run, copied: Path) -> list[dict]:
    """Dev learning curve on the first ``curve.groups`` groups: step 0 (the base model's dev run,
    when the study has one), the snapshots, the final step (the run's own dev run)."""
    from bcat.data.rag import load_items

    groups = list(dict.fromkeys(i.group for i in load_items(study.dev, limit_groups=study.spec.curve.groups)))
    points = []
    base = next((r for r in expand(study.spec) if not r.trained and r.dev), None)
    if base is not None:  # the base run may still wait for an adopted test evaluation: its dev one is enough
        found = [d for d in (study.result_dir(base) / "dev", study.eval_dir(base, "dev")) if (d / "metrics.json").is_file()]
        if found:
            points.append(res.curve_point(found[0], 0, groups))
    points += [res.curve_point(copied / f"curve-{s}", s, groups) for s in run.curve_steps]
    steps = json.loads((copied / "train" / "training_summary.json").read_text())["steps"]
    points.append(res.curve_point(copied / "dev", steps, groups))
    return points


def rescore(study) -> list[str]:
    """Judge every finished run's recorded predictions again with this bcat's scorer (``bcat score``)
    and rewrite the evaluations in which any item's judgement changed: their ``metrics.json`` and
    ``predictions.jsonl``, and the run's JSON (splits, dev curve, and ``rescored``: the bcat version, the
    splits, whether the curve was rebuilt). Returns one line per rewritten evaluation.

    Scoring rules can improve after a study ran; this keeps every recorded number the one that the
    current code gives for the recorded answers, without running a model again.
    """
    from bcat import __version__
    from bcat.evaluation.scoring import rescore as score

    finished = [run for run in study.runs() if study.finished(run)]
    lines, changed = [], {}
    for run in finished:
        done = study.result_dir(run)
        for split_dir in sorted(d for d in done.iterdir() if (d / "predictions.jsonl").is_file()):
            with tempfile.TemporaryDirectory() as tmp:
                scored = Path(tmp) / "scored"
                score(study.test if split_dir.name == "test" else study.dev, split_dir / "predictions.jsonl", scored)
                flips = _judged_otherwise(split_dir / "predictions.jsonl", scored / "predictions.jsonl")
                if flips:
                    shutil.copy2(scored / "metrics.json", split_dir / "metrics.json")
                    res.copy_predictions(scored / "predictions.jsonl", split_dir / "predictions.jsonl")
                    changed.setdefault(run.name, []).append(split_dir.name)
                    lines.append(f"{run.name} {split_dir.name}: {flips} of the recorded answers judged otherwise")
    for run in finished:  # a curve starts at the base model's dev run: it may change with another run's
        path, done = study.result_json(run), study.result_dir(run)
        result = json.loads(path.read_text(encoding="utf-8"))
        splits = changed.get(run.name, [])
        for split in splits:
            if split in result["splits"]:
                result["splits"][split] = res.split_summary(done / split)
        new_curve = curve(study, run, done) if result.get("curve") else None
        if not splits and new_curve == result.get("curve"):
            continue
        if new_curve is not None:
            result["curve"] = new_curve
        result["rescored"] = {"bcat": __version__, "splits": splits, "curve": new_curve is not None}
        _write_result(path, result)
        if study.commit:
            git_commit([path, done], f"study: {run.name} re-scored", study.results)
    return lines


def _judged_otherwise(recorded: Path, scored: Path) -> int:
    """How many answers' records differ between two ``predictions.jsonl`` (same items, same order),
    over the fields both have."""
    def records(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    return sum(any(a[k] != b[k] for k in a.keys() & b.keys()) for a, b in zip(records(recorded), records(scored)))


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
