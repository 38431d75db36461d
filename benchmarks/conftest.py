"""Benchmark session: the sweep ($PROGAN_FAST_BENCH = quick | full), GPU-only skipping with the reason,
the measured ceilings, and the reports written at the end into $PROGAN_FAST_BENCH_OUT (default
benchmarks/results): kernels.{json,md} and training_steps.{json,md}."""
import pathlib

import pytest

from benchmarks.harness import cases, reports, timing
from benchmarks.harness.device import device_facts, gpu_skip_reason

SWEEP = cases.Sweep.from_env()
GPU_SKIP_REASON = gpu_skip_reason()
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
        _ceilings.update(timing.measure_ceilings(device))
    return _ceilings


@pytest.fixture(scope="session")
def kernel_budget():
    return timing.Budget(SWEEP.kernel_budget_seconds)


@pytest.fixture(scope="session")
def step_budget():
    return timing.Budget(SWEEP.step_budget_seconds)


@pytest.fixture(scope="session")
def kernel_rows():
    return _kernel_rows


@pytest.fixture(scope="session")
def step_rows():
    return _step_rows


def _facts():
    facts = device_facts()
    facts.update(sweep=SWEEP.name, **{f"ceiling_{key}": round(value, 1) for key, value in _ceilings.items()})
    return facts


def pytest_sessionfinish(session, exitstatus):
    folder = reports.results_folder()
    if _kernel_rows:
        _written.extend(reports.kernel_report(_kernel_rows, _facts()).write(folder, reports.KERNELS))
    if _step_rows:
        _written.extend(reports.training_step_report(_step_rows, _facts()).write(folder, reports.TRAINING_STEPS))


def pytest_terminal_summary(terminalreporter):
    if _written:
        terminalreporter.write_line("benchmark reports: " + ", ".join(map(str, _written)))
