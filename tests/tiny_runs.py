"""The smallest real training run, shared by the tests of the trainer's run folders, checkpoints, options and
signals: 8x8 networks of a few channels, 12 steps of 4 images, a tick every 2 steps."""
import contextlib
from pathlib import Path

import torch

from progan_fast import train

TINY_8 = ["--fmap-base", "64", "--fmap-max", "16", "--latent-size", "16", "--progress", "off", "--grid", "2x2",
          "--tensorboard", "off", "--swd-images", "0", "--resolution", "8", "--minibatch", "4:4,8:4",
          "--stable-kimg", "0.016", "--fade-kimg", "0.016", "--tick-kimg", "0.008"]


@contextlib.contextmanager
def one_thread():
    """In-process runs use one intra-op thread, like the trainer subprocesses of the tests (OMP_NUM_THREADS=1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def finished_run(folder: Path, *options: str) -> Path:
    """`folder` after a whole TINY_8 run with `options`; its data cache is the sibling folder cache/."""
    with one_thread():
        train.main(TINY_8 + ["--out", str(folder), "--cache-dir", str(Path(folder).parent / "cache")] + list(options))
    return folder
