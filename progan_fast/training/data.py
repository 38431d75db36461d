"""Real images: prepared once into uint8 arrays per resolution (numpy .npy memmaps), then read by index.

A folder of images is decoded once: RGB, center-cropped to a square, resized to the final resolution with
Lanczos, and every lower resolution is the 2x2 box average of the next one (as the official dataset tool does).
The cache key hashes the image paths, sizes and modification times, so a changed folder is prepared again.
Without a folder, the handwritten digits bundled with scikit-learn are used (installed files, no download).

The cache protects itself: meta.json records the size and a sampled checksum of every array, and a cache that
does not match (cut short, garbled, missing files, a damaged meta.json) is prepared again with a warning. The
space is checked and allocated before writing (a full disk is an error naming the cache folder, not a SIGBUS of
a memory-mapped write), a failed or interrupted preparation removes its temporary folder, and the temporary
folders of preparations that were killed are removed by the next one.

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

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .. import cli
from .. import functional as PF
from ..cache import cache_root
from ..images import to_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
CACHE_FORMAT = 1
BUILTIN_NAME = "scikit-learn digits"
DIGITS_COUNT = 1797  # images in scikit-learn's digits
MAX_BAD_FRACTION = 0.1  # more unreadable files than this and the folder is probably not what was meant
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
EXAMPLES = 3  # file names quoted in a warning or an error
DIGEST_CHUNK, DIGEST_CHUNKS = 1 << 20, 16  # the sampled checksum of a cached array reads at most 16 MiB of it
# KEY.tmp-HOST-PID: the folder a preparation writes before renaming it to KEY (older versions: KEY.tmp-PID);
# KEY is a folder fingerprint or digits-vN-RES.
TEMPORARY = re.compile(r"(?P<key>[0-9a-f]{20}|digits-v\d+-\d+)\.tmp-((?P<host>.+)-)?(?P<pid>\d+)")


def _printable(path: Path) -> str:
    """A file name as text even when its bytes are not UTF-8 (those show as \\xNN)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_utf8(path: Path) -> bool:
    try:
        str(path).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def find_images(folder: str, log: Callable[[str], None] = print) -> List[Path]:
    """The image files under `folder`, sorted; files whose names are not valid UTF-8 (which the cache key, the
    logs and the messages could not hold) are skipped with a warning naming them."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--data {folder!r} is not a folder; give a folder that contains images")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    unreadable_names = [_printable(p.relative_to(root)) for p in paths if not _is_utf8(p)]
    if unreadable_names:
        log(f"warning: skipped {len(unreadable_names)} image files in --data {folder} whose names are not valid "
            f"UTF-8: {_examples(unreadable_names)}; rename them to train on them")
        paths = [p for p in paths if _is_utf8(p)]
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


def level_resolutions(resolution: int) -> List[int]:
    """The resolutions of the arrays of a cache: resolution, resolution / 2, ..., 4."""
    return [resolution // 2 ** k for k in range(int(np.log2(resolution)) - 1)]


def cache_bytes(count: int, resolution: int) -> int:
    """About the space the arrays of `count` images take (the pixels; the .npy headers are small)."""
    return sum(count * res * res * 3 for res in level_resolutions(resolution))


def _new_array(path: Path, shape: Tuple[int, ...]) -> np.memmap:
    """A new uint8 .npy memmap whose disk blocks are allocated now: on a full disk this raises ENOSPC, where a
    sparse file would fail later with a SIGBUS when a page of it is written."""
    array = np.lib.format.open_memmap(path, "w+", np.uint8, shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as file:
            try:
                os.posix_fallocate(file.fileno(), 0, os.path.getsize(path))
            except OSError as error:  # a file system that cannot allocate ahead: the free-space check must do
                if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
    return array


def _write_levels(folder: Path, capacity: int, resolution: int, fill_top: Callable[[np.ndarray], int],
                  chunk: int = 256) -> int:
    """fill_top writes up to `capacity` images and returns how many; the lower levels follow. Returns the count."""
    top_path = folder / f"{resolution}.npy"
    top = _new_array(top_path, (capacity, resolution, resolution, 3))
    count = fill_top(top)
    if count < capacity:  # skipped files left unused rows at the end: keep only the written ones
        kept_path = folder / "kept.npy"
        kept = _new_array(kept_path, (count, resolution, resolution, 3))
        for begin in range(0, count, chunk):
            end = min(begin + chunk, count)
            kept[begin:end] = top[begin:end]
        del top
        os.replace(kept_path, top_path)
        top = kept
    res, source = resolution, top
    while res > 4:
        res //= 2
        level = _new_array(folder / f"{res}.npy", (count, res, res, 3))
        for begin in range(0, count, chunk):
            level[begin:begin + chunk] = halve(np.asarray(source[begin:begin + chunk]))
        level.flush()
        source = level
    top.flush()
    return count


def sampled_digest(path: Path) -> str:
    """SHA-256 of a file's size and of DIGEST_CHUNKS chunks spread evenly over it (the whole file if it is no
    larger): a cheap check that catches cut, swapped and garbled arrays, if not every changed byte of a big one."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\n".encode())
    with open(path, "rb") as file:
        if size <= DIGEST_CHUNK * DIGEST_CHUNKS:
            digest.update(file.read())
        else:
            for index in range(DIGEST_CHUNKS):
                file.seek(index * (size - DIGEST_CHUNK) // (DIGEST_CHUNKS - 1))
                digest.update(file.read(DIGEST_CHUNK))
    return digest.hexdigest()


def cache_problem(folder: Path, resolution: int) -> Optional[str]:
    """None when the prepared data in `folder` is complete and unchanged, else what is wrong with it."""
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return "meta.json is missing" if folder.exists() else "it does not exist"
    try:
        meta = json.loads(meta_path.read_text())
        count, files = meta["count"], meta["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return "meta.json is damaged or was written by an older version (no file sizes)"
    for res in level_resolutions(resolution):
        name, path = f"{res}.npy", folder / f"{res}.npy"
        entry = files.get(name) if isinstance(files, dict) else None
        if not isinstance(entry, dict) or "bytes" not in entry or "sha256" not in entry:
            return f"meta.json does not describe {name}"
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, meta.json says {entry['bytes']}"
        if sampled_digest(path) != entry["sha256"]:
            return f"the checksum of {name} does not match meta.json (the file changed)"
        try:
            shape = np.load(path, mmap_mode="r").shape
        except ValueError as error:
            return f"{name} is not a .npy array ({error})"
        if shape != (count, res, res, 3):
            return f"{name} holds images of shape {shape}, meta.json says {count} of {res}x{res}x3"
    return None


def _is_running(pid: int) -> bool:
    if os.name != "posix":  # no harmless probe there: assume it runs, and keep its folder
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_dead_preparations(root: Path, log: Callable[[str], None]) -> None:
    """Delete the temporary folders of preparations on this machine whose process is gone (killed)."""
    host = socket.gethostname()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        match = TEMPORARY.fullmatch(entry.name)
        if match and match["host"] in (None, host) and not _is_running(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)
            log(f"Removed {entry}, left over from a preparation of the data that was interrupted")


def _size(count: int) -> str:
    return f"{count / 1e9:.1f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


def prepare_cache(data: Optional[str], resolution: int, cache_dir: Optional[str] = None,
                  log: Callable[[str], None] = print, build: bool = True) -> Path:
    """Build the cache for (data, resolution) if it is missing, stale or damaged; return its folder.

    build=False waits for another process (rank 0) to build it: polling the file system instead of a collective,
    so a long first preparation cannot time out the process group. When that build fails, it leaves its error in
    KEY.failed, and the waiting processes raise it too instead of waiting forever.
    """
    root = cli.folder_to_write("--cache-dir", Path(cache_dir) if cache_dir else cache_root() / "data")
    if data is None:
        key, paths = f"digits-v{CACHE_FORMAT}-{resolution}", None
    else:
        paths = find_images(data, log)
        key = folder_fingerprint(data, paths, resolution)
    folder, failed = root / key, root / f"{key}.failed"
    if build:
        remove_dead_preparations(root, log)
    waiting_since = time.time()
    while not build and cache_problem(folder, resolution) is not None:
        if failed.is_file() and failed.stat().st_mtime >= waiting_since - 1.0:  # this run's build, not an old one
            raise ValueError(f"preparing the data failed in another process: {failed.read_text()}")
        time.sleep(2.0)
    problem = cache_problem(folder, resolution)
    if problem is None:
        return folder
    with cli.activity(f"preparing the data in {folder}"):
        return _build(data, paths, resolution, root, key, problem, log)


def _build(data: Optional[str], paths: Optional[List[Path]], resolution: int, root: Path, key: str, problem: str,
           log: Callable[[str], None]) -> Path:
    """Prepare KEY in a temporary folder and rename it into place (replacing a damaged one)."""
    folder, failed = root / key, root / f"{key}.failed"
    temporary = root / f"{key}.tmp-{socket.gethostname()}-{os.getpid()}"
    capacity = len(paths) if paths is not None else DIGITS_COUNT
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(temporary, ignore_errors=True)
        if folder.exists():  # damaged: renamed to this preparation's temporary name (atomic), then deleted
            log(f"warning: the prepared data in {folder} is damaged ({problem}); preparing it again")
            os.replace(folder, temporary)
            shutil.rmtree(temporary)
        temporary.mkdir()
        failed.unlink(missing_ok=True)
        needed, free = cache_bytes(capacity, resolution), shutil.disk_usage(root).free
        if needed > free:
            raise ValueError(f"not enough space in the cache folder {str(root)!r} to prepare the data: it needs "
                             f"about {_size(needed)}, {_size(free)} are free; free some space or give another "
                             f"--cache-dir")
        if paths is None:
            log(f"Preparing the built-in {BUILTIN_NAME} at {resolution}x{resolution} in {folder}")
            count = _write_levels(temporary, capacity, resolution, _copy_digits)
        else:
            log(f"Preparing {capacity} images from {data} at {resolution}x{resolution} (once) in {folder}")
            count = _write_levels(temporary, capacity, resolution,
                                  lambda top: _decode_folder(data, paths, resolution, top, log))
        files = {f"{res}.npy": {"bytes": (temporary / f"{res}.npy").stat().st_size,
                                "sha256": sampled_digest(temporary / f"{res}.npy")}
                 for res in level_resolutions(resolution)}
        meta = {"format": CACHE_FORMAT, "source": data or BUILTIN_NAME, "count": count,
                "skipped": capacity - count, "resolution": resolution, "files": files}
        (temporary / "meta.json").write_text(json.dumps(meta, indent=1))
    except BaseException as error:  # nothing half-written is left behind
        shutil.rmtree(temporary, ignore_errors=True)
        reported = error
        if cli.is_write_error(error):
            reported = ValueError(f"cannot prepare the data in the cache folder {str(root)!r}: "
                                  f"{cli.write_error_text(error)}; it needs about "
                                  f"{_size(cache_bytes(capacity, resolution))}: free some space or fix the "
                                  f"permissions, or give another --cache-dir")
        with contextlib.suppress(OSError):  # the error, for the processes that wait for this one
            failed.write_text(str(reported) or type(reported).__name__)
        if reported is error:
            raise
        raise reported from None
    try:
        os.replace(temporary, folder)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(temporary, ignore_errors=True)
        if cache_problem(folder, resolution) is not None:
            raise
    return folder


def _copy_digits(top: np.ndarray) -> int:
    top[:] = digits_images(top.shape[1])
    return len(top)


def _decode_folder(data: str, paths: Sequence[Path], resolution: int, top: np.ndarray,
                   log: Callable[[str], None]) -> int:
    """Decode the images into `top` in order, skipping unreadable files; the count written."""
    written, bad, small = 0, [], []
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        for path, (image, detail) in zip(paths, pool.map(lambda p: _load_or_reason(p, resolution), paths)):
            name = str(path.relative_to(data))
            if image is None:
                bad.append(f"{name} ({detail})")
                continue
            if detail < resolution:
                small.append(f"{name} ({detail}x{detail})")
            top[written] = image
            written += 1
    finally:  # after an error or a signal only the images being decoded are finished, not the whole queue
        pool.shutdown(wait=True, cancel_futures=True)
    report_bad_files(data, len(paths), bad, small, resolution, log)
    return written


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
