"""A training run survives SIGKILL at random moments (checkpoint writes included), stops cleanly on SIGINT and
SIGTERM, and stops with a clear message, its last checkpoint intact, on repeated NaN losses or out of memory."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progan_fast import train
from progan_fast.training import checkpoint as ckpt
from progan_fast.training import loop

TINY = ["--fmap-base", "64", "--fmap-max", "16", "--latent-size", "16", "--progress", "off", "--grid", "2x2",
        "--tensorboard", "off", "--swd-images", "0"]
TICK_IMAGES = 32
RUN_8 = TINY + ["--resolution", "8", "--stable-kimg", "0.128", "--fade-kimg", "0.128", "--minibatch", "4:8,8:8",
                "--tick-kimg", str(TICK_IMAGES / 1000), "--snapshot-ticks", "1", "--keep-checkpoints", "2"]
RUN_8_STEPS = 48  # (128 + 128 + 128) images / 8 per step
KILLS = 12
KILL_MOMENTS = ("startup", "training", "checkpoint write", "after a checkpoint")
EXPECTED_FILES = set(ckpt.WEIGHT_FILES.values()) | {ckpt.STATE_TENSORS, ckpt.STATE_JSON, ckpt.MANIFEST}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """The prepared data, shared by the runs; in-process runs use one intra-op thread like the subprocesses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield str(tmp_path_factory.mktemp("cache"))
    torch.set_num_threads(threads)


