"""``bcat train``: the training loop, visible in one place.

Why a plain Accelerate loop and not ``transformers.Trainer``: the method lives in the batch
composition. Trainer builds its own sampler and dataloader, drops unknown columns, and shards
batches across ranks itself; keeping whole groups together would mean overriding most of it. Here
the group sampler deals micro-batches to ranks directly, and ``accelerate`` still provides device
placement and DDP/FSDP2 through ``accelerate launch`` (:mod:`bcat.training.distributed`); bf16 mixed
precision is an autocast inside the forward (:class:`bcat.model.loading.Precision`).

Two halves: :func:`prepare_run` builds a :class:`Run` (every part the loop uses) and
:func:`run_training` runs it; :func:`train` is the two in a row. A benchmark or a test builds a part
itself (``prepare_run(cfg, model=..., examples=...)``) or replaces one on the :class:`Run` before
running it, without patching this module.

Order of work: validate config, data, aligned layers, output directory and what there is to resume
(:mod:`bcat.training.resume`; nothing is written before that), load the model, check its fast
forward paths, fit the hidden-state standardisation, optionally precompute DPO reference log-probs,
build the optimizer (that is :func:`prepare_run`); then restore the checkpoint if resuming, and per
optimizer step: collate the step's ``gradient_accumulation_steps`` micro-batches and
count their tokens / pairs / variants over all ranks (every term is normalised by the whole step,
:mod:`bcat.training.objectives`), then per micro-batch one forward -> loss terms -> backward; then
clip (a non-finite gradient norm stops the run), optimizer step, schedule, log, checkpoint.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from bcat.batching.collate import GroupCollator
from bcat.batching.plan import build_sampler
from bcat.config import AlignmentConfig, ObjectiveConfig, TrainConfig, to_yaml
from bcat.data.records import DataReport, load_records
from bcat.data.tokenization import Example, tokenize_records
from bcat.errors import ConfigError, TrainingError
from bcat.model.export import save_model
from bcat.model.forward import (
    PolicyForward,
    check_packed_forward,
    check_selective_head,
    describe_forward_path,
    forward_path,
)
from bcat.model.loading import (
    Precision,
    add_lora,
    base_model_dir,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_hidden_layers,
    resolve_model_dir,
    training_precision,
)
from bcat.model.trim import TrimmedVocab, special_id, trim_vocabulary
from bcat.output import lock_output
from bcat.training.checkpoint import load_checkpoint, save_checkpoint
from bcat.training.distributed import full_model_state, make_accelerator, parallelism, prepare
from bcat.training.hidden import fit_hidden_standardization
from bcat.training.objectives import (
    COUNT_KEYS,
    LossOutput,
    compute_loss,
    loss_counts,
    nonfinite_gradient_terms,
    reference_logps,
)
from bcat.training.outputs import check_apart, check_output_dir, required_free_bytes, truncate_log
from bcat.training.reference import reference_key, reference_table
from bcat.training.resume import Resume, ResumePoint, describe_changes, plan_resume, run_settings

log = logging.getLogger(__name__)

SNAPSHOTS = "snapshots"
"""Subdirectory of the output directory for ``training.snapshot_steps``."""


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _scheduler(cfg: TrainConfig, optimizer):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.training.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.training.warmup_steps,
                         num_training_steps=cfg.training.max_steps)


@dataclass(frozen=True)
class StepLoss:
    """One micro-batch's loss as configured: :func:`compute_loss` with the run's fixed parts bound, so
    the loop passes only what changes per call (the policy, possibly wrapped; the batch; the step's counts)."""

    objective: ObjectiveConfig
    """The training objective (SFT, DPO or ORPO) and its settings."""
    alignment: AlignmentConfig
    """The alignment terms' weights and settings."""
    hidden_layers: tuple[int, ...]
    """The aligned hidden layers, resolved for this model."""
    reference: Optional[Callable[[dict], torch.Tensor]] = None
    """DPO reference log-probs computed on the fly (``None``: precomputed in the batch, or not DPO)."""
    standardization: Optional[tuple[torch.Tensor, torch.Tensor]] = None
    """(mean, scale) of the hidden states, fitted on the initial model (``None``: not standardised)."""

    def __call__(self, policy: PolicyForward, batch: dict, counts: dict[str, int], probe: bool = False) -> LossOutput:
        return compute_loss(policy, batch, self.objective, self.alignment, self.hidden_layers, self.reference,
                            self.standardization, counts, probe=probe)


@dataclass
class Run:
    """A prepared run: every part the loop uses, built and checked by :func:`prepare_run`; a context
    manager that releases the output directory on exit (``with prepare_run(cfg) as run: run_training(run)``).

    A caller (a benchmark, a test) may replace a part between :func:`prepare_run` and
    :func:`run_training`, e.g. wrap ``sampler``, ``collator`` or ``loss``; the replacement must keep the
    part's interface, and what :func:`prepare_run` checked (data, resume) is not checked again."""

    cfg: TrainConfig
    """The run's configuration."""
    accelerator: Any
    """The ``accelerate.Accelerator`` (device, ranks, reductions)."""
    started: float
    """``time.time()`` when preparation began (the summary's wall time counts from there)."""
    out: Path
    """The output directory."""
    model_dir: Path
    """The model's resolved directory (weights are saved relative to its base)."""
    precision: Precision
    """Storage and compute dtypes."""
    hidden_layers: tuple[int, ...]
    """The aligned hidden layers, resolved for this model."""
    report: DataReport
    """What loading the records found (counts per language, dropped groups)."""
    tokenizer: Any
    """The tokenizer (saved with the model)."""
    examples: list[Example]
    """The tokenized records, in the vocabulary the model uses (trimmed ids after trimming)."""
    sampler: Any
    """This rank's stream of micro-batches (lists of example indices), resumable by its state dict."""
    collator: Callable[[list[Example]], dict]
    """Examples -> padded (or packed) batch tensors."""
    model: Any
    """The trained module (with LoRA adapters where configured)."""
    policy: Any
    """The model's forward, prepared by Accelerate (DDP/FSDP2 wrapped where distributed)."""
    vocab: Optional[TrimmedVocab]
    """The trimmed vocabulary (``None``: not trimmed)."""
    forward_path: dict
    """Which fast forward paths the model supports (recorded in the summary)."""
    stats: Any
    """The hidden-state standardisation fit (``None``: none)."""
    loss: Callable[..., LossOutput]
    """One micro-batch's loss (a :class:`StepLoss`)."""
    ref_table: Optional[torch.Tensor]
    """Precomputed DPO reference log-probs per example (``None``: not precomputed)."""
    optimizer: torch.optim.Optimizer
    """AdamW over the trainable parameters, prepared by Accelerate."""
    scheduler: Any
    """The learning-rate schedule."""
    probing: bool
    """Whether the gradient-ratio probe runs on this run."""
    trainable_parameters: int
    """Trainable parameters (before any sharding)."""
    settings: Optional[dict]
    """The run's settings as recorded in checkpoints (rank 0; ``None`` elsewhere)."""
    resume_from: Optional[ResumePoint]
    """The checkpoint to continue from (``None``: a fresh start)."""
    held: ExitStack
    """What the run holds until it is closed: the output directory's lock (:func:`bcat.output.lock_output`)."""

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc) -> None:
        self.held.close()


