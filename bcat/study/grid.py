"""The study configuration: arms x seeds, what each run is evaluated on, and the time plan.

A study YAML file (see ``configs/study/``) names the model, the data, the evaluation options, the
training overrides every arm shares, and the arms. Each arm is a training setting (``overrides``
on top of the shared ones) run once per seed, or the base model (``train: false``). An arm with
``from_selection: NAME`` (``true`` when the study has one selection) takes the setting that selection
picks ON DEV among its candidates (plus the arm's own overrides, e.g. ``objective.name=dpo``): it can
only run once the candidates' first seeds have finished. A study may hold several selections, e.g.
one learning rate picked per arm.

Every run gets the same pairs, steps, learning-rate schedule and micro-batch size unless its arm
overrides them. A run's training seed sets both ``training.seed`` (LoRA initialisation) and
``batch.seed`` (the order of the batches).

Everything is checked when the file is read, before any work: unknown keys (with the closest valid
one), wrong types, every arm's training overrides (through :func:`bcat.config.load_config`), names,
and references between arms.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from bcat.bundled import resource
from bcat.config import build, load_config, read_yaml
from bcat.errors import ConfigError
from bcat.evaluation.scoring import file_sha256
from bcat.languages import LANGUAGES
from bcat.study.commands import TRAINED_LANGUAGES

STUDY_BASE = ["batch.mode=grouped"]
"""Where every trained arm starts, before the study's ``training`` list: a study is an A/B of batch
composition, so an arm that sets no ``batch.mode`` trains BCAT's whole groups, whatever ``bcat
train``'s own default (``shuffled``). The same for every run, so :meth:`Run.key` leaves it out (the
keys of runs made while ``grouped`` was ``bcat train``'s default stay valid); changing it changes what
every cached run means."""

BUILTIN_DATA = {"builtin-train": "kb/train.jsonl", "builtin-dev": "kb/dev.jsonl", "builtin-test": "kb/test.jsonl",
                "builtin": "kb/test.jsonl"}
"""Names of the bundled splits a study file may use instead of a path."""


@dataclass
class DataSpec:
    train_qa: str = "builtin-train"
    """RAG QA records that ``bcat data pairs`` turns into the training pairs (a path or ``builtin-train``)."""
    train: str = ""
    """Training records used as they are (``bcat train``'s ``data.train``: your own preference pairs or SFT
    records), instead of pairs made from ``train_qa``. Its content enters each run's identity."""
    pairs_seed: int = 0
    """``bcat data pairs --seed``."""
    train_groups: Optional[int] = None
    """``bcat data pairs --groups``: train on this many groups (drawn with ``pairs_seed``; ``None``: all).
    Set it so that every trained arm's ``max_steps`` covers whole epochs: only then do all arms see
    the same records. Within an epoch they do not: a grouped micro-batch holds the languages of ONE
    item where a shuffled one holds records of about as many items as it has records."""
    train_languages: list[str] = field(default_factory=lambda: list(TRAINED_LANGUAGES))
    """Languages training sees (``data.languages``); the others are unseen and never trained."""
    dev: str = "builtin-dev"
    """Development split: every choice (selection, steps) is made on it."""
    dev_groups: Optional[int] = None
    """Evaluate the first N dev groups (all their languages); ``None``: all."""
    test: str = "builtin-test"
    """Test split: evaluated once per run that has ``test: true``; never used for a choice."""
    test_groups: Optional[int] = None
    """Evaluate the first N test groups; ``None``: all."""


@dataclass
class EvalSpec:
    batch_size: int = 12
    """``bcat eval --batch-size``."""
    max_new_tokens: int = 32
    """``bcat eval --max-new-tokens``."""
    ood_limit: int = 10
    """``bcat eval --suite ood --limit``: items per language and task (0: no OOD evaluation)."""
    ood_tasks: Optional[list[str]] = None
    """``--ood-tasks`` (``None``: all tasks)."""
    extra: list[str] = field(default_factory=list)
    """More ``bcat eval`` options, the same for every evaluation (e.g. ``[--shots, "2"]``)."""


@dataclass
class CurveSpec:
    steps: list[int] = field(default_factory=list)
    """Steps at which the model is kept (``training.snapshot_steps``) and evaluated on dev."""
    groups: int = 20
    """Dev groups of the curve's evaluations (the first N): step 0 and the final step are read off the
    base model's and the run's full dev predictions on the same groups."""


