"""bcat.training.losses against numbers worked out by hand on tiny tensors.

Expected values are written with ``math`` from the arithmetic in the comments, never by calling
the formula under test again.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bcat.model.forward import masked_mean_pool
from bcat.training.losses import (
    anchor_index,
    dpo_loss,
    hidden_alignment_loss,
    log1mexp,
    orpo_loss,
    output_agreement_loss,
    sft_loss,
    token_kl_loss,
)

T, F = True, False


def t(values, **kw) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, **kw)


def approx(x: torch.Tensor, expected: float | list[float], tol: float = 1e-6) -> None:
    torch.testing.assert_close(x.detach().double(), torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------- log1mexp


def test_log1mexp_hand_values():
    # log(1 - e^{-ln 2}) = log(1/2) = -ln 2 ; log(1 - e^{-1}) ; log(1 - e^{-3})
    x = t([-math.log(2.0), -1.0, -3.0])
    approx(log1mexp(x), [-math.log(2.0), math.log(1 - math.exp(-1)), math.log(1 - math.exp(-3))])


def test_log1mexp_stable_from_minus_1e8_to_minus_50():
    xs64 = -torch.logspace(-8, math.log10(50.0), 400, dtype=torch.float64)
    x = xs64.float().requires_grad_(True)
    out = log1mexp(x)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # float64 reference on the same (fp32-rounded) inputs
    ref = torch.tensor([math.log(-math.expm1(v)) for v in x.detach().double().tolist()], dtype=torch.float64)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-7)
    # d/dx log(1 - e^x) = -e^x / (1 - e^x)
    ref_grad = torch.tensor([-math.exp(v) / -math.expm1(v) for v in x.detach().double().tolist()])
    torch.testing.assert_close(x.grad.double(), ref_grad.double(), rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------- SFT


def test_sft_loss_token_mean_and_per_sequence():
    # masked-out positions hold junk (-inf, nan) that must not leak in
    logps = t([[float("-inf"), -2.0, -3.0], [-0.5, float("nan"), -4.0]], requires_grad=True)
    mask = torch.tensor([[F, T, T], [T, F, F]])
    loss, per_seq = sft_loss(logps, mask)
    approx(loss, (2.0 + 3.0 + 0.5) / 3)  # 3 completion tokens in the micro-batch
    approx(per_seq, [(2.0 + 3.0) / 2, 0.5])
    loss.backward()
    # d loss / d logp = -1/3 at completion tokens, 0 elsewhere
    approx(logps.grad, [[0.0, -1 / 3, -1 / 3], [-1 / 3, 0.0, 0.0]])


def test_sft_loss_empty_mask_is_zero():
    loss, per_seq = sft_loss(t([[-1.0, -2.0]]), torch.tensor([[F, F]]))
    approx(loss, 0.0)
    approx(per_seq, [0.0])


# ---------------------------------------------------------------------------------- DPO


def test_dpo_loss_hand_values():
    beta = 0.1
    pc, pr = t([-1.0, -2.0], requires_grad=True), t([-2.0, -1.0])
    rc, rr = t([-1.5, -1.5]), t([-1.5, -1.5])
    losses, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta)
    # pair 0: margin (-1+1.5) - (-2+1.5) = 1  -> -log sigmoid(0.1)  = log(1 + e^{-0.1})
    # pair 1: margin (-2+1.5) - (-1+1.5) = -1 -> -log sigmoid(-0.1) = log(1 + e^{0.1})
    approx(losses, [math.log(1 + math.exp(-0.1)), math.log(1 + math.exp(0.1))])
    approx(chosen_r, [0.05, -0.05])
    approx(rejected_r, [-0.05, 0.05])
    assert not chosen_r.requires_grad and not rejected_r.requires_grad
    assert losses.requires_grad


# TRL 1.16's sigmoid DPO loss is inline in DPOTrainer._compute_loss (it runs the model), so there
# is no standalone callable to compare with; the trainer-level parity test covers it.


# ---------------------------------------------------------------------------------- ORPO


def test_orpo_loss_hand_values():
    # pair 0: p_w = 1/2 (odds 1), p_l = 1/5 (odds 1/4): log_odds = log 4, sigmoid = 4/5
    # pair 1: p_w = 1/4 (odds 1/3), p_l = 3/4 (odds 3):  log_odds = log(1/9), sigmoid = 1/10
    avg_c = t([math.log(0.5), math.log(0.25)])
    avg_r = t([math.log(0.2), math.log(0.75)])
    losses, log_odds = orpo_loss(t(1.2), avg_c, avg_r, lam=0.1)
    approx(log_odds, [math.log(4.0), math.log(1 / 9)], tol=1e-5)
    approx(losses, [1.2 - 0.1 * math.log(0.8), 1.2 - 0.1 * math.log(0.1)], tol=1e-5)


def test_orpo_loss_per_pair_nll_broadcasts():
    avg = t([math.log(0.5), math.log(0.5)])
    losses, log_odds = orpo_loss(t([1.0, 2.0]), avg, avg, lam=0.5)
    # equal odds: log_odds 0, -0.5 * log sigmoid(0) = 0.5 ln 2
    approx(log_odds, [0.0, 0.0])
    approx(losses, [1.0 + 0.5 * math.log(2.0), 2.0 + 0.5 * math.log(2.0)])


def test_orpo_matches_trl_odds_ratio_loss(monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    orpo = pytest.importorskip("trl.experimental.orpo")
    fake_trainer = SimpleNamespace(beta=0.25, accelerator=SimpleNamespace(device=torch.device("cpu")))
    avg_c, avg_r = t([-0.1, -1.3, -2e-6, -7.0]), t([-0.9, -0.4, -3.0, -6.5])
    nll = t(1.7)
    trl_terms, _, _, _, trl_mean_log_odds = orpo.ORPOTrainer.odds_ratio_loss(fake_trainer, avg_c, avg_r)
    trl_total = nll - trl_terms.mean()  # what ORPOTrainer.get_batch_loss_metrics minimises

    losses, log_odds = orpo_loss(nll, avg_c, avg_r, lam=0.25)
    torch.testing.assert_close(losses.mean(), trl_total)
    torch.testing.assert_close(log_odds.mean(), trl_mean_log_odds)


# ---------------------------------------------------------------------------------- pooling


def test_masked_mean_pool():
    hidden = t([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]], [[5.0, 5.0], [7.0, 7.0], [9.0, 9.0]]])
    mask = torch.tensor([[T, T, F], [F, F, F]])
    # row 0: mean of the first two vectors; row 1: empty mask -> zeros, not nan
    approx(masked_mean_pool(hidden, mask), [[2.0, 4.0], [0.0, 0.0]])
    pooled_bf16 = masked_mean_pool(hidden.bfloat16(), mask.long())
    assert pooled_bf16.dtype == torch.float32


# ---------------------------------------------------------------------------------- groups


def test_anchor_index():
    groups = torch.tensor([0, 0, 1, 1, 2, 0])
    anchors = torch.tensor([F, T, F, F, T, F])
    # group 0's anchor is row 1, group 1 has none, group 2 is only its anchor (row 4)
    assert anchor_index(groups, anchors).tolist() == [1, 1, -1, -1, 4, 1]


def test_anchor_index_rejects_two_anchors():
    with pytest.raises(ValueError, match="more than one anchor"):
        anchor_index(torch.tensor([0, 0, 1]), torch.tensor([T, T, F]))


# ---------------------------------------------------------------------------------- hidden alignment

# rows: 0 = variant of g0, 1 = anchor g0, 2 = variant of g0, 3 = variant of g1 (g1 has no anchor)
GROUPS = torch.tensor([0, 0, 0, 1])
ANCHORS = torch.tensor([F, T, F, F])


def test_hidden_cosine():
    pooled = t([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [-5.0, 3.0]])
    # cos([0,1],[1,0]) = 0 -> 1 ; cos([1,1],[1,0]) = 1/sqrt 2 -> 1 - 1/sqrt 2 ; row 3 ignored
    loss = hidden_alignment_loss(pooled, GROUPS, ANCHORS, kind="cosine")
    approx(loss, (1.0 + 1.0 - 1 / math.sqrt(2)) / 2)


def test_hidden_mse():
    pooled = t([[3.0, 2.0], [1.0, 2.0], [0.0, 2.0], [-5.0, 3.0]])
    # ((3-1)^2 + 0)/2 = 2 ; ((0-1)^2 + 0)/2 = 0.5 ; mean 1.25
    approx(hidden_alignment_loss(pooled, GROUPS, ANCHORS, kind="mse"), 1.25)


def test_hidden_infonce_two_groups():
    # anchors listed after a variant on purpose: the code must not assume anchors come first
    groups = torch.tensor([1, 0, 1, 0])
    anchors = torch.tensor([F, T, T, F])
    pooled = t([[2.0, 2.0], [1.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    # row 3 (g0): cos to a0=[1,0] is 1, to a1=[0,1] is 0; tau 0.5 -> logits [2, 0]
    #   -log(e^2 / (e^2 + 1)) = log(1 + e^-2)
    # row 0 (g1): cos to both anchors is 1/sqrt 2 -> equal logits -> log 2
    loss = hidden_alignment_loss(pooled, groups, anchors, kind="infonce", temperature=0.5)
    approx(loss, (math.log(1 + math.exp(-2.0)) + math.log(2.0)) / 2, tol=1e-5)


def test_hidden_infonce_one_group_is_zero():
    pooled = t([[0.3, -1.0], [1.0, 0.0], [2.0, 5.0]], requires_grad=True)
    loss = hidden_alignment_loss(pooled, torch.tensor([0, 0, 0]), torch.tensor([F, T, F]), kind="infonce")
    approx(loss, 0.0)  # softmax over a single anchor = 1, -log 1 = 0


@pytest.mark.parametrize("kind", ["infonce", "cosine", "mse"])
def test_hidden_detach_anchor(kind):
    groups, anchors = torch.tensor([0, 0, 1, 1]), torch.tensor([T, F, F, T])
    base = t([[1.0, 0.2], [0.1, 1.0], [0.7, -0.4], [-0.3, 0.9]])

    pooled = base.clone().requires_grad_(True)
    hidden_alignment_loss(pooled, groups, anchors, kind=kind, detach_anchor=True).backward()
    assert (pooled.grad[anchors] == 0).all() and (pooled.grad[~anchors] != 0).any()

    pooled = base.clone().requires_grad_(True)
    hidden_alignment_loss(pooled, groups, anchors, kind=kind, detach_anchor=False).backward()
    assert (pooled.grad[anchors] != 0).any()


@pytest.mark.parametrize("kind", ["infonce", "cosine", "mse"])
@pytest.mark.parametrize(
    "anchors", [[F, F, F], [T, T, T], [T, F, T]], ids=["no-anchor", "only-anchors", "variant-without-anchor"]
)
def test_hidden_zero_when_nothing_to_align(kind, anchors):
    groups = torch.tensor([0, 1, 2])  # three groups of one sample each: nothing to pair
    pooled = t([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], requires_grad=True)
    loss = hidden_alignment_loss(pooled, groups, torch.tensor(anchors), kind=kind)
    approx(loss, 0.0)
    loss.backward()  # still part of the graph
    assert (pooled.grad == 0).all()


def test_hidden_unknown_kind():
    with pytest.raises(ValueError, match="unknown hidden alignment kind"):
        hidden_alignment_loss(t([[1.0]]), torch.tensor([0]), torch.tensor([T]), kind="l1")


# ---------------------------------------------------------------------------------- output agreement


def test_output_agreement_hand_values_and_detach():
    # g0: anchor 1.0, variants 3.0 and 0.0 -> (2^2 + 1^2)/2 = 2.5 ; row 3 (g1, no anchor) ignored
    scores = t([1.0, 3.0, 0.0, 5.0], requires_grad=True)
    groups, anchors = torch.tensor([0, 0, 0, 1]), torch.tensor([T, F, F, F])
    loss = output_agreement_loss(scores, groups, anchors)
    approx(loss, 2.5)
    loss.backward()
    # d/ds_v (s_v - 1)^2 / 2 = s_v - 1 -> [0 (detached anchor), 2, -1, 0]
    approx(scores.grad, [0.0, 2.0, -1.0, 0.0])

    scores.grad = None
    output_agreement_loss(scores, groups, anchors, detach_anchor=False).backward()
    # anchor now gets -(2) - (-1) = -1
    approx(scores.grad, [-1.0, 2.0, -1.0, 0.0])


def test_output_agreement_zero_convention():
    scores = t([1.0, 2.0], requires_grad=True)
    loss = output_agreement_loss(scores, torch.tensor([0, 1]), torch.tensor([F, F]))
    approx(loss, 0.0)
    loss.backward()
    assert (scores.grad == 0).all()


# ---------------------------------------------------------------------------------- token KL


def test_token_kl_hand_values():
    # position 0: p = [1/2, 1/2], q = [1/4, 3/4] -> 1/2 ln(2) + 1/2 ln(2/3)
    # position 1: identical -> 0 ; mean over T = 2
    anchor = t([[0.5, 0.5], [0.9, 0.1]]).log()
    variant = t([[0.25, 0.75], [0.9, 0.1]]).log()
    expected = (0.5 * math.log(2.0) + 0.5 * math.log(2 / 3)) / 2
    approx(token_kl_loss(anchor, variant), expected, tol=1e-5)


def test_token_kl_zero_anchor_prob_is_finite():
    # p_a = [1, 0]: the 0 entry counts 0 even though log p_a = -inf; KL = 1 * (0 - ln 0.5) = ln 2
    anchor = t([[0.0, float("-inf")]])
    variant = t([[0.5, 0.5]]).log().requires_grad_(True)
    loss = token_kl_loss(anchor, variant)
    approx(loss, math.log(2.0))
    loss.backward()
    assert torch.isfinite(variant.grad).all()


def test_token_kl_detach():
    anchor = t([[0.5, 0.5]]).log().requires_grad_(True)
    variant = t([[0.25, 0.75]]).log().requires_grad_(True)
    token_kl_loss(anchor, variant, detach_anchor=True).backward()
    assert anchor.grad is None and variant.grad is not None

    anchor.grad = variant.grad = None
    token_kl_loss(anchor, variant, detach_anchor=False).backward()
    assert anchor.grad is not None and (anchor.grad != 0).any()
