"""One forward pass per micro-batch: per-token log-probs of the scored tokens and pooled hidden
states, everything the losses need.

The output head is applied only at the scored positions (the completion tokens, plus the prompt
for ORPO's TRL-style NLL): RAG prompts are long and answers short, so most positions never need
the ``vocab``-wide logits. :class:`PolicyForward` wraps the model as an ``nn.Module`` so that DDP
(via ``accelerate``) sees the whole computation in its ``forward``.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from bcat.losses import masked_mean_pool

log = logging.getLogger(__name__)


def _softcap(logits: torch.Tensor, config) -> torch.Tensor:
    cap = getattr(config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


class PolicyForward(nn.Module):
    """``forward(input_ids, attention_mask, score_mask, ...)`` -> dict of tensors.

    - ``token_logps`` [S, T-1]: log p(input_ids[:, t+1] | ...) where ``score_mask`` is set, else 0;
    - ``pooled`` [L, S_pool, D]: masked mean of ``hidden_states[layer]`` over ``pool_mask`` for
      each requested layer (rows ``:pool_rows`` only);
    - ``scored_logps`` [K, V]: full log-softmax at the scored positions, only if ``return_full``.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.selective_head = True

    def _head_inputs(self, input_ids, attention_mask, want_hidden: bool):
        if self.selective_head:
            out = self.model.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden, use_cache=False
            )
            return out.last_hidden_state, out.hidden_states
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden,
                         use_cache=False)
        return out.logits, out.hidden_states

    def forward(self, input_ids, attention_mask, score_mask, hidden_layers: tuple[int, ...] = (),
                pool_mask=None, pool_rows: int = 0, return_full: bool = False) -> dict:
        states, hidden_states = self._head_inputs(input_ids, attention_mask, bool(hidden_layers))
        targets = input_ids[:, 1:][score_mask]
        picked = states[:, :-1][score_mask]  # [K, D] hidden states (or logits on the fallback path)
        if self.selective_head:
            picked = _softcap(self.model.get_output_embeddings()(picked), self.model.config)
        logits = picked.float()
        logz = torch.logsumexp(logits, dim=-1)
        picked_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
        token_logps = torch.zeros(score_mask.shape, dtype=logits.dtype, device=logits.device)
        token_logps = token_logps.masked_scatter(score_mask, picked_logps)
        out = {"token_logps": token_logps}
        if hidden_layers:
            out["pooled"] = torch.stack(
                [masked_mean_pool(hidden_states[layer][:pool_rows], pool_mask[:pool_rows]) for layer in hidden_layers]
            )
        if return_full:
            out["scored_logps"] = logits - logz[:, None]
        return out


def check_selective_head(policy: PolicyForward, vocab_size: int, device: torch.device) -> bool:
    """Compare the selective head with the model's own logits once; fall back if they differ.

    Architectures that post-process logits in ways we do not replicate (scales, custom heads)
    keep working, only without the saving. Returns whether the selective head is used.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, 12), generator=gen).to(device)
    mask = torch.ones_like(ids)
    score = torch.ones(2, 11, dtype=torch.bool, device=device)
    with torch.no_grad():
        reference = policy.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        reference = reference.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        policy.selective_head = True
        try:
            ours = policy(ids, mask, score)["token_logps"]
            ok = torch.allclose(ours, reference, atol=1e-4, rtol=0)
        except Exception as e:  # a model without get_decoder() or with an unusual signature
            log.debug("selective head failed: %s", e)
            ok = False
    policy.selective_head = ok
    if not ok:
        log.warning("bcat: this model's output head is not reproduced exactly; using full logits (slower)")
    return ok


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean per-token log-probs of each row over ``mask``.

    >>> t = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    >>> m = torch.tensor([[True, True, False], [True, False, False]])
    >>> [x.tolist() for x in sequence_logps(t, m)]
    [[-3.0, -3.0], [-1.5, -3.0]]
    """
    summed = (token_logps * mask).sum(-1)
    return summed, summed / mask.sum(-1).clamp_min(1)
