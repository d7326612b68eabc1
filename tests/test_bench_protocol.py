"""The benchmark protocol's statistics (``bench/protocol.py``): what decides whether a speed target counts as met."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str):
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


protocol = _load("protocol")


def test_rounds_alternate_and_every_round_times_every_configuration():
    calls = []
    rounds = protocol.run_rounds(lambda name: calls.append(name) or float(len(calls)), ["a", "b"], 5, warmup=1,
                                 log=lambda _: None)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(rounds) == 5 and rounds[0]["order"] == ["b", "a"]  # the warm-up round is not kept
    assert all(set(r) == {"order", "a", "b"} for r in rounds)


def test_ratio_is_per_round_and_the_ci_covers_the_median():
    num, den = [10, 12, 11, 30, 10.5], [5, 6, 5.5, 15, 5.25]  # a slow round slows both sides
    stats = protocol.ratio_stats(num, den)
    assert stats["ratios"] == [2.0] * 5 and stats["median"] == 2.0 and stats["ci95"] == [2.0, 2.0]
    noisy = protocol.ratio_stats([2.1, 1.8, 2.6, 2.0, 2.3, 1.7, 2.2], [1] * 7)
    lo, hi = noisy["ci95"]
    assert lo <= noisy["median"] <= hi and lo >= 1.7 and hi <= 2.6


@pytest.mark.parametrize("ci,target,at_least,expected", [
    ([2.05, 2.4], 2.0, True, True),     # the whole CI clears the target
    ([1.95, 2.4], 2.0, True, None),     # straddles: not shown, never "met"
    ([1.2, 1.9], 2.0, True, False),     # entirely below
    ([0.00, 0.02], 0.03, False, True),  # a cost: the upper bound must stay below
    ([0.01, 0.05], 0.03, False, None),
    ([0.04, 0.05], 0.03, False, False),
])
def test_verdict_needs_the_whole_ci(ci, target, at_least, expected):
    assert protocol.verdict({"ci95": ci, "rounds": 5}, target, at_least) is expected


def test_too_few_rounds_never_show_a_target():
    assert protocol.verdict({"ci95": [3.0, 3.1], "rounds": 4}, 2.0) is None


def test_throughput_groups():
    throughput = _load("throughput")
    assert throughput.groups_for(["bcat-dpo", "trl-dpo", "trl-orpo"], "pairs") == [["bcat-dpo", "trl-dpo"], ["trl-orpo"]]
    assert throughput.groups_for(["bcat-dpo", "trl-dpo"], "all") == [["bcat-dpo", "trl-dpo"]]


def test_alignment_ab_times_the_same_pairs_with_the_terms_on_and_off(tmp_path):
    """``bench/alignment_cost.py`` on the tiny model: every round trains the same pairs twice, the "on"
    step logs both alignment terms and the "off" step none, and the ratio comes with a CI."""
    import json

    ab = _load("alignment_cost")
    out = tmp_path / "ab.json"
    assert ab.main(["--model", "tiny", "--rounds", "2", "--warmup", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["alignment_work_checked"] is True
    assert [r["order"] for r in doc["rounds"]] == [["off", "on"], ["on", "off"]]
    for r in doc["rounds"]:
        assert r["on"]["tokens"] == r["off"]["tokens"] > 0
        assert r["on"]["hidden"] > 0 and r["on"]["output"] is not None
        assert r["off"]["hidden"] is None and r["off"]["output"] is None
    stats = doc["on_over_off_seconds"]
    assert stats["rounds"] == 2 and stats["ci95"][0] <= stats["median"] <= stats["ci95"][1]
    assert doc["verdict"] == "not shown"  # 2 rounds < protocol.MIN_ROUNDS
