"""Typed configuration: one dataclass per stage of the data flow.

A run is described by :class:`TrainConfig`. It is read from YAML, then ``key=value`` overrides
from the command line are applied (``objective.beta=0.2``). Every field has a default and a
docstring; unknown keys are an error that names the closest valid key.

>>> cfg = load_config(None, ["objective.name=dpo", "batch.groups_per_batch=4"])
>>> cfg.objective.name, cfg.batch.groups_per_batch
('dpo', 4)
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException, ValidationError

from bcat.bundled import resource
from bcat.errors import ConfigError
from bcat.languages import ANCHOR


@dataclass
class ModelConfig:
    path: str = "builtin:gemma3-270m"
    """Local Hugging Face model directory, or ``builtin:gemma3-270m`` for the bundled model."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model. Off unless you trust the model's author."""
    dtype: str = "auto"
    """Compute dtype: ``auto`` (fp32 on CPU, bf16 on GPUs that support it), ``float32``, ``bfloat16`` or
    ``float16`` (evaluation only). Training in bf16 is mixed precision: the trained weights stay fp32,
    the matmuls run under ``torch.autocast``, a LoRA run's frozen base is stored in bf16
    (``bcat.model.loading.training_precision``)."""
    attn_implementation: str = "auto"
    """Attention kernel: ``auto`` (transformers' choice: ``sdpa`` where the model supports it), ``sdpa``,
    ``eager`` or ``flex_attention`` (the packed preference rows as a block mask that skips the masked
    tiles; compiled, for GPUs). Why not flash-attention: ``bcat.model.forward``'s module docstring."""
    lora: bool = True
    """Train a LoRA adapter (``True``) or all weights (``False``)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator (scale = alpha / r)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names that get adapters (the attention and MLP projections of Llama-like models)."""
    trim_vocab: bool = False
    """Opt-in speed knob: restrict the vocabulary to the ids the data uses. This CHANGES the objective:
    every softmax is renormalised over the kept ids, so the probability of the other ids is never
    pushed down and ORPO's ``log(1 - p)`` sees inflated probabilities. Off by default: the output
    head runs only at the scored positions, so the exact full vocabulary costs little more than the
    trimmed one (evidence: ``bench/results/trim-cost-gemma3-270m.json``)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory, about 30% more compute."""


@dataclass
class DataConfig:
    train: str = ""
    """Training records: a JSONL or Parquet file, or a directory saved with ``datasets``."""
    anchor: str = ANCHOR
    """Anchor language: every group is aligned toward its record in this language."""
    languages: Optional[list[str]] = None
    """Languages that take part in training (``None``: all found in the data)."""
    drop_groups_without_anchor: bool = False
    """Drop groups that lack the anchor language instead of refusing the file (the count is reported)."""
    max_length: int = 512
    """Maximum tokens of prompt + completion. Prompts are trimmed, completions never."""
    prompt_truncation_side: str = "left"
    """Which end of an over-long prompt to trim: ``left`` keeps the question at the end of RAG prompts."""


@dataclass
class BatchConfig:
    mode: str = "shuffled"
    """Which records share a micro-batch. ``shuffled``: records shuffled freely across groups, as a stock
    trainer does. ``grouped``: BCAT's batch composition, whole groups per micro-batch with the anchor
    first; the alignment terms need it. ``monolingual`` and ``no_anchor``: ablations (``bcat.batching.sampler``).

    ``shuffled`` by default because that is what the evidence supports: in our ORPO studies on the
    built-in model and data, ``grouped`` did not beat ``shuffled`` at one group per optimizer step
    and lost 5 points of non-English accuracy at 8 groups (32 records) per step, 3 training seeds
    per arm (``results/study/README.md``, ``results/study-8g/README.md``). Try ``grouped`` on your own model
    and data with the A/B of ``configs/study/template-ab.yaml``."""
    groups_per_batch: int = 2
    """Micro-batch size in groups: a micro-batch holds ``groups_per_batch x languages`` records (on
    average, in the modes that do not keep groups whole)."""
    languages_per_group: Optional[int] = None
    """Sample this many non-anchor languages per group each epoch (``None``: all). The anchor is always kept."""
    order_by_length: bool = False
    """Put groups of similar length in the same micro-batch (less padding). Groups are never split."""
    seed: int = 0
    """Seed of the batch order; the order is reshuffled every epoch from (seed, epoch)."""


