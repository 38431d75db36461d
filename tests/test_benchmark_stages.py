"""CPU tests of the staged GPU run (benchmarks/run_gpu.sh, benchmarks/harness/stages.py): the plan fits the loan,
commands are cut at their stage's cap and their results kept, test outcomes are recorded as they happen, the
summary fits a screen; and the parts of the harness it added: fading steps and their projection, the dry sweep,
the environment stage."""
import dataclasses
import json
import math
import pathlib
import subprocess
import sys

import pytest
import torch

from benchmarks.harness import cases, environment, kernels, reports, stages, steps, warmup
from benchmarks.harness.pytest_plugin import parse_shard, shard_slice
from progan_fast.training.config import OFFICIAL_MINIBATCH

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_plan_fits_the_loan(tmp_path):
    """9 minutes for the command (a 10-minute limit), at most 8 files straight in OUT, stages 1-4 leave time."""
    # The last command stopped at the deadline may take its grace period and the SIGKILL wait on top.
    assert stages.GPU.deadline_seconds + stages.STOP_GRACE_SECONDS + 5 <= 540
    assert sum(stages.GPU.caps) < stages.GPU.deadline_seconds
    assert len(stages.OUT_FILES) <= 8 and all("/" not in name for name in stages.OUT_FILES)
    plan = stages.plan(stages.GPU, sys.executable, tmp_path)
    assert [stage.number for stage in plan] == [1, 2, 3, 4, 5]
    assert len(plan[1].jobs) == stages.GPU.parity_shards + stages.GPU.warmup_shares and plan[1].parallel
    # Every command runs from the checkout: python -m, no installation, no network.
    assert all(job.argv[:2] == [sys.executable, "-m"] for stage in plan for job in stage.jobs)
    assert not any("pip" in job.argv for stage in plan for job in stage.jobs)


def test_the_parity_selection_names_existing_gpu_tests():
    for entry in stages.PARITY_TESTS:
        path, _, name = entry.partition("::")
        text = (ROOT / path).read_text()
        assert not name or f"\ndef {name}(" in text, entry
    files = {entry.partition("::")[0] for entry in stages.PARITY_TESTS}
    assert "tests/test_fuzz_parity.py" in files and "tests/test_train.py" not in files
    assert stages.PARITY_TESTS[-1] == "tests/test_fuzz_parity.py"  # the long sweep last: a cap cuts it first


def test_shards_are_contiguous_slices_that_cover_everything():
    for total in (0, 1, 7, 100):
        for count in (1, 3, 4):
            slices = [range(total)[shard_slice(total, index, count)] for index in range(1, count + 1)]
            assert [i for part in slices for i in part] == list(range(total))
            assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert parse_shard("2/4") == (2, 4)
    with pytest.raises(ValueError, match="1 <= I <= N"):
        parse_shard("5/4")


def test_the_plugin_records_each_test_as_it_finishes(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "@pytest.fixture\n"
        "def broken():\n    raise RuntimeError('no fixture today')\n"
        "def test_a():\n    pass\n"
        "def test_b():\n    assert 1 == 2, 'one is not two'\n"
        "def test_c():\n    pytest.skip('not here')\n"
        "def test_d(broken):\n    pass\n"
        "def test_e():\n    pass\n"
        "def test_f():\n    pass\n")
    record = tmp_path / "record.jsonl"

    def session(*options):
        record.unlink(missing_ok=True)
        subprocess.run([sys.executable, "-m", "pytest", "test_sample.py", "-q", "-p", "no:cacheprovider", "-p",
                        "benchmarks.harness.pytest_plugin", "--record", str(record), *options], cwd=tmp_path,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=120)
        return {r["test"].split("::")[1]: r for r in map(json.loads, record.read_text().splitlines())}

    outcomes = session()
    assert {name: r["outcome"] for name, r in outcomes.items()} == {
        "test_a": "passed", "test_b": "failed", "test_c": "skipped", "test_d": "error", "test_e": "passed",
        "test_f": "passed"}
    assert "one is not two" in outcomes["test_b"]["message"]
    assert outcomes["test_c"]["message"] == "Skipped: not here"
    assert "no fixture today" in outcomes["test_d"]["message"] and outcomes["test_a"]["message"] is None
    assert set(session("--shard", "2/2")) == {"test_d", "test_e", "test_f"}
    assert set(session("--every", "2")) == {"test_a", "test_c", "test_e"}
    assert set(session("--every", "2", "--shard", "2/2")) == {"test_c", "test_e"}  # the sample, then its slice
    # Slices of each file: every process gets its share of every file.
    (tmp_path / "test_other.py").write_text("def test_g():\n    pass\ndef test_h():\n    pass\n")
    assert set(session("--shard", "1/2", "test_other.py")) == {"test_a", "test_b", "test_c", "test_g"}


