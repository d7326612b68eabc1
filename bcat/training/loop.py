"""``bcat train``: the training loop, visible in one place.

Why a plain Accelerate loop and not ``transformers.Trainer``: the method lives in the batch
composition. Trainer builds its own sampler and dataloader, drops unknown columns, and shards
batches across ranks itself; keeping whole groups together would mean overriding most of it. Here
the group sampler deals micro-batches to ranks directly, and ``accelerate`` still provides device
placement and DDP/FSDP2 through ``accelerate launch`` (:mod:`bcat.training.distributed`); bf16 mixed
precision is an autocast inside the forward (:class:`bcat.model.loading.Precision`).

Order of work: validate config, data, aligned layers, output directory and what there is to resume
(:mod:`bcat.training.resume`; nothing is written before that), load the model, check its fast
forward paths, fit the hidden-state standardisation, optionally precompute DPO reference log-probs,
then per optimizer step: collate the step's ``gradient_accumulation_steps`` micro-batches and
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
from pathlib import Path

import torch

from bcat.batching.collate import GroupCollator
from bcat.batching.plan import build_sampler
from bcat.config import TrainConfig, to_yaml
from bcat.data.records import load_records
from bcat.data.tokenization import tokenize_records
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
    add_lora,
    base_model_dir,
    count_parameters,
    load_model,
    load_tokenizer,
    resolve_hidden_layers,
    resolve_model_dir,
    training_precision,
)
from bcat.model.trim import special_id, trim_vocabulary
from bcat.output import lock_output
from bcat.training.checkpoint import load_checkpoint, save_checkpoint
from bcat.training.distributed import full_model_state, make_accelerator, parallelism, prepare
from bcat.training.hidden import fit_hidden_standardization
from bcat.training.objectives import COUNT_KEYS, compute_loss, loss_counts, nonfinite_gradient_terms, reference_logps
from bcat.training.outputs import check_apart, check_output_dir, required_free_bytes, truncate_log
from bcat.training.reference import reference_key, reference_table
from bcat.training.resume import Resume, describe_changes, plan_resume, run_settings

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


def train(cfg: TrainConfig, resume: Resume = False) -> dict:
    """Run training as configured; returns the training summary (also written to disk).

    ``resume``: ``False`` starts a run, ``True`` continues one from its newest checkpoint, ``"if-possible"``
    continues where there is a checkpoint and starts where there is no run (:mod:`bcat.training.resume`).
    The output directory is held for this run from its check to the end (:func:`bcat.output.lock_output`)."""
    with ExitStack() as held:
        return _train(cfg, resume, held)


def _train(cfg: TrainConfig, resume: Resume, held: ExitStack) -> dict:
    from accelerate.utils import gather_object

    t_start = time.time()
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
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    examples = tokenize_records(records, tokenizer, cfg.data.max_length, cfg.data.prompt_truncation_side)
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
        log.info("bcat: %d records, %d groups, %d languages; %s trainable of %s parameters; %d micro-batches per epoch",
                 report.records, report.groups, len(report.records_per_language), f"{trainable:,}", f"{total:,}",
                 sampler.micro_batches_per_epoch)

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

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.learning_rate,
                                  weight_decay=tc.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    policy, optimizer = prepare(accelerator, policy, model, optimizer)
    # The gradient-ratio probe's extra autograd.grad through FSDP2-sharded modules perturbs the step
    # (resume stops being bitwise, tests/training/test_fsdp.py): probe only unsharded runs.
    probing = tc.grad_ratio_steps > 0 and parallelism(accelerator, model) != "fsdp2"
    if tc.grad_ratio_steps > 0 and not probing and is_main:
        log.warning("bcat: training.grad_ratio_steps is ignored under FSDP2 (the probe would perturb sharded steps)")

    # -- 4. resume ----------------------------------------------------------------------------------
    step, tokens, resumes = 0, 0, []
    if resume_from is not None:
        state = load_checkpoint(resume_from.path, model, optimizer, scheduler, accelerator.num_processes)
        step, tokens = state["step"], state["tokens"]
        sampler.load_state_dict(state["sampler"])
        resumes = [*state.get("resumes", []), {"step": step, "changed": resume_from.changes}]
        if is_main:
            log.info("bcat: resumed from %s (step %d)", resume_from.path, step)
            if resume_from.changes:
                log.info("bcat: changed since that checkpoint: %s", describe_changes(resume_from.changes))
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        truncate_log(out / "train_log.jsonl", step)
    accelerator.wait_for_everyone()

    # -- 5. the loop --------------------------------------------------------------------------------
    languages = sorted(report.records_per_language)
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
            if ref_table is not None:
                ref = ref_table[batch["indices"].cpu()].to(accelerator.device)
                batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
            step_items.append([(examples[i].group, examples[i].lang) for i in indices])
            micro_batches.append(batch)
        local = torch.tensor([[loss_counts(b, cfg.objective)[k] for k in COUNT_KEYS] for b in micro_batches],
                             dtype=torch.float64, device=accelerator.device).sum(0)
        counts = dict(zip(COUNT_KEYS, (int(c) for c in accelerator.reduce(local, "sum").tolist())))
        probe = probing and (step == 0 or (step + 1) % tc.grad_ratio_steps == 0)
        ratios: dict[str, float | None] = {}
        for micro, batch in enumerate(micro_batches):
            sync = micro == ga - 1
            with nullcontext() if sync else accelerator.no_sync(policy):
                result = compute_loss(policy, batch, cfg.objective, cfg.alignment, hidden_layers, reference,
                                      standardization, counts, probe=probe and micro == 0)
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
                               lambda b: compute_loss(accelerator.unwrap_model(policy), b, cfg.objective,
                                                      cfg.alignment, hidden_layers, reference, standardization,
                                                      counts))
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
            save_model(model, tokenizer, out / SNAPSHOTS / f"step-{step:08d}", merged=False, vocab=vocab,
                       base_dir=model_dir)
        if tc.save_steps and step % tc.save_steps == 0 and step < tc.max_steps:
            save_checkpoint(out, step, model, optimizer, scheduler, {"tokens": tokens, "sampler": sampler.state_dict(),
                                                                     "run": settings, "resumes": resumes}, is_main)
            accelerator.wait_for_everyone()
    if progress is not None:
        progress.close()

    # -- 6. outputs ---------------------------------------------------------------------------------
    summary = {
        "steps": step, "tokens": tokens, "wall_time_s": round(time.time() - t_start, 2),
        "final_terms": last_terms, "records": report.records, "groups": report.groups,
        "languages": languages, "trainable_parameters": trainable, "world_size": accelerator.num_processes,
        "parallelism": parallelism(accelerator, model),
        "prompt_tokens_trimmed": sum(e.prompt_trimmed for e in examples),
        "forward_path": path, "hidden_layers": list(hidden_layers),
        "precision": {"compute": str(precision.compute).removeprefix("torch."),
                      "storage": str(precision.storage).removeprefix("torch."),
                      "attention": getattr(model.config, "_attn_implementation", None)},
        "hidden_standardization": stats.summary() if stats is not None else None,
        "grad_ratio_probes": {"count": probes["count"], "seconds": round(probes["seconds"], 3)},
        "resumes": resumes,
    }
    weights = full_model_state(model)  # every rank takes part: with FSDP each holds a shard
    if is_main:
        save_model(model, tokenizer, out, merged=tc.save_merged and cfg.model.lora, vocab=vocab,
                   base_dir=model_dir, state_dict=weights)
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
