"""python -m progan_fast.generate CHECKPOINT: images from the EMA generator of a checkpoint (or a run's latest).

Writes one PNG per image (seed-000000.png, ...) and, with --grid, one grid of them, into --out.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import List, Optional

import torch

from .images import image_grid, sample_images, save_png, to_uint8
from .training.checkpoint import CheckpointError
from .training.run_state import default_device, load_generator


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m progan_fast.generate",
                                description="Sample images from the EMA generator of a ProGAN checkpoint.")
    p.add_argument("checkpoint", help="checkpoint folder (checkpoints/step-*) or run folder (its latest checkpoint)")
    p.add_argument("--out", default="generated", help="output folder (default: ./generated)")
    p.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    p.add_argument("--seed", type=int, default=0, help="image i uses latent seed + i (default 0)")
    p.add_argument("--resolution", type=int, help="resolution to sample at (default: the checkpoint's current one)")
    p.add_argument("--alpha", type=float, help="fade-in alpha (default: the checkpoint's current alpha)")
    p.add_argument("--grid", type=int, metavar="COLS", help="also write grid.png with this many columns")
    p.add_argument("--raw", action="store_true", help="use the trained generator instead of its EMA copy")
    p.add_argument("--device", help="cpu, cuda, ... (default: a GPU if there is one)")
    return p


def main(argv: Optional[List[str]] = None) -> List[Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    device = torch.device(args.device) if args.device else default_device()
    try:
        G, state, _ = load_generator(args.checkpoint, device, ema=not args.raw)
    except CheckpointError as error:
        parser.error(str(error))
    res = args.resolution or state["resolution"]
    alpha = state["alpha"] if args.alpha is None else args.alpha
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    latents = torch.stack([torch.randn(G.latent_size, generator=torch.Generator().manual_seed(args.seed + i))
                           for i in range(args.num)]).to(device)
    try:
        images = sample_images(G, latents, res, alpha)
    except ValueError as error:
        parser.error(str(error))
    written = []
    for i, image in enumerate(to_uint8(images).permute(0, 2, 3, 1).cpu().numpy()):
        written.append(out / f"seed-{args.seed + i:06d}.png")
        save_png(image, written[-1])
    if args.grid:
        written.append(out / "grid.png")
        save_png(image_grid(images, args.grid), written[-1])
    print(f"Wrote {len(written)} files to {out} ({res}x{res}, alpha {alpha:.3f})")
    return written


if __name__ == "__main__":
    main()
