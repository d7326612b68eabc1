"""Loss functions for bcat: pure tensor-in, tensor-out maths, no model calls.

Two families live here:

* the training objectives (SFT, DPO, ORPO), written to match TRL's conventions so a bcat run
  without alignment terms reproduces a TRL run;
* the cross-lingual alignment terms, computed inside one micro-batch that holds parallel
  *groups*: the same item in English (the anchor) and in other languages (the variants).
  Every sample carries ``group_index`` (samples of one item share it) and ``is_anchor``.
  Each variant is pulled toward its own group's anchor; the anchor is detached by default so
  English does not drift toward the other languages. The hidden term compares STANDARDISED
  pooled states (:func:`hidden_alignment_loss` says why); the output term compares
  probabilities and only pulls a variant up (:func:`output_agreement_loss`).

Terms that average over tokens, pairs or variants take ``reduction="sum"`` so that a caller can
divide by the count of a whole optimizer step (every micro-batch, every rank) instead of
averaging micro-batch means.

Log-probabilities are natural logs. All functions work in whatever dtype they get; bcat uses fp32.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from bcat.config import HIDDEN_LOSSES as HIDDEN_KINDS
from bcat.config import HIDDEN_STANDARDIZATIONS as STANDARDIZATIONS

__all__ = [
    "HIDDEN_KINDS",
    "STANDARDIZATIONS",
    "anchor_index",
    "dpo_loss",
    "dpo_preference_probability",
    "fit_standardization",
    "hidden_alignment_loss",
    "log1mexp",
    "orpo_loss",
    "orpo_preference_probability",
    "output_agreement_loss",
    "sft_answer_probability",
    "sft_loss",
    "standardize",
    "token_kl_loss",
]

_LN2 = math.log(2.0)


# --------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------


def log1mexp(x: Tensor) -> Tensor:
    r"""``log(1 - exp(x))`` for ``x < 0``, accurate over the whole range.

    .. math:: \mathrm{log1mexp}(x) = \begin{cases} \log(-\mathrm{expm1}(x)) & x > -\ln 2 \\
              \mathrm{log1p}(-\exp(x)) & x \le -\ln 2 \end{cases}

    Near 0, ``1 - exp(x)`` cancels catastrophically, so ``expm1`` is used; far below 0,
    ``exp(x)`` is tiny and ``log1p`` keeps it (Maechler 2012). Same split as TRL's ORPO.

    Each branch is evaluated only on inputs clamped into its own safe range: with a plain
    ``torch.where`` the discarded branch can be ``-inf`` (``log1p(-1)`` when ``exp(x)`` rounds to
    1) and its gradient ``0 * inf = nan`` would poison the result's gradient.

    Args:
        x: any shape, values < 0 (``x = 0`` gives ``-inf``).

    Returns:
        Tensor of the same shape.
    """
    cut = torch.full_like(x, -_LN2)
    near_zero = x > cut
    x_near = torch.where(near_zero, x, cut)  # in (-ln2, 0): expm1 branch
    x_far = torch.where(near_zero, cut, x)  # in (-inf, -ln2]: log1p branch
    return torch.where(near_zero, torch.log(-torch.expm1(x_near)), torch.log1p(-torch.exp(x_far)))


def sft_loss(token_logps: Tensor, mask: Tensor, reduction: str = "mean") -> tuple[Tensor, Tensor]:
    r"""Completion-only token-level negative log-likelihood.

    .. math:: L = -\frac{\sum_{b,t} m_{bt} \log p_{bt}}{\sum_{b,t} m_{bt}}, \qquad
              \mathrm{nll}_b = -\frac{\sum_t m_{bt} \log p_{bt}}{\sum_t m_{bt}}

    The scalar is a mean over all completion tokens of the micro-batch (like Hugging Face's
    causal-LM loss), so long answers weigh more than short ones; ``reduction="sum"`` returns the
    numerator alone, for a caller that divides by the token count of several micro-batches (the
    global token mean of :func:`bcat.training.objectives.compute_loss`). Positions outside the
    mask are ignored even if they hold ``-inf`` or ``nan``.

    Args:
        token_logps: ``[B, T]`` log-probability of each label token.
        mask: ``[B, T]`` bool (or 0/1), true at completion tokens.
        reduction: ``"mean"`` over the masked tokens, or ``"sum"``.

    Returns:
        ``(loss, per_sequence_nll)``: a scalar and ``[B]``. A sequence with an empty mask gets 0.
    """
    mask = mask.bool()
    masked = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    counts = mask.sum(dim=-1)
    per_seq = -masked.sum(dim=-1) / counts.clamp_min(1)
    total = -masked.sum()
    if reduction not in ("mean", "sum"):
        raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    loss = total if reduction == "sum" else total / counts.sum().clamp_min(1)
    return loss, per_seq


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    beta: float,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Sigmoid DPO loss (Rafailov et al. 2023), TRL's ``loss_type="sigmoid"``.

    .. math:: L_i = -\log\sigma\big(\beta[(\pi^w_i - r^w_i) - (\pi^l_i - r^l_i)]\big)

    where :math:`\pi^w, \pi^l` are the policy's and :math:`r^w, r^l` the reference's log-probs of
    the chosen (w) and rejected (l) completions, each SUMMED over completion tokens.

    Args:
        policy_chosen, policy_rejected, ref_chosen, ref_rejected: ``[N]`` summed log-probs.
        beta: inverse temperature of the implicit reward (TRL's default 0.1).

    Returns:
        ``(losses, chosen_rewards, rejected_rewards)``, all ``[N]``; the rewards
        :math:`\beta(\pi^w - r^w)` and :math:`\beta(\pi^l - r^l)` are detached (for logging and
        for the output-agreement margin).
    """
    chosen_logratios = policy_chosen - ref_chosen
    rejected_logratios = policy_rejected - ref_rejected
    losses = -F.logsigmoid(beta * (chosen_logratios - rejected_logratios))
    return losses, (beta * chosen_logratios).detach(), (beta * rejected_logratios).detach()


