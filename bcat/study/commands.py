"""The ``bcat`` command lines a study run (and ``bcat demo``) is made of: one place for each.

Every step of a run is an ordinary ``bcat`` command, so what a run did can be repeated by hand
from the commands recorded in its results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from bcat.languages import ANCHOR, SEEN

TRAINED_LANGUAGES: tuple[str, ...] = (ANCHOR, *SEEN)
"""Languages training sees in the paper's setting: the unseen ones (th, vi, hu, ro) are never trained."""

STUDY_SETTING = [
    "objective.name=orpo",
    "batch.groups_per_batch=1",
    "batch.languages_per_group=3",
    "alignment.hidden_weight=0",
    "alignment.output_weight=0",
    "data.max_length=384",
    "training.learning_rate=1e-4",
    "training.lr_scheduler=constant",
    "training.warmup_steps=10",
]
"""The reproduction study's setting at one group per optimizer step (configs/study/grid.yaml), which
``bcat demo`` trains with either batch composition: ORPO, a group's worth of records (English + 3
sampled languages) per micro-batch, no alignment terms (the dev selection, results/study/selection.json,
found neither term better), 1e-4 constant after 10 warm-up steps, one epoch (as many steps as groups).
``tests/study/test_selection.py`` checks it against the grid's ``orpo_shuffled`` and ``orpo_best`` arms."""


def pairs_argv(qa: Path, output: Path, seed: int = 0, groups: Optional[int] = None) -> list[str]:
    """``bcat data pairs``: preference pairs from RAG QA records (all languages; training picks),
    of ``groups`` groups drawn with ``seed`` (``None``: all)."""
    return ["data", "pairs", "--input", str(qa), "--output", str(output), "--seed", str(seed),
            *(["--groups", str(groups)] if groups is not None else [])]


def train_argv(model: str, pairs: Path, output_dir: Path, steps: Optional[int], overrides: Sequence[str] = (),
               languages: Sequence[str] = TRAINED_LANGUAGES) -> list[str]:
    """``bcat train`` on ``pairs``, restricted to ``languages``; ``overrides`` come after the settings
    given here (and may override them), the output directory last. ``steps=None``: from the overrides."""
    return ["train", f"model.path={model}", f"data.train={pairs}", f"data.languages=[{','.join(languages)}]",
            *([f"training.max_steps={steps}"] if steps is not None else []), *overrides,
            f"training.output_dir={output_dir}"]


def eval_argv(model: str, output: Path, *, data: str = "builtin", suite: str = "rag", limit: Optional[int] = None,
              batch_size: int = 8, max_new_tokens: int = 32, extra: Sequence[str] = ()) -> list[str]:
    """``bcat eval`` of ``model`` (a model id, a training output directory or a snapshot)."""
    argv = ["eval", "--model", model, "--data", data, "--suite", suite, "--batch-size", str(batch_size),
            "--max-new-tokens", str(max_new_tokens), "--output", str(output)]
    if limit is not None:
        argv[-2:-2] = ["--limit", str(limit)]
    return argv + list(extra)
