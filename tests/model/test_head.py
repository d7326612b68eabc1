"""The output head in chunks (:func:`bcat.model.forward.head_logps`): same values and gradients as in one
piece, and the chunked path really does not keep the ``[K, V]`` logits for the backward."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

import bcat.model.forward as forward
from bcat.model.forward import PolicyForward, head_logps


def test_hand_computed():
    # Zero weights, bias [0, ln 3]: p = [1/4, 3/4] at every position, in one piece or one row per chunk.
    head = nn.Linear(4, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    hidden, targets = torch.randn(3, 4), torch.tensor([1, 0, 1])
    want = torch.tensor([math.log(0.75), math.log(0.25), math.log(0.75)])
    config = SimpleNamespace(final_logit_softcapping=None)
    for max_elements in (None, 2):
        assert torch.allclose(head_logps(head, config, hidden, targets, max_elements), want, atol=1e-6)


@pytest.mark.parametrize("cap", [None, 5.0])
def test_chunks_equal_one_piece(cap):
    torch.manual_seed(0)
    config = SimpleNamespace(final_logit_softcapping=cap)
    head = nn.Linear(8, 50)
    hidden, targets = torch.randn(23, 8), torch.randint(0, 50, (23,))
    results = []
    for max_elements in (None, 4 * 50):  # one piece; 4 positions per chunk (6 chunks, the last of 3)
        head.zero_grad()
        h = hidden.clone().requires_grad_()
        logps = head_logps(head, config, h, targets, max_elements)
        (logps * torch.linspace(-1, 2, 23)).sum().backward()  # uneven weights: each row's gradient counts
        results.append((logps.detach(), h.grad, head.weight.grad.clone(), head.bias.grad.clone()))
    for one, chunked in zip(*results):
        assert torch.allclose(one, chunked, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(head_logps(head, config, hidden, targets, 4 * 50), results[0][0], atol=1e-6)


def _saved_elements(fn) -> int:
    """Elements of the tensors autograd keeps for the backward while ``fn`` runs."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


def test_chunked_path_keeps_no_logits():
    config = SimpleNamespace(final_logit_softcapping=None)
    head = nn.Linear(8, 1000)
    hidden = torch.randn(64, 8, requires_grad=True)
    targets = torch.randint(0, 1000, (64,))
    logits = 64 * 1000
    assert _saved_elements(lambda: head_logps(head, config, hidden, targets)) >= logits
    assert _saved_elements(lambda: head_logps(head, config, hidden, targets, 8 * 1000)) < logits / 10


def test_policy_forward_in_chunks_equals_one_piece(tiny_model_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    policy = PolicyForward(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 17), generator=gen)
    mask = torch.ones_like(ids)
    score = torch.zeros(3, 16, dtype=torch.bool)
    score[:, 5:] = True  # 33 scored positions
    results = []
    for chunk in (None, 5 * model.config.vocab_size):
        if chunk:
            monkeypatch.setattr(forward, "HEAD_CHUNK_ELEMENTS", chunk)
        model.zero_grad()
        logps = policy(ids, mask, score)["token_logps"]
        logps.sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (one, g_one), (chunked, g_chunked) = results
    assert torch.allclose(one, chunked, atol=1e-5)
    assert g_one.keys() == g_chunked.keys() and g_one
    assert max((g_one[k] - g_chunked[k]).abs().max().item() for k in g_one) < 1e-5
