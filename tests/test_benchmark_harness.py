"""CPU tests of the benchmark harness (benchmarks/harness): cases, cost models, planning, checks, the
training-step runner, reports."""
import dataclasses
import json
import math
import pathlib

import pytest
import torch

import progan_fast
from benchmarks.harness import cases as bench_cases
from benchmarks.harness import device, kernels, reports, steps, timing
from progan_fast import reference
from progan_fast.backend import KERNEL_DTYPES, OPS, unavailable_reason
from progan_fast.training.config import OFFICIAL_MINIBATCH, build_networks, preset_config
from progan_fast.training.step import TrainStep

CONV_UP = (("activation", "lrelu"), ("pixel_norm", True), ("upsample", True))


def small_case(op="equalized_conv2d", dtype_name="fp32", options=CONV_UP, kernel=3):
    return bench_cases.OpCase("test block", op, 8, 2, 5, 6, 4, dtype_name, kernel, options)


def test_official_widths_and_batches():
    assert [bench_cases.channels(res) for res in bench_cases.RESOLUTIONS] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert OFFICIAL_MINIBATCH[32] == 64 and OFFICIAL_MINIBATCH[1024] == 4
    assert set(bench_cases.DTYPES.values()) == set(KERNEL_DTYPES)


def test_cases_cover_every_op_at_official_sizes():
    cases = bench_cases.op_cases(bench_cases.RESOLUTIONS, ["bf16"])
    assert {case.op for case in cases} == set(OPS)
    assert len({case.id for case in cases}) == len(cases)
    assert all(case.batch == OFFICIAL_MINIBATCH[case.resolution] for case in cases)
    up = next(case for case in cases if case.block == "G conv0 up" and case.resolution == 128)
    assert (up.in_channels, up.out_channels, up.size, up.kwargs["upsample"]) == (256, 128, 64, True)
    assert up.input_shapes()[0] == (16, 256, 64, 64)
    d_conv = next(case for case in cases if case.block == "D conv1" and case.resolution == 64)
    assert (d_conv.in_channels, d_conv.out_channels) == (256, 512)
    # Each case builds inputs that the public op accepts (shapes only: tiny batch and size).
    for case in {case.op: case for case in cases}.values():
        small = bench_cases.OpCase(case.block, case.op, 8, 4, min(case.in_channels, 4), min(case.out_channels, 4),
                                   4 if case.size else 0, "fp32", case.kernel, case.options)
        assert kernels.run_forward(small, "torch", small.make_inputs("cpu")).numel() > 0


def test_full_sweep_covers_all_dtypes_and_resolutions():
    cases = bench_cases.op_cases(bench_cases.SWEEPS["full"].resolutions, bench_cases.SWEEPS["full"].dtypes)
    assert {case.dtype_name for case in cases} == {"fp32", "bf16", "fp16"}
    assert {case.resolution for case in cases} == set(bench_cases.RESOLUTIONS)


def test_conv_cost_counts_macs_and_minimum_traffic():
    case = small_case(dtype_name="bf16")
    macs = 2 * 6 * 8 * 8 * 5 * 9  # batch * out * (2 * size)^2 * in * k^2
    out, inputs, weights = 2 * 6 * 8 * 8, 2 * 5 * 4 * 4, 6 * 5 * 9
    flops, nbytes = case.cost("forward")
    assert flops == 2 * macs + 3 * out
    assert nbytes == 2 * (inputs + weights + out + 6)
    backward_flops, backward_bytes = case.cost("backward")
    assert backward_flops == 4 * macs + 3 * out and backward_bytes == 2 * 2 * (inputs + weights + out)
    assert case.cost("forward+backward") == (flops + backward_flops, nbytes + backward_bytes)
    with pytest.raises(ValueError, match="pass must be one of"):
        case.cost("sideways")


