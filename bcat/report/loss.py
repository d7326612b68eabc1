"""Training-loss curves for the report: the per-language loss that ``bcat train`` logs.

``bcat train`` appends one JSON line per logged step to ``OUTPUT/train_log.jsonl`` with ``step``,
``loss`` (the total objective) and ``main_per_language`` (the main objective's mean loss per
language in that step). The report draws them per training run, given with ``bcat report
--train-run DIR`` or found next to each evaluated model (``runs/x/model`` -> ``runs/x``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bcat.errors import OptionError
from bcat.evaluation.compare import Run
from bcat.evaluation.scoring import training_run_dir


@dataclass
class TrainLog:
    """The logged steps of one training run."""

    path: Path
    anchor: Optional[str]
    entries: list[dict]

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def languages(self) -> list[str]:
        """Languages with a logged per-language loss, the anchor first."""
        langs = list(dict.fromkeys(l for e in self.entries for l in e.get("main_per_language", {})))
        return sorted(langs, key=lambda l: (l != self.anchor, l))


def read_train_log(run_dir: Path) -> TrainLog:
    """The log of a training run directory; lines that are not complete JSON objects (a run killed
    mid-write) are skipped, as on resume."""
    log_file = run_dir / "train_log.jsonl"
    if not log_file.is_file():
        raise OptionError(f"{{train_run}}: {run_dir} has no train_log.jsonl (is it a `bcat train` output directory?)",
                          "train_run")
    entries = []
    for line in log_file.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("step"), int):
            entries.append(entry)
    anchor = None
    config = run_dir / "config.yaml"
    if config.is_file():
        import yaml

        anchor = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data") or {}).get("anchor")
    return TrainLog(run_dir, anchor, entries)


def training_logs(runs: Sequence[Run], given: Sequence[str] = ()) -> list[TrainLog]:
    """The logs of ``given`` run directories, or (none given) of the training runs found next to
    the evaluated models, each once, in run order."""
    if given:
        return [read_train_log(Path(d)) for d in given]
    dirs = []
    for run in runs:
        d = training_run_dir(run.metrics.get("model"))
        if d is not None and (d / "train_log.jsonl").is_file() and d.resolve() not in [x.resolve() for x in dirs]:
            dirs.append(d)
    return [read_train_log(d) for d in dirs]
