"""Vocabulary trimming: train on the few thousand token ids the data uses instead of all of them.

Gemma 3 270M has a 262,144-token vocabulary: its embedding (tied to the output layer) is 168M of
the model's 268M parameters, and the output layer's matmul plus softmax over 262k logits dominate a
CPU training step. A training set touches a few hundred to a few thousand ids. Trimming keeps only
those rows of the embedding and of the output layer:

- ``kept`` (sorted, new id -> old id) selects rows: ``E' = E[kept]``, ``W' = W[kept]``, ``b' = b[kept]``.
- The transformer body is untouched, so for any input made of kept ids the hidden states are the
  same, and the trimmed logits are the full logits at the kept ids: ``z'_j = z_{kept[j]}``. Hence
  ``log_softmax(z')_j = z_{kept[j]} - logsumexp_{i in kept} z_i``, the full model's log-probability
  renormalised over the kept set. Training on data whose targets are all kept ids therefore
  optimises exactly that renormalised objective (SFT, DPO, ORPO alike). It differs from the full
  model's objective only by the probability mass the full model puts on dropped ids, at each
  position ``log p_full = log p_trim + log P_full(kept)``, with ``P_full(kept) <= 1``.
- A trimmed model cannot produce a dropped id (its output layer has no row for it), so greedy or
  sampled generation needs no extra mask. :class:`KeptIdsLogitsProcessor` gives the full model the
  same restriction, to compare the two. :func:`bcat.evaluation.generation.greedy_generate` maps
  prompt ids in and generated ids out.
- :func:`export_full` writes the full-vocabulary model back: kept rows take the trained values,
  every other row is bit-identical to the original file.

Typical use::

    ids = kept_token_ids(tokenizer, all_texts)          # train AND evaluation texts
    vocab = trim_model(model, ids)                       # in place, before LoRA and the optimizer
    batch_ids = vocab.encode_ids(tokenizer(text)["input_ids"])   # labels: -100 passes through
    ... train ...
    vocab.save(run_dir / "trimmed_vocab.json")
    export_full(model, vocab, full_model_dir, run_dir / "full")  # plain transformers loads this
    # or, with LoRA: save_adapter(peft_model, vocab, run_dir / "adapter")  -> loads on the full model

Inputs must consist of kept ids: a token never seen when ``kept`` was built has no embedding in the
trimmed model. Build ``kept`` from every text the model will read (training and evaluation), or
map unknown ids to ``<unk>`` (``encode_ids(..., on_missing="unk")``, inexact), or evaluate the
exported full model.

>>> vocab = TrimmedVocab.from_ids([7, 2, 5], old_vocab_size=10)
>>> vocab.kept.tolist(), vocab.encode_ids([5, 7, -100]), vocab.decode_ids([0, 2])
([2, 5, 7], [1, 2, -100], [2, 7])
"""

from __future__ import annotations

import dataclasses
import json
import logging
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn
from transformers import LogitsProcessor

from bcat.data.tokenization import Example

logger = logging.getLogger(__name__)

MARGIN_CHARS = string.printable
"""Characters whose tokens are always kept (digits, ASCII letters, punctuation, whitespace), alone
and after a space, so a trimmed model can still spell numbers, codes and Latin-script names that
were not in the data."""

ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
             "decoder_start_token_id", "forced_bos_token_id", "forced_eos_token_id")
"""Config and generation-config fields that hold token ids (an int, a list of ints or None)."""


# ----------------------------------------------------------------------------- which ids to keep

