"""What a run shows and writes as it goes: tqdm progress, a JSONL log, TensorBoard scalars and images.

The live bar is drawn only on a terminal: redirected to a file, its carriage-return updates would fill the file
with thousands of copies, so there each tick is one plain line instead (the JSONL log keeps every number).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np


class Reporter:
    """Rank 0 reports; on other processes every method does nothing."""

    def __init__(self, run_dir: Optional[Path], total_images: int, initial_images: int, progress: bool,
                 tensorboard: bool):
        self.enabled = run_dir is not None
        self.bar = self.writer = self.log_file = None
        self.total_images, self.started = total_images, time.perf_counter()
        if not self.enabled:
            return
        self.log_file = open(Path(run_dir) / "log.jsonl", "a", encoding="utf-8")
        if progress and sys.stdout.isatty() and sys.stderr.isatty():  # the bar on stderr, messages on stdout
            from tqdm import tqdm
            self.bar = tqdm(total=total_images, initial=initial_images, unit="img", unit_scale=True,
                            dynamic_ncols=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            except ImportError:
                self.message("TensorBoard logging is off: the tensorboard package is not installed "
                             "(pip install tensorboard, or pass --tensorboard off to silence this)")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def advance(self, images: int) -> None:
        if self.bar is not None:
            self.bar.update(images)

    def record(self, values: dict) -> None:
        """One line of the JSONL log, the progress bar's numbers and the TensorBoard scalars."""
        if not self.enabled:
            return
        self.log_file.write(json.dumps(values) + "\n")
        self.log_file.flush()
        if self.bar is not None:
            self.bar.set_postfix({"res": values["resolution"], "alpha": f"{values['alpha']:.3f}",
                                  "kimg": f"{values['kimg']:.1f}", "img/s": f"{values['img_per_sec']:.0f}",
                                  "D": f"{values['d_loss']:.3f}", "G": f"{values['g_loss']:.3f}"}, refresh=True)
        else:
            minutes, seconds = divmod(round(time.perf_counter() - self.started), 60)
            resolution = f"{values['resolution']}x{values['resolution']}"
            print(f"tick {values['tick']:<4} kimg {values['kimg']:7.1f} / {self.total_images / 1000:.1f}  "
                  f"{resolution:>9}  alpha {values['alpha']:.3f}  {values['img_per_sec']:6.0f} img/s  "
                  f"D {values['d_loss']:7.3f}  G {values['g_loss']:7.3f}  time {minutes}m{seconds:02d}s", flush=True)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and key != "kimg":
                    self.writer.add_scalar(f"train/{key}", value, values["images_shown"])

    def event(self, values: dict) -> None:
        """A JSONL line for something other than a tick (e.g. an SWD result)."""
        if self.enabled:
            self.log_file.write(json.dumps(values) + "\n")
            self.log_file.flush()

    def scalars(self, prefix: str, values: dict, images_shown: int) -> None:
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"{prefix}/{key}", value, images_shown)

    def image(self, tag: str, grid: np.ndarray, images_shown: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, grid, images_shown, dataformats="HWC")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.log_file is not None:
            self.log_file.close()
