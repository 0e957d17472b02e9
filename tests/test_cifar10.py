"""CIFAR-10 from the JPEG export (folder or .tar.gz, checked against SHA256SUMS), its fixed val split,
the offline error, and the real archive in ../shared when it is there (issue 15, part 1)."""
import csv
import hashlib
import io
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from studylib.data import cifar10
from studylib.data.registry import load_dataset
from studylib.errors import DatasetUnavailable
from studylib.train.loop import evaluate, tta_views
from studylib.data.loader import TensorBatches

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg" / "cifar10-jpg.tar.gz"


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_export(folder: Path, per_class: dict[str, int]) -> dict[str, bytes]:
    """The export's layout as files: cifar10-jpg/<split>/<class>/<NNNN>.jpg, 10 classes."""
    files = {}
    for split, n in per_class.items():
        for c, cls in enumerate(cifar10.CLASSES):
            for i in range(n):
                files[f"cifar10-jpg/{split}/{cls}/{i:04d}.jpg"] = jpeg(hash((split, c, i)) % 2**32)
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def make_archive(tmp: Path, sums: bool = True) -> Path:
    make_export(tmp / "src", {"train": 20, "test": 4})
    out = tmp / "arch"
    out.mkdir()
    archive = out / cifar10.ARCHIVE
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp / "src" / "cifar10-jpg", arcname="cifar10-jpg")
    if sums:
        digest = hashlib.sha256(archive.read_bytes()).hexdigest()
        (out / "SHA256SUMS").write_text(f"{digest}  {cifar10.ARCHIVE}\n")
    return archive


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDYLIB_CACHE", str(tmp_path / "cache" / "tensors"))
    monkeypatch.setenv("STUDYLIB_SPLITS", str(tmp_path / "splits"))
    return tmp_path


def test_archive_folder_and_root_give_the_same_splits(env):
    archive = make_archive(env)
    from_file = load_dataset("cifar10", str(archive), download=False)
    from_root = load_dataset("cifar10", str(archive.parent), download=False)     # the folder holding the archive
    from_folder = load_dataset("cifar10", str(env / "src" / "cifar10-jpg"), download=False)
    assert from_file.classes == cifar10.CLASSES
    assert {s: len(i) for s, i in from_file.splits.items()} == {"train": 180, "val": 20, "test": 40}
    assert Counter(from_file.splits["val"].labels) == {c: 2 for c in range(10)}     # stratified: 10% of each class
    for other in (from_root, from_folder):
        for s in ("train", "val", "test"):
            assert other.splits[s].labels == from_file.splits[s].labels
            assert np.array_equal(other.splits[s].array, from_file.splits[s].array)
    # the decoded pixels are the JPEG's (test/airplane/0000.jpg is the first test image)
    first = np.asarray(Image.open(env / "src" / "cifar10-jpg" / "test" / "airplane" / "0000.jpg").convert("RGB"))
    assert np.array_equal(from_file.splits["test"].array[0], first)


def test_the_val_split_is_written_once_and_read_back(env):
    archive = make_archive(env)
    first = load_dataset("cifar10", str(archive), seed=0, download=False)
    again = load_dataset("cifar10", str(archive), seed=7, download=False)          # another run seed: same val
    assert np.array_equal(first.splits["val"].array, again.splits["val"].array)
    split_file = env / "splits" / "cifar10-jpg-val.csv"
    rows = list(csv.DictReader(open(split_file)))
    assert len(rows) == 20 and rows[0]["name"].startswith("train/")
    # the file decides: keep only its first two names, and the next load's val is exactly those
    with open(split_file, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "label"])
        w.writerows([r["name"], r["label"]] for r in rows[:2])
    edited = load_dataset("cifar10", str(archive), download=False)
    assert len(edited.splits["val"]) == 2 and len(edited.splits["train"]) == 198


def test_a_damaged_archive_is_refused_naming_both_digests(env):
    archive = make_archive(env)
    data = bytearray(archive.read_bytes())
    data[-100] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetUnavailable, match="SHA-256 .* but .*SHA256SUMS lists"):
        load_dataset("cifar10", str(archive), download=False)


def test_offline_without_a_copy_says_what_to_fetch_and_where(env):
    empty = env / "nothing"
    empty.mkdir()
    with pytest.raises(DatasetUnavailable) as err:
        load_dataset("cifar10", str(empty), download=False)
    message = str(err.value)
    assert str(empty) in message and cifar10.ARCHIVE in message and "cifar-10-batches-py" in message


