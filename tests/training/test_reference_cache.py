"""DPO reference log-probs cached on disk: the key follows data, tokenizer, length settings and
weights (and nothing else), later runs and resumed runs reuse the table, and the losses are the same."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from helpers import parallel_records, write_jsonl
from transformers import AutoModelForCausalLM, AutoTokenizer

from bcat.training import reference
from bcat.batching.collate import GroupCollator
from bcat.cli import main
from bcat.data.records import Record
from bcat.data.tokenization import tokenize_records
from bcat.model.forward import PolicyForward
from bcat.training.reference import (
    file_sha256,
    key_digest,
    reference_key,
    reference_table,
)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("BCAT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "reference"


def _examples(tok, records=None, max_length=512, side="left"):
    recs = records or parallel_records(2)
    return tokenize_records([Record(r["group"], r["lang"], r["prompt"], (r["chosen"], r["rejected"])) for r in recs],
                            tok, max_length, side)


def _key(model_dir, tok=None, model=None, records=None, max_length=512, side="left"):
    tok = tok or AutoTokenizer.from_pretrained(model_dir)
    model = model or AutoModelForCausalLM.from_pretrained(model_dir)
    return reference_key(_examples(tok, records, max_length, side), tok, model, model_dir, max_length, side)


def test_key_changes_with_each_input_and_only_then(tiny_model_dir, tmp_path):
    base = _key(tiny_model_dir)
    # Not otherwise: rebuilt from scratch, a byte-identical copy elsewhere, the model wrapped in LoRA.
    assert _key(tiny_model_dir) == base
    copy_dir = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy_dir)
    assert key_digest(_key(copy_dir)) == key_digest(base)
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    assert key_digest(_key(tiny_model_dir, model=lora)) == key_digest(base)

    def differs(key, part):
        assert key_digest(key) != key_digest(base)
        assert [k for k in base if base[k] != key[k]] == [part]

    # Data.
    recs = parallel_records(2)
    recs[3]["chosen"] = " 99 months"
    differs(_key(tiny_model_dir, records=recs), "data")
    # Length settings (even when no example is long enough to be trimmed).
    differs(_key(tiny_model_dir, max_length=400), "lengths")
    differs(_key(tiny_model_dir, side="right"), "lengths")
    # Tokenizer: another chat template (same ids for these plain-string records).
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = "{{ messages }}"
    differs(_key(tiny_model_dir, tok=tok), "tokenizer")
    # Weights: one value changed in the saved file.
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        model.model.norm.weight[0] += 1
    changed = tmp_path / "changed"
    model.save_pretrained(changed)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(changed)
    differs(_key(changed), "weights")
    # The weights as loaded: another dtype.
    differs(_key(tiny_model_dir, model=AutoModelForCausalLM.from_pretrained(tiny_model_dir).double()), "model")


def test_file_hash_is_remembered_by_path_size_and_mtime(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"abc")
    index = tmp_path / "index.json"
    real = file_sha256(f, index)
    # Same (path, size, mtime): the stored hash is returned without reading the file.
    entry = json.loads(index.read_text())
    entry[str(f.resolve())]["sha256"] = "remembered"
    index.write_text(json.dumps(entry))
    assert file_sha256(f, index) == "remembered"
    os.utime(f, ns=(0, 12345))  # touched: hashed again
    assert file_sha256(f, index) == real


def test_table_is_reused_and_a_bad_file_is_recomputed(tiny_model_dir, cache_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    examples = _examples(tok)
    key = reference_key(examples, tok, model, tiny_model_dir, 512, "left")
    collator = GroupCollator(tok.pad_token_id, "en", tok.bos_token_id, pack=True)
    policy = PolicyForward(model)
    hits, misses = reference.stats["hits"], reference.stats["misses"]
    first = reference_table(policy, examples, collator, key)
    assert (cache_dir / f"{key_digest(key)}.safetensors").exists()
    second = reference_table(policy, examples, collator, key)
    assert torch.equal(first, second)
    assert (reference.stats["hits"], reference.stats["misses"]) == (hits + 1, misses + 1)
    # The table equals a plain (unpacked, uncached) pass.
    plain = reference.precompute_reference(policy, examples, GroupCollator(tok.pad_token_id, "en", tok.bos_token_id))
    assert (first - plain).abs().max() < 1e-5
    # A damaged file is not trusted.
    (cache_dir / f"{key_digest(key)}.safetensors").write_bytes(b"garbage")
    third = reference_table(policy, examples, collator, key)
    assert torch.equal(first, third) and reference.stats["misses"] == misses + 2


def test_second_run_and_resume_reuse_the_cache_with_identical_losses(tmp_path, tiny_model_dir, cache_dir):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(2))
    common = [f"model.path={tiny_model_dir}", f"data.train={data}", "objective.name=dpo", "batch.groups_per_batch=1",
              "alignment.hidden_loss=cosine",
              "training.learning_rate=5e-3", "training.save_steps=1",
              "training.lr_scheduler=constant"]  # the resume below extends max_steps: the schedule must not depend on it

    def train(name, steps, *extra):
        assert main(["train", *extra, *common, f"training.max_steps={steps}",
                     f"training.output_dir={tmp_path / name}"]) == 0
        return [json.loads(x) for x in (tmp_path / name / "train_log.jsonl").read_text().splitlines()]

    hits, misses = reference.stats["hits"], reference.stats["misses"]
    first = train("a", 2)
    assert (reference.stats["hits"], reference.stats["misses"]) == (hits, misses + 1)
    assert len(list(cache_dir.glob("*.safetensors"))) == 1
    second = train("b", 2)
    assert reference.stats["hits"] == hits + 1 and reference.stats["misses"] == misses + 1
    assert [e["loss"] for e in first] == [e["loss"] for e in second]
    # Resume from the step-1 checkpoint of run b: the table comes from the cache again.
    (tmp_path / "b" / "training_summary.json").unlink()
    third = train("b", 3, "--resume")
    assert reference.stats["hits"] == hits + 2 and reference.stats["misses"] == misses + 1
    assert [e["step"] for e in third] == [1, 2, 3]
    # Switched off: computed, nothing new written.
    train("c", 1, "objective.cache_reference=false")
    assert reference.stats["misses"] == misses + 2 and len(list(cache_dir.glob("*.safetensors"))) == 1
