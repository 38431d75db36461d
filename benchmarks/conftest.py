"""Benchmark session: the sweep ($PROGAN_FAST_BENCH = quick | full), GPU-only skipping with the reason,
the measured ceilings, and the reports written at the end into $PROGAN_FAST_BENCH_OUT (default
benchmarks/results): kernels.{json,md} and training_steps.{json,md}."""
import pathlib

import pytest

from progan_fast import benchmarking

SWEEP = benchmarking.Sweep.from_env()
GPU_SKIP_REASON = benchmarking.gpu_skip_reason()
HERE = pathlib.Path(__file__).resolve().parent
_ceilings = {}
_kernel_rows, _step_rows, _written = [], [], []


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("benchmark"):
        config.addinivalue_line("markers", "benchmark: pytest-benchmark settings (the plugin is not installed)")


def pytest_collection_modifyitems(config, items):
    """Without a GPU every benchmark is collected and skipped, so `pytest benchmarks/` exits 0."""
    without_plugin = pytest.mark.skip(reason="pytest-benchmark is not installed (pip install pytest-benchmark, "
                                             "or pip install -e '.[bench]')")
    for item in items:
        if HERE not in item.path.parents:
            continue
        if GPU_SKIP_REASON is not None:
            item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))
        elif "benchmark" in item.fixturenames and not config.pluginmanager.hasplugin("benchmark"):
            item.add_marker(without_plugin)


@pytest.fixture(scope="session")
def device():
    return "cuda"


@pytest.fixture(scope="session")
def ceilings(device):
    if not _ceilings:
        _ceilings.update(benchmarking.measure_ceilings(device))
    return _ceilings


@pytest.fixture(scope="session")
def kernel_budget():
    return benchmarking.Budget(SWEEP.kernel_budget_seconds)


@pytest.fixture(scope="session")
def step_budget():
    return benchmarking.Budget(SWEEP.step_budget_seconds)


@pytest.fixture(scope="session")
def kernel_rows():
    return _kernel_rows


@pytest.fixture(scope="session")
def step_rows():
    return _step_rows


def _facts():
    facts = benchmarking.device_facts()
    facts.update(sweep=SWEEP.name, **{f"ceiling_{key}": round(value, 1) for key, value in _ceilings.items()})
    return facts


def pytest_sessionfinish(session, exitstatus):
    folder = benchmarking.results_folder()
    if _kernel_rows:
        benchmarking.add_speedups(_kernel_rows)
        report = benchmarking.Report(
            "progan_fast kernel throughput", _facts(),
            {"summary per backend and pass": benchmarking.summarize_kernels(_kernel_rows), "all cases": _kernel_rows},
            ["Median GPU time per call (CUDA events, after warm-up, inputs rotated beyond L2). GB/s and TFLOP/s "
             "count the minimum traffic and work of each pass; pct_copy and pct_matmul are fractions of the "
             "ceilings measured in this run (device copy counting read + write, bf16 matmul). `eager` is the conv "
             "block as plain eager PyTorch (cuDNN conv with bias, LeakyReLU, PixelNorm)."])
        _written.extend(report.write(folder, "kernels"))
    if _step_rows:
        table, projections = benchmarking.training_table(_step_rows)
        report = benchmarking.Report(
            "progan_fast training step (WGAN-GP G step + D step)", _facts(),
            {"images per second and peak memory": table, "projected official schedule": projections,
             "all measurements": _step_rows},
            ["One D step (WGAN-GP: lambda 10, drift 0.001) and one G step, Adam lr 1e-3 betas (0, 0.99), official "
             "batch sizes, alpha = 1 (stable phase), all columns in one process on the same weights and inputs, "
             "steps interleaved across columns. Peak memory: this column's weights, gradients and Adam state plus "
             "its step's working memory. torch.compile covers G and D's forward; the gradient-penalty double "
             "backward cannot be compiled and runs eagerly. Projection: the official 1024 schedule (12M images: "
             "600k at 4x4, then 600k fade + 600k stable per resolution, 1024 trains on to the total), fade phases "
             "at the stable rate. '-': not run in this sweep."])
        _written.extend(report.write(folder, "training_steps"))


def pytest_terminal_summary(terminalreporter):
    if _written:
        terminalreporter.write_line("benchmark reports: " + ", ".join(map(str, _written)))
