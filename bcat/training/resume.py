"""Resuming a run: is there one to resume, is its checkpoint intact, and is it still the same run.

Decided before any work (rank 0 reads the output directory, every rank gets the verdict), so a
refused resume leaves the folder as it was:

- ``resume=False`` starts a run; a folder that holds a run (finished, or with checkpoints) is refused;
- ``resume=True`` continues from the newest checkpoint; no checkpoint, or a finished run, is refused;
- ``resume="if-possible"`` continues where there is a checkpoint and starts where there is no run yet
  (a driver that reruns the same command after a kill, such as ``bcat study``); a finished run is refused.

A checkpoint records its run's settings (every config value, the model and data paths resolved, and a
sha256 of the tokenized records). A resume whose settings differ is refused, naming the keys, except
for :data:`CHANGEABLE` keys, which do not change what is trained; those changes are logged and
recorded in the next checkpoints and in ``training_summary.json`` (``resumes``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

from bcat.config import TrainConfig, read_yaml
from bcat.errors import BcatError, ConfigError, TrainingError
from bcat.training.checkpoint import CHECKPOINTS, check_checkpoint, latest_checkpoint
from bcat.training.distributed import broadcast_object, process_index
from bcat.training.reference import data_fingerprint

log = logging.getLogger(__name__)

Resume = Union[bool, Literal["if-possible"]]
"""``False``: start; ``True``: continue (a checkpoint must exist); ``"if-possible"``: continue or start."""

RECORDS_KEY = "data.train (content)"
"""The settings' entry for the sha256 of the tokenized records: the same file name can hold other records."""

CHANGEABLE = {
    "training.output_dir": "the run's folder may have been moved",
    "data.train": "the data file may have been moved or copied; its tokenized records must be the same "
                  "(data.train (content))",
    "training.logging_steps": "how often the log is written",
    "training.log_batch_items": "what the log holds",
    "training.threads": "CPU threads: speed (sums may round differently in the last bits)",
    "training.save_steps": "how often checkpoints are written",
    "training.snapshot_steps": "extra copies of the model",
    "training.save_merged": "an extra copy of the final model",
    "objective.cache_reference": "whether reference log-probs are kept on disk, not their values",
}
"""Settings that may differ on resume, and why that is safe. ``training.max_steps`` may too, but only
with ``training.lr_scheduler=constant`` (:func:`refused_changes`)."""


@dataclass
class ResumePoint:
    path: Path
    """The checkpoint folder (already checked by :func:`bcat.training.checkpoint.check_checkpoint`)."""
    changes: dict[str, list]
    """``{key: [at the checkpoint, now]}`` for each :data:`CHANGEABLE` setting that differs."""


def run_settings(cfg: TrainConfig, examples) -> dict[str, Any]:
    """What a checkpoint records of its run: every config key (model and data paths resolved) and the
    sha256 of the tokenized records."""
    return {**_flat_settings(dataclasses.asdict(cfg)), RECORDS_KEY: data_fingerprint(examples)}


