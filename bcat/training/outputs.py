"""The training run's output directory: checked before any work, the log kept consistent on resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bcat.config import TrainConfig
from bcat.errors import ConfigError
from bcat.model.loading import stored_parameters
from bcat.output import check_writable
from bcat.training.checkpoint import CHECKPOINTS_KEPT


def required_free_bytes(cfg: TrainConfig) -> int:
    """Disk the run may need: parameters x 4 bytes x (2 + checkpoints kept), at least 200 MiB."""
    kept = CHECKPOINTS_KEPT if cfg.training.save_steps else 0
    return max(200 * 2**20, stored_parameters(cfg.model.path) * 4 * (2 + kept))


def check_output_dir(out: Path, resume: bool, min_free_bytes: int) -> None:
    """Refuse before any work: an unwritable directory, too little disk, or a finished run in the way."""
    if out.exists() and (out / "training_summary.json").exists() and not resume:
        raise ConfigError(f"training.output_dir {out} already holds a finished run; choose another directory")
    check_writable(out, "training.output_dir")
    parent = out
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < min_free_bytes:
        raise ConfigError(
            f"training.output_dir {out}: {free / 2**30:.1f} GiB free, the run needs about {min_free_bytes / 2**30:.1f} GiB"
        )


def truncate_log(path: Path, step: int) -> None:
    """On resume, drop log lines written after the checkpoint so the log has each step once (and a line
    cut short by a kill)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
