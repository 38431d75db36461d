"""Compiling ahead for the training-step table: ``python -m benchmarks.harness.warmup SWEEP I/N`` runs, for the
I-th of N shares of the sweep's resolutions, one step per phase of the columns that compile on first use (the
triton backend's kernels, the torch.compile column where the sweep runs it), untimed. Triton and inductor keep
what they compile in their on-disk caches, so the staged run does this beside the parity tests (the host's
cores compile while the GPU is idle) and the table's own steps then find the kernels built.
"""
from __future__ import annotations

import argparse
import time
from typing import List, Optional

from .cases import SWEEPS
from .pytest_plugin import parse_shard
from .steps import step_columns, training_step_rows


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness.warmup", description=__doc__)
    parser.add_argument("sweep", choices=sorted(SWEEPS))
    parser.add_argument("share", help="I/N: every N-th resolution of the sweep, from the I-th")
    args = parser.parse_args(argv)
    sweep, (index, count) = SWEEPS[args.sweep], parse_shard(args.share)
    failed = []
    for res in sweep.step_resolutions[index - 1::count]:
        columns = [column for column in step_columns(sweep.device)
                   if column.backend == "triton" or (column.compile and res in sweep.compile_resolutions)]
        start = time.perf_counter()
        rows = training_step_rows(res, columns, warmup=1, rounds=0, device=sweep.device, config=sweep.config(res),
                                  host_clock=sweep.dry, compile_backend=sweep.compile_backend)
        failed += [f"{res}x{res} {row['column']}: {row['error']}" for row in rows if row["error"]]
        print(f"{res}x{res}: {', '.join(column.name for column in columns)} built in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
    if failed:
        raise SystemExit("warm-up steps failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