def _flat_settings(sections: dict) -> dict[str, Any]:
    flat = {f"{section}.{key}": value for section, values in sections.items() for key, value in values.items()}
    for key in ("model.path", "data.train", "training.output_dir"):
        value = flat.get(key)
        if isinstance(value, str) and value and not value.startswith("builtin:"):
            flat[key] = str(Path(value).expanduser().resolve())
    return json.loads(json.dumps(flat))  # as JSON gives them back from state.json


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, list]:
    """``{key: [saved, now]}`` for every key whose value differs (a key missing on one side included)."""
    return {k: [saved.get(k), now.get(k)] for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def refused_changes(changes: dict[str, list], cfg: TrainConfig) -> list[str]:
    """The changes a resume may not make, each as ``key (old -> new)`` with the reason where it is not obvious."""
    refused = []
    for key, (old, new) in changes.items():
        if key in CHANGEABLE:
            continue
        if key == "training.max_steps" and cfg.training.lr_scheduler == "constant":
            continue
        what = f"{key} ({old!r} -> {new!r})"
        if key == "training.max_steps":
            what += (f": the {cfg.training.lr_scheduler} learning-rate schedule is laid out over max_steps, so the "
                     "steps after the checkpoint would follow another schedule than those before")
        elif key == RECORDS_KEY:
            what = f"{key}: the tokenized records differ from those the checkpoint was trained on"
        refused.append(what)
    return refused


def plan_resume(out: Path, resume: Resume, cfg: TrainConfig, settings: dict | None, sampler,
                processes: int) -> ResumePoint | None:
    """Where this run continues from (``None``: it starts), on every rank; every rank must call this.

    Only rank 0 reads the output directory; a refusal is raised on every rank. ``settings``: this run's
    :func:`run_settings` (read on rank 0 only).
    """
    verdict: Any = None
    if process_index() == 0:
        try:
            verdict = _plan(out, resume, cfg, settings, sampler, processes)
        except BcatError as e:
            verdict = e
    verdict = broadcast_object(verdict)
    if isinstance(verdict, BcatError):
        raise verdict
    return verdict


def _plan(out: Path, resume: Resume, cfg: TrainConfig, settings: dict, sampler, processes: int) -> ResumePoint | None:
    summary = out / "training_summary.json"
    if summary.exists():
        what = "nothing to resume; " if resume else ""
        raise ConfigError(f"training.output_dir {out} already holds a finished run ({summary.name}): {what}"
                          "choose another directory")
    newest = latest_checkpoint(out) if out.is_dir() else None
    if newest is None:
        if resume is True:
            where = f"holds no checkpoint (nothing under {out / CHECKPOINTS})" if out.is_dir() else "does not exist"
            raise ConfigError(
                f"training.output_dir {out} {where}: nothing to resume; run without --resume to start, or with "
                "--resume-if-possible to start where there is nothing to resume")
        return None
    if not resume:
        raise ConfigError(f"training.output_dir {out} holds an unfinished run (checkpoint {newest.name}): continue it "
                          "with --resume, or choose another directory")
    state = check_checkpoint(newest, processes)
    step = state["step"]
    if step >= cfg.training.max_steps:
        raise TrainingError(f"checkpoint {newest} is at step {step}, not before training.max_steps="
                            f"{cfg.training.max_steps}: nothing is left to train (was max_steps changed, or the file?)")
    _check_sampler(newest, state["sampler"], sampler, step * cfg.training.gradient_accumulation_steps)
    changes = changed_settings(_saved_settings(newest, state, out, settings), settings)
    refused = refused_changes(changes, cfg)
    if refused:
        raise ConfigError(f"--resume: this run's settings differ from those of checkpoint {newest}: "
                          f"{'; '.join(refused)}. Resume with the same settings, or train into another directory")
    return ResumePoint(newest, changes)


def _check_sampler(path: Path, saved: dict, sampler, micro_batches: int) -> None:
    """The saved data position must fit this sampler and be where ``micro_batches`` consumed micro-batches lead."""
    probe, expected = copy.copy(sampler), copy.copy(sampler)
    try:
        probe.load_state_dict(saved)
    except ValueError as e:
        raise TrainingError(f"checkpoint {path}: {e}") from None
    expected.load_state_dict(sampler.state_for(micro_batches))
    if probe.state_dict() != expected.state_dict():
        raise TrainingError(f"checkpoint {path} has the data position {saved}, but its step leads to "
                            f"{expected.state_dict()}; delete it to resume from the one before")


def _saved_settings(path: Path, state: dict, out: Path, now: dict) -> dict:
    """The checkpoint's record of its run's settings; a checkpoint written before that record existed is
    compared with the run's ``config.yaml`` (whose records' content was not recorded)."""
    if isinstance(state.get("run"), dict):
        return state["run"]
    try:
        saved = _flat_settings(read_yaml(out / "config.yaml"))
    except (ConfigError, AttributeError, TypeError) as e:
        raise TrainingError(f"checkpoint {path} does not record its run's settings and {out / 'config.yaml'} "
                            f"cannot stand in for them ({e}); resume with the bcat that wrote it") from None
    log.warning("bcat: checkpoint %s does not record its run's settings (an older bcat): compared with %s; "
                "the content of data.train cannot be checked", path, out / "config.yaml")
    return {**saved, RECORDS_KEY: now[RECORDS_KEY]}


def describe_changes(changes: dict[str, list]) -> str:
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
