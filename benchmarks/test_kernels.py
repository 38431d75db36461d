"""Kernel throughput: every public op on every backend (torch, triton, cuda, and the eager conv chain) at the
shapes of ProGAN training, in the trainer's GPU layout (channels_last), forward, backward and forward+backward,
the sweep's most important sizes first. Outputs and gradients are checked against the torch backend in fp32
before timing."""
import pytest

from benchmarks.harness import cases, kernels, timing
from benchmarks.harness.device import l2_cache_bytes

SWEEP = cases.Sweep.from_env()
CASES = cases.op_cases(SWEEP.resolutions, SWEEP.dtypes, SWEEP.config(max(SWEEP.resolutions)))
CLOCK = timing.benchmark_timer(host_clock=SWEEP.dry)
_check_results = {}  # (case id, backend) -> largest relative error against fp32, or the mismatch message


def _checked(case, backend, device):
    key = (case.id, backend)
    if key not in _check_results:
        try:
            _check_results[key] = kernels.check_against_torch(case, backend, device, channels_last=True)
        except AssertionError as mismatch:
            _check_results[key] = str(mismatch)
    if isinstance(_check_results[key], str):
        pytest.fail(_check_results[key])
    return _check_results[key]


@pytest.mark.benchmark(timer=CLOCK, disable_gc=True)
@pytest.mark.parametrize("case, backend, pass_", [
    pytest.param(case, backend, pass_, id=f"{case.id}-{pass_}-{backend}")
    for case in CASES for pass_ in case.passes for backend in case.backends])
def test_kernel(benchmark, case, backend, pass_, device, ceilings, kernel_budget, kernel_rows):
    reason = kernels.backend_skip_reason(case, backend, device)
    if reason:
        pytest.skip(reason)
    if any(row["case"] == case.id and row["backend"] == backend and row["pass"] == pass_ for row in kernel_rows):
        pytest.skip("measured already (the report this session adds to holds it)")
    if kernel_budget.spent():
        pytest.skip(f"the {SWEEP.name} sweep's kernel time budget ({SWEEP.kernel_budget_seconds:.0f} s) is spent")
    max_error = _checked(case, backend, device)
    set_bytes = case.cost("forward")[1]
    input_sets = [case.make_inputs(device, seed, channels_last=True)
                  for seed in range(timing.rotation_count(set_bytes, l2_cache_bytes(device)))]
    call = kernels.timed_call(case, backend, pass_, input_sets)
    first_estimate = timing.median_seconds(call, warmup=min(3, SWEEP.min_rounds), reps=SWEEP.min_rounds,
                                           host_clock=SWEEP.dry)
    rounds, iterations = timing.plan_rounds(first_estimate, SWEEP.seconds_per_benchmark,
                                            min_rounds=SWEEP.min_rounds)
    benchmark.group = f"{case.id} {pass_}"
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=1)
    stats = benchmark.stats.stats
    row = kernels.kernel_row(case, backend, pass_, stats.median, ceilings, max_error)
    row.update(iqr_us=stats.iqr * 1e6, rounds=rounds, iterations=iterations)
    benchmark.extra_info.update(row)
    kernel_rows.append(row)
