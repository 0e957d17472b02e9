"""The dataset registry, the embedded dataset, Stanford Dogs' layout and the tensor cache."""
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studylib.data.cache import load_split
from studylib.data.registry import DATASETS, check_root, check_storage_mode, dataset_spec, load_dataset, resolve_root
from studylib.errors import DatasetUnavailable, ParameterError
from studylib.paths import data_dir

from conftest import make_jpeg


def test_clothing10_has_the_sources_splits():
    ds = load_dataset("clothing10")
    assert {s: len(i) for s, i in ds.splits.items()} == {"train": 3068, "val": 341, "test": 372}
    assert len(ds.classes) == 10 and ds.classes[0] == "dress" and "t-shirt" in ds.classes
    train = np.bincount(ds.splits["train"].labels)
    assert train[ds.classes.index("t-shirt")] == 795 and train[ds.classes.index("skirt")] == 112
    for f in ("LICENSE", "SOURCE.txt", "SHA256SUMS"):
        assert (Path(ds.root) / f).exists()


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_is_answered_by_its_spec(name, tmp_path):
    """What the study asks about a dataset comes from its one registered spec."""
    spec = dataset_spec(name)
    assert spec.name == name and callable(spec.loader)
    if spec.needs_root:
        for ask in (lambda: resolve_root(name), lambda: load_dataset(name)):
            with pytest.raises(ParameterError, match=f"parameter 'root' is '', but it must be a folder of .* '{name}'"):
                ask()
        assert spec.cache_key(str(tmp_path / "dogs")) == f"{name}-dogs"
    else:
        assert resolve_root(name) == str(data_dir() / name) and spec.cache_key(resolve_root(name)) == name
    nowhere = str(tmp_path / "nowhere")
    if spec.downloads:
        assert check_root(name, nowhere) == nowhere
    else:
        with pytest.raises(ParameterError, match=f"an existing folder holding dataset '{name}'"):
            check_root(name, nowhere)
    if spec.lazy_readable:
        check_storage_mode(name, "lazy")
    else:  # refused before any listing or download
        with pytest.raises(ParameterError, match="parameter 'storage_mode' is 'lazy'"):
            load_dataset(name, "s3://bucket/x", storage_mode="lazy")


def test_imagefolder_without_splits_is_split_by_seed(tmp_path):
    for cls in ("a", "b"):
        for i in range(20):
            make_jpeg(tmp_path / "flat" / cls / f"{i}.jpg")
    one = load_dataset("imagefolder", str(tmp_path / "flat"), seed=3)
    two = load_dataset("imagefolder", str(tmp_path / "flat"), seed=3)
    assert sum(len(i) for i in one.splits.values()) == 40
    assert one.splits["test"].paths == two.splits["test"].paths
    assert set(one.splits["train"].paths).isdisjoint(one.splits["test"].paths)
    assert sorted(np.bincount(one.splits["test"].labels)) == [2, 2]  # stratified


def test_missing_root_names_it(tmp_path):
    with pytest.raises(DatasetUnavailable, match=str(tmp_path / "nothing")):
        load_dataset("imagefolder", str(tmp_path / "nothing"))
    with pytest.raises(ParameterError, match="dataset"):
        load_dataset("mnist")


def test_torchvision_dataset_offline_gives_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("cifar10", str(tmp_path / "cifar"))
    msg = str(info.value)
    assert "cifar10" in msg and str(tmp_path / "cifar") in msg and "download" in msg


def _dogs_fixture(root: Path):
    """A tiny Stanford Dogs tree: Images/, Annotation/ (VOC XML), train_list.mat, test_list.mat.

    Each image is grey with a coloured rectangle where its annotation's box is, so a correct
    crop is all one colour."""
    from scipy.io import savemat
    breeds = {"n02085620-Chihuahua": (250, 0, 0), "n02085782-Japanese_spaniel": (0, 0, 250)}
    lists = {"train": [], "test": []}
    for breed, colour in breeds.items():
        for i in range(6):
            name = f"{breed.split('-')[0]}_{i}"
            img = Image.new("RGB", (60, 50), (128, 128, 128))
            box = (10 + i, 8, 40 + i, 38)
            img.paste(colour, box)
            (root / "Images" / breed).mkdir(parents=True, exist_ok=True)
            img.save(root / "Images" / breed / f"{name}.jpg", quality=100)
            (root / "Annotation" / breed).mkdir(parents=True, exist_ok=True)
            (root / "Annotation" / breed / name).write_text(
                f"<annotation><object><name>{breed}</name><bndbox><xmin>{box[0]}</xmin><ymin>{box[1]}</ymin>"
                f"<xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object></annotation>")
            lists["train" if i < 4 else "test"].append(f"{breed}/{name}.jpg")
    for split, files in lists.items():
        cell = np.empty((len(files), 1), dtype=object)
        for k, f in enumerate(files):
            cell[k, 0] = np.array([f])
        savemat(root / f"{split}_list.mat", {"file_list": cell})


