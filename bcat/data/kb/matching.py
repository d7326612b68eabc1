"""Whether a text mentions an answer, with the evaluation's own normal form.

The data are checked with the same matcher that scores a model (:mod:`bcat.data.normalize`):
if the gold answer is "mentioned" by a distractor passage for the matcher, a model copying from
that passage would be scored correct, so such an item is not built.

>>> mentions("Warranty: 24 months. Weight: 240 g.", "24 months"), mentions("Weight: 240 g.", "24")
(True, False)
"""

from __future__ import annotations

import functools

from bcat.data.normalize import contains_answer, normalize


@functools.lru_cache(maxsize=1 << 16)
def _normal(text: str) -> str:
    # The generator checks every passage against several answers: normalise each text once.
    return normalize(text)


def mentions(text: str, answer: str) -> bool:
    """Whether the normalised ``answer`` occurs in the normalised ``text`` (digits not glued)."""
    return contains_answer(_normal(text), _normal(answer))


def same_answer(a: str, b: str) -> bool:
    """Whether two answers are equal once normalised (``"Avril"`` and ``"avril"`` are)."""
    return _normal(a) == _normal(b)
