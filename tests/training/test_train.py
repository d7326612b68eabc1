"""End to end: `bcat train` on a tiny random model for every objective, with and without alignment."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import parallel_records, write_jsonl
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bcat.cli import main

FAST = ["training.learning_rate=5e-3", "training.lr_scheduler=constant", "batch.mode=grouped", "batch.groups_per_batch=1",
        "alignment.hidden_loss=cosine"]
ALIGN_OFF = ["alignment.hidden_weight=0", "alignment.output_weight=0"]
ALIGN_ON = ["alignment.hidden_weight=0.3", "alignment.output_weight=0.1", "alignment.token_kl_weight=0.1"]


def run(tmp_path, model_dir, objective, extra, steps=8, n_groups=1, name="run"):
    kind = "sft" if objective == "sft" else "dpo"
    data = write_jsonl(tmp_path / f"{kind}.jsonl", parallel_records(n_groups, objective=kind))
    out = tmp_path / name
    args = ["train", f"model.path={model_dir}", f"data.train={data}", f"objective.name={objective}",
            f"training.max_steps={steps}", f"training.output_dir={out}", *FAST, *extra]
    assert main(args) == 0
    return out, [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["sft", "dpo", "orpo"])
@pytest.mark.parametrize("alignment", ["off", "on"])
def test_train_finishes_and_loss_goes_down_on_a_repeated_batch(tmp_path, tiny_model_dir, objective, alignment):
    out, log = run(tmp_path, tiny_model_dir, objective, ALIGN_OFF if alignment == "off" else ALIGN_ON)
    assert len(log) == 8
    assert log[-1]["main"] < log[0]["main"]
    assert set(log[0]["main_per_language"]) == {"en", "fr", "de"}
    if alignment == "on":
        assert {"hidden", "output", "token_kl"} <= set(log[0])
        # gradient-norm ratios at step 1 (and every training.grad_ratio_steps=10 steps): only step 1 here
        assert log[0]["grad_ratio_hidden"] > 0 and log[0]["grad_ratio_output"] >= 0
        assert not any("grad_ratio_hidden" in e for e in log[1:])
    assert all(e["grad_norm"] > 0 for e in log)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 8 and summary["tokens"] > 0
    packed = objective != "sft"
    assert summary["forward_path"] == {"packed_requested": packed, "packed": packed, "head_at_scored_positions": True}
    if alignment == "on":
        assert summary["hidden_standardization"]["kind"] == "standardize"
        assert summary["hidden_layers"] == [2]
    assert (out / "config.yaml").exists()
    # The adapter is safetensors and loads back with plain transformers + peft.
    assert (out / "model" / "adapter_model.safetensors").exists()
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, out / "model")
    ids = torch.tensor([[1, 5, 6, 7]])
    assert torch.isfinite(tuned(ids).logits).all()


def test_full_finetune_with_merged_and_live_reference(tmp_path, tiny_model_dir):
    out, log = run(tmp_path, tiny_model_dir, "dpo", ["model.lora=false", "objective.precompute_reference=false"],
                   steps=4)
    assert log[-1]["main"] < log[0]["main"]
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert sum(p.numel() for p in model.parameters()) > 1_000_000


def test_lora_live_reference_equals_precomputed(tmp_path, tiny_model_dir):
    """With LoRA, adapters-off reference == the reference precomputed before training."""
    _, live = run(tmp_path, tiny_model_dir, "dpo", ["objective.precompute_reference=false"], steps=3, name="a")
    _, pre = run(tmp_path, tiny_model_dir, "dpo", ["objective.precompute_reference=true"], steps=3, name="b")
    for a, b in zip(live, pre):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


def test_merged_weights_on_request(tmp_path, tiny_model_dir):
    out, _ = run(tmp_path, tiny_model_dir, "sft", ["training.save_merged=true"], steps=2)
    assert any(p.suffix == ".safetensors" for p in (out / "merged").iterdir())
    from peft import PeftModel

    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out / "model").eval()
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want, got = tuned(ids).logits, merged(ids).logits
    # the merged weights are the base plus the trained adapter, not the base alone
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits, atol=1e-5)


def test_resume_continues_bitwise(tmp_path, tiny_model_dir):
    """Stopping after a checkpoint and resuming gives the same weights as an uninterrupted run."""
    common = ["training.save_steps=2", "batch.groups_per_batch=1"]
    full, _ = run(tmp_path, tiny_model_dir, "orpo", common, steps=6, n_groups=3, name="full")
    part, _ = run(tmp_path, tiny_model_dir, "orpo", common, steps=4, n_groups=3, name="part")
    # Pretend the run died after step 4's checkpoint... we checkpoint at 2 (and the final at 4);
    # resume the 4-step run to 6 steps from its newest checkpoint (step 2).
    (part / "training_summary.json").unlink()
    data = tmp_path / "dpo.jsonl"
    assert main(["train", "--resume", f"model.path={tiny_model_dir}", f"data.train={data}", "objective.name=orpo",
                 "training.max_steps=6", f"training.output_dir={part}", *FAST, *common]) == 0
    a = load_file(full / "model" / "adapter_model.safetensors")
    b = load_file(part / "model" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (part / "train_log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_bad_config_exits_2_and_writes_nothing(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(2))
    out = tmp_path / "out"
    assert main(["train", f"model.path={tiny_model_dir}", f"data.train={data}", f"training.output_dir={out}",
                 "objective.bta=0.2"]) == 2
    assert "did you mean 'objective.beta'" in capsys.readouterr().err
    assert main(["train", f"model.path={tiny_model_dir}", f"data.train={data}", f"training.output_dir={out}",
                 "training.learning_rate=-1"]) == 2
    assert main(["train", f"model.path={tmp_path / 'nope'}", f"data.train={data}", f"training.output_dir={out}"]) == 2
    assert not out.exists()


def test_plan_json_keeps_groups_whole(tmp_path, capsys, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(6, langs=("en", "fr", "de", "es")))
    assert main(["plan", "--json", "--steps", "3", "--world-size", "2", f"data.train={data}", f"model.path={tiny_model_dir}",
                 "batch.mode=grouped", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine", "objective.name=dpo"]) == 0
    plan = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(plan) == 6 and {p["rank"] for p in plan} == {0, 1}
    for p in plan:
        assert len({it["group"] for it in p["items"]}) == 1 and len(p["items"]) == 4
        assert p["items"][0]["lang"] == "en"
    seen = [(it["group"], it["lang"]) for p in plan for it in p["items"]]
    assert len(seen) == len(set(seen)) == 24  # one epoch: every record once


@pytest.mark.parametrize("lora", ["true", "false"])
def test_trimmed_vocabulary_trains_and_exports_a_full_model(tmp_path, tiny_model_dir, lora):
    out, log = run(tmp_path, tiny_model_dir, "orpo", ["model.trim_vocab=true", f"model.lora={lora}"], steps=4)
    assert log[-1]["main"] < log[0]["main"]
    full = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if lora == "true":
        from peft import PeftModel

        model = PeftModel.from_pretrained(full, out / "model")
    else:
        model = AutoModelForCausalLM.from_pretrained(out / "model")
        # (Untouched rows stay bit-identical: tests/test_trim.py checks the export.)
    assert model.get_input_embeddings().weight.shape[0] == full.config.vocab_size


def _length_records() -> list[dict]:
    """Groups whose character and token lengths disagree: many English words the tokenizer merges (long in
    characters, short in tokens) against a few emoji it spells byte by byte (short in characters, long in tokens)."""
    recs = []
    for g in range(8):
        body = " The warranty lasts 24 months." * (2 + g) if g % 2 else " \U0001F642\U0001F680\U0001F4E6" * (2 + g)
        for lang in ("en", "fr", "de"):
            recs.append({"group": f"g{g}", "lang": lang, "prompt": f"[{lang}]{body} Answer:",
                         "chosen": f" {g}2 mois", "rejected": f" {g}9 mois"})
    return recs


def test_plan_is_exactly_what_training_trains_on_with_order_by_length(tmp_path, tiny_model_dir, capsys):
    from bcat.batching.sampler import GroupBatchSampler
    from bcat.data.records import load_records

    data = write_jsonl(tmp_path / "d.jsonl", _length_records())
    args = [f"model.path={tiny_model_dir}", f"data.train={data}", "objective.name=orpo", "batch.order_by_length=true",
            "batch.groups_per_batch=2", "training.gradient_accumulation_steps=2", "alignment.hidden_loss=cosine",
            "batch.seed=3"]
    out = tmp_path / "run"
    assert main(["train", *args, "training.max_steps=3", f"training.output_dir={out}", "training.log_batch_items=true",
                 "training.grad_ratio_steps=0", "training.learning_rate=1e-3"]) == 0
    trained = [[[tuple(x) for x in micro] for micro in entry["items_per_rank"][0]]
               for entry in map(json.loads, (out / "train_log.jsonl").read_text().splitlines())]
    capsys.readouterr()
    assert main(["plan", "--json", "--steps", "3", *args]) == 0
    plan = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    planned = [[[(it["group"], it["lang"]) for it in p["items"]] for p in plan if p["step"] == s] for s in range(3)]
    assert planned == trained
    # What `bcat plan` printed before (character lengths) is a different order: the test can tell them apart.
    records, _ = load_records(data, "orpo")
    by_chars = GroupBatchSampler([(r.group, r.lang) for r in records], 2, lengths=[len(r.prompt) for r in records],
                                 order_by_length=True, seed=3)
    old = [[(records[i].group, records[i].lang) for i in mb.records] for (mb,) in by_chars.epoch_plan(0)]
    assert old[:4] != [micro for step in planned[:2] for micro in step]


def test_forward_path_is_printed(tmp_path, tiny_model_dir, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="bcat.training.loop")
    run(tmp_path, tiny_model_dir, "dpo", ALIGN_OFF, steps=1)
    assert "bcat: forward path: packed prompt|chosen|rejected sequences; output head at scored positions only" in caplog.text
