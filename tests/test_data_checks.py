"""A dataset the study cannot learn from is refused with one sentence when it is loaded, before any
training: a val/test class train lacks, a class folder with no images, one class, a class too small to
carve from. Folders people have are read as they are: file names that are not UTF-8, a class named
`train` in a folder without splits. Training batches never hold a single image (BatchNorm)."""
import os
from pathlib import Path

import pytest

from studylib.data.cache import load_split
from studylib.data.integrity import check_integrity
from studylib.data.registry import load_dataset
from studylib.data.splits import apply_manifest, write_split_manifest
from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.train.setup import load_run_data, prepare, steps_per_epoch

from conftest import make_jpeg


def folder(root: Path, layout: dict) -> Path:
    """root/<path>/<n>.jpg for each path -> n images."""
    for where, n in layout.items():
        for i in range(n):
            make_jpeg(root / where / f"{i}.jpg", (20 * i % 255, 100, 30))
    return root


def refused(root: Path, *words: str) -> str:
    with pytest.raises(ParameterError) as info:
        load_dataset("imagefolder", str(root))
    msg = str(info.value)
    assert info.value.parameter == "root" and msg.count("\n") == 0 and msg.endswith(".")
    for w in words:
        assert w in msg, msg
    return msg


def test_a_test_class_that_train_lacks_is_refused(tmp_path):
    """test/Red next to train/red: an IndexError after all training before; now refused when loaded."""
    root = folder(tmp_path / "d", {"train/red": 4, "train/green": 4, "val/red": 2, "val/green": 2,
                                   "test/Red": 2, "test/green": 2})
    refused(root, "'Red'", "test", "green, red")


def test_a_val_class_that_train_lacks_is_refused(tmp_path):
    root = folder(tmp_path / "d", {"train/red": 4, "train/green": 4, "val/blue": 2, "val/green": 2,
                                   "test/red": 2, "test/green": 2})
    refused(root, "'blue'", "val")


def test_a_class_folder_without_images_is_refused(tmp_path):
    root = folder(tmp_path / "d", {"red": 10, "green": 10})
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not an image")
    refused(root, "'notes'", "no image")


def test_one_class_is_refused(tmp_path):
    refused(folder(tmp_path / "d", {"red": 12}), "only one class", "'red'")
    refused(folder(tmp_path / "s", {"train/red": 4, "val/red": 2, "test/red": 2}), "only one class")


def test_a_class_with_one_image_is_refused_in_one_sentence(tmp_path):
    """Too small to carve stratified val and test images from: scikit-learn's ValueError before."""
    root = folder(tmp_path / "d", {"red": 12, "green": 12, "blue": 1})
    refused(root, "'blue'", "1 image")


def test_a_class_named_train_in_a_folder_without_splits(tmp_path):
    """root/train/*.jpg is a class named train, not the split layout (which is root/train/<class>/*.jpg)."""
    root = folder(tmp_path / "d", {"train": 12, "cat": 12})
    ds = load_dataset("imagefolder", str(root))
    assert ds.classes == ["cat", "train"] and ds.notes["splits"].startswith("stratified")
    assert sum(len(i) for i in ds.splits.values()) == 24


def test_file_names_that_are_not_utf8(tmp_path, study_env):
    """Latin-1 file and folder names (bytes that are not UTF-8): listed, fingerprinted, cached, checked and
    written to the split manifest and back, and shown as text UTF-8 can hold (\\xNN) in every name a table,
    record or page shows: UnicodeEncodeError before (in the fingerprint, then in data_prep's tables)."""
    root = folder(tmp_path / "d", {"red": 10})
    latin = Path(os.fsdecode(os.path.join(os.fsencode(root), b"caf\xe9")))
    for i in range(10):
        make_jpeg(latin / os.fsdecode(b"\xe9t\xe9%d.jpg" % i), (30, 30, 20 * i))
    (latin / os.fsdecode(b"bad\xff.jpg")).write_bytes(b"\xff\xd8\xff\xe0cut")
    ds = load_dataset("imagefolder", str(root))
    assert ds.classes == ["caf\\xe9", "red"]
    shown = list(ds.classes)
    for split, items in ds.splits.items():
        cached = load_split(ds.cache_key, split, items, 16)
        assert len(cached) + len(cached.skipped) == len(items)
        shown += cached.names + [s["name"] for s in cached.skipped] + [items.name(i) for i in range(len(items))]
    found = check_integrity(ds, workers=1)
    assert ("truncated image", "caf\\xe9/bad\\xff.jpg") in {(p["kind"], p["path"]) for p in found.problems}
    shown += [p["path"] for p in found.problems] + [f.path for f in found.facts]
    for text in shown:
        text.encode("utf-8")  # raises on a lone surrogate
    manifest = tmp_path / "m.csv"
    write_split_manifest(ds, manifest, {"seed": 0})
    manifest.read_text(encoding="utf-8")
    again = apply_manifest(load_dataset("imagefolder", str(root)), manifest)
    assert {s: i.paths for s, i in again.splits.items()} == {s: i.paths for s, i in ds.splits.items()}
    assert all(Path(p).exists() for i in again.splits.values() for p in i.paths)


@pytest.mark.parametrize("train_images, batch_size, sizes", [(36, 35, [35]), (36, 8, [8, 8, 8, 8]), (36, 64, [36])])
def test_training_batches_never_hold_one_image(train_images, batch_size, sizes, study_env, tiny_imagefolder):
    """smallvgg*_bn with train_images % batch_size == 1 raised BatchNorm's ValueError (and ended a tune
    search): the training split drops its last, smaller batch; a split smaller than a batch is one batch.
    The schedule spans the steps the epochs take."""
    p = TrainParams.from_mapping({"dataset": "imagefolder", "root": str(tiny_imagefolder), "model": "smallvgg1_bn",
                                  "image_size": 32, "batch_size": batch_size, "epochs": 2, "device": "cpu",
                                  "schedule": "onecycle"})
    data = load_run_data(p)
    assert len(data.splits["train"]) == train_images
    setup = prepare(p, data, "cpu")
    assert setup.train.batch_sizes() == sizes and len(setup.train) == steps_per_epoch(data, p) == len(sizes)
    assert setup.schedule.total_steps == 2 * len(sizes)
    setup.model.train()
    for x, y in setup.train:
        assert len(y) == sizes[0]
        setup.loss_fn(setup.model(x), y).backward()
    assert len(setup.val) == 1  # evaluation keeps every image
