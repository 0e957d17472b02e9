"""data_prep: the clothing10 card through papermill, planted problems, split manifests, crop pairs, parameters."""
import shutil
from pathlib import Path

import numpy as np
import papermill as pm
import pytest
import scrapbook as sb
from PIL import Image

from studylib.data.integrity import check_integrity
from studylib.data.registry import DATASETS, dataset_spec, load_dataset
from studylib.errors import ParameterError
from studylib.params import TrainParams
from studylib.record import DataPrepRecord
from studylib.stages import data_prep as dataprep
from studylib.train.run import train_run
from studylib.util import now
from studylib.views.data_prep import crop_pairs

ROOT = Path(__file__).resolve().parent.parent
CLASSES = {"red": (200, 40, 40), "green": (40, 180, 40), "blue": (40, 40, 200)}


def noise_jpeg(path: Path, tint, seed: int, size=32) -> Path:
    """A distinct image (tinted noise): no two fixtures share bytes unless a test copies one."""
    rng = np.random.default_rng(seed)
    a = np.clip(np.asarray(tint) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path, "JPEG", quality=90)
    return path


def imagefolder(root: Path, counts=None, flat=False) -> Path:
    counts = counts or {"train": 8, "val": 2, "test": 2}
    seed = 0
    for split, n in counts.items():
        for cls, tint in CLASSES.items():
            for i in range(n):
                seed += 1
                where = root / cls if flat else root / split / cls
                noise_jpeg(where / f"{split}{i}.jpg", tint, seed)
    return root


def prepare(params: dict):
    """The notebook's steps, in process (the clothing10 test runs the notebook itself)."""
    p = dataprep.DataPrepParams.from_mapping(params)
    ds, t_open = dataprep.open_dataset(p)
    integrity = check_integrity(ds, p.workers)
    ds, splits = dataprep.ensure_split_manifest(ds, p)
    rows, stats = dataprep.build_cache(ds, p.image_sizes)
    card = dataprep.dataset_card(p, ds, integrity, splits, rows, stats, {"open": t_open})
    return ds, card, dataprep.data_prep_record(p, card, now())


@pytest.mark.slow
def test_clothing10_card_from_the_notebook(study_env, tmp_path):
    out = tmp_path / "data_prep.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "data_prep.ipynb"), str(out),
                        parameters={"dataset": "clothing10", "image_sizes": [32]},
                        cwd=str(tmp_path), progress_bar=False, kernel_name="python3")
    scraps = sb.read_notebook(str(out)).scraps
    card, record = scraps["dataset_card"].data, scraps["record"].data
    rec = DataPrepRecord.model_validate(record)
    assert rec.stage == "data_prep" and rec.status == "ok" and rec.run_id.startswith("data_prep-clothing10-s0-")
    assert card["sizes"] == {"train": 3068, "val": 341, "test": 372} and card["num_classes"] == 10
    assert card["counts"]["train"]["t-shirt"] == 795 and card["counts"]["train"]["skirt"] == 112
    assert card["imbalance"]["train"]["largest"] == "t-shirt" and card["imbalance"]["train"]["smallest"] == "skirt"
    assert card["problem_count"] == 0 and card["problems"] == [] and rec.problems == 0
    assert card["checksums"]["file"] == "SHA256SUMS" and card["checksums"]["verified"] == 3781
    assert card["checksums"]["mismatched"] == card["checksums"]["missing"] == 0
    assert card["splits"]["manifest"] is None  # clothing10 has its own splits
    train32 = [r for r in card["cache"] if r["image_size"] == 32 and r["split"] == "train"][0]
    assert train32["images"] == 3068 and Path(train32["path"]).exists() and train32["mb"] > 0
    assert len(card["mean"]["32"]) == 3 and all(0 < s < 1 for s in card["std"]["32"])
    assert card["image_sizes"]["modes"] == {"RGB": 3781}


def test_planted_problems_are_listed_and_training_still_completes(study_env, tmp_path):
    root = imagefolder(tmp_path / "planted")
    good = (root / "train" / "red" / "train0.jpg").read_bytes()
    (root / "train" / "red" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "train" / "green" / "empty.jpg").write_bytes(b"")
    shutil.copy(root / "train" / "blue" / "train3.jpg", root / "test" / "blue" / "leaked.jpg")

    ds, card, record = prepare({"dataset": "imagefolder", "root": str(root), "image_sizes": [32]})
    found = {(p["kind"], p["split"], p["path"]) for p in card["problems"]}
    assert found == {("truncated image", "train", "train/red/truncated.jpg"),
                     ("zero-byte file", "train", "train/green/empty.jpg"),
                     ("duplicate across splits", "test", "test/blue/leaked.jpg")}
    leak = [p for p in card["problems"] if p["kind"] == "duplicate across splits"][0]
    assert "train/blue/train3.jpg" in leak["detail"]
    assert card["problem_counts"] == {"truncated image": 1, "zero-byte file": 1, "duplicate across splits": 1}
    assert record["problems"] == 3 and card["checksums"] is None
    train_cache = [r for r in card["cache"] if r["split"] == "train"][0]
    assert train_cache["images"] == 24 and train_cache["skipped"] == 2

    params = TrainParams(dataset="imagefolder", root=str(root), model="smallvgg1", image_size=32, epochs=1,
                         batch_size=16, device="cpu", augment=False, output_dir=str(tmp_path / "run"))
    result = train_run(params, progress=False)
    data = result.record["data"]
    assert result.record["status"] == "ok" and len(result.record["history"]) == 1
    skipped = sorted(Path(s["name"]).name for s in data["skipped"]["train"])
    assert skipped == ["empty.jpg", "truncated.jpg"] and data["sizes"]["train"] == 24
    assert data["cache"]["train"]["hit"]  # data_prep built the cache the run loaded


