"""BCAT from a TRL script: TRL 1.x trainers that batch whole language groups and add bcat's alignment terms.

    from trl import DPOConfig
    from bcat.config import AlignmentConfig, BatchConfig
    from bcat.integrations.trl import BCATDPOTrainer

    trainer = BCATDPOTrainer(model=model, args=DPOConfig(...), train_dataset=pairs, processing_class=tokenizer,
                             batch=BatchConfig(mode="grouped", groups_per_batch=2),
                             alignment=AlignmentConfig(hidden_weight=3.0, output_weight=2.0))  # default: both 0
    trainer.train()

``pairs`` is the dataset the plain TRL trainer takes plus two columns: ``group`` (the records of one
item in different languages share it) and ``lang`` (every group needs the anchor, ``en`` by default).
Four trainers: :class:`BCATSFTTrainer`, :class:`BCATDPOTrainer`, :class:`BCATORPOTrainer`
(``trl.experimental.orpo``) and :class:`BCATTrainer` (plain ``transformers.Trainer`` on tokenized
causal-LM records with ``labels``). Against the trainer each one subclasses, three things change:

* **Batches.** Each training micro-batch is one of :class:`bcat.batching.sampler.GroupBatchSampler`,
  built by :func:`bcat.batching.plan.build_sampler` from the ``BatchConfig``: whole groups, anchor
  first (``mode="grouped"`` when no ``batch`` is given; the other modes of ``bcat train`` too, whose
  default is ``shuffled``); ``groups_per_batch`` sets the size and
  ``per_device_train_batch_size`` is not used. The sampler already deals each rank its own
  micro-batches, so the ``BatchSamplerShard`` that ``accelerator.prepare`` wraps around it is made a
  pass-through (as ``transformers.Trainer`` does for its own rank-aware ``BatchRebalanceSampler``):
  accelerate neither re-shards nor re-shuffles them. Settings that would split groups across ranks
  (``dispatch_batches``, ``split_batches``, another ``train_sampling_strategy``) are refused.
* **Columns.** ``group`` and ``lang`` survive ``remove_unused_columns``; TRL's collator sees each
  record without them and they are put back beside its tensors.
* **Loss.** TRL's loss, unchanged, plus (when their weights are set; both are 0 by default, see
  :class:`~bcat.config.AlignmentConfig`) ``w_h * hidden + w_o * output`` from
  :func:`bcat.training.objectives.alignment_terms` and :func:`~bcat.training.objectives.agreement_probabilities`
  (what ``bcat train`` uses), computed from TRL's own forward pass: hooks on the model's decoder ask it
  for ``hidden_states`` in that one call and pool them; the scores come from TRL's per-token
  log-probs (SFT, DPO, plain Trainer) or its ORPO average log-probs. No extra forward. The terms of
  the last micro-batch are in ``trainer.alignment_terms``; their means are logged as ``bcat/hidden``
  and ``bcat/output``. The hidden term's standardisation statistics are fitted when the trainer is
  built, as ``bcat train`` fits them (:func:`bcat.training.hidden.fit_sampled_standardization`: a
  seeded sample of ``alignment.hidden_stats_records`` records through the initial model, pooled as the
  term pools them), unless ``hidden_standardization=(mean, scale)`` is given.

Evaluation batches are the trainer's own (not grouped), so evaluation reports its plain loss.
Refused with the reason: ``alignment.token_kl_weight`` (TRL's fused head never builds the full
next-token distributions), SFT ``packing`` / ``padding_free`` (records would share a row), an
``IterableDataset`` (the plan needs every record's group up front).
"""

from __future__ import annotations

import contextlib
from collections import defaultdict, namedtuple
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import torch

try:
    from trl import DPOTrainer, SFTTrainer
    from trl.experimental.orpo import ORPOTrainer
except ImportError as e:  # TRL is an optional dependency of bcat
    raise ImportError(f"bcat.integrations.trl needs TRL 1.16: pip install 'bcat[trl]' ({e})") from e
import datasets
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback

from bcat.batching.collate import pool_mask
from bcat.batching.plan import build_sampler
from bcat.config import AlignmentConfig, BatchConfig, DataConfig, ObjectiveConfig, TrainConfig
from bcat.errors import ConfigError
from bcat.languages import ANCHOR
from bcat.model.forward import pooled_states, sequence_logps
from bcat.model.loading import middle_layer
from bcat.training import losses
from bcat.training.hidden import fit_sampled_standardization
from bcat.training.objectives import agreement_probabilities, alignment_terms

