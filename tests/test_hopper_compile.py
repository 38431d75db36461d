"""Every Triton kernel launch of a training step compiles for Hopper (sm_90) without a GPU: no compile error,
shared memory within the limit, no register spills, the conv's 16-bit products on wgmma (tests/hopper_compile.py,
which prints the table). It runs with this environment's Triton and, where PROGAN_FAST_GPU_STACK_PYTHON names the
Python of an environment with the GPU machine's stack (torch 2.11, triton 3.6; .ci/run makes one), with that one
too. PROGAN_FAST_COMPILE_REPORTS: a folder to keep each run's table in (CI prints them).

The checks themselves are tested on recorded results, so that a check that cannot fail is caught here."""
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import hopper_compile

SCRIPT = Path(hopper_compile.__file__)
STACKS = {"this-environment": sys.executable, "gpu-stack": os.environ.get("PROGAN_FAST_GPU_STACK_PYTHON")}


@pytest.mark.parametrize("stack", STACKS)
def test_every_kernel_launch_of_a_training_step_compiles_for_hopper(stack, tmp_path):
    python = STACKS[stack]
    if python is None:
        pytest.skip("PROGAN_FAST_GPU_STACK_PYTHON is not set (the Python of a torch 2.11 + triton 3.6 environment; "
                    ".ci/run makes one)")
    pytest.importorskip("triton.backends.nvidia")
    reports = Path(os.environ.get("PROGAN_FAST_COMPILE_REPORTS", tmp_path))
    reports.mkdir(parents=True, exist_ok=True)
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([python, str(SCRIPT), "--report", str(reports / f"hopper-compile-{stack}.md")],
                            env=env, capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + "\n" + result.stderr[-8000:]


def launch(name="_conv_fwd_kernel", dtype="bf16", block_m=64):
    kernel = SimpleNamespace(arg_names=["x_ptr", "BLOCK_M"], fn=SimpleNamespace(__name__=name))
    return hopper_compile.Launch(kernel, {"x_ptr": f"*{dtype}", "BLOCK_M": "constexpr"}, {(1,): block_m},
                                 SimpleNamespace(num_warps=4, num_stages=3), {})


GOOD = dict(shared=72 * 1024, registers=168, wgmma=True)


@pytest.mark.parametrize("compiled, expected", [
    (dict(error="PTXASError: ptxas failed"), "compile error"),
    (dict(GOOD, shared=228 * 1024), "shared memory"),
    (dict(GOOD, registers=255, spill_stores=4, spill_loads=8), "register spills"),
    (dict(GOOD, spill_loads=4), "register spills"),
    (dict(GOOD, wgmma=False, mma_sync=True), "mma.sync instead"),
])
def test_each_check_fails_what_it_should(compiled, expected):
    problems = hopper_compile.findings(launch(), hopper_compile.Compiled(**compiled))
    assert len(problems) == 1 and expected in problems[0]


def test_wgmma_is_asked_of_the_conv_kernel_in_16_bit_only():
    no_wgmma = hopper_compile.Compiled(**dict(GOOD, wgmma=False))
    assert hopper_compile.findings(launch(), hopper_compile.Compiled(**GOOD)) == []
    assert "cannot use it" in hopper_compile.findings(launch(block_m=32), no_wgmma)[0]
    for dtype in ("bf16", "fp16"):
        assert hopper_compile.findings(launch(dtype=dtype), no_wgmma)
    assert hopper_compile.findings(launch(dtype="fp32"), no_wgmma) == []
    assert hopper_compile.findings(launch(name="_epilogue_bwd_kernel"), no_wgmma) == []