@dataclass
class SelectionSpec:
    name: str = ""
    """What arms' ``from_selection`` calls it (needed when the study has several selections); the pick is
    written to ``RESULTS/selection-NAME.json`` (an unnamed selection: ``selection.json``)."""
    candidates: list[str] = field(default_factory=list)
    """Arms among which the best setting is picked (their first seed, on dev)."""
    baseline: str = ""
    """The arm whose English accuracy on dev a candidate may not fall below by more than ``english_tolerance``;
    empty: the best English among the candidates themselves (e.g. when picking one arm's learning rate)."""
    metric: str = "non_english_mean"
    """Dev metric to maximise: ``non_english_mean`` (seen), ``unseen_mean`` or ``all_non_english_mean``."""
    english_tolerance: float = 0.01
    """Largest English drop (accuracy, 0.01 = 1 point) against the baseline a candidate may have."""
    at_edge: str = "stop"
    """When the candidates sweep one number (a learning rate, say) and the pick is its smallest or largest
    value, the best may lie outside the grid: ``stop`` makes the arms from this selection wait until a
    candidate beyond it is added; ``go_on`` takes the pick (the selection file and report still say so)."""


@dataclass
class TimingSpec:
    """Seconds the plan uses; measured on the machine that will run the grid (say where in a comment)."""

    step_s: dict[str, float] = field(default_factory=lambda: {"grouped": 4.5, "no_anchor": 4.5, "shuffled": 9.5,
                                                               "monolingual": 9.5})
    """Seconds per optimizer step for each ``batch.mode`` at ``reference_records`` records per step."""
    reference_records: int = 4
    """Records per optimizer step at which ``step_s`` was measured; other sizes scale linearly."""
    objective_factor: dict[str, float] = field(default_factory=lambda: {"orpo": 1.0, "dpo": 1.3, "sft": 0.6})
    """Step time relative to ORPO (DPO with a live reference: one more forward)."""
    checkpointing_factor: float = 1.7
    """Step time with ``model.gradient_checkpointing=true`` relative to without: the recomputed forward, and
    the larger micro-batch that such runs are for (grid-8g's InfoNCE arm, 8 groups in one micro-batch with
    checkpointing: 61-68 s per step, median of each seed, against 36-39 s for 2 groups x 4 accumulated
    without)."""
    eval_item_s: float = 0.9
    """Seconds per RAG item evaluated."""
    ood_item_s: float = 2.0
    """Seconds per OOD item (``ood_limit`` x languages x 3: last word, its perplexity, arithmetic)."""
    command_s: float = 30.0
    """Start-up and model loading per ``bcat`` command."""


@dataclass
class ArmSpec:
    name: str = ""
    """Short name; runs are named ``NAME-sSEED`` (the base model: ``NAME``)."""
    train: bool = True
    """``False``: the base model itself (no seeds)."""
    overrides: list[str] = field(default_factory=list)
    """``bcat train`` overrides on top of the study's ``training`` list."""
    from_selection: Optional[str] = None
    """The selection (by name; ``true`` in YAML: the study's only selection) whose pick on dev this arm starts
    from, then applies ``overrides``."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Training seeds (``training.seed`` and ``batch.seed``)."""
    dev: str = "first"
    """Seeds evaluated on dev: ``first``, ``all`` or ``none``."""
    test: bool = False
    """Evaluate every seed on the test split."""
    ood: str = "first"
    """Test-evaluated seeds that also run the OOD suite: ``first``, ``all`` or ``none``."""
    curve: bool = True
    """Evaluate the ``curve`` steps on dev for the seeds evaluated on dev."""
    twin: Optional[str] = None
    """The arm this one is compared with (its shuffled twin), seeds paired."""
    adopt: dict[str, str] = field(default_factory=dict)
    """Base model only: existing ``bcat eval`` directories to use instead of evaluating, per split
    (``dev``, ``test``, ``ood``). A directory still being written is waited for (the run is left
    for later); one made with other data, items or options is refused."""


