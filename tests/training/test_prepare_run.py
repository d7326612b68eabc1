"""The training loop's seam: a run prepared from parts the caller built, with a part replaced on the
prepared run, trains exactly as ``bcat train`` does (no patching of ``bcat.training.loop``)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import parallel_records, write_jsonl
from safetensors.torch import load_file

from bcat.config import load_config
from bcat.data.records import load_records
from bcat.data.tokenization import tokenize_records
from bcat.errors import ConfigError
from bcat.model.loading import load_model, load_tokenizer, training_precision
from bcat.training.loop import prepare_run, run_training, train

SETTINGS = ["objective.name=dpo", "training.max_steps=3", "training.learning_rate=5e-3",
            "training.lr_scheduler=constant", "batch.mode=grouped", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine",
            "alignment.hidden_weight=0.3", "alignment.output_weight=0.1"]


def _config(tmp_path, model_dir, name):
    data = write_jsonl(tmp_path / "dpo.jsonl", parallel_records(2, objective="dpo"))
    return load_config(None, [f"model.path={model_dir}", f"data.train={data}",
                              f"training.output_dir={tmp_path / name}", *SETTINGS])


def _log(out):
    return [{k: v for k, v in json.loads(line).items() if k != "step_s"}
            for line in (out / "train_log.jsonl").read_text().splitlines()]


def _parts(cfg):
    records, _ = load_records(cfg.data.train, cfg.objective.name, cfg.data.anchor, cfg.data.languages,
                              cfg.data.drop_groups_without_anchor)
    tokenizer = load_tokenizer(cfg.model.path)
    examples = tokenize_records(records, tokenizer, cfg.data.max_length, cfg.data.prompt_truncation_side)
    cpu = torch.device("cpu")
    model = load_model(cfg.model, cpu, dtype=training_precision(cfg.model, cpu).storage)
    return model, tokenizer, examples


def test_a_run_prepared_from_given_parts_trains_like_bcat_train(tmp_path, tiny_model_dir):
    plain = _config(tmp_path, tiny_model_dir, "plain")
    train(plain)

    cfg = _config(tmp_path, tiny_model_dir, "parts")
    model, tokenizer, examples = _parts(cfg)
    collated = []
    with prepare_run(cfg, model=model, tokenizer=tokenizer, examples=examples) as run:
        assert run.model.get_base_model() is model  # the given model, with LoRA as configured
        collate = run.collator

        def counting(batch_examples):
            collated.append(len(batch_examples))
            return collate(batch_examples)

        run.collator = counting
        summary = run_training(run)

    assert summary["steps"] == 3 and len(collated) == 3  # the replaced collator made every step's batch
    out, ref = tmp_path / "parts", tmp_path / "plain"
    assert _log(out) == _log(ref)
    ours, theirs = load_file(out / "model" / "adapter_model.safetensors"), \
        load_file(ref / "model" / "adapter_model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_given_examples_must_be_the_records_tokenized(tmp_path, tiny_model_dir):
    cfg = _config(tmp_path, tiny_model_dir, "short")
    _, tokenizer, examples = _parts(cfg)
    with pytest.raises(ConfigError, match=r"5 examples given for the 6 records of .*dpo\.jsonl"):
        prepare_run(cfg, tokenizer=tokenizer, examples=examples[:-1])
    assert not (tmp_path / "short").exists()
