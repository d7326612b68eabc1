"""bf16 mixed precision and the flex-attention mask, checked on the CPU (tiny shapes: bf16 is slow there).

- the output head in bf16 (one piece, in chunks, the frozen head's custom backward, a trained head's
  checkpointed chunks) agrees with fp32 within bf16 tolerance, values and gradients;
- a LoRA policy on a bf16 base under autocast keeps fp32 adapters (the master weights), gets fp32
  gradients for them and fp32 log-probs, close to the fp32 run; a full fine-tune keeps fp32 weights;
- the fp32 path stays as it was: no autocast, the same numbers bit for bit;
- the flex-attention ``mask_mod`` is the same rule as the dense packed mask, element by element.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from bcat.batching.collate import GroupCollator
from bcat.config import ModelConfig
from bcat.data.tokenization import Example
from bcat.model.forward import PolicyForward, head_logps, packed_attention_mask, packed_mask_mod
from bcat.model.loading import Precision, add_lora, training_precision

BF16_REL = 2e-2
"""Relative error of bf16 operands against fp32 (8 bits of mantissa: 2^-8 per rounding, a few roundings)."""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("softcap", [None, 30.0], ids=["plain", "softcap"])
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trained-head"])
@pytest.mark.parametrize("chunk", [None, 3], ids=["one-piece", "chunks"])
def test_head_in_bf16_is_within_bf16_tolerance_of_fp32(softcap, frozen, chunk):
    gen = torch.Generator().manual_seed(0)
    vocab, dim, k = 64, 16, 11
    config = SimpleNamespace(final_logit_softcapping=softcap, vocab_size=vocab)
    head32 = nn.Linear(dim, vocab, bias=False)
    with torch.no_grad():
        head32.weight.copy_(torch.randn(vocab, dim, generator=gen) * 0.5)
    head16 = nn.Linear(dim, vocab, bias=False).to(torch.bfloat16)
    with torch.no_grad():
        head16.weight.copy_(head32.weight)
    for h in (head32, head16):
        h.requires_grad_(not frozen)
    hidden = torch.randn(k, dim, generator=gen)
    targets = torch.randint(0, vocab, (k,), generator=gen)
    upstream = torch.randn(k, generator=gen)  # a loss that weighs positions differently
    out = {}
    for name, head, dtype in (("fp32", head32, torch.float32), ("bf16", head16, torch.bfloat16)):
        h = hidden.to(dtype).detach().clone().requires_grad_(True)
        logps = head_logps(head, config, h, targets, None if chunk is None else chunk * vocab)
        assert logps.dtype == torch.float32  # reduced in fp32 whatever the head's dtype
        (logps * upstream).sum().backward()
        out[name] = (logps.detach(), h.grad.float(), None if frozen else head.weight.grad.float())
    (l32, g32, w32), (l16, g16, w16) = out["fp32"], out["bf16"]
    assert _rel(l16, l32) < BF16_REL
    assert _rel(g16, g32) < BF16_REL
    if not frozen:
        assert _rel(w16, w32) < BF16_REL


def _examples() -> list[Example]:
    gen = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, 300, (n,), generator=gen).tolist()

    return [Example(i, f"g{i // 2}", ("en", "fr")[i % 2], [1] + ids(p), (ids(c) + [2], ids(r) + [2]))
            for i, (p, c, r) in enumerate([(9, 3, 5), (4, 6, 2), (12, 2, 3), (6, 4, 4)])]


def _logps(policy, batch, packed=None):
    out = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"], pool_mask=batch["pool_mask"],
                 hidden_layers=(2,), pool_rows=2, packed=packed)
    return out["token_logps"], out["pooled"]


def test_lora_on_a_bf16_base_keeps_fp32_adapters_and_fp32_outputs(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), dtype="bfloat16", lora=True, lora_r=4, lora_alpha=8,
                      lora_target_modules=["q_proj", "v_proj"])
    precision = training_precision(cfg, torch.device("cpu"))
    assert precision == Precision(torch.bfloat16, torch.bfloat16)
    batch = GroupCollator(pad_token_id=0, anchor="en")(_examples())
    results = {}
    for name, dtype, amp in (("fp32", torch.float32, None), ("bf16", torch.bfloat16, torch.bfloat16)):
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype)
        model = add_lora(base, cfg)
        with torch.no_grad():  # non-zero B so the adapters take part in the outputs
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.full_like(p, 0.01))
        trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
        assert trained and all(p.dtype == torch.float32 for p in trained.values())  # master weights
        frozen = [p for p in model.parameters() if not p.requires_grad]
        assert all(p.dtype == dtype for p in frozen)
        policy = PolicyForward(model, amp)
        logps, pooled = _logps(policy, batch)
        assert logps.dtype == torch.float32 and pooled.dtype == torch.float32
        (logps.sum() + pooled.sum()).backward()
        grads = {n: p.grad for n, p in trained.items()}
        assert all(g is not None and g.dtype == torch.float32 for g in grads.values())
        results[name] = (logps.detach(), grads)
    (l32, g32), (l16, g16) = results["fp32"], results["bf16"]
    assert _rel(l16, l32) < BF16_REL
    assert max(_rel(g16[n], g32[n]) for n in g32) < 0.1  # gradients through a bf16 network: a few % apart


def test_full_fine_tuning_keeps_fp32_weights_under_bf16_autocast(tiny_model_dir):
    precision = training_precision(ModelConfig(path=str(tiny_model_dir), dtype="bfloat16", lora=False),
                                   torch.device("cpu"))
    assert precision == Precision(torch.bfloat16, torch.float32) and precision.autocast
    batch = GroupCollator(pad_token_id=0, anchor="en")(_examples())
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=precision.storage)
    plain = _logps(PolicyForward(model), batch)[0]
    policy = PolicyForward(model, precision.compute)
    assert policy.compute_dtype == torch.bfloat16
    logps = _logps(policy, batch)[0]
    logps.sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
               if p.grad is not None)
    assert logps.dtype == torch.float32 and 0 < _rel(logps.detach(), plain.detach()) < BF16_REL  # bf16 really ran


def test_fp32_path_has_no_autocast_and_is_unchanged(tiny_model_dir):
    assert not training_precision(ModelConfig(), torch.device("cpu")).autocast
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    batch = GroupCollator(pad_token_id=0, anchor="en")(_examples())
    with torch.no_grad():
        a = _logps(PolicyForward(model), batch)[0]
        b = _logps(PolicyForward(model, None), batch)[0]
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    ref = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1) * batch["target_mask"]
    assert torch.equal(a, b)
    assert (a - ref).abs().max() < 1e-5


def test_fp16_training_is_refused():
    from bcat.errors import ConfigError

    with pytest.raises(ConfigError, match="model.dtype=float16 is not supported for training"):
        training_precision(ModelConfig(dtype="float16"), torch.device("cpu"))


@pytest.mark.parametrize("window", [None, 3])
def test_flex_mask_mod_is_the_dense_packed_mask(window):
    from torch.nn.attention.flex_attention import create_mask

    batch = GroupCollator(pad_token_id=0, anchor="en", pack=True)(_examples())
    pairs, segments, pos = batch["packed_pairs"], batch["packed_segments"], batch["packed_position_ids"]
    config = SimpleNamespace(_attn_implementation="sdpa", sliding_window=window, layer_types=None)
    dense = packed_attention_mask(pairs, segments, pos, config, torch.float32)[:, 0]
    b, t = segments.shape
    flex = create_mask(packed_mask_mod(pairs, segments, pos, window), b, None, t, t, device="cpu")[:, 0]
    assert torch.equal(dense, flex)
    assert not dense.all() and dense.any()