def train(cfg: TrainConfig, resume: Resume = False) -> dict:
    """Run training as configured; returns the training summary (also written to disk).

    ``resume``: ``False`` starts a run, ``True`` continues one from its newest checkpoint, ``"if-possible"``
    continues where there is a checkpoint and starts where there is no run (:mod:`bcat.training.resume`).
    The output directory is held for this run from its check to the end (:func:`bcat.output.lock_output`)."""
    with prepare_run(cfg, resume) as run:
        return run_training(run)


def prepare_run(cfg: TrainConfig, resume: Resume = False, *, model=None, tokenizer=None,
                examples: Optional[list[Example]] = None) -> Run:
    """Validate the config, data, layers, output directory and what there is to resume, then build the
    run's parts; writes nothing to the output directory.

    ``model``, ``tokenizer``, ``examples``: parts already built by the caller, used instead of loading
    them from ``cfg`` (``model``: the base model on the accelerator's device in the storage dtype, as
    :func:`load_model` returns it, still trimmed, given LoRA and checkpointing as configured;
    ``examples``: ``data.train``'s records tokenized, one per record in the same order).

    The run holds the output directory from its check on; close it (``with``) when done. Where
    preparing fails, the directory is released at once."""
    with ExitStack() as held:
        run = _prepare_run(cfg, resume, held, model, tokenizer, examples)
        run.held = held.pop_all()
        return run


