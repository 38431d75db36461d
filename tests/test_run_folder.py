"""The run folder: a new run starts only in a new or empty folder, a resume continues only in its own run folder
(or a new or empty one), one trainer at a time holds it, start-up cleanup deletes only the trainer's own
leftovers, and a folder that refuses writes stops the run with a message naming it, its last checkpoint valid."""
import errno
import json
import os
import shutil
from pathlib import Path

import pytest

from progan_fast import train
from progan_fast.training import checkpoint as ckpt
from progan_fast.training import run_folder
from progan_fast.training.config import TrainConfig
from progan_fast.training.run_folder import RunFolder

from tiny_runs import TINY_8, finished_run as run_to_the_end

TINY = TINY_8 + ["--snapshot-ticks", "1", "--keep-checkpoints", "3"]
USER_FILES = {".tmp-notes.txt": b"mine", ".trash-old": b"mine too", "config.json": b"{}", "summary.json": b"{}",
              "reals.png": b"not from the trainer", "keep.txt": b"keep"}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A run of 12 steps with checkpoints at steps 8, 10 and 12."""
    return run_to_the_end(tmp_path_factory.mktemp("finished") / "run", "--snapshot-ticks", "1",
                          "--keep-checkpoints", "3")


@pytest.fixture(scope="module")
def cache_dir(finished_run):
    return str(finished_run.parent / "cache")


@pytest.fixture
def run_copy(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "run")
    return tmp_path / "run"


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused(argv, capsys, *folders):
    """train.main must stop with a usage error before changing anything under `folders`; its message."""
    before = [snapshot(folder) for folder in folders]
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 2
    assert [snapshot(folder) for folder in folders] == before, "a refused run changed files"
    return capsys.readouterr().err


def user_folder(root):
    root.mkdir()
    for name, data in USER_FILES.items():
        (root / name).write_bytes(data)
    return root


def plain_file_named_checkpoints(root):
    root.mkdir()
    (root / "checkpoints").write_text("a file of the user's")
    return root


def run_without_checkpoints(root):
    root.mkdir()
    (root / "config.json").write_text(json.dumps(TrainConfig().to_json()))
    (root / "log.jsonl").write_text("")
    return root


# (case, folder maker given (tmp_path, copy of a finished run), expected fragments): a new run in each is refused.
NEW_RUN_REFUSED = [
    ("a finished run", lambda tmp, run: run, ["holds another run (checkpoints up to step-00000012)",
                                              "continue it with --resume"]),
    ("a folder of user files", lambda tmp, run: user_folder(tmp / "mine"),
     ["is not empty (it holds .tmp-notes.txt, .trash-old, config.json, keep.txt and 2 more)",
      "choose another --out"]),
    ("a plain file named checkpoints", lambda tmp, run: plain_file_named_checkpoints(tmp / "odd"),
     ["is not empty (it holds checkpoints)"]),
    ("a run stopped before its first checkpoint", lambda tmp, run: run_without_checkpoints(tmp / "early"),
     ["holds a run without any checkpoint (it stopped before its first one, so there is nothing to resume); "
      "delete that folder, or choose a new or empty one"]),
]


@pytest.mark.parametrize("make, fragments", [row[1:] for row in NEW_RUN_REFUSED], ids=[r[0] for r in NEW_RUN_REFUSED])
def test_a_new_run_refuses_a_folder_that_is_not_empty(tmp_path, run_copy, cache_dir, capsys, make, fragments):
    folder = make(tmp_path, run_copy)
    error = refused(TINY + ["--out", str(folder), "--cache-dir", cache_dir, "--seed", "7", "--max-steps", "2"],
                    capsys, folder)
    for fragment in fragments:
        assert fragment in error


def test_a_new_run_takes_an_empty_folder_or_one_left_with_a_stale_lock(tmp_path, cache_dir):
    (tmp_path / "empty").mkdir()
    (tmp_path / "stale").mkdir()
    (tmp_path / "stale" / run_folder.LOCK_FILE).write_text("process 999999 on a machine, killed long ago\n")
    for name in ("empty", "stale"):
        summary = train.main(TINY + ["--out", str(tmp_path / name), "--cache-dir", cache_dir, "--max-steps", "2"])
        assert summary["steps"] == 2 and ckpt.list_checkpoints(tmp_path / name)
        assert not (tmp_path / name / run_folder.LOCK_FILE).exists()  # released at the end


def test_a_run_folder_inside_the_data_is_refused(tmp_path, capsys):
    from PIL import Image
    data = tmp_path / "images"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(data / f"{i}.png")
    error = refused(TINY + ["--data", str(data), "--out", str(data / "run"), "--cache-dir", str(tmp_path / "c")],
                    capsys, data)
    assert "is inside --data" in error and "sample grids would become training images" in error
    assert not (data / "run").exists()


def test_resume_continues_only_in_its_own_run_folder_or_a_new_one(run_copy, tmp_path, capsys):
    loose = tmp_path / "saved" / "step-00000012"
    shutil.copytree(ckpt.list_checkpoints(run_copy)[-1], loose)
    error = refused(["--resume", str(loose)], capsys, tmp_path)
    assert "the checkpoint is not inside a run folder" in error and "give --out" in error
    other = user_folder(tmp_path / "other")
    assert "is not empty" in refused(["--resume", str(run_copy), "--out", str(other)], capsys, run_copy, other)
    summary = train.main(["--resume", str(loose), "--out", str(tmp_path / "continued")])
    assert summary["steps"] == 12 and ckpt.list_checkpoints(tmp_path / "continued")[-1].name == "step-00000012"
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["step-00000012"]  # nothing written beside it


def test_a_second_trainer_is_refused_while_the_first_holds_the_folder(run_copy, capsys):
    holder = RunFolder.claim(None, ckpt.list_checkpoints(run_copy)[-1], None, "unused")
    try:
        assert holder.path == run_copy.resolve()
        error = refused(["--resume", str(run_copy)], capsys, run_copy)
        assert f"is in use by another trainer (process {os.getpid()} on " in error and "wait until it ends" in error
    finally:
        holder.release()
    assert train.main(["--resume", str(run_copy)])["steps"] == 12


def test_start_up_cleanup_removes_only_the_trainers_own_leftovers(run_copy, capsys):
    leftovers = [".tmp-4242-config.json", ".tmp-4242-fakes-000000048.png", "checkpoints/.tmp-step-00000014-4242",
                 "checkpoints/.trash-step-00000006-4242"]
    for name in leftovers:
        path = run_copy / name
        path.mkdir() if "checkpoints/" in name else path.write_bytes(b"half written")
    for name, data in USER_FILES.items():
        if not (run_copy / name).exists():
            (run_copy / name).write_bytes(data)
    (run_copy / "checkpoints" / ".tmp-mine").write_bytes(b"mine")
    train.main(["--resume", str(run_copy)])
    assert not any((run_copy / name).exists() for name in leftovers)
    assert (run_copy / "checkpoints" / ".tmp-mine").read_bytes() == b"mine"
    for name in (".tmp-notes.txt", ".trash-old", "keep.txt"):
        assert (run_copy / name).read_bytes() == USER_FILES[name]
    output = capsys.readouterr().out
    assert all(f"Removed {name}, left over" in output for name in leftovers)


def failing_writes(monkeypatch, error_number, after_files):
    """Make checkpoint writes fail with `error_number` after `after_files` files were written."""
    write = ckpt._write_and_fsync
    written = []

    def write_or_fail(path, data):
        if len(written) >= after_files:
            raise OSError(error_number, os.strerror(error_number))
        written.append(path)
        write(path, data)

    monkeypatch.setattr(ckpt, "_write_and_fsync", write_or_fail)


def test_a_full_disk_stops_the_run_naming_the_folder_with_the_last_checkpoint_valid(tmp_path, cache_dir, capsys,
                                                                                    monkeypatch):
    out = tmp_path / "run"
    failing_writes(monkeypatch, errno.ENOSPC, after_files=1 + 6 * 2)  # config.json and two checkpoints of 6 files
    with pytest.raises(SystemExit) as stopped:
        train.main(TINY + ["--out", str(out), "--cache-dir", cache_dir])
    assert stopped.value.code == 1
    error = capsys.readouterr().err
    assert f"cannot write to the run folder {str(out)!r}: No space left on device" in error
    assert "The last checkpoint (" in error and "step-00000004) is intact" in error and "--resume" in error
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-00000002", "step-00000004"]
    for folder in ckpt.list_checkpoints(out):
        ckpt.verify(folder)
    assert not [p.name for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not (out / run_folder.LOCK_FILE).exists()


def test_a_read_only_folder_is_refused_before_training(tmp_path, cache_dir, capsys, monkeypatch):
    failing_writes(monkeypatch, errno.EROFS, after_files=0)
    with pytest.raises(SystemExit) as stopped:
        train.main(TINY + ["--out", str(tmp_path / "run"), "--cache-dir", cache_dir])
    assert stopped.value.code == 2
    assert f"cannot write to the run folder {str(tmp_path / 'run')!r}: Read-only file system" in \
        capsys.readouterr().err
    assert not (tmp_path / "run" / run_folder.LOCK_FILE).exists()


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="permissions do not bind root")
def test_a_folder_without_write_permission_is_refused(tmp_path, cache_dir, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        error = refused(TINY + ["--out", str(locked / "run"), "--cache-dir", cache_dir], capsys, locked)
    finally:
        locked.chmod(0o755)
    assert "cannot create the run folder" in error and "Permission denied" in error


def test_numbered_run_folders_are_never_shared(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RunFolder.claim(None, None, None, "digits-8")
    second = RunFolder.claim(None, None, None, "digits-8")
    try:
        assert [first.path.name, second.path.name] == ["00000-digits-8", "00001-digits-8"]
    finally:
        first.release()
        second.release()
