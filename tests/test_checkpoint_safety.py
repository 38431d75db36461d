"""Loading checkpoints: missing, damaged, foreign, incompatible or malicious ones are refused with a clear error
that leaves every file as it was; a run folder whose newest checkpoint is damaged resumes from the newest complete
one; nothing loaded can run code (no pickle anywhere)."""
import hashlib
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from progan_fast import train
from progan_fast.training import checkpoint as ckpt
from progan_fast.training.run_state import load_generator

TINY = ["--fmap-base", "64", "--fmap-max", "16", "--latent-size", "16", "--progress", "off", "--grid", "2x2",
        "--tensorboard", "off", "--swd-images", "0", "--resolution", "8", "--minibatch", "4:4,8:4",
        "--stable-kimg", "0.016", "--fade-kimg", "0.016", "--tick-kimg", "0.008", "--snapshot-ticks", "1",
        "--keep-checkpoints", "3"]
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run with three checkpoints (steps 8, 10 and 12)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run") / "run"
    train.main(TINY + ["--out", str(folder), "--cache-dir", str(folder.parent / "cache")])
    torch.set_num_threads(threads)
    return folder


@pytest.fixture
def copy_of_run(run, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    return folder


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def refused(argv, capsys, folder):
    """Run train.main, expect a usage error; its message; check nothing under `folder` changed."""
    before = snapshot(folder)
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 2
    assert snapshot(folder) == before, "a refused checkpoint changed files"
    return capsys.readouterr().err


def rewrite_manifest(checkpoint):
    """What someone who edits a checkpoint on purpose would do: make the manifest match the files again."""
    path = Path(checkpoint) / ckpt.MANIFEST
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        data = (Path(checkpoint) / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(manifest))


def test_the_run_has_verified_checkpoints(run):
    names = [p.name for p in ckpt.list_checkpoints(run)]
    assert names == ["step-00000008", "step-00000010", "step-00000012"]
    for folder in ckpt.list_checkpoints(run):
        ckpt.verify(folder)


def test_missing_path(tmp_path, capsys):
    error = refused(["--resume", str(tmp_path / "nowhere")], capsys, tmp_path)
    assert "does not exist" in error and "nowhere" in error and "give a run folder" in error


def test_truncated_file(copy_of_run, capsys):
    newest = ckpt.list_checkpoints(copy_of_run)[-1]
    weights = newest / ckpt.WEIGHT_FILES["G"]
    weights.write_bytes(weights.read_bytes()[:1000])
    error = refused(["--resume", str(newest)], capsys, copy_of_run)
    assert f"checkpoint {str(newest)!r} is damaged" in error
    assert "generator.safetensors has 1000 bytes" in error and "cut short" in error
    assert "Resume from an earlier checkpoint" in error


def test_changed_file(copy_of_run, capsys):
    newest = ckpt.list_checkpoints(copy_of_run)[-1]
    state = newest / ckpt.STATE_JSON
    state.write_text(state.read_text().replace('"step": 12', '"step": 13'))
    error = refused(["--resume", str(newest)], capsys, copy_of_run)
    assert "SHA-256 of training_state.json does not match" in error


@pytest.mark.parametrize("name", ["random.bin", "checkpoint.pt"])
def test_foreign_file_as_the_path(tmp_path, capsys, name):
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    error = refused(["--resume", str(path)], capsys, tmp_path)
    assert "is a file, not a progan_fast checkpoint" in error and "never loaded" in error


def test_foreign_folder(tmp_path, capsys):
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / ckpt.MANIFEST).write_bytes(os.urandom(100))
    error = refused(["--resume", str(tmp_path / "stuff")], capsys, tmp_path)
    assert "is not a progan_fast checkpoint manifest" in error


def test_other_resolution_is_refused(copy_of_run, capsys):
    error = refused(["--resume", str(copy_of_run), "--resolution", "16"], capsys, copy_of_run)
    assert "--resolution cannot change when resuming" in error


