"""The RAG prompt of a QA record, the same one the evaluation shows the model.

The wording per language (instruction, passage and question labels, answer label) is the
evaluation's table, ``bcat/resources/eval/instructions.tsv``: training on the bundled data and
evaluating on it use one prompt. A completion starts with the separator that follows the answer
label: a space, or nothing after a full-width colon (Japanese, Chinese).
"""

from __future__ import annotations

from bcat.data.rag import RagItem, instruction_table, render_block
from bcat.errors import DataError


def _item(record: dict) -> RagItem:
    return RagItem(record["group"], record["lang"], record["question"], tuple(record["passages"]),
                   tuple(record["answers"]), bool(record.get("answer_neutral", False)))


def render_prompt(record: dict) -> str:
    """Instruction, numbered passages, question and the answer label, in the record's language.

    >>> rec = {"group": "g", "lang": "en", "question": "How long is the warranty?",
    ...        "passages": ["Warranty: 24 months."], "answers": ["24 months"]}
    >>> print(render_prompt(rec))
    Answer the question using only the passages. Reply with the answer only.
    <BLANKLINE>
    Passage 1: Warranty: 24 months.
    <BLANKLINE>
    Question: How long is the warranty?
    Answer:
    """
    if record["lang"] not in instruction_table():
        raise DataError("<record>", None, "lang", f"no prompt wording for {record['lang']!r} in instructions.tsv")
    return render_block(_item(record))


def answer_separator(lang: str) -> str:
    """What goes between the answer label and the answer: ``" "``, or ``""`` after ``"："``.

    >>> answer_separator("fr"), answer_separator("ja")
    (' ', '')
    """
    return "" if instruction_table()[lang].answer.endswith("：") else " "


def completion(lang: str, answer: str) -> str:
    """An answer as a completion of :func:`render_prompt` (``" 24 mois"``, ``"24か月"``)."""
    return answer_separator(lang) + answer
