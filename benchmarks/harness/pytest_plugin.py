"""A pytest plugin for the staged run (`-p benchmarks.harness.pytest_plugin`):

- `--record FILE`: one JSON line per finished test (node id, outcome, seconds, the first line of a failure),
  flushed as it goes, so a stage killed at its time cap still tells which tests passed;
- `--shard I/N`: keep the I-th of N contiguous slices (I from 1) of each test file's tests, so that N processes
  share a selection evenly, file by file; neighbouring tests share compiled kernels, hence slices rather than
  every N-th test;
- `--every K`: keep every K-th test (before sharding): the dry run's sample of a GPU selection.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Tuple

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("progan_fast staged run")
    group.addoption("--record", metavar="FILE", default=None, help="append one JSON line per finished test to FILE")
    group.addoption("--shard", metavar="I/N", default=None, help="run only the I-th of N slices of each file's tests")
    group.addoption("--every", metavar="K", type=int, default=1, help="run only every K-th test")


def parse_shard(text: str) -> Tuple[int, int]:
    index, count = (int(part) for part in text.split("/"))
    if not 1 <= index <= count:
        raise ValueError(f"--shard must be I/N with 1 <= I <= N, got {text!r}")
    return index, count


def shard_slice(total: int, index: int, count: int) -> slice:
    """The index-th (from 1) of `count` contiguous slices of `total` items, sizes differing by at most one."""
    return slice((index - 1) * total // count, index * total // count)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    kept = items[::config.getoption("every")]
    if config.getoption("shard") is not None:
        index, count = parse_shard(config.getoption("shard"))
        by_file: Dict[object, List] = {}
        for item in kept:
            by_file.setdefault(item.path, []).append(item)
        kept = [item for tests in by_file.values() for item in tests[shard_slice(len(tests), index, count)]]
    if len(kept) < len(items):
        kept_ids = {id(item) for item in kept}
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept_ids])
        items[:] = kept


class Recorder:
    """Writes the record of each finished test: its call phase, or the phase that failed or skipped it."""

    def __init__(self, path: str):
        self.file = open(path, "a", buffering=1)  # line-buffered: each record reaches the disk at once

    def pytest_runtest_logreport(self, report):
        if report.when == "call" or (report.when == "setup" and not report.passed) or \
                (report.when == "teardown" and report.failed):
            outcome = "error" if report.when != "call" and report.failed else report.outcome
            self.file.write(json.dumps({"test": report.nodeid, "outcome": outcome,
                                        "seconds": round(report.duration, 3), "message": _reason(report)}) + "\n")

    def pytest_unconfigure(self):
        self.file.close()


def _reason(report) -> Optional[str]:
    """The first line of a failure (its `E` line) or the skip reason; None for a pass."""
    if report.passed:
        return None
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])[:300]
    text = (getattr(report, "longreprtext", "") or "").strip()
    errors = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
    return (errors[0] if errors else text.splitlines()[-1] if text else "")[:300]


def pytest_configure(config):
    if config.getoption("record"):
        config.pluginmanager.register(Recorder(config.getoption("record")), "progan_fast_recorder")