def fast_mode(deadline=60.0):
    return dataclasses.replace(stages.DRY, deadline_seconds=deadline)


def python_job(label, code):
    return stages.Job(label, [sys.executable, "-c", code])


def test_a_run_cuts_commands_at_their_cap_and_keeps_every_result(tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "MIN_JOB_SECONDS", 0.0)
    monkeypatch.setattr(stages, "STOP_GRACE_SECONDS", 10.0)
    run = stages.Run(fast_mode(), tmp_path / "out")
    sleeper = ("import time, pathlib\n"
               "try:\n    time.sleep(60)\n"
               "except KeyboardInterrupt:\n    pathlib.Path(r'{}').write_text('wrote on SIGINT')\n    raise\n")
    run.stages = [
        stages.Stage(1, "says hello", 30, [python_job("hello", "print('hello from stage 1')")]),
        stages.Stage(2, "too slow", 1.5, [python_job("first", sleeper.format(tmp_path / "first")),
                                          python_job("second", sleeper.format(tmp_path / "second"))], parallel=True),
        stages.Stage(3, "fails", 30, [python_job("exits 3", "raise SystemExit(3)"), python_job("after it", "")]),
    ]
    assert run.run() == 1  # a command failed
    record = json.loads((tmp_path / "out" / stages.RECORD).read_text())
    statuses = [[job["status"] for job in stage["jobs"]] for stage in record["stages"]]
    assert statuses == [["ok"], ["cut at the cap", "cut at the cap"], ["failed", "ok"]]
    assert record["stages"][1]["seconds"] < 10  # both parallel commands stopped at the same cap
    assert (tmp_path / "first").read_text() == (tmp_path / "second").read_text() == "wrote on SIGINT"
    log = (tmp_path / "out" / stages.LOG).read_text()
    assert "hello from stage 1" in log and "===== stage 3 (fails): exits 3: failed (exit 3)" in log
    summary = (tmp_path / "out" / stages.SUMMARY).read_text()
    assert "2 too slow" in summary and "cut at the cap" in summary
    assert not (tmp_path / "out" / "kernels.json").exists()


def test_commands_past_the_deadline_are_skipped_and_a_dry_run_counts_that(tmp_path, monkeypatch):
    run = stages.Run(fast_mode(deadline=5.0), tmp_path / "out")  # less than MIN_JOB_SECONDS left
    run.stages = [stages.Stage(1, "no time", 30, [python_job("never", "")])]
    assert run.run() == 1
    record = json.loads((tmp_path / "out" / stages.RECORD).read_text())
    assert record["stages"][0]["jobs"] == [{"label": "never", "status": "skipped: no time left"}]


def test_test_outcomes_count_and_list_failures(tmp_path):
    lines = [{"test": f"t{i}", "outcome": outcome, "seconds": float(i), "message": None if outcome == "passed"
              else f"why {i}"} for i, outcome in enumerate(["passed", "failed", "skipped", "error", "passed"])]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    outcomes = stages.test_outcomes([tmp_path / "a.jsonl", tmp_path / "missing.jsonl"])
    assert outcomes["counts"] == {"passed": 2, "failed": 1, "skipped": 1, "error": 1}
    assert outcomes["failures"] == [{"test": "t1", "message": "why 1"}, {"test": "t3", "message": "why 3"}]
    assert outcomes["slowest"][0] == {"test": "t4", "seconds": 4.0}


