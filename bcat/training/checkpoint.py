"""Atomic checkpoints: everything needed to continue a run bit for bit, on 1 process, DDP or FSDP2.

A checkpoint is written to ``step-N.tmp`` and renamed to ``step-N`` only when complete, so a kill
at any moment leaves the previous checkpoint or the new one, never a broken one. It holds only
safetensors and JSON (nothing is unpickled on resume):

- ``trainable.safetensors``: the full (unsharded) trainable parameters;
- ``optimizer.safetensors``: the optimizer's tensors (``<param>/<key>``, e.g. ``...q_proj.lora_A.default.weight/exp_avg``);
- ``rng.safetensors``: every rank's torch RNG state (``cpu.<rank>``, ``cuda.<rank>``);
- ``state.json``: step, tokens, sampler position, scheduler, the optimizer's parameter groups
  (settings and parameter names), the number of processes.

With sharded parameters (FSDP2) the full state is gathered onto rank 0, which alone writes; on
resume rank 0 reads it and every rank takes back its own shard (:mod:`bcat.training.distributed`).
Only rank 0 reads and writes checkpoint files, so on several machines the output directory need not
be shared. A run saved on N processes resumes on N processes, each rank's data order and RNG intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bcat.errors import TrainingError
from bcat.training.distributed import (
    broadcast_object,
    full_model_state,
    full_optimizer_state,
    gather_objects,
    load_full_state,
    process_index,
)

CHECKPOINTS = "checkpoints"
CHECKPOINTS_KEPT = 2
"""How many complete checkpoints stay on disk (older ones are deleted after each save)."""


def _rng_states() -> dict[str, torch.Tensor]:
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    return rng


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, state: dict, is_main: bool,
                    keep: int = CHECKPOINTS_KEPT) -> Path | None:
    """Gather the run's state (every rank must call this) and write it on rank 0; returns the path there."""
    weights = full_model_state(model, trainable_only=True)
    optimizer_state = full_optimizer_state(model, optimizer)
    rng = gather_objects(_rng_states())
    if not is_main:
        return None
    root = out_dir / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(weights, tmp / "trainable.safetensors")
    save_file({f"{name}/{key}": value for name, values in optimizer_state["state"].items()
               for key, value in values.items()}, tmp / "optimizer.safetensors")
    save_file({f"{kind}.{rank}": value for rank, states in enumerate(rng) for kind, value in states.items()},
              tmp / "rng.safetensors")
    state = {**state, "step": step, "processes": len(rng), "scheduler": scheduler.state_dict(),
             "optimizer_param_groups": optimizer_state["param_groups"]}
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for old in sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp"))[:-keep]:
        shutil.rmtree(old)
    return final


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir() if path.is_dir() else []:
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete checkpoint (``.tmp`` leftovers of a killed write are ignored)."""
    root = out_dir / CHECKPOINTS
    done = sorted(p for p in root.glob("step-*") if not p.name.endswith(".tmp") and (p / "state.json").exists())
    return done[-1] if done else None


def resume_point(out_dir: Path) -> Path | None:
    """:func:`latest_checkpoint` as rank 0 sees it, on every rank (every rank must call this): only rank 0
    reads the output directory, so it need not be shared between machines."""
    return broadcast_object(latest_checkpoint(out_dir) if process_index() == 0 else None)


def load_checkpoint(path: Path, model, optimizer, scheduler, processes: int = 1) -> dict:
    """Restore a checkpoint (every rank must call this; only rank 0 reads ``path``); anything unreadable or
    not matching this run is a :class:`TrainingError` on every rank."""
    weights, optimizer_state, small = {}, {}, None
    if process_index() == 0:
        state, rng = {}, {}
        try:
            state = json.loads((path / "state.json").read_text())
            weights = load_file(path / "trainable.safetensors")
            optimizer_state = {"state": {}, "param_groups": state["optimizer_param_groups"]}
            for key, value in load_file(path / "optimizer.safetensors").items():
                name, entry = key.rsplit("/", 1)
                optimizer_state["state"].setdefault(name, {})[entry] = value
            rng = load_file(path / "rng.safetensors")
            error = _mismatch(path, model, weights, state, processes)
        except Exception as e:  # safetensors, json and missing keys each raise their own types
            reason = (str(e).splitlines() or [""])[0]
            error = (f"checkpoint {path} cannot be read safely ({type(e).__name__}: {reason}); "
                     "delete it to resume from the one before")
        small = {"error": error, "state": state, "rng": rng}
    small = broadcast_object(small)
    if small["error"] is not None:
        raise TrainingError(small["error"])
    state, rng, rank = small["state"], small["rng"], process_index()
    load_full_state(model, optimizer, weights, optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(rng[f"cpu.{rank}"])
    if f"cuda.{rank}" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng[f"cuda.{rank}"])
    return state


def _mismatch(path: Path, model, weights: dict, state: dict, processes: int) -> str | None:
    if state.get("processes") != processes:
        return (f"checkpoint {path} was written by {state.get('processes')} process(es), this run has {processes}: "
                "resume with the same number of processes (the data order of each rank depends on it)")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params) or any(tuple(weights[n].shape) != tuple(p.shape) for n, p in params.items()):
        return (f"checkpoint {path} does not match this model's trainable parameters "
                "(another model or LoRA setting?)")
    return None