def kept_token_ids(tokenizer, texts: Iterable[str], margin: bool = True, extra_ids: Iterable[int] = ()) -> list[int]:
    """Sorted ids to keep: those the texts use, the special tokens, and (``margin=True``) a margin.

    - every id of ``tokenizer(text)`` with and without special tokens, for every text. Tokenise
      the same strings training will tokenise (prompt + completion as one string if that is how
      the trainer encodes them): a merge across a boundary can produce an id that neither part has;
    - :func:`special_token_ids`: bos, eos, pad, unk, mask, additional special tokens, and the
      tokens a chat template writes;
    - margin: :func:`byte_token_ids` (all 256 byte tokens, so any unseen character can still be
      written byte by byte) and the tokens of each character of :data:`MARGIN_CHARS`;
    - ``extra_ids``, e.g. additional stop tokens of a generation config.
    """
    kept = set(special_token_ids(tokenizer)) | {int(i) for i in extra_ids}
    batch = [t for t in texts if t]
    for add_special in (True, False):
        for ids in tokenizer(batch, add_special_tokens=add_special)["input_ids"] if batch else []:
            kept.update(ids)
    if margin:
        kept.update(byte_token_ids(tokenizer))
        kept.update(_ids_of(tokenizer, list(MARGIN_CHARS) + [" " + c for c in MARGIN_CHARS]))
    size = len(tokenizer)
    bad = sorted(i for i in kept if not 0 <= i < size)
    if bad:
        raise ValueError(f"token ids outside the tokenizer's {size} ids: {bad[:10]}")
    return sorted(kept)


def special_token_ids(tokenizer) -> list[int]:
    """Ids of the tokenizer's special tokens and of the tokens its chat template writes."""
    ids = set(tokenizer.all_special_ids)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            ids.add(int(value))
    if getattr(tokenizer, "chat_template", None):
        conversation = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
        try:
            rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
            rendered += tokenizer.apply_chat_template(conversation[:1], tokenize=False, add_generation_prompt=True)
        except Exception as err:  # a template may refuse this conversation; its special tokens are still kept
            logger.warning("could not render the chat template to find its tokens: %s", err)
        else:
            ids.update(_ids_of(tokenizer, [rendered]))
    return sorted(ids)


def byte_token_ids(tokenizer) -> list[int]:
    """Ids of the 256 single-byte tokens, which can spell any UTF-8 text.

    Two schemes exist: SentencePiece-style byte fallback (Gemma, Llama 2, Mistral) names them
    ``<0x00>`` .. ``<0xFF>``; byte-level BPE (GPT-2, Llama 3, Qwen) writes each byte as one
    character of the GPT-2 byte-to-unicode table. A tokenizer with neither gives ``[]``.
    """
    vocab = tokenizer.get_vocab()
    fallback = [vocab[f"<0x{b:02X}>"] for b in range(256) if f"<0x{b:02X}>" in vocab]
    if fallback:
        return sorted(fallback)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and "ByteLevel" in f"{backend.pre_tokenizer} {backend.decoder}":
        return sorted(vocab[c] for c in _gpt2_byte_symbols() if c in vocab)
    return []


