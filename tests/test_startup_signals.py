"""Signals before training starts: SIGINT or SIGTERM while the data is prepared or a checkpoint is loaded ends
the trainer with 130 / 143 and one line saying what was interrupted, its temporary files removed; a SIGKILL
there leaves a temporary folder that the next preparation removes.

Each case runs the trainer in a subprocess whose preparation (or checkpoint loading) is slowed down and prints
a marker line when it starts, so the signal lands there without a race against a fixed sleep."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from progan_fast.training import checkpoint as ckpt
from progan_fast.training.data import prepare_cache

from test_image_folders import write_good_images
from tiny_runs import TINY_8 as TINY
from tiny_runs import finished_run as run_to_the_end
MARKER = "SLOW STEP STARTED"
# The trainer, with `module.function` announcing itself and taking half a second per call.
SLOWED_TRAINER = f"""
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the test runner ignores it
from progan_fast.training import {{module}} as patched
original = patched.{{function}}
def slow(*args, **kwargs):
    print("{MARKER}", flush=True)
    time.sleep(0.5)
    return original(*args, **kwargs)
patched.{{function}} = slow
from progan_fast.train import main
main(sys.argv[1:])
"""
SLOW_STEPS = {"preparing the data": ("data", "_load_or_reason"),
              "loading checkpoint": ("checkpoint", "_verified_bytes")}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run_to_the_end(tmp_path_factory.mktemp("signals") / "run")


def start_slowed(step, args, tmp_path):
    """The trainer as a subprocess, once its slowed-down `step` has started; its stderr goes to a file."""
    module, function = SLOW_STEPS[step]
    stderr = open(tmp_path / "stderr.txt", "w")
    process = subprocess.Popen([sys.executable, "-c", SLOWED_TRAINER.format(module=module, function=function)] + args,
                               env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.PIPE, stderr=stderr,
                               text=True)
    stderr.close()
    for line in process.stdout:
        if MARKER in line:
            return process
    process.wait()
    pytest.fail(f"the trainer ended before {step}: {(tmp_path / 'stderr.txt').read_text()[-2000:]}")


def images_to_prepare(tmp_path):
    write_good_images(tmp_path / "images", 40)
    return ["--data", str(tmp_path / "images"), "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "run")]


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("step", sorted(SLOW_STEPS))
def test_a_signal_during_start_up_ends_with_one_line_and_its_status(finished_run, tmp_path, step, number):
    args = TINY + images_to_prepare(tmp_path) if step == "preparing the data" else ["--resume", str(finished_run)]
    checkpoints_before = sorted(p.name for p in (finished_run / "checkpoints").iterdir())
    process = start_slowed(step, args, tmp_path)
    process.send_signal(number)
    process.communicate(timeout=60)
    stderr = (tmp_path / "stderr.txt").read_text()
    assert process.returncode == 128 + number, stderr
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted by {signal.Signals(number).name} while {step} ")
    assert last.endswith("; its temporary files were removed; run the same command again to start over")
    if step == "preparing the data":
        assert not [p.name for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]
        assert not (tmp_path / "run").exists()  # the run folder comes after the data
    else:
        assert sorted(p.name for p in (finished_run / "checkpoints").iterdir()) == checkpoints_before
        assert not (finished_run / "run.lock").exists()


def test_the_leftover_of_a_preparation_killed_with_sigkill_is_removed_next_time(tmp_path):
    process = start_slowed("preparing the data", TINY + images_to_prepare(tmp_path), tmp_path)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    leftover = [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(f".tmp-{socket.gethostname()}-"
                                                                            f"{process.pid}")]
    assert len(leftover) == 1
    messages = []
    prepare_cache(str(tmp_path / "images"), 8, str(tmp_path / "cache"), log=messages.append)
    assert not leftover[0].exists()
    assert f"Removed {leftover[0]}, left over from a preparation of the data that was interrupted" in messages
    assert ckpt.list_checkpoints(tmp_path / "run") == []
