"""Batched greedy generation that stops at the end of the first line (or another text condition).

A sequence stops at EOS, at ``max_new_tokens``, or as soon as its continuation has a line break
after some text: a base model never stops by itself and goes on with the next "Question:". Leading
line breaks do not stop it. A task whose answer spans lines (worked solutions) passes its own
``until`` test of the continuation instead. Results come back in the order of the prompts, decoded,
special tokens dropped.

How (:func:`greedy_generate`), since evaluation is most of a study's cost and a decode step's cost
is mostly reading weights and caches (the 262k-row output layer of Gemma 3 alone is 671 MB in fp32):

- Prompts are tokenized once and taken longest first, so rows prefilled together have nearly the
  same length (little padding) and a prompt admitted later is never longer than the batch it joins.
- **Continuous batching.** Up to ``batch_size`` rows decode together, one token per row per step. A
  row leaves the batch as soon as it stops, and once a quarter of the batch is free the next
  prompts are prefilled and join the running batch: every weight pass serves a full batch instead
  of waiting for the slowest row of a fixed batch (``model.generate`` runs a fixed batch until its
  last row stops, the finished rows included).
- **Prefill without the output layer.** A prompt's tokens except the last are prefilled in chunks of
  at most ``prefill_tokens`` padded tokens with ``logits_to_keep`` empty; its last token enters the
  next decode step with the running rows, so the output layer runs once per step for all of them.
- **A cache without copies** (:class:`_SlotCache`): the batch's keys and values live in buffers with
  spare rows and columns. A step writes one column in place, a finished row is replaced by one
  surviving row, columns no row uses any more are skipped; transformers' dynamic cache copies the
  whole cache at every step (``torch.cat``) and again whenever a row leaves.
- Positions come from the attention mask (left padding does not shift them), as in ``generate``;
  the logits processors that ``model.generate`` would build from the model's generation config
  (repetition penalty, suppressed tokens, ...) are built the same way. They see each row's ids
  left-padded with its own first token, so, unlike in ``generate`` (where a row's pad tokens count
  as tokens it holds), a row's result does not depend on the batch it is in.

The predictions equal ``model.generate``'s (:func:`reference_generate`, the reference that ``bench/eval_speed.py`` and the tests compare against) up to the last-bit
differences of fp32 sums taken over differently shaped batches, which can flip a greedy choice only
where the top two logits tie to within rounding (``tests/evaluation/test_generation.py`` and the
slow test on the built-in model require equality; ``bench/eval_speed.py`` reports any difference).

The prefill cache must be transformers' dynamic full or sliding-window layers (the slot cache takes
their tensors over); a model whose cache has any other layer type generates with
:func:`reference_generate` instead (logged).

A model with a trimmed vocabulary (:mod:`bcat.model.trim`) generates the same way: prompt ids are mapped
into its ids and the generated ids back, so callers only see text. It can only emit kept ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, CacheLayerMixin, DynamicLayer, DynamicSlidingWindowLayer

from bcat.evaluation.sharding import is_main_process
from bcat.model.trim import TrimmedVocab

log = logging.getLogger(__name__)

PREFILL_TOKENS = 2048
"""Padded prompt tokens per prefill forward: large enough for efficient matmuls, small enough that
the activations stay in cache (evidence: ``bench/eval_speed.py``, ``bench/RESULTS.md``)."""


class TextStop(StoppingCriteria):
    """Stop a sequence once ``until(generated text)`` holds."""

    def __init__(self, tokenizer, prompt_length: int, until: Callable[[str], bool],
                 vocab: Optional[TrimmedVocab] = None):
        self.tokenizer, self.prompt_length, self.until, self.vocab = tokenizer, prompt_length, until, vocab

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        texts = decode(self.tokenizer, input_ids[:, self.prompt_length:], self.vocab)
        return torch.tensor([self.until(t) for t in texts], dtype=torch.bool, device=input_ids.device)


class FirstLineStop(TextStop):
    """Stop a sequence once its generated text holds a line break after non-blank text."""

    def __init__(self, tokenizer, prompt_length: int, vocab: Optional[TrimmedVocab] = None):
        super().__init__(tokenizer, prompt_length, ended_first_line, vocab)


def ended_first_line(text: str) -> bool:
    """Whether ``text`` contains a line break after some non-blank text.

    >>> ended_first_line("\\n24"), ended_first_line("24\\n"), ended_first_line(" 24")
    (False, True, False)
    """
    stripped = text.lstrip()
    return "\n" in stripped or "\r" in stripped


def decode(tokenizer, ids: torch.Tensor, vocab: Optional[TrimmedVocab] = None) -> list[str]:
    """Texts of a batch of model ids (trimmed ids mapped back first), special tokens dropped."""
    return tokenizer.batch_decode(ids if vocab is None else vocab.decode_ids(ids), skip_special_tokens=True)


MEMORY_FRACTION = 0.5
"""Share of the device's free memory a decode batch's cache and logits may take (the rest: the
prefill's activations, the allocator's slack)."""


def decode_batch_size(config, free_bytes: int, tokens_per_row: int, dtype_bytes: int = 2, cap: int = 512) -> int:
    """Most rows whose key/value cache (``tokens_per_row`` tokens each) and fp32 logits fit in
    :data:`MEMORY_FRACTION` of ``free_bytes``, at least 1, at most ``cap``.

    A row costs ``2 x layers x kv_heads x head_dim x dtype_bytes`` per cached token (keys and values)
    plus two fp32 ``vocab``-wide logit rows (the logits and the processors' copy).

    >>> from types import SimpleNamespace
    >>> c = SimpleNamespace(num_hidden_layers=18, num_key_value_heads=1, head_dim=256, hidden_size=640,
    ...                     num_attention_heads=4, vocab_size=262144)
    >>> decode_batch_size(c, free_bytes=70 * 2**30, tokens_per_row=2048)
    512
    >>> decode_batch_size(c, free_bytes=2**30, tokens_per_row=2048)
    13
    """
    config = getattr(config, "text_config", config)
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_row = 2 * config.num_hidden_layers * heads * head_dim * dtype_bytes * tokens_per_row + 2 * 4 * config.vocab_size
    return max(1, min(cap, int(MEMORY_FRACTION * free_bytes) // per_row))


def _eos_ids(model, tokenizer, vocab: Optional[TrimmedVocab]) -> list[int]:
    """Stop ids in the model's id space: its generation config's (already mapped by a trim) and the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = list(eos) if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        own = tokenizer.eos_token_id if vocab is None else vocab.encode_ids([tokenizer.eos_token_id])[0]
        if own not in ids:
            ids.append(own)
    return ids


def _generation_config(model, tokenizer, vocab, max_new_tokens: int) -> GenerationConfig:
    to_model = (lambda ids: ids) if vocab is None else vocab.encode_ids
    eos = _eos_ids(model, tokenizer, vocab)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                            pad_token_id=to_model([tokenizer.pad_token_id])[0], eos_token_id=eos or None)