def _prepare_run(cfg: TrainConfig, resume: Resume, held: ExitStack, model, tokenizer,
                 examples: Optional[list[Example]]) -> Run:
    started = time.time()
    tc = cfg.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = make_accelerator()
    is_main = accelerator.is_main_process
    out = Path(tc.output_dir)

    # -- 1. validate everything before spending compute or writing a byte -------------------------
    if not cfg.data.train:
        raise ConfigError("data.train is not set: give a JSONL/Parquet file of parallel records")
    precision = training_precision(cfg.model, accelerator.device)
    model_dir = resolve_model_dir(cfg.model.path)
    check_apart(out, [model_dir, base_model_dir(model_dir)])
    hidden_layers = resolve_hidden_layers(cfg.model.path, cfg.alignment.hidden_layers,
                                          trust_remote_code=cfg.model.trust_remote_code)
    records, report = load_records(cfg.data.train, cfg.objective.name, cfg.data.anchor, cfg.data.languages,
                                   cfg.data.drop_groups_without_anchor)
    if tokenizer is None:
        tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    if examples is None:
        examples = tokenize_records(records, tokenizer, cfg.data.max_length, cfg.data.prompt_truncation_side)
    elif len(examples) != len(records):
        raise ConfigError(f"{len(examples)} examples given for the {len(records)} records of {cfg.data.train}: "
                          "give one tokenized example per record, in order")
    sampler = build_sampler(cfg, examples, accelerator.num_processes, accelerator.process_index)
    settings = run_settings(cfg, examples) if is_main else None  # recorded in checkpoints (rank 0 writes them)
    resume_from = plan_resume(out, resume, cfg, settings, sampler, accelerator.num_processes)
    if is_main:  # the only process that writes
        check_output_dir(out, min_free_bytes=required_free_bytes(cfg))
        held.enter_context(lock_output(out, "training.output_dir"))
    if report.dropped_groups_without_anchor and is_main:
        log.info("bcat: dropped %d groups without the anchor language", report.dropped_groups_without_anchor)

    # -- 2. model -----------------------------------------------------------------------------------
    torch.manual_seed(tc.seed)
    if model is None:
        model = load_model(cfg.model, accelerator.device, dtype=precision.storage)
    vocab = None
    if cfg.model.trim_vocab:
        vocab, examples = trim_vocabulary(model, tokenizer, examples)
        if is_main:
            log.info("bcat: vocabulary trimmed to the %d token ids the data uses (of %d)", len(vocab),
                     vocab.old_vocab_size)
    if cfg.model.lora:
        model = add_lora(model, cfg.model)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.model.lora:
            model.enable_input_require_grads()
    model.train()
    policy = PolicyForward(model, precision.compute if precision.autocast else None)
    vocab_size = model.get_input_embeddings().num_embeddings
    check_selective_head(policy, vocab_size, accelerator.device)
    want_pack = tc.packed_preference and cfg.objective.name in ("dpo", "orpo")
    pack = want_pack and check_packed_forward(
        policy, vocab_size, accelerator.device, special_id(tokenizer.bos_token_id, vocab), hidden_layers)
    path = {"packed_requested": want_pack, **forward_path(policy, want_pack)}
    if is_main:
        log.info("bcat: forward path: %s", describe_forward_path(path))
    collator = GroupCollator(special_id(tokenizer.pad_token_id, vocab), cfg.data.anchor,
                             special_id(tokenizer.bos_token_id, vocab), pack=pack)
    standardization, stats = None, None
    if cfg.alignment.hidden_weight > 0:  # on the initial model, before a checkpoint is loaded (same on resume)
        stats = fit_hidden_standardization(policy, examples, collator, hidden_layers,
                                           cfg.alignment.hidden_standardize, cfg.alignment.hidden_stats_records,
                                           tc.seed)
        standardization = (stats.mean, stats.scale) if stats is not None else None
    trainable, total = count_parameters(model)
    if is_main:
        log.info("bcat: %d records, %d groups, %d languages; %s trainable of %s parameters; %d micro-batches per epoch "
                 "(batch.mode=%s)", report.records, report.groups, len(report.records_per_language), f"{trainable:,}",
                 f"{total:,}", sampler.micro_batches_per_epoch, cfg.batch.mode)

    # -- 3. DPO reference ---------------------------------------------------------------------------
    ref_table, reference = None, None
    if cfg.objective.name == "dpo":
        if cfg.objective.precompute_reference:
            key = reference_key(examples, tokenizer, model, model_dir, cfg.data.max_length,
                                cfg.data.prompt_truncation_side) if cfg.objective.cache_reference else None
            ref_table = reference_table(policy, examples, collator, key)
        elif cfg.model.lora:
            def reference(batch):  # the same weights with the adapter switched off: no second copy
                with model.disable_adapter():
                    return reference_logps(policy, batch)
        else:
            # frozen: stored in the compute dtype (no master weights to keep)
            frozen = PolicyForward(copy.deepcopy(model).to(precision.compute).eval().requires_grad_(False),
                                   policy.autocast_dtype)
            frozen.selective_head = policy.selective_head
            reference = lambda batch: reference_logps(frozen, batch)  # noqa: E731

    # -- 4. optimizer -------------------------------------------------------------------------------
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.learning_rate,
                                  weight_decay=tc.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    policy, optimizer = prepare(accelerator, policy, model, optimizer)
    # The gradient-ratio probe's extra autograd.grad through FSDP2-sharded modules perturbs the step
    # (resume stops being bitwise, tests/training/test_fsdp.py): probe only unsharded runs.
    probing = tc.grad_ratio_steps > 0 and parallelism(accelerator, model) != "fsdp2"
    if tc.grad_ratio_steps > 0 and not probing and is_main:
        log.warning("bcat: training.grad_ratio_steps is ignored under FSDP2 (the probe would perturb sharded steps)")
    return Run(cfg=cfg, accelerator=accelerator, started=started, out=out, model_dir=model_dir, precision=precision,
               hidden_layers=hidden_layers, report=report, tokenizer=tokenizer, examples=examples, sampler=sampler,
               collator=collator, model=model, policy=policy, vocab=vocab, forward_path=path, stats=stats,
               loss=StepLoss(cfg.objective, cfg.alignment, hidden_layers, reference, standardization),
               ref_table=ref_table, optimizer=optimizer, scheduler=scheduler, probing=probing,
               trainable_parameters=trainable, settings=settings, resume_from=resume_from, held=held)


