"""Evaluation on N processes: each process scores a contiguous slice of the items, all get all results.

Under ``accelerate launch --num_processes N`` (``--multi_gpu`` for gloo on CPUs) every process runs
the same evaluation code. :func:`map_sharded` is where the work splits: process ``r`` runs ``fn`` on
its slice of ``items`` (Accelerate's ``split_between_processes``: contiguous slices in rank order,
sizes differing by at most one) and ``gather_object`` concatenates the slices in rank order, so
every process ends up with the results of all items in their original order, exactly as one
process computes them (greedy decoding and scoring do not depend on the other items of the slice,
up to the float noise of different padding). Only the main process writes files.

With one process (no launcher) it is a plain call: ``map_sharded(fn, items) == list(fn(items))``.

>>> map_sharded(lambda part: [x * x for x in part], [1, 2, 3])
[1, 4, 9]
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import gather_object

T = TypeVar("T")
R = TypeVar("R")


def _state() -> PartialState:
    # Like training's Accelerator: gloo across CPU processes on a machine without CUDA (Accelerate
    # otherwise looks for GPUs and, finding none, runs each process alone).
    return PartialState(cpu=not torch.cuda.is_available())


def map_sharded(fn: Callable[[list[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
    """``list(fn(items))``, with ``items`` split across the processes and the results gathered in order."""
    state = _state()
    if state.num_processes == 1:
        return list(fn(list(items)))
    with state.split_between_processes(list(items)) as mine:
        local = list(fn(mine)) if mine else []
    if len(local) != len(mine):
        raise RuntimeError(f"map_sharded: fn returned {len(local)} results for {len(mine)} items")
    return gather_object(local)


def is_main_process() -> bool:
    """Whether this process writes files and shows progress bars (always true without a launcher)."""
    return _state().is_main_process


def num_processes() -> int:
    """Processes sharing the evaluation (1 without a launcher)."""
    return _state().num_processes


def process_device(requested: str) -> str:
    """``requested``, except that each of N processes asking for ``cuda`` gets its own GPU."""
    state = _state()
    return str(state.device) if requested == "cuda" and state.num_processes > 1 else requested