def test_test_time_views_average_the_mirror_and_the_one_pixel_shifts():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))   # not mirror- or shift-symmetric
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    batches = TensorBatches(images, torch.zeros(5, dtype=torch.long), 5, mean=[0.5] * 3, std=[0.25] * 3)
    plain, _, _ = evaluate(model, batches, "cpu")
    flipped, _, _ = evaluate(model, batches, "cpu", views="flip")
    six, _, _ = evaluate(model, batches, "cpu", views="flip_translate")
    x = next(iter(batches))[0]

    def mirror_mean(v):
        return (model(v) + model(v.flip(3))) / 2

    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    up_left, down_right = padded[:, :, 0:4, 0:4], padded[:, :, 2:6, 2:6]
    with torch.no_grad():
        assert torch.allclose(plain, model(x), atol=1e-6)
        assert torch.allclose(flipped, mirror_mean(x), atol=1e-6)
        assert torch.allclose(six, mirror_mean(x) / 2 + (mirror_mean(up_left) + mirror_mean(down_right)) / 4, atol=1e-6)
    assert not torch.allclose(plain, flipped) and not torch.allclose(flipped, six)
    assert [tta_views(t) for t in (False, True, "flip_translate")] == ["none", "flip", "flip_translate"]


def test_six_views_validate_only_the_last_epoch(monkeypatch):
    """Six views cost six times one: with flip_translate every epoch but the last validates with the images alone."""
    from studylib.train import loop
    seen = []
    real = loop.evaluate
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: (seen.append(a[4]), real(*a, **k))[1])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    data = TensorBatches(images, torch.arange(8) % 3, 4, mean=[0.5] * 3, std=[0.25] * 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for tta, expected in ((True, ["flip"] * 3), ("flip_translate", ["none", "none", "flip_translate"]),
                          (False, ["none"] * 3)):
        seen.clear()
        loop.fit(model, data, data, epochs=3, optimizer=optimizer, schedule=None, loss_fn=torch.nn.CrossEntropyLoss(),
                 device="cpu", tta=tta, progress=False)
        assert seen == expected, tta


def test_a_run_tests_with_its_own_views(study_env):
    """train_run scores the test split with the run's tta views: its test logits are the six-view ones."""
    from studylib.params import TrainParams
    from studylib.train.run import train_run
    from studylib.train.setup import batches
    torch.manual_seed(0)
    params = TrainParams(model="airbench93", epochs=1, image_size=32, train_limit=64, batch_size=16,
                         tta="flip_translate", amp=False, channels_last=False)
    result = train_run(params, progress=False)
    test = batches(result.data, "test", params, "cpu", train=False)
    six, _, _ = evaluate(result.model, test, "cpu", views="flip_translate")
    flip, _, _ = evaluate(result.model, test, "cpu", views="flip")
    assert torch.allclose(result.test_logits, six, atol=1e-5) and not torch.allclose(result.test_logits, flip, atol=1e-5)


def test_a_run_trains_its_low_res_epochs_on_smaller_windows(study_env, monkeypatch):
    """low_res_epochs reach the loop: the first epochs step on low_res_size windows, the rest on whole images."""
    from studylib.params import TrainParams
    from studylib.train import loop
    from studylib.train.run import train_run
    sides = []
    real = loop.train_step
    monkeypatch.setattr(loop, "train_step", lambda model, x, *a, **k: (sides.append(x.shape[-1]), real(model, x, *a, **k))[1])
    params = TrainParams(model="airbench93", epochs=3, image_size=32, train_limit=64, batch_size=16, low_res_epochs=2,
                         low_res_size=24, amp=False, channels_last=False)
    train_run(params, progress=False)
    assert sides == [24] * 8 + [32] * 4     # 64 images in batches of 16: 4 steps an epoch


@pytest.mark.skipif(not SHARED.is_file(), reason=f"the real CIFAR-10 JPEG export is not at {SHARED}")
def test_the_real_archive_has_the_official_split(env):
    ds = load_dataset("cifar10", str(SHARED), download=False)     # SHA256SUMS beside it is checked
    assert {s: len(i) for s, i in ds.splits.items()} == {"train": 45000, "val": 5000, "test": 10000}
    assert Counter(ds.splits["val"].labels) == {c: 500 for c in range(10)}
    assert Counter(ds.splits["test"].labels) == {c: 1000 for c in range(10)}
    assert ds.splits["train"].array.shape[1:] == (32, 32, 3)