def run_training(run: Run) -> dict:
    """Train a prepared run to ``training.max_steps`` (continuing from ``run.resume_from`` where set);
    writes the log, checkpoints, snapshots, the model and the summary, and returns the summary."""
    from accelerate.utils import gather_object

    cfg, tc, accelerator, out = run.cfg, run.cfg.training, run.accelerator, run.out
    model, policy, optimizer, scheduler, sampler = run.model, run.policy, run.optimizer, run.scheduler, run.sampler
    examples, collator, loss = run.examples, run.collator, run.loss
    is_main = accelerator.is_main_process

    # -- 1. resume ----------------------------------------------------------------------------------
    step, tokens, resumes = 0, 0, []
    if run.resume_from is not None:
        state = load_checkpoint(run.resume_from.path, model, optimizer, scheduler, accelerator.num_processes)
        step, tokens = state["step"], state["tokens"]
        sampler.load_state_dict(state["sampler"])
        resumes = [*state.get("resumes", []), {"step": step, "changed": run.resume_from.changes}]
        if is_main:
            log.info("bcat: resumed from %s (step %d)", run.resume_from.path, step)
            if run.resume_from.changes:
                log.info("bcat: changed since that checkpoint: %s", describe_changes(run.resume_from.changes))
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        truncate_log(out / "train_log.jsonl", step)
    accelerator.wait_for_everyone()

    # -- 2. the loop --------------------------------------------------------------------------------
    languages = sorted(run.report.records_per_language)
    lang_pos = {lang: i for i, lang in enumerate(languages)}
    ga = tc.gradient_accumulation_steps
    batches = iter(sampler)
    last_terms: dict[str, float] = {}
    progress = _progress(tc.max_steps, step, is_main)
    writer = _tensorboard(out) if is_main else None
    params = [p for p in model.parameters() if p.requires_grad]
    world = accelerator.num_processes
    probes = {"count": 0, "seconds": 0.0}
    while step < tc.max_steps:
        t_step = time.perf_counter()
        sums: dict[str, torch.Tensor] = {}
        lang_sum = torch.zeros(len(languages), device=accelerator.device)
        lang_count = torch.zeros(len(languages), device=accelerator.device)
        step_items: list[list[tuple[str, str]]] = []
        # The whole step's micro-batches first: every term is normalised by its count over the step
        # (all micro-batches, all ranks), so accumulation equals one batch of the same records.
        micro_batches = []
        for _ in range(ga):
            indices = next(batches)
            batch = _to(collator([examples[i] for i in indices]), accelerator.device)
            if run.ref_table is not None:
                ref = run.ref_table[batch["indices"].cpu()].to(accelerator.device)
                batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
            step_items.append([(examples[i].group, examples[i].lang) for i in indices])
            micro_batches.append(batch)
        local = torch.tensor([[loss_counts(b, cfg.objective)[k] for k in COUNT_KEYS] for b in micro_batches],
                             dtype=torch.float64, device=accelerator.device).sum(0)
        counts = dict(zip(COUNT_KEYS, (int(c) for c in accelerator.reduce(local, "sum").tolist())))
        probe = run.probing and (step == 0 or (step + 1) % tc.grad_ratio_steps == 0)
        ratios: dict[str, float | None] = {}
        for micro, batch in enumerate(micro_batches):
            sync = micro == ga - 1
            with nullcontext() if sync else accelerator.no_sync(policy):
                result = loss(policy, batch, counts, probe=probe and micro == 0)
                _check_finite(result.terms, step + 1, batch["langs"], accelerator)
                ratios = ratios or result.ratios
                # DDP averages gradients over ranks; the normalisation above already divides by the whole step.
                accelerator.backward(result.loss * world)
            for k, v in result.terms.items():
                sums[k] = sums.get(k, 0.0) + v
            for lang, value in zip(batch["langs"], result.per_example):
                lang_sum[lang_pos[lang]] += value
                lang_count[lang_pos[lang]] += 1
            tokens += int(accelerator.reduce(batch["attention_mask"].sum(), "sum"))
        grad_norm = accelerator.clip_grad_norm_(params, tc.max_grad_norm if tc.max_grad_norm > 0 else float("inf"))
        _check_finite_gradient(float(grad_norm), step + 1, micro_batches, accelerator, params,
                               lambda b: loss(accelerator.unwrap_model(policy), b, counts))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        terms = {k: float(accelerator.reduce(v, "sum")) for k, v in sums.items()}
        terms["grad_norm"] = float(grad_norm)
        if ratios:  # every rank probes its first micro-batch; rank 0's is logged (its time only in the summary)
            probes["count"], probes["seconds"] = probes["count"] + 1, probes["seconds"] + ratios.pop("grad_ratio_seconds")
            terms.update(ratios)
        lang_sum, lang_count = accelerator.reduce(lang_sum, "sum"), accelerator.reduce(lang_count, "sum")
        last_terms = terms
        items = gather_object([step_items]) if tc.log_batch_items else None  # every rank must take part
        if is_main and (step % tc.logging_steps == 0 or step == tc.max_steps or ratios):
            entry = {"step": step, "epoch": round(step * ga * world / sampler.micro_batches_per_epoch, 4), "lr": scheduler.get_last_lr()[0],
                     "tokens": tokens, "step_s": round(time.perf_counter() - t_step, 3), **terms,
                     "main_per_language": {lang: float(lang_sum[i] / lang_count[i])
                                           for i, lang in enumerate(languages) if lang_count[i] > 0}}
            if items is not None:
                entry["items_per_rank"] = items
            with open(out / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            if writer is not None:
                for k, v in terms.items():
                    if v is not None:  # a gradient ratio is None when the main gradient is zero
                        writer.add_scalar(f"train/{k}", v, step)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{terms['loss']:.4f}")
        if step in tc.snapshot_steps and step < tc.max_steps and is_main:
            save_model(model, run.tokenizer, out / SNAPSHOTS / f"step-{step:08d}", merged=False, vocab=run.vocab,
                       base_dir=run.model_dir)
        if tc.save_steps and step % tc.save_steps == 0 and step < tc.max_steps:
            save_checkpoint(out, step, model, optimizer, scheduler, {"tokens": tokens, "sampler": sampler.state_dict(),
                                                                     "run": run.settings, "resumes": resumes}, is_main)
            accelerator.wait_for_everyone()
    if progress is not None:
        progress.close()

    # -- 3. outputs ---------------------------------------------------------------------------------
    precision = run.precision
    summary = {
        "steps": step, "tokens": tokens, "wall_time_s": round(time.time() - run.started, 2),
        "final_terms": last_terms, "records": run.report.records, "groups": run.report.groups,
        "languages": languages, "trainable_parameters": run.trainable_parameters,
        "world_size": accelerator.num_processes, "parallelism": parallelism(accelerator, model),
        "prompt_tokens_trimmed": sum(e.prompt_trimmed for e in examples),
        "forward_path": run.forward_path, "hidden_layers": list(run.hidden_layers),
        "precision": {"compute": str(precision.compute).removeprefix("torch."),
                      "storage": str(precision.storage).removeprefix("torch."),
                      "attention": getattr(model.config, "_attn_implementation", None)},
        "hidden_standardization": run.stats.summary() if run.stats is not None else None,
        "grad_ratio_probes": {"count": probes["count"], "seconds": round(probes["seconds"], 3)},
        "resumes": resumes,
    }
    weights = full_model_state(model)  # every rank takes part: with FSDP each holds a shard
    if is_main:
        save_model(model, run.tokenizer, out, merged=tc.save_merged and cfg.model.lora, vocab=run.vocab,
                   base_dir=run.model_dir, state_dict=weights)
        tmp = out / "training_summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        tmp.replace(out / "training_summary.json")
        if writer is not None:
            writer.close()
    accelerator.wait_for_everyone()
    return summary


def _check_finite(terms: dict, step: int, langs: list[str], accelerator) -> None:
    bad = [k for k, v in terms.items() if not math.isfinite(float(v))]
    flag = accelerator.reduce(torch.tensor(float(bool(bad)), device=accelerator.device), "sum")
    if float(flag) > 0:
        which = ", ".join(bad) if bad else "a term on another rank"
        raise TrainingError(
            f"non-finite loss at step {step}: {which} (languages in the micro-batch: {sorted(set(langs))}); "
            "the last checkpoint is intact; lower training.learning_rate or check the data"
        )


def _check_finite_gradient(norm: float, step: int, micro_batches: list[dict], accelerator, params,
                           recompute) -> None:
    """A non-finite gradient norm stops the run before the optimizer step, naming the term(s) whose
    gradient is not finite (found by recomputing each micro-batch's terms one backward at a time) and
    the languages of those micro-batches; the last checkpoint stays as it was."""
    from accelerate.utils import gather_object

    if math.isfinite(norm):
        return
    found = []
    for batch in micro_batches:
        bad = nonfinite_gradient_terms(recompute(batch), params)
        if bad:
            found.append((bad, sorted(set(batch["langs"]))))
    found = gather_object(found) if accelerator.num_processes > 1 else found
    where = "; ".join(f"{', '.join(terms)} (languages in the micro-batch: {langs})" for terms, langs in found) \
        or "no single term (their sum overflowed)"
    raise TrainingError(
        f"non-finite gradient at step {step} (norm {norm}): {where}; the last checkpoint is intact; "
        "lower training.learning_rate or check the data"
    )


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="bcat train", unit="step")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))
