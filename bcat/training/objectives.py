"""From a collated micro-batch to the training loss: the objective (SFT, DPO or ORPO) plus the
alignment terms, all from ONE forward pass.

    loss = main + w_hidden * hidden_alignment + w_output * output_agreement + w_kl * token_kl

- ``main``: SFT token NLL; DPO sigmoid loss on summed completion log-probs; ORPO NLL plus
  odds-ratio term on averaged log-probs (``bcat.training.losses`` has the equations).
- ``hidden_alignment``: mean-pooled hidden states of each translation pulled toward its group's
  anchor (English) at the chosen layers.
- ``output_agreement``: each translation's output score pulled toward its anchor's; the score is
  the DPO implicit-reward margin, the ORPO odds-ratio term log sigmoid(log-odds), or the SFT mean
  answer log-likelihood.
- ``token_kl``: where a translation's answer is token-identical to the anchor's (numbers, codes),
  KL(anchor || translation) of the next-token distributions over the answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from bcat.training import losses
from bcat.config import AlignmentConfig, ObjectiveConfig
from bcat.model.forward import PolicyForward, packed_inputs, sequence_logps


@dataclass
class LossOutput:
    loss: torch.Tensor
    """The scalar to backpropagate."""
    terms: dict[str, torch.Tensor]
    """Detached scalars to log: ``main``, each alignment term, and objective diagnostics."""
    per_example: torch.Tensor
    """Main loss per example [N], for per-language logging."""


def score_mask(batch: dict, objective: ObjectiveConfig) -> torch.Tensor:
    """Positions to score: completions; for ORPO's TRL-style NLL, the chosen prompts too."""
    mask = batch["target_mask"]
    if objective.name == "orpo" and objective.orpo_nll_on_prompt:
        n = len(batch["langs"])
        prompt = batch["attention_mask"][:, 1:].bool().clone()
        prompt[n:] = False
        mask = mask | prompt
    return mask


def reference_logps(policy: PolicyForward, batch: dict) -> torch.Tensor:
    """Summed completion log-probs [2N] under the policy as it is now (used with adapters off)."""
    with torch.no_grad():
        out = policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"], packed=packed_inputs(batch))
    return sequence_logps(out["token_logps"], batch["target_mask"])[0]


def compute_loss(
    policy: PolicyForward,
    batch: dict,
    objective: ObjectiveConfig,
    alignment: AlignmentConfig,
    hidden_layers: tuple[int, ...],
    reference: Optional[Callable[[dict], torch.Tensor]] = None,
) -> LossOutput:
    n = len(batch["langs"])
    mask = score_mask(batch, objective)
    completion = batch["target_mask"]
    layers = hidden_layers if alignment.hidden_weight > 0 else ()
    want_kl = alignment.token_kl_weight > 0
    out = policy(batch["input_ids"], batch["attention_mask"], mask, hidden_layers=layers,
                 pool_mask=batch["pool_mask"], pool_rows=n, return_full=want_kl, packed=packed_inputs(batch))
    token_logps = out["token_logps"]
    summed, mean = sequence_logps(token_logps, completion)
    group, anchor = batch["group_index"], batch["is_anchor"]
    terms: dict[str, torch.Tensor] = {}
    ref = None

    if objective.name == "sft":
        main, per_example = losses.sft_loss(token_logps, completion)
    elif objective.name == "dpo":
        ref = batch["ref_logps"] if "ref_logps" in batch else reference(batch)  # type: ignore[misc]
        per_example, chosen_r, rejected_r = losses.dpo_loss(summed[:n], summed[n:], ref[:n], ref[n:], objective.beta)
        main = per_example.mean()
        terms["reward_margin"] = (chosen_r - rejected_r).mean()
        terms["reward_accuracy"] = (chosen_r > rejected_r).float().mean()
    elif objective.name == "orpo":
        # NLL over the chosen rows as one token-level mean (TRL's convention), shared by every pair.
        nll_mask = mask[:n]
        nll = -(token_logps[:n] * nll_mask).sum() / nll_mask.sum().clamp_min(1)
        per_example, log_odds = losses.orpo_loss(nll.expand(n), mean[:n], mean[n:], objective.orpo_lambda)
        main = per_example.mean()
        # Per-language logging uses each pair's own NLL rather than the shared batch mean.
        own_nll = -(token_logps[:n] * nll_mask).sum(-1) / nll_mask.sum(-1).clamp_min(1)
        per_example = per_example - nll + own_nll
        terms["nll"] = nll
        terms["log_odds"] = log_odds.mean()
    else:
        raise ValueError(objective.name)
    terms["main"] = main
    score = output_score(objective, summed, mean, ref) if alignment.output_weight > 0 else None
    loss = add_alignment_terms(main, terms, alignment, group, anchor, out.get("pooled"), score)
    if want_kl:
        kl = token_kl(out["scored_logps"], mask, batch["completion_ids"][0], group, anchor, alignment.detach_anchor)
        terms["token_kl"] = kl
        loss = loss + alignment.token_kl_weight * kl
    terms["loss"] = loss
    return LossOutput(loss, {k: v.detach() for k, v in terms.items()}, per_example.detach())


