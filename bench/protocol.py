"""The timing protocol of bcat's benchmarks: interleaved rounds, a ratio per round, a bootstrap CI.

A shared machine's speed drifts by tens of percent within minutes (other jobs, the host below the
VM), so one timing of A followed by one timing of B measures the machine as much as A and B. Every
comparison in ``bench/`` therefore follows one protocol:

1. **Rounds, interleaved.** Each round times every configuration once, back to back; the order
   alternates between rounds (A B, B A, A B, ...: "ABBA"), so a drift during a round favours
   neither side. At least :data:`MIN_ROUNDS` rounds after the warm-up.
2. **A ratio per round**, from the two timings of that round only (adjacent in time, so a slow
   minute slows both), then the **median** of the per-round ratios and its **95% bootstrap CI**
   (percentile bootstrap over rounds, :data:`BOOTSTRAP` resamples, seeded).
3. **A target is met only when the whole CI clears it**: for "at least x" the lower bound must be
   >= x, for "at most x" the upper bound must be <= x. A CI that straddles the target is reported
   as "not shown", never as met.
4. **The machine's state** before and after: uptime, load averages (1/5/15 min), CPUs and the fp32
   matmul rate (:func:`matmul_gflops`, measured in the benchmark's own process tree). The results
   carry both, so a reader can see what the machine was doing.

Library only: ``throughput.py`` and ``eval_speed.py`` use it (``python bench/protocol.py`` prints
the machine state, as a quick check that a machine is quiet).
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from typing import Callable, Optional, Sequence

MIN_ROUNDS = 5
BOOTSTRAP = 10000
LEVEL = 0.95


def matmul_gflops(threads: Optional[int] = None, n: int = 2048, reps: int = 10) -> float:
    """fp32 ``torch.matmul`` rate of two ``n x n`` matrices (median of ``reps``), GFLOP/s."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def flop_counter():
    """``FlopCounterMode`` that also counts the CPU flash-attention kernels (torch counts only the GPU ones)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    def forward(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    return FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: forward,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: backward,
    })


def allocator_env() -> dict:
    """The allocator's environment variables (``MALLOC_*``, ``LD_PRELOAD``): resident memory depends on them."""
    return {k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "LD_PRELOAD"))}


def machine_state(threads: Optional[int] = None, matmul: bool = True) -> dict:
    """Uptime, load averages, CPUs, torch threads and (if ``matmul``) the fp32 matmul rate, now."""
    import torch

    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    state = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "uptime_s": round(uptime), "load": [round(x, 2) for x in os.getloadavg()],
             "cpus": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
             "machine": f"{platform.processor() or platform.machine()}, {platform.platform()}"}
    if matmul:
        state["matmul_gflops"] = round(matmul_gflops(threads), 1)
    return state


def round_orders(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The order of each round: as given, then reversed, alternately (A B, B A, A B, ...).

    >>> round_orders(["a", "b"], 3)
    [['a', 'b'], ['b', 'a'], ['a', 'b']]
    """
    return [list(names) if r % 2 == 0 else list(reversed(names)) for r in range(rounds)]


def run_rounds(measure: Callable[[str], float], names: Sequence[str], rounds: int, warmup: int = 0,
               log: Callable[[str], None] = print) -> list[dict]:
    """Time ``measure(name)`` (seconds) for every name in every round; warm-up rounds are run, not kept.

    Returns one dict per kept round: ``{"order": [...], name: seconds, ...}``.
    """
    if rounds < MIN_ROUNDS:
        log(f"protocol: WARNING {rounds} rounds < {MIN_ROUNDS}: the CI will be wide and targets cannot be shown")
    out = []
    for r, order in enumerate(round_orders(names, warmup + rounds)):
        row: dict = {"order": order}
        for name in order:
            row[name] = measure(name)
        kept = r >= warmup
        log(f"protocol: round {r + 1 - warmup if kept else 'warm-up'}: " +
            ", ".join(f"{n} {row[n]:.2f} s" for n in order))
        if kept:
            out.append(row)
    return out


def bootstrap_median_ci(values: Sequence[float], n_resamples: int = BOOTSTRAP, level: float = LEVEL,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the median of ``values`` (resampling the values with replacement).

    >>> bootstrap_median_ci([2.0, 2.0, 2.0])
    (2.0, 2.0)
    """
    rng = random.Random(seed)
    n = len(values)
    medians = sorted(statistics.median(rng.choices(values, k=n)) for _ in range(n_resamples))
    lo = medians[int((1 - level) / 2 * n_resamples)]
    hi = medians[min(n_resamples - 1, int((1 + level) / 2 * n_resamples))]
    return lo, hi


def ratio_stats(numerators: Sequence[float], denominators: Sequence[float], seed: int = 0) -> dict:
    """Per-round ratios ``numerators[i] / denominators[i]``, their median and its bootstrap 95% CI.

    >>> s = ratio_stats([4, 4, 4, 4, 4], [2, 2, 2, 2, 2])
    >>> s["median"], s["ci95"]
    (2.0, [2.0, 2.0])
    """
    if len(numerators) != len(denominators) or not numerators:
        raise ValueError("one numerator and one denominator per round, at least one round")
    ratios = [a / b for a, b in zip(numerators, denominators)]
    lo, hi = bootstrap_median_ci(ratios, seed=seed)
    return {"ratios": [round(x, 4) for x in ratios], "rounds": len(ratios), "median": round(statistics.median(ratios), 4),
            "ci95": [round(lo, 4), round(hi, 4)]}


def verdict(stats: dict, target: float, at_least: bool = True) -> Optional[bool]:
    """True if the CI clears ``target`` (lower bound >= target, or upper bound <= target when
    ``at_least`` is False); False if the CI lies entirely on the wrong side; None ("not shown")
    if the CI straddles the target or there are fewer than :data:`MIN_ROUNDS` rounds.

    >>> verdict({"ci95": [2.1, 2.5], "rounds": 5}, 2.0), verdict({"ci95": [1.9, 2.5], "rounds": 5}, 2.0)
    (True, None)
    >>> verdict({"ci95": [1.1, 1.5], "rounds": 5}, 2.0), verdict({"ci95": [0.01, 0.02], "rounds": 5}, 0.03, at_least=False)
    (False, True)
    """
    lo, hi = stats["ci95"]
    if stats["rounds"] < MIN_ROUNDS:
        return None
    if at_least:
        return True if lo >= target else False if hi < target else None
    return True if hi <= target else False if lo > target else None


def verdict_word(v: Optional[bool]) -> str:
    return {True: "met", False: "NOT met", None: "not shown"}[v]


def fmt(stats: dict, digits: int = 2) -> str:
    """``median [lo, hi]``."""
    lo, hi = stats["ci95"]
    return f"{stats['median']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def state_line(before: dict, after: dict) -> str:
    """One line for a table: load and matmul before -> after."""
    mm = (f"; fp32 matmul {before.get('matmul_gflops')} -> {after.get('matmul_gflops')} GFLOP/s"
          if "matmul_gflops" in before else "")
    return (f"machine: {before['machine']}, {before['cpus']} CPUs, {before['torch_threads']} torch threads; "
            f"load (1/5/15 min) {before['load']} -> {after['load']}{mm}; up {before['uptime_s']} s at start")


if __name__ == "__main__":
    print(json.dumps(machine_state(), indent=1))
