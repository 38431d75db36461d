"""Training-step table: images/s and peak memory of the trainer's own step (WGAN-GP D step, G step, EMA) per
resolution, for the reference (eager fp32, eager bf16 + channels_last, torch.compile) and progan_fast on each
backend."""
import pytest

from benchmarks.harness import cases, steps

SWEEP = cases.Sweep.from_env()


@pytest.mark.parametrize("res", cases.RESOLUTIONS, ids=lambda res: f"res{res}")
def test_training_step(res, device, step_budget, step_rows):
    if step_budget.spent():
        pytest.skip(f"the {SWEEP.name} sweep's training-step time budget ({SWEEP.step_budget_seconds:.0f} s) is spent")
    columns = [column for column in steps.step_columns(device)
               if not column.compile or res in SWEEP.compile_resolutions]
    rows = steps.training_step_rows(res, columns, SWEEP.step_warmup, SWEEP.step_rounds, device)
    step_rows.extend(rows)
    failed = [f"{row['column']}: {row['error']}" for row in rows
              if row["error"] and row["column"].startswith("progan_fast")]
    assert not failed, "progan_fast training step failed: " + "; ".join(failed)
