"""GPU timing: a pytest-benchmark clock read from CUDA events, median GPU times, how many rounds and input sets a
benchmark uses, the measured ceilings (device copy and bf16 matmul rates), and wall-clock budgets of a sweep.
Dry runs (CPU, no CUDA events) time with the host clock instead: `host_clock=True`."""
from __future__ import annotations

import math
import statistics
import time
from typing import Callable, Dict, Tuple

import torch


class Budget:
    """A wall-clock allowance that starts on first use; `spent` tells the benchmarks to skip."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock, self.start = seconds, clock, None

    def spent(self) -> bool:
        if self.start is None:
            self.start = self.clock()
        return self.clock() - self.start > self.seconds


def rotation_count(bytes_per_set: float, l2_bytes: int, memory_budget: float = 8 * 2 ** 30,
                   max_sets: int = 64) -> int:
    """Input sets to cycle through so that a set is out of L2 when it comes round again."""
    wanted = 1 + math.ceil(2 * l2_bytes / max(bytes_per_set, 1.0))
    affordable = max(1, int(memory_budget // max(bytes_per_set, 1.0)))
    return max(1, min(wanted, affordable, max_sets))


def plan_rounds(call_seconds: float, budget_seconds: float, round_seconds: float = 1e-3,
                min_rounds: int = 5, max_rounds: int = 200) -> Tuple[int, int]:
    """(rounds, iterations per round): rounds of at least `round_seconds` so that the synchronisation
    at each end of a round is amortised, as many as fit in the budget."""
    call_seconds = max(call_seconds, 1e-7)
    iterations = max(1, math.ceil(round_seconds / call_seconds))
    rounds = int(budget_seconds / (iterations * call_seconds))
    return max(min_rounds, min(max_rounds, rounds)), iterations


class CudaEventClock:
    """A pytest-benchmark timer read from CUDA events: seconds of GPU time line, synchronised on each reading.

    Each reading records an event and adds its distance from the previous one, so the precision of the
    events' float milliseconds never degrades over a long run.
    """

    def __init__(self):
        self.seconds, self.last = 0.0, None

    def __call__(self) -> float:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        event.synchronize()
        if self.last is not None:
            self.seconds += self.last.elapsed_time(event) / 1e3
        self.last = event
        return self.seconds


def gpu_median_seconds(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> float:
    """Median over `reps` calls of the GPU time between CUDA events around each call, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events) / 1e3


def host_median_seconds(fn: Callable[[], object], warmup: int = 3, reps: int = 20) -> float:
    """Median over `reps` calls of the host clock around each call, after `warmup` calls (CPU work is
    synchronous, so this is its run time)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_seconds(fn: Callable[[], object], warmup: int = 3, reps: int = 20, host_clock: bool = False) -> float:
    return (host_median_seconds if host_clock else gpu_median_seconds)(fn, warmup, reps)


def benchmark_timer(host_clock: bool = False) -> Callable[[], float]:
    """The clock pytest-benchmark reads: CUDA events, or the host clock."""
    return time.perf_counter if host_clock else CudaEventClock()


def measure_ceilings(device, copy_bytes: int = 2 ** 30, matmul_size: int = 8192,
                     host_clock: bool = False) -> Dict[str, float]:
    """The 100% marks: device-to-device copy rate (read + write bytes) and bf16 matmul rate."""
    def copy_seconds() -> float:
        source = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).normal_()
        target = torch.empty_like(source)
        return median_seconds(lambda: target.copy_(source), host_clock=host_clock)

    def matmul_seconds() -> float:
        a = torch.randn(matmul_size, matmul_size, device=device, dtype=torch.bfloat16)
        b = torch.randn_like(a)
        return median_seconds(lambda: a @ b, host_clock=host_clock)

    return {"copy_GBps": 2 * copy_bytes / copy_seconds() / 1e9,
            "bf16_matmul_TFLOPs": 2 * matmul_size ** 3 / matmul_seconds() / 1e12}