def output_score(objective: ObjectiveConfig, summed: torch.Tensor | None, mean: torch.Tensor,
                 ref: torch.Tensor | None = None) -> torch.Tensor:
    """The per-example score [N] that the output-agreement term compares across a group.

    From per-row summed and mean completion log-probs (``[N]`` for SFT, ``[2N]`` chosen then rejected
    for preferences) and, for DPO, the reference's summed log-probs ``[2N]``: the SFT mean answer
    log-likelihood, the DPO implicit-reward margin, or the ORPO odds-ratio term log sigmoid(log-odds).
    """
    if objective.name == "sft":
        return mean
    n = mean.shape[0] // 2
    if objective.name == "dpo":
        return objective.beta * ((summed[:n] - ref[:n]) - (summed[n:] - ref[n:]))
    if objective.name == "orpo":
        # The odds-ratio term itself, not raw log-odds: log-odds grow without bound as training
        # separates chosen from rejected, and a squared difference of them would swamp the loss.
        _, log_odds = losses.orpo_loss(mean.new_zeros(()), mean[:n], mean[n:], 0.0)
        return F.logsigmoid(log_odds)
    raise ValueError(objective.name)


def add_alignment_terms(loss: torch.Tensor, terms: dict[str, torch.Tensor], alignment: AlignmentConfig,
                        group: torch.Tensor, anchor: torch.Tensor, pooled: torch.Tensor | None = None,
                        score: torch.Tensor | None = None) -> torch.Tensor:
    """``loss`` plus the weighted alignment terms of one micro-batch; each term is also put in ``terms``.

    ``pooled`` [L, N, D]: pooled hidden states per alignment layer (hidden term, averaged over layers);
    ``score`` [N]: :func:`output_score` (output-agreement term). A term whose input is ``None`` is left out.
    bcat's own loss and the TRL integration (``bcat.integrations.trl``) both go through here.
    """
    if pooled is not None:
        hidden = torch.stack([
            losses.hidden_alignment_loss(layer, group, anchor, alignment.hidden_loss, alignment.temperature,
                                         alignment.detach_anchor)
            for layer in pooled
        ]).mean()
        terms["hidden"] = hidden
        loss = loss + alignment.hidden_weight * hidden
    if score is not None:
        agreement = losses.output_agreement_loss(score, group, anchor, alignment.detach_anchor)
        terms["output"] = agreement
        loss = loss + alignment.output_weight * agreement
    return loss


def token_kl(scored_logps: torch.Tensor, mask: torch.Tensor, completions: list[list[int]], group: torch.Tensor,
             anchor: torch.Tensor, detach_anchor: bool) -> torch.Tensor:
    """Mean token KL over the translations whose first completion equals their anchor's token for token.

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
    return torch.stack(kls).mean() if kls else scored_logps.sum() * 0
