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


CHECKPOINT_FILES = ("state.json", "trainable.safetensors", "optimizer.safetensors", "rng.safetensors")
STATE_KEYS = {"step": int, "tokens": int, "processes": int, "sampler": dict, "scheduler": dict,
              "optimizer_param_groups": list}
"""What ``state.json`` must hold, and the type of each value."""


def check_checkpoint(path: Path, processes: int) -> dict:
    """Check every file of a checkpoint against the format :func:`save_checkpoint` writes, reading only
    ``state.json`` and the safetensors headers (no tensor is loaded); return the parsed ``state.json``.

    Refused (:class:`TrainingError`, one message naming the file and what is wrong): a symlinked
    folder or file, a missing file, a ``state.json`` without one of :data:`STATE_KEYS` or whose step
    is not the folder's, another number of processes, optimizer or RNG tensors whose names, shapes or
    types are not what this format and this machine's torch give, a scheduler at another step.
    """
    def bad(what: str) -> TrainingError:
        return TrainingError(f"checkpoint {path} {what}; delete it to resume from the one before, or start "
                             "again without --resume in another training.output_dir")

    for f in [path, *(path / name for name in CHECKPOINT_FILES)]:
        if f.is_symlink():  # a checkpoint is rewritten and pruned in place: it must be the run's own files
            raise bad(f"has a symbolic link ({f.name} -> {os.readlink(f)}): its files must be real files in the run's folder")
        if not f.exists():
            raise bad(f"lacks {f.name}")
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        shapes = {name: _header(path / f"{name}.safetensors") for name in ("trainable", "optimizer", "rng")}
    except Exception as e:  # json and safetensors each raise their own types
        raise TrainingError(_unreadable(path, e)) from None
    if not isinstance(state, dict):
        raise bad("has a state.json that is not a JSON object")
    for key, kind in STATE_KEYS.items():
        if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool):
            raise bad(f"has a state.json whose '{key}' is missing or not a {kind.__name__}")
    if not isinstance(state.get("run", {}), dict) or not isinstance(state.get("resumes", []), list):
        raise bad("has a state.json whose 'run' is not an object or whose 'resumes' is not a list")
    step = state["step"]
    if path.name != f"step-{step:08d}" or state["tokens"] < 0:
        raise bad(f"has a state.json at step {step} with {state['tokens']} tokens, in a folder named {path.name}")
    if state["processes"] != processes:
        raise TrainingError(f"checkpoint {path} was written by {state['processes']} process(es), this run has "
                            f"{processes}: resume with the same number of processes (the data order of each rank "
                            "depends on it)")
    if state["scheduler"].get("last_epoch") != step:
        raise bad(f"has a learning-rate scheduler at step {state['scheduler'].get('last_epoch')!r}, not {step}")
    error = _tensor_mismatch(shapes, state["optimizer_param_groups"], processes)
    if error:
        raise bad(error)
    return state


def _unreadable(path: Path, error: Exception) -> str:
    reason = (str(error).splitlines() or [""])[0]
    return f"checkpoint {path} cannot be read safely ({type(error).__name__}: {reason}); delete it to resume from the one before"


def _header(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{name: (shape, dtype)}`` of a safetensors file, from its header alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def _tensor_mismatch(shapes: dict, param_groups: list, processes: int) -> str | None:
    """What in the optimizer and RNG files does not fit the trainable parameters and this machine, if anything."""
    trainable = shapes["trainable"]
    grouped = [n for g in param_groups for n in (g.get("params", []) if isinstance(g, dict) else [None])]
    if sorted(map(str, grouped)) != sorted(trainable):
        return "has optimizer parameter groups that do not name its trainable parameters"
    for key, (shape, _) in shapes["optimizer"].items():
        name, _, entry = key.rpartition("/")
        if name not in trainable:
            return f"has optimizer state '{key}' for a parameter it does not train"
        want = () if entry == "step" else trainable[name][0]
        if shape != want:
            return f"has optimizer state '{key}' of shape {list(shape)}, its parameter needs {list(want)}"
    cpu = tuple(torch.get_rng_state().shape)
    for rank in range(processes):
        got = shapes["rng"].get(f"cpu.{rank}")
        if got != (cpu, "U8"):
            return f"has no usable CPU random state for rank {rank} (found {got}, this torch needs {list(cpu)} bytes)"
        cuda = shapes["rng"].get(f"cuda.{rank}")
        if cuda is not None and torch.cuda.is_available() and cuda != (tuple(torch.cuda.get_rng_state().shape), "U8"):
            return f"has a CUDA random state for rank {rank} that this torch cannot take ({cuda})"
    return None


def load_checkpoint(path: Path, model, optimizer, scheduler, processes: int = 1) -> dict:
    """Restore a checkpoint (every rank must call this; only rank 0 reads ``path``); anything unreadable or
    not matching this run (:func:`check_checkpoint`, then the model's trainable parameters) is a
    :class:`TrainingError` on every rank, raised before anything is restored."""
    weights, optimizer_state, small = {}, {}, None
    if process_index() == 0:
        state, rng = {}, {}
        try:
            state = check_checkpoint(path, processes)
            weights = load_file(path / "trainable.safetensors")
            optimizer_state = {"state": {}, "param_groups": state["optimizer_param_groups"]}
            for key, value in load_file(path / "optimizer.safetensors").items():
                name, entry = key.rsplit("/", 1)
                optimizer_state["state"].setdefault(name, {})[entry] = value
            rng = load_file(path / "rng.safetensors")
            error = _mismatch(path, model, weights)
        except TrainingError as e:
            error = str(e)
        except Exception as e:  # a file changed since it was checked: safetensors and json raise their own types
            error = _unreadable(path, e)
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


def _mismatch(path: Path, model, weights: dict) -> str | None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(params) or any(tuple(weights[n].shape) != tuple(p.shape) for n, p in params.items()):
        return (f"checkpoint {path} does not match this model's trainable parameters "
                "(another model or LoRA setting?)")
    return None