def test_elementwise_cost_is_bytes_per_element():
    case = bench_cases.OpCase("pn", "pixel_norm", 64, 32, 256, 256, 64, "fp32")
    n = 32 * 256 * 64 * 64
    assert case.cost("forward") == (4 * n, 4 * 2 * n)  # read x, write y, fp32
    assert case.cost("backward")[1] == 4 * 3 * n
    assert bench_cases.OpCase("r", "fade_downsample", 8, 2, 3, 3, 8, "bf16").passes == ("forward",)


def test_rotation_count_outlasts_l2_within_limits():
    l2 = 50 * 2 ** 20
    assert timing.rotation_count(10 * 2 ** 20, l2) == 11
    assert timing.rotation_count(2 ** 30, l2) == 2
    assert timing.rotation_count(1024, l2) == 64
    assert timing.rotation_count(4 * 2 ** 30, l2, memory_budget=6 * 2 ** 30) == 1


def test_plan_rounds_amortises_synchronisation():
    call = 2.0 ** -16  # seconds per call; powers of two keep the arithmetic exact
    assert timing.plan_rounds(call, budget_seconds=2.0 ** -3, round_seconds=2.0 ** -10) == (128, 64)
    assert timing.plan_rounds(call, budget_seconds=1.0, round_seconds=2.0 ** -10) == (200, 64)
    assert timing.plan_rounds(1e-2, budget_seconds=1e-2) == (5, 1)


def test_budget_starts_on_first_use():
    now = [100.0]
    budget = timing.Budget(5.0, clock=lambda: now[0])
    now[0] = 200.0
    assert not budget.spent()
    now[0] = 204.0
    assert not budget.spent()
    now[0] = 206.0
    assert budget.spent()


