"""Batched greedy generation that stops at the end of the first line.

Prompts are sorted by length (less padding), left-padded, and decoded greedily. A sequence stops
at EOS, at ``max_new_tokens``, or as soon as its continuation has a line break after some text: a
base model never stops by itself and goes on with the next "Question:". Leading line breaks do not
stop it. Results come back in the order of the prompts.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

log = logging.getLogger(__name__)


class FirstLineStop(StoppingCriteria):
    """Stop a sequence once its generated text holds a line break after non-blank text."""

    def __init__(self, tokenizer, prompt_length: int):
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        return torch.tensor([ended_first_line(t) for t in texts], dtype=torch.bool, device=input_ids.device)


def ended_first_line(text: str) -> bool:
    """Whether ``text`` contains a line break after some non-blank text.

    >>> ended_first_line("\\n24"), ended_first_line("24\\n"), ended_first_line(" 24")
    (False, True, False)
    """
    stripped = text.lstrip()
    return "\n" in stripped or "\r" in stripped


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    ids = eos if isinstance(eos, list) else [eos] if eos is not None else []
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def greedy_generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int = 8, max_new_tokens: int = 32,
                    add_special_tokens: bool = True, desc: str = "generate") -> list[str]:
    """Greedy continuations of ``prompts`` (decoded, special tokens dropped, not yet cut).

    ``add_special_tokens=False`` for prompts that already hold them (chat-template output starts
    with BOS; adding another is a classic bug).
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    try:
        return _generate(model, tokenizer, prompts, batch_size, max_new_tokens, add_special_tokens, desc)
    finally:
        tokenizer.padding_side = side


def _generate(model, tokenizer, prompts, batch_size, max_new_tokens, add_special_tokens, desc) -> list[str]:
    eos = _eos_ids(model, tokenizer)
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=eos or None)
    lengths = [len(tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=len(prompts), desc=desc, unit="item") as bar:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens).to(device)
            width = enc["input_ids"].shape[1]
            out = model.generate(**enc, generation_config=config,
                                 stopping_criteria=StoppingCriteriaList([FirstLineStop(tokenizer, width)]))
            for i, text in zip(idx, tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)):
                outputs[i] = text
            bar.update(len(idx))
    return outputs