def greedy_generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 32, max_new_tokens: int = 32,
                    add_special_tokens: bool = True, desc: str = "generate",
                    vocab: Optional[TrimmedVocab] = None, logits_processor: Optional[list] = None,
                    until: Callable[[str], bool] = ended_first_line, prefill_tokens: int = PREFILL_TOKENS
                    ) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, special tokens dropped, not yet cut).

    ``batch_size``: most rows decoded together. ``add_special_tokens=False`` for prompts that already
    hold them (chat-template output starts with BOS; adding another is a classic bug). ``vocab``: the
    model's trimmed vocabulary, if any; every prompt token must be kept. ``logits_processor``: applied
    after the ones the model's generation config implies, as ``model.generate`` does. ``until``: a
    sequence stops once this holds for its continuation (default: the first line has ended).
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="item",
                                      disable=not is_main_process()) as bar:
        generator = _Generator(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                               add_special_tokens=add_special_tokens, vocab=vocab, logits_processor=logits_processor,
                               until=until, prefill_tokens=prefill_tokens, progress=bar.update)
        if generator.mergeable():
            return generator.run()
    log.info("greedy_generate: %s has cache layers that cannot be merged; generating with model.generate",
             type(model).__name__)
    return reference_generate(model, tokenizer, prompts, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              add_special_tokens=add_special_tokens, desc=desc, vocab=vocab,
                              logits_processor=logits_processor, until=until)


