"""One forward pass per micro-batch: per-token log-probs of the scored tokens and pooled hidden
states, everything the losses need.

The output head is applied only at the scored positions (the completion tokens, plus the prompt
for ORPO's TRL-style NLL): RAG prompts are long and answers short, so most positions never need
the ``vocab``-wide logits. :class:`PolicyForward` wraps the model as an ``nn.Module`` so that DDP
(via ``accelerate``) sees the whole computation in its ``forward``.

Prompt-shared preference forward (``packed=``): chosen and rejected repeat the same prompt, so
each pair runs as ONE sequence ``prompt | chosen | rejected``, and short sequences share a row
(layout built by :class:`bcat.batching.collate.GroupCollator` with ``pack=True``). A 4D attention
mask lets every token see exactly what it sees in its plain row: causal, within its own pair, no
padding, and rejected tokens never see chosen tokens; position ids restart at every pair and
restart the rejected completion right after the prompt. The per-token
log-probs come back in the PLAIN layout ``[2N, T-1]``, so the losses cannot tell the two paths
apart; the pooled hidden state of each pair's chosen row is averaged over its prompt + chosen, the
same tokens as in the plain row. Transformers (5.x) hands an already-4D mask straight to the attention
function: a boolean mask (``True`` = attend) for ``sdpa``, an additive float mask for ``eager``.
Models with sliding-window layers (Gemma 3, windowed Qwen2) get a dict
``{"full_attention": mask, "sliding_attention": windowed mask}``, the window measured in
positions as in the plain forward. :func:`check_packed_forward` compares the two paths once at the
start and turns packing off (saying so once) where a model does not honour such a mask.

Which attention kernel takes that block structure (``model.attn_implementation``), from what
transformers 5.x does with each on a CUDA device:

- ``sdpa`` (the default): the boolean ``[B, 1, T, T]`` mask goes to
  ``F.scaled_dot_product_attention``; with an arbitrary mask PyTorch cannot use its flash kernel and
  runs the memory-efficient (or cuDNN) kernel over every ``T x T`` tile, the masked ones included,
  plus the ``B x T x T`` mask in memory. Works on every device and needs no compilation.
- ``flex_attention``: the same rule as a ``mask_mod`` (:func:`packed_mask_mod`) compiled into a
  ``BlockMask``, which transformers hands straight to ``flex_attention``; tiles that no query of a
  block may see (another pair of the row, padding) are skipped. Costs a ``torch.compile`` at the
  first batch of each new shape.
- flash-attention "varlen" (``flash_attention_2/3``, packed rows found from ``position_ids`` that
  restart at 0): every segment is an independent causal sequence, so it cannot express "rejected
  sees the prompt but not chosen"; it fits only a padding-free layout WITHOUT prompt sharing (TRL's
  ``padding_free``), and needs the ``flash_attn`` package. Not offered for the packed layout.

``bench/gpu_check.py`` times ``sdpa`` against ``flex_attention`` on the packed rows of RAG- and
chat-shaped pairs; the default follows those numbers.

Mixed precision (:class:`bcat.model.loading.Precision`): a :class:`PolicyForward` built with
``autocast_dtype`` runs the model and the output head under ``torch.autocast``; what it returns
(log-probs, pooled states) is fp32, so the losses above it are reduced in fp32.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

log = logging.getLogger(__name__)


def masked_mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    r"""Mean of the hidden states over the masked positions of each sequence.

    .. math:: h_b = \frac{\sum_t m_{bt} H_{bt}}{\max(1, \sum_t m_{bt})}

    Summed in fp32 so a low-precision hidden state does not lose the small terms; a row with an
    empty mask gives a zero vector instead of ``nan``.

    Args:
        hidden: ``[B, T, D]``.
        mask: ``[B, T]`` bool or 0/1.

    Returns:
        ``[B, D]`` in fp32.
    """
    weights = mask.to(torch.float32).unsqueeze(-1)  # [B, T, 1]
    summed = (hidden.to(torch.float32) * weights).sum(dim=1)
    return summed / weights.sum(dim=1).clamp_min(1.0)


def pooled_states(hidden_states: tuple[Tensor, ...], layers: tuple[int, ...], pool_mask: Tensor, rows: int) -> Tensor:
    """``[L, rows, D]``: :func:`masked_mean_pool` of the first ``rows`` rows of each of ``layers``
    (indices into the model's ``hidden_states``, 0 = embeddings)."""
    return torch.stack([masked_mean_pool(hidden_states[layer][:rows], pool_mask[:rows]) for layer in layers])


def pair_pooled_states(hidden_states: tuple[Tensor, ...], layers: tuple[int, ...], pool_pairs: Tensor,
                       rows: int) -> Tensor:
    """``[L, rows, D]``: in the packed layout, the mean of each of ``layers`` over the positions whose
    ``pool_pairs`` is ``i``, for pairs ``i < rows`` (the packed twin of :func:`pooled_states`, in fp32).

    >>> h = torch.arange(8.0).reshape(1, 4, 2)  # one packed row: pair 1 at positions 0-1, pair 0 at 2-3
    >>> pair_pooled_states((h,), (0,), torch.tensor([[1, 1, 0, -1]]), rows=2)[0].tolist()
    [[4.0, 5.0], [1.0, 2.0]]
    """
    flat = pool_pairs.reshape(-1)
    keep = (flat >= 0) & (flat < rows)
    where = flat[keep]
    counts = torch.zeros(rows, device=flat.device).index_add_(0, where, torch.ones_like(where, dtype=torch.float32))
    pooled = []
    for layer in layers:
        states = hidden_states[layer].reshape(-1, hidden_states[layer].shape[-1])[keep].to(torch.float32)
        sums = torch.zeros(rows, states.shape[-1], device=states.device).index_add(0, where, states)
        pooled.append(sums / counts.clamp_min(1.0)[:, None])
    return torch.stack(pooled)


def _softcap_value(config) -> float | None:
    """The final logit soft-cap of the model's config (Gemma), ``None`` without one."""
    return getattr(config, "final_logit_softcapping", None)


def _softcap(logits: torch.Tensor, config) -> torch.Tensor:
    cap = _softcap_value(config)
    return torch.tanh(logits / cap) * cap if cap else logits


HEAD_CHUNK_ELEMENTS = int(os.environ.get("BCAT_HEAD_CHUNK_ELEMENTS", 1 << 27))
"""Most fp32 logits (positions x vocabulary) :func:`head_logps` holds at once: 512 MB, 512 positions of
a 262k vocabulary. A RAG batch's scored positions fit in one chunk; long chat answers do not. The
environment variable ``BCAT_HEAD_CHUNK_ELEMENTS`` sets it (also in processes that ``accelerate
launch`` starts): lower on a small machine, and tiny in the distributed tests."""


def _target_logps(head: nn.Module, config, hidden: Tensor, targets: Tensor) -> Tensor:
    logits = _softcap(head(hidden), config).float()
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


class _FrozenHeadLogps(torch.autograd.Function):
    r""":func:`head_logps` through a frozen linear head, its backward computed in the forward.

    With the head's weights frozen (LoRA, or any run that does not train them), the only gradient
    the head passes on is the one to the states, and it does not depend on the loss above it:

    .. math:: \frac{\partial \log p_k}{\partial h_k} = W^\top\big((e_{t_k} - \mathrm{softmax}(z_k))
              \odot \mathrm{softcap}'(W h_k + b)\big) =: J_k \in \mathbb{R}^D

    so each chunk computes its ``J`` while its logits exist and keeps only that (``[K, D]``); the
    backward is ``grad_k * J_k``. Same matmuls as autograd's forward + backward (one logits product,
    one ``[K, V] x [V, D]``), none repeated, and at most one chunk's logits held at a time.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, cap: float | None,
                rows: int) -> Tensor:
        logps, jacobians = [], []
        for h, t in zip(hidden.split(rows), targets.split(rows)):
            raw = F.linear(h, weight, bias)
            squashed = torch.tanh(raw / cap) if cap else None
            logits = (squashed * cap if cap else raw).float()
            logz = torch.logsumexp(logits, dim=-1, keepdim=True)
            logps.append((logits.gather(-1, t[:, None]) - logz).squeeze(-1))
            grad = logits.sub_(logz).exp_().neg_()  # -softmax, in place: the logits are not needed again
            grad.scatter_add_(-1, t[:, None], torch.ones(t.shape[0], 1, dtype=grad.dtype, device=grad.device))
            if cap:
                grad.mul_(1 - squashed.float().square())
            jacobians.append(grad.to(weight.dtype) @ weight)
        ctx.save_for_backward(torch.cat(jacobians))
        ctx.hidden_dtype = hidden.dtype
        return torch.cat(logps)

    @staticmethod
    def backward(ctx, grad_logps: Tensor):
        (jacobians,) = ctx.saved_tensors
        return (grad_logps[:, None] * jacobians).to(ctx.hidden_dtype), None, None, None, None, None


def head_logps(head: nn.Module, config, hidden: Tensor, targets: Tensor, max_elements: int | None = None) -> Tensor:
    r"""Log-probability of each target under the output head: ``[K, D]`` states, ``[K]`` targets -> ``[K]``.

    .. math:: \log p_k = z_k[t_k] - \log\sum_v \exp z_k[v], \qquad z_k = \mathrm{softcap}(\mathrm{head}(h_k))

    The ``[K, V]`` logits are the largest tensor of a training step once answers are long: 2,400
    answer tokens under Gemma 3's 262k vocabulary are 2.5 GB in fp32, and the backward of
    log-softmax and gather holds about three more of that size (evidence:
    ``bench/results/head-memory-gemma3-270m.json``). So the positions go through in chunks of at most ``max_elements`` logits (default
    :data:`HEAD_CHUNK_ELEMENTS`), and no chunk's logits are kept for the backward:

    - a frozen linear head (the usual case: LoRA) computes each chunk's gradient with respect to its
      states right away (:class:`_FrozenHeadLogps`): no extra matmul;
    - a head being trained runs each chunk under :func:`torch.utils.checkpoint.checkpoint`: its
      logits are recomputed in the backward (one more head matmul per chunk);
    - without gradients, the chunks alone bound the memory.

    The values are the same as in one piece (row by row), the gradients up to fp32 rounding.
    """
    vocab = getattr(head, "out_features", None) or config.vocab_size
    rows = max(1, (max_elements or HEAD_CHUNK_ELEMENTS) // vocab)
    head_trains = any(p.requires_grad for p in head.parameters())
    if not (torch.is_grad_enabled() and (hidden.requires_grad or head_trains)):
        return torch.cat([_target_logps(head, config, h, t) for h, t in zip(hidden.split(rows), targets.split(rows))])
    if isinstance(head, nn.Linear) and not head_trains:
        return _FrozenHeadLogps.apply(hidden, head.weight, head.bias, targets, _softcap_value(config), rows)
    if hidden.shape[0] <= rows:
        return _target_logps(head, config, hidden, targets)
    return _checkpointed_logps(head, config, hidden, targets, rows)


def _checkpointed_logps(head: nn.Module, config, hidden: Tensor, targets: Tensor, rows: int) -> Tensor:
    """:func:`_target_logps` in chunks of ``rows`` positions, each recomputed in the backward."""
    return torch.cat([torch.utils.checkpoint.checkpoint(_target_logps, head, config, h, t, use_reentrant=False)
                      for h, t in zip(hidden.split(rows), targets.split(rows))])


PACKED_KEYS = ("input_ids", "pairs", "segments", "position_ids", "index", "pool_pairs")
"""The prompt-shared layout, as ``batch["packed_" + key]`` from the collator."""


def packed_inputs(batch: dict) -> dict | None:
    """The ``packed=`` argument of :meth:`PolicyForward.forward` from a collated batch, or ``None``."""
    if "packed_input_ids" not in batch:
        return None
    return {k: batch[f"packed_{k}"] for k in PACKED_KEYS}


def _sliding_window(config) -> tuple[int | None, bool]:
    """(window, per layer type): Gemma 3 / Qwen2 name ``sliding_attention`` layers in ``layer_types``
    and take a dict of masks; Mistral-style configs (a window, no ``layer_types``) window every layer."""
    types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if not window:
        return None, False
    if types is None:
        return window, False
    return (window, True) if "sliding_attention" in types else (None, False)


def packed_attention_mask(pairs: torch.Tensor, segments: torch.Tensor, position_ids: torch.Tensor, config,
                          dtype: torch.dtype):
    """4D mask [B, 1, T, T] of the prompt-shared layout, in the form the model's attention takes.

    Query ``q`` sees key ``k`` iff ``k <= q``, both belong to the same pair (``k`` not padding), and
    not (``q`` rejected and ``k`` chosen). Every query also sees itself, so padding rows are never
    empty (no ``nan``). For sliding-window layers, also ``pos[q] - pos[k] < window`` (the plain
    forward's rule, in positions).

    >>> pairs = torch.tensor([[0, 0, 0, 0, 1, 1, -1]])
    >>> seg = torch.tensor([[0, 0, 1, 2, 0, 1, -1]])
    >>> pos = torch.tensor([[0, 1, 2, 2, 0, 1, 0]])
    >>> class C: _attn_implementation = "sdpa"
    >>> for row in packed_attention_mask(pairs, seg, pos, C(), torch.float32)[0, 0].int().tolist(): print(row)
    [1, 0, 0, 0, 0, 0, 0]
    [1, 1, 0, 0, 0, 0, 0]
    [1, 1, 1, 0, 0, 0, 0]
    [1, 1, 0, 1, 0, 0, 0]
    [0, 0, 0, 0, 1, 0, 0]
    [0, 0, 0, 0, 1, 1, 0]
    [0, 0, 0, 0, 0, 0, 1]
    """
    width = segments.shape[1]
    idx = torch.arange(width, device=segments.device)
    allowed = idx[None, :, None] >= idx[None, None, :]  # [1, q, k] causal
    allowed = allowed & (pairs[:, :, None] == pairs[:, None, :]) & (pairs != -1)[:, None, :]
    allowed = allowed & ~((segments == 2)[:, :, None] & (segments == 1)[:, None, :])
    eye = torch.eye(width, dtype=torch.bool, device=segments.device)[None]
    window, per_type = _sliding_window(config)
    windowed = None
    if window is not None:
        near = (position_ids[:, :, None] - position_ids[:, None, :]) < window
        windowed = (allowed & near) | eye
    masks = {"full_attention": allowed | eye if per_type or windowed is None else windowed}
    if per_type:
        masks["sliding_attention"] = windowed
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl == "sdpa":
        masks = {k: m[:, None] for k, m in masks.items()}
    elif impl == "eager":
        low = torch.finfo(dtype).min
        masks = {k: torch.zeros(m.shape, dtype=dtype, device=m.device).masked_fill_(~m, low)[:, None]
                 for k, m in masks.items()}
    else:
        raise NotImplementedError(f"packed preference forward: attention implementation {impl!r} takes no 4D mask")
    return masks if per_type else masks["full_attention"]


def packed_mask_mod(pairs: torch.Tensor, segments: torch.Tensor, position_ids: torch.Tensor, window: int | None):
    """The rule of :func:`packed_attention_mask` as a flex-attention ``mask_mod(b, h, q, k) -> bool``
    (one sliding window, or ``None``)."""

    def mask_mod(b, h, q, k):
        allowed = (k <= q) & (pairs[b, q] == pairs[b, k]) & (pairs[b, k] != -1)
        allowed = allowed & ~((segments[b, q] == 2) & (segments[b, k] == 1))
        if window is not None:
            allowed = allowed & (position_ids[b, q] - position_ids[b, k] < window)
        return allowed | (q == k)

    return mask_mod


def packed_block_masks(pairs: torch.Tensor, segments: torch.Tensor, position_ids: torch.Tensor, config):
    """:func:`packed_attention_mask` as flex-attention ``BlockMask`` (s), for ``flex_attention`` models.

    Compiled on CUDA (the mask is built block by block on the device); eager elsewhere.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    batch, width = segments.shape
    window, per_type = _sliding_window(config)

    def block(w):
        return create_block_mask(packed_mask_mod(pairs, segments, position_ids, w), batch, None, width, width,
                                 device=segments.device, _compile=segments.device.type == "cuda")

    if per_type:
        return {"full_attention": block(None), "sliding_attention": block(window)}
    return block(window)


class PolicyForward(nn.Module):
    """``forward(input_ids, attention_mask, score_mask, ...)`` -> dict of tensors.

    - ``token_logps`` [S, T-1]: log p(input_ids[:, t+1] | ...) where ``score_mask`` is set, else 0;
    - ``pooled`` [L, S_pool, D]: masked mean of ``hidden_states[layer]`` over ``pool_mask`` for
      each requested layer (rows ``:pool_rows`` only);
    - ``scored_logps`` [K, V]: full log-softmax at the scored positions, only if ``return_full``;
    - ``hidden`` list of ``hidden_states[layer]`` (unpooled, in the layout the model ran on), only if
      ``return_hidden``: the node where the alignment term and the main loss meet, for
      :func:`bcat.training.objectives.gradient_ratios`.

    With ``packed`` (see :func:`packed_inputs`) the model runs on the prompt-shared layout instead
    of ``input_ids``; the outputs keep the same shapes and meaning (``pool_rows`` must be at most
    the number of pairs: only chosen rows are pooled).

    ``autocast_dtype``: run the model and the head under ``torch.autocast`` in this dtype (bf16
    mixed precision, :func:`bcat.model.loading.training_precision`); ``None`` runs as loaded.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype
        """Dtype of ``torch.autocast`` around the forward (``None``: none)."""
        self.selective_head = True
        """Whether the output head runs at the scored positions only (set by :func:`check_selective_head`)."""
        self.packed_ok = True
        """Whether the prompt-shared forward is exact for this model (set by :func:`check_packed_forward`)."""
        self.checks: dict[str, str] = {}
        """Why a start-up check turned a fast path off (``{"selective_head": reason, "packed": reason}``)."""

    def _config(self):
        return self.model.config

    @property
    def compute_dtype(self) -> torch.dtype:
        """Dtype the matmuls run in: the autocast dtype, else the weights'."""
        return self.autocast_dtype or self.model.get_input_embeddings().weight.dtype

    def amp(self):
        """The forward's autocast context (a no-op without ``autocast_dtype``); also for calling ``self.model``
        directly in the same precision."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.model.get_input_embeddings().weight.device.type, dtype=self.autocast_dtype)

    def _head_inputs(self, input_ids, attention_mask, want_hidden: bool, position_ids=None):
        kwargs = {"position_ids": position_ids} if position_ids is not None else {}
        if self.selective_head:
            out = self.model.get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden, use_cache=False,
                **kwargs,
            )
            return out.last_hidden_state, out.hidden_states
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden,
                         use_cache=False, **kwargs)
        return out.logits, out.hidden_states

    def forward(self, input_ids, attention_mask, score_mask, hidden_layers: tuple[int, ...] = (),
                pool_mask=None, pool_rows: int = 0, return_full: bool = False, packed: dict | None = None,
                return_hidden: bool = False) -> dict:
        with self.amp():
            return self._forward(input_ids, attention_mask, score_mask, hidden_layers, pool_mask, pool_rows,
                                 return_full, packed, return_hidden)

    def _forward(self, input_ids, attention_mask, score_mask, hidden_layers, pool_mask, pool_rows, return_full,
                 packed, return_hidden) -> dict:
        targets = input_ids[:, 1:][score_mask]
        if packed is None or not self.packed_ok:
            states, hidden_states = self._head_inputs(input_ids, attention_mask, bool(hidden_layers))
            picked = states[:, :-1][score_mask]  # [K, D] hidden states (or logits on the fallback path)
        else:
            if getattr(self._config(), "_attn_implementation", None) == "flex_attention":
                mask = packed_block_masks(packed["pairs"], packed["segments"], packed["position_ids"], self._config())
            else:
                mask = packed_attention_mask(packed["pairs"], packed["segments"], packed["position_ids"],
                                             self._config(), self.compute_dtype)
            states, hidden_states = self._head_inputs(packed["input_ids"], mask, bool(hidden_layers),
                                                      packed["position_ids"])
            source = packed["index"][:, :-1][score_mask]  # flat packed index of the state scoring each target
            picked = states.reshape(-1, states.shape[-1])[source]
        out = {}
        if self.selective_head and not return_full:
            picked_logps = head_logps(self.model.get_output_embeddings(), self.model.config, picked, targets)
        else:  # the full log-softmax is wanted (token KL), or ``picked`` already holds the model's logits
            if self.selective_head:
                picked = _softcap(self.model.get_output_embeddings()(picked), self.model.config)
            logits = picked.float()
            logz = torch.logsumexp(logits, dim=-1)
            picked_logps = logits.gather(-1, targets[:, None]).squeeze(-1) - logz
            if return_full:
                out["scored_logps"] = logits - logz[:, None]
        token_logps = torch.zeros(score_mask.shape, dtype=picked_logps.dtype, device=picked_logps.device)
        out["token_logps"] = token_logps.masked_scatter(score_mask, picked_logps)
        if hidden_layers and (packed is None or not self.packed_ok):
            out["pooled"] = pooled_states(hidden_states, hidden_layers, pool_mask, pool_rows)
        elif hidden_layers:
            out["pooled"] = pair_pooled_states(hidden_states, hidden_layers, packed["pool_pairs"], pool_rows)
        if return_hidden:
            out["hidden"] = [hidden_states[layer] for layer in hidden_layers]
        return out


def exactness_tolerance(dtype: torch.dtype, reference: torch.Tensor, logits: torch.Tensor | None = None) -> float:
    """Largest difference the start-up checks accept between two computations of ``reference``.

    ``max(1e-4, 8 * eps(dtype) * max(1, |reference|), 32 * eps(fp32) * max|logits|)``: 1e-4 in fp32,
    and a few rounding steps of the value's own size in bf16 (eps 2^-7) or fp16 (eps 2^-10), where
    two matmul orders differ by that much while a real mismatch (a missing scale, a leaking mask)
    differs by whole units. ``logits``: those ``reference`` (log-probs) came from. A log-prob's
    rounding follows the LOGITS' size, not its own: where logits are large, two computations (another
    matmul shape, another attention kernel) differ by a few fp32 ulps of the logits, which a fixed
    1e-4 floor alone would take for a mismatch.
    """
    scale = float(reference.detach().abs().max().clamp_min(1.0)) if reference.numel() else 1.0
    tol = max(1e-4, 8 * torch.finfo(dtype).eps * scale)
    if logits is not None and logits.numel():
        tol = max(tol, 32 * torch.finfo(torch.float32).eps * float(logits.detach().abs().max()))
    return tol


def check_packed_forward(policy: PolicyForward, vocab_size: int, device: torch.device, bos_token_id: int | None = None,
                         hidden_layers: tuple[int, ...] = ()) -> bool:
    """Compare the prompt-shared forward with the plain one once; turn packing off if they differ.

    Three random pairs (different prompt and answer lengths: padding, and two pairs sharing a row) go through
    both paths in eval mode. Packing is kept when the per-token log-probs (and pooled hidden
    states of ``hidden_layers``) agree within the dtype's tolerance AND the rejected log-probs do
    not move when the chosen tokens change (the mask really hides them). Returns the decision,
    also stored in ``policy.packed_ok``.
    """
    from bcat.batching.collate import GroupCollator
    from bcat.data.tokenization import Example

    gen = torch.Generator().manual_seed(0)

    def rand(k):
        return torch.randint(3, max(4, vocab_size), (k,), generator=gen).tolist()

    # pairs 1 and 2 (10 + 6 tokens) share a row no longer than pair 0 (17): the check covers the mask between pairs
    examples = [Example(0, "g", "en", rand(7), (rand(4), rand(6))), Example(1, "g", "fr", rand(5), (rand(3), rand(2))),
                Example(2, "g", "de", rand(3), (rand(1), rand(2)))]
    altered = [Example(e.index, e.group, e.lang, e.prompt_ids, (rand(len(e.completions[0])), e.completions[1]))
               for e in examples]
    collator = GroupCollator(pad_token_id=0, anchor="en", bos_token_id=bos_token_id, pack=True)
    dtype = policy.compute_dtype
    was_training = policy.training
    policy.eval()
    policy.packed_ok = True  # so that the packed path really runs below
    reason = ""
    impl = getattr(policy.model.config, "_attn_implementation", None) or "eager"
    try:
        if impl not in ("sdpa", "eager", "flex_attention"):
            raise NotImplementedError(f"attention implementation {impl!r} takes no 4D mask")
        with torch.no_grad():
            outs = []
            for exs, pack in ((examples, False), (examples, True), (altered, True)):
                b = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collator(exs).items()}
                outs.append(policy(b["input_ids"], b["attention_mask"], b["target_mask"], hidden_layers=hidden_layers,
                                   pool_mask=b["pool_mask"], pool_rows=3, packed=packed_inputs(b) if pack else None))
                if not pack:
                    with policy.amp():
                        logits = policy.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                              use_cache=False).logits
        plain, packed, moved = outs
        tol = exactness_tolerance(dtype, plain["token_logps"], logits)
        diff = (plain["token_logps"] - packed["token_logps"]).abs().max().item()
        leak = (packed["token_logps"][3:] - moved["token_logps"][3:]).abs().max().item()
        leak_tol = exactness_tolerance(dtype, plain["token_logps"]) / 10  # the mask hides: no rounding excuse
        pooled, pooled_tol = 0.0, exactness_tolerance(dtype, torch.ones(()))
        if hidden_layers:  # relative: hidden states can be large (Gemma scales its embeddings by sqrt(d))
            scale = plain["pooled"].abs().max().clamp_min(1.0)
            pooled = ((plain["pooled"] - packed["pooled"]).abs().max() / scale).item()
        ok = diff <= tol and leak <= leak_tol and pooled <= pooled_tol
        if not ok:
            reason = (f"max log-prob difference {diff:.2e} (tolerance {tol:.1e}), chosen->rejected leak {leak:.2e} "
                      f"(tolerance {leak_tol:.1e}), pooled relative difference {pooled:.2e} (tolerance {pooled_tol:.1e})")
    except Exception as e:  # an attention implementation or model class that refuses a 4D mask
        ok, reason = False, f"{type(e).__name__}: {e}"
    finally:
        policy.train(was_training)
    policy.packed_ok = ok
    if not ok:
        policy.checks["packed"] = reason
        log.warning("bcat: this model does not take the prompt-shared attention mask exactly (%s); "
                    "preference pairs use the plain forward (slower)", reason)
    return ok


def check_selective_head(policy: PolicyForward, vocab_size: int, device: torch.device) -> bool:
    """Compare the selective head with the model's own logits once; fall back if they differ.

    Architectures that post-process logits in ways we do not replicate (scales, custom heads)
    keep working, only without the saving; the reason is logged at WARNING and kept in
    ``policy.checks``. Returns whether the selective head is used.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab_size, (2, 12), generator=gen).to(device)
    mask = torch.ones_like(ids)
    score = torch.ones(2, 11, dtype=torch.bool, device=device)
    dtype = policy.compute_dtype
    reason = ""
    with torch.no_grad():
        with policy.amp():
            logits = policy.model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1].float()
        reference = logits.log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        policy.selective_head = True
        try:
            ours = policy(ids, mask, score)["token_logps"]
            tol = exactness_tolerance(dtype, reference, logits)
            diff = (ours - reference).abs().max().item()
            ok = diff <= tol
            if not ok:
                reason = f"max log-prob difference {diff:.2e} from the model's own logits (tolerance {tol:.1e})"
        except Exception as e:  # a model without get_decoder() or with an unusual signature
            ok, reason = False, f"{type(e).__name__}: {e}"
    policy.selective_head = ok
    if not ok:
        policy.checks["selective_head"] = reason
        log.warning("bcat: this model's output head is not reproduced exactly (%s); using full logits at every "
                    "position (slower)", reason)
    return ok


