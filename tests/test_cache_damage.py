"""The prepared data cache: a damaged cache (cut short, emptied, garbled, missing files, damaged or edited
meta.json) is found at start and prepared again with a warning naming it; a full disk is an error naming the
cache folder and the space needed, with nothing half-written left; temporary folders of killed preparations are
removed, those of running ones kept."""
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest

from progan_fast.training import data as data_module
from progan_fast.training.data import cache_problem, prepare_cache

RES = 8


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A prepared cache of the built-in digits at 8x8, and the bytes of its files."""
    root = tmp_path_factory.mktemp("pristine")
    folder = prepare_cache(None, RES, str(root), log=lambda _: None)
    return folder, {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.fixture
def cache(pristine, tmp_path):
    folder, _ = pristine
    shutil.copytree(folder, tmp_path / folder.name)
    return tmp_path / folder.name


def cut_in_half(path):
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def garble(path, offset_fraction=0.5):
    data = bytearray(path.read_bytes())
    at = int(len(data) * offset_fraction)
    data[at:at + 64] = bytes(255 - b for b in data[at:at + 64])
    path.write_bytes(bytes(data))


def edit_meta(cache, **changes):
    meta = json.loads((cache / "meta.json").read_text())
    meta.update(changes)
    (cache / "meta.json").write_text(json.dumps(meta))


# (case, damage, expected fragment of the problem)
DAMAGE = [
    ("8.npy cut in half", lambda c: cut_in_half(c / "8.npy"), "8.npy has"),
    ("8.npy emptied", lambda c: (c / "8.npy").write_bytes(b""), "8.npy has 0 bytes"),
    ("4.npy missing", lambda c: (c / "4.npy").unlink(), "4.npy is missing"),
    ("8.npy header garbled", lambda c: garble(c / "8.npy", 0.0), "the checksum of 8.npy does not match"),
    ("8.npy pixels garbled", lambda c: garble(c / "8.npy"), "the checksum of 8.npy does not match"),
    ("meta.json garbled", lambda c: garble(c / "meta.json"), "meta.json is damaged"),
    ("meta.json cut in half", lambda c: cut_in_half(c / "meta.json"), "meta.json is damaged"),
    ("meta.json missing", lambda c: (c / "meta.json").unlink(), "meta.json is missing"),
    ("meta.json of an older version", lambda c: edit_meta(c, files=None), "meta.json does not describe 8.npy"),
    ("meta.json with another count", lambda c: edit_meta(c, count=99999), "8.npy holds images of shape (1797, 8"),
]


@pytest.mark.parametrize("damage, problem", [row[1:] for row in DAMAGE], ids=[row[0] for row in DAMAGE])
def test_a_damaged_cache_is_prepared_again_with_a_warning(pristine, cache, damage, problem):
    damage(cache)
    assert problem in cache_problem(cache, RES)
    messages = []
    assert prepare_cache(None, RES, str(cache.parent), log=messages.append) == cache
    assert f"warning: the prepared data in {cache} is damaged ({problem}" in messages[0]
    assert cache_problem(cache, RES) is None
    _, files = pristine
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == files  # the same arrays again
    assert sorted(p.name for p in cache.parent.iterdir()) == [cache.name]  # no temporary folder left


def test_an_intact_cache_is_read_not_rebuilt(cache):
    before = os.stat(cache / "8.npy").st_mtime_ns
    assert prepare_cache(None, RES, str(cache.parent), log=pytest.fail) == cache
    assert os.stat(cache / "8.npy").st_mtime_ns == before


def test_a_full_disk_is_an_error_naming_the_cache_folder_and_the_space(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module.shutil, "disk_usage", lambda path: SimpleNamespace(total=10 ** 9, free=1000))
    with pytest.raises(ValueError) as error:
        prepare_cache(None, RES, str(tmp_path / "cache"), log=lambda _: None)
    assert f"not enough space in the cache folder {str(tmp_path / 'cache')!r} to prepare the data: it needs about " \
           f"0.4 MB, 0.0 MB are free; free some space or give another --cache-dir" in str(error.value)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".failed"]


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_space_is_allocated_before_writing_so_a_full_disk_is_an_error_not_a_crash(tmp_path, monkeypatch):
    """A memory-mapped write to a sparse file on a full disk dies with SIGBUS; allocating first gives ENOSPC."""
    def no_space(descriptor, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(data_module.os, "posix_fallocate", no_space)
    with pytest.raises(ValueError) as error:
        prepare_cache(None, RES, str(tmp_path / "cache"), log=lambda _: None)
    assert f"cannot prepare the data in the cache folder {str(tmp_path / 'cache')!r}: No space left on device; " \
           f"it needs about 0.4 MB" in str(error.value)
    assert [p.suffix for p in (tmp_path / "cache").iterdir()] == [".failed"]


def dead_pid():
    process = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(process.stdout)


def test_temporary_folders_of_killed_preparations_are_removed(cache):
    host = socket.gethostname()
    root = cache.parent
    dead = [f"{cache.name}.tmp-{host}-{dead_pid()}", f"{cache.name}.tmp-{dead_pid()}"]  # this version, older ones
    kept = [f"{cache.name}.tmp-{host}-{os.getppid()}", f"{cache.name}.tmp-other-machine-{dead_pid()}",
            "notes.tmp-of-mine", f"notes.tmp-{host}-{dead_pid()}"]
    for name in dead + kept:
        (root / name).mkdir()
    messages = []
    prepare_cache(None, RES, str(root), log=messages.append)
    assert sorted(p.name for p in root.iterdir()) == sorted([cache.name] + kept)
    assert [m.split(",")[0] for m in messages] == [f"Removed {root / name}" for name in sorted(dead)]


def test_a_file_as_the_cache_folder_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--cache-dir '.*file' is a file, not a folder"):
        prepare_cache(None, RES, str(tmp_path / "file"))
