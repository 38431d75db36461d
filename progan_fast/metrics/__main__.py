"""python -m progan_fast.metrics CHECKPOINT: SWD of a checkpoint's EMA generator against its training reals and
MS-SSIM of pairs of its samples, as JSON on stdout; which generator was loaded, and what runs, on stderr."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import List, Optional

from .. import cli
from ..training.checkpoint import CheckpointError
from ..training.data import RealImages, prepare_cache
from ..training.run_state import default_device, load_generator, loaded_text
from .evaluate import generator_metrics


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m progan_fast.metrics",
                                description="Sliced Wasserstein distance (x1e3 per Laplacian level and mean) between "
                                            "EMA samples of a checkpoint and the reals it was trained on, and "
                                            "MS-SSIM of random pairs of samples and of reals (from 16x16).")
    p.add_argument("checkpoint", help="checkpoint folder (checkpoints/step-*) or run folder (its latest checkpoint)")
    p.add_argument("--data", help="image folder of the reals (default: the run's own --data)")
    p.add_argument("--cache-dir", help="cache folder of prepared reals (default: the run's)")
    p.add_argument("--num-images", type=cli.COUNT, default=8192, help="images per set (default 8192; the paper "
                   "used 16384); capped at the dataset size")
    p.add_argument("--resolution", type=int, help="resolution to evaluate, 8 up to the one the checkpoint has "
                   "reached (default: the checkpoint's current one)")
    p.add_argument("--seed", type=cli.SEED, default=0, help="seed of latents, reals and projections (default 0)")
    p.add_argument("--raw", action="store_true", help="use the trained generator instead of its EMA copy")
    p.add_argument("--device", type=cli.device_type("--device"), help="cpu, cuda, ... (default: a GPU if there "
                   "is one)")
    return p


@cli.interruptible
def main(argv: Optional[List[str]] = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = args.device or default_device()
    try:
        if args.data is not None:
            cli.existing_folder("--data", args.data, "the folder of images the run was trained on")
        if args.cache_dir is not None:
            cli.folder_to_write("--cache-dir", args.cache_dir)
        with cli.activity(f"loading checkpoint {args.checkpoint}"):
            G, state, config, checkpoint = load_generator(args.checkpoint, device, ema=not args.raw)
    except (ValueError, CheckpointError) as error:
        parser.error(str(error))
    print(loaded_text(checkpoint, state, ema=not args.raw), file=sys.stderr)
    res = state["resolution"] if args.resolution is None else args.resolution
    if state["resolution"] < 8:
        parser.error(f"SWD needs 7x7 patches, so a resolution of at least 8; the checkpoint is at "
                     f"{state['resolution']}x{state['resolution']}")
    if cli.resolution_problem(res, state["resolution"], smallest=8):
        parser.error(f"--resolution {cli.resolution_problem(res, state['resolution'], smallest=8)} (SWD needs "
                     f"7x7 patches, and the checkpoint has trained up to {state['resolution']}x{state['resolution']})")
    alpha = state["alpha"] if res == state["resolution"] else 1.0
    folder = args.data or config.data
    if folder is not None and not Path(folder).is_dir():
        parser.error(f"the run's image folder {folder!r} does not exist any more (moved or deleted?); give its "
                     f"new place with --data")
    try:
        cache = prepare_cache(folder, config.resolution, args.cache_dir or config.cache_dir)
    except ValueError as error:
        parser.error(str(error))
    data = RealImages(cache, args.seed, False, device, channels_last=False)
    count = min(args.num_images, data.count)
    reals = data.evaluation_reals(count, res, args.seed, alpha)
    started = time.perf_counter()

    def progress(text: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    result = {"checkpoint": str(checkpoint), "generator": "raw" if args.raw else "ema", "resolution": res,
              "alpha": alpha, "images": count,
              **generator_metrics(G, reals, res, alpha, args.seed, progress=progress)}
    progress("done")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