__all__ = ["BCATDPOTrainer", "BCATORPOTrainer", "BCATSFTTrainer", "BCATTrainer", "GroupAlignmentMixin"]

KEY_COLUMNS = ("group", "lang")
GROUPS, LANGS = "bcat_groups", "bcat_langs"
"""Batch keys that carry each record's group and language from the collator to the loss."""

_Keyed = namedtuple("_Keyed", "group lang length")  # what build_sampler reads from a record


class _EpochBatches:
    """This rank's ``len(sampler)`` micro-batches of the group stream per trainer epoch; the epoch is set
    from outside. On one rank a trainer epoch is an epoch of the data; on several, when the data's
    micro-batches are not a multiple of the world size, it takes the next epoch's first ones too, as
    ``bcat train`` does."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        first = self.epoch * len(self.sampler)
        for taken in range(first, first + len(self.sampler)):
            yield self.sampler.micro_batch(taken).records


class _EpochFromState(TrainerCallback):
    """Trainer sets the sampler's epoch itself, except when it resumes mid-epoch: it then wraps the
    batch sampler in a skipping one and cannot reach it. ``state.epoch`` is ``e + done/total`` there."""

    def __init__(self, batches: _EpochBatches):
        self.batches = batches

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.batches.set_epoch(int(state.epoch or 0))


@dataclass
class _GroupColumns:
    """The trainer's collator on records without ``group``/``lang``; those go beside its tensors as lists."""

    collator: Callable

    def __call__(self, features: list[dict]) -> dict:
        batch = self.collator([{k: v for k, v in f.items() if k not in KEY_COLUMNS} for f in features])
        batch[GROUPS] = [f["group"] for f in features]
        batch[LANGS] = [f["lang"] for f in features]
        return batch


def _lengths(dataset) -> list[int]:
    """Tokens per record as the trainer tokenized it (prompt and the longer answer of a pair)."""
    cols = dataset.column_names
    if "prompt_ids" in cols:  # DPOTrainer
        return [len(p) + max(len(c), len(r))
                for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"])]
    if "chosen_input_ids" in cols:  # ORPOTrainer
        return [max(len(c), len(r)) for c, r in zip(dataset["chosen_input_ids"], dataset["rejected_input_ids"])]
    return [len(ids) for ids in dataset["input_ids"]]


def _decoder(model):
    """The module that returns ``hidden_states`` (TRL's fused head calls it too)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    return base.get_decoder()


class GroupAlignmentMixin:
    """Group batches and bcat's alignment terms for a ``transformers.Trainer`` subclass (see the module docstring).

    Keyword arguments on top of the trainer's own: ``batch`` (:class:`~bcat.config.BatchConfig`),
    ``alignment`` (:class:`~bcat.config.AlignmentConfig`), ``anchor`` (the anchor language) and
    ``hidden_standardization`` (``(mean, scale)``, each ``[layers, D]``: the statistics the hidden term
    standardises with; by default fitted at construction as ``bcat train`` fits them, see
    :meth:`_initial_pooled_states`).
    """

    def __init__(self, *args, batch: BatchConfig | None = None, alignment: AlignmentConfig | None = None,
                 anchor: str = ANCHOR, hidden_standardization: tuple[torch.Tensor, torch.Tensor] | None = None,
                 **kwargs):
        self.bcat_config = TrainConfig(batch=batch or BatchConfig(mode="grouped"), alignment=alignment or AlignmentConfig(),
                                       data=DataConfig(anchor=anchor)).validate()
        if self.bcat_config.alignment.token_kl_weight > 0:
            raise ConfigError("alignment.token_kl_weight is not available with TRL trainers: their fused output head "
                              "never builds the full next-token distributions; set it to 0")
        self.hidden_standardization = hidden_standardization
        self._capture = None
        super().__init__(*args, **kwargs)
        self._check_bcat_args()
        data = self.train_dataset
        lengths = _lengths(data) if self.bcat_config.batch.order_by_length else [0] * len(data)
        records = [_Keyed(g, lang, n) for g, lang, n in zip(data["group"], data["lang"], lengths)]
        self.group_sampler = build_sampler(self.bcat_config, records, self.args.world_size, self.args.process_index)
        """This rank's :class:`~bcat.batching.sampler.GroupBatchSampler` (the plan of every epoch)."""
        self._batches = _EpochBatches(self.group_sampler)
        self.add_callback(_EpochFromState(self._batches))
        alignment = self.bcat_config.alignment
        self.hidden_layers = tuple(alignment.hidden_layers or [middle_layer(self.model.config)])
        # BOS is left out of the pooled states, as in bcat's collator (the model's id if no tokenizer was given).
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        self._bos = tokenizer.bos_token_id if tokenizer is not None else self.model.config.bos_token_id
        self.alignment_terms: dict[str, torch.Tensor] = {}
        """The unweighted alignment terms of the last training micro-batch (detached)."""
        self._logged: dict[str, list[float]] = defaultdict(list)
        if alignment.hidden_weight > 0 and hidden_standardization is None:
            # As in `bcat train`: on the model as given (a fresh LoRA adapter adds zero), before any update.
            stats = fit_sampled_standardization(
                self._initial_pooled_states, range(len(data)), self.hidden_layers, alignment.hidden_standardize,
                alignment.hidden_stats_records, self.args.seed, self.args.device)
            self.hidden_standardization = (stats.mean, stats.scale) if stats is not None else None

    # ------------------------------------------------------------------------------------- checks

    def _check_bcat_args(self) -> None:
        if not isinstance(self.train_dataset, datasets.Dataset):
            raise ConfigError("bcat's group batches need a map-style datasets.Dataset as train_dataset (not an "
                              "IterableDataset): the plan of an epoch needs every record's group up front")
        missing = [c for c in KEY_COLUMNS if c not in self.train_dataset.column_names]
        if missing:
            raise ConfigError(f"train_dataset has no {' or '.join(repr(c) for c in missing)} column: every record "
                              "needs its item's 'group' and its language 'lang'")
        accel = self.args.accelerator_config
        if accel.dispatch_batches or accel.split_batches:
            raise ConfigError("accelerator_config.dispatch_batches/split_batches would split bcat's group batches "
                              "across processes; leave both unset (each rank already gets its own whole groups)")
        if self.args.train_sampling_strategy != "random":
            raise ConfigError(f"train_sampling_strategy={self.args.train_sampling_strategy!r} is replaced by bcat's "
                              "group sampler; for batches of similar length use BatchConfig(order_by_length=True)")

    # ------------------------------------------------------------------------------------ batches

    def _train_columns(self):
        """The training dataset with the columns the trainer's collator takes, plus ``group`` and ``lang``."""
        data = self.train_dataset
        if self.args.remove_unused_columns:
            self._set_signature_columns_if_needed()
            keep = set(self._signature_columns) | set(KEY_COLUMNS)
            data = data.remove_columns([c for c in data.column_names if c not in keep])
        return data

    def get_train_dataloader(self) -> DataLoader:
        data = self._train_columns()
        workers = self.args.dataloader_num_workers
        loader = DataLoader(data, batch_sampler=self._batches, collate_fn=_GroupColumns(self.data_collator),
                            num_workers=workers, pin_memory=self.args.dataloader_pin_memory,
                            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
                            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None)
        prepared = self.accelerator.prepare(loader)
        shard = getattr(prepared, "batch_sampler", None)
        if shard is not self._batches:
            if not (isinstance(shard, BatchSamplerShard) and shard.batch_sampler is self._batches):
                raise RuntimeError(f"accelerate prepared the group batches as {type(shard).__name__}, which bcat does "
                                   "not know how to keep whole; use a plain DDP/FSDP/DeepSpeed launch")
            # The group sampler already dealt this rank its micro-batches: sharding again would drop 1 in W.
            shard.num_processes, shard.process_index = 1, 0
        return prepared

    # --------------------------------------------------------------------------------------- loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        groups, langs = inputs.pop(GROUPS, None), inputs.pop(LANGS, None)
        alignment = self.bcat_config.alignment
        hidden_on, output_on = alignment.hidden_weight > 0, alignment.output_weight > 0
        if groups is None or not self.model.training or not (hidden_on or output_on):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        with self._capturing(hidden_on) as seen:
            result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                          num_items_in_batch=num_items_in_batch)
        loss = result[0] if return_outputs else result
        n = len(groups)
        ids: dict[Any, int] = {}
        group = torch.tensor([ids.setdefault(g, len(ids)) for g in groups], device=loss.device)
        anchor = torch.tensor([lang == self.bcat_config.data.anchor for lang in langs], device=loss.device)
        pooled = pooled_states(seen.hidden, self.hidden_layers, seen.pool_mask, n) if hidden_on else None
        score = self._score(seen, inputs) if output_on else None
        extra, terms = alignment_terms(pooled, score, group, anchor, alignment, self._standardization(loss.device))
        if self._loss_scaled_for_ga(num_items_in_batch):
            # Trainer will not divide this loss by the accumulation steps, so the per-micro-batch terms are.
            extra = extra / self.current_gradient_accumulation_steps
        loss = loss + extra.to(loss.device)
        self.alignment_terms = {k: v.detach() for k, v in terms.items()}
        for k, v in self.alignment_terms.items():
            self._logged[k].append(self.accelerator.gather_for_metrics(v).mean().item())
        return (loss, result[1]) if return_outputs else loss

    def _loss_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Whether Trainer leaves this loss undivided by the accumulation steps (its own rule, ``training_step``)."""
        declared = getattr(self, "loss_is_scaled_for_ga", None)  # not an attribute of every transformers 5.x Trainer
        if declared is not None:
            return bool(declared)
        return bool((self.model_accepts_loss_kwargs and num_items_in_batch is not None)
                    or self.compute_loss_func is not None)

    @contextlib.contextmanager
    def _capturing(self, hidden: bool):
        """Record, during one loss computation, the decoder's hidden states of its FIRST call (the policy's:
        TRL runs the policy before any reference) and every output of the policy and reference models."""
        seen = SimpleNamespace(hidden=None, pool_mask=None, outputs=[], ref_outputs=[], orpo=None)
        handles = []
        if hidden:
            decoder = _decoder(self.accelerator.unwrap_model(self.model))

            def ask(module, args, kwargs):
                if seen.hidden is None:
                    return args, {**kwargs, "output_hidden_states": True}
                return None

            def keep(module, args, kwargs, output):
                if seen.hidden is None:
                    ids = kwargs.get("input_ids", args[0] if args else None)
                    mask = kwargs.get("attention_mask")
                    if ids is None or mask is None or mask.dim() != 2:
                        raise RuntimeError("bcat's hidden alignment needs input_ids and a 2D attention_mask in the "
                                           "decoder call (not inputs_embeds or a padding-free batch)")
                    seen.hidden, seen.pool_mask = output.hidden_states, pool_mask(ids, mask, self._bos)

            handles += [decoder.register_forward_pre_hook(ask, with_kwargs=True),
                        decoder.register_forward_hook(keep, with_kwargs=True)]
        handles.append(self.model.register_forward_hook(lambda m, a, out: seen.outputs.append(out)))
        ref_model = getattr(self, "ref_model", None)
        if ref_model is not None:
            handles.append(ref_model.register_forward_hook(lambda m, a, out: seen.ref_outputs.append(out)))
        self._capture = seen
        try:
            yield seen
        finally:
            self._capture = None
            for h in handles:
                h.remove()

    def _score(self, seen, inputs) -> torch.Tensor:
        """:func:`~bcat.training.objectives.agreement_probabilities` of the records [N] (SFT: per-token
        log-probs of the labels)."""
        out = seen.outputs[0]
        if getattr(out, "log_probs", None) is None:
            raise RuntimeError("bcat's output agreement needs TRL's per-token log-probs (fused head); a custom "
                               "compute_loss_func or label smoothing replaces them: set alignment.output_weight=0")
        summed, mean = sequence_logps(out.log_probs, out.label_mask)
        return agreement_probabilities(ObjectiveConfig(name="sft"), summed, mean)

    def _decoder_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` of the decoder call the trainer's loss makes on a collated
        batch, whose first rows are the records (the rows the hidden term pools)."""
        return batch["input_ids"], batch["attention_mask"]

    def _initial_pooled_states(self, rows, batch_size: int = 8) -> torch.Tensor:
        """``[len(layers), len(rows), D]`` fp32: the pooled states of training records ``rows`` as the
        hidden term pools them (the trainer's collator, the decoder's input, BOS left out), in eval mode
        without gradients: what :func:`~bcat.training.hidden.fit_sampled_standardization` fits on."""
        data, model = self._train_columns(), self.model
        decoder = _decoder(self.accelerator.unwrap_model(model))
        pooled = []
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), self.autocast_smart_context_manager():
                for start in range(0, len(rows), batch_size):
                    chunk = [data[i] for i in rows[start:start + batch_size]]
                    batch = self._prepare_inputs(self.data_collator(
                        [{k: v for k, v in f.items() if k not in KEY_COLUMNS} for f in chunk]))
                    ids, mask = self._decoder_inputs(batch)
                    hidden = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=True,
                                     use_cache=False).hidden_states
                    pooled.append(pooled_states(hidden, self.hidden_layers, pool_mask(ids, mask, self._bos),
                                                len(chunk)).float().cpu())
        finally:
            model.train(was_training)
        return torch.cat(pooled, dim=1)

    def _standardization(self, device):
        if self.hidden_standardization is None:
            return None
        return tuple(t.to(device) for t in self.hidden_standardization)

    # ------------------------------------------------------------------------------------ logging

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self._logged and "loss" in logs:
            logs.update({f"bcat/{k}": sum(v) / len(v) for k, v in self._logged.items()})
            self._logged.clear()
        super().log(logs, start_time)


class BCATSFTTrainer(GroupAlignmentMixin, SFTTrainer):
    """TRL's ``SFTTrainer`` with bcat's group batches and alignment terms (output score: per-token geometric-mean answer probability)."""

    def _check_bcat_args(self) -> None:
        if self.args.packing or self.args.padding_free:
            raise ConfigError("SFTConfig packing/padding_free put several records in one row; bcat needs one record "
                              "per row to pool its hidden states: set packing=False, padding_free=False")
        super()._check_bcat_args()


class BCATDPOTrainer(GroupAlignmentMixin, DPOTrainer):
    """TRL's ``DPOTrainer`` with bcat's group batches and alignment terms (output score: the implicit preference
    probability ``sigma(beta * ((pi_w - ref_w) - (pi_l - ref_l)))`` on summed completion log-probs)."""

    def _score(self, seen, inputs) -> torch.Tensor:
        mask = inputs["completion_mask"][:, 1:]
        width = mask.shape[1]  # prompt-learning PEFT prepends virtual tokens: keep the real positions, as TRL does
        summed, mean = sequence_logps(seen.outputs[0].log_probs[:, -width:], mask)
        if self.precompute_ref_logps:
            ref = torch.cat([inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]])
        else:  # a separate reference model, or (PEFT) the policy's second call with the adapter off
            out = seen.ref_outputs[0] if self.ref_model is not None else seen.outputs[1]
            ref = sequence_logps(out.log_probs[:, -width:], mask)[0]
        return agreement_probabilities(ObjectiveConfig(name="dpo", beta=self.beta), summed, mean,
                                       ref_summed=ref.to(summed.dtype))