class _SlotLayer(CacheLayerMixin):
    """One layer of the decode batch's cache: a buffer with room for more rows and columns.

    Rows ``[0, n)`` are the batch; all use the columns ``[start, end)`` (left-padded: the batch's
    attention mask says which hold real tokens). :class:`_SlotCache` moves ``n``, ``start`` and
    ``end`` for all layers at once. A decode step writes column ``end`` in place (transformers'
    dynamic layers ``torch.cat`` the whole cache at every step). A sliding-window layer keeps every
    column but, like transformers' sliding layer, hands attention only the last ``window - 1``
    cached columns plus the new ones, and reports the same mask sizes.
    """

    def __init__(self, slots: "_SlotCache", keys: torch.Tensor, values: torch.Tensor, window: Optional[int]):
        super().__init__()
        self.slots, self.kbuf, self.vbuf, self.window = slots, keys, values, window
        self.is_sliding = window is not None
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True

    def lazy_initialization(self, key_states, value_states) -> None:  # created initialized
        raise AssertionError("a slot layer is never initialized lazily")

    def _first(self) -> int:
        """First cached column attention sees."""
        s = self.slots
        return s.start if self.window is None else max(s.start, s.end - (self.window - 1))

    def view(self) -> None:
        s, first = self.slots, self._first()
        self.keys, self.values = self.kbuf[:s.n, :, first:s.end], self.vbuf[:s.n, :, first:s.end]

    def update(self, key_states, value_states, *args, **kwargs):
        s, q, first = self.slots, key_states.shape[-2], self._first()
        self.kbuf[:s.n, :, s.end:s.end + q] = key_states
        self.vbuf[:s.n, :, s.end:s.end + q] = value_states
        return self.kbuf[:s.n, :, first:s.end + q], self.vbuf[:s.n, :, first:s.end + q]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        first = self._first()
        return self.slots.end - first + query_length, first - self.slots.start

    def get_seq_length(self) -> int:
        return self.slots.end - self.slots.start

    def get_max_length(self) -> int:
        return -1 if self.window is None else self.window


class _SlotCache(Cache):
    """The decode batch's cache (:class:`_SlotLayer` per layer) and the surgery on it.

    - :meth:`admit`: the caches of newly prefilled rows go into free rows, right-aligned.
    - :meth:`keep`: a finished row is overwritten by a surviving row from the end of the batch (one
      row copied per finished row, where indexing a dynamic cache copies all of it).
    - :meth:`trim`: columns that no surviving row uses are skipped (no copy).
    - :meth:`reserve`: before a step, room for one more column; when the buffer is full, the used
      columns move to a new buffer with ``room`` free columns (one copy per ``room`` steps).
    """

    def __init__(self, like: Cache, rows: int, width: int, room: int):
        """Empty, for ``rows`` rows of ``width`` positions and ``room`` more; layer shapes as in ``like``."""
        self.n, self.start, self.end, self.room = 0, width, width, room
        layers = []
        for layer in like.layers:
            k, v = layer.keys, layer.values
            layers.append(_SlotLayer(self, k.new_zeros((rows, k.shape[1], width + room, k.shape[3])),
                                     v.new_zeros((rows, v.shape[1], width + room, v.shape[3])),
                                     getattr(layer, "sliding_window", None) if layer.is_sliding else None))
        super().__init__(layers=layers)

    def _relayout(self, width: int) -> None:
        """New buffers of ``width + room`` columns; the used columns end at ``width``."""
        used = self.end - self.start
        for layer in self.layers:
            for name in ("kbuf", "vbuf"):
                old = getattr(layer, name)
                new = old.new_zeros(old.shape[:2] + (width + self.room,) + old.shape[3:])
                new[:self.n, :, width - used:width] = old[:self.n, :, self.start:self.end]
                setattr(layer, name, new)
        self.start, self.end = 0, width

    def reserve(self) -> None:
        if self.end + 1 > self.layers[0].kbuf.shape[2]:
            self._relayout(self.end - self.start)
        for layer in self.layers:
            layer.view()

    def admit(self, prefill: Optional[Cache], rows: int, width: int) -> None:
        """Add ``rows`` rows whose prefill cache covers ``width`` positions (``prefill`` None: ``width`` 0)."""
        if width > self.end - self.start:  # longer than the batch: widen on the left
            if self.end - width >= 0:
                self.start = self.end - width
            else:
                self._relayout(width)
        lo, hi = self.n, self.n + rows
        for i, layer in enumerate(self.layers):
            for name, source in (("kbuf", "keys"), ("vbuf", "values")):
                buf = getattr(layer, name)
                buf[lo:hi, :, self.start:self.end] = 0
                if prefill is not None:
                    states = getattr(prefill.layers[i], source)  # a sliding layer holds only its last window - 1
                    buf[lo:hi, :, self.end - states.shape[2]:self.end] = states
        self.n = hi
        for layer in self.layers:
            layer.view()

    def keep(self, survivors: list[int]) -> list[int]:
        """Keep rows ``survivors`` (ascending); returns the old index of each new row."""
        m = len(survivors)
        order = list(range(m))
        alive = set(survivors)
        holes = [r for r in range(m) if r not in alive]
        movers = [r for r in survivors if r >= m]
        for hole, mover in zip(holes, movers):
            order[hole] = mover
            for layer in self.layers:
                layer.kbuf[hole, :, self.start:self.end] = layer.kbuf[mover, :, self.start:self.end]
                layer.vbuf[hole, :, self.start:self.end] = layer.vbuf[mover, :, self.start:self.end]
        self.n = m
        for layer in self.layers:
            layer.view()
        return order

    def trim(self, columns: int) -> None:
        self.start += columns
        for layer in self.layers:
            layer.view()


