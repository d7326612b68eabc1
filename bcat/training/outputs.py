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


def check_output_dir(out: Path, min_free_bytes: int) -> None:
    """Refuse before any work: an unwritable directory or too little disk (a run in the way:
    :mod:`bcat.training.resume`)."""
    check_writable(out, "training.output_dir")
    parent = out
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < min_free_bytes:
        raise ConfigError(
            f"training.output_dir {out}: {free / 2**30:.1f} GiB free, the run needs about {min_free_bytes / 2**30:.1f} GiB"
        )


def check_apart(out: Path, model_dirs: list[Path]) -> None:
    """Refuse an output directory that is, or is inside, or holds a model directory the run reads: the
    run would write its model over the model it loads, or a later ``--model`` would load the wrong one."""
    target = out.expanduser().resolve()
    for model_dir in model_dirs:
        source = model_dir.expanduser().resolve()
        if target == source or source in target.parents or target in source.parents:
            where = ("is" if target == source else "is inside" if source in target.parents else "holds")
            raise ConfigError(f"training.output_dir {out} {where} the model directory {model_dir}: "
                              "write the run to a directory of its own, outside the model's")


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
