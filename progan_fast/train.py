"""python -m progan_fast.train: train a ProGAN; `--help` lists every option.

Multi-GPU: torchrun --nproc_per_node N -m progan_fast.train ... (one data shard per process, rank 0 writes).
"""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from .training import checkpoint as ckpt
from .training.config import TrainConfig, build_parser, merge_for_resume, resolve


def config_from_args(argv: Optional[List[str]] = None):
    """(configuration, checkpoint to resume or None); bad options exit with a message naming the fix."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.resume:
            checkpoint = ckpt.find_checkpoint(args.resume)
            state, _ = ckpt.load_state(checkpoint)
            return merge_for_resume(TrainConfig.from_json(state["config"]), args), checkpoint
        return resolve(args), None
    except (ValueError, FileNotFoundError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))


def main(argv: Optional[List[str]] = None) -> dict:
    config, checkpoint = config_from_args(argv)
    from .training.loop import Trainer

    try:
        trainer = Trainer(config, checkpoint)
    except (ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        return trainer.run()
    finally:
        trainer.dist.close()


if __name__ == "__main__":
    main()