def forward_path(policy: PolicyForward, packed_requested: bool) -> dict:
    """What the training forward does, for the log and ``training_summary.json``.

    ``packed``: ``True`` (``prompt | chosen | rejected`` per pair, pairs packed into rows), ``False`` (plain rows),
    with ``packed_reason`` when packing was requested but the start-up check turned it off;
    ``head_at_scored_positions`` likewise, with ``head_reason``.
    """
    packed = packed_requested and policy.packed_ok
    path = {"packed": packed, "head_at_scored_positions": policy.selective_head}
    if packed_requested and "packed" in policy.checks:
        path["packed_reason"] = policy.checks["packed"]
    if "selective_head" in policy.checks:
        path["head_reason"] = policy.checks["selective_head"]
    return path


def describe_forward_path(path: dict) -> str:
    """One line for the log, e.g. ``packed prompt|chosen|rejected sequences; output head at scored positions only``."""
    rows = "packed prompt|chosen|rejected sequences" if path["packed"] else "plain rows"
    if "packed_reason" in path:
        rows += " (packing failed its start-up check)"
    head = ("output head at scored positions only" if path["head_at_scored_positions"]
            else "output head at every position (selective head failed its start-up check)")
    return f"{rows}; {head}"


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed and mean per-token log-probs of each row over ``mask``.

    >>> t = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, 0.0, 0.0]])
    >>> m = torch.tensor([[True, True, False], [True, False, False]])
    >>> [x.tolist() for x in sequence_logps(t, m)]
    [[-3.0, -3.0], [-1.5, -3.0]]
    """
    summed = (token_logps * mask).sum(-1)
    return summed, summed / mask.sum(-1).clamp_min(1)