@dataclass
class ObjectiveConfig:
    name: str = "orpo"
    """``sft``, ``dpo`` or ``orpo``."""
    beta: float = 0.1
    """DPO temperature on the implicit reward."""
    orpo_lambda: float = 0.1
    """ORPO weight of the odds-ratio term."""
    orpo_nll_on_prompt: bool = False
    """ORPO NLL over prompt + completion as TRL does (``True``), or completion only (LLaMA-Factory)."""
    precompute_reference: bool = True
    """DPO: compute reference log-probs once before training instead of a second forward every step."""
    cache_reference: bool = True
    """DPO: keep precomputed reference log-probs on disk (``$BCAT_CACHE/reference/``, default
    ``~/.cache/bcat``), keyed by data, tokenizer, length settings and weights; reused across runs and
    on resume (``bcat.training.reference``)."""


@dataclass
class AlignmentConfig:
    hidden_weight: float = 0.0
    """Weight of the hidden-state alignment term (0: off). Off by default: on the built-in model no weight
    tried beat batch composition alone on the dev split (evidence: ``results/study/selection.json``).
    ``training.grad_ratio_steps`` logs the term's gradient next to the main one, which is how to size
    a weight for another model (evidence: ``bench/results/grad-ratio-*.json``)."""
    hidden_loss: str = "infonce"
    """``cosine``, ``mse`` or ``infonce`` (in-batch negatives: the anchors of the other groups, so it needs
    ``batch.groups_per_batch >= 2``)."""
    hidden_layers: Optional[list[int]] = None
    """Indices into ``hidden_states`` (0 = embeddings, 1..L = transformer layers; checked against the model
    before any work). ``None``: the middle layer."""
    hidden_standardize: str = "standardize"
    """How pooled states are compared: ``standardize`` (minus the mean, over the standard deviation, per
    dimension), ``center`` (minus the mean) or ``none`` (raw; near-inert on models with massive activations).
    Statistics are fitted once on the initial model; see ``bcat.training.losses.hidden_alignment_loss``."""
    hidden_stats_records: int = 32
    """Training records (a seeded random sample) whose pooled states on the initial model give the
    standardisation statistics: one no-grad forward over them at start-up."""
    temperature: float = 0.1
    """InfoNCE temperature on cosine similarities."""
    detach_anchor: bool = True
    """Stop gradients through the anchor so English does not drift toward the translations."""
    output_weight: float = 0.0
    """Weight of the output-agreement term (0: off): each translation's probability is pulled up to its
    anchor's, never down (``bcat.training.losses.output_agreement_loss``). Off by default for the same reason
    as ``hidden_weight`` (evidence: ``results/study/selection.json``)."""
    token_kl_weight: float = 0.0
    """Weight of the token-level KL between variants whose completions are token-identical to the anchor's."""


