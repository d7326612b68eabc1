"""Collation: a micro-batch of whole groups becomes padded tensors.

Preference examples become ``2N`` rows ``[chosen_1..chosen_N; rejected_1..rejected_N]`` so that
one forward pass scores both (TRL's "concatenated forward"). ``target_mask[s, t]`` marks the
positions whose NEXT token is a completion token: the log-prob of ``input_ids[s, t + 1]`` is read
from the logits at ``t``.

With ``pack=True`` a preference batch ALSO carries the prompt-shared layout (``packed_*`` keys):
pair ``i`` is one sequence ``prompt | chosen | rejected``, computed once instead of twice, and the
sequences are packed without padding into as few rows as fit the longest one (first-fit decreasing):
short pairs share a row, so chat-shaped data (short prompts, answers of very different lengths)
does not pay for padding.

- ``packed_pairs[r, u]``: the pair at that position, -1 for padding. Tokens attend only within
  their own pair.
- ``packed_segments[r, u]``: 0 prompt, 1 chosen, 2 rejected, -1 padding. The forward builds the
  4D attention mask from both: causal, within the pair, and chosen tokens hidden from rejected ones.
- ``packed_position_ids[r, u]``: positions restart at 0 for every pair, and the rejected completion
  restarts right after the prompt, so every token has the position it has in its plain row.
- ``packed_index[s, t]``: where the state of plain row ``s``, position ``t`` lives in the packed
  batch, as a flat index ``r * width + u``. The log-prob of ``input_ids[s, t + 1]`` comes from the
  state at ``packed_index[s, t]``; e.g. the first rejected token is scored from the last prompt
  token's state, the same state that scores the first chosen token.
- ``packed_pool_pairs``: the pair whose chosen row pools the position (``pool_mask`` of the chosen
  rows: prompt + chosen), -1 elsewhere.

The plain tensors stay in the batch: the loss reads log-probs in the plain layout whichever
forward produced them, and token counts keep their meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bcat.data.tokenization import Example


def pool_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, bos_token_id: int | None) -> torch.Tensor:
    """Positions whose hidden states are pooled: real tokens except BOS.

    BOS's state is the same in every language (an attention sink) and would inflate cross-lingual
    similarity.

    >>> pool_mask(torch.tensor([[1, 5, 6, 0]]), torch.tensor([[1, 1, 1, 0]]), bos_token_id=1).int().tolist()
    [[0, 1, 1, 0]]
    """
    mask = attention_mask.bool()
    if bos_token_id is not None:
        mask = mask & (input_ids != bos_token_id)
    return mask


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
    pack: bool = False
    """Add the prompt-shared ``packed_*`` tensors to preference batches (see the module docstring)."""

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
        pool = pool_mask(input_ids, attention_mask, self.bos_token_id)
        groups: dict[str, int] = {}
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "target_mask": target_mask,
            "pool_mask": pool,
            "prompt_lengths": torch.tensor(prompt_lens),
            "group_index": torch.tensor([groups.setdefault(ex.group, len(groups)) for ex in examples]),
            "is_anchor": torch.tensor([ex.lang == self.anchor for ex in examples]),
            "langs": [ex.lang for ex in examples],
            "indices": torch.tensor([ex.index for ex in examples]),
            "completion_ids": [[ex.completions[k] for ex in examples] for k in range(n_completions)],
        }
        if self.pack and n_completions == 2:
            batch.update(self._packed(examples, width, pool))
        return batch

    def _packed(self, examples: list[Example], plain_width: int, pool_mask: torch.Tensor) -> dict:
        """The prompt-shared layout, ``prompt | chosen | rejected`` per pair, pairs packed into rows.

        >>> ex = [Example(0, "g0", "en", [1, 5, 5, 5, 5], ([7, 2], [8, 9, 2])),
        ...       Example(1, "g0", "fr", [1, 6, 6], ([7, 2], [8, 2])), Example(2, "g1", "en", [1], ([3], [4]))]
        >>> b = GroupCollator(pad_token_id=0, anchor="en", pack=True)(ex)
        >>> b["packed_input_ids"].tolist()  # pair 0 fills a row; pairs 1 and 2 share one (first-fit decreasing)
        [[1, 5, 5, 5, 5, 7, 2, 8, 9, 2], [1, 6, 6, 7, 2, 8, 2, 1, 3, 4]]
        >>> b["packed_pairs"][1].tolist(), b["packed_segments"][1].tolist()
        ([1, 1, 1, 1, 1, 1, 1, 2, 2, 2], [0, 0, 0, 1, 1, 2, 2, 0, 1, 2])
        >>> b["packed_position_ids"].tolist()
        [[0, 1, 2, 3, 4, 5, 6, 5, 6, 7], [0, 1, 2, 3, 4, 3, 4, 0, 1, 1]]
        >>> b["packed_index"][3].tolist()  # rejected row of pair 0: prompt at 0-4, rejected at 7-9
        [0, 1, 2, 3, 4, 7, 8, 9]
        """
        n = len(examples)
        lengths = [len(ex.prompt_ids) + len(ex.completions[0]) + len(ex.completions[1]) for ex in examples]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        rows = first_fit_decreasing(lengths, width)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        pairs = torch.full((len(rows), width), -1, dtype=torch.long)
        segments = torch.full((len(rows), width), -1, dtype=torch.long)
        positions = torch.zeros((len(rows), width), dtype=torch.long)
        index = torch.zeros((2 * n, plain_width), dtype=torch.long)
        pool_pairs = torch.full((len(rows), width), -1, dtype=torch.long)
        for row, members in enumerate(rows):
            start = 0
            for i in members:
                ex = examples[i]
                p, c, r = len(ex.prompt_ids), len(ex.completions[0]), len(ex.completions[1])
                end = start + p + c + r
                ids[row, start:end] = torch.tensor(ex.prompt_ids + ex.completions[0] + ex.completions[1])
                pairs[row, start:end] = i
                segments[row, start:end] = torch.tensor([0] * p + [1] * c + [2] * r)
                positions[row, start:end] = torch.cat([torch.arange(p + c), torch.arange(p, p + r)])
                base = row * width + start
                index[i, : p + c] = base + torch.arange(p + c)
                index[n + i, :p] = base + torch.arange(p)
                index[n + i, p : p + r] = base + torch.arange(p + c, p + c + r)
                pool_pairs[row, start : start + p + c] = torch.where(pool_mask[i, : p + c], i, -1)
                start = end
        return {
            "packed_input_ids": ids,
            "packed_pairs": pairs,
            "packed_segments": segments,
            "packed_position_ids": positions,
            "packed_index": index,
            "packed_pool_pairs": pool_pairs,
        }


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins of indices whose lengths sum to at most ``capacity``: longest first, each into the first
    bin with room (within 11/9 of the fewest bins possible, and never more bins than items).

    >>> first_fit_decreasing([7, 3, 5, 2], 7)
    [[0], [2, 3], [1]]
    """
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins
