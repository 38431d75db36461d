"""python -m progan_fast.generate CHECKPOINT: images from the EMA generator of a checkpoint (or a run's latest).

Writes one PNG per image (seed-000000.png, ...) and, with --grid, one grid of them, into --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

import torch

from . import cli
from .images import image_grid, sample_images, save_png, to_uint8
from .training.checkpoint import CheckpointError
from .training.run_state import default_device, load_generator, loaded_text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m progan_fast.generate",
                                description="Sample images from the EMA generator of a ProGAN checkpoint.")
    p.add_argument("checkpoint", help="checkpoint folder (checkpoints/step-*) or run folder (its latest checkpoint)")
    p.add_argument("--out", default="generated", help="output folder (default: ./generated)")
    p.add_argument("--num", type=cli.COUNT, default=16, help="number of images (default 16)")
    p.add_argument("--seed", type=cli.SEED, default=0, help="image i uses latent seed + i (default 0)")
    p.add_argument("--resolution", type=int, help="resolution to sample at, up to the one the checkpoint has "
                   "reached (default: the checkpoint's current one)")
    p.add_argument("--alpha", type=cli.Number(float, 0, 1), help="fade-in alpha, 0 to 1 (default: the "
                   "checkpoint's current alpha)")
    p.add_argument("--grid", type=cli.COUNT, metavar="COLS", help="also write grid.png with this many columns")
    p.add_argument("--raw", action="store_true", help="use the trained generator instead of its EMA copy")
    p.add_argument("--device", type=cli.device_type("--device"), help="cpu, cuda, ... (default: a GPU if there "
                   "is one)")
    return p


@cli.interruptible
def main(argv: Optional[List[str]] = None) -> List[Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = args.device or default_device()
    try:
        out = cli.folder_to_write("--out", args.out)
        with cli.activity(f"loading checkpoint {args.checkpoint}"):
            G, state, _, checkpoint = load_generator(args.checkpoint, device, ema=not args.raw)
    except (ValueError, CheckpointError) as error:
        parser.error(str(error))
    print(loaded_text(checkpoint, state, ema=not args.raw), file=sys.stderr)
    res = state["resolution"] if args.resolution is None else args.resolution
    if cli.resolution_problem(res, state["resolution"]):
        parser.error(f"--resolution {cli.resolution_problem(res, state['resolution'])} (the checkpoint has "
                     f"trained up to {state['resolution']}x{state['resolution']})")
    alpha = state["alpha"] if args.alpha is None else args.alpha
    latents = torch.stack([torch.randn(G.latent_size, generator=torch.Generator().manual_seed(args.seed + i))
                           for i in range(args.num)]).to(device)
    images = sample_images(G, latents, res, alpha)
    written = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
            written.append(out / f"seed-{args.seed + i:06d}.png")
            save_png(image, written[-1])
        if args.grid:
            written.append(out / "grid.png")
            save_png(image_grid(images, args.grid), written[-1])
    except OSError as error:
        if not cli.is_write_error(error):
            raise
        if written:  # the file that was being written is incomplete
            written.pop().unlink(missing_ok=True)
        print(f"error: cannot write to --out {str(out)!r}: {cli.write_error_text(error)}; {len(written)} files "
              f"were written; free some space or choose another --out", file=sys.stderr)
        sys.exit(1)
    print(f"Wrote {len(written)} files to {out} ({res}x{res}, alpha {alpha:.3f})")
    return written


if __name__ == "__main__":
    main()
