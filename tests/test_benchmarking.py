"""CPU tests of the benchmark harness: cases, cost models, planning, checks, the training step, reports."""
import json
import math

import pytest
import torch

import progan_fast
from progan_fast import benchmarking as bench
from progan_fast import reference

CONV_UP = (("activation", "lrelu"), ("pixel_norm", True), ("upsample", True))


def small_case(op="equalized_conv2d", dtype_name="fp32", options=CONV_UP, kernel=3):
    return bench.OpCase("test block", op, 8, 2, 5, 6, 4, dtype_name, kernel, options)


def test_official_widths_and_batches():
    assert [bench.channels(res) for res in bench.RESOLUTIONS] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert bench.OFFICIAL_BATCH[32] == 64 and bench.OFFICIAL_BATCH[1024] == 4


def test_cases_cover_every_op_at_official_sizes():
    cases = bench.op_cases(bench.RESOLUTIONS, ["bf16"])
    assert {case.op for case in cases} == set(bench.registered_ops())
    assert len({case.id for case in cases}) == len(cases)
    assert all(case.batch == bench.OFFICIAL_BATCH[case.resolution] for case in cases)
    up = next(case for case in cases if case.block == "G conv0 up" and case.resolution == 128)
    assert (up.in_channels, up.out_channels, up.size, up.kwargs["upsample"]) == (256, 128, 64, True)
    assert up.input_shapes()[0] == (16, 256, 64, 64)
    d_conv = next(case for case in cases if case.block == "D conv1" and case.resolution == 64)
    assert (d_conv.in_channels, d_conv.out_channels) == (256, 512)
    # Each case builds inputs that the public op accepts (shapes only: tiny batch and size).
    for case in {case.op: case for case in cases}.values():
        small = bench.OpCase(case.block, case.op, 8, 4, min(case.in_channels, 4), min(case.out_channels, 4),
                             4 if case.size else 0, "fp32", case.kernel, case.options)
        assert bench.run_forward(small, "torch", small.make_inputs("cpu")).numel() > 0


def test_full_sweep_covers_all_dtypes_and_resolutions():
    cases = bench.op_cases(bench.SWEEPS["full"].resolutions, bench.SWEEPS["full"].dtypes)
    assert {case.dtype_name for case in cases} == {"fp32", "bf16", "fp16"}
    assert {case.resolution for case in cases} == set(bench.RESOLUTIONS)


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
    case = bench.OpCase("pn", "pixel_norm", 64, 32, 256, 256, 64, "fp32")
    n = 32 * 256 * 64 * 64
    assert case.cost("forward") == (4 * n, 4 * 2 * n)  # read x, write y, fp32
    assert case.cost("backward")[1] == 4 * 3 * n
    assert bench.OpCase("r", "fade_downsample", 8, 2, 3, 3, 8, "bf16").passes == ("forward",)


def test_rotation_count_outlasts_l2_within_limits():
    l2 = 50 * 2 ** 20
    assert bench.rotation_count(10 * 2 ** 20, l2) == 11
    assert bench.rotation_count(2 ** 30, l2) == 2
    assert bench.rotation_count(1024, l2) == 64
    assert bench.rotation_count(4 * 2 ** 30, l2, memory_budget=6 * 2 ** 30) == 1


def test_plan_rounds_amortises_synchronisation():
    call = 2.0 ** -16  # seconds per call; powers of two keep the arithmetic exact
    assert bench.plan_rounds(call, budget_seconds=2.0 ** -3, round_seconds=2.0 ** -10) == (128, 64)
    assert bench.plan_rounds(call, budget_seconds=1.0, round_seconds=2.0 ** -10) == (200, 64)
    assert bench.plan_rounds(1e-2, budget_seconds=1e-2) == (5, 1)


def test_budget_starts_on_first_use():
    now = [100.0]
    budget = bench.Budget(5.0, clock=lambda: now[0])
    now[0] = 200.0
    assert not budget.spent()
    now[0] = 204.0
    assert not budget.spent()
    now[0] = 206.0
    assert budget.spent()


def test_sweep_from_environment():
    assert bench.Sweep.from_env({}).name == "quick"
    assert bench.Sweep.from_env({bench.ENV_MODE: "FULL"}).dtypes == ("fp32", "bf16", "fp16")
    with pytest.raises(ValueError, match="quick, full"):
        bench.Sweep.from_env({bench.ENV_MODE: "fast"})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without a GPU")
def test_gpu_skip_reason_without_cuda():
    assert "CUDA is not available" in bench.gpu_skip_reason()


