"""The output head in chunks (:func:`bcat.model.forward.head_logps`): same values and gradients as in one
piece, with the head trained (checkpointed chunks) or frozen (gradient computed in the forward), and
neither path keeps the ``[K, V]`` logits for the backward."""

from __future__ import annotations

import math
import os
import subprocess
import sys
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


def _plain_logps(head, config, hidden, targets, max_elements=None):
    """The one-piece computation through autograd (no chunks): the reference every path must match."""
    return forward._target_logps(head, config, hidden, targets)


def test_frozen_head_gradient_hand_computed():
    # D = 1, V = 2, W = [[1], [-1]], h = 0: logits (0, 0), p = (1/2, 1/2); target 0:
    # d log p_0 / dh = W^T (e_0 - p) = 1 * (1 - 1/2) + (-1) * (0 - 1/2) = 1.
    head = nn.Linear(1, 2, bias=False).requires_grad_(False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    hidden = torch.zeros(1, 1, requires_grad=True)
    logp = head_logps(head, SimpleNamespace(final_logit_softcapping=None), hidden, torch.tensor([0]))
    (3.0 * logp).sum().backward()
    assert logp.item() == pytest.approx(math.log(0.5))
    assert hidden.grad.item() == pytest.approx(3.0)


@pytest.mark.parametrize("frozen", [False, True])
@pytest.mark.parametrize("cap", [None, 5.0])
def test_chunks_equal_one_piece(cap, frozen):
    torch.manual_seed(0)
    config = SimpleNamespace(final_logit_softcapping=cap)
    head = nn.Linear(8, 50).requires_grad_(not frozen)
    hidden, targets = torch.randn(23, 8), torch.randint(0, 50, (23,))
    weights = torch.linspace(-1, 2, 23)  # uneven weights: each row's gradient counts
    results = []
    for compute, max_elements in ((_plain_logps, None), (head_logps, None), (head_logps, 4 * 50)):
        head.zero_grad()
        h = hidden.clone().requires_grad_()
        logps = compute(head, config, h, targets, max_elements)
        (logps * weights).sum().backward()
        grads = [] if frozen else [head.weight.grad.clone(), head.bias.grad.clone()]
        results.append((logps.detach(), h.grad, *grads))
    for plain, *others in zip(*results):
        for other in others:
            assert torch.allclose(plain, other, atol=1e-6)
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
    head.requires_grad_(False)  # frozen: only the [K, D] gradients are kept, in one piece or in chunks
    for max_elements in (None, 8 * 1000):
        assert _saved_elements(lambda: head_logps(head, config, hidden, targets, max_elements)) <= 64 * 8


def test_head_trained_alone_gets_its_gradient():
    # States that need no gradient (a frozen base) must not hide the gradient of a trained head.
    head = nn.Linear(4, 10)
    logps = head_logps(head, SimpleNamespace(final_logit_softcapping=None), torch.randn(5, 4),
                       torch.randint(0, 10, (5,)), 2 * 10)
    logps.sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("frozen_head", [False, True])
def test_policy_forward_in_chunks_equals_one_piece(tiny_model_dir, monkeypatch, frozen_head):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    if frozen_head:  # as under LoRA (the tiny model ties the head to the input embeddings)
        model.get_output_embeddings().requires_grad_(False)
    policy = PolicyForward(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (3, 17), generator=gen)
    mask = torch.ones_like(ids)
    score = torch.zeros(3, 16, dtype=torch.bool)
    score[:, 5:] = True  # 33 scored positions
    results = []
    # the model's own full logits through autograd; the selective head in one piece; in chunks of 5 positions
    for selective, chunk in ((False, None), (True, None), (True, 5 * model.config.vocab_size)):
        policy.selective_head = selective
        if chunk:
            monkeypatch.setattr(forward, "HEAD_CHUNK_ELEMENTS", chunk)
        model.zero_grad()
        logps = policy(ids, mask, score)["token_logps"]
        logps.sum().backward()
        results.append((logps.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, g_plain), *others = results
    for logps, grads in others:
        assert torch.allclose(plain, logps, atol=1e-5)
        assert g_plain.keys() == grads.keys() and g_plain
        assert max((g_plain[k] - grads[k]).abs().max().item() for k in g_plain) < 1e-5


def test_chunk_size_from_the_environment():
    # How launched processes (accelerate launch) get a chunk size: tests/training/test_fsdp.py relies on it.
    code = "import bcat.model.forward as f; print(f.HEAD_CHUNK_ELEMENTS)"
    env = {**os.environ, "BCAT_HEAD_CHUNK_ELEMENTS": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "12345"
