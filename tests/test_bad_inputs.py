"""The catalogue of bad inputs: each one gets a clear message (what, where, how to fix) or a documented fallback
whose result is checked, and loses nothing the user had. One table per category:

- image folders: unreadable files (skipped and counted, an error above MAX_BAD_FRACTION), tiny and non-square
  images, every PIL mode converted to RGB uint8 (pixel values checked);
- command-line options and batch sizes (resolution, minibatch-stddev group, processes);
- the CUDA extension's toolchain (nvcc or C++ compiler missing) under `auto` and an explicit `cuda`;
- the public ops on the torch and triton backends: wrong dtype, rank, device (meta tensors stand in for a second
  device on CPU), kernel shape, and layouts (expand(), slices, transposes) that fall back to a copy.
"""
import importlib
import os
import threading
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import progan_fast
from progan_fast import backend, train
from progan_fast import functional as PF
from progan_fast.training.data import RealImages, prepare_cache, to_rgb

extension_module = importlib.import_module("progan_fast.cuda_extension")  # the package exports a function of that name
RES = 8  # resolution of the image-folder cases: images of exactly this size are not resampled


def colour_image(colour, size=(RES, RES)):
    return Image.fromarray(np.full((size[1], size[0], 3), colour, np.uint8))


def write_good_images(folder, count):
    """`count` RES x RES images of distinct flat colours (image i has red channel 10 * i)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        colour_image((10 * i, 100, 200)).save(folder / f"good{i:02d}.png")


def snapshot(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def truncated_png(path):
    colour_image((1, 2, 3), (64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def truncated_jpeg(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


BAD_FILES = {
    "text named .png": lambda path: path.write_text("not an image"),
    "zero bytes": lambda path: path.write_bytes(b""),
    "truncated png": truncated_png,
    "truncated jpeg": truncated_jpeg,
}


def bad_file(folder, kind, stem):
    """A bad file of `kind` named stem.png (stem.jpg for the JPEG kinds)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (stem + (".jpg" if "jpeg" in kind else ".png"))
    BAD_FILES[kind](path)
    return path


def only_bad(*kinds):
    """A folder holding one bad file of each kind and nothing else."""
    def make(root):
        for index, kind in enumerate(kinds):
            bad_file(root, kind, f"z{index}")
        return root
    return make


def good_and_bad(good, *kinds):
    def make(root):
        write_good_images(root, good)
        return only_bad(*kinds)(root)
    return make


def prepare(folder, cache, messages=None):
    return prepare_cache(str(folder), RES, str(cache), log=(messages.append if messages is not None else print))


# ---------------------------------------------------------------------------------------------------------
# Image folders

# (what the folder holds, expected message fragments); each raises ValueError and changes nothing.
FOLDER_ERRORS = [
    ("missing folder", lambda root: root / "missing", "is not a folder; give a folder that contains images"),
    ("empty folder", lambda root: root, "holds no images (.png, .jpg, .jpeg, .webp, searched recursively)"),
    ("only a text file named .png", only_bad("text named .png"), "1 of the 1 image files in --data"),
    ("only a zero-byte image", only_bad("zero bytes"), "z0.png (cannot identify image file"),
    ("only truncated images", only_bad("truncated png", "truncated jpeg"), "2 of the 2 image files in --data"),
    ("2 bad among 8 good (20% > 10%)", good_and_bad(8, "zero bytes", "text named .png"),
     ("2 of the 10 image files in --data", "could not be read (more than 10%): z0.png (cannot identify image file",
      "z1.png (cannot identify image file", "; repair or remove them, or point --data at another folder")),
]


@pytest.mark.parametrize("make_folder, fragments", [row[1:] for row in FOLDER_ERRORS],
                         ids=[row[0] for row in FOLDER_ERRORS])
def test_unusable_folders_are_refused_and_left_untouched(tmp_path, make_folder, fragments):
    (tmp_path / "images").mkdir()
    folder = make_folder(tmp_path / "images")
    before = snapshot(folder) if folder.is_dir() else None
    with pytest.raises(ValueError) as error:
        prepare(folder, tmp_path / "cache")
    for fragment in [fragments] if isinstance(fragments, str) else fragments:
        assert fragment in str(error.value)
    if before is not None:
        assert snapshot(folder) == before  # the user's files are only read
    left = list((tmp_path / "cache").iterdir()) if (tmp_path / "cache").exists() else []
    assert all(path.suffix == ".failed" for path in left)  # no half-built cache, only the error for other processes


def test_processes_waiting_for_the_data_get_the_error_too(tmp_path):
    """Other ranks wait for rank 0 to prepare the data; when that fails they must stop as well, not hang."""
    folder = only_bad("zero bytes")(tmp_path / "images")
    outcome = {}

    def wait():
        try:
            prepare_cache(str(folder), RES, str(tmp_path / "cache"), build=False)
        except ValueError as error:
            outcome["error"] = str(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    with pytest.raises(ValueError):
        prepare(folder, tmp_path / "cache", [])
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert outcome["error"].startswith("preparing the data failed in another process: 1 of the 1 image files")


def test_the_trainer_stops_with_the_folder_error(tmp_path, capsys):
    folder = only_bad("zero bytes", "text named .png")(tmp_path / "images")
    with pytest.raises(SystemExit) as stopped:
        train.main(["--data", str(folder), "--resolution", "8", "--out", str(tmp_path / "run"), "--cache-dir",
                    str(tmp_path / "cache")])
    assert stopped.value.code == 2
    assert "error: 2 of the 2 image files in --data" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # stopped before creating a run folder


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_few_bad_files_are_skipped_and_counted(tmp_path, kind):
    folder = tmp_path / "images"
    write_good_images(folder, 10)  # 1 bad of 11 is within MAX_BAD_FRACTION (10%)
    bad = bad_file(folder, kind, "good05b")  # sorts among the good ones
    before, messages = snapshot(folder), []
    cache = prepare(folder, tmp_path / "cache", messages)
    warning, = [m for m in messages if m.startswith("warning")]
    assert f"skipped 1 of the 11 image files in {folder} that could not be read: {bad.name} (" in warning
    top = np.load(cache / f"{RES}.npy")
    assert top.shape == (10, RES, RES, 3) and np.load(cache / "4.npy").shape == (10, 4, 4, 3)
    assert top[:, 0, 0, 0].tolist() == [10 * i for i in range(10)]  # good images in order, none lost or shifted
    assert (cache / "meta.json").read_text().count('"skipped": 1') == 1
    assert snapshot(folder) == before


# (case, image width x height, expected warning fragment or None for no warning)
SHAPES = [
    ("tiny 4x4 is upscaled with a warning", (4, 4), "upscaled 1 images smaller than 8x8 (side of the centre square): "
     "tiny 4x4 is upscaled with a warning.png (4x4); they will look blurry: use larger images or a lower --resolution"),
    ("tiny and wide 6x3", (6, 3), "upscaled 1 images smaller than 8x8"),
    ("tall 8x16 is centre cropped", (8, 16), None),
    ("wide 24x8 is centre cropped", (24, 8), None),
]


@pytest.mark.parametrize("name, size, fragment", SHAPES, ids=[row[0] for row in SHAPES])
def test_small_and_non_square_images_keep_their_centre(tmp_path, name, size, fragment):
    """A flat centre square in (40, 80, 120) framed by green bands that the centre crop must drop."""
    width, height = size
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[...] = (0, 255, 0)
    side = min(size)
    top, left = (height - side) // 2, (width - side) // 2
    pixels[top:top + side, left:left + side] = (40, 80, 120)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(pixels).save(folder / f"{name}.png")
    messages = []
    image = np.load(prepare(folder, tmp_path / "cache", messages) / f"{RES}.npy")[0]
    assert np.abs(image.astype(int) - (40, 80, 120)).max() <= 1, "the centre square was not kept (or not alone)"
    warnings_seen = [m for m in messages if m.startswith("warning")]
    if fragment is None:
        assert not warnings_seen
    else:
        assert len(warnings_seen) == 1 and fragment in warnings_seen[0]


def random_pixels(shape, high=256, dtype=np.uint8, low=0):
    return np.random.default_rng(sum(shape)).integers(low, high, shape).astype(dtype)


def composited(rgb, alpha):
    return np.rint(rgb.astype(float) * alpha[..., None] / 255).astype(np.uint8)


def gray_to_rgb(gray):
    return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)


def mode_rgb():
    rgb = random_pixels((RES, RES, 3))
    return Image.fromarray(rgb), rgb


def mode_l():
    gray = random_pixels((RES, RES))
    return Image.fromarray(gray, "L"), gray_to_rgb(gray)


def mode_l_transparent():
    gray = random_pixels((RES, RES))
    image = Image.fromarray(gray, "L")
    image.info["transparency"] = int(gray[0, 0])
    return image, np.where((gray == gray[0, 0])[..., None], 0, gray_to_rgb(gray)).astype(np.uint8)


def mode_1():
    bits = random_pixels((RES, RES), high=2).astype(bool)
    return Image.fromarray(bits), gray_to_rgb(bits * 255)


def mode_la():
    la = random_pixels((RES, RES, 2))
    return Image.fromarray(la, "LA"), composited(gray_to_rgb(la[..., 0]), la[..., 1])


def mode_rgba():
    rgba = random_pixels((RES, RES, 4))
    return Image.fromarray(rgba, "RGBA"), composited(rgba[..., :3], rgba[..., 3])


PALETTE = np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90], [200, 210, 220]], np.uint8)


def palette_image(transparent_index=None):
    index = random_pixels((RES, RES), high=len(PALETTE))
    image = Image.fromarray(index, "P")
    image.putpalette(PALETTE.flatten().tolist())
    expected = PALETTE[index]
    if transparent_index is not None:
        image.info["transparency"] = transparent_index
        expected = np.where((index == transparent_index)[..., None], 0, expected).astype(np.uint8)
    return image, expected


def mode_i16():
    values = random_pixels((RES, RES), high=65536, dtype=np.uint16)
    return Image.fromarray(values), gray_to_rgb(np.rint(values / 257.0))


def mode_i32():
    """32-bit integers: read as 16-bit values, clipped to 0..65535."""
    values = random_pixels((RES, RES), low=-1000, high=70000, dtype=np.int32)
    return Image.fromarray(values, "I"), gray_to_rgb(np.rint(np.clip(values, 0, 65535) / 257.0))


# (mode, builder of (PIL image, expected uint8 [RES, RES, 3]), whether PNG can store it)
MODES = [
    ("RGB", mode_rgb, True),
    ("L (grayscale)", mode_l, True),
    ("L with a transparent value", mode_l_transparent, True),
    ("1 (bilevel)", mode_1, True),
    ("LA (alpha on black)", mode_la, True),
    ("RGBA (alpha on black)", mode_rgba, True),
    ("P (palette)", palette_image, True),
    ("P with a transparent index", lambda: palette_image(transparent_index=2), True),
    ("I;16 (16-bit)", mode_i16, True),
    ("I (32-bit)", mode_i32, False),
]


@pytest.mark.parametrize("build", [row[1] for row in MODES], ids=[row[0] for row in MODES])
def test_every_mode_becomes_rgb_uint8(build):
    image, expected = build()
    rgb = to_rgb(image)
    assert rgb.dtype == np.uint8 and rgb.shape == (RES, RES, 3)
    np.testing.assert_array_equal(rgb, expected)


def test_every_mode_survives_the_whole_pipeline(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    stored = [(name, build) for name, build, png in MODES if png]
    expected = []
    for index, (name, build) in enumerate(stored):
        image, pixels = build()
        image.save(folder / f"{index:02d}.png")
        expected.append(pixels)
    top = np.load(prepare(folder, tmp_path / "cache", []) / f"{RES}.npy")
    for (name, _), got, want in zip(stored, top, expected):
        np.testing.assert_array_equal(got, want, err_msg=name)


# ---------------------------------------------------------------------------------------------------------
# Command-line options and batch sizes: argparse errors naming the option, before any training

# (command line, expected fragment of the error)
OPTION_ERRORS = [
    (["--resolution", "12"], "argument --resolution: must be a power of two from 4 to 1024 (4, 8, 16, ..., 1024), "
                             "got 12"),
    (["--resolution", "2"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "0"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "-8"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "2048"], "argument --resolution: must be a power of two from 4 to 1024"),
    (["--resolution", "64px"], "argument --resolution: expected a whole number, got '64px'"),
    (["--resolution", "8", "--minibatch", "8:6"], "minibatch 6 (per process) at 8x8 is not a multiple of the "
     "minibatch-stddev group size 4; give --minibatch 8:8 (or another multiple of 4), or change --mbstd-group-size"),
    (["--resolution", "8", "--minibatch", "4:10", "--mbstd-group-size", "3"], "minibatch 10 (per process) at 4x4 "
     "is not a multiple of the minibatch-stddev group size 3; give --minibatch 4:12"),
    (["--mbstd-group-size", "0"], "--mbstd-group-size must be >= 1 (1 turns the layer off), got 0"),
    (["--minibatch", "8:0"], "--minibatch: size for 8x8 must be >= 1, got 0"),
    (["--minibatch", "8x6"], "--minibatch expects RES:SIZE pairs separated by commas"),
]


@pytest.mark.parametrize("argv, fragment", OPTION_ERRORS, ids=[" ".join(row[0]) for row in OPTION_ERRORS])
def test_bad_options_stop_with_an_argparse_error(capsys, argv, fragment):
    with pytest.raises(SystemExit) as stopped:
        train.config_from_args(argv)
    assert stopped.value.code == 2
    assert fragment in capsys.readouterr().err


def test_a_batch_smaller_than_the_group_is_one_group():
    """Not an error: minibatch_stddev shrinks the group to the batch (as the official code does)."""
    config, _ = train.config_from_args(["--resolution", "8", "--minibatch", "4:2,8:3", "--mbstd-group-size", "4"])
    assert config.minibatch[4] == 2 and config.minibatch[8] == 3


# (global batch, processes, expected fragment): --minibatch is per process, so the trainer never asks for a
# global batch that does not split; the data reader still refuses one rather than silently dropping images.
BATCH_SPLITS = [
    (9, 2, "global batch 9 at 8x8 does not split evenly over 2 processes; use a global batch that is a multiple of "
           "2 (--minibatch is per process: global = minibatch x processes)"),
    (10, 4, "global batch 10 at 8x8 does not split evenly over 4 processes"),
]


@pytest.mark.parametrize("global_batch, world_size, fragment", BATCH_SPLITS)
def test_global_batch_must_split_over_the_processes(tmp_path, global_batch, world_size, fragment):
    write_good_images(tmp_path / "images", 4)
    cache = prepare(tmp_path / "images", tmp_path / "cache", [])
    reals = RealImages(cache, 0, False, torch.device("cpu"), False, rank=0, world_size=world_size)
    with pytest.raises(ValueError) as error:
        reals.batch(0, global_batch, RES)
    assert fragment in str(error.value)
    assert reals.batch(0, 2 * world_size, RES).shape == (2, 3, RES, RES)


# ---------------------------------------------------------------------------------------------------------
# The CUDA extension's toolchain. tests/test_cuda_extension.py covers build_or_load's own errors; here the
# missing tool reaches the backend through the probe: one warning and the torch path under `auto`, an error
# naming the tool under an explicit `cuda`. torch.cuda.is_available is faked so the probe gets that far;
# gradient_penalty has only a cuda implementation, so `auto` has nothing else to try.

def no_nvcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)


def no_compiler(monkeypatch, tmp_path):
    try:
        extension_module.find_nvcc()
    except extension_module.CudaExtensionError as error:
        pytest.skip(f"needs nvcc to reach the C++ compiler check: {error}")
    monkeypatch.setenv("CXX", "no-such-c++-compiler")


TOOLCHAIN_GAPS = [
    ("nvcc missing", no_nvcc, "nvcc (the CUDA compiler) was not found: install the CUDA toolkit 12 or newer"),
    ("C++ compiler missing", no_compiler, "no C++ compiler ('no-such-c++-compiler') was found: install one (e.g. "
                                          "`apt install g++`) or point the CXX environment variable at it"),
]


@pytest.fixture
def fresh_probe(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(extension_module, "_extension", None)
    monkeypatch.setenv(extension_module.CACHE_ENV_VAR, str(tmp_path / "cache"))
    monkeypatch.setattr(backend, "_warned_fallback", False)
    extension_module.probe.cache_clear()
    yield
    extension_module.probe.cache_clear()


@pytest.mark.parametrize("break_toolchain, fragment", [row[1:] for row in TOOLCHAIN_GAPS],
                         ids=[row[0] for row in TOOLCHAIN_GAPS])
def test_missing_toolchain_falls_back_under_auto_and_is_an_error_under_cuda(monkeypatch, tmp_path, fresh_probe,
                                                                             break_toolchain, fragment):
    break_toolchain(monkeypatch, tmp_path)
    op = backend.OPS["gradient_penalty"]
    with pytest.warns(RuntimeWarning, match="falling back to the torch backend") as caught:
        assert op.select(torch.device("cuda")) is op.impls["torch"]
    assert len(caught) == 1 and fragment in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one warning per process, not one per call
        assert op.select(torch.device("cuda")) is op.impls["torch"]
    with progan_fast.use_backend("cuda"), pytest.raises(progan_fast.BackendUnavailableError) as error:
        op.select(torch.device("cuda"))
    assert "backend 'cuda' cannot run op gradient_penalty" in str(error.value) and fragment in str(error.value)
    assert not list((tmp_path / "cache").rglob("*.so"))  # nothing half-built was left


# ---------------------------------------------------------------------------------------------------------
# The public ops on both backends

def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


def ints(*shape):
    return torch.randint(-3, 4, shape, dtype=torch.int32)


def on_meta(t):
    return t.to("meta")


NOT_FLOAT = "expects a floating-point tensor, got torch.int32; convert it with .float()"
TWO_DEVICES = "all tensors must be on the same device, got cpu and meta; move them with .to(device)"

# (case, call, exception, expected fragment): the same answer on the torch and the triton backend.
OP_ERRORS = [
    ("bias_act int", lambda: PF.bias_act(ints(2, 3, 4, 4), None, "lrelu"), TypeError, "bias_act " + NOT_FLOAT),
    ("bias_act 1-D x", lambda: PF.bias_act(randn(3), randn(3)), ValueError,
     "bias_act: dim 1 is out of range for x of shape (3,)"),
    ("bias_act bias shape", lambda: PF.bias_act(randn(2, 3, 4, 4), randn(4)), ValueError,
     "bias_act: bias must have shape [3] (size of dim 1 of x), got (4,)"),
    ("bias_act bias on another device", lambda: PF.bias_act(randn(2, 3, 4, 4), on_meta(randn(3))), ValueError,
     "bias_act: " + TWO_DEVICES),
    ("bias_act activation", lambda: PF.bias_act(randn(2, 3), None, "relu"), ValueError,
     "activation must be None, 'linear' or 'lrelu', got 'relu'"),
    ("pixel_norm int", lambda: PF.pixel_norm(ints(2, 3, 4, 4)), TypeError, "pixel_norm " + NOT_FLOAT),
    ("pixel_norm 1-D", lambda: PF.pixel_norm(randn(3)), ValueError,
     "pixel_norm expects [N, C, ...] (channels in dim 1), got shape (3,)"),
    ("minibatch_stddev int", lambda: PF.minibatch_stddev(ints(4, 3, 4, 4)), TypeError,
     "minibatch_stddev " + NOT_FLOAT),
    ("minibatch_stddev 3-D", lambda: PF.minibatch_stddev(randn(4, 3, 4)), ValueError,
     "minibatch_stddev expects a 4-D tensor [N, C, H, W], got shape (4, 3, 4)"),
    ("minibatch_stddev batch 6, group 4", lambda: PF.minibatch_stddev(randn(6, 3, 4, 4), 4), ValueError,
     "batch size 6 is not divisible by the group size 4; use a batch that is a multiple of 4, or another group_size"),
    ("minibatch_stddev group 0", lambda: PF.minibatch_stddev(randn(4, 3, 4, 4), 0), ValueError,
     "group_size must be >= 1 or None (whole batch), got 0"),
    ("fade int", lambda: PF.fade(ints(2, 3), ints(2, 3), 0.5), TypeError, "fade " + NOT_FLOAT),
    ("fade shapes", lambda: PF.fade(randn(2, 3), randn(3, 2), 0.5), ValueError,
     "fade: new and old must have the same shape, got (2, 3) and (3, 2)"),
    ("fade old on another device", lambda: PF.fade(randn(2, 3), on_meta(randn(2, 3)), 0.5), ValueError,
     "fade: " + TWO_DEVICES),
    ("fade alpha 1.5", lambda: PF.fade(randn(2, 3), randn(2, 3), 1.5), ValueError,
     "alpha must lie in [0, 1] (0 = old branch only, 1 = new branch only), got 1.5"),
    ("fade alpha of shape (2,)", lambda: PF.fade(randn(2, 3), randn(2, 3), torch.rand(2)), ValueError,
     "alpha must be a float or a 0-dim tensor, got a tensor of shape (2,)"),
    ("fade_upsample 3-D", lambda: PF.fade_upsample(randn(3, 4, 4), randn(3, 2, 2), 0.5), ValueError,
     "fade_upsample expects a 4-D tensor [N, C, H, W], got shape (3, 4, 4)"),
    ("fade_upsample low shape", lambda: PF.fade_upsample(randn(1, 3, 4, 4), randn(1, 3, 4, 4), 0.5), ValueError,
     "fade_upsample: low must have shape (1, 3, 2, 2) for high of shape (1, 3, 4, 4) (even H and W)"),
    ("fade_upsample int", lambda: PF.fade_upsample(ints(1, 1, 4, 4), ints(1, 1, 2, 2), 0.5), TypeError,
     "fade_upsample " + NOT_FLOAT),
    ("fade_upsample low on another device",
     lambda: PF.fade_upsample(randn(1, 3, 4, 4), on_meta(randn(1, 3, 2, 2)), 0.5), ValueError,
     "fade_upsample: " + TWO_DEVICES),
    ("fade_downsample odd size", lambda: PF.fade_downsample(randn(1, 3, 5, 4), 0.5), ValueError,
     "fade_downsample needs even H and W, got shape (1, 3, 5, 4)"),
    ("fade_downsample int", lambda: PF.fade_downsample(ints(1, 1, 4, 4), 0.5), TypeError,
     "fade_downsample " + NOT_FLOAT),
    ("equalized_conv2d int input", lambda: PF.equalized_conv2d(ints(1, 3, 4, 4), randn(2, 3, 3, 3)), TypeError,
     "equalized_conv2d " + NOT_FLOAT),
    ("equalized_conv2d int weight", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), ints(2, 3, 3, 3)), TypeError,
     "equalized_conv2d weight " + NOT_FLOAT),
    ("equalized_conv2d 3-D input", lambda: PF.equalized_conv2d(randn(3, 4, 4), randn(2, 3, 3, 3)), ValueError,
     "equalized_conv2d expects a 4-D tensor [N, C, H, W], got shape (3, 4, 4)"),
    ("equalized_conv2d 2-D weight", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3)), ValueError,
     "equalized_conv2d weight expects a 4-D tensor [out_channels, in_channels, k, k], got shape (2, 3)"),
    ("equalized_conv2d non-square kernel", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 1)),
     ValueError, "equalized_conv2d needs a square kernel, got weight shape (2, 3, 3, 1)"),
    ("equalized_conv2d channels", lambda: PF.equalized_conv2d(randn(1, 4, 4, 4), randn(2, 3, 3, 3)), ValueError,
     "equalized_conv2d: input has 4 channels but the weight expects 3"),
    ("equalized_conv2d even kernel, same padding", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 2, 2)),
     ValueError, "padding=None ('same') needs an odd kernel size, got 2; pass padding explicitly"),
    ("equalized_conv2d bias shape", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 3), randn(3)),
     ValueError, "equalized_conv2d: bias must have shape [2], got (3,)"),
    ("equalized_conv2d weight on another device",
     lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), on_meta(randn(2, 3, 3, 3))), ValueError,
     "equalized_conv2d: " + TWO_DEVICES),
    ("equalized_linear int input", lambda: PF.equalized_linear(ints(2, 3), randn(4, 3)), TypeError,
     "equalized_linear " + NOT_FLOAT),
    ("equalized_linear int weight", lambda: PF.equalized_linear(randn(2, 3), ints(4, 3)), TypeError,
     "equalized_linear weight " + NOT_FLOAT),
    ("equalized_linear 3-D weight", lambda: PF.equalized_linear(randn(2, 3), randn(4, 3, 1)), ValueError,
     "equalized_linear: input of shape (2, 3) does not match weight of shape (4, 3, 1); the last input dim must "
     "equal in_features"),
    ("equalized_linear bias on another device",
     lambda: PF.equalized_linear(randn(2, 3), randn(4, 3), on_meta(randn(4))), ValueError,
     "equalized_linear: " + TWO_DEVICES),
    ("gradient_penalty int", lambda: PF.gradient_penalty(ints(2, 3)), TypeError, "gradient_penalty " + NOT_FLOAT),
    ("gradient_penalty 1-D", lambda: PF.gradient_penalty(randn(3)), ValueError,
     "gradient_penalty expects a per-sample gradient [N, ...], got shape (3,)"),
]


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("call, error, fragment", [row[1:] for row in OP_ERRORS], ids=[row[0] for row in OP_ERRORS])
def test_op_errors_name_the_problem_and_the_fix(name, call, error, fragment):
    with progan_fast.use_backend(name), pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)


