"""The hidden alignment term on a real (tiny) model whose hidden states carry a huge common offset, as
Gemma's massive activations do: standardised, the term still tells a translation from another item;
raw, it cannot. Also ``bcat diagnose`` end to end, and the statistics' start-up fit."""

from __future__ import annotations

import json
import random

import pytest
import torch
from helpers import write_jsonl
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from bcat.batching.collate import GroupCollator
from bcat.cli import main
from bcat.data.records import Record
from bcat.data.tokenization import tokenize_records
from bcat.model.forward import PolicyForward
from bcat.training.diagnose import similarity
from bcat.training.hidden import fit_hidden_standardization, pool_examples, sample_examples
from bcat.training.losses import fit_standardization, hidden_alignment_loss, standardize

OFFSET = 5000.0
WORDS = ("warranty battery model price delivery colour weight screen charger cable invoice refund manual "
         "speaker camera router printer monitor keyboard adapter").split()
LANGS = ("en", "fr", "de", "es")


@pytest.fixture(scope="module")
def offset_model_dir(tmp_path_factory, tiny_model_dir):
    """The tiny Llama with MLP biases; layer 0's ``down_proj`` bias adds a massive activation (5000 in one
    dimension, 3 in every other) to the residual stream, so every later hidden state carries it."""
    out = tmp_path_factory.mktemp("offset") / "model"
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.mlp_bias = True
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()
        bias = model.model.layers[0].mlp.down_proj.bias
        bias.fill_(3.0)
        bias[7] = OFFSET
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(out)
    return out


def parallel_items(n_items: int = 8) -> list[dict]:
    """Distinct items (different words); each language variant = the item's words plus a language tag
    and one language-specific word, so a variant shares most of its tokens with its own anchor only."""
    records = []
    for k in range(n_items):
        words = random.Random(k).sample(WORDS, 8)
        for lang in LANGS:
            prompt = f"[{lang}] " + " ".join(words) + f" {lang}{lang}? Answer:"
            records.append({"group": f"item{k}", "lang": lang, "prompt": prompt, "completion": f" {words[0]}"})
    return records


def _examples(model_dir, records):
    tok = AutoTokenizer.from_pretrained(model_dir)
    recs = [Record(r["group"], r["lang"], r["prompt"], (r["completion"],)) for r in records]
    return tokenize_records(recs, tok, 128), GroupCollator(tok.pad_token_id, "en", tok.bos_token_id)


def test_offset_model_really_has_a_massive_dimension(offset_model_dir):
    examples, collator = _examples(offset_model_dir, parallel_items(4))
    pooled = pool_examples(PolicyForward(AutoModelForCausalLM.from_pretrained(offset_model_dir)), examples, collator,
                           (2,))[0]
    mean = pooled.mean(0).abs()
    assert mean[7] > 1000 * mean.median()


def test_standardised_term_separates_parallel_items_on_a_model_with_a_huge_offset(offset_model_dir):
    examples, collator = _examples(offset_model_dir, parallel_items(8))
    policy = PolicyForward(AutoModelForCausalLM.from_pretrained(offset_model_dir))
    layer = 2
    pooled = pool_examples(policy, examples, collator, (layer,))[0]
    # statistics from items 0-3, measured on items 4-7 (held out), as `bcat diagnose` does
    fit_rows = [i for i, e in enumerate(examples) if int(e.group[4:]) < 4]
    test_rows = [i for i, e in enumerate(examples) if int(e.group[4:]) >= 4]
    mean, scale = fit_standardization(pooled[fit_rows])
    held = pooled[test_rows]
    groups = torch.tensor([int(examples[i].group[4:]) - 4 for i in test_rows])
    anchors = torch.tensor([examples[i].lang == "en" for i in test_rows])

    raw = similarity(held, groups, anchors, 0.1)
    std = similarity(standardize(held, mean, scale), groups, anchors, 0.1)
    assert raw["parallel"] > 0.999 and raw["non_parallel"] > 0.999 and raw["gap"] < 1e-3  # every pair looks aligned
    assert std["gap"] > 0.3 and std["top1"] == 1.0  # each translation is nearest to its own anchor

    # the term: pairing each variant with its own anchor costs far less than with another item's anchor
    wrong = torch.where(anchors, groups, (groups + 1) % 4)
    for kind in ("cosine", "infonce"):
        right = hidden_alignment_loss(held, groups, anchors, kind=kind, mean=mean, scale=scale)
        other = hidden_alignment_loss(held, wrong, anchors, kind=kind, mean=mean, scale=scale)
        assert other - right > 0.3, kind
    raw_right = hidden_alignment_loss(held, groups, anchors, kind="cosine")
    raw_other = hidden_alignment_loss(held, wrong, anchors, kind="cosine")
    assert abs(raw_other - raw_right) < 1e-3  # raw: inert


def test_start_up_fit_is_deterministic_and_uses_the_seeded_sample(offset_model_dir):
    examples, collator = _examples(offset_model_dir, parallel_items(8))
    policy = PolicyForward(AutoModelForCausalLM.from_pretrained(offset_model_dir))
    a = fit_hidden_standardization(policy, examples, collator, (1, 2), "standardize", 10, seed=3)
    b = fit_hidden_standardization(policy, examples, collator, (1, 2), "standardize", 10, seed=3)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.scale, b.scale) and a.mean.shape == (2, 192)
    assert [e.index for e in sample_examples(examples, 10, 3)] == [e.index for e in sample_examples(examples, 10, 3)]
    sample = sample_examples(examples, 10, 3)
    direct = pool_examples(policy, sample, collator, (1, 2))
    torch.testing.assert_close(a.mean, direct.mean(1))
    assert fit_hidden_standardization(policy, examples, collator, (1,), "none", 10, seed=3) is None


def test_diagnose_cli_on_the_offset_model(tmp_path, offset_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_items(8))
    out = tmp_path / "diag.json"
    assert main(["diagnose", "--model", str(offset_model_dir), "--data", str(data), "--layers", "1,3",
                 "--groups", "8", "--stats-records", "12", "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "standardize" in printed and "held-out groups" in printed
    result = json.loads(out.read_text())
    assert result["measured_groups"] == 4 and result["fit_groups"] == 4 and result["fit_records"] == 12
    assert set(result["layers"]) == {"1", "3"}
    for entry in result["layers"].values():
        assert entry["massive"]["dim_of_max"] == 7 and entry["massive"]["max_abs_mean"] > 1000
        assert entry["none"]["gap"] < 1e-3 < entry["standardize"]["gap"]
        assert entry["standardize"]["top1"] > entry["none"]["top1"]
        assert entry["standardize"]["infonce"] < entry["none"]["infonce"]


def test_diagnose_refuses_layers_the_model_does_not_have(tmp_path, tiny_model_dir, capsys):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_items(4))
    assert main(["diagnose", "--model", str(tiny_model_dir), "--data", str(data), "--layers", "9"]) == 2
    assert "this model has 4 transformer layers" in capsys.readouterr().err