def _gpt2_byte_symbols() -> list[str]:
    """The 256 characters GPT-2's byte-level BPE uses for bytes 0..255 (printable bytes map to
    themselves, the others to code points from 256 up)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def _ids_of(tokenizer, texts: Sequence[str]) -> set[int]:
    """All ids of the texts tokenised without special tokens."""
    return {i for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"] for i in ids}


# ----------------------------------------------------------------------------- the id mapping

@dataclass
class TrimmedVocab:
    """Mapping between the original ids ("old") and the trimmed model's ids ("new").

    Invariants: ``kept`` is sorted and unique, ``kept[new] == old`` and ``old_to_new[kept[new]] == new``;
    ``old_to_new[old] == -1`` for dropped ids. Negative ids (the ``-100`` label mask) map to themselves.
    """

    kept: torch.Tensor
    """LongTensor of shape (new_vocab,): the original id of every new id, ascending."""
    old_vocab_size: int
    """Vocabulary size of the original model."""
    param_names: tuple[str, ...] = ()
    """State-dict keys of the trimmed rows (embedding, output layer, its bias); set by :func:`trim_model`."""
    unk_id: int | None = None
    """New id of ``<unk>``, used by ``encode_ids(..., on_missing="unk")``."""
    old_to_new: torch.Tensor = field(init=False, repr=False)
    """LongTensor of shape (old_vocab,): new id or -1."""

    def __post_init__(self):
        self.kept = torch.as_tensor(self.kept, dtype=torch.long).flatten()
        if self.kept.numel() == 0:
            raise ValueError("the kept vocabulary is empty")
        if (self.kept[1:] <= self.kept[:-1]).any():
            raise ValueError("kept ids must be sorted and unique")
        if self.kept[0] < 0 or self.kept[-1] >= self.old_vocab_size:
            raise ValueError(f"kept ids must lie in [0, {self.old_vocab_size}) (the model's embedding rows), got "
                             f"{int(self.kept[0])}..{int(self.kept[-1])}: is the tokenizer larger than the model?")
        self.old_to_new = torch.full((self.old_vocab_size,), -1, dtype=torch.long)
        self.old_to_new[self.kept] = torch.arange(len(self.kept))

    @classmethod
    def from_ids(cls, ids: Iterable[int], old_vocab_size: int, **kwargs) -> "TrimmedVocab":
        """Build from any iterable of ids (sorted and deduplicated here)."""
        return cls(torch.tensor(sorted(set(int(i) for i in ids)), dtype=torch.long), old_vocab_size, **kwargs)

    def __len__(self) -> int:
        return len(self.kept)

    def encode_ids(self, old_ids, on_missing: str = "error"):
        """Original ids -> trimmed ids. Accepts a tensor or a (nested) list; returns the same kind.

        ``on_missing``: ``"error"`` raises ``KeyError`` for a dropped id; ``"unk"`` maps it to
        :attr:`unk_id` (changes the model input: results are no longer exact).
        """
        ids, as_list = _as_tensor(old_ids)
        out = ids.clone()
        valid = ids >= 0
        if (ids[valid] >= self.old_vocab_size).any():
            raise KeyError(f"token id >= original vocabulary size {self.old_vocab_size}")
        out[valid] = self.old_to_new[ids[valid]]
        missing = valid & (out < 0)
        if missing.any():
            if on_missing == "unk" and self.unk_id is not None:
                out[missing] = self.unk_id
            else:
                dropped = sorted(set(ids[missing].tolist()))
                raise KeyError(f"{len(dropped)} token id(s) not in the trimmed vocabulary, e.g. {dropped[:10]}; "
                               "build the kept ids from every text the model reads")
        return out.tolist() if as_list else out

    def decode_ids(self, new_ids):
        """Trimmed ids -> original ids (negative ids pass through). Tensor or (nested) list in, same out."""
        ids, as_list = _as_tensor(new_ids)
        out = ids.clone()
        valid = ids >= 0
        if (ids[valid] >= len(self)).any():
            raise KeyError(f"token id >= trimmed vocabulary size {len(self)}")
        out[valid] = self.kept[ids[valid]]
        return out.tolist() if as_list else out

    def encode(self, tokenizer, text: str, **kwargs) -> list[int]:
        """Tokenise with the original tokenizer and map to trimmed ids."""
        return self.encode_ids(tokenizer(text, **kwargs)["input_ids"])

    def decode(self, tokenizer, new_ids, **kwargs) -> str:
        """Map trimmed ids back and decode with the original tokenizer."""
        return tokenizer.decode(self.decode_ids(new_ids), **kwargs)

    def save(self, path: str | Path) -> None:
        """Write as JSON (a training run keeps it next to its checkpoints, for :func:`export_full`)."""
        data = {"old_vocab_size": self.old_vocab_size, "param_names": list(self.param_names),
                "unk_id": self.unk_id, "kept": self.kept.tolist()}
        Path(path).write_text(json.dumps(data) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "TrimmedVocab":
        """Read a file written by :meth:`save`."""
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(torch.tensor(data["kept"], dtype=torch.long), data["old_vocab_size"],
                   tuple(data["param_names"]), data["unk_id"])


def _as_tensor(ids) -> tuple[torch.Tensor, bool]:
    """(LongTensor, came_as_list)."""
    if isinstance(ids, torch.Tensor):
        return ids.long(), False
    return torch.as_tensor(ids, dtype=torch.long), True


# ----------------------------------------------------------------------------- trimming a model

def trim_model(model, kept: Sequence[int] | torch.Tensor) -> TrimmedVocab:
    """Keep only the rows ``kept`` of the input embedding and the output layer, in place.

    - The embedding module keeps its class (Gemma's ``Gemma3TextScaledWordEmbedding`` multiplies by
      ``sqrt(hidden)`` in ``forward``; only its weight is sliced), so does the output ``nn.Linear``.
    - Tied embeddings (Gemma, many small models) stay tied: the output layer gets the same new
      parameter. Untied ones are sliced separately.
    - ``vocab_size`` is updated in the config and on every module that caches it (the loss
      reshapes logits with it), special-token ids in ``config`` and ``generation_config`` are
      mapped to new ids, and ``padding_idx`` follows.

    Call it before wrapping the model with LoRA and before creating the optimizer: both hold
    references to the old parameters. Raises ``ValueError`` if a config token id is not kept.
    """
    if hasattr(model, "peft_config"):
        raise TypeError("trim the base model before adding adapters (trim_model, then get_peft_model)")
    emb = model.get_input_embeddings()
    head = model.get_output_embeddings()
    old_vocab = emb.weight.shape[0]
    before = sum(p.numel() for p in model.parameters())
    vocab = TrimmedVocab(torch.as_tensor(kept, dtype=torch.long), old_vocab)
    tied = head is not None and head.weight is emb.weight
    if head is not None and head.weight.shape[0] != old_vocab:
        raise ValueError(f"output layer has {head.weight.shape[0]} rows, embedding {old_vocab}: cannot trim")
    new_config_ids = _remapped_config_ids(model, vocab)  # validate everything before changing anything

    vocab.param_names = _param_names(model, emb, head)
    with torch.no_grad():
        _slice_embedding(emb, vocab)
        if head is not None:
            _slice_linear(head, vocab, share_weight=emb.weight if tied else None)
    _set_vocab_size(model, old_vocab, len(vocab))
    for target, name, value in new_config_ids:
        setattr(target, name, value)
    unk = getattr(model.config, "unk_token_id", None)
    vocab.unk_id = int(vocab.old_to_new[unk]) if isinstance(unk, int) and vocab.old_to_new[unk] >= 0 else None
    logger.info("trimmed vocabulary %d -> %d ids (%s embeddings); %.1fM -> %.1fM parameters", old_vocab, len(vocab),
                "tied" if tied else "untied", before / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
    return vocab


def _param_names(model, emb: nn.Module, head: nn.Module | None) -> tuple[str, ...]:
    """State-dict keys of the embedding weight and the output layer's weight and bias."""
    names = []
    for name, module in model.named_modules(remove_duplicate=False):
        if module is emb or (head is not None and module is head):
            names.append(f"{name}.weight")
            if getattr(module, "bias", None) is not None:
                names.append(f"{name}.bias")
    return tuple(dict.fromkeys(names))


