"""Loss functions for bcat: pure tensor-in, tensor-out maths, no model calls.

Two families live here:

* the training objectives (SFT, DPO, ORPO), written to match TRL's conventions so a bcat run
  without alignment terms reproduces a TRL run;
* the cross-lingual alignment terms, computed inside one micro-batch that holds parallel
  *groups*: the same item in English (the anchor) and in other languages (the variants).
  Every sample carries ``group_index`` (samples of one item share it) and ``is_anchor``.
  Each variant is pulled toward its own group's anchor; the anchor is detached by default so
  English does not drift toward the other languages.

Log-probabilities are natural logs. All functions work in whatever dtype they get; bcat uses fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "anchor_index",
    "dpo_loss",
    "hidden_alignment_loss",
    "log1mexp",
    "orpo_loss",
    "output_agreement_loss",
    "sft_loss",
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


def sft_loss(token_logps: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    r"""Completion-only token-level negative log-likelihood.

    .. math:: L = -\frac{\sum_{b,t} m_{bt} \log p_{bt}}{\sum_{b,t} m_{bt}}, \qquad
              \mathrm{nll}_b = -\frac{\sum_t m_{bt} \log p_{bt}}{\sum_t m_{bt}}

    The scalar is a mean over all completion tokens of the micro-batch (like Hugging Face's
    causal-LM loss), so long answers weigh more than short ones. Positions outside the mask are
    ignored even if they hold ``-inf`` or ``nan``.

    Args:
        token_logps: ``[B, T]`` log-probability of each label token.
        mask: ``[B, T]`` bool (or 0/1), true at completion tokens.

    Returns:
        ``(loss, per_sequence_nll)``: a scalar and ``[B]``. A sequence with an empty mask gets 0.
    """
    mask = mask.bool()
    masked = torch.where(mask, token_logps, torch.zeros_like(token_logps))
    counts = mask.sum(dim=-1)
    per_seq = -masked.sum(dim=-1) / counts.clamp_min(1)
    loss = -masked.sum() / counts.sum().clamp_min(1)
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


def hidden_alignment_loss(
    pooled: Tensor,
    group_index: Tensor,
    is_anchor: Tensor,
    kind: str = "infonce",
    temperature: float = 0.1,
    detach_anchor: bool = True,
) -> Tensor:
    r"""Pull each variant's pooled hidden state toward its group's English anchor.

    For every variant :math:`v` of group :math:`g` with anchor :math:`a_g` (detached when
    ``detach_anchor``), averaged over those variants:

    * ``"cosine"``:  :math:`1 - \cos(v, a_g)`
    * ``"mse"``:     :math:`\frac{1}{D}\lVert v - a_g \rVert^2`
    * ``"infonce"``: :math:`-\log \frac{\exp(\cos(v, a_g)/\tau)}{\sum_j \exp(\cos(v, a_j)/\tau)}`
      over all anchors :math:`a_j` of the micro-batch; the other groups' anchors are the
      negatives (as in Mid-align / AlignX). With a single group this is exactly 0.

    Anchors themselves and variants whose group has no anchor contribute nothing.

    Args:
        pooled: ``[N, D]``, one vector per sample (e.g. from :func:`bcat.model.forward.masked_mean_pool`).
        group_index: ``[N]`` long.
        is_anchor: ``[N]`` bool.
        kind: ``"infonce"``, ``"cosine"`` or ``"mse"``.
        temperature: InfoNCE temperature :math:`\tau`.
        detach_anchor: stop the gradient into the anchors (English does not move).

    Returns:
        Scalar. ``0.0`` still connected to ``pooled`` when no variant has an anchor, so callers
        can always add it and call ``backward``.
    """
    if kind not in ("infonce", "cosine", "mse"):
        raise ValueError(f"unknown hidden alignment kind {kind!r}; use 'infonce', 'cosine' or 'mse'")
    variants, anchors = _variant_anchor_pairs(group_index, is_anchor)
    if variants.numel() == 0:
        return pooled.sum() * 0.0
    targets = pooled.detach() if detach_anchor else pooled
    v = pooled[variants]  # [M, D]

    if kind == "cosine":
        return (1.0 - F.cosine_similarity(v, targets[anchors], dim=-1)).mean()
    if kind == "mse":
        return (v - targets[anchors]).pow(2).mean(dim=-1).mean()

    is_anchor = is_anchor.bool()
    all_anchors = targets[is_anchor]  # [K, D], in row order
    # position of each anchor row within all_anchors: the class label for the cross-entropy
    position = torch.cumsum(is_anchor.long(), dim=0) - 1
    logits = F.normalize(v, dim=-1) @ F.normalize(all_anchors, dim=-1).T / temperature  # [M, K]
    return F.cross_entropy(logits, position[anchors])


def output_agreement_loss(
    scores: Tensor,
    group_index: Tensor,
    is_anchor: Tensor,
    detach_anchor: bool = True,
) -> Tensor:
    r"""Make each translation's output preference agree with its English anchor's.

    .. math:: L = \frac{1}{M}\sum_{v} \big(s_v - \mathrm{sg}(s_{a(g_v)})\big)^2

    over the M variants that have an anchor; ``sg`` (stop-gradient) applies when
    ``detach_anchor``. ``scores`` is one scalar per sample that summarises what the model
    prefers: the DPO implicit-reward margin, the ORPO log-odds, or the mean answer log-likelihood
    for SFT. Equal scores mean the model ranks or believes the answer equally in every language:
    the output-side counterpart of the hidden alignment, close to DCO's consistency of reward
    margins across parallel prompts (``Betswish/ConsistencyRL``).

    Args:
        scores: ``[N]``.
        group_index: ``[N]`` long.
        is_anchor: ``[N]`` bool.
        detach_anchor: stop the gradient into the anchors' scores.

    Returns:
        Scalar; ``0.0`` connected to ``scores`` when no variant has an anchor.
    """
    variants, anchors = _variant_anchor_pairs(group_index, is_anchor)
    if variants.numel() == 0:
        return scores.sum() * 0.0
    targets = scores.detach() if detach_anchor else scores
    return (scores[variants] - targets[anchors]).pow(2).mean()


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