@dataclass
class TrainingConfig:
    output_dir: str = "runs/bcat"
    """Where the model, logs and checkpoints go."""
    max_steps: int = 100
    """Optimizer steps (an epoch ends and the next begins as needed)."""
    learning_rate: float = 2e-4
    """Peak learning rate. DPO needs a smaller one, as ``--config builtin:dpo`` sets (evidence:
    ``results/study/README.md``, "DPO learning rate")."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_scheduler: str = "cosine"
    """``cosine``, ``linear`` or ``constant`` (after warm-up)."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step. Groups never straddle two micro-batches."""
    max_grad_norm: float = 1.0
    """Gradient clipping (0 turns it off)."""
    logging_steps: int = 1
    """Write ``train_log.jsonl`` every this many optimizer steps."""
    save_steps: int = 25
    """Checkpoint every this many optimizer steps, so that a killed run continues with ``bcat train
    --resume`` (0: only the final model, nothing to resume). 25 by default: a kill loses at most 25
    steps (a quarter of the default ``max_steps``), while a checkpoint holds only the trainable
    weights, their two AdamW moments and the RNG states, which is small with LoRA. With full
    fine-tuning a checkpoint is about 12 bytes per parameter (two are kept): raise it for large models."""
    snapshot_steps: list[int] = field(default_factory=list)
    """Also write the model as it is after each of these optimizer steps, under
    ``snapshots/step-NNNNNNNN/model`` (a LoRA adapter: a few MB), e.g. to evaluate a learning curve
    with ``bcat eval --model OUTPUT_DIR/snapshots/step-NNNNNNNN``. Steps at or after ``max_steps`` are
    ignored: the final model is ``model/``. With a constant learning rate (after warm-up) a snapshot
    is what a run of that many steps gives; with a decaying schedule it is not."""
    save_merged: bool = False
    """Also write LoRA-merged full weights under ``merged/``."""
    seed: int = 0
    """Seed of the model initialisation (LoRA) and dropout."""
    threads: Optional[int] = None
    """Torch CPU threads (``None``: torch's default)."""
    log_batch_items: bool = False
    """Also log which (group, lang) records every rank trained on at each step (for audits and tests)."""
    grad_ratio_steps: int = 10
    """Every this many optimizer steps (and at step 1), log in ``train_log.jsonl`` the ratio of each alignment
    term's gradient norm to the main loss's (``grad_ratio_hidden``, ``grad_ratio_output``; 0: never).
    Costs one extra backward through the layers above the aligned one, on one micro-batch."""
    packed_preference: bool = True
    """DPO/ORPO: run each pair as one sequence ``prompt | chosen | rejected`` so the prompt is computed
    once (exact: same log-probs and pooled states as the plain forward; checked once at start, with
    a fallback to the plain forward for models whose attention takes no custom 4D mask)."""


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def validate(self) -> "TrainConfig":
        """Check values that types alone cannot; raise :class:`ConfigError` naming the key."""
        checks = [
            ("objective.name", self.objective.name in OBJECTIVES, f"one of {OBJECTIVES}"),
            ("batch.mode", self.batch.mode in BATCH_MODES, f"one of {BATCH_MODES}"),
            ("model.attn_implementation", self.model.attn_implementation in ATTENTION_IMPLEMENTATIONS,
             f"one of {ATTENTION_IMPLEMENTATIONS}"),
            ("alignment.hidden_loss", self.alignment.hidden_loss in HIDDEN_LOSSES, f"one of {HIDDEN_LOSSES}"),
            ("alignment.hidden_standardize", self.alignment.hidden_standardize in HIDDEN_STANDARDIZATIONS,
             f"one of {HIDDEN_STANDARDIZATIONS}"),
            ("alignment.hidden_stats_records", self.alignment.hidden_stats_records >= 2, "at least 2"),
            ("training.lr_scheduler", self.training.lr_scheduler in SCHEDULERS, f"one of {SCHEDULERS}"),
            ("data.prompt_truncation_side", self.data.prompt_truncation_side in ("left", "right"), "left or right"),
            ("training.learning_rate", 0 < self.training.learning_rate < float("inf"), "a positive number"),
            ("training.max_steps", self.training.max_steps > 0, "a positive integer"),
            ("training.logging_steps", self.training.logging_steps > 0, "a positive integer"),
            ("training.save_steps", self.training.save_steps >= 0, "zero (off) or a positive integer"),
            ("training.snapshot_steps", all(s > 0 for s in self.training.snapshot_steps), "a list of positive integers"),
            ("training.warmup_steps", self.training.warmup_steps >= 0, "zero or a positive integer"),
            ("training.weight_decay", self.training.weight_decay >= 0, "zero or positive"),
            ("training.max_grad_norm", self.training.max_grad_norm >= 0, "zero (off) or positive"),
            ("training.threads", self.training.threads is None or self.training.threads > 0, "positive or null"),
            ("training.grad_ratio_steps", self.training.grad_ratio_steps >= 0, "zero (off) or a positive integer"),
            ("model.lora_dropout", 0 <= self.model.lora_dropout < 1, "in [0, 1)"),
            ("training.gradient_accumulation_steps", self.training.gradient_accumulation_steps > 0, "positive"),
            ("batch.groups_per_batch", self.batch.groups_per_batch > 0, "a positive integer"),
            ("batch.languages_per_group", self.batch.languages_per_group is None or self.batch.languages_per_group > 0,
             "positive or null"),
            ("data.max_length", self.data.max_length > 8, "greater than 8"),
            ("objective.beta", self.objective.beta > 0, "a positive number"),
            ("objective.orpo_lambda", self.objective.orpo_lambda >= 0, "zero or positive"),
            ("alignment.temperature", self.alignment.temperature > 0, "a positive number"),
            ("alignment.hidden_weight", self.alignment.hidden_weight >= 0, "zero or positive"),
            ("alignment.output_weight", self.alignment.output_weight >= 0, "zero or positive"),
            ("alignment.token_kl_weight", self.alignment.token_kl_weight >= 0, "zero or positive"),
            ("model.lora_r", self.model.lora_r > 0, "a positive integer"),
        ]
        for key, ok, expected in checks:
            if not ok:
                raise ConfigError(f"config key '{key}' must be {expected}, got {_get(self, key)!r}")
        a = self.alignment
        without_pairs = {"shuffled": "scatters each group's records across micro-batches",
                         "no_anchor": "removes the anchor records",
                         "monolingual": "puts one language in each micro-batch"}
        on = [f"alignment.{k}" for k in ALIGNMENT_WEIGHTS if getattr(a, k) > 0]
        if on and self.batch.mode in without_pairs:
            raise ConfigError(
                f"{', '.join(on)} > 0 needs batch.mode=grouped: the alignment terms pull each translation toward "
                f"its anchor in the same micro-batch, and batch.mode={self.batch.mode} "
                f"{without_pairs[self.batch.mode]}; "
                f"set batch.mode=grouped, or {', '.join(k + '=0' for k in on)}")
        if a.hidden_weight > 0 and a.hidden_loss == "infonce" and self.batch.groups_per_batch == 1:
            raise ConfigError(
                "alignment.hidden_loss=infonce with batch.groups_per_batch=1 is identically 0: its negatives are the "
                "anchors of the OTHER groups in the micro-batch, and there are none; set batch.groups_per_batch=2 "
                "or more, or alignment.hidden_loss=cosine, or alignment.hidden_weight=0")
        if a.hidden_layers is not None and (not a.hidden_layers or min(a.hidden_layers) < 0):
            raise ConfigError(f"config key 'alignment.hidden_layers' must list indices into hidden_states "
                              f"(0 = embeddings, 1..L = transformer layers), got {a.hidden_layers!r}")
        if a.hidden_weight > 0 and self.model.lora and 0 in (a.hidden_layers or ()):
            raise ConfigError("config key 'alignment.hidden_layers' holds 0, the embedding output: with model.lora=true "
                              "no trainable parameter produces it, so the hidden term would be a constant; use 1..L")
        return self


