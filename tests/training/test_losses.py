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
    dpo_preference_probability,
    fit_standardization,
    hidden_alignment_loss,
    log1mexp,
    orpo_loss,
    orpo_preference_probability,
    output_agreement_loss,
    sft_answer_probability,
    sft_loss,
    standardize,
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


def test_fit_standardization_hand_values():
    pooled = t([[1.0, 10.0, 5.0], [3.0, 10.0, 5.0], [5.0, 10.0, 5.0]])  # dims 1, 2 never vary
    mean, scale = fit_standardization(pooled, "standardize")
    approx(mean, [3.0, 10.0, 5.0])
    # sample std of [1, 3, 5] = 2; constant dims get the floor 1e-6 * mean std = 1e-6 * 2/3
    approx(scale, [2.0, 2e-6 / 3, 2e-6 / 3], tol=1e-9)
    approx(fit_standardization(pooled, "center")[1], [1.0, 1.0, 1.0])
    m, sc = fit_standardization(pooled, "none")
    approx(m, [0.0, 0.0, 0.0]) and approx(sc, [1.0, 1.0, 1.0])
    approx(standardize(pooled, mean, scale)[:, 0], [-1.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="at least 2"):
        fit_standardization(pooled[:1])


def test_hidden_cosine_on_standardised_states_hand_values():
    # mean [1, 1], scale [2, 0.5]: anchor [3, 1] -> z [1, 0]; variant [1, 1.5] -> z [0, 1] (cos 0 -> loss 1);
    # variant [5, 1] -> z [2, 0] (cos 1 -> loss 0); mean over the two variants 0.5
    pooled = t([[3.0, 1.0], [1.0, 1.5], [5.0, 1.0]])
    groups, anchors = torch.tensor([0, 0, 0]), torch.tensor([T, F, F])
    loss = hidden_alignment_loss(pooled, groups, anchors, kind="cosine", mean=t([1.0, 1.0]), scale=t([2.0, 0.5]))
    approx(loss, 0.5)
    approx(hidden_alignment_loss(pooled, groups, anchors, kind="cosine", mean=t([1.0, 1.0]), scale=t([2.0, 0.5]),
                                 reduction="sum"), 1.0)


def _offset_states(offset: float, seed: int = 0):
    """Two items in four languages: item content + language noise + one huge common dimension
    (a massive activation) + small shared values elsewhere, like a decoder's pooled states."""
    gen = torch.Generator().manual_seed(seed)
    dim, items, langs = 32, 6, 4
    content = torch.randn(items, dim, generator=gen)
    noise = 0.6 * torch.randn(items, langs, dim, generator=gen)
    states = content[:, None, :] + noise
    states[..., 0] += offset  # the massive dimension
    states[..., 1:] += 3.0
    states = states.reshape(items * langs, dim)
    groups = torch.arange(items).repeat_interleave(langs)
    anchors = torch.tensor([lang == 0 for _ in range(items) for lang in range(langs)])
    return states, groups, anchors


def _parallel_minus_nonparallel(z, groups, anchors):
    zn = torch.nn.functional.normalize(z, dim=-1)
    sims = zn[~anchors] @ zn[anchors].T
    own = groups[~anchors][:, None] == groups[anchors][None, :]
    return (sims[own].mean() - sims[~own].mean()).item()


@pytest.mark.parametrize("offset", [0.0, 5000.0])
def test_standardised_term_separates_parallel_from_non_parallel_despite_a_common_offset(offset):
    states, groups, anchors = _offset_states(offset)
    mean, scale = fit_standardization(states)
    z = standardize(states, mean, scale)
    # raw cosines see nothing once the offset is large; standardised ones always separate the items
    assert _parallel_minus_nonparallel(z, groups, anchors) > 0.5
    if offset:
        assert _parallel_minus_nonparallel(states, groups, anchors) < 1e-3
    # the term itself: the parallel assignment costs far less than a non-parallel one (another item's anchor)
    shuffled = torch.roll(groups.view(-1, 4), 1, dims=0).flatten()  # each item's variants paired with the next anchor
    wrong = torch.where(anchors, groups, shuffled)
    for kind in ("cosine", "infonce"):
        right = hidden_alignment_loss(states, groups, anchors, kind=kind, mean=mean, scale=scale)
        other = hidden_alignment_loss(states, wrong, anchors, kind=kind, mean=mean, scale=scale)
        assert other - right > 0.5, kind
    raw_right = hidden_alignment_loss(states, groups, anchors, kind="cosine")
    raw_wrong = hidden_alignment_loss(states, wrong, anchors, kind="cosine")
    if offset:
        assert raw_wrong - raw_right < 1e-4  # the raw term can hardly tell them apart: inert


def test_standardised_term_gradient_acts_despite_a_common_offset():
    states, groups, anchors = _offset_states(5000.0)
    mean, scale = fit_standardization(states)
    raw = states.clone().requires_grad_(True)
    hidden_alignment_loss(raw, groups, anchors, kind="cosine").backward()
    std = states.clone().requires_grad_(True)
    hidden_alignment_loss(std, groups, anchors, kind="cosine", mean=mean, scale=scale).backward()
    # per unit of the states' own spread, the standardised gradient is orders of magnitude larger
    spread = states.std(0)
    assert (std.grad * spread).norm() > 100 * (raw.grad * spread).norm()


def test_hidden_unknown_kind():
    with pytest.raises(ValueError, match="unknown hidden alignment kind"):
        hidden_alignment_loss(t([[1.0]]), torch.tensor([0]), torch.tensor([T]), kind="l1")


# ---------------------------------------------------------------------------------- output agreement


def test_output_agreement_pulls_only_up_hand_values():
    # g0: anchor p = 0.8; variant 0.5 is below it (0.3^2 = 0.09), variant 0.9 is above it (0);
    # row 3 (g1, no anchor) ignored -> mean over the 2 anchored variants = 0.045
    probs = t([0.8, 0.5, 0.9, 0.1], requires_grad=True)
    groups, anchors = torch.tensor([0, 0, 0, 1]), torch.tensor([T, F, F, F])
    loss = output_agreement_loss(probs, groups, anchors)
    approx(loss, (0.3 ** 2 + 0.0) / 2)
    loss.backward()
    # d/dp_v relu(0.8 - p_v)^2 / 2 = -(0.8 - p_v) -> [0 (detached anchor), -0.3, 0 (above its anchor), 0]
    approx(probs.grad, [0.0, -0.3, 0.0, 0.0])

    probs.grad = None
    output_agreement_loss(probs, groups, anchors, detach_anchor=False).backward()
    approx(probs.grad, [0.3, -0.3, 0.0, 0.0])  # the anchor would be pushed down: why it is detached by default


def test_output_agreement_variant_better_than_anchor_is_zero_loss_and_zero_gradient():
    probs = t([0.4, 0.7, 0.4], requires_grad=True)  # anchor 0.4; variants 0.7 (better) and 0.4 (equal)
    loss = output_agreement_loss(probs, torch.tensor([0, 0, 0]), torch.tensor([T, F, F]), detach_anchor=False)
    approx(loss, 0.0)
    loss.backward()
    assert (probs.grad == 0).all()


def test_output_agreement_bounded_and_sum_reduction():
    # worst case: anchor certain, variant hopeless -> exactly 1
    probs = t([1.0, 0.0, 1.0, 0.25])
    groups, anchors = torch.tensor([0, 0, 1, 1]), torch.tensor([T, F, T, F])
    approx(output_agreement_loss(probs, groups, anchors), (1.0 + 0.75 ** 2) / 2)
    approx(output_agreement_loss(probs, groups, anchors, reduction="sum"), 1.0 + 0.75 ** 2)


def test_output_agreement_zero_convention():
    probs = t([0.1, 0.2], requires_grad=True)
    loss = output_agreement_loss(probs, torch.tensor([0, 1]), torch.tensor([F, F]))
    approx(loss, 0.0)
    loss.backward()
    assert (probs.grad == 0).all()


def test_agreement_probabilities_hand_values():
    # DPO: beta 0.5, log-ratios chosen 1.0, rejected -1.0 -> sigma(0.5 * 2) = sigma(1)
    approx(dpo_preference_probability(t([1.0]), t([-1.0]), beta=0.5), [1 / (1 + math.exp(-1.0))])
    # ORPO: log-odds log 4 -> odds 4 -> 4/5
    approx(orpo_preference_probability(t([math.log(4.0)])), [0.8], tol=1e-6)
    # SFT: token log-probs log 0.5 and log 0.125 -> geometric mean sqrt(1/16) = 0.25
    approx(sft_answer_probability(t([(math.log(0.5) + math.log(0.125)) / 2])), [0.25])


def test_sft_probability_does_not_penalise_length():
    # the same per-token probability 0.6 over 2 tokens (English) and over 6 tokens (Thai) -> equal
    en, th = t([math.log(0.6)] * 2).mean(), t([math.log(0.6)] * 6).mean()
    approx(sft_answer_probability(th) - sft_answer_probability(en), 0.0)
    probs = torch.stack([sft_answer_probability(en), sft_answer_probability(th)])
    approx(output_agreement_loss(probs, torch.tensor([0, 0]), torch.tensor([T, F])), 0.0)


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


# ---------------------------------------------------------------------------------- alignment_terms (for other trainers)


def test_alignment_terms_hand_values_and_normalisation():
    from bcat.config import AlignmentConfig
    from bcat.training.objectives import alignment_terms

    cfg = AlignmentConfig(hidden_weight=0.5, output_weight=2.0, hidden_loss="cosine")
    pooled = t([[[3.0, 1.0], [1.0, 1.5], [5.0, 1.0]]])  # one layer; as in test_hidden_cosine_on_standardised...
    probs = t([0.8, 0.5, 0.9])  # anchor 0.8: variant 0.5 -> 0.09, variant 0.9 -> 0
    groups, anchors = torch.tensor([0, 0, 0]), torch.tensor([T, F, F])
    stats = (t([[1.0, 1.0]]), t([[2.0, 0.5]]))
    total, terms = alignment_terms(pooled, probs, groups, anchors, cfg, stats)
    approx(terms["hidden"], 0.5)
    approx(terms["output"], 0.09 / 2)
    approx(total, 0.5 * 0.5 + 2.0 * 0.045)
    # normalised by the variants of a whole step (here 4, of which these 2): sums / 4
    _, step_terms = alignment_terms(pooled, probs, groups, anchors, cfg, stats, counts={"variants": 4})
    approx(step_terms["hidden"], 1.0 / 4)
    approx(step_terms["output"], 0.09 / 4)
    with pytest.raises(ValueError, match="needs the \\(mean, scale\\) statistics"):
        alignment_terms(pooled, probs, groups, anchors, cfg)
    raw = AlignmentConfig(hidden_weight=0.5, output_weight=0.0, hidden_loss="cosine", hidden_standardize="none")
    total, terms = alignment_terms(pooled, probs, groups, anchors, raw)
    assert set(terms) == {"hidden"}
