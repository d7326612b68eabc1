"""Batched greedy generation that stops at the end of the first line (or another text condition).

Prompts are sorted by length (less padding), left-padded, and decoded greedily. A sequence stops
at EOS, at ``max_new_tokens``, or as soon as its continuation has a line break after some text: a
base model never stops by itself and goes on with the next "Question:". Leading line breaks do not
stop it. A task whose answer spans lines (worked solutions) passes its own ``until`` test of the
continuation instead. Results come back in the order of the prompts.

A model with a trimmed vocabulary (:mod:`bcat.model.trim`) generates the same way: prompt ids are mapped
into its ids and the generated ids back, so callers only see text. It can only emit kept ids.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from bcat.evaluation.sharding import is_main_process
from bcat.model.trim import TrimmedVocab

log = logging.getLogger(__name__)


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


def _eos_ids(model, tokenizer, vocab: Optional[TrimmedVocab]) -> list[int]:
    """Stop ids in the model's id space: its generation config's (already mapped by a trim) and the tokenizer's."""
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None:
        own = tokenizer.eos_token_id if vocab is None else vocab.encode_ids([tokenizer.eos_token_id])[0]
        if own not in ids:
            ids.append(own)
    return ids


def greedy_generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 32,
                    add_special_tokens: bool = True, desc: str = "generate",
                    vocab: Optional[TrimmedVocab] = None, logits_processor: Optional[list] = None,
                    until: Callable[[str], bool] = ended_first_line) -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, special tokens dropped, not yet cut).

    ``add_special_tokens=False`` for prompts that already hold them (chat-template output starts
    with BOS; adding another is a classic bug). ``vocab``: the model's trimmed vocabulary, if any;
    every prompt token must be kept. ``logits_processor``: passed to ``model.generate``. ``until``:
    a sequence stops once this holds for its continuation (default: the first line has ended).
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return _generate(model, tokenizer, prompts, batch_size, max_new_tokens, add_special_tokens, desc, vocab,
                         logits_processor, until)
    finally:
        tokenizer.padding_side = side


def _generate(model, tokenizer, prompts, batch_size, max_new_tokens, add_special_tokens, desc, vocab,
              logits_processor, until) -> list[str]:
    to_model = (lambda ids: ids) if vocab is None else vocab.encode_ids
    eos = _eos_ids(model, tokenizer, vocab)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=to_model([tokenizer.pad_token_id])[0], eos_token_id=eos or None)
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
