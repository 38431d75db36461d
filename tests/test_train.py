"""The trainer end to end on CPU: a real short run 4x4 -> 8x8 -> 16x16, bitwise resume, two-process data
parallelism, loss scaling of the gradient penalty, the sampler and metrics commands, options and errors."""
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from progan_fast import generate, train
from progan_fast.metrics import __main__ as metrics_command
from progan_fast.training import checkpoint as ckpt
from progan_fast.training.config import build_parser, resolve
from progan_fast.training.loop import Trainer
from progan_fast.training.schedule import Schedule
from data_parallel_driver import train_and_record
from tiny_runs import finished_run

TINY = ["--fmap-base", "64", "--fmap-max", "16", "--latent-size", "16", "--progress", "off", "--grid", "4x2"]
RUN_16 = TINY + ["--resolution", "16", "--stable-kimg", "0.064", "--fade-kimg", "0.064", "--minibatch",
                 "4:8,8:8,16:8", "--tick-kimg", "0.032", "--swd-images", "64", "--snapshot-ticks", "2",
                 "--keep-checkpoints", "2", "--mirror", "on"]
RUN_16_STEPS = 40  # (64 + 2 * (64 + 64)) images / 8 per step


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # On small shared CPU machines one intra-op thread avoids spin-waiting against other processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("full") / "run"
    summary = train.main(RUN_16 + ["--out", str(out), "--cache-dir", cache_dir])
    return out, summary


def read_log(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines()]


def checkpoint_tensors(folder):
    tensors = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        tensors.update({f"{file.stem}/{key}": value for key, value in load_file(str(file)).items()})
    return tensors


def test_short_run_grows_to_16_with_fades(full_run):
    out, summary = full_run
    assert summary["steps"] == RUN_16_STEPS and summary["images_shown"] == RUN_16_STEPS * 8
    ticks = [r for r in read_log(out) if "tick" in r]
    assert {r["resolution"] for r in ticks} == {4, 8, 16}
    assert any(0.0 < r["alpha"] < 1.0 for r in ticks), "no tick inside a fade-in"
    for record in ticks:
        for key in ("d_loss", "g_loss", "gradient_penalty", "d_real", "d_fake", "img_per_sec"):
            assert math.isfinite(record[key]), (key, record)
        assert record["skipped_steps"] == 0
    assert set(summary["swd"]) == {"8", "16"} and all(math.isfinite(v["mean"]) for v in summary["swd"].values())
    assert (out / "reals.png").is_file() and len(list(out.glob("fakes-*.png"))) == len(ticks)
    assert len(ckpt.list_checkpoints(out)) == 2  # --keep-checkpoints
    final = ckpt.list_checkpoints(out)[-1]
    state = json.loads((final / ckpt.STATE_JSON).read_text())
    assert state["step"] == RUN_16_STEPS and state["resolution"] == 16 and state["alpha"] == 1.0
    assert {p.name for p in final.iterdir()} == set(ckpt.WEIGHT_FILES.values()) | {ckpt.STATE_TENSORS, ckpt.STATE_JSON, ckpt.MANIFEST}
    assert (out / "tensorboard").is_dir() == (importlib.util.find_spec("tensorboard") is not None)
    speeds = summary["img_per_sec_by_resolution"]
    print("CPU img/s by resolution:", {res: round(v) for res, v in speeds.items()})
    assert set(speeds) == {"4", "8", "16"}


def test_resume_continues_bitwise(full_run, tmp_path, cache_dir):
    full_out, _ = full_run
    out = tmp_path / "split"
    first = train.main(RUN_16 + ["--out", str(out), "--cache-dir", cache_dir, "--max-steps", "13"])  # mid fade 8x8
    assert first["steps"] == 13
    second = train.main(["--resume", str(out)])
    assert second["steps"] == RUN_16_STEPS
    expected = checkpoint_tensors(ckpt.list_checkpoints(full_out)[-1])
    resumed = checkpoint_tensors(ckpt.list_checkpoints(out)[-1])
    assert expected.keys() == resumed.keys()
    different = [key for key in expected if not torch.equal(expected[key], resumed[key])]
    assert not different, f"tensors differ after resume: {different[:5]}"
    # Ticks fall on the same multiples of --tick-kimg; the first one after the resume only averages part of its steps.
    full_ticks = {r["images_shown"]: r["d_loss"] for r in read_log(full_out) if "tick" in r}
    split_ticks = {r["images_shown"]: r["d_loss"] for r in read_log(out) if "tick" in r and r["images_shown"] > 128}
    assert split_ticks and all(full_ticks[k] == v for k, v in split_ticks.items())
    # The resumed part of 8x8 is timed as a segment of its own, beside the first part.
    assert len(second["img_per_sec_by_segment"]["8"]) == 2 and len(second["img_per_sec_by_segment"]["16"]) == 1
    assert all(rate > 0 for rate in second["img_per_sec_by_segment"]["8"])


