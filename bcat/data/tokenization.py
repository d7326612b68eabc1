"""Tokenization with an exact prompt/completion boundary and a length policy that never cuts a
completion.

Prompt and completion are tokenized SEPARATELY and concatenated, so the boundary is known exactly
(finding it again inside a jointly tokenized string is the source of a well-known off-by-one bug).

- Plain strings: the prompt gets the tokenizer's special tokens (BOS), the completion none, and
  every completion ends with EOS.
- Conversational: the prompt is rendered with the chat template (``add_generation_prompt=True``),
  the completion is the rest of the rendered conversation; both are tokenized WITHOUT adding
  special tokens, because the template already wrote them (no doubled BOS).

Over-long examples lose prompt tokens from ``prompt_truncation_side`` (the BOS is kept); the
count is recorded. A completion that does not fit on its own is an error naming the line.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from jinja2 import TemplateError

from bcat.data.records import Record, Text
from bcat.errors import DataError


@dataclass
class Example:
    """A tokenized record. ``completions`` is ``(completion,)`` or ``(chosen, rejected)``."""

    index: int
    group: str
    lang: str
    prompt_ids: list[int]
    completions: tuple[list[int], ...]
    prompt_trimmed: int = 0

    @property
    def length(self) -> int:
        """Tokens of the longest prompt + completion sequence."""
        return len(self.prompt_ids) + max(len(c) for c in self.completions)


def _render(tokenizer, prompt: Text, completion: Text) -> tuple[list[int], list[int]]:
    if isinstance(prompt, str) != isinstance(completion, str):
        raise ValueError("prompt and completion must both be strings or both be message lists")
    if isinstance(prompt, str):
        prompt_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    else:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("conversational records need a tokenizer with a chat template")
        prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise ValueError("the chat template renders the prompt differently once the answer is added")
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and prompt_ids[:2] == [bos, bos]:
        prompt_ids = prompt_ids[1:]
    eos = tokenizer.eos_token_id
    if eos is not None and (not completion_ids or completion_ids[-1] != eos):
        completion_ids = completion_ids + [eos]
    return prompt_ids, completion_ids


def trim_prompt(prompt_ids: list[int], budget: int, side: str, bos: int | None) -> list[int]:
    """Drop prompt tokens from ``side`` until ``budget`` remain, keeping a leading BOS.

    >>> trim_prompt([1, 10, 11, 12, 13], 3, "left", bos=1)
    [1, 12, 13]
    >>> trim_prompt([1, 10, 11, 12, 13], 3, "right", bos=1)
    [1, 10, 11]
    """
    if len(prompt_ids) <= budget:
        return prompt_ids
    keep_bos = bos is not None and prompt_ids[:1] == [bos]
    head, body = (prompt_ids[:1], prompt_ids[1:]) if keep_bos else ([], prompt_ids)
    room = budget - len(head)
    body = body[len(body) - room:] if side == "left" else body[:room]
    return head + body


def tokenize_record(record: Record, index: int, tokenizer, max_length: int, side: str = "left") -> Example:
    names = ("completion",) if len(record.completions) == 1 else ("chosen", "rejected")
    prompt_ids, completions = None, []
    for name, completion in zip(names, record.completions):
        try:
            prompt_ids, ids = _render(tokenizer, record.prompt, completion)
        except (ValueError, TemplateError) as e:  # a chat template refuses messages with raise_exception
            raise DataError(record.source, record.line, name, str(e)) from None
        completions.append(ids)
    assert prompt_ids is not None
    longest = max(len(c) for c in completions)
    min_prompt = 1 if prompt_ids else 0
    if longest + min_prompt > max_length:
        name = names[max(range(len(completions)), key=lambda i: len(completions[i]))]
        raise DataError(
            record.source, record.line, name,
            f"completion alone is {longest} tokens; it does not fit data.max_length={max_length} "
            "(completions are never cut: raise data.max_length or shorten the answer)",
        )
    trimmed = trim_prompt(prompt_ids, max_length - longest, side, tokenizer.bos_token_id)
    return Example(index, record.group, record.lang, trimmed, tuple(completions), len(prompt_ids) - len(trimmed))


def tokenize_records(records: list[Record], tokenizer, max_length: int, side: str = "left") -> list[Example]:
    return [tokenize_record(r, i, tokenizer, max_length, side) for i, r in enumerate(records)]


def length_stats(examples: list[Example]) -> dict[str, dict[str, float]]:
    """Token-length summary: prompt, completion, total; and how many prompts were trimmed."""

    def summary(values: list[int]) -> dict[str, float]:
        values = sorted(values)
        return {"min": values[0], "median": statistics.median(values), "p95": values[int(0.95 * (len(values) - 1))],
                "max": values[-1]}

    return {
        "prompt": summary([len(e.prompt_ids) for e in examples]),
        "completion": summary([len(c) for e in examples for c in e.completions]),
        "total": summary([e.length for e in examples]),
        "trimmed_prompts": {"count": sum(e.prompt_trimmed > 0 for e in examples),
                            "tokens": sum(e.prompt_trimmed for e in examples)},
    }