def test_weights_of_other_widths_are_refused(copy_of_run, capsys):
    newest = ckpt.list_checkpoints(copy_of_run)[-1]
    state = json.loads((newest / ckpt.STATE_JSON).read_text())
    state["config"]["fmap_max"] = 32  # the configuration no longer matches the stored weights
    (newest / ckpt.STATE_JSON).write_text(json.dumps(state))
    rewrite_manifest(newest)
    error = refused(["--resume", str(newest)], capsys, copy_of_run)
    assert "generator.safetensors' does not fit the network of the checkpoint's configuration" in error
    assert re.search(r"has shape \(\d+.*\), the network needs \(\d+", error) and "--fmap-max" in error


def test_damaged_newest_checkpoint_falls_back_to_the_newest_complete_one(copy_of_run, capsys):
    damaged, previous = ckpt.list_checkpoints(copy_of_run)[-1], ckpt.list_checkpoints(copy_of_run)[-2]
    (damaged / ckpt.WEIGHT_FILES["D"]).write_bytes(b"")
    summary = train.main(["--resume", str(copy_of_run)])
    output = capsys.readouterr()
    assert f"warning: skipping checkpoint {str(damaged)!r} is damaged" in output.err
    assert f"Resumed from {previous} at step 10" in output.out
    set_aside = damaged.with_name(ckpt.SET_ASIDE_PREFIX + damaged.name)
    assert f"moved to {set_aside}" in output.out and (set_aside / ckpt.MANIFEST).is_file()  # kept for inspection
    assert summary["steps"] == 12
    ckpt.verify(ckpt.list_checkpoints(copy_of_run)[-1])


def test_a_run_without_any_complete_checkpoint_is_refused(copy_of_run, capsys):
    for folder in ckpt.list_checkpoints(copy_of_run):
        (folder / ckpt.MANIFEST).unlink()
    error = refused(["--resume", str(copy_of_run)], capsys, copy_of_run)
    assert "has no complete checkpoint" in error and "has no manifest.json" in error


class WritesMarker:
    """Unpickling this object creates a file: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickles_are_refused_and_never_run(copy_of_run, tmp_path, capsys):
    marker = tmp_path / "marker"
    payload = pickle.dumps(WritesMarker(marker))
    pickle.loads(payload)  # the payload is live: unpickling it does create the marker
    assert marker.exists()
    marker.unlink()

    as_the_path = tmp_path / "checkpoint.pt"
    as_the_path.write_bytes(payload)
    assert "is a file" in refused(["--resume", str(as_the_path)], capsys, tmp_path)

    newest = ckpt.list_checkpoints(copy_of_run)[-1]
    for name in (ckpt.WEIGHT_FILES["G"], ckpt.STATE_TENSORS):
        (newest / name).write_bytes(payload)
    assert "is damaged" in refused(["--resume", str(newest)], capsys, copy_of_run)
    rewrite_manifest(newest)  # even with a matching manifest, a pickle is not a safetensors file
    assert "is not a valid safetensors file" in refused(["--resume", str(newest)], capsys, copy_of_run)
    with pytest.raises(ckpt.CheckpointError, match="is not a valid safetensors file"):
        load_generator(str(newest), ema=False)
    assert not marker.exists()


def test_no_code_path_unpickles():
    """The package and the benchmarks load tensors with safetensors and state with JSON: no pickle, and any
    torch.load must be weights_only=True."""
    offenders = []
    for source in sorted((REPO / "progan_fast").rglob("*.py")) + sorted((REPO / "benchmarks").rglob("*.py")):
        text = source.read_text()
        if re.search(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle)\b", text, re.M):
            offenders.append(f"{source.name}: imports a pickle module")
        for call in re.finditer(r"torch\.load\((.*?)\)", text, re.S):
            if "weights_only=True" not in call.group(1):
                offenders.append(f"{source.name}: {call.group(0)[:60]}")
    assert not offenders, offenders
