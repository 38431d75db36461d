"""The run folder: the one folder a run writes, owned by one trainer at a time, where only the trainer's own
files are ever replaced or deleted.

- A new run starts in a new or empty folder (--out, or the next runs/NNNNN-<data>-<res>). A folder that holds
  anything, another run or files of your own, is refused: nothing in it is overwritten, mixed with the new run's
  files or pruned in favour of its checkpoints.
- A resumed run continues in the folder of its checkpoint (RUN for RUN/checkpoints/step-*), or in a new or
  empty --out.
- The run folder must not lie inside --data: its sample grids would become training images.
- Cleanup at start removes only the hidden names of the trainer's own interrupted writes, never other files.
- A trainer holds an exclusive lock on RUN/run.lock (which names its process) while it runs, so a second trainer
  on the same folder is refused instead of deleting the first one's checkpoint in progress. The lock is the
  kernel's (flock, POSIX): it ends with the process, so a killed trainer leaves only the file, which the next
  trainer takes over.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import IO, List, Optional

from ..cli import write_error_text
from . import checkpoint as ckpt
from .config import TRAINING_OPTIONS, TrainConfig

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None

LOCK_FILE = "run.lock"
CONFIG_FILE = "config.json"
EXAMPLES = 4  # names quoted from a folder that is not empty
# The hidden names of interrupted writes: checkpoint.replace_atomically's of the run folder's own files, and
# the checkpoint folders that save_checkpoint writes or prunes. Leftover cleanup removes these and nothing else.
LEFTOVERS = {
    ".": re.compile(re.escape(ckpt.TEMPORARY_PREFIX) + r"\d+-(config\.json|summary\.json|reals\.png|fakes-\d+\.png)"),
    "checkpoints": re.compile(f"({re.escape(ckpt.TEMPORARY_PREFIX)}|{re.escape(ckpt.TRASH_PREFIX)})"
                              + re.escape(ckpt.PREFIX) + r"\d+-\d+"),
}


def _names(entries: List[Path]) -> str:
    names = sorted(entry.name for entry in entries)
    return ", ".join(names[:EXAMPLES]) + (f" and {len(names) - EXAMPLES} more" if len(names) > EXAMPLES else "")


def _inside(path: Path, folder: Path) -> bool:
    path, folder = path.resolve(), folder.resolve()
    return path == folder or folder in path.parents


def run_folder_of(checkpoint: Path) -> Optional[Path]:
    """RUN for a checkpoint at RUN/checkpoints/<name> of a run folder (one with config.json), else None."""
    checkpoints = Path(checkpoint).resolve().parent
    if checkpoints.name == "checkpoints" and (checkpoints.parent / CONFIG_FILE).is_file():
        return checkpoints.parent
    return None


def chosen_folder(out: Optional[str], resume: Optional[Path]) -> Optional[Path]:
    """The folder a run asks for: --out, else the resumed checkpoint's run folder; None for a new numbered one."""
    if out:
        return Path(out)
    if resume is None:
        return None
    own = run_folder_of(resume)
    if own is None:
        raise ValueError(f"--resume {str(resume)!r}: the checkpoint is not inside a run folder (RUN/checkpoints/"
                         f"step-*, next to RUN/{CONFIG_FILE}), so there is no run folder to continue in; give --out "
                         f"with a new or empty folder for the continued run")
    return own


def holds_a_run(folder: Path) -> bool:
    """Whether `folder` is a run folder: checkpoints/, or the config.json of a run (not any config.json)."""
    if (folder / "checkpoints").is_dir():
        return True
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
        TrainConfig.from_json(config)
    except (OSError, ValueError):
        return False
    return set(TRAINING_OPTIONS) <= set(config)