def start(args, write_delay=0.0):
    env = dict(os.environ, OMP_NUM_THREADS="1", **{ckpt.WRITE_DELAY_ENV: str(write_delay)})
    return subprocess.Popen([sys.executable, "-m", "progan_fast.train"] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(condition, process, timeout=60.0):
    """Poll until condition() holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.005)
    raise TimeoutError("the training process made no progress")


def log_lines(run_dir):
    path = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def checkpoint_entries(run_dir):
    folder = Path(run_dir) / "checkpoints"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def assert_nothing_partial_under_a_final_name(run_dir):
    """Every non-hidden checkpoint folder is complete and verifies; the other run files are whole."""
    for entry in checkpoint_entries(run_dir):
        if entry.name.startswith("."):
            continue
        ckpt.verify(entry)
        assert {p.name for p in entry.iterdir()} == EXPECTED_FILES, entry
    from PIL import Image
    for png in Path(run_dir).glob("[!.]*.png"):
        Image.open(png).load()
    for name in ("config.json", "summary.json"):
        if (Path(run_dir) / name).exists():
            json.loads((Path(run_dir) / name).read_text())


def final_tensors(run_dir):
    folder = ckpt.list_checkpoints(run_dir)[-1]
    return {f"{f.name}/{k}": v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(str(f)).items()}


def test_sigkill_at_random_moments_loses_at_most_a_tick(tmp_path, cache_dir):
    started = time.monotonic()
    common = RUN_8 + ["--cache-dir", cache_dir]
    reference = subprocess.run([sys.executable, "-m", "progan_fast.train"] + common + ["--out", str(tmp_path / "ref")],
                               env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert reference.returncode == 0, reference.stderr[-3000:]

    run_dir = tmp_path / "run"
    chooser = random.Random(1234)
    kills, moments, killed_mid_write, resumed_past_startup = 0, [], 0, 0
    while kills < KILLS:
        moment = KILL_MOMENTS[kills % len(KILL_MOMENTS)]
        # Resume when there is a checkpoint, else start again (a new run needs an empty folder: what a killed
        # start left is deleted, as the trainer's refusal says); a kill in the checkpoint writer needs a slow writer.
        if not ckpt.list_checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        args = ["--resume", str(run_dir)] if ckpt.list_checkpoints(run_dir) else common + ["--out", str(run_dir)]
        process = start(args, write_delay=0.05 if moment == "checkpoint write" else 0.0)
        resumed_past_startup += args[0] == "--resume" and moment != "startup"
        lines_before = len(log_lines(run_dir))
        newest_before = ckpt.list_checkpoints(run_dir)[-1:]
        if moment == "startup":
            time.sleep(chooser.uniform(0.1, 2.0))
            reached = process.poll() is None
        elif moment == "training":
            reached = wait_for(lambda: len(log_lines(run_dir)) > lines_before + 1, process)
            time.sleep(chooser.uniform(0.0, 0.2))
        elif moment == "checkpoint write":
            writing = f"-{process.pid}"  # this process's temporary folder, not a leftover of the last one
            reached = wait_for(lambda: any(e.name.startswith(ckpt.TEMPORARY_PREFIX + ckpt.PREFIX)
                                           and e.name.endswith(writing) for e in checkpoint_entries(run_dir)), process)
            time.sleep(chooser.uniform(0.0, 0.3))  # the write takes 6 x 0.05 s
        else:
            reached = wait_for(lambda: ckpt.list_checkpoints(run_dir)[-1:] not in ([], newest_before), process)
        assert reached, f"the run ended before the kill at {moment}: {process.communicate()[1][-2000:]}"
        process.send_signal(signal.SIGKILL)
        process.communicate()
        assert process.returncode == -signal.SIGKILL
        killed_mid_write += any(e.name.startswith(ckpt.TEMPORARY_PREFIX) and e.name.endswith(f"-{process.pid}")
                                for e in checkpoint_entries(run_dir))
        kills += 1
        moments.append(moment)
        assert_nothing_partial_under_a_final_name(run_dir)

    last = subprocess.run([sys.executable, "-m", "progan_fast.train", "--resume", str(run_dir)],
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=120)
    assert last.returncode == 0, last.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == RUN_8_STEPS
    assert_nothing_partial_under_a_final_name(run_dir)
    leftovers = [e.name for e in checkpoint_entries(run_dir) + list(run_dir.iterdir()) if e.name.startswith(".")]
    assert not leftovers, leftovers

    # At most one tick lost per kill: each resume starts at most a tick before the furthest tick logged so far.
    furthest, resumes = 0, []
    for record in log_lines(run_dir):
        if "tick" in record:
            furthest = max(furthest, record["images_shown"])
        elif record.get("event") == "resume":
            resumes.append((record["images_shown"], furthest))
            assert record["images_shown"] >= furthest - TICK_IMAGES, (record, furthest)
    assert len(resumes) >= resumed_past_startup + 1  # the kills after a resume, and the last run

    # The killed and resumed run ends bitwise where an uninterrupted run ends.
    expected, resumed = final_tensors(tmp_path / "ref"), final_tensors(run_dir)
    assert expected.keys() == resumed.keys()
    assert all(torch.equal(expected[k], resumed[k]) for k in expected)
    print(f"{kills} kills survived ({', '.join(moments)}); {killed_mid_write} of them left a half-written "
          f"checkpoint folder; resumes lost {[f - s for s, f in resumes]} images; {time.monotonic() - started:.1f} s")
    assert killed_mid_write >= 1


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_the_step_writes_a_checkpoint_and_exits(tmp_path, cache_dir, stop_signal):
    run_dir = tmp_path / "run"
    long_run = TINY + ["--resolution", "8", "--stable-kimg", "2", "--fade-kimg", "2", "--minibatch", "4:8,8:8",
                       "--tick-kimg", "0.064", "--snapshot-ticks", "1000", "--cache-dir", cache_dir,
                       "--out", str(run_dir)]
    process = start(long_run)
    assert wait_for(lambda: any("tick" in r for r in log_lines(run_dir)), process)
    process.send_signal(stop_signal)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + stop_signal, stderr[-3000:]
    name = signal.Signals(stop_signal).name
    assert f"Stopped by {name}" in stdout and "--resume" in stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stopped_by_signal"] == name and 0 < summary["steps"] < 500
    newest = ckpt.list_checkpoints(run_dir)[-1]
    ckpt.verify(newest)
    state, _ = ckpt.load_state(newest)
    assert state["step"] == summary["steps"]  # the checkpoint holds the last finished step


def in_process_run(tmp_path, cache_dir, capsys):
    """train.main on a short run; (exit code, stderr, run folder)."""
    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        train.main(RUN_8 + ["--cache-dir", cache_dir, "--out", str(run_dir)])
    return stopped.value.code, capsys.readouterr().err, run_dir


def test_repeated_nan_losses_stop_the_run_with_the_last_checkpoint_intact(tmp_path, cache_dir, capsys,
                                                                          monkeypatch):
    poisoned_from = 64  # images shown: step 8, right after the second tick's checkpoint
    batch = loop.RealImages.batch

    def poisoned_batch(self, shown, *args):
        reals = batch(self, shown, *args)
        return reals.fill_(float("nan")) if shown >= poisoned_from else reals

    monkeypatch.setattr(loop.RealImages, "batch", poisoned_batch)
    monkeypatch.setattr(loop, "MAX_NONFINITE_STREAK", 4)  # one tick of 4 steps
    code, stderr, run_dir = in_process_run(tmp_path, cache_dir, capsys)
    assert code == 1
    assert "training diverged: the last 4 steps all had non-finite" in stderr and "step-00000008" in stderr
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000004", "step-00000008"]
    assert_nothing_partial_under_a_final_name(run_dir)
    weights = ckpt.load_weights(ckpt.list_checkpoints(run_dir)[-1], "D")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_out_of_memory_names_the_stage_and_a_smaller_minibatch(tmp_path, cache_dir, capsys, monkeypatch):
    step = loop.Trainer.train_step

    def runs_out_of_memory_in_step_21(self, phase):
        if self.step == 20:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        step(self, phase)

    monkeypatch.setattr(loop.Trainer, "train_step", runs_out_of_memory_in_step_21)
    code, stderr, run_dir = in_process_run(tmp_path, cache_dir, capsys)
    assert code == 1
    assert "out of GPU memory in a training step at 8x8 with minibatch 8 per process" in stderr
    assert "--minibatch 8:4" in stderr and "step-00000020" in stderr
    assert [p.name for p in ckpt.list_checkpoints(run_dir)] == ["step-00000016", "step-00000020"]
    assert_nothing_partial_under_a_final_name(run_dir)
    assert not any(e.name.startswith(".") for e in checkpoint_entries(run_dir))