def test_stanford_dogs_crops_to_the_bounding_box(tmp_path, study_env):
    _dogs_fixture(tmp_path / "dogs")
    ds = load_dataset("stanford_dogs", str(tmp_path / "dogs"), val_fraction=0.25)
    assert ds.classes == ["Chihuahua", "Japanese_spaniel"]
    assert len(ds.splits["test"]) == 4 and len(ds.splits["train"]) + len(ds.splits["val"]) == 8
    split = load_split("stanford_dogs", "test", ds.splits["test"], 16)
    for img, label in zip(split.images, split.labels):
        mean = img.float().mean(dim=(1, 2))
        want = torch.tensor([250., 0, 0]) if label == 0 else torch.tensor([0., 0, 250])
        assert torch.allclose(mean, want, atol=12), mean  # the crop holds only the box, no grey


def test_stanford_dogs_missing_names_what_to_fetch(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset("stanford_dogs", str(tmp_path / "dogs"))
    assert "images.tar" in str(info.value) and str(tmp_path / "dogs") in str(info.value)


def test_cache_is_reused_and_invalidated_by_content(tiny_imagefolder, study_env):
    ds = load_dataset("imagefolder", str(tiny_imagefolder))
    first = load_split("tiny", "train", ds.splits["train"], 24)
    again = load_split("tiny", "train", ds.splits["train"], 24)
    assert not first.cache_hit and again.cache_hit and first.path == again.path
    assert torch.equal(first.images, again.images) and first.images.dtype == torch.uint8
    assert first.images.shape == (36, 3, 24, 24)
    other_size = load_split("tiny", "train", ds.splits["train"], 16)
    assert not other_size.cache_hit and other_size.path != first.path
    # same path, new contents: a new key, so a fresh decode
    make_jpeg(Path(ds.splits["train"].paths[0]), (1, 2, 3))
    ds2 = load_dataset("imagefolder", str(tiny_imagefolder))
    changed = load_split("tiny", "train", ds2.splits["train"], 24)
    assert not changed.cache_hit and changed.path != first.path


def test_undecodable_images_are_skipped_and_listed(tiny_imagefolder, study_env):
    bad = tiny_imagefolder / "train" / "red" / "broken.jpg"
    bad.write_bytes(b"")
    ds = load_dataset("imagefolder", str(tiny_imagefolder))
    split = load_split("tiny-broken", "train", ds.splits["train"], 16)
    assert len(split) == 36 and [s["name"] for s in split.skipped] == [str(bad)]


def test_an_edit_that_keeps_the_file_size_invalidates_the_cache(tmp_path, study_env):
    """The cache is keyed by content, not by size or name: a BMP repainted with another colour has the
    same size in bytes, and its split is decoded again, to the new pixels."""
    from PIL import Image
    for cls, colour in (("red", (220, 20, 20)), ("blue", (20, 20, 220))):
        for split in ("train", "val", "test"):
            for i in range(2):
                path = tmp_path / "bmp" / split / cls / f"{i}.bmp"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (20, 20), colour).save(path)
    ds = load_dataset("imagefolder", str(tmp_path / "bmp"))
    first = load_split("bmp", "train", ds.splits["train"], 16)
    path = Path(ds.splits["train"].paths[0])
    size = path.stat().st_size
    Image.new("RGB", (20, 20), (0, 255, 0)).save(path)
    assert path.stat().st_size == size
    again = load_split("bmp", "train", load_dataset("imagefolder", str(tmp_path / "bmp")).splits["train"], 16)
    assert not again.cache_hit and again.path != first.path
    assert again.images[0, :, 8, 8].tolist() == [0, 255, 0] and not torch.equal(again.images, first.images)