def step_rows():
    columns = [column.name for column in steps.REFERENCE_COLUMNS] + ["progan_fast triton bf16 + channels_last",
                                                                      "progan_fast cuda bf16 + channels_last"]
    return [{"resolution": res, "batch": OFFICIAL_MINIBATCH[res], "column": column, "error": None,
             "images_per_s": 1000.0 * (i + 1) / res, "peak_GiB": 12.5, "fade_images_per_s": 900.0 * (i + 1) / res,
             "fade_peak_GiB": 13.0} for res in cases.RESOLUTIONS for i, column in enumerate(columns)]


def test_the_summary_fits_one_screen(tmp_path):
    facts = {"device": "NVIDIA H200", "sweep": "quick"}
    reports.training_step_report(step_rows(), facts).write(tmp_path, reports.TRAINING_STEPS)
    kernel_case = cases.OpCase("b", "pixel_norm", 8, 2, 4, 4, 4, "bf16")
    kernel_rows = [kernels.kernel_row(kernel_case, backend, pass_, seconds, {"copy_GBps": 1e3,
                   "bf16_matmul_TFLOPs": 1e2}, 0.0) for backend, seconds in (("torch", 2e-6), ("triton", 1e-6),
                                                                              ("cuda", 1.5e-6))
                   for pass_ in cases.PASSES]
    reports.kernel_report(kernel_rows, facts).write(tmp_path, reports.KERNELS)
    failures = [{"test": f"tests/test_x.py::test_{i}", "message": "assert 1 == 2 " * 20} for i in range(12)]
    record = {"dry_run": False, "started_utc": "now", "deadline_seconds": 530.0, "seconds": 512.0,
              "environment": {"facts": {"device": "NVIDIA H200", "torch": "2.11.0+cu130", "triton": "3.6.0"},
                              "device_properties": {"major": 9, "minor": 0, "multi_processor_count": 132,
                                                    "total_memory": 150 * 2 ** 30},
                              "ceilings": {"copy_GBps": 4000.0, "bf16_matmul_TFLOPs": 780.0},
                              "cuda_extension": {"status": "built", "seconds": 50.0}},
              "stages": [{"stage": n, "title": title, "cap_seconds": cap, "seconds": 100.0,
                          "jobs": [{"status": "ok"}], "tests": {"counts": {"passed": 500}, "failures": failures}}
                         for n, title, cap in ((1, "environment", 120.0), (2, "parity", 150.0),
                                               (5, "everything else", math.inf))]}
    text = stages.summary_text(record, tmp_path)
    lines = text.splitlines()
    assert len(lines) <= 45 and max(map(len, lines)) <= 130, text
    assert "sm 9.0, 132 SMs" in text and "failed tests (36; first 5" in text and "test_5:" not in text
    assert "ref compile" in text and "triton bf16 CL" in text and "250/225 (12.5)" in text
    assert "12M images      51.3 d (1.0x)" in text and "triton: backward 2.00x" in text


def test_fading_steps_are_timed_and_projected_at_their_rate():
    config = cases.SWEEPS["dry"].config(8)
    rows = steps.training_step_rows(8, [steps.REFERENCE_COLUMNS[0]], warmup=0, rounds=1, device="cpu",
                                    config=config, host_clock=True)
    assert rows[0]["error"] is None and rows[0]["images_per_s"] > 0 and rows[0]["fade_images_per_s"] > 0
    assert rows[0]["peak_GiB"] is None  # no peak memory from the host clock
    assert "fade" in steps.training_table(rows)[0][0][rows[0]["column"]]
    schedule, fades = steps.official_schedule(), steps.official_fade_images()
    assert set(fades) == set(schedule) - {4} and all(images == 600_000 for images in fades.values())
    rates = {res: 100.0 for res in schedule}
    slower_fades = {res: 50.0 for res in fades}
    hours = steps.project_schedule_hours(rates, schedule, slower_fades, fades)
    assert hours == pytest.approx((12_000_000 + sum(fades.values())) / 100 / 3600)
    projection = steps.training_table(step_rows())[1][0]
    assert projection["fades_at_measured_rate"] == "8 of 8" and projection["projected_12M_schedule_hours"] > 0


