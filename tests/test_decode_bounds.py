"""Decoding is bounded (issue 14 item 16): an image with more pixels than the study decodes is refused
from its header, before any decode, by training's opens (Items.load, what the tensor cache calls) and by
data_prep's integrity pass, which also keeps the pixels decoded at once across its threads under a budget."""
import threading
import time

import pytest
from PIL import Image, ImageFile

from studylib.data import integrity
from studylib.data.cache import load_split
from studylib.data.registry import MAX_PIXELS, Items, open_image

from conftest import make_jpeg


@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 1-bit PNG of a few KB whose decode is 72 million pixels: under PIL's own limit (89M, a warning; 179M,
    an error), over the study's."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (9000, 8000)).save(path, optimize=False)
    assert 9000 * 8000 > MAX_PIXELS and path.stat().st_size < 200_000
    return path


def test_training_refuses_an_image_with_too_many_pixels_before_decoding_it(bomb, tmp_path, study_env):
    t0 = time.perf_counter()
    with pytest.raises(Image.DecompressionBombError, match="9000 x 8000"):
        open_image(bomb)
    assert time.perf_counter() - t0 < 0.2  # the header only: decoding it takes seconds
    good = make_jpeg(tmp_path / "ok.jpg")
    split = load_split("bombs", "train", Items(labels=[0, 1], paths=[str(bomb), str(good)]), 16)
    assert len(split) == 1 and split.skipped[0]["name"] == str(bomb) and "DecompressionBombError" in split.skipped[0]["error"]


def test_data_prep_lists_it_as_a_problem(bomb, tmp_path):
    from studylib.data.registry import Dataset
    good = make_jpeg(tmp_path / "ok.jpg")
    items = Items(labels=[0, 1], paths=[str(bomb), str(good)])
    ds = Dataset("bombs", ["a", "b"], {"train": items, "val": Items([]), "test": Items([])}, str(bomb.parent))
    found = integrity.check_integrity(ds, workers=2)
    assert [(p["kind"], p["path"]) for p in found.problems] == [("too many pixels", "bomb.png")]
    assert integrity.PROBLEM_KINDS["too many pixels"] == "skipped by training"


def test_integrity_decodes_at_most_its_pixel_budget_at_once(tmp_path, monkeypatch):
    """With a budget of one image's pixels, 4 threads decode one image at a time."""
    from studylib.data.registry import Dataset
    paths = [str(tmp_path / f"{i}.png") for i in range(8)]
    for i, p in enumerate(paths):
        Image.new("RGB", (64, 64), (i, 0, 0)).save(p)
    monkeypatch.setattr(integrity, "DECODE_PIXELS", 64 * 64)
    now, most, lock = [0], [0], threading.Lock()
    real = ImageFile.ImageFile.load

    def load(self):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
        time.sleep(0.02)
        try:
            return real(self)
        finally:
            with lock:
                now[0] -= 1
    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    items = Items(labels=[i % 2 for i in range(8)], paths=paths)
    ds = Dataset("budget", ["a", "b"], {"train": items, "val": Items([]), "test": Items([])}, str(tmp_path))
    assert integrity.check_integrity(ds, workers=4).workers == 4
    assert most[0] == 1
