"""Real images: prepared once into uint8 arrays per resolution (numpy .npy memmaps), then read by index.

A folder of images is decoded once: RGB, center-cropped to a square, resized to the final resolution with
Lanczos, and every lower resolution is the 2x2 box average of the next one (as the official dataset tool does).
The cache key hashes the image paths, sizes and modification times, so a changed folder is prepared again.
Without a folder, the handwritten digits bundled with scikit-learn are used (installed files, no download).

Bad inputs: files that cannot be decoded (corrupt, truncated, empty, not an image) are skipped and counted, and
the preparation fails when more than MAX_BAD_FRACTION of the files are bad. Images smaller than the resolution
are upscaled with a warning. Every mode becomes RGB uint8: grayscale is replicated, alpha (RGBA, LA, palette
or grayscale with transparency) is composited on black, 16-bit and 32-bit integer images are read as 16-bit
(0..65535) and scaled to 0..255. The image folder is only read, never changed.

The order of the reals is a pure function of (seed, images shown): a fresh permutation per epoch, the global
batch is a window of that stream and each process takes its own slice of it. So a resumed run sees the same
images, and N processes see exactly the images one process with N times the batch would see.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import functional as PF
from ..cache import cache_root
from ..images import to_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CACHE_FORMAT = 1
BUILTIN_NAME = "scikit-learn digits"
MAX_BAD_FRACTION = 0.1  # more unreadable files than this and the folder is probably not what was meant
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
EXAMPLES = 3  # file names quoted in a warning or an error


def find_images(folder: str) -> List[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--data {folder!r} is not a folder; give a folder that contains images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not paths:
        raise ValueError(f"--data {folder!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively); "
                         "point it at a folder of images")
    return paths


def folder_fingerprint(root: str, paths: Sequence[Path], resolution: int) -> str:
    digest = hashlib.sha1(f"progan_fast cache v{CACHE_FORMAT} {resolution}\n".encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def to_rgb(image) -> np.ndarray:
    """Any PIL image as uint8 [H, W, 3]: alpha composited on black, 16-bit values scaled to 8 bits."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
        gray = np.rint(values * (255 / 65535)).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.uint32)
        return ((rgba[..., :3] * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def load_square_rgb(path: Path, resolution: int) -> Tuple[np.ndarray, int]:
    """(the centre square resized to resolution x resolution, the side of that square before resizing)."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = Image.fromarray(to_rgb(image), "RGB")
    side = min(rgb.size)
    left, top = (rgb.width - side) // 2, (rgb.height - side) // 2
    square = rgb.crop((left, top, left + side, top + side))
    return np.asarray(square.resize((resolution, resolution), Image.LANCZOS), dtype=np.uint8), side


def _load_or_reason(path: Path, resolution: int):
    """load_square_rgb's result, or (None, why the file could not be read)."""
    from PIL import Image

    try:
        return load_square_rgb(path, resolution)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        return None, str(error) or type(error).__name__


def _examples(items: Sequence[str]) -> str:
    shown = ", ".join(items[:EXAMPLES])
    return shown + (f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def report_bad_files(data: str, total: int, bad: Sequence[str], small: Sequence[str], resolution: int,
                     log: Callable[[str], None]) -> None:
    """Warn about skipped and upscaled files; raise when too many files are unreadable."""
    if len(bad) > MAX_BAD_FRACTION * total:
        raise ValueError(f"{len(bad)} of the {total} image files in --data {data!r} could not be read (more than "
                         f"{MAX_BAD_FRACTION:.0%}): {_examples(bad)}; repair or remove them, or point --data at "
                         "another folder")
    if bad:
        log(f"warning: skipped {len(bad)} of the {total} image files in {data} that could not be read: "
            f"{_examples(bad)}")
    if small:
        log(f"warning: upscaled {len(small)} images smaller than {resolution}x{resolution} (side of the centre "
            f"square): {_examples(small)}; they will look blurry: use larger images or a lower --resolution")


def digits_images(resolution: int) -> np.ndarray:
    """scikit-learn's 1797 8x8 digits (values 0..16) as uint8 RGB at `resolution` (Lanczos)."""
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise RuntimeError("the built-in dataset needs scikit-learn (pip install scikit-learn); or give --data "
                           "FOLDER") from None
    digits = np.rint(load_digits().images * (255.0 / 16.0)).astype(np.uint8)
    resized = [np.asarray(Image.fromarray(d, "L").resize((resolution, resolution), Image.LANCZOS).convert("RGB"))
               for d in digits]
    return np.stack(resized)


def halve(images: np.ndarray) -> np.ndarray:
    """2x2 box average of uint8 [N, H, W, 3], rounded."""
    n, h, w, c = images.shape
    blocks = images.reshape(n, h // 2, 2, w // 2, 2, c).astype(np.uint16).sum(axis=(2, 4))
    return ((blocks + 2) // 4).astype(np.uint8)


def _write_levels(folder: Path, capacity: int, resolution: int, fill_top: Callable[[np.ndarray], int],
                  chunk: int = 256) -> int:
    """fill_top writes up to `capacity` images and returns how many; the lower levels follow. Returns the count."""
    top_path = folder / f"{resolution}.npy"
    top = np.lib.format.open_memmap(top_path, "w+", np.uint8, (capacity, resolution, resolution, 3))
    count = fill_top(top)
    if count < capacity:  # skipped files left unused rows at the end: keep only the written ones
        kept_path = folder / "kept.npy"
        kept = np.lib.format.open_memmap(kept_path, "w+", np.uint8, (count, resolution, resolution, 3))
        for begin in range(0, count, chunk):
            end = min(begin + chunk, count)
            kept[begin:end] = top[begin:end]
        del top
        os.replace(kept_path, top_path)
        top = kept
    res, source = resolution, top
    while res > 4:
        res //= 2
        level = np.lib.format.open_memmap(folder / f"{res}.npy", "w+", np.uint8, (count, res, res, 3))
        for begin in range(0, count, chunk):
            level[begin:begin + chunk] = halve(np.asarray(source[begin:begin + chunk]))
        level.flush()
        source = level
    top.flush()
    return count


def prepare_cache(data: Optional[str], resolution: int, cache_dir: Optional[str] = None,
                  log: Callable[[str], None] = print, build: bool = True) -> Path:
    """Build the cache for (data, resolution) if it is missing or stale; return its folder.

    build=False waits for another process (rank 0) to build it: polling the file system instead of a collective,
    so a long first preparation cannot time out the process group. When that build fails, it leaves its error in
    KEY.failed, and the waiting processes raise it too instead of waiting forever.
    """
    root = Path(cache_dir) if cache_dir else cache_root() / "data"
    if data is None:
        key, paths = f"digits-v{CACHE_FORMAT}-{resolution}", None
    else:
        paths = find_images(data)
        key = folder_fingerprint(data, paths, resolution)
    folder, failed = root / key, root / f"{key}.failed"
    waiting_since = time.time()
    while not build and not (folder / "meta.json").is_file():
        if failed.is_file() and failed.stat().st_mtime >= waiting_since - 1.0:  # this run's build, not an old one
            raise ValueError(f"preparing the data failed in another process: {failed.read_text()}")
        time.sleep(2.0)
    if (folder / "meta.json").is_file():
        return folder
    temporary = root / f"{key}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    failed.unlink(missing_ok=True)
    if paths is None:
        log(f"Preparing the built-in {BUILTIN_NAME} at {resolution}x{resolution} in {folder}")
        images = digits_images(resolution)
        capacity = len(images)

        def fill_top(top):
            top[:] = images
            return len(images)
    else:
        capacity = len(paths)
        log(f"Preparing {capacity} images from {data} at {resolution}x{resolution} (once) in {folder}")

        def fill_top(top):
            written, bad, small = 0, [], []
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for path, (image, detail) in zip(paths, pool.map(lambda p: _load_or_reason(p, resolution), paths)):
                    name = str(path.relative_to(data))
                    if image is None:
                        bad.append(f"{name} ({detail})")
                        continue
                    if detail < resolution:
                        small.append(f"{name} ({detail}x{detail})")
                    top[written] = image
                    written += 1
            report_bad_files(data, len(paths), bad, small, resolution, log)
            return written
    try:
        count = _write_levels(temporary, capacity, resolution, fill_top)
    except BaseException as error:  # nothing half-written is left behind
        shutil.rmtree(temporary, ignore_errors=True)
        failed.write_text(str(error) or type(error).__name__)
        raise
    meta = {"format": CACHE_FORMAT, "source": data or BUILTIN_NAME, "count": count, "skipped": capacity - count,
            "resolution": resolution}
    (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.replace(temporary, folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(temporary, ignore_errors=True)
    return folder


class RealImages:
    """Batches of reals as float [-1, 1] tensors [N, 3, res, res] on the device, from the cache."""

    def __init__(self, folder: Path, seed: int, mirror: bool, device: torch.device, channels_last: bool,
                 rank: int = 0, world_size: int = 1):
        meta = json.loads((Path(folder) / "meta.json").read_text())
        self.count, self.resolution = meta["count"], meta["resolution"]
        self.levels: Dict[int, np.ndarray] = {}
        res = self.resolution
        while res >= 4:
            self.levels[res] = np.load(Path(folder) / f"{res}.npy", mmap_mode="r")
            res //= 2
        self.seed, self.mirror, self.device, self.channels_last = seed, mirror, device, channels_last
        self.rank, self.world_size = rank, world_size
        self._epoch, self._order, self._flips = -1, None, None

    def _epoch_order(self, epoch: int):
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._epoch, self._order, self._flips = epoch, rng.permutation(self.count), rng.random(self.count) < 0.5
        return self._order, self._flips

    def indices(self, position: int, count: int):
        """Dataset indices and flip flags of stream positions [position, position + count)."""
        epochs, slots = np.divmod(np.arange(position, position + count), self.count)
        index, flip = np.empty(count, np.int64), np.zeros(count, bool)
        for epoch in np.unique(epochs):
            order, flips = self._epoch_order(int(epoch))
            here = epochs == epoch
            index[here], flip[here] = order[slots[here]], flips[slots[here]]
        return index, flip & self.mirror

    def batch(self, position: int, global_batch: int, resolution: int) -> torch.Tensor:
        """This process's share of the global batch that starts at stream position `position`."""
        if global_batch % self.world_size:
            raise ValueError(f"global batch {global_batch} at {resolution}x{resolution} does not split evenly over "
                             f"{self.world_size} processes; use a global batch that is a multiple of "
                             f"{self.world_size} (--minibatch is per process: global = minibatch x processes)")
        share = global_batch // self.world_size
        index, flip = self.indices(position + self.rank * share, share)
        return self.to_device(self.read(index, flip, resolution))

    def read(self, index: np.ndarray, flip: np.ndarray, resolution: int) -> np.ndarray:
        images = self.levels[resolution][index]
        images[flip] = images[flip, :, ::-1]
        return images

    def evaluation_reals(self, count: int, resolution: int, seed: int, alpha: float = 1.0) -> torch.Tensor:
        """uint8 [count, 3, res, res] on the device: the reals that metrics compare samples with. A random subset
        drawn with `seed` (the same for every evaluation with that seed), never flipped, and blended like the
        reals of a training step when alpha < 1."""
        index = torch.randperm(self.count, generator=torch.Generator().manual_seed(seed + 3))[:count].numpy()
        reals = self.to_device(self.read(index, np.zeros(len(index), bool), resolution))
        if alpha < 1.0:
            reals = PF.fade_downsample(reals, alpha)
        return to_uint8(reals)

    def to_device(self, images: np.ndarray) -> torch.Tensor:
        """uint8 [N, H, W, 3] -> float [-1, 1] [N, 3, H, W]; the NHWC source is already channels_last."""
        host = torch.from_numpy(np.ascontiguousarray(images))
        if self.device.type == "cuda":
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float().mul_(1 / 127.5).sub_(1.0)
        return x if self.channels_last else x.contiguous()