def test_sweep_from_environment():
    assert bench_cases.Sweep.from_env({}).name == "quick"
    assert bench_cases.Sweep.from_env({bench_cases.ENV_MODE: "FULL"}).dtypes == ("fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="quick, full"):
        bench_cases.Sweep.from_env({bench_cases.ENV_MODE: "fast"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_skip_reason_without_cuda():
    assert "CUDA is not available" in device.gpu_skip_reason()


def test_backend_skip_reasons(monkeypatch):
    conv, norm = small_case(), bench_cases.OpCase("pn", "pixel_norm", 8, 2, 4, 4, 4, "fp32")
    assert kernels.backend_skip_reason(conv, "eager", "cpu") is None
    assert "no eager chain" in kernels.backend_skip_reason(norm, "eager", "cpu")
    assert "CUDA tensors" in kernels.backend_skip_reason(norm, "cuda", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    impls = OPS["pixel_norm"].impls
    monkeypatch.delitem(impls, "triton", raising=False)
    assert "no implementation of pixel_norm" in kernels.backend_skip_reason(norm, "triton", "cpu")
    monkeypatch.setitem(impls, "triton", impls["torch"])
    assert kernels.backend_skip_reason(norm, "triton", "cpu") is None


def test_eager_chain_matches_torch_backend():
    for options in (CONV_UP, (("activation", "lrelu"),), (("gain", 1.0),)):
        assert kernels.check_against_torch(small_case(options=options), "eager", "cpu") < 1e-5


def test_check_refuses_a_wrong_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    case = bench_cases.OpCase("pn", "pixel_norm", 8, 2, 4, 4, 4, "fp32")
    impls = OPS["pixel_norm"].impls
    monkeypatch.setitem(impls, "triton", lambda x, eps: impls["torch"](x, eps) * 1.01)
    with pytest.raises(AssertionError, match="is off the fp32 torch result"):
        kernels.check_against_torch(case, "triton", "cpu")


@pytest.mark.parametrize("pass_", bench_cases.PASSES)
def test_timed_call_runs_each_pass_on_rotating_inputs(pass_):
    case = small_case()
    input_sets = [case.make_inputs("cpu", seed) for seed in range(3)]
    call = kernels.timed_call(case, "torch", pass_, input_sets)
    results = [call() for _ in range(4)]
    if pass_ == "forward":
        assert results[0].shape == (2, 6, 8, 8)
        torch.testing.assert_close(results[3], results[0])
        assert not torch.allclose(results[1], results[0])
    else:
        assert [g.shape for g in results[0]] == [tuple(t.shape) for t in input_sets[0]]
        torch.testing.assert_close(results[3][1], results[0][1])  # round robin: the 4th call reuses set 0


def kernel_rows():
    case = small_case()
    ceilings = {"copy_GBps": 1000.0, "bf16_matmul_TFLOPs": 100.0}
    return case, [kernels.kernel_row(case, backend, "forward", seconds, ceilings, 0.0)
                  for backend, seconds in (("torch", 4e-6), ("eager", 5e-6), ("triton", 2e-6))]


def test_kernel_rows_speedups_and_summary():
    case, rows = kernel_rows()
    flops, nbytes = case.cost("forward")
    assert rows[2]["GBps"] == pytest.approx(nbytes / 2e-6 / 1e9)
    assert rows[2]["pct_copy"] == pytest.approx(100 * rows[2]["GBps"] / 1000)
    assert rows[2]["pct_matmul"] == pytest.approx(100 * flops / 2e-6 / 1e12 / 100)
    kernels.add_speedups(rows)
    assert rows[2]["speedup_vs_torch"] == pytest.approx(2.0)
    assert rows[2]["speedup_vs_eager"] == pytest.approx(2.5)
    summary = {row["backend"]: row for row in kernels.summarize_kernels(rows)}
    assert set(summary) == {"eager", "triton"}
    assert summary["eager"]["slower_than_torch"] == 1
    assert summary["triton"]["geomean_speedup_vs_torch"] == pytest.approx(2.0)
    assert summary["triton"]["geomean_speedup_vs_eager_conv"] == pytest.approx(2.5)
    assert summary["eager"]["geomean_speedup_vs_eager_conv"] is None


def test_official_schedule_and_projection():
    schedule = steps.official_schedule()
    assert sum(schedule.values()) == 12_000_000
    assert schedule[4] == 600_000 and schedule[8] == 1_200_000 and schedule[1024] == 3_000_000
    rates = {res: 100.0 for res in schedule}
    assert steps.project_schedule_hours(rates, schedule) == pytest.approx(12_000_000 / 100 / 3600)
    del rates[512]
    assert steps.project_schedule_hours(rates, schedule) is None
    with pytest.raises(ValueError, match="more than the total of 1000000"):
        steps.official_schedule(total_images=1_000_000)


def training_rows():
    rows = [{"resolution": res, "batch": OFFICIAL_MINIBATCH[res], "column": "a", "error": None,
             "images_per_s": 200.0, "peak_GiB": 1.5} for res in bench_cases.RESOLUTIONS]
    rows += [dict(row, column="c", images_per_s=800.0) for row in rows]
    rows.append({"resolution": 8, "batch": 128, "column": "b", "error": "RuntimeError: boom"})
    return rows


def test_training_table_reports_rates_failures_and_projection():
    table, projections = steps.training_table(training_rows())
    assert [line["resolution"] for line in table] == list(bench_cases.RESOLUTIONS)
    assert table[1]["a"] == "200.0 img/s, 1.50 GiB" and table[1]["b"] == "failed: RuntimeError: boom"
    assert "b" not in table[0]
    projections = {row["column"]: row for row in projections}
    assert projections["a"]["projected_12M_schedule_hours"] == pytest.approx(12_000_000 / 200 / 3600)
    assert projections["c"]["speedup_vs_first_column"] == pytest.approx(4.0)
    assert projections["b"]["projected_12M_schedule_hours"] is None
    assert projections["b"]["speedup_vs_first_column"] is None


def test_report_writes_json_and_markdown(tmp_path, capsys):
    _, rows = kernel_rows()
    kernels.add_speedups(rows)
    facts = device.device_facts()
    assert {"date_utc", "torch", "triton", "device"} <= set(facts)
    report = reports.Report("progan_fast kernel throughput", facts,
                            {"summary per backend and pass": kernels.summarize_kernels(rows), "all cases": rows},
                            ["a note | with a bar"])
    json_path, md_path = report.write(tmp_path / "out", "kernels")
    loaded = json.loads(json_path.read_text())
    assert loaded["tables"]["all cases"][2]["backend"] == "triton"
    markdown = md_path.read_text()
    assert "| case | block | op |" in markdown and f"- torch: {torch.__version__}" in markdown
    assert "| test_block-r8-fp32 |" in markdown
    reports.main(["summary", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "summary per backend and pass" in printed and "training_steps: no results" in printed


def test_the_session_reports_feed_the_summary(tmp_path, capsys):
    _, rows = kernel_rows()
    facts = device.device_facts()
    reports.kernel_report(rows, facts).write(tmp_path, reports.KERNELS)
    assert rows[2]["speedup_vs_torch"] == pytest.approx(2.0)
    step_report = reports.training_step_report(training_rows(), facts)
    assert "lambda 10, drift 0.001" in step_report.notes[0] and "600k fade + 600k stable" in step_report.notes[0]
    step_report.write(tmp_path, reports.TRAINING_STEPS)
    reports.main(["summary", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "### projected official schedule" in printed and "### summary per backend and pass" in printed


def test_results_folder_is_this_checkouts_unless_overridden(tmp_path):
    assert reports.results_folder({}) == pathlib.Path(reports.__file__).resolve().parents[1] / "results"
    assert reports.results_folder({}).is_dir()  # benchmarks/results, with its README
    assert reports.results_folder({reports.ENV_OUT: str(tmp_path)}) == tmp_path


def test_markdown_table_formats_and_escapes():
    text = reports.markdown_table([{"a": 1.23456, "b": None}, {"a": 12345.6, "b": "x|y"}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | - |", "| 12346 | x\\|y |"]


def test_state_bytes_counts_weights_grads_and_adam_state():
    layer = torch.nn.Linear(3, 4)
    optimizer = torch.optim.Adam(layer.parameters())
    assert steps.state_bytes([layer], [optimizer]) == 16 * 4
    layer(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    step_counters = sum(state["step"].numel() * state["step"].element_size() for state in optimizer.state.values())
    assert steps.state_bytes([layer], [optimizer]) == 4 * 16 * 4 + step_counters


# Official step settings on networks and batches small enough for a CPU.
TINY = dataclasses.replace(preset_config("official"), resolution=8, fmap_base=32, fmap_max=16,
                           minibatch={4: 4, 8: 4})


@pytest.mark.parametrize("package", [reference, progan_fast], ids=["reference", "progan_fast"])
def test_train_step_updates_both_networks_and_the_ema(package):
    torch.manual_seed(0)
    generator, discriminator = build_networks(TINY, package)
    gan = TrainStep(generator, discriminator, TINY, "cpu")
    gan.new_optimizers(8)
    d_grads_after_d_step = []
    d_step = gan.d_opt.step
    gan.d_opt.step = lambda: (d_step(), d_grads_after_d_step.extend(
        None if p.grad is None else p.grad.clone() for p in discriminator.parameters()))
    params = [p for model in (generator, discriminator) for p in model.parameters()]
    before = [p.detach().clone() for p in params]
    ema_before = [p.detach().clone() for p in gan.G_ema.parameters()]
    gan(torch.rand(4, 3, 8, 8) * 2 - 1, 8, images_shown=0)
    assert all(math.isfinite(value) for value in gan.stats.tolist()) and gan.skipped.item() == 0
    used = [(old, p) for old, p in zip(before, params) if p.grad is not None]
    assert len(used) > len(params) // 2
    assert all(not torch.equal(old, p) for old, p in used)
    assert all(p.requires_grad for p in discriminator.parameters())
    assert any(not torch.equal(old, p) for old, p in zip(ema_before, gan.G_ema.parameters()))
    # The G step leaves D's gradients as the D step made them.
    for grad, p in zip(d_grads_after_d_step, discriminator.parameters(), strict=True):
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)
    mixed = TrainStep(generator, discriminator, TINY, "cpu", autocast_dtype=torch.bfloat16)
    mixed.new_optimizers(8)
    mixed(torch.rand(4, 3, 8, 8) * 2 - 1, 8, alpha=torch.tensor(0.5), images_shown=4)  # a fade step
    assert all(math.isfinite(value) for value in mixed.stats.tolist())


def test_step_columns_put_the_reference_first():
    columns = steps.step_columns("cpu")
    assert [column.name for column in columns[:3]] == [column.name for column in steps.REFERENCE_COLUMNS]
    assert "GP double backward eager" in columns[2].name and columns[2].compile
    assert all(column.fast and column.autocast_dtype == torch.bfloat16 for column in columns[3:])
    assert not any(column.backend == "cuda" for column in columns)  # no CUDA tensors on this device


# The table's columns that run on a CPU, the fast models in fp32: the Triton interpreter computes bf16 tl.dot
# wrongly (numpy has no bf16), so the table's progan_fast bf16 columns are only right on a GPU.
CPU_COLUMNS = [column for column in steps.REFERENCE_COLUMNS if not column.compile] + [
    steps.StepColumn("progan_fast torch fp32", fast=True),
    pytest.param(steps.StepColumn("progan_fast triton fp32", fast=True, backend="triton"),
                 marks=pytest.mark.skipif(unavailable_reason("triton", torch.device("cpu")) is not None,
                                          reason="the triton backend cannot run here"))]


@pytest.mark.parametrize("column", CPU_COLUMNS, ids=lambda column: column.name)
def test_step_runner_runs_the_trainers_step_on_cpu(column):
    weights, reals = steps.shared_inputs(TINY, 8, "cpu")
    runner = steps.StepRunner(column, 8, weights, reals, TINY)
    assert isinstance(runner.gan, TrainStep) and runner.gan.optimizer_resolution == 8
    assert runner.reals.is_contiguous(memory_format=torch.channels_last) == column.channels_last
    start = [p.detach().clone() for p in runner.gan.G.parameters()]
    torch.testing.assert_close(start, [weights[0][name] for name, _ in runner.gan.G.named_parameters()])
    runner.step()
    assert all(math.isfinite(value) for value in runner.gan.stats.tolist())
    trained = [(old, p) for old, p in zip(start, runner.gan.G.parameters()) if p.grad is not None]
    assert trained and all(not torch.equal(old, p) for old, p in trained)


def test_the_compiled_column_keeps_the_penalty_eager():
    weights, reals = steps.shared_inputs(TINY, 8, "cpu")
    gan = steps.StepRunner(steps.REFERENCE_COLUMNS[2], 8, weights, reals, TINY).gan
    assert gan.g_forward is not gan.G and gan.d_forward is not gan.D  # compiled on first call
    assert isinstance(gan.D, reference.Discriminator)  # what the penalty differentiates twice


@pytest.mark.skipif(torch.cuda.is_available(), reason="exercises the failure paths that CPU tensors take")
def test_training_step_rows_report_failing_columns_and_go_on(monkeypatch):
    class BreaksOnBuild(steps.StepRunner):
        def __init__(self, column, *args):
            if column.name == "broken":
                raise RuntimeError("cannot build this column")
            super().__init__(column, *args)

    monkeypatch.setattr(steps, "StepRunner", BreaksOnBuild)
    broken = steps.StepColumn("broken")
    rows = steps.training_step_rows(4, [broken, steps.REFERENCE_COLUMNS[0]], warmup=0, rounds=1, device="cpu")
    assert [row["column"] for row in rows] == ["broken", "reference eager fp32"]
    assert rows[0]["error"] == "RuntimeError: cannot build this column"
    # The second column builds, then its timed step needs CUDA events: reported, not raised.
    assert rows[1]["error"] and "images_per_s" not in rows[1]