OBJECTIVES = ("sft", "dpo", "orpo")
BATCH_MODES = ("grouped", "shuffled", "monolingual", "no_anchor")
ATTENTION_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flex_attention")
ALIGNMENT_WEIGHTS = ("hidden_weight", "output_weight", "token_kl_weight")
HIDDEN_LOSSES = ("cosine", "mse", "infonce")
HIDDEN_STANDARDIZATIONS = ("standardize", "center", "none")
SCHEDULERS = ("cosine", "linear", "constant")


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def valid_keys(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """All dotted keys of a config class, e.g. ``objective.beta`` (a field the constructor does not take
    is not a key)."""
    keys = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        sub = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None  # type: ignore[arg-type]
        keys += valid_keys(sub, f"{prefix}{f.name}.") if sub else [prefix + f.name]
    return keys


_BATCH_SIZE = ("batch.groups_per_batch", "bcat sizes micro-batches in groups: one holds about groups_per_batch x "
               "languages records; `bcat plan` shows them")
_STEPS = ("training.max_steps", "bcat counts optimizer steps; `bcat plan` lists the steps of one epoch")
_LENGTH = ("data.max_length", "prompt + completion in tokens; prompts are trimmed, completions never")
TRAINER_NAMES: dict[str, tuple[str, str]] = {
    "lr": ("training.learning_rate", ""),
    "per_device_train_batch_size": _BATCH_SIZE,
    "train_batch_size": _BATCH_SIZE,
    "batch_size": _BATCH_SIZE,
    "num_train_epochs": _STEPS,
    "epochs": _STEPS,
    "warmup_ratio": ("training.warmup_steps", "a number of steps, not a fraction of them"),
    "lr_scheduler_type": ("training.lr_scheduler", ""),
    "max_seq_length": _LENGTH,
    "max_prompt_length": _LENGTH,
    "max_completion_length": _LENGTH,
    "model_name_or_path": ("model.path", ""),
    "r": ("model.lora_r", ""),
    "target_modules": ("model.lora_target_modules", ""),
    "bf16": ("model.dtype", "model.dtype=bfloat16"),
    "fp16": ("model.dtype", "model.dtype=float16"),
    "loss_type": ("objective.name", "sft, dpo or orpo"),
    "dataset": ("data.train", "a JSONL or Parquet file, or a datasets directory"),
    "train_file": ("data.train", ""),
    "beta": ("objective.beta", "DPO's beta; TRL's ORPO calls its lambda beta: that is objective.orpo_lambda"),
}
"""The usual Hugging Face / TRL trainer argument names whose bcat key has another name (or meaning)."""


def suggest_key(key: str, keys: Optional[list[str]] = None) -> list[str]:
    """What an unknown key probably meant among ``keys`` (default: :class:`TrainConfig`'s, whose usual
    trainer names are known too, :data:`TRAINER_NAMES`): the keys whose last part is the same
    (``lr`` -> ``training.learning_rate``, ``training.beta`` -> ``objective.beta``), else the closest
    spelling. Each entry is ``'key'`` with an optional note.

    >>> suggest_key("training.lr"), suggest_key("seed"), suggest_key("objective.bta")
    (["'training.learning_rate'"], ["'batch.seed'", "'training.seed'"], ["'objective.beta'"])
    >>> suggest_key("arms[1].nmae", ["arms[1].name", "arms[1].seeds"])
    ["'arms[1].name'"]
    """
    leaf = key.rsplit(".", 1)[-1].lower().replace("-", "_")
    if keys is None:
        if leaf in TRAINER_NAMES:
            target, note = TRAINER_NAMES[leaf]
            return [f"'{target}'" + (f" ({note})" if note else "")]
        keys = valid_keys()
    same_leaf = sorted(k for k in keys if k.rsplit(".", 1)[-1] == leaf)
    if same_leaf:
        return [f"'{k}'" for k in same_leaf]
    return [f"'{k}'" for k in difflib.get_close_matches(key, keys, n=1, cutoff=0.5)]


def _unknown_key_error(key: str, source: str, keys: Optional[list[str]] = None) -> ConfigError:
    close = suggest_key(key, keys)
    hint = f"; did you mean {' or '.join(close)}?" if close else ""
    return ConfigError(f"{source}: unknown config key '{key}'{hint}")


def _flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and f"{prefix}{k}." in {key[: len(prefix) + len(k) + 1] for key in valid_keys()}:
            out += _flatten(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


class StrictYamlLoader(yaml.SafeLoader):
    """``yaml.safe_load`` (no Python tags) that also refuses, at the node's line:

    - aliases (``*name``): a few hundred bytes of nested aliases expand to gigabytes;
    - a key given twice in one mapping, which YAML would resolve silently to the last value;
    - ``${...}``: OmegaConf would resolve it as an interpolation (``${oc.env:VAR}`` reads the
      environment into the config), so a config means what it says, nothing more;
    - ``???``: OmegaConf would read it as "no value yet" instead of the text.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigRefused(f"alias *{event.anchor}: aliases are not accepted in bcat config files "
                                "(write the value out)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in first:
                    raise ConfigRefused(f"duplicate key {key!r} (first given on line {first[key]})",
                                        key_node.start_mark)
                first[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)

    def construct_yaml_str(self, node):
        value = super().construct_yaml_str(node)
        if value == "???":
            raise ConfigRefused("'???' is OmegaConf's mark of a missing value: give the value itself", node.start_mark)
        if "${" in value:
            raise ConfigRefused(f"{value!r}: ${{...}} interpolation is not accepted in bcat configs "
                                "(it would be resolved, e.g. from the environment); write the value itself",
                                node.start_mark)
        return value


StrictYamlLoader.add_constructor("tag:yaml.org,2002:str", StrictYamlLoader.construct_yaml_str)


class ConfigRefused(yaml.MarkedYAMLError):
    """Valid YAML that :class:`StrictYamlLoader` does not accept."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


def read_yaml(path: str | Path) -> Any:
    """A YAML file through :class:`StrictYamlLoader`; every problem is a :class:`ConfigError` naming
    the file (and the line, where there is one)."""
    try:
        return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=StrictYamlLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(e, str(path))) from None


def _yaml_problem(e: yaml.YAMLError, source: str) -> str:
    mark = getattr(e, "problem_mark", None)
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    if isinstance(e, ConfigRefused):
        return f"{where}: {e.problem}"
    # a tag such as !!python/object ends here: safe loading refuses it and never runs it
    what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
    return f"{where}: not valid YAML: {what}"


def _override_layer(item: str) -> dict:
    """``key=value`` as a config layer (a nested mapping); the value is read as YAML (``[a,b]``, ``1e-4``,
    ``null``) by :class:`StrictYamlLoader`, as OmegaConf's dotlist would with its own loader."""
    key, text = (part.strip() for part in item.split("=", 1))
    try:
        value = yaml.load(text, Loader=StrictYamlLoader)
    except yaml.YAMLError as e:
        problem = e.problem if isinstance(e, ConfigRefused) else f"not valid YAML: {getattr(e, 'problem', e)}"
        raise ConfigError(f"override '{item}': {problem}") from None
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


BUILTIN_CONFIGS = ("dpo", "orpo", "sft")
"""Example configs shipped in ``bcat/resources/configs/``, named ``builtin:NAME`` (``--config builtin:dpo``)."""


CONFIG_HELP = ("a YAML config file, or an example shipped with bcat: "
               + ", ".join(f"builtin:{n}" for n in BUILTIN_CONFIGS) + " (bcat/resources/configs/)")


def config_file(path: str | Path) -> Path:
    """The file behind ``--config``: a path, or ``builtin:NAME`` for an example config shipped with bcat."""
    text = str(path)
    if text.startswith("builtin:"):
        name = text.removeprefix("builtin:")
        if name not in BUILTIN_CONFIGS:
            raise ConfigError(f"--config {text}: no such built-in config; there are "
                              + ", ".join(f"builtin:{n}" for n in BUILTIN_CONFIGS))
        return resource(f"configs/{name}.yaml")
    file = Path(path)
    if not file.exists() and text in BUILTIN_CONFIGS:
        raise ConfigError(f"config file not found: {text} (the example config shipped with bcat is builtin:{text})")
    return file


T = TypeVar("T")


def build(cls: type[T], layers: list[tuple[str, Any]]) -> T:
    """A ``cls`` (a dataclass whose fields all have defaults) from its defaults and each ``(source, mapping)``
    layer on top, type-checked by OmegaConf (``OmegaConf.structured``, then ``OmegaConf.to_object``).

    This is the one place where OmegaConf's errors become :class:`ConfigError`: each names the layer's
    source and the dotted key (``arms[1].seeds[0]``), an unknown key with the closest valid one."""
    merged = OmegaConf.structured(cls)
    for source, layer in layers:
        if not isinstance(layer, dict):
            raise ConfigError(f"{source}: the top level must be a mapping")
        try:
            _merge_into(merged, layer, source)
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None) or "?"
            if getattr(e, "value", ...) is None:
                raise ConfigError(f"{source}: config key '{key}' may not be empty") from None
            reason = str(e.msg).splitlines()[0]
            raise ConfigError(f"{source}: config key '{key}' has the wrong type: {reason}") from None
    return OmegaConf.to_object(merged)  # type: ignore[return-value]