UNSUPPORTED_DTYPE = "(triton backend) supports float32, float16 and bfloat16 tensors, got torch.float64; convert " \
                    "the input, or use the torch backend"
META = "Triton kernels run on CUDA tensors, got a meta tensor; move the tensors to a GPU"

# (case, call, exception, expected fragment): triton backend only; the torch backend runs these (fp64: the
# reference in double precision; meta tensors: shapes only).
TRITON_ERRORS = [
    ("bias_act fp64", lambda: PF.bias_act(randn(2, 3, dtype=torch.float64), None, "lrelu"), TypeError,
     "bias_act " + UNSUPPORTED_DTYPE),
    ("pixel_norm fp64", lambda: PF.pixel_norm(randn(2, 3, 4, 4, dtype=torch.float64)), TypeError,
     "pixel_norm " + UNSUPPORTED_DTYPE),
    ("minibatch_stddev fp64", lambda: PF.minibatch_stddev(randn(4, 3, 4, 4, dtype=torch.float64)), TypeError,
     "minibatch_stddev " + UNSUPPORTED_DTYPE),
    ("fade fp64", lambda: PF.fade(randn(2, 3, dtype=torch.float64), randn(2, 3, dtype=torch.float64), 0.5),
     TypeError, "fade " + UNSUPPORTED_DTYPE),
    ("fade_upsample fp64", lambda: PF.fade_upsample(randn(1, 3, 4, 4, dtype=torch.float64),
                                                    randn(1, 3, 2, 2, dtype=torch.float64), 0.5),
     TypeError, "fade_upsample " + UNSUPPORTED_DTYPE),
    ("fade_downsample fp64", lambda: PF.fade_downsample(randn(1, 3, 4, 4, dtype=torch.float64), 0.5), TypeError,
     "fade_downsample " + UNSUPPORTED_DTYPE),
    ("fade fp32 with fp16", lambda: PF.fade(randn(2, 3), randn(2, 3).half(), 0.5), TypeError,
     "fade (triton backend) needs both inputs in one dtype, got torch.float32 and torch.float16; convert one of "
     "them with .to(other.dtype)"),
    ("fade alpha requiring grad", lambda: PF.fade(randn(2, 3), randn(2, 3), torch.tensor(0.5, requires_grad=True)),
     ValueError, "fade (triton backend) does not compute a gradient for alpha; pass alpha.detach()"),
    ("bias_act negative slope", lambda: PF.bias_act(randn(2, 3), randn(3), "lrelu", -0.1), ValueError,
     "which needs negative_slope >= 0, got -0.1; use the torch backend"),
    ("equalized_conv2d negative padding", lambda: PF.equalized_conv2d(randn(1, 3, 4, 4), randn(2, 3, 3, 3),
                                                                      padding=-1),
     ValueError, "equalized_conv2d: padding must be >= 0, got -1"),
    ("pixel_norm on meta", lambda: PF.pixel_norm(on_meta(randn(2, 3, 4, 4))), progan_fast.BackendUnavailableError,
     META),
    ("equalized_conv2d on meta", lambda: PF.equalized_conv2d(on_meta(randn(1, 3, 4, 4)), on_meta(randn(2, 3, 3, 3))),
     progan_fast.BackendUnavailableError, META),
]


