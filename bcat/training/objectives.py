"""From a collated micro-batch to the training loss: the objective (SFT, DPO or ORPO) plus the
alignment terms, all from ONE forward pass.

    loss = main + w_hidden * hidden_alignment + w_output * output_agreement + w_kl * token_kl

- ``main``: SFT token NLL; DPO sigmoid loss on summed completion log-probs; ORPO NLL plus
  odds-ratio term on averaged log-probs (``bcat.training.losses`` has the equations).
- ``hidden_alignment``: mean-pooled hidden states of each translation, standardised with
  statistics fitted on the initial model (:mod:`bcat.training.hidden`), pulled toward its group's
  anchor (English) at the chosen layers.
- ``output_agreement``: each translation's probability pulled UP to its anchor's, never down:
  DPO's implicit preference probability sigma(beta * margin), ORPO's sigma(log-odds), SFT's
  per-token geometric-mean answer probability (:func:`agreement_probabilities`).
- ``token_kl``: where a translation's answer is token-identical to the anchor's (numbers, codes),
  KL(anchor || translation) of the next-token distributions over the answer.

Normalisation over a whole optimizer step. Every term is a SUM over its units divided by the
number of those units in the whole step (every micro-batch of the accumulation, every rank):
tokens for an NLL, pairs / examples for DPO and ORPO's odds-ratio term, anchored variants for the
alignment terms, token-identical variants for the token KL (:func:`loss_counts`). So k
micro-batches on N ranks give the loss and gradient of ONE batch holding the same records, even
when the micro-batches hold different numbers of tokens (transformers' ``num_items_in_batch``
fix). Without ``counts`` the micro-batch is its own step: plain means, as TRL computes them.

Other trainers (the TRL integration) call :func:`alignment_terms` with their own pooled states and
per-example probabilities; both weigh the terms with :func:`weighted`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from bcat.config import AlignmentConfig, ObjectiveConfig
from bcat.model.forward import PolicyForward, packed_inputs, sequence_logps
from bcat.training import losses

COUNT_KEYS = ("tokens", "examples", "variants", "kl_pairs")
"""Units the terms are averaged over (see :func:`loss_counts`)."""


@dataclass
class LossOutput:
    loss: torch.Tensor
    """The scalar to backpropagate: this micro-batch's share of the step's loss."""
    terms: dict[str, torch.Tensor]
    """Detached shares of ``main``, each alignment term, ``loss`` and objective diagnostics: summed over
    the micro-batches and ranks of a step they give the step's values."""
    per_example: torch.Tensor
    """Main loss per example [N], for per-language logging."""
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    """The weighted, normalised addends of ``loss`` (``main``, ``hidden``, ``output``, ``token_kl``), still in
    the graph: for :func:`gradient_ratios` and :func:`nonfinite_gradient_terms`."""
    ratios: dict[str, Optional[float]] = field(default_factory=dict)
    """``grad_ratio_hidden`` / ``grad_ratio_output`` when ``compute_loss(probe=True)``."""


def score_mask(batch: dict, objective: ObjectiveConfig) -> torch.Tensor:
    """Positions to score: completions; for ORPO's TRL-style NLL, the chosen prompts too."""
    mask = batch["target_mask"]
    if objective.name == "orpo" and objective.orpo_nll_on_prompt:
        n = len(batch["langs"])
        prompt = batch["attention_mask"][:, 1:].bool().clone()
        prompt[n:] = False
        mask = mask | prompt
    return mask


def loss_counts(batch: dict, objective: ObjectiveConfig) -> dict[str, int]:
    """How many of each unit this micro-batch holds: NLL ``tokens`` (SFT: completion tokens; ORPO: the
    chosen rows' scored tokens; DPO: 0), ``examples``, anchored ``variants`` and ``kl_pairs`` (variants
    whose first completion equals their anchor's token for token). Summed over a step's micro-batches
    and ranks, they are the ``counts`` of :func:`compute_loss`."""
    n = len(batch["langs"])
    if objective.name == "sft":
        tokens = int(batch["target_mask"].sum())
    elif objective.name == "orpo":
        tokens = int(score_mask(batch, objective)[:n].sum())
    else:
        tokens = 0
    anchors = losses.anchor_index(batch["group_index"], batch["is_anchor"]).tolist()
    completions = batch["completion_ids"][0]
    variants = [i for i, a in enumerate(anchors) if a >= 0 and a != i]
    return {"tokens": tokens, "examples": n, "variants": len(variants),
            "kl_pairs": sum(completions[i] == completions[anchors[i]] for i in variants)}


