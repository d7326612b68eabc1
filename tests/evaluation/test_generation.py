"""Continuous-batching greedy generation gives ``model.generate``'s outputs (the previous implementation).

Tiny random models of three architectures: Llama (full attention), Gemma 3 and Qwen2 with a
sliding window of 8 tokens mixed with full layers (prompts are longer than the window, so the
merged and trimmed sliding caches are exercised). EOS is set to a token the model emits often, so
rows stop at different steps and the batch is refilled and merged many times.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LogitsProcessor

from bcat.evaluation.generation import greedy_generate, reference_generate
from tests.helpers import TEXT, build_tiny_model

PROMPTS = [" ".join(t.split()[: 1 + (i * 7) % len(t.split())]) * (1 + i % 3) for i, t in enumerate(TEXT * 2)]


@pytest.fixture(scope="module", params=["llama", "gemma3", "qwen2"])
def tiny(request, tmp_path_factory):
    """(model, tokenizer) of one architecture, with weights scaled so greedy outputs differ per prompt."""
    arch = request.param
    path = build_tiny_model(tmp_path_factory.mktemp(arch), arch=arch)
    cfg = AutoConfig.from_pretrained(path)
    if arch == "gemma3":
        cfg.sliding_window, cfg.layer_types = 8, ["sliding_attention", "full_attention"] * 2
    elif arch == "qwen2":
        cfg.use_sliding_window, cfg.sliding_window, cfg.max_window_layers = True, 8, 2
        cfg.layer_types = ["full_attention"] * 2 + ["sliding_attention"] * 2
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # larger logits: fewer near-ties, more varied continuations
        for name, p in model.named_parameters():
            if "embed" in name or "lm_head" in name:
                p.mul_(8)
    tok = AutoTokenizer.from_pretrained(path)
    frequent = Counter(t for text in reference_generate(model, tok, PROMPTS, max_new_tokens=12)
                       for t in tok(text, add_special_tokens=False)["input_ids"])
    model.generation_config.eos_token_id = frequent.most_common(1)[0][0]
    return model, tok


@pytest.mark.parametrize("batch_size,prefill_tokens", [(1, 2048), (3, 40), (5, 16), (64, 40)])
def test_same_outputs_as_generate(tiny, batch_size, prefill_tokens):
    model, tok = tiny
    expected = reference_generate(model, tok, PROMPTS, batch_size=4, max_new_tokens=12)
    assert len(set(expected)) > len(PROMPTS) // 2  # the check is not vacuous
    lengths = [len(e) for e in expected]
    assert min(lengths) < max(lengths) / 2  # rows stop at different steps
    got = greedy_generate(model, tok, PROMPTS, batch_size=batch_size, max_new_tokens=12, prefill_tokens=prefill_tokens)
    assert got == expected


def test_one_token_prompts_and_the_model_generation_config(tiny):
    """Prompts that are only BOS (nothing to prefill) mixed with others; a repetition penalty from the
    model's generation config applies as in ``model.generate`` on one prompt at a time (in a batch,
    ``generate`` would also penalise the pad token of padded rows)."""
    model, tok = tiny
    prompts = ["", PROMPTS[3], "", PROMPTS[7], PROMPTS[1]]
    model.generation_config.repetition_penalty = 1.5
    try:
        expected = reference_generate(model, tok, prompts, batch_size=1, max_new_tokens=10)
        plain = greedy_generate(model, tok, prompts, batch_size=2, max_new_tokens=10, prefill_tokens=16)
        only_bos = greedy_generate(model, tok, ["", ""], batch_size=2, max_new_tokens=10)
        model.generation_config.repetition_penalty = 1.0
        unpenalised = greedy_generate(model, tok, prompts, batch_size=2, max_new_tokens=10, prefill_tokens=16)
    finally:
        model.generation_config.repetition_penalty = 1.0
    assert plain == expected and only_bos == [expected[0]] * 2
    assert unpenalised != expected  # the penalty did change something


class NewlineAfter(LogitsProcessor):
    """Forces a line break after every token whose id is a multiple of ``every``."""

    def __init__(self, newline: int, every: int):
        self.newline, self.every = newline, every

    def __call__(self, input_ids, scores):
        # Depends only on each row's own last token, so padding and batching cannot change it.
        force = (input_ids[:, -1] % self.every) == 0
        scores[force, self.newline] = scores.max() + 1
        return scores


def test_first_line_stop_matches(tiny):
    model, tok = tiny
    newline = tok("\n", add_special_tokens=False)["input_ids"][-1]
    processor = [NewlineAfter(newline, 3)]
    expected = reference_generate(model, tok, PROMPTS, batch_size=4, max_new_tokens=12, logits_processor=processor)
    got = greedy_generate(model, tok, PROMPTS, batch_size=6, max_new_tokens=12, prefill_tokens=32,
                          logits_processor=processor)
    assert got == expected
    assert sum("\n" in e.lstrip() for e in expected) >= 3  # some rows stopped at a line break


def test_unmergeable_cache_falls_back_to_generate(tiny, monkeypatch, caplog):
    from bcat.evaluation import generation

    model, tok = tiny
    monkeypatch.setattr(generation, "DynamicLayer", type("Other", (), {}))
    monkeypatch.setattr(generation, "DynamicSlidingWindowLayer", type("Other2", (), {}))
    with caplog.at_level("INFO"):
        got = greedy_generate(model, tok, PROMPTS[:5], batch_size=3, max_new_tokens=8)
    assert "cannot be merged" in caplog.text
    assert got == reference_generate(model, tok, PROMPTS[:5], batch_size=3, max_new_tokens=8)


def test_rejects_empty_prompt_without_special_tokens(tiny):
    model, tok = tiny
    with pytest.raises(ValueError, match="prompt 1 has no tokens"):
        greedy_generate(model, tok, ["a", ""], add_special_tokens=False)