def _slice_embedding(emb: nn.Embedding, vocab: TrimmedVocab) -> None:
    """``E <- E[kept]`` keeping the module (and its class, scale buffer, ``requires_grad``)."""
    emb.weight = nn.Parameter(emb.weight.detach()[vocab.kept].clone(), requires_grad=emb.weight.requires_grad)
    emb.num_embeddings = len(vocab)
    if getattr(emb, "padding_idx", None) is not None:
        new = int(vocab.old_to_new[emb.padding_idx])
        emb.padding_idx = new if new >= 0 else None


def _slice_linear(head: nn.Linear, vocab: TrimmedVocab, share_weight: nn.Parameter | None) -> None:
    """``W <- W[kept]``, ``b <- b[kept]``; a tied head takes the (already sliced) embedding parameter."""
    if share_weight is not None:
        head.weight = share_weight
    else:
        head.weight = nn.Parameter(head.weight.detach()[vocab.kept].clone(), requires_grad=head.weight.requires_grad)
    if getattr(head, "bias", None) is not None:
        head.bias = nn.Parameter(head.bias.detach()[vocab.kept].clone(), requires_grad=head.bias.requires_grad)
    head.out_features = len(vocab)


def _set_vocab_size(model, old: int, new: int) -> None:
    """Update ``vocab_size`` in the (text) config and on modules that cache it (the loss uses it)."""
    configs = {id(model.config): model.config}
    text = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    configs[id(text)] = text
    for config in configs.values():
        if getattr(config, "vocab_size", None) == old:
            config.vocab_size = new
    for module in model.modules():
        if getattr(module, "vocab_size", None) == old:
            module.vocab_size = new


