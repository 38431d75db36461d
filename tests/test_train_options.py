"""Command-line options and batch sizes of the trainer: argparse errors naming the option, before any training."""
import pytest
import torch

from progan_fast import train
from progan_fast.training.data import RealImages

from test_image_folders import RES, prepare, write_good_images


# (command line, expected fragment of the error)
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
    (["--mbstd-group-size", "0"], "--mbstd-group-size must be >= 1 (1 turns the layer off), got 0"),
    (["--minibatch", "8:0"], "--minibatch: size for 8x8 must be >= 1, got 0"),
    (["--minibatch", "8x6"], "--minibatch expects RES:SIZE pairs separated by commas"),
]


@pytest.mark.parametrize("argv, fragment", OPTION_ERRORS, ids=[" ".join(row[0]) for row in OPTION_ERRORS])
def test_bad_options_stop_with_an_argparse_error(capsys, argv, fragment):
    with pytest.raises(SystemExit) as stopped:
        train.config_from_args(argv)
    assert stopped.value.code == 2
    assert fragment in capsys.readouterr().err


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
