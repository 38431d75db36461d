"""Benchmark reports: the kernel report and the training-step report (NAME.json and NAME.md in the results
folder), Markdown tables, and the short summary of a finished run.

Command line: ``python -m benchmarks.harness.reports summary [RESULTS_DIR]`` (from the repository root) prints
that summary.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .kernels import add_speedups, summarize_kernels
from .steps import FADE_ALPHA, FINAL_RESOLUTION, OFFICIAL_TOTAL_IMAGES, official_config, training_table

ENV_OUT = "PROGAN_FAST_BENCH_OUT"  # results folder (default: benchmarks/results of this checkout)
KERNELS, TRAINING_STEPS = "kernels", "training_steps"  # report names: KERNELS.json, KERNELS.md, ...
ALL_ROWS = {KERNELS: "all cases", TRAINING_STEPS: "all measurements"}  # the table of every row, by report
KERNEL_SUMMARY = "summary per backend and pass"
STEP_RATES, STEP_PROJECTION = "images per second and peak memory", "projected official schedule"


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: List[Dict[str, object]], columns: Optional[Sequence[str]] = None) -> str:
    """A Markdown table of dicts (columns: the given ones, else the keys of all rows in order)."""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass
class Report:
    """A titled report: device facts, notes and tables, written as NAME.json and NAME.md."""

    title: str
    facts: Dict[str, object]
    tables: Dict[str, List[Dict[str, object]]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"# {self.title}\n", "\n".join(f"- {key}: {value}" for key, value in self.facts.items()) + "\n"]
        parts += [f"{note}\n" for note in self.notes]
        for name, rows in self.tables.items():
            parts.append(f"## {name}\n\n" + (markdown_table(rows) if rows else "(no rows)\n"))
        return "\n".join(parts)

    def write(self, folder, name: str) -> Tuple[pathlib.Path, pathlib.Path]:
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, md_path = folder / f"{name}.json", folder / f"{name}.md"
        json_path.write_text(json.dumps(asdict(self), indent=1, default=str) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path


def kernel_report(rows: List[Dict[str, object]], facts: Dict[str, object]) -> Report:
    """The kernel report of the rows of test_kernels (adds their speedups)."""
    add_speedups(rows)
    return Report(
        "progan_fast kernel throughput", facts, {KERNEL_SUMMARY: summarize_kernels(rows), "all cases": rows},
        ["Median GPU time per call (CUDA events, after warm-up, inputs rotated beyond L2), feature maps and conv "
         "weights channels_last as the trainer keeps them on a GPU. GB/s and TFLOP/s "
         "count the minimum traffic and work of each pass; pct_copy and pct_matmul are fractions of the "
         "ceilings measured in this run (device copy counting read + write, bf16 matmul). `eager` is the conv "
         "block as plain eager PyTorch (cuDNN conv with bias, LeakyReLU, PixelNorm)."])


def training_step_report(rows: List[Dict[str, object]], facts: Dict[str, object]) -> Report:
    """The training-step report of the rows of test_training_steps."""
    table, projections = training_table(rows)
    config = official_config()
    return Report(
        "progan_fast training step (WGAN-GP D step + G step + EMA)", facts,
        {STEP_RATES: table, STEP_PROJECTION: projections, ALL_ROWS[TRAINING_STEPS]: rows},
        [f"The trainer's own step (progan_fast.training.step.TrainStep) with the official preset's settings: one "
         f"D step (WGAN-GP: lambda {config.gp_weight:g}, drift {config.drift:g}), one G step and the EMA of G "
         f"(beta {config.ema_beta:g}), Adam lr {config.lr:g} betas ({config.beta1:g}, {config.beta2:g}) (fused "
         "on CUDA), loss scalers that skip non-finite updates, official batch sizes, cudnn.benchmark on (as the "
         f"trainer sets it). Each cell: a stable step (alpha 1) and a fading step (alpha {FADE_ALPHA:g} as a device "
         "tensor, as the trainer passes it: G's and D's old branches and the fade of the reals run too); 4x4 "
         "has no fade. The reals are on the device already (the trainer's data loading is not timed). All columns "
         "in one process on the same initial weights and reals, steps interleaved across columns (the torch.compile "
         "column, slow to build, after the others, on its own). Peak memory: "
         "this column's weights (G, D and the EMA of G), gradients and Adam state plus its step's working memory. "
         "torch.compile covers G and D's forward; the gradient-penalty double backward cannot be compiled and "
         f"runs eagerly. Projection: the official {FINAL_RESOLUTION} schedule ({OFFICIAL_TOTAL_IMAGES / 1e6:g}M "
         f"images: {config.stable_kimg:g}k at 4x4, then {config.fade_kimg:g}k fade + {config.stable_kimg:g}k "
         f"stable per resolution, {FINAL_RESOLUTION} trains on to the total), fade phases at the fading rate where "
         "it was measured (fades_at_measured_rate), else at the stable rate. '-': not run in this sweep."])


def read_report(folder, name: str) -> Optional[dict]:
    """The JSON of report `name` in folder, or None when there is none."""
    path = pathlib.Path(folder) / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def results_folder(environ=os.environ) -> pathlib.Path:
    """$PROGAN_FAST_BENCH_OUT, else benchmarks/results of the checkout this harness is in."""
    default = pathlib.Path(__file__).resolve().parent.parent / "results"
    return pathlib.Path(environ.get(ENV_OUT) or default)


def summary_text(folder) -> str:
    """The short end-of-run text: training-step projections and per-backend kernel speedups."""
    folder, parts = pathlib.Path(folder), []
    for name, tables in ((TRAINING_STEPS, (STEP_RATES, STEP_PROJECTION)), (KERNELS, (KERNEL_SUMMARY,))):
        path = folder / f"{name}.json"
        if not path.exists():
            parts.append(f"{name}: no results in {folder}\n")
            continue
        report = json.loads(path.read_text())
        parts.append(f"## {report['title']} ({report['facts'].get('device')}, {report['facts'].get('date_utc')})\n")
        parts += [f"### {table}\n\n{markdown_table(report['tables'][table])}" for table in tables
                  if report["tables"].get(table)]
    return "\n".join(parts)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.harness.reports",
                                     description="Benchmark reports of progan_fast.")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="print the short summary of a results folder")
    summary.add_argument("folder", nargs="?", default=None, help=f"results folder (default: ${ENV_OUT} or "
                                                                 "benchmarks/results)")
    args = parser.parse_args(argv)
    print(summary_text(args.folder or results_folder()))


if __name__ == "__main__":
    main()
