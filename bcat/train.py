"""``bcat train``: the training loop, visible in one place.

Why a plain Accelerate loop and not ``transformers.Trainer``: the method lives in the batch
composition. Trainer builds its own sampler and dataloader, drops unknown columns, and shards
batches across ranks itself; keeping whole groups together would mean overriding most of it. Here
the group sampler deals micro-batches to ranks directly, and ``accelerate`` still provides device
placement, DDP/FSDP/DeepSpeed through ``accelerate launch``, and mixed precision.

Order of work: validate config, data and output directory (nothing is written before that), load
the model, optionally precompute DPO reference log-probs, then loop:
micro-batch -> collate -> one forward -> loss terms -> backward; every
``gradient_accumulation_steps`` micro-batches: clip, optimizer step, schedule, log, checkpoint.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bcat.checkpoint import CHECKPOINTS_KEPT, latest_checkpoint, load_checkpoint, save_checkpoint
from bcat.collate import GroupCollator
from bcat.config import TrainConfig, load_config, to_yaml
from bcat.data import load_records
from bcat.errors import ConfigError, TrainingError
from bcat.forward import PolicyForward, check_packed_forward, check_selective_head
from bcat.model import (TRAINED_MODEL_SUBDIR, add_lora, count_parameters, load_model, load_tokenizer,
                        resolve_model_dir, stored_parameters)
from bcat.objectives import compute_loss, middle_layer, reference_logps
from bcat.reference import precompute_reference, reference_key, reference_table  # noqa: F401 (moved there)
from bcat.sampler import GroupBatchSampler
from bcat.tokenization import Example, tokenize_records

log = logging.getLogger(__name__)


def build_sampler(cfg: TrainConfig, examples, world_size: int = 1, rank: int = 0) -> GroupBatchSampler:
    n_groups = len({e.group for e in examples})
    if cfg.batch.groups_per_batch > n_groups:
        raise ConfigError(f"config key 'batch.groups_per_batch' is {cfg.batch.groups_per_batch} but the data has only "
                          f"{n_groups} group(s); use at most {n_groups}")
    try:
        return GroupBatchSampler(
            [(e.group, e.lang) for e in examples], cfg.batch.groups_per_batch, mode=cfg.batch.mode,
            anchor=cfg.data.anchor, languages_per_group=cfg.batch.languages_per_group,
            lengths=[e.length for e in examples], order_by_length=cfg.batch.order_by_length,
            seed=cfg.batch.seed, world_size=world_size, rank=rank,
        )
    except ValueError as e:
        raise ConfigError(f"batch: {e}") from None


def required_free_bytes(cfg: TrainConfig) -> int:
    """Disk the run may need: parameters x 4 bytes x (2 + checkpoints kept), at least 200 MiB."""
    kept = CHECKPOINTS_KEPT if cfg.training.save_steps else 0
    return max(200 * 2**20, stored_parameters(cfg.model.path) * 4 * (2 + kept))


def check_output_dir(out: Path, resume: bool, min_free_bytes: int) -> None:
    """Refuse before any work: an unwritable directory, too little disk, or a finished run in the way."""
    if out.exists() and (out / "training_summary.json").exists() and not resume:
        raise ConfigError(f"training.output_dir {out} already holds a finished run; choose another directory")
    parent = out if out.exists() else out.parent
    while not parent.exists():
        parent = parent.parent
    probe = parent / f".bcat-write-test-{time.time_ns()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"training.output_dir {out} is not writable ({e.strerror})") from None
    free = shutil.disk_usage(parent).free
    if free < min_free_bytes:
        raise ConfigError(
            f"training.output_dir {out}: {free / 2**30:.1f} GiB free, the run needs about {min_free_bytes / 2**30:.1f} GiB"
        )


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _scheduler(cfg: TrainConfig, optimizer):
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.training.lr_scheduler]
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.training.warmup_steps,
                         num_training_steps=cfg.training.max_steps)


def train(cfg: TrainConfig, resume: bool = False) -> dict:
    """Run training as configured; returns the training summary (also written to disk)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    t_start = time.time()
    tc = cfg.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    is_main = accelerator.is_main_process
    out = Path(tc.output_dir)

    # -- 1. validate everything before spending compute or writing a byte -------------------------
    if not cfg.data.train:
        raise ConfigError("data.train is not set: give a JSONL/Parquet file of parallel records")
    records, report = load_records(cfg.data.train, cfg.objective.name, cfg.data.anchor, cfg.data.languages,
                                   cfg.data.drop_groups_without_anchor)
    tokenizer = load_tokenizer(cfg.model.path, cfg.model.trust_remote_code)
    examples = tokenize_records(records, tokenizer, cfg.data.max_length, cfg.data.prompt_truncation_side)
    sampler = build_sampler(cfg, examples, accelerator.num_processes, accelerator.process_index)
    if is_main:  # the only process that writes
        check_output_dir(out, resume, min_free_bytes=required_free_bytes(cfg))
    if is_main and cfg.alignment.hidden_weight > 0 and cfg.alignment.hidden_loss == "infonce" \
            and cfg.batch.groups_per_batch == 1:
        log.warning("bcat: alignment.hidden_loss=infonce with batch.groups_per_batch=1 has no negatives and is "
                    "always 0; use 2+ groups per micro-batch or alignment.hidden_loss=cosine")
    if report.dropped_groups_without_anchor and is_main:
        log.info("bcat: dropped %d groups without the anchor language", report.dropped_groups_without_anchor)

    # -- 2. model -----------------------------------------------------------------------------------
    torch.manual_seed(tc.seed)
    model = load_model(cfg.model, accelerator.device)
    vocab = None
    if trim_enabled(cfg):
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
    policy = PolicyForward(model)
    vocab_size = model.get_input_embeddings().num_embeddings
    check_selective_head(policy, vocab_size, accelerator.device)
    hidden_layers = tuple(cfg.alignment.hidden_layers or [middle_layer(model.config)])
    pack = tc.packed_preference and cfg.objective.name in ("dpo", "orpo") and check_packed_forward(
        policy, vocab_size, accelerator.device, special_id(tokenizer.bos_token_id, vocab), hidden_layers)
    collator = GroupCollator(special_id(tokenizer.pad_token_id, vocab), cfg.data.anchor,
                             special_id(tokenizer.bos_token_id, vocab), pack=pack)
    trainable, total = count_parameters(model)
    if is_main:
        log.info("bcat: %d records, %d groups, %d languages; %s trainable of %s parameters; %d micro-batches per epoch per rank",
                 report.records, report.groups, len(report.records_per_language), f"{trainable:,}", f"{total:,}", len(sampler))

    # -- 3. DPO reference ---------------------------------------------------------------------------
    ref_table, reference = None, None
    if cfg.objective.name == "dpo":
        if cfg.objective.precompute_reference:
            key = reference_key(examples, tokenizer, model, resolve_model_dir(cfg.model.path), cfg.data.max_length,
                                cfg.data.prompt_truncation_side) if cfg.objective.cache_reference else None
            ref_table = reference_table(policy, examples, collator, key)
        elif cfg.model.lora:
            def reference(batch):  # the same weights with the adapter switched off: no second copy
                with model.disable_adapter():
                    return reference_logps(policy, batch)
        else:
            frozen = PolicyForward(copy.deepcopy(model).eval().requires_grad_(False))
            frozen.selective_head = policy.selective_head
            reference = lambda batch: reference_logps(frozen, batch)  # noqa: E731

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.learning_rate,
                                  weight_decay=tc.weight_decay)
    scheduler = _scheduler(cfg, optimizer)
    policy, optimizer = accelerator.prepare(policy, optimizer)

    # -- 4. resume ----------------------------------------------------------------------------------
    step, tokens = 0, 0
    if resume and (ckpt := latest_checkpoint(out)) is not None:
        state = load_checkpoint(ckpt, model, optimizer, scheduler)
        step, tokens = state["step"], state["tokens"]
        sampler.load_state_dict(state["sampler"])
        if is_main:
            log.info("bcat: resumed from %s (step %d)", ckpt, step)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(to_yaml(cfg), encoding="utf-8")
        _truncate_log(out / "train_log.jsonl", step)
    accelerator.wait_for_everyone()

    # -- 5. the loop --------------------------------------------------------------------------------
    languages = sorted(report.records_per_language)
    lang_pos = {lang: i for i, lang in enumerate(languages)}
    ga = tc.gradient_accumulation_steps
    batches = iter(sampler)
    last_terms: dict[str, float] = {}
    progress = _progress(tc.max_steps, step, is_main)
    writer = _tensorboard(out) if is_main else None
    while step < tc.max_steps:
        sums: dict[str, torch.Tensor] = {}
        lang_sum = torch.zeros(len(languages), device=accelerator.device)
        lang_count = torch.zeros(len(languages), device=accelerator.device)
        step_items: list[list[tuple[str, str]]] = []
        for micro in range(ga):
            indices = next(batches)
            batch = _to(collator([examples[i] for i in indices]), accelerator.device)
            if ref_table is not None:
                ref = ref_table[batch["indices"].cpu()].to(accelerator.device)
                batch["ref_logps"] = torch.cat([ref[:, 0], ref[:, 1]])
            step_items.append([(examples[i].group, examples[i].lang) for i in indices])
            sync = micro == ga - 1
            with nullcontext() if sync else accelerator.no_sync(policy):
                result = compute_loss(policy, batch, cfg.objective, cfg.alignment, hidden_layers, reference)
                _check_finite(result.terms, step + 1, batch["langs"], accelerator)
                accelerator.backward(result.loss / ga)
            for k, v in result.terms.items():
                sums[k] = sums.get(k, 0.0) + v / ga
            for lang, value in zip(batch["langs"], result.per_example):
                lang_sum[lang_pos[lang]] += value
                lang_count[lang_pos[lang]] += 1
            tokens += int(accelerator.reduce(batch["attention_mask"].sum(), "sum"))
        if tc.max_grad_norm > 0:
            accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        terms = {k: float(accelerator.reduce(v, "mean")) for k, v in sums.items()}
        lang_sum, lang_count = accelerator.reduce(lang_sum, "sum"), accelerator.reduce(lang_count, "sum")
        last_terms = terms
        items = gather_object([step_items]) if tc.log_batch_items else None  # every rank must take part
        if is_main and (step % tc.logging_steps == 0 or step == tc.max_steps):
            entry = {"step": step, "epoch": round(step * ga / len(sampler), 4), "lr": scheduler.get_last_lr()[0],
                     "tokens": tokens, **terms,
                     "main_per_language": {lang: float(lang_sum[i] / lang_count[i])
                                           for i, lang in enumerate(languages) if lang_count[i] > 0}}
            if items is not None:
                entry["items_per_rank"] = items
            with open(out / "train_log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")
            if writer is not None:
                for k, v in terms.items():
                    writer.add_scalar(f"train/{k}", v, step)
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{terms['loss']:.4f}")
        if tc.save_steps and step % tc.save_steps == 0 and step < tc.max_steps:
            if is_main:
                save_checkpoint(out, step, model, optimizer, scheduler,
                                {"tokens": tokens, "sampler": sampler.state_dict()})
            accelerator.wait_for_everyone()
    if progress is not None:
        progress.close()

    # -- 6. outputs ---------------------------------------------------------------------------------
    summary = {
        "steps": step, "tokens": tokens, "wall_time_s": round(time.time() - t_start, 2),
        "final_terms": last_terms, "records": report.records, "groups": report.groups,
        "languages": languages, "trainable_parameters": trainable, "world_size": accelerator.num_processes,
        "prompt_tokens_trimmed": sum(e.prompt_trimmed for e in examples),
    }
    if is_main:
        save_model(model, tokenizer, out, merged=tc.save_merged and cfg.model.lora, vocab=vocab,
                   base_dir=resolve_model_dir(cfg.model.path))
        tmp = out / "training_summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
        tmp.replace(out / "training_summary.json")
        if writer is not None:
            writer.close()
    accelerator.wait_for_everyone()
    return summary