def reference_logps(policy: PolicyForward, batch: dict) -> torch.Tensor:
    """Summed completion log-probs [2N] under the policy as it is now (used with adapters off)."""
    with torch.no_grad():
        out = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"], packed=packed_inputs(batch))
    return sequence_logps(out["token_logps"], batch["target_mask"])[0]


def agreement_probabilities(objective: ObjectiveConfig, policy_summed: torch.Tensor, policy_mean: torch.Tensor,
                            ref_summed: Optional[torch.Tensor] = None,
                            log_odds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-example probability the output-agreement term compares ([N], the chosen rows):
    DPO sigma(beta * margin), ORPO sigma(log-odds), SFT exp(mean answer log-prob)."""
    n = policy_mean.shape[0] if objective.name == "sft" else policy_mean.shape[0] // 2
    if objective.name == "sft":
        return losses.sft_answer_probability(policy_mean)
    if objective.name == "dpo":
        assert ref_summed is not None
        return losses.dpo_preference_probability(policy_summed[:n] - ref_summed[:n], policy_summed[n:] - ref_summed[n:],
                                                 objective.beta)
    assert log_odds is not None
    return losses.orpo_preference_probability(log_odds)


def alignment_losses(pooled: Optional[torch.Tensor], probs: Optional[torch.Tensor], group_index: torch.Tensor,
                     is_anchor: torch.Tensor, cfg: AlignmentConfig,
                     standardization: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                     counts: Optional[dict[str, int]] = None) -> dict[str, torch.Tensor]:
    """The hidden and output alignment terms of one micro-batch, unweighted.

    Args:
        pooled: ``[L, N, D]`` pooled hidden states at the aligned layers (or ``None``: no hidden term).
        probs: ``[N]`` per-example probabilities from :func:`agreement_probabilities` or the caller's
            equivalent (or ``None``: no output term).
        group_index, is_anchor: ``[N]``, as in :mod:`bcat.training.losses`.
        cfg: the weights, the hidden loss kind, temperature, ``detach_anchor``, ``hidden_standardize``.
        standardization: ``(mean, scale)``, each ``[L, D]``, from
            :func:`bcat.training.losses.fit_standardization` on the INITIAL model's pooled states
            (required unless ``cfg.hidden_standardize == "none"``).
        counts: the step's ``variants`` count (:func:`loss_counts`, summed over micro-batches and
            ranks) to normalise by; ``None``: this micro-batch's own mean.

    Returns:
        ``{"hidden": term, "output": term}`` with only the enabled terms. The hidden term is the mean
        over layers.
    """
    terms: dict[str, torch.Tensor] = {}
    reduction = "mean" if counts is None else "sum"
    scale_by = 1.0 if counts is None else 1.0 / max(counts["variants"], 1)
    if cfg.hidden_weight > 0 and pooled is not None:
        if standardization is None and cfg.hidden_standardize != "none":
            raise ValueError(f"alignment.hidden_standardize={cfg.hidden_standardize!r} needs the (mean, scale) "
                             "statistics of the initial model's pooled states (bcat.training.hidden)")
        mean, scale = standardization if standardization is not None else (None, None)
        per_layer = [losses.hidden_alignment_loss(pooled[i], group_index, is_anchor, cfg.hidden_loss, cfg.temperature,
                                                  cfg.detach_anchor, None if mean is None else mean[i],
                                                  None if scale is None else scale[i], reduction)
                     for i in range(pooled.shape[0])]
        terms["hidden"] = torch.stack(per_layer).mean() * scale_by
    if cfg.output_weight > 0 and probs is not None:
        terms["output"] = losses.output_agreement_loss(probs, group_index, is_anchor, cfg.detach_anchor,
                                                       reduction) * scale_by
    return terms


def weighted(terms: dict[str, torch.Tensor], cfg: AlignmentConfig) -> dict[str, torch.Tensor]:
    """Each alignment term (``hidden``, ``output``, ``token_kl``) times its weight: the addends of the
    loss besides ``main``, in the order given."""
    weights = {"hidden": cfg.hidden_weight, "output": cfg.output_weight, "token_kl": cfg.token_kl_weight}
    return {name: weights[name] * value for name, value in terms.items()}


def alignment_terms(pooled: Optional[torch.Tensor], probs: Optional[torch.Tensor], group_index: torch.Tensor,
                    is_anchor: torch.Tensor, cfg: AlignmentConfig,
                    standardization: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                    counts: Optional[dict[str, int]] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """For a trainer that adds bcat's terms to its own loss: ``(weighted_sum, terms)``, the
    :func:`alignment_losses` (arguments as there, unweighted) and the sum of their :func:`weighted`
    values (``0`` when no term is enabled)."""
    terms = alignment_losses(pooled, probs, group_index, is_anchor, cfg, standardization, counts)
    return sum(weighted(terms, cfg).values()), terms


def compute_loss(
    policy: PolicyForward,
    batch: dict,
    objective: ObjectiveConfig,
    alignment: AlignmentConfig,
    hidden_layers: tuple[int, ...],
    reference: Optional[Callable[[dict], torch.Tensor]] = None,
    standardization: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    counts: Optional[dict[str, int]] = None,
    probe: bool = False,
) -> LossOutput:
    """One micro-batch's loss. ``counts``: the whole step's :func:`loss_counts` (summed over micro-batches
    and ranks), or ``None`` for this micro-batch alone. ``probe``: also measure :func:`gradient_ratios`."""
    n = len(batch["langs"])
    counts = counts or loss_counts(batch, objective)
    per_token, per_example_n = 1.0 / max(counts["tokens"], 1), 1.0 / max(counts["examples"], 1)
    mask = score_mask(batch, objective)
    completion = batch["target_mask"]
    layers = hidden_layers if alignment.hidden_weight > 0 else ()
    want_kl = alignment.token_kl_weight > 0
    out = policy(batch["input_ids"], batch["attention_mask"], mask, hidden_layers=layers,
                 pool_mask=batch["pool_mask"], pool_rows=n, return_full=want_kl, packed=packed_inputs(batch),
                 return_hidden=probe and bool(layers))
    token_logps = out["token_logps"]
    summed, mean = sequence_logps(token_logps, completion)
    group, anchor = batch["group_index"], batch["is_anchor"]
    terms: dict[str, torch.Tensor] = {}

    if objective.name == "sft":
        nll_sum, per_example = losses.sft_loss(token_logps, completion, reduction="sum")
        main = nll_sum * per_token
        probs = agreement_probabilities(objective, summed, mean)
    elif objective.name == "dpo":
        ref = batch["ref_logps"] if "ref_logps" in batch else reference(batch)  # type: ignore[misc]
        per_example, chosen_r, rejected_r = losses.dpo_loss(summed[:n], summed[n:], ref[:n], ref[n:], objective.beta)
        main = per_example.sum() * per_example_n
        probs = agreement_probabilities(objective, summed, mean, ref_summed=ref)
        terms["reward_margin"] = (chosen_r - rejected_r).sum() * per_example_n
        terms["reward_accuracy"] = (chosen_r > rejected_r).float().sum() * per_example_n
    elif objective.name == "orpo":
        # NLL over the chosen rows as one token-level mean (TRL's convention), over the whole step.
        nll_mask = mask[:n]
        nll = -(token_logps[:n] * nll_mask).sum() * per_token
        odds_ratio, log_odds = losses.orpo_loss(torch.zeros((), device=mean.device), mean[:n], mean[n:],
                                                objective.orpo_lambda)
        main = nll + odds_ratio.sum() * per_example_n
        # Per-language logging uses each pair's own NLL rather than the shared mean.
        per_example = -(token_logps[:n] * nll_mask).sum(-1) / nll_mask.sum(-1).clamp_min(1) + odds_ratio
        probs = agreement_probabilities(objective, summed, mean, log_odds=log_odds)
        terms["nll"] = nll
        terms["log_odds"] = log_odds.sum() * per_example_n
    else:
        raise ValueError(objective.name)
    terms["main"] = main

    aligned = alignment_losses(out.get("pooled"), probs, group, anchor, alignment, standardization, counts)
    parts = {"main": main, **weighted(aligned, alignment)}
    if want_kl:
        kl = token_kl(out["scored_logps"], mask, batch["completion_ids"][0], group, anchor, alignment.detach_anchor)
        aligned["token_kl"] = kl / max(counts["kl_pairs"], 1)
        parts.update(weighted({"token_kl": aligned["token_kl"]}, alignment))
    terms.update(aligned)
    loss = main
    for name, value in parts.items():
        if name != "main":
            loss = loss + value
    terms["loss"] = loss
    ratios = gradient_ratios(parts, out.get("hidden", []), token_logps) if probe else {}
    return LossOutput(loss, {k: v.detach() for k, v in terms.items()}, per_example.detach(), parts, ratios)


def _norm(grads) -> float:
    return float(torch.sqrt(sum((g.float().pow(2).sum() for g in grads if g is not None), torch.zeros(()))))


def gradient_ratios(parts: dict[str, torch.Tensor], hidden: list[torch.Tensor],
                    token_logps: torch.Tensor) -> dict[str, Optional[float]]:
    """How hard each alignment term pushes, relative to the main loss, where the two meet.

    - ``grad_ratio_hidden = ||d(w_h * hidden)/dH|| / ||d main/dH||`` with ``H`` the unpooled hidden
      states at the aligned layers: every parameter below those layers receives exactly the sum of
      the two, through the same Jacobian, so the ratio says which one steers them.
    - ``grad_ratio_output = ||d(w_o * output)/dl|| / ||d main/dl||`` with ``l`` the per-token
      log-probs, through which both reach every parameter.

    Cost: ``d main/dH`` is one backward through the layers ABOVE the aligned one (and the output
    head at the scored positions) on this micro-batch; the other three gradients only go through
    the loss arithmetic. ``None`` where the main gradient is zero. ``grad_ratio_seconds`` is the
    time the probe took, to set against the step time.
    """
    started = time.perf_counter()
    ratios: dict[str, Optional[float]] = {}

    def ratio(name: str, at: list[torch.Tensor]) -> Optional[float]:
        term = _norm(torch.autograd.grad(parts[name], at, retain_graph=True, allow_unused=True))
        main = _norm(torch.autograd.grad(parts["main"], at, retain_graph=True, allow_unused=True))
        return term / main if main > 0 else None

    if "hidden" in parts and hidden:
        ratios["grad_ratio_hidden"] = ratio("hidden", hidden)
    if "output" in parts:
        ratios["grad_ratio_output"] = ratio("output", [token_logps])
    if ratios:
        ratios["grad_ratio_seconds"] = time.perf_counter() - started
    return ratios


def nonfinite_gradient_terms(result: LossOutput, params: list[torch.Tensor]) -> list[str]:
    """The addends of ``result.loss`` whose gradient with respect to ``params`` holds a nan or inf.

    For the error message once a step's gradient norm is not finite (a finite loss can carry an
    infinite gradient: ORPO's ``log(1 - p)`` as the mean log-prob rounds to 0). One backward per
    addend: only run on that failure path.
    """
    bad = []
    for name, part in result.parts.items():
        if not part.requires_grad:
            continue
        grads = torch.autograd.grad(part, params, retain_graph=True, allow_unused=True)
        if any(g is not None and not bool(torch.isfinite(g).all()) for g in grads):
            bad.append(name)
    return bad


def token_kl(scored_logps: torch.Tensor, mask: torch.Tensor, completions: list[list[int]], group: torch.Tensor,
             anchor: torch.Tensor, detach_anchor: bool) -> torch.Tensor:
    """SUM of the per-token KL over the translations whose first completion equals their anchor's token
    for token (:func:`loss_counts` counts them as ``kl_pairs``).

    ``scored_logps`` holds the scored positions row by row; a row's completion is the last
    ``len(completion)`` of its positions.
    """
    ends = mask.sum(-1).cumsum(0)
    anchor_row = losses.anchor_index(group, anchor)
    kls = []
    for i, a in enumerate(anchor_row.tolist()):
        if a < 0 or a == i or completions[i] != completions[a]:
            continue
        length = len(completions[i])
        kls.append(losses.token_kl_loss(scored_logps[ends[a] - length: ends[a]],
                                        scored_logps[ends[i] - length: ends[i]], detach_anchor))
    return torch.stack(kls).sum() if kls else scored_logps.sum() * 0
