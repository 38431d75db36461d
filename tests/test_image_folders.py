"""Image folders as the trainer's --data: unreadable files are skipped and counted (an error above
MAX_BAD_FRACTION), tiny and non-square images keep their centre, every PIL mode becomes RGB uint8 (pixel values
checked), and the folder itself is never changed."""
import os
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from progan_fast import train
from progan_fast.training.data import prepare_cache, to_rgb

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


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="file names there are always valid Unicode")
def test_a_file_name_that_is_not_utf8_is_skipped_with_a_warning_naming_it(tmp_path):
    folder = tmp_path / "images"
    write_good_images(folder, 3)
    colour_image((1, 2, 3)).save(os.fsencode(folder) + b"/bad\xff\xfename.png")
    messages = []
    cache = prepare(folder, tmp_path / "cache", messages)
    assert messages[0] == (f"warning: skipped 1 image files in --data {folder} whose names are not valid UTF-8: "
                           "bad\\xff\\xfename.png; rename them to train on them")
    assert np.load(cache / f"{RES}.npy").shape[0] == 3
