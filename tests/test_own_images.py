"""On your own images: `studylib grid GRID --data FOLDER` runs a grid on an image folder as its own study.

Fast: --data rewrites a grid (imagefolder at that root, a study name of its own, data_prep/tune/deploy
following), and every bad --data value is one sentence naming it, before anything is written.
Slow: the quick study's shape scaled down (tests/data/own_images.yaml) end to end on a folder built from
clothing10: PNGs, a class name with spaces and non-ASCII characters, no split folders.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import scrapbook as sb
from PIL import Image

from studylib import cli
from studylib.study import book, expand

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TINY_GRID = ROOT / "tests" / "data" / "own_images.yaml"
# clothing10 class -> the class folder's name in the built folder (one with spaces and non-ASCII characters)
CLASSES = {"dress": "dress", "hat": "hat", "t-shirt": "t-shirt à manches"}
PER_CLASS = 12


def build_photo_folder(dest: Path, classes: dict = CLASSES, per_class: int = PER_CLASS) -> Path:
    """dest/<class>/*.png from clothing10's train images: the first `per_class` of each class, as PNG."""
    for source, name in classes.items():
        folder = dest / name
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((ROOT / "data" / "clothing10" / "train" / source).glob("*.jpg"))[:per_class]:
            Image.open(path).convert("RGB").save(folder / f"{path.stem}.png")
    return dest


# ---- fast: the grid on a folder, and bad --data values ----------------------------------------------------

def test_data_rewrites_the_quick_grid(tmp_path):
    photos = build_photo_folder(tmp_path / "mes photos été", per_class=PER_CLASS)
    quick, own = expand.load_grid(ROOT / "params" / "quick.yaml")
    grid, cells = expand.load_grid(ROOT / "params" / "quick.yaml", data=str(photos))
    assert grid.study == "quick-mes-photos-ete"
    root = str(photos.resolve())
    assert {(c.params["dataset"], c.params["root"]) for c in cells["train"]} == {("imagefolder", root)}
    # the same models, seeds and settings as the grid's own train cells, only the data changed
    def settings(cells):
        return sorted(str({k: v for k, v in c.params.items() if k not in ("dataset", "root")}) for c in cells)
    assert settings(cells["train"]) == settings(own["train"])
    assert [(c.params["dataset"], c.params["root"]) for c in cells["data_prep"]] == [("imagefolder", root)]
    assert [c.title for c in cells["data_prep"]] == ["mes photos été"]
    assert {(c.params["dataset"], c.params["root"]) for c in cells["tune"]} == {("imagefolder", root)}
    assert len(cells["tune"]) == len(quick.tune.models)
    assert grid.deploy.run == "best" and grid.stages == quick.stages


def test_data_overrides_roots_and_named_datasets(tmp_path):
    photos = build_photo_folder(tmp_path / "photos", per_class=PER_CLASS)
    path = tmp_path / "grid.yaml"
    path.write_text(f"""
study: mine
stages: [data_prep, train, tune, deploy]
train:
  - datasets: [clothing10, cifar10]
    models: [smallvgg1]
    image_size: 32
  - datasets: [imagefolder]
    root: {ROOT / "tests" / "data" / "no_images"}
    models: [smallvgg2]
    image_size: 32
    overrides:
      smallvgg2: {{root: /somewhere/else}}
data_prep: {{datasets: [clothing10]}}
tune: {{models: [smallvgg1], datasets: [clothing10]}}
deploy: {{run: [train-clothing10-smallvgg1-s0-0123456789]}}
""")
    grid, cells = expand.load_grid(path, data=photos)
    assert grid.study == "mine-photos"
    assert sorted((c.params["model"], c.params["dataset"], c.params["root"]) for c in cells["train"]) == [
        ("smallvgg1", "imagefolder", str(photos)), ("smallvgg2", "imagefolder", str(photos))]
    assert [c.params["dataset"] for c in cells["data_prep"]] == ["imagefolder"]
    assert [(c.params["dataset"], c.params["root"]) for c in cells["tune"]] == [("imagefolder", str(photos))]
    assert grid.deploy.run == "best"


def test_study_names_are_safe_file_names():
    assert expand.data_study_name("quick", Path("/x/Mes Photos d'été (2024)")) == "quick-Mes-Photos-d-ete-2024"
    assert expand.data_study_name("quick", Path("/x/cats_v1.2")) == "quick-cats_v1.2"
    odd = expand.data_study_name("quick", Path("/x/写真"))
    assert odd.startswith("quick-data-") and odd != expand.data_study_name("quick", Path("/y/写真"))
    for name in ("quick-Mes-Photos-d-ete-2024", odd):
        expand.Grid(study=name, stages=["train"])   # the grid's own pattern for a study name


def _bad_folders(tmp_path: Path) -> dict[str, str]:
    """--data value -> what the sentence must say it must be (a few words of it)."""
    empty = tmp_path / "empty"
    empty.mkdir(parents=True)
    loose = tmp_path / "loose"                      # images, but no class folders
    loose.mkdir()
    Image.new("RGB", (8, 8)).save(loose / "a.png")
    notes = tmp_path / "notes" / "cats"             # a class folder without images
    notes.mkdir(parents=True)
    (notes / "readme.txt").write_text("no images here")
    one = build_photo_folder(tmp_path / "one class", {"hat": "hat"})
    few = build_photo_folder(tmp_path / "few", {"hat": "hat", "dress": "dress"}, per_class=3)
    a_file = tmp_path / "a file.png"
    Image.new("RGB", (8, 8)).save(a_file)
    return {str(tmp_path / "does not exist"): "an existing local folder", "": "an existing local folder",
            str(a_file): "an existing local folder", "s3://bucket/photos": "an existing local folder",
            str(empty): "no class folder with images", str(loose): "no class folder with images",
            str(notes.parent): "no class folder with images", str(one): "two or more class folders",
            str(few): "enough images in every class"}


def test_bad_data_is_one_sentence_before_anything_is_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    for name in ("RUNS", "RESULTS", "BOOK", "CACHE", "SPLITS"):
        monkeypatch.setenv(f"STUDYLIB_{name}", str(out / name.lower()))
    for value, allowed in _bad_folders(tmp_path / "bad").items():
        for args in (["--check"], []):
            assert cli.main(["grid", str(TINY_GRID), "--data", value, *args]) == 2, value
            err = capsys.readouterr().err.strip()
            assert err.startswith(f"error: parameter '--data' is {value!r}, but it must be "), err
            assert allowed in err and err.count("\n") == 0 and err.endswith("."), err
    assert not out.exists()


def _fake_venv(tmp_path: Path) -> tuple[Path, Path]:
    """A VENV for make whose studylib logs every call's arguments (the --check call runs the real one)."""
    bin_dir, log = tmp_path / "venv" / "bin", tmp_path / "calls.log"
    bin_dir.mkdir(parents=True)
    for tool in ("studylib", "jupyter-book"):
        (bin_dir / tool).write_text(f"""#!/bin/bash
printf '{tool}' >> "{log}"; printf ' [%s]' "$@" >> "{log}"; echo >> "{log}"
if [[ " $* " == *" --check "* ]]; then exec "{VENV_BIN / 'studylib'}" "$@"; fi
""")
        (bin_dir / tool).chmod(0o755)
    return bin_dir.parent, log


@pytest.mark.parametrize("good", [True, False])
def test_make_study_passes_data_after_checking_it(tmp_path, good):
    """`make study DATA=...` checks the folder first (a bad one stops there with its sentence, before the
    bench), then hands it, spaces and all, to the bench and the grid."""
    venv, log = _fake_venv(tmp_path)
    data = build_photo_folder(tmp_path / "mes photos été") if good else tmp_path / "no such photos"
    res = subprocess.run(["make", "-o", "setup", "study", f"VENV={venv}", f"DATA={data}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    calls = log.read_text().splitlines()
    assert calls[0] == f"studylib [grid] [params/quick.yaml] [--check] [--data] [{data}]"
    if not good:
        assert res.returncode == 2 and len(calls) == 1, calls
        assert f"error: parameter '--data' is '{data}'" in res.stderr
        return
    assert res.returncode == 0, res.stderr
    assert calls[1].startswith("studylib [bench] [--grid] [params/quick.yaml]") and calls[1].endswith(f"[--data] [{data}]")
    assert calls[2] == f"studylib [grid] [params/quick.yaml] [--data] [{data}]"
    assert calls[3].startswith("jupyter-book [build]")


# ---- slow: the tiny study end to end on a folder of PNGs ----------------------------------------------------

@pytest.fixture(scope="module")
def own_study(tmp_path_factory):
    """tests/data/own_images.yaml with --data on a folder built from clothing10, through the real CLI; then the book."""
    base = tmp_path_factory.mktemp("own")
    photos = build_photo_folder(base / "mes photos été")
    env = {**os.environ, "STUDYLIB_CACHE": str(base / "cache"), "STUDYLIB_RUNS": str(base / "runs"),
           "STUDYLIB_RESULTS": str(base / "results"), "STUDYLIB_BOOK": str(base / "book")}
    res = subprocess.run([str(VENV_BIN / "studylib"), "grid", str(TINY_GRID), "--data", str(photos)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    build = subprocess.run([str(VENV_BIN / "jupyter-book"), "build", str(base / "book")], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
    study = "tiny-mes-photos-ete"
    cells = json.loads((base / "results" / study / "cells.json").read_text())["cells"]
    return base, photos.resolve(), study, res, cells, build


def _scraps(base: Path, cell: dict) -> dict:
    return {k: v.data for k, v in sb.read_notebook(str(base / "book" / cell["notebook"])).scraps.items()}


@pytest.mark.slow
def test_own_images_study_runs_ok(own_study):
    base, photos, study, res, cells, build = own_study
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"study {study}: " in res.stdout and "0 failed" in res.stdout
    assert sorted(c["stage"] for c in cells) == ["data_prep", "deploy", "train"]
    for page in book.REPORT_PAGES:            # the study's own report pages (decision, methods, results)
        assert (base / "book" / "results" / f"{page}-{study}.ipynb").is_file(), page


@pytest.mark.slow
def test_own_images_data_prep_card(own_study):
    base, photos, study, res, cells, build = own_study
    scraps = _scraps(base, next(c for c in cells if c["stage"] == "data_prep"))
    card, record = scraps["dataset_card"], scraps["record"]
    assert card["dataset"] == "imagefolder" and card["root"] == str(photos)
    assert card["classes"] == sorted(CLASSES.values()) and "t-shirt à manches" in card["classes"]
    assert card["total"] == PER_CLASS * len(CLASSES) and sum(card["sizes"].values()) == card["total"]
    assert all(card["sizes"][s] > 0 for s in ("train", "val", "test"))
    assert {c: sum(card["counts"][s][c] for s in card["counts"]) for c in card["classes"]} == {
        c: PER_CLASS for c in CLASSES.values()}
    assert card["problem_count"] == 0 and record["status"] == "ok" and record["classes"] == card["classes"]


@pytest.mark.slow
def test_own_images_train_and_deploy_records(own_study):
    base, photos, study, res, cells, build = own_study
    train = _scraps(base, next(c for c in cells if c["stage"] == "train"))["record"]
    assert train["status"] == "ok" and train["dataset"] == "imagefolder" and train["params"]["root"] == str(photos)
    assert train["classes"] == sorted(CLASSES.values()) and train["model"] == "smallvgg1"
    deploy = _scraps(base, next(c for c in cells if c["stage"] == "deploy"))["record"]
    assert deploy["status"] == "ok" and deploy["train_run_id"] == train["run_id"]
    assert deploy["served_agreement"] == 1.0


@pytest.mark.slow
def test_own_images_results_table(own_study):
    base, photos, study, res, cells, build = own_study
    runs = pd.read_csv(base / "results" / study / "runs.csv")
    assert sorted(runs.stage) == ["data_prep", "deploy", "train"] and set(runs.status) == {"ok"}
    data_rows = runs[runs.stage.isin(["data_prep", "train"])]
    assert set(data_rows.dataset) == {"imagefolder"} and set(data_rows.root) == {str(photos)}
    assert not (base / "results" / "tiny").exists()   # nothing under the grid's own study name


@pytest.mark.slow
def test_own_images_book(own_study):
    """The book is this study's: its report pages and the data prep page naming every class."""
    base, photos, study, res, cells, build = own_study
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    html = base / "book" / "_build" / "html"
    for page in book.REPORT_PAGES:
        assert (html / "results" / f"{page}-{study}.html").is_file(), page
    prep = next(c for c in cells if c["stage"] == "data_prep")
    text = (html / Path(prep["notebook"]).with_suffix(".html")).read_text()
    assert all(name in text for name in CLASSES.values())