@dataclass
class _Batch:
    """Rows decoding together. Column ``j`` of ``mask`` is cached position ``j`` (1 = a real token)."""

    rows: list[int]
    """Prompt index of each row."""
    ids: list[list[int]]
    """Model-space ids of each row: prompt, then generated."""
    generated: list[list[int]]
    mask: torch.Tensor
    """``[rows, cached positions]``, left-padded."""
    position: torch.Tensor
    """``[rows]``: position id of the token fed next."""
    feed: torch.Tensor
    """``[rows]``: the token fed next (a prompt's last token, then each generated token)."""
    cache: object = None
    """The prefill's cache (a chunk), or the :class:`_SlotCache` of the decode batch."""

    def take(self, order: list[int]) -> None:
        """Reorder/select the rows' bookkeeping (not the cache)."""
        index = torch.tensor(order, device=self.mask.device)
        self.rows = [self.rows[i] for i in order]
        self.ids = [self.ids[i] for i in order]
        self.generated = [self.generated[i] for i in order]
        self.mask, self.position, self.feed = self.mask[index], self.position[index], self.feed[index]


class _Generator:
    def __init__(self, model, tokenizer, prompts, *, batch_size, max_new_tokens, add_special_tokens, vocab,
                 logits_processor, until, prefill_tokens, progress):
        if batch_size < 1 or max_new_tokens < 1 or prefill_tokens < 1:
            raise ValueError("batch_size, max_new_tokens and prefill_tokens must be at least 1")
        self.model, self.tokenizer, self.vocab = model, tokenizer, vocab
        self.batch_size, self.max_new_tokens, self.prefill_tokens = batch_size, max_new_tokens, prefill_tokens
        self.progress, self.until = progress, until
        self.device = next(model.parameters()).device
        config = _generation_config(model, tokenizer, vocab, max_new_tokens)
        self.eos = set(config.eos_token_id or [])
        self.pad = config.pad_token_id
        encoded = tokenizer(list(prompts), add_special_tokens=add_special_tokens)["input_ids"]
        if vocab is not None:
            encoded = [vocab.encode_ids(ids) for ids in encoded]
        self.prompt_ids: list[list[int]] = [list(ids) for ids in encoded]
        empty = [i for i, ids in enumerate(self.prompt_ids) if not ids]
        if empty:
            raise ValueError(f"greedy_generate: prompt {empty[0]} has no tokens")
        # Longest first: neighbours have similar lengths (little padding), and a prompt admitted later
        # is never longer than the batch it joins.
        self.pending = sorted(range(len(prompts)), key=lambda i: -len(self.prompt_ids[i]))
        self.outputs: list[Optional[str]] = [None] * len(prompts)
        self.processors = self._processors(config, logits_processor)
        # Prefill computes no logits (an empty index); a model without logits_to_keep computes them all.
        keeps = model._supports_logits_to_keep()
        self.no_logits = {"logits_to_keep": torch.empty(0, dtype=torch.long, device=self.device)} if keeps else {}
        self.last_logits = {"logits_to_keep": 1} if keeps else {}
        self.room = max_new_tokens + 32  # free columns after each relayout of the slot cache
        self.batch: Optional[_Batch] = None
        self.first: Optional[_Batch] = None

    def _processors(self, config, extra):
        # The processors model.generate would build from the model's own generation config.
        merged, _ = self.model._prepare_generation_config(config)
        self.model._prepare_special_tokens(merged, kwargs_has_attention_mask=True, device=self.device)
        width = max((len(ids) for ids in self.prompt_ids), default=0)
        return self.model._get_logits_processor(generation_config=merged, input_ids_seq_length=width,
                                                logits_processor=extra, device=self.device)

    # --- prefill ---------------------------------------------------------------------------------

    def _next_chunk(self, free: int) -> list[int]:
        """Pending prompts for one prefill forward: at most ``free`` rows and ``prefill_tokens`` padded tokens."""
        chunk: list[int] = []
        while self.pending and len(chunk) < free:
            width = len(self.prompt_ids[chunk[0] if chunk else self.pending[0]]) - 1  # longest first
            if chunk and (len(chunk) + 1) * width > self.prefill_tokens:
                break
            chunk.append(self.pending.pop(0))
        return chunk

    def _prefill(self, chunk: list[int]) -> _Batch:
        """Cache every prompt token but the last (no output layer); the last is fed by the next step."""
        prefixes = [self.prompt_ids[i][:-1] for i in chunk]
        width = max(len(p) for p in prefixes)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prefixes], dtype=torch.long)
        cache = None
        if width:
            ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prefixes], dtype=torch.long)
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                             position_ids=position.to(self.device), use_cache=True, **self.no_logits)
            cache = out.past_key_values
        return _Batch(rows=list(chunk), ids=[list(self.prompt_ids[i]) for i in chunk],
                      generated=[[] for _ in chunk], mask=mask.to(self.device),
                      position=mask.sum(-1).to(self.device),
                      feed=torch.tensor([self.prompt_ids[i][-1] for i in chunk], device=self.device), cache=cache)

    def mergeable(self) -> bool:
        """Whether this model's cache can be taken over: prefill the first chunk and look at its layers."""
        if not self.pending:
            return True
        self.first = self._prefill(self._next_chunk(self.batch_size))
        if self.first.cache is None:
            return True
        return all(type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) for layer in self.first.cache.layers)

    def _admit(self, new: _Batch) -> None:
        """Add prefilled rows to the decode batch."""
        b = self.batch
        if b is None:
            self.batch = new
            if new.cache is not None:
                cache, new.cache = new.cache, _SlotCache(new.cache, self.batch_size, new.mask.shape[1], self.room)
                new.cache.admit(cache, len(new.rows), new.mask.shape[1])
            return
        width = max(b.mask.shape[1], new.mask.shape[1])
        if b.cache is None:  # only one-token prompts so far: nothing cached yet
            if new.cache is not None:
                cache, b.cache = new.cache, _SlotCache(new.cache, self.batch_size, width, self.room)
                b.cache.admit(None, len(b.rows), 0)
                b.cache.admit(cache, len(new.rows), new.mask.shape[1])
        else:
            b.cache.admit(new.cache, len(new.rows), new.mask.shape[1])
        b.mask = torch.cat([F.pad(b.mask, (width - b.mask.shape[1], 0)), F.pad(new.mask, (width - new.mask.shape[1], 0))])
        b.rows, b.ids, b.generated = b.rows + new.rows, b.ids + new.ids, b.generated + new.generated
        b.position, b.feed = torch.cat([b.position, new.position]), torch.cat([b.feed, new.feed])

    def _refill(self) -> None:
        """Prefill pending prompts into the batch once a quarter of it (or all of it) is free."""
        if self.first is not None:
            self._admit(self.first)
            self.first = None
        threshold = max(1, self.batch_size // 4)
        while self.pending:
            free = self.batch_size - (len(self.batch.rows) if self.batch else 0)
            if free < threshold and self.batch is not None:
                return
            self._admit(self._prefill(self._next_chunk(free)))

    # --- decode --------------------------------------------------------------------------------

    def _step(self) -> None:
        b = self.batch
        if isinstance(b.cache, _SlotCache):
            b.cache.reserve()
        mask = torch.cat([b.mask, b.mask.new_ones(len(b.rows), 1)], dim=1)
        out = self.model(input_ids=b.feed[:, None], attention_mask=mask, position_ids=b.position[:, None],
                         past_key_values=b.cache, use_cache=True, **self.last_logits)
        if isinstance(b.cache, _SlotCache):
            b.cache.end += 1
        else:  # the prompts were one token long: the model made a cache, which the slot cache takes over
            b.cache = _SlotCache(out.past_key_values, self.batch_size, 1, self.room)
            b.cache.admit(out.past_key_values, len(b.rows), 1)
        scores = out.logits[:, -1].to(dtype=torch.float32)
        if self.processors:
            scores = self.processors(self._padded_ids(b), scores)
        tokens = scores.argmax(dim=-1)
        b.mask, b.position, b.feed = mask, b.position + 1, tokens
        survivors = []
        for r, token in enumerate(tokens.tolist()):
            b.generated[r].append(token)
            b.ids[r].append(token)
            if self._finished(b.generated[r]):
                self.outputs[b.rows[r]] = self._text(b.generated[r])
                self.progress(1)
            else:
                survivors.append(r)
        if not survivors:
            self.batch = None
        elif len(survivors) < len(b.rows):
            b.take(b.cache.keep(survivors))
            used = b.mask.any(0).nonzero()
            if int(used[0]):
                b.cache.trim(int(used[0]))
                b.mask = b.mask[:, int(used[0]):]

    def _padded_ids(self, b: _Batch) -> torch.Tensor:
        # Each row is left-padded with its own first token, not the pad id: a processor that looks at
        # the tokens present (a repetition penalty) then sees the row alone, whatever its batch.
        width = max(len(ids) for ids in b.ids)
        return torch.tensor([ids[:1] * (width - len(ids)) + ids for ids in b.ids], device=self.device)

    def _finished(self, generated: list[int]) -> bool:
        return (generated[-1] in self.eos or len(generated) >= self.max_new_tokens
                or self.until(self._text(generated)))

    def _text(self, generated: list[int]) -> str:
        ids = generated if self.vocab is None else self.vocab.decode_ids(torch.tensor(generated)).tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def run(self) -> list[str]:
        while self.pending or self.first is not None or self.batch is not None:
            self._refill()
            self._step()
        return [text or "" for text in self.outputs]


def reference_generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 32,
                       add_special_tokens: bool = True, desc: str = "generate",
                       vocab: Optional[TrimmedVocab] = None, logits_processor: Optional[list] = None,
                       until: Callable[[str], bool] = ended_first_line) -> list[str]:
    """The same continuations with ``model.generate`` on fixed batches of ``batch_size`` (sorted by length).

    The reference for tests and ``bench/eval_speed.py``, and the path of models whose cache cannot be
    merged.
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return _reference(model, tokenizer, prompts, batch_size, max_new_tokens, add_special_tokens, desc, vocab,
                          logits_processor, until)
    finally:
        tokenizer.padding_side = side


def _reference(model, tokenizer, prompts, batch_size, max_new_tokens, add_special_tokens, desc, vocab,
               logits_processor, until) -> list[str]:
    to_model = (lambda ids: ids) if vocab is None else vocab.encode_ids
    config = _generation_config(model, tokenizer, vocab, max_new_tokens)
    lengths = [len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="item", disable=not is_main_process()) as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens)
            input_ids = to_model(enc["input_ids"]).to(device)
            width = input_ids.shape[1]
            out = model.generate(input_ids=input_ids, attention_mask=enc["attention_mask"].to(device),
                                 generation_config=config, logits_processor=logits_processor,
                                 stopping_criteria=StoppingCriteriaList([TextStop(tokenizer, width, until, vocab)]))
            for i, text in zip(idx, decode(tokenizer, out[:, width:].cpu(), vocab)):
                outputs[i] = text
            bar.update(len(idx))
    return outputs