def save_model(model, tokenizer, out: Path, merged: bool, vocab=None, base_dir: Path | None = None) -> None:
    """Final model as safetensors under ``out/model`` (and ``out/merged``), written atomically.

    With a trimmed vocabulary the output is still a normal full-vocabulary model: a LoRA adapter
    does not touch the vocabulary and loads onto the original model as it is; full weights are put
    back into the original vocabulary by :func:`bcat.trim.export_full` (untouched rows bit-identical).
    """
    from bcat.trim import export_full, save_adapter

    lora = hasattr(model, "peft_config")
    for name, enabled in ((TRAINED_MODEL_SUBDIR, True), ("merged", merged)):
        if not enabled:
            continue
        target, tmp = out / name, out / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        weights = copy.deepcopy(model).merge_and_unload() if name == "merged" else model
        if vocab is not None and lora and name != "merged":
            save_adapter(weights, vocab, tmp)
            tokenizer.save_pretrained(tmp)
        elif vocab is not None:
            export_full(weights, vocab, base_dir, tmp)
        else:
            weights.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)


def trim_enabled(cfg: TrainConfig) -> bool:
    """``model.trim_vocab``; ``None`` means on for the built-in model (its 262k vocabulary dominates a CPU step)."""
    return cfg.model.trim_vocab if cfg.model.trim_vocab is not None else cfg.model.path.startswith("builtin:")