@dataclass
class StudySpec:
    name: str = "study"
    """Name of the study (the default cache folder)."""
    model: str = "builtin:gemma3-270m"
    """Model every arm starts from."""
    cache: str = ""
    """Folder for pairs, checkpoints, models and raw evaluations (default ``runs/study/NAME``). Losing it
    costs only the unfinished run: finished runs live in ``results``."""
    results: str = "results/study"
    """Folder for ``<run>.json``, the runs' small outputs and the report (meant to be committed)."""
    data: DataSpec = field(default_factory=DataSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    curve: CurveSpec = field(default_factory=CurveSpec)
    training: list[str] = field(default_factory=list)
    """``bcat train`` overrides shared by every arm (objective, schedule, micro-batch size, steps...), after
    :data:`STUDY_BASE`."""
    selection: list[SelectionSpec] = field(default_factory=list)
    """Settings picked on dev: one mapping, or a list of named ones."""
    timing: TimingSpec = field(default_factory=TimingSpec)
    bootstrap: int = 2000
    """Bootstrap resamples of the report's intervals (over seed pairs and groups where arms have several seeds)."""
    english_tolerance: float = 0.01
    """Largest English drop (accuracy: 0.01 = 1 point) with which an arm still counts as better than its twin."""
    arms: list[ArmSpec] = field(default_factory=list)

    source: str = field(default="", init=False)
    """The file it was read from (set by :func:`load_study`; not a key)."""

    @property
    def shared(self) -> list[str]:
        """What every trained arm starts from: :data:`STUDY_BASE`, then ``training``."""
        return [*STUDY_BASE, *self.training]


SEED_CHOICES = ("first", "all", "none")
ONLY_SELECTION = ""
"""``from_selection`` of an arm that wrote ``from_selection: true``: the study's only selection."""
SELECTION_METRICS = ("non_english_mean", "unseen_mean", "all_non_english_mean")


# --- reading ---------------------------------------------------------------------------------------

def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file; every error names the file and the key. The file is read as every
    bcat config is: :func:`bcat.config.read_yaml` (no aliases, duplicate keys or interpolation), then
    :func:`bcat.config.build` (the :class:`StudySpec` schema, type-checked by OmegaConf)."""
    spec = build(StudySpec, [(str(path), _normalised(read_yaml(path)))])
    spec.source = str(path)
    return validate(spec)


def _normalised(raw: Any) -> Any:
    """The two shorthands of a study file that a typed schema cannot hold, written out: ``selection``
    as one mapping (or empty) is a list of one (or none), and an arm's ``from_selection: true`` names
    the only selection (``false``: none), where the field holds a name."""
    if not isinstance(raw, dict):
        return {} if raw is None else raw
    raw = dict(raw)
    if "selection" in raw and (raw["selection"] is None or isinstance(raw["selection"], dict)):
        raw["selection"] = [] if raw["selection"] is None else [raw["selection"]]
    if isinstance(raw.get("arms"), list):
        raw["arms"] = [{**arm, "from_selection": ONLY_SELECTION if arm["from_selection"] else None}
                       if isinstance(arm, dict) and isinstance(arm.get("from_selection"), bool) else arm
                       for arm in raw["arms"]]
    return raw


def validate(spec: StudySpec) -> StudySpec:
    src = spec.source or "study"

    def bad(key: str, message: str) -> ConfigError:
        return ConfigError(f"{src}: '{key}' {message}")

    if not spec.arms:
        raise bad("arms", "must list at least one arm")
    names = [a.name for a in spec.arms]
    for i, arm in enumerate(spec.arms):
        key = f"arms[{i}]"
        if not arm.name or not all(c.isalnum() or c in "_." for c in arm.name):
            raise bad(f"{key}.name", f"must be letters, digits, '_' or '.', got {arm.name!r}")
        if names.count(arm.name) > 1:
            raise bad(f"{key}.name", f"'{arm.name}' is used by two arms")
        for choice in ("dev", "ood"):
            if getattr(arm, choice) not in SEED_CHOICES:
                raise bad(f"{key}.{choice}", f"must be one of {', '.join(SEED_CHOICES)}")
        if arm.train:
            if not arm.seeds or len(set(arm.seeds)) != len(arm.seeds) or min(arm.seeds) < 0:
                raise bad(f"{key}.seeds", "must list distinct seeds, 0 or more")
            if arm.adopt:
                raise bad(f"{key}.adopt", "is for the base model (train: false) only")
        elif arm.overrides or arm.from_selection is not None:
            raise bad(f"{key}", "the base model (train: false) takes no overrides and no selection")
        bad_splits = set(arm.adopt) - {"dev", "test", "ood"}
        if bad_splits:
            raise bad(f"{key}.adopt", f"unknown split {sorted(bad_splits)[0]!r} (dev, test or ood)")
        if arm.twin is not None and arm.twin not in names:
            raise bad(f"{key}.twin", f"names no arm: {arm.twin!r}")
    selection_names = [sel.name for sel in spec.selection]
    arms = {a.name: a for a in spec.arms}
    for i, sel in enumerate(spec.selection):
        key = "selection" if len(spec.selection) == 1 else f"selection[{i}]"
        if len(spec.selection) > 1 and not sel.name:
            raise bad(f"{key}.name", "must name each of several selections")
        if selection_names.count(sel.name) > 1:
            raise bad(f"{key}.name", f"'{sel.name}' names two selections")
        for c in sel.candidates + ([sel.baseline] if sel.baseline else []):
            if c not in arms or not arms[c].train or arms[c].from_selection is not None:
                raise bad(key, f"'{c}' must name a trained arm that does not itself come from a selection")
            if arms[c].dev == "none":
                raise bad(key, f"arm '{c}' is not evaluated on dev (dev: none): it cannot be selected on dev")
        if not sel.candidates:
            raise bad(f"{key}.candidates", "must list at least one arm")
        if sel.metric not in SELECTION_METRICS:
            raise bad(f"{key}.metric", f"must be one of {', '.join(SELECTION_METRICS)}")
        if sel.at_edge not in ("stop", "go_on"):
            raise bad(f"{key}.at_edge", "must be stop or go_on")
    for i, arm in enumerate(spec.arms):
        if arm.from_selection is not None:
            try:
                selection_of(spec, arm)
            except KeyError as e:
                raise bad(f"arms[{i}].from_selection", str(e.args[0])) from None
    for lang in spec.data.train_languages:
        if lang not in LANGUAGES:
            raise bad("data.train_languages", f"has an unknown language {lang!r}")
    if spec.bootstrap < 100:
        raise bad("bootstrap", "must be at least 100")
    if spec.curve.groups < 1 or any(s < 1 for s in spec.curve.steps):
        raise bad("curve", "steps and groups must be positive")
    if spec.data.train and not Path(spec.data.train).is_file():
        raise bad("data.train", f"names no file: {spec.data.train}")
    if not spec.data.train and not resolve_data(spec.data.train_qa).is_file():
        raise bad("data.train_qa", f"names no file: {spec.data.train_qa}")
    for key in ("dev_groups", "test_groups", "train_groups"):
        if (getattr(spec.data, key) or 1) < 1:
            raise bad(f"data.{key}", "must be positive or null")
    # Every arm's training config must load, before any work (a typo would otherwise surface hours in).
    for arm in spec.arms:
        if arm.train:
            try:
                cfg = load_config(None, [*spec.shared, *arm.overrides])
            except ConfigError as e:
                raise bad(f"arms[{names.index(arm.name)}].overrides", f"(with 'training'): {e}") from None
            if not 1 <= cfg.training.save_steps < cfg.training.max_steps:
                raise bad("training", f"must set training.save_steps below training.max_steps (arm {arm.name}): a run "
                          "resumes from its checkpoints")
            if cfg.batch.mode not in spec.timing.step_s:
                raise bad("timing.step_s", f"has no time for batch.mode={cfg.batch.mode} (arm {arm.name})")
            groups = spec.data.train_groups
            per_epoch = -(-groups // cfg.batch.groups_per_batch) // cfg.training.gradient_accumulation_steps if groups else 0
            if groups and (per_epoch < 1 or cfg.training.max_steps % per_epoch):
                raise bad("data.train_groups", f"{groups} groups at {cfg.batch.groups_per_batch} per micro-batch make "
                          f"{per_epoch} steps per epoch; arm {arm.name}'s training.max_steps={cfg.training.max_steps} "
                          "must be a whole number of epochs, or the arms see different records")
    return spec


def selection_of(spec: StudySpec, arm: "ArmSpec") -> SelectionSpec:
    """The selection an arm's ``from_selection`` names (``KeyError`` with the reason when none)."""
    if arm.from_selection == ONLY_SELECTION:
        if len(spec.selection) != 1:
            raise KeyError("'true' needs exactly one selection in the study; name the selection instead")
        return spec.selection[0]
    for sel in spec.selection:
        if sel.name == arm.from_selection:
            return sel
    raise KeyError(f"names no selection: {arm.from_selection!r}")


# --- runs --------------------------------------------------------------------------------------------

@dataclass
class Run:
    """One arm x seed (or the base model): what to train and evaluate, and where."""

    name: str
    arm: str
    seed: Optional[int]
    overrides: list[str]
    """The full ``bcat train`` overrides (shared + selection + arm + seed); empty for the base model."""
    dev: bool
    test: bool
    ood: bool
    curve_steps: list[int]
    """Snapshot steps evaluated on dev for the learning curve (those before the last step)."""
    selected: Optional[str] = None
    """For ``from_selection`` arms: the candidate arm the setting came from."""

    @property
    def trained(self) -> bool:
        return self.seed is not None

    def key(self, spec: StudySpec) -> str:
        """Identity of the TRAINING (model, data, overrides): runs with the same key share the cache,
        e.g. the selected arm's first seed and the candidate it came from."""
        d = spec.data
        training = [d.train_qa, d.pairs_seed, d.train_languages, d.train_groups] if self.trained else []
        if self.trained and d.train:
            training.append(file_sha256(Path(d.train)))
        overrides = self.overrides
        if self.trained:
            assert overrides[:len(STUDY_BASE)] == STUDY_BASE, overrides
            overrides = overrides[len(STUDY_BASE):]
        text = json.dumps({"model": spec.model, "data": training, "overrides": overrides}, sort_keys=True)
        return ("base" if not self.trained else "t") + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def seed_overrides(seed: int) -> list[str]:
    return [f"training.seed={seed}", f"batch.seed={seed}"]


def expand(spec: StudySpec, selected: Optional[dict[str, str]] = None) -> list[Run]:
    """Every run of the study in the order it runs: first the runs the selections wait for (the first
    seed of each candidate and of each baseline), then the rest, arms in file order, seeds in order,
    except that a test arm's runs go seed by seed beside its twin's (:func:`_pairs_seed_by_seed`).
    An arm that comes from a selection is left out until ``selected`` (selection name -> the candidate
    arm it picked) has that selection's pick."""
    arms = {a.name: a for a in spec.arms}
    selected = selected or {}
    runs = []
    for arm in spec.arms:
        if not arm.train:
            runs.append(Run(arm.name, arm.name, None, [], dev=arm.dev != "none", test=arm.test,
                            ood=arm.test and arm.ood != "none", curve_steps=[]))
            continue
        base = list(spec.shared)
        pick = None
        if arm.from_selection is not None:
            pick = selected.get(selection_of(spec, arm).name)
            if pick is None:
                continue
            base += arms[pick].overrides
        overrides = [*base, *arm.overrides]
        if spec.curve.steps:  # every trained run keeps its snapshots, so any seed's curve can be evaluated
            overrides.insert(len(spec.shared), f"training.snapshot_steps=[{','.join(map(str, spec.curve.steps))}]")
        max_steps = load_config(None, overrides).training.max_steps
        for i, seed in enumerate(arm.seeds):
            dev, ood = (choice == "all" or (choice == "first" and i == 0) for choice in (arm.dev, arm.ood))
            curve = [s for s in spec.curve.steps if s < max_steps] if arm.curve and dev else []
            runs.append(Run(f"{arm.name}-s{seed}", arm.name, seed, [*overrides, *seed_overrides(seed)],
                            dev=dev, test=arm.test, ood=arm.test and ood and spec.eval.ood_limit > 0,
                            curve_steps=curve, selected=pick))
    runs = _pairs_seed_by_seed(runs, arms)
    feeds = {a for sel in spec.selection for a in [*sel.candidates, sel.baseline] if a}
    first = {r.arm: r.name for r in reversed(runs) if r.trained}
    return sorted(runs, key=lambda r: r.arm not in feeds or first[r.arm] != r.name)


def _pairs_seed_by_seed(runs: list[Run], arms: dict) -> list[Run]:
    """Each run of a test arm right after its twin's run of the same seed (twin-s0, arm-s0, twin-s1, ...):
    a study stopped half-way then holds complete pairs, not all of one arm's seeds and none of the other's."""
    index = {(r.arm, r.seed): i for i, r in enumerate(runs)}

    def lead(i: int) -> Optional[int]:
        arm = arms[runs[i].arm]
        twin = arms.get(arm.twin) if arm.twin else None
        return index.get((twin.name, runs[i].seed)) if twin is not None and arm.test and twin.test else None

    def place(i: int) -> tuple:
        first = lead(i)
        # A twin that itself follows its own twin (a chain: no_anchor -> grouped -> shuffled) leaves this run
        # in file order, so that the main pairs of every seed come before the runs compared with them.
        return (i, 0, i) if first is None or lead(first) is not None else (first, 1, i)

    return [runs[i] for i in sorted(range(len(runs)), key=place)]


def resolve_data(name: str) -> Path:
    """A study data entry: a bundled split name or a path."""
    return resource(BUILTIN_DATA[name]) if name in BUILTIN_DATA else Path(name)