def _merge_into(node: Any, raw: dict, source: str, prefix: str = "") -> None:
    """Put a YAML mapping into a structured node, in place. A mapping given for a section is merged key
    by key; any other value replaces the default whole, as it is written (``timing.step_s`` lists only
    the modes it times), which OmegaConf does for a dict-typed field only on assignment. The items of a
    list of sections are merged where they stand, because OmegaConf checks the items of a list it
    merges before they have a place in it, so that its errors could not name their index."""
    schema = OmegaConf.get_type(node)
    hints = typing.get_type_hints(schema)
    keys = {f.name for f in dataclasses.fields(schema) if f.init}
    for key, value in raw.items():
        if key not in keys:
            raise _unknown_key_error(f"{prefix}{key}", source, valid_keys(schema, prefix))
        hint = hints[key]
        listed = [typing.get_args(t)[0] for t in (hint, *typing.get_args(hint)) if typing.get_origin(t) is list]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            _merge_into(node[key], value, source, f"{prefix}{key}.")
        elif listed and dataclasses.is_dataclass(listed[0]) and isinstance(value, list):
            node[key] = [listed[0]() for _ in value]
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    _merge_into(node[key][i], item, source, f"{prefix}{key}[{i}].")
                else:
                    node[key][i] = item  # refused by OmegaConf, naming the index
        else:
            try:
                OmegaConf.update(node, key, value, merge=False)
            except ValidationError:
                if listed and isinstance(value, list):  # a nested list or a mapping among the items
                    raise ConfigError(f"{source}: config key '{prefix}{key}' must be a list of "
                                      f"{listed[0].__name__}, got {value!r}") from None
                raise


def load_config(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults <- YAML file (a path or ``builtin:NAME``) <- ``key=value`` overrides, type-checked and
    validated. Files and override values are read by :class:`StrictYamlLoader`."""
    layers = []
    if path is not None:
        file = config_file(path)
        raw = read_yaml(file) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        for key in _flatten(raw):
            if key not in valid_keys():
                if any(k.startswith(key + ".") for k in valid_keys()):
                    raise ConfigError(f"{path}: config key '{key}' is a section: give it a mapping of keys")
                raise _unknown_key_error(key, str(path))
        layers.append((str(path), raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key = item.split("=", 1)[0].strip()
        if key not in valid_keys():
            raise _unknown_key_error(key, "command line")
        layers.append((f"override '{item}'", _override_layer(item)))
    return build(TrainConfig, layers).validate()


def to_yaml(cfg: TrainConfig) -> str:
    """The resolved config as YAML, as written next to every trained model."""
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False, allow_unicode=True)
