"""Atomic checkpoints: everything needed to continue a run bit for bit.

A checkpoint is written to ``step-N.tmp`` and renamed to ``step-N`` only when complete, so a kill
at any moment leaves the previous checkpoint or the new one, never a broken one. Weights are
safetensors; the optimizer state is read back with ``torch.load(weights_only=True)``; the rest is
JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bcat.errors import TrainingError

CHECKPOINTS = "checkpoints"
CHECKPOINTS_KEPT = 2
"""How many complete checkpoints stay on disk (older ones are deleted after each save)."""


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, state: dict,
                    keep: int = CHECKPOINTS_KEPT) -> Path:
    root = out_dir / CHECKPOINTS
    final = root / f"step-{step:08d}"
    tmp = root / f"step-{step:08d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), tmp / "trainable.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, tmp / "rng.safetensors")
    state = {**state, "step": step, "scheduler": scheduler.state_dict()}
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


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restore a checkpoint; anything unreadable (or pickled code) is a :class:`TrainingError`."""
    try:
        weights = load_file(path / "trainable.safetensors")
        # weights_only=True: tensors and plain containers only, a pickle that would run code is refused
        optimizer_state = torch.load(path / "optimizer.pt", weights_only=True)
        state = json.loads((path / "state.json").read_text())
    except Exception as e:  # safetensors, pickle and json each raise their own types
        reason = (str(e).splitlines() or [""])[0]
        raise TrainingError(f"checkpoint {path} cannot be read safely ({type(e).__name__}: {reason}); "
                            "delete it to resume from the one before") from None
    expected = {n for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        raise TrainingError(f"checkpoint {path} does not match this model's trainable parameters "
                            "(another model or LoRA setting?)")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(state["scheduler"])
    rng = load_file(path / "rng.safetensors")
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return state