def test_resume_refuses_to_change_training_options(full_run):
    with pytest.raises(SystemExit):
        train.main(["--resume", str(full_run[0]), "--lr", "0.5"])


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, cache_dir):
    """What data parallelism must make true at every step (not the weights after many steps: Adam with beta1 = 0
    turns the rounding differences of near-zero gradients into full-size steps). Each process gets its slice, in
    rank order, of the global batch of reals and of every random draw; the gradients the processes apply are the
    single-process gradients of the global batch (with frozen weights, so that every step's gradients are those
    of the same weights) up to fp32 summation order, and the same on every process, bit for bit; while training,
    every process holds the same weights after every step."""
    # On the CPU (gloo) on any machine: two processes on a one-GPU machine would ask for a second GPU.
    common = TINY + ["--resolution", "8", "--stable-kimg", "0.032", "--fade-kimg", "0.032", "--mbstd-group-size", "1",
                     "--tensorboard", "off", "--swd-images", "0", "--cache-dir", cache_dir, "--device", "cpu"]
    one = train_and_record(common + ["--minibatch", "4:8,8:8", "--out", str(tmp_path / "one")], frozen=True)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(Path(__file__).with_name("data_parallel_driver.py")), str(tmp_path / "two")] + common + \
        ["--minibatch", "4:4,8:4"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    frozen, training = ([load_file(str(tmp_path / f"two-{label}-rank{rank}.safetensors")) for rank in range(2)]
                        for label in ("frozen", "training"))
    steps = sorted({int(key.split("/")[0]) for key in one})
    assert steps == list(range(1, 13)) and frozen[0].keys() == one.keys()  # 4x4, the fade to 8x8, 8x8
    for step in steps:
        for key in [f"{step}/reals"] + [f"{step}/draw{i}" for i in range(3)]:  # latents of D and G, penalty mix
            assert torch.equal(torch.cat([frozen[0][key], frozen[1][key]]), one[key]), key
        for net in ("D", "G"):
            key = f"{step}/grad_{net}"
            assert torch.equal(frozen[0][key], frozen[1][key]), key
            torch.testing.assert_close(frozen[0][key], one[key], rtol=0, atol=1e-4 * one[key].abs().max().item(),
                                       msg=key)
        assert torch.equal(frozen[0][f"{step}/weights"], one[f"{step}/weights"])  # lr 0: nothing moved
        assert torch.equal(training[0][f"{step}/weights"], training[1][f"{step}/weights"]), step
    assert not torch.equal(training[0]["1/weights"], training[0]["12/weights"])


def test_trains_on_an_image_folder(tmp_path):
    from PIL import Image
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        pixels = torch.randint(0, 256, (12 + i, 20, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
        Image.fromarray(pixels.numpy()).save(images / f"image{i}.png")
    summary = train.main(TINY + ["--data", str(images), "--resolution", "8", "--preset", "quick", "--minibatch",
                                 "4:4,8:4", "--max-steps", "3", "--out", str(tmp_path / "run"), "--cache-dir",
                                 str(tmp_path / "cache"), "--tensorboard", "off"])
    assert summary["steps"] == 3 and (tmp_path / "run" / "reals.png").is_file()
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(images)


def tiny_trainer(tmp_path, cache_dir, amp="off"):
    args = build_parser().parse_args(TINY + ["--resolution", "8", "--minibatch", "4:8,8:8", "--out", str(tmp_path),
                                             "--cache-dir", cache_dir, "--tensorboard", "off", "--amp", amp])
    trainer = Trainer(resolve(args))
    trainer.gan.new_optimizers(8)
    return trainer


def test_gradient_penalty_is_unscaled_before_its_norm(tmp_path, cache_dir):
    plain = tiny_trainer(tmp_path / "a", cache_dir)
    scaled = tiny_trainer(tmp_path / "b", cache_dir)
    scaled.gan.d_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    phase = plain.schedule.phase_at(plain.schedule.resolution_end(4))  # fade-in at 8x8
    reals = plain.data.batch(0, 8, 8)
    z, u = torch.randn(8, 16), torch.rand(8, 1, 1, 1)
    alpha = torch.tensor(0.3)
    stats_plain = plain.gan.d_step(reals, z, u, phase.resolution, alpha)
    stats_scaled = scaled.gan.d_step(reals, z, u, phase.resolution, alpha)
    torch.testing.assert_close(stats_scaled, stats_plain, rtol=1e-6, atol=0)  # loss and penalty
    for p, q in zip(plain.gan.D.parameters(), scaled.gan.D.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)


def test_non_finite_steps_are_skipped_and_counted(tmp_path, cache_dir):
    trainer = tiny_trainer(tmp_path, cache_dir)
    phase = trainer.schedule.phases[-1]
    trainer.train_step(phase)
    before = [p.detach().clone() for p in trainer.gan.D.parameters()]
    trainer.data.batch = lambda *args: torch.full((8, 3, 8, 8), float("nan"))
    trainer.train_step(phase)
    assert trainer.gan.skipped.item() == 1  # the D step; the G step does not see the reals
    assert all(torch.equal(p, q) for p, q in zip(trainer.gan.D.parameters(), before))


def test_presets_and_schedule():
    official = resolve(build_parser().parse_args(["--data", "images"]))
    assert (official.stable_kimg, official.fade_kimg, official.resolution) == (600, 600, 256)
    assert official.minibatch == {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4, 1024: 4}
    assert (official.lr, official.beta1, official.beta2, official.adam_eps) == (0.001, 0.0, 0.99, 1e-8)
    assert (official.gp_weight, official.drift, official.ema_beta, official.fmap_base) == (10, 0.001, 0.999, 8192)
    quick = resolve(build_parser().parse_args([]))
    assert (quick.ema_kimg, quick.ema_rampup, quick.ema_beta) == (1.0, 0.05, None)
    by_half_life = resolve(build_parser().parse_args(["--data", "images", "--ema-kimg", "20"]))
    assert (by_half_life.ema_kimg, by_half_life.ema_beta) == (20, None)  # the official fixed decay gives way
    overridden = resolve(build_parser().parse_args(["--stable-kimg", "1", "--minibatch", "8:4", "--resolution", "8"]))
    assert overridden.preset == "quick" and overridden.stable_kimg == 1 and overridden.minibatch[8] == 4
    schedule = Schedule(16, 100, 50, {4: 4, 8: 4, 16: 2})
    assert [(p.resolution, p.fading, p.start, p.length) for p in schedule.phases] == \
        [(4, False, 0, 100), (8, True, 100, 50), (8, False, 150, 100), (16, True, 250, 50), (16, False, 300, 100)]
    assert schedule.total_images == 400 and schedule.resolution_end(8) == 250
    fade = schedule.phase_at(110)
    assert fade.resolution == 8 and fade.alpha(110) == pytest.approx(0.2) and schedule.phase_at(400).resolution == 16


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_steps_are_finite(tmp_path, cache_dir, amp):
    trainer = tiny_trainer(tmp_path, cache_dir, amp)
    for step in range(3):
        trainer.train_step(trainer.schedule.phases[-1])
    assert torch.isfinite(trainer.gan.stats).all()
    assert trainer.gan.skipped.item() <= 1  # fp16 may skip the first step while the loss scale settles


def test_generate_and_metrics_commands(full_run, tmp_path, capsys):
    out, _ = full_run
    written = generate.main([str(out), "--out", str(tmp_path), "--num", "3", "--grid", "3", "--device", "cpu"])
    assert len(written) == 4 and all(p.is_file() for p in written)
    from PIL import Image
    assert Image.open(written[0]).size == (16, 16)
    final = ckpt.list_checkpoints(out)[-1]
    assert f"Loaded the EMA generator of {final}: step {RUN_16_STEPS}" in capsys.readouterr().err
    result = metrics_command.main([str(out), "--num-images", "32", "--device", "cpu"])
    assert result["resolution"] == 16 and math.isfinite(result["swd_x1e3"]["mean"])
    assert result["checkpoint"] == str(final) and result["generator"] == "ema"
    assert 0 < result["ms_ssim"] < 1 and 0 < result["ms_ssim_reals"] < 1
    err = capsys.readouterr().err
    assert f"Loaded the EMA generator of {final}" in err and "sampling 32 images" in err and "MS-SSIM" in err
    raw = metrics_command.main([str(out), "--num-images", "32", "--device", "cpu", "--raw"])
    assert raw["generator"] == "raw" and raw["swd_x1e3"] != result["swd_x1e3"]
    assert raw["ms_ssim_reals"] == result["ms_ssim_reals"]  # the same reals
    assert "Loaded the trained generator (--raw)" in capsys.readouterr().err


def test_help_documents_every_option():
    parser = build_parser()
    text = parser.format_help()
    for action in parser._actions:
        for option in action.option_strings:
            assert option in text
        assert action.help, f"{action.option_strings} has no help text"


def test_bad_inputs_give_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(SystemExit):
        train.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run"), "--cache-dir",
                    str(tmp_path / "cache")])
    assert "holds no images" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--resolution", "24"])
    assert "power of two" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--minibatch", "4:6"])
    assert "minibatch-stddev group" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--resume", str(tmp_path / "nothing")])
    assert "neither a checkpoint folder" in capsys.readouterr().err


def test_a_log_that_is_not_a_terminal_gets_one_plain_line_per_tick(tmp_path, capsys):
    out = finished_run(tmp_path / "run", "--progress", "on")  # pytest's captured stdout is not a terminal
    printed = capsys.readouterr()
    assert "\r" not in printed.out + printed.err
    ticks = [line for line in printed.out.splitlines() if line.startswith("tick ")]
    assert len(ticks) == len([r for r in read_log(out) if "tick" in r]) == 6
    assert ticks[-1].startswith("tick 6 ") and "kimg     0.0 / 0.0" in ticks[-1] and "8x8  alpha 1.000" in ticks[-1]
