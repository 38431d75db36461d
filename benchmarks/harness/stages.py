"""The staged GPU run behind `benchmarks/run_gpu.sh`: what a short, one-off loan of a GPU should measure, most
valuable first, each stage under its own time cap and writing its results as soon as it ends.

    python -m benchmarks.harness.stages [--dry-run] [OUT]     (from the repository root, nothing installed)

1. environment: versions, nvidia-smi, device properties, the copy and bf16-matmul ceilings; the CUDA extension
   build;
2. GPU parity: the tests of tests/ that compare every op and backend with the torch reference on the GPU (fp32,
   bf16, fp16; forward, backward, double backward), in parallel processes (Triton compiles on the CPU), and
   beside them the step table's JIT-compiled columns compiled ahead into Triton's and inductor's disk caches;
3. the training-step table (benchmarks/test_training_steps.py, quick sweep);
4. the kernel benchmarks (benchmarks/test_kernels.py, quick sweep: the most important sizes first);
5. with the time left: the trainer's tests on the GPU, the rest of the full kernel sweep and step table (added
   to the reports), the rest of tests/.

Each command runs in its own process group; at its stage's cap (or the run's deadline) it gets SIGINT (pytest
then writes its reports and records), then SIGKILL. OUT receives at most eight files, none in a folder:
summary.txt (printed last), run.json (environment, stages, test outcomes), run.log (every command's output),
kernels.{md,json} and training_steps.{md,json}. Test outcomes are recorded as they happen, benchmark reports
rewritten while they run, run.json and summary.txt after every command.

--dry-run: the same stages on the CPU at tiny sizes (Triton in its interpreter, the CUDA extension compiled
and linked but not run, the host clock instead of CUDA events, a sample of each test selection), so that the
script is proven before a GPU is there; it fails unless every command succeeds and every file is written.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from . import reports

ROOT = pathlib.Path(__file__).resolve().parents[2]
SUMMARY, RECORD, LOG = "summary.txt", "run.json", "run.log"
REPORT_FILES = tuple(f"{name}.{ext}" for name in (reports.KERNELS, reports.TRAINING_STEPS) for ext in ("md", "json"))
OUT_FILES = (SUMMARY, RECORD, LOG) + REPORT_FILES
STOP_GRACE_SECONDS = 20.0  # between SIGINT (pytest writes its reports) and SIGKILL
BUDGET_MARGIN_SECONDS = 25.0  # a benchmark session's own budget ends this long before its hard cap
MIN_JOB_SECONDS = 20.0  # a command with less time left is skipped

# The GPU-relevant tests of tests/, most valuable first: the CUDA extension's kernels against their formulas to
# second order, every triton op against the torch backend in fp32/bf16/fp16 (forward, backward, double
# backward), the models and the penalty's double backward on triton, the layouts of a training step, and the
# fuzzed shapes and layouts of every op on every accelerated backend. The CPU-only trainer, crash-safety and
# bad-input tests are not among them.
PARITY_TESTS = tuple(f"tests/test_cuda_extension.py::{name}" for name in (
    "test_bias_act_kernels", "test_bias_act_kernels_on_dense_layer_output", "test_minibatch_stddev_kernels",
    "test_gradient_penalty_kernels", "test_discriminator_step_with_penalty_matches_torch_backend")) + tuple(
    f"tests/{name}.py" for name in (
        "test_bias_act_triton", "test_equalized_conv_triton", "test_equalized_linear_triton", "test_fade_triton",
        "test_minibatch_stddev_triton", "test_pixel_norm_triton", "test_models_triton", "test_memory_format",
        "test_fuzz_parity"))
TRAINER_TESTS = ("tests/test_train.py",)
# CPU work that CI does already and a GPU does not speed up: the ahead-of-time sm_90 compile of every kernel.
CPU_CHECKS = ("tests/test_hopper_compile.py",)


@dataclass
class Job:
    """One command of a stage. record: where pytest's recording plugin writes the test outcomes; bench: a
    benchmark session (its time budget is set from the time left); reserve_seconds: of the stage's time, kept
    for the commands after this one."""

    label: str
    argv: List[str]
    env: Dict[str, str] = field(default_factory=dict)
    record: Optional[pathlib.Path] = None
    bench: bool = False
    reserve_seconds: float = 0.0


@dataclass
class Stage:
    number: int
    title: str
    cap_seconds: float
    jobs: List[Job]
    parallel: bool = False  # run the jobs at once (else one after the other)


@dataclass(frozen=True)
class Mode:
    """The sizes of a run: the GPU's, or the dry run's on the CPU."""

    dry: bool
    deadline_seconds: float  # the whole run
    caps: Sequence[float]  # of stages 1..4; stage 5 gets what is left
    parity_shards: int
    warmup_shares: int  # processes compiling ahead for the step table beside the parity tests
    fuzz_cases: int
    sample_every: int  # of the test selections (dry runs run a sample)
    quick_sweep: str
    full_sweep: str
    compile_seconds: float  # of stage 3, kept for the torch.compile column


GPU = Mode(False, 515.0, (100.0, 150.0, 170.0, 75.0), 6, 3, 6, 1, "quick", "full", 60.0)
DRY = Mode(True, 600.0, (240.0, 150.0, 150.0, 120.0), 2, 1, 1, 10, "dry", "dry-full", 40.0)


def pytest_command(python: str, paths: Sequence[str], *options: str) -> List[str]:
    return [python, "-m", "pytest", *paths, "-q", "-p", "no:cacheprovider", *options]


def tests_job(label: str, python: str, paths: Sequence[str], record: pathlib.Path, *options: str,
              env: Optional[Dict[str, str]] = None) -> Job:
    return Job(label, pytest_command(python, paths, "-p", "benchmarks.harness.pytest_plugin", "--record",
                                     str(record), "-rfE", *options), env or {}, record=record)


def bench_job(label: str, python: str, path: str, sweep: str, record: pathlib.Path, append: bool,
              *options: str) -> Job:
    job = tests_job(label, python, [path], record, "--benchmark-columns=median,iqr,rounds,iterations",
                    "--benchmark-sort=name", *options, env={"PROGAN_FAST_BENCH": sweep})
    if append:
        job.env["PROGAN_FAST_BENCH_APPEND"] = "1"
    job.bench = True
    return job


def plan(mode: Mode, python: str, work: pathlib.Path) -> List[Stage]:
    """The five stages of a run; commands write their raw results under `work` (outside OUT)."""
    sample = ["--every", str(mode.sample_every)] if mode.sample_every > 1 else []
    shards = mode.parity_shards
    parity = [tests_job(f"shard {i} of {shards}", python, PARITY_TESTS, work / f"parity-{i}.jsonl",
                        "--shard", f"{i}/{shards}", *sample, env={"FUZZ_CASES": str(mode.fuzz_cases)})
              for i in range(1, shards + 1)]
    if not mode.dry:  # the shards share the CPU cores (Triton compiles on the host)
        for job in parity:
            job.env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or shards) // shards))
    shares = mode.warmup_shares
    warmup = [Job(f"compiling ahead for the step table, {i} of {shares}",
                  [python, "-m", "benchmarks.harness.warmup", mode.quick_sweep, f"{i}/{shares}"])
              for i in range(1, shares + 1)]
    other_tests = ["tests"] + [f"--ignore={path}" for path in PARITY_TESTS + TRAINER_TESTS + CPU_CHECKS
                               if "::" not in path] + [f"--deselect={path}" for path in PARITY_TESTS if "::" in path]
    rest = [tests_job("trainer tests", python, TRAINER_TESTS, work / "trainer.jsonl", *sample),
            bench_job("kernel benchmarks, rest of the full sweep", python, "benchmarks/test_kernels.py",
                      mode.full_sweep, work / "kernels-rest.jsonl", append=True),
            bench_job("training-step table, rest of the full sweep", python, "benchmarks/test_training_steps.py",
                      mode.full_sweep, work / "steps-rest.jsonl", append=True),
            # A dry run only collects them: they include minutes-long crash tests.
            tests_job("the other tests", python, other_tests, work / "other.jsonl",
                      *(["--collect-only"] if mode.dry else []))]
    return [
        Stage(1, "environment + CUDA extension build", mode.caps[0], [Job(
            "facts, ceilings, build", [python, "-m", "benchmarks.harness.environment", str(work / "environment.json")]
            + (["--dry-run"] if mode.dry else []))]),
        Stage(2, "GPU parity tests", mode.caps[1], parity + warmup, parallel=True),
        # The table's columns at every resolution, then the slow-to-build torch.compile column with the time kept
        # for it (and whatever the others left).
        Stage(3, "training-step table", mode.caps[2], [
            dataclasses.replace(bench_job(f"{mode.quick_sweep} sweep", python, "benchmarks/test_training_steps.py",
                                          mode.quick_sweep, work / "steps.jsonl", False, "-k", "not compiled"),
                                reserve_seconds=mode.compile_seconds),
            bench_job(f"{mode.quick_sweep} sweep, torch.compile column", python, "benchmarks/test_training_steps.py",
                      mode.quick_sweep, work / "steps-compiled.jsonl", True, "-k", "compiled")]),
        Stage(4, "kernel benchmarks", mode.caps[3], [bench_job(
            f"{mode.quick_sweep} sweep", python, "benchmarks/test_kernels.py", mode.quick_sweep,
            work / "kernels.jsonl", append=False)]),
        Stage(5, "everything else, with the time left", float("inf"), rest),
    ]


# ---------------------------------------------------------------------------------------------
# Running commands

def default_sigint() -> None:
    """In a command before it starts: SIGINT raises KeyboardInterrupt there, even where this run was started with
    SIGINT ignored (as background jobs of a shell are)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(process: subprocess.Popen) -> None:
    """SIGINT to the command's process group (pytest then finishes its reports), SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGINT, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def test_outcomes(paths: Sequence[pathlib.Path]) -> Dict[str, object]:
    """Counts per outcome, the failures and errors (first line each), and the slowest tests of the records."""
    records = []
    for path in paths:
        if path.is_file():
            records += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    counts: Dict[str, int] = {}
    for record in records:
        counts[record["outcome"]] = counts.get(record["outcome"], 0) + 1
    failures = [{"test": r["test"], "message": r["message"]} for r in records if r["outcome"] in ("failed", "error")]
    slowest = sorted(records, key=lambda r: r["seconds"], reverse=True)[:10]
    return {"counts": counts, "failures": failures,
            "slowest": [{"test": r["test"], "seconds": r["seconds"]} for r in slowest]}


class Run:
    """One staged run: its stages, the clock, and the files in OUT."""

    def __init__(self, mode: Mode, out: pathlib.Path, python: str = sys.executable):
        self.mode, self.out = mode, out
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="progan_fast_stages_"))
        self.stages = plan(mode, python, self.work)
        self.start = time.monotonic()
        self.running: List[subprocess.Popen] = []  # the commands in flight
        self.record: Dict[str, object] = {
            "dry_run": mode.dry, "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "deadline_seconds": mode.deadline_seconds, "environment": None, "stages": []}
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                        PROGAN_FAST_BENCH_OUT=str(out), PYTHONUNBUFFERED="1")
        if mode.dry:  # the Triton kernels in the interpreter; one thread per process on a small shared CPU
            self.env.update(TRITON_INTERPRET="1", OMP_NUM_THREADS="1")

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.mode.deadline_seconds - self.elapsed()

    def run(self) -> int:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in OUT_FILES:  # this run's files only
            (self.out / name).unlink(missing_ok=True)
        (self.out / LOG).touch()
        # The commands run in sessions of their own: a signal to this run stops them before it ends it.
        previous = {sig: signal.signal(sig, self.interrupted) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            for stage in self.stages:
                self.run_stage(stage)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.save()
            shutil.rmtree(self.work, ignore_errors=True)
        print(summary_text(self.record, self.out), flush=True)
        return 1 if self.failed() else 0

    def interrupted(self, number, frame) -> None:
        for process in self.running:
            stop(process)
        self.record["interrupted_by"] = signal.Signals(number).name
        raise SystemExit(128 + number)

    def failed(self) -> bool:
        """A command failed; in a dry run also one that was cut, skipped, or a file not written."""
        statuses = [job["status"] for stage in self.record["stages"] for job in stage["jobs"]]
        bad = {"failed"} | ({"cut at the cap", "skipped: no time left"} if self.mode.dry else set())
        missing = self.mode.dry and not all((self.out / name).is_file() for name in OUT_FILES)
        return missing or any(status in bad for status in statuses)

    def run_stage(self, stage: Stage) -> None:
        started = self.elapsed()
        cap_end = started + min(stage.cap_seconds, self.left())
        entry = {"stage": stage.number, "title": stage.title, "cap_seconds": round(min(stage.cap_seconds,
                 self.left()), 1), "jobs": [], "seconds": None}
        self.record["stages"].append(entry)
        print(f"[{self.elapsed():5.0f} s] stage {stage.number}: {stage.title}", flush=True)
        groups = [stage.jobs] if stage.parallel else [[job] for job in stage.jobs]
        for group in groups:
            self.run_jobs(stage, group, entry, cap_end - max(job.reserve_seconds for job in group))
        entry["seconds"] = round(self.elapsed() - started, 1)
        if stage.number == 1:
            facts = self.work / "environment.json"
            self.record["environment"] = json.loads(facts.read_text()) if facts.is_file() else None
        self.save()

    def run_jobs(self, stage: Stage, jobs: List[Job], entry: Dict[str, object], cap_end: float) -> None:
        """Start the jobs (of stage) together and wait for them until cap_end; each one's result, and the test
        outcomes of the stage so far, go into entry."""
        if cap_end - self.elapsed() < MIN_JOB_SECONDS:
            entry["jobs"] += [{"label": job.label, "status": "skipped: no time left"} for job in jobs]
            return
        running, self.running = [], []
        for job in jobs:
            env = dict(self.env, **job.env)
            if job.bench:
                env["PROGAN_FAST_BENCH_SECONDS"] = str(max(1.0, cap_end - self.elapsed() - BUDGET_MARGIN_SECONDS))
            log = open(self.work / f"log-{id(job)}.txt", "w")
            process = subprocess.Popen(job.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=default_sigint)
            running.append((job, process, log, self.elapsed()))
            self.running.append(process)
        for job, process, log, started in running:
            try:
                process.wait(max(0.0, cap_end - self.elapsed()))
                cut = False
            except subprocess.TimeoutExpired:
                stop(process)
                cut = True
            log.close()
            code = process.returncode
            status = "cut at the cap" if cut else "ok" if code in (0, 5) else "failed"  # 5: nothing collected
            entry["jobs"].append({"label": job.label, "command": " ".join(job.argv), "exit": code,
                                  "seconds": round(self.elapsed() - started, 1), "status": status})
            self.append_log(entry, job, pathlib.Path(log.name), status, code)
            records = [other.record for other in stage.jobs if other.record]
            if records:
                entry["tests"] = test_outcomes(records)
            self.save()

    def append_log(self, entry, job: Job, path: pathlib.Path, status: str, code) -> None:
        with open(self.out / LOG, "a") as log:
            log.write(f"\n===== stage {entry['stage']} ({entry['title']}): {job.label}: {status} (exit {code})\n"
                      f"$ {' '.join(job.argv)}\n")
            log.write(path.read_text(errors="replace"))

    def save(self) -> None:
        self.record["seconds"] = round(self.elapsed(), 1)
        (self.out / RECORD).write_text(json.dumps(self.record, indent=1, default=str) + "\n")
        (self.out / SUMMARY).write_text(summary_text(self.record, self.out))


# ---------------------------------------------------------------------------------------------
# The one-screen summary

def short_column(name: str) -> str:
    """Table column names cut to fit one screen."""
    for long, short in (("reference ", "ref "), ("progan_fast ", ""), (" autocast", ""), (" + channels_last", " CL"),
                        ("torch.compile bf16 CL (GP double backward eager)", "compile")):
        name = name.replace(long, short)
    return name


def _rate(value) -> str:
    return "-" if not value else f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def _environment_lines(environment: Optional[dict]) -> List[str]:
    if not environment:
        return ["environment: not measured"]
    facts = environment.get("facts", {})
    props = environment.get("device_properties", {})
    device = facts.get("device", "?")
    if props:
        device += f" (sm {props.get('major')}.{props.get('minor')}, {props.get('multi_processor_count')} SMs, " \
                  f"{props.get('total_memory', 0) / 2 ** 30:.0f} GiB)"
    lines = [f"device: {device}; torch {facts.get('torch')}, CUDA {facts.get('cuda_runtime')}, triton "
             f"{facts.get('triton')}, python {facts.get('python')}, driver {facts.get('driver', '-')}"]
    ceilings, build = environment.get("ceilings"), environment.get("cuda_extension")
    if ceilings:
        lines.append(f"ceilings: copy {ceilings['copy_GBps']:.0f} GB/s, bf16 matmul "
                     f"{ceilings['bf16_matmul_TFLOPs']:.1f} TFLOP/s")
    if build:
        lines.append(f"CUDA extension: {build['status']} in {build['seconds']} s"
                     + (f": {build['error'].strip().splitlines()[-1]}" if build.get("error") else ""))
    return lines


def _stage_lines(stages: List[dict]) -> List[str]:
    lines = [f"{'stage':<40} {'seconds (cap)':>14}  result"]
    failures = []
    for stage in stages:
        statuses = sorted({job["status"] for job in stage["jobs"]}) or ["running"]
        counts = stage.get("tests", {}).get("counts", {})
        result = ", ".join(statuses) + ("; " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
                                        if counts else "")
        seconds = "-" if stage["seconds"] is None else f"{stage['seconds']:.0f}"
        cap = "-" if stage["cap_seconds"] == float("inf") else f"{stage['cap_seconds']:.0f}"
        lines.append(f"{stage['stage']} {stage['title']:<38} {seconds + ' (' + cap + ')':>14}  {result}")
        failures += stage.get("tests", {}).get("failures", [])
    if failures:
        lines.append(f"failed tests ({len(failures)}; first 5, all in {RECORD}):")
        lines += [f"  {f['test']}: {f['message'] or ''}"[:120] for f in failures[:5]]
    return lines


def _step_lines(folder: pathlib.Path, width: int = 18) -> List[str]:
    """The step table: images/s stable/fading (peak GiB) per resolution and column; last, the projection."""
    report = reports.read_report(folder, reports.TRAINING_STEPS)
    if not report:
        return []
    rows = report["tables"][reports.ALL_ROWS[reports.TRAINING_STEPS]]
    columns = list(dict.fromkeys(row["column"] for row in rows))
    lines = ["training step, images/s stable/fading (peak GiB of the stable step); the official 12M-image schedule:",
             f"{'res':>5} {'batch':>5} " + " ".join(f"{short_column(c):>{width}}" for c in columns)]
    for res in sorted({row["resolution"] for row in rows}):
        cells, batch = [], ""
        for column in columns:
            row = next((r for r in rows if r["resolution"] == res and r["column"] == column), None)
            batch = row["batch"] if row else batch
            if row is None or not row.get("images_per_s"):
                cells.append("failed" if row and row.get("error") else "-")
                continue
            peak = f" ({row['peak_GiB']:.1f})" if row.get("peak_GiB") is not None else ""
            cells.append(f"{_rate(row['images_per_s'])}/{_rate(row.get('fade_images_per_s'))}{peak}")
        lines.append(f"{res:>5} {batch:>5} " + " ".join(f"{cell:>{width}}" for cell in cells))
    projected = {p["column"]: p for p in report["tables"].get(reports.STEP_PROJECTION, [])}
    cells = []
    for column in columns:
        days, speedup = (projected.get(column) or {}).get("projected_days"), \
            (projected.get(column) or {}).get("speedup_vs_first_column")
        cells.append("-" if not days else f"{days:.1f} d" + (f" ({speedup:.1f}x)" if speedup else ""))
    lines.append(f"{'12M images':>11} " + " ".join(f"{cell:>{width}}" for cell in cells))
    return lines


def _kernel_lines(folder: pathlib.Path) -> List[str]:
    report = reports.read_report(folder, reports.KERNELS)
    if not report:
        return []
    summary = report["tables"].get(reports.KERNEL_SUMMARY, [])
    cases = len(report["tables"][reports.ALL_ROWS[reports.KERNELS]])
    lines = [f"kernels ({cases} timings), geomean speedup vs the torch backend (cases, slower than torch):"]
    for backend in dict.fromkeys(row["backend"] for row in summary):
        parts = [f"{row['pass']} {row['geomean_speedup_vs_torch']:.2f}x ({row['cases']}, {row['slower_than_torch']})"
                 for row in summary if row["backend"] == backend]
        lines.append(f"  {backend}: " + "; ".join(parts))
    return lines


def summary_text(record: Dict[str, object], folder: pathlib.Path) -> str:
    kind = "dry run on the CPU (tiny sizes, host clock: proves the script, measures nothing)" if record["dry_run"] \
        else "GPU run"
    lines = [f"progan_fast staged benchmark run, {kind}: {record['started_utc']}, {record.get('seconds', 0):.0f} s "
             f"of {record['deadline_seconds']:.0f} s"]
    lines += _environment_lines(record["environment"])
    lines += [""] + _stage_lines(record["stages"])
    for part in (_step_lines(folder), _kernel_lines(folder)):
        if part:
            lines += [""] + part
    present = [name for name in OUT_FILES if (folder / name).is_file()]
    lines += ["", f"files ({len(present)}): {', '.join(present)}", f"in {folder}"]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/run_gpu.sh", description="The staged GPU benchmark run.")
    parser.add_argument("out", nargs="?", type=pathlib.Path, default=None,
                        help=f"results folder (default ${reports.ENV_OUT}, else benchmarks/results; for a dry run "
                             "a new temporary folder, so that its numbers never mix with a GPU's)")
    parser.add_argument("--dry-run", action="store_true",
                        help="every stage on the CPU at tiny sizes, to prove the script without a GPU")
    args = parser.parse_args(argv)
    if args.out is None and args.dry_run:
        args.out = pathlib.Path(tempfile.mkdtemp(prefix="progan_fast_dry_run_"))
    out = (args.out or reports.results_folder()).resolve()
    return Run(DRY if args.dry_run else GPU, out).run()


if __name__ == "__main__":
    sys.exit(main())
