"""Benchmark session: the sweep ($PROGAN_FAST_BENCH = quick | full | dry | dry-full), GPU-only skipping with
the reason (except in dry runs, which run on the CPU), the measured ceilings, and the reports in
$PROGAN_FAST_BENCH_OUT (default benchmarks/results): kernels.{json,md} and training_steps.{json,md}, written
every REWRITE_SECONDS while the benchmarks run and at the end, so a run cut short keeps what it measured.
With $PROGAN_FAST_BENCH_APPEND=1 the session adds to the reports already there and skips what they hold."""
import os
import pathlib
import time

import pytest

from benchmarks.harness import cases, reports, timing
from benchmarks.harness.device import device_facts, gpu_skip_reason

SWEEP = cases.Sweep.from_env()
GPU_SKIP_REASON = None if SWEEP.dry else gpu_skip_reason()
ENV_APPEND = "PROGAN_FAST_BENCH_APPEND"
REWRITE_SECONDS = 10.0
HERE = pathlib.Path(__file__).resolve().parent
_ceilings = {}
_kernel_rows, _step_rows = [], []
_earlier = {"sweeps": []}  # the sweeps of the reports this session adds to
_written = {"paths": [], "rows": 0, "at": 0.0}


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("benchmark"):
        config.addinivalue_line("markers", "benchmark: pytest-benchmark settings (the plugin is not installed)")
    if os.environ.get(ENV_APPEND) == "1":
        folder = reports.results_folder()
        for name, rows in ((reports.KERNELS, _kernel_rows), (reports.TRAINING_STEPS, _step_rows)):
            earlier = reports.read_report(folder, name)
            if earlier:
                rows.extend(earlier["tables"][reports.ALL_ROWS[name]])
                _earlier["sweeps"].append(earlier["facts"].get("sweep"))
        _written["rows"] = len(_kernel_rows) + len(_step_rows)


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
    return SWEEP.device


@pytest.fixture(scope="session")
def ceilings(device):
    if not _ceilings:
        _ceilings.update(timing.measure_ceilings(device, *SWEEP.ceiling_sizes, host_clock=SWEEP.dry))
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
    facts.update(sweep=" + ".join(_earlier["sweeps"] + [SWEEP.name]),
                 clock="host clock: a dry run on the CPU, at tiny sizes; it proves the code, its times say nothing"
                 if SWEEP.dry else "CUDA events",
                 **{f"ceiling_{key}": round(value, 1) for key, value in _ceilings.items()})
    return facts


def _write_reports() -> None:
    folder, written = reports.results_folder(), []
    if _kernel_rows:
        written += reports.kernel_report(_kernel_rows, _facts()).write(folder, reports.KERNELS)
    if _step_rows:
        written += reports.training_step_report(_step_rows, _facts()).write(folder, reports.TRAINING_STEPS)
    _written.update(paths=written, rows=len(_kernel_rows) + len(_step_rows), at=time.monotonic())


def pytest_runtest_logfinish(nodeid, location):
    if len(_kernel_rows) + len(_step_rows) > _written["rows"] and \
            time.monotonic() - _written["at"] > REWRITE_SECONDS:
        _write_reports()


def pytest_sessionfinish(session, exitstatus):
    if _kernel_rows or _step_rows:
        _write_reports()


def pytest_terminal_summary(terminalreporter):
    if _written["paths"]:
        terminalreporter.write_line("benchmark reports: " + ", ".join(map(str, _written["paths"])))
