"""An edited or planted checkpoint: training_state.json is checked field by field (types, ranges, and against
the stored configuration) even when someone rewrote the manifest to match, so resume, generate and metrics
refuse it with a usage error naming the field; a file planted at any size is refused before it is read."""
import hashlib
import json
import shutil

import pytest

from progan_fast import generate, train
from progan_fast.training import checkpoint as ckpt

from tiny_runs import finished_run as run_to_the_end


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    return run_to_the_end(tmp_path_factory.mktemp("schema") / "run", "--keep-checkpoints", "1")


@pytest.fixture
def checkpoint(finished_run, tmp_path):
    shutil.copytree(finished_run, tmp_path / "run")
    return ckpt.list_checkpoints(tmp_path / "run")[-1]


def rewrite_manifest(checkpoint):
    path = checkpoint / ckpt.MANIFEST
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        data = (checkpoint / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(manifest))


def setting(*path_and_value):
    """An edit of training_state.json: set state[path...] = value."""
    *path, value = path_and_value

    def edit(state):
        for key in path[:-1]:
            state = state[key]
        state[path[-1]] = value
    return edit


# (case, edit of the state, expected fragment naming the field)
EDITS = [
    ("step = -5", setting("step", -5), "step must be a whole number >= 0, got -5"),
    ('step = "abc"', setting("step", "abc"), "step must be a whole number >= 0, got 'abc'"),
    ("step = 6.5", setting("step", 6.5), "step must be a whole number >= 0, got 6.5"),
    ("images_shown = -100", setting("images_shown", -100), "images_shown must be a whole number >= 0, got -100"),
    ("ticks = null", setting("ticks", None), "ticks must be a whole number >= 0, got None"),
    ("skipped_steps = true", setting("skipped_steps", True), "skipped_steps must be a whole number >= 0, got True"),
    ("alpha = 2", setting("alpha", 2.0), "alpha must be a finite number in [0, 1], got 2.0"),
    ("resolution = 12", setting("resolution", 12), "resolution must be one of the run's resolutions [4, 8], got 12"),
    ("optimizer_resolution = 3", setting("optimizer_resolution", 3), "optimizer_resolution must be one of the "
                                                                     "run's resolutions [4, 8], got 3"),
    ("optimizers = {}", setting("optimizers", {}), "optimizers.G must be an optimizer's state"),
    ("optimizer lr edited", setting("optimizers", "D", "param_groups", 0, "lr", "fast"),
     "optimizers.D.param_groups[0].lr must equal the configuration's (0.001), got 'fast'"),
    ("scalers = null", setting("scalers", None), "scalers.G must be a loss scaler's state"),
    ("stage_speed = []", setting("stage_speed", []), "stage_speed must map resolutions to"),
    ("swd = 5", setting("swd", 5), "swd must map resolutions to SWD results"),
    ("ms_ssim = 5", setting("ms_ssim", 5), "ms_ssim must map resolutions to {\"fakes\": number"),
    ("stage_speed segment edited", setting("stage_speed", "4", [{"images": -1, "seconds": 1.0}]),
     "stage_speed must map resolutions to lists of"),
    ("config = null", setting("config", None), "config must be a JSON object, got None"),
    ("an unknown config key", setting("config", "surprise", 1), "config.surprise: unknown option 'surprise'"),
    ("minibatch = []", setting("config", "minibatch", []), "config.minibatch: minibatch must map resolutions"),
    ("minibatch size 0", setting("config", "minibatch", "8", 0), "config.minibatch: --minibatch 8:0"),
    ("seed = -1", setting("config", "seed", -1), "config.seed: --seed must be a whole number from 0 to 4294967295"),
    ('lr = "fast"', setting("config", "lr", "fast"), "config.lr: --lr must be of type float, got 'fast'"),
    ("lr = -1", setting("config", "lr", -1), "config.lr: --lr must be a finite number > 0, got -1"),
    ("resolution = 6", setting("config", "resolution", 6), "config.resolution: --resolution must be a power of two"),
    ("amp = fast", setting("config", "amp", "fast"), "config.amp: --amp must be one of auto, bf16, fp16, off"),
]


@pytest.mark.parametrize("edit, fragment", [row[1:] for row in EDITS], ids=[row[0] for row in EDITS])
def test_an_edited_training_state_is_refused_naming_the_field(checkpoint, capsys, edit, fragment):
    state = json.loads((checkpoint / ckpt.STATE_JSON).read_text())
    edit(state)
    (checkpoint / ckpt.STATE_JSON).write_text(json.dumps(state))
    rewrite_manifest(checkpoint)
    run = checkpoint.parent.parent
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as stopped:
        train.main(["--resume", str(run)])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert f"{str(checkpoint / ckpt.STATE_JSON)!r} is not a valid training state: {fragment}" in error
    assert "resume from another checkpoint" in error
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_generate_refuses_an_edited_training_state_too(checkpoint, tmp_path, capsys):
    state = json.loads((checkpoint / ckpt.STATE_JSON).read_text())
    state["step"] = -5
    (checkpoint / ckpt.STATE_JSON).write_text(json.dumps(state))
    rewrite_manifest(checkpoint)
    with pytest.raises(SystemExit) as stopped:
        generate.main([str(checkpoint), "--out", str(tmp_path / "samples")])
    assert stopped.value.code == 2
    assert "step must be a whole number >= 0, got -5" in capsys.readouterr().err


def test_a_huge_planted_file_is_refused_before_it_is_read(checkpoint, capsys):
    """A sparse 200 GB file in place of the weights: refused by its size, without reading (or allocating) it."""
    planted = checkpoint / ckpt.WEIGHT_FILES["G"]
    with open(planted, "r+b") as file:
        file.truncate(200 * 2 ** 30)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--resume", str(checkpoint)])
    assert stopped.value.code == 2
    assert f"generator.safetensors has {200 * 2 ** 30} bytes, its manifest says" in capsys.readouterr().err
