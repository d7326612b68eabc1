"""Collation: a micro-batch of whole groups becomes padded tensors.

Preference examples become ``2N`` rows ``[chosen_1..chosen_N; rejected_1..rejected_N]`` so that
one forward pass scores both (TRL's "concatenated forward"). ``target_mask[s, t]`` marks the
positions whose NEXT token is a completion token: the log-prob of ``input_ids[s, t + 1]`` is read
from the logits at ``t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bcat.tokenization import Example


@dataclass
class GroupCollator:
    """Pad a list of :class:`Example` (one micro-batch) to tensors.

    >>> ex = [Example(0, "g0", "en", [1, 5], ([7, 2], [8, 9, 2])), Example(1, "g0", "fr", [1, 6, 6], ([7, 2], [8, 2]))]
    >>> b = GroupCollator(pad_token_id=0, anchor="en")(ex)
    >>> b["input_ids"].tolist()
    [[1, 5, 7, 2, 0], [1, 6, 6, 7, 2], [1, 5, 8, 9, 2], [1, 6, 6, 8, 2]]
    >>> b["target_mask"].int().tolist()  # marks t where input_ids[t + 1] is a completion token
    [[0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 1, 1]]
    >>> b["group_index"].tolist(), b["is_anchor"].tolist(), b["langs"]
    ([0, 0], [True, False], ['en', 'fr'])
    """

    pad_token_id: int
    anchor: str
    bos_token_id: int | None = None
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[Example]) -> dict:
        rows, prompt_lens = [], []
        n_completions = len(examples[0].completions)
        for k in range(n_completions):  # all chosen first, then all rejected
            for ex in examples:
                rows.append(ex.prompt_ids + ex.completions[k])
                prompt_lens.append(len(ex.prompt_ids))
        width = max(len(r) for r in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        target_mask = torch.zeros((len(rows), width - 1), dtype=torch.bool)
        for s, (row, p) in enumerate(zip(rows, prompt_lens)):
            input_ids[s, : len(row)] = torch.tensor(row)
            attention_mask[s, : len(row)] = 1
            target_mask[s, p - 1 : len(row) - 1] = True
        # Hidden states are pooled over real tokens except BOS: its state is the same in every
        # language (an attention sink) and would inflate cross-lingual similarity.
        pool_mask = attention_mask.bool()
        if self.bos_token_id is not None:
            pool_mask &= input_ids != self.bos_token_id
        groups: dict[str, int] = {}
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target_mask": target_mask,
            "pool_mask": pool_mask,
            "prompt_lengths": torch.tensor(prompt_lens),
            "group_index": torch.tensor([groups.setdefault(ex.group, len(groups)) for ex in examples]),
            "is_anchor": torch.tensor([ex.lang == self.anchor for ex in examples]),
            "langs": [ex.lang for ex in examples],
            "indices": torch.tensor([ex.index for ex in examples]),
            "completion_ids": [[ex.completions[k] for ex in examples] for k in range(n_completions)],
        }