def orpo_loss(chosen_nll: Tensor, avg_chosen: Tensor, avg_rejected: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    r"""Odds-ratio preference optimisation (Hong et al. 2024), TRL's convention.

    .. math:: \mathrm{log\_odds}_i = (\ell^w_i - \ell^l_i) - (\mathrm{log1mexp}(\ell^w_i)
              - \mathrm{log1mexp}(\ell^l_i)), \qquad
              L_i = \mathrm{NLL}^w_i - \lambda \log\sigma(\mathrm{log\_odds}_i)

    with :math:`\ell^w, \ell^l` the AVERAGE per-token completion log-probs, so that
    :math:`\mathrm{log\_odds} = \log\frac{p_w/(1-p_w)}{p_l/(1-p_l)}`. The odds-ratio term is
    minimised by raising ``log_odds``, so the sign is ``- lambda * logsigmoid``. TRL's
    ``odds_ratio_loss`` returns ``beta * logsigmoid(log_odds)`` (its ``beta`` is this ``lambda``)
    and the trainer takes ``nll - losses.mean()``; ``orpo_loss(...).mean()`` equals that when
    ``chosen_nll`` is TRL's scalar NLL. Whether that NLL covers the prompt too (TRL) or only the
    completion (LLaMA-Factory) is the caller's choice.

    Args:
        chosen_nll: scalar or ``[N]`` NLL of the chosen answer (broadcast over pairs).
        avg_chosen, avg_rejected: ``[N]`` average per-token log-probs, ``< 0``.
        lam: weight of the odds-ratio term (TRL's default 0.1).

    Returns:
        ``(losses, log_odds)``, both ``[N]``.
    """
    log_odds = (avg_chosen - avg_rejected) - (log1mexp(avg_chosen) - log1mexp(avg_rejected))
    losses = chosen_nll - lam * F.logsigmoid(log_odds)
    return losses, log_odds


# --------------------------------------------------------------------------------------------
# Cross-lingual alignment
# --------------------------------------------------------------------------------------------


def anchor_index(group_index: Tensor, is_anchor: Tensor) -> Tensor:
    """Row of each sample's group anchor, or -1 when its group has none.

    An anchor maps to its own row:

    >>> anchor_index(torch.tensor([0, 0, 1, 2]), torch.tensor([False, True, False, True])).tolist()
    [1, 1, -1, 3]

    Args:
        group_index: ``[N]`` long, values ``0..G-1``.
        is_anchor: ``[N]`` bool, at most one true per group.

    Returns:
        ``[N]`` long.

    Raises:
        ValueError: a group has more than one anchor (the batch sampler is broken).
    """
    group_index = group_index.long()
    is_anchor = is_anchor.bool()
    if group_index.numel() == 0:
        return group_index.clone()
    num_groups = int(group_index.max()) + 1
    anchors_per_group = torch.bincount(group_index[is_anchor], minlength=num_groups)
    if bool((anchors_per_group > 1).any()):
        bad = torch.nonzero(anchors_per_group > 1).flatten().tolist()
        raise ValueError(f"groups {bad} have more than one anchor")
    rows = torch.arange(group_index.numel(), device=group_index.device)
    row_of_group = torch.full((num_groups,), -1, dtype=torch.long, device=group_index.device)
    row_of_group[group_index[is_anchor]] = rows[is_anchor]
    return row_of_group[group_index]


def _variant_anchor_pairs(group_index: Tensor, is_anchor: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of the variants that have an anchor, and the row of that anchor (both ``[M]``)."""
    anchors = anchor_index(group_index, is_anchor)
    variants = torch.nonzero(~is_anchor.bool() & (anchors >= 0)).flatten()
    return variants, anchors[variants]


def fit_standardization(pooled: Tensor, kind: str = "standardize") -> tuple[Tensor, Tensor]:
    r"""Per-dimension centre and scale of pooled hidden states, for :func:`standardize`.

    .. math:: \mu_d = \frac{1}{n}\sum_i h_{id}, \qquad
              \sigma_d = \max\Big(\sqrt{\tfrac{1}{n-1}\textstyle\sum_i (h_{id} - \mu_d)^2},\;
              10^{-6}\,\overline{\sigma}\Big)

    ``kind``: ``"standardize"`` (:math:`\mu, \sigma`), ``"center"`` (:math:`\mu, 1`) or ``"none"``
    (:math:`0, 1`). The floor (a millionth of the mean :math:`\sigma`) only keeps a dimension that
    never varies in the sample from dividing by zero.

    Args:
        pooled: ``[..., n, D]`` pooled states of a sample of records (e.g. ``[layers, n, D]``), n >= 2.
        kind: one of :data:`STANDARDIZATIONS`.

    Returns:
        ``(mean, scale)``, each ``[..., D]``, fp32 and detached.
    """
    if kind not in STANDARDIZATIONS:
        raise ValueError(f"unknown standardization {kind!r}; use one of {STANDARDIZATIONS}")
    pooled = pooled.detach().float()
    if pooled.shape[-2] < 2:
        raise ValueError(f"fitting a standardization needs at least 2 pooled states, got {pooled.shape[-2]}")
    mean = pooled.mean(dim=-2)
    ones = torch.ones_like(mean)
    if kind == "none":
        return torch.zeros_like(mean), ones
    if kind == "center":
        return mean, ones
    std = pooled.std(dim=-2)
    return mean, torch.maximum(std, 1e-6 * std.mean(dim=-1, keepdim=True))


def standardize(pooled: Tensor, mean: Optional[Tensor] = None, scale: Optional[Tensor] = None) -> Tensor:
    r""":math:`z = (h - \mu) \oslash \sigma`, per dimension (``None`` skips that step).

    >>> standardize(torch.tensor([[3.0, 10.0]]), torch.tensor([1.0, 10.0]), torch.tensor([2.0, 5.0])).tolist()
    [[1.0, 0.0]]
    """
    if mean is not None:
        pooled = pooled - mean
    if scale is not None:
        pooled = pooled / scale
    return pooled


def hidden_alignment_loss(
    pooled: Tensor,
    group_index: Tensor,
    is_anchor: Tensor,
    kind: str = "cosine",
    temperature: float = 0.1,
    detach_anchor: bool = True,
    mean: Optional[Tensor] = None,
    scale: Optional[Tensor] = None,
    reduction: str = "mean",
) -> Tensor:
    r"""Pull each variant's pooled hidden state toward its group's English anchor, in standardised
    coordinates.

    Every pooled state is first standardised per dimension with statistics fitted once on the
    initial model (:func:`fit_standardization`, :func:`standardize`):

    .. math:: z_i = (h_i - \mu) \oslash \sigma

    Then, for every variant :math:`v` of group :math:`g` with anchor :math:`a_g` (its :math:`z`
    detached when ``detach_anchor``):

    * ``"cosine"``:  :math:`\ell_v = 1 - \cos(z_v, z_{a_g})`
    * ``"mse"``:     :math:`\ell_v = \frac{1}{D}\lVert z_v - z_{a_g} \rVert^2`
    * ``"infonce"``: :math:`\ell_v = -\log \frac{\exp(\cos(z_v, z_{a_g})/\tau)}{\sum_j \exp(\cos(z_v, z_{a_j})/\tau)}`
      over all anchors :math:`a_j` of the micro-batch; the other groups' anchors are the
      negatives (as in Mid-align / AlignX). With a single group this is exactly 0.

    and :math:`L = \frac{1}{M}\sum_v \ell_v` over the M variants that have an anchor
    (``reduction="sum"`` returns :math:`\sum_v \ell_v`, for a caller that normalises over several
    micro-batches). Anchors themselves and variants whose group has no anchor contribute nothing.

    Why standardise. Pooled states of a decoder share a huge common component: a few "rogue"
    dimensions (Gemma's massive activations) carry most of the vector's norm and are nearly
    constant across inputs, so the raw cosine of ANY two inputs is close to 1 (Timkey & van
    Schijndel 2021, "All bark and no bite: rogue dimensions in transformer language models
    obscure representational quality", who fix it the same way). A translation and another item's
    translation then have nearly the same raw cosine, so a raw cosine term is ~0 with a negligible
    gradient, and InfoNCE logits barely differ. Centring (subtracting :math:`\mu`) removes the
    offset but leaves the dimensions that VARY most dominating the angle; dividing by
    :math:`\sigma` gives every dimension equal weight. ``bcat diagnose`` measures the three
    choices on any model and data (evidence for the built-in model:
    ``bench/results/diagnose-gemma3-270m-dev.json``). The statistics are fitted ONCE (not a
    running mean): the term is then a fixed function of the states, identical on every rank and after a resume, and the
    normalisation cannot drift along with the states it normalises. The price: if fine-tuning
    moves the common component far, the statistics go stale (``bcat diagnose --model RUN_DIR``
    on the trained model shows it). Pass ``mean=None, scale=None`` for the raw states.

    Args:
        pooled: ``[N, D]``, one vector per sample (e.g. from :func:`bcat.model.forward.masked_mean_pool`).
        group_index: ``[N]`` long.
        is_anchor: ``[N]`` bool.
        kind: ``"cosine"``, ``"mse"`` or ``"infonce"``.
        temperature: InfoNCE temperature :math:`\tau`.
        detach_anchor: stop the gradient into the anchors (English does not move).
        mean, scale: ``[D]`` from :func:`fit_standardization` (or ``None``).
        reduction: ``"mean"`` over the variants, or ``"sum"``.

    Returns:
        Scalar. ``0.0`` still connected to ``pooled`` when no variant has an anchor, so callers
        can always add it and call ``backward``.
    """
    if kind not in HIDDEN_KINDS:
        raise ValueError(f"unknown hidden alignment kind {kind!r}; use 'infonce', 'cosine' or 'mse'")
    variants, anchors = _variant_anchor_pairs(group_index, is_anchor)
    if variants.numel() == 0:
        return pooled.sum() * 0.0
    z = standardize(pooled, mean, scale)
    targets = z.detach() if detach_anchor else z
    v = z[variants]  # [M, D]

    if kind == "cosine":
        per_variant = 1.0 - F.cosine_similarity(v, targets[anchors], dim=-1)
    elif kind == "mse":
        per_variant = (v - targets[anchors]).pow(2).mean(dim=-1)
    else:
        is_anchor = is_anchor.bool()
        all_anchors = targets[is_anchor]  # [K, D], in row order
        # position of each anchor row within all_anchors: the class label for the cross-entropy
        position = torch.cumsum(is_anchor.long(), dim=0) - 1
        logits = F.normalize(v, dim=-1) @ F.normalize(all_anchors, dim=-1).T / temperature  # [M, K]
        per_variant = F.cross_entropy(logits, position[anchors], reduction="none")
    return _reduce(per_variant, reduction)


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    raise ValueError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")


# Output agreement: every objective's own preference or likelihood, as a probability.


def dpo_preference_probability(chosen_logratio: Tensor, rejected_logratio: Tensor, beta: float) -> Tensor:
    r"""DPO's implicit preference probability :math:`p = \sigma(\beta[(\pi^w - r^w) - (\pi^l - r^l)])`.

    The Bradley-Terry probability that the chosen answer beats the rejected one under the implicit
    reward; the DPO loss is :math:`-\log p`. Arguments are the summed log-ratios
    :math:`\pi - r` of policy and reference, ``[N]``.
    """
    return torch.sigmoid(beta * (chosen_logratio - rejected_logratio))


def orpo_preference_probability(log_odds: Tensor) -> Tensor:
    r"""ORPO's odds-ratio probability :math:`p = \sigma(\mathrm{log\_odds})`; the odds-ratio term is
    :math:`-\log p` (:func:`orpo_loss`)."""
    return torch.sigmoid(log_odds)


def sft_answer_probability(mean_logp: Tensor) -> Tensor:
    r"""Per-token geometric-mean probability of the answer, :math:`p = \exp(\frac{1}{T}\sum_t \log p_t)`.

    A mean over tokens, not a product, so an answer that needs more tokens in one script (Thai
    against its English anchor) is not scored lower for its length alone.
    """
    return torch.exp(mean_logp)


def output_agreement_loss(
    probs: Tensor,
    group_index: Tensor,
    is_anchor: Tensor,
    detach_anchor: bool = True,
    reduction: str = "mean",
) -> Tensor:
    r"""Pull each translation's output probability UP to its English anchor's, never down.

    .. math:: L = \frac{1}{M}\sum_{v} \mathrm{relu}\big(\mathrm{sg}(p_{a(v)}) - p_v\big)^2

    over the M variants that have an anchor (``reduction="sum"``: the sum). ``p`` is one
    probability per sample, the objective's own measure of how well the model does on it:
    DPO's implicit preference probability :math:`\sigma(\beta\,\text{margin})`
    (:func:`dpo_preference_probability`), ORPO's :math:`\sigma(\text{log-odds})`
    (:func:`orpo_preference_probability`), SFT's per-token geometric-mean answer probability
    (:func:`sft_answer_probability`). ``sg`` (stop-gradient) applies when ``detach_anchor``.

    Why this form:

    * one-sided: a translation the model already handles at least as well as English gets zero
      loss and zero gradient (a squared difference would push it DOWN to English);
    * bounded: probabilities lie in [0, 1], so the term lies in [0, 1] whatever the objective,
      and a runaway margin or log-odds cannot swamp the main loss;
    * comparable across scripts: each probability is per answer or per token, not a sum over a
      tokenisation-dependent number of tokens;
    * smooth: the squared hinge has a continuous gradient :math:`-2(p_a - p_v)` that fades as the
      variant reaches its anchor.

    It is the output-side counterpart of the hidden alignment, close to DCO's consistency of
    reward margins across parallel prompts (``Betswish/ConsistencyRL``), made one-sided toward
    the anchor. With ``detach_anchor=False`` the anchor also receives :math:`+2(p_a - p_v)`, i.e.
    English is pushed DOWN toward a worse translation; rarely wanted.

    Args:
        probs: ``[N]`` in [0, 1].
        group_index: ``[N]`` long.
        is_anchor: ``[N]`` bool.
        detach_anchor: stop the gradient into the anchors' probabilities.
        reduction: ``"mean"`` over the variants, or ``"sum"``.

    Returns:
        Scalar; ``0.0`` connected to ``probs`` when no variant has an anchor.
    """
    variants, anchors = _variant_anchor_pairs(group_index, is_anchor)
    if variants.numel() == 0:
        return probs.sum() * 0.0
    targets = probs.detach() if detach_anchor else probs
    return _reduce(F.relu(targets[anchors] - probs[variants]).pow(2), reduction)


def token_kl_loss(anchor_logps: Tensor, variant_logps: Tensor, detach_anchor: bool = True) -> Tensor:
    r"""Mean per-token KL from the anchor's next-token distribution to the variant's.

    .. math:: L = \frac{1}{T}\sum_{t} \sum_{k} p^a_{tk} (\log p^a_{tk} - \log p^v_{tk})

    Only meaningful when the anchor and the variant have the same completion token ids (a
    language-neutral answer such as "24" or "XR-200"), so the T positions are aligned.
    Forward KL (anchor first) makes the variant cover every token the English anchor considers.
    Entries with :math:`p^a = 0` count 0 (not ``nan``).

    Args:
        anchor_logps: ``[T, V]`` log-softmax of the anchor at its completion positions.
        variant_logps: ``[T, V]`` the same for the variant.
        detach_anchor: stop the gradient into the anchor's distribution.

    Returns:
        Scalar; ``0.0`` when T = 0.
    """
    if detach_anchor:
        anchor_logps = anchor_logps.detach()
    p_anchor = anchor_logps.exp()
    terms = torch.where(p_anchor > 0, p_anchor * (anchor_logps - variant_logps), torch.zeros_like(p_anchor))
    return terms.sum() / max(anchor_logps.shape[0], 1)
