"""Data pipeline: image folder -> uint8 cache per resolution, invalidation, order, sharding, flips."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from progan_fast.training.data import RealImages, digits_images, find_images, halve, prepare_cache


def write_images(folder):
    """Three images in nested folders, three formats; the wide one has green bands that the centre crop drops."""
    (folder / "sub" / "deeper").mkdir(parents=True)
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :10] = (0, 255, 0)  # cropped away by the centre crop
    wide[:, 10:20] = (255, 0, 0)
    wide[:, 20:30] = (0, 0, 255)
    wide[:, 30:] = (0, 255, 0)  # cropped away
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(np.full((33, 17, 3), 200, np.uint8)).save(folder / "sub" / "tall.jpg", quality=100)
    Image.fromarray(np.full((16, 16, 3), 50, np.uint8)).save(folder / "sub" / "deeper" / "small.webp", lossless=True)
    (folder / "notes.txt").write_text("not an image")


def test_folder_cache_levels_crop_and_reuse(tmp_path):
    data, cache = tmp_path / "images", tmp_path / "cache"
    write_images(data)
    assert [p.name for p in find_images(str(data))] == ["small.webp", "tall.jpg", "wide.png"]  # by path
    folder = prepare_cache(str(data), 16, str(cache), log=lambda _: None)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["count"] == 3 and meta["resolution"] == 16
    levels = {res: np.load(folder / f"{res}.npy") for res in (16, 8, 4)}
    assert levels[16].shape == (3, 16, 16, 3) and levels[4].shape == (3, 4, 4, 3)
    wide = levels[16][2]
    assert (wide[:, :6] == (255, 0, 0)).all() and (wide[:, 10:] == (0, 0, 255)).all()  # green bands cropped away
    assert (levels[16][0] == 50).all() and abs(int(levels[16][1].mean()) - 200) <= 2
    np.testing.assert_array_equal(levels[8], halve(levels[16]))
    np.testing.assert_array_equal(levels[4], halve(levels[8]))
    # Same folder: the cache is reused, not rebuilt; a changed folder gets a new one.
    assert prepare_cache(str(data), 16, str(cache), log=pytest.fail) == folder
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(data / "new.png")
    rebuilt = prepare_cache(str(data), 16, str(cache), log=lambda _: None)
    assert rebuilt != folder and json.loads((rebuilt / "meta.json").read_text())["count"] == 4
    os.utime(data / "new.png", ns=(1, 1))
    assert prepare_cache(str(data), 16, str(cache), log=lambda _: None) != rebuilt


def test_halve_is_the_rounded_box_average():
    x = np.array([[[[1], [2]], [[3], [5]]]], np.uint8).repeat(3, axis=3)  # [1, 2, 2, 3]
    assert halve(x)[0, 0, 0].tolist() == [3, 3, 3]  # (1 + 2 + 3 + 5 + 2) // 4


def test_builtin_digits_load_offline():
    images = digits_images(16)
    assert images.shape == (1797, 16, 16, 3) and images.dtype == np.uint8
    assert images.max() > 200 and images.min() == 0


def test_order_is_seeded_sharded_and_mirrored(tmp_path):
    folder = prepare_cache(None, 8, str(tmp_path), log=lambda _: None)
    one = RealImages(folder, seed=3, mirror=True, device=torch.device("cpu"), channels_last=False)
    index, flip = one.indices(1790, 16)  # crosses into the second epoch
    assert len(set(index[:7].tolist())) == 7 and flip.any() and not flip.all()
    again, _ = RealImages(folder, 3, True, torch.device("cpu"), False).indices(1790, 16)
    np.testing.assert_array_equal(index, again)
    whole = one.batch(1790, 16, 8)
    assert whole.shape == (16, 3, 8, 8) and whole.min() >= -1 and whole.max() <= 1
    shards = [RealImages(folder, 3, True, torch.device("cpu"), False, rank=r, world_size=2).batch(1790, 16, 8)
              for r in range(2)]
    torch.testing.assert_close(torch.cat(shards), whole, rtol=0, atol=0)
    plain = RealImages(folder, 3, False, torch.device("cpu"), False).batch(1790, 16, 8)
    torch.testing.assert_close(whole[flip], plain[flip].flip(3), rtol=0, atol=0)
    torch.testing.assert_close(whole[~flip], plain[~flip], rtol=0, atol=0)


def test_missing_and_empty_folders_are_named(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        find_images(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="holds no images"):
        find_images(str(tmp_path))
