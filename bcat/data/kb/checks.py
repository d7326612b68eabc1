"""The properties every bundled record must have; the generators retry an item until they hold,
and the tests check them on the built files.
"""

from __future__ import annotations

from bcat.data.kb.matching import mentions, same_answer


def record_problems(rec: dict) -> list[str]:
    """What is wrong with one QA record (empty when nothing is).

    - every accepted answer is mentioned in the gold passage and in no other passage;
    - the distractor answer (a grounding error) is mentioned in a non-gold passage and not in the
      gold one; the unsupported answer (a hallucination) is mentioned in no passage;
    - the gold, distractor and unsupported answers are three different answers;
    - a lookup question does not give its answer away.
    """
    problems = []
    passages, gold = rec["passages"], rec["gold_index"]
    others = [p for i, p in enumerate(passages) if i != gold]
    for answer in rec["answers"]:
        if not mentions(passages[gold], answer):
            problems.append(f"answer {answer!r} not in the gold passage")
        if any(mentions(p, answer) for p in others):
            problems.append(f"answer {answer!r} also in a distractor passage")
    wrong, absent = rec["distractor_answer"], rec["unsupported_answer"]
    if not any(mentions(p, wrong) for p in others) or mentions(passages[gold], wrong):
        problems.append(f"distractor answer {wrong!r} not (only) in a distractor passage")
    if any(mentions(p, absent) for p in passages):
        problems.append(f"unsupported answer {absent!r} found in a passage")
    gold_answer = rec["answers"][0]
    if same_answer(gold_answer, wrong) or same_answer(gold_answer, absent) or same_answer(wrong, absent):
        problems.append("gold, distractor and unsupported answers are not all different")
    if rec["kind"] in ("number", "name", "article") and any(mentions(rec["question"], a) for a in rec["answers"]):
        problems.append("the question contains its answer")
    return problems
