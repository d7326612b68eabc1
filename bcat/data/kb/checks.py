"""The properties every bundled record must have; the generators retry an item until they hold,
and the tests check them on the built files.
"""

from __future__ import annotations

from bcat.data.kb.matching import mentions, same_answer
from bcat.data.normalize import judge
from bcat.data.rag import collect_candidates


def record_problems(rec: dict) -> list[str]:
    """What is wrong with one QA record (empty when nothing is).

    - every accepted answer is mentioned in the gold passage and in no other passage;
    - the distractor answer (a grounding error) is mentioned in a non-gold passage and not in the
      gold one; the unsupported answer (a hallucination) is mentioned in no passage;
    - the gold, distractor and unsupported answers are three different answers;
    - a lookup question does not give its answer away;
    - every wrong value in ``distractor_answers`` is written in a non-gold passage and is no
      accepted answer, and ``distractor_answer`` is one of them;
    - strict accuracy can be earned and cannot be gamed: every accepted answer alone is strictly
      correct, and all passages copied onto one line are not.
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
    wrong_values = rec["distractor_answers"]
    for forms in wrong_values:
        if not any(mentions(p, forms[0]) for p in others):
            problems.append(f"wrong value {forms[0]!r} not in a distractor passage")
        if any(same_answer(f, a) for f in forms for a in rec["answers"]):
            problems.append(f"wrong value {forms[0]!r} is an accepted answer")
    if not any(same_answer(forms[0], wrong) for forms in wrong_values):
        problems.append(f"distractor answer {wrong!r} not among distractor_answers")
    candidates = collect_candidates(wrong_values, wrong, absent)
    for answer in rec["answers"]:
        if not judge(answer, rec["answers"], candidates).strict:
            problems.append(f"answer {answer!r} alone is not strictly correct")
    if judge(" ".join(passages), rec["answers"], candidates).strict:
        problems.append("all passages on one line are strictly correct")
    return problems