def test_step_runner_phases_and_the_trainers_alpha():
    config = cases.SWEEPS["dry"].config(8)
    weights, reals = steps.shared_inputs(config, 8, "cpu")
    runner = steps.StepRunner(steps.REFERENCE_COLUMNS[0], 8, weights, reals, config)
    assert runner.alpha("stable") == 1.0
    assert isinstance(runner.alpha("fade"), torch.Tensor) and runner.alpha("fade").item() == steps.FADE_ALPHA
    seconds, peak = runner.timed_step("fade", host_clock=True)
    assert seconds > 0 and peak is None


def test_progan_fast_columns_use_the_trainers_gpu_layout():
    assert all(column.channels_last for column in steps.step_columns("cpu") if column.fast)


def test_sweeps_order_budgets_and_dry_sizes(monkeypatch):
    quick = cases.Sweep.from_env({})
    assert quick.resolutions[0] == 1024 and quick.step_resolutions == cases.BY_IMPORTANCE
    assert list(cases.BY_IMPORTANCE) == sorted(cases.RESOLUTIONS, reverse=True)
    limited = cases.Sweep.from_env({cases.ENV_SECONDS: "42"})
    assert limited.kernel_budget_seconds == limited.step_budget_seconds == 42.0
    dry = cases.Sweep.from_env({cases.ENV_MODE: "dry"})
    assert dry.device == "cpu" and dry.compile_backend == "aot_eager" and dry.config(8).fmap_max <= 16
    assert quick.device == "cuda" and quick.compile_backend == "inductor"
    assert quick.config(64) == steps.official_config(64)
    tiny = cases.op_cases((8,), ("fp32",), dry.config(8))
    assert {case.op for case in tiny} >= {"equalized_conv2d", "fade", "minibatch_stddev"}
    assert all(case.batch == 4 and case.in_channels <= 16 for case in tiny)


def test_environment_facts_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(environment, "extension_build", lambda: {"status": "built", "seconds": 1.0})
    facts = environment.collect(tmp_path / "environment.json", cases.SWEEPS["dry"])
    assert json.loads((tmp_path / "environment.json").read_text()) == json.loads(json.dumps(facts, default=str))
    assert facts["ceilings"]["copy_GBps"] > 0 and facts["ceilings"]["bf16_matmul_TFLOPs"] > 0
    assert set(facts["backends"]) == {"triton", "cuda"} and "nvidia_smi" in facts
    monkeypatch.undo()
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    assert environment.extension_build()["status"] == "no nvcc"


def test_warmup_builds_its_share_of_the_jit_compiled_columns(capsys):
    warmup.main(["dry", "2/2"])  # the dry sweep's step resolutions are 8 and 4: the second share is 4x4
    printed = capsys.readouterr().out
    assert "4x4: progan_fast triton bf16 + channels_last built in" in printed and "8x8" not in printed


def test_kernel_inputs_come_in_the_trainers_gpu_layout():
    case = cases.OpCase("G conv0 up", "equalized_conv2d", 8, 2, 5, 6, 4, "fp32", 3,
                        (("activation", "lrelu"), ("pixel_norm", True), ("upsample", True)))
    plain, laid_out = case.make_inputs("cpu"), case.make_inputs("cpu", channels_last=True)
    assert all(torch.equal(a, b) for a, b in zip(plain, laid_out))
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in laid_out[:2])  # feature map, weight
    assert not plain[0].is_contiguous(memory_format=torch.channels_last)
    assert kernels.check_against_torch(case, "triton", "cpu", channels_last=True) < 1e-5