@pytest.mark.parametrize("call, error, fragment", [row[1:] for row in TRITON_ERRORS],
                         ids=[row[0] for row in TRITON_ERRORS])
def test_triton_backend_errors_name_the_problem_and_the_fix(call, error, fragment):
    with progan_fast.use_backend("triton"), pytest.raises(error) as raised:
        call()
    assert fragment in str(raised.value)


def test_meta_tensors_give_shapes_on_the_torch_backend():
    with progan_fast.use_backend("torch"):
        y = PF.equalized_conv2d(on_meta(randn(2, 3, 4, 4)), on_meta(randn(5, 3, 3, 3)), on_meta(randn(5)),
                                activation="lrelu", pixel_norm=True, upsample=True)
    assert y.device.type == "meta" and y.shape == (2, 5, 8, 8)


def expanded(*shape, dim):
    """A tensor of `shape` whose dim `dim` is an expand() (stride 0: every element there overlaps)."""
    base = list(shape)
    base[dim] = 1
    return randn(*base).expand(*shape)


def strided(*shape):
    """A non-dense view (every other element of the last dim)."""
    return randn(*shape[:-1], 2 * shape[-1])[..., ::2]


def transposed(*shape):
    """A dense but permuted view (H and W swapped in memory)."""
    return randn(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)


def channels_last(*shape):
    return randn(*shape).contiguous(memory_format=torch.channels_last)