def test_split_manifest_is_written_once_and_reused(study_env, tmp_path):
    root = imagefolder(tmp_path / "flat", counts={"all": 10}, flat=True)
    params = {"dataset": "imagefolder", "root": str(root), "image_sizes": [16], "seed": 3,
              "val_fraction": 0.2, "test_fraction": 0.2}
    ds, card, _ = prepare(params)
    manifest = Path(card["splits"]["manifest"])
    assert card["splits"]["written"] and manifest.exists()
    assert card["sizes"] == {"train": 18, "val": 6, "test": 6}
    lines = manifest.read_text().splitlines()
    assert lines[1] == "split,path,label" and len(lines) == 2 + 30
    # a later run with another seed (as a train run with seed 7 would load it) gets the same split
    later = load_dataset("imagefolder", str(root), seed=7, val_fraction=0.5)
    assert all(later.splits[s].paths == ds.splits[s].paths for s in ("train", "val", "test"))
    assert "split manifest" in later.notes["splits"]
    # the second data_prep reuses it; a file added since is left out, and said so
    noise_jpeg(root / "red" / "new.jpg", CLASSES["red"], 999)
    again, card2, _ = prepare(params)
    assert not card2["splits"]["written"] and card2["total"] == 30 and "left out" in again.notes["manifest"]
    # other settings cannot silently change it
    with pytest.raises(ParameterError, match="parameter 'seed' is 4, but it must be 3"):
        dataprep.DataPrepParams.from_mapping(params | {"seed": 4})
    _, card3, _ = prepare(params | {"seed": 4, "resplit": True})
    assert card3["splits"]["written"] and card3["total"] == 31


def test_stanford_dogs_card_shows_crops_next_to_originals(study_env, tmp_path):
    from test_datasets import _dogs_fixture
    _dogs_fixture(tmp_path / "dogs")
    p = dataprep.DataPrepParams.from_mapping({"dataset": "stanford_dogs", "root": str(tmp_path / "dogs"),
                                              "val_fraction": 0.25, "image_sizes": [16]})
    ds, _ = dataprep.open_dataset(p)
    assert check_integrity(ds).problems == []
    fig = crop_pairs(ds, n=3)
    originals, crops = fig.axes[0::2], fig.axes[1::2]
    assert len(originals) == len(crops) == 3
    for o, c in zip(originals, crops):
        assert o.images[0].get_array().shape[:2] == (50, 60) and len(o.patches) == 1  # whole image, box drawn
        assert c.images[0].get_array().shape[:2] == (30, 30)  # what training sees: the box alone
    ds, splits = dataprep.ensure_split_manifest(ds, p)
    assert splits["written"] and "val_fraction" in Path(splits["manifest"]).read_text().splitlines()[0]
    # an annotation box that reaches past its image's right edge is listed
    ann = tmp_path / "dogs" / "Annotation" / "n02085620-Chihuahua" / "n02085620_0"
    ann.write_text(ann.read_text().replace("<xmax>40</xmax>", "<xmax>90</xmax>"))
    ds, _ = dataprep.open_dataset(p)
    assert [(x["kind"], x["path"]) for x in check_integrity(ds).problems] == [
        ("crop box outside image", "Images/n02085620-Chihuahua/n02085620_0.jpg")]


def test_parameters_are_checked_before_any_work(study_env, tmp_path):
    check = dataprep.DataPrepParams.from_mapping
    with pytest.raises(ParameterError, match="parameter 'dataset' is 'mnist'"):
        check({"dataset": "mnist"})
    with pytest.raises(ParameterError, match="image_sizes"):
        check({"image_sizes": []})
    assert check({"image_sizes": "64, 32"}).image_sizes == [32, 64]
    with pytest.raises(ParameterError, match="storage_mode"):
        check({"storage_mode": "fast"})
    with pytest.raises(ParameterError, match="parameter 'root'"):
        check({"dataset": "imagefolder"})
    with pytest.raises(ParameterError, match=str(tmp_path / "nowhere")):
        check({"dataset": "imagefolder", "root": str(tmp_path / "nowhere")})
    with pytest.raises(ParameterError, match="test_fraction"):
        check({"val_fraction": 0.5, "test_fraction": 0.5})
    # secrets never travel as parameters, and an error never repeats them
    with pytest.raises(ParameterError) as info:
        check({"dataset": "imagefolder", "root": "s3://bucket/x", "storage_options": {"secret": "hunter2"}})
    assert "hunter2" not in str(info.value) and "environment" in str(info.value)
    with pytest.raises(ParameterError) as info:
        check({"dataset": "imagefolder", "root": "s3://AKIAXX:hunter2@bucket/x"})
    assert "hunter2" not in str(info.value) and "AKIAXX" not in str(info.value)
    with pytest.raises(ParameterError, match="storage_mode"):
        check({"dataset": "food101", "root": "s3://bucket/food", "storage_mode": "lazy"})


@pytest.mark.parametrize("name", [n for n in DATASETS if not dataset_spec(n).lazy_readable])
def test_only_lazily_readable_datasets_are_fetched_lazily(name):
    with pytest.raises(ParameterError, match="parameter 'storage_mode' is 'lazy', but it must be 'prefetch'"):
        dataprep.DataPrepParams.from_mapping({"dataset": name, "root": f"s3://bucket/{name}", "storage_mode": "lazy"})