def trim_vocabulary(model, tokenizer, examples: list[Example]):
    """Restrict ``model`` to the token ids the examples use (plus specials and byte tokens), in place,
    and map the examples to the new ids. Must run before LoRA and the optimizer see the weights."""
    from bcat.trim import kept_token_ids, trim_model

    used = {t for e in examples for ids in (e.prompt_ids, *e.completions) for t in ids}
    vocab = trim_model(model, kept_token_ids(tokenizer, [], extra_ids=used))
    mapped = [dataclasses.replace(e, prompt_ids=vocab.encode_ids(e.prompt_ids),
                                  completions=tuple(vocab.encode_ids(c) for c in e.completions)) for e in examples]
    return vocab, mapped


def special_id(token_id: int | None, vocab) -> int | None:
    """A special token's id in the (possibly trimmed) model."""
    return token_id if token_id is None or vocab is None else vocab.encode_ids([token_id])[0]


def _check_finite(terms: dict, step: int, langs: list[str], accelerator) -> None:
    bad = [k for k, v in terms.items() if not math.isfinite(float(v))]
    flag = accelerator.reduce(torch.tensor(float(bool(bad)), device=accelerator.device), "sum")
    if float(flag) > 0:
        which = ", ".join(bad) if bad else "a term on another rank"
        raise TrainingError(
            f"non-finite loss at step {step}: {which} (languages in the micro-batch: {sorted(set(langs))}); "
            "the last checkpoint is intact; lower training.learning_rate or check the data"
        )


def _truncate_log(path: Path, step: int) -> None:
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


def add_cli(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model with batch-level cross-lingual alignment")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. objective.name=dpo training.max_steps=50")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = load_config(args.config, args.overrides)
    summary = train(cfg, resume=args.resume)
    print(json.dumps({k: summary[k] for k in ("steps", "tokens", "wall_time_s", "final_terms")}, indent=1))
    print(f"bcat: model written to {Path(cfg.training.output_dir) / TRAINED_MODEL_SUBDIR}")
    return 0