# (case, op, arguments with at least one unusual layout or dtype): the result must equal the torch reference on
# contiguous copies. Unusual layouts are copied or addressed through their strides; fp64 runs the reference on
# equalized_conv2d / equalized_linear (documented).
FALLBACKS = [
    ("bias_act expanded x", PF.bias_act, lambda: (expanded(2, 3, 4, 4, dim=3), randn(3), "lrelu")),
    ("bias_act strided x, strided bias", PF.bias_act, lambda: (strided(2, 3, 4, 5), strided(3), "lrelu")),
    ("bias_act channels_last", PF.bias_act, lambda: (channels_last(2, 3, 4, 5), randn(3), "lrelu")),
    ("pixel_norm expanded", PF.pixel_norm, lambda: (expanded(2, 3, 4, 4, dim=0),)),
    ("pixel_norm strided", PF.pixel_norm, lambda: (strided(2, 3, 4, 5),)),
    ("minibatch_stddev expanded W", PF.minibatch_stddev, lambda: (expanded(4, 3, 4, 4, dim=3), 2)),
    ("minibatch_stddev strided", PF.minibatch_stddev, lambda: (strided(4, 3, 4, 5), 4)),
    ("fade expanded new, strided old", PF.fade, lambda: (expanded(2, 3, 4, 5, dim=1), strided(2, 3, 4, 5), 0.3)),
    ("fade_upsample transposed high, expanded low", PF.fade_upsample,
     lambda: (transposed(2, 3, 4, 6), expanded(2, 3, 2, 3, dim=2), 0.7)),
    ("fade_downsample strided", PF.fade_downsample, lambda: (strided(2, 3, 4, 6), 0.4)),
    ("equalized_conv2d expanded input, strided bias", PF.equalized_conv2d,
     lambda: (expanded(2, 3, 5, 5, dim=0), randn(4, 3, 3, 3), strided(4), 2 ** 0.5, None, "lrelu")),
    ("equalized_conv2d transposed weight", PF.equalized_conv2d,
     lambda: (channels_last(2, 3, 5, 5), transposed(4, 3, 3, 3), randn(4), 1.0, 1, None, 0.2, True)),
    ("equalized_conv2d fp64", PF.equalized_conv2d,
     lambda: (randn(2, 3, 4, 4, dtype=torch.float64), randn(4, 3, 3, 3, dtype=torch.float64),
              randn(4, dtype=torch.float64), 2 ** 0.5, None, "lrelu", 0.2, True, True)),
    ("equalized_linear expanded x, transposed weight", PF.equalized_linear,
     lambda: (expanded(3, 5, dim=0), randn(5, 4).t(), randn(4), 2 ** 0.5, "lrelu")),
    ("equalized_linear fp64", PF.equalized_linear,
     lambda: (randn(3, 5, dtype=torch.float64), randn(4, 5, dtype=torch.float64), randn(4, dtype=torch.float64),
              2 ** 0.5, "lrelu")),
    ("gradient_penalty expanded", PF.gradient_penalty, lambda: (expanded(4, 3, 2, 2, dim=2),)),
    ("gradient_penalty fp64", PF.gradient_penalty, lambda: (randn(4, 3, 2, 2, dtype=torch.float64),)),
]


def contiguous_copies(args):
    return [a.clone(memory_format=torch.contiguous_format) if isinstance(a, torch.Tensor) else a for a in args]


@pytest.mark.parametrize("name", ["torch", "triton"])
@pytest.mark.parametrize("op, make_args", [row[1:] for row in FALLBACKS], ids=[row[0] for row in FALLBACKS])
def test_unusual_layouts_and_dtypes_give_the_reference_result(name, op, make_args):
    args = make_args()
    inputs = [a.clone() for a in args if isinstance(a, torch.Tensor)]
    unusual = [a for a in args if isinstance(a, torch.Tensor) and (not a.is_contiguous() or a.dtype == torch.float64)]
    assert unusual, "the row must hold an unusual input"
    with progan_fast.use_backend(name):
        got = op(*args)
    with progan_fast.use_backend("torch"):
        expected = op(*contiguous_copies(args))
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tolerance = dict(rtol=1e-12, atol=1e-12) if got.dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got, expected, **tolerance)
    for before, after in zip(inputs, [a for a in args if isinstance(a, torch.Tensor)]):
        torch.testing.assert_close(after, before, rtol=0, atol=0)  # the inputs are not changed in place


def test_catalogue_covers_every_public_op():
    covered = {row[0].split()[0] for row in OP_ERRORS}
    assert {"bias_act", "pixel_norm", "minibatch_stddev", "fade", "fade_upsample", "fade_downsample",
            "equalized_conv2d", "equalized_linear", "gradient_penalty"} <= covered
    assert covered == {op.__name__ for _, op, _ in FALLBACKS}
    assert os.environ.get("TRITON_INTERPRET") or torch.cuda.is_available()
