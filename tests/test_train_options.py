"""Command-line options of the trainer, the sampler and the metrics command: every bad value is a usage error
(exit 2) naming the option, found before any work (no run folder, no cache); and batch sizes of the trainer."""
import shutil

import pytest
import torch

from progan_fast import generate, train
from progan_fast.metrics import __main__ as metrics_command
from progan_fast.training.data import RealImages

from test_image_folders import RES, prepare, write_good_images
from tiny_runs import finished_run
NOT_A_DEVICE = "'foo' is not a device; give cpu, cuda or cuda:N"

# (command line, expected fragment of the error); {file} is a file, {missing} a path that does not exist.
OPTION_ERRORS = [
    (["--resolution", "12"], "argument --resolution: must be a power of two from 4 to 1024 (4, 8, 16, ..., 1024), "
                             "got 12"),
    (["--resolution", "2"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "0"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "-8"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "2048"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "64px"], "argument --resolution: expected a whole number, got '64px'"),
    (["--resolution", "8", "--minibatch", "8:6"], "minibatch 6 (per process) at 8x8 is not a multiple of the "
     "minibatch-stddev group size 4; give --minibatch 8:8 (or another multiple of 4), or change --mbstd-group-size"),
    (["--resolution", "8", "--minibatch", "4:10", "--mbstd-group-size", "3"], "minibatch 10 (per process) at 4x4 "
     "is not a multiple of the minibatch-stddev group size 3; give --minibatch 4:12"),
    (["--mbstd-group-size", "0"], "--mbstd-group-size must be a whole number >= 1, got 0"),
    (["--minibatch", "8:0"], "--minibatch: size for 8x8 must be >= 1, got 0"),
    (["--minibatch", "8x6"], "--minibatch expects RES:SIZE pairs separated by commas"),
    (["--minibatch", "5:4"], "argument --minibatch: 5 in '5:4' is not a resolution; resolutions are powers of two"),
    (["--minibatch", "64:4"], "--minibatch 64:4: this run trains 4x4 to 32x32, never 64x64; remove it, or raise "
                              "--resolution"),
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--beta1", "-0.5"], "--beta1 must be a finite number in [0, 1), got -0.5"),
    (["--beta2", "1.5"], "--beta2 must be a finite number in [0, 1), got 1.5"),
    (["--adam-eps", "nan"], "--adam-eps must be a finite number > 0, got nan"),
    (["--gp-weight", "nan"], "--gp-weight must be a finite number >= 0, got nan"),
    (["--drift", "inf"], "--drift must be a finite number >= 0, got inf"),
    (["--ema-beta", "2"], "--ema-beta must be a finite number in [0, 1), got 2.0"),
    (["--ema-beta", "-1"], "--ema-beta must be a finite number in [0, 1), got -1.0"),
    (["--ema-beta", "1"], "--ema-beta must be a finite number in [0, 1), got 1.0"),
    (["--ema-kimg", "0"], "--ema-kimg must be a finite number > 0, got 0.0"),
    (["--ema-kimg", "nan"], "--ema-kimg must be a finite number > 0, got nan"),
    (["--ema-rampup", "-0.1"], "--ema-rampup must be a finite number >= 0, got -0.1"),
    (["--ema-beta", "0.99", "--ema-kimg", "5"], "--ema-beta (a fixed decay per step) and --ema-kimg (a half-life "
                                                "in images) set the EMA two ways; give only one of them"),
    (["--seed", "-1"], "--seed must be a whole number from 0 to 4294967295, got -1"),
    (["--seed", str(2 ** 64)], f"--seed must be a whole number from 0 to 4294967295, got {2 ** 64}"),
    (["--stable-kimg", "inf"], "--stable-kimg must be a finite number >= 0, got inf"),
    (["--stable-kimg", "nan"], "--stable-kimg must be a finite number >= 0, got nan"),
    (["--stable-kimg", "0", "--fade-kimg", "0"], "--stable-kimg and --fade-kimg leave no images to train up to "
                                                 "32x32 (phases of 0 images); raise --stable-kimg"),
    (["--tick-kimg", "inf"], "--tick-kimg must be a finite number > 0, got inf"),
    (["--tick-kimg", "nan"], "--tick-kimg must be a finite number > 0, got nan"),
    (["--latent-size", "0"], "--latent-size must be a whole number >= 1, got 0"),
    (["--latent-size", "-8"], "--latent-size must be a whole number >= 1, got -8"),
    (["--fmap-base", "0"], "--fmap-base must be a whole number >= 1, got 0"),
    (["--fmap-base", "8"], "--fmap-base 8 leaves no channels at 32x32; use --fmap-base >= 16"),
    (["--fmap-max", "-1"], "--fmap-max must be a whole number >= 1, got -1"),
    (["--swd-images", "-1"], "--swd-images must be a whole number >= 0, got -1"),
    (["--snapshot-ticks", "0"], "--snapshot-ticks must be a whole number >= 1, got 0"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be a whole number >= 1, got 0"),
    (["--max-steps", "-1"], "--max-steps must be a whole number >= 0, got -1"),
    (["--grid", "0x2"], "--grid expects COLSxROWS with positive numbers (e.g. 8x4), got '0x2'"),
    (["--device", "foo"], "--device " + NOT_A_DEVICE),
    (["--device", "meta"], "--device meta: progan_fast runs on cpu and cuda devices"),
    (["--data", "{missing}"], "--data '{missing}' does not exist; give a folder of images"),
    (["--data", "{file}"], "--data '{file}' is a file, not a folder; give a folder of images"),
    (["--out", "{file}"], "--out '{file}' is a file, not a folder; give a new or empty folder"),
    (["--cache-dir", "{file}"], "--cache-dir '{file}' is a file, not a folder"),
    (["--cache-dir", "{file}/cache"], "--cache-dir '{file}/cache' cannot be created: '{file}' is a file"),
]


def paths_in(tmp_path, texts):
    places = {"file": tmp_path / "a-file", "missing": tmp_path / "missing"}
    places["file"].write_text("not a folder")
    return [text.format(**places) for text in texts]


@pytest.mark.parametrize("argv, fragment", OPTION_ERRORS, ids=[" ".join(row[0]) for row in OPTION_ERRORS])
def test_bad_options_stop_with_an_argparse_error_before_any_work(tmp_path, monkeypatch, capsys, argv, fragment):
    monkeypatch.chdir(tmp_path)  # where a default run folder would go
    argv = paths_in(tmp_path, argv)
    out = [] if "--out" in argv else ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as stopped:
        train.main(argv + out + (["--cache-dir", str(tmp_path / "cache")] if "--cache-dir" not in argv else []))
    assert stopped.value.code == 2
    assert paths_in(tmp_path, [fragment])[0] in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no run folder, no cache


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_an_accelerated_backend_that_cannot_run_here_is_a_usage_error(monkeypatch, capsys, tmp_path, backend):
    if torch.cuda.is_available():
        pytest.skip("both backends can run where there is a GPU")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests run triton in its interpreter on CPU
    with pytest.raises(SystemExit) as stopped:
        train.main(["--backend", backend, "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    assert stopped.value.code == 2
    assert f"--backend {backend} cannot run on cpu: " in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused with the other options: no run folder, no cache


@pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")
def test_a_cuda_device_without_a_gpu_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        train.config_from_args(["--device", "cuda"])
    assert stopped.value.code == 2
    assert "--device cuda: no CUDA GPU is visible to torch here; use --device cpu" in capsys.readouterr().err


@pytest.fixture(scope="module")
def run_on_a_folder(tmp_path_factory):
    """A finished 8x8 run trained on a folder of images (which a test may move away, so each gets a copy)."""
    root = tmp_path_factory.mktemp("run_on_a_folder")
    write_good_images(root / "images", 8)
    finished_run(root / "run", "--data", str(root / "images"))
    return root


# (command, arguments after the checkpoint, expected fragment)
COMMAND_ERRORS = [
    (generate, ["--grid", "-2"], "argument --grid: must be a whole number >= 1, got -2"),
    (generate, ["--grid", "0"], "argument --grid: must be a whole number >= 1, got 0"),
    (generate, ["--num", "0"], "argument --num: must be a whole number >= 1, got 0"),
    (generate, ["--seed", "-1"], "argument --seed: must be a whole number from 0 to 4294967295, got -1"),
    (generate, ["--alpha", "2"], "argument --alpha: must be a finite number in [0, 1], got 2"),
    (generate, ["--alpha", "nan"], "argument --alpha: must be a finite number in [0, 1], got nan"),
    (generate, ["--device", "foo"], "argument --device: " + NOT_A_DEVICE),
    (generate, ["--out", "{file}"], "--out '{file}' is a file, not a folder"),
    (generate, ["--resolution", "16"], "--resolution must be a power of two from 4 to 8, got 16 (the checkpoint "
                                       "has trained up to 8x8)"),
    (generate, ["--resolution", "6"], "--resolution must be a power of two from 4 to 8, got 6"),
    (metrics_command, ["--resolution", "16"], "--resolution must be a power of two from 8 to 8, got 16 (SWD needs "
                                              "7x7 patches, and the checkpoint has trained up to 8x8)"),
    (metrics_command, ["--resolution", "4"], "--resolution must be a power of two from 8 to 8, got 4"),
    (metrics_command, ["--num-images", "0"], "argument --num-images: must be a whole number >= 1, got 0"),
    (metrics_command, ["--num-images", "-5"], "argument --num-images: must be a whole number >= 1, got -5"),
    (metrics_command, ["--device", "foo"], "argument --device: " + NOT_A_DEVICE),
    (metrics_command, ["--data", "{missing}"], "--data '{missing}' does not exist; give the folder of images"),
    (metrics_command, ["--cache-dir", "{file}"], "--cache-dir '{file}' is a file, not a folder"),
]


@pytest.mark.parametrize("command, argv, fragment", COMMAND_ERRORS,
                         ids=[f"{row[0].__name__.split('.')[1]} {' '.join(row[1])}" for row in COMMAND_ERRORS])
def test_bad_options_of_generate_and_metrics_are_usage_errors(run_on_a_folder, tmp_path, capsys, command, argv,
                                                              fragment):
    argv = paths_in(tmp_path, argv)
    with pytest.raises(SystemExit) as stopped:
        command.main([str(run_on_a_folder / "run")] + argv + ([] if "--out" in argv else ["--out", str(tmp_path / "g")])
                     if command is generate else [str(run_on_a_folder / "run")] + argv)
    assert stopped.value.code == 2
    assert paths_in(tmp_path, [fragment])[0] in capsys.readouterr().err
    assert not (tmp_path / "g").exists()


def test_metrics_of_a_run_whose_images_moved_asks_for_their_new_place(run_on_a_folder, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(run_on_a_folder / "run", run)
    moved = tmp_path / "images"
    shutil.copytree(run_on_a_folder / "images", moved)
    original = run_on_a_folder / "images"
    shutil.move(str(original), str(tmp_path / "away"))
    try:
        with pytest.raises(SystemExit) as stopped:
            metrics_command.main([str(run), "--num-images", "8"])
        assert stopped.value.code == 2
        assert f"the run's image folder {str(original)!r} does not exist any more (moved or deleted?); give its new " \
               "place with --data" in capsys.readouterr().err
    finally:
        shutil.move(str(tmp_path / "away"), str(original))
    result = metrics_command.main([str(run), "--num-images", "8", "--data", str(moved), "--device", "cpu"])
    assert result["images"] == 8


def test_a_batch_smaller_than_the_group_is_one_group():
    """Not an error: minibatch_stddev shrinks the group to the batch (as the official code does)."""
    config, _ = train.config_from_args(["--resolution", "8", "--minibatch", "4:2,8:3", "--mbstd-group-size", "4"])
    assert config.minibatch[4] == 2 and config.minibatch[8] == 3


# (global batch, processes, expected fragment): --minibatch is per process, so the trainer never asks for a
# global batch that does not split; the data reader still refuses one rather than silently dropping images.
BATCH_SPLITS = [
    (9, 2, "global batch 9 at 8x8 does not split evenly over 2 processes; use a global batch that is a multiple of "
           "2 (--minibatch is per process: global = minibatch x processes)"),
    (10, 4, "global batch 10 at 8x8 does not split evenly over 4 processes"),
]


@pytest.mark.parametrize("global_batch, world_size, fragment", BATCH_SPLITS)
def test_global_batch_must_split_over_the_processes(tmp_path, global_batch, world_size, fragment):
    write_good_images(tmp_path / "images", 4)
    cache = prepare(tmp_path / "images", tmp_path / "cache", [])
    reals = RealImages(cache, 0, False, torch.device("cpu"), False, rank=0, world_size=world_size)
    with pytest.raises(ValueError) as error:
        reals.batch(0, global_batch, RES)
    assert fragment in str(error.value)
    assert reals.batch(0, 2 * world_size, RES).shape == (2, 3, RES, RES)