def _remapped_config_ids(model, vocab: TrimmedVocab) -> list[tuple[object, str, object]]:
    """(object, field, new value) for every token-id field of config and generation config."""
    changes = []
    targets = [model.config, getattr(model, "generation_config", None)]
    if hasattr(model.config, "get_text_config") and model.config.get_text_config() is not model.config:
        targets.append(model.config.get_text_config())
    for target in targets:
        if target is None:
            continue
        for name in ID_FIELDS:
            value = getattr(target, name, None)
            if value is None:
                continue
            try:
                changes.append((target, name, _map_id_field(value, vocab)))
            except KeyError:
                raise ValueError(f"{type(target).__name__}.{name}={value} is not among the kept ids; "
                                 "add it with kept_token_ids(..., extra_ids=...)") from None
    return changes


def _map_id_field(value, vocab: TrimmedVocab):
    """Map an int or a list of ints to new ids; KeyError if one was dropped."""
    if isinstance(value, (list, tuple)):
        return [_map_id_field(v, vocab) for v in value]
    value = int(value)
    if not 0 <= value < vocab.old_vocab_size or vocab.old_to_new[value] < 0:
        raise KeyError(value)
    return int(vocab.old_to_new[value])


# ----------------------------------------------------------------------------- generation

class KeptIdsLogitsProcessor(LogitsProcessor):
    """Sets the logits of dropped ids to ``-inf``: the FULL model then generates as the trimmed one.

    A trimmed model needs no such processor: it has no output row for a dropped id, so it cannot
    emit one. This one exists to compare the two (and to restrict a full model to a vocabulary).
    """

    def __init__(self, kept: torch.Tensor):
        self.kept = torch.as_tensor(kept, dtype=torch.long)
        self.mask: torch.Tensor | None = None  # built on first use, sized like the model's logits

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.mask is None or self.mask.shape[-1] != scores.shape[-1] or self.mask.device != scores.device:
            self.mask = torch.full((scores.shape[-1],), float("-inf"), device=scores.device)
            self.mask[self.kept.to(scores.device)] = 0.0
        return scores + self.mask.to(scores.dtype)


# ----------------------------------------------------------------------------- in a training run

def trim_vocabulary(model, tokenizer, examples: list[Example]):
    """Restrict ``model`` to the token ids the examples use (plus specials and byte tokens), in place,
    and map the examples to the new ids. Must run before LoRA and the optimizer see the weights."""
    used = {t for e in examples for ids in (e.prompt_ids, *e.completions) for t in ids}
    vocab = trim_model(model, kept_token_ids(tokenizer, [], extra_ids=used))
    mapped = [dataclasses.replace(e, prompt_ids=vocab.encode_ids(e.prompt_ids),
                                  completions=tuple(vocab.encode_ids(c) for c in e.completions)) for e in examples]
    return vocab, mapped


def special_id(token_id: int | None, vocab) -> int | None:
    """A special token's id in the (possibly trimmed) model."""
    return token_id if token_id is None or vocab is None else vocab.encode_ids([token_id])[0]