class BCATORPOTrainer(GroupAlignmentMixin, ORPOTrainer):
    """``trl.experimental.orpo.ORPOTrainer`` with bcat's group batches and alignment terms (output score: the
    preference probability ``sigma(log-odds)`` of TRL's average completion log-probs)."""

    def _decoder_inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        both = self.concatenated_inputs(batch, is_encoder_decoder=self.is_encoder_decoder,
                                        padding_value=self.padding_value, device=self.accelerator.device)
        return both["concatenated_input_ids"], both["concatenated_attention_mask"]

    def odds_ratio_loss(self, policy_chosen_logps, policy_rejected_logps):
        if self._capture is not None and self._capture.orpo is None:
            self._capture.orpo = (policy_chosen_logps, policy_rejected_logps)
        return super().odds_ratio_loss(policy_chosen_logps, policy_rejected_logps)

    def _score(self, seen, inputs) -> torch.Tensor:
        chosen, rejected = (t.float() for t in seen.orpo)
        _, log_odds = losses.orpo_loss(chosen.new_zeros(()), chosen, rejected, 0.0)
        return agreement_probabilities(ObjectiveConfig(name="orpo"), None, torch.cat([chosen, rejected]),
                                       log_odds=log_odds)


class BCATTrainer(GroupAlignmentMixin, Trainer):
    """Plain ``transformers.Trainer`` for causal-LM records (``input_ids``, ``attention_mask``, ``labels`` with
    -100 where no loss is taken) with bcat's group batches and alignment terms; the loss is the model's own."""

    def _score(self, seen, inputs) -> torch.Tensor:
        labels = inputs["labels"][:, 1:]
        scored = labels != -100
        logits = seen.outputs[0].logits[:, :-1].float()
        token_logps = logits.log_softmax(-1).gather(-1, labels.clamp_min(0)[..., None]).squeeze(-1)
        summed, mean = sequence_logps(token_logps * scored, scored)
        return agreement_probabilities(ObjectiveConfig(name="sft"), summed, mean)
