"""Training-step table: images/s and peak memory of the trainer's own step (WGAN-GP D step, G step, EMA) per
resolution, stable and fading in, for the reference (eager fp32, eager bf16 + channels_last, torch.compile) and
progan_fast on each backend; the sweep's most important resolutions first, and the torch.compile column (the
slow one to build) after every other column has run at every resolution."""
import pytest

from benchmarks.harness import cases, steps

SWEEP = cases.Sweep.from_env()


def measure(res, device, step_budget, step_rows, compiled: bool, phases=steps.PHASES):
    """The columns at `res` (compiled: the torch.compile column, else all the others) in `phases` that the
    report does not hold yet, interleaved."""
    if step_budget.spent():
        pytest.skip(f"the {SWEEP.name} sweep's training-step time budget ({SWEEP.step_budget_seconds:.0f} s) is spent")
    phases = [phase for phase in phases if res > 4 or phase == "stable"]
    measured = {row["column"] for row in step_rows if row["resolution"] == res
                and all(row.get(steps.phase_key(phase, "images_per_s")) for phase in phases)}
    columns = [column for column in steps.step_columns(device)
               if column.compile == compiled and column.name not in measured]
    if not columns:
        pytest.skip("nothing to measure (no fade at 4x4), or measured already (in the report this session adds to)")
    rows = steps.training_step_rows(res, columns, SWEEP.step_warmup, SWEEP.step_rounds, device,
                                    config=SWEEP.config(res), host_clock=SWEEP.dry,
                                    compile_backend=SWEEP.compile_backend, phases=phases)
    step_rows[:] = steps.merge_rows(step_rows, rows)
    failed = [f"{row['column']}: {row['error']}" for row in rows
              if row["error"] and row["column"].startswith("progan_fast")]
    assert not failed, "progan_fast training step failed: " + "; ".join(failed)


@pytest.mark.parametrize("res", SWEEP.step_resolutions, ids=lambda res: f"res{res}")
def test_training_step(res, device, step_budget, step_rows):
    measure(res, device, step_budget, step_rows, compiled=False)


# Each phase compiles its own graphs (alpha is a float when stable, a tensor while fading): stable everywhere
# first, so that a time cap during the long compiles keeps what was measured.
@pytest.mark.parametrize("res", SWEEP.compile_resolutions, ids=lambda res: f"res{res}")
@pytest.mark.parametrize("phase", steps.PHASES)
def test_compiled_training_step(res, phase, device, step_budget, step_rows):
    measure(res, device, step_budget, step_rows, compiled=True, phases=[phase])