def test_backend_skip_reasons(monkeypatch):
    conv, norm = small_case(), bench.OpCase("pn", "pixel_norm", 8, 2, 4, 4, 4, "fp32")
    assert bench.backend_skip_reason(conv, "eager", "cpu") is None
    assert "no eager chain" in bench.backend_skip_reason(norm, "eager", "cpu")
    assert "CUDA tensors" in bench.backend_skip_reason(norm, "cuda", "cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    impls = bench.registered_ops()["pixel_norm"].impls
    monkeypatch.delitem(impls, "triton", raising=False)
    assert "no implementation of pixel_norm" in bench.backend_skip_reason(norm, "triton", "cpu")
    monkeypatch.setitem(impls, "triton", impls["torch"])
    assert bench.backend_skip_reason(norm, "triton", "cpu") is None


def test_eager_chain_matches_torch_backend():
    for options in (CONV_UP, (("activation", "lrelu"),), (("gain", 1.0),)):
        assert bench.check_against_torch(small_case(options=options), "eager", "cpu") < 1e-5


def test_check_refuses_a_wrong_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    case = bench.OpCase("pn", "pixel_norm", 8, 2, 4, 4, 4, "fp32")
    impls = bench.registered_ops()["pixel_norm"].impls
    monkeypatch.setitem(impls, "triton", lambda x, eps: impls["torch"](x, eps) * 1.01)
    with pytest.raises(AssertionError, match="is off the fp32 torch result"):
        bench.check_against_torch(case, "triton", "cpu")


@pytest.mark.parametrize("pass_", bench.PASSES)
def test_timed_call_runs_each_pass_on_rotating_inputs(pass_):
    case = small_case()
    input_sets = [case.make_inputs("cpu", seed) for seed in range(3)]
    call = bench.timed_call(case, "torch", pass_, input_sets)
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
    return case, [bench.kernel_row(case, backend, "forward", seconds, ceilings, 0.0)
                  for backend, seconds in (("torch", 4e-6), ("eager", 5e-6), ("triton", 2e-6))]


def test_kernel_rows_speedups_and_summary():
    case, rows = kernel_rows()
    flops, nbytes = case.cost("forward")
    assert rows[2]["GBps"] == pytest.approx(nbytes / 2e-6 / 1e9)
    assert rows[2]["pct_copy"] == pytest.approx(100 * rows[2]["GBps"] / 1000)
    assert rows[2]["pct_matmul"] == pytest.approx(100 * flops / 2e-6 / 1e12 / 100)
    bench.add_speedups(rows)
    assert rows[2]["speedup_vs_torch"] == pytest.approx(2.0)
    assert rows[2]["speedup_vs_eager"] == pytest.approx(2.5)
    summary = {row["backend"]: row for row in bench.summarize_kernels(rows)}
    assert set(summary) == {"eager", "triton"}
    assert summary["eager"]["slower_than_torch"] == 1
    assert summary["triton"]["geomean_speedup_vs_torch"] == pytest.approx(2.0)
    assert summary["triton"]["geomean_speedup_vs_eager_conv"] == pytest.approx(2.5)
    assert summary["eager"]["geomean_speedup_vs_eager_conv"] is None


def test_official_schedule_and_projection():
    schedule = bench.official_schedule()
    assert sum(schedule.values()) == 12_000_000
    assert schedule[4] == 600_000 and schedule[8] == 1_200_000 and schedule[1024] == 3_000_000
    rates = {res: 100.0 for res in schedule}
    assert bench.project_schedule_hours(rates, schedule) == pytest.approx(12_000_000 / 100 / 3600)
    del rates[512]
    assert bench.project_schedule_hours(rates, schedule) is None
    with pytest.raises(ValueError, match="more than total_kimg"):
        bench.official_schedule(total_kimg=1000)


def test_training_table_reports_rates_failures_and_projection():
    rows = [{"resolution": res, "batch": bench.OFFICIAL_BATCH[res], "column": "a", "error": None,
             "images_per_s": 200.0, "peak_GiB": 1.5} for res in bench.RESOLUTIONS]
    rows += [dict(row, column="c", images_per_s=800.0) for row in rows]
    rows.append({"resolution": 8, "batch": 128, "column": "b", "error": "RuntimeError: boom"})
    table, projections = bench.training_table(rows)
    assert [line["resolution"] for line in table] == list(bench.RESOLUTIONS)
    assert table[1]["a"] == "200.0 img/s, 1.50 GiB" and table[1]["b"] == "failed: RuntimeError: boom"
    assert "b" not in table[0]
    projections = {row["column"]: row for row in projections}
    assert projections["a"]["projected_12M_schedule_hours"] == pytest.approx(12_000_000 / 200 / 3600)
    assert projections["c"]["speedup_vs_first_column"] == pytest.approx(4.0)
    assert projections["b"]["projected_12M_schedule_hours"] is None
    assert projections["b"]["speedup_vs_first_column"] is None


def test_report_writes_json_and_markdown(tmp_path, capsys):
    _, rows = kernel_rows()
    bench.add_speedups(rows)
    facts = bench.device_facts()
    assert {"date_utc", "torch", "triton", "device"} <= set(facts)
    report = bench.Report("progan_fast kernel throughput", facts,
                          {"summary per backend and pass": bench.summarize_kernels(rows), "all cases": rows},
                          ["a note | with a bar"])
    json_path, md_path = report.write(tmp_path / "out", "kernels")
    loaded = json.loads(json_path.read_text())
    assert loaded["tables"]["all cases"][2]["backend"] == "triton"
    markdown = md_path.read_text()
    assert "| case | block | op |" in markdown and f"- torch: {torch.__version__}" in markdown
    assert "| test_block-r8-fp32 |" in markdown
    bench.main(["summary", str(tmp_path / "out")])
    printed = capsys.readouterr().out
    assert "summary per backend and pass" in printed and "training_steps: no results" in printed


def test_markdown_table_formats_and_escapes():
    text = bench.markdown_table([{"a": 1.23456, "b": None}, {"a": 12345.6, "b": "x|y"}])
    assert text.splitlines() == ["| a | b |", "|---|---|", "| 1.23 | - |", "| 12346 | x\\|y |"]


def test_state_bytes_counts_weights_grads_and_adam_state():
    layer = torch.nn.Linear(3, 4)
    optimizer = torch.optim.Adam(layer.parameters(), **bench.ADAM)
    assert bench.state_bytes([layer], [optimizer]) == 16 * 4
    layer(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    step_counters = sum(state["step"].numel() * state["step"].element_size() for state in optimizer.state.values())
    assert bench.state_bytes([layer], [optimizer]) == 4 * 16 * 4 + step_counters


@pytest.mark.parametrize("package", [reference, progan_fast], ids=["reference", "progan_fast"])
def test_wgan_gp_step_updates_both_networks(package):
    torch.manual_seed(0)
    generator = package.Generator(resolution=8, fmap_base=32, fmap_max=16)
    discriminator = package.Discriminator(resolution=8, fmap_base=32, fmap_max=16)
    opt_g, opt_d = [torch.optim.Adam(model.parameters(), **bench.ADAM) for model in (generator, discriminator)]
    d_grads_after_d_step = []
    d_step = opt_d.step
    opt_d.step = lambda: (d_step(), d_grads_after_d_step.extend(
        None if p.grad is None else p.grad.clone() for p in discriminator.parameters()))
    params = [p for model in (generator, discriminator) for p in model.parameters()]
    before = [p.detach().clone() for p in params]
    latents, reals = torch.randn(4, generator.latent_size), torch.rand(4, 3, 8, 8) * 2 - 1
    d_loss, g_loss = bench.wgan_gp_step(generator, discriminator, opt_g, opt_d, latents, reals, 8)
    assert math.isfinite(d_loss.item()) and math.isfinite(g_loss.item())
    used = [(old, p) for old, p in zip(before, params) if p.grad is not None]
    assert len(used) > len(params) // 2
    assert all(not torch.equal(old, p) for old, p in used)
    assert all(p.requires_grad for p in discriminator.parameters())
    # The G step leaves D's gradients as the D step made them.
    for grad, p in zip(d_grads_after_d_step, discriminator.parameters(), strict=True):
        assert (p.grad is None) if grad is None else torch.equal(p.grad, grad)
    losses = bench.wgan_gp_step(generator, discriminator, opt_g, opt_d, latents, reals, 8,
                                autocast_dtype=torch.bfloat16)
    assert all(math.isfinite(loss.item()) for loss in losses)


def test_step_columns_put_the_reference_first():
    columns = bench.step_columns("cpu")
    assert [column.name for column in columns[:3]] == [column.name for column in bench.REFERENCE_COLUMNS]
    assert "GP double backward eager" in columns[2].name and columns[2].compile
    assert all(column.fast and column.autocast_dtype == torch.bfloat16 for column in columns[3:])
    assert not any(column.backend == "cuda" for column in columns)  # no CUDA tensors on this device


@pytest.mark.skipif(torch.cuda.is_available(), reason="exercises the failure paths that CPU tensors take")
def test_training_step_rows_report_failing_columns_and_go_on(monkeypatch):
    class BreaksOnBuild(bench.StepRunner):
        def __init__(self, column, *args):
            if column.name == "broken":
                raise RuntimeError("cannot build this column")
            super().__init__(column, *args)

    monkeypatch.setattr(bench, "StepRunner", BreaksOnBuild)
    broken = bench.StepColumn("broken")
    rows = bench.training_step_rows(4, [broken, bench.REFERENCE_COLUMNS[0]], warmup=0, rounds=1, device="cpu")
    assert [row["column"] for row in rows] == ["broken", "reference eager fp32"]
    assert rows[0]["error"] == "RuntimeError: cannot build this column"
    # The second column builds, then its timed step needs CUDA events: reported, not raised.
    assert rows[1]["error"] and "images_per_s" not in rows[1]