def check(folder: Path, resume: Optional[Path], data: Optional[str]) -> None:
    """Raise ValueError saying why a run may not write to `folder`, and what to do instead. Writes nothing."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out {str(folder)!r} is a file, not a folder; give a new or empty folder")
    if data is not None and _inside(folder, Path(data)):
        raise ValueError(f"the run folder {str(folder)!r} is inside --data {data!r}: the run's sample grids would "
                         f"become training images; choose an --out outside {data!r}")
    holder = _holder(folder)
    if holder is not None:
        raise _in_use(folder, holder)
    check_contents(folder, resume)


def check_contents(folder: Path, resume: Optional[Path]) -> None:
    """Raise ValueError unless `folder` is empty (but for a lock file) or the resumed run's own folder."""
    own = run_folder_of(resume) if resume is not None else None
    if own is not None and folder.resolve() == own:
        return  # the resumed run continues in its own folder
    entries = [entry for entry in folder.iterdir() if entry.name != LOCK_FILE] if folder.is_dir() else []
    if not entries:
        return
    if holds_a_run(folder):
        found = ckpt.list_checkpoints(folder)
        if found:
            raise ValueError(f"--out {str(folder)!r} holds another run (checkpoints up to {found[-1].name}); "
                             f"continue it with --resume {folder}, or choose a new or empty folder for this run")
        raise ValueError(f"--out {str(folder)!r} holds a run without any checkpoint (it stopped before its first "
                         f"one, so there is nothing to resume); delete that folder, or choose a new or empty one")
    raise ValueError(f"--out {str(folder)!r} is not empty (it holds {_names(entries)}); a run writes only into a "
                     f"new or empty folder, so that none of your files is overwritten: choose another --out")


def remove_leftovers(run_dir: Path) -> List[str]:
    """Delete what interrupted writes left in the run folder and its checkpoints/ (LEFTOVERS); their names."""
    removed = []
    for subfolder, pattern in LEFTOVERS.items():
        folder = Path(run_dir) / subfolder
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            if pattern.fullmatch(entry.name):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
                removed.append(str(entry.relative_to(run_dir)))
    return removed


def _new_numbered(root: Path, label: str) -> Path:
    """Create runs/NNNNN-label with the next free number (atomically: two trainers never get the same one)."""
    root.mkdir(parents=True, exist_ok=True)
    number = max((int(p.name[:5]) for p in root.iterdir() if p.name[:5].isdigit()), default=-1) + 1
    while True:
        folder = root / f"{number:05d}-{label}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


class RunFolder:
    """The run folder of this trainer, locked until release()."""

    def __init__(self, path: Path, lock: Optional[IO[str]]):
        self.path, self._lock = path, lock

    @classmethod
    def claim(cls, out: Optional[str], resume: Optional[Path], data: Optional[str], label: str) -> "RunFolder":
        """Create (if needed) and lock the run folder; ValueError if it may not be used or written to."""
        folder = chosen_folder(out, resume)
        created = folder is None or not folder.exists()
        try:
            if folder is None:
                folder = _new_numbered(Path("runs"), label)
            else:
                check(folder, resume, data)  # before writing anything into it
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"cannot create the run folder {str(folder or 'runs')!r}: {write_error_text(error)}; "
                             f"choose a folder you can write to with --out") from None
        try:
            claimed = cls(folder, _lock(folder))
            try:
                check_contents(folder, resume)  # again, now that no other trainer can start in it
            except BaseException:
                claimed.release()
                raise
        except BaseException:
            if created:  # the folder made above, empty but for the lock file
                with contextlib.suppress(OSError):
                    (folder / LOCK_FILE).unlink(missing_ok=True)
                    folder.rmdir()
            raise
        return claimed

    def release(self) -> None:
        """Give the folder up (the lock file goes first, so that a newcomer never opens a file about to vanish)."""
        if self._lock is not None:
            (self.path / LOCK_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


def _in_use(folder: Path, holder: str) -> ValueError:
    return ValueError(f"the run folder {str(folder)!r} is in use by another trainer ({holder}); wait until it "
                      f"ends, or stop it, or choose another --out")


def _holder(folder: Path) -> Optional[str]:
    """Who holds the lock of `folder` (the text of its lock file), or None when no process does."""
    path = folder / LOCK_FILE
    if fcntl is None or not path.is_file():
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return handle.read().strip() or "a process that has not written its name yet"
    return None  # closing the file released the probe's lock


def _lock(folder: Path) -> Optional[IO[str]]:
    """An open, exclusively locked RUN/run.lock naming this process; ValueError while another process holds it."""
    path = folder / LOCK_FILE
    while True:
        try:
            handle = open(path, "a+", encoding="utf-8")
        except OSError as error:
            raise ValueError(f"cannot write to the run folder {str(folder)!r}: {write_error_text(error)}; choose a "
                             f"folder you can write to with --out") from None
        if fcntl is None:
            break
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            holder = _holder(folder)
            if holder is not None:
                raise _in_use(folder, holder) from None
            continue  # it ended just now
        try:  # the previous owner may have removed the file between our open and our lock: lock the new one
            if os.path.samestat(os.fstat(handle.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
    except OSError as error:
        handle.close()
        raise ValueError(f"cannot write to the run folder {str(folder)!r}: {write_error_text(error)}; choose a "
                         f"folder you can write to with --out") from None
    return handle
