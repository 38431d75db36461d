"""python -m progan_fast.train: train a ProGAN; `--help` lists every option.

Multi-GPU: torchrun --nproc_per_node N -m progan_fast.train ... (one data shard per process, rank 0 writes).

Exit status: 0 when the run is done (end of schedule or --max-steps); 128 + the signal number (130 for SIGINT,
143 for SIGTERM) after a signal stopped it (during training: cleanly, with a checkpoint written; continue with
--resume); 1 when training cannot go on (diverged, out of GPU memory, a write to the run folder failed; the
message says what to change); 2 for bad options, data, run folders or checkpoints, found before training starts.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import List, Optional

from . import cli
from .training import checkpoint as ckpt
from .training import run_folder, run_state
from .training.config import TrainConfig, build_parser, check_environment, merge_for_resume, resolve


def config_from_args(argv: Optional[List[str]] = None):
    """(configuration, checkpoint to resume or None); bad options exit with a message naming the fix. Every
    option is checked here, before any work."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.resume:
            with cli.activity(f"loading checkpoint {args.resume}"):
                checkpoint = ckpt.find_checkpoint(args.resume, warn=lambda text: print(text, file=sys.stderr))
                state, _ = run_state.load_state(checkpoint)
            config = merge_for_resume(TrainConfig.from_json(state["config"]), args)
        else:
            config, checkpoint = resolve(args), None
        check_environment(config, resumed=checkpoint is not None)
        folder = run_folder.chosen_folder(config.out, checkpoint)
        if folder is not None and os.environ.get("RANK", "0") == "0":  # others would see the folder rank 0 made
            run_folder.check(folder, checkpoint, config.data)
        return config, checkpoint
    except (ValueError, ckpt.CheckpointError, argparse.ArgumentTypeError) as error:
        parser.error(str(error))


@cli.interruptible
def main(argv: Optional[List[str]] = None) -> dict:
    config, checkpoint = config_from_args(argv)
    from .training.loop import Trainer, TrainingStopped

    try:
        trainer = Trainer(config, checkpoint)
    except (ValueError, RuntimeError, ckpt.CheckpointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if not cli.is_write_error(error):
            raise
        print(f"error: a write failed while starting the run: {cli.write_error_text(error)}; free some space or "
              f"fix the permissions, or choose another --out / --cache-dir", file=sys.stderr)
        sys.exit(2)
    try:
        summary = trainer.run()
    except TrainingStopped as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:
        if not cli.is_write_error(error):
            raise
        print(f"error: cannot write to the run folder {str(trainer.run_dir)!r}: {cli.write_error_text(error)}. "
              f"The last checkpoint ({trainer.last_checkpoint or 'none yet'}) is intact; free some space or fix "
              f"the folder's permissions, then continue with --resume {trainer.run_dir}", file=sys.stderr)
        sys.exit(1)
    finally:
        trainer.close()
    if "stopped_by_signal" in summary:
        sys.exit(128 + signal.Signals[summary["stopped_by_signal"]])
    return summary


if __name__ == "__main__":
    main()
