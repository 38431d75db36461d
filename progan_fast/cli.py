"""What the commands (train, generate, metrics) share: checks of their options, the guard that turns SIGINT and
SIGTERM into a one-line message, and the errors that mean "the disk refused a write".

A check raises ValueError (argparse.ArgumentTypeError when it is an argparse `type`) with a message that names
the option, says what is wrong and what to give instead; the commands report it as a usage error (exit status 2).
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import math
import os
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple, Union

import torch

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Errors of a write that the user can fix (space, quota, permissions, a read-only file system).
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


class OptionError(ValueError):
    """A bad value of one option; `field` is its name as a Python identifier (lr for --lr), so that a checkpoint's
    stored configuration can be reported by field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Number:
    """A numeric option: whole or real, finite, within [low, high] (an open end excludes its bound).

    As an argparse `type` it parses the text; `problem` checks a value of any origin (a preset, a checkpoint's
    JSON), so booleans, strings and non-finite numbers are refused too."""

    kind: type = float
    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        noun = "a whole number" if self.kind is int else "a finite number"
        if self.low is not None and self.high is not None:
            if self.kind is int:
                return f"{noun} from {self.low} to {self.high}"
            return (f"{noun} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"
        if self.high is not None:
            return f"{noun} {'<' if self.high_open else '<='} {self.high:g}"
        return noun

    def fits(self, value) -> bool:
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def problem(self, value) -> Optional[str]:
        """None when `value` fits, else "must be ..., got ..." (to follow the option's name)."""
        return None if self.fits(value) else f"must be {self.describe()}, got {value!r}"

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text!r}") from None
        if not self.fits(value):
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, got {text}")
        return value


SEED = Number(int, 0, 2 ** 32 - 1)
COUNT = Number(int, 1)  # a number of things: images, columns


def resolution_problem(res, largest: int = 1024, smallest: int = 4) -> Optional[str]:
    """None when `res` is a power of two from `smallest` to `largest`, else what it must be."""
    if isinstance(res, int) and not isinstance(res, bool) and smallest <= res <= largest and not res & (res - 1):
        return None
    return f"must be a power of two from {smallest} to {largest}, got {res!r}"


def device(option: str, text: str) -> torch.device:
    """The device `text` names, if progan_fast can run on it here."""
    try:
        chosen = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"{option} {text!r} is not a device; give cpu, cuda or cuda:N") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"{option} {text}: progan_fast runs on cpu and cuda devices; give cpu, cuda or cuda:N")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {text}: no CUDA GPU is visible to torch here; use {option} cpu")
    if chosen.type == "cuda" and chosen.index is not None and chosen.index >= torch.cuda.device_count():
        raise ValueError(f"{option} {text}: there are only {torch.cuda.device_count()} CUDA GPUs "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return chosen


def device_type(option: str) -> Callable[[str], torch.device]:
    """`device` as an argparse type for `option`."""
    def parse(text: str) -> torch.device:
        try:
            return device(option, text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error).replace(f"{option} ", "", 1)) from None
    return parse


def existing_folder(option: str, path: Union[str, Path], what: str = "a folder") -> Path:
    """`path` if it is a folder, else an error saying it is missing or a file."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{option} {str(path)!r} does not exist; give {what}")
    if not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder; give {what}")
    return path


def folder_to_write(option: str, path: Union[str, Path]) -> Path:
    """`path` if it is a folder, or can become one, that this process may write to."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder; give a folder (it is created if needed)")
    existing = next(p for p in [path, *path.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {str(path)!r} cannot be created: {str(existing)!r} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {str(path)!r}: {str(existing)!r} is not writable (permission denied); give a "
                         f"folder you can write to")
    return path


def is_write_error(error: BaseException) -> bool:
    """Whether `error` is the file system refusing a write for a reason the user can fix."""
    return isinstance(error, OSError) and error.errno in WRITE_ERRNOS


def write_error_text(error: OSError) -> str:
    """"<reason> (<file>)" of a refused write."""
    return (error.strerror or str(error)) + (f" ({error.filename})" if error.filename else "")


# ------------------------------------------------------------------------------------------------
# Signals.

class Interrupted(BaseException):
    """SIGINT or SIGTERM, raised in the main thread where it was: a BaseException, like KeyboardInterrupt, so that
    only `finally` and `except BaseException` blocks (the ones that remove temporary files) see it."""

    def __init__(self, number: int, activity: str, advice: str):
        self.number, self.advice = number, advice
        super().__init__(f"interrupted by {signal.Signals(number).name} while {activity}")


_activities: List[Tuple[str, str]] = []


@contextlib.contextmanager
def activity(text: str, advice: str = "run the same command again to start over"):
    """Name what the command does inside the block, and what to do if a signal interrupts it there."""
    _activities.append((text, advice))
    try:
        yield
    finally:
        _activities.pop()


@contextlib.contextmanager
def interrupt_on_signals():
    """Inside the block SIGINT and SIGTERM raise Interrupted (by default SIGTERM ends the process without any
    cleanup, and SIGINT prints a KeyboardInterrupt traceback). A signal the process was told to ignore stays
    ignored, as Python leaves an ignored SIGINT. Only the main thread can set handlers; elsewhere the block runs
    with the handlers as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(number, frame):
        raise Interrupted(number, *(_activities[-1] if _activities else ("starting", "run it again")))

    previous = {number: signal.signal(number, interrupt) for number in STOP_SIGNALS
                if signal.getsignal(number) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def interruptible(main: Callable) -> Callable:
    """A command's main() that ends with one line on stderr and exit status 128 + the signal number (130 for
    SIGINT, 143 for SIGTERM) when a signal interrupts it."""
    @functools.wraps(main)
    def guarded(*args, **kwargs):
        try:
            with interrupt_on_signals():
                return main(*args, **kwargs)
        except Interrupted as interruption:
            print(f"{interruption}; its temporary files were removed; {interruption.advice}", file=sys.stderr)
            sys.exit(128 + interruption.number)
    return guarded
